/* layers.c — the layer list and tensor names of a model spec (layers.h). */
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "layers.h"

static int layers_of(const fedge_model_spec *spec, mdl_view *v)
{
    if (spec->n_layers < 1 || spec->n_layers > MDL_MAX_LAYERS)
        return FEDGE_ERR_INTERNAL;
    v->n_layers = spec->n_layers;
    memcpy(v->layer, spec->layer, (size_t)spec->n_layers * sizeof spec->layer[0]);
    v->in_c = spec->in_c, v->in_h = spec->in_h, v->in_w = spec->in_w;
    v->input_dim = spec->input_dim;
    v->classes = spec->classes;
    return FEDGE_OK;
}

static void add_tensor(mdl_view *v, int layer, const char *what, size_t offset, int rank,
                       const int64_t *shape)
{
    mdl_tensor *t = &v->tensor[v->n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "layers.%d.%s", layer, what);
    t->layer = layer;
    t->rank = rank;
    t->offset = offset;
    t->count = 1;
    for (int i = 0; i < rank; i++) {
        t->shape[i] = shape[i];
        t->count *= (size_t)shape[i];
    }
}

int mdl_view_init(const fedge_model_spec *spec, mdl_view *v)
{
    if (spec == NULL || v == NULL)
        return FEDGE_ERR_INVALID_ARG;
    int ret = FEDGE_OK;
    memset(v, 0, sizeof *v);
    CHK(fedge_model_spec_format(spec, v->spec_text, sizeof v->spec_text));
    CHK(layers_of(spec, v));
    v->n_params = fedge_model_spec_param_count(spec);
    size_t next = 0;
    for (int i = 0; i < v->n_layers; i++) {
        const fedge_layer *l = &v->layer[i];
        int64_t ws[MDL_MAX_RANK], bs[1];
        int rank;
        if (l->type == FEDGE_LAYER_DENSE) {
            ws[0] = l->out;
            ws[1] = (int64_t)l->in_c * l->in_h * l->in_w;
            rank = 2;
            bs[0] = l->out;
        } else if (l->type == FEDGE_LAYER_CONV2D) {
            ws[0] = l->out_c;
            ws[1] = l->in_c;
            ws[2] = l->k;
            ws[3] = l->k;
            rank = 4;
            bs[0] = l->out_c;
        } else {
            if (l->n_params != 0)
                FAIL(FEDGE_ERR_INTERNAL);
            continue;
        }
        if (l->w_off != next)
            FAIL(FEDGE_ERR_INTERNAL);
        add_tensor(v, i, "weight", l->w_off, rank, ws);
        next += v->tensor[v->n_tensors - 1].count;
        if (l->b_off != next)
            FAIL(FEDGE_ERR_INTERNAL);
        add_tensor(v, i, "bias", l->b_off, 1, bs);
        next += v->tensor[v->n_tensors - 1].count;
        if (next - l->w_off != l->n_params)
            FAIL(FEDGE_ERR_INTERNAL);
    }
    if (next != v->n_params || v->n_tensors == 0)
        FAIL(FEDGE_ERR_INTERNAL);
cleanup:
    return ret;
}

const mdl_tensor *mdl_view_find(const mdl_view *v, const char *name, size_t name_len)
{
    for (int i = 0; i < v->n_tensors; i++)
        if (strlen(v->tensor[i].name) == name_len && memcmp(v->tensor[i].name, name, name_len) == 0)
            return &v->tensor[i];
    return NULL;
}
