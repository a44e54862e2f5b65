/* gpu/mp_gpu.h — the GPU table of the model-parallel trainer
 * (cluster_mp_ops.h): cuBLAS sgemm (fp32, no TF32), small kernels, and one
 * NCCL communicator per grid axis. Sends are queued and issued together
 * with the next receive in one ncclGroupStart/End (as Megatron-LM's batched
 * p2p), so that two neighbouring stages that both send before they receive
 * cannot deadlock. cluster_mp.c bootstraps it over MPI: create (selects the
 * device local_rank % devices, allocates), agree, broadcast a unique id per
 * axis, connect. Only compiled in when FEDGE_HAVE_CUDA is set. */
#ifndef FEDGE_CLUSTER_MP_GPU_H
#define FEDGE_CLUSTER_MP_GPU_H

#include <stddef.h>

#include "cluster_mp_ops.h"
#include "gpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* labels_max: label bytes per step; rows_max: rows per micro-batch;
 * eager_sends: issue each send at once (GPipe), else queue it (1F1B). */
int fedge_mp_gpu_create(int local_rank, size_t labels_max, size_t rows_max, int eager_sends,
                        void **ctx);
/* Collective over each axis' communicator: size[a], rank[a] and the id of
 * its rank 0, for a = FEDGE_MP_AXIS_TP, _PP, _DP. */
int fedge_mp_gpu_connect(void *ctx, const int size[FEDGE_MP_AXES], const int rank[FEDGE_MP_AXES],
                         const unsigned char ids[FEDGE_MP_AXES][FEDGE_GPU_ID_BYTES]);
void fedge_mp_gpu_destroy(void *ctx);
/* A pointer kept for the caller (cluster_mp.c's MPI-staged messages). */
void fedge_mp_gpu_set_owner(void *ctx, void *owner);
void *fedge_mp_gpu_owner(void *ctx);
const fedge_mp_ops *fedge_mp_gpu_ops(void);

#ifdef __cplusplus
}
#endif

#endif
