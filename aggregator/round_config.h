/* round_config.h — the round-shaping configuration in the audit log, so that
 * fedge-audit replay weighs and accepts a round as the daemon did.
 *
 * What the round close (close.h) uses from the configuration besides the
 * policy: min_updates (usable updates needed to aggregate), the run mode
 * (sync rounds or async FedBuff steps and its buffer K) and the staleness
 * discount of an update whose base model is s versions old (async_staleness
 * with its a and b; scheduler.h's fedge_sched_staleness_discount). These are
 * written as one audited events row of kind FEDGE_ROUND_CONFIG_EVENT, detail
 * "round configuration: mode=M min_updates=N buffer_k=K staleness=S
 * staleness_a=A staleness_b=B aggregation=NAME" (numbers "%.17g", reading
 * back exactly), at start when they differ from the last such row (they
 * cannot change on SIGHUP). The configuration in force at a round's close is
 * the last such row before the round's last audit entry (docs/AUDIT.md). */
#ifndef FEDGE_ROUND_CONFIG_H
#define FEDGE_ROUND_CONFIG_H

#include <stddef.h>

#include <sqlite3.h>

#include "config.h"

#define FEDGE_ROUND_CONFIG_EVENT "config"
#define FEDGE_ROUND_CONFIG_PREFIX "round configuration: "

/* Writes the detail text for cfg into buf (cap bytes): FEDGE_ERR_INVALID_ARG
 * when it does not fit. */
int fedge_round_config_format(const fedge_agg_config *cfg, char *buf, size_t cap);

/* Reads a detail text back into the round-shaping fields of *cfg (the rest
 * left as they are): FEDGE_ERR_DATA_FORMAT on anything malformed (a missing or
 * unknown key, a value out of the config table's range), cfg then unchanged. */
int fedge_round_config_parse(const char *detail, fedge_agg_config *cfg);

/* Appends the audited events row for cfg when the last one in db differs
 * (*recorded 1) or not (*recorded 0); the caller holds the transaction.
 * FEDGE_ERR_SQL, FEDGE_ERR_INVALID_ARG. */
int fedge_round_config_record(sqlite3 *db, const fedge_agg_config *cfg, double at, int *recorded);

#endif
