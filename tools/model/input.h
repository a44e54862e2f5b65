/* input.h — rows to predict on: an IDX image file (magic 0x00000803, gzip
 * or raw, as Fashion-MNIST's t10k-images-idx3-ubyte.gz; pixels scaled to
 * [0, 1] exactly as shared/dataset.c does) or a CSV of feature rows (exactly
 * `dim` numeric fields a row, no label; an optional header line whose first
 * field is not numeric is skipped; blank lines ignored).
 * IDX images must have rows*cols == dim and, when the model's input is an
 * image (h > 0: c x h x w), c == 1, rows == h and cols == w. Bounds: at most
 * FEDGE_DATASET_MAX_ROWS rows and MDL_INPUT_MAX_BYTES of input. Errors:
 * FEDGE_ERR_NOT_FOUND, _IO, _DATA_FORMAT, _DATA_TRUNCATED, _RANGE,
 * _MODEL_SHAPE (the rows do not have dim features), with a line in err. */
#ifndef FEDGE_MODEL_TOOL_INPUT_H
#define FEDGE_MODEL_TOOL_INPUT_H

#include <stddef.h>

#define MDL_INPUT_MAX_BYTES ((size_t)1 << 32)

/* *x malloc'd, n x dim floats. */
int mdl_input_load(const char *path, int dim, int c, int h, int w, float **x, size_t *n, char *err,
                   size_t errlen);

/* The same on a (decompressed) file already in memory: buf holds len bytes
 * and a NUL at buf[len]; a CSV is parsed in place (buf is modified). name
 * is used in messages only. */
int mdl_input_parse(const char *name, uint8_t *buf, size_t len, int dim, int c, int h, int w, float **x,
                    size_t *n, char *err, size_t errlen);

#endif
