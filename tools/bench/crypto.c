/* bench-crypto — the two crypto backends (shared/crypto.h) on update-sized
 * inputs.
 *
 *   bench-crypto [--min-time S] [BYTES ...]   (default: 161622 636164, the
 *                                              sealed int8 and fp32 updates
 *                                              of mlp:784-200-10)
 *
 * For each size and backend: envelope seal (AES-256-GCM of BYTES with the
 * 44-byte header as AAD, fedge_envelope_seal), envelope open (parse + checks
 * + GCM, fedge_envelope_open) and SHA-256 (fedge_sha256), in GB/s of BYTES,
 * and OpenSSL's rate over mbedTLS's. Each figure is the best of several
 * timed batches of at least --min-time seconds together. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto.h"
#include "envelope.h"
#include "error.h"
#include "hash.h"

typedef struct {
    size_t n;
    uint8_t *plain, *frame, *out;
    size_t frame_len;
    fedge_device_key key;
    uint64_t counter;
} bench_ctx;

typedef int (*bench_fn)(bench_ctx *c);

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static volatile uint8_t sink;

static int op_seal(bench_ctx *c)
{
    static const uint8_t prefix[4] = {1, 2, 3, 4};
    size_t len;
    int ret = fedge_envelope_seal(&c->key, ++c->counter, prefix, NULL, 0, c->plain, c->n, c->frame,
                                  c->frame_len, &len);
    sink = c->frame[len - 1];
    return ret;
}

static int op_open(bench_ctx *c)
{
    size_t len;
    fedge_envelope_view v;
    int ret = fedge_envelope_open(&c->key, 0, c->frame, c->frame_len, c->out, c->n, &len, &v);
    sink = c->out[c->n / 2];
    return ret;
}

static int op_sha256(bench_ctx *c)
{
    uint8_t h[FEDGE_HASH_LEN];
    int ret = fedge_sha256(c->plain, c->n, h);
    sink = h[0];
    return ret;
}

/* Best GB/s over 5 batches, each long enough for min_time / 5. */
static int measure(bench_fn fn, bench_ctx *c, double min_time, double *gbps)
{
    double best = 0;
    for (int batch = 0; batch < 5; batch++) {
        long iters = 0;
        double t0 = now_s(), t;
        do {
            int ret = fn(c);
            if (ret != FEDGE_OK)
                return ret;
            iters++;
            t = now_s() - t0;
        } while (t < min_time / 5);
        double rate = (double)c->n * (double)iters / t / 1e9;
        if (rate > best)
            best = rate;
    }
    *gbps = best;
    return FEDGE_OK;
}

int main(int argc, char **argv)
{
    double min_time = 1.0;
    size_t sizes[16];
    int n_sizes = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--min-time") && i + 1 < argc) {
            min_time = atof(argv[++i]);
        } else if (n_sizes < 16 && atol(argv[i]) > 0) {
            sizes[n_sizes++] = (size_t)atol(argv[i]);
        } else {
            fprintf(stderr, "usage: bench-crypto [--min-time S] [BYTES ...]\n");
            return 2;
        }
    }
    if (n_sizes == 0) {
        sizes[n_sizes++] = 161622;
        sizes[n_sizes++] = 636164;
    }
    const fedge_crypto_backend *be[2] = {fedge_crypto_mbedtls(), fedge_crypto_openssl()};
    if (be[1] == NULL) {
        fprintf(stderr, "bench-crypto: OpenSSL lacks SHA-256 or AES-256-GCM\n");
        return 1;
    }
    static const struct {
        const char *name;
        bench_fn fn;
    } ops[] = {{"seal", op_seal}, {"open", op_open}, {"sha256", op_sha256}};
    static const uint8_t secret[] = "bench-crypto secret, 32 bytes..";
    printf("%-9s %-7s %14s %14s %8s\n", "bytes", "op", "mbedtls GB/s", "openssl GB/s", "ratio");
    int status = 0;
    for (int s = 0; s < n_sizes && status == 0; s++) {
        bench_ctx c = {.n = sizes[s]};
        c.frame_len = fedge_envelope_sealed_size(0, c.n);
        c.plain = malloc(c.n);
        c.out = malloc(c.n);
        c.frame = c.frame_len > 0 ? malloc(c.frame_len) : NULL;
        if (!c.plain || !c.out || !c.frame ||
            fedge_envelope_derive_key(secret, sizeof secret - 1, "bench", &c.key) != FEDGE_OK) {
            fprintf(stderr, "bench-crypto: set-up failed for %zu bytes\n", c.n);
            status = 1;
        }
        for (size_t i = 0; status == 0 && i < c.n; i++)
            c.plain[i] = (uint8_t)(i * 131 + 7);
        for (size_t o = 0; status == 0 && o < sizeof ops / sizeof ops[0]; o++) {
            double gbps[2];
            for (int b = 0; b < 2 && status == 0; b++) {
                fedge_crypto_backend_set(be[b]);
                if (op_seal(&c) != FEDGE_OK) /* a frame for open to read */
                    status = 1;
                else if (measure(ops[o].fn, &c, min_time, &gbps[b]) != FEDGE_OK)
                    status = 1;
            }
            if (status == 0)
                printf("%-9zu %-7s %14.3f %14.3f %7.1fx\n", c.n, ops[o].name, gbps[0], gbps[1],
                       gbps[1] / gbps[0]);
            else
                fprintf(stderr, "bench-crypto: %s failed at %zu bytes\n", ops[o].name, c.n);
        }
        fedge_device_key_wipe(&c.key);
        free(c.plain);
        free(c.out);
        free(c.frame);
    }
    fedge_crypto_backend_set(NULL);
    return status;
}
