#include "server.h"

#include <dirent.h>
#include <errno.h>
#include <linux/sock_diag.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <coap3/coap.h>
#include <openssl/ssl.h>
#ifndef COAP_BERT_BLOCK1_PER_BLOCK
#error "libcoap without tools/deps/libcoap-4.3.1-bert-block1-per-block.patch (BERT uploads would bypass upload.c's limits): run make deps"
#endif

#include "common.h"
#include "hash.h"
#include "ingest.h"
#include "ingest_pool.h"
#include "log.h"
#include "scheduler.h"
#include "upload.h"

/* A model body handed to libcoap for a Block2 transfer; it stays alive until
 * libcoap releases it, even when the round closes and a new model appears. */
typedef struct {
    int refs;
    size_t len;
    uint64_t etag;
    uint8_t data[];
} model_body;

struct fedge_server {
    fedge_aggregator *agg;
    coap_context_t *ctx;
    coap_bin_const_t *psks;     /* parallel to agg->keys.devices */
    char (*psk_text)[FEDGE_PSK_LEN + 1];
    model_body *body;           /* current model, one reference held here */
    char body_version[FEDGE_HASH_HEX_LEN];
    model_body *control;        /* SCAFFOLD's current server control variate, likewise */
    char control_version[FEDGE_HASH_HEX_LEN];
    fedge_uploads *uploads;     /* POST /update bodies in progress */
    int udp_fd;                 /* the endpoint's socket, -1 when not found */
    int rcvbuf;                 /* its receive buffer as the kernel reports it */
    struct final_answer **answers; /* per session: its last completed upload's answer (answer_buckets chains) */
    /* GET /round observers (RFC 7641): at most one per device, parallel to
     * agg->keys.devices; the digest of what /round says, to notify on change */
    coap_resource_t *round_res;
    struct round_observer *observers;
    size_t n_observers;
    uint64_t round_digest;
    double observers_asked_at;
    uint64_t notifications;     /* sent since start */
    /* multi-core ingest (ingest_pool.h); pool is NULL when ingest_workers = 0 */
    fedge_ingest_pool *pool;
    struct pending_update *pending; /* updates being opened or committed */
    fedge_ingest_job **ready;       /* opened, waiting for their group's commit */
    size_t n_ready, group_max;
    double commit_wait_s;
    struct ingest_stats {
        uint64_t updates, groups, refused_full;
        double queue_s, open_s, wait_s, work_s, commit_s, reply_s, total_s; /* sums */
        double max_total_s;
    } ist;
    fedge_metrics_latency latency; /* the same updates' totals, for /metrics */
    /* CoAP over TLS/TCP (cfg.listen_tcp): the connections held, oldest first */
    struct tcp_conn {
        coap_session_t *session;
        double accepted_at;      /* monotonic */
        int closing;             /* closed by us; libcoap frees it later */
        int up;                  /* TLS handshake and CSM done: authenticated */
        int refused;             /* its CSM's Max-Message-Size is too small: Abort sent */
    } *tcp;
    size_t n_tcp, cap_tcp, tcp_max, tcp_preauth_max;
    double tcp_handshake_s;
    uint64_t tcp_accepted, tcp_refused, tcp_timed_out, tcp_evicted;
    double tcp_evict_logged_at; /* monotonic; eviction is logged once a second at most */
    uint64_t tcp_evict_logged;
    size_t answer_buckets, n_answers; /* answers: a hash by session, grown to keep chains short */
    int tcp_settled;                  /* no connection in handshake or refused: tcp_sweep has nothing to do */
};

static fedge_server *g_server; /* libcoap 4.3.1 has no context user data */

static void body_unref(model_body *b)
{
    if (b && --b->refs == 0)
        free(b);
}

static void body_release(coap_session_t *session, void *app_ptr)
{
    (void)session;
    body_unref(app_ptr);
}

static uint64_t etag_of(const uint8_t version[FEDGE_HASH_LEN])
{
    uint64_t e = 0;
    for (int i = 0; i < 8; i++)
        e = e << 8 | version[i];
    return e;
}

/* The body for blob (version, hex): the one in *slot while it is the same
 * version, else a new one that replaces it. */
static int body_for(model_body **slot, char slot_version[FEDGE_HASH_HEX_LEN], const uint8_t *blob, size_t len,
                    const uint8_t version[FEDGE_HASH_LEN], const char *hex, model_body **out)
{
    if (!*slot || strcmp(slot_version, hex) != 0) {
        model_body *b = malloc(sizeof *b + len);
        if (!b)
            return FEDGE_ERR_NOMEM;
        b->refs = 1;
        b->len = len;
        b->etag = etag_of(version);
        memcpy(b->data, blob, len);
        body_unref(*slot);
        *slot = b;
        memcpy(slot_version, hex, FEDGE_HASH_HEX_LEN);
    }
    *out = *slot;
    return FEDGE_OK;
}

static int current_body(fedge_server *s, model_body **out)
{
    fedge_aggregator *a = s->agg;
    return body_for(&s->body, s->body_version, a->model_blob, a->model_blob_len, a->version, a->version_hex, out);
}

/* Device id of the requester: the DTLS PSK identity, or ?id= when insecure. */
static int requester(const fedge_server *s, coap_session_t *session, const coap_string_t *query,
                     char id[FEDGE_DEVICE_ID_MAX + 1])
{
    id[0] = '\0';
    if (!s->agg->cfg.insecure) {
        const coap_bin_const_t *ident = coap_session_get_psk_identity(session);
        if (!ident || !fedge_device_id_valid((const char *)ident->s, ident->length))
            return 0;
        memcpy(id, ident->s, ident->length);
        id[ident->length] = '\0';
        return 1;
    }
    if (!query)
        return 0;
    const char *q = (const char *)query->s;
    size_t n = query->length;
    for (size_t i = 0; i + 3 <= n; i++) {
        if ((i == 0 || q[i - 1] == '&') && memcmp(q + i, "id=", 3) == 0) {
            size_t start = i + 3, end = start;
            while (end < n && q[end] != '&')
                end++;
            if (!fedge_device_id_valid(q + start, end - start))
                return 0;
            memcpy(id, q + start, end - start);
            id[end - start] = '\0';
            return 1;
        }
    }
    return 0;
}

static void set_text(coap_pdu_t *response, coap_pdu_code_t code, const char *text)
{
    uint8_t buf[4];
    coap_pdu_set_code(response, code);
    coap_add_option(response, COAP_OPTION_CONTENT_FORMAT,
                    coap_encode_var_safe(buf, sizeof buf, COAP_MEDIATYPE_TEXT_PLAIN), buf);
    coap_add_data(response, strlen(text), (const uint8_t *)text);
}

/* ---- GET /round is observable (RFC 7641) ----
 * libcoap takes the registrations (and deletes a session's when the session
 * goes, or one whose notification is answered by a reset); the
 * notifications are sent here, each with its own device's view: to every
 * observer when what all devices see changes (the digest of state, round,
 * versions, run, round_epoch), and to that device alone when only its own
 * view changed (async: admitted, slot freed; agg.h's view_changed), so an
 * admission costs one notification, not one per observer. libcoap 4.3.1's
 * coap_resource_notify_observers cannot aim at one observer (its query
 * filter is unused) and runs hnd_round for all of them; it is not used, and
 * each observation's Observe sequence is its own (from the registration's
 * value up), so the edges' freshness check (RFC 7641 3.4) holds.
 * At most one observation per device (a registration from a new session or
 * with a new token replaces the device's earlier one) and per session (the
 * session's app data names its device, so a session that goes is dropped
 * in O(1)); none for an unknown requester. Notifications are confirmable: a
 * reset or a notification never acknowledged drops the observation
 * (on_nack). */
typedef struct round_observer {
    coap_session_t *session;    /* NULL: the device observes nothing */
    size_t token_len;
    uint8_t token[8];
    uint32_t seq;               /* the Observe value last sent, 24 bits */
} round_observer;

/* libcoap 4.3.1 exports these (coap_subscribe_internal.h,
 * coap_pdu_internal.h) but installs no header for them. coap_delete_observer
 * only compares the session pointer and the token. */
int coap_delete_observer(coap_resource_t *resource, coap_session_t *session, const coap_binary_t *token);
int coap_remove_option(coap_pdu_t *pdu, coap_option_num_t number);
/* coap_session_internal.h: closes a session (a TCP connection we refuse) */
void coap_session_disconnected(coap_session_t *session, coap_nack_reason_t reason);

/* The ASK_TTL_S of sched_async.c is 10 s: an observing device is re-marked as
 * asking well within it (it waits for a notification instead of polling). */
#define OBSERVERS_ASK_S 2.0

/* The device whose observation a session holds: app data d + 1, 0: none. */
static int session_device(coap_session_t *session)
{
    return (int)(uintptr_t)coap_session_get_app_data(session) - 1;
}

/* Forgets device d's observation; tells libcoap too unless the session is
 * going (it deletes the session's subscriptions itself). */
static void drop_observation(fedge_server *s, size_t d, int tell_libcoap)
{
    round_observer *o = &s->observers[d];
    if (!o->session)
        return;
    if (tell_libcoap) {
        coap_binary_t tok = {o->token_len, o->token};
        coap_delete_observer(s->round_res, o->session, &tok);
    }
    if (session_device(o->session) == (int)d)
        coap_session_set_app_data(o->session, NULL);
    o->session = NULL;
    s->n_observers--;
}

static int same_token(const round_observer *o, coap_bin_const_t token)
{
    return o->token_len == token.length && memcmp(o->token, token.s, token.length) == 0;
}

/* hnd_round answering a registration (the response carries libcoap's
 * Observe option). */
static void note_observer(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *request,
                          int device, coap_pdu_t *response, coap_opt_t *observe)
{
    fedge_server *s = g_server;
    coap_bin_const_t token = coap_pdu_get_token(request);
    if (device < 0 || token.length > sizeof s->observers[0].token) {
        coap_binary_t tok = {token.length, (uint8_t *)token.s};
        coap_delete_observer(r, session, &tok);
        coap_remove_option(response, COAP_OPTION_OBSERVE);
        return;
    }
    round_observer *o = &s->observers[device];
    if (o->session && (o->session != session || !same_token(o, token))) {
        if (o->session != session)
            FEDGE_DEBUG("observe: %s re-registered from a new session; the old observation is dropped",
                        s->agg->keys.devices[device].id);
        drop_observation(s, (size_t)device, 1);
    }
    int other = session_device(session);
    if (other >= 0 && other != device) /* one observation per session */
        drop_observation(s, (size_t)other, 1);
    if (!o->session)
        s->n_observers++;
    o->session = session;
    o->token_len = token.length;
    memcpy(o->token, token.s, token.length);
    o->seq = coap_decode_var_bytes(coap_opt_value(observe), coap_opt_length(observe));
    coap_session_set_app_data(session, (void *)(uintptr_t)(device + 1));
}

static void hnd_round(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *request,
                      const coap_string_t *query, coap_pdu_t *response)
{
    char id[FEDGE_DEVICE_ID_MAX + 1], body[1024];
    int known = requester(g_server, session, query, id);
    if (fedge_agg_round_info(g_server->agg, known ? id : NULL, fedge_now(), body, sizeof body) != FEDGE_OK) {
        set_text(response, COAP_RESPONSE_CODE_INTERNAL_ERROR, "internal error");
        return;
    }
    set_text(response, COAP_RESPONSE_CODE_CONTENT, body);
    if (!g_server->observers)
        return;
    coap_opt_iterator_t it;
    coap_opt_t *observe = coap_check_option(response, COAP_OPTION_OBSERVE, &it);
    int d = known ? fedge_agg_device_index(g_server->agg, id) : -1;
    if (observe) {
        note_observer(r, session, request, d, response, observe);
    } else if (d >= 0 && g_server->observers[d].session == session &&
               same_token(&g_server->observers[d], coap_pdu_get_token(request))) {
        drop_observation(g_server, (size_t)d, 1); /* a deregistration (Observe: 1) */
    }
}

/* What /round says, less the deadline's countdown: state, round, model,
 * control variate, run, and the epoch of the devices' views (async
 * admissions: a device's selected=). */
static uint64_t round_digest(const fedge_aggregator *a)
{
    uint64_t h = FEDGE_FNV1A_INIT;
    uint32_t state = (uint32_t)a->state;
    h = fedge_fnv1a(h, &state, sizeof state);
    h = fedge_fnv1a(h, &a->round, sizeof a->round);
    h = fedge_fnv1a(h, a->version, sizeof a->version);
    h = fedge_fnv1a(h, a->control_version, sizeof a->control_version);
    h = fedge_fnv1a(h, a->run_id, sizeof a->run_id);
    h = fedge_fnv1a(h, &a->round_epoch, sizeof a->round_epoch);
    return h;
}

/* Device d's observation gets d's GET /round answer now, as a confirmable
 * notification with the observation's next Observe value. */
static void notify_device(fedge_server *s, size_t d, double now)
{
    round_observer *o = &s->observers[d];
    char body[1024];
    uint8_t buf[4];
    if (!o->session || fedge_agg_round_info(s->agg, s->agg->keys.devices[d].id, now, body, sizeof body) != FEDGE_OK)
        return;
    coap_pdu_t *pdu = coap_pdu_init(COAP_MESSAGE_CON, COAP_RESPONSE_CODE_CONTENT, coap_new_message_id(o->session),
                                    coap_session_max_pdu_size(o->session));
    if (!pdu)
        return;
    uint32_t seq = (o->seq + 1) & 0xffffff;
    if (!coap_add_token(pdu, o->token_len, o->token) ||
        !coap_add_option(pdu, COAP_OPTION_OBSERVE, coap_encode_var_safe(buf, sizeof buf, seq), buf) ||
        !coap_add_option(pdu, COAP_OPTION_CONTENT_FORMAT,
                         coap_encode_var_safe(buf, sizeof buf, COAP_MEDIATYPE_TEXT_PLAIN), buf) ||
        !coap_add_data(pdu, strlen(body), (const uint8_t *)body)) {
        coap_delete_pdu(pdu);
        return;
    }
    o->seq = seq;
    s->notifications++;
    if (coap_send(o->session, pdu) == COAP_INVALID_MID) /* coap_send frees it */
        FEDGE_DEBUG("observe: notification to %s not sent", s->agg->keys.devices[d].id);
}

/* The devices whose own view changed (agg.h's view_changed), one
 * notification each. */
static void notify_changed_views(fedge_server *s, double now)
{
    fedge_aggregator *a = s->agg;
    if (!s->observers)
        return;
    for (size_t k = 0; k < a->n_view_changed; k++) {
        uint32_t d = a->view_changed[k];
        a->view_changed_mark[d] = 0;
        notify_device(s, d, now);
    }
    a->n_view_changed = 0;
}

static void notify_round_observers(fedge_server *s)
{
    fedge_aggregator *a = s->agg;
    if (!s->observers)
        return;
    uint64_t digest = round_digest(a);
    size_t n = s->n_observers;
    double now = fedge_now();
    if (digest != s->round_digest) {
        s->round_digest = digest;
        if (n) {
            FEDGE_DEBUG("/round changed (state %d, round %u): notifying %zu observers", (int)a->state,
                        a->round, n);
            for (size_t i = 0; i < a->keys.n; i++)
                notify_device(s, i, now);
        }
        for (size_t k = 0; k < a->n_view_changed; k++) /* their views went out above */
            a->view_changed_mark[a->view_changed[k]] = 0;
        a->n_view_changed = 0;
    }
    notify_changed_views(s, now);
    /* async: an observing device waits for a slot without asking again */
    if (n && a->adm_step && a->state == FEDGE_AGG_OPEN && now - s->observers_asked_at >= OBSERVERS_ASK_S) {
        fedge_sched_view v;
        s->observers_asked_at = now;
        for (size_t i = 0; i < a->keys.n; i++)
            if (s->observers[i].session && !a->adm_step[i])
                a->sched->view(a, (int)i, now, &v);
    }
}

/* A notification reset by its edge, or never acknowledged: the observation
 * is dead (libcoap has deleted, or counts a failure of, its subscription).
 * The other reasons come from a session being disconnected, whose
 * subscriptions libcoap deletes itself (SERVER_SESSION_DEL then). */
static void on_nack(coap_session_t *session, const coap_pdu_t *sent, const coap_nack_reason_t reason,
                    const coap_mid_t mid)
{
    (void)mid;
    if (!g_server || !g_server->observers || !sent ||
        (reason != COAP_NACK_RST && reason != COAP_NACK_TOO_MANY_RETRIES))
        return;
    int d = session_device(session);
    if (d < 0 || g_server->observers[d].session != session ||
        !same_token(&g_server->observers[d], coap_pdu_get_token(sent)))
        return;
    FEDGE_DEBUG("observe: %s's notification %s; observation dropped", g_server->agg->keys.devices[d].id,
                reason == COAP_NACK_RST ? "reset" : "not acknowledged");
    drop_observation(g_server, (size_t)d, 1);
}

static unsigned udp_drops(const fedge_server *s)
{
    uint32_t mem[SK_MEMINFO_VARS];
    socklen_t len = sizeof mem;
    if (s->udp_fd < 0 || getsockopt(s->udp_fd, SOL_SOCKET, SO_MEMINFO, mem, &len) != 0 ||
        len <= SK_MEMINFO_DROPS * sizeof mem[0])
        return 0;
    return mem[SK_MEMINFO_DROPS];
}

/* The aggregator's JSON plus the transport's own counters. */
static int status_json(const fedge_server *s, char *body, size_t cap)
{
    int ret = fedge_agg_status_json(s->agg, body, cap);
    if (ret != FEDGE_OK)
        return ret;
    size_t n = strlen(body);
    if (n == 0 || body[n - 1] != '}')
        return FEDGE_ERR_INTERNAL;
    fedge_upload_stats st;
    fedge_uploads_stats(s->uploads, &st);
    uint64_t ep_wakes, ep_reads;
    unsigned ep_most;
    coap_context_get_endpoint_reads(s->ctx, &ep_wakes, &ep_reads, &ep_most);
    int m = snprintf(body + n - 1, cap - (n - 1),
                     ",\"uploads\":{\"partial\":%zu,\"reserved_bytes\":%zu,\"held_bytes\":%zu,"
                     "\"completed\":%llu,\"expired\":%llu,\"evicted\":%llu,\"closed\":%llu,"
                     "\"superseded\":%llu,"
                     "\"refused_size\":%llu,\"refused_busy\":%llu,\"refused_bad\":%llu,"
                     "\"incomplete\":%llu},\"udp\":{\"rcvbuf_bytes\":%d,\"drops\":%u,"
                     "\"wakes\":%llu,\"reads\":%llu,\"most_reads_per_wake\":%u},"
                     "\"observe\":{\"observers\":%zu,\"notifications\":%llu}}",
                     st.partial, st.reserved_bytes, st.held_bytes,
                     (unsigned long long)st.completed, (unsigned long long)st.expired,
                     (unsigned long long)st.evicted, (unsigned long long)st.closed,
                     (unsigned long long)st.superseded,
                     (unsigned long long)st.refused_size, (unsigned long long)st.refused_busy,
                     (unsigned long long)st.refused_bad, (unsigned long long)st.incomplete,
                     s->rcvbuf, udp_drops(s), (unsigned long long)ep_wakes, (unsigned long long)ep_reads, ep_most,
                     s->n_observers, (unsigned long long)s->notifications);
    if (m < 0 || (size_t)m >= cap - (n - 1))
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    if (s->tcp_max) {
        n = strlen(body);
        m = snprintf(body + n - 1, cap - (n - 1),
                     ",\"tcp\":{\"connections\":%zu,\"accepted\":%llu,\"refused\":%llu,\"timed_out\":%llu,"
                     "\"preauth_evicted\":%llu}}",
                     s->n_tcp, (unsigned long long)s->tcp_accepted, (unsigned long long)s->tcp_refused,
                     (unsigned long long)s->tcp_timed_out, (unsigned long long)s->tcp_evicted);
        if (m < 0 || (size_t)m >= cap - (n - 1))
            return FEDGE_ERR_BUFFER_TOO_SMALL;
    }
    if (!s->pool)
        return FEDGE_OK;
    /* where an update's time goes: means in microseconds per update
     * (commit: per group), since start */
    const struct ingest_stats *t = &s->ist;
    double u = t->updates ? 1e6 / (double)t->updates : 0, g = t->groups ? 1e6 / (double)t->groups : 0;
    n = strlen(body);
    m = snprintf(body + n - 1, cap - (n - 1),
                 ",\"ingest\":{\"updates\":%llu,\"groups\":%llu,\"refused_full\":%llu,\"held\":%zu,"
                 "\"queue_us\":%.0f,\"open_us\":%.0f,\"group_wait_us\":%.0f,\"work_us\":%.0f,"
                 "\"commit_us_per_group\":%.0f,\"reply_us\":%.0f,\"total_us\":%.0f,\"max_total_us\":%.0f}}",
                 (unsigned long long)t->updates, (unsigned long long)t->groups,
                 (unsigned long long)t->refused_full, fedge_ingest_pool_held(s->pool), t->queue_s * u,
                 t->open_s * u, t->wait_s * u, t->work_s * u, t->commit_s * g, t->reply_s * u, t->total_s * u,
                 t->max_total_s * 1e6);
    return (m < 0 || (size_t)m >= cap - (n - 1)) ? FEDGE_ERR_BUFFER_TOO_SMALL : FEDGE_OK;
}

static void free_release(coap_session_t *session, void *app_ptr)
{
    (void)session;
    free(app_ptr);
}

static void hnd_status(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *request,
                       const coap_string_t *query, coap_pdu_t *response)
{
    char *body = malloc(2048);
    if (!body || status_json(g_server, body, 2048) != FEDGE_OK) {
        free(body);
        set_text(response, COAP_RESPONSE_CODE_INTERNAL_ERROR, "internal error");
        return;
    }
    coap_pdu_set_code(response, COAP_RESPONSE_CODE_CONTENT);
    /* Block2 when the body outgrows one datagram; libcoap frees it */
    if (!coap_add_data_large_response(r, session, request, response, query,
                                      COAP_MEDIATYPE_APPLICATION_JSON, -1, 0, strlen(body),
                                      (const uint8_t *)body, free_release, body))
        coap_pdu_set_code(response, COAP_RESPONSE_CODE_INTERNAL_ERROR);
}

/* A model file by Block2, answered 2.03 Valid when the request's ETag is
 * its version's. */
static void serve_body(model_body *b, coap_resource_t *r, coap_session_t *session, const coap_pdu_t *request,
                       const coap_string_t *query, coap_pdu_t *response)
{
    coap_opt_iterator_t it;
    coap_opt_t *etag = coap_check_option(request, COAP_OPTION_ETAG, &it);
    if (etag && coap_opt_length(etag) <= 8 &&
        coap_decode_var_bytes8(coap_opt_value(etag), coap_opt_length(etag)) == b->etag) {
        uint8_t buf[8];
        coap_pdu_set_code(response, COAP_RESPONSE_CODE_VALID);
        coap_add_option(response, COAP_OPTION_ETAG, coap_encode_var_safe8(buf, sizeof buf, b->etag), buf);
        return;
    }
    b->refs++;
    coap_pdu_set_code(response, COAP_RESPONSE_CODE_CONTENT);
    if (!coap_add_data_large_response(r, session, request, response, query,
                                      COAP_MEDIATYPE_APPLICATION_OCTET_STREAM, -1, b->etag, b->len,
                                      b->data, body_release, b)) {
        /* libcoap calls the release function on failure too */
        coap_pdu_set_code(response, COAP_RESPONSE_CODE_INTERNAL_ERROR);
    }
}

static void hnd_model(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *request,
                      const coap_string_t *query, coap_pdu_t *response)
{
    model_body *b = NULL;
    if (current_body(g_server, &b) != FEDGE_OK) {
        set_text(response, COAP_RESPONSE_CODE_INTERNAL_ERROR, "out of memory");
        return;
    }
    serve_body(b, r, session, request, query, response);
}

/* GET /control: SCAFFOLD's server control variate c as a model file. */
static void hnd_control(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *request,
                        const coap_string_t *query, coap_pdu_t *response)
{
    fedge_aggregator *a = g_server->agg;
    model_body *b = NULL;
    if (!a->cfg.scaffold || !a->control_blob) {
        set_text(response, COAP_RESPONSE_CODE_NOT_FOUND, "this run is not SCAFFOLD: no control variate");
        return;
    }
    if (body_for(&g_server->control, g_server->control_version, a->control_blob, a->control_blob_len,
                 a->control_version, a->control_version_hex, &b) != FEDGE_OK) {
        set_text(response, COAP_RESPONSE_CODE_INTERNAL_ERROR, "out of memory");
        return;
    }
    serve_body(b, r, session, request, query, response);
}

static coap_pdu_code_t coap_code(int code)
{
    switch (code) {
    case 204: return COAP_RESPONSE_CODE_CHANGED;
    case 400: return COAP_RESPONSE_CODE_BAD_REQUEST;
    case 401: return COAP_RESPONSE_CODE_UNAUTHORIZED;
    case 403: return COAP_RESPONSE_CODE_FORBIDDEN;
    case 409: return COAP_RESPONSE_CODE_CONFLICT;
    case 413: return COAP_RESPONSE_CODE_REQUEST_TOO_LARGE;
    case 503: return COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE;
    default: return COAP_RESPONSE_CODE_INTERNAL_ERROR;
    }
}

/* ---- POST /update: Block1 bodies reassembled within bounds (upload.h) ----
 * libcoap runs in COAP_BLOCK_USE_LIBCOAP mode without SINGLE_BODY for
 * requests, so it hands over each block as it arrives and never allocates a
 * body itself (4.3.1 would allocate the client's Size1 up front); BERT
 * blocks over TCP too, with tools/deps/libcoap-4.3.1-bert-block1-per-block.patch. */

/* An upload silent this long is freed when a new one needs its room: a live
 * client resends a lost block within ACK_TIMEOUT (2-3 s), so it is most
 * likely gone; without such pressure it gets upload_idle_timeout_s. */
#define UPLOAD_EVICT_IDLE_S 5.0

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int upload_limits(const fedge_aggregator *a, fedge_upload_limits *l, char *err,
                         size_t errlen)
{
    const fedge_agg_config *c = &a->cfg;
    l->max_body = a->max_update_bytes;
    l->max_per_device = (size_t)c->upload_max_partial_per_device;
    l->max_total = (size_t)c->upload_max_partial_total;
    l->idle_timeout_s = c->upload_idle_timeout_s;
    l->evict_idle_s = c->upload_idle_timeout_s < UPLOAD_EVICT_IDLE_S ? c->upload_idle_timeout_s
                                                                     : UPLOAD_EVICT_IDLE_S;
    if (c->upload_memory_bytes > 0) {
        l->budget_bytes = (size_t)c->upload_memory_bytes;
        if (l->budget_bytes < l->max_body) {
            snprintf(err, errlen, "upload_memory_bytes %zu is below max_update_bytes %zu: no "
                     "update could be received", l->budget_bytes, l->max_body);
            return FEDGE_ERR_CONFIG_VALUE;
        }
    } else {
        size_t cap = (size_t)256 << 20;
        l->budget_bytes = l->max_body > cap / l->max_total ? cap : l->max_body * l->max_total;
        if (l->budget_bytes < l->max_body)
            l->budget_bytes = l->max_body;
    }
    return FEDGE_OK;
}

/* The answer to a session's last completed Block1 upload, kept with the
 * session: when that answer is lost and the client sends the final block
 * again (as a new exchange), it gets the same answer instead of 4.08. */
typedef struct final_answer {
    const coap_session_t *session;
    size_t offset, len;                 /* of the final block */
    uint8_t digest[FEDGE_HASH_LEN];     /* of the final block's bytes */
    int code;                           /* class*100 + detail */
    char msg[320];
    struct final_answer *next;      /* in its bucket */
} final_answer;

/* One record per live session that completed an upload, found by a hash of
 * the session pointer (per request, the cost does not grow with the
 * sessions); a session's goes when the session does (and all with the
 * server). */
static size_t answer_bucket(const coap_session_t *session, size_t buckets)
{
    return (size_t)(fedge_mix64((uint64_t)(uintptr_t)session) & (buckets - 1));
}

static final_answer *answer_of(const coap_session_t *session)
{
    if (!g_server->answers)
        return NULL;
    for (final_answer *f = g_server->answers[answer_bucket(session, g_server->answer_buckets)]; f; f = f->next)
        if (f->session == session)
            return f;
    return NULL;
}

/* Files f; the table doubles when the records outnumber the buckets (a
 * failed allocation leaves it as it is: longer chains, nothing lost). */
static int answer_add(fedge_server *s, final_answer *f)
{
    if (!s->answers || s->n_answers >= s->answer_buckets) {
        size_t n = s->answers ? 2 * s->answer_buckets : 64;
        final_answer **t = n <= SIZE_MAX / sizeof *t ? calloc(n, sizeof *t) : NULL;
        if (!t && !s->answers)
            return FEDGE_ERR_NOMEM;
        if (t) {
            for (size_t i = 0; s->answers && i < s->answer_buckets; i++)
                for (final_answer *g = s->answers[i], *next; g; g = next) {
                    next = g->next;
                    size_t b = answer_bucket(g->session, n);
                    g->next = t[b];
                    t[b] = g;
                }
            free(s->answers);
            s->answers = t;
            s->answer_buckets = n;
        }
    }
    size_t b = answer_bucket(f->session, s->answer_buckets);
    f->next = s->answers[b];
    s->answers[b] = f;
    s->n_answers++;
    return FEDGE_OK;
}

static void answer_drop(const coap_session_t *session)
{
    fedge_server *s = g_server;
    if (!s->answers)
        return;
    for (final_answer **p = &s->answers[answer_bucket(session, s->answer_buckets)]; *p; p = &(*p)->next) {
        if ((*p)->session == session) {
            final_answer *f = *p;
            *p = f->next;
            free(f);
            s->n_answers--;
            return;
        }
    }
}

static void set_answer(coap_pdu_t *response, int code, const char *msg)
{
    if (code == 503) {
        uint8_t buf[4];
        coap_add_option(response, COAP_OPTION_MAXAGE, coap_encode_var_safe(buf, sizeof buf, 1), buf);
    }
    set_text(response, coap_code(code), msg);
}

/* Submits a whole body; *code and msg get the answer sent. */
static void submit_update(const char *id, const uint8_t *data, size_t len, coap_pdu_t *response, int *code_out,
                          char *msg_out, size_t msg_cap)
{
    char msg[320];
    int code = 500;
    int ret = fedge_agg_submit(g_server->agg, id, data, len, fedge_now(), &code, msg, sizeof msg);
    /* the device's slot is freed: selected=0 goes out before the answer,
     * so an edge never acts on an older selected=1 it holds (async) */
    notify_changed_views(g_server, fedge_now());
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("update from %s: %s", id, fedge_strerror(ret));
        code = 500;
        snprintf(msg, sizeof msg, "aggregator error; retry later");
    }
    set_answer(response, code, msg);
    if (code_out)
        *code_out = code;
    if (msg_out)
        snprintf(msg_out, msg_cap, "%s", msg);
}

static void remember_answer_at(coap_session_t *session, size_t offset, size_t len,
                               const uint8_t digest[FEDGE_HASH_LEN], int code, const char *msg)
{
    final_answer *f = answer_of(session);
    if (!f) {
        f = calloc(1, sizeof *f);
        if (!f)
            return; /* only a resend's convenience is lost */
        f->session = session;
        if (answer_add(g_server, f) != FEDGE_OK) {
            free(f);
            return;
        }
    }
    f->offset = offset;
    f->len = digest ? len : (size_t)-1; /* no digest: matches nothing */
    if (digest)
        memcpy(f->digest, digest, FEDGE_HASH_LEN);
    f->code = code;
    snprintf(f->msg, sizeof f->msg, "%s", msg);
}

static void remember_answer(coap_session_t *session, const fedge_upload_block *b, int code, const char *msg)
{
    uint8_t digest[FEDGE_HASH_LEN];
    int ok = fedge_sha256(b->data, b->len, digest) == FEDGE_OK;
    remember_answer_at(session, b->offset, b->len, ok ? digest : NULL, code, msg);
}

/* ---- POST /update through the ingest pool (ingest_pool.h) ----
 * The handler's first call takes the snapshot, queues the frame and
 * registers a separate response (libcoap sends the empty ACK and answers
 * retransmissions of the request with it); a worker opens the frame; the
 * owner thread commits it with others in one transaction (commit_ready)
 * and triggers the response; libcoap then calls the handler again for the
 * same request, which answers from here (answer_pending). The device hears
 * its answer only after its update is durable. */
typedef struct pending_update {
    coap_async_t *async;
    coap_session_t *session;
    int has_block;                 /* the final block of a Block1 upload */
    size_t offset, len;
    uint8_t digest[FEDGE_HASH_LEN];
    int digest_ok;
    int done, code;
    char msg[320];
    double t0, triggered_at;
    struct pending_update *prev, *next;
} pending_update;

static void pending_unlink(fedge_server *s, pending_update *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        s->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
}

/* 1 when request is a triggered separate response of ours: answered. */
static int answer_pending(coap_session_t *session, const coap_pdu_t *request, coap_pdu_t *response)
{
    fedge_server *s = g_server;
    coap_async_t *as = coap_find_async(session, coap_pdu_get_token(request));
    if (!as)
        return 0;
    pending_update *p = coap_async_get_app_data(as);
    if (!p || !p->done) {
        /* libcoap calls again only once triggered: not ours */
        set_text(response, COAP_RESPONSE_CODE_INTERNAL_ERROR, "internal error");
        return 1;
    }
    set_answer(response, p->code, p->msg);
    if (p->has_block)
        remember_answer_at(session, p->offset, p->len, p->digest_ok ? p->digest : NULL, p->code, p->msg);
    double now = mono_now();
    s->ist.reply_s += now - p->triggered_at;
    s->ist.total_s += now - p->t0;
    if (now - p->t0 > s->ist.max_total_s)
        s->ist.max_total_s = now - p->t0;
    fedge_metrics_latency_observe(&s->latency, now - p->t0);
    coap_async_set_app_data(as, NULL); /* libcoap frees the async after this call */
    pending_unlink(s, p);
    free(p);
    return 1;
}

/* Queues a whole body for the pool; the reply is deferred (response left
 * empty) or, when the pool is full, 5.03 with Max-Age now. own: a body of
 * the caller's (malloc'd) that the job takes over (*own set NULL) instead
 * of a copy of data. */
static void submit_pooled(coap_session_t *session, const coap_pdu_t *request, const char *id, const uint8_t *data,
                          size_t len, const fedge_upload_block *b, uint8_t **own, coap_pdu_t *response)
{
    fedge_server *s = g_server;
    fedge_aggregator *a = s->agg;
    fedge_ingest_snapshot snap;
    fedge_ingest_job *job = NULL;
    pending_update *p = NULL;
    int d = fedge_agg_device_index(a, id);
    if (d < 0 || fedge_ingest_snapshot_take(a, d, &snap) != FEDGE_OK) {
        /* the inline path gives these their answers (unknown device, a database fault) */
        int code = 500;
        char msg[320];
        submit_update(id, data, len, response, &code, msg, sizeof msg);
        if (b)
            remember_answer(session, b, code, msg);
        return;
    }
    p = calloc(1, sizeof *p);
    if (p && own && *own == data) {
        job = fedge_ingest_job_adopt(p, d, &snap, *own, len);
        if (job)
            *own = NULL;
    } else if (p) {
        job = fedge_ingest_job_new(p, d, &snap, data, len);
    }
    if (!job)
        goto busy;
    p->session = session;
    p->t0 = mono_now();
    if (b) {
        p->has_block = 1;
        p->offset = b->offset;
        p->len = b->len;
        p->digest_ok = fedge_sha256(b->data, b->len, p->digest) == FEDGE_OK;
    }
    p->async = coap_register_async(session, request, 0);
    if (!p->async)
        goto busy;
    coap_async_set_app_data(p->async, p);
    if (fedge_ingest_pool_submit(s->pool, job) != FEDGE_OK) {
        coap_free_async(session, p->async);
        s->ist.refused_full++;
        goto busy;
    }
    p->next = s->pending;
    if (p->next)
        p->next->prev = p;
    s->pending = p;
    return;
busy:
    fedge_ingest_job_free(job);
    free(p);
    set_answer(response, 503, "the aggregator is busy opening updates; retry later");
}

/* Commits the opened frames waiting (a group of up to commit_group, or
 * fewer once the oldest has waited commit_wait_ms or nothing is being
 * opened) and triggers their answers. *wait_ms: how long the caller may
 * sleep before a short group is due. Returns the number answered. */
static size_t commit_ready(fedge_server *s, int *wait_ms)
{
    fedge_ingest_item *items = NULL;
    size_t n;
    *wait_ms = -1;
    s->n_ready += fedge_ingest_pool_take(s->pool, s->ready + s->n_ready, s->group_max - s->n_ready);
    if (s->n_ready == 0)
        return 0;
    double now = mono_now();
    double waited = now - s->ready[0]->done_at;
    if (s->n_ready < s->group_max && waited < s->commit_wait_s && fedge_ingest_pool_held(s->pool) > 0) {
        *wait_ms = (int)((s->commit_wait_s - waited) * 1000.0) + 1;
        return 0;
    }
    n = s->n_ready;
    items = calloc(n, sizeof *items);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        fedge_ingest_job *j = s->ready[i];
        s->ist.queue_s += j->opened_at - j->queued_at;
        s->ist.open_s += j->done_at - j->opened_at;
        s->ist.wait_s += now - j->done_at;
        if (j->status != FEDGE_OK || !items)
            continue;
        items[m].device = j->device;
        items[m].snap = &j->snap;
        items[m].frame = &j->frame;
        m++;
    }
    fedge_ingest_group_times t = {0, 0};
    if (m > 0) {
        int ret = fedge_ingest_commit_group(s->agg, items, m, &t);
        if (ret != FEDGE_OK)
            FEDGE_ERROR("updates of %zu devices: %s", m, fedge_strerror(ret));
        s->ist.groups++;
        notify_changed_views(s, fedge_now()); /* before the answers, as in submit_update */
    }
    s->ist.work_s += t.work_s;
    s->ist.commit_s += t.commit_s;
    double done_at = mono_now();
    m = 0;
    for (size_t i = 0; i < n; i++) {
        fedge_ingest_job *j = s->ready[i];
        pending_update *p = j->owner;
        if (j->status == FEDGE_OK && items) {
            p->code = items[m].code;
            snprintf(p->msg, sizeof p->msg, "%s", items[m].msg);
            m++;
        } else {
            p->code = 503;
            snprintf(p->msg, sizeof p->msg, "aggregator error; retry later");
        }
        p->done = 1;
        p->triggered_at = done_at;
        coap_async_trigger(p->async);
        fedge_ingest_job_free(j);
        s->ist.updates++;
    }
    free(items);
    s->n_ready = 0;
    return n;
}

/* 1 when b repeats the final block of the session's last completed upload;
 * the answer then went out again. */
static int repeat_answer(coap_session_t *session, const fedge_upload_block *b, coap_pdu_t *response)
{
    const final_answer *f = answer_of(session);
    uint8_t digest[FEDGE_HASH_LEN];
    if (!f || b->more || b->offset != f->offset || b->len != f->len ||
        fedge_sha256(b->data, b->len, digest) != FEDGE_OK || memcmp(digest, f->digest, sizeof digest) != 0)
        return 0;
    set_answer(response, f->code, f->msg);
    return 1;
}

/* 2.31 Continue, echoing Block1 (libcoap has added it already when it
 * tracks the transfer itself). */
static void reply_continue(coap_pdu_t *response, const coap_block_b_t *blk)
{
    coap_opt_iterator_t it;
    coap_pdu_set_code(response, COAP_RESPONSE_CODE(231));
    if (!coap_check_option(response, COAP_OPTION_BLOCK1, &it)) {
        uint8_t buf[4];
        unsigned v = (blk->num << 4) | (1u << 3) | blk->szx;
        coap_add_option(response, COAP_OPTION_BLOCK1, coap_encode_var_safe(buf, sizeof buf, v), buf);
    }
}

static void reply_upload(coap_session_t *session, const coap_pdu_t *request, const char *id,
                         const fedge_upload_block *b, fedge_upload_result *res, coap_pdu_t *response,
                         const coap_block_b_t *blk)
{
    uint8_t buf[8];
    switch (res->verdict) {
    case FEDGE_UPLOAD_CONTINUE:
        reply_continue(response, blk);
        return;
    case FEDGE_UPLOAD_COMPLETE: {
        if (g_server->pool) {
            submit_pooled(session, request, id, res->body, res->body_len, b, &res->body, response);
            return;
        }
        int code = 500;
        char msg[320];
        submit_update(id, res->body, res->body_len, response, &code, msg, sizeof msg);
        remember_answer(session, b, code, msg);
        return;
    }
    case FEDGE_UPLOAD_TOO_LARGE:
        /* RFC 7959 2.9.3: Size1 tells the largest body we take */
        coap_add_option(response, COAP_OPTION_SIZE1,
                        coap_encode_var_safe8(buf, sizeof buf, g_server->agg->max_update_bytes), buf);
        set_text(response, COAP_RESPONSE_CODE_REQUEST_TOO_LARGE, res->msg);
        return;
    case FEDGE_UPLOAD_BUSY:
        coap_add_option(response, COAP_OPTION_MAXAGE,
                        coap_encode_var_safe(buf, sizeof buf, res->retry_s), buf);
        set_text(response, COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE, res->msg);
        return;
    case FEDGE_UPLOAD_INCOMPLETE:
        if (repeat_answer(session, b, response))
            return;
        set_text(response, COAP_RESPONSE_CODE(408), res->msg);
        return;
    case FEDGE_UPLOAD_BAD:
        set_text(response, COAP_RESPONSE_CODE_BAD_REQUEST, res->msg);
        return;
    }
    set_text(response, COAP_RESPONSE_CODE_INTERNAL_ERROR, "internal error");
}

/* One Block1 block to upload.c. A BERT block (RFC 8323 6: k x 1024 bytes in
 * one message over TCP, NUM counting 1024-byte blocks) goes as its k
 * 1024-byte blocks, so the limits and the reassembly are the ones DTLS
 * blocks get; the first verdict other than CONTINUE is the answer. */
static int upload_block(const fedge_upload_block *b, int bert, fedge_upload_result *res)
{
    if (!bert)
        return fedge_uploads_block(g_server->uploads, b, mono_now(), res);
    size_t done = 0;
    double now = mono_now();
    do {
        fedge_upload_block part = *b;
        part.offset = b->offset + done;
        part.len = b->len - done < b->block_size ? b->len - done : b->block_size;
        part.data = b->data ? b->data + done : NULL;
        part.more = b->more || done + part.len < b->len;
        done += part.len;
        int ret = fedge_uploads_block(g_server->uploads, &part, now, res);
        if (ret != FEDGE_OK || res->verdict != FEDGE_UPLOAD_CONTINUE)
            return ret;
    } while (done < b->len);
    return FEDGE_OK;
}

static void hnd_update(coap_resource_t *r, coap_session_t *session, const coap_pdu_t *request,
                       const coap_string_t *query, coap_pdu_t *response)
{
    (void)r;
    char id[FEDGE_DEVICE_ID_MAX + 1];
    size_t len = 0, offset = 0, total = 0;
    const uint8_t *data = NULL;
    coap_opt_iterator_t it;
    coap_block_b_t blk;
    if (g_server->pool && answer_pending(session, request, response))
        return;
    if (!requester(g_server, session, query, id)) {
        set_text(response, COAP_RESPONSE_CODE_UNAUTHORIZED, "unknown device");
        return;
    }
    coap_get_data_large(request, &len, &data, &offset, &total);
    if (!coap_get_block_b(session, request, COAP_OPTION_BLOCK1, &blk)) {
        if (coap_check_option(request, COAP_OPTION_BLOCK1, &it)) {
            set_text(response, COAP_RESPONSE_CODE_BAD_REQUEST, "bad Block1 option");
            return;
        }
        if (len == 0) {
            set_text(response, COAP_RESPONSE_CODE_BAD_REQUEST, "empty body");
            return;
        }
        /* one datagram, or one TCP message (bounded by the CSM's
         * Max-Message-Size): BERT blocks arrive one by one (our libcoap
         * patch), below */
        if (g_server->pool)
            submit_pooled(session, request, id, data, len, NULL, NULL, response);
        else
            submit_update(id, data, len, response, NULL, NULL, 0);
        return;
    }
    if (blk.num == 0 && !blk.m && len == 0) {
        set_text(response, COAP_RESPONSE_CODE_BAD_REQUEST, "empty body");
        return;
    }
    coap_opt_t *size1 = coap_check_option(request, COAP_OPTION_SIZE1, &it);
    fedge_upload_block b = {
        .key = session,
        .device = id,
        .offset = (size_t)blk.num << (blk.szx + 4),
        .block_size = (size_t)1 << (blk.szx + 4),
        .more = blk.m,
        .has_size1 = size1 != NULL,
        .size1 = size1 ? coap_decode_var_bytes8(coap_opt_value(size1), coap_opt_length(size1)) : 0,
        .data = data,
        .len = data ? len : 0,
    };
    fedge_upload_result res;
    if (upload_block(&b, blk.bert, &res) != FEDGE_OK) {
        set_text(response, COAP_RESPONSE_CODE_INTERNAL_ERROR, "internal error");
        return;
    }
    reply_upload(session, request, id, &b, &res, response, &blk);
    free(res.body);
}

static int is_tcp(const coap_session_t *session)
{
    coap_proto_t p = coap_session_get_proto(session);
    return p == COAP_PROTO_TLS || p == COAP_PROTO_TCP;
}

/* A TCP connection accepted (kept in s->tcp; tcp_sweep enforces the cap and
 * the handshake timeout) or gone. */
static void tcp_track(fedge_server *s, coap_session_t *session, int added)
{
    if (added) {
        if (s->n_tcp == s->cap_tcp) {
            size_t cap = s->cap_tcp ? 2 * s->cap_tcp : 16;
            struct tcp_conn *t = realloc(s->tcp, cap * sizeof *t);
            if (!t) {
                FEDGE_WARN("TCP connection from %s closed: out of memory", coap_session_str(session));
                coap_session_disconnected(session, COAP_NACK_NOT_DELIVERABLE);
                s->tcp_refused++;
                return;
            }
            s->tcp = t;
            s->cap_tcp = cap;
        }
        s->tcp[s->n_tcp++] = (struct tcp_conn){session, mono_now(), 0, 0, 0};
        s->tcp_accepted++;
        s->tcp_settled = 0;
        return;
    }
    for (size_t i = 0; i < s->n_tcp; i++)
        if (s->tcp[i].session == session) {
            memmove(s->tcp + i, s->tcp + i + 1, (s->n_tcp - i - 1) * sizeof *s->tcp);
            s->n_tcp--;
            return;
        }
}

static void tcp_close(fedge_server *s, struct tcp_conn *c)
{
    c->closing = 1;
    coap_session_disconnected(c->session, COAP_NACK_NOT_DELIVERABLE);
    (void)s;
}

/* Whether the peer of a connection in handshake has sent a ClientHello
 * (libcoap's TLS session is OpenSSL's SSL; its handshake state leaves
 * TLS_ST_BEFORE with the first handshake message read). A peer without a
 * key can get this far, but a peer that sends nothing cannot. */
static int tcp_hello_seen(coap_session_t *session)
{
    coap_tls_library_t lib;
    SSL *ssl = coap_session_get_tls(session, &lib);
    return ssl && lib == COAP_TLS_LIBRARY_OPENSSL && SSL_get_state(ssl) != TLS_ST_BEFORE;
}

/* Established connections with the PSK identity of s->tcp[i] (plain TCP,
 * insecure: no identity, each connection its own). */
static size_t tcp_same_peer(const fedge_server *s, size_t i, size_t *oldest)
{
    const coap_bin_const_t *me = coap_session_get_psk_identity(s->tcp[i].session);
    size_t n = 0;
    *oldest = i;
    if (!me)
        return 1;
    for (size_t k = 0; k < s->n_tcp; k++) {
        const struct tcp_conn *c = &s->tcp[k];
        if (c->closing || !c->up)
            continue;
        const coap_bin_const_t *id = coap_session_get_psk_identity(c->session);
        if (id && id->length == me->length && memcmp(id->s, me->s, me->length) == 0) {
            if (n++ == 0)
                *oldest = k;
        }
    }
    return n;
}

/* Two budgets (docs/PROTOCOL.md "Transports"):
 *  - connections before their TLS handshake and CSM (anyone can open
 *    them): at most tcp_max_preauth; beyond it the oldest that has sent no
 *    ClientHello goes first, then the oldest, so a peer without a key that
 *    keeps them filled (and reopens each one closed at once) cannot keep
 *    a device's new connection from its handshake; each is closed
 *    tcp_handshake_timeout_s after its accept;
 *  - authenticated ones: a device holds TCP_PER_DEVICE at most (its newest);
 *    past tcp_max_connections the oldest of the device holding the most is
 *    closed, or the newest when every device holds one.
 * A pre-authentication connection never displaces an authenticated one.
 * libcoap frees a closed one on its next pass. */
#define TCP_PER_DEVICE 4
static void tcp_sweep(fedge_server *s)
{
    /* once every connection is up (or closing), only an accepted or a
     * refused one gives it work: it is not a walk of all on every pass */
    if (s->tcp_settled)
        return;
    double now = mono_now();
    size_t n_pre = 0, n_up = 0;
    for (size_t i = 0; i < s->n_tcp; i++) {
        struct tcp_conn *c = &s->tcp[i];
        if (c->closing)
            continue;
        if (!c->up && coap_session_get_state(c->session) == COAP_SESSION_STATE_ESTABLISHED) {
            c->up = 1;
            size_t oldest;
            if (tcp_same_peer(s, i, &oldest) > TCP_PER_DEVICE) {
                FEDGE_INFO("TCP connection from %s closed: its device holds %d newer ones",
                           coap_session_str(s->tcp[oldest].session), TCP_PER_DEVICE);
                s->tcp_refused++;
                tcp_close(s, &s->tcp[oldest]);
            }
        }
    }
    for (size_t i = 0; i < s->n_tcp; i++) {
        struct tcp_conn *c = &s->tcp[i];
        if (c->closing)
            continue;
        if (c->refused) {
            s->tcp_refused++;
            tcp_close(s, c);
        } else if (c->up) {
            n_up++;
        } else if (now - c->accepted_at >= s->tcp_handshake_s) {
            FEDGE_INFO("TCP connection from %s closed: no TLS handshake and CSM within %.1f s",
                       coap_session_str(c->session), s->tcp_handshake_s);
            s->tcp_timed_out++;
            tcp_close(s, c);
        } else {
            n_pre++;
        }
    }
    for (size_t k = 0; k < 2 * s->n_tcp && n_pre > s->tcp_preauth_max; k++) {
        struct tcp_conn *c = &s->tcp[k % s->n_tcp];
        if (c->closing || c->up || (k < s->n_tcp && tcp_hello_seen(c->session)))
            continue;
        s->tcp_evicted++;
        if (now - s->tcp_evict_logged_at >= 1.0) {
            FEDGE_INFO("TCP connection from %s closed before its handshake: %zu connections in handshake "
                       "(tcp_max_preauth; the oldest go first); %llu closed so",
                       coap_session_str(c->session), n_pre, (unsigned long long)(s->tcp_evicted - s->tcp_evict_logged));
            s->tcp_evict_logged_at = now;
            s->tcp_evict_logged = s->tcp_evicted;
        }
        tcp_close(s, c);
        n_pre--;
    }
    while (n_up > s->tcp_max) {
        size_t victim = SIZE_MAX, most = 1;
        for (size_t i = 0; i < s->n_tcp; i++) {
            if (s->tcp[i].closing || !s->tcp[i].up)
                continue;
            size_t oldest, n = tcp_same_peer(s, i, &oldest);
            if (n > most) {
                most = n;
                victim = oldest;
            }
            if (most == 1)
                victim = i; /* the newest, when no device holds two */
        }
        if (victim == SIZE_MAX)
            break;
        FEDGE_INFO("TCP connection from %s closed: %zu authenticated connections held (tcp_max_connections)",
                   coap_session_str(s->tcp[victim].session), n_up);
        s->tcp_refused++;
        tcp_close(s, &s->tcp[victim]);
        n_up--;
    }
    s->tcp_settled = n_pre == 0;
}

/* A peer whose CSM announced a Max-Message-Size below TCP_MIN_MESSAGE
 * (a /round answer must fit in one message): an Abort (7.05, RFC 8323
 * 5.6) saying so; tcp_sweep closes the connection. */
#define TCP_MIN_MESSAGE 512u
static void tcp_refuse_small(fedge_server *s, coap_session_t *session)
{
    static const char why[] = "Max-Message-Size below 512 bytes, the least fedge needs";
    FEDGE_INFO("TCP connection from %s closed: its CSM's Max-Message-Size allows %zu-byte messages, "
               "fewer than the %u bytes fedge needs", coap_session_str(session),
               coap_session_max_pdu_size(session), TCP_MIN_MESSAGE);
    coap_pdu_t *pdu = coap_pdu_init(COAP_MESSAGE_CON, COAP_SIGNALING_CODE_ABORT, 0,
                                    coap_session_max_pdu_size(session));
    if (pdu && !coap_add_data(pdu, sizeof why - 1, (const uint8_t *)why)) {
        coap_delete_pdu(pdu);
        pdu = NULL;
    }
    if (pdu)
        (void)coap_send(session, pdu); /* best effort: the connection is closed either way */
    for (size_t i = 0; i < s->n_tcp; i++)
        if (s->tcp[i].session == session)
            s->tcp[i].refused = 1;
    s->tcp_settled = 0;
}

/* A closed or deleted session's partial upload is freed at once. */
static int on_session_event(coap_session_t *session, const coap_event_t event)
{
    if (event == COAP_EVENT_SERVER_SESSION_NEW && g_server && is_tcp(session))
        tcp_track(g_server, session, 1);
    if (event == COAP_EVENT_SERVER_SESSION_DEL && g_server && is_tcp(session))
        tcp_track(g_server, session, 0);
    /* A TCP peer's CSM Max-Message-Size sizes our messages to it (libcoap
     * set the session's MTU from it; OpenSSL writes a message longer than
     * a TLS record as several). */
    if (event == COAP_EVENT_SESSION_CONNECTED && is_tcp(session) && g_server &&
        coap_session_max_pdu_size(session) < TCP_MIN_MESSAGE - 4)
        tcp_refuse_small(g_server, session);
    if (event == COAP_EVENT_SERVER_SESSION_DEL && g_server)
        answer_drop(session);
    switch (event) {
    case COAP_EVENT_SERVER_SESSION_DEL:
    case COAP_EVENT_DTLS_CLOSED:
    case COAP_EVENT_DTLS_ERROR:
    case COAP_EVENT_SESSION_CLOSED:
    case COAP_EVENT_SESSION_FAILED:
    case COAP_EVENT_TCP_CLOSED:
    case COAP_EVENT_TCP_FAILED:
        if (g_server)
            fedge_uploads_drop(g_server->uploads, session);
        if (g_server && g_server->observers) {
            /* the device observed on this session: it has left (libcoap
             * deletes the session's subscriptions itself); a device that
             * came back on a newer session observes there and is kept */
            int d = session_device(session);
            if (d >= 0 && g_server->observers[d].session == session) {
                drop_observation(g_server, (size_t)d, 0);
                if (g_server->agg->sched->left)
                    g_server->agg->sched->left(g_server->agg, d);
            }
        }
        break;
    default:
        break;
    }
    return 0;
}

static const coap_bin_const_t *psk_for_identity(coap_bin_const_t *identity, coap_session_t *session,
                                               void *arg)
{
    (void)session;
    fedge_server *s = arg;
    if (!identity)
        return NULL;
    const fedge_device_entry *e = fedge_keys_find(&s->agg->keys, (const char *)identity->s, identity->length);
    if (!e) {
        FEDGE_INFO("DTLS handshake refused: unknown identity '%.*s'",
                   (int)(identity->length > 64 ? 64 : identity->length), identity->s);
        return NULL;
    }
    return &s->psks[e - s->agg->keys.devices];
}

/* ---- the UDP receive buffer ----
 * A restart brings every device back at once; the kernel drops datagrams
 * that find the socket's buffer full. The buffer is sized for the
 * population: RCVBUF_PER_DEVICE per device (a DTLS flight and its
 * retransmissions: ~12 small datagrams or ~7 full-size ones as the kernel
 * accounts them), within [the kernel default, RCVBUF_MAX], unless
 * udp_rcvbuf_bytes says otherwise (docs/BENCHMARKS.md, reconnect burst). */
#define RCVBUF_PER_DEVICE ((size_t)16 * 1024)
#define RCVBUF_MAX ((size_t)64 << 20)
#define HANDSHAKES_MAX ((size_t)1024)

/* libcoap 4.3.1 does not expose an endpoint's socket: find the socket of
 * type (SOCK_DGRAM, or SOCK_STREAM: a listening one) bound to the listening
 * port among our descriptors. */
static int find_socket(const struct sockaddr *bound, int want_type)
{
    int found = -1;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    uint16_t want_port = bound->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)bound)->sin6_port
                                                      : ((const struct sockaddr_in *)bound)->sin_port;
    for (struct dirent *e; found < 0 && (e = readdir(d)) != NULL;) {
        char *end = NULL;
        long fd = strtol(e->d_name, &end, 10);
        if (end == e->d_name || *end != '\0' || fd < 0 || fd == dirfd(d))
            continue;
        int type = 0;
        socklen_t tl = sizeof type;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int acc = 0;
        socklen_t al = sizeof acc;
        if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != want_type ||
            (want_type == SOCK_STREAM &&
             (getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) != 0 || !acc)) ||
            getsockname((int)fd, (struct sockaddr *)&ss, &sl) != 0 || ss.ss_family != bound->sa_family)
            continue;
        uint16_t port = ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port;
        if (want_port == 0 || port == want_port)
            found = (int)fd;
    }
    closedir(d);
    return found;
}

static void size_receive_buffer(fedge_server *s, const struct sockaddr *bound)
{
    const fedge_aggregator *a = s->agg;
    int cur = 0;
    socklen_t len = sizeof cur;
    s->udp_fd = find_socket(bound, SOCK_DGRAM);
    if (s->udp_fd < 0 || getsockopt(s->udp_fd, SOL_SOCKET, SO_RCVBUF, &cur, &len) != 0) {
        FEDGE_WARN("cannot find the listening socket; its receive buffer keeps the kernel default");
        s->udp_fd = -1;
        return;
    }
    size_t want;
    if (a->cfg.udp_rcvbuf_bytes > 0) {
        want = (size_t)a->cfg.udp_rcvbuf_bytes;
    } else {
        want = a->keys.n > RCVBUF_MAX / RCVBUF_PER_DEVICE ? RCVBUF_MAX : a->keys.n * RCVBUF_PER_DEVICE;
        if (want <= (size_t)cur) {
            s->rcvbuf = cur;
            FEDGE_INFO("UDP receive buffer %d bytes (the kernel default suffices for %zu devices)",
                       cur, a->keys.n);
            return;
        }
    }
    /* the kernel doubles the value set (for its bookkeeping) and reports that */
    int half = (int)(want / 2);
    const char *how = "SO_RCVBUFFORCE";
    if (setsockopt(s->udp_fd, SOL_SOCKET, SO_RCVBUFFORCE, &half, sizeof half) != 0) {
        how = "SO_RCVBUF";
        if (setsockopt(s->udp_fd, SOL_SOCKET, SO_RCVBUF, &half, sizeof half) != 0)
            FEDGE_WARN("SO_RCVBUF %d: %s", half, strerror(errno));
    }
    len = sizeof cur;
    if (getsockopt(s->udp_fd, SOL_SOCKET, SO_RCVBUF, &cur, &len) != 0)
        cur = 0;
    s->rcvbuf = cur;
    if ((size_t)cur + 64 < want)
        FEDGE_WARN("UDP receive buffer %d bytes, wanted %zu for %zu devices (%s is capped by "
                   "net.core.rmem_max without CAP_NET_ADMIN): a reconnect burst may lose datagrams",
                   cur, want, a->keys.n, how);
    else
        FEDGE_INFO("UDP receive buffer %d bytes for %zu devices (%s)", cur, a->keys.n, how);
}

/* CoAP over TLS/TCP (RFC 8323) on cfg.listen_tcp, with the DTLS PSKs. The
 * CSM's Max-Message-Size (TCP_MAX_MESSAGE) bounds every message a peer may
 * send (libcoap closes the connection of a larger one) and sets the BERT
 * block a client sends: 64 KiB. */
#define TCP_MAX_MESSAGE ((uint32_t)(64 * 1024 + 1024))
#define TCP_BACKLOG_MAX 4096
#define TCP_FD_RESERVE 64 /* descriptors kept for everything but TCP connections */

static int listen_tcp(fedge_server *s, char *err, size_t errlen)
{
    const fedge_agg_config *c = &s->agg->cfg;
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    char why[160];
    if (!c->listen_tcp[0])
        return FEDGE_OK;
    if (!coap_tcp_is_supported() || (!c->insecure && !coap_tls_is_supported())) {
        snprintf(err, errlen, "listen_tcp: this libcoap has no TCP%s support", c->insecure ? "" : "/TLS");
        return FEDGE_ERR_UNSUPPORTED;
    }
    if (fedge_agg_parse_listen(c->listen_tcp, &ss, &sl, why, sizeof why) != FEDGE_OK) {
        snprintf(err, errlen, "listen_tcp: %s", why);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    coap_address_t addr;
    coap_address_init(&addr);
    addr.size = sl;
    memcpy(&addr.addr, &ss, sl);
    coap_context_set_csm_max_message_size(s->ctx, TCP_MAX_MESSAGE);
    if (!coap_new_endpoint(s->ctx, &addr, c->insecure ? COAP_PROTO_TCP : COAP_PROTO_TLS)) {
        snprintf(err, errlen, "cannot listen on TCP %s (in use?)", c->listen_tcp);
        return FEDGE_ERR_IO;
    }
    s->tcp_max = c->tcp_max_connections > 0 ? (size_t)c->tcp_max_connections : s->agg->keys.n + 16;
    s->tcp_preauth_max = (size_t)c->tcp_max_preauth;
    /* each connection holds a descriptor: past RLIMIT_NOFILE accept() fails
     * and so would the log's and the model store's files */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)s->tcp_max + s->tcp_preauth_max + TCP_FD_RESERVE > rl.rlim_cur) {
        rlim_t want = (rlim_t)s->tcp_max + s->tcp_preauth_max + TCP_FD_RESERVE;
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || want < rl.rlim_max ? want : rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl); /* the limit read back decides */
        if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
            rl.rlim_cur = TCP_FD_RESERVE + 1;
        if ((rlim_t)s->tcp_max + s->tcp_preauth_max + TCP_FD_RESERVE > rl.rlim_cur) {
            size_t avail = rl.rlim_cur > TCP_FD_RESERVE + 1 ? (size_t)(rl.rlim_cur - TCP_FD_RESERVE) : 2;
            if (s->tcp_preauth_max > avail / 4)
                s->tcp_preauth_max = avail / 4 ? avail / 4 : 1;
            s->tcp_max = avail - s->tcp_preauth_max;
            FEDGE_WARN("TCP connections capped at %zu authenticated + %zu in handshake: %llu file descriptors "
                       "allowed (RLIMIT_NOFILE)",
                       s->tcp_max, s->tcp_preauth_max, (unsigned long long)rl.rlim_cur);
        }
    }
    /* libcoap listens with a backlog of 5: a reconnect burst would wait for
     * the kernel's SYN-ACK retries (1, 3, 7 s ...); listen() again sets it */
    int lfd = find_socket((const struct sockaddr *)&ss, SOCK_STREAM);
    size_t want_backlog = s->tcp_max + s->tcp_preauth_max;
    int backlog = want_backlog < TCP_BACKLOG_MAX ? (int)want_backlog : TCP_BACKLOG_MAX;
    if (lfd < 0 || listen(lfd, backlog) != 0)
        FEDGE_WARN("cannot raise the TCP listen backlog (%s): a burst of connections is accepted 5 at a time",
                   lfd < 0 ? "listening socket not found" : strerror(errno));
    s->tcp_handshake_s = c->tcp_handshake_timeout_s;
    FEDGE_INFO("listening on TCP %s (%s), at most %zu authenticated connections and %zu in handshake, "
               "%.1f s to finish a handshake",
               c->listen_tcp, c->insecure ? "plain CoAP over TCP, INSECURE" : "CoAP over TLS-PSK",
               s->tcp_max, s->tcp_preauth_max, s->tcp_handshake_s);
    return FEDGE_OK;
}

static int add_resource(coap_context_t *ctx, const char *path, coap_request_t method,
                        coap_method_handler_t h)
{
    coap_resource_t *r = coap_resource_init(coap_make_str_const(path), 0);
    if (!r)
        return FEDGE_ERR_NOMEM;
    coap_register_request_handler(r, method, h);
    coap_add_resource(ctx, r);
    return FEDGE_OK;
}

int fedge_server_start(fedge_aggregator *a, fedge_server **out, char *err, size_t errlen)
{
    fedge_server *s = NULL;
    struct addrinfo hints, *res = NULL;
    char host[128];
    int ret = FEDGE_OK;
    *out = NULL;
    if (g_server) {
        snprintf(err, errlen, "a server is already running in this process");
        return FEDGE_ERR_STATE;
    }
    snprintf(host, sizeof host, "%s", a->cfg.listen);
    char *colon = strrchr(host, ':');
    if (!colon) {
        snprintf(err, errlen, "listen: expected HOST:PORT");
        return FEDGE_ERR_CONFIG_VALUE;
    }
    *colon = '\0';
    const char *port = colon + 1;
    char *h = host;
    if (h[0] == '[' && colon > h && colon[-1] == ']') {
        h++;
        colon[-1] = '\0';
    }

    coap_startup();
    coap_set_log_level(LOG_WARNING);
    coap_dtls_set_log_level(LOG_WARNING);
    /* tcp_hello_seen reads OpenSSL's handshake state, and the PSK suites
     * (tools/deps.sh) are the OpenSSL build's */
    const coap_tls_version_t *tls = coap_get_tls_library_version();
    if (!a->cfg.insecure && (!tls || tls->type != COAP_TLS_LIBRARY_OPENSSL)) {
        snprintf(err, errlen, "this libcoap is not built on OpenSSL: fedge-aggregator links libcoap-3-openssl "
                 "(tools/deps.sh, make deps)");
        FAIL(FEDGE_ERR_UNSUPPORTED);
    }
    s = calloc(1, sizeof *s);
    if (!s)
        FAIL(FEDGE_ERR_NOMEM);
    s->agg = a;
    s->udp_fd = -1;
    fedge_upload_limits lim;
    CHK(upload_limits(a, &lim, err, errlen));
    CHK(fedge_uploads_new(&lim, &s->uploads));
    s->ctx = coap_new_context(NULL);
    if (!s->ctx)
        FAIL(FEDGE_ERR_NOMEM);
    /* no COAP_BLOCK_SINGLE_BODY: POST /update blocks go to hnd_update one by one */
    coap_context_set_block_mode(s->ctx, COAP_BLOCK_USE_LIBCOAP);
    coap_context_set_max_idle_sessions(s->ctx, (unsigned)(a->keys.n + 16));
    coap_register_event_handler(s->ctx, on_session_event);
    coap_register_nack_handler(s->ctx, on_nack);
    /* a reconnect burst: libcoap ignores new DTLS clients while this many
     * handshakes are open (default 100); each costs an OpenSSL SSL */
    coap_context_set_max_handshake_sessions(
        s->ctx, (unsigned)(a->keys.n + 16 < HANDSHAKES_MAX ? a->keys.n + 16 : HANDSHAKES_MAX));

    if (!a->cfg.insecure) {
        if (!coap_dtls_is_supported()) {
            snprintf(err, errlen, "this libcoap has no DTLS support");
            FAIL(FEDGE_ERR_UNSUPPORTED);
        }
        s->psks = calloc(a->keys.n, sizeof *s->psks);
        s->psk_text = calloc(a->keys.n, sizeof *s->psk_text);
        if (!s->psks || !s->psk_text)
            FAIL(FEDGE_ERR_NOMEM);
        for (size_t i = 0; i < a->keys.n; i++) {
            CHK(fedge_keys_dtls_psk(a->keys.devices[i].secret, a->keys.devices[i].id, s->psk_text[i]));
            s->psks[i].s = (const uint8_t *)s->psk_text[i];
            s->psks[i].length = FEDGE_PSK_LEN;
        }
        static coap_dtls_spsk_t spsk;
        memset(&spsk, 0, sizeof spsk);
        spsk.version = COAP_DTLS_SPSK_SETUP_VERSION;
        spsk.validate_id_call_back = psk_for_identity;
        spsk.id_call_back_arg = s;
        /* the default key is never used: every identity maps to its own */
        spsk.psk_info.key.s = (const uint8_t *)"fedge-no-default-psk";
        spsk.psk_info.key.length = 20;
        if (!coap_context_set_psk2(s->ctx, &spsk)) {
            snprintf(err, errlen, "cannot set up DTLS-PSK");
            FAIL(FEDGE_ERR_CRYPTO);
        }
    }

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    int gai = getaddrinfo(h, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "listen %s: %s", a->cfg.listen, gai_strerror(gai));
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    coap_address_t addr;
    coap_address_init(&addr);
    addr.size = (socklen_t)res->ai_addrlen;
    memcpy(&addr.addr, res->ai_addr, res->ai_addrlen);
    if (!coap_new_endpoint(s->ctx, &addr, a->cfg.insecure ? COAP_PROTO_UDP : COAP_PROTO_DTLS)) {
        snprintf(err, errlen, "cannot listen on %s (in use?)", a->cfg.listen);
        FAIL(FEDGE_ERR_IO);
    }
    size_receive_buffer(s, res->ai_addr);
    CHK(listen_tcp(s, err, errlen));
    if (a->cfg.no_observe) {
        CHK(add_resource(s->ctx, "round", COAP_REQUEST_GET, hnd_round));
    } else {
        s->observers = calloc(a->keys.n ? a->keys.n : 1, sizeof *s->observers);
        if (!s->observers)
            FAIL(FEDGE_ERR_NOMEM);
        s->round_res = coap_resource_init(coap_make_str_const("round"), COAP_RESOURCE_FLAGS_NOTIFY_CON);
        if (!s->round_res)
            FAIL(FEDGE_ERR_NOMEM);
        coap_register_request_handler(s->round_res, COAP_REQUEST_GET, hnd_round);
        coap_resource_set_get_observable(s->round_res, 1);
        coap_add_resource(s->ctx, s->round_res);
        s->round_digest = round_digest(a);
    }
    CHK(add_resource(s->ctx, "model", COAP_REQUEST_GET, hnd_model));
    CHK(add_resource(s->ctx, "control", COAP_REQUEST_GET, hnd_control));
    CHK(add_resource(s->ctx, "update", COAP_REQUEST_POST, hnd_update));
    CHK(add_resource(s->ctx, "status", COAP_REQUEST_GET, hnd_status));
    if (a->cfg.ingest_workers != 0) {
        long nw = a->cfg.ingest_workers;
        if (nw < 0) {
            nw = sysconf(_SC_NPROCESSORS_ONLN);
            if (nw < 1)
                nw = 1;
        }
        s->group_max = (size_t)a->cfg.commit_group;
        s->commit_wait_s = a->cfg.commit_wait_ms / 1000.0;
        s->ready = calloc(s->group_max, sizeof *s->ready);
        if (!s->ready)
            FAIL(FEDGE_ERR_NOMEM);
        CHK(fedge_ingest_pool_new((size_t)nw, (size_t)a->cfg.ingest_queue, &s->pool));
        FEDGE_INFO("ingest: %ld workers open updates, %ld held at most, up to %ld per commit (%.1f ms wait)", nw,
                   a->cfg.ingest_queue, a->cfg.commit_group, a->cfg.commit_wait_ms);
    } else {
        FEDGE_INFO("ingest: inline on the I/O thread (ingest_workers = 0)");
    }
    g_server = s;
    FEDGE_INFO("listening on %s (%s), %zu devices", a->cfg.listen,
               a->cfg.insecure ? "plain CoAP, INSECURE" : "CoAP over DTLS-PSK", a->keys.n);
    FEDGE_INFO("uploads: at most %zu bytes each, %zu in progress per device, %zu in all, "
               "%zu bytes reserved in all, freed after %.1f s idle (%.1f s when room is wanted)",
               lim.max_body, lim.max_per_device, lim.max_total, lim.budget_bytes,
               lim.idle_timeout_s, lim.evict_idle_s);
cleanup:
    if (res)
        freeaddrinfo(res);
    if (ret != FEDGE_OK) {
        if (!err[0])
            snprintf(err, errlen, "%s", fedge_strerror(ret));
        fedge_server_free(s);
        s = NULL;
    }
    *out = s;
    return ret;
}

int fedge_server_process(fedge_server *s, unsigned timeout_ms)
{
    notify_round_observers(s);
    if (s->n_tcp)
        tcp_sweep(s);
    if (!s->pool) {
        if (coap_io_process(s->ctx, timeout_ms) < 0)
            return FEDGE_ERR_IO;
        fedge_uploads_expire(s->uploads, mono_now());
        return FEDGE_OK;
    }
    /* libcoap's epoll descriptor (sockets and its timers) and the pool's
     * eventfd: a worker's finished frame wakes the loop at once */
    int wait_ms = -1;
    if (commit_ready(s, &wait_ms) > 0 && coap_io_process(s->ctx, COAP_IO_NO_WAIT) < 0)
        return FEDGE_ERR_IO;
    int timeout = wait_ms >= 0 && (unsigned)wait_ms < timeout_ms ? wait_ms : (int)timeout_ms;
    int cfd = coap_context_get_coap_fd(s->ctx);
    if (cfd >= 0) {
        struct pollfd pfd[2] = {{.fd = cfd, .events = POLLIN}, {.fd = fedge_ingest_pool_fd(s->pool), .events = POLLIN}};
        if (poll(pfd, 2, timeout) < 0 && errno != EINTR)
            return FEDGE_ERR_IO;
        if (coap_io_process(s->ctx, COAP_IO_NO_WAIT) < 0)
            return FEDGE_ERR_IO;
    } else if (coap_io_process(s->ctx, fedge_ingest_pool_held(s->pool) || s->n_ready ? 1 : (unsigned)timeout) < 0) {
        return FEDGE_ERR_IO;
    }
    if (commit_ready(s, &wait_ms) > 0 && coap_io_process(s->ctx, COAP_IO_NO_WAIT) < 0)
        return FEDGE_ERR_IO;
    fedge_uploads_expire(s->uploads, mono_now());
    return FEDGE_OK;
}

void fedge_server_free(fedge_server *s)
{
    if (!s)
        return;
    fedge_ingest_pool_free(s->pool); /* joins the workers */
    for (size_t i = 0; i < s->n_ready; i++)
        fedge_ingest_job_free(s->ready[i]);
    free(s->ready);
    if (s->ctx)
        coap_free_context(s->ctx); /* releases in-flight model bodies and separate responses */
    while (s->pending) {
        pending_update *next = s->pending->next;
        free(s->pending);
        s->pending = next;
    }
    body_unref(s->body);
    body_unref(s->control);
    fedge_uploads_free(s->uploads);
    free(s->observers);
    for (size_t i = 0; s->answers && i < s->answer_buckets; i++)
        for (final_answer *f = s->answers[i], *next; f; f = next) {
            next = f->next;
            free(f);
        }
    free(s->answers);
    if (s->psk_text) {
        memset(s->psk_text, 0, s->agg->keys.n * sizeof *s->psk_text);
        free(s->psk_text);
    }
    free(s->psks);
    free(s->tcp);
    if (g_server == s)
        g_server = NULL;
    free(s);
    coap_cleanup();
}

void fedge_server_metrics(const fedge_server *s, fedge_metrics_server *m)
{
    memset(m, 0, sizeof *m);
    if (s->pool) {
        m->have_pool = 1;
        m->ingest_held = fedge_ingest_pool_held(s->pool);
        m->ingest_capacity = fedge_ingest_pool_capacity(s->pool);
    }
    fedge_upload_stats st;
    fedge_uploads_stats(s->uploads, &st);
    m->uploads_in_progress = st.partial;
    m->observers = s->n_observers;
    m->notifications = s->notifications;
    m->latency = s->latency;
}

int fedge_server_reload_keys(fedge_server *s)
{
    fedge_aggregator *a = s->agg;
    fedge_agg_keys_reload r;
    coap_bin_const_t *psks = NULL;
    char (*psk_text)[FEDGE_PSK_LEN + 1] = NULL;
    round_observer *observers = NULL;
    size_t n_old = a->keys.n;
    int ret = fedge_agg_keys_prepare(a, &r);
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("keys reload: %s; keeping the previous keys", r.err);
        return ret;
    }
    size_t n = r.keys.n;
    if (s->psks) {
        psks = calloc(n, sizeof *psks);
        psk_text = calloc(n, sizeof *psk_text);
        if (!psks || !psk_text)
            FAIL(FEDGE_ERR_NOMEM);
        for (size_t i = 0; i < n; i++) {
            if (!r.keys.devices[i].removed)
                CHK(fedge_keys_dtls_psk(r.keys.devices[i].secret, r.keys.devices[i].id, psk_text[i]));
            psks[i].s = (const uint8_t *)psk_text[i];
            psks[i].length = FEDGE_PSK_LEN;
        }
    }
    if (s->observers) {
        observers = calloc(n ? n : 1, sizeof *observers);
        if (!observers)
            FAIL(FEDGE_ERR_NOMEM);
        memcpy(observers, s->observers, n_old * sizeof *observers);
    }
    /* the ledger last: once it says the new keys, nothing may fail before they are served */
    ret = fedge_agg_keys_record(a, &r);
cleanup:
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("keys reload: %s; keeping the previous keys", r.err[0] ? r.err : fedge_strerror(ret));
        if (psk_text)
            memset(psk_text, 0, n * sizeof *psk_text);
        free(psk_text);
        free(psks);
        free(observers);
        fedge_agg_keys_abort(&r);
        return ret;
    }
    if (psks) {
        memset(s->psk_text, 0, n_old * sizeof *s->psk_text);
        free(s->psk_text);
        free(s->psks);
        s->psk_text = psk_text;
        s->psks = psks;
    }
    if (observers) {
        free(s->observers);
        s->observers = observers;
        for (size_t i = 0; i < n_old; i++)
            if (r.keys.devices[i].removed)
                drop_observation(s, i, 1);
    }
    fedge_agg_keys_commit(a, &r);
    coap_context_set_max_idle_sessions(s->ctx, (unsigned)(a->keys.n + 16));
    return FEDGE_OK;
}
