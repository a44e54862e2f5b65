/* bench-ingest_rate — how fast a running aggregator takes updates over real
 * DTLS or TLS/TCP, against the raw rate of opening them, measured in the
 * same run.
 *
 *   bench-ingest_rate --server HOST:PORT --keys KEYS_FILE [--n N] [--timeout-s S]
 *                     [--status 0|1] [--transport dtls|tcp] [--raw 0|1] [--tcp-mtu BYTES]
 *                     [--agg-pid PID]
 *
 * The first N devices of the keys file each open a DTLS-PSK session (--transport
 * tcp: CoAP over TLS-PSK/TCP, RFC 8323, to the aggregator's listen_tcp) and ask
 * GET /round (the handshakes are not timed); then every device POSTs one
 * pre-sealed int8 update of the round's model (Block1 of 1024 bytes over
 * DTLS, BERT blocks of 15 KiB over TCP: one TLS record each, as fedge-edge
 * sends them; --tcp-mtu 65536: 63 KiB messages of four records, which
 * libcoap 4.3.1 on mbedTLS wrote only with tools/deps' patch; libcoap's own
 * transfer) at the same instant. Prints:
 *   suite    the (D)TLS cipher suite of the first session;
 *   ingest   updates answered 2.04 per second, from the first POST to the
 *            last answer, and the reply latency p50/p99 (POST to answer);
 *   raw      on one thread of this process, with each crypto backend: the
 *            update's AEAD alone (fedge_envelope_open) and AEAD + decode
 *            (fedge_update_open, what an ingest worker runs), per second;
 *   ratio    ingest over raw AEAD+decode, for OpenSSL (the aggregator's
 *            envelope) and for mbedTLS;
 *   phase    the POST phase's start and end, monotonic seconds;
 *   daemon   with --agg-pid (the aggregator on this machine): its CPU over
 *            the POST phase alone (from just before the first POST to the
 *            last answer), per update: user and system from /proc/PID/stat
 *            (clock ticks), on-CPU time from /proc/PID/task/<TID>/schedstat summed over
 *            its threads (ns), minor page faults, and that against the raw AEAD+decode
 *            per-frame cost of this run: what the daemon spends apart from
 *            the driver that shares its cores;
 * and with --status 1 the aggregator's GET /status (its "ingest" part has the
 * per-update time breakdown). Lines start with a keyword for scripts.
 * Exit status 0 when every device got 2.04. The aggregator must have an open
 * round that selects the N devices (tools/bench/ingest_rate.sh sets it up). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <coap3/coap.h>
#include <mbedtls/ssl.h>

#include "bench_coap.h"
#include "common.h"
#include "crypto.h"
#include "delta.h"
#include "envelope.h"
#include "keys.h"
#include "model.h"
#include "round_info.h"
#include "update.h"

typedef struct {
    coap_session_t *session;
    char psk[FEDGE_PSK_LEN + 1];
    uint8_t token[8];
    size_t token_len;
    int phase;          /* 0: GET /round, 1: POST /update, 2: GET /status */
    double sent_at, first_sent_at, answered_at;
    double retry_at;    /* > 0: answered 5.03, send again then (Max-Age) */
    unsigned retries;
    int code;
    int failed;
    uint8_t *frame;
    size_t frame_len;
    char *body;         /* GET answers */
    size_t body_len;
} device;

static device *g_dev;
static size_t g_n, g_answered, g_failed, g_retries;
static FILE *g_answers;  /* --answers: "DEVICE CODE" per final POST answer, as it comes */
static const fedge_keys *g_keys;

static device *device_of(coap_session_t *s)
{
    size_t i = (size_t)(uintptr_t)coap_session_get_app_data(s);
    return i >= 1 && i <= g_n ? &g_dev[i - 1] : NULL;
}

static coap_response_t on_response(coap_session_t *session, const coap_pdu_t *sent, const coap_pdu_t *received,
                                   const coap_mid_t mid)
{
    (void)sent;
    (void)mid;
    device *d = device_of(session);
    if (!d || d->answered_at > 0 || !bench_token_is(received, d->token, d->token_len))
        return COAP_RESPONSE_OK;
    d->code = bench_code(received);
    if (d->code == 503 && d->phase == 1) {
        /* the aggregator is full: back off as told (Max-Age, RFC 7252 5.10.5) and send again */
        coap_opt_iterator_t it;
        coap_opt_t *ma = coap_check_option(received, COAP_OPTION_MAXAGE, &it);
        unsigned age = ma ? coap_decode_var_bytes(coap_opt_value(ma), coap_opt_length(ma)) : 1;
        d->retry_at = bench_now_s() + (age > 0 ? age : 1) * (0.5 + 0.5 * (double)rand() / RAND_MAX);
        d->retries++;
        g_retries++;
        return COAP_RESPONSE_OK;
    }
    size_t len = 0, off = 0, total = 0;
    const uint8_t *data = NULL;
    if (coap_get_data_large(received, &len, &data, &off, &total) && len) {
        free(d->body);
        d->body = malloc(len + 1);
        if (d->body) {
            memcpy(d->body, data, len);
            d->body[len] = '\0';
            d->body_len = len;
        }
    }
    d->answered_at = bench_now_s();
    g_answered++;
    if (g_answers && d->phase == 1) {
        fprintf(g_answers, "%s %d\n", g_keys->devices[d - g_dev].id, d->code);
        fflush(g_answers);
    }
    return COAP_RESPONSE_OK;
}

static void on_nack(coap_session_t *session, const coap_pdu_t *sent, const coap_nack_reason_t reason,
                    const coap_mid_t mid)
{
    (void)sent;
    (void)mid;
    device *d = device_of(session);
    if (d && !d->failed && d->answered_at == 0) {
        d->failed = 1;
        g_failed++;
        fprintf(stderr, "%s: no answer (libcoap nack reason %d)\n", g_keys->devices[d - g_dev].id, (int)reason);
    }
}

static int send_request(device *d, coap_pdu_code_t code, const char *path, const uint8_t *body, size_t len)
{
    coap_pdu_t *pdu = coap_new_pdu(COAP_MESSAGE_CON, code, d->session);
    if (!pdu)
        return FEDGE_ERR_NOMEM;
    coap_session_new_token(d->session, &d->token_len, d->token);
    coap_add_token(pdu, d->token_len, d->token);
    coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(path), (const uint8_t *)path);
    if (body && !coap_add_data_large_request(d->session, pdu, len, body, NULL, NULL))
        return FEDGE_ERR_NOMEM;
    d->answered_at = 0;
    d->code = 0;
    d->retry_at = 0;
    d->sent_at = bench_now_s();
    if (d->retries == 0)
        d->first_sent_at = d->sent_at;
    return coap_send(d->session, pdu) == COAP_INVALID_MID ? FEDGE_ERR_IO : FEDGE_OK;
}

static void run_until(coap_context_t *ctx, size_t want, double t0, long timeout_s)
{
    while (g_answered + g_failed < want && bench_now_s() - t0 < (double)timeout_s) {
        coap_io_process(ctx, 20);
        double now = bench_now_s();
        for (size_t i = 0; i < g_n; i++) {
            device *d = &g_dev[i];
            if (d->retry_at > 0 && now >= d->retry_at &&
                send_request(d, COAP_REQUEST_CODE_POST, "update", d->frame, d->frame_len) != FEDGE_OK)
                d->failed = 1, g_failed++;
        }
    }
}

/* Frames per second of fn over the frames, best of 3 passes of >= 0.3 s. */
typedef int (*open_fn)(const fedge_device_key *k, const uint8_t *frame, size_t len, const fedge_update_expect *exp,
                       uint8_t *scratch, float *delta);

static int open_aead(const fedge_device_key *k, const uint8_t *frame, size_t len, const fedge_update_expect *exp,
                     uint8_t *scratch, float *delta)
{
    size_t plain_len;
    fedge_envelope_view v;
    (void)delta;
    return fedge_envelope_open(k, exp->last_counter, frame, len, scratch, len, &plain_len, &v);
}

static int open_full(const fedge_device_key *k, const uint8_t *frame, size_t len, const fedge_update_expect *exp,
                     uint8_t *scratch, float *delta)
{
    fedge_delta_header h;
    uint64_t counter;
    return fedge_update_open(k, frame, len, exp, scratch, &h, &counter, delta);
}

static double rate_of(open_fn fn, const fedge_device_key *keys, size_t n, const fedge_update_expect *exp,
                      uint8_t *scratch, float *delta)
{
    double best = 0;
    for (int pass = 0; pass < 3; pass++) {
        size_t done = 0;
        double t0 = bench_now_s(), t;
        do {
            device *d = &g_dev[done % n];
            if (fn(&keys[done % n], d->frame, d->frame_len, exp, scratch, delta) != FEDGE_OK)
                return -1;
            done++;
        } while ((t = bench_now_s() - t0) < 0.3);
        if (done / t > best)
            best = done / t;
    }
    return best;
}

/* CPU of process pid so far: user and system (s, clock ticks) and on-CPU
 * time summed over its live threads (s, from schedstat); 0 on success. */
typedef struct {
    double user_s, sys_s, run_s, minflt;
} proc_cpu;

static int proc_cpu_read(long pid, proc_cpu *c)
{
    char path[64], buf[1024];
    memset(c, 0, sizeof *c);
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long mf = 0, ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %llu %*u %*u %*u %llu %llu", &mf, &ut, &st) != 3)
        return -1;
    c->minflt = (double)mf;
    double hz = (double)sysconf(_SC_CLK_TCK);
    c->user_s = (double)ut / hz;
    c->sys_s = (double)st / hz;
    snprintf(path, sizeof path, "/proc/%ld/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char tpath[300];
        snprintf(tpath, sizeof tpath, "/proc/%ld/task/%s/schedstat", pid, e->d_name);
        FILE *t = fopen(tpath, "r");
        unsigned long long ns = 0;
        if (t) {
            if (fscanf(t, "%llu", &ns) == 1)
                c->run_s += (double)ns * 1e-9;
            fclose(t);
        }
    }
    closedir(d);
    return 0;
}

int main(int argc, char **argv)
{
    const char *server = NULL, *keys_path = NULL;
    long n = 100, timeout_s = 120, want_status = 0, resend = 0, want_raw = 1, tcp_mtu = 16384;
    const char *answers_path = NULL, *transport = "dtls";
    long agg_pid = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--server")) server = argv[i + 1];
        else if (!strcmp(argv[i], "--keys")) keys_path = argv[i + 1];
        else if (!strcmp(argv[i], "--n")) n = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--timeout-s")) timeout_s = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--status")) want_status = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--resend")) resend = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--answers")) answers_path = argv[i + 1];
        else if (!strcmp(argv[i], "--transport")) transport = argv[i + 1];
        else if (!strcmp(argv[i], "--raw")) want_raw = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--tcp-mtu")) tcp_mtu = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--agg-pid")) agg_pid = atol(argv[i + 1]);
        else break;
    }
    int tcp = !strcmp(transport, "tcp");
    if (!server || !keys_path || n <= 0 || timeout_s <= 0 || argc % 2 == 0 || (!tcp && strcmp(transport, "dtls")) ||
        tcp_mtu < 1152 || tcp_mtu > 65536 + 1024) {
        fprintf(stderr, "usage: bench-ingest_rate --server HOST:PORT --keys KEYS_FILE [--n N] [--timeout-s S]"
                        " [--status 0|1] [--resend 0|1] [--answers FILE] [--transport dtls|tcp]"
                        " [--raw 0|1] [--tcp-mtu BYTES] [--agg-pid PID]\n");
        return 2;
    }
    fedge_keys keys;
    char err[256];
    if (fedge_keys_load(keys_path, &keys, err, sizeof err) != FEDGE_OK) {
        fprintf(stderr, "keys: %s\n", err);
        return 2;
    }
    g_keys = &keys;
    if (answers_path && !(g_answers = fopen(answers_path, "w"))) {
        perror(answers_path);
        return 2;
    }
    if ((size_t)n > keys.n) {
        fprintf(stderr, "the keys file has only %zu devices\n", keys.n);
        return 2;
    }
    bench_raise_nofile((rlim_t)n + 64);
    coap_address_t dst;
    if (bench_resolve(server, &dst, NULL) != 0)
        return 2;

    coap_context_t *ctx = bench_coap_context(COAP_BLOCK_USE_LIBCOAP | COAP_BLOCK_SINGLE_BODY, on_response, on_nack);
    if (!ctx)
        return 1;
    g_n = (size_t)n;
    g_dev = calloc(g_n, sizeof *g_dev);
    fedge_device_key *env = calloc(g_n, sizeof *env);
    if (!g_dev || !env)
        return 1;

    /* 1. sessions and GET /round (handshakes; not timed) */
    double t0 = bench_now_s();
    for (size_t i = 0; i < g_n; i++) {
        device *d = &g_dev[i];
        const fedge_device_entry *e = &keys.devices[i];
        if (fedge_keys_dtls_psk(e->secret, e->id, d->psk) != FEDGE_OK ||
            fedge_envelope_derive_key(e->secret, sizeof e->secret, e->id, &env[i]) != FEDGE_OK)
            return 1;
        d->session = bench_psk_session_proto(ctx, &dst, e->id, d->psk, FEDGE_PSK_LEN,
                                             tcp ? COAP_PROTO_TLS : COAP_PROTO_DTLS);
        if (!d->session) {
            fprintf(stderr, "cannot open session %zu (file descriptors?)\n", i);
            return 1;
        }
        coap_session_set_app_data(d->session, (void *)(uintptr_t)(i + 1));
        if (send_request(d, COAP_REQUEST_CODE_GET, "round", NULL, 0) != FEDGE_OK)
            return 1;
    }
    run_until(ctx, g_n, t0, timeout_s);
    fedge_round_info ri;
    if (g_failed || g_answered < g_n || !g_dev[0].body ||
        fedge_round_info_parse(g_dev[0].body, g_dev[0].body_len, &ri, err, sizeof err) != FEDGE_OK ||
        ri.state != FEDGE_ROUND_OPEN || !ri.has_model || !ri.has_run || !ri.has_spec) {
        fprintf(stderr, "GET /round: %zu of %zu answered, %zu failed; no open round to send to (%s)\n", g_answered,
                g_n, g_failed, g_dev[0].body ? g_dev[0].body : "no body");
        return 1;
    }
    size_t unselected = 0;
    for (size_t i = 0; i < g_n; i++)
        unselected += !g_dev[i].body || !strstr(g_dev[i].body, "selected=1");
    printf("setup    %zu %s sessions in %.2f s; round %u, %s; %zu not selected (sent anyway)\n", g_n,
           tcp ? "TLS/TCP" : "DTLS", bench_now_s() - t0, ri.round, ri.spec_text, unselected);
    coap_tls_library_t lib;
    const mbedtls_ssl_context *ssl = coap_session_get_tls(g_dev[0].session, &lib);
    if (ssl && lib == COAP_TLS_LIBRARY_MBEDTLS)
        printf("suite    %s (the first session's, as the server chose)\n", mbedtls_ssl_get_ciphersuite(ssl));

    /* 2. one sealed int8 update per device */
    size_t n_params = fedge_model_spec_param_count(&ri.spec);
    float *delta = malloc(n_params * sizeof *delta);
    if (!delta)
        return 1;
    for (size_t i = 0; i < g_n; i++) {
        for (size_t k = 0; k < n_params; k++)
            delta[k] = 0.001f * (float)((int)((k * 7 + i) % 41) - 20);
        fedge_delta_header h = {
            .encoding = FEDGE_ENC_INT8,
            .model_id = fedge_model_spec_id(&ri.spec),
            .round = ri.round,
            .n_samples = 100,
            .n_elems = (uint32_t)n_params,
            .block_size = FEDGE_DELTA_DEFAULT_BLOCK,
        };
        memcpy(h.base_version, ri.model, FEDGE_HASH_LEN);
        if (fedge_update_seal(&env[i], 1, ri.run_id, &h, delta, NULL, &g_dev[i].frame, &g_dev[i].frame_len) !=
            FEDGE_OK)
            return 1;
    }

    /* 3. the raw rate of stage (a), one thread, each backend */
    size_t probe = g_n < 64 ? g_n : 64;
    uint8_t *scratch = malloc(g_dev[0].frame_len);
    if (!scratch)
        return 1;
    fedge_update_expect exp = {.model_id = fedge_model_spec_id(&ri.spec), .n_elems = (uint32_t)n_params,
                               .round = ri.round, .run_id = ri.run_id};
    double raw[2][2];
    const char *backend[2] = {"mbedtls", "openssl"};
    for (int b = 0; b < 2; b++) {
        if (!want_raw || (b == 1 && fedge_crypto_use_openssl() != FEDGE_OK)) {
            raw[b][0] = raw[b][1] = 0;
            continue;
        }
        raw[b][0] = rate_of(open_aead, env, probe, &exp, scratch, delta);
        raw[b][1] = rate_of(open_full, env, probe, &exp, scratch, delta);
        printf("raw      %s: AEAD %.0f/s (%.2f GB/s), AEAD+decode %.0f/s, %.0f us decode, frame %zu B\n", backend[b],
               raw[b][0], raw[b][0] * (double)g_dev[0].frame_len / 1e9, raw[b][1],
               1e6 / raw[b][1] - 1e6 / raw[b][0], g_dev[0].frame_len);
    }
    fedge_crypto_backend_set(NULL);

    /* 4. every device POSTs at once; over TLS BERT blocks within --tcp-mtu
     * (default 16384: one record each, as fedge-edge sends) */
    g_answered = g_failed = 0;
    for (size_t i = 0; i < g_n; i++) {
        g_dev[i].phase = 1;
        if (tcp)
            coap_session_set_mtu(g_dev[i].session, (unsigned)tcp_mtu);
    }
    proc_cpu cpu0, cpu1;
    int have_cpu = agg_pid > 0 && proc_cpu_read(agg_pid, &cpu0) == 0;
    double t1 = bench_now_s();
    for (size_t i = 0; i < g_n; i++)
        if (send_request(&g_dev[i], COAP_REQUEST_CODE_POST, "update", g_dev[i].frame, g_dev[i].frame_len) !=
            FEDGE_OK)
            return 1;
    run_until(ctx, g_n, t1, timeout_s);
    have_cpu = have_cpu && proc_cpu_read(agg_pid, &cpu1) == 0;
    double last = t1, *lat = malloc(g_n * sizeof *lat);
    size_t ok = 0, k = 0, other = 0;
    if (!lat)
        return 1;
    for (size_t i = 0; i < g_n; i++) {
        device *d = &g_dev[i];
        if (d->answered_at <= 0)
            continue;
        lat[k++] = d->answered_at - d->first_sent_at;
        if (d->answered_at > last)
            last = d->answered_at;
        if (d->code == 204)
            ok++;
        else
            other++;
    }
    qsort(lat, k, sizeof *lat, bench_cmp_double);
    double rate = last > t1 ? (double)ok / (last - t1) : 0;
    printf("ingest   %zu of %zu answered 2.04 (%zu other, %zu failed, %zu 5.03 retried) in %.2f s: %.1f updates/s\n",
           ok, g_n, other, g_failed, g_retries, last - t1, rate);
    if (k)
        printf("latency  p50 %.1f ms  p99 %.1f ms  max %.1f ms\n", 1e3 * lat[k / 2],
               1e3 * lat[(size_t)((double)(k - 1) * 0.99)], 1e3 * lat[k - 1]);
    if (raw[1][1] > 0)
        printf("ratio    ingest / raw AEAD+decode (openssl, 1 thread) = %.3f\n", rate / raw[1][1]);
    if (raw[0][1] > 0)
        printf("ratio    ingest / raw AEAD+decode (mbedtls, 1 thread) = %.3f\n", rate / raw[0][1]);
    printf("phase    POST %.6f,%.6f (CLOCK_MONOTONIC s: perf report --time, with perf record -k mono)\n", t1, last);
    if (have_cpu && ok > 0) {
        double u = 1e6 / (double)ok, run = (cpu1.run_s - cpu0.run_s) * u;
        printf("daemon   POST phase: user %.0f us + system %.0f us per update (ticks); on-CPU %.0f us per update"
               " (schedstat, %zu updates), %.1f page faults per update", (cpu1.user_s - cpu0.user_s) * u,
               (cpu1.sys_s - cpu0.sys_s) * u, run, ok, (cpu1.minflt - cpu0.minflt) / (double)ok);
        if (raw[1][1] > 0)
            printf("; raw openssl AEAD+decode %.0f us per frame: daemon / raw = %.1f", 1e6 / raw[1][1],
                   run * raw[1][1] / 1e6);
        printf("\n");
    }

    /* every device sends the same frame again: a resend of a decided
     * update is answered from the log ("duplicate"), not counted again */
    if (resend) {
        size_t dup = 0;
        g_answered = g_failed = 0;
        double t3 = bench_now_s();
        for (size_t i = 0; i < g_n; i++)
            if (send_request(&g_dev[i], COAP_REQUEST_CODE_POST, "update", g_dev[i].frame, g_dev[i].frame_len) !=
                FEDGE_OK)
                return 1;
        run_until(ctx, g_n, t3, timeout_s);
        for (size_t i = 0; i < g_n; i++)
            dup += g_dev[i].code == 204 && g_dev[i].body && strstr(g_dev[i].body, "duplicate");
        printf("resend   %zu of %zu answered 2.04 as duplicates\n", dup, g_n);
        if (dup != g_n)
            ok = 0;
    }

    /* 5. the aggregator's own breakdown */
    if (want_status) {
        device *d = &g_dev[0];
        g_answered = g_failed = 0;
        d->phase = 2;
        double t2 = bench_now_s();
        if (send_request(d, COAP_REQUEST_CODE_GET, "status", NULL, 0) == FEDGE_OK) {
            run_until(ctx, 1, t2, 10);
            if (d->body && d->code == 205)
                printf("status   %s\n", d->body);
        }
    }
    int status = ok == g_n ? 0 : 1;
    free(lat);
    free(scratch);
    free(delta);
    coap_free_context(ctx);
    coap_cleanup();
    for (size_t i = 0; i < g_n; i++) {
        free(g_dev[i].frame);
        free(g_dev[i].body);
    }
    free(g_dev);
    free(env);
    fedge_keys_free(&keys);
    if (g_answers)
        fclose(g_answers);
    return status;
}
