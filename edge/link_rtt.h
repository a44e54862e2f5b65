/* link_rtt.h — what the edge knows about its link's round-trip time, and the
 * CoAP timers and request deadlines derived from it. Pure logic: no clock,
 * no I/O; the link feeds it samples in milliseconds.
 *
 *   RTT samples (RFC 6298): srtt/rttvar, smoothing 1/8 and 1/4. A sample that
 *     may include a retransmission (ambiguous, Karn) is only an upper bound:
 *     until the first clean sample the smallest one seeds the estimate
 *     (rttvar a quarter of it); after that they are ignored. The DTLS
 *     handshake (3 round trips: HelloVerifyRequest, ServerHello, Finished)
 *     gives the first seed.
 *   Block pace: the wall time per CoAP exchange of a finished block transfer,
 *     losses and retransmissions included (smoothed 1/4).
 *   ACK timeout: max(srtt + 4 rttvar, 3/2 srtt), within [1 s, 60 s]; 2 s
 *     (RFC 7252) before any sample. libcoap 4.3.1 refuses ACK timeouts under
 *     1 s, so on a fast link this stays 1 s.
 *   MAX_RETRANSMIT: the fewest transmissions whose backoff (the ACK timeout
 *     doubled each time, times ACK_RANDOM_FACTOR 1.5 at most) spans `span_ms`,
 *     within [4, 8]: a lossy link loses a whole transfer to one unlucky block
 *     far less often, and the request deadline, not libcoap, ends a stall.
 *   Deadline of a request carrying `bytes` in `block` byte blocks: two
 *     exchanges' worth of time per block, an exchange being the larger of
 *     srtt + ACK timeout and twice the observed block pace, plus one full
 *     backoff of the last block; never below floor_ms, never above cap_ms
 *     (the round's time left; 0: no cap). */
#ifndef FEDGE_EDGE_LINK_RTT_H
#define FEDGE_EDGE_LINK_RTT_H

#include <stddef.h>
#include <stdint.h>

#define FEDGE_LINK_ACK_MIN_MS 1000u
#define FEDGE_LINK_ACK_DEFAULT_MS 2000u
#define FEDGE_LINK_ACK_MAX_MS 60000u
#define FEDGE_LINK_RETRANSMIT_MIN 4u
#define FEDGE_LINK_RETRANSMIT_MAX 8u
#define FEDGE_LINK_DEADLINE_MAX_MS 1800000u

typedef struct {
    int has_rtt;
    uint32_t srtt_ms;
    uint32_t rttvar_ms;
    unsigned samples;     /* unambiguous samples taken */
    int has_pace;
    uint32_t pace_ms;     /* per exchange of a block transfer */
} fedge_link_rtt;

void fedge_link_rtt_init(fedge_link_rtt *r);
/* FEDGE_ERR_INVALID_ARG for a NULL estimate; samples above 10 minutes are
 * clipped there. */
int fedge_link_rtt_sample(fedge_link_rtt *r, uint32_t sample_ms, int ambiguous);
/* elapsed_ms over `exchanges` (>= 1) request/response pairs. */
int fedge_link_rtt_pace_sample(fedge_link_rtt *r, uint32_t elapsed_ms, size_t exchanges);
uint32_t fedge_link_rtt_ack_timeout_ms(const fedge_link_rtt *r);
uint16_t fedge_link_rtt_max_retransmit(uint32_t ack_timeout_ms, uint32_t span_ms);
uint32_t fedge_link_rtt_deadline_ms(const fedge_link_rtt *r, size_t bytes, size_t block,
                                    uint32_t floor_ms, uint32_t cap_ms);

#endif
