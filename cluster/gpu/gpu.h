/* gpu/gpu.h — the C face of the CUDA backend (gpu/backend_gpu.cu).
 *
 * No CUDA or MPI types cross this header: the MPI side (cluster_backend.c) asks
 * rank 0 for an NCCL unique id, broadcasts the bytes with MPI_Bcast, and
 * every rank then creates its backend from them (as nccl-tests and llm.c do).
 * Only compiled in when FEDGE_HAVE_CUDA is set. */
#ifndef FEDGE_CLUSTER_GPU_H
#define FEDGE_CLUSTER_GPU_H

#include "cluster_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FEDGE_GPU_ID_BYTES 128 /* NCCL_UNIQUE_ID_BYTES */

int fedge_gpu_device_count(int *count);
/* Selects the device for local_rank before making the id. */
int fedge_gpu_unique_id(int local_rank, unsigned char id[FEDGE_GPU_ID_BYTES]);
int fedge_backend_gpu_create(const fedge_backend_config *cfg,
                             const unsigned char id[FEDGE_GPU_ID_BYTES],
                             fedge_backend **out);

#ifdef __cplusplus
}
#endif

#endif
