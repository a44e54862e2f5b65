/* retention.h — bounded storage: dropping the delta bodies of old rounds.
 *
 * Every accepted update keeps its encoded delta in updates.delta. With
 * retain_deltas_rounds = N > 0 the aggregator, after the commit of round r
 * (closed or failed), drops the bodies of the updates of every finished
 * round (closed, failed, refused) numbered r - N or lower; rounds
 * r - N + 1 .. r keep theirs and an open round is never touched.
 *
 * A drop keeps the audit chain whole (policy/audit.h): the body's SHA-256
 * stays in updates.delta_sha256 and in the row's canon, the row gets
 * delta_pruned_round = r, and one audited events row (kind "delta_pruned",
 * rule "retain_deltas_rounds", round r, detail "rounds A-B: K delta bodies
 * dropped, BYTES bytes; ...") records it, all in one transaction that ends
 * with a signed head when a signer is given. A body that no longer hashes
 * to its delta_sha256 is kept (it is evidence for `fedge-audit verify`) and
 * counted as skipped. After the commit, incremental vacuum hands the freed
 * pages back to the file system: databases are created with
 * auto_vacuum = INCREMENTAL (store.c), schema 1 ones converted when
 * migrated. */
#ifndef FEDGE_RETENTION_H
#define FEDGE_RETENTION_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "agg.h"

typedef struct {
    uint32_t first_round, last_round; /* rounds whose bodies were dropped (0, 0: none) */
    size_t n_bodies;                  /* bodies dropped */
    uint64_t bytes;                   /* their size */
    size_t n_skipped;                 /* bodies kept: they do not match delta_sha256 */
    int64_t pages_released;           /* pages incremental vacuum gave back; -1: it failed */
} fedge_retention_result;

/* Signs the chain head after the drop (e.g. fedge_gov_sign_head). */
typedef int (*fedge_retention_sign_fn)(void *ctx, uint32_t round);

/* Drops the bodies described above for current_round r and keep_rounds N
 * (>= 1; FEDGE_ERR_INVALID_ARG otherwise) in its own transaction (the
 * caller must not hold one), then vacuums. sign may be NULL (no signed
 * head). res may be NULL. Nothing to drop is FEDGE_OK with n_bodies 0 and
 * no event. A failed vacuum is logged and left to the next call. */
int fedge_retention_prune(sqlite3 *db, uint32_t current_round, uint32_t keep_rounds,
                          fedge_retention_sign_fn sign, void *sign_ctx,
                          fedge_retention_result *res);

/* The aggregator's call after a round's commit: prunes with
 * a->cfg.retain_deltas_rounds for a->round, signing with its key, and logs
 * what it dropped. FEDGE_OK without doing anything when retention is off. */
int fedge_retention_after_round(fedge_aggregator *a);

/* The stored delta body of updates row `id`: *body malloc'd (caller frees).
 * FEDGE_ERR_DELTA_PRUNED with *pruned_round = the round whose retention
 * dropped it; FEDGE_ERR_NOT_FOUND when there is no such row or it never had
 * a body (a rejected update). pruned_round may be NULL. */
int fedge_retention_body(sqlite3 *db, int64_t id, uint8_t **body, size_t *len,
                         uint32_t *pruned_round);

/* Schema 1 -> 2 (store.c calls it on a read-write open): adds
 * updates.delta_sha256 and delta_pruned_round, stores every body's SHA-256,
 * marks the schema 2, then converts the file to auto_vacuum = INCREMENTAL
 * (a one-time VACUUM; a failure there is logged and only means the file
 * does not shrink). Existing audit entries stay valid: the canon of a
 * stored body is its SHA-256 in both schemas. */
int fedge_retention_migrate_v1(sqlite3 *db);

#endif
