/* link.c — CoAP/DTLS client for the edge (see link.h). */
#include "link.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <coap3/coap.h>
#include <mbedtls/platform_util.h>

#include "common.h"
#include "keys.h"
#include "link_rtt.h"

#define IO_SLICE_MS 100u /* longest coap_io_process wait, so *stop is seen quickly */

typedef enum { REQ_IDLE, REQ_WAITING, REQ_DONE, REQ_FAILED } req_state;

struct fedge_edge_link {
    coap_context_t *ctx;
    coap_session_t *session;
    int session_up;          /* the DTLS handshake of this session completed */
    uint64_t session_started_ms;
    coap_address_t dst;
    int insecure;
    uint32_t ack_timeout_ms; /* fixed; 0: from the RTT estimate */
    uint32_t handshake_timeout_ms;
    fedge_link_rtt rtt;
    char id[FEDGE_DEVICE_ID_MAX + 1];
    char psk[FEDGE_PSK_LEN + 1];
    size_t psk_len;

    /* The request in flight. */
    req_state state;
    int fail_code;
    uint8_t token[8];
    size_t token_len;
    const fedge_edge_request *req;
    fedge_edge_reply *reply;
    uint64_t sent_ms;        /* when the request left (or the session came up) */
    uint32_t req_ack_ms;     /* the ACK timeout the request started with */
    char last_error[128];
};

int fedge_edge_blob_new(uint8_t *data, size_t len, fedge_edge_blob **out)
{
    *out = NULL;
    fedge_edge_blob *b = malloc(sizeof *b);
    if (!b) {
        free(data);
        return FEDGE_ERR_NOMEM;
    }
    b->refs = 1;
    b->len = len;
    b->data = data;
    *out = b;
    return FEDGE_OK;
}

void fedge_edge_blob_release(fedge_edge_blob *b)
{
    if (!b || b->refs == 0)
        return;
    if (--b->refs == 0) {
        free(b->data);
        free(b);
    }
}

static void blob_release_cb(coap_session_t *session, void *app_ptr)
{
    FEDGE_UNUSED(session);
    fedge_edge_blob_release(app_ptr);
}

uint64_t fedge_edge_link_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t now_ms(void)
{
    return fedge_edge_link_now_ms();
}

static size_t blocks_of(size_t bytes)
{
    return bytes ? 1 + (bytes - 1) / FEDGE_EDGE_BLOCK_BYTES : 0;
}

/* A finished exchange: a single request/response pair is an RTT sample
 * (ambiguous once a retransmission may have happened); a block transfer
 * gives the pace per exchange. */
static void measure_exchange(fedge_edge_link *l)
{
    uint64_t now = now_ms();
    uint32_t elapsed = now > l->sent_ms ? (uint32_t)(now - l->sent_ms) : 0;
    size_t up = l->req->body ? blocks_of(l->req->body->len) : 0;
    size_t down = blocks_of(l->reply->body_total);
    if (up <= 1 && down <= 1)
        fedge_link_rtt_sample(&l->rtt, elapsed, elapsed >= l->req_ack_ms);
    else
        fedge_link_rtt_pace_sample(&l->rtt, elapsed, (up > 1 ? up : 1) + (down > 1 ? down - 1 : 0));
}

static void fail_request(fedge_edge_link *l, int code, const char *why)
{
    if (l->state != REQ_WAITING)
        return;
    l->state = REQ_FAILED;
    l->fail_code = code;
    snprintf(l->last_error, sizeof l->last_error, "%s", why);
}

static fedge_edge_link *link_of(coap_session_t *session)
{
    coap_context_t *ctx = coap_session_get_context(session);
    return ctx ? coap_get_app_data(ctx) : NULL;
}

/* The DTLS handshake just completed. libcoap 4.3.1 with mbedTLS sends no
 * COAP_EVENT_DTLS_CONNECTED for a UDP client, so the request loop also
 * watches the session state. */
static void note_session_up(fedge_edge_link *l)
{
    if (l->session_up)
        return;
    uint64_t now = now_ms();
    l->session_up = 1;
    /* Three round trips, retransmissions perhaps included: a seed only. */
    fedge_link_rtt_sample(&l->rtt, (uint32_t)((now - l->session_started_ms) / 3), 1);
    if (l->state == REQ_WAITING)
        l->sent_ms = now; /* the queued request leaves now */
}

static coap_response_t on_response(coap_session_t *session, const coap_pdu_t *sent,
                                   const coap_pdu_t *received, const coap_mid_t mid)
{
    FEDGE_UNUSED(mid);
    fedge_edge_link *l = link_of(session);
    coap_bin_const_t token = coap_pdu_get_token(received);
    coap_pdu_type_t type = coap_pdu_get_type(received);
    if (!l || l->state != REQ_WAITING || session != l->session ||
        token.length != l->token_len || memcmp(token.s, l->token, l->token_len) != 0) {
        /* Not ours (a late answer to an abandoned request): reset unsolicited ones. */
        if (!sent && (type == COAP_MESSAGE_CON || type == COAP_MESSAGE_NON))
            return COAP_RESPONSE_FAIL;
        return COAP_RESPONSE_OK;
    }
    fedge_edge_reply *rep = l->reply;
    coap_pdu_code_t code = coap_pdu_get_code(received);
    rep->code = (int)COAP_RESPONSE_CLASS(code) * 100 + (int)(code & 0x1f);

    coap_opt_iterator_t it;
    coap_opt_t *opt = coap_check_option(received, COAP_OPTION_ETAG, &it);
    if (opt && coap_opt_length(opt) <= FEDGE_EDGE_ETAG_MAX) {
        rep->etag_len = coap_opt_length(opt);
        memcpy(rep->etag, coap_opt_value(opt), rep->etag_len);
    }
    opt = coap_check_option(received, COAP_OPTION_MAXAGE, &it);
    if (opt) {
        rep->has_max_age = 1;
        rep->max_age_s = coap_decode_var_bytes(coap_opt_value(opt), coap_opt_length(opt));
    }

    size_t len = 0, offset = 0, total = 0;
    const uint8_t *data = NULL;
    if (coap_get_data_large(received, &len, &data, &offset, &total)) {
        rep->body_total = total;
        if (offset != 0 || len != total) {
            /* SINGLE_BODY should hand over whole bodies only. */
            rep->sink_status = FEDGE_ERR_PROTO;
        } else if (l->req->sink && COAP_RESPONSE_CLASS(code) == 2) {
            rep->sink_called = 1;
            rep->sink_status = l->req->sink(l->req->sink_arg, data, len);
        } else {
            rep->body_len = len < FEDGE_EDGE_REPLY_MAX ? len : FEDGE_EDGE_REPLY_MAX;
            memcpy(rep->body, data, rep->body_len);
            rep->body[rep->body_len] = '\0';
        }
    }
    l->state = REQ_DONE;
    measure_exchange(l);
    return COAP_RESPONSE_OK;
}

static void on_nack(coap_session_t *session, const coap_pdu_t *sent,
                    const coap_nack_reason_t reason, const coap_mid_t mid)
{
    FEDGE_UNUSED(sent);
    FEDGE_UNUSED(mid);
    fedge_edge_link *l = link_of(session);
    if (!l || session != l->session)
        return;
    switch (reason) {
    case COAP_NACK_TOO_MANY_RETRIES:
        fail_request(l, FEDGE_ERR_TIMEOUT, "no answer after all CoAP retransmissions");
        break;
    case COAP_NACK_TLS_FAILED:
        fail_request(l, FEDGE_ERR_IO, "DTLS failed (wrong key or unknown identity?)");
        break;
    case COAP_NACK_RST:
        fail_request(l, FEDGE_ERR_IO, "reset by the server");
        break;
    case COAP_NACK_NOT_DELIVERABLE:
        fail_request(l, FEDGE_ERR_IO, "not deliverable");
        break;
    default:
        break; /* ICMP issues: libcoap retransmits; the deadline decides */
    }
}

static int on_event(coap_session_t *session, const coap_event_t event)
{
    fedge_edge_link *l = link_of(session);
    if (!l || session != l->session)
        return 0;
    switch (event) {
    case COAP_EVENT_DTLS_CONNECTED:
        note_session_up(l);
        break;
    case COAP_EVENT_DTLS_ERROR:
    case COAP_EVENT_DTLS_CLOSED:
        if (!l->session_up)
            fail_request(l, FEDGE_ERR_IO,
                         "DTLS handshake failed (server down, wrong key, or unknown identity)");
        else
            fail_request(l, FEDGE_ERR_IO, event == COAP_EVENT_DTLS_ERROR
                                              ? "DTLS error"
                                              : "DTLS session closed by the server");
        break;
    case COAP_EVENT_SESSION_FAILED:
    case COAP_EVENT_SESSION_CLOSED:
        fail_request(l, FEDGE_ERR_IO, "session failed");
        break;
    case COAP_EVENT_XMIT_BLOCK_FAIL:
        fail_request(l, FEDGE_ERR_IO, "block transfer failed");
        break;
    default:
        break;
    }
    return 0;
}

static int resolve(const char *host, uint16_t port, coap_address_t *dst, char *err,
                   size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    char service[8];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    snprintf(service, sizeof service, "%u", (unsigned)port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
        return FEDGE_ERR_NOT_FOUND;
    }
    int ret = FEDGE_ERR_NOT_FOUND;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
            ai->ai_addrlen <= sizeof dst->addr) {
            coap_address_init(dst);
            dst->size = ai->ai_addrlen;
            memcpy(&dst->addr, ai->ai_addr, ai->ai_addrlen);
            ret = FEDGE_OK;
            break;
        }
    }
    freeaddrinfo(res);
    if (ret != FEDGE_OK)
        snprintf(err, errlen, "%s has no IPv4/IPv6 address", host);
    return ret;
}

int fedge_edge_link_open(const fedge_edge_link_config *cfg, fedge_edge_link **out, char *err,
                         size_t errlen)
{
    char errbuf[1];
    int ret = FEDGE_OK;
    fedge_edge_link *l = NULL;
    if (!err) {
        err = errbuf;
        errlen = sizeof errbuf;
    }
    *out = NULL;
    if (!cfg || !cfg->host || !cfg->id || strlen(cfg->id) > FEDGE_DEVICE_ID_MAX ||
        (!cfg->insecure && (!cfg->psk || strlen(cfg->psk) > FEDGE_PSK_LEN))) {
        snprintf(err, errlen, "bad link configuration");
        return FEDGE_ERR_INVALID_ARG;
    }
    coap_startup();
    coap_set_log_level(cfg->verbose ? LOG_WARNING : LOG_EMERG);
    coap_dtls_set_log_level(cfg->verbose ? LOG_WARNING : LOG_EMERG);
    if (!cfg->insecure && !coap_dtls_is_supported()) {
        snprintf(err, errlen, "this libcoap build has no DTLS support");
        FAIL(FEDGE_ERR_UNSUPPORTED);
    }
    l = calloc(1, sizeof *l);
    if (!l)
        FAIL(FEDGE_ERR_NOMEM);
    l->insecure = cfg->insecure;
    l->ack_timeout_ms = cfg->ack_timeout_ms;
    l->handshake_timeout_ms =
        cfg->handshake_timeout_ms ? cfg->handshake_timeout_ms : FEDGE_EDGE_HANDSHAKE_MS;
    fedge_link_rtt_init(&l->rtt);
    snprintf(l->id, sizeof l->id, "%s", cfg->id);
    if (!cfg->insecure) {
        l->psk_len = strlen(cfg->psk);
        memcpy(l->psk, cfg->psk, l->psk_len);
    }
    CHK(resolve(cfg->host, cfg->port, &l->dst, err, errlen));
    l->ctx = coap_new_context(NULL);
    if (!l->ctx) {
        snprintf(err, errlen, "cannot create a CoAP context");
        FAIL(FEDGE_ERR_NOMEM);
    }
    coap_set_app_data(l->ctx, l);
    coap_context_set_block_mode(l->ctx, COAP_BLOCK_USE_LIBCOAP | COAP_BLOCK_SINGLE_BODY);
    coap_register_response_handler(l->ctx, on_response);
    coap_register_nack_handler(l->ctx, on_nack);
    coap_register_event_handler(l->ctx, on_event);
    *out = l;
    l = NULL;
cleanup:
    if (l)
        fedge_edge_link_close(l);
    else if (ret != FEDGE_OK)
        coap_cleanup();
    return ret;
}

static void drop_session(fedge_edge_link *l, int abrupt)
{
    coap_session_t *s = l->session;
    if (!s)
        return;
    l->session = NULL; /* handlers ignore the session from here on */
    if (abrupt) {
        /* Cancel queued retransmissions and block transfers now, so they
         * cannot outlive the request that owned them. */
        coap_session_disconnected(s, COAP_NACK_NOT_DELIVERABLE);
    }
    coap_session_release(s);
}

void fedge_edge_link_reset(fedge_edge_link *l)
{
    if (l)
        drop_session(l, 1);
}

void fedge_edge_link_close(fedge_edge_link *l)
{
    if (!l)
        return;
    drop_session(l, 0);
    if (l->ctx) {
        /* Let a close_notify leave before the socket goes away. */
        coap_io_process(l->ctx, COAP_IO_NO_WAIT);
        coap_free_context(l->ctx);
    }
    mbedtls_platform_zeroize(l->psk, sizeof l->psk);
    free(l);
    coap_cleanup();
}

const char *fedge_edge_link_last_error(const fedge_edge_link *l)
{
    return l && l->last_error[0] ? l->last_error : "no error";
}

static int ensure_session(fedge_edge_link *l)
{
    if (l->session)
        return FEDGE_OK;
    l->session_up = 0;
    l->session_started_ms = now_ms();
    if (l->insecure) {
        l->session = coap_new_client_session(l->ctx, NULL, &l->dst, COAP_PROTO_UDP);
    } else {
        coap_dtls_cpsk_t setup;
        memset(&setup, 0, sizeof setup);
        setup.version = COAP_DTLS_CPSK_SETUP_VERSION;
        setup.client_sni = NULL;
        setup.psk_info.identity.s = (const uint8_t *)l->id;
        setup.psk_info.identity.length = strlen(l->id);
        setup.psk_info.key.s = (const uint8_t *)l->psk;
        setup.psk_info.key.length = l->psk_len;
        l->session = coap_new_client_session_psk2(l->ctx, NULL, &l->dst, COAP_PROTO_DTLS, &setup);
    }
    if (!l->session) {
        snprintf(l->last_error, sizeof l->last_error, "cannot create a CoAP session");
        return FEDGE_ERR_IO;
    }
    if (l->insecure)
        l->session_up = 1; /* no handshake */
    return FEDGE_OK;
}

uint32_t fedge_edge_link_ack_timeout_ms(const fedge_edge_link *l)
{
    uint32_t ack = l->ack_timeout_ms ? l->ack_timeout_ms : fedge_link_rtt_ack_timeout_ms(&l->rtt);
    return ack < FEDGE_LINK_ACK_MIN_MS ? FEDGE_LINK_ACK_MIN_MS : ack;
}

/* The session's CoAP timers from what the link knows now: the ACK timeout
 * from the RTT, and enough retransmissions that the request's deadline, not
 * libcoap, ends a stalled exchange. */
static void tune_session(fedge_edge_link *l, uint32_t timeout_ms)
{
    uint32_t ack = fedge_edge_link_ack_timeout_ms(l);
    coap_fixed_point_t t = {(uint16_t)(ack / 1000), (uint16_t)(ack % 1000)};
    coap_session_set_ack_timeout(l->session, t);
    coap_session_set_max_retransmit(l->session, fedge_link_rtt_max_retransmit(ack, timeout_ms));
    l->req_ack_ms = ack;
}

static int add_option(coap_optlist_t **list, uint16_t number, size_t len, const uint8_t *data)
{
    coap_optlist_t *o = coap_new_optlist(number, len, data);
    if (!o)
        return FEDGE_ERR_NOMEM;
    if (!coap_insert_optlist(list, o)) {
        coap_delete_optlist(o);
        return FEDGE_ERR_NOMEM;
    }
    return FEDGE_OK;
}

static int build_pdu(fedge_edge_link *l, const fedge_edge_request *req, coap_pdu_t **out)
{
    int ret = FEDGE_OK;
    coap_optlist_t *opts = NULL;
    uint8_t buf[8];
    char query[4 + FEDGE_DEVICE_ID_MAX + 1];
    coap_pdu_t *pdu = coap_new_pdu(COAP_MESSAGE_CON,
                                   req->method == FEDGE_EDGE_POST ? COAP_REQUEST_CODE_POST
                                                                  : COAP_REQUEST_CODE_GET,
                                   l->session);
    if (!pdu)
        return FEDGE_ERR_NOMEM;
    coap_session_new_token(l->session, &l->token_len, l->token);
    if (!coap_add_token(pdu, l->token_len, l->token))
        FAIL(FEDGE_ERR_INTERNAL);
    if (req->etag && req->etag_len)
        CHK(add_option(&opts, COAP_OPTION_ETAG, req->etag_len, req->etag));
    CHK(add_option(&opts, COAP_OPTION_URI_PATH, strlen(req->path),
                   (const uint8_t *)req->path));
    if (req->body) {
        size_t n = coap_encode_var_safe(buf, sizeof buf, COAP_MEDIATYPE_APPLICATION_OCTET_STREAM);
        CHK(add_option(&opts, COAP_OPTION_CONTENT_FORMAT, n, buf));
    }
    if (l->insecure) {
        int n = snprintf(query, sizeof query, "id=%s", l->id);
        CHK(add_option(&opts, COAP_OPTION_URI_QUERY, (size_t)n, (const uint8_t *)query));
    }
    if (opts && !coap_add_optlist_pdu(pdu, &opts))
        FAIL(FEDGE_ERR_INTERNAL);
    if (req->body) {
        req->body->refs++; /* libcoap's reference, dropped by blob_release_cb */
        if (!coap_add_data_large_request(l->session, pdu, req->body->len, req->body->data,
                                         blob_release_cb, req->body))
            FAIL(FEDGE_ERR_NOMEM); /* the callback already ran */
    }
    *out = pdu;
    pdu = NULL;
cleanup:
    coap_delete_optlist(opts);
    if (pdu)
        coap_delete_pdu(pdu);
    return ret;
}

int fedge_edge_link_request(fedge_edge_link *l, const fedge_edge_request *req,
                            fedge_edge_reply *reply, const volatile sig_atomic_t *stop)
{
    int ret = FEDGE_OK;
    coap_pdu_t *pdu = NULL;
    if (!l || !req || !req->path || !reply || req->etag_len > FEDGE_EDGE_ETAG_MAX ||
        req->timeout_ms == 0)
        return FEDGE_ERR_INVALID_ARG;
    memset(reply, 0, sizeof *reply);
    l->last_error[0] = '\0';
    if (stop && *stop)
        return FEDGE_ERR_EDGE_STOPPED;
    uint64_t start = now_ms();

    CHK(ensure_session(l));
    tune_session(l, req->timeout_ms);
    int handshaking = !l->session_up;
    /* The request's time starts once the session is up; the handshake has
     * its own budget. */
    uint64_t deadline = start + (handshaking ? l->handshake_timeout_ms : req->timeout_ms);
    ret = build_pdu(l, req, &pdu);
    if (ret != FEDGE_OK) {
        snprintf(l->last_error, sizeof l->last_error, "cannot build the request: %s",
                 fedge_strerror(ret));
        goto cleanup;
    }
    l->req = req;
    l->reply = reply;
    l->state = REQ_WAITING;
    l->sent_ms = now_ms();
    if (coap_send(l->session, pdu) == COAP_INVALID_MID) {
        /* coap_send frees the PDU on failure as well. */
        pdu = NULL;
        fail_request(l, FEDGE_ERR_IO, "cannot send the request");
    }
    pdu = NULL;
    while (l->state == REQ_WAITING) {
        if (stop && *stop) {
            fail_request(l, FEDGE_ERR_EDGE_STOPPED, "stopped by signal");
            break;
        }
        uint64_t now = now_ms();
        if (handshaking && l->session_up) {
            handshaking = 0;
            deadline = now + req->timeout_ms;
        }
        if (now >= deadline) {
            char why[96];
            if (handshaking)
                snprintf(why, sizeof why, "no DTLS handshake within %u ms",
                         (unsigned)l->handshake_timeout_ms);
            else
                snprintf(why, sizeof why, "no answer within %u ms", (unsigned)req->timeout_ms);
            fail_request(l, FEDGE_ERR_TIMEOUT, why);
            break;
        }
        uint64_t left = deadline - now;
        uint32_t slice = left < IO_SLICE_MS ? (uint32_t)left : IO_SLICE_MS;
        if (coap_io_process(l->ctx, slice ? slice : 1) < 0)
            fail_request(l, FEDGE_ERR_IO, "CoAP I/O error");
        if (!l->session_up && l->session &&
            coap_session_get_state(l->session) == COAP_SESSION_STATE_ESTABLISHED)
            note_session_up(l);
    }
    ret = l->state == REQ_DONE ? FEDGE_OK : l->fail_code;
cleanup:
    if (ret != FEDGE_OK)
        drop_session(l, 1);
    l->state = REQ_IDLE;
    l->req = NULL;
    l->reply = NULL;
    return ret;
}

int fedge_edge_link_sleep(fedge_edge_link *l, uint32_t ms, const volatile sig_atomic_t *stop)
{
    uint64_t deadline = now_ms() + ms;
    for (;;) {
        if (stop && *stop)
            return FEDGE_ERR_EDGE_STOPPED;
        uint64_t now = now_ms();
        if (now >= deadline)
            return FEDGE_OK;
        uint64_t left = deadline - now;
        uint32_t slice = left < IO_SLICE_MS ? (uint32_t)left : IO_SLICE_MS;
        if (slice == 0)
            slice = 1;
        if (l && l->ctx) {
            coap_io_process(l->ctx, slice);
        } else {
            struct timespec ts = {0, (long)slice * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}

void fedge_edge_link_rtt(const fedge_edge_link *l, fedge_link_rtt *out)
{
    if (l)
        *out = l->rtt;
    else
        fedge_link_rtt_init(out);
}
