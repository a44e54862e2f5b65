/* mp_gpu.cu — the GPU table of the model-parallel trainer (gpu/mp_gpu.h).
 *
 * One stream per rank carries everything in order: cuBLAS (fp32 in and out,
 * CUBLAS_DEFAULT_MATH: no TF32), the kernels below, and NCCL. Operations
 * that hand a result to the host (recv, allreduce, loss, flag, download)
 * synchronise the stream; the rest are asynchronous.
 *
 * Point-to-point: with eager sends (GPipe, where no two neighbours ever send
 * to each other at the same time) a send is issued at once. Otherwise (1F1B:
 * stage s sends a forward activation and then waits for a gradient while
 * stage s + 1 sends that gradient and then waits for the activation) sends
 * are queued and issued in one NCCL group with the next receive, or alone
 * when send_wait needs their buffer back or the step ends. NCCL matches
 * messages between two ranks in issue order, which the schedule keeps the
 * same on both sides; the tag is not used.
 *
 * The row-major GEMM C = op(A) op(B) is cuBLAS's column-major
 * C^T = op(B)^T op(A)^T. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "cluster_mp_ops.h"
#include "common.h"
#include "error.h"
#include "log.h"
}
#include "gpu/mp_gpu.h"
#define FEDGE_GPU_WHERE "gpu mp"
#include "gpu/gpu_check.cuh"




#define MP_KERNEL_DONE() FEDGE_CUDA_CHK(cudaGetLastError())

typedef struct {
    const float *buf;
    size_t n;
    int peer, dir, slot;
} queued_send;

typedef struct {
    int device;
    int eager;                  /* issue sends at once */
    cudaStream_t s;
    cublasHandle_t blas;
    ncclComm_t comm[FEDGE_MP_AXES];
    int comm_ok[FEDGE_MP_AXES];
    uint8_t *y;                 /* labels_max bytes */
    size_t labels_max, rows_max;
    float *ones;                /* rows_max ones: the bias gradient's GEMV */
    double *row_loss;           /* rows_max */
    double *host_loss;          /* pinned, rows_max */
    int *flag, *host_flag;
    queued_send *q;
    int nq, q_cap;
    void *owner;
} mp_gpu;

/* ---- kernels ------------------------------------------------------------- */



__global__ void mp_fill(float *p, size_t n, float v)
{
    FEDGE_GRID_STRIDE(i, n) p[i] = v;
}

__global__ void mp_bias_act(float *z, const float *b, size_t n, int cols, int relu)
{
    FEDGE_GRID_STRIDE(i, n)
    {
        float v = z[i] + b[i % (size_t)cols];
        z[i] = (relu && v < 0.0f) ? 0.0f : v;
    }
}

__global__ void mp_relu_back(float *dst, const float *src, const float *act, size_t n)
{
    FEDGE_GRID_STRIDE(i, n) dst[i] = act[i] > 0.0f ? src[i] : 0.0f;
}

/* one thread per row: the class counts of a dense chain's output are small */
__global__ void mp_row_max(const float *z, int rows, int cols, float *mx)
{
    FEDGE_GRID_STRIDE(r, (size_t)rows)
    {
        const float *zr = z + r * (size_t)cols;
        float m = zr[0];
        for (int j = 1; j < cols; j++)
            m = zr[j] > m ? zr[j] : m;
        mx[r] = m;
    }
}

__global__ void mp_softmax_sums(const float *z, const float *mx, const uint8_t *y, int c0,
                                int rows, int cols, double *se)
{
    FEDGE_GRID_STRIDE(r, (size_t)rows)
    {
        const float *zr = z + r * (size_t)cols;
        const int label = (int)y[r] - c0;
        double sum = 0.0;
        for (int j = 0; j < cols; j++)
            sum += exp((double)(zr[j] - mx[r]));
        se[2 * r] = sum;
        se[2 * r + 1] = label >= 0 && label < cols ? (double)(zr[label] - mx[r]) : 0.0;
    }
}

__global__ void mp_softmax_probs(float *z, const float *mx, const double *se, size_t n, int cols)
{
    FEDGE_GRID_STRIDE(i, n)
    {
        const size_t r = i / (size_t)cols;
        z[i] = (float)(exp((double)(z[i] - mx[r])) / se[2 * r]);
    }
}

__global__ void mp_row_loss(const double *se, int rows, double *loss)
{
    FEDGE_GRID_STRIDE(r, (size_t)rows) loss[r] = log(se[2 * r]) - se[2 * r + 1];
}

__global__ void mp_xent_grad(float *dz, const float *p, const uint8_t *y, int c0, size_t n,
                             int cols, float w)
{
    FEDGE_GRID_STRIDE(i, n)
    {
        const size_t r = i / (size_t)cols;
        const int j = (int)(i % (size_t)cols);
        dz[i] = (p[i] - (j + c0 == (int)y[r] ? 1.0f : 0.0f)) * w;
    }
}

/* optim.h's rule: v = mu v + (g + wd w); w -= lr v */
__global__ void mp_sgd(float *w, float *v, const float *g, size_t n, float lr, float mu, float wd)
{
    FEDGE_GRID_STRIDE(i, n)
    {
        float vi = __fadd_rn(__fmul_rn(mu, v[i]), __fadd_rn(g[i], __fmul_rn(wd, w[i])));
        v[i] = vi;
        w[i] = __fsub_rn(w[i], __fmul_rn(lr, vi));
    }
}

__global__ void mp_nonfinite(const float *g, size_t n, int *flag)
{
    FEDGE_GRID_STRIDE(i, n)
    if (!isfinite(g[i]))
        *flag = 1;
}

/* ---- the table ------------------------------------------------------------ */

#define MPG(ctx) ((mp_gpu *)(ctx))

static int g_alloc(void *ctx, size_t n, float **out)
{
    (void)ctx;
    *out = NULL;
    FEDGE_CUDA_CHK(cudaMalloc((void **)out, (n ? n : 1) * sizeof(float)));
    FEDGE_CUDA_CHK(cudaMemset(*out, 0, (n ? n : 1) * sizeof(float)));
    return FEDGE_OK;
}

static void g_free(void *ctx, float *p)
{
    (void)ctx;
    if (p != NULL)
        cudaFree(p);
}

static int g_upload(void *ctx, float *dst, const float *host, size_t n)
{
    mp_gpu *g = MPG(ctx);
    FEDGE_CUDA_CHK(cudaMemcpyAsync(dst, host, n * sizeof(float), cudaMemcpyHostToDevice, g->s));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->s)); /* host may be pageable and reused */
    return FEDGE_OK;
}

static int g_download(void *ctx, float *host, const float *src, size_t n)
{
    mp_gpu *g = MPG(ctx);
    FEDGE_CUDA_CHK(cudaMemcpyAsync(host, src, n * sizeof(float), cudaMemcpyDeviceToHost, g->s));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->s));
    return FEDGE_OK;
}

static int g_copy(void *ctx, float *dst, const float *src, size_t n)
{
    mp_gpu *g = MPG(ctx);
    if (n > 0)
        FEDGE_CUDA_CHK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, g->s));
    return FEDGE_OK;
}

static int g_zero(void *ctx, float *p, size_t n)
{
    mp_gpu *g = MPG(ctx);
    if (n > 0)
        FEDGE_CUDA_CHK(cudaMemsetAsync(p, 0, n * sizeof(float), g->s));
    return FEDGE_OK;
}

static int g_labels(void *ctx, const uint8_t *host, int rows, const uint8_t **out)
{
    mp_gpu *g = MPG(ctx);
    if (rows < 0 || (size_t)rows > g->labels_max)
        return FEDGE_ERR_RANGE;
    FEDGE_CUDA_CHK(cudaMemcpyAsync(g->y, host, (size_t)rows, cudaMemcpyHostToDevice, g->s));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->s));
    *out = g->y;
    return FEDGE_OK;
}

static int g_gemm(void *ctx, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                  int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    mp_gpu *g = MPG(ctx);
    if (m == 0 || n == 0)
        return FEDGE_OK;
    FEDGE_BLAS_CHK(cublasSgemm(g->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                        n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc));
    return FEDGE_OK;
}

static int g_bias_act(void *ctx, float *z, const float *b, int rows, int cols, int relu)
{
    mp_gpu *g = MPG(ctx);
    const size_t n = (size_t)rows * (size_t)cols;
    if (n == 0)
        return FEDGE_OK;
    mp_bias_act<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->s>>>(z, b, n, cols, relu);
    MP_KERNEL_DONE();
    return FEDGE_OK;
}

/* gb += dz^T 1: dz (rows x cols, row-major) is column-major cols x rows */
static int g_bias_grad(void *ctx, const float *dz, int rows, int cols, float *gb)
{
    mp_gpu *g = MPG(ctx);
    const float one = 1.0f;
    if (rows < 1 || cols < 1)
        return FEDGE_OK;
    if ((size_t)rows > g->rows_max)
        return FEDGE_ERR_RANGE;
    FEDGE_BLAS_CHK(cublasSgemv(g->blas, CUBLAS_OP_N, cols, rows, &one, dz, cols, g->ones, 1, &one, gb,
                        1));
    return FEDGE_OK;
}

static int g_relu_back(void *ctx, float *dst, const float *src, const float *act, size_t n)
{
    mp_gpu *g = MPG(ctx);
    if (n == 0)
        return FEDGE_OK;
    mp_relu_back<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->s>>>(dst, src, act, n);
    MP_KERNEL_DONE();
    return FEDGE_OK;
}

static int g_row_max(void *ctx, const float *z, int rows, int cols, float *mx)
{
    mp_gpu *g = MPG(ctx);
    if (rows < 1)
        return FEDGE_OK;
    mp_row_max<<<fedge_gpu_blocks((size_t)rows), FEDGE_GPU_THREADS, 0, g->s>>>(z, rows, cols, mx);
    MP_KERNEL_DONE();
    return FEDGE_OK;
}

static int g_softmax_sums(void *ctx, const float *z, const float *mx, const uint8_t *y, int c0,
                          int rows, int cols, double *se)
{
    mp_gpu *g = MPG(ctx);
    if (rows < 1)
        return FEDGE_OK;
    mp_softmax_sums<<<fedge_gpu_blocks((size_t)rows), FEDGE_GPU_THREADS, 0, g->s>>>(z, mx, y, c0, rows, cols,
                                                                      se);
    MP_KERNEL_DONE();
    return FEDGE_OK;
}

/* The rows' losses come back one by one and are summed in row order, as
 * the cpu table does. */
static int g_softmax_finish(void *ctx, float *z, const float *mx, const double *se, int rows,
                            int cols, double *loss)
{
    mp_gpu *g = MPG(ctx);
    const size_t n = (size_t)rows * (size_t)cols;
    *loss = 0.0;
    if (rows < 1)
        return FEDGE_OK;
    if ((size_t)rows > g->rows_max)
        return FEDGE_ERR_RANGE;
    mp_row_loss<<<fedge_gpu_blocks((size_t)rows), FEDGE_GPU_THREADS, 0, g->s>>>(se, rows, g->row_loss);
    MP_KERNEL_DONE();
    mp_softmax_probs<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->s>>>(z, mx, se, n, cols);
    MP_KERNEL_DONE();
    FEDGE_CUDA_CHK(cudaMemcpyAsync(g->host_loss, g->row_loss, (size_t)rows * sizeof(double),
                            cudaMemcpyDeviceToHost, g->s));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->s));
    double total = 0.0;
    for (int r = 0; r < rows; r++)
        total += g->host_loss[r];
    *loss = total;
    return FEDGE_OK;
}

static int g_xent_grad(void *ctx, float *dz, const float *p, const uint8_t *y, int c0, int rows,
                       int cols, float w)
{
    mp_gpu *g = MPG(ctx);
    const size_t n = (size_t)rows * (size_t)cols;
    if (n == 0)
        return FEDGE_OK;
    mp_xent_grad<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->s>>>(dz, p, y, c0, n, cols, w);
    MP_KERNEL_DONE();
    return FEDGE_OK;
}

static int g_sgd(void *ctx, const fedge_sgd_config *cfg, float *w, float *v, const float *gr,
                 size_t n)
{
    mp_gpu *g = MPG(ctx);
    if (n == 0)
        return FEDGE_OK;
    mp_sgd<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->s>>>(w, v, gr, n, cfg->lr, cfg->momentum,
                                                 cfg->weight_decay);
    MP_KERNEL_DONE();
    return FEDGE_OK;
}

static int g_nonfinite(void *ctx, const float *gr, size_t n, int *bad)
{
    mp_gpu *g = MPG(ctx);
    FEDGE_CUDA_CHK(cudaMemsetAsync(g->flag, 0, sizeof(int), g->s));
    if (n > 0) {
        mp_nonfinite<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->s>>>(gr, n, g->flag);
        MP_KERNEL_DONE();
    }
    FEDGE_CUDA_CHK(cudaMemcpyAsync(g->host_flag, g->flag, sizeof(int), cudaMemcpyDeviceToHost, g->s));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->s));
    *bad = *g->host_flag != 0;
    return FEDGE_OK;
}

static int g_allreduce(void *ctx, int axis, void *buf, size_t n, int dtype, int op)
{
    mp_gpu *g = MPG(ctx);
    if (axis < 0 || axis >= FEDGE_MP_AXES || !g->comm_ok[axis])
        return FEDGE_ERR_INVALID_ARG;
    FEDGE_NCCL_CHK(ncclAllReduce(buf, buf, n, dtype == FEDGE_MP_DOUBLE ? ncclDouble : ncclFloat,
                          op == FEDGE_MP_MAX ? ncclMax : ncclSum, g->comm[axis], g->s));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->s));
    return FEDGE_OK;
}

/* The queued sends, and the receive when buf is not NULL, as one group. */
static int issue_p2p(mp_gpu *g, float *rbuf, size_t rn, int rpeer)
{
    if (g->nq == 0 && rbuf == NULL)
        return FEDGE_OK;
    const ncclComm_t pp = g->comm[FEDGE_MP_AXIS_PP];
    FEDGE_NCCL_CHK(ncclGroupStart());
    ncclResult_t r = ncclSuccess;
    for (int i = 0; i < g->nq && r == ncclSuccess; i++)
        r = ncclSend(g->q[i].buf, g->q[i].n, ncclFloat, g->q[i].peer, pp, g->s);
    if (r == ncclSuccess && rbuf != NULL)
        r = ncclRecv(rbuf, rn, ncclFloat, rpeer, pp, g->s);
    ncclResult_t e = ncclGroupEnd();
    g->nq = 0;
    FEDGE_NCCL_CHK(r);
    FEDGE_NCCL_CHK(e);
    return FEDGE_OK;
}

static int g_send(void *ctx, const float *buf, size_t n, int peer, int tag, int dir, int slot)
{
    mp_gpu *g = MPG(ctx);
    (void)tag;
    if (!g->comm_ok[FEDGE_MP_AXIS_PP])
        return FEDGE_ERR_INVALID_ARG;
    if (g->nq == g->q_cap) {
        int cap = g->q_cap ? 2 * g->q_cap : 16;
        if (cap > 1 << 16)
            return FEDGE_ERR_RANGE;
        queued_send *q = (queued_send *)realloc(g->q, (size_t)cap * sizeof(*q));
        if (q == NULL)
            return FEDGE_ERR_NOMEM;
        g->q = q;
        g->q_cap = cap;
    }
    queued_send *e = &g->q[g->nq++];
    e->buf = buf;
    e->n = n;
    e->peer = peer;
    e->dir = dir;
    e->slot = slot;
    return g->eager ? issue_p2p(g, NULL, 0, 0) : FEDGE_OK;
}

/* Stream order keeps an issued send's buffer until it has left; a queued
 * one has to be issued first. */
static int g_send_wait(void *ctx, int dir, int slot)
{
    mp_gpu *g = MPG(ctx);
    for (int i = 0; i < g->nq; i++)
        if (g->q[i].dir == dir && g->q[i].slot == slot)
            return issue_p2p(g, NULL, 0, 0);
    return FEDGE_OK;
}

static int g_send_wait_all(void *ctx)
{
    mp_gpu *g = MPG(ctx);
    int st = issue_p2p(g, NULL, 0, 0);
    if (st != FEDGE_OK)
        return st;
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->s));
    return FEDGE_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The stream is drained first, so that the wait counted is the wait for
 * the peer, not this rank's own queued work. */
static int g_recv(void *ctx, float *buf, size_t n, int peer, int tag, double *idle_s)
{
    mp_gpu *g = MPG(ctx);
    (void)tag;
    if (!g->comm_ok[FEDGE_MP_AXIS_PP])
        return FEDGE_ERR_INVALID_ARG;
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->s));
    double t0 = now_s();
    int st = issue_p2p(g, buf, n, peer);
    if (st != FEDGE_OK)
        return st;
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->s));
    *idle_s += now_s() - t0;
    return FEDGE_OK;
}

static fedge_mp_ops make_mp_ops(void)
{
    fedge_mp_ops o;
    memset(&o, 0, sizeof(o));
    o.name = "gpu";
    o.alloc = g_alloc;
    o.free = g_free;
    o.upload = g_upload;
    o.download = g_download;
    o.copy = g_copy;
    o.zero = g_zero;
    o.labels = g_labels;
    o.gemm = g_gemm;
    o.bias_act = g_bias_act;
    o.bias_grad = g_bias_grad;
    o.relu_back = g_relu_back;
    o.row_max = g_row_max;
    o.softmax_sums = g_softmax_sums;
    o.softmax_finish = g_softmax_finish;
    o.xent_grad = g_xent_grad;
    o.sgd = g_sgd;
    o.nonfinite = g_nonfinite;
    o.allreduce = g_allreduce;
    o.send = g_send;
    o.send_wait = g_send_wait;
    o.send_wait_all = g_send_wait_all;
    o.recv = g_recv;
    return o;
}

static const fedge_mp_ops mp_gpu_ops = make_mp_ops();

extern "C" const fedge_mp_ops *fedge_mp_gpu_ops(void) { return &mp_gpu_ops; }

/* ---- life cycle ------------------------------------------------------------ */

extern "C" void fedge_mp_gpu_destroy(void *ctx)
{
    mp_gpu *g = MPG(ctx);
    if (g == NULL)
        return;
    if (g->s)
        cudaStreamSynchronize(g->s);
    for (int a = 0; a < FEDGE_MP_AXES; a++)
        if (g->comm_ok[a])
            ncclCommDestroy(g->comm[a]);
    if (g->blas)
        cublasDestroy(g->blas);
    void *bufs[] = {g->y, g->ones, g->row_loss, g->flag};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        if (bufs[i] != NULL)
            cudaFree(bufs[i]);
    if (g->host_loss)
        cudaFreeHost(g->host_loss);
    if (g->host_flag)
        cudaFreeHost(g->host_flag);
    if (g->s)
        cudaStreamDestroy(g->s);
    free(g->q);
    free(g);
}

static int mp_gpu_setup(mp_gpu *g, int local_rank)
{
    int count = 0;
    FEDGE_CUDA_CHK(cudaGetDeviceCount(&count));
    if (count < 1)
        return FEDGE_ERR_CLUSTER_GPU;
    g->device = local_rank % count;
    FEDGE_CUDA_CHK(cudaSetDevice(g->device));
    FEDGE_CUDA_CHK(cudaStreamCreateWithFlags(&g->s, cudaStreamNonBlocking));
    FEDGE_BLAS_CHK(cublasCreate(&g->blas));
    FEDGE_BLAS_CHK(cublasSetStream(g->blas, g->s));
    FEDGE_BLAS_CHK(cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH)); /* fp32 stays fp32: no TF32 */
    FEDGE_CUDA_CHK(cudaMalloc((void **)&g->y, g->labels_max ? g->labels_max : 1));
    FEDGE_CUDA_CHK(cudaMalloc((void **)&g->ones, g->rows_max * sizeof(float)));
    FEDGE_CUDA_CHK(cudaMalloc((void **)&g->row_loss, g->rows_max * sizeof(double)));
    FEDGE_CUDA_CHK(cudaMalloc((void **)&g->flag, sizeof(int)));
    FEDGE_CUDA_CHK(cudaMallocHost((void **)&g->host_loss, g->rows_max * sizeof(double)));
    FEDGE_CUDA_CHK(cudaMallocHost((void **)&g->host_flag, sizeof(int)));
    mp_fill<<<fedge_gpu_blocks(g->rows_max), FEDGE_GPU_THREADS, 0, g->s>>>(g->ones, g->rows_max, 1.0f);
    MP_KERNEL_DONE();
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->s));
    return FEDGE_OK;
}

extern "C" int fedge_mp_gpu_create(int local_rank, size_t labels_max, size_t rows_max,
                                   int eager_sends, void **ctx)
{
    if (ctx == NULL || local_rank < 0 || rows_max < 1)
        return FEDGE_ERR_INVALID_ARG;
    *ctx = NULL;
    mp_gpu *g = (mp_gpu *)calloc(1, sizeof(*g));
    if (g == NULL)
        return FEDGE_ERR_NOMEM;
    g->labels_max = labels_max;
    g->rows_max = rows_max;
    g->eager = eager_sends != 0;
    int st = mp_gpu_setup(g, local_rank);
    if (st != FEDGE_OK) {
        fedge_mp_gpu_destroy(g);
        return st;
    }
    *ctx = g;
    return FEDGE_OK;
}

extern "C" void fedge_mp_gpu_set_owner(void *ctx, void *owner) { MPG(ctx)->owner = owner; }

extern "C" void *fedge_mp_gpu_owner(void *ctx) { return MPG(ctx)->owner; }

/* The three communicators in the same order on every rank: tp, pp, dp. */
extern "C" int fedge_mp_gpu_connect(void *ctx, const int size[FEDGE_MP_AXES],
                                    const int rank[FEDGE_MP_AXES],
                                    const unsigned char ids[FEDGE_MP_AXES][FEDGE_GPU_ID_BYTES])
{
    mp_gpu *g = MPG(ctx);
    if (g == NULL)
        return FEDGE_ERR_INVALID_ARG;
    FEDGE_CUDA_CHK(cudaSetDevice(g->device));
    for (int a = 0; a < FEDGE_MP_AXES; a++) {
        ncclUniqueId uid;
        static_assert(sizeof(uid.internal) == FEDGE_GPU_ID_BYTES, "NCCL unique id size");
        memcpy(uid.internal, ids[a], FEDGE_GPU_ID_BYTES);
        FEDGE_NCCL_CHK(ncclCommInitRank(&g->comm[a], size[a], uid, rank[a]));
        g->comm_ok[a] = 1;
    }
    return FEDGE_OK;
}
