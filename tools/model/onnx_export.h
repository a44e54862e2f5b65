/* onnx_export.h — ONNX export of a model through protobuf-c (onnx.proto of
 * ONNX 1.16.2, vendored in tools/model/onnx/).
 *
 * Pinned: IR version MDL_ONNX_IR_VERSION, default-domain opset
 * MDL_ONNX_OPSET. Graph: input "input" (float32 [N, IN] when the first layer
 * is dense, [N, C, H, W] otherwise; N symbolic), then one node per layer in
 * order: DENSE -> Gemm(transB=1) with W [out, in] and bias, CONV2D -> Conv
 * (kernel_shape, strides, pads), MAXPOOL -> MaxPool (kernel_shape, strides),
 * RELU -> Relu, FLATTEN -> Flatten(axis=1); DROPOUT is the identity at
 * inference and gets no node. A Softmax(axis=1) node ends the graph in the
 * output "probs" [N, classes]. Weights are initializers named as in
 * layers.h, raw little-endian float32. metadata_props: fedge.spec,
 * fedge.version. */
#ifndef FEDGE_MODEL_TOOL_ONNX_EXPORT_H
#define FEDGE_MODEL_TOOL_ONNX_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "layers.h"

#define MDL_ONNX_IR_VERSION 7
#define MDL_ONNX_OPSET 13

int mdl_onnx_encode(const mdl_view *v, const float *params, const char *version_hex,
                    uint8_t **out, size_t *out_len);

#endif
