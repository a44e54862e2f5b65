/* link.h — the edge's CoAP client: one context, one (D)TLS session, one
 * request in flight at a time (libcoap 4.3.1 for CoAP, DTLS and
 * retransmission; block transfers are done here, libcoap's block mode off).
 *
 * fedge_edge_link_request sends one request as confirmable exchanges and
 * runs libcoap's I/O loop until the response arrives, the request's deadline
 * passes, the session fails (NACK, DTLS error) or *stop becomes nonzero.
 * Bodies over one block move as RFC 7959 blocks of 1024 bytes with several
 * exchanges in flight: Block2 up to `window`, Block1 up to
 * FEDGE_EDGE_BLOCK1_WINDOW, block 0 alone first, the last Block1 block only
 * after all others were acknowledged. Over TCP (cfg.tcp, RFC 8323) the
 * request waits for the TLS handshake and the server's CSM, then sends a
 * POST body in one message when it fits the server's Max-Message-Size,
 * else as BERT blocks (SZX 7) of as many KiB as fit; downloads keep 1024-byte
 * Block2 blocks. Any failure drops the session — its
 * queued retransmissions go with it — and the next request opens a fresh one
 * (new DTLS handshake), so a retry never races a leftover transfer. Bodies:
 *   POST: a refcounted blob (bytes, or a reader asked for each block as it
 *         is sent), read only during the call.
 *   2.xx response with a sink: the sink sees the whole reassembled body once
 *         (at most max_body bytes; a larger Size2 fails the request);
 *         otherwise the first FEDGE_EDGE_REPLY_MAX bytes are copied into the
 *         reply. */
#ifndef FEDGE_EDGE_LINK_H
#define FEDGE_EDGE_LINK_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "link_rtt.h"

/* A copied reply body: a /round answer (the aggregator's are under 1024
 * bytes, one message) or an error's reason; bodies larger than this go
 * to a sink. */
#define FEDGE_EDGE_REPLY_MAX 1024
#define FEDGE_EDGE_BLOCK_SZX 6u     /* the largest Block1/Block2 size over UDP (BERT is TCP only) */
#define FEDGE_EDGE_BLOCK_BYTES 1024u
#define FEDGE_EDGE_WINDOW 10u       /* exchanges in flight: RFC 9177's MAX_PAYLOADS */
#define FEDGE_EDGE_WINDOW_MAX 32u
/* Block1 uploads keep at most 3 blocks in flight: libcoap 4.3.1's server
 * tracks the blocks it holds in at most 3 ranges and drops the whole upload
 * ("4.08 Too many missing blocks") beyond; blocks are sent in order, so W in
 * flight leave at most W - 1 holes, i.e. W ranges. */
#define FEDGE_EDGE_BLOCK1_WINDOW 3u
/* Retransmissions of one block exchange before it is sent afresh. */
#define FEDGE_EDGE_BLOCK_RETRANSMIT 1u
#define FEDGE_EDGE_HANDSHAKE_MS 20000u /* default DTLS handshake budget */
#define FEDGE_EDGE_ETAG_MAX 8
#define FEDGE_EDGE_BERT_MAX (1024u * 1024u) /* the largest BERT block sent over TCP */

/* Reads body bytes [off, off + len) into dst (len <= FEDGE_EDGE_BLOCK_BYTES);
 * any offset may be asked again (a block sent afresh, a retry). */
typedef int (*fedge_edge_blob_reader)(void *arg, size_t off, uint8_t *dst, size_t len);

/* A refcounted body: bytes held in data, or produced on demand by a reader
 * (data NULL). The last release frees data (a reader's arg is the caller's). */
typedef struct {
    unsigned refs;
    size_t len;
    uint8_t *data; /* owned */
    fedge_edge_blob_reader read;
    void *read_arg;
} fedge_edge_blob;

/* Takes ownership of data (malloc'd) even on failure; refs = 1. */
int fedge_edge_blob_new(uint8_t *data, size_t len, fedge_edge_blob **out);
/* A body of len bytes read through read(arg, ...) as blocks are sent. */
int fedge_edge_blob_new_reader(size_t len, fedge_edge_blob_reader read, void *arg,
                               fedge_edge_blob **out);
void fedge_edge_blob_release(fedge_edge_blob *b); /* NULL is fine */

typedef struct {
    const char *host;        /* name or address */
    uint16_t port;
    int insecure;            /* plain CoAP; adds ?id=DEVICE to each request */
    const char *id;          /* device id = PSK identity */
    const char *psk;         /* NUL-terminated PSK (unused when insecure); copied */
    uint32_t ack_timeout_ms; /* fixed CoAP ACK_TIMEOUT (>= 1000; 0: from the measured RTT) */
    uint32_t handshake_timeout_ms; /* DTLS handshake budget (0: FEDGE_EDGE_HANDSHAKE_MS) */
    unsigned window;         /* block exchanges in flight (0: FEDGE_EDGE_WINDOW; at most
                                FEDGE_EDGE_WINDOW_MAX; 1: stop-and-wait) */
    int verbose;             /* let libcoap log warnings */
    int tcp;                 /* CoAP over TLS/TCP (RFC 8323; plain TCP when insecure) instead of
                                DTLS: POST bodies larger than one message go as BERT blocks */
} fedge_edge_link_config;

typedef struct fedge_edge_link fedge_edge_link;

/* Resolves the host and creates the context (no traffic yet). err gets a
 * one-line reason. */
int fedge_edge_link_open(const fedge_edge_link_config *cfg, fedge_edge_link **out, char *err,
                         size_t errlen);
/* Releases the session (sending a DTLS close_notify when one is up), the
 * context and its hold on libcoap's global state; wipes the PSK. NULL is
 * fine. */
void fedge_edge_link_close(fedge_edge_link *l);

typedef enum { FEDGE_EDGE_GET = 1, FEDGE_EDGE_POST = 2 } fedge_edge_method;

/* Called once with the whole body of a 2.xx response; its status lands in
 * reply->sink_status. */
typedef int (*fedge_edge_body_sink)(void *arg, const uint8_t *data, size_t len);
/* The same, handed the body itself (malloc'd, len bytes): the callee owns it
 * and frees it, also when it fails. A reassembled Block2 body is passed
 * without a copy, so the body and what it becomes need not coexist. */
typedef int (*fedge_edge_body_take)(void *arg, uint8_t *data, size_t len);

typedef struct {
    fedge_edge_method method;
    const char *path;             /* one segment: "round", "model", "update" */
    const uint8_t *etag;          /* NULL or 1..8 bytes */
    size_t etag_len;
    fedge_edge_blob *body;        /* POST body or NULL */
    fedge_edge_body_sink sink;    /* NULL: copy the body into the reply */
    fedge_edge_body_take take;    /* instead of sink (sink must be NULL) */
    void *sink_arg;
    size_t max_body;              /* largest response body taken (0: FEDGE_EDGE_REPLY_MAX) */
    uint32_t timeout_ms;          /* whole exchange, all blocks included, from the moment
                                     the session is up (a handshake has its own budget) */
    int observe;                  /* GET: register Observe (RFC 7641 Observe: 0) */
    uint32_t handshake_timeout_ms; /* a DTLS handshake this request waits for (0: the link's) */
} fedge_edge_request;

typedef struct {
    int code;                     /* class * 100 + detail: 205, 204, 503, ... */
    int sink_status;              /* FEDGE_OK unless the sink failed */
    int sink_called;
    size_t body_len;              /* bytes in body (at most FEDGE_EDGE_REPLY_MAX) */
    size_t body_total;            /* bytes the response carried */
    char body[FEDGE_EDGE_REPLY_MAX + 1]; /* NUL-terminated copy */
    int has_max_age;
    uint32_t max_age_s;
    size_t etag_len;
    uint8_t etag[FEDGE_EDGE_ETAG_MAX];
    int has_observe;              /* the response carried an Observe option */
    uint32_t observe_seq;
    uint64_t at_ms;               /* when it arrived (fedge_edge_link_now_ms) */
} fedge_edge_reply;

/* FEDGE_OK when a response arrived (whatever its code); FEDGE_ERR_TIMEOUT
 * when the deadline passed or libcoap gave up retransmitting;
 * FEDGE_ERR_IO when the session failed (DTLS handshake refused, ICMP
 * unreachable, reset) or the request could not be built;
 * FEDGE_ERR_EDGE_STOPPED when *stop became nonzero. The reason of the last
 * failure is in fedge_edge_link_last_error. */
int fedge_edge_link_request(fedge_edge_link *l, const fedge_edge_request *req,
                            fedge_edge_reply *reply, const volatile sig_atomic_t *stop);
const char *fedge_edge_link_last_error(const fedge_edge_link *l);
/* Wait ms while keeping libcoap's I/O serviced; FEDGE_ERR_EDGE_STOPPED early
 * when *stop becomes nonzero. */
int fedge_edge_link_sleep(fedge_edge_link *l, uint32_t ms, const volatile sig_atomic_t *stop);
/* Drop the current session (the next request opens a new one). */
void fedge_edge_link_reset(fedge_edge_link *l);

/* Observe (RFC 7641). A GET with req->observe whose 2.xx response carries
 * an Observe option makes the link observe that resource on the current
 * session: notifications (the server's CON or NON responses with that
 * token) are taken inside libcoap's I/O loop whenever it runs (during any
 * request, sleep or wait), acknowledged, and the freshest (RFC 7641 §3.4)
 * is kept until fedge_edge_link_observe_wait hands it over; the one request
 * in flight is never disturbed. The observation ends when the session is
 * dropped, a later registration is answered without Observe, or a
 * notification is not a 2.xx or lacks the Observe option (the server ended
 * it). One observation at a time. */
int fedge_edge_link_observing(const fedge_edge_link *l);
/* Waits up to ms for a notification newer than the last one handed over (or
 * than the registration's response). FEDGE_OK with *got = 1 and *out filled
 * (code, body, at_ms), or *got = 0 when ms passed or the observation ended;
 * FEDGE_ERR_EDGE_STOPPED when *stop became nonzero. */
int fedge_edge_link_observe_wait(fedge_edge_link *l, uint32_t ms, fedge_edge_reply *out, int *got,
                                 const volatile sig_atomic_t *stop);
/* The notification fedge_edge_link_observe_wait would hand over now, left
 * in place; NULL when none is fresh. Valid until the link's I/O runs again. */
const fedge_edge_reply *fedge_edge_link_observe_peek(const fedge_edge_link *l);

/* Timing. Every request tunes the session first: ACK timeout from the RTT
 * estimate (unless fixed in the config), MAX_RETRANSMIT so that libcoap's
 * backoff spans the request's timeout (link_rtt.h). A DTLS handshake seeds
 * the estimate; each single request/response pair refines it; each block
 * transfer updates the block pace. */
uint64_t fedge_edge_link_now_ms(void); /* CLOCK_MONOTONIC */
void fedge_edge_link_rtt(const fedge_edge_link *l, fedge_link_rtt *out);
uint32_t fedge_edge_link_ack_timeout_ms(const fedge_edge_link *l);

/* DTLS handshakes completed over the link's life. Links may be opened,
 * used and closed on many threads at once (one link per thread): libcoap's
 * global state is set up by the first open and released by the last close. */
unsigned long fedge_edge_link_handshakes(const fedge_edge_link *l);

#endif
