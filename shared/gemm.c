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
 * only the _ws calls exist. Either way the call allocates nothing.
 *
 * The blocking is chosen at run time from the scratch the caller has
 * (fedge_sgemm_portable_wsn): the full MC x KC and KC x NC blocks when it
 * fits, else the widest B block (fewest repacks of A) and then the tallest
 * A block that fit, down to one MR x kd and one kd x NR panel with kd < KC:
 * the micro-kernel then carries its accumulator tile over the kd-deep
 * pieces of a KC slice. The K slices themselves (k_step) never depend on the
 * scratch, so every element of C is the same sum, term for term and in the
 * same order, whatever the blocking: the same bits. */
#include <stddef.h>
#include <string.h>

#include "blas.h"
#include "error.h"
#include "model.h"

#if FEDGE_BLAS_OPENBLAS
#include <cblas.h>
#define GEMM_OPENBLAS 1
#else
#define GEMM_OPENBLAS 0
#endif

#define GEMM_MR 4
#define GEMM_NR 8
#if FEDGE_FREESTANDING
/* a microcontroller (mcu/, built with FEDGE_GEMM_NO_TLS): no cache to block
 * for, RAM is what counts: the packing scratch is at most 3 KiB */
#define GEMM_KC 32
#define GEMM_MC 8
#define GEMM_NC 16
#else
#define GEMM_KC 256  /* a KC x NR panel of B stays in L1 */
#define GEMM_MC 128  /* the packed MC x KC block of A stays in L2 */
#define GEMM_NC 512
#endif
/* the least packing depth fedge_sgemm_portable_scratch_min_bytes asks for */
#define GEMM_KD_MIN 32
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

int fedge_gemm_k_slice(int K)
{
    return K > 0 ? k_step(K) : 0;
}

static size_t round_up(int v, int to)
{
    return (size_t)((v + to - 1) / to) * (size_t)to;
}

/* The blocking of one call: A blocks of mc rows, B blocks of nc columns,
 * packed kd deep (kd == the K slice, or less: accumulator carried over). */
typedef struct {
    int mc, nc, kd;
} blocking;

static int min_int(int a, int b)
{
    return a < b ? a : b;
}

/* The fastest blocking within ws_floats (see the top of the file); kd 0 when
 * not even one MR x 1 and one 1 x NR panel fit. */
static blocking choose_blocking(int M, int N, int K, size_t ws_floats)
{
    const int kstep = k_step(K);
    blocking bl = {(int)round_up(min_int(M, GEMM_MC), GEMM_MR),
                   (int)round_up(min_int(N, GEMM_NC), GEMM_NR), kstep};
    size_t panels = ws_floats / (size_t)kstep; /* rows + columns that fit kstep deep */
    if ((size_t)(bl.mc + bl.nc) <= panels)
        return bl;
    if (panels >= GEMM_MR + GEMM_NR) {
        size_t nc = (panels - GEMM_MR) / GEMM_NR * GEMM_NR;
        bl.nc = nc < (size_t)bl.nc ? (int)nc : bl.nc;
        size_t mc = (panels - (size_t)bl.nc) / GEMM_MR * GEMM_MR;
        bl.mc = mc < (size_t)bl.mc ? (int)mc : bl.mc;
        return bl;
    }
    bl.mc = GEMM_MR;
    bl.nc = GEMM_NR;
    size_t kd = ws_floats / (GEMM_MR + GEMM_NR);
    bl.kd = kd < (size_t)kstep ? (int)kd : kstep;
    return bl;
}

size_t fedge_sgemm_portable_scratch_bytes(int M, int N, int K)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return 0;
    blocking bl = choose_blocking(M, N, K, SIZE_MAX);
    return (size_t)(bl.mc + bl.nc) * (size_t)bl.kd * sizeof(float);
}

size_t fedge_sgemm_portable_scratch_min_bytes(int M, int N, int K)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return 0;
    return (size_t)(GEMM_MR + GEMM_NR) * (size_t)min_int(GEMM_KD_MIN, k_step(K)) * sizeof(float);
}

size_t fedge_gemm_scratch_bytes(int M, int N, int K)
{
    return GEMM_OPENBLAS ? 0 : fedge_sgemm_portable_scratch_bytes(M, N, K);
}

size_t fedge_gemm_scratch_min_bytes(int M, int N, int K)
{
    return GEMM_OPENBLAS ? 0 : fedge_sgemm_portable_scratch_min_bytes(M, N, K);
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

/* acc += sum over k of the outer product a[k][0..MR) x b[k][0..NR), the
 * terms added one k at a time (acc starts at zero for a new K slice). The
 * unroll pragmas let GCC -O2 keep the whole tile in registers. */
static void micro_kernel(int kc, const float *restrict a, const float *restrict b,
                         float acc[GEMM_MR][GEMM_NR])
{
    float t[GEMM_MR][GEMM_NR];
    memcpy(t, acc, sizeof(t));
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

static void add_tile(float *c, int ldc, int rows, int cols, float acc[GEMM_MR][GEMM_NR])
{
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            c[(size_t)i * ldc + j] += acc[i][j];
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

/* A product of at most one micro-tile's elements (a conv's lean blocks: one
 * pixel, one channel): each element summed as the micro-kernel sums it (per
 * K slice from zero, alpha * a times b added one k at a time, the slice then
 * added to C), without packing: the same bits. */
#define GEMM_DIRECT_MN (GEMM_MR * GEMM_NR)
static void gemm_direct(int trans_a, int trans_b, int M, int N, int K, float alpha,
                        const float *A, int lda, const float *B, int ldb, float *C, int ldc)
{
    const int kstep = k_step(K);
    const size_t as = trans_a ? (size_t)lda : 1, bs = trans_b ? 1 : (size_t)ldb;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            const float *a = trans_a ? A + i : A + (size_t)i * lda;
            const float *b = trans_b ? B + (size_t)j * ldb : B + j;
            float c = C[(size_t)i * ldc + j];
            for (int k0 = 0; k0 < K; k0 += kstep) {
                const int kc = min_int(K - k0, kstep);
                float acc = 0.0f;
                if (alpha == 1.0f) /* 1 * a is a: the same bits */
                    for (int k = k0; k < k0 + kc; k++)
                        acc += a[(size_t)k * as] * b[(size_t)k * bs];
                else
                    for (int k = k0; k < k0 + kc; k++)
                        acc += alpha * a[(size_t)k * as] * b[(size_t)k * bs];
                c += acc;
            }
            C[(size_t)i * ldc + j] = c;
        }
}

/* One MR x NR tile at a time, each K slice packed kd deep in pieces (the
 * blocking when even one full-depth panel pair does not fit). */
static void gemm_deep_split(int trans_a, int trans_b, int M, int N, int K, float alpha,
                            const float *A, int lda, const float *B, int ldb, float *C, int ldc,
                            float *ws, int kd)
{
    float *pack_a = ws, *pack_b = ws + (size_t)GEMM_MR * kd;
    const int kstep = k_step(K);
    for (int j0 = 0; j0 < N; j0 += GEMM_NR) {
        int cols = min_int(N - j0, GEMM_NR);
        for (int k0 = 0; k0 < K; k0 += kstep) {
            int kc = min_int(K - k0, kstep);
            for (int i0 = 0; i0 < M; i0 += GEMM_MR) {
                int rows = min_int(M - i0, GEMM_MR);
                float acc[GEMM_MR][GEMM_NR];
                memset(acc, 0, sizeof acc);
                for (int d0 = 0; d0 < kc; d0 += kd) {
                    int dd = min_int(kc - d0, kd);
                    pack_b_block(trans_b, B, ldb, k0 + d0, dd, j0, cols, pack_b);
                    pack_a_block(trans_a, A, lda, i0, rows, k0 + d0, dd, alpha, pack_a);
                    micro_kernel(dd, pack_a, pack_b, acc);
                }
                add_tile(C + (size_t)i0 * ldc + j0, ldc, rows, cols, acc);
            }
        }
    }
}

int fedge_sgemm_portable_wsn(int trans_a, int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *B, int ldb, float beta,
                             float *C, int ldc, float *ws, size_t ws_bytes)
{
    if (M <= 0 || N <= 0)
        return FEDGE_OK;
    int work = K > 0 && alpha != 0.0f;
    blocking bl = {0, 0, 0};
    if (work) {
        bl = choose_blocking(M, N, K, ws_bytes / sizeof(float));
        if (bl.kd < 1 || ws == NULL)
            return FEDGE_ERR_BUFFER_TOO_SMALL; /* before C is touched */
    }
    if (beta != 1.0f)
        scale_c(M, N, beta, C, ldc);
    if (!work)
        return FEDGE_OK;
    if ((size_t)M * (size_t)N <= GEMM_DIRECT_MN) {
        gemm_direct(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, C, ldc);
        return FEDGE_OK;
    }
    if (bl.kd < k_step(K)) {
        gemm_deep_split(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, C, ldc, ws, bl.kd);
        return FEDGE_OK;
    }
    float *pack_a = ws, *pack_b = ws + (size_t)bl.mc * (size_t)bl.kd;
    const int kstep = bl.kd;

    for (int j0 = 0; j0 < N; j0 += bl.nc) {
        int nc = min_int(N - j0, bl.nc);
        for (int k0 = 0; k0 < K; k0 += kstep) {
            int kc = min_int(K - k0, kstep);
            pack_b_block(trans_b, B, ldb, k0, kc, j0, nc, pack_b);
            for (int i0 = 0; i0 < M; i0 += bl.mc) {
                int mc = min_int(M - i0, bl.mc);
                pack_a_block(trans_a, A, lda, i0, mc, k0, kc, alpha, pack_a);
                for (int jp = 0; jp < nc; jp += GEMM_NR) {
                    int cols = min_int(nc - jp, GEMM_NR);
                    const float *bp = pack_b + (size_t)jp * kc;
                    for (int ip = 0; ip < mc; ip += GEMM_MR) {
                        float acc[GEMM_MR][GEMM_NR];
                        memset(acc, 0, sizeof acc);
                        micro_kernel(kc, pack_a + (size_t)ip * kc, bp, acc);
                        add_tile(C + (size_t)(i0 + ip) * ldc + j0 + jp, ldc,
                                 min_int(mc - ip, GEMM_MR), cols, acc);
                    }
                }
            }
        }
    }
    return FEDGE_OK;
}

void fedge_sgemm_portable_ws(int trans_a, int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *B, int ldb, float beta,
                             float *C, int ldc, float *ws)
{
    (void)fedge_sgemm_portable_wsn(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C,
                                   ldc, ws, fedge_sgemm_portable_scratch_bytes(M, N, K));
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

int fedge_sgemm_wsn(int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc, float *ws, size_t ws_bytes)
{
#if FEDGE_BLAS_OPENBLAS
    (void)ws;
    (void)ws_bytes;
    fedge_sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return FEDGE_OK;
#else
    return fedge_sgemm_portable_wsn(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C,
                                    ldc, ws, ws_bytes);
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
