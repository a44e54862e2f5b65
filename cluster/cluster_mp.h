/* cluster_mp.h — model-parallel training of a dense chain: the DP x TP x PP
 * grid of cluster_grid.h, on the CPU over MPI or (cfg.gpu, a CUDA build) on
 * one GPU per rank over NCCL. The arithmetic and messages go through a table
 * of operations (cluster_mp_ops.h); the schedule is the same for both.
 *
 * Communicators per axis (MPI_Comm_split of MPI_COMM_WORLD): tp (same dp_i,
 * pp_i), pp (same dp_i, tp_i), dp (same tp_i, pp_i). One step takes this DP
 * replica's rows, cuts them into `micro` micro-batches and runs them through
 * the stages with the GPipe (all forwards, then all backwards) or 1F1B
 * schedule (at most pp micro-batches in flight per stage); boundary
 * activations go forward and their gradients back with MPI_Isend/Irecv
 * between ranks of the same tp_i. Tensor-parallel layers allreduce over tp
 * once forward after a row-parallel layer and once backward for the input
 * gradient of a column-parallel layer. Gradients of all micro-batches are
 * summed, then allreduced over dp; each rank updates its own 1/T (or its
 * stage's) parameters and momentum.
 *
 * Every function is collective over MPI_COMM_WORLD unless it says otherwise;
 * an MPI or NCCL failure returns FEDGE_ERR_CLUSTER_COMM, a CUDA one
 * FEDGE_ERR_CLUSTER_GPU. The GPU table is fp32 only. */
#ifndef FEDGE_CLUSTER_MP_H
#define FEDGE_CLUSTER_MP_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster_grid.h"
#include "cluster_mp_ops.h"
#include "optim.h"

typedef struct {
    fedge_dense_shape shape;
    fedge_grid_dims grid;
    int micro;            /* micro-batches per step */
    int schedule;         /* FEDGE_PP_GPIPE | FEDGE_PP_1F1B */
    int local_batch_max;  /* rows per DP replica per step, at most */
    int gpu;              /* 1: the GPU table (FEDGE_ERR_UNSUPPORTED without CUDA) */
    int local_rank;       /* rank on this node: device local_rank % devices */
    int gpu_comm_mpi;     /* gpu: messages staged through host memory and MPI, no
                           * NCCL (ranks may share a GPU: checks on one device) */
} fedge_mp_config;

typedef struct {
    double idle_s;        /* waiting on pipeline receives, this step */
    double step_s;        /* first forward to last backward, this step */
    double tp_s;          /* in tensor-parallel allreduces */
    double tp_payload, pp_payload, dp_payload; /* bytes handed to MPI, this step */
} fedge_mp_step_stats;

typedef struct fedge_mp fedge_mp;
struct fedge_mp {
    fedge_mp_config cfg;
    fedge_grid_coord at;
    fedge_shard_plan plan;
    MPI_Comm tp_comm, pp_comm, dp_comm;
    const fedge_mp_ops *ops;
    void *ctx;            /* the ops' first argument: this struct, or the GPU state */
    int slots, rows_mb_max;
    size_t mem_bytes;     /* allocated training state (fedge_mp_memory_plan) */
    /* in the table's memory */
    float *params, *grads, *velocity;
    float *act_block, *dz, *da;
    float *sm_mx, *sm_se; /* softmax scratch: rows_mb_max floats, 2 rows_mb_max doubles */
    float **act;          /* slots x (layers + 1): act[slot * (L+1) + l] */
    float **send_grad;    /* per slot, stage > 0 */
    /* host */
    float *host_local;    /* n_local floats: staging for set/gather */
    MPI_Request *fsend, *bsend; /* per slot, the cpu table's sends */
    fedge_mp_ops staged_ops;    /* gpu_comm_mpi: the gpu table with MPI messages */
    float *stage;         /* gpu_comm_mpi: stage_n floats, allreduce and recv */
    float *stage_send;    /* gpu_comm_mpi: slots x 2 x msg_n floats, sends in flight */
    size_t stage_n, msg_n;
};

int fedge_mp_create(const fedge_mp_config *cfg, fedge_mp **out);
void fedge_mp_destroy(fedge_mp *mp);

/* Local (not collective): this rank's share of a full parameter or momentum
 * vector in the model's layout. */
int fedge_mp_set_params(fedge_mp *mp, const float *full);
int fedge_mp_set_optim(fedge_mp *mp, const float *full);
/* The full vector on every rank (n floats); what: 0 params, 1 momentum. */
int fedge_mp_gather(fedge_mp *mp, int what, float *full, size_t n);

/* One step's forward and backward over this replica's `rows` rows (x is
 * rows x input, y their labels; only stage 0 reads x, only the last stage y),
 * then the DP gradient allreduce. The output gradient is
 * (p - onehot) * grad_weight; *loss_sum is the summed loss of the rows on the
 * last stage's TP rank 0, 0 elsewhere. */
int fedge_mp_step(fedge_mp *mp, const float *x, const uint8_t *y, int rows, float grad_weight,
                  double *loss_sum, fedge_mp_step_stats *st);
/* Local: *bad = 1 if a gradient of this rank is NaN or Inf. */
int fedge_mp_grad_nonfinite(fedge_mp *mp, int *bad);
/* Local: SGD on this rank's parameters. */
int fedge_mp_update(fedge_mp *mp, const fedge_sgd_config *sgd);

#endif
