/* keys_audit.h — the keys ledger: every change of the device set the daemon
 * serves is an audited events row, so the log says when each device was
 * admitted, re-keyed, moved or taken out, whoever edited the keys file.
 *
 * One entry per device and change, of kind FEDGE_AUDIT_KEYS_EVENT, in the
 * form policy/audit.h gives ("the keys ledger"): the change (added, removed,
 * rekeyed: a new secret, moved: a new region), the device's region and
 * envelope key id (envelope.h: HMAC of the derived key, as every update
 * carries it; never the secret) after it (before it for removed), and the
 * source: "startup" (the file as found at start: a new log's initial set, or
 * edits made while the daemon was down) or "reload" (SIGHUP). The last
 * audited keys state is the fold of these rows in id order. docs/AUDIT.md
 * "Keys ledger". */
#ifndef FEDGE_KEYS_AUDIT_H
#define FEDGE_KEYS_AUDIT_H

#include <stddef.h>

#include <sqlite3.h>

#include "agg.h"
#include "keys.h"

typedef struct {
    size_t added, removed, rekeyed, moved;
} fedge_keys_audit_diff;

/* Compares keys (tombstones, removed = 1, count as absent) with the last
 * audited keys state in db and appends one audited entry per difference, in
 * device id order, at wall time `at`. The caller holds the transaction.
 * diff (may be NULL) counts them. FEDGE_ERR_AUDIT_CHAIN when a keys event in
 * the log is malformed (err, may be NULL, names it), FEDGE_ERR_SQL,
 * FEDGE_ERR_NOMEM. */
int fedge_keys_audit_record(sqlite3 *db, const fedge_keys *keys, const char *source, const char *keys_file,
                            double at, fedge_keys_audit_diff *diff, char *err, size_t errlen);

/* The same comparison, writing nothing (fedge-aggregator --check): *diff
 * gets what a start would record. */
int fedge_keys_audit_pending(sqlite3 *db, const fedge_keys *keys, fedge_keys_audit_diff *diff, char *err,
                             size_t errlen);

/* At start, before serving: records the loaded keys against the ledger
 * (source "startup") in one transaction and, when anything was recorded,
 * signs the audit head. Logs a one-line summary. */
int fedge_keys_audit_startup(fedge_aggregator *a, char *err, size_t errlen);

#endif
