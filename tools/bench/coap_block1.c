/* bench-coap_block1 — a raw Block1 (RFC 7959) client over CoAP/DTLS-PSK, for
 * the upload-limit tests and for probing an aggregator by hand.
 *
 *   bench-coap_block1 --server HOST:PORT --id DEVICE (--psk PSK | --insecure)
 *       [--size N | --file PATH] [--block 1024] [--size1 auto|none|N]
 *       [--blocks K] [--close] [--repeat-last] [--path update] [--timeout-s 20]
 *
 * Sends POST /PATH as Block1 blocks with the Block1 and Size1 options exactly
 * as given (libcoap's own block handling is off), one block per round trip,
 * and prints one line per answer: `block NUM CODE [Max-Age=S] [Size1=N] TEXT`.
 * It stops at the first answer that is not 2.31 Continue, or after --blocks K
 * blocks; then it leaves without a DTLS close_notify (a vanished client),
 * or with one when --close is given. --repeat-last sends the final block once
 * more, as a new exchange, after its answer (a client whose answer was lost). The body is N bytes of a fixed pattern,
 * or a file. Exit status: 0 when every request sent was answered, 1 when the
 * transport failed or timed out, 2 on bad arguments. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <coap3/coap.h>

#include "bench_coap.h"
#include "common.h"

typedef struct {
    int done, failed;
    int code; /* class*100 + detail */
    uint8_t token[8];
    size_t token_len;
    char text[256];
    long max_age, size1;
} exchange;

static exchange g_x;

static coap_response_t on_response(coap_session_t *session, const coap_pdu_t *sent,
                                   const coap_pdu_t *received, const coap_mid_t mid)
{
    (void)session;
    (void)sent;
    (void)mid;
    if (g_x.done || !bench_token_is(received, g_x.token, g_x.token_len))
        return COAP_RESPONSE_OK;
    g_x.code = bench_code(received);
    coap_opt_iterator_t it;
    coap_opt_t *o = coap_check_option(received, COAP_OPTION_MAXAGE, &it);
    g_x.max_age = o ? (long)coap_decode_var_bytes(coap_opt_value(o), coap_opt_length(o)) : -1;
    o = coap_check_option(received, COAP_OPTION_SIZE1, &it);
    g_x.size1 = o ? (long)coap_decode_var_bytes8(coap_opt_value(o), coap_opt_length(o)) : -1;
    size_t len = 0;
    const uint8_t *data = NULL;
    g_x.text[0] = '\0';
    if (coap_get_data(received, &len, &data)) {
        size_t n = len < sizeof g_x.text - 1 ? len : sizeof g_x.text - 1;
        for (size_t i = 0; i < n; i++)
            g_x.text[i] = data[i] >= 0x20 && data[i] < 0x7f ? (char)data[i] : '?';
        g_x.text[n] = '\0';
    }
    g_x.done = 1;
    return COAP_RESPONSE_OK;
}

static void on_nack(coap_session_t *session, const coap_pdu_t *sent, const coap_nack_reason_t reason,
                    const coap_mid_t mid)
{
    (void)session;
    (void)sent;
    (void)mid;
    if (reason != COAP_NACK_ICMP_ISSUE)
        g_x.failed = 1;
}

static int on_event(coap_session_t *session, const coap_event_t event)
{
    (void)session;
    if (event == COAP_EVENT_DTLS_ERROR || event == COAP_EVENT_DTLS_CLOSED ||
        event == COAP_EVENT_SESSION_FAILED)
        g_x.failed = 1;
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: bench-coap_block1 --server HOST:PORT --id DEVICE (--psk PSK | --insecure)\n"
                    "       [--size N | --file PATH] [--block 16..1024] [--size1 auto|none|N]\n"
                    "       [--blocks K] [--close] [--repeat-last] [--path update] [--timeout-s S]\n");
    return 2;
}

static int parse_u64(const char *s, unsigned long long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-')
        return 0;
    *out = v;
    return 1;
}

int main(int argc, char **argv)
{
    const char *server = NULL, *id = NULL, *psk = NULL, *file = NULL, *path = "update";
    const char *size1_arg = "auto";
    unsigned long long size = 4096, block = 1024, max_blocks = 0, timeout_s = 20;
    int insecure = 0, close_at_end = 0, repeat_last = 0, repeated = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--insecure")) { insecure = 1; continue; }
        if (!strcmp(a, "--close")) { close_at_end = 1; continue; }
        if (!strcmp(a, "--repeat-last")) { repeat_last = 1; continue; }
        if (!v)
            return usage();
        i++;
        if (!strcmp(a, "--server")) server = v;
        else if (!strcmp(a, "--id")) id = v;
        else if (!strcmp(a, "--psk")) psk = v;
        else if (!strcmp(a, "--file")) file = v;
        else if (!strcmp(a, "--path")) path = v;
        else if (!strcmp(a, "--size1")) size1_arg = v;
        else if (!strcmp(a, "--size") && parse_u64(v, &size)) continue;
        else if (!strcmp(a, "--block") && parse_u64(v, &block)) continue;
        else if (!strcmp(a, "--blocks") && parse_u64(v, &max_blocks)) continue;
        else if (!strcmp(a, "--timeout-s") && parse_u64(v, &timeout_s)) continue;
        else return usage();
    }
    unsigned szx = 0;
    while (szx < 6 && (16ull << szx) < block)
        szx++;
    if (!server || !id || (!psk && !insecure) || (16ull << szx) != block || timeout_s == 0)
        return usage();

    uint8_t *body = NULL;
    size_t body_len = 0;
    if (file) {
        FILE *f = fopen(file, "rb");
        long n = -1;
        if (f && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
            (body = malloc(n ? (size_t)n : 1)) != NULL && fread(body, 1, (size_t)n, f) == (size_t)n) {
            body_len = (size_t)n;
        } else {
            fprintf(stderr, "cannot read %s\n", file);
            return 2;
        }
        fclose(f);
    } else {
        if (size > (1ull << 32))
            return usage();
        body_len = (size_t)size;
        body = malloc(body_len ? body_len : 1);
        if (!body)
            return 2;
        for (size_t i = 0; i < body_len; i++)
            body[i] = (uint8_t)(i * 131 + (i >> 10));
    }
    int has_size1 = strcmp(size1_arg, "none") != 0;
    unsigned long long size1 = body_len;
    if (has_size1 && strcmp(size1_arg, "auto") != 0 && !parse_u64(size1_arg, &size1))
        return usage();

    coap_address_t dst;
    int rc = bench_resolve(server, &dst, NULL);
    if (rc == -1)
        return usage();
    if (rc != 0) {
        fprintf(stderr, "cannot resolve %s\n", server);
        return 2;
    }

    coap_context_t *ctx = bench_coap_context(0, on_response, on_nack); /* 0: blocks exactly as we build them */
    if (!ctx)
        return 1;
    coap_register_event_handler(ctx, on_event);
    coap_session_t *session;
    if (insecure) {
        session = coap_new_client_session(ctx, NULL, &dst, COAP_PROTO_UDP);
    } else {
        session = bench_psk_session(ctx, &dst, id, psk, strlen(psk));
    }
    if (!session)
        return 1;

    int status = 0;
    size_t nblocks = body_len ? (body_len + block - 1) / block : 1;
    for (size_t num = 0; num < nblocks && (!max_blocks || num < max_blocks); num++) {
        size_t off = num * block, len = body_len - off < block ? body_len - off : block;
        int more = off + len < body_len;
        coap_pdu_t *pdu = coap_new_pdu(COAP_MESSAGE_CON, COAP_REQUEST_CODE_POST, session);
        if (!pdu)
            return 1;
        memset(&g_x, 0, sizeof g_x);
        coap_session_new_token(session, &g_x.token_len, g_x.token);
        coap_add_token(pdu, g_x.token_len, g_x.token);
        uint8_t buf[8];
        coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(path), (const uint8_t *)path);
        if (insecure) {
            char q[80];
            int n = snprintf(q, sizeof q, "id=%s", id);
            coap_add_option(pdu, COAP_OPTION_URI_QUERY, (size_t)n, (const uint8_t *)q);
        }
        coap_add_option(pdu, COAP_OPTION_BLOCK1,
                        coap_encode_var_safe(buf, sizeof buf, (unsigned)(num << 4) | (unsigned)more << 3 | szx),
                        buf);
        if (has_size1)
            coap_add_option(pdu, COAP_OPTION_SIZE1, coap_encode_var_safe8(buf, sizeof buf, size1), buf);
        if (len)
            coap_add_data(pdu, len, body + off);
        if (coap_send(session, pdu) == COAP_INVALID_MID) {
            fprintf(stderr, "cannot send block %zu\n", num);
            return 1;
        }
        time_t end = time(NULL) + (time_t)timeout_s;
        while (!g_x.done && !g_x.failed && time(NULL) < end)
            coap_io_process(ctx, 100);
        if (!g_x.done) {
            printf("block %zu no answer (%s)\n", num, g_x.failed ? "transport failed" : "timeout");
            status = 1;
            break;
        }
        printf("block %zu %d.%02d", num, g_x.code / 100, g_x.code % 100);
        if (g_x.max_age >= 0)
            printf(" Max-Age=%ld", g_x.max_age);
        if (g_x.size1 >= 0)
            printf(" Size1=%ld", g_x.size1);
        printf(" %s\n", g_x.text);
        if (g_x.code != 231) {
            if (repeat_last && !repeated && num + 1 == nblocks) {
                repeated = 1;
                num--; /* the same block again */
                continue;
            }
            break;
        }
    }
    fflush(stdout);
    if (!close_at_end)
        _exit(status); /* vanish: no close_notify, the server is left to notice */
    coap_session_release(session);
    coap_io_process(ctx, COAP_IO_NO_WAIT);
    coap_free_context(ctx);
    coap_cleanup();
    free(body);
    return status;
}
