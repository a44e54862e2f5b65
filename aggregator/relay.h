/* relay.h — an aggregator that is also a client of a parent aggregator: one
 * inner node of an aggregation tree (docs/ARCHITECTURE.md "Aggregation tree").
 *
 * The relay follows its parent's rounds: while waiting it asks the parent's
 * GET /round every upstream_poll_s as an edge does (its own device identity
 * upstream_id, key from upstream_keys, DTLS through the edge's link.h), and
 * when the parent opens a round it is selected for, fetches GET /model,
 * makes that model its current one (a models row of kind init naming the
 * parent's round) and opens its own round with the parent's round id, the
 * parent's training parameters (lr, epochs, batch, momentum, prox_mu) and a
 * deadline upstream_margin_s before the parent's. At close it combines its
 * accepted updates into one partial sum (close.h fedge_close_partial_sum:
 * the sample-weighted mean, n_samples their total), signs its audit head,
 * seals the partial to the parent (fp32, FEDGE_DELTA_FLAG_PARTIAL, the head
 * hash in the trailer; delta.h) and logs the sealed bytes in relay_sent
 * before it POSTs them. It adopts no model of its own.
 *
 * relay_sent(round PRIMARY KEY = the parent's round, parent_run, counter,
 * n_updates, n_samples, head_hash, sealed, sealed_sha256, status
 * 'sealed'|'answered'|'unanswered', code, reply, sent_at): what was sent. A
 * row still 'sealed' (no answer recorded: a restart) is sent again at the
 * next poll, the very same bytes: the parent answers with its stored
 * decision (its resend path). A relay
 * whose parent's deadline passes before it has sealed sends nothing.
 *
 * Threads: the link to the parent (link.h; one link per thread) runs on
 * the relay's own thread, one job at a time (GET /round, GET /model, POST
 * these sealed bytes with retries until a deadline); the owner thread posts
 * the job and takes its result from a mutex-protected mailbox in its tick
 * (fedge_relay_poll, fedge_relay_check_open), never waiting on the parent,
 * so the relay's edges are served whatever the parent does. Every SQLite
 * write (model adoption, relay_sent, events, heads) stays on the owner
 * thread. One request takes at most upstream_timeout_s, a DTLS handshake
 * included, and never runs past the parent's deadline; while the parent
 * does not answer, polls back off (doubling, up to 30 s). With `rounds`
 * reached, the relay finishes once its last partial is answered (or its
 * deadline passed). DP: refused at a relay (noise belongs to the root; the root's
 * DP then counts each relay as one client). Combiner: mean only (config.c).
 * Errors: the daemon's own (SQL, memory); the parent being unreachable or
 * refusing is logged and retried at the next poll, never fatal. */
#ifndef FEDGE_RELAY_H
#define FEDGE_RELAY_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "agg.h"

/* After fedge_agg_init, before serving: loads the relay's key, opens the
 * link (no traffic yet), creates relay_sent. a->relay stays NULL for a root
 * (cfg.upstream empty). err gets why it cannot start (DP on in the policy,
 * no key line for upstream_id). */
int fedge_relay_open(fedge_aggregator *a, char *err, size_t errlen);
/* Stops the link thread (a request in flight ends at once; a partial being
 * sent stays 'sealed' for the restart), closes the link and wipes the key;
 * a->relay = NULL. */
void fedge_relay_free(fedge_aggregator *a);
/* The daemon's stop flag (kept for the callers; the link thread stops at
 * fedge_relay_free). */
void fedge_relay_set_stop(const volatile sig_atomic_t *stop);

/* What the parent says while the relay waits. */
typedef struct {
    int open;            /* a round to open now: */
    uint32_t round;      /* the parent's round id */
    double timeout_s;    /* its length here: to upstream_margin_s before the parent's deadline */
    int finished;        /* the parent's run has finished */
} fedge_relay_next;

/* WAITING, each tick: takes what the link thread finished; when the link is
 * idle, posts what is left sealed, else (every upstream_poll_s) asks the
 * parent for its round; for a round this relay is selected for and has not
 * served, fetches and adopts the parent's model and training parameters
 * (next->open once adopted). Never waits on the parent. */
int fedge_relay_poll(fedge_aggregator *a, double now, fedge_relay_next *next);
/* OPEN: takes what the link thread finished; after a restart asks whether
 * the parent is still in this round: *gone = 1 when not (the round is then
 * closed as failed, nothing sent). Never waits on the parent. */
int fedge_relay_check_open(fedge_aggregator *a, double now, int *gone);
/* Closes the open round: partial sum, rounds row, signed head, sealed
 * partial logged; the link thread sends it from the next tick on
 * (scheduler.h fedge_sched_close_step's place). */
int fedge_relay_close_round(fedge_aggregator *a);

/* A root's side: 1 when device is in cfg->relays (the devices that may
 * send a partial sum; docs/PROTOCOL.md), else 0. */
int fedge_relay_listed(const fedge_agg_config *cfg, const char *device);

#endif
