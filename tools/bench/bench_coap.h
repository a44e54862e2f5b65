/* bench_coap.h — the client set-up the CoAP/DTLS benchmarks share: the
 * server address, the libcoap context with its handlers, DTLS-PSK client
 * sessions, the answer's token and code, the file descriptor limit, the
 * clock and sorting of times.
 * Header-only: each benchmark is one .c file. */
#ifndef FEDGE_BENCH_COAP_H
#define FEDGE_BENCH_COAP_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <netdb.h>

#include <coap3/coap.h>

/* Monotonic seconds. */
static inline double bench_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* qsort comparator for doubles, ascending. */
static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Whether the answer carries the request's token. */
static inline int bench_token_is(const coap_pdu_t *received, const uint8_t *token, size_t token_len)
{
    coap_bin_const_t t = coap_pdu_get_token(received);
    return t.length == token_len && memcmp(t.s, token, t.length) == 0;
}

/* The answer's code as class * 100 + detail (2.05 -> 205). */
static inline int bench_code(const coap_pdu_t *received)
{
    coap_pdu_code_t code = coap_pdu_get_code(received);
    return (int)COAP_RESPONSE_CLASS(code) * 100 + (int)(code & 0x1f);
}

/* Raises the soft limit on open files to at least want (up to the hard limit):
 * one UDP socket per DTLS session. */
static inline void bench_raise_nofile(rlim_t want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* HOST:PORT (UDP) into *dst; *port (may be NULL) gets PORT as a number.
 * -1: no ':' in server; -2: the name does not resolve. */
static inline int bench_resolve(const char *server, coap_address_t *dst, unsigned *port)
{
    char host[128];
    snprintf(host, sizeof host, "%s", server);
    char *colon = strrchr(host, ':');
    if (!colon)
        return -1;
    *colon = '\0';
    if (port)
        *port = (unsigned)atoi(colon + 1);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
        return -2;
    coap_address_init(dst);
    dst->size = res->ai_addrlen;
    memcpy(&dst->addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

/* coap_startup, libcoap's logging off, and a client context with the block
 * mode and the response and nack handlers; NULL when it cannot be made. */
static inline coap_context_t *bench_coap_context(uint8_t block_mode, coap_response_handler_t on_response,
                                                 coap_nack_handler_t on_nack)
{
    coap_startup();
    coap_set_log_level(LOG_EMERG);
    coap_dtls_set_log_level(LOG_EMERG);
    coap_context_t *ctx = coap_new_context(NULL);
    if (!ctx)
        return NULL;
    coap_context_set_block_mode(ctx, block_mode);
    coap_register_response_handler(ctx, on_response);
    coap_register_nack_handler(ctx, on_nack);
    return ctx;
}

/* A (D)TLS-PSK client session to dst as identity id with key psk (psk_len
 * bytes): proto COAP_PROTO_DTLS, or COAP_PROTO_TLS (CoAP over TCP, RFC 8323). */
static inline coap_session_t *bench_psk_session_proto(coap_context_t *ctx, const coap_address_t *dst,
                                                      const char *id, const char *psk, size_t psk_len,
                                                      coap_proto_t proto)
{
    coap_dtls_cpsk_t setup;
    memset(&setup, 0, sizeof setup);
    setup.version = COAP_DTLS_CPSK_SETUP_VERSION;
    setup.psk_info.identity.s = (const uint8_t *)id;
    setup.psk_info.identity.length = strlen(id);
    setup.psk_info.key.s = (const uint8_t *)psk;
    setup.psk_info.key.length = psk_len;
    return coap_new_client_session_psk2(ctx, NULL, dst, proto, &setup);
}

/* A DTLS-PSK client session (bench_psk_session_proto with COAP_PROTO_DTLS). */
static inline coap_session_t *bench_psk_session(coap_context_t *ctx, const coap_address_t *dst, const char *id,
                                                const char *psk, size_t psk_len)
{
    return bench_psk_session_proto(ctx, dst, id, psk, psk_len, COAP_PROTO_DTLS);
}

#endif
