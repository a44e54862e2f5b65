/* link.c — CoAP/DTLS client for the edge (see link.h). */
#include "link.h"

#include <netdb.h>
#include <pthread.h>
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
#include "observe.h"

#define IO_SLICE_MS 100u /* longest coap_io_process wait, so *stop is seen quickly */
#define DTLS_RETRANSMIT_MS 1000u /* libcoap's first DTLS handshake retransmission */

typedef enum { REQ_IDLE, REQ_WAITING, REQ_DONE, REQ_FAILED } req_state;

/* One confirmable exchange of the request in flight: a whole small request,
 * or one block of a Block1 upload or Block2 download. */
typedef struct {
    int in_use;
    uint32_t num;            /* block number */
    uint8_t token[8];
    size_t token_len;
    uint64_t sent_ms;        /* when it left (or the session came up) */
    uint32_t ack_ms;         /* the ACK timeout it left with */
} exchange;

/* Over TCP: bytes of a message left for its header, token and options. */
#define TCP_HEADROOM 128u
/* Unpatched libcoap 4.3.1 over mbedTLS sends the first TLS record of a
 * message and loses the rest (coap_tls_write takes mbedtls_ssl_write's
 * partial write for a full socket and never asks to write again), so there a
 * message sent over TLS fits in one record (2^14 bytes of plaintext, RFC 5246
 * 6.2.1). tools/deps.sh's patch writes the whole message
 * (COAP_TLS_WRITE_WHOLE): no cap. */
#ifndef COAP_TLS_WRITE_WHOLE
#define TLS_RECORD_MAX 16384u
#endif

/* Below this smoothed RTT a timed-out session is dropped at once. */
#define KEEP_SESSION_MIN_RTT_MS 100

struct fedge_edge_link {
    coap_context_t *ctx;
    coap_session_t *session;
    int session_up;          /* the DTLS handshake of this session completed */
    uint64_t session_started_ms;
    coap_address_t dst;
    int insecure;
    uint32_t ack_timeout_ms; /* fixed; 0: from the RTT estimate */
    uint32_t handshake_timeout_ms;
    unsigned window;         /* confirmable exchanges in flight at most */
    unsigned timeouts_in_row; /* requests on this session that timed out */
    fedge_link_rtt rtt;
    char id[FEDGE_DEVICE_ID_MAX + 1];
    char psk[FEDGE_PSK_LEN + 1];
    size_t psk_len;

    /* The request in flight. */
    req_state state;
    int fail_code;
    const fedge_edge_request *req;
    fedge_edge_reply *reply;
    uint32_t req_ack_ms;     /* the ACK timeout the request started with */
    uint64_t started_ms;     /* when its first exchange left */
    uint64_t heard_ms;       /* when the server last answered one of its exchanges */
    unsigned exchanges_done;
    /* Block transfer: n_blocks blocks of block_size bytes (0: not one). */
    size_t block_size;
    uint32_t n_blocks;
    uint32_t next_num;       /* next block to send */
    uint32_t n_acked;        /* blocks answered: 2.31 (Block1) or data (Block2) */
    uint8_t *acked;          /* n_blocks flags */
    uint32_t *resend;        /* window entries after slots: blocks whose exchange libcoap
                                gave up */
    unsigned n_resend;
    uint8_t *body;           /* Block2: the body being reassembled */
    size_t body_len;
    int has_etag;            /* Block2: the first block's ETag */
    size_t first_etag_len;
    uint8_t first_etag[FEDGE_EDGE_ETAG_MAX];
    char last_error[192];
    /* Observe: the registration's token on `session`; the freshest
     * notification, not yet handed over when obs_fresh */
    int observing;
    size_t obs_token_len;
    uint8_t obs_token[8];
    uint32_t obs_seq;
    uint64_t obs_at_ms;
    int obs_fresh;
    fedge_edge_reply obs_latest;
    unsigned long handshakes; /* DTLS handshakes completed */
    int tcp;                 /* CoAP over TLS/TCP (RFC 8323) instead of DTLS */
    int bert;                /* the Block1 upload in flight uses BERT blocks (SZX 7) */
    exchange slots[];        /* window entries, then resend's */
};

/* libcoap's process-wide state (coap_startup/coap_cleanup, the log levels,
 * the mbedTLS backend's lazily built cipher-suite lists, which every live
 * DTLS session points into) is shared by all links of a process: set up by
 * the first link opened, torn down when the last one closes, and session
 * creation (where libcoap 4.3.1 builds those lists unlocked) serialized.
 * Everything else is per context; one context per thread is safe. */
static pthread_mutex_t g_coap_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long g_coap_links;
static int g_coap_verbose;

/* libcoap drops a datagram it cannot take (a PDU over the session's size
 * fails to parse) with a log line and an RST, never a callback: its log is
 * read for those lines, counted per thread (one context per thread), so a
 * request can say why no answer came. */
static _Thread_local unsigned g_dropped_too_big, g_dropped_malformed;

static void coap_log_sink(coap_log_t level, const char *message)
{
    if (strstr(message, "pdu too big"))
        g_dropped_too_big++;
    else if (strstr(message, "discard malformed PDU"))
        g_dropped_malformed++;
    if (g_coap_verbose && level <= LOG_WARNING)
        fprintf(stderr, "libcoap: %s", message);
}

static void coap_global_acquire(int verbose)
{
    pthread_mutex_lock(&g_coap_lock);
    if (g_coap_links++ == 0) {
        coap_startup();
        g_coap_verbose = verbose;
        coap_set_log_handler(coap_log_sink);
        coap_set_log_level(LOG_WARNING);
        coap_dtls_set_log_level(verbose ? LOG_WARNING : LOG_EMERG);
    }
    pthread_mutex_unlock(&g_coap_lock);
}

static void coap_global_release(void)
{
    pthread_mutex_lock(&g_coap_lock);
    if (g_coap_links && --g_coap_links == 0)
        coap_cleanup();
    pthread_mutex_unlock(&g_coap_lock);
}

static int blob_alloc(size_t len, uint8_t *data, fedge_edge_blob_reader read, void *arg,
                      fedge_edge_blob **out)
{
    fedge_edge_blob *b = malloc(sizeof *b);
    if (!b)
        return FEDGE_ERR_NOMEM;
    b->refs = 1;
    b->len = len;
    b->data = data;
    b->read = read;
    b->read_arg = arg;
    *out = b;
    return FEDGE_OK;
}

int fedge_edge_blob_new(uint8_t *data, size_t len, fedge_edge_blob **out)
{
    *out = NULL;
    int ret = blob_alloc(len, data, NULL, NULL, out);
    if (ret != FEDGE_OK)
        free(data); /* ownership was taken */
    return ret;
}

int fedge_edge_blob_new_reader(size_t len, fedge_edge_blob_reader read, void *arg,
                               fedge_edge_blob **out)
{
    *out = NULL;
    if (!read)
        return FEDGE_ERR_INVALID_ARG;
    return blob_alloc(len, NULL, read, arg, out);
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
    if (!l->insecure)
        l->handshakes++;
    /* Three round trips; a clean sample unless mbedTLS may have retransmitted
     * a flight (its first retransmission comes after 1 s). */
    uint64_t hs = now - l->session_started_ms;
    fedge_link_rtt_sample(&l->rtt, (uint32_t)(hs / 3), hs >= DTLS_RETRANSMIT_MS);
    if (l->state == REQ_WAITING) {
        l->started_ms = now; /* the queued request leaves now */
        l->heard_ms = now;
        for (unsigned i = 0; i < l->window; i++)
            l->slots[i].sent_ms = now;
    }
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

static int add_uint_option(coap_optlist_t **list, uint16_t number, unsigned value)
{
    uint8_t buf[4];
    return add_option(list, number, coap_encode_var_safe(buf, sizeof buf, value), buf);
}

uint32_t fedge_edge_link_ack_timeout_ms(const fedge_edge_link *l)
{
    uint32_t ack = l->ack_timeout_ms ? l->ack_timeout_ms : fedge_link_rtt_ack_timeout_ms(&l->rtt);
    return ack < FEDGE_LINK_ACK_MIN_MS ? FEDGE_LINK_ACK_MIN_MS : ack;
}

static uint32_t set_ack_timeout(fedge_edge_link *l)
{
    uint32_t ack = fedge_edge_link_ack_timeout_ms(l);
    coap_fixed_point_t t = {(uint16_t)(ack / 1000), (uint16_t)(ack % 1000)};
    coap_session_set_ack_timeout(l->session, t);
    l->req_ack_ms = ack;
    return ack;
}

/* Block num of the request in flight, or the whole request when it is not a
 * block transfer. Block1: the slice of the body, Size1 on block 0. Block2:
 * a GET for that block (block 0 carries the request's ETag). */
static int send_exchange(fedge_edge_link *l, uint32_t num)
{
    int ret = FEDGE_OK;
    const fedge_edge_request *req = l->req;
    coap_optlist_t *opts = NULL;
    uint8_t *big = NULL;     /* a reader's bytes for a message over one block (TCP) */
    char query[4 + FEDGE_DEVICE_ID_MAX + 1];
    exchange *x = NULL;
    for (unsigned i = 0; i < l->window && !x; i++)
        if (!l->slots[i].in_use)
            x = &l->slots[i];
    if (!x)
        return FEDGE_ERR_INTERNAL;
    coap_pdu_t *pdu = coap_new_pdu(COAP_MESSAGE_CON,
                                   req->method == FEDGE_EDGE_POST ? COAP_REQUEST_CODE_POST
                                                                  : COAP_REQUEST_CODE_GET,
                                   l->session);
    if (!pdu)
        return FEDGE_ERR_NOMEM;
    coap_session_new_token(l->session, &x->token_len, x->token);
    if (!coap_add_token(pdu, x->token_len, x->token))
        FAIL(FEDGE_ERR_INTERNAL);
    if (req->etag && req->etag_len && num == 0)
        CHK(add_option(&opts, COAP_OPTION_ETAG, req->etag_len, req->etag));
    CHK(add_option(&opts, COAP_OPTION_URI_PATH, strlen(req->path), (const uint8_t *)req->path));
    if (req->observe && req->method == FEDGE_EDGE_GET && num == 0)
        CHK(add_option(&opts, COAP_OPTION_OBSERVE, 0, NULL)); /* 0: register */
    if (req->body)
        CHK(add_uint_option(&opts, COAP_OPTION_CONTENT_FORMAT,
                            COAP_MEDIATYPE_APPLICATION_OCTET_STREAM));
    if (l->insecure) {
        int n = snprintf(query, sizeof query, "id=%s", l->id);
        CHK(add_option(&opts, COAP_OPTION_URI_QUERY, (size_t)n, (const uint8_t *)query));
    }
    const uint8_t *payload = NULL;
    size_t payload_len = 0, payload_off = 0;
    uint8_t produced[FEDGE_EDGE_BLOCK_BYTES];
    const unsigned szx = FEDGE_EDGE_BLOCK_SZX;
    if (req->method == FEDGE_EDGE_GET) {
        /* Ask for the largest blocks from the start (early negotiation). */
        CHK(add_uint_option(&opts, COAP_OPTION_BLOCK2, (num << 4) | szx));
    } else if (req->body && l->block_size) {
        payload_off = (size_t)num * l->block_size;
        payload = req->body->data ? req->body->data + payload_off : NULL;
        payload_len = req->body->len - payload_off < l->block_size ? req->body->len - payload_off
                                                                   : l->block_size;
        unsigned more = num + 1 < l->n_blocks;
        /* BERT (RFC 8323 6): NUM counts 1024-byte blocks, SZX 7 */
        uint32_t wire = l->bert ? num * (uint32_t)(l->block_size / FEDGE_EDGE_BLOCK_BYTES) : num;
        CHK(add_uint_option(&opts, COAP_OPTION_BLOCK1, (wire << 4) | (more << 3) | (l->bert ? 7u : szx)));
        if (num == 0)
            CHK(add_uint_option(&opts, COAP_OPTION_SIZE1, (unsigned)req->body->len));
    } else if (req->body) {
        payload = req->body->data;
        payload_len = req->body->len;
    }
    if (req->body && req->body->read && payload_len) {
        uint8_t *dst = produced;
        if (payload_len > sizeof produced) {
            big = malloc(payload_len);
            if (!big)
                FAIL(FEDGE_ERR_NOMEM);
            dst = big;
        }
        for (size_t o = 0; o < payload_len; o += FEDGE_EDGE_BLOCK_BYTES) {
            size_t n = payload_len - o < FEDGE_EDGE_BLOCK_BYTES ? payload_len - o : FEDGE_EDGE_BLOCK_BYTES;
            CHK(req->body->read(req->body->read_arg, payload_off + o, dst + o, n));
        }
        payload = dst;
    }
    if (opts && !coap_add_optlist_pdu(pdu, &opts))
        FAIL(FEDGE_ERR_INTERNAL);
    if (payload_len && !coap_add_data(pdu, payload_len, payload))
        FAIL(FEDGE_ERR_INTERNAL);
    x->in_use = 1;
    x->num = num;
    x->sent_ms = now_ms();
    x->ack_ms = l->req_ack_ms;
    if (coap_send(l->session, pdu) == COAP_INVALID_MID) {
        x->in_use = 0;
        pdu = NULL; /* coap_send frees the PDU on failure as well */
        FAIL(FEDGE_ERR_IO);
    }
    pdu = NULL;
cleanup:
    free(big);
    coap_delete_optlist(opts);
    if (pdu)
        coap_delete_pdu(pdu);
    return ret;
}

static exchange *find_exchange(fedge_edge_link *l, const coap_pdu_t *received);

/* Keep the window full. Block1 sends block 0 alone (the server starts its
 * reassembly on it) and the last block only once every other one was
 * answered (the server acts on the last one); Block2 sends block 0 alone to
 * learn the size. */
static void fill_window(fedge_edge_link *l)
{
    if (!l->block_size)
        return;
    unsigned busy = 0;
    for (unsigned i = 0; i < l->window; i++)
        busy += l->slots[i].in_use != 0;
    int upload = l->req->method == FEDGE_EDGE_POST;
    unsigned window = upload && l->window > FEDGE_EDGE_BLOCK1_WINDOW ? FEDGE_EDGE_BLOCK1_WINDOW
                                                                     : l->window;
    while (busy < window && l->state == REQ_WAITING) {
        uint32_t num;
        if (l->n_resend) {
            num = l->resend[0];
            memmove(l->resend, l->resend + 1, --l->n_resend * sizeof l->resend[0]);
        } else if (l->n_acked == 0 || l->next_num >= l->n_blocks) {
            break; /* block 0 goes alone */
        } else {
            num = l->next_num;
            if (upload && num + 1 == l->n_blocks && l->n_acked + 1 < l->n_blocks)
                break; /* the last block waits for all the others */
            l->next_num++;
        }
        if (send_exchange(l, num) != FEDGE_OK) {
            fail_request(l, FEDGE_ERR_IO, "cannot send a block");
            return;
        }
        busy++;
    }
}

/* libcoap gave up an exchange of a block transfer after
 * FEDGE_EDGE_BLOCK_RETRANSMIT retransmissions: send that block again as a
 * new exchange (from the request loop), so one unlucky block waits about 3
 * ACK timeouts, not a doubling series; the request's deadline bounds it. */
static int requeue_block(fedge_edge_link *l, const coap_pdu_t *sent)
{
    if (l->state != REQ_WAITING || !l->block_size || !sent)
        return 0;
    exchange *x = find_exchange(l, sent);
    if (!x || l->n_resend >= l->window)
        return 0;
    x->in_use = 0;
    l->resend[l->n_resend++] = x->num;
    return 1;
}

static exchange *find_exchange(fedge_edge_link *l, const coap_pdu_t *received)
{
    coap_bin_const_t token = coap_pdu_get_token(received);
    for (unsigned i = 0; i < l->window; i++) {
        exchange *x = &l->slots[i];
        if (x->in_use && token.length == x->token_len &&
            memcmp(token.s, x->token, x->token_len) == 0)
            return x;
    }
    return NULL;
}

static int get_uint_option(const coap_pdu_t *pdu, uint16_t number, unsigned *out)
{
    coap_opt_iterator_t it;
    coap_opt_t *opt = coap_check_option(pdu, number, &it);
    if (!opt)
        return 0;
    *out = coap_decode_var_bytes(coap_opt_value(opt), coap_opt_length(opt));
    return 1;
}

/* The response that ends the request: code, options, body (the reassembled
 * one for Block2, else the PDU's payload). */
static void finish(fedge_edge_link *l, const coap_pdu_t *received, const uint8_t *data,
                   size_t len)
{
    fedge_edge_reply *rep = l->reply;
    coap_pdu_code_t code = coap_pdu_get_code(received);
    rep->code = (int)COAP_RESPONSE_CLASS(code) * 100 + (int)(code & 0x1f);
    coap_opt_iterator_t it;
    coap_opt_t *opt = coap_check_option(received, COAP_OPTION_ETAG, &it);
    if (opt && coap_opt_length(opt) <= FEDGE_EDGE_ETAG_MAX) {
        rep->etag_len = coap_opt_length(opt);
        memcpy(rep->etag, coap_opt_value(opt), rep->etag_len);
    }
    unsigned max_age;
    if (get_uint_option(received, COAP_OPTION_MAXAGE, &max_age)) {
        rep->has_max_age = 1;
        rep->max_age_s = max_age;
    }
    rep->at_ms = now_ms();
    opt = coap_check_option(received, COAP_OPTION_OBSERVE, &it);
    if (opt && fedge_observe_value(coap_opt_value(opt), coap_opt_length(opt), &rep->observe_seq) == FEDGE_OK)
        rep->has_observe = 1;
    if (data) {
        rep->body_total = len;
        if (l->req->take && COAP_RESPONSE_CLASS(code) == 2) {
            uint8_t *own = NULL;
            rep->sink_called = 1;
            if (data == l->body) {
                own = l->body;
                l->body = NULL;
            } else if ((own = malloc(len ? len : 1)) != NULL) {
                memcpy(own, data, len);
            }
            rep->sink_status = own ? l->req->take(l->req->sink_arg, own, len) : FEDGE_ERR_NOMEM;
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
    if (l->n_blocks > 1 && l->exchanges_done > 1)
        fedge_link_rtt_pace_sample(&l->rtt, (uint32_t)(now_ms() - l->started_ms),
                                   l->exchanges_done);
}

static int same_bytes(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* A 2.xx Block2 response to block x->num. */
static void on_block2(fedge_edge_link *l, const exchange *x, const coap_pdu_t *received,
                      const uint8_t *data, size_t len, unsigned block)
{
    unsigned num = block >> 4, more = (block >> 3) & 1, szx = block & 7;
    if (szx == 7 || num != x->num || (l->block_size && ((size_t)16 << szx) != l->block_size)) {
        fail_request(l, FEDGE_ERR_IO, "Block2 response out of step");
        return;
    }
    coap_opt_iterator_t it;
    coap_opt_t *etag = coap_check_option(received, COAP_OPTION_ETAG, &it);
    size_t etag_len = etag ? coap_opt_length(etag) : 0;
    if (num == 0) {
        unsigned size2 = 0;
        size_t bs = (size_t)16 << szx;
        if (l->block_size) {
            fail_request(l, FEDGE_ERR_IO, "Block2 response out of step");
            return;
        }
        if (!more) {
            finish(l, received, data, len);
            return;
        }
        if (len != bs || !get_uint_option(received, COAP_OPTION_SIZE2, &size2) || size2 <= bs ||
            size2 / bs >= (1u << 20) ||
            size2 > (l->req->max_body ? l->req->max_body : FEDGE_EDGE_REPLY_MAX)) {
            fail_request(l, FEDGE_ERR_IO, "Block2 body without a usable Size2");
            return;
        }
        l->block_size = bs;
        l->n_blocks = (uint32_t)((size2 + bs - 1) / bs);
        l->body_len = size2;
        l->acked = calloc(l->n_blocks, 1);
        l->body = malloc(size2);
        if (!l->acked || !l->body) {
            fail_request(l, FEDGE_ERR_NOMEM, "out of memory for the body");
            return;
        }
        l->has_etag = etag != NULL && etag_len <= FEDGE_EDGE_ETAG_MAX;
        if (l->has_etag) {
            l->first_etag_len = etag_len;
            memcpy(l->first_etag, coap_opt_value(etag), etag_len);
        }
        l->next_num = 1;
        coap_session_set_max_retransmit(l->session, FEDGE_EDGE_BLOCK_RETRANSMIT);
    } else if (!l->block_size) {
        fail_request(l, FEDGE_ERR_IO, "Block2 response out of step");
        return;
    } else if (l->has_etag && (!etag || !same_bytes(coap_opt_value(etag), etag_len,
                                                    l->first_etag, l->first_etag_len))) {
        fail_request(l, FEDGE_ERR_IO, "the body changed during the Block2 transfer");
        return;
    }
    size_t off = (size_t)num * l->block_size;
    if (num >= l->n_blocks) {
        fail_request(l, FEDGE_ERR_IO, "Block2 block past the end");
        return;
    }
    size_t want = l->body_len - off < l->block_size ? l->body_len - off : l->block_size;
    if (len != want || (more != 0) != (num + 1 < l->n_blocks)) {
        fail_request(l, FEDGE_ERR_IO, "Block2 block of the wrong size");
        return;
    }
    if (!l->acked[num]) {
        memcpy(l->body + off, data, len);
        l->acked[num] = 1;
        l->n_acked++;
    }
    if (l->n_acked == l->n_blocks)
        finish(l, received, l->body, l->body_len);
}

/* A 2.31 Continue for a Block1 block that was not the last. */
static void on_block1_continue(fedge_edge_link *l, const exchange *x, const coap_pdu_t *received)
{
    unsigned block;
    int ok = get_uint_option(received, COAP_OPTION_BLOCK1, &block) && x->num + 1 < l->n_blocks;
    if (ok && l->bert)
        ok = (block >> 4) == x->num * (l->block_size / FEDGE_EDGE_BLOCK_BYTES) && (block & 7) >= 6;
    else if (ok)
        ok = (block >> 4) == x->num && ((size_t)16 << (block & 7)) == l->block_size;
    if (!ok) {
        fail_request(l, FEDGE_ERR_IO, "Block1 continuation out of step");
        return;
    }
    if (!l->acked[x->num]) {
        l->acked[x->num] = 1;
        l->n_acked++;
    }
}

static int is_observation(const fedge_edge_link *l, const coap_pdu_t *received)
{
    coap_bin_const_t token = coap_pdu_get_token(received);
    return l->observing && token.length == l->obs_token_len &&
           memcmp(token.s, l->obs_token, l->obs_token_len) == 0;
}

/* A notification of the resource observed: kept when fresher than the last
 * one (a duplicate or a reordered one is not). A non-2.xx, or a response
 * without Observe, ends the observation (RFC 7641 §3.2). */
static void on_notification(fedge_edge_link *l, const coap_pdu_t *received)
{
    coap_pdu_code_t code = coap_pdu_get_code(received);
    coap_opt_iterator_t it;
    coap_opt_t *opt = coap_check_option(received, COAP_OPTION_OBSERVE, &it);
    uint32_t seq = 0;
    if (COAP_RESPONSE_CLASS(code) != 2 || !opt ||
        fedge_observe_value(coap_opt_value(opt), coap_opt_length(opt), &seq) != FEDGE_OK) {
        l->observing = 0;
        return;
    }
    uint64_t now = now_ms();
    if (!fedge_observe_is_fresher(l->obs_seq, l->obs_at_ms, seq, now))
        return;
    l->obs_seq = seq;
    l->obs_at_ms = now;
    fedge_edge_reply *rep = &l->obs_latest;
    memset(rep, 0, sizeof *rep);
    rep->code = (int)COAP_RESPONSE_CLASS(code) * 100 + (int)(code & 0x1f);
    rep->has_observe = 1;
    rep->observe_seq = seq;
    rep->at_ms = now;
    unsigned v;
    if (get_uint_option(received, COAP_OPTION_MAXAGE, &v)) {
        rep->has_max_age = 1;
        rep->max_age_s = v;
    }
    size_t len = 0;
    const uint8_t *data = NULL;
    if (coap_get_data(received, &len, &data) && data) {
        rep->body_len = len < FEDGE_EDGE_REPLY_MAX ? len : FEDGE_EDGE_REPLY_MAX;
        memcpy(rep->body, data, rep->body_len);
        rep->body_total = len;
    }
    rep->body[rep->body_len] = '\0';
    /* only the first block of a longer body came: the reader must fetch it */
    if (get_uint_option(received, COAP_OPTION_BLOCK2, &v) && (v & 8))
        rep->body_total = FEDGE_EDGE_REPLY_MAX + 1;
    l->obs_fresh = 1;
}

/* The response to a GET with Observe: 0 has arrived (x: its exchange). */
static void note_registration(fedge_edge_link *l, const exchange *x)
{
    const fedge_edge_reply *rep = l->reply;
    l->obs_fresh = 0;
    if (!rep->has_observe || rep->code / 100 != 2 || x->token_len > sizeof l->obs_token) {
        l->observing = 0;
        return;
    }
    l->observing = 1;
    l->obs_token_len = x->token_len;
    memcpy(l->obs_token, x->token, x->token_len);
    l->obs_seq = rep->observe_seq;
    l->obs_at_ms = rep->at_ms;
}

static coap_response_t on_response(coap_session_t *session, const coap_pdu_t *sent,
                                   const coap_pdu_t *received, const coap_mid_t mid)
{
    FEDGE_UNUSED(mid);
    fedge_edge_link *l = link_of(session);
    coap_pdu_type_t type = coap_pdu_get_type(received);
    exchange *x = l && l->state == REQ_WAITING && session == l->session
                      ? find_exchange(l, received)
                      : NULL;
    if (!x && l && session == l->session && is_observation(l, received)) {
        on_notification(l, received);
        return COAP_RESPONSE_OK; /* libcoap acknowledges a CON one */
    }
    if (!x) {
        /* Not ours (a late answer to an abandoned request): reset unsolicited ones. */
        if (!sent && (type == COAP_MESSAGE_CON || type == COAP_MESSAGE_NON))
            return COAP_RESPONSE_FAIL;
        return COAP_RESPONSE_OK;
    }
    uint64_t now = now_ms();
    uint32_t elapsed = now > x->sent_ms ? (uint32_t)(now - x->sent_ms) : 0;
    /* Karn: an exchange that may have been retransmitted is no clean sample. */
    if (elapsed < x->ack_ms) {
        /* A clean sample: later exchanges of this request use the new ACK
         * timeout already (a handshake's seed may have been far too long). */
        fedge_link_rtt_sample(&l->rtt, elapsed, 0);
        set_ack_timeout(l);
    }
    x->in_use = 0;
    l->exchanges_done++;
    l->heard_ms = now;

    size_t len = 0;
    const uint8_t *data = NULL;
    if (!coap_get_data(received, &len, &data))
        data = NULL;
    coap_pdu_code_t code = coap_pdu_get_code(received);
    unsigned block;
    if (l->req->method == FEDGE_EDGE_GET && COAP_RESPONSE_CLASS(code) == 2 &&
        get_uint_option(received, COAP_OPTION_BLOCK2, &block))
        on_block2(l, x, received, data, data ? len : 0, block);
    else if (l->req->method == FEDGE_EDGE_POST && l->block_size &&
             code == COAP_RESPONSE_CODE(231))
        on_block1_continue(l, x, received);
    else
        finish(l, received, data, data ? len : 0); /* whatever else it is ends the request */
    if (l->state == REQ_DONE && l->req->observe)
        note_registration(l, x);
    if (l->state == REQ_WAITING)
        fill_window(l);
    return COAP_RESPONSE_OK;
}

static void on_nack(coap_session_t *session, const coap_pdu_t *sent,
                    const coap_nack_reason_t reason, const coap_mid_t mid)
{
    FEDGE_UNUSED(mid);
    fedge_edge_link *l = link_of(session);
    if (!l || session != l->session)
        return;
    if (sent && l->state == REQ_WAITING && !find_exchange(l, sent))
        return; /* a leftover of an earlier request */
    switch (reason) {
    case COAP_NACK_TOO_MANY_RETRIES:
        if (!requeue_block(l, sent))
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
            fail_request(l, FEDGE_ERR_IO, l->tcp ? "TLS handshake failed (server down, wrong key, or unknown identity)"
                                                 : "DTLS handshake failed (server down, wrong key, or unknown identity)");
        else if (event == COAP_EVENT_DTLS_ERROR)
            fail_request(l, FEDGE_ERR_IO, l->tcp ? "TLS error" : "DTLS error");
        else
            fail_request(l, FEDGE_ERR_IO, l->tcp ? "TLS session closed by the server" : "DTLS session closed by the server");
        break;
    case COAP_EVENT_TCP_FAILED:
    case COAP_EVENT_TCP_CLOSED:
        if (!l->session_up)
            fail_request(l, FEDGE_ERR_IO, "TCP connection failed (does the aggregator listen on TCP there? "
                                          "listen_tcp; without it use DTLS)");
        else
            fail_request(l, FEDGE_ERR_IO, "TCP connection closed by the server");
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
        cfg->window > FEDGE_EDGE_WINDOW_MAX ||
        (!cfg->insecure && (!cfg->psk || strlen(cfg->psk) > FEDGE_PSK_LEN))) {
        snprintf(err, errlen, "bad link configuration");
        return FEDGE_ERR_INVALID_ARG;
    }
    coap_global_acquire(cfg->verbose);
    if (!cfg->insecure && !cfg->tcp && !coap_dtls_is_supported()) {
        snprintf(err, errlen, "this libcoap build has no DTLS support");
        FAIL(FEDGE_ERR_UNSUPPORTED);
    }
    if (cfg->tcp && (!coap_tcp_is_supported() || (!cfg->insecure && !coap_tls_is_supported()))) {
        snprintf(err, errlen,
                 "this libcoap build has no TCP%s support: --transport tcp needs the native build "
                 "(the cross-built device edges are UDP/DTLS only, docs/EDGE.md); use DTLS",
                 cfg->insecure ? "" : "/TLS");
        FAIL(FEDGE_ERR_UNSUPPORTED);
    }
    unsigned window = cfg->window ? cfg->window : FEDGE_EDGE_WINDOW;
    l = calloc(1, sizeof *l + window * (sizeof l->slots[0] + sizeof l->resend[0]));
    if (!l)
        FAIL(FEDGE_ERR_NOMEM);
    l->window = window;
    l->resend = (uint32_t *)(l->slots + window);
    l->insecure = cfg->insecure;
    l->tcp = cfg->tcp;
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
    /* Block transfers are ours (windowed); libcoap only retransmits. */
    coap_context_set_block_mode(l->ctx, 0);
    coap_register_response_handler(l->ctx, on_response);
    coap_register_nack_handler(l->ctx, on_nack);
    coap_register_event_handler(l->ctx, on_event);
    /* libcoap waits this long for the server's CSM inside a send */
    coap_context_set_csm_timeout(l->ctx, (l->handshake_timeout_ms + 999) / 1000);
    *out = l;
    l = NULL;
cleanup:
    if (l)
        fedge_edge_link_close(l);
    else if (ret != FEDGE_OK)
        coap_global_release();
    return ret;
}

static void drop_session(fedge_edge_link *l, int abrupt)
{
    coap_session_t *s = l->session;
    if (!s)
        return;
    l->session = NULL; /* handlers ignore the session from here on */
    l->observing = 0;
    l->timeouts_in_row = 0;
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
    coap_global_release();
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
        l->session = coap_new_client_session(l->ctx, NULL, &l->dst, l->tcp ? COAP_PROTO_TCP : COAP_PROTO_UDP);
    } else {
        coap_dtls_cpsk_t setup;
        memset(&setup, 0, sizeof setup);
        setup.version = COAP_DTLS_CPSK_SETUP_VERSION;
        setup.client_sni = NULL;
        setup.psk_info.identity.s = (const uint8_t *)l->id;
        setup.psk_info.identity.length = strlen(l->id);
        setup.psk_info.key.s = (const uint8_t *)l->psk;
        setup.psk_info.key.length = l->psk_len;
        pthread_mutex_lock(&g_coap_lock);
        l->session = coap_new_client_session_psk2(l->ctx, NULL, &l->dst, l->tcp ? COAP_PROTO_TLS : COAP_PROTO_DTLS,
                                                  &setup);
        pthread_mutex_unlock(&g_coap_lock);
    }
    if (!l->session) {
        snprintf(l->last_error, sizeof l->last_error, "%s",
                 l->tcp ? "cannot connect over TCP (does the aggregator listen on TCP there? listen_tcp)"
                        : "cannot create a CoAP session");
        return FEDGE_ERR_IO;
    }
    if (l->insecure && !l->tcp)
        l->session_up = 1; /* no handshake */
    return FEDGE_OK;
}

/* The session's CoAP timers from what the link knows now: the ACK timeout
 * from the RTT, enough retransmissions that the request's deadline, not
 * libcoap, ends a stalled exchange, and NSTART = the window. */
static void tune_session(fedge_edge_link *l, uint32_t timeout_ms)
{
    uint32_t ack = set_ack_timeout(l);
    coap_session_set_max_retransmit(l->session, fedge_link_rtt_max_retransmit(ack, timeout_ms));
    coap_session_set_nstart(l->session, (uint16_t)l->window);
}

static void end_request(fedge_edge_link *l)
{
    free(l->acked);
    free(l->body);
    l->acked = NULL;
    l->body = NULL;
    memset(l->slots, 0, l->window * sizeof l->slots[0]);
    l->block_size = 0;
    l->n_blocks = 0;
    l->next_num = 0;
    l->n_acked = 0;
    l->n_resend = 0;
    l->body_len = 0;
    l->has_etag = 0;
    l->first_etag_len = 0;
    l->exchanges_done = 0;
    l->state = REQ_IDLE;
    l->req = NULL;
    l->reply = NULL;
}

int fedge_edge_link_request(fedge_edge_link *l, const fedge_edge_request *req,
                            fedge_edge_reply *reply, const volatile sig_atomic_t *stop)
{
    int ret = FEDGE_OK;
    if (!l || !req || !req->path || !reply || req->etag_len > FEDGE_EDGE_ETAG_MAX ||
        req->timeout_ms == 0 || (req->method != FEDGE_EDGE_GET && req->method != FEDGE_EDGE_POST))
        return FEDGE_ERR_INVALID_ARG;
    memset(reply, 0, sizeof *reply);
    l->last_error[0] = '\0';
    if (stop && *stop)
        return FEDGE_ERR_EDGE_STOPPED;
    uint64_t start = now_ms();
    unsigned too_big0 = g_dropped_too_big, malformed0 = g_dropped_malformed;

    CHK(ensure_session(l));
    tune_session(l, req->timeout_ms);
    int handshaking = !l->session_up;
    int reused_session = l->session_up;
    /* The request's time starts once the session is up; the handshake has
     * its own budget. */
    uint32_t handshake_ms = req->handshake_timeout_ms ? req->handshake_timeout_ms : l->handshake_timeout_ms;
    uint64_t deadline = start + (handshaking ? handshake_ms : req->timeout_ms);
    l->req = req;
    l->reply = reply;
    l->state = REQ_WAITING;
    l->started_ms = start;
    l->heard_ms = start;
    if (req->method == FEDGE_EDGE_POST && req->body && req->body->len > (size_t)FEDGE_EDGE_BLOCK_BYTES << 20) {
        end_request(l);
        return FEDGE_ERR_INVALID_ARG; /* past the 20-bit block number */
    }
    /* Over TCP the message size is the server's (its CSM): wait for the
     * session, then send a body that fits in one message, else BERT blocks
     * of as many KiB as fit. */
    size_t single_max = FEDGE_EDGE_BLOCK_BYTES, block_size = FEDGE_EDGE_BLOCK_BYTES;
    l->bert = 0;
    if (l->tcp && handshaking) {
        while (l->state == REQ_WAITING && !l->session_up) {
            uint64_t now = now_ms();
            if (stop && *stop) {
                fail_request(l, FEDGE_ERR_EDGE_STOPPED, "stopped by signal");
            } else if (now >= deadline) {
                char why[96];
                snprintf(why, sizeof why, "no TLS handshake and CSM within %u ms", (unsigned)handshake_ms);
                fail_request(l, FEDGE_ERR_TIMEOUT, why);
            } else if (coap_io_process(l->ctx, deadline - now < IO_SLICE_MS ? (uint32_t)(deadline - now) + 1
                                                                           : IO_SLICE_MS) < 0) {
                fail_request(l, FEDGE_ERR_IO, "CoAP I/O error");
            } else if (l->session && coap_session_get_state(l->session) == COAP_SESSION_STATE_ESTABLISHED) {
                note_session_up(l);
            }
        }
        if (l->state != REQ_WAITING)
            goto done;
        handshaking = 0;
        deadline = now_ms() + req->timeout_ms;
    }
    if (l->tcp) {
        size_t m = coap_session_max_pdu_size(l->session);
#ifdef TLS_RECORD_MAX
        if (!l->insecure && m > TLS_RECORD_MAX)
            m = TLS_RECORD_MAX;
#endif
        size_t room = m > TCP_HEADROOM ? m - TCP_HEADROOM : 0;
        if (room > single_max)
            single_max = room;
        if (room >= 2 * FEDGE_EDGE_BLOCK_BYTES) {
            block_size = room > FEDGE_EDGE_BERT_MAX ? FEDGE_EDGE_BERT_MAX : room;
            block_size -= block_size % FEDGE_EDGE_BLOCK_BYTES;
        }
    }
    if (req->method == FEDGE_EDGE_POST && req->body && req->body->len > single_max) {
        l->block_size = block_size;
        l->bert = block_size > FEDGE_EDGE_BLOCK_BYTES;
        l->n_blocks = (uint32_t)((req->body->len + block_size - 1) / block_size);
        l->acked = calloc(l->n_blocks, 1);
        if (!l->acked)
            fail_request(l, FEDGE_ERR_NOMEM, "out of memory for the block list");
        coap_session_set_max_retransmit(l->session, FEDGE_EDGE_BLOCK_RETRANSMIT);
    }
    if (l->state == REQ_WAITING) {
        if (send_exchange(l, 0) != FEDGE_OK)
            fail_request(l, FEDGE_ERR_IO, "cannot send the request");
        l->next_num = 1;
    }
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
        /* A block transfer whose server stopped answering (it restarted and
         * lost the DTLS session) ends after one exchange's worth of silence,
         * not at the request's deadline, so the round has time to retry on a
         * new session. */
        uint32_t stall_ms = l->block_size
                                ? fedge_link_rtt_deadline_ms(&l->rtt, l->block_size, l->block_size, 0, 0)
                                : 0;
        /* A GET (answered at once, unlike a POST that waits for its commit)
         * on a session set up before this request, over a fast link: two
         * transmissions unanswered (the first and its one retransmission, 3
         * ACK timeouts) more likely mean a restarted server that dropped the
         * session than loss; the retry on a new session is cheap there. A
         * slow link waits the request's whole deadline. */
        if (!l->block_size && req->method == FEDGE_EDGE_GET && reused_session && l->rtt.has_rtt && l->rtt.srtt_ms < KEEP_SESSION_MIN_RTT_MS)
            stall_ms = 3 * fedge_link_rtt_ack_timeout_ms(&l->rtt);
        if (!handshaking && stall_ms && now < deadline && now - l->heard_ms >= stall_ms) {
            char why[160];
            snprintf(why, sizeof why, "no answer for %u ms (%u of %u blocks)%s", (unsigned)stall_ms,
                     (unsigned)l->n_acked, (unsigned)(l->n_blocks ? l->n_blocks : 1),
                     l->block_size ? "" : " on a fast link: the server may have restarted");
            fail_request(l, FEDGE_ERR_TIMEOUT, why);
            break;
        }
        if (now >= deadline) {
            char why[160];
            if (handshaking)
                snprintf(why, sizeof why, "no DTLS handshake within %u ms", (unsigned)handshake_ms);
            else if (g_dropped_malformed != malformed0)
                snprintf(why, sizeof why, "no usable answer within %u ms: %u repl%s discarded by libcoap as %s",
                         (unsigned)req->timeout_ms, g_dropped_malformed - malformed0,
                         g_dropped_malformed - malformed0 == 1 ? "y" : "ies",
                         g_dropped_too_big != too_big0 ? "larger than a CoAP message may be here (Block2 needed)"
                                                       : "malformed");
            else
                snprintf(why, sizeof why, "no answer within %u ms (%u of %u blocks)",
                         (unsigned)req->timeout_ms, (unsigned)l->n_acked,
                         (unsigned)(l->n_blocks ? l->n_blocks : 1));
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
        if (l->state == REQ_WAITING && l->n_resend)
            fill_window(l);
    }
done:
    ret = l->state == REQ_DONE ? FEDGE_OK : l->fail_code;
cleanup:
    if (ret == FEDGE_OK) {
        l->timeouts_in_row = 0;
    } else if (ret == FEDGE_ERR_TIMEOUT && l->session && l->session_up && !l->block_size &&
               l->rtt.has_rtt && l->rtt.srtt_ms >= KEEP_SESSION_MIN_RTT_MS && l->timeouts_in_row++ == 0) {
        /* One unanswered single exchange on a slow lossy link: keep the
         * session (a new DTLS handshake costs several long round trips
         * there); its leftover retransmissions can only draw an answer that
         * is ignored. A second timeout in a row drops it (the server may
         * have lost it). On a fast link a handshake is cheap and silence
         * more likely means a restarted server: drop it at once. */
    } else {
        drop_session(l, 1);
    }
    end_request(l);
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

int fedge_edge_link_observing(const fedge_edge_link *l)
{
    return l && l->observing;
}

const fedge_edge_reply *fedge_edge_link_observe_peek(const fedge_edge_link *l)
{
    return l && l->obs_fresh ? &l->obs_latest : NULL;
}

int fedge_edge_link_observe_wait(fedge_edge_link *l, uint32_t ms, fedge_edge_reply *out, int *got,
                                 const volatile sig_atomic_t *stop)
{
    if (!l || !out || !got)
        return FEDGE_ERR_INVALID_ARG;
    *got = 0;
    uint64_t deadline = now_ms() + ms;
    for (;;) {
        if (l->obs_fresh) {
            *out = l->obs_latest;
            l->obs_fresh = 0;
            *got = 1;
            return FEDGE_OK;
        }
        if (!l->observing)
            return FEDGE_OK;
        if (stop && *stop)
            return FEDGE_ERR_EDGE_STOPPED;
        uint64_t now = now_ms();
        if (now >= deadline)
            return FEDGE_OK;
        uint64_t left = deadline - now;
        coap_io_process(l->ctx, left < IO_SLICE_MS ? (uint32_t)left : IO_SLICE_MS);
    }
}

void fedge_edge_link_rtt(const fedge_edge_link *l, fedge_link_rtt *out)
{
    if (l)
        *out = l->rtt;
    else
        fedge_link_rtt_init(out);
}

unsigned long fedge_edge_link_handshakes(const fedge_edge_link *l)
{
    return l ? l->handshakes : 0;
}
