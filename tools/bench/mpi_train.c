/* bench-mpi_train — training throughput of the cluster trainer.
 *
 *   mpirun -np N bench-mpi_train [--backend cpu|gpu] [--precision fp32|bf16|fp16]
 *          [--spec mlp:784-1024-1024-10] [--batch B] [--steps S] [--rows R] [--zero]
 *
 * Writes a synthetic shard and a random model into a temporary folder, runs
 * fedge_refine_run on them, and reports samples/s and the achieved TFLOP/s
 * (6 * batch * weights per step, less the unneeded input gradient of the
 * first layer), against the baseline measured in the same run: the
 * backend's own GEMM rate (fedge_sgemm on the CPU, cuBLAS on the GPU, in
 * the run's precision) at the shape of the largest layer's forward GEMM. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster_backend.h"
#include "common.h"
#include "modelfile.h"
#include "shard.h"
#include "cluster_synth.h"
#include "cluster_trainer.h"

static int prepare(const char *dir, const char *spec_text, size_t rows, int dim,
                   int classes, char *model_path, char *data_path)
{
    fedge_dataset ds;
    fedge_model_spec spec;
    fedge_model m;
    fedge_rng rng;
    size_t *idx = NULL;
    int ret;
    memset(&ds, 0, sizeof(ds));
    memset(&m, 0, sizeof(m));
    CHK(fedge_model_spec_parse(spec_text, &spec));
    CHK(fedge_model_init(&m, &spec));
    fedge_rng_seed(&rng, 7);
    CHK(fedge_model_randomize(&m, &rng));
    CHK(fedge_model_save(&m, model_path, NULL));
    CHK(fedge_synthetic_dataset(&ds, rows, dim, classes, 11));
    idx = malloc(rows * sizeof(size_t));
    if (idx == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < rows; i++)
        idx[i] = i;
    CHK(fedge_shard_write(data_path, &ds, idx, rows, FEDGE_SHARD_U8));
    (void)dir;
cleanup:
    free(idx);
    fedge_dataset_free(&ds);
    fedge_model_free(&m);
    return ret;
}

int main(int argc, char **argv)
{
    const char *backend = "cpu", *spec_text = "mlp:784-1024-1024-10";
    int precision = FEDGE_PREC_FP32, batch = 256, zero = 0, rank, world, ret = FEDGE_OK;
    uint64_t steps = 30;
    size_t rows = 8192;
    char dir[256] = "", model_path[512], data_path[512], out_path[512];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (strcmp(argv[i], "--backend") == 0 && ++i)
            backend = v;
        else if (strcmp(argv[i], "--precision") == 0 && ++i)
            fedge_precision_parse(v, &precision);
        else if (strcmp(argv[i], "--spec") == 0 && ++i)
            spec_text = v;
        else if (strcmp(argv[i], "--batch") == 0 && ++i)
            batch = atoi(v);
        else if (strcmp(argv[i], "--steps") == 0 && ++i)
            steps = (uint64_t)atoll(v);
        else if (strcmp(argv[i], "--rows") == 0 && ++i)
            rows = (size_t)atoll(v);
        else if (strcmp(argv[i], "--zero") == 0)
            zero = 1;
    }
    fedge_model_spec spec;
    fedge_dense_shape sh;
    if (fedge_model_spec_parse(spec_text, &spec) != FEDGE_OK || batch < world || steps == 0
        || rows == 0 || !fedge_backend_available(backend)
        || fedge_dense_shape_of(&spec, &sh) != FEDGE_OK) { /* the backends: softmax/mlp only */
        if (rank == 0)
            fprintf(stderr, "usage: bench-mpi_train [--backend cpu|gpu] [--precision P] "
                            "[--spec SPEC] [--batch B] [--steps S] [--rows R] [--zero]\n");
        MPI_Finalize();
        return 2;
    }
    if (rank == 0) {
        snprintf(dir, sizeof(dir), "/tmp/fedge-bench-train-XXXXXX");
        if (mkdtemp(dir) == NULL)
            dir[0] = 0;
    }
    MPI_Bcast(dir, sizeof(dir), MPI_CHAR, 0, MPI_COMM_WORLD);
    if (dir[0] == 0) {
        MPI_Finalize();
        return 1;
    }
    snprintf(model_path, sizeof(model_path), "%s/model.bin", dir);
    snprintf(data_path, sizeof(data_path), "%s/train.shard", dir);
    snprintf(out_path, sizeof(out_path), "%s/out.bin", dir);
    if (rank == 0)
        ret = prepare(dir, spec_text, rows, spec.input_dim, spec.classes, model_path, data_path);
    MPI_Bcast(&ret, 1, MPI_INT, 0, MPI_COMM_WORLD);

    /* baseline: the backend's GEMM rate at the largest layer's forward shape */
    double gemm = 0;
    if (ret == FEDGE_OK) {
        fedge_backend_config bc;
        fedge_backend *be = NULL;
        int big = 0;
        for (int l = 1; l < sh.n_layers; l++)
            if ((double)sh.dims[l] * sh.dims[l + 1] > (double)sh.dims[big] * sh.dims[big + 1])
                big = l;
        memset(&bc, 0, sizeof(bc));
        fedge_model_spec_parse("softmax:2-2", &bc.spec);
        fedge_layout_init(&bc.layout, 6, world, rank);
        bc.local_batch_max = 1;
        bc.precision = precision;
        ret = fedge_backend_create(backend, &bc, &be);
        int local = batch / world;
        double flop = 2.0 * local * sh.dims[big + 1] * sh.dims[big];
        double want = strcmp(backend, "gpu") == 0 ? 2e12 : 4e9; /* about 0.3 s of work */
        int iters = want / flop < 5 ? 5 : (want / flop > 2000 ? 2000 : (int)(want / flop));
        MPI_Barrier(MPI_COMM_WORLD);
        if (ret == FEDGE_OK)
            ret = be->ops->gemm_tflops(be, local, sh.dims[big + 1], sh.dims[big], iters,
                                       &gemm);
        fedge_backend_destroy(be);
    }
    fedge_refine_config cfg;
    fedge_refine_summary sum;
    memset(&sum, 0, sizeof(sum));
    fedge_refine_config_defaults(&cfg);
    cfg.model_in = model_path;
    cfg.data_path = data_path;
    cfg.model_out = out_path;
    cfg.backend = backend;
    cfg.precision = precision;
    cfg.zero = zero;
    cfg.steps = steps;
    cfg.global_batch = batch;
    cfg.sgd.lr = 0.01f;
    if (ret == FEDGE_OK)
        ret = fedge_refine_run(&cfg, &sum);
    double gemm_all = 0;
    MPI_Allreduce(&gemm, &gemm_all, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
    if (rank == 0) {
        if (ret != FEDGE_OK) {
            fprintf(stderr, "bench-mpi_train: %s (%s)\n", fedge_strerror(ret), sum.where);
        } else {
            double per_rank = sum.achieved_tflops / world;
            printf("# bench-mpi_train %s %s %s, %d ranks, global batch %d, %s, %llu steps\n",
                   backend, fedge_precision_name(precision), spec_text, world, batch,
                   zero ? "ZeRO-1" : "unsharded", (unsigned long long)sum.steps_run);
            printf("samples_per_s %.1f\nachieved_tflops_total %.4f\nachieved_tflops_per_rank %.4f\n"
                   "gemm_tflops_per_rank %.4f\nratio_to_gemm %.3f\nmem_per_rank_bytes %zu\n"
                   "last_loss %.4f\n",
                   sum.samples_per_s, sum.achieved_tflops, per_rank, gemm_all,
                   gemm_all > 0 ? per_rank / gemm_all : 0.0, sum.mem_bytes, sum.last_loss);
        }
        unlink(model_path);
        unlink(data_path);
        unlink(out_path);
        rmdir(dir);
    }
    MPI_Finalize();
    return ret == FEDGE_OK ? 0 : 1;
}
