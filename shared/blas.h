/* blas.h — the BLAS behind fedge_sgemm (model.h) and its thread count.
 *
 * Built with BLAS=openblas (the default; see the Makefile), fedge_sgemm calls
 * cblas_sgemm (row-major) from OpenBLAS; with BLAS=none it runs the portable
 * packed kernel, fedge_sgemm_portable, which is always compiled so tests and
 * benchmarks can compare the two in one binary. Degenerate calls (M, N or K
 * <= 0, alpha == 0) never reach the BLAS: fedge_sgemm scales C itself.
 *
 * Threads: single-threaded unless asked. The programs (edge, cluster ranks,
 * aggregator) call fedge_blas_threads_from_env(1) at start, which also rejects
 * a malformed FEDGE_BLAS_THREADS; any other program gets the same choice on its
 * first fedge_sgemm (fedge_blas_default_threads), so OpenBLAS's own default
 * (one thread per core) never applies; there a malformed value is ignored
 * (1 thread) with one warning line on stderr per process. Without a BLAS the count is recorded
 * and the kernel stays single-threaded. */
#ifndef FEDGE_BLAS_H
#define FEDGE_BLAS_H

#include <stddef.h>

#define FEDGE_BLAS_MAX_THREADS 1024

/* "openblas" or "portable". */
const char *fedge_blas_name(void);
/* One line naming the build and the kernel chosen for this CPU,
 * e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64 (SkylakeX)". */
const char *fedge_blas_config(void);

/* FEDGE_ERR_INVALID_ARG unless 1 <= n <= FEDGE_BLAS_MAX_THREADS. */
int fedge_blas_set_threads(int n);
int fedge_blas_threads(void);

/* Sets the thread count from FEDGE_BLAS_THREADS (a decimal 1..FEDGE_BLAS_MAX_THREADS)
 * or, when it is unset or empty, to `fallback`. A malformed value is
 * FEDGE_ERR_CONFIG_VALUE and changes nothing. *used (may be NULL) gets the count. */
int fedge_blas_threads_from_env(int fallback, int *used);

/* Chooses the count as fedge_blas_threads_from_env(1, NULL) would (1 on a
 * malformed value, with the one warning on stderr) unless a count was already
 * set; fedge_sgemm calls it. */
void fedge_blas_default_threads(void);

/* The portable kernel itself (same contract as fedge_sgemm; its packing
 * buffers are thread-local, absent with FEDGE_GEMM_NO_TLS). */
void fedge_sgemm_portable(int trans_a, int trans_b, int M, int N, int K, float alpha,
                          const float *A, int lda, const float *B, int ldb, float beta,
                          float *C, int ldc);

/* The same with the caller's packing scratch, ws: at least
 * fedge_sgemm_portable_scratch_bytes(M, N, K) bytes (float-aligned; 0 when a
 * dimension is <= 0, then ws may be NULL). At most 640 KiB, however large. */
size_t fedge_sgemm_portable_scratch_bytes(int M, int N, int K);
/* The run-time blocking (gemm.c): ws of ws_bytes, at least
 * fedge_sgemm_portable_scratch_min_bytes(M, N, K), else
 * FEDGE_ERR_BUFFER_TOO_SMALL and C is untouched; the same bits as with the
 * full scratch. */
size_t fedge_sgemm_portable_scratch_min_bytes(int M, int N, int K);
/* The depth of the slices the portable kernel cuts K into (equal ones,
 * at most KC): each slice's terms are summed from zero, one k at a time,
 * and then added to C. A caller that forms the same sums itself (model.c's
 * lean conv weight gradient) gets the same bits this way. 0 for K <= 0. */
int fedge_gemm_k_slice(int K);
int fedge_sgemm_portable_wsn(int trans_a, int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *B, int ldb, float beta,
                             float *C, int ldc, float *ws, size_t ws_bytes);
void fedge_sgemm_portable_ws(int trans_a, int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *B, int ldb, float beta,
                             float *C, int ldc, float *ws);

#endif
