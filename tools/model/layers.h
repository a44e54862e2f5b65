/* layers.h — fedge-model's view of a model: its layer list (model.h) and the
 * named parameter tensors every export format carries.
 *
 * Tensor names follow torch.nn.Sequential: "layers.<i>.weight" and
 * "layers.<i>.bias", i the layer's index in the layer list (RELU, FLATTEN,
 * MAXPOOL and DROPOUT count, as modules of a Sequential do), so a PyTorch
 * module whose `layers` is the matching Sequential loads the state dict as
 * it is. Shapes are the ONNX/PyTorch ones: dense W [out, in], conv W
 * [out_c, in_c, k, k], bias [out]; they are also the order of the floats in
 * the flat parameter buffer, so a tensor is one contiguous slice of it. */
#ifndef FEDGE_MODEL_TOOL_LAYERS_H
#define FEDGE_MODEL_TOOL_LAYERS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define MDL_MAX_LAYERS FEDGE_MODEL_MAX_LAYERS
#define MDL_MAX_TENSORS (2 * MDL_MAX_LAYERS)
#define MDL_MAX_RANK 4
#define MDL_NAME_MAX 32

typedef struct {
    char name[MDL_NAME_MAX];
    int layer;                   /* index into mdl_view.layer */
    int rank;
    int64_t shape[MDL_MAX_RANK];
    size_t offset;               /* first float in the flat parameters */
    size_t count;                /* floats */
} mdl_tensor;

typedef struct {
    char spec_text[FEDGE_MODEL_SPEC_MAX];
    int in_c, in_h, in_w;        /* model input, per sample */
    int input_dim;
    int classes;
    int n_layers;
    fedge_layer layer[MDL_MAX_LAYERS];
    int n_tensors;
    mdl_tensor tensor[MDL_MAX_TENSORS];
    size_t n_params;
} mdl_view;

/* Fills *v from a parsed spec; FEDGE_ERR_INTERNAL when the tensors do not
 * tile the parameter buffer exactly (a layout this tool does not know). */
int mdl_view_init(const fedge_model_spec *spec, mdl_view *v);
/* The tensor of that name, or NULL. */
const mdl_tensor *mdl_view_find(const mdl_view *v, const char *name, size_t name_len);

#endif
