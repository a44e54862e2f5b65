/* cluster_backend.h — the data-parallel trainer's compute and communication backend.
 *
 * One backend object per rank, created collectively by every rank of
 * MPI_COMM_WORLD (fedge_backend_create), destroyed by fedge_backend_destroy.
 * Two implementations behind one table of operations, chosen at run time:
 *   "cpu": host memory, the shared core's math (fedge_sgemm, fedge_sgd_update),
 *          MPI collectives (non-blocking ones for gradient buckets);
 *   "gpu": device memory, cuBLAS GEMMs in fp32/bf16/fp16 with fp32 master
 *          weights, NCCL collectives on a second CUDA stream
 *          (only when built with CUDA: FEDGE_HAVE_CUDA).
 *
 * The backend owns the training state, each one contiguous block laid out
 * by fedge_layout (cluster_layout.h): parameters and gradients (n_pad floats), the
 * momentum for [opt_off, opt_off + opt_len) (the owned slice with ZeRO-1,
 * everything without), activations for up to local_batch_max rows. With
 * ZeRO-1 the gradients are reduce-scattered in place: afterwards only the
 * owned slice of the gradient vector holds summed values. The training algorithm (bucket schedule, loss
 * scaling, checkpoints) lives once, in cluster_trainer.c, driving these hooks.
 *
 * Pointers passed to the communication operations are backend memory from
 * buf_alloc (device memory on the GPU). Every operation returns a fedge
 * status; a failed collective leaves the job unusable (the caller stops). */
#ifndef FEDGE_CLUSTER_BACKEND_H
#define FEDGE_CLUSTER_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "cluster_layout.h"
#include "model.h"
#include "optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fedge_backend fedge_backend;

typedef struct {
    fedge_model_spec spec;
    fedge_layout layout;   /* n, world, rank */
    int local_batch_max;   /* rows per rank per step, at most */
    int precision;         /* FEDGE_PREC_*; the cpu backend takes fp32 only */
    int zero;              /* 1: ZeRO-1 sharded optimizer state */
    int local_rank;        /* rank on this node: picks the GPU */
} fedge_backend_config;

typedef struct {
    const char *name;
    /* ---- communication, on backend memory (all ranks call, same order) */
    int (*buf_alloc)(fedge_backend *be, size_t n, float **out);
    void (*buf_free)(fedge_backend *be, float *p);
    int (*buf_upload)(fedge_backend *be, float *dst, const float *host, size_t n);
    int (*buf_download)(fedge_backend *be, float *host, const float *src, size_t n);
    int (*allreduce)(fedge_backend *be, float *buf, size_t n);          /* sum, in place */
    int (*reduce_scatter)(fedge_backend *be, const float *send, float *recv,
                          size_t per_rank);                             /* sum */
    int (*all_gather)(fedge_backend *be, float *buf, size_t per_rank); /* in place */
    int (*barrier)(fedge_backend *be);  /* also waits for queued device work */
    /* ---- training state */
    int (*set_params)(fedge_backend *be, const float *host);   /* n floats */
    int (*get_params)(fedge_backend *be, float *host);
    int (*set_optim)(fedge_backend *be, const float *host);    /* opt_len floats */
    int (*get_optim)(fedge_backend *be, float *host);
    /* ---- compute hooks, in this order each step */
    int (*load_batch)(fedge_backend *be, const float *x, const uint8_t *y, int rows);
    /* Forward pass and softmax cross-entropy: *loss_sum = summed loss of the
     * local rows; the output gradient is (p - onehot) * grad_weight. */
    int (*forward)(fedge_backend *be, float grad_weight, double *loss_sum);
    int (*backward_layer)(fedge_backend *be, int layer);  /* n_layers-1 down to 0 */
    /* Start summing gradient range [off, off+count) over ranks: allreduce
     * in place, or with ZeRO-1 reduce-scatter (each rank gets the sum of
     * the part it owns, at its place in the gradient vector). */
    int (*grad_comm_start)(fedge_backend *be, size_t off, size_t count);
    int (*grad_comm_wait)(fedge_backend *be);
    /* 1 if any reduced gradient this rank will apply is NaN or Inf. */
    int (*grad_nonfinite)(fedge_backend *be, int *flag);
    /* SGD on the owned range with gradient * grad_scale. */
    int (*update)(fedge_backend *be, const fedge_sgd_config *sgd, float grad_scale);
    /* ZeRO-1: all-gather the updated parameter slices. */
    int (*gather_params)(fedge_backend *be);
    /* ---- measurement: the GEMM rate of this backend's compute precision */
    int (*gemm_tflops)(fedge_backend *be, int m, int n, int k, int iters, double *tflops);
    void (*destroy)(fedge_backend *be);
} fedge_backend_ops;

struct fedge_backend {
    const fedge_backend_ops *ops;
    fedge_backend_config cfg;
    size_t opt_off, opt_len; /* global range of the momentum held here */
    size_t mem_bytes;        /* training state allocated, bytes */
    void *impl;
};

/* 1 if `name` ("cpu" or "gpu") is compiled in. */
int fedge_backend_available(const char *name);
/* Collective over MPI_COMM_WORLD. For "gpu", rank 0 makes the NCCL unique
 * id and broadcasts it with MPI. *out is freed by fedge_backend_destroy. */
int fedge_backend_create(const char *name, const fedge_backend_config *cfg,
                         fedge_backend **out);
void fedge_backend_destroy(fedge_backend *be);

/* Implementations (backend_cpu.c, gpu/backend_gpu.cu). */
int fedge_backend_cpu_create(const fedge_backend_config *cfg, fedge_backend **out);

#ifdef __cplusplus
}
#endif

#endif
