/* scheduler.h — the scheduler: when rounds (or, later, aggregation steps) open
 * and close, and which device may send an update now. One interface, one
 * implementation per run mode, chosen by name from a table (scheduler.c):
 * "sync" (sched_sync.c) is synchronous rounds with a fixed participant set;
 * "async" (sched_async.c) is FedBuff: buffered asynchronous aggregation
 * steps, each a rounds row.
 *
 * Every hook runs on the owner thread (the one that owns a->db) and may
 * write the log. The in-memory state they keep is agg.h's: state, round,
 * deadline, selected/submitted, the counters. Errors are the daemon's own
 * (SQL, I/O, memory); FEDGE_ERR_BUSY from the tick is retried every second
 * up to db_busy_retry_s (fedge_sched_transient). */
#ifndef FEDGE_SCHEDULER_H
#define FEDGE_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

#include "agg.h"

/* What GET /round tells device d (-1: unknown) about the schedule now. */
typedef struct {
    int selected;        /* may send an update now */
    double deadline_ms;  /* left until the current round's deadline; 0 when none */
} fedge_sched_view;

typedef struct fedge_sched {
    const char *mode;
    /* At init, after the model store and the strategy are loaded: rebuild
     * the counters and any open round from the log (a crash), and decide
     * whether the run has already finished. */
    int (*resume)(fedge_aggregator *a);
    /* By the clock (fedge_agg_tick). The caller skips both hooks before
     * a->retry_at and passes what they return through fedge_sched_transient
     * (a busy database is retried, not fatal). */
    int (*on_tick)(fedge_aggregator *a, double now);
    /* After accepted updates (fedge_agg_maybe_close): close at quorum. */
    int (*on_accepted)(fedge_aggregator *a, double now);
    /* May device d send an update trained for `for_round` (read from the
     * frame's header; the open round when unreadable) now? *ok = 0: refused,
     * *code and msg are the reply. May read the log. */
    int (*admit)(fedge_aggregator *a, int d, const char *device, uint32_t for_round, int *ok, int *code,
                 char *msg, size_t msglen);
    /* The update's decision is logged: count it (bytes on the wire). */
    void (*counted)(fedge_aggregator *a, int d, int accepted, size_t bytes);
    /* GET /round from device d: async mode notes that d is asking. */
    void (*view)(fedge_aggregator *a, int d, double now, fedge_sched_view *v);
    /* Device d's session ended (closed, failed, freed) while d observed
     * /round on it: async frees d's slot at once (its admission stays: a
     * late update is still judged) and forgets that it was asking. NULL:
     * nothing to do (sync). */
    void (*left)(fedge_aggregator *a, int d);
} fedge_sched;

/* The scheduler for a run mode ("sync", "async"); NULL when there is none. */
const fedge_sched *fedge_sched_find(const char *mode);

/* Helpers shared by the schedulers (scheduler.c). */
/* FEDGE_ERR_BUSY is transient: sets a->retry_at a second ahead and returns
 * FEDGE_OK until the streak has lasted db_busy_retry_s, then returns it. */
int fedge_sched_transient(fedge_aggregator *a, double now, int ret);
/* rounds_done, rounds_aggregated, the last round id and accuracy from the log. */
int fedge_sched_count_rounds(fedge_aggregator *a);
/* The open round's or step's counters after a decided update of device d
 * (every mode's `counted` starts here). */
void fedge_sched_tally(fedge_aggregator *a, int d, int accepted, size_t bytes);
/* Device d's GET /round answer changed while every other device's did not
 * (async: admitted, slot freed): lists d once in a->view_changed for the
 * server (agg.h). No-op when the list is not allocated or d < 0. */
void fedge_sched_view_changed(fedge_aggregator *a, int d);
/* fedge_agg_outcome's meaning: 0 when at least one round aggregated (or
 * none was due), 3 when none did; msg says what happened. */
int fedge_sched_outcome(const fedge_aggregator *a, char *msg, size_t msglen);

/* Restores the open round (async: the open step, whose accepted rows are
 * the buffer) left by a crash: participants, counters, submitted flags. */
int fedge_sched_resume_open(fedge_aggregator *a);
/* Every mode's resume: the round counts and the open round from the log
 * (the two above), the first open after start_delay_s, and FINISHED when
 * `rounds` are already done. */
int fedge_sched_resume_log(fedge_aggregator *a);
/* Closes the open round or aggregation step: aggregates its accepted
 * updates (close.h), adopts, evaluates and records the model, writes the
 * rounds row, signs the head, all in one transaction; then retention,
 * refinement, and FINISHED once `rounds` are done (else WAITING). A round
 * the data cannot aggregate fails with an audited reason and returns
 * FEDGE_OK; errors are the daemon's own faults. */
int fedge_sched_close_step(fedge_aggregator *a);
/* The privacy budget refuses the next round (or step): logs it as a
 * 'refused' rounds row with its audited event and signed head, and the run
 * is FINISHED. */
int fedge_sched_refuse_round(fedge_aggregator *a, uint32_t round, const char *reason, double now);

/* The weight factor of an update whose base model is s versions old
 * (cfg.async_staleness: constant 1, polynomial (1+s)^-a, hinge 1 for s <= b
 * else 1/(a(s-b)+1); Xie et al., FedAsync). In (0, 1]. */
double fedge_sched_staleness_discount(const fedge_agg_config *cfg, uint32_t s);
/* Async admission's rank of a device asking during step `step`: the first 8
 * bytes (big-endian) of SHA-256(seed as 8 bytes LE || step as 4 bytes LE ||
 * device id). Among the devices asking, the lowest ranks take the free
 * slots: anyone with the seed can recompute who should have won. */
int fedge_sched_async_rank(uint64_t seed, uint32_t step, const char *device, uint64_t *rank);

/* Writes the open round's outcome into its rounds row (status, the new
 * model or NULL, counters, accuracy and epsilon when >= 0, reason or NULL)
 * and audits it (caller's transaction). */
int fedge_sched_finish_round(fedge_aggregator *a, const char *status, const char *new_version,
                             double accuracy, double epsilon, const char *reason);

#endif
