#include "cluster_layout.h"

#include <string.h>

#include "common.h"

int fedge_layout_init(fedge_layout *lo, size_t n, int world, int rank)
{
    if (lo == NULL || n == 0 || world < 1 || rank < 0 || rank >= world)
        return FEDGE_ERR_INVALID_ARG;
    size_t per = (n + (size_t)world - 1) / (size_t)world;
    per = (per + FEDGE_LAYOUT_ALIGN - 1) / FEDGE_LAYOUT_ALIGN * FEDGE_LAYOUT_ALIGN;
    lo->n = n;
    lo->shard = per;
    lo->n_pad = per * (size_t)world;
    lo->world = world;
    lo->rank = rank;
    lo->own_off = per * (size_t)rank;
    return FEDGE_OK;
}

int fedge_dense_shape_of(const fedge_model_spec *spec, fedge_dense_shape *out)
{
    fedge_dense_shape sh;
    memset(&sh, 0, sizeof sh);
    if (spec == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (!fedge_model_spec_dense_dims(spec, sh.dims, &sh.n_layers))
        return fedge_model_spec_param_count(spec) == 0 ? FEDGE_ERR_MODEL_SPEC
                                                      : FEDGE_ERR_UNSUPPORTED;
    *out = sh;
    return FEDGE_OK;
}

/* An empty shape for a spec that is not dense: no layers, no dims. */
static fedge_dense_shape shape_or_empty(const fedge_model_spec *spec)
{
    fedge_dense_shape sh;
    if (fedge_dense_shape_of(spec, &sh) != FEDGE_OK)
        memset(&sh, 0, sizeof sh);
    return sh;
}

void fedge_dense_views(const fedge_dense_shape *sh, float *base, float *W[FEDGE_MODEL_MAX_LAYERS],
                       float *b[FEDGE_MODEL_MAX_LAYERS])
{
    float *p = base;
    for (int l = 0; l < FEDGE_MODEL_MAX_LAYERS; l++) {
        if (l < sh->n_layers) {
            W[l] = p;
            p += (size_t)sh->dims[l + 1] * (size_t)sh->dims[l];
            b[l] = p;
            p += sh->dims[l + 1];
        } else {
            W[l] = NULL;
            b[l] = NULL;
        }
    }
}

size_t fedge_layout_layer_offset(const fedge_model_spec *spec, int l)
{
    fedge_dense_shape sh = shape_or_empty(spec);
    size_t off = 0;
    for (int i = 0; i < l && i < sh.n_layers; i++)
        off += (size_t)sh.dims[i + 1] * (size_t)sh.dims[i] + (size_t)sh.dims[i + 1];
    return off;
}

size_t fedge_layout_bucket_floats(double bucket_mb, size_t n_pad)
{
    if (!(bucket_mb > 0.0))
        return n_pad;
    double floats = bucket_mb * 1048576.0 / sizeof(float);
    if (floats >= (double)n_pad)
        return n_pad;
    size_t b = (size_t)floats / FEDGE_LAYOUT_ALIGN * FEDGE_LAYOUT_ALIGN;
    return b < FEDGE_LAYOUT_ALIGN ? FEDGE_LAYOUT_ALIGN : b;
}

size_t fedge_layout_bucket_count(const fedge_layout *lo, size_t bucket_floats)
{
    return (lo->n_pad + bucket_floats - 1) / bucket_floats;
}

void fedge_layout_bucket(const fedge_layout *lo, size_t bucket_floats, size_t k,
                         size_t *off, size_t *count)
{
    size_t hi = lo->n_pad - k * bucket_floats;
    size_t lo_off = hi > bucket_floats ? hi - bucket_floats : 0;
    *off = lo_off;
    *count = hi - lo_off;
}

void fedge_layout_intersect(const fedge_layout *lo, int r, size_t off, size_t count,
                            size_t *part_off, size_t *part_count)
{
    size_t a = (size_t)r * lo->shard, b = a + lo->shard;
    size_t s = off > a ? off : a;
    size_t e = off + count < b ? off + count : b;
    *part_off = s;
    *part_count = e > s ? e - s : 0;
}

int fedge_precision_parse(const char *text, int *out)
{
    if (text == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (strcmp(text, "fp32") == 0)
        *out = FEDGE_PREC_FP32;
    else if (strcmp(text, "bf16") == 0)
        *out = FEDGE_PREC_BF16;
    else if (strcmp(text, "fp16") == 0)
        *out = FEDGE_PREC_FP16;
    else
        return FEDGE_ERR_INVALID_ARG;
    return FEDGE_OK;
}

const char *fedge_precision_name(int precision)
{
    switch (precision) {
    case FEDGE_PREC_BF16: return "bf16";
    case FEDGE_PREC_FP16: return "fp16";
    default: return "fp32";
    }
}

size_t fedge_layout_act_floats_per_row(const fedge_model_spec *spec)
{
    fedge_dense_shape sh = shape_or_empty(spec);
    size_t s = 0;
    for (int l = 0; l <= sh.n_layers; l++)
        s += (size_t)sh.dims[l];
    return s;
}

int fedge_layout_max_dim(const fedge_model_spec *spec)
{
    fedge_dense_shape sh = shape_or_empty(spec);
    int m = 0;
    for (int l = 0; l <= sh.n_layers; l++)
        if (sh.dims[l] > m)
            m = sh.dims[l];
    return m;
}

void fedge_memory_plan_make(const fedge_model_spec *spec, const fedge_layout *lo,
                            int local_batch, int precision, int zero, int on_gpu,
                            fedge_memory_plan *plan)
{
    size_t rows = local_batch > 0 ? (size_t)local_batch : 0;
    size_t maxd = (size_t)fedge_layout_max_dim(spec);
    size_t half = precision == FEDGE_PREC_FP32 ? 0 : 2;
    memset(plan, 0, sizeof(*plan));
    plan->params = lo->n_pad * sizeof(float);
    plan->grads = lo->n_pad * sizeof(float);
    plan->optimizer = (zero ? lo->shard : lo->n_pad) * sizeof(float);
    plan->compute_copy = lo->n_pad * half;
    /* fp32 activations (input .. probabilities), dZ and dA scratch, labels; a spec
     * that is not a dense chain: the input rows and the shared core's scratch */
    fedge_dense_shape sh;
    if (fedge_dense_shape_of(spec, &sh) != FEDGE_OK)
        plan->activations = (rows * (size_t)spec->input_dim
                             + fedge_model_scratch_floats(spec, local_batch > 0 ? local_batch : 1))
                            * sizeof(float) + rows;
    else
        plan->activations = rows * (fedge_layout_act_floats_per_row(spec) + 2 * maxd)
                            * sizeof(float) + rows;
    if (on_gpu) {
        size_t in_floats = fedge_layout_act_floats_per_row(spec) - (size_t)spec->classes;
        plan->activations += rows * (in_floats + maxd) * half /* low-precision GEMM inputs */
                             + rows * sizeof(float);           /* per-row loss */
    }
    plan->total = plan->params + plan->grads + plan->optimizer
                  + plan->compute_copy + plan->activations;
}
