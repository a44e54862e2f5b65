/* cluster_layout.h — how the flat parameter vector is cut up across ranks and buckets.
 *
 * Every rank holds parameters and gradients as one contiguous vector of
 * n_pad floats: the model's n parameters (shared/model.h layout) followed by
 * zeros up to n_pad = world * shard, so that each rank owns an equal slice
 * [rank * shard, (rank + 1) * shard) for the sharded optimizer (ZeRO-1) and
 * equal-count collectives (NCCL reduce-scatter / all-gather) need no special
 * case. shard is a multiple of FEDGE_LAYOUT_ALIGN floats.
 *
 * Gradient buckets tile [0, n_pad) from the end, because the backward pass
 * produces the last layer's gradient first: bucket 0 is the highest range.
 * A bucket can be communicated once every layer it overlaps is done.
 *
 * Pure arithmetic: no MPI, no allocation. */
#ifndef FEDGE_CLUSTER_LAYOUT_H
#define FEDGE_CLUSTER_LAYOUT_H

#include <stddef.h>

#include "model.h"

#define FEDGE_LAYOUT_ALIGN 64 /* floats: 256-byte slices for GPU vector loads */

typedef struct {
    size_t n;        /* model parameters */
    size_t n_pad;    /* world * shard */
    size_t shard;    /* floats owned by each rank */
    int world;
    int rank;
    size_t own_off;  /* rank * shard */
} fedge_layout;

int fedge_layout_init(fedge_layout *lo, size_t n, int world, int rank);

/* The cluster backends train dense chains (softmax/mlp) only: layer l maps
 * dims[l] -> dims[l + 1], and "layer" below means dense layer. */
typedef struct {
    int n_layers;                          /* dense layers */
    int dims[FEDGE_MODEL_MAX_LAYERS + 1];  /* dims[0] input .. dims[n_layers] classes */
} fedge_dense_shape;

/* FEDGE_ERR_UNSUPPORTED for a spec with other layers (a CNN), FEDGE_ERR_MODEL_SPEC for
 * an invalid one. */
int fedge_dense_shape_of(const fedge_model_spec *spec, fedge_dense_shape *out);
/* Pointers to each dense layer's W and b inside a buffer with the model's layout. */
void fedge_dense_views(const fedge_dense_shape *sh, float *base, float *W[FEDGE_MODEL_MAX_LAYERS],
                       float *b[FEDGE_MODEL_MAX_LAYERS]);

/* Offset of dense layer l's W_l in the flat vector (l == n_layers gives n); the
 * functions below that take a spec see no layers (0) in a spec that is not dense
 * (the CPU backend trains one through the shared core, as one backward step). */
size_t fedge_layout_layer_offset(const fedge_model_spec *spec, int l);

/* Bucket size in floats for a size in MiB; <= 0 means one bucket. */
size_t fedge_layout_bucket_floats(double bucket_mb, size_t n_pad);
size_t fedge_layout_bucket_count(const fedge_layout *lo, size_t bucket_floats);
/* Range of bucket k (0 = the highest range). */
void fedge_layout_bucket(const fedge_layout *lo, size_t bucket_floats, size_t k,
                         size_t *off, size_t *count);
/* Part of [off, off + count) owned by rank r: *part_off and *part_count
 * (count 0 when they do not meet). */
void fedge_layout_intersect(const fedge_layout *lo, int r, size_t off, size_t count,
                            size_t *part_off, size_t *part_count);

/* Per-rank memory of the training state, in bytes, by component. */
typedef struct {
    size_t params;       /* fp32 parameters, n_pad */
    size_t grads;        /* fp32 gradients, n_pad (ZeRO-1 reduces in place) */
    size_t optimizer;    /* momentum: shard (ZeRO-1) or n_pad */
    size_t compute_copy; /* bf16/fp16 weights (GPU mixed precision) */
    size_t activations;  /* activations and backward scratch for the local batch */
    size_t total;
} fedge_memory_plan;

enum { FEDGE_PREC_FP32 = 0, FEDGE_PREC_BF16 = 1, FEDGE_PREC_FP16 = 2 };
int fedge_precision_parse(const char *text, int *out); /* fp32|bf16|fp16 */
const char *fedge_precision_name(int precision);

/* The sizes both backends allocate (backend_cpu.c and gpu/backend_gpu.cu
 * follow this plan, so the measured figure equals the estimate). */
void fedge_memory_plan_make(const fedge_model_spec *spec, const fedge_layout *lo,
                            int local_batch, int precision, int zero, int on_gpu,
                            fedge_memory_plan *plan);
/* Floats of activation storage per row: sum of dims (input included). */
size_t fedge_layout_act_floats_per_row(const fedge_model_spec *spec);
int fedge_layout_max_dim(const fedge_model_spec *spec);

#endif
