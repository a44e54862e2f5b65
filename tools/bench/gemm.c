/* bench-gemm — single-core GEMM rate against this core's FMA peak, measured in
 * the same run.
 *
 *   bench-gemm [seconds per case, default 1]
 *
 * Peak: a register-resident loop of independent fused multiply-adds (no loads,
 * no stores), AVX-512 and AVX2+FMA each when the CPU has them (chosen at run
 * time); the faster is the peak. Then fedge_sgemm (the BLAS of this build, see
 * blas.h) and the portable kernel (fedge_sgemm_portable) on square 512^3,
 * 1024^3 and 2048^3 problems and on the GEMMs of one mlp:784-200-10 training
 * step at batch 32 and 256 (forward x W^T, weight gradient dZ^T X, input
 * gradient dZ W) and of the CNN's convolutions (im2col form) and hidden
 * dense layer at batch 32, the convolutions also in the transposed im2col
 * layout ("T": one row per output pixel) for comparison. One BLAS thread; rates per second of this thread's CPU time.
 * FLOPs = 2 M N K. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blas.h"
#include "common.h"
#include "model.h"
#include "rng.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double wall_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static volatile float sink;

#if defined(__x86_64__)
/* 16 independent chains acc = acc * a + b: enough in flight to cover the FMA
 * latency on every current core with two FMA pipes. */
#define FMA_CHAINS_512 16
__attribute__((target("avx512f"))) static double fma_flops_avx512(long iters)
{
    __m512 acc[FMA_CHAINS_512];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
    for (int j = 0; j < FMA_CHAINS_512; j++)
        acc[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 16
        for (int j = 0; j < FMA_CHAINS_512; j++)
            acc[j] = _mm512_fmadd_ps(acc[j], a, b);
    }
    __m512 s = acc[0];
    for (int j = 1; j < FMA_CHAINS_512; j++)
        s = _mm512_add_ps(s, acc[j]);
    sink = _mm512_reduce_add_ps(s);
    return (double)iters * FMA_CHAINS_512 * 16 * 2;
}

#define FMA_CHAINS_256 12 /* of the 16 ymm registers, with a and b */
__attribute__((target("avx2,fma"))) static double fma_flops_avx2(long iters)
{
    __m256 acc[FMA_CHAINS_256];
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f);
    for (int j = 0; j < FMA_CHAINS_256; j++)
        acc[j] = _mm256_set1_ps((float)j);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < FMA_CHAINS_256; j++)
            acc[j] = _mm256_fmadd_ps(acc[j], a, b);
    }
    __m256 s = acc[0];
    for (int j = 1; j < FMA_CHAINS_256; j++)
        s = _mm256_add_ps(s, acc[j]);
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    sink = lanes[0] + lanes[7];
    return (double)iters * FMA_CHAINS_256 * 8 * 2;
}

/* GFLOP/s of fn(iters): the best of at least 5 timed runs over `seconds`. */
static double peak_rate(double (*fn)(long), double seconds)
{
    long iters = 1000;
    double best = 0.0;
    for (;;) { /* size one run */
        double t0 = cpu_now();
        fn(iters);
        double t = cpu_now() - t0;
        if (t > 0.02)
            break;
        iters *= 4;
    }
    double w0 = wall_now();
    for (int r = 0; r < 5 || wall_now() - w0 < seconds; r++) {
        double t0 = cpu_now();
        double flops = fn(iters);
        double rate = flops / (cpu_now() - t0) / 1e9;
        if (rate > best)
            best = rate;
        if (r > 50)
            break;
    }
    return best;
}

#endif /* __x86_64__ */

typedef struct {
    const char *name;
    int ta, tb, M, N, K;
} shape;

typedef void (*gemm_fn)(int, int, int, int, int, float, const float *, int, const float *, int,
                        float, float *, int);

/* GFLOP/s of one shape: calls repeated for at least `seconds` of wall time,
 * rated by CPU time; the best of the timed batches (a loaded machine only
 * makes a batch slower). */
static int gemm_rate(gemm_fn fn, const shape *s, double seconds, double *gflops)
{
    int ret = FEDGE_OK;
    size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N, nc = (size_t)s->M * s->N;
    float *A = malloc(na * sizeof(float)), *B = malloc(nb * sizeof(float)),
          *C = malloc(nc * sizeof(float));
    if (A == NULL || B == NULL || C == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    fedge_rng r;
    fedge_rng_seed(&r, 11);
    for (size_t i = 0; i < na; i++)
        A[i] = fedge_rng_uniform(&r) - 0.5f;
    for (size_t i = 0; i < nb; i++)
        B[i] = fedge_rng_uniform(&r) - 0.5f;
    int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
    fn(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N); /* warm-up */
    double flop = 2.0 * s->M * (double)s->N * s->K;
    long per_batch = (long)(2e8 / flop) + 1; /* ~0.2 GFLOP per timed batch */
    double best = 0.0, w0 = wall_now();
    do {
        double t0 = cpu_now();
        for (long i = 0; i < per_batch; i++)
            fn(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N);
        double rate = flop * (double)per_batch / (cpu_now() - t0) / 1e9;
        if (rate > best)
            best = rate;
    } while (wall_now() - w0 < seconds);
    sink = C[nc / 2];
    *gflops = best;
cleanup:
    free(A);
    free(B);
    free(C);
    return ret;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    if (!(seconds > 0.0) || seconds > 600.0) {
        fprintf(stderr, "usage: bench-gemm [seconds per case, 0..600]\n");
        return 2;
    }
    if (fedge_blas_set_threads(1) != FEDGE_OK)
        return 1;
    printf("bench-gemm: one thread, %.1f s per case\n", seconds);
    printf("fedge_sgemm: %s: %s\n", fedge_blas_name(), fedge_blas_config());

    double peak = 0.0;
    const char *peak_isa = "none";
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        double r = peak_rate(fma_flops_avx2, seconds);
        printf("FMA peak, AVX2+FMA (12 x 8-lane chains):    %8.2f GFLOP/s\n", r);
        if (r > peak) {
            peak = r;
            peak_isa = "AVX2+FMA";
        }
    }
    if (__builtin_cpu_supports("avx512f")) {
        double r = peak_rate(fma_flops_avx512, seconds);
        printf("FMA peak, AVX-512F (16 x 16-lane chains):   %8.2f GFLOP/s\n", r);
        if (r > peak) {
            peak = r;
            peak_isa = "AVX-512F";
        }
    }
#endif
    if (peak > 0.0)
        printf("peak = %.2f GFLOP/s (%s)\n", peak, peak_isa);
    else
        printf("peak: no FMA loop for this ISA; %% of peak not printed\n");

    static const shape shapes[] = {
        {"square 512^3", 0, 0, 512, 512, 512},
        {"square 1024^3", 0, 0, 1024, 1024, 1024},
        {"square 2048^3", 0, 0, 2048, 2048, 2048},
        {"mlp b32 fwd1 X W1^T", 0, 1, 32, 200, 784},
        {"mlp b32 gW1 dZ1^T X", 1, 0, 200, 784, 32},
        {"mlp b32 fwd2 H W2^T", 0, 1, 32, 10, 200},
        {"mlp b32 gW2 dZ2^T H", 1, 0, 10, 200, 32},
        {"mlp b32 dH dZ2 W2", 0, 0, 32, 200, 10},
        {"mlp b256 fwd1 X W1^T", 0, 1, 256, 200, 784},
        {"mlp b256 gW1 dZ1^T X", 1, 0, 200, 784, 256},
        {"mlp b256 fwd2 H W2^T", 0, 1, 256, 10, 200},
        {"mlp b256 gW2 dZ2^T H", 1, 0, 10, 200, 256},
        {"mlp b256 dH dZ2 W2", 0, 0, 256, 200, 10},
        /* cnn:1x28x28-c32k5-p2-c64k5-p2-f512-10 at batch 32, im2col form
         * (shared/model.c): conv as W[out x C*k*k] x col[C*k*k x B*OH*OW] */
        {"cnn b32 conv1 fwd", 0, 0, 32, 18432, 25},
        {"cnn b32 conv1 gW", 0, 1, 32, 25, 18432},
        {"cnn b32 conv2 fwd", 0, 0, 64, 2048, 800},
        {"cnn b32 conv2 gW", 0, 1, 64, 800, 2048},
        {"cnn b32 conv2 gcol", 1, 0, 800, 2048, 64},
        {"cnn b32 f512 fwd", 0, 1, 32, 512, 1024},
        {"cnn b32 f512 gW", 1, 0, 512, 1024, 32},
        {"cnn b32 f512 gin", 0, 0, 32, 1024, 512},
        /* the same products with the im2col matrix transposed (one row per
         * output pixel, [B*OH*OW x C*k*k]) and the output per pixel */
        {"cnn b32 conv1 fwd T", 0, 1, 18432, 32, 25},
        {"cnn b32 conv1 gW T", 1, 0, 25, 32, 18432},
        {"cnn b32 conv2 fwd T", 0, 1, 2048, 64, 800},
        {"cnn b32 conv2 gW T", 1, 0, 800, 64, 2048},
        {"cnn b32 conv2 gcol T", 0, 0, 2048, 800, 64},
    };
    printf("\n%-22s %-16s %12s %9s %12s %9s %8s\n", "shape", "M x N x K", fedge_blas_name(),
           "of peak", "portable", "of peak", "ratio");
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(shapes); i++) {
        const shape *s = &shapes[i];
        double blas = 0.0, port = 0.0;
        if (gemm_rate(fedge_sgemm, s, seconds, &blas) != FEDGE_OK ||
            gemm_rate(fedge_sgemm_portable, s, seconds, &port) != FEDGE_OK) {
            fprintf(stderr, "bench-gemm: out of memory\n");
            return 1;
        }
        char dims[32];
        snprintf(dims, sizeof dims, "%dx%dx%d", s->M, s->N, s->K);
        if (peak > 0.0)
            printf("%-22s %-16s %12.2f %8.1f%% %12.2f %8.1f%% %7.2fx\n", s->name, dims, blas,
                   100.0 * blas / peak, port, 100.0 * port / peak, blas / port);
        else
            printf("%-22s %-16s %12.2f %9s %12.2f %9s %7.2fx\n", s->name, dims, blas, "-", port,
                   "-", blas / port);
    }
    printf("(GFLOP/s; ratio = %s / portable)\n", fedge_blas_name());
    return 0;
}
