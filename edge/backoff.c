/* backoff.c — exponential backoff with full jitter (see backoff.h). */
#include "backoff.h"

#include "common.h"

fedge_backoff fedge_backoff_default(void)
{
    fedge_backoff b = {FEDGE_BACKOFF_BASE_MS, FEDGE_BACKOFF_FACTOR, FEDGE_BACKOFF_CAP_MS};
    return b;
}

int fedge_backoff_check(const fedge_backoff *b)
{
    if (!b || b->base_ms == 0 || b->factor == 0 || b->cap_ms < b->base_ms)
        return FEDGE_ERR_INVALID_ARG;
    return FEDGE_OK;
}

uint32_t fedge_backoff_ceiling_ms(const fedge_backoff *b, unsigned attempt)
{
    uint64_t c = b->base_ms;
    /* Stop multiplying once the cap is reached: no overflow, O(log cap). */
    for (unsigned i = 0; i < attempt && c < b->cap_ms; i++) {
        if (b->factor == 1)
            break;
        c *= b->factor;
    }
    return c > b->cap_ms ? b->cap_ms : (uint32_t)c;
}

uint32_t fedge_backoff_delay_ms(const fedge_backoff *b, unsigned attempt, fedge_rng *rng)
{
    uint32_t c = fedge_backoff_ceiling_ms(b, attempt);
    if (c == UINT32_MAX)
        return (uint32_t)fedge_rng_u64(rng);
    return fedge_rng_below(rng, c + 1);
}
