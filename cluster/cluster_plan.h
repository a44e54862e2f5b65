/* cluster_plan.h — choose a DP x TP x PP layout (and micro-batches) for a dense chain.
 *
 * fedge_plan_run probes, on the ranks it runs on (collective over
 * MPI_COMM_WORLD): each pipeline stage's micro-batch (its layers' GEMMs at
 * 1/T width and the loops around them, on buffers laid out as cluster_mp.c's)
 * at the rows the candidate layouts use, each piece (a layer's forward or
 * backward, the softmax) its median pass; per-element costs of the loops
 * outside the stages; the trainer's loader per row; every compute figure is
 * the median pass of the slowest rank (the typical step, which waits for its
 * slowest rank). Every collective at the sizes the layouts
 * issue: each TP allreduce (micro-batch rows x width x 4 B over the TP
 * group), the split softmax's two (rows x 4 B, rows x 16 B), the DP gradient
 * allreduce (the largest shard), the per-step status allreduce over all
 * ranks and each pipeline boundary message (ping-pong, one way). Allreduces
 * run on groups of neighbouring ranks, all groups at once; messages between
 * ranks 2i and 2i+1, all pairs at once; 12 rounds over all sizes of 2 trials
 * each, the median of the round medians (fedge_plan_median_of_medians), the slowest
 * rank's, then made non-decreasing in the size. A (kind, group)
 * asked for more than 12 sizes is measured at 12 spread evenly in log between
 * its smallest and largest; every size is read off the measured ones in
 * log-log (cluster_plan_model.h). Groups the probing ranks cannot form
 * (plan --ranks larger than the job) and a one-rank job use an alpha-beta fit
 * (ping-pong and allreduce at 8 B and 1 MiB; one rank: 5 us and a memcpy's
 * bandwidth). The pure data-parallel layout is probed whole on the trainer's
 * cpu backend (its loops differ from the model-parallel path's) and takes
 * its forward, backward, update and allreduce (median pass, from a barrier)
 * from there. Oversubscription (more ranks on a node than the
 * cores in their affinity masks) is printed and modelled: compute probes run
 * one rank per core at a time and compute is multiplied by
 * ceil(ranks / cores); the collectives keep their all-ranks figures. That
 * model is printed beside, not used: when the plan is for the ranks it runs
 * on, every layout that fits is run by the trainer itself (fedge_refine_run
 * on a synthetic shard: loader and prefetch thread, agreements, update) for
 * 20-120 steps (about 0.2 s by the model) and predict_ms is the mean of the
 * steps after the first, timed as `refine` times them (`trial`;
 * fedge_plan_trial_mean_ms), since with ranks sharing cores the OS
 * scheduler decides who runs while a rank waits in MPI; a plan for more
 * ranks than it runs on keeps the model and marks it unverified. With no core to spare
 * for the ranks' loader threads (ranks on a node >= cores) their reading is
 * added to every step (fedge_plan_loader_time).
 *
 * Model of one step, per layout: a stage's micro-batch costs, forward, its
 * GEMMs, elementwise work and row-parallel (and split-softmax) allreduces;
 * backward, its weight- and input-gradient GEMMs, elementwise work and
 * column-parallel allreduces. The 1F1B schedule is simulated event by event
 * with these costs and the boundary messages' measured times, a message of
 * 4 KiB or more (above Open MPI's eager limit) moving only once its sender
 * blocks in MPI (fedge_pp_simulate, progress_in_wait); to its makespan are added the DP allreduce (not
 * overlapped), the per-step status allreduces (4 on the model-parallel path,
 * 1 on pure DP), the SGD update, zeroing and non-finite check of the rank's
 * parameters and the reading of its rows. `bubble` is the stages' mean idle
 * fraction of the simulated pipeline. Memory per rank: cluster_grid.h's plan
 * (pure DP: cluster_layout.h's). Layouts are printed fastest first; the choice
 * is the fastest that fits the budget. */
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
    /* the prediction's terms, ms per step on the busiest rank: forward and
     * backward (compute and their TP allreduces, summed over the stage's
     * micro-batches; the pipeline's idle is predict_ms less the others),
     * the DP gradient allreduce, the status allreduces, the SGD update with
     * zeroing and the non-finite check, the reading of the rows */
    double fwd_ms, bwd_ms, grad_ar_ms, status_ms, update_ms, load_ms;
    /* the simulated pipeline, first forward to last backward (forward and
     * backward with the idle between): the trainer's `pipeline` phase on
     * the model-parallel path */
    double pipe_ms;
    /* trial: 1 when predict_ms was measured by running the layout's steps
     * (oversubscribed ranks: the scheduler, not the model, decides; see
     * fedge_plan_run), model_ms then the model's figure and trial_fast_ms
     * the fastest step */
    int trial;
    double model_ms, trial_fast_ms;
    /* the loader threads' work charged to the step (0 with a core to spare
     * for them), ms per step; included in predict_ms (trial rows: in the
     * measured steps, as the model's term only) */
    double loader_ms;
    int trial_steps;  /* trial: the steps the trainer ran (the mean leaves out the first) */
} fedge_plan_layout;

typedef struct {
    double p2p_alpha, p2p_beta;   /* s, bytes/s */
    double ar_alpha, ar_beta;
    /* seconds per element, all ranks at once (slowest): bias + ReLU pass,
     * exp (softmax), SGD update, u8 -> f32 batch conversion (the loader) */
    double elem_s, exp_s, sgd_s, load_s;
    int probe_ranks;
    /* the pure data-parallel step measured on the trainer's cpu backend at
     * dp_rows rows per rank, all ranks at once: forward, backward, the
     * batch copy-in, the non-finite check, the SGD update (the median
     * pass, the slowest rank) and the gradient allreduce as the trainer
     * issues it (MPI_Iallreduce, one bucket; median); dp_rows 0: not run */
    int dp_rows;
    double dp_fwd_s, dp_bwd_s, dp_copy_s, dp_update_s, dp_check_s, dp_ar_s;
    /* oversubscription: the most ranks on a node, the cores they may run on
     * (the union of their sched_getaffinity masks), share = ceil(ranks /
     * cores); with share > 1 the compute probes run one rank per core at a
     * time and the model multiplies compute by share (the collectives,
     * timed on all ranks at once, carry their descheduling); node_rank:
     * this rank's */
    int node_ranks, cores, share, node_rank;
    /* the loader thread's work per row (the trainer's loader on a u8 shard
     * written to TMPDIR: the keyed order, one pread, the conversion),
     * median step, slowest rank; with no core to spare for the loader threads
     * (ranks on a node >= cores) their rows are added to the step */
    double row_read_s;
    double check_s;   /* per element: the non-finite check of the gradients */
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
