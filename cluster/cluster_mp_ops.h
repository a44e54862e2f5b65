/* cluster_mp_ops.h — the compute and communication operations of the
 * model-parallel trainer (cluster_mp.c), one table per device: "cpu" (host
 * memory, fedge_sgemm, MPI on the grid's communicators; cluster_mp.c) and
 * "gpu" (device memory, cuBLAS, small kernels, NCCL communicators per axis;
 * gpu/mp_gpu.cu). The schedule, grid and bookkeeping stay in cluster_mp.c.
 *
 * Every buffer argument is in the table's memory (device memory for the
 * GPU) except where a name says host. Matrices are row-major. Operations
 * complete in order; `recv` and `allreduce` return with the data in place.
 * No MPI or CUDA types cross this header. Each returns FEDGE_OK or a fedge
 * error (FEDGE_ERR_CLUSTER_COMM for a communication failure). */
#ifndef FEDGE_CLUSTER_MP_OPS_H
#define FEDGE_CLUSTER_MP_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "optim.h"

enum { FEDGE_MP_AXIS_TP = 0, FEDGE_MP_AXIS_PP = 1, FEDGE_MP_AXIS_DP = 2, FEDGE_MP_AXES = 3 };
enum { FEDGE_MP_FLOAT = 0, FEDGE_MP_DOUBLE = 1 };
enum { FEDGE_MP_SUM = 0, FEDGE_MP_MAX = 1 };
enum { FEDGE_MP_FWD = 0, FEDGE_MP_BWD = 1 }; /* which boundary a send crosses */

typedef struct {
    const char *name;
    /* zeroed n floats */
    int (*alloc)(void *ctx, size_t n, float **out);
    void (*free)(void *ctx, float *p);
    int (*upload)(void *ctx, float *dst, const float *host, size_t n);
    int (*download)(void *ctx, float *host, const float *src, size_t n);
    int (*copy)(void *ctx, float *dst, const float *src, size_t n);
    int (*zero)(void *ctx, float *p, size_t n);
    /* This step's labels (rows bytes, host) where the table's kernels read
     * them; *out stays valid until the next call. */
    int (*labels)(void *ctx, const uint8_t *host, int rows, const uint8_t **out);
    /* C = alpha op(A) op(B) + beta C */
    int (*gemm)(void *ctx, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                int lda, const float *b, int ldb, float beta, float *c, int ldc);
    /* z[r][j] += b[j], then ReLU when relu */
    int (*bias_act)(void *ctx, float *z, const float *b, int rows, int cols, int relu);
    /* gb[j] += sum_r dz[r][j] */
    int (*bias_grad)(void *ctx, const float *dz, int rows, int cols, float *gb);
    /* dst[i] = act[i] > 0 ? src[i] : 0 (dst may be src) */
    int (*relu_back)(void *ctx, float *dst, const float *src, const float *act, size_t n);
    /* Softmax cross-entropy over columns c0 .. c0+cols of the logits, in
     * three pieces so that a TP group can allreduce between them: mx = row
     * maxima; se[2r] = sum_j exp(z - mx), se[2r+1] = z[label] - mx where the
     * label is among these columns, else 0; then z becomes the probabilities
     * and *loss (host) the sum over rows of log se[2r] - se[2r+1]. */
    int (*row_max)(void *ctx, const float *z, int rows, int cols, float *mx);
    int (*softmax_sums)(void *ctx, const float *z, const float *mx, const uint8_t *y, int c0,
                        int rows, int cols, double *se);
    int (*softmax_finish)(void *ctx, float *z, const float *mx, const double *se, int rows,
                          int cols, double *loss);
    /* dz[r][j] = (p[r][j] - [j + c0 == y[r]]) * w */
    int (*xent_grad)(void *ctx, float *dz, const float *p, const uint8_t *y, int c0, int rows,
                     int cols, float w);
    int (*sgd)(void *ctx, const fedge_sgd_config *cfg, float *w, float *v, const float *g,
               size_t n);
    /* *bad (host) = 1 if any g[i] is NaN or Inf */
    int (*nonfinite)(void *ctx, const float *g, size_t n, int *bad);
    /* in place over the grid axis' communicator */
    int (*allreduce)(void *ctx, int axis, void *buf, size_t n, int dtype, int op);
    /* Point-to-point over the pp axis. send may return before the data has
     * left; send_wait(dir, slot) returns when buf of that send may be
     * rewritten, send_wait_all when every send has. recv blocks; *idle_s
     * gains the seconds it waited. A tag orders messages on MPI; NCCL
     * matches them in issue order, which the schedule keeps. */
    int (*send)(void *ctx, const float *buf, size_t n, int peer, int tag, int dir, int slot);
    int (*send_wait)(void *ctx, int dir, int slot);
    int (*send_wait_all)(void *ctx);
    int (*recv)(void *ctx, float *buf, size_t n, int peer, int tag, double *idle_s);
} fedge_mp_ops;

#endif
