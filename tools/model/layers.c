/* layers.c — the layer list and tensor names of a model spec (layers.h). */
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "layers.h"

const char *mdl_layer_name(fedge_layer_type t)
{
    switch (t) {
    case FEDGE_LAYER_DENSE: return "dense";
    case FEDGE_LAYER_CONV2D: return "conv2d";
    case FEDGE_LAYER_MAXPOOL: return "maxpool";
    case FEDGE_LAYER_RELU: return "relu";
    case FEDGE_LAYER_FLATTEN: return "flatten";
    case FEDGE_LAYER_DROPOUT: return "dropout";
    }
    return "unknown";
}

#ifndef FEDGE_LAYER_API
/* The dense chain of the current model.h: DENSE (RELU DENSE)*. */
static int layers_of(const fedge_model_spec *spec, mdl_view *v)
{
    size_t off = 0;
    v->n_layers = 0;
    for (int l = 0; l < spec->n_layers; l++) {
        if (v->n_layers + 2 > MDL_MAX_LAYERS)
            return FEDGE_ERR_INTERNAL;
        int in = spec->dims[l], out = spec->dims[l + 1];
        fedge_layer *d = &v->layer[v->n_layers++];
        memset(d, 0, sizeof *d);
        d->type = FEDGE_LAYER_DENSE;
        d->out = out;
        d->in_c = in, d->in_h = 1, d->in_w = 1;
        d->out_c = out, d->out_h = 1, d->out_w = 1;
        d->w_off = off;
        d->b_off = off + (size_t)out * (size_t)in;
        d->n_params = (size_t)out * ((size_t)in + 1);
        off += d->n_params;
        if (l + 1 < spec->n_layers) {
            fedge_layer *r = &v->layer[v->n_layers++];
            memset(r, 0, sizeof *r);
            r->type = FEDGE_LAYER_RELU;
            r->in_c = r->out_c = out;
            r->in_h = r->in_w = r->out_h = r->out_w = 1;
        }
    }
    v->in_c = spec->dims[0], v->in_h = 1, v->in_w = 1;
    v->input_dim = spec->dims[0];
    v->classes = spec->dims[spec->n_layers];
    return FEDGE_OK;
}
#else
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
#endif

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
