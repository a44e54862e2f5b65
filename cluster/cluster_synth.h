/* cluster_synth.h — a synthetic labelled dataset of any size, for tests and
 * benchmarks: uniform features in [0, 1], label = argmax of a fixed random
 * linear map of them (learnable, seeded, reproducible). */
#ifndef FEDGE_CLUSTER_SYNTH_H
#define FEDGE_CLUSTER_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "dataset.h"

/* Initialises *ds (caller frees with fedge_dataset_free). */
int fedge_synthetic_dataset(fedge_dataset *ds, size_t n, int dim, int classes, uint64_t seed);

#endif
