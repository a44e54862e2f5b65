/* backend_gpu.cu — the GPU backend: one CUDA device per rank, cuBLAS GEMMs,
 * NCCL collectives.
 *
 * Precision: the fp32 master parameters, gradients and momentum live in
 * fp32; with bf16/fp16 the GEMM inputs (weights, activations, output
 * gradients) are low-precision copies and cuBLAS accumulates in fp32
 * (cublasGemmEx, CUBLAS_COMPUTE_32F). The fp16 loss scale is applied by the
 * trainer through the output-gradient weight and undone in the update.
 *
 * Streams: compute work goes on `compute`; gradient buckets go to NCCL on
 * `comm` as soon as the layer that finishes them has been recorded (one
 * event per layer), so communication overlaps the rest of the backward
 * pass. The compute stream waits for the comm stream before the update.
 *
 * Row-major GEMMs are mapped onto column-major cuBLAS by computing
 * C^T = op(B)^T op(A)^T. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "cluster_backend.h"
#include "common.h"
#include "error.h"
#include "cluster_layout.h"
#include "log.h"
}
#include "gpu/gpu.h"
#define FEDGE_GPU_WHERE "gpu"
#include "gpu/gpu_check.cuh"




/* ---- kernels ------------------------------------------------------------- */

__device__ __forceinline__ void store(float *p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store(__half *p, float v) { *p = __float2half(v); }

template <typename T>
__global__ void cast_kernel(const float *src, T *dst, size_t n)
{
    FEDGE_GRID_STRIDE(i, n)
        store(&dst[i], src[i]);
}

/* z[r, j] += b[j], then ReLU for hidden layers; low gets the GEMM-input copy. */
template <typename T>
__global__ void bias_act_kernel(float *z, const float *b, int rows, int cols, int relu, T *low)
{
    size_t n = (size_t)rows * cols;
    FEDGE_GRID_STRIDE(i, n) {
        float v = z[i] + b[i % cols];
        if (relu && v < 0.0f)
            v = 0.0f;
        z[i] = v;
        if (low != NULL)
            store(&low[i], v);
    }
}

__device__ float block_reduce(float v, int is_max)
{
    __shared__ float buf[32];
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0)
        buf[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = lane < nw ? buf[lane] : (is_max ? -INFINITY : 0.0f);
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) {
            float w = __shfl_xor_sync(0xffffffffu, v, o);
            v = is_max ? fmaxf(v, w) : v + w;
        }
    __syncthreads();
    if (threadIdx.x == 0)
        buf[0] = v;
    __syncthreads();
    v = buf[0];
    __syncthreads();
    return v;
}

/* One block per row: loss[r] = logsumexp(z) - z[y]; dz = (p - onehot) * w. */
template <typename T>
__global__ void softmax_xent_kernel(const float *z, const uint8_t *y, int classes, float w,
                                    float *loss, float *dz, T *dz_low)
{
    const int r = blockIdx.x;
    const float *zr = z + (size_t)r * classes;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < classes; j += blockDim.x)
        mx = fmaxf(mx, zr[j]);
    mx = block_reduce(mx, 1);
    float s = 0.0f;
    for (int j = threadIdx.x; j < classes; j += blockDim.x)
        s += expf(zr[j] - mx);
    s = block_reduce(s, 0);
    const int label = y[r];
    for (int j = threadIdx.x; j < classes; j += blockDim.x) {
        float p = expf(zr[j] - mx) / s;
        float g = (p - (j == label ? 1.0f : 0.0f)) * w;
        dz[(size_t)r * classes + j] = g;
        if (dz_low != NULL)
            store(&dz_low[(size_t)r * classes + j], g);
    }
    if (threadIdx.x == 0)
        loss[r] = logf(s) - (zr[label] - mx);
}

/* gb[j] = sum over rows of dz[r, j]. */
__global__ void bias_grad_kernel(const float *dz, int rows, int cols, float *gb)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols)
        return;
    float s = 0.0f;
    for (int r = 0; r < rows; r++)
        s += dz[(size_t)r * cols + j];
    gb[j] = s;
}

/* dz = da where the layer's ReLU output was positive, else 0. */
template <typename T>
__global__ void relu_back_kernel(const float *da, const float *act, size_t n, float *dz, T *dz_low)
{
    FEDGE_GRID_STRIDE(i, n) {
        float g = act[i] > 0.0f ? da[i] : 0.0f;
        dz[i] = g;
        if (dz_low != NULL)
            store(&dz_low[i], g);
    }
}

/* The shared core's rule (optim.h): v = m v + (g s + wd w); w -= lr v. */
__global__ void sgd_kernel(float *w, float *v, const float *g, size_t n, float lr, float m,
                           float wd, float s)
{
    FEDGE_GRID_STRIDE(i, n) {
        float vi = m * v[i] + (g[i] * s + wd * w[i]);
        v[i] = vi;
        w[i] -= lr * vi;
    }
}

__global__ void nonfinite_kernel(const float *g, size_t n, int *flag)
{
    int bad = 0;
    FEDGE_GRID_STRIDE(i, n)
        bad |= !isfinite(g[i]);
    if (bad)
        *flag = 1;
}

__global__ void fill_kernel(float *p, size_t n, float base)
{
    FEDGE_GRID_STRIDE(i, n)
        p[i] = base * (float)((i * 2654435761u) % 1000u) * 1e-3f;
}


/* ---- state ---------------------------------------------------------------- */

typedef struct {
    int device;
    fedge_dense_shape shape; /* cfg.spec as dense layers */
    cudaStream_t compute, comm;
    cudaEvent_t layer_done[FEDGE_MODEL_MAX_LAYERS];
    cudaEvent_t comm_done, update_done;
    int last_layer;
    cublasHandle_t blas;
    ncclComm_t nccl;
    int nccl_ok;
    cudaDataType_t ctype; /* GEMM input type */
    size_t esize;         /* its size; 0 for fp32 (no copies) */
    float *params, *grads, *velocity;
    void *wlow;           /* n_pad low-precision weights */
    float *act_block;
    float *act[FEDGE_MODEL_MAX_LAYERS + 1];
    void *alow_block;
    void *alow[FEDGE_MODEL_MAX_LAYERS]; /* GEMM inputs: act[l] or its copy */
    float *dz, *da;
    void *dz_low;
    uint8_t *y;
    float *row_loss;
    float *host_loss;
    int *flag;
    int rows;
    size_t layer_off[FEDGE_MODEL_MAX_LAYERS + 1];
} gpu_impl;

#define G(be) ((gpu_impl *)(be)->impl)

/* Low-precision copy of n floats on `s` (no-op for fp32). */
static int cast_to_low(gpu_impl *g, const float *src, void *dst, size_t n, cudaStream_t s)
{
    if (g->esize == 0 || n == 0)
        return FEDGE_OK;
    if (g->ctype == CUDA_R_16BF)
        cast_kernel<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, s>>>(src, (__nv_bfloat16 *)dst, n);
    else
        cast_kernel<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, s>>>(src, (__half *)dst, n);
    FEDGE_CUDA_CHK(cudaGetLastError());
    return FEDGE_OK;
}

static void *low_at(gpu_impl *g, void *base, size_t off)
{
    return (char *)base + off * (g->esize ? g->esize : sizeof(float));
}

/* Row-major C[M x N] = op(A) op(B) (+ beta C), inputs of g->ctype, fp32 C. */
static int gemm_rm(gpu_impl *g, int ta, int tb, int M, int N, int K, const void *A, int lda,
                   const void *B, int ldb, float *C, int ldc, float beta)
{
    const float alpha = 1.0f;
    FEDGE_BLAS_CHK(cublasGemmEx(g->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                          N, M, K, &alpha, B, g->ctype, ldb, A, g->ctype, lda, &beta, C,
                          CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return FEDGE_OK;
}

static const void *weights_low(gpu_impl *g, int l)
{
    return g->esize ? low_at(g, g->wlow, g->layer_off[l]) : (const void *)(g->params + g->layer_off[l]);
}

/* ---- communication ------------------------------------------------------- */

static int gpu_buf_alloc(fedge_backend *be, size_t n, float **out)
{
    (void)be;
    FEDGE_CUDA_CHK(cudaMalloc((void **)out, (n ? n : 1) * sizeof(float)));
    FEDGE_CUDA_CHK(cudaMemset(*out, 0, (n ? n : 1) * sizeof(float)));
    return FEDGE_OK;
}

static void gpu_buf_free(fedge_backend *be, float *p)
{
    (void)be;
    if (p != NULL)
        cudaFree(p);
}

static int gpu_buf_upload(fedge_backend *be, float *dst, const float *host, size_t n)
{
    (void)be;
    FEDGE_CUDA_CHK(cudaMemcpy(dst, host, n * sizeof(float), cudaMemcpyHostToDevice));
    return FEDGE_OK;
}

static int gpu_buf_download(fedge_backend *be, float *host, const float *src, size_t n)
{
    (void)be;
    FEDGE_CUDA_CHK(cudaMemcpy(host, src, n * sizeof(float), cudaMemcpyDeviceToHost));
    return FEDGE_OK;
}

static int gpu_allreduce(fedge_backend *be, float *buf, size_t n)
{
    gpu_impl *g = G(be);
    FEDGE_NCCL_CHK(ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, g->nccl, g->compute));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    return FEDGE_OK;
}

static int gpu_reduce_scatter(fedge_backend *be, const float *send, float *recv, size_t per_rank)
{
    gpu_impl *g = G(be);
    FEDGE_NCCL_CHK(ncclReduceScatter(send, recv, per_rank, ncclFloat, ncclSum, g->nccl, g->compute));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    return FEDGE_OK;
}

static int gpu_all_gather(fedge_backend *be, float *buf, size_t per_rank)
{
    gpu_impl *g = G(be);
    const float *mine = buf + (size_t)be->cfg.layout.rank * per_rank;
    FEDGE_NCCL_CHK(ncclAllGather(mine, buf, per_rank, ncclFloat, g->nccl, g->compute));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    return FEDGE_OK;
}

static int gpu_barrier(fedge_backend *be)
{
    gpu_impl *g = G(be);
    FEDGE_CUDA_CHK(cudaDeviceSynchronize());
    FEDGE_NCCL_CHK(ncclAllReduce(g->flag, g->flag, 1, ncclInt32, ncclMax, g->nccl, g->compute));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    return FEDGE_OK;
}

/* ---- training state ------------------------------------------------------ */

static int gpu_set_params(fedge_backend *be, const float *host)
{
    gpu_impl *g = G(be);
    const fedge_layout *lo = &be->cfg.layout;
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    FEDGE_CUDA_CHK(cudaMemcpy(g->params, host, lo->n * sizeof(float), cudaMemcpyHostToDevice));
    FEDGE_CUDA_CHK(cudaMemset(g->params + lo->n, 0, (lo->n_pad - lo->n) * sizeof(float)));
    int st = cast_to_low(g, g->params, g->wlow, lo->n_pad, g->compute);
    if (st != FEDGE_OK)
        return st;
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    return FEDGE_OK;
}

static int gpu_get_params(fedge_backend *be, float *host)
{
    gpu_impl *g = G(be);
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    FEDGE_CUDA_CHK(cudaMemcpy(host, g->params, be->cfg.layout.n * sizeof(float), cudaMemcpyDeviceToHost));
    return FEDGE_OK;
}

static int gpu_set_optim(fedge_backend *be, const float *host)
{
    gpu_impl *g = G(be);
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    FEDGE_CUDA_CHK(cudaMemcpy(g->velocity, host, be->opt_len * sizeof(float), cudaMemcpyHostToDevice));
    return FEDGE_OK;
}

static int gpu_get_optim(fedge_backend *be, float *host)
{
    gpu_impl *g = G(be);
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    FEDGE_CUDA_CHK(cudaMemcpy(host, g->velocity, be->opt_len * sizeof(float), cudaMemcpyDeviceToHost));
    return FEDGE_OK;
}

/* ---- compute ------------------------------------------------------------- */

static int gpu_load_batch(fedge_backend *be, const float *x, const uint8_t *y, int rows)
{
    gpu_impl *g = G(be);
    const fedge_dense_shape *sp = &g->shape;
    const fedge_layout *lo = &be->cfg.layout;
    if (rows < 1 || rows > be->cfg.local_batch_max)
        return FEDGE_ERR_RANGE;
    for (int i = 0; i < rows; i++)
        if (y[i] >= sp->dims[sp->n_layers])
            return FEDGE_ERR_DATA_LABEL;
    size_t nx = (size_t)rows * (size_t)sp->dims[0];
    FEDGE_CUDA_CHK(cudaMemcpyAsync(g->act[0], x, nx * sizeof(float), cudaMemcpyHostToDevice, g->compute));
    FEDGE_CUDA_CHK(cudaMemcpyAsync(g->y, y, (size_t)rows, cudaMemcpyHostToDevice, g->compute));
    FEDGE_CUDA_CHK(cudaMemsetAsync(g->grads + lo->n, 0, (lo->n_pad - lo->n) * sizeof(float), g->compute));
    int st = cast_to_low(g, g->act[0], g->alow[0], nx, g->compute);
    if (st != FEDGE_OK)
        return st;
    /* the host buffers are reused by the loader: finish the copies now */
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    g->rows = rows;
    return FEDGE_OK;
}

static int gpu_forward(fedge_backend *be, float grad_weight, double *loss_sum)
{
    gpu_impl *g = G(be);
    const fedge_dense_shape *sp = &g->shape;
    const int L = sp->n_layers, rows = g->rows;
    int st;
    for (int l = 0; l < L; l++) {
        const int in = sp->dims[l], out = sp->dims[l + 1];
        st = gemm_rm(g, 0, 1, rows, out, in, g->alow[l], in, weights_low(g, l), in, g->act[l + 1],
                     out, 0.0f);
        if (st != FEDGE_OK)
            return st;
        const float *bias = g->params + g->layer_off[l] + (size_t)out * (size_t)in;
        size_t n = (size_t)rows * (size_t)out;
        int hidden = l < L - 1;
        void *low = (hidden && g->esize) ? g->alow[l + 1] : NULL;
        if (g->ctype == CUDA_R_16BF)
            bias_act_kernel<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->compute>>>(
                g->act[l + 1], bias, rows, out, hidden, (__nv_bfloat16 *)low);
        else if (g->ctype == CUDA_R_16F)
            bias_act_kernel<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->compute>>>(
                g->act[l + 1], bias, rows, out, hidden, (__half *)low);
        else
            bias_act_kernel<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->compute>>>(
                g->act[l + 1], bias, rows, out, hidden, (float *)NULL);
        FEDGE_CUDA_CHK(cudaGetLastError());
    }
    const int classes = sp->dims[L];
    const int tpb = classes >= 256 ? 256 : 32;
    if (g->ctype == CUDA_R_16BF)
        softmax_xent_kernel<<<rows, tpb, 0, g->compute>>>(g->act[L], g->y, classes, grad_weight,
                                                          g->row_loss, g->dz,
                                                          (__nv_bfloat16 *)g->dz_low);
    else if (g->ctype == CUDA_R_16F)
        softmax_xent_kernel<<<rows, tpb, 0, g->compute>>>(g->act[L], g->y, classes, grad_weight,
                                                          g->row_loss, g->dz, (__half *)g->dz_low);
    else
        softmax_xent_kernel<<<rows, tpb, 0, g->compute>>>(g->act[L], g->y, classes, grad_weight,
                                                          g->row_loss, g->dz, (float *)NULL);
    FEDGE_CUDA_CHK(cudaGetLastError());
    FEDGE_CUDA_CHK(cudaMemcpyAsync(g->host_loss, g->row_loss, (size_t)rows * sizeof(float),
                             cudaMemcpyDeviceToHost, g->compute));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    double total = 0.0;
    for (int r = 0; r < rows; r++)
        total += g->host_loss[r];
    *loss_sum = total;
    return FEDGE_OK;
}

static int gpu_backward_layer(fedge_backend *be, int l)
{
    gpu_impl *g = G(be);
    const fedge_dense_shape *sp = &g->shape;
    if (l < 0 || l >= sp->n_layers)
        return FEDGE_ERR_INVALID_ARG;
    const int rows = g->rows, in = sp->dims[l], out = sp->dims[l + 1];
    const void *dz_in = g->esize ? (const void *)g->dz_low : (const void *)g->dz;
    float *gW = g->grads + g->layer_off[l];
    float *gb = gW + (size_t)out * (size_t)in;
    int st = gemm_rm(g, 1, 0, out, in, rows, dz_in, out, g->alow[l], in, gW, in, 0.0f);
    if (st != FEDGE_OK)
        return st;
    bias_grad_kernel<<<(out + FEDGE_GPU_THREADS - 1) / FEDGE_GPU_THREADS, FEDGE_GPU_THREADS, 0, g->compute>>>(g->dz, rows, out, gb);
    FEDGE_CUDA_CHK(cudaGetLastError());
    if (l > 0) {
        st = gemm_rm(g, 0, 0, rows, in, out, dz_in, out, weights_low(g, l), in, g->da, in, 0.0f);
        if (st != FEDGE_OK)
            return st;
        size_t n = (size_t)rows * (size_t)in;
        if (g->ctype == CUDA_R_16BF)
            relu_back_kernel<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->compute>>>(
                g->da, g->act[l], n, g->dz, (__nv_bfloat16 *)g->dz_low);
        else if (g->ctype == CUDA_R_16F)
            relu_back_kernel<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->compute>>>(g->da, g->act[l], n, g->dz,
                                                                        (__half *)g->dz_low);
        else
            relu_back_kernel<<<fedge_gpu_blocks(n), FEDGE_GPU_THREADS, 0, g->compute>>>(g->da, g->act[l], n, g->dz,
                                                                        (float *)NULL);
        FEDGE_CUDA_CHK(cudaGetLastError());
    }
    FEDGE_CUDA_CHK(cudaEventRecord(g->layer_done[l], g->compute));
    g->last_layer = l;
    return FEDGE_OK;
}

static int gpu_grad_comm_start(fedge_backend *be, size_t off, size_t count)
{
    gpu_impl *g = G(be);
    const fedge_layout *lo = &be->cfg.layout;
    if (off + count > lo->n_pad)
        return FEDGE_ERR_RANGE;
    if (g->last_layer >= 0)
        FEDGE_CUDA_CHK(cudaStreamWaitEvent(g->comm, g->layer_done[g->last_layer], 0));
    if (!be->cfg.zero) {
        FEDGE_NCCL_CHK(ncclAllReduce(g->grads + off, g->grads + off, count, ncclFloat, ncclSum, g->nccl,
                               g->comm));
    } else if (off == 0 && count == lo->n_pad) {
        FEDGE_NCCL_CHK(ncclReduceScatter(g->grads, g->grads + lo->own_off, lo->shard, ncclFloat, ncclSum,
                                   g->nccl, g->comm));
    } else {
        /* a reduce-scatter with unequal parts: one in-place reduce per owner */
        FEDGE_NCCL_CHK(ncclGroupStart());
        for (int r = 0; r < lo->world; r++) {
            size_t po, pc;
            fedge_layout_intersect(lo, r, off, count, &po, &pc);
            if (pc > 0)
                FEDGE_NCCL_CHK(ncclReduce(g->grads + po, g->grads + po, pc, ncclFloat, ncclSum, r, g->nccl,
                                    g->comm));
        }
        FEDGE_NCCL_CHK(ncclGroupEnd());
    }
    return FEDGE_OK;
}

static int gpu_grad_comm_wait(fedge_backend *be)
{
    gpu_impl *g = G(be);
    FEDGE_CUDA_CHK(cudaEventRecord(g->comm_done, g->comm));
    FEDGE_CUDA_CHK(cudaStreamWaitEvent(g->compute, g->comm_done, 0));
    g->last_layer = -1;
    return FEDGE_OK;
}

static int gpu_grad_nonfinite(fedge_backend *be, int *flag)
{
    gpu_impl *g = G(be);
    int h = 0;
    FEDGE_CUDA_CHK(cudaMemsetAsync(g->flag, 0, sizeof(int), g->compute));
    nonfinite_kernel<<<fedge_gpu_blocks(be->opt_len), FEDGE_GPU_THREADS, 0, g->compute>>>(g->grads + be->opt_off,
                                                                          be->opt_len, g->flag);
    FEDGE_CUDA_CHK(cudaGetLastError());
    FEDGE_CUDA_CHK(cudaMemcpyAsync(&h, g->flag, sizeof(int), cudaMemcpyDeviceToHost, g->compute));
    FEDGE_CUDA_CHK(cudaStreamSynchronize(g->compute));
    *flag = h != 0;
    return FEDGE_OK;
}

static int gpu_update(fedge_backend *be, const fedge_sgd_config *sgd, float grad_scale)
{
    gpu_impl *g = G(be);
    sgd_kernel<<<fedge_gpu_blocks(be->opt_len), FEDGE_GPU_THREADS, 0, g->compute>>>(
        g->params + be->opt_off, g->velocity, g->grads + be->opt_off, be->opt_len, sgd->lr,
        sgd->momentum, sgd->weight_decay, grad_scale);
    FEDGE_CUDA_CHK(cudaGetLastError());
    if (!be->cfg.zero)
        return cast_to_low(g, g->params, g->wlow, be->cfg.layout.n_pad, g->compute);
    return FEDGE_OK;
}

static int gpu_gather_params(fedge_backend *be)
{
    gpu_impl *g = G(be);
    const fedge_layout *lo = &be->cfg.layout;
    if (!be->cfg.zero)
        return FEDGE_OK;
    FEDGE_CUDA_CHK(cudaEventRecord(g->update_done, g->compute));
    FEDGE_CUDA_CHK(cudaStreamWaitEvent(g->comm, g->update_done, 0));
    FEDGE_NCCL_CHK(ncclAllGather(g->params + lo->own_off, g->params, lo->shard, ncclFloat, g->nccl,
                           g->comm));
    FEDGE_CUDA_CHK(cudaEventRecord(g->comm_done, g->comm));
    FEDGE_CUDA_CHK(cudaStreamWaitEvent(g->compute, g->comm_done, 0));
    return cast_to_low(g, g->params, g->wlow, lo->n_pad, g->compute);
}

static int gpu_gemm_tflops(fedge_backend *be, int m, int n, int k, int iters, double *tflops)
{
    gpu_impl *g = G(be);
    int ret = FEDGE_OK;
    float *a32 = NULL, *b32 = NULL, *c = NULL;
    void *a = NULL, *b = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    float ms = 0.0f;
    size_t na = (size_t)m * k, nb = (size_t)n * k;
    if (m < 1 || n < 1 || k < 1 || iters < 1)
        return FEDGE_ERR_INVALID_ARG;
    if (cudaMalloc((void **)&a32, na * sizeof(float)) != cudaSuccess
        || cudaMalloc((void **)&b32, nb * sizeof(float)) != cudaSuccess
        || cudaMalloc((void **)&c, (size_t)m * n * sizeof(float)) != cudaSuccess
        || cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        ret = FEDGE_ERR_CLUSTER_GPU;
        goto cleanup;
    }
    fill_kernel<<<fedge_gpu_blocks(na), FEDGE_GPU_THREADS, 0, g->compute>>>(a32, na, 1.0f);
    fill_kernel<<<fedge_gpu_blocks(nb), FEDGE_GPU_THREADS, 0, g->compute>>>(b32, nb, 0.5f);
    a = a32;
    b = b32;
    if (g->esize) {
        if (cudaMalloc(&a, na * g->esize) != cudaSuccess || cudaMalloc(&b, nb * g->esize) != cudaSuccess) {
            ret = FEDGE_ERR_CLUSTER_GPU;
            goto cleanup;
        }
        if ((ret = cast_to_low(g, a32, a, na, g->compute)) != FEDGE_OK
            || (ret = cast_to_low(g, b32, b, nb, g->compute)) != FEDGE_OK)
            goto cleanup;
    }
    if ((ret = gemm_rm(g, 0, 1, m, n, k, a, k, b, k, c, n, 0.0f)) != FEDGE_OK) /* warm-up */
        goto cleanup;
    cudaEventRecord(e0, g->compute);
    for (int i = 0; i < iters && ret == FEDGE_OK; i++)
        ret = gemm_rm(g, 0, 1, m, n, k, a, k, b, k, c, n, 0.0f);
    cudaEventRecord(e1, g->compute);
    if (ret == FEDGE_OK && (cudaEventSynchronize(e1) != cudaSuccess
                            || cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess))
        ret = FEDGE_ERR_CLUSTER_GPU;
    if (ret == FEDGE_OK)
        *tflops = 2.0 * m * (double)n * k * iters / (ms > 0 ? ms * 1e-3 : 1e-9) / 1e12;
cleanup:
    if (g->esize) {
        if (a != a32)
            cudaFree(a);
        if (b != b32)
            cudaFree(b);
    }
    cudaFree(a32);
    cudaFree(b32);
    cudaFree(c);
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    return ret;
}

static void gpu_destroy(fedge_backend *be)
{
    if (be == NULL)
        return;
    gpu_impl *g = G(be);
    if (g != NULL) {
        if (g->compute)
            cudaStreamSynchronize(g->compute);
        if (g->comm)
            cudaStreamSynchronize(g->comm);
        if (g->nccl_ok)
            ncclCommDestroy(g->nccl);
        if (g->blas)
            cublasDestroy(g->blas);
        void *bufs[] = {g->params, g->grads, g->velocity, g->wlow, g->act_block, g->alow_block,
                        g->dz, g->da, g->dz_low, g->y, g->row_loss, g->flag};
        for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
            if (bufs[i] != NULL)
                cudaFree(bufs[i]);
        if (g->host_loss)
            cudaFreeHost(g->host_loss);
        for (int l = 0; l < FEDGE_MODEL_MAX_LAYERS; l++)
            if (g->layer_done[l])
                cudaEventDestroy(g->layer_done[l]);
        if (g->comm_done)
            cudaEventDestroy(g->comm_done);
        if (g->update_done)
            cudaEventDestroy(g->update_done);
        if (g->compute)
            cudaStreamDestroy(g->compute);
        if (g->comm)
            cudaStreamDestroy(g->comm);
        free(g);
    }
    free(be);
}

static fedge_backend_ops make_ops(void)
{
    fedge_backend_ops o;
    memset(&o, 0, sizeof(o));
    o.name = "gpu";
    o.buf_alloc = gpu_buf_alloc;
    o.buf_free = gpu_buf_free;
    o.buf_upload = gpu_buf_upload;
    o.buf_download = gpu_buf_download;
    o.allreduce = gpu_allreduce;
    o.reduce_scatter = gpu_reduce_scatter;
    o.all_gather = gpu_all_gather;
    o.barrier = gpu_barrier;
    o.set_params = gpu_set_params;
    o.get_params = gpu_get_params;
    o.set_optim = gpu_set_optim;
    o.get_optim = gpu_get_optim;
    o.load_batch = gpu_load_batch;
    o.forward = gpu_forward;
    o.backward_layer = gpu_backward_layer;
    o.grad_comm_start = gpu_grad_comm_start;
    o.grad_comm_wait = gpu_grad_comm_wait;
    o.grad_nonfinite = gpu_grad_nonfinite;
    o.update = gpu_update;
    o.gather_params = gpu_gather_params;
    o.gemm_tflops = gpu_gemm_tflops;
    o.destroy = gpu_destroy;
    return o;
}

static const fedge_backend_ops gpu_ops = make_ops();

/* ---- creation ------------------------------------------------------------ */

extern "C" int fedge_gpu_device_count(int *count)
{
    FEDGE_CUDA_CHK(cudaGetDeviceCount(count));
    return FEDGE_OK;
}

static int select_device(int local_rank, int *device)
{
    int count = 0;
    FEDGE_CUDA_CHK(cudaGetDeviceCount(&count));
    if (count < 1)
        return FEDGE_ERR_CLUSTER_GPU;
    *device = local_rank % count;
    FEDGE_CUDA_CHK(cudaSetDevice(*device));
    return FEDGE_OK;
}

extern "C" int fedge_gpu_unique_id(int local_rank, unsigned char id[FEDGE_GPU_ID_BYTES])
{
    ncclUniqueId uid;
    int device;
    static_assert(sizeof(uid.internal) == FEDGE_GPU_ID_BYTES, "NCCL unique id size");
    int st = select_device(local_rank, &device);
    if (st != FEDGE_OK)
        return st;
    FEDGE_NCCL_CHK(ncclGetUniqueId(&uid));
    memcpy(id, uid.internal, FEDGE_GPU_ID_BYTES);
    return FEDGE_OK;
}

static int dev_alloc(void **p, size_t bytes)
{
    FEDGE_CUDA_CHK(cudaMalloc(p, bytes ? bytes : 1));
    FEDGE_CUDA_CHK(cudaMemset(*p, 0, bytes ? bytes : 1));
    return FEDGE_OK;
}

static int gpu_setup(fedge_backend *be, gpu_impl *g, const unsigned char id[FEDGE_GPU_ID_BYTES])
{
    const fedge_backend_config *cfg = &be->cfg;
    const fedge_dense_shape *sp = &g->shape;
    const fedge_layout *lo = &cfg->layout;
    const size_t rows = (size_t)cfg->local_batch_max;
    const size_t maxd = (size_t)fedge_layout_max_dim(&cfg->spec);
    const int L = sp->n_layers;
    int st;
    if ((st = select_device(cfg->local_rank, &g->device)) != FEDGE_OK)
        return st;
    switch (cfg->precision) {
    case FEDGE_PREC_BF16: g->ctype = CUDA_R_16BF; g->esize = 2; break;
    case FEDGE_PREC_FP16: g->ctype = CUDA_R_16F; g->esize = 2; break;
    default: g->ctype = CUDA_R_32F; g->esize = 0; break;
    }
    FEDGE_CUDA_CHK(cudaStreamCreateWithFlags(&g->compute, cudaStreamNonBlocking));
    FEDGE_CUDA_CHK(cudaStreamCreateWithFlags(&g->comm, cudaStreamNonBlocking));
    for (int l = 0; l < L; l++)
        FEDGE_CUDA_CHK(cudaEventCreateWithFlags(&g->layer_done[l], cudaEventDisableTiming));
    FEDGE_CUDA_CHK(cudaEventCreateWithFlags(&g->comm_done, cudaEventDisableTiming));
    FEDGE_CUDA_CHK(cudaEventCreateWithFlags(&g->update_done, cudaEventDisableTiming));
    g->last_layer = -1;
    FEDGE_BLAS_CHK(cublasCreate(&g->blas));
    FEDGE_BLAS_CHK(cublasSetStream(g->blas, g->compute));
    FEDGE_BLAS_CHK(cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH)); /* fp32 stays fp32: no TF32 */
    ncclUniqueId uid;
    memcpy(uid.internal, id, FEDGE_GPU_ID_BYTES);
    FEDGE_NCCL_CHK(ncclCommInitRank(&g->nccl, lo->world, uid, lo->rank));
    g->nccl_ok = 1;

    for (int l = 0; l <= L; l++)
        g->layer_off[l] = fedge_layout_layer_offset(&cfg->spec, l);
    /* the allocations of fedge_memory_plan_make(..., on_gpu = 1) */
    size_t act_floats = rows * fedge_layout_act_floats_per_row(&cfg->spec);
    size_t low_floats = rows * (fedge_layout_act_floats_per_row(&cfg->spec) - (size_t)sp->dims[L]);
    if ((st = dev_alloc((void **)&g->params, lo->n_pad * sizeof(float))) != FEDGE_OK
        || (st = dev_alloc((void **)&g->grads, lo->n_pad * sizeof(float))) != FEDGE_OK
        || (st = dev_alloc((void **)&g->velocity, be->opt_len * sizeof(float))) != FEDGE_OK
        || (st = dev_alloc((void **)&g->act_block, act_floats * sizeof(float))) != FEDGE_OK
        || (st = dev_alloc((void **)&g->dz, rows * maxd * sizeof(float))) != FEDGE_OK
        || (st = dev_alloc((void **)&g->da, rows * maxd * sizeof(float))) != FEDGE_OK
        || (st = dev_alloc((void **)&g->y, rows)) != FEDGE_OK
        || (st = dev_alloc((void **)&g->row_loss, rows * sizeof(float))) != FEDGE_OK
        || (st = dev_alloc((void **)&g->flag, sizeof(int))) != FEDGE_OK)
        return st;
    if (g->esize
        && ((st = dev_alloc(&g->wlow, lo->n_pad * g->esize)) != FEDGE_OK
            || (st = dev_alloc(&g->alow_block, low_floats * g->esize)) != FEDGE_OK
            || (st = dev_alloc(&g->dz_low, rows * maxd * g->esize)) != FEDGE_OK))
        return st;
    FEDGE_CUDA_CHK(cudaMallocHost((void **)&g->host_loss, rows * sizeof(float)));
    float *p = g->act_block;
    size_t low_off = 0;
    for (int l = 0; l <= L; l++) {
        g->act[l] = p;
        if (l < L)
            g->alow[l] = g->esize ? low_at(g, g->alow_block, low_off) : (void *)p;
        low_off += rows * (size_t)sp->dims[l];
        p += rows * (size_t)sp->dims[l];
    }
    fedge_memory_plan plan;
    fedge_memory_plan_make(&cfg->spec, lo, cfg->local_batch_max, cfg->precision, cfg->zero, 1, &plan);
    be->mem_bytes = plan.total;
    return FEDGE_OK;
}

extern "C" int fedge_backend_gpu_create(const fedge_backend_config *cfg,
                                        const unsigned char id[FEDGE_GPU_ID_BYTES],
                                        fedge_backend **out)
{
    if (cfg == NULL || id == NULL || out == NULL || cfg->local_batch_max < 1)
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    fedge_dense_shape shape;
    int sst = fedge_dense_shape_of(&cfg->spec, &shape); /* a CNN: FEDGE_ERR_UNSUPPORTED */
    if (sst != FEDGE_OK)
        return sst;
    fedge_backend *be = (fedge_backend *)calloc(1, sizeof(*be));
    gpu_impl *g = (gpu_impl *)calloc(1, sizeof(*g));
    if (be == NULL || g == NULL) {
        free(be);
        free(g);
        return FEDGE_ERR_NOMEM;
    }
    be->ops = &gpu_ops;
    be->cfg = *cfg;
    be->impl = g;
    g->shape = shape;
    be->opt_off = cfg->zero ? cfg->layout.own_off : 0;
    be->opt_len = cfg->zero ? cfg->layout.shard : cfg->layout.n_pad;
    int st = gpu_setup(be, g, id);
    if (st != FEDGE_OK) {
        gpu_destroy(be);
        return st;
    }
    *out = be;
    return FEDGE_OK;
}
