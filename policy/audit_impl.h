/* audit_impl.h — internals shared by audit.c (writing) and audit_verify.c
 * (checking): the audited tables, canonical-bytes decoding, the head digest.
 * Not part of the public API. */
#ifndef FEDGE_AUDIT_IMPL_H
#define FEDGE_AUDIT_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "audit.h"

enum { TAG_NULL = 0, TAG_INT = 1, TAG_REAL = 2, TAG_TEXT = 3, TAG_BLOB = 4, TAG_SHA256 = 5 };

/* The columns one canon format enters for a table. */
typedef struct {
    const char *const *cols;    /* schema order, key first */
    size_t n_cols;
    size_t n_always;            /* cols [0, n_always) always enter; later ones only when
                                   not NULL (rows logged before them keep their bytes) */
} audit_layout;

typedef struct {
    const char *name;
    const char *key_col;
    int int_key;                /* key is an INTEGER id */
    audit_layout fcn[FEDGE_AUDIT_FCN_LATEST]; /* [f - 1]: format f */
    size_t n_base;              /* every layout's first n_base columns are in every schema
                                   of the table; a later column the database lacks reads
                                   as NULL */
    const char *hashed_blob;    /* column entered as its SHA-256, or NULL */
    const char *blob_hash_col;  /* with hashed_blob: the column keeping that SHA-256 */
    const char *blob_pruned_col;/* with hashed_blob: round at which retention dropped it */
} audit_table;

const audit_table *audit_table_find(const char *name);
/* Whether format's layout of t enters column name (len bytes). */
int audit_layout_has(const audit_table *t, int format, const char *name, size_t len);
/* Tests only: the format the appends of the calling thread write (0: the
 * current one), to build a log as an older fedge wrote it. */
void audit_test_write_format(int format);
/* The rounds A..B named by a delta_pruned event's detail ("rounds A-B: ...");
 * 1 when detail starts that way with A <= B, else 0. */
int audit_prune_range(const char *detail, uint32_t *first, uint32_t *last);
const audit_table *audit_table_at(size_t i); /* NULL past the end */

/* A decoded column: points into the canon buffer. */
typedef struct {
    const char *name;
    size_t name_len;
    int tag;
    const uint8_t *val;
    size_t val_len;
} canon_col;

typedef struct {
    int format;          /* FEDGE_AUDIT_FCN1 .. FEDGE_AUDIT_FCN_LATEST */
    const char *tbl;
    size_t tbl_len;
    const char *key;
    size_t key_len;
    size_t n_cols;
    const uint8_t *cols; /* first column */
    const uint8_t *end;
} canon_view;

/* The hashed BLOB of a row (updates.delta) as fedge_audit_canon saw it. */
typedef struct {
    int has_body;                       /* the BLOB is present */
    uint8_t body_sha[FEDGE_HASH_LEN];   /* its SHA-256 */
    int hash_state;                     /* hash column: 0 NULL, 1 32 bytes, -1 anything else */
    uint8_t stored_sha[FEDGE_HASH_LEN]; /* its value when hash_state is 1 */
    int pruned;                         /* the pruned-round column is set */
    int64_t pruned_round;
} audit_body_info;

/* fedge_audit_canon_format, also describing the hashed BLOB (body may be
 * NULL; zeroed for tables without one). */
int audit_canon_ex(sqlite3 *db, const char *tbl, const char *row_key, int format, uint8_t **canon,
                   size_t *len, audit_body_info *body);

/* Header parse with every length checked against len; the magic names a
 * known format. */
int canon_parse(const uint8_t *canon, size_t len, canon_view *v);
/* Next column from *pos (start at v->cols); FEDGE_ERR_RANGE when malformed. */
int canon_next(const canon_view *v, const uint8_t **pos, canon_col *c);
/* Readable value: 42, 1.5, 'text...', NULL, <12 bytes>, sha256 ab12... */
void canon_value_text(const canon_col *c, char *buf, size_t cap);

/* SHA-256 of the signed head message. */
int audit_head_digest(int64_t seq, int has_round, uint32_t round,
                      const uint8_t head_hash[FEDGE_HASH_LEN], double signed_at,
                      uint8_t out[FEDGE_HASH_LEN]);

/* A rotation event's detail (audit.h): old and new fingerprints (hex, 64
 * digits + NUL) and the new public key into pk (mbedtls_pk_init'ed, empty).
 * FEDGE_ERR_AUDIT_CHAIN when malformed or when the key's fingerprint is not
 * the one named. */
int audit_rotation_parse(const char *detail, mbedtls_pk_context *pk, char old_fp[FEDGE_HASH_HEX_LEN],
                         char new_fp[FEDGE_HASH_HEX_LEN]);
/* Rotations in chain order: SQL selecting (audit seq, detail). */
#define AUDIT_ROTATIONS_SQL                                                                        \
    "SELECT a.seq, e.detail FROM audit a JOIN events e ON a.tbl = 'events' AND a.row_key = "      \
    "CAST(e.id AS TEXT) WHERE e.kind = '" FEDGE_AUDIT_ROTATION_EVENT "' ORDER BY a.seq"

/* Records a failure in rep (the first FEDGE_AUDIT_MAX_FAILURES kept, all
 * counted) and clears rep->ok. */
void audit_report_failure(fedge_audit_report *rep, fedge_audit_fail_kind kind, int64_t seq, const char *table,
                          const char *row_key, const char *message);
/* The keys ledger replay (audit.h "the keys ledger"); audit_keys.c. */
int audit_check_keys_ledger(sqlite3 *db, fedge_audit_report *rep);

#endif
