/* close.h — the round close's arithmetic, its one job: from the open
 * round's stored updates to the next model.
 *
 * Called by the scheduler (scheduler.h) on the owner thread, inside the
 * transaction that will log the close; touches a->db, a->model,
 * a->opt_next / a->control_next (strategy.h) and the governance calls that
 * log what it decides (exclusions, the DP charge, the combiner's
 * selection). It does not adopt, evaluate or record the model
 * (modelstore.h) nor write the rounds row (the scheduler does). */
#ifndef FEDGE_CLOSE_H
#define FEDGE_CLOSE_H

#include <stddef.h>
#include <stdint.h>

#include "agg.h"

typedef struct {
    int ok;                          /* 0: round failed (reason says why) */
    size_t n_used;                   /* updates that entered the aggregate */
    size_t n_excluded;               /* accepted, then excluded by round checks */
    double epsilon;                  /* cumulative epsilon after this round; -1 without DP */
    char reason[320];                /* rule + ": " + the policy's reason */
} fedge_close_result;

/* The round close, inside the caller's transaction: streams the accepted deltas
 * one at a time (memory O(n_params): one pass for sums and norms, one for
 * the anomaly rule's dot products when it runs), excludes with an audited
 * reason any stored update that cannot be used (unreadable, stated sample
 * count out of bounds, non-finite, the wrong SCAFFOLD form), applies the
 * round rules, then the strategy (strategy.h): the combiner (or DP-FedAvg's
 * noisy sum) reads the usable deltas back by blocks of aggregation_block
 * coordinates (memory O(n_updates × block)), the server optimiser steps a
 * copy of its state (a->opt_next, a->control_next) and the result goes to
 * a->model. A robust rule's selection is logged (audited
 * aggregation_left_out event). A round the combiner cannot take (too few
 * updates) or whose step would make the model or the state non-finite
 * fails (res->ok = 0) with the model and the state as they were. Errors are
 * the daemon's own faults (SQL, memory). */
int fedge_close_aggregate(fedge_aggregator *a, fedge_close_result *res);

/* A relay's close (relay.h): the same loading, exclusions and round rules,
 * then the sample-weighted mean of the usable deltas (combiner mean; a round
 * under DP or another combiner fails with a reason) into mean[0..n_params),
 * and n_samples = the total stated sample count of the updates in it. The
 * parent weighs the partial by n_samples, so its mean over relays is the
 * mean over all their edges. A late update's staleness discount weighs
 * within the mean; n_samples counts its samples in full. No server step;
 * a->model is not touched. */
typedef struct {
    float *mean;          /* caller's, n_params floats */
    uint64_t n_samples;
} fedge_close_partial;
int fedge_close_partial_sum(fedge_aggregator *a, fedge_close_result *res, fedge_close_partial *partial);

/* events.kind of the root's record of a partial sum's relay head: logged at
 * close for each partial among the round's updates, device = the relay,
 * detail "update ID: relay round R head HEX". */
#define FEDGE_CLOSE_RELAY_HEAD_EVENT "relay_head"

#endif
