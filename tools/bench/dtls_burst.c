/* bench-dtls_burst — N devices reconnect at once, as after an aggregator
 * restart: N DTLS-PSK sessions (one UDP socket each) start their handshakes
 * in the same instant and each asks GET /round once.
 *
 *   bench-dtls_burst --server HOST:PORT --keys KEYS_FILE [--n N] [--timeout-s S]
 *                    [--pause-pid PID]
 *
 * The first N devices of the keys file are used. With --pause-pid the server
 * process is stopped (SIGSTOP) while the sessions start and continued
 * (SIGCONT) once every first datagram is sent, as when devices come back
 * while the server is still starting: the datagrams wait in (or overflow)
 * the socket's receive buffer. Prints how many were
 * answered, the time to the first, median and last answer, and the kernel's
 * receive drop counter of the server's UDP socket (from /proc/net/udp and
 * /proc/net/udp6, when the server runs on this host): the datagrams lost
 * because the socket's receive buffer was full. Exit status 0 when every
 * device was answered in time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>

#include <coap3/coap.h>

#include "bench_coap.h"
#include "common.h"
#include "keys.h"

typedef struct {
    coap_session_t *session;
    char psk[FEDGE_PSK_LEN + 1];
    uint8_t token[8];
    size_t token_len;
    double answered_at; /* 0: not yet */
    int code;
    int failed;
} device;

static device *g_dev;
static size_t g_n, g_answered, g_failed;
static size_t g_nack[8]; /* by coap_nack_reason_t */

static device *device_of(coap_session_t *s)
{
    size_t i = (size_t)(uintptr_t)coap_session_get_app_data(s);
    return i >= 1 && i <= g_n ? &g_dev[i - 1] : NULL;
}

static coap_response_t on_response(coap_session_t *session, const coap_pdu_t *sent,
                                   const coap_pdu_t *received, const coap_mid_t mid)
{
    (void)sent;
    (void)mid;
    device *d = device_of(session);
    if (!d || d->answered_at > 0 || !bench_token_is(received, d->token, d->token_len))
        return COAP_RESPONSE_OK;
    d->code = bench_code(received);
    d->answered_at = bench_now_s();
    g_answered++;
    return COAP_RESPONSE_OK;
}

static void on_nack(coap_session_t *session, const coap_pdu_t *sent, const coap_nack_reason_t reason,
                    const coap_mid_t mid)
{
    (void)sent;
    (void)mid;
    device *d = device_of(session);
    if (d && !d->failed && d->answered_at == 0 && reason != COAP_NACK_ICMP_ISSUE) {
        d->failed = 1;
        if ((unsigned)reason < FEDGE_ARRAY_LEN(g_nack))
            g_nack[reason]++;
        g_failed++;
    }
}

/* Sum of the drops column of every UDP socket bound to port (hex match). */
static long long kernel_drops(unsigned port)
{
    long long sum = -1;
    const char *files[] = {"/proc/net/udp", "/proc/net/udp6"};
    for (size_t f = 0; f < 2; f++) {
        FILE *fp = fopen(files[f], "r");
        if (!fp)
            continue;
        char line[512];
        while (fgets(line, sizeof line, fp)) {
            char local[80];
            if (sscanf(line, " %*d: %79s", local) != 1)
                continue;
            char *colon = strrchr(local, ':');
            if (!colon || strtoul(colon + 1, NULL, 16) != port)
                continue;
            /* fields: sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops */
            char *tok[16], *save = NULL;
            size_t nt = 0;
            for (char *t = strtok_r(line, " \t\n", &save); t && nt < 16; t = strtok_r(NULL, " \t\n", &save))
                tok[nt++] = t;
            if (nt >= 13) {
                if (sum < 0)
                    sum = 0;
                sum += atoll(tok[12]);
            }
        }
        fclose(fp);
    }
    return sum;
}

int main(int argc, char **argv)
{
    const char *server = NULL, *keys_path = NULL;
    long n = 1000, timeout_s = 120, pause_pid = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--server")) server = argv[i + 1];
        else if (!strcmp(argv[i], "--keys")) keys_path = argv[i + 1];
        else if (!strcmp(argv[i], "--n")) n = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--timeout-s")) timeout_s = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--pause-pid")) pause_pid = atol(argv[i + 1]);
        else break;
    }
    if (!server || !keys_path || n <= 0 || timeout_s <= 0 || argc % 2 == 0) {
        fprintf(stderr, "usage: bench-dtls_burst --server HOST:PORT --keys KEYS_FILE [--n N] [--timeout-s S] [--pause-pid PID]\n");
        return 2;
    }
    fedge_keys keys;
    char err[256];
    if (fedge_keys_load(keys_path, &keys, err, sizeof err) != FEDGE_OK) {
        fprintf(stderr, "keys: %s\n", err);
        return 2;
    }
    if ((size_t)n > keys.n) {
        fprintf(stderr, "the keys file has only %zu devices\n", keys.n);
        return 2;
    }
    bench_raise_nofile((rlim_t)n + 64);

    coap_address_t dst;
    unsigned port;
    if (bench_resolve(server, &dst, &port) != 0)
        return 2;

    coap_context_t *ctx = bench_coap_context(COAP_BLOCK_USE_LIBCOAP | COAP_BLOCK_SINGLE_BODY, on_response, on_nack);
    if (!ctx)
        return 1;
    g_n = (size_t)n;
    g_dev = calloc(g_n, sizeof *g_dev);
    if (!g_dev)
        return 1;

    /* every session and its request first, then one event loop for all */
    long long drops0 = kernel_drops(port);
    if (pause_pid > 0 && kill((pid_t)pause_pid, SIGSTOP) != 0) {
        perror("SIGSTOP");
        return 2;
    }
    double t0 = bench_now_s();
    for (size_t i = 0; i < g_n; i++) {
        device *d = &g_dev[i];
        const fedge_device_entry *e = &keys.devices[i];
        if (fedge_keys_dtls_psk(e->secret, e->id, d->psk) != FEDGE_OK)
            return 1;
        d->session = bench_psk_session(ctx, &dst, e->id, d->psk, FEDGE_PSK_LEN);
        if (!d->session) {
            fprintf(stderr, "cannot open session %zu (file descriptors?)\n", i);
            return 1;
        }
        coap_session_set_app_data(d->session, (void *)(uintptr_t)(i + 1));
        coap_pdu_t *pdu = coap_new_pdu(COAP_MESSAGE_CON, COAP_REQUEST_CODE_GET, d->session);
        if (!pdu)
            return 1;
        coap_session_new_token(d->session, &d->token_len, d->token);
        coap_add_token(pdu, d->token_len, d->token);
        coap_add_option(pdu, COAP_OPTION_URI_PATH, 5, (const uint8_t *)"round");
        if (coap_send(d->session, pdu) == COAP_INVALID_MID)
            return 1;
    }
    if (pause_pid > 0)
        kill((pid_t)pause_pid, SIGCONT);
    while (g_answered + g_failed < g_n && bench_now_s() - t0 < (double)timeout_s)
        coap_io_process(ctx, 100);
    double t1 = bench_now_s();
    long long drops1 = kernel_drops(port);

    double *at = malloc(g_n * sizeof *at);
    size_t k = 0, ok = 0;
    for (size_t i = 0; i < g_n; i++) {
        if (g_dev[i].answered_at > 0) {
            at[k++] = g_dev[i].answered_at - t0;
            ok += g_dev[i].code == 205;
        }
    }
    qsort(at, k, sizeof *at, bench_cmp_double);
    printf("devices %zu  answered %zu (2.05: %zu)  failed %zu  in %.2f s\n", g_n, k, ok, g_failed, t1 - t0);
    if (g_failed)
        printf("failures: %zu no answer after all retransmissions, %zu DTLS failed, %zu other\n",
               g_nack[COAP_NACK_TOO_MANY_RETRIES], g_nack[COAP_NACK_TLS_FAILED],
               g_failed - g_nack[COAP_NACK_TOO_MANY_RETRIES] - g_nack[COAP_NACK_TLS_FAILED]);
    if (k)
        printf("answer times: first %.3f s  median %.3f s  last %.3f s\n", at[0], at[k / 2], at[k - 1]);
    if (drops0 >= 0 && drops1 >= 0)
        printf("server socket receive drops during the burst: %lld\n", drops1 - drops0);
    else
        printf("server socket receive drops: not visible from here\n");
    free(at);
    coap_free_context(ctx);
    coap_cleanup();
    fedge_keys_free(&keys);
    free(g_dev);
    return k == g_n ? 0 : 1;
}
