/* train_metrics.h — the edge's training metrics (shared/update.h's block) in
 * the round log: per update (updates.train_loss, train_accuracy,
 * train_epochs, train_ms; NULL when the update carried none) and per round or
 * async step (round_training: how many updates reported, their samples, and
 * the n_samples-weighted mean and standard deviation of loss and accuracy
 * over the updates that entered the aggregate, decision accepted or
 * clipped). Both run inside the caller's transaction; the caller audits the
 * row (the updates row's canon covers its metrics, policy/audit.c). Errors:
 * FEDGE_ERR_SQL / FEDGE_ERR_BUSY. */
#ifndef FEDGE_AGG_TRAIN_METRICS_H
#define FEDGE_AGG_TRAIN_METRICS_H

#include <stdint.h>

#include <sqlite3.h>

#include "update.h"

/* Writes m into updates row id; a no-op when m is NULL or has no fields. */
int fedge_train_metrics_store(sqlite3 *db, int64_t update_id, const fedge_train_metrics *m);

/* Inserts round's round_training row from its updates; *written = 1 when
 * one was (at least one counted update reported), 0 otherwise. */
int fedge_train_metrics_round(sqlite3 *db, uint32_t round, int *written);

#endif
