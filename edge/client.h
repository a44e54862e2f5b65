/* client.h — the edge client's main loop (the protocol in docs/PROTOCOL.md).
 *
 *   loop: GET /round (registering CoAP Observe unless cfg->no_observe)
 *     state=finished          -> write <state_dir>/<id>.finished; return
 *                                (with cfg->exit_when_finished)
 *     not open / not selected / this round already done -> wait: for a
 *           notification (then loop on its body) while observing, at most
 *           10 x poll_ms (60 s at most) before polling again; else sleep
 *           poll_ms
 *     else: GET /model (ETag of the cached model; 2.03 reuses it), check the
 *           version against /round's model=, train `epochs` epochs on the
 *           shard, seal delta = w_local - w_global, POST /update.
 *
 * Every request is retried on timeout or session failure, and on 5.xx or
 * 4.08 (an incomplete Block1 body), with exponential backoff and full
 * jitter, at most cfg->max_retries times; inside a round, timeouts are
 * retried past that while the round (deadline_ms of /round, monotonic
 * clock) has time left, and nothing is retried after it. Request deadlines
 * follow the measured RTT (link_rtt.h), capped by the round's time left. A
 * POST retry resends the very same sealed bytes (same counter), which the
 * aggregator recognises as the same update. A 4.xx or 5.03 reply to POST
 * /update is final for that round. One INFO line per round taken part in.
 *
 * Started with a finished marker (docs/EDGE.md "Waiting for a round"), the
 * first GET /round is one attempt: the aggregator unreachable -> return
 * FEDGE_OK; another run id, or the run not finished -> the marker goes.
 *
 * Owns everything it allocates and frees it before returning, also when
 * *stop is raised (checked between minibatches and every 100 ms of I/O). */
#ifndef FEDGE_EDGE_CLIENT_H
#define FEDGE_EDGE_CLIENT_H

#include <signal.h>

#include "args.h"

/* FEDGE_OK when the run finished, max_rounds were done or *stop was raised;
 * otherwise the error that ended it (already logged). */
int fedge_edge_run(const fedge_edge_config *cfg, const volatile sig_atomic_t *stop);

#endif
