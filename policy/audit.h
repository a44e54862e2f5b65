/* audit.h — the tamper-evident audit chain over the aggregator's log.
 *
 * Contract
 * - Audited tables: updates (key id), models (key version), rounds (key id),
 *   events (key id). After every INSERT or UPDATE of such a row, inside the
 *   same transaction, the aggregator calls fedge_audit_append(db, tbl, key):
 *   it reads the row as it now is, builds its canonical bytes and appends
 *   audit(seq, tbl, row_key, canon, prev_hash, row_hash) with
 *   row_hash = SHA-256(prev_hash || canon), prev_hash = the previous entry's
 *   row_hash (32 zero bytes for the first). A row written again (a round at
 *   close, an update refused later as anomalous) gets a new entry; verify
 *   compares the LATEST entry of each row with the row. Audited rows are
 *   never deleted.
 * - Canonical bytes (docs/AUDIT.md), little-endian:
 *     "FCN2" | u8 len, table | u16 len, row key | u16 n_columns |
 *     per column, in schema order: u8 len, name | u8 tag | value
 *   tags: 0 NULL; 1 INTEGER i64; 2 REAL f64 bits; 3 TEXT u32 len + bytes;
 *   4 BLOB u32 len + bytes; 5 SHA256 of a BLOB (32 bytes: updates.delta).
 *   The magic is the format: FCN2 (written now) enters updates.sealed_sha256,
 *   FCN1 (logs written before) does not; otherwise they are the same. Each
 *   entry is checked in the format it declares; once the chain holds an
 *   FCN2 entry, every later entry must be FCN2 (verify: `canon`).
 * - Delta bodies and retention: the first append of an updates row with a
 *   delta stores its SHA-256 in updates.delta_sha256 (unless its INSERT
 *   did: fedge_audit_append_body). Retention
 *   (aggregator/retention.h) may later drop the body (delta = NULL) of a
 *   finished round: it sets delta_pruned_round = R and, in the same
 *   transaction, logs an events row of kind FEDGE_AUDIT_PRUNE_EVENT with
 *   round R whose detail starts "rounds A-B:" (every dropped body's round in
 *   A..B). A dropped body enters the canon as delta_sha256 (tag 5), so the
 *   row's canon is unchanged and the drop needs no new entry for the row.
 * - At the end of every round, whatever its outcome (closed, failed,
 *   refused), after the round's last audited write and inside the same
 *   transaction, the aggregator calls fedge_audit_sign_head(): ECDSA P-256
 *   (SHA-256) over SHA-256("fedge-audit-head-v1" | u64 seq | u8 has_round |
 *   u32 round | head_hash[32] | f64 signed_at), stored in audit_heads with
 *   seq = the head entry's seq (0 and 32 zero bytes for an empty chain).
 * - Model files are bound to the chain through models.sha256 (hex SHA-256
 *   of the file), which is part of the audited models row.
 * - fedge_audit_verify() proves, with the aggregator's (first) public key:
 *   every link and hash of the chain in seq order; every head signature,
 *   with the key in force at its seq (signing-key rotation, below); every
 *   signed head is an entry of the chain (a truncated tail is caught); every
 *   non-open round has a signed head; a row logged more than once changed
 *   only as the aggregator changes it (a round from open to its outcome; an
 *   update to rejected, with rule and reason; models and events never);
 *   every audited row equals its latest entry, recomputed in that entry's
 *   format (modified), every entry's row
 *   exists (deleted), every row has an entry (inserted behind the log's
 *   back); a stored delta body hashes to delta_sha256 and a missing one was
 *   dropped by a logged retention event covering its round (modified);
 *   every model file hashes to models.sha256. It cannot see entries appended after the last signed head
 *   being removed, nor a whole-database rollback to an older signed state:
 *   keep the last head it prints somewhere else. */
#ifndef FEDGE_AUDIT_H
#define FEDGE_AUDIT_H

#include <stddef.h>
#include <stdint.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/pk.h>
#include <sqlite3.h>

#include "hash.h"

#define FEDGE_AUDIT_KEY_MAX 128      /* longest row key */
#define FEDGE_AUDIT_MAX_FAILURES 32  /* failures kept in a report (all are counted) */
#define FEDGE_AUDIT_PRUNE_EVENT "delta_pruned" /* events.kind of a retention drop */

/* Canon formats, by the magic their bytes start with. */
#define FEDGE_AUDIT_FCN1 1 /* "FCN1": logs written before sealed_sha256 entered */
#define FEDGE_AUDIT_FCN2 2 /* "FCN2": what fedge_audit_append writes */
#define FEDGE_AUDIT_FCN_LATEST FEDGE_AUDIT_FCN2

/* Canonical bytes of the current row in the format appends write: *canon
 * malloc'd, caller frees. FEDGE_ERR_NOT_FOUND when the row does not exist,
 * FEDGE_ERR_INVALID_ARG for a table that is not audited or a malformed key. */
int fedge_audit_canon(sqlite3 *db, const char *tbl, const char *row_key, uint8_t **canon,
                      size_t *len);
/* The same in a given format (FEDGE_AUDIT_FCN1 .. _LATEST; INVALID_ARG
 * otherwise), as verify recomputes a row logged in that format. */
int fedge_audit_canon_format(sqlite3 *db, const char *tbl, const char *row_key, int format,
                             uint8_t **canon, size_t *len);

/* Appends the row's current state to the chain (atomic: a savepoint). */
int fedge_audit_append(sqlite3 *db, const char *tbl, const char *row_key);
/* fedge_audit_append for a row of a table with a hashed BLOB (updates),
 * whose writer computed the BLOB's SHA-256 (body_sha) and stored it in the
 * row's hash column with the BLOB: the BLOB is not read back and hashed
 * again (158 KiB of an int8 mlp:784-200-10 delta per update). The same entry
 * as fedge_audit_append when the stored BLOB hashes to body_sha;
 * FEDGE_ERR_AUDIT_CHAIN (nothing appended) when the hash column holds
 * another value; INVALID_ARG for a table without a hashed BLOB. */
int fedge_audit_append_body(sqlite3 *db, const char *tbl, const char *row_key,
                            const uint8_t body_sha[FEDGE_HASH_LEN]);
/* The same for tables keyed by an integer id (updates, rounds, events). */
int fedge_audit_append_id(sqlite3 *db, const char *tbl, int64_t id);

/* Signs the current head (see above). key: an EC P-256 private key;
 * drbg: a seeded CTR-DRBG (ECDSA blinding). FEDGE_ERR_DUPLICATE when the
 * head was already signed (no audited write since the last signature). */
int fedge_audit_sign_head(sqlite3 *db, uint32_t round, mbedtls_pk_context *key,
                          mbedtls_ctr_drbg_context *drbg);

/* PEM key files. The private key file must not be readable by group or
 * others (FEDGE_ERR_CONFIG_PERMS); both must hold EC P-256 keys
 * (FEDGE_ERR_CRYPTO otherwise, FEDGE_ERR_NOT_FOUND for a missing file,
 * FEDGE_ERR_NOT_REGULAR for a FIFO, device or directory: fedge_read_regular).
 * pk must be mbedtls_pk_init'ed; the caller mbedtls_pk_free's it. */
int fedge_audit_load_private_key(const char *path, mbedtls_pk_context *pk);
int fedge_audit_load_public_key(const char *path, mbedtls_pk_context *pk);
/* New P-256 key pair: private key PEM at priv_path (mode 0600), public key
 * PEM at pub_path (0644). Refuses to overwrite (FEDGE_ERR_DUPLICATE). */
int fedge_audit_generate_keypair(const char *priv_path, const char *pub_path,
                                 mbedtls_ctr_drbg_context *drbg);

typedef enum {
    FEDGE_AUDIT_FAIL_CHAIN_LINK = 1, /* prev_hash is not the previous row_hash / seq gap */
    FEDGE_AUDIT_FAIL_ROW_HASH,       /* row_hash != SHA-256(prev_hash || canon) */
    FEDGE_AUDIT_FAIL_CANON,          /* canon malformed, naming another row, or downgraded */
    FEDGE_AUDIT_FAIL_SIGNATURE,      /* a head signature does not verify */
    FEDGE_AUDIT_FAIL_HEAD,           /* a signed head is not in the chain */
    FEDGE_AUDIT_FAIL_UNSIGNED_ROUND, /* a finished round without a signed head */
    FEDGE_AUDIT_FAIL_REWRITE,        /* a later entry of a row changes what may not change */
    FEDGE_AUDIT_FAIL_ROW_MODIFIED,
    FEDGE_AUDIT_FAIL_ROW_DELETED,
    FEDGE_AUDIT_FAIL_ROW_UNAUDITED,
    FEDGE_AUDIT_FAIL_FILE_MISSING,
    FEDGE_AUDIT_FAIL_FILE_MISMATCH,
    FEDGE_AUDIT_FAIL_STATE_MISMATCH, /* a strategy_state row differs from its audited event */
    FEDGE_AUDIT_FAIL_KEYS_LEDGER,    /* a keys event malformed or not following the device's state */
    FEDGE_AUDIT_FAIL_NOT_ADMITTED,   /* an accepted update from a device the keys ledger did not list */
} fedge_audit_fail_kind;

/* "chain_link", "row_hash", ... "file_mismatch". */
const char *fedge_audit_fail_name(fedge_audit_fail_kind kind);

typedef struct {
    fedge_audit_fail_kind kind;
    int64_t seq;                          /* audit or head seq involved; -1: none */
    char table[16];                       /* "" when none */
    char row_key[FEDGE_AUDIT_KEY_MAX + 1];
    char path[512];                       /* model file; "" when none */
    char message[512];                    /* one line for people */
} fedge_audit_failure;

typedef struct {
    int ok;                       /* 1: everything holds */
    size_t n_entries, n_heads, n_rows, n_files;
    int64_t last_seq;             /* chain end; 0 for an empty chain */
    int64_t last_head_seq;        /* -1 when nothing is signed */
    int64_t last_head_round;      /* -1 when none */
    char last_head_hash[FEDGE_HASH_HEX_LEN];
    size_t unsigned_tail;         /* entries after the last signed head */
    size_t n_failures;            /* all found; the first FEDGE_AUDIT_MAX_FAILURES kept */
    fedge_audit_failure failures[FEDGE_AUDIT_MAX_FAILURES];
    size_t n_rotations;           /* signing-key rotations followed */
    char key_in_force[FEDGE_HASH_HEX_LEN]; /* fingerprint of the key signing new heads */
    char key_anchor[FEDGE_HASH_HEX_LEN];   /* fingerprint of the key verify was given */
    size_t n_rows_older_canon;    /* rows whose latest entry predates FCN_LATEST: a column the
                                     latest format enters (updates.sealed_sha256) is not covered */
} fedge_audit_report;

/* Runs every check (see above) and fills rep. A relative model path P
 * resolves to model_root/P, or model_root/basename(P) when only that exists
 * (so model_root may be the aggregator's working directory or its model
 * folder); model_root NULL: the current directory. Status: FEDGE_OK when
 * all holds; else the code of the first failure's family
 * (FEDGE_ERR_AUDIT_CHAIN, _SIGNATURE or _FILE) with rep->failures[0] naming
 * it; other codes when the checks could not run (bad public key file, SQL
 * error). */
int fedge_audit_verify(sqlite3 *db, const char *pubkey_path, const char *model_root,
                       fedge_audit_report *rep);

/* A strategy_state row (version, state blob, sha256 column) against the
 * log: the blob's SHA-256 must be the column's and the one in the newest
 * audited `strategy_state` event for that version ("model V: ... sha256 H";
 * a row with no event of its own, carried over by a refinement in an older
 * log, needs some audited event with H). *ok = 0 and why otherwise. */
int fedge_audit_strategy_state_check(sqlite3 *db, const char *version, const void *blob, size_t len,
                                     const char *sha256_hex, int *ok, char *why, size_t whylen);

/* ---- signing-key rotation (docs/AUDIT.md "Rotating the signing key") ----
 * A rotation is an audited events row of kind FEDGE_AUDIT_ROTATION_EVENT
 * (rule 'operator') whose detail is exactly
 *   "old sha256 <fingerprint> new sha256 <fingerprint> key <hex of the new
 *    public key's DER SubjectPublicKeyInfo>"
 * (fingerprint: hex SHA-256 of that DER), followed in the same transaction
 * by a signed head at the event's own audit seq, signed by the OLD key. Every
 * later head is signed by the new key. fedge_audit_verify starts from the
 * trust anchor it is given (the first key) and follows the rotations in
 * chain order: a head at seq S must verify with the key named by the last
 * rotation before S (the anchor when none), and each rotation's own head
 * with the key in force before it. */
#define FEDGE_AUDIT_ROTATION_EVENT "signing_key_rotated"
#define FEDGE_AUDIT_PUBKEY_DER_MAX 256

/* Hex SHA-256 of pk's public key as DER SubjectPublicKeyInfo. */
int fedge_audit_key_fingerprint(mbedtls_pk_context *pk, char hex[FEDGE_HASH_HEX_LEN]);
/* The newest rotation in the log: *found 0 when there is none; else *seq
 * (its audit entry) and pk (mbedtls_pk_init'ed, empty) loaded with the
 * public key it names. FEDGE_ERR_AUDIT_CHAIN for a malformed record. */
int fedge_audit_last_rotation(sqlite3 *db, int *found, int64_t *seq, mbedtls_pk_context *pk);
/* Writes a rotation (above) in one transaction. old_key must be the key in
 * force: the newest rotation's key, or, with none, the key the last signed
 * head verifies with (any key when nothing is signed yet); else
 * FEDGE_ERR_SIGNING_KEY and err says why. new_pub: the new key (its public
 * part is used); FEDGE_ERR_INVALID_ARG when it is the old key or not P-256,
 * FEDGE_ERR_SIGNING_KEY when it already signed this log (named by an
 * earlier rotation, old or new: a retired key never comes back).
 * *seq_out (may be NULL) gets the rotation's audit seq. The caller makes
 * sure no aggregator writes to db meanwhile (it would go on signing with
 * the old key). */
int fedge_audit_rotate_key(sqlite3 *db, mbedtls_pk_context *old_key, mbedtls_pk_context *new_pub,
                           mbedtls_ctr_drbg_context *drbg, int64_t *seq_out, char *err, size_t errlen);

/* ---- the keys ledger (docs/AUDIT.md "Keys ledger"; aggregator/keys_audit.h
 * writes it) ----
 * Every change of the device set the daemon serves is an audited events row
 * of kind FEDGE_AUDIT_KEYS_EVENT, device = the device id, rule NULL, detail
 * exactly
 *   "<change> region <R> key id <K>[, was region <R0> key id <K0>] (<source>; keys file <PATH>)"
 * change: added | removed | rekeyed | moved; R: a region (1..32 bytes, no
 * space); K: 16 lowercase hex digits (the envelope key id); the "was" part
 * exactly for rekeyed (K != K0) and moved (K == K0, R != R0); source: 1..15
 * of [a-z]. fedge_audit_verify replays it per device in id order: a device's
 * first entry, and its first after "removed", is "added"; every other entry
 * starts from the device's state before it (the "was" part, or for removed
 * its region and key id, equals it); else FEDGE_AUDIT_FAIL_KEYS_LEDGER. */
#define FEDGE_AUDIT_KEYS_EVENT "keys"
#define FEDGE_AUDIT_REGION_MAX 32
#define FEDGE_AUDIT_KEY_ID_HEX 16

typedef enum {
    FEDGE_KEYS_ADDED = 1,
    FEDGE_KEYS_REMOVED,
    FEDGE_KEYS_REKEYED,
    FEDGE_KEYS_MOVED,
} fedge_keys_change;

typedef struct {
    fedge_keys_change change;
    char region[FEDGE_AUDIT_REGION_MAX + 1];
    char key_id[FEDGE_AUDIT_KEY_ID_HEX + 1];
    char was_region[FEDGE_AUDIT_REGION_MAX + 1]; /* "" unless rekeyed or moved */
    char was_key_id[FEDGE_AUDIT_KEY_ID_HEX + 1];
    char source[16];
} fedge_keys_event;

/* "added", "removed", "rekeyed", "moved"; "?" otherwise. */
const char *fedge_keys_change_name(fedge_keys_change c);
/* The detail of ev (the rules above; FEDGE_ERR_INVALID_ARG when ev breaks
 * them) naming keys_file; FEDGE_ERR_BUFFER_TOO_SMALL when cap is short. */
int fedge_audit_keys_event_format(const fedge_keys_event *ev, const char *keys_file, char *out, size_t cap);
/* FEDGE_ERR_AUDIT_CHAIN unless detail has exactly that form. */
int fedge_audit_keys_event_parse(const char *detail, fedge_keys_event *ev);

/* Every keys events row in id order, as both the daemon (the ledger's state
 * at start-up) and verify (the replay) read it: *out malloc'd, n_out rows;
 * free with fedge_audit_keys_ledger_free. seq: the row's first audit entry,
 * INT64_MAX when it has none; parsed: device non-empty and detail of the form
 * above (ev valid only then). FEDGE_ERR_SQL / FEDGE_ERR_NOMEM. */
typedef struct {
    int64_t id;
    int64_t seq;
    char *device;
    int parsed;
    fedge_keys_event ev;
} fedge_keys_ledger_row;

int fedge_audit_keys_ledger_load(sqlite3 *db, fedge_keys_ledger_row **out, size_t *n_out);
void fedge_audit_keys_ledger_free(fedge_keys_ledger_row *rows, size_t n);

#endif
