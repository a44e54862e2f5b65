/* relay.c — an inner node of an aggregation tree (relay.h). */
#include "relay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/platform_util.h>

#include "clock.h"
#include "close.h"
#include "common.h"
#include "counter.h"
#include "envelope.h"
#include "governance.h"
#include "link.h"
#include "log.h"
#include "modelfile.h"
#include "modelstore.h"
#include "policy.h"
#include "retention.h"
#include "round_info.h"
#include "scheduler.h"
#include "store.h"
#include "strategy.h"
#include "update.h"

#define RELAY_SENT_SQL                                                                              \
    "CREATE TABLE IF NOT EXISTS relay_sent(round INTEGER PRIMARY KEY, parent_run BLOB NOT NULL,"    \
    " counter INTEGER NOT NULL, n_updates INTEGER NOT NULL, n_samples INTEGER NOT NULL,"            \
    " head_hash BLOB NOT NULL, sealed BLOB NOT NULL, sealed_sha256 BLOB NOT NULL,"                  \
    " status TEXT NOT NULL CHECK(status IN ('sealed','answered','unanswered')), code INTEGER,"      \
    " reply TEXT, sent_at REAL);"

struct fedge_relay {
    fedge_edge_link *link;
    fedge_device_key key;
    char psk[FEDGE_PSK_LEN + 1];
    char host[64];
    uint16_t port;
    char id[FEDGE_DEVICE_ID_MAX + 1];
    fedge_edge_reply reply;       /* 4 KiB: off the stack */
    double next_poll;             /* fedge_now() */
    unsigned failures;            /* requests to the parent failed in a row */
    int parent_known;             /* parent_run and parent_end are for the open round */
    uint8_t parent_run[FEDGE_RUN_ID_LEN];
    double parent_end;            /* the parent's deadline for the open round (fedge_now()) */
    uint32_t passed_round;        /* a parent round decided against (too late to take) */
    fedge_model fetched;          /* GET /model's body, parsed */
    int have_fetched;
    uint8_t fetched_version[FEDGE_HASH_LEN];
};

static const volatile sig_atomic_t *g_stop; /* fedge_relay_set_stop */

void fedge_relay_set_stop(const volatile sig_atomic_t *stop)
{
    g_stop = stop;
}

static int split_host_port(const char *hp, char *host, size_t cap, uint16_t *port)
{
    const char *colon = strrchr(hp, ':');
    if (!colon)
        return FEDGE_ERR_CONFIG_VALUE;
    const char *h = hp;
    size_t n = (size_t)(colon - hp);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n == 0 || n >= cap)
        return FEDGE_ERR_CONFIG_VALUE;
    memcpy(host, h, n);
    host[n] = '\0';
    long p = strtol(colon + 1, NULL, 10);
    if (p < 1 || p > 65535)
        return FEDGE_ERR_CONFIG_VALUE;
    *port = (uint16_t)p;
    return FEDGE_OK;
}

int fedge_relay_listed(const fedge_agg_config *cfg, const char *device)
{
    size_t len = device ? strlen(device) : 0;
    if (len == 0)
        return 0;
    for (const char *p = cfg->relays; *p;) {
        size_t n = strcspn(p, ",");
        if (n == len && memcmp(p, device, len) == 0)
            return 1;
        if (!p[n])
            break;
        p += n + 1;
    }
    return 0;
}

int fedge_relay_open(fedge_aggregator *a, char *err, size_t errlen)
{
    fedge_keys keys;
    struct fedge_relay *r = NULL;
    int ret = FEDGE_OK, have_keys = 0;
    memset(&keys, 0, sizeof keys);
    a->relay = NULL;
    if (!a->cfg.upstream[0])
        return FEDGE_OK;
    if (fedge_policy_dp_enabled(a->policy)) {
        snprintf(err, errlen, "the policy turns DP on: a relay refuses DP (per-update clipping applies at the "
                 "relay; noise belongs to the root, which counts each relay as one client)");
        return FEDGE_ERR_CONFIG_VALUE;
    }
    r = calloc(1, sizeof *r);
    if (!r)
        return FEDGE_ERR_NOMEM;
    snprintf(r->id, sizeof r->id, "%s", a->cfg.upstream_id);
    if (split_host_port(a->cfg.upstream, r->host, sizeof r->host, &r->port) != FEDGE_OK) {
        snprintf(err, errlen, "upstream: expected HOST:PORT, got '%s'", a->cfg.upstream);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    ret = fedge_keys_load(a->cfg.upstream_keys, &keys, err, errlen);
    if (ret != FEDGE_OK)
        goto cleanup;
    have_keys = 1;
    const fedge_device_entry *e = fedge_keys_find(&keys, r->id, strlen(r->id));
    if (!e) {
        snprintf(err, errlen, "upstream_keys %s has no line for upstream_id %s", a->cfg.upstream_keys, r->id);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    CHK(fedge_envelope_derive_key(e->secret, FEDGE_SECRET_LEN, r->id, &r->key));
    CHK(fedge_keys_dtls_psk(e->secret, r->id, r->psk));
    CHK(fedge_store_exec(a->db, RELAY_SENT_SQL));
    {
        /* who this log is at the parent: the cross-tier lineage's label (tiers.h) */
        sqlite3_stmt *st = NULL;
        CHK(fedge_store_prepare(a->db, "INSERT OR REPLACE INTO meta(key, value) VALUES('upstream_id', ?)", &st));
        sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
        CHK(fedge_store_step_done(a->db, st));
    }
    fedge_edge_link_config lc = {
        .host = r->host,
        .port = r->port,
        .id = r->id,
        .psk = r->psk,
        .handshake_timeout_ms = (uint32_t)(a->cfg.upstream_timeout_s * 500.0), /* half: see request() */
    };
    char why[256] = "";
    ret = fedge_edge_link_open(&lc, &r->link, why, sizeof why);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "upstream %s: %s", a->cfg.upstream, why);
        goto cleanup;
    }
    FEDGE_INFO("relay: parent %s as device %s (DTLS); rounds follow the parent's", a->cfg.upstream, r->id);
    a->relay = r;
    r = NULL;
cleanup:
    if (have_keys)
        fedge_keys_free(&keys);
    if (r) {
        fedge_device_key_wipe(&r->key);
        mbedtls_platform_zeroize(r->psk, sizeof r->psk);
        free(r);
    }
    return ret;
}

void fedge_relay_free(fedge_aggregator *a)
{
    struct fedge_relay *r = a->relay;
    if (!r)
        return;
    fedge_edge_link_close(r->link);
    fedge_model_free(&r->fetched);
    fedge_device_key_wipe(&r->key);
    mbedtls_platform_zeroize(r->psk, sizeof r->psk);
    free(r);
    a->relay = NULL;
}

/* One request to the parent: at most upstream_timeout_s in all, half for a
 * DTLS handshake when a session must be opened, half for the exchange,
 * and never past `until`. */
static int request(fedge_aggregator *a, fedge_edge_request *req, double until)
{
    struct fedge_relay *r = a->relay;
    double left = until - fedge_now();
    if (left > a->cfg.upstream_timeout_s / 2)
        left = a->cfg.upstream_timeout_s / 2;
    if (left <= 0.001)
        return FEDGE_ERR_TIMEOUT;
    req->timeout_ms = (uint32_t)(left * 1000.0);
    int rc = fedge_edge_link_request(r->link, req, &r->reply, g_stop);
    r->failures = rc == FEDGE_OK ? 0 : r->failures + 1;
    if (rc != FEDGE_OK)
        FEDGE_WARN("relay: %s /%s to the parent: %s (%s)", req->method == FEDGE_EDGE_GET ? "GET" : "POST",
                   req->path, fedge_strerror(rc), fedge_edge_link_last_error(r->link));
    return rc;
}

static int model_sink(void *arg, const uint8_t *data, size_t len)
{
    struct fedge_relay *r = arg;
    fedge_model_free(&r->fetched);
    memset(&r->fetched, 0, sizeof r->fetched);
    r->have_fetched = 0;
    int ret = fedge_model_deserialize(data, len, &r->fetched, r->fetched_version);
    r->have_fetched = ret == FEDGE_OK;
    return ret;
}

/* The parent's model for round ri becomes the current one (logged as a
 * models row of kind init: it was made by the parent, not here). */
static int adopt_parent_model(fedge_aggregator *a, const fedge_round_info *ri, int *ok)
{
    struct fedge_relay *r = a->relay;
    char info[256];
    int ret = FEDGE_OK;
    *ok = 0;
    if (memcmp(ri->model, a->version, FEDGE_HASH_LEN) == 0) {
        *ok = 1;
        return FEDGE_OK;
    }
    fedge_edge_request req = {
        .method = FEDGE_EDGE_GET,
        .path = "model",
        .sink = model_sink,
        .sink_arg = r,
        .max_body = 4 * fedge_model_spec_param_count(&ri->spec) + 64 + FEDGE_MODEL_SPEC_MAX,
    };
    r->have_fetched = 0;
    if (request(a, &req, fedge_now() + a->cfg.upstream_timeout_s) != FEDGE_OK)
        return FEDGE_OK;
    if (r->reply.code != 205 || !r->have_fetched) {
        FEDGE_WARN("relay: GET /model from the parent answered %d.%02d%s", r->reply.code / 100,
                   r->reply.code % 100, r->reply.sink_called && !r->have_fetched ? " with an unusable model" : "");
        fedge_edge_link_reset(r->link);
        return FEDGE_OK;
    }
    if (memcmp(r->fetched_version, ri->model, FEDGE_HASH_LEN) != 0) {
        FEDGE_INFO("relay: the parent served another model than its round %u's; asking again", ri->round);
        return FEDGE_OK;
    }
    if (fedge_model_spec_id(&r->fetched.spec) != a->model_id) {
        char spec[FEDGE_MODEL_SPEC_MAX];
        (void)fedge_model_spec_format(&a->model.spec, spec, sizeof spec);
        FEDGE_ERROR("relay: the parent's model is %s, not this relay's model_spec %s; round %u not served",
                    ri->spec_text, spec, ri->round);
        r->passed_round = ri->round;
        return FEDGE_OK;
    }
    snprintf(info, sizeof info, "the parent's model for its round %u (relay of %s)", ri->round, a->cfg.upstream);
    CHK(fedge_store_begin(a->db));
    CHK(fedge_modelstore_adopt(a, &r->fetched, ri->round));
    r->have_fetched = 0;
    CHK(fedge_modelstore_record(a, NULL, "init", ri->round, -1, info));
    CHK(fedge_store_commit(a->db));
    *ok = 1;
cleanup:
    if (ret != FEDGE_OK) {
        fedge_store_rollback(a->db);
        char err[256] = "";
        if (fedge_modelstore_load_current(a, err, sizeof err) != FEDGE_OK)
            FEDGE_ERROR("cannot reload the current model: %s", err);
    }
    return ret;
}

/* GET /round from the parent; *got = 0 when no usable answer came. */
static int poll_parent(fedge_aggregator *a, fedge_round_info *ri, int *got)
{
    struct fedge_relay *r = a->relay;
    char why[160] = "";
    *got = 0;
    fedge_edge_request req = {.method = FEDGE_EDGE_GET, .path = "round"};
    if (request(a, &req, fedge_now() + a->cfg.upstream_timeout_s) != FEDGE_OK)
        return FEDGE_OK;
    if (r->reply.code != 205) {
        FEDGE_WARN("relay: GET /round from the parent answered %d.%02d", r->reply.code / 100, r->reply.code % 100);
        return FEDGE_OK;
    }
    if (r->reply.body_total > r->reply.body_len ||
        fedge_round_info_parse(r->reply.body, r->reply.body_len, ri, why, sizeof why) != FEDGE_OK) {
        FEDGE_WARN("relay: the parent's GET /round is unusable: %s", why[0] ? why : "too long");
        return FEDGE_OK;
    }
    *got = 1;
    return FEDGE_OK;
}

/* Writes the reply to a sent partial into relay_sent and the audited log. */
static int record_answer(fedge_aggregator *a, uint32_t round, int rc)
{
    struct fedge_relay *r = a->relay;
    sqlite3_stmt *st = NULL;
    char detail[320], line[160];
    int ret;
    size_t j = 0;
    for (size_t i = 0; i < r->reply.body_len && j + 1 < sizeof line; i++) {
        char ch = r->reply.body[i];
        if (ch == '\n' || ch == '\r')
            break;
        line[j++] = ch >= 32 && ch < 127 ? ch : '?';
    }
    line[j] = '\0';
    int answered = rc == FEDGE_OK;
    CHK(fedge_store_begin(a->db));
    CHK(fedge_store_prepare(a->db, "UPDATE relay_sent SET status=?, code=?, reply=?, sent_at=? WHERE round=?", &st));
    sqlite3_bind_text(st, 1, answered ? "answered" : "unanswered", -1, SQLITE_STATIC);
    if (answered) {
        sqlite3_bind_int(st, 2, r->reply.code);
        sqlite3_bind_text(st, 3, line, -1, SQLITE_STATIC);
    }
    sqlite3_bind_double(st, 4, fedge_clock_wall());
    sqlite3_bind_int64(st, 5, round);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret != FEDGE_OK)
        goto cleanup;
    if (answered)
        snprintf(detail, sizeof detail, "partial for the parent's round %u: %d.%02d %s", round, r->reply.code / 100,
                 r->reply.code % 100, line);
    else
        snprintf(detail, sizeof detail, "partial for the parent's round %u: no answer (%s)", round,
                 fedge_strerror(rc));
    CHK(fedge_gov_event(a, round, NULL, "relay_sent", "relay", detail));
    CHK(fedge_gov_sign_head(a, round));
    CHK(fedge_store_commit(a->db));
    if (answered && r->reply.code == 204)
        FEDGE_INFO("relay: %s", detail);
    else
        FEDGE_WARN("relay: %s", detail);
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    return ret;
}

/* POSTs the logged sealed partial of `round` until an answer or `until`. */
static int send_sealed(fedge_aggregator *a, uint32_t round, double until)
{
    struct fedge_relay *r = a->relay;
    sqlite3_stmt *st = NULL;
    fedge_edge_blob *blob = NULL;
    int ret, rc = FEDGE_ERR_TIMEOUT;
    CHK(fedge_store_prepare(a->db, "SELECT sealed FROM relay_sent WHERE round=?", &st));
    sqlite3_bind_int64(st, 1, round);
    if (sqlite3_step(st) != SQLITE_ROW)
        FAIL(FEDGE_ERR_STATE);
    size_t len = (size_t)sqlite3_column_bytes(st, 0);
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        FAIL(FEDGE_ERR_NOMEM);
    memcpy(copy, sqlite3_column_blob(st, 0), len);
    sqlite3_finalize(st);
    st = NULL;
    CHK(fedge_edge_blob_new(copy, len, &blob));
    for (unsigned attempt = 0; fedge_now() < until; attempt++) {
        fedge_edge_request req = {.method = FEDGE_EDGE_POST, .path = "update", .body = blob};
        rc = request(a, &req, until);
        if (rc == FEDGE_OK && r->reply.code / 100 != 5 && r->reply.code != 408)
            break;
        if (rc == FEDGE_OK && r->reply.code == 503 &&
            (strncmp(r->reply.body, "no open round", 13) == 0 || strncmp(r->reply.body, "run finished", 12) == 0))
            break; /* the parent's round is over: final */
        if (rc == FEDGE_ERR_EDGE_STOPPED)
            goto cleanup; /* stopping: the row stays 'sealed', sent again after the restart */
        double pause = 0.2 * (double)(1u << (attempt < 4 ? attempt : 4));
        if (fedge_now() + pause >= until)
            break;
        if (fedge_edge_link_sleep(r->link, (uint32_t)(pause * 1000.0), g_stop) == FEDGE_ERR_EDGE_STOPPED)
            goto cleanup;
    }
    ret = record_answer(a, round, rc);
cleanup:
    sqlite3_finalize(st);
    fedge_edge_blob_release(blob);
    return ret;
}

/* Rows left 'sealed' (logged, maybe sent, no answer recorded: a crash, or
 * a busy database when the answer came) are sent again, the very same
 * bytes; the parent answers with its stored decision if it has one. */
static int resend_pending(fedge_aggregator *a)
{
    sqlite3_stmt *st = NULL;
    uint32_t rounds[16];
    size_t n = 0;
    int ret;
    CHK(fedge_store_prepare(a->db, "SELECT round FROM relay_sent WHERE status='sealed' ORDER BY round LIMIT 16",
                            &st));
    while (n < 16 && sqlite3_step(st) == SQLITE_ROW)
        rounds[n++] = (uint32_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    for (size_t i = 0; i < n; i++) {
        FEDGE_INFO("relay: sending the logged partial for the parent's round %u again (no answer recorded)",
                   rounds[i]);
        CHK(send_sealed(a, rounds[i], fedge_now() + a->cfg.upstream_timeout_s));
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* The parent's training parameters, passed on to this relay's edges. */
static void take_parameters(fedge_aggregator *a, const fedge_round_info *ri)
{
    a->cfg.lr = ri->lr;
    a->cfg.lr_decay = 1.0;
    a->cfg.local_epochs = ri->epochs;
    a->cfg.batch = ri->batch;
    a->cfg.momentum = ri->momentum;
    a->cfg.fedprox_mu = ri->prox_mu;
}

int fedge_relay_poll(fedge_aggregator *a, double now, fedge_relay_next *next)
{
    struct fedge_relay *r = a->relay;
    fedge_round_info ri;
    int ret = FEDGE_OK, got = 0, ok = 0;
    memset(next, 0, sizeof *next);
    if (now < r->next_poll)
        return FEDGE_OK;
    CHK(resend_pending(a));
    CHK(poll_parent(a, &ri, &got));
    /* an unreachable parent is asked less often (each try blocks the loop) */
    double wait = a->cfg.upstream_poll_s * (double)(1u << (r->failures < 6 ? r->failures : 6));
    r->next_poll = fedge_now() + (wait < 30.0 || a->cfg.upstream_poll_s >= 30.0 ? wait : 30.0);
    if (!got)
        goto cleanup;
    if (ri.state == FEDGE_ROUND_FINISHED) {
        FEDGE_INFO("relay: the parent's run has finished");
        next->finished = 1;
        goto cleanup;
    }
    if (ri.state != FEDGE_ROUND_OPEN || !ri.selected || ri.round <= a->round || ri.round == r->passed_round)
        goto cleanup;
    double end = fedge_now() + (ri.deadline_ms >= 0 ? (double)ri.deadline_ms / 1000.0 : a->cfg.round_timeout_s);
    double len = end - a->cfg.upstream_margin_s - fedge_now();
    if (len > a->cfg.round_timeout_s)
        len = a->cfg.round_timeout_s;
    if (len < 0.5) {
        FEDGE_WARN("relay: the parent's round %u ends in %.1fs, less than upstream_margin_s %.1fs + 0.5s;"
                   " not taking part", ri.round, end - fedge_now(), a->cfg.upstream_margin_s);
        r->passed_round = ri.round;
        goto cleanup;
    }
    CHK(adopt_parent_model(a, &ri, &ok));
    if (!ok)
        goto cleanup;
    take_parameters(a, &ri);
    memcpy(r->parent_run, ri.run_id, sizeof r->parent_run);
    r->parent_end = end;
    r->parent_known = 1;
    next->open = 1;
    next->round = ri.round;
    next->timeout_s = end - a->cfg.upstream_margin_s - fedge_now();
cleanup:
    return ret;
}

int fedge_relay_check_open(fedge_aggregator *a, double now, int *gone)
{
    struct fedge_relay *r = a->relay;
    fedge_round_info ri;
    int got = 0, ok = 0, ret = FEDGE_OK;
    *gone = 0;
    if (r->parent_known || now < r->next_poll)
        return FEDGE_OK;
    r->next_poll = now + a->cfg.upstream_poll_s;
    CHK(poll_parent(a, &ri, &got));
    if (!got)
        goto cleanup;
    if (ri.state != FEDGE_ROUND_OPEN || ri.round != a->round || memcmp(ri.model, a->version, FEDGE_HASH_LEN) != 0) {
        *gone = 1;
        goto cleanup;
    }
    CHK(adopt_parent_model(a, &ri, &ok));
    take_parameters(a, &ri);
    memcpy(r->parent_run, ri.run_id, sizeof r->parent_run);
    r->parent_end = fedge_now() + (ri.deadline_ms >= 0 ? (double)ri.deadline_ms / 1000.0 : a->cfg.round_timeout_s);
    r->parent_known = 1;
    double mine = r->parent_end - a->cfg.upstream_margin_s;
    if (a->deadline > mine)
        a->deadline = mine;
    FEDGE_INFO("relay: resumed round %u is still open at the parent (%.1fs left)", a->round, r->parent_end - fedge_now());
cleanup:
    return ret;
}

static int is_daemon_fault(int ret)
{
    return ret == FEDGE_ERR_SQL || ret == FEDGE_ERR_BUSY || ret == FEDGE_ERR_IO || ret == FEDGE_ERR_NOMEM;
}

/* The signed head just written (head_hash of the latest audit_heads row). */
static int latest_head(fedge_aggregator *a, uint8_t head[FEDGE_HASH_LEN])
{
    sqlite3_stmt *st = NULL;
    int ret;
    CHK(fedge_store_prepare(a->db, "SELECT head_hash FROM audit_heads ORDER BY seq DESC LIMIT 1", &st));
    if (sqlite3_step(st) != SQLITE_ROW || sqlite3_column_bytes(st, 0) != FEDGE_HASH_LEN)
        FAIL(FEDGE_ERR_STATE);
    memcpy(head, sqlite3_column_blob(st, 0), FEDGE_HASH_LEN);
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* Seals the partial and logs it in relay_sent (caller's transaction). */
static int seal_partial(fedge_aggregator *a, const fedge_close_partial *p, size_t n_updates)
{
    struct fedge_relay *r = a->relay;
    sqlite3_stmt *st = NULL;
    uint8_t *sealed = NULL, sha[FEDGE_HASH_LEN];
    size_t sealed_len = 0;
    int64_t last = 0;
    int ret;
    fedge_delta_header h;
    memset(&h, 0, sizeof h);
    h.encoding = FEDGE_ENC_FP32;
    h.flags = FEDGE_DELTA_FLAG_PARTIAL;
    h.model_id = a->model_id;
    h.round = a->round;
    h.n_samples = p->n_samples > UINT32_MAX ? UINT32_MAX : (uint32_t)p->n_samples;
    h.n_elems = (uint32_t)a->model.n_params;
    memcpy(h.base_version, a->version, FEDGE_HASH_LEN);
    CHK(latest_head(a, h.partial_head));
    /* above every counter sent before, whatever the clock says */
    CHK(fedge_store_query_int64(a->db, &last, NULL, "SELECT max(counter) FROM relay_sent", ""));
    uint64_t counter = fedge_edge_now_us();
    if (counter <= (uint64_t)last)
        counter = (uint64_t)last + 1;
    CHK(fedge_update_seal(&r->key, counter, r->parent_run, &h, p->mean, NULL, &sealed, &sealed_len));
    CHK(fedge_sha256(sealed, sealed_len, sha));
    CHK(fedge_store_prepare(a->db, "INSERT INTO relay_sent(round, parent_run, counter, n_updates, n_samples,"
                            " head_hash, sealed, sealed_sha256, status) VALUES(?,?,?,?,?,?,?,?, 'sealed')", &st));
    sqlite3_bind_int64(st, 1, a->round);
    sqlite3_bind_blob(st, 2, r->parent_run, FEDGE_RUN_ID_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (int64_t)counter);
    sqlite3_bind_int64(st, 4, (int64_t)n_updates);
    sqlite3_bind_int64(st, 5, (int64_t)h.n_samples);
    sqlite3_bind_blob(st, 6, h.partial_head, FEDGE_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 7, sealed, (int)sealed_len, SQLITE_STATIC);
    sqlite3_bind_blob(st, 8, sha, FEDGE_HASH_LEN, SQLITE_STATIC);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret == FEDGE_OK) {
        char head_hex[FEDGE_HASH_HEX_LEN];
        fedge_hash_to_hex(h.partial_head, head_hex);
        FEDGE_INFO("relay: round %u partial sealed: %zu updates, %u samples, head %.16s, %zu bytes", a->round,
                   n_updates, h.n_samples, head_hex, sealed_len);
    }
cleanup:
    sqlite3_finalize(st);
    free(sealed);
    return ret;
}

int fedge_relay_close_round(fedge_aggregator *a)
{
    struct fedge_relay *r = a->relay;
    fedge_close_result res;
    fedge_close_partial p = {0};
    char reason[sizeof res.reason + 96];
    int ret, sealed = 0;
    memset(&res, 0, sizeof res);
    p.mean = malloc((a->model.n_params ? a->model.n_params : 1) * sizeof *p.mean);
    if (!p.mean)
        return FEDGE_ERR_NOMEM;
    CHK(fedge_store_begin(a->db));
    ret = fedge_close_partial_sum(a, &res, &p);
    if (ret != FEDGE_OK && !is_daemon_fault(ret)) {
        int agg_err = ret;
        fedge_store_rollback(a->db);
        memset(&res, 0, sizeof res);
        snprintf(res.reason, sizeof res.reason, "aggregation failed: %s", fedge_strerror(agg_err));
        CHK(fedge_store_begin(a->db));
        CHK(fedge_gov_event(a, a->round, NULL, "round_failed", "aggregate", res.reason));
    } else if (ret != FEDGE_OK) {
        goto cleanup;
    }
    a->n_accepted = res.ok ? res.n_used : 0;
    a->n_rejected += res.n_excluded;
    if (res.ok && (!r->parent_known || fedge_now() >= r->parent_end)) {
        res.ok = 0;
        snprintf(res.reason, sizeof res.reason, "the parent's deadline for round %u passed before the partial"
                 " was sealed; nothing sent", a->round);
    }
    if (!res.ok) {
        snprintf(reason, sizeof reason, "%s", res.reason);
        CHK(fedge_sched_finish_round(a, "failed", NULL, -1, -1, reason));
        CHK(fedge_gov_sign_head(a, a->round));
        CHK(fedge_store_commit(a->db));
        FEDGE_WARN("round %u failed: %s; nothing sent to the parent", a->round, reason);
    } else {
        snprintf(reason, sizeof reason, "partial sum of %zu updates (%llu samples) for the parent's round %u%s%s",
                 res.n_used, (unsigned long long)p.n_samples, a->round, res.reason[0] ? "; " : "", res.reason);
        CHK(fedge_sched_finish_round(a, "closed", NULL, -1, -1, reason));
        CHK(fedge_gov_sign_head(a, a->round));
        CHK(seal_partial(a, &p, res.n_used));
        CHK(fedge_store_commit(a->db));
        a->rounds_aggregated++;
        sealed = 1;
        FEDGE_INFO("round %u closed: %zu accepted, %zu rejected, %llu bytes; %s", a->round, a->n_accepted,
                   a->n_rejected, (unsigned long long)a->bytes_received, reason);
    }
    if (a->cfg.retain_deltas_rounds > 0) {
        int rr = fedge_retention_after_round(a);
        if (rr != FEDGE_OK)
            FEDGE_WARN("round %u: dropping old delta bodies failed: %s", a->round, fedge_strerror(rr));
    }
    a->rounds_done++;
    a->state = FEDGE_AGG_WAITING;
    r->parent_known = 0;
    if (sealed)
        CHK(send_sealed(a, a->round, r->parent_end));
    if (a->cfg.rounds > 0 && a->rounds_done >= a->cfg.rounds) {
        a->state = FEDGE_AGG_FINISHED;
        a->finished_at = fedge_clock_mono();
        FEDGE_INFO("relay: %ld rounds done (rounds); finished", a->rounds_done);
    }
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    free(p.mean);
    return ret;
}
