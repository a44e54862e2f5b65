/* rng.h — seeded, reproducible pseudo-random numbers (xoshiro256**).
 * The state is a plain value owned by the caller; no global state. */
#ifndef FEDGE_RNG_H
#define FEDGE_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} fedge_rng;

void fedge_rng_seed(fedge_rng *r, uint64_t seed);   /* splitmix64 expansion */
uint64_t fedge_rng_u64(fedge_rng *r);
uint32_t fedge_rng_below(fedge_rng *r, uint32_t n); /* uniform in [0, n), unbiased; n > 0 */
float fedge_rng_uniform(fedge_rng *r);              /* [0, 1) */
double fedge_rng_uniform_d(fedge_rng *r);           /* [0, 1) */
double fedge_rng_normal(fedge_rng *r);              /* N(0, 1) */
double fedge_rng_gamma(fedge_rng *r, double shape); /* Gamma(shape, 1), shape > 0 */
/* A child generator with an independent stream (jump + mix of `stream`). */
void fedge_rng_split(const fedge_rng *parent, uint64_t stream, fedge_rng *child);

#endif
