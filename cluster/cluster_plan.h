/* cluster_plan.h — choose a DP x TP x PP layout (and micro-batches) for a dense chain.
 *
 * fedge_plan_probe measures, on the ranks it runs on (collective over
 * MPI_COMM_WORLD): the time of every GEMM shape the candidate layouts would
 * run (all ranks at once, so an oversubscribed machine shows its real rate;
 * the slowest rank counts), MPI point-to-point latency and bandwidth (rank 0
 * <-> 1, ping-pong) and allreduce latency and bandwidth over all ranks
 * (t = alpha + 2(k-1)/k * bytes / beta). With one rank the links fall back to
 * 5 us and a host memcpy's bandwidth.
 *
 * Model of one step, per layout: a stage's micro-batch costs its GEMMs
 * (forward, weight gradient, input gradient of each of its layers at 1/T
 * width) plus its TP allreduces plus its two boundary messages; the pipeline
 * takes sum over stages + (M - 1) * slowest stage; then the DP allreduce of the
 * rank's gradients (not overlapped), the SGD update of its parameters and the
 * reading of its rows. Elementwise work (bias, ReLU, masks, softmax) is
 * costed per element from probes of the same loops. `bubble` is the stages'
 * mean idle fraction of the pipeline by this model (uneven stages and their
 * communication included), not the equal-stage theory. Memory per rank: cluster_grid.h's plan
 * (pure DP: cluster_layout.h's). Layouts are printed fastest first; the
 * choice is the fastest that fits the budget. */
#ifndef FEDGE_CLUSTER_PLAN_H
#define FEDGE_CLUSTER_PLAN_H

#include <stddef.h>
#include <stdio.h>

#include "cluster_grid.h"

#define FEDGE_PLAN_MAX 128
#define FEDGE_PLAN_MAX_COLL 96

enum { FEDGE_PLAN_ALLREDUCE = 0, FEDGE_PLAN_P2P = 1 };

/* One measured collective: an allreduce of `bytes` over `group` ranks, or a
 * one-way message of `bytes` (group 2); s: the median seconds per call. */
typedef struct {
    int kind, group;
    double bytes, s;
} fedge_plan_coll;

typedef struct {
    int dp, tp, pp, micro;
    double predict_ms, compute_ms, comm_ms, bubble;
    size_t mem_bytes;
    int fits;
} fedge_plan_layout;

typedef struct {
    double p2p_alpha, p2p_beta;   /* s, bytes/s */
    double ar_alpha, ar_beta;
    /* seconds per element, all ranks at once (slowest): bias + ReLU pass,
     * exp (softmax), SGD update, u8 -> f32 batch conversion (the loader) */
    double elem_s, exp_s, sgd_s, load_s;
    int probe_ranks;
    int n_coll, n_coll_asked;     /* sizes measured; distinct sizes the layouts issue */
    fedge_plan_coll coll[FEDGE_PLAN_MAX_COLL]; /* by kind, group, bytes */
} fedge_plan_links;

typedef struct {
    fedge_plan_links links;
    int n;
    fedge_plan_layout cand[FEDGE_PLAN_MAX];  /* sorted, fastest first */
    int choice;                              /* index, -1 if none fits */
} fedge_plan_result;

/* Collective: probes, enumerates, predicts. world: ranks to plan for;
 * budget_mb <= 0: no memory limit. */
int fedge_plan_run(const fedge_model_spec *spec, int batch, int world, double budget_mb,
                   fedge_plan_result *out);
void fedge_plan_print(FILE *f, const fedge_plan_result *r, double budget_mb);

#endif
