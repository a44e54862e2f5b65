/* link_rtt.c — RTT estimate, CoAP timers and deadlines (see link_rtt.h). */
#include "link_rtt.h"

#include <string.h>

#include "common.h"

#define SAMPLE_MAX_MS 600000u

void fedge_link_rtt_init(fedge_link_rtt *r)
{
    memset(r, 0, sizeof *r);
}

int fedge_link_rtt_sample(fedge_link_rtt *r, uint32_t sample_ms, int ambiguous)
{
    if (!r)
        return FEDGE_ERR_INVALID_ARG;
    if (sample_ms > SAMPLE_MAX_MS)
        sample_ms = SAMPLE_MAX_MS;
    if (sample_ms == 0)
        sample_ms = 1;
    if (ambiguous) {
        /* An upper bound on the RTT: the smallest one seeds the estimate
         * until a clean sample comes. */
        if (!r->has_rtt || (r->samples == 0 && sample_ms < r->srtt_ms)) {
            r->has_rtt = 1;
            r->srtt_ms = sample_ms;
            r->rttvar_ms = sample_ms / 4;
        }
        return FEDGE_OK;
    }
    if (!r->has_rtt || r->samples == 0) {
        /* The first clean sample replaces a seed, which may be far too high. */
        r->has_rtt = 1;
        r->srtt_ms = sample_ms;
        r->rttvar_ms = sample_ms / 2;
    } else {
        uint32_t diff = r->srtt_ms > sample_ms ? r->srtt_ms - sample_ms : sample_ms - r->srtt_ms;
        r->rttvar_ms = (uint32_t)(((uint64_t)r->rttvar_ms * 3 + diff) / 4);
        r->srtt_ms = (uint32_t)(((uint64_t)r->srtt_ms * 7 + sample_ms) / 8);
    }
    r->samples++;
    return FEDGE_OK;
}

int fedge_link_rtt_pace_sample(fedge_link_rtt *r, uint32_t elapsed_ms, size_t exchanges)
{
    if (!r || exchanges == 0)
        return FEDGE_ERR_INVALID_ARG;
    uint64_t per = elapsed_ms / exchanges;
    if (per > SAMPLE_MAX_MS)
        per = SAMPLE_MAX_MS;
    if (!r->has_pace) {
        r->has_pace = 1;
        r->pace_ms = (uint32_t)per;
    } else {
        r->pace_ms = (uint32_t)(((uint64_t)r->pace_ms * 3 + per) / 4);
    }
    return FEDGE_OK;
}

uint32_t fedge_link_rtt_ack_timeout_ms(const fedge_link_rtt *r)
{
    if (!r || !r->has_rtt)
        return FEDGE_LINK_ACK_DEFAULT_MS;
    uint64_t a = (uint64_t)r->srtt_ms + 4u * (uint64_t)r->rttvar_ms;
    uint64_t b = (uint64_t)r->srtt_ms * 3 / 2;
    uint64_t t = a > b ? a : b;
    if (t < FEDGE_LINK_ACK_MIN_MS)
        t = FEDGE_LINK_ACK_MIN_MS;
    if (t > FEDGE_LINK_ACK_MAX_MS)
        t = FEDGE_LINK_ACK_MAX_MS;
    return (uint32_t)t;
}

uint16_t fedge_link_rtt_max_retransmit(uint32_t ack_timeout_ms, uint32_t span_ms)
{
    uint16_t n = FEDGE_LINK_RETRANSMIT_MIN;
    /* After n retransmissions libcoap has waited ack * factor * (2^(n+1) - 1). */
    while (n < FEDGE_LINK_RETRANSMIT_MAX &&
           (uint64_t)ack_timeout_ms * 3 / 2 * ((1u << (n + 1)) - 1) < span_ms)
        n++;
    return n;
}

uint32_t fedge_link_rtt_deadline_ms(const fedge_link_rtt *r, size_t bytes, size_t block,
                                    uint32_t floor_ms, uint32_t cap_ms)
{
    uint32_t ack = fedge_link_rtt_ack_timeout_ms(r);
    uint64_t srtt = r && r->has_rtt ? r->srtt_ms : ack;
    uint64_t exchange = srtt + ack;
    if (r && r->has_pace && 2u * (uint64_t)r->pace_ms > exchange)
        exchange = 2u * (uint64_t)r->pace_ms;
    uint64_t blocks = block && bytes ? 1 + (bytes - 1) / block : 1;
    uint64_t t = 2 * blocks * exchange + (uint64_t)ack * 3 / 2 * 7;
    if (t < floor_ms)
        t = floor_ms;
    if (t > FEDGE_LINK_DEADLINE_MAX_MS)
        t = FEDGE_LINK_DEADLINE_MAX_MS;
    if (cap_ms && t > cap_ms)
        t = cap_ms;
    return (uint32_t)t;
}
