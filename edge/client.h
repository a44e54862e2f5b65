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
#include "envelope.h"
#include "shard.h"
#include "trainer.h"

/* FEDGE_OK when the run finished, max_rounds were done or *stop was raised;
 * otherwise the error that ended it (already logged). */
int fedge_edge_run(const fedge_edge_config *cfg, const volatile sig_atomic_t *stop);

/* What a device did, for a caller that runs many (tools/edgesim). */
typedef enum {
    FEDGE_EDGE_EV_FETCHED = 1, /* GET /model usable: bytes = body bytes (0: 2.03, cached) */
    FEDGE_EDGE_EV_POSTING,     /* POST /update about to leave: bytes = sealed size */
    FEDGE_EDGE_EV_POSTED,      /* its end: code (0: no answer, status = the transport error),
                                  latency_ms from the first send to the answer, reason */
    FEDGE_EDGE_EV_END,         /* the session ends: handshakes = DTLS handshakes done */
    FEDGE_EDGE_EV_NOT_SENT,    /* a round taken part in without an upload (training
                                  diverged or refused, sealing failed): status says why */
} fedge_edge_event_kind;

typedef struct {
    fedge_edge_event_kind kind;
    uint32_t round;
    size_t bytes;
    int code;                  /* 204, 400, 409, 503, ... */
    int status;                /* FEDGE_OK or the transport error */
    uint64_t latency_ms;
    const char *reason;        /* first line of the reply body ("" when none) */
    unsigned long handshakes;
} fedge_edge_event;

/* One device held in memory instead of files: fedge_edge_run_device uses
 * key and psk in place of cfg->keys_path, the open shard (left open) in
 * place of cfg->shard_path, and *counter_last as the replay counter's last
 * value (read at the start, written after each update sealed) in place of
 * cfg->state_dir, so the device can come back in a later session. cfg->id
 * names it. train (NULL: fedge_edge_trainer_train) makes the round's delta
 * in t->grad; event (may be NULL) is told what happened. All pointers must
 * outlive the call; the hooks run on the calling thread. */
typedef struct {
    const fedge_device_key *key;
    const char *psk;                      /* NUL-terminated DTLS PSK */
    fedge_shard_reader *shard;
    uint64_t *counter_last;
    int (*train)(void *arg, fedge_edge_trainer *t, fedge_shard_reader *shard,
                 const fedge_edge_train_params *p, const volatile sig_atomic_t *stop,
                 double *mean_loss);
    void (*event)(void *arg, const fedge_edge_event *ev);
    void *arg;
} fedge_edge_device;

/* fedge_edge_run for one in-memory device (dev may be NULL: the files). */
int fedge_edge_run_device(const fedge_edge_config *cfg, const fedge_edge_device *dev,
                          const volatile sig_atomic_t *stop);

#endif
