/* tiers.h — the lineage across an aggregation tree (docs/AUDIT.md "Across
 * tiers"): a root model's contributions that are relays' partial sums,
 * followed into each relay's own database.
 *
 * For every root contribution whose device is a relay given with
 * --relay-db (the relay's meta 'upstream_id' names it), the root's audited
 * relay_head event for that update gives the head hash the partial carried;
 * the relay's database must hold a signed head (audit_heads) of the same
 * round with that head_hash, and must itself verify (fedge_audit_verify with
 * the relay's public key: chain, signatures, rows, model files). The
 * relay's accepted updates of that round are the devices behind the
 * partial. A tier is verified when all of that holds. */
#ifndef FEDGE_AUDIT_TIERS_H
#define FEDGE_AUDIT_TIERS_H

#include <sqlite3.h>
#include <stddef.h>

#include "out.h"

#define TIERS_MAX 16 /* --relay-db given at most this often */

typedef struct {
    const char *db_path, *pubkey;
    char relay[80];           /* the relay's device id at the root ("" when unknown) */
    int verified;             /* chain ok and every head matched */
    int chain_ok;
    size_t n_heads, n_matched;
    char failure[640];        /* the first problem, one line; "" when none */
    out_table heads;          /* root_round, update, head, match (yes|no) */
    out_table contributions;  /* relay, root_round, device, n_samples */
} tier;

typedef struct {
    size_t n;
    tier t[TIERS_MAX];
    int ok; /* every tier verified */
} tiers;

/* contrib: the root lineage's contributions table (columns round, update,
 * device). Returns 0, or 2 (EXIT_USAGE) when a database or key cannot be
 * read (the reason is on stderr). */
int tiers_gather(sqlite3 *root, const out_table *contrib, const char *const *dbs, const char *const *pubkeys,
                 size_t n, tiers *out);
void tiers_free(tiers *t);
void tiers_json(json_w *j, const char *key, const tiers *t);
void tiers_text(const tiers *t);

#endif
