/* cluster_trainer.h — refinement of a model on a shard file over MPI ranks.
 *
 * fedge_refine_run is collective over MPI_COMM_WORLD (the caller has called
 * MPI_Init): every rank loads the input model, streams its slice of each
 * global batch (cluster_loader.h), computes gradients on its backend, and the
 * gradients are summed bucket by bucket while the backward pass goes on.
 * Without ZeRO-1 every rank applies the same SGD step to all parameters;
 * with it each rank updates its own slice of parameters and momentum and the
 * slices are all-gathered. The gradient is the mean over the global batch,
 * so the result matches single-process training on the same batches, for
 * any number of ranks.
 *
 * With tp, pp or micro > 1 the ranks form a DP x TP x PP grid and the step
 * runs on the model-parallel path (cluster_mp.h; CPU, dense chains): the
 * same batches, loss and SGD rule, checkpoints of full tensors that any
 * layout resumes from, and the per-rank memory checked against
 * memory_budget_mb before anything is allocated (both paths).
 *
 * With a checkpoint folder the run writes a checkpoint every ckpt_every
 * steps (cluster_checkpoint.h) and, when started, resumes from the newest complete
 * one of the same job (same input model, data and hyperparameters; any
 * number of ranks). Rank 0 writes the output model. */
#ifndef FEDGE_CLUSTER_TRAINER_H
#define FEDGE_CLUSTER_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#include "hash.h"
#include "cluster_grid.h"
#include "cluster_layout.h"
#include "optim.h"

typedef struct {
    const char *model_in;
    const char *data_path;
    const char *model_out;      /* NULL: nothing written (the planner's trial steps) */
    const char *ckpt_dir;       /* NULL: no checkpoints, no resume */
    const char *eval_path;      /* NULL: no evaluation */
    const char *backend;        /* "cpu" | "gpu" */
    int precision;              /* FEDGE_PREC_* */
    int zero;                   /* ZeRO-1 */
    uint64_t steps;             /* 0: derive from epochs */
    double epochs;
    int global_batch;
    fedge_sgd_config sgd;
    uint64_t seed;
    double bucket_mb;           /* <= 0: one bucket */
    uint64_t ckpt_every;        /* 0: no periodic checkpoints */
    int ckpt_keep;
    int prefetch;
    double loss_scale;          /* fp16: initial dynamic loss scale */
    int loss_scale_window;      /* fp16: good steps before the scale doubles */
    int64_t fail_at_step;       /* test hook: rank fail_rank calls abort() there; -1 off */
    int fail_rank;
    int log_every;              /* 0: quiet */
    /* layout (cluster_grid.h): dp = world / (tp * pp); tp, pp or micro > 1
     * trains on the model-parallel path (cluster_mp.h, dense chains; cpu, or
     * gpu in fp32) */
    int tp, pp, micro;
    int pp_schedule;            /* FEDGE_PP_GPIPE | FEDGE_PP_1F1B */
    double memory_budget_mb;    /* > 0: refuse a layout whose per-rank state exceeds it */
    int lr_scaling;             /* FEDGE_LR_CONSTANT | FEDGE_LR_LINEAR */
    uint64_t warmup_steps;
    int lr_base_batch;          /* 0: one replica's micro-batch, B / (dp * micro) */
    int gpu_comm_mpi;           /* gpu model-parallel path: messages through host MPI */
} fedge_refine_config;

/* Phases of a step, timed with a clock read at each boundary: waiting for
 * the loader's batch, copying it in, forward (with the loss), backward, the
 * gradient allreduce (its start and wait), the non-finite check with the
 * status allreduce(s), the SGD update (with a ZeRO gather). The
 * model-parallel path has no copy, forward or backward phase of its own: its
 * `pipeline` runs from the first forward to the last backward (the
 * micro-batches' forwards, backwards, TP allreduces and pipeline messages,
 * as fedge_mp_step_stats.step_s), its grad_allreduce the wait for the last
 * sends and the DP allreduce, its status the four agreements. */
enum { FEDGE_PHASE_LOAD, FEDGE_PHASE_COPY, FEDGE_PHASE_FWD, FEDGE_PHASE_BWD, FEDGE_PHASE_GRAD_AR,
       FEDGE_PHASE_STATUS, FEDGE_PHASE_UPDATE, FEDGE_PHASE_PIPE, FEDGE_PHASES };

typedef struct {
    int world;
    uint64_t total_steps, start_step, steps_run;
    int resumed;
    double first_loss, last_loss;
    double seconds, samples_per_s, achieved_tflops;
    uint64_t skipped_steps;
    double loss_scale;
    uint64_t checkpoints;
    size_t mem_bytes;            /* this rank's training state, measured */
    fedge_memory_plan plan;      /* the same, by component */
    fedge_memory_plan unsharded; /* what it would be without ZeRO-1 */
    char version_hex[FEDGE_HASH_HEX_LEN];
    int evaluated;
    double eval_acc_before, eval_acc, eval_loss;
    char where[160];             /* what failed, on error */
    int dp, tp, pp, micro;
    int effective_batch, lr_base_batch;
    double lr_final;             /* the rate of the last step run */
    /* model-parallel path: per stage, idle time on pipeline receives over
     * step time, averaged over the run; bytes per step summed over ranks */
    double bubble[FEDGE_MODEL_MAX_LAYERS];
    double bubble_theory;
    double bubble_model[FEDGE_MODEL_MAX_LAYERS]; /* stages as cut (cluster_grid.h) */
    double step_ms;
    double step_ms_min;          /* fastest whole step (any path): the figure least
                                    disturbed by other jobs on a shared machine */
    double tp_seconds;           /* time in TP allreduces, the largest over the ranks */
    double bytes_tp, bytes_pp, bytes_dp;          /* measured payload */
    double bytes_tp_an, bytes_pp_an, bytes_dp_an; /* analytic (cluster_grid.h) */
    /* ms per step in each phase (FEDGE_PHASE_*), the mean over the steps run
     * and the fastest (each phase's own), the largest over the ranks */
    double phase_ms[FEDGE_PHASES], phase_ms_min[FEDGE_PHASES];
    double step_ms_first;        /* the run's first step (first touch of the buffers, the
                                    loader's first batch unprefetched, MPI's first messages) */
} fedge_refine_summary;

void fedge_refine_config_defaults(fedge_refine_config *cfg);
int fedge_refine_run(const fedge_refine_config *cfg, fedge_refine_summary *sum);

/* FLOPs of one training step over `rows` rows (forward, weight and input
 * gradients), counting a multiply-add as 2. */
double fedge_refine_step_flops(const fedge_model_spec *spec, int rows);

#endif
