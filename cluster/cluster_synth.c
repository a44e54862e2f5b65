#include "cluster_synth.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "rng.h"

int fedge_synthetic_dataset(fedge_dataset *ds, size_t n, int dim, int classes, uint64_t seed)
{
    fedge_rng rng;
    if (ds == NULL || n == 0 || n > FEDGE_DATASET_MAX_ROWS || dim < 1
        || dim > (int)FEDGE_DATASET_MAX_DIM || classes < 2 || classes > 256)
        return FEDGE_ERR_INVALID_ARG;
    float *proj = malloc((size_t)dim * (size_t)classes * sizeof(float));
    memset(ds, 0, sizeof(*ds));
    ds->x = malloc(n * (size_t)dim * sizeof(float));
    ds->y = malloc(n);
    if (proj == NULL || ds->x == NULL || ds->y == NULL) {
        free(proj);
        fedge_dataset_free(ds);
        return FEDGE_ERR_NOMEM;
    }
    ds->n = n;
    ds->dim = dim;
    ds->n_classes = classes;
    fedge_rng_seed(&rng, seed);
    for (size_t i = 0; i < (size_t)dim * (size_t)classes; i++)
        proj[i] = (float)fedge_rng_normal(&rng);
    for (size_t r = 0; r < n; r++) {
        float *x = ds->x + r * (size_t)dim;
        for (int j = 0; j < dim; j++)
            x[j] = fedge_rng_uniform(&rng);
        int best = 0;
        double best_v = -1e300;
        for (int k = 0; k < classes; k++) {
            double v = 0;
            for (int j = 0; j < dim; j++)
                v += (double)(x[j] - 0.5f) * proj[(size_t)k * (size_t)dim + (size_t)j];
            if (v > best_v) {
                best_v = v;
                best = k;
            }
        }
        ds->y[r] = (uint8_t)best;
    }
    free(proj);
    return FEDGE_OK;
}

