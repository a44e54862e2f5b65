/* test_blas.c — the BLAS switch behind fedge_sgemm (blas.h): fedge_sgemm and the
 * portable kernel both against a naive loop in the same binary (so a BLAS=openblas
 * build checks both paths), the degenerate shapes a BLAS would reject, the
 * thread-count controls, and the vectorised SGD update against the scalar rule. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "common.h"
#include "model.h"
#include "optim.h"
#include "rng.h"

typedef void (*gemm_fn)(int, int, int, int, int, float, const float *, int, const float *, int,
                        float, float *, int);

static void naive_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, double *C, int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += a * b;
            }
            double c0 = beta == 0.0f ? 0.0 : beta * C[(size_t)i * ldc + j];
            C[(size_t)i * ldc + j] = alpha * acc + c0;
        }
}

/* lda/ldb/ldc = the tight leading dimension + pad, with no max(1, .) floor:
 * K == 0 and pad 0 give a transposed B the ldb 0 that a BLAS rejects. */
static void check_gemm(gemm_fn gemm, const char *name, int ta, int tb, int M, int N, int K,
                       float alpha, float beta, int pad, fedge_rng *rng)
{
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb,
           nc = (size_t)M * ldc;
    float *A = malloc(sizeof(float) * (na ? na : 1));
    float *B = malloc(sizeof(float) * (nb ? nb : 1));
    float *C = malloc(sizeof(float) * (nc ? nc : 1));
    double *R = malloc(sizeof(double) * (nc ? nc : 1));
    assert_true(A && B && C && R);
    for (size_t i = 0; i < na; i++)
        A[i] = (float)fedge_rng_normal(rng);
    for (size_t i = 0; i < nb; i++)
        B[i] = (float)fedge_rng_normal(rng);
    for (size_t i = 0; i < nc; i++) {
        C[i] = beta == 0.0f ? NAN : (float)fedge_rng_normal(rng); /* beta 0 must not read C */
        R[i] = C[i];
    }
    gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    naive_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, R, ldc);
    double tol = 1e-5 * (K + 4);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < ldc; j++) {
            size_t at = (size_t)i * ldc + j;
            if (j >= N) {
                if (!(isnan(C[at]) && isnan(R[at])) && C[at] != (float)R[at])
                    fail_msg("%s wrote padding at %d,%d", name, i, j);
                continue;
            }
            if (!(fabs(C[at] - R[at]) <= tol))
                fail_msg("%s %d%d %dx%dx%d a=%g b=%g: C[%d][%d] = %.7g, want %.7g", name, ta, tb,
                         M, N, K, alpha, beta, i, j, C[at], R[at]);
        }
    free(A);
    free(B);
    free(C);
    free(R);
}

static void check_all_shapes(gemm_fn gemm, const char *name)
{
    static const int shapes[][3] = {
        {1, 1, 1},    {1, 7, 1},     {3, 5, 7},      {4, 8, 16},     {5, 9, 17},
        {17, 13, 29}, {64, 64, 64},  {32, 200, 784}, {256, 10, 200}, {200, 784, 32},
        {10, 200, 32},  {32, 10, 200}, {256, 200, 10}, {129, 67, 300}, {5, 600, 3},
        {2, 1030, 11},  {131, 517, 513},
    };
    fedge_rng rng;
    fedge_rng_seed(&rng, 91);
    for (size_t s = 0; s < FEDGE_ARRAY_LEN(shapes); s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                check_gemm(gemm, name, ta, tb, M, N, K, 1.0f, 0.0f, 0, &rng);
                check_gemm(gemm, name, ta, tb, M, N, K, 0.7f, 0.3f, 3, &rng);
                check_gemm(gemm, name, ta, tb, M, N, K, -1.5f, 1.0f, 1, &rng);
            }
}

/* Must run first: no count was set yet, so the first fedge_sgemm picks one
 * thread (OpenBLAS alone would start with one per core). */
static void test_blas_default_single_thread(void **state)
{
    (void)state;
    unsetenv("FEDGE_BLAS_THREADS");
    float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8}, c[4];
    fedge_sgemm(0, 0, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
    assert_true(c[0] == 19.0f && c[1] == 22.0f && c[2] == 43.0f && c[3] == 50.0f);
    assert_int_equal(fedge_blas_threads(), 1);
}

static void test_sgemm_vs_naive(void **state)
{
    (void)state;
    check_all_shapes(fedge_sgemm, fedge_blas_name());
}

static void test_portable_vs_naive(void **state)
{
    (void)state;
    check_all_shapes(fedge_sgemm_portable, "portable");
}

/* K == 0 with a transposed B has ldb 0, below the ld >= 1 the CBLAS interface
 * asks for; alpha == 0 must still scale C by beta, and beta == 0 must overwrite
 * a NaN in C. fedge_sgemm answers these itself, without the BLAS. */
static void test_sgemm_degenerate(void **state)
{
    (void)state;
    fedge_rng rng;
    fedge_rng_seed(&rng, 5);
    gemm_fn fns[] = {fedge_sgemm, fedge_sgemm_portable};
    for (size_t f = 0; f < FEDGE_ARRAY_LEN(fns); f++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                check_gemm(fns[f], "degenerate", ta, tb, 6, 5, 0, 1.0f, 2.0f, 0, &rng);
                check_gemm(fns[f], "degenerate", ta, tb, 6, 5, 0, 1.0f, 0.0f, 0, &rng);
                check_gemm(fns[f], "degenerate", ta, tb, 6, 5, 4, 0.0f, 0.5f, 1, &rng);
                check_gemm(fns[f], "degenerate", ta, tb, 6, 5, 4, 0.0f, 0.0f, 0, &rng);
            }
    /* M or N zero: nothing is read or written */
    float c = 42.0f;
    fedge_sgemm(0, 0, 0, 1, 1, 1.0f, NULL, 1, NULL, 1, 0.0f, &c, 1);
    fedge_sgemm(0, 0, 1, 0, 1, 1.0f, NULL, 1, NULL, 1, 0.0f, &c, 1);
    assert_true(c == 42.0f);
}

static void test_blas_threads(void **state)
{
    (void)state;
    assert_true(strcmp(fedge_blas_name(), "openblas") == 0 ||
                strcmp(fedge_blas_name(), "portable") == 0);
#if FEDGE_BLAS_OPENBLAS
    assert_string_equal(fedge_blas_name(), "openblas");
    assert_non_null(strstr(fedge_blas_config(), "OpenBLAS"));
#else
    assert_string_equal(fedge_blas_name(), "portable");
#endif
    assert_int_equal(fedge_blas_set_threads(2), FEDGE_OK);
    assert_int_equal(fedge_blas_threads(), 2);
    assert_int_equal(fedge_blas_set_threads(1), FEDGE_OK);
    assert_int_equal(fedge_blas_threads(), 1);
    assert_int_equal(fedge_blas_set_threads(0), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_blas_set_threads(-3), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_blas_set_threads(FEDGE_BLAS_MAX_THREADS + 1), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_blas_threads(), 1);

    int used = 0;
    unsetenv("FEDGE_BLAS_THREADS");
    assert_int_equal(fedge_blas_threads_from_env(1, &used), FEDGE_OK);
    assert_int_equal(used, 1);
    assert_int_equal(fedge_blas_threads(), 1);
    setenv("FEDGE_BLAS_THREADS", "2", 1);
    assert_int_equal(fedge_blas_threads_from_env(1, &used), FEDGE_OK);
    assert_int_equal(used, 2);
    assert_int_equal(fedge_blas_threads(), 2);
    static const char *bad[] = {"0", "-1", "two", "2x", " 2", "1025", "99999999999999999999"};
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(bad); i++) {
        setenv("FEDGE_BLAS_THREADS", bad[i], 1);
        used = -7;
        assert_int_equal(fedge_blas_threads_from_env(1, &used), FEDGE_ERR_CONFIG_VALUE);
        assert_int_equal(used, -7);
        assert_int_equal(fedge_blas_threads(), 2); /* unchanged */
    }
    setenv("FEDGE_BLAS_THREADS", "", 1);
    assert_int_equal(fedge_blas_threads_from_env(1, NULL), FEDGE_OK);
    assert_int_equal(fedge_blas_threads(), 1);
    unsetenv("FEDGE_BLAS_THREADS");
}

/* The vectorised update equals the scalar PyTorch rule bit for bit, for every
 * length around the block size and on a slice at an odd offset. */
static void test_sgd_update_matches_scalar(void **state)
{
    (void)state;
    enum { N = 1000 };
    static float p[N], v[N], g[N], rp[N], rv[N];
    fedge_rng rng;
    fedge_rng_seed(&rng, 3);
    const fedge_sgd_config cfgs[] = {
        {.lr = 0.05f, .momentum = 0.9f, .weight_decay = 5e-4f},
        {.lr = 0.1f, .momentum = 0.0f, .weight_decay = 0.0f},
        {.lr = 1e-3f, .momentum = 0.99f, .weight_decay = 0.1f},
    };
    static const size_t lens[] = {1, 2, 15, 16, 17, 31, 32, 33, 47, 100, 999};
    for (size_t c = 0; c < FEDGE_ARRAY_LEN(cfgs); c++)
        for (size_t l = 0; l < FEDGE_ARRAY_LEN(lens); l++)
            for (size_t off = 0; off < 2; off++) {
                size_t n = lens[l];
                for (size_t i = 0; i < N; i++) {
                    rp[i] = p[i] = (float)fedge_rng_normal(&rng);
                    rv[i] = v[i] = (float)fedge_rng_normal(&rng);
                    g[i] = (float)fedge_rng_normal(&rng);
                }
                for (int step = 0; step < 3; step++) {
                    fedge_sgd_update(&cfgs[c], p + off, v + off, g + off, n);
                    for (size_t i = off; i < off + n; i++) {
                        volatile float t = cfgs[c].momentum * rv[i];
                        volatile float u = g[i] + cfgs[c].weight_decay * rp[i];
                        rv[i] = t + u;
                        volatile float d = cfgs[c].lr * rv[i];
                        rp[i] = rp[i] - d;
                    }
                }
                assert_memory_equal(p, rp, sizeof p); /* outside the slice: untouched */
                assert_memory_equal(v, rv, sizeof v);
            }
}

/* The portable kernel on the caller's scratch (the size the query gives, no
 * more: a block past it would overrun a malloc'd buffer under ASan) is the
 * thread-local one's bits; the scratch follows the shape, far below the
 * 640 KiB of thread-local buffers for an edge model's products. */
static void test_portable_scratch_by_query(void **state)
{
    (void)state;
    static const int shapes[][3] = {{32, 10, 784}, {8, 200, 784}, {200, 784, 32}, {1, 1, 1},
                                    {130, 520, 600}, {5, 784, 32}, {2304, 8, 25}};
    fedge_rng r;
    fedge_rng_seed(&r, 3);
    for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++) {
        int M = shapes[q][0], N = shapes[q][1], K = shapes[q][2];
        for (int t = 0; t < 4; t++) {
            int ta = t & 1, tb = t >> 1;
            float *A = malloc((size_t)M * K * sizeof(float)), *B = malloc((size_t)K * N * sizeof(float));
            float *C1 = malloc((size_t)M * N * sizeof(float)), *C2 = malloc((size_t)M * N * sizeof(float));
            size_t bytes = fedge_sgemm_portable_scratch_bytes(M, N, K);
            float *ws = malloc(bytes);
            assert_true(A && B && C1 && C2 && ws);
            for (size_t i = 0; i < (size_t)M * K; i++)
                A[i] = (float)fedge_rng_normal(&r);
            for (size_t i = 0; i < (size_t)K * N; i++)
                B[i] = (float)fedge_rng_normal(&r);
            fedge_sgemm_portable(ta, tb, M, N, K, 1.5f, A, ta ? M : K, B, tb ? K : N, 0.0f, C1, N);
            fedge_sgemm_portable_ws(ta, tb, M, N, K, 1.5f, A, ta ? M : K, B, tb ? K : N, 0.0f, C2,
                                    N, ws);
            assert_memory_equal(C1, C2, (size_t)M * N * sizeof(float));
            free(A);
            free(B);
            free(C1);
            free(C2);
            free(ws);
        }
    }
    assert_true(fedge_sgemm_portable_scratch_bytes(32, 10, 784) < 48 * 1024);
    assert_true(fedge_sgemm_portable_scratch_bytes(100000, 100000, 100000) <= 640 * 1024);
    assert_int_equal(fedge_sgemm_portable_scratch_bytes(0, 5, 5), 0);
}

/* The blocking follows the scratch given (gemm.c): from the full size down
 * to the min (one panel pair, packed 32 deep in pieces of a K slice) every
 * element is the same sum: the same bits; below the min nothing is written. */
static void test_portable_blocking_by_scratch(void **state)
{
    (void)state;
    static const int shapes[][3] = {{32, 10, 784}, {1, 64, 1152}, {8, 200, 784}, {5, 3, 1000},
                                    {130, 520, 600}, {576, 8, 25}, {8, 25, 576}, {3, 3, 7}};
    fedge_rng r;
    fedge_rng_seed(&r, 5);
    for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++) {
        int M = shapes[q][0], N = shapes[q][1], K = shapes[q][2];
        size_t full = fedge_sgemm_portable_scratch_bytes(M, N, K);
        size_t min = fedge_sgemm_portable_scratch_min_bytes(M, N, K);
        assert_true(min > 0 && min <= full && min <= 12 * 32 * sizeof(float));
        float *A = malloc((size_t)M * K * sizeof(float)), *B = malloc((size_t)K * N * sizeof(float));
        float *C1 = malloc((size_t)M * N * sizeof(float)), *C2 = malloc((size_t)M * N * sizeof(float));
        float *ws = malloc(full);
        assert_true(A && B && C1 && C2 && ws);
        for (size_t i = 0; i < (size_t)M * K; i++)
            A[i] = (float)fedge_rng_normal(&r);
        for (size_t i = 0; i < (size_t)K * N; i++)
            B[i] = (float)fedge_rng_normal(&r);
        for (int t = 0; t < 4; t++) {
            int ta = t & 1, tb = t >> 1, lda = ta ? M : K, ldb = tb ? K : N;
            assert_int_equal(fedge_sgemm_portable_wsn(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 0.0f,
                                                      C1, N, ws, full),
                             FEDGE_OK);
            size_t sizes[] = {full - sizeof(float), full / 2, full / 3, 12 * 40 * sizeof(float),
                              min + sizeof(float), min};
            for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++) {
                if (sizes[z] < min || sizes[z] > full)
                    continue;
                memset(C2, 0x7f, (size_t)M * N * sizeof(float));
                assert_int_equal(fedge_sgemm_portable_wsn(ta, tb, M, N, K, 0.5f, A, lda, B, ldb,
                                                          0.0f, C2, N, ws, sizes[z]),
                                 FEDGE_OK);
                assert_memory_equal(C1, C2, (size_t)M * N * sizeof(float));
            }
            memset(C2, 0x11, (size_t)M * N * sizeof(float));
            assert_int_equal(fedge_sgemm_portable_wsn(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 0.0f,
                                                      C2, N, ws, 11 * sizeof(float)),
                             FEDGE_ERR_BUFFER_TOO_SMALL);
            for (size_t i = 0; i < (size_t)M * N; i++)
                assert_int_equal(((uint32_t *)C2)[i], 0x11111111u);
        }
        free(A);
        free(B);
        free(C1);
        free(C2);
        free(ws);
    }
    /* an edge MLP's largest product packs 1.5 KiB at the min, 64 KiB+ at the full size */
    assert_int_equal(fedge_sgemm_portable_scratch_min_bytes(32, 784, 200), 12 * 32 * 4);
}

/* A product of at most one micro-tile's elements is summed without packing
 * (gemm.c's gemm_direct): each element the same bits as inside a larger
 * packed product, every transpose, K sliced or not. */
static void test_portable_small_same_bits(void **state)
{
    (void)state;
    static const int blocks[][2] = {{1, 1}, {1, 8}, {3, 3}, {4, 8}, {2, 16}, {1, 32}};
    static const int depths[] = {7, 64, 800};
    fedge_rng r;
    fedge_rng_seed(&r, 9);
    const int M = 9, N = 40;
    for (size_t d = 0; d < sizeof depths / sizeof depths[0]; d++) {
        int K = depths[d];
        float *A = malloc((size_t)M * K * sizeof(float)), *B = malloc((size_t)K * N * sizeof(float));
        float *C1 = malloc((size_t)M * N * sizeof(float)), *C2 = malloc((size_t)M * N * sizeof(float));
        size_t full = fedge_sgemm_portable_scratch_bytes(M, N, K);
        float *ws = malloc(full);
        assert_true(A && B && C1 && C2 && ws);
        for (size_t i = 0; i < (size_t)M * K; i++)
            A[i] = (float)fedge_rng_normal(&r);
        for (size_t i = 0; i < (size_t)K * N; i++)
            B[i] = (float)fedge_rng_normal(&r);
        for (int t = 0; t < 4; t++) {
            int ta = t & 1, tb = t >> 1, lda = ta ? M : K, ldb = tb ? K : N;
            assert_int_equal(fedge_sgemm_portable_wsn(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 0.0f,
                                                      C1, N, ws, full),
                             FEDGE_OK);
            for (size_t q = 0; q < sizeof blocks / sizeof blocks[0]; q++) {
                int m = blocks[q][0], n = blocks[q][1], i0 = M - m, j0 = N - n;
                const float *a = ta ? A + i0 : A + (size_t)i0 * K;
                const float *b = tb ? B + (size_t)j0 * K : B + j0;
                memset(C2, 0x7f, (size_t)M * N * sizeof(float));
                assert_int_equal(fedge_sgemm_portable_wsn(ta, tb, m, n, K, 0.5f, a, lda, b, ldb,
                                                          0.0f, C2, N, ws, full),
                                 FEDGE_OK);
                for (int i = 0; i < m; i++)
                    assert_memory_equal(C2 + (size_t)i * N, C1 + (size_t)(i0 + i) * N + j0,
                                        (size_t)n * sizeof(float));
            }
        }
        free(A);
        free(B);
        free(C1);
        free(C2);
        free(ws);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_portable_small_same_bits),
        cmocka_unit_test(test_blas_default_single_thread),
        cmocka_unit_test(test_portable_scratch_by_query),
        cmocka_unit_test(test_sgemm_vs_naive),
        cmocka_unit_test(test_portable_vs_naive),
        cmocka_unit_test(test_sgemm_degenerate),
        cmocka_unit_test(test_portable_blocking_by_scratch),
        cmocka_unit_test(test_blas_threads),
        cmocka_unit_test(test_sgd_update_matches_scalar),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
