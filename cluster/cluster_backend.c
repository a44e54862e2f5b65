/* cluster_backend.c — picks a backend by name and, for the GPU, bootstraps NCCL
 * over MPI: rank 0 makes the unique id, MPI_Bcast hands it to every rank. */
#include "cluster_backend.h"

#include <mpi.h>
#include <string.h>

#include "common.h"
#include "log.h"

#ifdef FEDGE_HAVE_CUDA
#include "gpu/gpu.h"
#endif

int fedge_backend_available(const char *name)
{
    if (name == NULL)
        return 0;
    if (strcmp(name, "cpu") == 0)
        return 1;
#ifdef FEDGE_HAVE_CUDA
    if (strcmp(name, "gpu") == 0)
        return 1;
#endif
    return 0;
}

#ifdef FEDGE_HAVE_CUDA
static int gpu_create(const fedge_backend_config *cfg, fedge_backend **out)
{
    unsigned char id[FEDGE_GPU_ID_BYTES];
    int st = FEDGE_OK, all = FEDGE_OK;
    memset(id, 0, sizeof(id));
    if (cfg->layout.rank == 0)
        st = fedge_gpu_unique_id(cfg->local_rank, id);
    if (MPI_Bcast(&st, 1, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    if (st != FEDGE_OK)
        return st;
    if (MPI_Bcast(id, FEDGE_GPU_ID_BYTES, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    st = fedge_backend_gpu_create(cfg, id, out);
    if (MPI_Allreduce(&st, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
        st = FEDGE_ERR_CLUSTER_COMM;
    if (st == FEDGE_OK && all != FEDGE_OK) {
        fedge_backend_destroy(*out);
        *out = NULL;
        st = all;
    }
    return st;
}
#endif

int fedge_backend_create(const char *name, const fedge_backend_config *cfg,
                         fedge_backend **out)
{
    if (name == NULL || cfg == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    if (strcmp(name, "cpu") == 0) {
        int st = fedge_backend_cpu_create(cfg, out), all = FEDGE_OK;
        if (MPI_Allreduce(&st, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
            all = FEDGE_ERR_CLUSTER_COMM;
        if (all != FEDGE_OK) {
            fedge_backend_destroy(*out);
            *out = NULL;
            return st != FEDGE_OK ? st : all;
        }
        return FEDGE_OK;
    }
    if (strcmp(name, "gpu") == 0) {
#ifdef FEDGE_HAVE_CUDA
        return gpu_create(cfg, out);
#else
        FEDGE_ERROR("cluster: this build has no GPU backend (build with CUDA=1)");
        return FEDGE_ERR_UNSUPPORTED;
#endif
    }
    return FEDGE_ERR_INVALID_ARG;
}

void fedge_backend_destroy(fedge_backend *be)
{
    if (be != NULL && be->ops != NULL && be->ops->destroy != NULL)
        be->ops->destroy(be);
}
