/* audit.c — canonical row bytes, appending to the hash chain, signing the
 * head, and the aggregator's ECDSA key files (see audit.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/ecp.h>
#include <mbedtls/platform_util.h>

#include "audit_impl.h"
#include "bytes.h"
#include "common.h"
#include "fileio.h"

/* ---- the audited tables (column order = store.h's schema) ----------------- */

static const char *const UPDATES_FCN1[] = {
    "id", "round", "device", "received_at", "n_samples", "encoding", "bytes",
    "counter", "norm", "decision", "rule", "reason", "delta",
    /* later: the edge's training metrics, shared/update.h */
    "train_loss", "train_accuracy", "train_epochs", "train_ms"};
static const char *const UPDATES_FCN2[] = {
    "id", "round", "device", "received_at", "n_samples", "encoding", "bytes",
    "counter", "norm", "decision", "rule", "reason", "delta", "sealed_sha256",
    "train_loss", "train_accuracy", "train_epochs", "train_ms"};
static const char *const MODELS_COLS[] = {
    "version", "parent", "kind", "round", "path", "sha256", "accuracy", "created_at", "info"};
static const char *const ROUNDS_COLS[] = {
    "id", "opened_at", "deadline", "closed_at", "status", "base_version", "new_version",
    "strategy", "n_selected", "n_accepted", "n_rejected", "bytes_received", "accuracy",
    "epsilon", "reason"};
static const char *const EVENTS_COLS[] = {"id", "at", "round", "device", "kind", "rule", "detail"};
static const char *const DP_LEDGER_COLS[] = {"round", "q", "sigma", "clip", "orders", "rdp"};
static const char *const ROUND_TRAINING_COLS[] = {"round", "reports", "samples", "train_loss", "train_loss_sd",
                                                   "train_accuracy", "train_accuracy_sd"};

#define ALL(cols) {cols, FEDGE_ARRAY_LEN(cols), FEDGE_ARRAY_LEN(cols)}
#define SAME_IN_BOTH(cols) {ALL(cols), ALL(cols)}, FEDGE_ARRAY_LEN(cols)

static const audit_table TABLES[] = {
    {"updates", "id", 1,
     {{UPDATES_FCN1, FEDGE_ARRAY_LEN(UPDATES_FCN1), 13}, {UPDATES_FCN2, FEDGE_ARRAY_LEN(UPDATES_FCN2), 14}},
     13, "delta", "delta_sha256", "delta_pruned_round"},
    {"models", "version", 0, SAME_IN_BOTH(MODELS_COLS), NULL, NULL, NULL},
    {"rounds", "id", 1, SAME_IN_BOTH(ROUNDS_COLS), NULL, NULL, NULL},
    {"events", "id", 1, SAME_IN_BOTH(EVENTS_COLS), NULL, NULL, NULL},
    {"dp_ledger", "round", 1, SAME_IN_BOTH(DP_LEDGER_COLS), NULL, NULL, NULL},
    {"round_training", "round", 1, SAME_IN_BOTH(ROUND_TRAINING_COLS), NULL, NULL, NULL},
};

static const char *const MAGIC[FEDGE_AUDIT_FCN_LATEST] = {"FCN1", "FCN2"};

/* The format this thread's appends write (audit_test_write_format). */
static _Thread_local int write_format;

void audit_test_write_format(int format)
{
    write_format = format;
}

int audit_layout_has(const audit_table *t, int format, const char *name, size_t len)
{
    if (!t || format < FEDGE_AUDIT_FCN1 || format > FEDGE_AUDIT_FCN_LATEST)
        return 0;
    const audit_layout *l = &t->fcn[format - 1];
    for (size_t i = 0; i < l->n_cols; i++)
        if (strlen(l->cols[i]) == len && memcmp(l->cols[i], name, len) == 0)
            return 1;
    return 0;
}

const audit_table *audit_table_find(const char *name)
{
    for (size_t i = 0; name && i < FEDGE_ARRAY_LEN(TABLES); i++)
        if (strcmp(TABLES[i].name, name) == 0)
            return &TABLES[i];
    return NULL;
}

const audit_table *audit_table_at(size_t i)
{
    return i < FEDGE_ARRAY_LEN(TABLES) ? &TABLES[i] : NULL;
}

int audit_prune_range(const char *detail, uint32_t *first, uint32_t *last)
{
    unsigned a = 0, b = 0;
    int used = 0;
    if (!detail || strncmp(detail, "rounds ", 7) != 0 || detail[7] < '0' || detail[7] > '9')
        return 0;
    if (sscanf(detail, "rounds %u-%u:%n", &a, &b, &used) != 2 || used == 0 || a > b)
        return 0;
    *first = a;
    *last = b;
    return 1;
}

/* ---- canonical bytes -------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    int failed;
} buf_t;

static void put(buf_t *b, const void *data, size_t n)
{
    if (b->failed)
        return;
    if (n > SIZE_MAX - b->len) {
        b->failed = 1;
        return;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap = (cap > SIZE_MAX / 2) ? b->len + n : cap * 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->failed = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void put_u8(buf_t *b, unsigned v)
{
    uint8_t x = (uint8_t)v;
    put(b, &x, 1);
}

/* The low `bytes` bytes of v, little-endian. */
static void put_le(buf_t *b, uint64_t v, int bytes)
{
    uint8_t x[8];
    fedge_put_u64(x, v);
    put(b, x, (size_t)bytes);
}

/* key strictly decimal for integer-keyed tables, 1..FEDGE_AUDIT_KEY_MAX chars. */
static int parse_key(const audit_table *t, const char *row_key, int64_t *id)
{
    size_t n = row_key ? strlen(row_key) : 0;
    if (n == 0 || n > FEDGE_AUDIT_KEY_MAX)
        return FEDGE_ERR_INVALID_ARG;
    if (!t->int_key)
        return FEDGE_OK;
    if (n > 19 || (row_key[0] == '0' && n > 1) || (row_key[0] == '-' && n == 1))
        return FEDGE_ERR_INVALID_ARG;
    for (size_t i = (row_key[0] == '-'); i < n; i++)
        if (row_key[i] < '0' || row_key[i] > '9')
            return FEDGE_ERR_INVALID_ARG;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(row_key, &end, 10);
    if (errno == ERANGE || *end != '\0')
        return FEDGE_ERR_INVALID_ARG;
    *id = (int64_t)v;
    return FEDGE_OK;
}

/* *has: the database's table tbl has column col. */
static int has_column(sqlite3 *db, const char *tbl, const char *col, int *has)
{
    sqlite3_stmt *st = NULL;
    *has = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2", -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    sqlite3_bind_text(st, 1, tbl, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, col, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_ROW)
        *has = 1;
    else if (rc != SQLITE_DONE)
        return FEDGE_ERR_SQL;
    return FEDGE_OK;
}

/* known_sha: the hashed BLOB's SHA-256 as its writer computed it; the BLOB
 * is then not read (only its type) */
static int canon_build(sqlite3 *db, const char *tbl, const char *row_key, int format, const uint8_t *known_sha,
                       uint8_t **canon, size_t *len, audit_body_info *body)
{
    int ret = FEDGE_OK;
    sqlite3_stmt *st = NULL;
    buf_t b = {0};
    char sql[768];
    int64_t id = 0;
    audit_body_info info;
    memset(&info, 0, sizeof info);
    if (body)
        memset(body, 0, sizeof *body);
    if (!db || !canon || !len || format < FEDGE_AUDIT_FCN1 || format > FEDGE_AUDIT_FCN_LATEST)
        return FEDGE_ERR_INVALID_ARG;
    *canon = NULL;
    *len = 0;
    const audit_table *t = audit_table_find(tbl);
    if (!t)
        return FEDGE_ERR_INVALID_ARG;
    CHK(parse_key(t, row_key, &id));
    const audit_layout *l = &t->fcn[format - 1];

    /* pass 1: a database without some later columns; they read as NULL */
    for (int pass = 0;; pass++) {
        size_t used = (size_t)snprintf(sql, sizeof sql, "SELECT ");
        for (size_t i = 0; i < l->n_cols && used < sizeof sql; i++) {
            int present = 1;
            if (pass && i >= t->n_base)
                CHK(has_column(db, t->name, l->cols[i], &present));
            int typeof_only = known_sha && t->hashed_blob && strcmp(l->cols[i], t->hashed_blob) == 0;
            used += (size_t)snprintf(sql + used, sizeof sql - used, "%s%s%s%s", i ? ", " : "",
                                     typeof_only ? "typeof(" : "", present ? l->cols[i] : "NULL",
                                     typeof_only ? ")" : "");
        }
        if (t->hashed_blob && used < sizeof sql) /* columns n_cols and n_cols + 1 */
            used += (size_t)snprintf(sql + used, sizeof sql - used, ", %s, %s", t->blob_hash_col,
                                     t->blob_pruned_col);
        if (used < sizeof sql)
            used += (size_t)snprintf(sql + used, sizeof sql - used, " FROM %s WHERE %s = ?1",
                                     t->name, t->key_col);
        if (used >= sizeof sql)
            FAIL(FEDGE_ERR_INTERNAL);
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK)
            break;
        if (pass)
            FAIL(FEDGE_ERR_SQL);
    }
    if ((t->int_key ? sqlite3_bind_int64(st, 1, id)
                    : sqlite3_bind_text(st, 1, row_key, -1, SQLITE_STATIC)) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        FAIL(FEDGE_ERR_NOT_FOUND);
    if (rc != SQLITE_ROW)
        FAIL(FEDGE_ERR_SQL);
    if (t->hashed_blob) {
        int hc = (int)l->n_cols, pc = hc + 1;
        if (sqlite3_column_type(st, hc) == SQLITE_BLOB &&
            sqlite3_column_bytes(st, hc) == FEDGE_HASH_LEN) {
            info.hash_state = 1;
            memcpy(info.stored_sha, sqlite3_column_blob(st, hc), FEDGE_HASH_LEN);
        } else if (sqlite3_column_type(st, hc) != SQLITE_NULL) {
            info.hash_state = -1;
        }
        if (sqlite3_column_type(st, pc) != SQLITE_NULL) {
            info.pruned = 1;
            info.pruned_round = sqlite3_column_int64(st, pc);
        }
    }

    size_t tl = strlen(t->name), kl = strlen(row_key);
    put(&b, MAGIC[format - 1], 4);
    put_u8(&b, (unsigned)tl);
    put(&b, t->name, tl);
    put_le(&b, kl, 2);
    put(&b, row_key, kl);
    size_t n_in = l->n_always;
    for (size_t i = l->n_always; i < l->n_cols; i++)
        n_in += sqlite3_column_type(st, (int)i) != SQLITE_NULL;
    put_le(&b, n_in, 2);
    for (size_t i = 0; i < l->n_cols; i++) {
        int c = (int)i;
        if (i >= l->n_always && sqlite3_column_type(st, c) == SQLITE_NULL)
            continue;
        size_t nl = strlen(l->cols[i]);
        put_u8(&b, (unsigned)nl);
        put(&b, l->cols[i], nl);
        int type = sqlite3_column_type(st, c);
        int hashed = t->hashed_blob && strcmp(l->cols[i], t->hashed_blob) == 0;
        if (hashed && known_sha) {
            const char *ty = (const char *)sqlite3_column_text(st, c);
            if (!ty)
                FAIL(FEDGE_ERR_NOMEM);
            if (strcmp(ty, "null") == 0) {
                type = SQLITE_NULL;
            } else if (strcmp(ty, "blob") == 0) {
                memcpy(info.body_sha, known_sha, FEDGE_HASH_LEN);
                info.has_body = 1;
                put_u8(&b, TAG_SHA256);
                put(&b, info.body_sha, FEDGE_HASH_LEN);
                continue;
            } else {
                FAIL(FEDGE_ERR_AUDIT_CHAIN); /* a hashed column holds a BLOB or NULL */
            }
        }
        if (hashed && type == SQLITE_NULL && info.pruned && info.hash_state == 1) {
            /* dropped by retention: the chain keeps committing to its hash */
            put_u8(&b, TAG_SHA256);
            put(&b, info.stored_sha, FEDGE_HASH_LEN);
        } else if (type == SQLITE_NULL) {
            put_u8(&b, TAG_NULL);
        } else if (type == SQLITE_BLOB && hashed) {
            const void *data = sqlite3_column_blob(st, c);
            size_t n = (size_t)sqlite3_column_bytes(st, c);
            CHK(fedge_sha256(data, n, info.body_sha));
            info.has_body = 1;
            put_u8(&b, TAG_SHA256);
            put(&b, info.body_sha, FEDGE_HASH_LEN);
        } else if (type == SQLITE_INTEGER) {
            put_u8(&b, TAG_INT);
            put_le(&b, (uint64_t)sqlite3_column_int64(st, c), 8);
        } else if (type == SQLITE_FLOAT) {
            double d = sqlite3_column_double(st, c);
            uint64_t bits;
            memcpy(&bits, &d, sizeof bits);
            put_u8(&b, TAG_REAL);
            put_le(&b, bits, 8);
        } else if (type == SQLITE_TEXT) {
            const unsigned char *s = sqlite3_column_text(st, c);
            size_t n = (size_t)sqlite3_column_bytes(st, c);
            put_u8(&b, TAG_TEXT);
            put_le(&b, n, 4);
            put(&b, s, n);
        } else {
            const void *data = sqlite3_column_blob(st, c);
            size_t n = (size_t)sqlite3_column_bytes(st, c);
            put_u8(&b, TAG_BLOB);
            put_le(&b, n, 4);
            put(&b, data, n);
        }
    }
    if (b.failed)
        FAIL(FEDGE_ERR_NOMEM);
    *canon = b.p;
    *len = b.len;
    b.p = NULL;
    if (body)
        *body = info;
cleanup:
    sqlite3_finalize(st);
    free(b.p);
    return ret;
}

int audit_canon_ex(sqlite3 *db, const char *tbl, const char *row_key, int format, uint8_t **canon,
                   size_t *len, audit_body_info *body)
{
    return canon_build(db, tbl, row_key, format, NULL, canon, len, body);
}

int fedge_audit_canon_format(sqlite3 *db, const char *tbl, const char *row_key, int format,
                             uint8_t **canon, size_t *len)
{
    return audit_canon_ex(db, tbl, row_key, format, canon, len, NULL);
}

int fedge_audit_canon(sqlite3 *db, const char *tbl, const char *row_key, uint8_t **canon,
                      size_t *len)
{
    return audit_canon_ex(db, tbl, row_key, FEDGE_AUDIT_FCN_LATEST, canon, len, NULL);
}

int canon_parse(const uint8_t *canon, size_t len, canon_view *v)
{
    const uint8_t *p = canon, *end = canon + len;
    if (!canon || len < 4 + 1)
        return FEDGE_ERR_RANGE;
    v->format = 0;
    for (int f = FEDGE_AUDIT_FCN1; f <= FEDGE_AUDIT_FCN_LATEST; f++)
        if (memcmp(p, MAGIC[f - 1], 4) == 0)
            v->format = f;
    if (!v->format)
        return FEDGE_ERR_RANGE;
    p += 4;
    size_t tl = *p++;
    if ((size_t)(end - p) < tl + 2)
        return FEDGE_ERR_RANGE;
    v->tbl = (const char *)p;
    v->tbl_len = tl;
    p += tl;
    size_t kl = (size_t)fedge_get_u16(p);
    p += 2;
    if ((size_t)(end - p) < kl + 2)
        return FEDGE_ERR_RANGE;
    v->key = (const char *)p;
    v->key_len = kl;
    p += kl;
    v->n_cols = (size_t)fedge_get_u16(p);
    p += 2;
    v->cols = p;
    v->end = end;
    return FEDGE_OK;
}

int canon_next(const canon_view *v, const uint8_t **pos, canon_col *c)
{
    const uint8_t *p = *pos, *end = v->end;
    if (p >= end)
        return FEDGE_ERR_RANGE;
    size_t nl = *p++;
    if ((size_t)(end - p) < nl + 1)
        return FEDGE_ERR_RANGE;
    c->name = (const char *)p;
    c->name_len = nl;
    p += nl;
    c->tag = *p++;
    size_t need;
    switch (c->tag) {
    case TAG_NULL: need = 0; break;
    case TAG_INT:
    case TAG_REAL: need = 8; break;
    case TAG_SHA256: need = FEDGE_HASH_LEN; break;
    case TAG_TEXT:
    case TAG_BLOB:
        if (end - p < 4)
            return FEDGE_ERR_RANGE;
        need = (size_t)fedge_get_u32(p);
        p += 4;
        break;
    default: return FEDGE_ERR_RANGE;
    }
    if ((size_t)(end - p) < need)
        return FEDGE_ERR_RANGE;
    c->val = p;
    c->val_len = need;
    *pos = p + need;
    return FEDGE_OK;
}

void canon_value_text(const canon_col *c, char *buf, size_t cap)
{
    switch (c->tag) {
    case TAG_NULL: snprintf(buf, cap, "NULL"); break;
    case TAG_INT: snprintf(buf, cap, "%" PRId64, (int64_t)fedge_get_u64(c->val)); break;
    case TAG_REAL: {
        uint64_t bits = fedge_get_u64(c->val);
        double d;
        memcpy(&d, &bits, sizeof d);
        snprintf(buf, cap, "%.17g", d);
        break;
    }
    case TAG_TEXT:
        snprintf(buf, cap, "'%.*s%s'", (int)(c->val_len > 48 ? 48 : c->val_len),
                 (const char *)c->val, c->val_len > 48 ? "..." : "");
        break;
    case TAG_BLOB: {
        char hex[17] = "";
        for (size_t i = 0; i < c->val_len && i < 8; i++)
            snprintf(hex + 2 * i, sizeof hex - 2 * i, "%02x", c->val[i]);
        snprintf(buf, cap, "<%zu bytes%s%s%s>", c->val_len, c->val_len ? " " : "", hex,
                 c->val_len > 8 ? "..." : "");
        break;
    }
    case TAG_SHA256: {
        char hex[FEDGE_HASH_HEX_LEN];
        fedge_hash_to_hex(c->val, hex);
        snprintf(buf, cap, "blob sha256 %.16s...", hex);
        break;
    }
    default: snprintf(buf, cap, "?"); break;
    }
}

/* ---- appending ---------------------------------------------------------------- */

static int exec_sql(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? FEDGE_OK : FEDGE_ERR_SQL;
}

/* The chain end: seq and row_hash (0 and zeros when empty). */
static int chain_head(sqlite3 *db, int64_t *seq, uint8_t hash[FEDGE_HASH_LEN])
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    *seq = 0;
    memset(hash, 0, FEDGE_HASH_LEN);
    if (sqlite3_prepare_v2(db, "SELECT seq, row_hash FROM audit ORDER BY seq DESC LIMIT 1", -1,
                           &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (sqlite3_column_bytes(st, 1) != FEDGE_HASH_LEN)
            FAIL(FEDGE_ERR_AUDIT_CHAIN);
        *seq = sqlite3_column_int64(st, 0);
        memcpy(hash, sqlite3_column_blob(st, 1), FEDGE_HASH_LEN);
    } else if (rc != SQLITE_DONE) {
        FAIL(FEDGE_ERR_SQL);
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* Keeps the SHA-256 of a row's hashed BLOB beside it (updates.delta_sha256),
 * so the chain can still commit to the body after retention drops it. */
static int store_body_hash(sqlite3 *db, const audit_table *t, const char *row_key,
                           const uint8_t sha[FEDGE_HASH_LEN])
{
    sqlite3_stmt *st = NULL;
    char sql[256];
    int ret = FEDGE_OK;
    int n = snprintf(sql, sizeof sql, "UPDATE %s SET %s = ?1 WHERE %s = ?2 AND %s IS NULL",
                     t->name, t->blob_hash_col, t->key_col, t->blob_hash_col);
    if (n < 0 || (size_t)n >= sizeof sql)
        return FEDGE_ERR_INTERNAL;
    int64_t id = 0;
    CHK(parse_key(t, row_key, &id));
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    if (sqlite3_bind_blob(st, 1, sha, FEDGE_HASH_LEN, SQLITE_STATIC) != SQLITE_OK ||
        (t->int_key ? sqlite3_bind_int64(st, 2, id)
                    : sqlite3_bind_text(st, 2, row_key, -1, SQLITE_STATIC)) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    if (sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
cleanup:
    sqlite3_finalize(st);
    return ret;
}

static int append(sqlite3 *db, const char *tbl, const char *row_key, const uint8_t *known_sha)
{
    int ret = FEDGE_OK, in_savepoint = 0;
    uint8_t *canon = NULL, *msg = NULL;
    size_t len = 0;
    sqlite3_stmt *st = NULL;
    if (!db)
        return FEDGE_ERR_INVALID_ARG;
    CHK(exec_sql(db, "SAVEPOINT fedge_audit_append"));
    in_savepoint = 1;
    audit_body_info body;
    CHK(canon_build(db, tbl, row_key, write_format ? write_format : FEDGE_AUDIT_FCN_LATEST, known_sha, &canon, &len,
                    &body));
    if (known_sha && body.has_body && body.hash_state == 1 &&
        memcmp(body.stored_sha, known_sha, FEDGE_HASH_LEN) != 0)
        FAIL(FEDGE_ERR_AUDIT_CHAIN);
    if (body.has_body && body.hash_state == 0)
        CHK(store_body_hash(db, audit_table_find(tbl), row_key, body.body_sha));
    int64_t seq;
    uint8_t prev[FEDGE_HASH_LEN], row_hash[FEDGE_HASH_LEN];
    CHK(chain_head(db, &seq, prev));
    msg = malloc(FEDGE_HASH_LEN + len);
    if (!msg)
        FAIL(FEDGE_ERR_NOMEM);
    memcpy(msg, prev, FEDGE_HASH_LEN);
    memcpy(msg + FEDGE_HASH_LEN, canon, len);
    CHK(fedge_sha256(msg, FEDGE_HASH_LEN + len, row_hash));
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO audit(seq, tbl, row_key, canon, prev_hash, row_hash) "
                           "VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                           -1, &st, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    if (sqlite3_bind_int64(st, 1, seq + 1) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, tbl, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(st, 3, row_key, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_blob(st, 4, canon, (int)len, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_blob(st, 5, prev, FEDGE_HASH_LEN, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_blob(st, 6, row_hash, FEDGE_HASH_LEN, SQLITE_STATIC) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    if (sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    sqlite3_finalize(st);
    st = NULL;
    CHK(exec_sql(db, "RELEASE fedge_audit_append"));
    in_savepoint = 0;
cleanup:
    sqlite3_finalize(st);
    if (in_savepoint) {
        sqlite3_exec(db, "ROLLBACK TO fedge_audit_append", NULL, NULL, NULL);
        sqlite3_exec(db, "RELEASE fedge_audit_append", NULL, NULL, NULL);
    }
    free(canon);
    free(msg);
    return ret;
}

int fedge_audit_append(sqlite3 *db, const char *tbl, const char *row_key)
{
    return append(db, tbl, row_key, NULL);
}

int fedge_audit_append_body(sqlite3 *db, const char *tbl, const char *row_key,
                            const uint8_t body_sha[FEDGE_HASH_LEN])
{
    if (!body_sha)
        return FEDGE_ERR_INVALID_ARG;
    const audit_table *t = audit_table_find(tbl);
    if (t && !t->hashed_blob)
        return FEDGE_ERR_INVALID_ARG;
    return append(db, tbl, row_key, body_sha);
}

int fedge_audit_append_id(sqlite3 *db, const char *tbl, int64_t id)
{
    char key[32];
    snprintf(key, sizeof key, "%" PRId64, id);
    return fedge_audit_append(db, tbl, key);
}

/* ---- signing ------------------------------------------------------------------ */

static const char HEAD_DOMAIN[] = "fedge-audit-head-v1";

int audit_head_digest(int64_t seq, int has_round, uint32_t round,
                      const uint8_t head_hash[FEDGE_HASH_LEN], double signed_at,
                      uint8_t out[FEDGE_HASH_LEN])
{
    buf_t b = {0};
    uint64_t bits;
    memcpy(&bits, &signed_at, sizeof bits);
    put(&b, HEAD_DOMAIN, sizeof HEAD_DOMAIN - 1);
    put_le(&b, (uint64_t)seq, 8);
    put_u8(&b, has_round ? 1 : 0);
    put_le(&b, has_round ? round : 0, 4);
    put(&b, head_hash, FEDGE_HASH_LEN);
    put_le(&b, bits, 8);
    int ret = b.failed ? FEDGE_ERR_NOMEM : fedge_sha256(b.p, b.len, out);
    free(b.p);
    return ret;
}

static int is_p256(mbedtls_pk_context *pk)
{
    return mbedtls_pk_get_type(pk) == MBEDTLS_PK_ECKEY &&
           mbedtls_pk_ec(*pk)->grp.id == MBEDTLS_ECP_DP_SECP256R1;
}

int fedge_audit_sign_head(sqlite3 *db, uint32_t round, mbedtls_pk_context *key,
                          mbedtls_ctr_drbg_context *drbg)
{
    int ret = FEDGE_OK;
    sqlite3_stmt *st = NULL;
    uint8_t head[FEDGE_HASH_LEN], digest[FEDGE_HASH_LEN];
    uint8_t sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    size_t sig_len = 0;
    int64_t seq;
    if (!db || !key || !drbg || !is_p256(key))
        return FEDGE_ERR_INVALID_ARG;
    CHK(chain_head(db, &seq, head));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    CHK(audit_head_digest(seq, 1, round, head, now, digest));
    if (mbedtls_pk_sign(key, MBEDTLS_MD_SHA256, digest, sizeof digest, sig, &sig_len,
                        mbedtls_ctr_drbg_random, drbg) != 0)
        FAIL(FEDGE_ERR_CRYPTO);
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO audit_heads(seq, round, head_hash, signature, signed_at) "
                           "VALUES(?1, ?2, ?3, ?4, ?5)",
                           -1, &st, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    if (sqlite3_bind_int64(st, 1, seq) != SQLITE_OK ||
        sqlite3_bind_int64(st, 2, round) != SQLITE_OK ||
        sqlite3_bind_blob(st, 3, head, FEDGE_HASH_LEN, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_blob(st, 4, sig, (int)sig_len, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_double(st, 5, now) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_CONSTRAINT)
        FAIL(FEDGE_ERR_DUPLICATE);
    if (rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* ---- key files ------------------------------------------------------------------ */

/* A key file is a few hundred bytes of PEM. */
#define KEY_FILE_MAX 16384

static int read_key_file(const char *path, char **pem, size_t *len)
{
    int ret = fedge_read_regular(path, 0, KEY_FILE_MAX, pem, len);
    if (ret == FEDGE_ERR_IO && errno == ENOENT)
        return FEDGE_ERR_NOT_FOUND;
    return ret == FEDGE_ERR_RANGE ? FEDGE_ERR_CRYPTO : ret;
}

int fedge_audit_load_private_key(const char *path, mbedtls_pk_context *pk)
{
    int ret;
    struct stat st;
    char *pem = NULL;
    size_t len = 0;
    if (!path || !pk)
        return FEDGE_ERR_INVALID_ARG;
    CHK(read_key_file(path, &pem, &len));
    if (stat(path, &st) != 0)
        FAIL(FEDGE_ERR_IO);
    if (st.st_mode & (S_IRWXG | S_IRWXO))
        FAIL(FEDGE_ERR_CONFIG_PERMS);
    /* the length counts the NUL: mbedTLS takes PEM only NUL-terminated */
    if (mbedtls_pk_parse_key(pk, (const unsigned char *)pem, len + 1, NULL, 0) != 0)
        FAIL(FEDGE_ERR_CRYPTO);
    ret = is_p256(pk) ? FEDGE_OK : FEDGE_ERR_CRYPTO;
cleanup:
    if (pem)
        mbedtls_platform_zeroize(pem, len);
    free(pem);
    return ret;
}

int fedge_audit_load_public_key(const char *path, mbedtls_pk_context *pk)
{
    int ret;
    char *pem = NULL;
    size_t len = 0;
    if (!path || !pk)
        return FEDGE_ERR_INVALID_ARG;
    CHK(read_key_file(path, &pem, &len));
    if (mbedtls_pk_parse_public_key(pk, (const unsigned char *)pem, len + 1) != 0)
        FAIL(FEDGE_ERR_CRYPTO);
    ret = is_p256(pk) ? FEDGE_OK : FEDGE_ERR_CRYPTO;
cleanup:
    free(pem);
    return ret;
}

int fedge_audit_generate_keypair(const char *priv_path, const char *pub_path,
                                 mbedtls_ctr_drbg_context *drbg)
{
    int ret = FEDGE_OK, wrote_priv = 0;
    unsigned char pem[2048];
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    if (!priv_path || !pub_path || !drbg)
        FAIL(FEDGE_ERR_INVALID_ARG);
    if (access(pub_path, F_OK) == 0)
        FAIL(FEDGE_ERR_DUPLICATE);
    if (mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) != 0 ||
        mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(pk), mbedtls_ctr_drbg_random,
                            drbg) != 0)
        FAIL(FEDGE_ERR_CRYPTO);
    if (mbedtls_pk_write_key_pem(&pk, pem, sizeof pem) != 0)
        FAIL(FEDGE_ERR_CRYPTO);
    CHK(fedge_write_file_inplace(priv_path, pem, strlen((char *)pem), 0600, FEDGE_FILE_EXCL));
    wrote_priv = 1;
    mbedtls_platform_zeroize(pem, sizeof pem);
    if (mbedtls_pk_write_pubkey_pem(&pk, pem, sizeof pem) != 0)
        FAIL(FEDGE_ERR_CRYPTO);
    CHK(fedge_write_file_inplace(pub_path, pem, strlen((char *)pem), 0644, FEDGE_FILE_EXCL));
cleanup:
    if (ret != FEDGE_OK && wrote_priv)
        unlink(priv_path);
    mbedtls_platform_zeroize(pem, sizeof pem);
    mbedtls_pk_free(&pk);
    return ret;
}

/* ---- signing-key rotation ---------------------------------------------------------- */

static int pubkey_der(mbedtls_pk_context *pk, uint8_t buf[FEDGE_AUDIT_PUBKEY_DER_MAX], const uint8_t **der,
                      size_t *len)
{
    int n = mbedtls_pk_write_pubkey_der(pk, buf, FEDGE_AUDIT_PUBKEY_DER_MAX);
    if (n <= 0)
        return FEDGE_ERR_CRYPTO;
    *der = buf + FEDGE_AUDIT_PUBKEY_DER_MAX - n; /* mbedTLS writes at the end */
    *len = (size_t)n;
    return FEDGE_OK;
}

int fedge_audit_key_fingerprint(mbedtls_pk_context *pk, char hex[FEDGE_HASH_HEX_LEN])
{
    uint8_t buf[FEDGE_AUDIT_PUBKEY_DER_MAX], h[FEDGE_HASH_LEN];
    const uint8_t *der;
    size_t len;
    int ret;
    if (!pk || !hex)
        return FEDGE_ERR_INVALID_ARG;
    CHK(pubkey_der(pk, buf, &der, &len));
    CHK(fedge_sha256(der, len, h));
    fedge_hash_to_hex(h, hex);
cleanup:
    return ret;
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int audit_rotation_parse(const char *detail, mbedtls_pk_context *pk, char old_fp[FEDGE_HASH_HEX_LEN],
                         char new_fp[FEDGE_HASH_HEX_LEN])
{
    char fp[FEDGE_HASH_HEX_LEN];
    uint8_t der[FEDGE_AUDIT_PUBKEY_DER_MAX];
    size_t n = 0;
    if (!detail || strncmp(detail, "old sha256 ", 11) != 0 || strlen(detail) < 11 + 64 + 12 + 64 + 5)
        return FEDGE_ERR_AUDIT_CHAIN;
    const char *p = detail + 11;
    memcpy(old_fp, p, 64);
    old_fp[64] = '\0';
    p += 64;
    if (strncmp(p, " new sha256 ", 12) != 0)
        return FEDGE_ERR_AUDIT_CHAIN;
    p += 12;
    memcpy(new_fp, p, 64);
    new_fp[64] = '\0';
    p += 64;
    if (strncmp(p, " key ", 5) != 0)
        return FEDGE_ERR_AUDIT_CHAIN;
    for (p += 5; p[0] && n < sizeof der; p += 2) {
        int hi = hex_val(p[0]), lo = hex_val(p[1]);
        if (hi < 0 || lo < 0)
            return FEDGE_ERR_AUDIT_CHAIN;
        der[n++] = (uint8_t)(hi << 4 | lo);
    }
    for (int i = 0; i < 64; i++)
        if (hex_val(old_fp[i]) < 0 || hex_val(new_fp[i]) < 0)
            return FEDGE_ERR_AUDIT_CHAIN;
    if (p[0] || n == 0 || mbedtls_pk_parse_public_key(pk, der, n) != 0 || !is_p256(pk) ||
        fedge_audit_key_fingerprint(pk, fp) != FEDGE_OK || strcmp(fp, new_fp) != 0)
        return FEDGE_ERR_AUDIT_CHAIN;
    return FEDGE_OK;
}

int fedge_audit_last_rotation(sqlite3 *db, int *found, int64_t *seq, mbedtls_pk_context *pk)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    char old_fp[FEDGE_HASH_HEX_LEN], new_fp[FEDGE_HASH_HEX_LEN];
    *found = 0;
    if (sqlite3_prepare_v2(db, AUDIT_ROTATIONS_SQL " DESC LIMIT 1", -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *seq = sqlite3_column_int64(st, 0);
        CHK(audit_rotation_parse((const char *)sqlite3_column_text(st, 1), pk, old_fp, new_fp));
        *found = 1;
    } else if (rc != SQLITE_DONE) {
        FAIL(FEDGE_ERR_SQL);
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* Whether the last signed head verifies with key (1 also when none is signed). */
static int last_head_signed_by(sqlite3 *db, mbedtls_pk_context *key, int *ok)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    *ok = 0;
    if (sqlite3_prepare_v2(db, "SELECT seq, round, head_hash, signature, signed_at FROM audit_heads "
                               "ORDER BY seq DESC LIMIT 1", -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        *ok = 1;
    } else if (rc == SQLITE_ROW) {
        uint8_t digest[FEDGE_HASH_LEN];
        int has_round = sqlite3_column_type(st, 1) != SQLITE_NULL;
        if (sqlite3_column_bytes(st, 2) != FEDGE_HASH_LEN || !sqlite3_column_blob(st, 3))
            goto cleanup;
        CHK(audit_head_digest(sqlite3_column_int64(st, 0), has_round, (uint32_t)sqlite3_column_int64(st, 1),
                              sqlite3_column_blob(st, 2), sqlite3_column_double(st, 4), digest));
        *ok = mbedtls_pk_verify(key, MBEDTLS_MD_SHA256, digest, sizeof digest, sqlite3_column_blob(st, 3),
                                (size_t)sqlite3_column_bytes(st, 3)) == 0;
    } else {
        ret = FEDGE_ERR_SQL;
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* Whether the key with fingerprint fp signed this log: named, old or new,
 * by a rotation record (with none, only the old key has signed it). */
static int key_signed_log(sqlite3 *db, const char *fp, int *found)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    *found = 0;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM events WHERE kind = '" FEDGE_AUDIT_ROTATION_EVENT "' AND "
                               "instr(detail, 'sha256 ' || ?1 || ' ') > 0", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_bind_text(st, 1, fp, -1, SQLITE_STATIC) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW)
        FAIL(FEDGE_ERR_SQL);
    *found = sqlite3_column_int64(st, 0) > 0;
cleanup:
    sqlite3_finalize(st);
    return ret;
}

int fedge_audit_rotate_key(sqlite3 *db, mbedtls_pk_context *old_key, mbedtls_pk_context *new_pub,
                           mbedtls_ctr_drbg_context *drbg, int64_t *seq_out, char *err, size_t errlen)
{
    int ret = FEDGE_OK, in_tx = 0, found = 0, ok = 0;
    int64_t rot_seq = 0;
    sqlite3_stmt *st = NULL;
    mbedtls_pk_context cur;
    char old_fp[FEDGE_HASH_HEX_LEN], new_fp[FEDGE_HASH_HEX_LEN], cur_fp[FEDGE_HASH_HEX_LEN];
    char detail[64 * 2 + 40 + 2 * FEDGE_AUDIT_PUBKEY_DER_MAX + 1];
    uint8_t derbuf[FEDGE_AUDIT_PUBKEY_DER_MAX];
    const uint8_t *der;
    size_t der_len;
    char errbuf[1];
    mbedtls_pk_init(&cur);
    if (!err) {
        err = errbuf;
        errlen = sizeof errbuf;
    }
    err[0] = '\0';
    if (!db || !old_key || !new_pub || !drbg || !is_p256(old_key) || !is_p256(new_pub))
        FAIL(FEDGE_ERR_INVALID_ARG);
    CHK(fedge_audit_key_fingerprint(old_key, old_fp));
    CHK(fedge_audit_key_fingerprint(new_pub, new_fp));
    if (strcmp(old_fp, new_fp) == 0) {
        snprintf(err, errlen, "the new key is the old one (sha256 %s)", old_fp);
        FAIL(FEDGE_ERR_INVALID_ARG);
    }
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        FAIL((sqlite3_errcode(db) & 0xff) == SQLITE_BUSY ? FEDGE_ERR_BUSY : FEDGE_ERR_SQL);
    in_tx = 1;
    ret = fedge_audit_last_rotation(db, &found, &rot_seq, &cur);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "the log's last rotation record is malformed; run fedge-audit verify");
        goto cleanup;
    }
    if (found) {
        CHK(fedge_audit_key_fingerprint(&cur, cur_fp));
        if (strcmp(cur_fp, old_fp) != 0) {
            snprintf(err, errlen, "the old key (sha256 %.16s...) is not the key in force: the rotation at seq %" PRId64
                     " made sha256 %.16s... the signing key", old_fp, rot_seq, cur_fp);
            FAIL(FEDGE_ERR_SIGNING_KEY);
        }
    } else {
        CHK(last_head_signed_by(db, old_key, &ok));
        if (!ok) {
            snprintf(err, errlen, "the old key (sha256 %.16s...) did not sign this log's last head", old_fp);
            FAIL(FEDGE_ERR_SIGNING_KEY);
        }
    }
    CHK(key_signed_log(db, new_fp, &ok));
    if (ok) {
        snprintf(err, errlen, "the new key (sha256 %.16s...) already signed this log: a retired key is never "
                 "brought back (it may be compromised; verify reports such a rotation as a failure); "
                 "generate a fresh key", new_fp);
        FAIL(FEDGE_ERR_SIGNING_KEY);
    }
    CHK(pubkey_der(new_pub, derbuf, &der, &der_len));
    int n = snprintf(detail, sizeof detail, "old sha256 %s new sha256 %s key ", old_fp, new_fp);
    fedge_hex_encode(der, der_len, detail + n);
    if (sqlite3_prepare_v2(db, "INSERT INTO events(at, kind, rule, detail) VALUES(?1, '" FEDGE_AUDIT_ROTATION_EVENT
                               "', 'operator', ?2)", -1, &st, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    sqlite3_bind_double(st, 1, (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
    sqlite3_bind_text(st, 2, detail, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    CHK(fedge_audit_append_id(db, "events", sqlite3_last_insert_rowid(db)));
    sqlite3_finalize(st);
    st = NULL;
    int64_t round = 0;
    if (sqlite3_prepare_v2(db, "SELECT COALESCE((SELECT round FROM audit_heads WHERE round IS NOT NULL ORDER BY seq DESC"
                               " LIMIT 1), (SELECT max(id) FROM rounds), 0)", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        FAIL(FEDGE_ERR_SQL);
    round = sqlite3_column_int64(st, 0);
    if (round < 0 || round > UINT32_MAX)
        round = 0;
    CHK(fedge_audit_sign_head(db, (uint32_t)round, old_key, drbg));
    CHK(chain_head(db, &rot_seq, derbuf));
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    in_tx = 0;
    if (seq_out)
        *seq_out = rot_seq;
cleanup:
    sqlite3_finalize(st);
    if (in_tx)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    mbedtls_pk_free(&cur);
    if (ret != FEDGE_OK && !err[0])
        snprintf(err, errlen, "%s", fedge_strerror(ret));
    return ret;
}
