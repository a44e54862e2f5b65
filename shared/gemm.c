/* gemm.c — single-precision GEMM for the CPU paths (see fedge_sgemm in model.h
 * and blas.h): cblas_sgemm when built with a BLAS, else the portable kernel below.
 *
 * The portable kernel (fedge_sgemm_portable, blas.h) has the Goto/BLIS
 * structure in portable C: C is computed in KC-deep slices; for each
 * slice a block of op(B) (KC x NC) is packed into NR-wide column panels and a
 * block of op(A) (MC x KC) into MR-tall row panels, both zero-padded, so the
 * micro-kernel always runs a full MR x NR tile with unit-stride loads. The
 * micro-kernel is plain loops over fixed-size arrays; GCC -O2 keeps the
 * accumulator tile in vector registers (SSE on x86-64, NEON on aarch64).
 * Transposes are absorbed by the packing, so all four cases share one kernel.
 *
 * Packing buffers: fedge_sgemm_ws / fedge_sgemm_portable_ws take them from
 * the caller (fedge_sgemm_portable_scratch_bytes(M, N, K): the A block, then
 * the B block, each rounded to whole micro-panels and at most KC deep);
 * fedge_sgemm and fedge_sgemm_portable use thread-local statics (640 KiB per
 * thread) unless built with FEDGE_GEMM_NO_TLS (a freestanding core), where
 * only the _ws calls exist. Either way the call allocates nothing. */
#include <stddef.h>
#include <string.h>

#include "blas.h"
#include "model.h"

#if FEDGE_BLAS_OPENBLAS
#include <cblas.h>
#endif

#define GEMM_MR 4
#define GEMM_NR 8
#if FEDGE_FREESTANDING
/* a microcontroller (mcu/, built with FEDGE_GEMM_NO_TLS): no cache to block
 * for, RAM is what counts: the packing scratch is at most 3 KiB */
#define GEMM_KC 32
#define GEMM_MC 8
#define GEMM_NC 16
#elif FEDGE_GEMM_SMALL
/* the Linux edge (make's edge profile): KC as below, so every sum has the
 * same slices and the same bits; the A and B blocks one micro-panel each,
 * at most (MR + NR) x KC floats (12 KiB) of scratch instead of 640 KiB */
#define GEMM_KC 256
#define GEMM_MC GEMM_MR
#define GEMM_NC GEMM_NR
#else
#define GEMM_KC 256  /* a KC x NR panel of B stays in L1 */
#define GEMM_MC 128  /* the packed MC x KC block of A stays in L2 */
#define GEMM_NC 512
#endif
_Static_assert(GEMM_MC % GEMM_MR == 0 && GEMM_NC % GEMM_NR == 0,
               "blocks hold whole micro-panels");

#if !FEDGE_GEMM_NO_TLS
static _Thread_local float tls_pack[GEMM_MC * GEMM_KC + GEMM_KC * GEMM_NC]
    __attribute__((aligned(64)));
#endif

/* The K slices: equal ones, so 784 runs as 4 x 196, not 3 x 256 + 16. */
static int k_step(int K)
{
    int kslices = (K + GEMM_KC - 1) / GEMM_KC;
    return (K + kslices - 1) / kslices;
}

static size_t round_up(int v, int to)
{
    return (size_t)((v + to - 1) / to) * (size_t)to;
}

/* Floats of the packed A block (the first part of the scratch). */
static size_t pack_a_floats(int M, int K)
{
    return round_up(M < GEMM_MC ? M : GEMM_MC, GEMM_MR) * (size_t)k_step(K);
}

size_t fedge_sgemm_portable_scratch_bytes(int M, int N, int K)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return 0;
    size_t b = round_up(N < GEMM_NC ? N : GEMM_NC, GEMM_NR) * (size_t)k_step(K);
    return (pack_a_floats(M, K) + b) * sizeof(float);
}

size_t fedge_gemm_scratch_bytes(int M, int N, int K)
{
#if FEDGE_BLAS_OPENBLAS
    (void)M;
    (void)N;
    (void)K;
    return 0;
#else
    return fedge_sgemm_portable_scratch_bytes(M, N, K);
#endif
}

/* Packs rows [i0, i0+mc) x cols [k0, k0+kc) of alpha*op(A) into MR-row panels:
 * panel p holds, for each k, MR consecutive values. */
static void pack_a_block(int trans, const float *A, int lda, int i0, int mc, int k0, int kc,
                         float alpha, float *dst)
{
    for (int ip = 0; ip < mc; ip += GEMM_MR) {
        int rows = mc - ip < GEMM_MR ? mc - ip : GEMM_MR;
        float *panel = dst + (size_t)ip * kc;
        if (!trans) {
            for (int r = 0; r < rows; r++) {
                const float *src = A + (size_t)(i0 + ip + r) * lda + k0;
                for (int k = 0; k < kc; k++)
                    panel[k * GEMM_MR + r] = alpha * src[k];
            }
        } else {
            for (int k = 0; k < kc; k++) {
                const float *src = A + (size_t)(k0 + k) * lda + i0 + ip;
                for (int r = 0; r < rows; r++)
                    panel[k * GEMM_MR + r] = alpha * src[r];
            }
        }
        for (int r = rows; r < GEMM_MR; r++)
            for (int k = 0; k < kc; k++)
                panel[k * GEMM_MR + r] = 0.0f;
    }
}

/* Packs rows [k0, k0+kc) x cols [j0, j0+nc) of op(B) into NR-column panels:
 * panel p holds, for each k, NR consecutive values. */
static void pack_b_block(int trans, const float *B, int ldb, int k0, int kc, int j0, int nc,
                         float *dst)
{
    for (int jp = 0; jp < nc; jp += GEMM_NR) {
        int cols = nc - jp < GEMM_NR ? nc - jp : GEMM_NR;
        float *panel = dst + (size_t)jp * kc;
        if (!trans) {
            for (int k = 0; k < kc; k++) {
                const float *src = B + (size_t)(k0 + k) * ldb + j0 + jp;
                float *out = panel + k * GEMM_NR;
                int c = 0;
                for (; c < cols; c++)
                    out[c] = src[c];
                for (; c < GEMM_NR; c++)
                    out[c] = 0.0f;
            }
        } else {
            for (int c = 0; c < cols; c++) {
                const float *src = B + (size_t)(j0 + jp + c) * ldb + k0;
                for (int k = 0; k < kc; k++)
                    panel[k * GEMM_NR + c] = src[k];
            }
            for (int c = cols; c < GEMM_NR; c++)
                for (int k = 0; k < kc; k++)
                    panel[k * GEMM_NR + c] = 0.0f;
        }
    }
}

/* acc = sum over k of the outer product a[k][0..MR) x b[k][0..NR). The unroll
 * pragmas let GCC -O2 keep the whole tile in registers. */
static void micro_kernel(int kc, const float *restrict a, const float *restrict b,
                         float acc[GEMM_MR][GEMM_NR])
{
    float t[GEMM_MR][GEMM_NR];
#pragma GCC unroll 16
    for (int i = 0; i < GEMM_MR; i++)
#pragma GCC unroll 16
        for (int j = 0; j < GEMM_NR; j++)
            t[i][j] = 0.0f;
    for (int k = 0; k < kc; k++) {
#pragma GCC unroll 16
        for (int i = 0; i < GEMM_MR; i++)
#pragma GCC unroll 16
            for (int j = 0; j < GEMM_NR; j++)
                t[i][j] += a[i] * b[j];
        a += GEMM_MR;
        b += GEMM_NR;
    }
    memcpy(acc, t, sizeof(t));
}

static void scale_c(int M, int N, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++) {
        float *row = C + (size_t)i * ldc;
        if (beta == 0.0f)
            memset(row, 0, (size_t)N * sizeof(float)); /* never reads C: NaN there is dropped */
        else
            for (int j = 0; j < N; j++)
                row[j] *= beta;
    }
}

void fedge_sgemm_portable_ws(int trans_a, int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *B, int ldb, float beta,
                             float *C, int ldc, float *ws)
{
    if (M <= 0 || N <= 0)
        return;
    if (beta != 1.0f)
        scale_c(M, N, beta, C, ldc);
    if (K <= 0 || alpha == 0.0f)
        return;
    float *pack_a = ws, *pack_b = ws + pack_a_floats(M, K);
    int kstep = k_step(K);

    for (int j0 = 0; j0 < N; j0 += GEMM_NC) {
        int nc = N - j0 < GEMM_NC ? N - j0 : GEMM_NC;
        for (int k0 = 0; k0 < K; k0 += kstep) {
            int kc = K - k0 < kstep ? K - k0 : kstep;
            pack_b_block(trans_b, B, ldb, k0, kc, j0, nc, pack_b);
            for (int i0 = 0; i0 < M; i0 += GEMM_MC) {
                int mc = M - i0 < GEMM_MC ? M - i0 : GEMM_MC;
                pack_a_block(trans_a, A, lda, i0, mc, k0, kc, alpha, pack_a);
                for (int jp = 0; jp < nc; jp += GEMM_NR) {
                    int cols = nc - jp < GEMM_NR ? nc - jp : GEMM_NR;
                    const float *bp = pack_b + (size_t)jp * kc;
                    for (int ip = 0; ip < mc; ip += GEMM_MR) {
                        int rows = mc - ip < GEMM_MR ? mc - ip : GEMM_MR;
                        float acc[GEMM_MR][GEMM_NR];
                        micro_kernel(kc, pack_a + (size_t)ip * kc, bp, acc);
                        float *c = C + (size_t)(i0 + ip) * ldc + j0 + jp;
                        for (int i = 0; i < rows; i++)
                            for (int j = 0; j < cols; j++)
                                c[(size_t)i * ldc + j] += acc[i][j];
                    }
                }
            }
        }
    }
}

#if !FEDGE_GEMM_NO_TLS
void fedge_sgemm_portable(int trans_a, int trans_b, int M, int N, int K, float alpha,
                          const float *A, int lda, const float *B, int ldb, float beta,
                          float *C, int ldc)
{
    fedge_sgemm_portable_ws(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                            tls_pack);
}
#endif

void fedge_sgemm_ws(int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta,
                    float *C, int ldc, float *ws)
{
#if FEDGE_BLAS_OPENBLAS
    (void)ws;
    fedge_sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
    fedge_sgemm_portable_ws(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ws);
#endif
}

#if FEDGE_BLAS_OPENBLAS || !FEDGE_GEMM_NO_TLS
void fedge_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc)
{
#if FEDGE_BLAS_OPENBLAS
    /* degenerate shapes stay here: CBLAS asks for ld >= 1, which K == 0 may not give */
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0 || alpha == 0.0f) {
        if (beta != 1.0f)
            scale_c(M, N, beta, C, ldc);
        return;
    }
    fedge_blas_default_threads();
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                ldc);
#else
    fedge_sgemm_portable(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}
#endif
