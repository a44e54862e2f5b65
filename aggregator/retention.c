/* retention.c — dropping old delta bodies with the audit chain kept whole,
 * and the schema 1 -> 2 migration that makes it possible (retention.h). */
#include "retention.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit.h"
#include "common.h"
#include "governance.h"
#include "hash.h"
#include "log.h"
#include "store.h"

typedef struct {
    int64_t *v;
    size_t n, cap;
} id_list;

static int id_push(id_list *l, int64_t id)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        int64_t *p = realloc(l->v, cap * sizeof *p);
        if (!p)
            return FEDGE_ERR_NOMEM;
        l->v = p;
        l->cap = cap;
    }
    l->v[l->n++] = id;
    return FEDGE_OK;
}

/* ids of the rows `sql` selects (first column; parameter ?1, if any, = arg). */
static int select_ids(sqlite3 *db, const char *sql, int64_t arg, id_list *out)
{
    sqlite3_stmt *st = NULL;
    int ret, rc;
    CHK(fedge_store_prepare(db, sql, &st));
    if (sqlite3_bind_parameter_count(st) > 0)
        sqlite3_bind_int64(st, 1, arg);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        CHK(id_push(out, sqlite3_column_int64(st, 0)));
    if (rc != SQLITE_DONE) {
        FEDGE_ERROR("sqlite step: %s", sqlite3_errmsg(db));
        FAIL(FEDGE_ERR_SQL);
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* Frees the pages released by dropped bodies; -1 when vacuum failed. */
static int64_t release_pages(sqlite3 *db)
{
    int64_t before = 0, after = 0;
    if (fedge_store_query_int64(db, &before, NULL, "PRAGMA freelist_count", "") != FEDGE_OK)
        return -1;
    if (before == 0)
        return 0;
    char *msg = NULL;
    if (sqlite3_exec(db, "PRAGMA incremental_vacuum", NULL, NULL, &msg) != SQLITE_OK) {
        FEDGE_WARN("retention: incremental vacuum failed (%s); the file keeps its size until "
                   "the next round", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    /* The file shrinks when the WAL is checkpointed; passive: never wait for readers. */
    sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    if (fedge_store_query_int64(db, &after, NULL, "PRAGMA freelist_count", "") != FEDGE_OK)
        return -1;
    return before - after;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int log_prune_event(sqlite3 *db, uint32_t round, uint32_t keep,
                           const fedge_retention_result *r)
{
    sqlite3_stmt *st = NULL;
    char detail[320];
    int ret;
    /* "rounds A-B:" is what verify reads (policy/audit.h). */
    int n = snprintf(detail, sizeof detail,
                     "rounds %" PRIu32 "-%" PRIu32 ": %zu delta bodies dropped, %" PRIu64
                     " bytes; their SHA-256 stay in the audit chain (retain_deltas_rounds = %" PRIu32
                     ")%s",
                     r->first_round, r->last_round, r->n_bodies, r->bytes, keep,
                     r->n_skipped ? "; bodies that no longer match their hash were kept" : "");
    if (n < 0 || (size_t)n >= sizeof detail)
        return FEDGE_ERR_INTERNAL;
    CHK(fedge_store_prepare(db, "INSERT INTO events(at, round, device, kind, rule, detail)"
                                " VALUES(?1, ?2, NULL, '" FEDGE_AUDIT_PRUNE_EVENT "',"
                                " 'retain_deltas_rounds', ?3)",
                            &st));
    sqlite3_bind_double(st, 1, wall_now());
    sqlite3_bind_int64(st, 2, round);
    sqlite3_bind_text(st, 3, detail, -1, SQLITE_STATIC);
    ret = fedge_store_insert_audited(db, st, "events");
    st = NULL;
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* Drops one body if it still hashes to its delta_sha256; *dropped says so. */
static int drop_body(sqlite3 *db, sqlite3_stmt *get, sqlite3_stmt *clear, int64_t id,
                     uint32_t current_round, fedge_retention_result *r, int *dropped)
{
    uint8_t h[FEDGE_HASH_LEN];
    int ret = FEDGE_OK;
    *dropped = 0;
    sqlite3_reset(get);
    sqlite3_bind_int64(get, 1, id);
    if (sqlite3_step(get) != SQLITE_ROW)
        FAIL(FEDGE_ERR_SQL);
    uint32_t round = (uint32_t)sqlite3_column_int64(get, 0);
    size_t len = (size_t)sqlite3_column_bytes(get, 1);
    const void *body = sqlite3_column_blob(get, 1);
    CHK(fedge_sha256(body, len, h));
    if (sqlite3_column_bytes(get, 2) != FEDGE_HASH_LEN ||
        memcmp(sqlite3_column_blob(get, 2), h, FEDGE_HASH_LEN) != 0) {
        FEDGE_WARN("retention: the delta body of update %" PRId64 " does not match its logged "
                   "SHA-256; keeping it for the audit",
                   id);
        r->n_skipped++;
        goto cleanup;
    }
    sqlite3_reset(clear);
    sqlite3_bind_int64(clear, 1, current_round);
    sqlite3_bind_int64(clear, 2, id);
    if (sqlite3_step(clear) != SQLITE_DONE) {
        FEDGE_ERROR("sqlite update: %s", sqlite3_errmsg(db));
        FAIL(FEDGE_ERR_SQL);
    }
    if (r->n_bodies == 0 || round < r->first_round)
        r->first_round = round;
    if (round > r->last_round)
        r->last_round = round;
    r->n_bodies++;
    r->bytes += len;
    *dropped = 1;
cleanup:
    sqlite3_reset(get);
    return ret;
}

int fedge_retention_prune(sqlite3 *db, uint32_t current_round, uint32_t keep_rounds,
                          fedge_retention_sign_fn sign, void *sign_ctx,
                          fedge_retention_result *res)
{
    fedge_retention_result r;
    id_list ids = {0};
    sqlite3_stmt *get = NULL, *clear = NULL;
    int ret = FEDGE_OK, in_tx = 0;
    memset(&r, 0, sizeof r);
    if (res)
        memset(res, 0, sizeof *res);
    if (!db || keep_rounds == 0)
        return FEDGE_ERR_INVALID_ARG;
    if (current_round <= keep_rounds)
        goto vacuum; /* no round is old enough */

    CHK(fedge_store_begin(db));
    in_tx = 1;
    CHK(select_ids(db,
                   "SELECT u.id FROM updates u JOIN rounds r ON r.id = u.round"
                   " WHERE u.delta IS NOT NULL AND u.round <= ?1"
                   " AND r.status IN ('closed', 'failed', 'refused') ORDER BY u.id",
                   (int64_t)(current_round - keep_rounds), &ids));
    CHK(fedge_store_prepare(db, "SELECT round, delta, delta_sha256 FROM updates WHERE id = ?1",
                            &get));
    CHK(fedge_store_prepare(db, "UPDATE updates SET delta = NULL, delta_pruned_round = ?1"
                                " WHERE id = ?2",
                            &clear));
    for (size_t i = 0; i < ids.n; i++) {
        int dropped;
        CHK(drop_body(db, get, clear, ids.v[i], current_round, &r, &dropped));
    }
    if (r.n_bodies > 0) {
        CHK(log_prune_event(db, current_round, keep_rounds, &r));
        if (sign)
            CHK(sign(sign_ctx, current_round));
    }
    CHK(fedge_store_commit(db));
    in_tx = 0;
vacuum:
    r.pages_released = release_pages(db);
cleanup:
    sqlite3_finalize(get);
    sqlite3_finalize(clear);
    if (in_tx)
        fedge_store_rollback(db);
    free(ids.v);
    if (res && ret == FEDGE_OK)
        *res = r;
    return ret;
}

static int sign_with_aggregator(void *ctx, uint32_t round)
{
    return fedge_gov_sign_head(ctx, round);
}

int fedge_retention_after_round(fedge_aggregator *a)
{
    fedge_retention_result r;
    if (!a || a->cfg.retain_deltas_rounds <= 0)
        return FEDGE_OK;
    uint32_t keep = a->cfg.retain_deltas_rounds > UINT32_MAX ? UINT32_MAX
                                                             : (uint32_t)a->cfg.retain_deltas_rounds;
    int ret = fedge_retention_prune(a->db, a->round, keep, sign_with_aggregator, a, &r);
    if (ret != FEDGE_OK)
        return ret;
    if (r.n_bodies > 0)
        FEDGE_INFO("round %u: dropped %zu delta bodies of rounds %u-%u (%" PRIu64
                   " bytes, %" PRId64 " pages released); their hashes stay in the audit chain",
                   a->round, r.n_bodies, r.first_round, r.last_round, r.bytes,
                   r.pages_released);
    return FEDGE_OK;
}

int fedge_retention_body(sqlite3 *db, int64_t id, uint8_t **body, size_t *len,
                         uint32_t *pruned_round)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    if (!db || !body || !len)
        return FEDGE_ERR_INVALID_ARG;
    *body = NULL;
    *len = 0;
    if (pruned_round)
        *pruned_round = 0;
    CHK(fedge_store_prepare(db, "SELECT delta, delta_pruned_round FROM updates WHERE id = ?1",
                            &st));
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        FAIL(FEDGE_ERR_NOT_FOUND);
    if (rc != SQLITE_ROW)
        FAIL(FEDGE_ERR_SQL);
    if (sqlite3_column_type(st, 0) == SQLITE_NULL) {
        if (sqlite3_column_type(st, 1) == SQLITE_NULL)
            FAIL(FEDGE_ERR_NOT_FOUND);
        if (pruned_round)
            *pruned_round = (uint32_t)sqlite3_column_int64(st, 1);
        FAIL(FEDGE_ERR_DELTA_PRUNED);
    }
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    *body = malloc(n ? n : 1);
    if (!*body)
        FAIL(FEDGE_ERR_NOMEM);
    if (n)
        memcpy(*body, sqlite3_column_blob(st, 0), n);
    *len = n;
cleanup:
    sqlite3_finalize(st);
    return ret;
}

int fedge_retention_migrate_v1(sqlite3 *db)
{
    id_list ids = {0};
    sqlite3_stmt *get = NULL, *put = NULL;
    int ret = FEDGE_OK, in_tx = 0;
    int64_t mode = 0;
    char version[16] = "";
    if (!db)
        return FEDGE_ERR_INVALID_ARG;
    CHK(fedge_store_begin(db));
    in_tx = 1;
    CHK(fedge_store_prepare(db, "SELECT value FROM meta WHERE key = 'fedge_schema'", &get));
    if (sqlite3_step(get) == SQLITE_ROW && sqlite3_column_text(get, 0))
        snprintf(version, sizeof version, "%s", (const char *)sqlite3_column_text(get, 0));
    sqlite3_finalize(get);
    get = NULL;
    if (strcmp(version, FEDGE_SCHEMA_VERSION) == 0 || strcmp(version, "2") == 0)
        goto commit; /* another process migrated it meanwhile (store.c marks a 2 as 3) */
    if (strcmp(version, "1") != 0)
        FAIL(FEDGE_ERR_AUDIT_NOT_FEDGE_DB);
    CHK(fedge_store_exec(db, "ALTER TABLE updates ADD COLUMN delta_sha256 BLOB;"
                     "ALTER TABLE updates ADD COLUMN delta_pruned_round INTEGER;"));
    CHK(select_ids(db, "SELECT id FROM updates WHERE delta IS NOT NULL ORDER BY id", 0,
                   &ids));
    CHK(fedge_store_prepare(db, "SELECT delta FROM updates WHERE id = ?1", &get));
    CHK(fedge_store_prepare(db, "UPDATE updates SET delta_sha256 = ?1 WHERE id = ?2", &put));
    for (size_t i = 0; i < ids.n; i++) {
        uint8_t h[FEDGE_HASH_LEN];
        sqlite3_reset(get);
        sqlite3_bind_int64(get, 1, ids.v[i]);
        if (sqlite3_step(get) != SQLITE_ROW)
            FAIL(FEDGE_ERR_SQL);
        CHK(fedge_sha256(sqlite3_column_blob(get, 0), (size_t)sqlite3_column_bytes(get, 0), h));
        sqlite3_reset(put);
        sqlite3_bind_blob(put, 1, h, FEDGE_HASH_LEN, SQLITE_TRANSIENT);
        sqlite3_bind_int64(put, 2, ids.v[i]);
        if (sqlite3_step(put) != SQLITE_DONE)
            FAIL(FEDGE_ERR_SQL);
    }
    sqlite3_finalize(get); /* VACUUM below needs no statement in progress */
    sqlite3_finalize(put);
    get = put = NULL;
    CHK(fedge_store_exec(db, "UPDATE meta SET value = '" FEDGE_SCHEMA_VERSION "' WHERE key = 'fedge_schema'"));
    FEDGE_INFO("database migrated from schema 1 to " FEDGE_SCHEMA_VERSION
               ": %zu delta hashes stored",
               ids.n);
commit:
    CHK(fedge_store_commit(db));
    in_tx = 0;
    CHK(fedge_store_query_int64(db, &mode, NULL, "PRAGMA auto_vacuum", ""));
    if (mode != 2) {
        char *msg = NULL;
        if (sqlite3_exec(db, "PRAGMA auto_vacuum = INCREMENTAL; VACUUM", NULL, NULL, &msg) !=
            SQLITE_OK)
            FEDGE_WARN("database left without incremental vacuum (%s): dropped delta bodies "
                       "will be reused but the file will not shrink",
                       msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
    }
cleanup:
    sqlite3_finalize(get);
    sqlite3_finalize(put);
    if (in_tx)
        fedge_store_rollback(db);
    free(ids.v);
    return ret;
}
