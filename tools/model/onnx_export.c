/* onnx_export.c — ONNX ModelProto of a model, one emitter per layer type
 * (onnx_export.h). All messages live in one heap block (struct onnx_build)
 * sized by MDL_MAX_LAYERS, so building allocates twice and frees once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "onnx.pb-c.h"
#include "onnx_export.h"
#include "version.h"

#define MAX_NODES (MDL_MAX_LAYERS * 2 + 2) /* + implied flattens + softmax */
#define MAX_ATTRS 4
#define MAX_INTS 4
#define VALUE_NAME_MAX 40

typedef struct {
    Onnx__NodeProto node[MAX_NODES];
    Onnx__NodeProto *node_ptr[MAX_NODES];
    char *node_in[MAX_NODES][3];
    char *node_out[MAX_NODES][1];
    char node_name[MAX_NODES][VALUE_NAME_MAX];
    char value_name[MAX_NODES][VALUE_NAME_MAX];
    Onnx__AttributeProto attr[MAX_NODES][MAX_ATTRS];
    Onnx__AttributeProto *attr_ptr[MAX_NODES][MAX_ATTRS];
    int64_t ints[MAX_NODES][MAX_ATTRS][MAX_INTS];
    int n_nodes;

    Onnx__TensorProto init[MDL_MAX_TENSORS];
    Onnx__TensorProto *init_ptr[MDL_MAX_TENSORS];
    int64_t init_dims[MDL_MAX_TENSORS][MDL_MAX_RANK];

    Onnx__ValueInfoProto io[2];
    Onnx__ValueInfoProto *in_ptr[1], *out_ptr[1];
    Onnx__TypeProto io_type[2];
    Onnx__TypeProto__Tensor io_tensor[2];
    Onnx__TensorShapeProto io_shape[2];
    Onnx__TensorShapeProto__Dimension io_dim[2][4];
    Onnx__TensorShapeProto__Dimension *io_dim_ptr[2][4];

    Onnx__GraphProto graph;
    Onnx__OperatorSetIdProto opset;
    Onnx__OperatorSetIdProto *opset_ptr[1];
    Onnx__StringStringEntryProto meta[2];
    Onnx__StringStringEntryProto *meta_ptr[2];
    Onnx__ModelProto model;

    const mdl_view *view;
    uint8_t *raw;     /* n_params floats, little-endian */
    char *cur;        /* the value the next node reads */
    int rank;         /* of cur: 2 or 4 */
} onnx_build;

static char k_input[] = "input", k_probs[] = "probs", k_batch[] = "N";

/* A node reading cur (and the layer's weight and bias when given), writing a
 * new value that becomes cur. */
static Onnx__NodeProto *add_node(onnx_build *b, const char *op, const char *name,
                                 const mdl_tensor *w, const mdl_tensor *bias, char *out_name)
{
    int i = b->n_nodes++;
    Onnx__NodeProto *n = &b->node[i];
    onnx__node_proto__init(n);
    snprintf(b->node_name[i], VALUE_NAME_MAX, "%s", name);
    n->name = b->node_name[i];
    n->op_type = (char *)op;
    b->node_in[i][0] = b->cur;
    n->n_input = 1;
    if (w != NULL)
        b->node_in[i][n->n_input++] = (char *)w->name;
    if (bias != NULL)
        b->node_in[i][n->n_input++] = (char *)bias->name;
    n->input = b->node_in[i];
    if (out_name == NULL) {
        snprintf(b->value_name[i], VALUE_NAME_MAX, "%s.out", name);
        out_name = b->value_name[i];
    }
    b->node_out[i][0] = out_name;
    n->n_output = 1;
    n->output = b->node_out[i];
    n->attribute = b->attr_ptr[i];
    b->node_ptr[i] = n;
    b->cur = out_name;
    return n;
}

/* The node's next attribute slot, named and typed; *slot_ints is its int
 * array (for INTS). */
static Onnx__AttributeProto *add_attr(onnx_build *b, Onnx__NodeProto *n, const char *name,
                                      Onnx__AttributeProto__AttributeType type, int64_t **slot_ints)
{
    int i = (int)(n - b->node);
    int a = (int)n->n_attribute++;
    Onnx__AttributeProto *at = &b->attr[i][a];
    onnx__attribute_proto__init(at);
    at->name = (char *)name;
    at->has_type = 1;
    at->type = type;
    b->attr_ptr[i][a] = at;
    if (slot_ints != NULL)
        *slot_ints = b->ints[i][a];
    return at;
}

static void add_attr_ints(onnx_build *b, Onnx__NodeProto *n, const char *name, const int64_t *v, int k)
{
    int64_t *ints;
    Onnx__AttributeProto *at = add_attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS, &ints);
    memcpy(ints, v, (size_t)k * sizeof v[0]);
    at->n_ints = (size_t)k;
    at->ints = ints;
}

static void add_attr_int(onnx_build *b, Onnx__NodeProto *n, const char *name, int64_t v)
{
    Onnx__AttributeProto *at = add_attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT, NULL);
    at->has_i = 1;
    at->i = v;
}

static const mdl_tensor *tensor_of(const onnx_build *b, int layer, int bias)
{
    for (int t = 0; t < b->view->n_tensors; t++)
        if (b->view->tensor[t].layer == layer)
            return &b->view->tensor[t + (bias ? 1 : 0)];
    return NULL;
}

static void flatten(onnx_build *b, const char *name)
{
    Onnx__NodeProto *n = add_node(b, "Flatten", name, NULL, NULL, NULL);
    add_attr_int(b, n, "axis", 1);
    b->rank = 2;
}

/* ---- one emitter per layer type ------------------------------------------ */

typedef int (*emit_fn)(onnx_build *b, int idx, const fedge_layer *l, const char *name);

static int emit_dense(onnx_build *b, int idx, const fedge_layer *l, const char *name)
{
    if (b->rank != 2) { /* a dense layer reads the flattened activations */
        char fname[VALUE_NAME_MAX];
        snprintf(fname, sizeof fname, "%s.flatten", name);
        flatten(b, fname);
    }
    const mdl_tensor *w = tensor_of(b, idx, 0), *bias = tensor_of(b, idx, 1);
    if (w == NULL || bias == NULL)
        return FEDGE_ERR_INTERNAL;
    Onnx__NodeProto *n = add_node(b, "Gemm", name, w, bias, NULL);
    add_attr_int(b, n, "transB", 1);
    return FEDGE_OK;
}

static int emit_conv(onnx_build *b, int idx, const fedge_layer *l, const char *name)
{
    if (b->rank != 4)
        return FEDGE_ERR_INTERNAL;
    const mdl_tensor *w = tensor_of(b, idx, 0), *bias = tensor_of(b, idx, 1);
    if (w == NULL || bias == NULL)
        return FEDGE_ERR_INTERNAL;
    Onnx__NodeProto *n = add_node(b, "Conv", name, w, bias, NULL);
    int64_t k[2] = {l->k, l->k}, s[2] = {l->stride, l->stride}, p[4] = {l->pad, l->pad, l->pad, l->pad};
    add_attr_ints(b, n, "kernel_shape", k, 2);
    add_attr_ints(b, n, "strides", s, 2);
    add_attr_ints(b, n, "pads", p, 4);
    return FEDGE_OK;
}

static int emit_maxpool(onnx_build *b, int idx, const fedge_layer *l, const char *name)
{
    if (b->rank != 4)
        return FEDGE_ERR_INTERNAL;
    Onnx__NodeProto *n = add_node(b, "MaxPool", name, NULL, NULL, NULL);
    int64_t k[2] = {l->k, l->k}, s[2] = {l->stride, l->stride};
    add_attr_ints(b, n, "kernel_shape", k, 2);
    add_attr_ints(b, n, "strides", s, 2);
    return FEDGE_OK;
}

static int emit_relu(onnx_build *b, int idx, const fedge_layer *l, const char *name)
{
    add_node(b, "Relu", name, NULL, NULL, NULL);
    return FEDGE_OK;
}

static int emit_flatten(onnx_build *b, int idx, const fedge_layer *l, const char *name)
{
    flatten(b, name);
    return FEDGE_OK;
}

static int emit_dropout(onnx_build *b, int idx, const fedge_layer *l, const char *name)
{
    return FEDGE_OK; /* the identity at inference */
}

static const emit_fn emitters[] = {
    [FEDGE_LAYER_DENSE] = emit_dense,     [FEDGE_LAYER_CONV2D] = emit_conv,
    [FEDGE_LAYER_MAXPOOL] = emit_maxpool, [FEDGE_LAYER_RELU] = emit_relu,
    [FEDGE_LAYER_FLATTEN] = emit_flatten, [FEDGE_LAYER_DROPOUT] = emit_dropout,
};

/* ---- the model --------------------------------------------------------------- */

static void value_info(onnx_build *b, int which, char *name, const int64_t *dims, int rank)
{
    Onnx__ValueInfoProto *vi = &b->io[which];
    onnx__value_info_proto__init(vi);
    onnx__type_proto__init(&b->io_type[which]);
    onnx__type_proto__tensor__init(&b->io_tensor[which]);
    onnx__tensor_shape_proto__init(&b->io_shape[which]);
    for (int d = 0; d < rank; d++) {
        Onnx__TensorShapeProto__Dimension *dim = &b->io_dim[which][d];
        onnx__tensor_shape_proto__dimension__init(dim);
        if (dims[d] < 0) {
            dim->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            dim->dim_param = k_batch;
        } else {
            dim->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            dim->dim_value = dims[d];
        }
        b->io_dim_ptr[which][d] = dim;
    }
    b->io_shape[which].n_dim = (size_t)rank;
    b->io_shape[which].dim = b->io_dim_ptr[which];
    b->io_tensor[which].has_elem_type = 1;
    b->io_tensor[which].elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    b->io_tensor[which].shape = &b->io_shape[which];
    b->io_type[which].value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    b->io_type[which].tensor_type = &b->io_tensor[which];
    vi->name = name;
    vi->type = &b->io_type[which];
}

int mdl_onnx_encode(const mdl_view *v, const float *params, const char *version_hex,
                    uint8_t **out, size_t *out_len)
{
    if (v == NULL || params == NULL || out == NULL || out_len == NULL || v->n_layers < 1)
        return FEDGE_ERR_INVALID_ARG;
    int ret = FEDGE_OK;
    uint8_t *buf = NULL;
    onnx_build *b = calloc(1, sizeof *b);
    if (b == NULL)
        return FEDGE_ERR_NOMEM;
    b->view = v;
    b->raw = malloc(v->n_params * 4 + 1);
    if (b->raw == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < v->n_params; i++) {
        uint32_t u;
        memcpy(&u, &params[i], 4);
        b->raw[4 * i] = (uint8_t)u, b->raw[4 * i + 1] = (uint8_t)(u >> 8);
        b->raw[4 * i + 2] = (uint8_t)(u >> 16), b->raw[4 * i + 3] = (uint8_t)(u >> 24);
    }

    for (int t = 0; t < v->n_tensors; t++) {
        const mdl_tensor *mt = &v->tensor[t];
        Onnx__TensorProto *tp = &b->init[t];
        onnx__tensor_proto__init(tp);
        tp->name = (char *)mt->name;
        tp->has_data_type = 1;
        tp->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
        memcpy(b->init_dims[t], mt->shape, (size_t)mt->rank * sizeof mt->shape[0]);
        tp->n_dims = (size_t)mt->rank;
        tp->dims = b->init_dims[t];
        tp->has_raw_data = 1;
        tp->raw_data.len = mt->count * 4;
        tp->raw_data.data = b->raw + mt->offset * 4;
        b->init_ptr[t] = tp;
    }

    int dense_input = v->layer[0].type == FEDGE_LAYER_DENSE;
    int64_t in_dims[4] = {-1, v->input_dim, 0, 0};
    if (!dense_input) {
        in_dims[1] = v->in_c, in_dims[2] = v->in_h, in_dims[3] = v->in_w;
    }
    int64_t out_dims[2] = {-1, v->classes};
    value_info(b, 0, k_input, in_dims, dense_input ? 2 : 4);
    value_info(b, 1, k_probs, out_dims, 2);
    b->in_ptr[0] = &b->io[0];
    b->out_ptr[0] = &b->io[1];
    b->cur = k_input;
    b->rank = dense_input ? 2 : 4;

    for (int i = 0; i < v->n_layers; i++) {
        const fedge_layer *l = &v->layer[i];
        if ((int)l->type < 0 || (size_t)l->type >= FEDGE_ARRAY_LEN(emitters) || emitters[l->type] == NULL)
            FAIL(FEDGE_ERR_UNSUPPORTED);
        char name[VALUE_NAME_MAX];
        snprintf(name, sizeof name, "layers.%d", i);
        CHK(emitters[l->type](b, i, l, name));
    }
    if (b->rank != 2)
        FAIL(FEDGE_ERR_INTERNAL);
    Onnx__NodeProto *sm = add_node(b, "Softmax", "softmax", NULL, NULL, k_probs);
    add_attr_int(b, sm, "axis", 1);

    onnx__graph_proto__init(&b->graph);
    b->graph.name = (char *)"fedge";
    b->graph.n_node = (size_t)b->n_nodes;
    b->graph.node = b->node_ptr;
    b->graph.n_initializer = (size_t)v->n_tensors;
    b->graph.initializer = b->init_ptr;
    b->graph.n_input = 1;
    b->graph.input = b->in_ptr;
    b->graph.n_output = 1;
    b->graph.output = b->out_ptr;

    onnx__operator_set_id_proto__init(&b->opset);
    b->opset.domain = (char *)"";
    b->opset.has_version = 1;
    b->opset.version = MDL_ONNX_OPSET;
    b->opset_ptr[0] = &b->opset;

    onnx__string_string_entry_proto__init(&b->meta[0]);
    b->meta[0].key = (char *)"fedge.spec";
    b->meta[0].value = (char *)v->spec_text;
    b->meta_ptr[0] = &b->meta[0];
    size_t n_meta = 1;
    if (version_hex != NULL) {
        onnx__string_string_entry_proto__init(&b->meta[1]);
        b->meta[1].key = (char *)"fedge.version";
        b->meta[1].value = (char *)version_hex;
        b->meta_ptr[1] = &b->meta[1];
        n_meta = 2;
    }

    onnx__model_proto__init(&b->model);
    b->model.has_ir_version = 1;
    b->model.ir_version = MDL_ONNX_IR_VERSION;
    b->model.n_opset_import = 1;
    b->model.opset_import = b->opset_ptr;
    b->model.producer_name = (char *)"fedge-model";
    b->model.producer_version = (char *)FEDGE_VERSION;
    b->model.graph = &b->graph;
    b->model.n_metadata_props = n_meta;
    b->model.metadata_props = b->meta_ptr;

    size_t len = onnx__model_proto__get_packed_size(&b->model);
    /* protobuf caps a message at 2 GiB; ONNX puts larger weights in external files */
    if (len > INT32_MAX)
        FAIL(FEDGE_ERR_RANGE);
    buf = malloc(len > 0 ? len : 1);
    if (buf == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    if (onnx__model_proto__pack(&b->model, buf) != len)
        FAIL(FEDGE_ERR_INTERNAL);
    *out = buf;
    *out_len = len;
    buf = NULL;
cleanup:
    free(buf);
    if (b != NULL)
        free(b->raw);
    free(b);
    return ret;
}
