/* safetensors.h — the safetensors format (https://github.com/huggingface/safetensors):
 * u64 little-endian header length N | N bytes of JSON | data.
 *
 * Encode: one F32 tensor per parameter tensor of the view (layers.h names and
 * shapes), in parameter order, data offsets contiguous from 0; __metadata__
 * holds fedge.spec, fedge.version (hex SHA-256 id of the model) and
 * format "pt"; the header is padded with spaces to a multiple of 8 bytes.
 *
 * Decode (import), strict and bounded: 8 <= N <= MDL_ST_HEADER_MAX and within
 * the file; the header is one JSON object (json.h) whose keys are unique:
 * an optional __metadata__ object of string values (at most
 * MDL_ST_META_MAX entries; a fedge.spec in it must be the spec given), and
 * exactly the view's tensors, each an object with exactly dtype ("F32"),
 * shape (equal to the view's) and data_offsets [begin, end] (end - begin =
 * 4 x elements). Sorted by begin, the tensors tile the data section exactly
 * (start at 0, no gap, no overlap, nothing after the last). Every value must
 * be finite. Errors: FEDGE_ERR_IMPORT_FORMAT (the container), _IMPORT_TENSOR
 * (names, dtypes, shapes, spec), FEDGE_ERR_MODEL_NONFINITE; err gets one line
 * naming the fault. params is written only on success. */
#ifndef FEDGE_MODEL_TOOL_SAFETENSORS_H
#define FEDGE_MODEL_TOOL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "layers.h"

#define MDL_ST_HEADER_MAX (1u << 20)
#define MDL_ST_META_MAX 64

/* *out malloc'd; version_hex may be NULL (no fedge.version). */
int mdl_st_encode(const mdl_view *v, const float *params, const char *version_hex,
                  uint8_t **out, size_t *out_len);
int mdl_st_decode(const uint8_t *buf, size_t len, const mdl_view *v, float *params,
                  char *err, size_t errlen);

#endif
