/* input.h — rows to predict on, decoded as a stream: an IDX image file
 * (magic 0x00000803, gzip or raw, as Fashion-MNIST's
 * t10k-images-idx3-ubyte.gz; pixels scaled to [0, 1] exactly as
 * shared/dataset.c does) or a CSV of feature rows (exactly `dim` numeric
 * fields a row, no label, every value finite; blank lines ignored).
 *
 * CSV header: the first line is a header, and skipped, when its first field
 * (after blanks) does not parse as a number at all ("x1,x2"); a first line
 * whose first field is a number, finite or not ("0.5", " 0.5", "nan"), is a
 * row like any other. A line may hold at most MDL_CSV_LINE_MAX(dim) bytes.
 *
 * IDX images must have rows*cols == dim and, when the model's input is an
 * image (h > 0: c x h x w), c == 1, rows == h and cols == w. Bounds: at most
 * FEDGE_DATASET_MAX_ROWS rows. Memory: one read buffer of
 * MDL_CSV_LINE_MAX(dim) + 64 KiB, whatever the input's size; the caller
 * holds the rows of one batch.
 *
 * Errors: FEDGE_ERR_NOT_FOUND, _IO, _DATA_FORMAT, _DATA_TRUNCATED, _RANGE,
 * _MODEL_SHAPE (the rows do not have dim features), _NOMEM, with a line in
 * err. A stream that failed stays failed. */
#ifndef FEDGE_MODEL_TOOL_INPUT_H
#define FEDGE_MODEL_TOOL_INPUT_H

#include <stddef.h>
#include <stdint.h>

#define MDL_CSV_LINE_MAX(dim) ((size_t)(dim) * 64 + 256)

typedef struct mdl_input mdl_input;

/* Opens path (gzip or not) and reads the IDX header or sniffs the CSV. */
int mdl_input_open(const char *path, int dim, int c, int h, int w, mdl_input **in, char *err,
                   size_t errlen);
/* The same on len bytes in memory (not copied: buf must outlive *in); name
 * is used in messages only. */
int mdl_input_open_mem(const char *name, const uint8_t *buf, size_t len, int dim, int c, int h,
                       int w, mdl_input **in, char *err, size_t errlen);
/* Decodes up to max_rows rows into x (max_rows x dim floats); *got 0 means
 * the input is done (and had at least one row). */
int mdl_input_read(mdl_input *in, float *x, size_t max_rows, size_t *got, char *err, size_t errlen);
/* NULL is fine. */
void mdl_input_close(mdl_input *in);

/* The whole of buf decoded by the stream above into *x (malloc'd, *n x dim
 * floats): for tests and the fuzz target. On failure *x is NULL. */
int mdl_input_parse(const char *name, const uint8_t *buf, size_t len, int dim, int c, int h, int w,
                    float **x, size_t *n, char *err, size_t errlen);

#endif
