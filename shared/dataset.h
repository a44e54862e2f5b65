/* dataset.h — in-memory labelled datasets and their loaders.
 *
 * Features are float32 (n x dim, row-major), labels uint8 (< n_classes).
 * Loaders validate every length read from a file before allocating, and write
 * *ds only on success (a failed load leaves it as it was). Loader errors:
 * FEDGE_ERR_NOT_FOUND (no such file), _DATA_FORMAT (bad IDX magic, bytes after
 * the payload, a malformed CSV field or row width), _DATA_TRUNCATED (file ends
 * early), _RANGE (zero or oversized count/dims), _DATA_MISMATCH (image and
 * label counts differ), _DATA_LABEL (CSV label not an integer in 0..255). */
#ifndef FEDGE_DATASET_H
#define FEDGE_DATASET_H

#include <stddef.h>
#include <stdint.h>

#define FEDGE_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"
#define FEDGE_DATASET_MAX_ROWS 100000000u
#define FEDGE_DATASET_MAX_DIM 65536u

typedef struct {
    size_t n;
    int dim;
    int n_classes;
    float *x;   /* owned, n * dim */
    uint8_t *y; /* owned, n */
} fedge_dataset;

/* IDX image + label files, gzip or raw (zlib's gzread handles both).
 * Pixels are scaled to [0, 1]. n_classes = max label + 1 (at least 2). */
int fedge_dataset_load_idx(fedge_dataset *ds, const char *images_path,
                           const char *labels_path);
/* The Fashion-MNIST train (train=1, 60000 rows) or test (train=0, 10000 rows)
 * split from `dir` (NULL: FEDGE_FASHION_MNIST_DIR). */
int fedge_dataset_load_fashion_mnist(fedge_dataset *ds, const char *dir, int train);
/* CSV: one row per sample, label first then dim numeric features; an optional
 * header line (non-numeric first field) is skipped. */
int fedge_dataset_load_csv(fedge_dataset *ds, const char *path);
/* Standardise features in place: x = (x - mean) / std with per-dataset
 * scalars; pass computed values from the training set to the test set.
 * stats gives std = 1 for constant features. */
void fedge_dataset_stats(const fedge_dataset *ds, float *mean, float *std);
void fedge_dataset_normalize(fedge_dataset *ds, float mean, float std);
/* First `n` rows as a view sharing memory (no ownership; do not free). */
fedge_dataset fedge_dataset_head(const fedge_dataset *ds, size_t n);
void fedge_dataset_free(fedge_dataset *ds);

#endif
