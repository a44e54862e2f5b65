/* cluster_plan_model.h — the planner's MPI-free arithmetic (cluster_plan.c
 * measures, this predicts).
 *
 * fedge_plan_loglog: a collective's time at a message size from a table of
 * measured sizes, piecewise linear in log(bytes) -> log(seconds); below the
 * smallest size the smallest's time (the latency floor), above the largest
 * the largest's time scaled by bytes (bandwidth-bound).
 *
 * Measured times are first made non-decreasing in the size
 * (fedge_plan_monotone).
 *
 * fedge_pp_simulate: one step of a pipeline schedule, event by event, from
 * per-stage costs of one micro-batch. Each stage runs its operations in the
 * order cluster_mp.c does (GPipe: F0..F(M-1) then B(M-1)..B0; 1F1B: P-1-s
 * warm-up forwards, then F(m) B(m-warm) pairs, then the remaining backwards);
 * F(m) on stage s > 0 starts when the stage is free and stage s-1's F(m)
 * ended plus the forward message's time, B(m) on stage s < P-1 likewise after
 * stage s+1's B(m) plus the gradient message's time. With progress_in_wait
 * (Open MPI over shared memory, no progress thread: an MPI_Isend'd message
 * of 4 KiB or more was measured to move only while its sender was blocked in
 * MPI, not during its compute nor its next MPI_Isend) a message counts as sent only when its sender next starts an
 * operation that begins with a receive (F on s > 0, B on s < P-1), or at the
 * sender's end of step: stage 0's warm-up forwards and the last stage's
 * GPipe backwards reach their peer late. makespan is the last
 * end; busy[s] = M (fwd[s] + bwd[s]); the stage's idle fraction is
 * 1 - busy/makespan. Equal stages without messages (and without
 * progress_in_wait) give (P-1)/(M+P-1) for both schedules. No MPI; the
 * simulation allocates 2 P M doubles and 2 P M ints. */
#ifndef FEDGE_CLUSTER_PLAN_MODEL_H
#define FEDGE_CLUSTER_PLAN_MODEL_H

#include "cluster_grid.h"

#define FEDGE_PP_SIM_MAX_MICRO 4096

/* xs ascending, strictly positive, n >= 1; ys > 0. Returns seconds (< 0 on
 * bad input). */
double fedge_plan_loglog(const double *xs, const double *ys, int n, double at);

/* The least-squares non-decreasing fit of ys (pool adjacent violators), in
 * place: a larger message never takes less time, so a trial slowed by
 * another job is averaged with its neighbours. n > FEDGE_PLAN_MONO_MAX:
 * unchanged. */
#define FEDGE_PLAN_MONO_MAX 256
void fedge_plan_monotone(double *ys, int n);

/* The median of v[0..n), n >= 1 (the mean of the middle two when n is even);
 * sorts v in place (insertion sort: n is a handful of trials). */
double fedge_plan_median(double *v, int n);

/* v[0..n) taken as consecutive rounds of `group` trials (a trailing partial
 * round is dropped; group outside 1..n: one round of n): the median of the
 * rounds' medians. A round's median ignores a trial or two slowed by another
 * job; the median round is the typical one, the figure the planner predicts
 * with (a step a user runs meets the machine's usual disturbance, not its
 * quietest round). Overwrites v (each round's median lands in v[round]);
 * n < 1: -1. */
double fedge_plan_median_of_medians(double *v, int n, int group);

/* Oversubscription (more ranks on a node than cores they may run on):
 * fedge_plan_share is how many ranks take turns on one core,
 * ceil(ranks / cores); 1 when cores >= ranks, or either is < 1 (unknown).
 * fedge_plan_oversub_time: a span of compute_s of computing (timed with one
 * rank alone on its core) and comm_s in MPI calls (timed with all ranks at
 * once, so their descheduling is in it): share * compute_s + comm_s. */
int fedge_plan_share(int ranks, int cores);
double fedge_plan_oversub_time(double compute_s, double comm_s, int share);

/* The loader threads' reading charged to one step: each rank's prefetch
 * thread reads `rows` rows (row_s seconds each) per step; with a core to
 * spare for them (ranks < cores) it is hidden, else every core runs
 * fedge_plan_share(ranks, cores) ranks' threads beside their compute and
 * the step waits for the slowest: share * rows * row_s. ranks or cores < 1
 * (unknown), rows < 1 or row_s < 0: 0. */
double fedge_plan_loader_time(int ranks, int cores, int rows, double row_s);

/* A trial run of a layout (oversubscribed ranks, cluster_plan.c): `steps`
 * whole steps of the trainer (fedge_refine_run: its loader and prefetch
 * thread, status agreements and update) timed as `refine` times them,
 * `seconds` from before the first step to after the closing barrier and
 * first_ms the first step (buffers first touched, its batch unprefetched).
 * fedge_plan_trial_mean_ms: the mean of the steps after the first, ms -- the
 * mean step a longer run has, every descheduling of the window counted (a
 * median or the fastest of rounds drops them and under-predicts); -1 when
 * steps < 2, first_ms < 0 or the first step is the whole run.
 * fedge_plan_trial_steps: how many steps to run so the steps after the
 * first span target_s at step_ms each (the model's estimate), within
 * [lo, hi] (lo at least 2); step_ms or target_s <= 0: hi. */
double fedge_plan_trial_mean_ms(double seconds, double first_ms, int steps);
int fedge_plan_trial_steps(double step_ms, double target_s, int lo, int hi);

/* Whether to ask Open MPI to yield while a rank waits, decided before
 * MPI_Init from the launcher's environment: local_size is
 * OMPI_COMM_WORLD_LOCAL_SIZE (the ranks on this node), yield_set whether
 * OMPI_MCA_mpi_yield_when_idle is already set (the user's choice, kept),
 * cores the node's online CPUs. 1 when more ranks than cores share the node
 * and nothing is set: Open MPI yields on its own only when mpirun knows it
 * oversubscribes (--oversubscribe), not when a host list claims more slots
 * than cores, and busy-polling ranks on shared cores measured 20-60x slower
 * steps (docs/BENCHMARKS.md). local_size NULL or not a number, or cores < 1:
 * 0. */
int fedge_plan_should_yield(const char *local_size, int yield_set, long cores);

/* Which of a rank's n_cpus allowed CPUs (its affinity mask, in order) it
 * pins itself to when local_size ranks (OMPI_COMM_WORLD_LOCAL_SIZE) share
 * more than n_cpus: consecutive local ranks share a CPU (rank r on CPU
 * r * n_cpus / local_size). Left to the OS, 4 ranks on 2 cores wander
 * between placements whose steps differ by up to 1.4x (DP 2 x PP 2: 3.2-3.5
 * ms with ranks {0,1},{2,3} per core, 3.6 with {0,3},{1,2}, 4.2-4.5 with
 * {0,2},{1,3}; docs/BENCHMARKS.md), so neither a prediction nor a run is
 * repeatable. -1: no pinning (a CPU each, or a malformed argument: NULL or
 * non-numeric strings, n_cpus < 1, local_rank outside 0..local_size-1). */
int fedge_plan_bind_cpu(const char *local_rank, const char *local_size, int n_cpus);

typedef struct {
    int schedule;                        /* FEDGE_PP_GPIPE | FEDGE_PP_1F1B */
    int pp, micro;
    double fwd[FEDGE_GRID_MAX_PP];       /* seconds per micro-batch on stage s */
    double bwd[FEDGE_GRID_MAX_PP];
    double send_fwd[FEDGE_GRID_MAX_PP];  /* stage s -> s+1, activation */
    double send_bwd[FEDGE_GRID_MAX_PP];  /* stage s+1 -> s, its gradient */
    int progress_in_wait;  /* 1: a message moves only while its sender waits in MPI */
} fedge_pp_sim;

/* FEDGE_ERR_INVALID_ARG: pp outside 1..FEDGE_GRID_MAX_PP, micro outside
 * 1..FEDGE_PP_SIM_MAX_MICRO, a negative cost or an unknown schedule;
 * FEDGE_ERR_NOMEM. busy may be NULL. */
int fedge_pp_simulate(const fedge_pp_sim *in, double *makespan,
                      double busy[FEDGE_GRID_MAX_PP]);

#endif
