/* bench-ingest_floor — the least work one update costs the aggregator on this
 * machine, stage by stage, against the raw AEAD+decode rate (the
 * denominator of the cross-device issue's ingest goal), all in this run.
 *
 *   bench-ingest_floor [--dir DIR] [--n N] [--group G]   (default . 2000 32)
 *
 * One mlp:784-200-10 int8 update (161,638-byte frame), OpenSSL as the
 * daemon uses it; each stage on one thread, best of 3 passes, CPU time of
 * the measuring thread (CLOCK_THREAD_CPUTIME_ID) per update:
 *   raw      fedge_update_open (AEAD + decode): the reference;
 *   open     what an ingest worker does at least: fedge_update_open_inplace_norm
 *            (AEAD + the policy's norm on the encoding), the frame copy excluded;
 *   sha256   the SHA-256 of the stored body (the audit's delta_sha256);
 *   tls      the transport's record layer: AES-256-GCM open of the frame in
 *            16 KiB records (the suite the aggregator's TLS/DTLS negotiates);
 *   tcp      receiving the frame over loopback TCP from another process
 *            (read(2) into one reused buffer: no parsing, no page faults);
 *   durable  appending the frame to a file in DIR with write(2) and one
 *            fdatasync(2) per G updates (the group commit): thread CPU, and
 *            the wall time per update (the disk's share);
 * and the bounds they give: by CPU, 2 cores / (open + sha256 + tls + tcp +
 * durable CPU) updates/s; by the disk, 1 / durable wall; each over the raw
 * rate. No daemon reaches these: they leave out CoAP, SQLite, the audit
 * chain and the policy, and the driver that shares the cores. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "common.h"
#include "crypto.h"
#include "delta.h"
#include "envelope.h"
#include "model.h"
#include "update.h"

#define TLS_RECORD 16384

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    fedge_device_key key;
    fedge_update_expect exp;
    uint8_t run_id[FEDGE_RUN_ID_LEN];
    uint8_t *frame, *work, *scratch, *records;
    size_t frame_len, n_params, n_records;
    uint8_t tags[64][FEDGE_GCM_TAG_LEN];
    uint8_t tls_key[FEDGE_GCM_KEY_LEN];
    float *delta;
} floor_bench;

typedef int (*stage_fn)(floor_bench *b);

static int stage_copy(floor_bench *b)
{
    memcpy(b->work, b->frame, b->frame_len);
    return b->work[0] == b->frame[0] ? FEDGE_OK : FEDGE_ERR_INTERNAL;
}

static int stage_raw(floor_bench *b)
{
    fedge_delta_header h;
    uint64_t counter;
    return fedge_update_open(&b->key, b->frame, b->frame_len, &b->exp, b->scratch, &h, &counter, b->delta);
}

static int stage_open(floor_bench *b)
{
    fedge_delta_header h;
    uint64_t counter;
    double norm;
    size_t enc_off;
    fedge_train_metrics m;
    int ret;
    memcpy(b->work, b->frame, b->frame_len);
    CHK(fedge_update_open_inplace_norm(&b->key, b->work, b->frame_len, &b->exp, b->n_params, &enc_off, &h,
                                       &counter, &norm, &m));
cleanup:
    return ret;
}

static int stage_sha256(floor_bench *b)
{
    uint8_t digest[FEDGE_SHA256_LEN];
    return fedge_crypto_sha256(b->frame, b->frame_len - FEDGE_ENV_OVERHEAD, digest);
}

static int stage_tls(floor_bench *b)
{
    uint8_t iv[12] = {0};
    int ret = FEDGE_OK;
    for (size_t r = 0; r < b->n_records; r++) {
        size_t off = r * TLS_RECORD, len = b->frame_len - off < TLS_RECORD ? b->frame_len - off : TLS_RECORD;
        iv[11] = (uint8_t)r;
        CHK(fedge_gcm_open(b->tls_key, iv, sizeof iv, NULL, 0, b->records + off, len, b->tags[r], b->work + off));
    }
cleanup:
    return ret;
}

/* best of 3 passes of n calls: thread CPU seconds per call */
static double cpu_per_call(stage_fn fn, floor_bench *b, int n)
{
    double best = 1e9;
    for (int pass = 0; pass < 3; pass++) {
        double t0 = thread_cpu_s();
        for (int i = 0; i < n; i++)
            if (fn(b) != FEDGE_OK)
                return -1;
        double per = (thread_cpu_s() - t0) / n;
        if (per < best)
            best = per;
    }
    return best;
}

/* loopback TCP: a child writes n frames; this thread reads them. */
static double tcp_recv_cpu(floor_bench *b, int n)
{
    double per = -1;
    int ls = socket(AF_INET, SOCK_STREAM, 0), c = -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) != 0)
        goto done;
    pid_t pid = fork();
    if (pid == 0) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0)
            _exit(1);
        for (int i = 0; i < n; i++)
            for (size_t off = 0; off < b->frame_len;) {
                ssize_t w = write(s, b->frame + off, b->frame_len - off);
                if (w <= 0)
                    _exit(1);
                off += (size_t)w;
            }
        close(s);
        _exit(0);
    }
    if (pid < 0)
        goto done;
    c = accept(ls, NULL, NULL);
    if (c >= 0) {
        double t0 = thread_cpu_s();
        int ok = 1;
        for (int i = 0; i < n && ok; i++)
            for (size_t off = 0; off < b->frame_len && ok;) {
                ssize_t r = read(c, b->work + off, b->frame_len - off);
                ok = r > 0;
                off += ok ? (size_t)r : 0;
            }
        if (ok)
            per = (thread_cpu_s() - t0) / n;
    }
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        per = -1;
done:
    if (c >= 0)
        close(c);
    if (ls >= 0)
        close(ls);
    return per;
}

static int durable_write(floor_bench *b, const char *dir, int n, int group, double *cpu, double *wall)
{
    char path[4096];
    int ret = FEDGE_OK;
    if (snprintf(path, sizeof path, "%s/ingest_floor.%ld.seg", dir, (long)getpid()) >= (int)sizeof path)
        return FEDGE_ERR_INVALID_ARG;
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        return FEDGE_ERR_IO;
    double c0 = thread_cpu_s(), w0 = fedge_clock_mono();
    for (int i = 0; i < n; i++) {
        if (write(fd, b->frame, b->frame_len) != (ssize_t)b->frame_len)
            FAIL(FEDGE_ERR_IO);
        if ((i + 1) % group == 0 && fdatasync(fd) != 0)
            FAIL(FEDGE_ERR_IO);
    }
    if (fdatasync(fd) != 0)
        FAIL(FEDGE_ERR_IO);
    *cpu = (thread_cpu_s() - c0) / n;
    *wall = (fedge_clock_mono() - w0) / n;
cleanup:
    close(fd);
    unlink(path);
    return ret;
}

int main(int argc, char **argv)
{
    const char *dir = ".";
    int n = 2000, group = 32, ret = 1;
    floor_bench b = {0};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--dir"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--n"))
            n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--group"))
            group = atoi(argv[i + 1]);
        else
            argc = 0;
    }
    if (argc % 2 != 1 || n < 10 || n > 1000000 || group < 1) {
        fprintf(stderr, "usage: bench-ingest_floor [--dir DIR] [--n N (10..1e6)] [--group G]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (fedge_crypto_use_openssl() != FEDGE_OK) {
        fprintf(stderr, "ingest_floor: OpenSSL's AES-256-GCM is not available\n");
        return 1;
    }
    fedge_model_spec spec;
    uint8_t secret[32];
    for (size_t i = 0; i < sizeof secret; i++)
        secret[i] = (uint8_t)(i * 7 + 1);
    if (fedge_model_spec_parse("mlp:784-200-10", &spec) != FEDGE_OK ||
        fedge_envelope_derive_key(secret, sizeof secret, "dev-000", &b.key) != FEDGE_OK)
        return 1;
    b.n_params = fedge_model_spec_param_count(&spec);
    b.delta = malloc(b.n_params * sizeof *b.delta);
    if (!b.delta)
        goto out;
    for (size_t k = 0; k < b.n_params; k++)
        b.delta[k] = 0.001f * (float)((int)((k * 7) % 41) - 20);
    memset(b.run_id, 0x5a, sizeof b.run_id);
    fedge_delta_header h = {.encoding = FEDGE_ENC_INT8, .model_id = fedge_model_spec_id(&spec), .round = 1,
                            .n_samples = 100, .n_elems = (uint32_t)b.n_params,
                            .block_size = FEDGE_DELTA_DEFAULT_BLOCK};
    if (fedge_update_seal(&b.key, 1, b.run_id, &h, b.delta, NULL, &b.frame, &b.frame_len) != FEDGE_OK)
        goto out;
    b.exp = (fedge_update_expect){.model_id = h.model_id, .n_elems = h.n_elems, .round = 1, .run_id = b.run_id};
    b.n_records = (b.frame_len + TLS_RECORD - 1) / TLS_RECORD;
    b.work = malloc(b.frame_len);
    b.scratch = malloc(b.frame_len);
    b.records = malloc(b.frame_len);
    if (!b.work || !b.scratch || !b.records || b.n_records > 64)
        goto out;
    memset(b.tls_key, 0x33, sizeof b.tls_key);
    for (size_t r = 0; r < b.n_records; r++) {
        uint8_t iv[12] = {0};
        size_t off = r * TLS_RECORD, len = b.frame_len - off < TLS_RECORD ? b.frame_len - off : TLS_RECORD;
        iv[11] = (uint8_t)r;
        if (fedge_gcm_seal(b.tls_key, iv, sizeof iv, NULL, 0, b.frame + off, len, b.records + off, b.tags[r]) !=
            FEDGE_OK)
            goto out;
    }

    int calls = n < 500 ? n : 500;
    double raw = cpu_per_call(stage_raw, &b, calls);
    double copy = cpu_per_call(stage_copy, &b, calls);
    double open = cpu_per_call(stage_open, &b, calls);
    double sha = cpu_per_call(stage_sha256, &b, calls);
    double tls = cpu_per_call(stage_tls, &b, calls);
    double tcp = tcp_recv_cpu(&b, n);
    double dur_cpu = 0, dur_wall = 0;
    if (raw <= 0 || open <= 0 || sha <= 0 || tls <= 0 || tcp <= 0 ||
        durable_write(&b, dir, n, group, &dur_cpu, &dur_wall) != FEDGE_OK) {
        fprintf(stderr, "ingest_floor: a stage failed\n");
        goto out;
    }
    open -= copy;
    double floor_cpu = open + sha + tls + tcp + dur_cpu;
    double by_cpu = 2.0 / floor_cpu, by_disk = 1.0 / dur_wall, raw_rate = 1.0 / raw;
    double best = by_cpu < by_disk ? by_cpu : by_disk;
    printf("frame    %zu B (mlp:784-200-10 int8), OpenSSL, thread CPU per update, best of 3\n", b.frame_len);
    printf("raw      AEAD+decode        %7.1f us  (%.0f/s: the goal's reference)\n", raw * 1e6, raw_rate);
    printf("open     AEAD+norm          %7.1f us\n", open * 1e6);
    printf("sha256   delta_sha256       %7.1f us\n", sha * 1e6);
    printf("tls      record AEAD        %7.1f us  (%zu records of <= 16 KiB)\n", tls * 1e6, b.n_records);
    printf("tcp      loopback receive   %7.1f us\n", tcp * 1e6);
    printf("durable  write + fdatasync/%d %5.1f us CPU, %.1f us wall  (%s)\n", group, dur_cpu * 1e6,
           dur_wall * 1e6, dir);
    printf("floor    %.1f us CPU per update; bound by 2 cores %.0f/s = %.2f x raw; by the disk %.0f/s = %.2f x raw\n",
           floor_cpu * 1e6, by_cpu, by_cpu / raw_rate, by_disk, by_disk / raw_rate);
    printf("ratio    best possible ingest / raw AEAD+decode = %.2f (goal 0.50)\n", best / raw_rate);
    ret = 0;
out:
    free(b.frame);
    free(b.work);
    free(b.scratch);
    free(b.records);
    free(b.delta);
    fedge_device_key_wipe(&b.key);
    return ret;
}
