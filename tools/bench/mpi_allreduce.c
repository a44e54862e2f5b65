/* bench-mpi_allreduce — collective bandwidth of a cluster backend, reported
 * the way nccl-tests does it:
 *   algbw = bytes / time
 *   busbw = algbw * 2(N-1)/N  (allreduce), algbw * (N-1)/N (reduce-scatter,
 *           all-gather; bytes = the whole vector)
 * for message sizes from --min to --max (default 4 KB .. 256 MB). The
 * baseline, measured in the same run, is a single-rank host memcpy of the
 * same size on every rank at once (the slowest rank's figure): busbw / memcpy says how close the collective gets to moving the
 * data once through memory.
 *
 *   mpirun -np 4 bench-mpi_allreduce [--backend cpu|gpu] [--op allreduce|
 *          reduce_scatter|all_gather] [--min BYTES] [--max BYTES] [--factor F]
 *
 * Every size is first checked for the right sums (rank r contributes r+1). */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_backend.h"
#include "common.h"

static double now(void) { return MPI_Wtime(); }

static size_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (*end == 'K' || *end == 'k')
        v *= 1024;
    else if (*end == 'M' || *end == 'm')
        v *= 1048576;
    else if (*end == 'G' || *end == 'g')
        v *= 1073741824.0;
    return v > 0 ? (size_t)v : 0;
}

static double memcpy_gbps(size_t bytes)
{
    char *a = malloc(bytes), *b = malloc(bytes);
    double best = 0;
    if (a == NULL || b == NULL) {
        free(a);
        free(b);
        return 0;
    }
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    size_t it = ((size_t)1 << 27) / bytes;
    int iters = it < 5 ? 5 : (it > 100000 ? 100000 : (int)it);
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (int i = 0; i < iters; i++) {
            memcpy(b, a, bytes);
            __asm__ volatile("" : : "r"(b) : "memory"); /* keep every copy */
        }
        double dt = now() - t0;
        double gbps = (double)bytes * iters / dt / 1e9;
        best = gbps > best ? gbps : best;
    }
    free(a);
    free(b);
    return best;
}

int main(int argc, char **argv)
{
    const char *backend = "cpu", *op = "allreduce";
    size_t min_b = 4096, max_b = 256u << 20;
    int factor = 4, rank, world, ret = FEDGE_OK;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--backend") == 0)
            backend = argv[i + 1];
        else if (strcmp(argv[i], "--op") == 0)
            op = argv[i + 1];
        else if (strcmp(argv[i], "--min") == 0)
            min_b = parse_size(argv[i + 1]);
        else if (strcmp(argv[i], "--max") == 0)
            max_b = parse_size(argv[i + 1]);
        else if (strcmp(argv[i], "--factor") == 0)
            factor = atoi(argv[i + 1]);
    }
    int kind = strcmp(op, "allreduce") == 0 ? 0 : strcmp(op, "reduce_scatter") == 0 ? 1
             : strcmp(op, "all_gather") == 0 ? 2 : -1;
    if (kind < 0 || factor < 2 || min_b < 4 || max_b < min_b || !fedge_backend_available(backend)) {
        if (rank == 0)
            fprintf(stderr, "usage: bench-mpi_allreduce [--backend cpu|gpu] [--op allreduce|"
                            "reduce_scatter|all_gather] [--min B] [--max B] [--factor F]\n");
        MPI_Finalize();
        return 2;
    }
    /* a one-parameter model: the backend is only used for its collectives */
    fedge_backend_config bc;
    fedge_backend *be = NULL;
    memset(&bc, 0, sizeof(bc));
    fedge_model_spec_parse("softmax:2-2", &bc.spec);
    fedge_layout_init(&bc.layout, fedge_model_spec_param_count(&bc.spec), world, rank);
    bc.local_batch_max = 1;
    bc.precision = FEDGE_PREC_FP32;
    ret = fedge_backend_create(backend, &bc, &be);
    if (ret != FEDGE_OK) {
        if (rank == 0)
            fprintf(stderr, "bench-mpi_allreduce: backend %s: %s\n", backend, fedge_strerror(ret));
        MPI_Finalize();
        return 1;
    }
    const double bus_factor = kind == 0 ? 2.0 * (world - 1) / world : (double)(world - 1) / world;
    if (rank == 0) {
        printf("# %s over %s, %d ranks; busbw = algbw * %s; baseline = host memcpy\n", op,
               backend, world, kind == 0 ? "2(N-1)/N" : "(N-1)/N");
        printf("# %12s %8s %6s %12s %10s %10s %12s %8s %s\n", "bytes", "floats", "iters",
               "time_us", "algbw_GBs", "busbw_GBs", "memcpy_GBs", "bus/mcp", "check");
    }
    for (size_t bytes = min_b; bytes <= max_b && ret == FEDGE_OK; bytes *= (size_t)factor) {
        size_t n = bytes / sizeof(float);
        n = (n + (size_t)world - 1) / (size_t)world * (size_t)world; /* divisible by N */
        size_t per = n / (size_t)world;
        float *dev = NULL, *out = NULL;
        float *host = malloc(n * sizeof(float));
        int ok = 1;
        if (host == NULL || (ret = be->ops->buf_alloc(be, n, &dev)) != FEDGE_OK
            || (kind == 1 && (ret = be->ops->buf_alloc(be, per, &out)) != FEDGE_OK)) {
            ret = ret != FEDGE_OK ? ret : FEDGE_ERR_NOMEM;
            free(host);
            be->ops->buf_free(be, dev);
            break;
        }
        /* correctness: rank r contributes r + 1 everywhere */
        for (size_t i = 0; i < n; i++)
            host[i] = (float)(rank + 1);
        be->ops->buf_upload(be, dev, host, n);
        if (kind == 0) {
            ret = be->ops->allreduce(be, dev, n);
            be->ops->buf_download(be, host, dev, n);
            for (size_t i = 0; i < n; i += 1 + n / 97)
                ok &= host[i] == (float)(world * (world + 1) / 2);
        } else if (kind == 1) {
            ret = be->ops->reduce_scatter(be, dev, out, per);
            be->ops->buf_download(be, host, out, per);
            for (size_t i = 0; i < per; i += 1 + per / 97)
                ok &= host[i] == (float)(world * (world + 1) / 2);
        } else {
            ret = be->ops->all_gather(be, dev, per);
            be->ops->buf_download(be, host, dev, n);
            for (size_t i = 0; i < n; i += 1 + n / 97)
                ok &= host[i] == (float)(i / per + 1);
        }
        int iters = (int)(((size_t)1 << 28) / bytes);
        iters = iters < 3 ? 3 : (iters > 200 ? 200 : iters);
        for (int w = 0; w < 2 && ret == FEDGE_OK; w++) /* warm-up */
            ret = kind == 0 ? be->ops->allreduce(be, dev, n)
                : kind == 1 ? be->ops->reduce_scatter(be, dev, out, per)
                            : be->ops->all_gather(be, dev, per);
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = now();
        for (int it = 0; it < iters && ret == FEDGE_OK; it++)
            ret = kind == 0 ? be->ops->allreduce(be, dev, n)
                : kind == 1 ? be->ops->reduce_scatter(be, dev, out, per)
                            : be->ops->all_gather(be, dev, per);
        double dt = (now() - t0) / iters, worst;
        MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        int all_ok;
        MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        /* every rank copies at once: the baseline shares the cores the
         * collective had (oversubscribed runs included); the slowest counts */
        double mine_mc = memcpy_gbps(n * sizeof(float)), mc = 0;
        MPI_Allreduce(&mine_mc, &mc, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
        if (rank == 0) {
            double algbw = (double)n * sizeof(float) / worst / 1e9;
            printf("  %12zu %8zu %6d %12.1f %10.3f %10.3f %12.3f %8.3f %s\n", n * sizeof(float),
                   n, iters, worst * 1e6, algbw, algbw * bus_factor, mc,
                   mc > 0 ? algbw * bus_factor / mc : 0.0, all_ok ? "ok" : "WRONG");
            fflush(stdout);
        }
        if (!all_ok)
            ret = FEDGE_ERR_INTERNAL;
        be->ops->buf_free(be, dev);
        be->ops->buf_free(be, out);
        free(host);
    }
    fedge_backend_destroy(be);
    MPI_Finalize();
    return ret == FEDGE_OK ? 0 : 1;
}
