/* cluster_grid.h — the DP x TP x PP rank grid and how a dense chain is cut over it.
 *
 * world = dp * tp * pp ranks; rank = (dp_i * pp + pp_i) * tp + tp_i, so the
 * tensor-parallel group (same dp_i, pp_i) is made of neighbouring ranks.
 *
 * Pipeline: the dense layers are cut into pp contiguous stages, balanced by
 * FLOPs: a layer costs its weights times 2 (forward, weight gradient), times 3
 * above the first layer (also the input gradient).
 *
 * Tensor parallelism (Megatron-LM): dense layers go in pairs, the first
 * column-parallel (rank t holds output rows [t*out/T, (t+1)*out/T) of W and
 * that slice of b), the second row-parallel (input columns [t*in/T, ...) of W;
 * b whole, added once after the forward allreduce). An unpaired last layer
 * (an odd number of layers) is column-parallel as well: each TP rank holds
 * 1/T of the logits and the softmax cross-entropy is computed from an
 * allreduce of the per-row maxima and one of the per-row sums of exp (and the
 * label's logit), without gathering the logits. Pairing is global (layer l is
 * column-parallel when l is even, row-parallel when odd), independent of the
 * stages: a stage boundary inside a pair carries the column-split activation
 * from TP rank t to TP rank t. FEDGE_TP_FULL is the mode of every layer at tp 1.
 *
 * A rank's local vector holds, for each layer of its stage, W_local
 * (out_n x in_n, row-major) then b_local (out_n floats). Replicated tensors
 * (the row-parallel layers' b) have one owner per TP group (tp_i 0),
 * which writes them into the full vector (fedge_shard_put).
 *
 * Pure arithmetic: no MPI, no allocation. */
#ifndef FEDGE_CLUSTER_GRID_H
#define FEDGE_CLUSTER_GRID_H

#include <stddef.h>

#include "cluster_layout.h"

#define FEDGE_GRID_MAX_PP FEDGE_MODEL_MAX_LAYERS

typedef struct {
    int dp, tp, pp;
} fedge_grid_dims;

typedef struct {
    int dp_i, tp_i, pp_i;
} fedge_grid_coord;

/* dp = world / (tp * pp); FEDGE_ERR_INVALID_ARG when tp * pp does not divide world. */
int fedge_grid_make(int world, int tp, int pp, fedge_grid_dims *out);
void fedge_grid_coord_of(const fedge_grid_dims *g, int rank, fedge_grid_coord *c);
int fedge_grid_rank_of(const fedge_grid_dims *g, int dp_i, int tp_i, int pp_i);

enum { FEDGE_TP_FULL = 0, FEDGE_TP_COL = 1, FEDGE_TP_ROW = 2 };
const char *fedge_tp_mode_name(int mode);

/* first[0..pp]: stage s has layers [first[s], first[s+1]); minimises the
 * largest stage's FLOPs. FEDGE_ERR_INVALID_ARG when pp > layers. */
int fedge_pp_stages(const fedge_dense_shape *sh, int pp, int first[FEDGE_GRID_MAX_PP + 1]);

typedef struct {
    fedge_dense_shape sh;
    int tp, tp_i, pp, pp_i;
    int first[FEDGE_GRID_MAX_PP + 1];
    int l0, l1;                          /* this stage: layers [l0, l1) */
    int mode[FEDGE_MODEL_MAX_LAYERS];    /* FEDGE_TP_* for every layer */
    int out_lo[FEDGE_MODEL_MAX_LAYERS], out_n[FEDGE_MODEL_MAX_LAYERS];
    int in_lo[FEDGE_MODEL_MAX_LAYERS], in_n[FEDGE_MODEL_MAX_LAYERS];
    size_t w_off[FEDGE_MODEL_MAX_LAYERS], b_off[FEDGE_MODEL_MAX_LAYERS]; /* local vector */
    size_t n_local;                      /* floats of this rank's parameters */
    int max_local_dim;                   /* widest local activation or input gradient, >= 4 */
} fedge_shard_plan;

/* FEDGE_ERR_INVALID_ARG if a split layer has fewer outputs (column) or
 * inputs (row) than tp, or pp exceeds the number of layers. */
int fedge_shard_plan_make(const fedge_dense_shape *sh, int tp, int tp_i, int pp, int pp_i,
                          fedge_shard_plan *p);
/* The rank's parameters from the full vector (model layout). */
void fedge_shard_get(const fedge_shard_plan *p, const float *full, float *local);
/* Writes the values this rank owns into the full vector (others untouched):
 * summing every rank's output over a zeroed vector (one dp replica) gives
 * the full vector. */
void fedge_shard_put(const fedge_shard_plan *p, const float *local, float *full);

/* Per-rank memory of the model-parallel trainer (cluster_mp.c allocates
 * exactly this). rows_mb: rows per micro-batch; slots: micro-batches whose
 * activations are kept (gpipe: M, 1f1b: min(M, pp)). */
void fedge_mp_memory_plan(const fedge_shard_plan *p, int rows_mb, int slots,
                          fedge_memory_plan *plan);
/* The largest plan over all ranks of a tp x pp layout (the one that must fit). */
int fedge_mp_memory_max(const fedge_dense_shape *sh, int tp, int pp, int rows_mb, int slots,
                        fedge_memory_plan *plan);

/* Activation slots a schedule keeps: gpipe M, 1f1b min(M, pp). */
enum { FEDGE_PP_GPIPE = 0, FEDGE_PP_1F1B = 1 };
int fedge_pp_slots(int schedule, int micro, int pp);
double fedge_pp_bubble_theory(int pp, int micro);
/* The same for the stages as cut (cost c_s = the FLOP weights above): the
 * pipeline takes sum c + (M - 1) max c, stage s is busy M c_s of it, so
 * idle[s] = 1 - M c_s / (sum c + (M - 1) max c). Equal stages give the theory. */
int fedge_pp_bubble_model(const fedge_dense_shape *sh, int pp, int micro,
                          double idle[FEDGE_GRID_MAX_PP]);

/* Payload one rank hands to MPI per step (analytic): the buffers of its TP
 * allreduces, its pipeline boundary sends, its DP gradient allreduce. A ring
 * allreduce of k ranks puts 2(k-1)/k of its buffer on the wire per rank.
 * rows: the replica's rows per step (all micro-batches). */
typedef struct {
    double tp_bytes, pp_bytes, dp_bytes;
    int tp_allreduces, pp_messages;  /* per step */
} fedge_mp_comm;
void fedge_mp_comm_volume(const fedge_shard_plan *p, int dp, int rows, int micro,
                          fedge_mp_comm *out);

/* Learning rate of step `step` (Goyal et al. 2017): with linear scaling the
 * target is lr * effective_batch / base_batch, reached from lr by a linear
 * warm-up over `warmup` steps; without scaling, lr. */
enum { FEDGE_LR_CONSTANT = 0, FEDGE_LR_LINEAR = 1 };
double fedge_lr_at(double lr, int scaling, int effective_batch, int base_batch,
                   unsigned long long warmup, unsigned long long step);

#endif
