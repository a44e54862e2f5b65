/* bench-codec — throughput of the delta codec and the sealed update.
 *
 *   bench-codec [--min-time S] [N ...]     (default N: 1048576 159010)
 *
 * For each encoding: encode, decode, seal (encode + AES-256-GCM, into a fresh
 * frame) and open (GCM + checks + decode) in GB/s of fp32 input, i.e. 4 N
 * bytes per call whatever the encoding, and the bytes on the wire against the
 * raw fp32 size. memcpy of the same 4 N bytes, measured in the same run, is
 * the baseline every rate is also given as a ratio of. Each figure is the
 * best of several timed batches of at least --min-time seconds together. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "delta.h"
#include "error.h"
#include "update.h"

typedef struct {
    uint32_t n;
    const float *x;
    float *y;
    uint8_t *buf;       /* encoded delta */
    size_t buf_len;
    uint8_t *frame;     /* sealed update */
    size_t frame_len;
    uint8_t *scratch;
    fedge_delta_header h;
    fedge_device_key key;
    fedge_rng rng;
    int stochastic;
    uint64_t counter;
    void *copy_dst;
} bench_ctx;

typedef int (*bench_fn)(bench_ctx *c);

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static volatile uint8_t sink;

static int op_memcpy(bench_ctx *c)
{
    memcpy(c->copy_dst, c->x, 4 * (size_t)c->n);
    sink = ((uint8_t *)c->copy_dst)[c->n / 2];
    return FEDGE_OK;
}

static int op_encode(bench_ctx *c)
{
    size_t len;
    return fedge_delta_encode(&c->h, c->x, c->stochastic ? &c->rng : NULL, c->buf, c->buf_len, &len);
}

static const uint8_t BENCH_RUN_ID[FEDGE_RUN_ID_LEN] = "bench run id 16";

static int op_decode(bench_ctx *c)
{
    fedge_delta_header h;
    return fedge_delta_decode(c->buf, c->buf_len, c->h.model_id, c->n, &h, c->y);
}

static int op_seal(bench_ctx *c)
{
    uint8_t *frame;
    size_t len;
    int ret = fedge_update_seal(&c->key, ++c->counter, BENCH_RUN_ID, &c->h, c->x, c->stochastic ? &c->rng : NULL,
                                &frame, &len);
    free(frame);
    return ret;
}

static int op_open(bench_ctx *c)
{
    fedge_update_expect e = {.model_id = c->h.model_id, .n_elems = c->n, .round = c->h.round,
                             .last_counter = 0, .max_len = c->frame_len,
                             .run_id = BENCH_RUN_ID};
    fedge_delta_header h;
    uint64_t counter;
    return fedge_update_open(&c->key, c->frame, c->frame_len, &e, c->scratch, &h, &counter, c->y);
}

/* Seconds per call: the best of 5 batches, each at least min_time / 5. */
static double time_op(bench_fn fn, bench_ctx *c, double min_time)
{
    double best = 1e30;
    if (fn(c) != FEDGE_OK) { /* warm-up, and a check that it works at all */
        fprintf(stderr, "bench-codec: operation failed\n");
        exit(1);
    }
    for (int batch = 0; batch < 5; batch++) {
        long reps = 0;
        double t0 = now_s(), t;
        do {
            fn(c);
            reps++;
            t = now_s();
        } while (t - t0 < min_time / 5);
        double per = (t - t0) / (double)reps;
        best = per < best ? per : best;
    }
    return best;
}

static void run_size(uint32_t n, double min_time)
{
    float *x = malloc(sizeof(float) * n);
    float *y = malloc(sizeof(float) * n);
    void *dst = malloc(sizeof(float) * n);
    if (!x || !y || !dst) {
        fprintf(stderr, "bench-codec: out of memory\n");
        exit(1);
    }
    fedge_rng r;
    fedge_rng_seed(&r, 1);
    for (uint32_t i = 0; i < n; i++)
        x[i] = (float)(fedge_rng_normal(&r) * 0.01);
    memset(y, 0, sizeof(float) * n);
    memset(dst, 0, sizeof(float) * n);

    bench_ctx c;
    memset(&c, 0, sizeof c);
    c.n = n;
    c.x = x;
    c.y = y;
    c.copy_dst = dst;
    const uint8_t secret[32] = "bench-codec secret, 32 bytes...";
    if (fedge_envelope_derive_key(secret, sizeof secret, "bench-device", &c.key) != FEDGE_OK)
        exit(1);

    double raw = 4.0 * n;
    double t_copy = time_op(op_memcpy, &c, min_time);
    double copy_gbs = raw / t_copy / 1e9;
    printf("n = %u elements (%.2f MiB fp32); memcpy baseline %.2f GB/s\n", n, raw / (1 << 20),
           copy_gbs);
    printf("  %-11s %12s %8s   %-15s %-15s %-15s %-15s\n", "encoding", "wire bytes", "wire/raw",
           "encode GB/s", "decode GB/s", "seal GB/s", "open GB/s");

    const char *names[] = {"fp32", "fp16", "bf16", "int8", "int8-stoch"};
    const fedge_encoding encs[] = {FEDGE_ENC_FP32, FEDGE_ENC_FP16, FEDGE_ENC_BF16, FEDGE_ENC_INT8,
                                   FEDGE_ENC_INT8};
    for (int e = 0; e < 5; e++) {
        memset(&c.h, 0, sizeof c.h);
        c.h.encoding = (uint8_t)encs[e];
        c.h.model_id = 0x600d;
        c.h.round = 1;
        c.h.n_samples = 100;
        c.h.n_elems = n;
        c.h.block_size = encs[e] == FEDGE_ENC_INT8 ? FEDGE_DELTA_DEFAULT_BLOCK : 0;
        c.stochastic = e == 4;
        fedge_rng_seed(&c.rng, 7);
        c.buf_len = fedge_delta_encoded_size(&c.h);
        c.buf = malloc(c.buf_len);
        if (c.buf == NULL || op_encode(&c) != FEDGE_OK)
            exit(1);
        if (fedge_update_seal(&c.key, 1, BENCH_RUN_ID, &c.h, x, c.stochastic ? &c.rng : NULL, &c.frame,
                              &c.frame_len) != FEDGE_OK)
            exit(1);
        c.scratch = malloc(c.frame_len);
        if (c.scratch == NULL)
            exit(1);

        double t[4];
        bench_fn fns[4] = {op_encode, op_decode, op_seal, op_open};
        for (int k = 0; k < 4; k++)
            t[k] = time_op(fns[k], &c, min_time);
        printf("  %-11s %12zu %8.3f", names[e], c.frame_len, (double)c.frame_len / raw);
        for (int k = 0; k < 4; k++) {
            double gbs = raw / t[k] / 1e9;
            printf("   %6.2f (%5.2fx)", gbs, gbs / copy_gbs);
        }
        printf("\n");
        free(c.buf);
        free(c.frame);
        free(c.scratch);
        c.buf = c.frame = c.scratch = NULL;
    }

    /* AES-256-GCM alone over the raw fp32 bytes, for reference. */
    size_t cap = fedge_envelope_sealed_size(0, 4 * (size_t)n);
    uint8_t *frame = malloc(cap);
    uint8_t prefix[4] = {0};
    size_t len;
    double t0 = now_s();
    long reps = 0;
    do {
        fedge_envelope_seal(&c.key, (uint64_t)reps + 1, prefix, NULL, 0, (const uint8_t *)x,
                            4 * (size_t)n, frame, cap, &len);
        reps++;
    } while (now_s() - t0 < min_time);
    double gcm = raw * (double)reps / (now_s() - t0) / 1e9;
    printf("  AES-256-GCM seal of the raw fp32 bytes: %.2f GB/s (%.2fx memcpy)\n\n", gcm,
           gcm / copy_gbs);
    free(frame);
    fedge_device_key_wipe(&c.key);
    free(x);
    free(y);
    free(dst);
}

int main(int argc, char **argv)
{
    double min_time = 0.5;
    uint32_t sizes[16];
    int n_sizes = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--min-time") == 0 && i + 1 < argc) {
            min_time = atof(argv[++i]);
        } else if (n_sizes < 16) {
            long v = atol(argv[i]);
            if (v <= 0 || v > (long)FEDGE_DELTA_MAX_ELEMS) {
                fprintf(stderr, "usage: bench-codec [--min-time S] [N ...]\n");
                return 2;
            }
            sizes[n_sizes++] = (uint32_t)v;
        }
    }
    if (n_sizes == 0) {
        sizes[n_sizes++] = 1u << 20;
        sizes[n_sizes++] = 159010; /* mlp:784-200-10 */
    }
    printf("bench-codec: GB/s of fp32 input (4 bytes per element), best of 5 batches, "
           "min time %.2f s per figure\n\n", min_time);
    for (int i = 0; i < n_sizes; i++)
        run_size(sizes[i], min_time);
    return 0;
}
