/* bench-mpi_progress — does a point-to-point message move while its sender
 * computes? (the pipeline model of cluster_plan_model.h assumes it does not)
 *
 *   mpirun -np 2 bench-mpi_progress [--compute-ms C]
 *
 * For sizes 1 KiB .. 256 KiB (x4), rank 0 sends to rank 1 two ways, 5 trials each:
 *   baseline  MPI_Isend then MPI_Wait at once (the sender blocks in MPI);
 *   deferred  MPI_Isend, C ms of compute without MPI calls, a second
 *             MPI_Isend (another tag), C ms more, then MPI_Waitall.
 * Rank 1 posts its receive before rank 0 sends and prints, per size, the
 * median time from the first send to the first message's arrival. With no
 * progress during compute, deferred reads about 2 C (it moves at the
 * Waitall, not at the second Isend); with progress, about the baseline. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_plan_model.h"

#define TRIALS 5

static void spin(double s)
{
    volatile double x = 0.0;
    const double t0 = MPI_Wtime();
    while (MPI_Wtime() - t0 < s)
        x += 1.0;
}

/* One trial; on rank 1 the arrival time of the first message after the
 * common start, seconds. */
static int trial(int rank, float *a, float *b, int n, int deferred, double c, double *out)
{
    MPI_Request q[2];
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    if (rc != MPI_SUCCESS)
        return rc;
    if (rank == 0) {
        rc = MPI_Isend(a, n, MPI_FLOAT, 1, 1, MPI_COMM_WORLD, &q[0]);
        if (rc == MPI_SUCCESS && !deferred)
            return MPI_Wait(&q[0], MPI_STATUS_IGNORE);
        spin(c);
        if (rc == MPI_SUCCESS)
            rc = MPI_Isend(b, n, MPI_FLOAT, 1, 2, MPI_COMM_WORLD, &q[1]);
        spin(c);
        return rc == MPI_SUCCESS ? MPI_Waitall(2, q, MPI_STATUSES_IGNORE) : rc;
    }
    if (rank == 1) {
        rc = MPI_Recv(a, n, MPI_FLOAT, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        *out = MPI_Wtime() - t0;
        if (rc == MPI_SUCCESS && deferred)
            rc = MPI_Recv(b, n, MPI_FLOAT, 0, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    return rc;
}

int main(int argc, char **argv)
{
    int rank = 0, world = 0, rc = MPI_Init(&argc, &argv);
    double c_ms = 5.0;
    if (rc != MPI_SUCCESS)
        return 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--compute-ms") == 0 && i + 1 < argc) {
            c_ms = atof(argv[++i]);
        } else {
            if (rank == 0)
                fprintf(stderr, "usage: bench-mpi_progress [--compute-ms C]\n");
            MPI_Finalize();
            return 2;
        }
    }
    if (world != 2 || !(c_ms > 0.0) || c_ms > 1000.0) {
        if (rank == 0)
            fprintf(stderr, "bench-mpi_progress: needs exactly 2 ranks and 0 < C <= 1000\n");
        MPI_Finalize();
        return 2;
    }
    const int max_n = 65536; /* floats: 256 KiB */
    float *a = calloc(max_n, sizeof(float)), *b = calloc(max_n, sizeof(float));
    int bad = a == NULL || b == NULL, any = 0;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any) {
        free(a);
        free(b);
        MPI_Finalize();
        return 1;
    }
    if (rank == 1)
        printf("# compute between sends: %.1f ms; median of %d trials\n"
               "%10s %14s %14s\n", c_ms, TRIALS, "bytes", "baseline_ms", "deferred_ms");
    for (int n = 256; n <= max_n && rc == MPI_SUCCESS; n *= 4) {
        double t[2][TRIALS] = {{0}};
        for (int mode = 0; mode < 2; mode++)
            for (int k = 0; k < TRIALS && rc == MPI_SUCCESS; k++)
                rc = trial(rank, a, b, n, mode, 1e-3 * c_ms, &t[mode][k]);
        if (rank == 1 && rc == MPI_SUCCESS)
            printf("%10zu %14.3f %14.3f\n", (size_t)n * sizeof(float),
                   1e3 * fedge_plan_median(t[0], TRIALS), 1e3 * fedge_plan_median(t[1], TRIALS));
    }
    free(a);
    free(b);
    MPI_Finalize();
    return rc == MPI_SUCCESS ? 0 : 1;
}
