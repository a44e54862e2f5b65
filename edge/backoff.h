/* backoff.h — retry delays: exponential backoff with full jitter.
 *
 *   ceiling(n) = min(cap_ms, base_ms * factor^n)      n = 0, 1, 2, ...
 *   delay(n)   = uniform integer in [0, ceiling(n)]
 *
 * ("full jitter": clients that failed together do not retry together.)
 * The defaults are base 200 ms, factor 2, cap 10 s. Pure logic: the caller
 * owns the generator; no overflow for any attempt number. */
#ifndef FEDGE_EDGE_BACKOFF_H
#define FEDGE_EDGE_BACKOFF_H

#include <stdint.h>

#include "rng.h"

#define FEDGE_BACKOFF_BASE_MS 200u
#define FEDGE_BACKOFF_FACTOR 2u
#define FEDGE_BACKOFF_CAP_MS 10000u

typedef struct {
    uint32_t base_ms; /* >= 1 */
    uint32_t factor;  /* >= 1 */
    uint32_t cap_ms;  /* >= base_ms */
} fedge_backoff;

/* The default schedule above. */
fedge_backoff fedge_backoff_default(void);
/* FEDGE_ERR_INVALID_ARG when base is 0, factor is 0 or cap < base. */
int fedge_backoff_check(const fedge_backoff *b);
uint32_t fedge_backoff_ceiling_ms(const fedge_backoff *b, unsigned attempt);
uint32_t fedge_backoff_delay_ms(const fedge_backoff *b, unsigned attempt, fedge_rng *rng);

#endif
