/* audit_verify.c — fedge_audit_verify(): the chain, the signed heads, the
 * audited rows against their latest entries, the model files. Each check
 * goes on after a failure so one run lists every problem it can see; a
 * failure in the chain does not cascade (the walk continues from the
 * stored hashes). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "audit_impl.h"
#include "bytes.h"
#include "common.h"

static const char *const FAIL_NAMES[] = {
    "", "chain_link", "row_hash", "canon", "signature", "head", "unsigned_round",
    "row_rewritten", "row_modified", "row_deleted", "row_unaudited", "file_missing", "file_mismatch",
    "state_mismatch", "keys_ledger", "not_admitted"};

const char *fedge_audit_fail_name(fedge_audit_fail_kind kind)
{
    if ((size_t)kind < FEDGE_ARRAY_LEN(FAIL_NAMES) && kind > 0)
        return FAIL_NAMES[kind];
    return "unknown";
}

static int fail_family(fedge_audit_fail_kind kind)
{
    switch (kind) {
    case FEDGE_AUDIT_FAIL_SIGNATURE:
    case FEDGE_AUDIT_FAIL_HEAD: return FEDGE_ERR_AUDIT_SIGNATURE;
    case FEDGE_AUDIT_FAIL_FILE_MISSING:
    case FEDGE_AUDIT_FAIL_FILE_MISMATCH: return FEDGE_ERR_AUDIT_FILE;
    default: return FEDGE_ERR_AUDIT_CHAIN;
    }
}

static void report(fedge_audit_report *rep, fedge_audit_fail_kind kind, int64_t seq,
                   const char *table, const char *row_key, const char *path, const char *fmt,
                   ...) __attribute__((format(printf, 7, 8)));

static void report(fedge_audit_report *rep, fedge_audit_fail_kind kind, int64_t seq,
                   const char *table, const char *row_key, const char *path, const char *fmt,
                   ...)
{
    rep->ok = 0;
    if (rep->n_failures++ >= FEDGE_AUDIT_MAX_FAILURES)
        return;
    fedge_audit_failure *f = &rep->failures[rep->n_failures - 1];
    f->kind = kind;
    f->seq = seq;
    snprintf(f->table, sizeof f->table, "%s", table ? table : "");
    snprintf(f->row_key, sizeof f->row_key, "%s", row_key ? row_key : "");
    snprintf(f->path, sizeof f->path, "%s", path ? path : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof f->message, fmt, ap);
    va_end(ap);
}

void audit_report_failure(fedge_audit_report *rep, fedge_audit_fail_kind kind, int64_t seq, const char *table,
                          const char *row_key, const char *message)
{
    report(rep, kind, seq, table, row_key, NULL, "%s", message);
}

static int view_names(const canon_view *v, const char *tbl, const char *key)
{
    return v->tbl_len == strlen(tbl) && memcmp(v->tbl, tbl, v->tbl_len) == 0 &&
           v->key_len == strlen(key) && memcmp(v->key, key, v->key_len) == 0;
}

/* 1. The chain, in seq order. */
static int check_chain(sqlite3 *db, fedge_audit_report *rep)
{
    int ret = FEDGE_OK;
    sqlite3_stmt *st = NULL;
    uint8_t *msg = NULL;
    size_t msg_cap = 0;
    uint8_t prev[FEDGE_HASH_LEN] = {0};
    int64_t prev_seq = 0, first_latest = 0; /* the first entry in the latest format */
    if (sqlite3_prepare_v2(db,
                           "SELECT seq, tbl, row_key, canon, prev_hash, row_hash FROM audit "
                           "ORDER BY seq",
                           -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, 0);
        const char *tbl = (const char *)sqlite3_column_text(st, 1);
        const char *key = (const char *)sqlite3_column_text(st, 2);
        tbl = tbl ? tbl : "";
        key = key ? key : "";
        const uint8_t *canon = sqlite3_column_blob(st, 3);
        size_t canon_len = (size_t)sqlite3_column_bytes(st, 3);
        const uint8_t *ph = sqlite3_column_blob(st, 4);
        int ph_len = sqlite3_column_bytes(st, 4);
        const uint8_t *rh = sqlite3_column_blob(st, 5);
        int rh_len = sqlite3_column_bytes(st, 5);
        rep->n_entries++;
        rep->last_seq = seq;

        if (seq != prev_seq + 1)
            report(rep, FEDGE_AUDIT_FAIL_CHAIN_LINK, seq, tbl, key, NULL,
                   "audit entry %" PRId64 " follows entry %" PRId64
                   ": entries between them were deleted",
                   seq, prev_seq);
        else if (ph_len != FEDGE_HASH_LEN || memcmp(ph, prev, FEDGE_HASH_LEN) != 0)
            report(rep, FEDGE_AUDIT_FAIL_CHAIN_LINK, seq, tbl, key, NULL,
                   "audit entry %" PRId64 " (%s %s): prev_hash is not the row_hash of entry "
                   "%" PRId64,
                   seq, tbl, key, prev_seq);

        uint8_t h[FEDGE_HASH_LEN];
        if (canon_len + FEDGE_HASH_LEN > msg_cap) {
            uint8_t *m = realloc(msg, canon_len + FEDGE_HASH_LEN);
            if (!m)
                FAIL(FEDGE_ERR_NOMEM);
            msg = m;
            msg_cap = canon_len + FEDGE_HASH_LEN;
        }
        memcpy(msg, ph_len == FEDGE_HASH_LEN ? ph : prev, FEDGE_HASH_LEN);
        if (canon_len)
            memcpy(msg + FEDGE_HASH_LEN, canon, canon_len);
        CHK(fedge_sha256(msg, FEDGE_HASH_LEN + canon_len, h));
        if (rh_len != FEDGE_HASH_LEN || memcmp(h, rh, FEDGE_HASH_LEN) != 0)
            report(rep, FEDGE_AUDIT_FAIL_ROW_HASH, seq, tbl, key, NULL,
                   "audit entry %" PRId64 " (%s %s): row_hash is not SHA-256(prev_hash || canon)",
                   seq, tbl, key);

        canon_view v;
        if (canon_parse(canon, canon_len, &v) != FEDGE_OK || !audit_table_find(tbl) ||
            !view_names(&v, tbl, key))
            report(rep, FEDGE_AUDIT_FAIL_CANON, seq, tbl, key, NULL,
                   "audit entry %" PRId64 ": canonical bytes are malformed or name another row "
                   "than %s %s",
                   seq, tbl, key);
        else if (v.format == FEDGE_AUDIT_FCN_LATEST && !first_latest)
            first_latest = seq;
        else if (v.format < FEDGE_AUDIT_FCN_LATEST && first_latest)
            report(rep, FEDGE_AUDIT_FAIL_CANON, seq, tbl, key, NULL,
                   "audit entry %" PRId64 " (%s %s) is in canon format FCN%d after entry %" PRId64
                   ", the chain's first FCN%d entry: every entry from there on is FCN%d (a downgraded entry)",
                   seq, tbl, key, v.format, first_latest, FEDGE_AUDIT_FCN_LATEST, FEDGE_AUDIT_FCN_LATEST);

        /* Go on from the stored hash so one bad entry is reported once. */
        if (rh_len == FEDGE_HASH_LEN)
            memcpy(prev, rh, FEDGE_HASH_LEN);
        else
            memcpy(prev, h, FEDGE_HASH_LEN);
        prev_seq = seq;
    }
    if (rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
cleanup:
    sqlite3_finalize(st);
    free(msg);
    return ret;
}

/* The signing keys in chain order: [0] the trust anchor, [i] the key named
 * by rotation i at seq[i] (audit.h). */
#define MAX_ROTATIONS 64
typedef struct {
    size_t n;                              /* keys: 1 + rotations */
    mbedtls_pk_context pk[MAX_ROTATIONS + 1];
    int64_t seq[MAX_ROTATIONS + 1];        /* [0]: 0 */
    char fp[MAX_ROTATIONS + 1][FEDGE_HASH_HEX_LEN];
    int sealed[MAX_ROTATIONS + 1];         /* rotation i's own head verified with key i-1 */
} key_history;

static void key_history_free(key_history *h)
{
    for (size_t i = 1; i < h->n; i++)
        mbedtls_pk_free(&h->pk[i]);
}

static int load_rotations(sqlite3 *db, mbedtls_pk_context *anchor, key_history *h, fedge_audit_report *rep)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK, rc, anchor_replaced = 0;
    char old_fp[FEDGE_HASH_HEX_LEN], new_fp[FEDGE_HASH_HEX_LEN];
    h->pk[0] = *anchor; /* borrowed: not freed here */
    h->seq[0] = 0;
    h->n = 1;
    CHK(fedge_audit_key_fingerprint(anchor, h->fp[0]));
    if (sqlite3_prepare_v2(db, AUDIT_ROTATIONS_SQL, -1, &st, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, 0);
        char rk[32];
        snprintf(rk, sizeof rk, "%" PRId64, seq);
        if (h->n > MAX_ROTATIONS) {
            report(rep, FEDGE_AUDIT_FAIL_SIGNATURE, seq, "events", rk, NULL,
                   "more than %d signing-key rotations: the rest are not followed", MAX_ROTATIONS);
            break;
        }
        mbedtls_pk_init(&h->pk[h->n]);
        if (audit_rotation_parse((const char *)sqlite3_column_text(st, 1), &h->pk[h->n], old_fp, new_fp) !=
            FEDGE_OK) {
            mbedtls_pk_free(&h->pk[h->n]);
            report(rep, FEDGE_AUDIT_FAIL_SIGNATURE, seq, "events", rk, NULL,
                   "the signing-key rotation at seq %" PRId64 " is malformed (no usable new key)", seq);
            continue;
        }
        if (h->n == 1)
            anchor_replaced = strcmp(old_fp, h->fp[0]) == 0;
        size_t again = h->n;
        for (size_t j = 0; j < h->n && again == h->n; j++)
            if (strcmp(new_fp, h->fp[j]) == 0)
                again = j;
        if (again == 0 && !anchor_replaced)
            report(rep, FEDGE_AUDIT_FAIL_SIGNATURE, seq, "events", rk, NULL,
                   "the public key given is the one the rotation at seq %" PRId64 " brought in, not the log's"
                   " first key: give the first key (the trust anchor) to verify the history before it",
                   seq);
        else if (again < h->n)
            report(rep, FEDGE_AUDIT_FAIL_SIGNATURE, seq, "events", rk, NULL,
                   "the signing-key rotation at seq %" PRId64 " brings back key sha256 %.16s..., which already "
                   "signed this log (%s): a rotation back to a retired key is never made by fedge-admin (a "
                   "retired key may be compromised); the heads after it are checked with it all the same",
                   seq, new_fp, again == 0 ? "the trust anchor" : "named by an earlier rotation");
        else if (strcmp(old_fp, h->fp[h->n - 1]) != 0)
            report(rep, FEDGE_AUDIT_FAIL_SIGNATURE, seq, "events", rk, NULL,
                   "the signing-key rotation at seq %" PRId64 " says it replaces key sha256 %.16s..., but the key"
                   " in force there is sha256 %.16s...",
                   seq, old_fp, h->fp[h->n - 1]);
        h->seq[h->n] = seq;
        h->sealed[h->n] = 0;
        memcpy(h->fp[h->n], new_fp, sizeof new_fp);
        h->n++;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        FAIL(FEDGE_ERR_SQL);
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* The key a head at seq must verify with: the last rotation strictly
 * before seq (a rotation's own head is the old key's seal). */
static size_t key_at(const key_history *h, int64_t seq)
{
    size_t k = 0;
    for (size_t i = 1; i < h->n; i++)
        if (h->seq[i] < seq)
            k = i;
    return k;
}

static int verifies(mbedtls_pk_context *pk, const uint8_t digest[FEDGE_HASH_LEN], const uint8_t *sig,
                    size_t sig_len)
{
    return sig && mbedtls_pk_verify(pk, MBEDTLS_MD_SHA256, digest, FEDGE_HASH_LEN, sig, sig_len) == 0;
}

static void report_bad_signature(fedge_audit_report *rep, key_history *h, size_t k, int64_t seq, int64_t round,
                                 const char *rk, const uint8_t digest[FEDGE_HASH_LEN], const uint8_t *sig,
                                 size_t sig_len)
{
    char in_force[160];
    if (k == 0)
        snprintf(in_force, sizeof in_force, "the trust anchor, sha256 %.16s...", h->fp[0]);
    else
        snprintf(in_force, sizeof in_force, "sha256 %.16s..., named by the rotation at seq %" PRId64, h->fp[k],
                 h->seq[k]);
    for (size_t j = k + 1; j < h->n; j++)
        if (verifies(&h->pk[j], digest, sig, sig_len)) {
            report(rep, FEDGE_AUDIT_FAIL_SIGNATURE, seq, "audit_heads", rk, NULL,
                   "the head at seq %" PRId64 " (round %" PRId64 ") is signed by the key of the rotation at seq %"
                   PRId64 ", later in the chain: a head signed by a new key before its rotation (the key in "
                   "force is %s)",
                   seq, round, h->seq[j], in_force);
            return;
        }
    for (size_t j = 0; j < k; j++)
        if (verifies(&h->pk[j], digest, sig, sig_len)) {
            report(rep, FEDGE_AUDIT_FAIL_SIGNATURE, seq, "audit_heads", rk, NULL,
                   "the head at seq %" PRId64 " (round %" PRId64 ") is signed by a retired key (sha256 %.16s...);"
                   " the key in force is %s",
                   seq, round, h->fp[j], in_force);
            return;
        }
    int at_rotation = 0;
    for (size_t j = 1; j < h->n; j++)
        at_rotation |= h->seq[j] == seq;
    report(rep, FEDGE_AUDIT_FAIL_SIGNATURE, seq, "audit_heads", rk, NULL,
           "signature of the head at seq %" PRId64 " (round %" PRId64 ") does not verify with the public key in force (%s)%s",
           seq, round, in_force,
           at_rotation ? ": the rotation there is not signed by the key it replaces (a forged rotation)"
           : h->n == 1 ? "; if the key was rotated, give the first key, or a rotation record is missing"
                       : "; a rotation record may be missing");
}

/* 2. Signed heads, and a head for every finished round. */
static int check_heads(sqlite3 *db, mbedtls_pk_context *pk, fedge_audit_report *rep)
{
    int ret = FEDGE_OK;
    sqlite3_stmt *st = NULL, *entry = NULL;
    key_history *h = calloc(1, sizeof *h);
    rep->last_head_seq = -1;
    rep->last_head_round = -1;
    if (!h)
        return FEDGE_ERR_NOMEM;
    CHK(load_rotations(db, pk, h, rep));
    if (sqlite3_prepare_v2(db,
                           "SELECT seq, round, head_hash, signature, signed_at FROM audit_heads "
                           "ORDER BY seq",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT row_hash FROM audit WHERE seq = ?1", -1, &entry, NULL) !=
            SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, 0);
        int has_round = sqlite3_column_type(st, 1) != SQLITE_NULL;
        int64_t round = sqlite3_column_int64(st, 1);
        const uint8_t *hh = sqlite3_column_blob(st, 2);
        int hh_len = sqlite3_column_bytes(st, 2);
        const uint8_t *sig = sqlite3_column_blob(st, 3);
        size_t sig_len = (size_t)sqlite3_column_bytes(st, 3);
        double signed_at = sqlite3_column_double(st, 4);
        char rk[32];
        snprintf(rk, sizeof rk, "%" PRId64, round);
        rep->n_heads++;
        if (hh_len != FEDGE_HASH_LEN) {
            report(rep, FEDGE_AUDIT_FAIL_SIGNATURE, seq, "audit_heads", rk, NULL,
                   "signed head at seq %" PRId64 " has a malformed head_hash", seq);
            continue;
        }
        uint8_t digest[FEDGE_HASH_LEN];
        CHK(audit_head_digest(seq, has_round, (uint32_t)round, hh, signed_at, digest));
        size_t k = key_at(h, seq);
        if (!has_round || round < 0 || round > UINT32_MAX || !verifies(&h->pk[k], digest, sig, sig_len)) {
            report_bad_signature(rep, h, k, seq, round, rk, digest, sig, sig_len);
            continue;
        }
        for (size_t j = 1; j < h->n; j++)
            if (h->seq[j] == seq && j == k + 1)
                h->sealed[j] = 1;
        uint8_t zero[FEDGE_HASH_LEN] = {0};
        if (seq == 0) {
            if (memcmp(hh, zero, FEDGE_HASH_LEN) != 0)
                report(rep, FEDGE_AUDIT_FAIL_HEAD, seq, "audit_heads", rk, NULL,
                       "signed head for an empty chain has a non-zero hash");
        } else {
            sqlite3_reset(entry);
            sqlite3_bind_int64(entry, 1, seq);
            rc = sqlite3_step(entry);
            if (rc == SQLITE_DONE)
                report(rep, FEDGE_AUDIT_FAIL_HEAD, seq, "audit_heads", rk, NULL,
                       "head signed at round %" PRId64 " covers audit entry %" PRId64
                       ", which is missing (the chain ends at %" PRId64 "): the chain was "
                       "truncated or the entry deleted",
                       round, seq, rep->last_seq);
            else if (rc != SQLITE_ROW)
                FAIL(FEDGE_ERR_SQL);
            else if (sqlite3_column_bytes(entry, 0) != FEDGE_HASH_LEN ||
                     memcmp(sqlite3_column_blob(entry, 0), hh, FEDGE_HASH_LEN) != 0)
                report(rep, FEDGE_AUDIT_FAIL_HEAD, seq, "audit_heads", rk, NULL,
                       "head signed at round %" PRId64 " does not match audit entry %" PRId64
                       ": the chain was rewritten",
                       round, seq);
        }
        rep->last_head_seq = seq;
        rep->last_head_round = round;
        fedge_hash_to_hex(hh, rep->last_head_hash);
    }
    if (rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    for (size_t j = 1; j < h->n; j++) {
        char rk[32];
        snprintf(rk, sizeof rk, "%" PRId64, h->seq[j]);
        if (!h->sealed[j])
            report(rep, FEDGE_AUDIT_FAIL_SIGNATURE, h->seq[j], "events", rk, NULL,
                   "the signing-key rotation at seq %" PRId64 " (to sha256 %.16s...) has no head signed by the key"
                   " it replaces: it is not proven to come from the key holder",
                   h->seq[j], h->fp[j]);
    }
    rep->n_rotations = h->n - 1;
    memcpy(rep->key_anchor, h->fp[0], FEDGE_HASH_HEX_LEN);
    memcpy(rep->key_in_force, h->fp[h->n - 1], FEDGE_HASH_HEX_LEN);
    int64_t signed_upto = rep->last_head_seq < 0 ? 0 : rep->last_head_seq;
    rep->unsigned_tail = rep->last_seq > signed_upto ? (size_t)(rep->last_seq - signed_upto) : 0;

    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT id, status FROM rounds WHERE status <> 'open' AND id NOT IN "
                           "(SELECT round FROM audit_heads WHERE round IS NOT NULL) ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char rk[32];
        snprintf(rk, sizeof rk, "%" PRId64, (int64_t)sqlite3_column_int64(st, 0));
        report(rep, FEDGE_AUDIT_FAIL_UNSIGNED_ROUND, -1, "rounds", rk, NULL,
               "round %s is %s but no signed head covers it", rk,
               (const char *)sqlite3_column_text(st, 1));
    }
    if (rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
cleanup:
    sqlite3_finalize(st);
    sqlite3_finalize(entry);
    key_history_free(h);
    free(h);
    return ret;
}

/* Finds column `name` of a canon view; 0 when absent or malformed. */
static int canon_get(const canon_view *v, const char *name, canon_col *out)
{
    const uint8_t *pos = v->cols;
    size_t nl = strlen(name);
    for (size_t i = 0; i < v->n_cols; i++) {
        if (canon_next(v, &pos, out) != FEDGE_OK)
            return 0;
        if (out->name_len == nl && memcmp(out->name, name, nl) == 0)
            return 1;
    }
    return 0;
}

static int text_is(const canon_col *c, const char *s)
{
    return c->tag == TAG_TEXT && c->val_len == strlen(s) && memcmp(c->val, s, c->val_len) == 0;
}

/* Column name (len bytes) of entry v of table t: 1 and *c when v enters
 * it; 0 and a NULL *c when v's format carries it but left it out (a later
 * column, NULL); -1 when v's format does not carry it. */
static int entry_col(const canon_view *v, const audit_table *t, const char *name, size_t len, canon_col *c)
{
    char n[64];
    if (len >= sizeof n)
        return -1;
    memcpy(n, name, len);
    n[len] = '\0';
    if (canon_get(v, n, c))
        return 1;
    memset(c, 0, sizeof *c);
    c->name = name;
    c->name_len = len;
    c->tag = TAG_NULL;
    return audit_layout_has(t, v->format, name, len) ? 0 : -1;
}

static int same_value(const canon_col *a, const canon_col *b)
{
    return a->tag == b->tag && a->val_len == b->val_len && (a->val_len == 0 || memcmp(a->val, b->val, a->val_len) == 0);
}

/* Walks the columns of entries a and b of table t by name, a column one of
 * them leaves out (a later column, NULL) as NULL, one a's older format does
 * not carry not at all; calls differ(ca, cb) for each column whose value
 * differs, until it returns nonzero. -1: malformed bytes, a column b's
 * format does not carry, or b's format drops a column a's carries; else
 * what differ returned last (0: none). */
typedef int (*col_differ_fn)(const canon_col *ca, const canon_col *cb, void *ctx);

static int walk_differences(const audit_table *t, const canon_view *va, const canon_view *vb, col_differ_fn differ,
                            void *ctx)
{
    canon_col ca, cb;
    const uint8_t *pos = vb->cols;
    for (size_t i = 0; i < vb->n_cols; i++) {
        if (canon_next(vb, &pos, &cb) != FEDGE_OK || !audit_layout_has(t, vb->format, cb.name, cb.name_len))
            return -1;
        int in_a = entry_col(va, t, cb.name, cb.name_len, &ca);
        if (in_a >= 0 && !same_value(&ca, &cb)) {
            int r = differ(&ca, &cb, ctx);
            if (r)
                return r;
        }
    }
    pos = va->cols;
    for (size_t i = 0; i < va->n_cols; i++) {
        if (canon_next(va, &pos, &ca) != FEDGE_OK)
            return -1;
        int in_b = entry_col(vb, t, ca.name, ca.name_len, &cb);
        if (in_b < 0)
            return -1;
        if (in_b == 0 && ca.tag != TAG_NULL) {
            int r = differ(&ca, &cb, ctx);
            if (r)
                return r;
        }
    }
    return 0;
}

typedef struct {
    char *buf;
    size_t cap;
    const char *fmt;        /* %.*s the column, then two %s: its values in a and b (swap: b and a) */
    int swap;
    const char *const *may; /* columns allowed to differ, NULL-terminated; NULL: none */
} diff_ctx;

static int in_list(const char *name, size_t len, const char *const *list)
{
    for (; list && *list; list++)
        if (strlen(*list) == len && memcmp(*list, name, len) == 0)
            return 1;
    return 0;
}

static int name_difference(const canon_col *ca, const canon_col *cb, void *ctx)
{
    diff_ctx *d = ctx;
    if (in_list(cb->name, cb->name_len, d->may))
        return 0;
    char x[80], y[80];
    canon_value_text(d->swap ? cb : ca, x, sizeof x);
    canon_value_text(d->swap ? ca : cb, y, sizeof y);
    snprintf(d->buf, d->cap, d->fmt, (int)cb->name_len, cb->name, x, y);
    return 1;
}

/* Names the first column where the row (now) and its latest entry (logged,
 * both in the entry's format) differ. */
static void describe_diff(const char *tbl, const uint8_t *logged, size_t logged_len, const uint8_t *now,
                          size_t now_len, char *buf, size_t cap)
{
    canon_view a, b;
    snprintf(buf, cap, "its canonical bytes differ");
    if (canon_parse(logged, logged_len, &a) != FEDGE_OK || canon_parse(now, now_len, &b) != FEDGE_OK)
        return;
    diff_ctx d = {buf, cap, "column %.*s is %s in the table but %s in the audit log", 1, NULL};
    if (walk_differences(audit_table_find(tbl), &a, &b, name_difference, &d) != 1)
        snprintf(buf, cap, "its canonical bytes differ");
}

/* May a row logged as `a` be logged again as `b`? The aggregator closes a
 * round once (open -> closed|failed) and refuses an accepted update at
 * round close (decision -> rejected, with rule and reason). Anything else
 * is a rewrite; b may enter a column a's older format did not (a row first
 * logged before an upgrade). On refusal, why names the column. */
static int transition_ok(const char *tbl, const uint8_t *a, size_t a_len, const uint8_t *b,
                         size_t b_len, char *why, size_t cap)
{
    static const char *const ROUND_CLOSE[] = {"closed_at", "status", "new_version", "n_accepted",
                                              "n_rejected", "bytes_received", "accuracy",
                                              "epsilon", "reason", NULL};
    static const char *const UPDATE_REFUSE[] = {"decision", "rule", "reason", NULL};
    canon_view va, vb;
    canon_col ca, cb;
    const audit_table *t = audit_table_find(tbl);
    if (!t || canon_parse(a, a_len, &va) != FEDGE_OK || canon_parse(b, b_len, &vb) != FEDGE_OK) {
        snprintf(why, cap, "malformed canonical bytes");
        return 0;
    }
    if (vb.format < va.format) {
        snprintf(why, cap, "the later entry is in canon format FCN%d, the earlier in FCN%d", vb.format, va.format);
        return 0;
    }
    const char *const *may = NULL;
    if (strcmp(tbl, "rounds") == 0 && canon_get(&va, "status", &ca) && text_is(&ca, "open"))
        may = ROUND_CLOSE;
    if (strcmp(tbl, "updates") == 0 && canon_get(&va, "decision", &ca) &&
        !text_is(&ca, "rejected") && canon_get(&vb, "decision", &cb) && text_is(&cb, "rejected"))
        may = UPDATE_REFUSE;
    diff_ctx d = {why, cap, "column %.*s changed from %s to %s", 0, may};
    int r = walk_differences(t, &va, &vb, name_difference, &d);
    if (r < 0)
        snprintf(why, cap, "the entries have different layouts");
    return r == 0;
}

/* 3a. Rows logged more than once: each later entry a permitted change. */
static int check_transitions(sqlite3 *db, fedge_audit_report *rep)
{
    int ret = FEDGE_OK;
    sqlite3_stmt *st = NULL;
    uint8_t *prev = NULL;
    size_t prev_len = 0;
    char prev_tbl[16] = "", prev_key[FEDGE_AUDIT_KEY_MAX + 1] = "";
    if (sqlite3_prepare_v2(db,
                           "SELECT seq, tbl, row_key, canon FROM audit WHERE (tbl, row_key) IN "
                           "(SELECT tbl, row_key FROM audit GROUP BY tbl, row_key "
                           "HAVING count(*) > 1) ORDER BY tbl, row_key, seq",
                           -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, 0);
        const char *tbl = (const char *)sqlite3_column_text(st, 1);
        const char *key = (const char *)sqlite3_column_text(st, 2);
        const uint8_t *canon = sqlite3_column_blob(st, 3);
        size_t len = (size_t)sqlite3_column_bytes(st, 3);
        if (!tbl || !key)
            continue;
        if (prev && strcmp(tbl, prev_tbl) == 0 && strcmp(key, prev_key) == 0) {
            char why[256];
            if (!transition_ok(tbl, prev, prev_len, canon, len, why, sizeof why))
                report(rep, FEDGE_AUDIT_FAIL_REWRITE, seq, tbl, key, NULL,
                       "%s row %s was rewritten at audit entry %" PRId64 ": %s", tbl, key, seq,
                       why);
        }
        uint8_t *copy = malloc(len ? len : 1);
        if (!copy)
            FAIL(FEDGE_ERR_NOMEM);
        if (len)
            memcpy(copy, canon, len);
        free(prev);
        prev = copy;
        prev_len = len;
        snprintf(prev_tbl, sizeof prev_tbl, "%s", tbl);
        snprintf(prev_key, sizeof prev_key, "%s", key);
    }
    if (rc != SQLITE_DONE)
        ret = FEDGE_ERR_SQL;
cleanup:
    sqlite3_finalize(st);
    free(prev);
    return ret;
}

/* The rounds each audited delta_pruned event dropped bodies of. */
typedef struct {
    int64_t at_round;
    uint32_t first, last;
} prune_event;

typedef struct {
    prune_event *ev;
    size_t n;
} prune_log;

static int load_prunes(sqlite3 *db, prune_log *log)
{
    int ret = FEDGE_OK;
    sqlite3_stmt *st = NULL;
    size_t cap = 0;
    memset(log, 0, sizeof *log);
    if (sqlite3_prepare_v2(db,
                           "SELECT round, detail FROM events WHERE kind = '" FEDGE_AUDIT_PRUNE_EVENT
                           "' AND round IS NOT NULL ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        prune_event e = {.at_round = sqlite3_column_int64(st, 0)};
        if (!audit_prune_range((const char *)sqlite3_column_text(st, 1), &e.first, &e.last))
            continue;
        if (log->n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            prune_event *p = realloc(log->ev, ncap * sizeof *p);
            if (!p)
                FAIL(FEDGE_ERR_NOMEM);
            log->ev = p;
            cap = ncap;
        }
        log->ev[log->n++] = e;
    }
    if (rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
cleanup:
    sqlite3_finalize(st);
    return ret;
}

static int prune_covers(const prune_log *log, int64_t at_round, int64_t round)
{
    for (size_t i = 0; i < log->n; i++)
        if (log->ev[i].at_round == at_round && round >= log->ev[i].first &&
            round <= log->ev[i].last)
            return 1;
    return 0;
}

/* An updates row whose canon matches its entry: the stored body must hash
 * to delta_sha256, and an absent body must have been dropped by retention. */
static void check_body(const audit_body_info *b, const uint8_t *canon, size_t len,
                       const prune_log *prunes, int64_t seq, const char *key,
                       fedge_audit_report *rep)
{
    char have[FEDGE_HASH_HEX_LEN], kept[FEDGE_HASH_HEX_LEN];
    if (b->has_body) {
        if (b->hash_state != 1) {
            report(rep, FEDGE_AUDIT_FAIL_ROW_MODIFIED, seq, "updates", key, NULL,
                   "updates row %s was modified after audit entry %" PRId64
                   ": column delta_sha256 is %s beside a stored delta body",
                   key, seq, b->hash_state == 0 ? "NULL" : "not a SHA-256");
        } else if (memcmp(b->body_sha, b->stored_sha, FEDGE_HASH_LEN) != 0) {
            fedge_hash_to_hex(b->body_sha, have);
            fedge_hash_to_hex(b->stored_sha, kept);
            report(rep, FEDGE_AUDIT_FAIL_ROW_MODIFIED, seq, "updates", key, NULL,
                   "updates row %s was modified after audit entry %" PRId64
                   ": column delta_sha256 is %.16s... but the delta body and the audit log "
                   "hash to %.16s...",
                   key, seq, kept, have);
        }
        return;
    }
    if (!b->pruned || b->hash_state != 1)
        return; /* no body was ever logged, or the canon comparison said so */
    canon_view v;
    canon_col c;
    int64_t round = -1;
    if (canon_parse(canon, len, &v) == FEDGE_OK && canon_get(&v, "round", &c) &&
        c.tag == TAG_INT)
        round = (int64_t)fedge_get_u64(c.val);
    if (!prune_covers(prunes, b->pruned_round, round))
        report(rep, FEDGE_AUDIT_FAIL_ROW_MODIFIED, seq, "updates", key, NULL,
               "updates row %s was modified after audit entry %" PRId64
               ": its delta body is gone and marked dropped by retention at round %" PRId64
               ", but no " FEDGE_AUDIT_PRUNE_EVENT " event of that round covers round %" PRId64,
               key, seq, b->pruned_round, round);
}

/* 3. Rows against their latest entries, and rows without entries. */

/* 1 when a row logged in format leaves out a column the latest format enters
 * (the row's canon then does not cover it). */
static int layout_lacks_latest(const audit_table *t, int format)
{
    if (!t || format >= FEDGE_AUDIT_FCN_LATEST)
        return 0;
    const audit_layout *l = &t->fcn[FEDGE_AUDIT_FCN_LATEST - 1];
    for (size_t i = 0; i < l->n_cols; i++)
        if (!audit_layout_has(t, format, l->cols[i], strlen(l->cols[i])))
            return 1;
    return 0;
}

static int check_rows(sqlite3 *db, const prune_log *prunes, fedge_audit_report *rep)
{
    int ret = FEDGE_OK;
    sqlite3_stmt *st = NULL;
    uint8_t *canon = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT a.seq, a.tbl, a.row_key, a.canon FROM audit a "
                           "WHERE a.seq = (SELECT max(b.seq) FROM audit b "
                           "WHERE b.tbl = a.tbl AND b.row_key = a.row_key) ORDER BY a.seq",
                           -1, &st, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, 0);
        const char *tbl = (const char *)sqlite3_column_text(st, 1);
        const char *key = (const char *)sqlite3_column_text(st, 2);
        const uint8_t *logged = sqlite3_column_blob(st, 3);
        size_t logged_len = (size_t)sqlite3_column_bytes(st, 3);
        if (!tbl || !key || !audit_table_find(tbl))
            continue; /* reported by the chain walk as a bad canon */
        size_t len = 0;
        free(canon);
        canon = NULL;
        audit_body_info body;
        canon_view lv; /* recomputed in the format the entry declares */
        int format = canon_parse(logged, logged_len, &lv) == FEDGE_OK ? lv.format : FEDGE_AUDIT_FCN_LATEST;
        int r = audit_canon_ex(db, tbl, key, format, &canon, &len, &body);
        rep->n_rows++;
        if (layout_lacks_latest(audit_table_find(tbl), format))
            rep->n_rows_older_canon++;
        if (r == FEDGE_ERR_NOT_FOUND || r == FEDGE_ERR_INVALID_ARG) {
            report(rep, FEDGE_AUDIT_FAIL_ROW_DELETED, seq, tbl, key, NULL,
                   "%s row %s was deleted (last logged at audit entry %" PRId64 ")", tbl, key,
                   seq);
        } else if (r != FEDGE_OK) {
            FAIL(r);
        } else if (len != logged_len || memcmp(canon, logged, len) != 0) {
            char diff[256];
            describe_diff(tbl, logged, logged_len, canon, len, diff, sizeof diff);
            report(rep, FEDGE_AUDIT_FAIL_ROW_MODIFIED, seq, tbl, key, NULL,
                   "%s row %s was modified after audit entry %" PRId64 ": %s", tbl, key, seq,
                   diff);
        } else if (audit_table_find(tbl)->hashed_blob) {
            check_body(&body, canon, len, prunes, seq, key, rep);
        }
    }
    if (rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    sqlite3_finalize(st);
    st = NULL;

    for (size_t i = 0; audit_table_at(i); i++) {
        const audit_table *t = audit_table_at(i);
        char sql[256];
        snprintf(sql, sizeof sql,
                 "SELECT CAST(%s AS TEXT) FROM %s WHERE NOT EXISTS (SELECT 1 FROM audit "
                 "WHERE tbl = '%s' AND row_key = CAST(%s.%s AS TEXT)) ORDER BY %s",
                 t->key_col, t->name, t->name, t->name, t->key_col, t->key_col);
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
            /* a table newer than the database (dp_ledger) holds no rows */
            snprintf(sql, sizeof sql, "SELECT 1 FROM sqlite_master WHERE name = '%s'", t->name);
            if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
                FAIL(FEDGE_ERR_SQL);
            rc = sqlite3_step(st);
            sqlite3_finalize(st);
            st = NULL;
            if (rc == SQLITE_DONE)
                continue;
            FAIL(FEDGE_ERR_SQL);
        }
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *key = (const char *)sqlite3_column_text(st, 0);
            report(rep, FEDGE_AUDIT_FAIL_ROW_UNAUDITED, -1, t->name, key ? key : "NULL", NULL,
                   "%s row %s has no audit entry: it was inserted behind the log's back",
                   t->name, key ? key : "NULL");
        }
        if (rc != SQLITE_DONE)
            FAIL(FEDGE_ERR_SQL);
        sqlite3_finalize(st);
        st = NULL;
    }
cleanup:
    sqlite3_finalize(st);
    free(canon);
    return ret;
}

/* 4. Model files against models.sha256. */
static int check_files(sqlite3 *db, const char *model_root, fedge_audit_report *rep)
{
    int ret = FEDGE_OK;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT version, path, sha256 FROM models ORDER BY created_at, version",
                           -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *version = (const char *)sqlite3_column_text(st, 0);
        const char *path = (const char *)sqlite3_column_text(st, 1);
        const char *want = (const char *)sqlite3_column_text(st, 2);
        version = version ? version : "";
        path = path ? path : "";
        want = want ? want : "";
        char full[1024];
        if (path[0] == '/' || !model_root || !model_root[0])
            snprintf(full, sizeof full, "%s", path);
        else
            snprintf(full, sizeof full, "%s/%s", model_root, path);
        /* A moved run: an old log's absolute path, or a relative one that
         * starts above the model folder, found by its file name in model_root. */
        const char *base = strrchr(path, '/');
        if (access(full, F_OK) != 0 && base && model_root && model_root[0]) {
            char alt[1024];
            snprintf(alt, sizeof alt, "%s/%s", model_root, base + 1);
            if (access(alt, F_OK) == 0)
                memcpy(full, alt, sizeof full);
        }
        rep->n_files++;
        uint8_t h[FEDGE_HASH_LEN];
        int r = fedge_sha256_file(full, h);
        if (r != FEDGE_OK) {
            report(rep, FEDGE_AUDIT_FAIL_FILE_MISSING, -1, "models", version, full,
                   "model %.16s: file %s cannot be read (%s)", version, full,
                   fedge_strerror(r));
            continue;
        }
        char hex[FEDGE_HASH_HEX_LEN];
        fedge_hash_to_hex(h, hex);
        if (strcasecmp(hex, want) != 0)
            report(rep, FEDGE_AUDIT_FAIL_FILE_MISMATCH, -1, "models", version, full,
                   "model %.16s: file %s has sha256 %.16s..., the log says %.16s...", version,
                   full, hex, want);
    }
    if (rc != SQLITE_DONE)
        ret = FEDGE_ERR_SQL;
    sqlite3_finalize(st);
    return ret;
}

/* H of the newest audited strategy_state event naming version (or, with
 * version NULL, the first whose H is want): *found = 0 when none. */
static int state_event_sha(sqlite3 *db, const char *version, const char *want, char out[FEDGE_HASH_HEX_LEN],
                           int *found)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK, rc;
    *found = 0;
    const char *sql = version ? "SELECT detail FROM events e WHERE kind='strategy_state'"
                                " AND substr(detail, 1, length(?1) + 7) = 'model ' || ?1 || ':'"
                                " AND EXISTS(SELECT 1 FROM audit WHERE tbl='events' AND row_key=CAST(e.id AS TEXT))"
                                " ORDER BY id DESC LIMIT 1"
                              : "SELECT detail FROM events e WHERE kind='strategy_state'"
                                " AND substr(detail, -64) = ?1"
                                " AND EXISTS(SELECT 1 FROM audit WHERE tbl='events' AND row_key=CAST(e.id AS TEXT))"
                                " LIMIT 1";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    sqlite3_bind_text(st, 1, version ? version : want, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *detail = (const char *)sqlite3_column_text(st, 0);
        const char *h = detail ? strstr(detail, "sha256 ") : NULL;
        for (const char *n = h; n; n = strstr(n + 1, "sha256 ")) /* the last one */
            h = n;
        if (h && strlen(h + 7) == FEDGE_HASH_HEX_LEN - 1) {
            memcpy(out, h + 7, FEDGE_HASH_HEX_LEN);
            *found = 1;
        }
    } else if (rc != SQLITE_DONE) {
        ret = FEDGE_ERR_SQL;
    }
    sqlite3_finalize(st);
    return ret;
}

int fedge_audit_strategy_state_check(sqlite3 *db, const char *version, const void *blob, size_t len,
                                     const char *sha256_hex, int *ok, char *why, size_t whylen)
{
    uint8_t h[FEDGE_HASH_LEN];
    char got[FEDGE_HASH_HEX_LEN], logged[FEDGE_HASH_HEX_LEN];
    int found = 0, ret;
    *ok = 0;
    if (!db || !version || (!blob && len) || !why || whylen == 0)
        return FEDGE_ERR_INVALID_ARG;
    CHK(fedge_sha256(blob ? blob : "", len, h));
    fedge_hash_to_hex(h, got);
    if (!sha256_hex || strcasecmp(got, sha256_hex) != 0) {
        snprintf(why, whylen, "strategy_state of model %.16s does not match its sha256 column", version);
        goto cleanup;
    }
    CHK(state_event_sha(db, version, NULL, logged, &found));
    if (!found)
        CHK(state_event_sha(db, NULL, got, logged, &found));
    if (!found) {
        snprintf(why, whylen, "strategy_state of model %.16s (sha256 %.16s...) has no audited strategy_state event",
                 version, got);
        goto cleanup;
    }
    if (strcasecmp(got, logged) != 0) {
        snprintf(why, whylen, "strategy_state of model %.16s has sha256 %.16s..., its audited event says %.16s...",
                 version, got, logged);
        goto cleanup;
    }
    *ok = 1;
cleanup:
    return ret;
}

static int check_strategy_state(sqlite3 *db, fedge_audit_report *rep)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK, rc;
    /* logs from before the table have none */
    if (sqlite3_prepare_v2(db, "SELECT version, state, sha256 FROM strategy_state ORDER BY round, version", -1, &st,
                           NULL) != SQLITE_OK)
        return FEDGE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *version = (const char *)sqlite3_column_text(st, 0);
        char why[256];
        int ok = 0;
        ret = fedge_audit_strategy_state_check(db, version ? version : "", sqlite3_column_blob(st, 1),
                                               (size_t)sqlite3_column_bytes(st, 1),
                                               (const char *)sqlite3_column_text(st, 2), &ok, why, sizeof why);
        if (ret != FEDGE_OK)
            break;
        if (!ok)
            report(rep, FEDGE_AUDIT_FAIL_STATE_MISMATCH, -1, "strategy_state", version ? version : "", NULL, "%s",
                   why);
    }
    if (ret == FEDGE_OK && rc != SQLITE_DONE)
        ret = FEDGE_ERR_SQL;
    sqlite3_finalize(st);
    return ret;
}

int fedge_audit_verify(sqlite3 *db, const char *pubkey_path, const char *model_root,
                       fedge_audit_report *rep)
{
    int ret = FEDGE_OK;
    mbedtls_pk_context pk;
    prune_log prunes = {0};
    mbedtls_pk_init(&pk);
    if (!db || !pubkey_path || !rep)
        FAIL(FEDGE_ERR_INVALID_ARG);
    memset(rep, 0, sizeof *rep);
    rep->ok = 1;
    rep->last_head_seq = -1;
    rep->last_head_round = -1;
    CHK(fedge_audit_load_public_key(pubkey_path, &pk));
    /* One read transaction: a consistent snapshot while the aggregator writes. */
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    ret = check_chain(db, rep);
    if (ret == FEDGE_OK)
        ret = check_heads(db, &pk, rep);
    if (ret == FEDGE_OK)
        ret = check_transitions(db, rep);
    if (ret == FEDGE_OK)
        ret = load_prunes(db, &prunes);
    if (ret == FEDGE_OK)
        ret = check_rows(db, &prunes, rep);
    if (ret == FEDGE_OK)
        ret = check_files(db, model_root, rep);
    if (ret == FEDGE_OK)
        ret = check_strategy_state(db, rep);
    if (ret == FEDGE_OK)
        ret = audit_check_keys_ledger(db, rep);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (ret == FEDGE_OK && !rep->ok)
        ret = fail_family(rep->failures[0].kind);
cleanup:
    free(prunes.ev);
    mbedtls_pk_free(&pk);
    return ret;
}
