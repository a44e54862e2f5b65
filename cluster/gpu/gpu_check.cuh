/* gpu_check.cuh — what every CUDA file of the cluster shares: a fedge status
 * from a CUDA, cuBLAS or NCCL call (logged with the call's text, returned
 * from the calling function), the grid-stride loop, and the launch size.
 * The including file defines FEDGE_GPU_WHERE, the log prefix ("gpu"). */
#ifndef FEDGE_CLUSTER_GPU_CHECK_CUH
#define FEDGE_CLUSTER_GPU_CHECK_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

extern "C" {
#include "error.h"
#include "log.h"
}

#define FEDGE_GPU_THREADS 256

#define FEDGE_CUDA_CHK(expr)                                                                \
    do {                                                                                    \
        cudaError_t e_ = (expr);                                                            \
        if (e_ != cudaSuccess) {                                                            \
            FEDGE_ERROR("%s: %s failed: %s", FEDGE_GPU_WHERE, #expr, cudaGetErrorString(e_)); \
            return FEDGE_ERR_CLUSTER_GPU;                                                   \
        }                                                                                   \
    } while (0)

#define FEDGE_BLAS_CHK(expr)                                                                \
    do {                                                                                    \
        cublasStatus_t s_ = (expr);                                                         \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                  \
            FEDGE_ERROR("%s: %s failed: cuBLAS status %d", FEDGE_GPU_WHERE, #expr, (int)s_); \
            return FEDGE_ERR_CLUSTER_GPU;                                                   \
        }                                                                                   \
    } while (0)

#define FEDGE_NCCL_CHK(expr)                                                                \
    do {                                                                                    \
        ncclResult_t r_ = (expr);                                                           \
        if (r_ != ncclSuccess) {                                                            \
            FEDGE_ERROR("%s: %s failed: %s", FEDGE_GPU_WHERE, #expr, ncclGetErrorString(r_)); \
            return FEDGE_ERR_CLUSTER_COMM;                                                  \
        }                                                                                   \
    } while (0)

#define FEDGE_GRID_STRIDE(i, n)                                                             \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);                 \
         i += (size_t)gridDim.x * blockDim.x)

/* Blocks of FEDGE_GPU_THREADS for n elements, 1 .. 8192 (the kernels stride). */
static inline unsigned fedge_gpu_blocks(size_t n)
{
    size_t b = (n + FEDGE_GPU_THREADS - 1) / FEDGE_GPU_THREADS;
    return (unsigned)(b < 1 ? 1 : (b > 8192 ? 8192 : b));
}

#endif
