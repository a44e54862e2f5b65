#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <unistd.h>

#include "audit.h"
#include "common.h"
#include "hash.h"
#include "log.h"
#include "retention.h"

#define DP_LEDGER_SQL                                                                      \
    "CREATE TABLE IF NOT EXISTS dp_ledger(round INTEGER PRIMARY KEY, q REAL NOT NULL,"     \
    " sigma REAL NOT NULL, clip REAL NOT NULL, orders BLOB NOT NULL, rdp BLOB NOT NULL);"

#define STRATEGY_STATE_SQL                                                                  \
    "CREATE TABLE IF NOT EXISTS strategy_state(version TEXT PRIMARY KEY, round INTEGER NOT NULL," \
    " strategy TEXT NOT NULL, state BLOB NOT NULL, sha256 TEXT NOT NULL);"

/* the async admission's per-device queries (participation cap, one update
 * per admission) search it; created on open for logs from before it too */
#define PARTICIPANTS_DEVICE_SQL \
    "CREATE INDEX IF NOT EXISTS round_participants_device ON round_participants(device, round);"

static const char *SCHEMA_SQL =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS devices(id TEXT PRIMARY KEY, region TEXT NOT NULL DEFAULT '',"
    " status TEXT NOT NULL DEFAULT 'allowed' CHECK(status IN ('allowed','suspended','revoked')),"
    " last_counter INTEGER NOT NULL DEFAULT 0, epsilon_spent REAL NOT NULL DEFAULT 0,"
    " first_seen REAL, last_seen REAL);"
    "CREATE TABLE IF NOT EXISTS models(version TEXT PRIMARY KEY, parent TEXT,"
    " kind TEXT NOT NULL CHECK(kind IN ('init','aggregate','refine')),"
    " round INTEGER NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL, accuracy REAL,"
    " created_at REAL NOT NULL, info TEXT);"
    "CREATE TABLE IF NOT EXISTS rounds(id INTEGER PRIMARY KEY, opened_at REAL NOT NULL,"
    " deadline REAL NOT NULL, closed_at REAL,"
    " status TEXT NOT NULL CHECK(status IN ('open','closed','failed','refused')),"
    " base_version TEXT NOT NULL, new_version TEXT, strategy TEXT NOT NULL,"
    " n_selected INTEGER NOT NULL, n_accepted INTEGER, n_rejected INTEGER,"
    " bytes_received INTEGER, accuracy REAL, epsilon REAL, reason TEXT);"
    "CREATE TABLE IF NOT EXISTS round_participants(round INTEGER NOT NULL, device TEXT NOT NULL,"
    " PRIMARY KEY(round, device));"
    "CREATE TABLE IF NOT EXISTS updates(id INTEGER PRIMARY KEY, round INTEGER NOT NULL,"
    " device TEXT NOT NULL, received_at REAL NOT NULL, n_samples INTEGER NOT NULL,"
    " encoding TEXT NOT NULL, bytes INTEGER NOT NULL, counter INTEGER NOT NULL, norm REAL,"
    " decision TEXT NOT NULL CHECK(decision IN ('accepted','clipped','rejected')),"
    " rule TEXT NOT NULL, reason TEXT NOT NULL, delta BLOB, sealed_sha256 BLOB,"
    " delta_sha256 BLOB, delta_pruned_round INTEGER);"
    "CREATE UNIQUE INDEX IF NOT EXISTS updates_one_per_round ON updates(round, device)"
    " WHERE decision <> 'rejected';"
    "CREATE INDEX IF NOT EXISTS updates_device ON updates(device, counter);"
    PARTICIPANTS_DEVICE_SQL
    "CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, at REAL NOT NULL, round INTEGER,"
    " device TEXT, kind TEXT NOT NULL, rule TEXT, detail TEXT NOT NULL);"
    DP_LEDGER_SQL
    STRATEGY_STATE_SQL
    "CREATE TABLE IF NOT EXISTS audit(seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL,"
    " row_key TEXT NOT NULL, canon BLOB NOT NULL, prev_hash BLOB NOT NULL,"
    " row_hash BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS audit_row ON audit(tbl, row_key);"
    "CREATE TABLE IF NOT EXISTS audit_heads(seq INTEGER PRIMARY KEY, round INTEGER,"
    " head_hash BLOB NOT NULL, signature BLOB NOT NULL, signed_at REAL NOT NULL);";

/* SQLITE_BUSY / SQLITE_LOCKED (another process holds the lock past the busy
 * timeout) are transient: FEDGE_ERR_BUSY, which callers retry. */
int fedge_store_status(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return FEDGE_OK;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return FEDGE_ERR_BUSY;
    default:
        return FEDGE_ERR_SQL;
    }
}

int fedge_store_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        int ret = fedge_store_status(rc);
        if (ret == FEDGE_ERR_BUSY)
            FEDGE_WARN("sqlite: %s (%s)", msg ? msg : sqlite3_errmsg(db), sql);
        else
            FEDGE_ERROR("sqlite: %s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return ret;
    }
    return FEDGE_OK;
}

int fedge_store_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    int rc = sqlite3_prepare_v2(db, sql, -1, st, NULL);
    if (rc != SQLITE_OK) {
        FEDGE_ERROR("sqlite prepare: %s (%s)", sqlite3_errmsg(db), sql);
        return fedge_store_status(rc);
    }
    return FEDGE_OK;
}

/* fedge_store_cached's table: connections that opted in (sql == NULL) and
 * their statements. */
static struct {
    sqlite3 *db;
    char *sql;        /* a copy of the statement's text */
    sqlite3_stmt *st;
    int in_use;
} g_cache[FEDGE_STORE_CACHE_MAX];
static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;

/* The slot of db's statement of text sql (NULL: db's opt-in mark; db and
 * sql NULL: a free slot). */
static int cache_slot(sqlite3 *db, const char *sql)
{
    for (int i = 0; i < FEDGE_STORE_CACHE_MAX; i++)
        if (g_cache[i].db == db &&
            (sql ? g_cache[i].sql && !strcmp(g_cache[i].sql, sql) : !g_cache[i].sql))
            return i;
    return -1;
}

void fedge_store_cache_open(sqlite3 *db)
{
    if (!db)
        return;
    pthread_mutex_lock(&g_cache_lock);
    int i;
    if (cache_slot(db, NULL) < 0 && (i = cache_slot(NULL, NULL)) >= 0)
        g_cache[i].db = db;
    pthread_mutex_unlock(&g_cache_lock);
}

void fedge_store_cache_close(sqlite3 *db)
{
    if (!db)
        return;
    pthread_mutex_lock(&g_cache_lock);
    for (int i = 0; i < FEDGE_STORE_CACHE_MAX; i++)
        if (g_cache[i].db == db) {
            sqlite3_finalize(g_cache[i].st);
            free(g_cache[i].sql);
            memset(&g_cache[i], 0, sizeof g_cache[i]);
        }
    pthread_mutex_unlock(&g_cache_lock);
}

int fedge_store_cached(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    int ret = FEDGE_OK;
    *st = NULL;
    pthread_mutex_lock(&g_cache_lock);
    int i = cache_slot(db, sql);
    if (i >= 0 && !g_cache[i].in_use) {
        g_cache[i].in_use = 1;
        *st = g_cache[i].st;
    } else if (i < 0 && cache_slot(db, NULL) >= 0 && (i = cache_slot(NULL, NULL)) >= 0 &&
               (g_cache[i].sql = strdup(sql)) != NULL) {
        int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
        if (rc != SQLITE_OK) {
            FEDGE_ERROR("sqlite prepare: %s (%s)", sqlite3_errmsg(db), sql);
            ret = fedge_store_status(rc);
            free(g_cache[i].sql);
            g_cache[i].sql = NULL;
        } else {
            g_cache[i].db = db;
            g_cache[i].st = *st;
            g_cache[i].in_use = 1;
        }
    }
    pthread_mutex_unlock(&g_cache_lock);
    if (ret == FEDGE_OK && !*st)
        ret = fedge_store_prepare(db, sql, st);
    return ret;
}

void fedge_store_done(sqlite3_stmt *st)
{
    if (!st)
        return;
    pthread_mutex_lock(&g_cache_lock);
    int i = 0;
    while (i < FEDGE_STORE_CACHE_MAX && (g_cache[i].st != st || !g_cache[i].sql))
        i++;
    if (i < FEDGE_STORE_CACHE_MAX) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        g_cache[i].in_use = 0;
    }
    pthread_mutex_unlock(&g_cache_lock);
    if (i == FEDGE_STORE_CACHE_MAX)
        sqlite3_finalize(st);
}

int fedge_store_step_done(sqlite3 *db, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        FEDGE_ERROR("sqlite step: %s", sqlite3_errmsg(db));
        return rc == SQLITE_ROW ? FEDGE_ERR_SQL : fedge_store_status(rc);
    }
    return FEDGE_OK;
}

int fedge_store_insert_audited(sqlite3 *db, sqlite3_stmt *st, const char *tbl)
{
    int ret = fedge_store_step_done(db, st);
    if (ret != FEDGE_OK)
        return ret;
    return fedge_audit_append_id(db, tbl, sqlite3_last_insert_rowid(db));
}

int fedge_store_query_int64(sqlite3 *db, int64_t *out, int *found, const char *sql, const char *types, ...)
{
    sqlite3_stmt *st = NULL;
    va_list ap;
    int ret;
    if (found)
        *found = 0;
    CHK(fedge_store_cached(db, sql, &st));
    va_start(ap, types);
    for (int i = 0; types[i]; i++) {
        switch (types[i]) {
        case 'i': sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t)); break;
        case 'd': sqlite3_bind_double(st, i + 1, va_arg(ap, double)); break;
        case 't': sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT); break;
        default: ret = FEDGE_ERR_INVALID_ARG; break;
        }
    }
    va_end(ap);
    if (ret != FEDGE_OK)
        goto cleanup;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if (sqlite3_column_type(st, 0) != SQLITE_NULL) {
            *out = sqlite3_column_int64(st, 0);
            if (found)
                *found = 1;
        }
    } else if (rc != SQLITE_DONE) {
        FEDGE_ERROR("sqlite step: %s", sqlite3_errmsg(db));
        ret = fedge_store_status(rc);
    }
cleanup:
    fedge_store_done(st);
    return ret;
}

int fedge_store_begin(sqlite3 *db) { return fedge_store_exec(db, "BEGIN IMMEDIATE"); }
int fedge_store_commit(sqlite3 *db) { return fedge_store_exec(db, "COMMIT"); }

void fedge_store_rollback(sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

/* Columns and tables added within the schema version, for logs written
 * before them: updates.sealed_sha256 (duplicate detection; in the audited
 * row from canon FCN2 on), dp_ledger, strategy_state (not audited itself: its rows are
 * replaced every close; the SHA-256 of each is in an audited event). */
static int migrate(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int has_sealed = 0, ret = FEDGE_OK;
    CHK(fedge_store_prepare(db, "SELECT 1 FROM pragma_table_info('updates') WHERE name='sealed_sha256'", &st));
    has_sealed = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    st = NULL;
    if (!has_sealed)
        CHK(fedge_store_exec(db, "ALTER TABLE updates ADD COLUMN sealed_sha256 BLOB"));
    CHK(fedge_store_exec(db, DP_LEDGER_SQL));
    CHK(fedge_store_exec(db, STRATEGY_STATE_SQL));
    CHK(fedge_store_exec(db, PARTICIPANTS_DEVICE_SQL));
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* The edge's training metrics (shared/update.h), added after schema 2 was
 * fixed: updates.train_* (NULL for an update without them, and for every
 * row written before) and round_training (a round's sample-weighted mean
 * and spread). Both audited (policy/audit.c). */
static int migrate_train_metrics(sqlite3 *db)
{
    static const char *const cols[] = {"train_loss REAL", "train_accuracy REAL", "train_epochs INTEGER",
                                       "train_ms INTEGER"};
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(cols); i++) {
        char name[32], sql[128];
        snprintf(name, sizeof name, "%.*s", (int)(strchr(cols[i], ' ') - cols[i]), cols[i]);
        CHK(fedge_store_prepare(db, "SELECT 1 FROM pragma_table_info('updates') WHERE name=?", &st));
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        int has = sqlite3_step(st) == SQLITE_ROW;
        sqlite3_finalize(st);
        st = NULL;
        if (!has) {
            snprintf(sql, sizeof sql, "ALTER TABLE updates ADD COLUMN %s", cols[i]);
            CHK(fedge_store_exec(db, sql));
        }
    }
    CHK(fedge_store_exec(db, "CREATE TABLE IF NOT EXISTS round_training(round INTEGER PRIMARY KEY,"
                             " reports INTEGER NOT NULL, samples INTEGER NOT NULL, train_loss REAL,"
                             " train_loss_sd REAL, train_accuracy REAL, train_accuracy_sd REAL)"));
cleanup:
    sqlite3_finalize(st);
    return ret;
}

int fedge_store_run_id(sqlite3 *db, uint8_t run_id[FEDGE_STORE_RUN_ID_LEN])
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK, in_tx = 0;
    char hex[2 * FEDGE_STORE_RUN_ID_LEN + 1];
    CHK(fedge_store_begin(db));
    in_tx = 1;
    CHK(fedge_store_prepare(db, "SELECT value FROM meta WHERE key='run_id'", &st));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        if (!v || strlen(v) != 2 * FEDGE_STORE_RUN_ID_LEN || fedge_hex_decode(v, run_id, FEDGE_STORE_RUN_ID_LEN) != FEDGE_OK) {
            FEDGE_ERROR("meta run_id is not %d hex digits", 2 * FEDGE_STORE_RUN_ID_LEN);
            FAIL(FEDGE_ERR_AUDIT_NOT_FEDGE_DB);
        }
        sqlite3_finalize(st);
        st = NULL;
    } else if (rc == SQLITE_DONE) {
        sqlite3_finalize(st);
        st = NULL;
        if (getrandom(run_id, FEDGE_STORE_RUN_ID_LEN, 0) != FEDGE_STORE_RUN_ID_LEN)
            FAIL(FEDGE_ERR_CRYPTO);
        fedge_hex_encode(run_id, FEDGE_STORE_RUN_ID_LEN, hex);
        CHK(fedge_store_prepare(db, "INSERT INTO meta(key, value) VALUES('run_id', ?)", &st));
        sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
        ret = fedge_store_step_done(db, st);
        st = NULL;
        if (ret != FEDGE_OK)
            goto cleanup;
    } else {
        FAIL(fedge_store_status(rc));
    }
    CHK(fedge_store_commit(db));
    in_tx = 0;
cleanup:
    sqlite3_finalize(st);
    if (in_tx)
        fedge_store_rollback(db);
    return ret;
}

/* 1 when the database has our meta marker, 0 when it is empty, 2 at schema 1
 * (to migrate), 3 at schema 2 (read as it is; a writer marks it 3), <0
 * otherwise. */
static int check_fedge_db(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int ret, n_tables = 0;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_AUDIT_NOT_FEDGE_DB; /* not a database at all */
    if (sqlite3_step(st) == SQLITE_ROW)
        n_tables = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (n_tables == 0)
        return 0;
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key='fedge_schema'", -1, &st,
                           NULL) != SQLITE_OK)
        return FEDGE_ERR_AUDIT_NOT_FEDGE_DB;
    ret = FEDGE_ERR_AUDIT_NOT_FEDGE_DB;
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        if (v && strcmp(v, FEDGE_SCHEMA_VERSION) == 0)
            ret = 1;
        else if (v && strcmp(v, "1") == 0)
            ret = 2; /* before delta retention: fedge_retention_migrate_v1 */
        else if (v && strcmp(v, "2") == 0)
            ret = 3; /* before FCN2 audit entries: the same tables */
        else
            FEDGE_ERROR("database schema version %s, this build reads %s", v ? v : "?",
                        FEDGE_SCHEMA_VERSION);
    }
    sqlite3_finalize(st);
    return ret;
}

/* SQLite checkpoints the WAL every 1000 pages by default (4 MB of 4 KiB
 * pages, 64 MB of 64 KiB ones): every WAL_CHECKPOINT_BYTES of pages
 * instead, whatever the log's page size (a per-connection setting). */
#define WAL_CHECKPOINT_BYTES ((int64_t)4096 * 1000)

static int set_wal_autocheckpoint(sqlite3 *db)
{
    int64_t page = 0;
    char sql[64];
    int ret = fedge_store_query_int64(db, &page, NULL, "PRAGMA page_size", "");
    if (ret != FEDGE_OK)
        return ret;
    snprintf(sql, sizeof sql, "PRAGMA wal_autocheckpoint=%lld",
             (long long)(page > 0 && page < WAL_CHECKPOINT_BYTES ? WAL_CHECKPOINT_BYTES / page : 1));
    return fedge_store_exec(db, sql);
}

int fedge_store_page_size_valid(long page_size)
{
    return page_size == 0 || (page_size >= 512 && page_size <= 65536 && (page_size & (page_size - 1)) == 0);
}

static int open_db(const char *path, int read_only, long page_size, sqlite3 **out);

int fedge_store_open_ro(const char *path, sqlite3 **db)
{
    char wal[FEDGE_PATH_MAX + 8], *uri = NULL;
    struct stat st;
    *db = NULL;
    size_t n = strlen(path);
    if (n >= FEDGE_PATH_MAX)
        return SQLITE_CANTOPEN;
    snprintf(wal, sizeof wal, "%s-wal", path);
    if (lstat(wal, &st) == 0 || errno != ENOENT) /* a writer may be at work: read through its WAL */
        return sqlite3_open_v2(path, db, SQLITE_OPEN_READONLY, NULL);
    /* no WAL: the file is the whole log; immutable=1 reads it creating
     * nothing beside it (no -wal, no -shm) */
    uri = malloc(3 * n + 32);
    if (!uri)
        return SQLITE_NOMEM;
    char *o = uri + sprintf(uri, "file:");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)path[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("/._~-", c))
            *o++ = (char)c;
        else
            o += sprintf(o, "%%%02X", c);
    }
    strcpy(o, "?immutable=1");
    int rc = sqlite3_open_v2(uri, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
    free(uri);
    return rc;
}

int fedge_store_open_db(const char *path, int read_only, sqlite3 **out)
{
    return open_db(path, read_only, 0, out);
}

int fedge_store_open_db_paged(const char *path, long page_size, sqlite3 **out)
{
    return open_db(path, 0, page_size, out);
}

static int open_db(const char *path, int read_only, long page_size, sqlite3 **out)
{
    sqlite3 *db = NULL;
    int ret = FEDGE_OK;
    *out = NULL;
    if (!path || !fedge_store_page_size_valid(page_size))
        return FEDGE_ERR_INVALID_ARG;
    /* SQLite opens whatever is there: a FIFO blocks its open or first read
     * for good. A log is a regular file (or none yet, when writing). */
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        FEDGE_ERROR("database %s: %s", path, fedge_strerror(FEDGE_ERR_NOT_REGULAR));
        return FEDGE_ERR_NOT_REGULAR;
    }
    if (read_only && access(path, R_OK) != 0) {
        FEDGE_ERROR("cannot read database %s", path);
        return FEDGE_ERR_NOT_FOUND;
    }
    int flags = read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    if ((read_only ? fedge_store_open_ro(path, &db) : sqlite3_open_v2(path, &db, flags, NULL)) != SQLITE_OK) {
        FEDGE_ERROR("cannot open database %s: %s", path, db ? sqlite3_errmsg(db) : "no memory");
        FAIL(FEDGE_ERR_SQL);
    }
    sqlite3_busy_timeout(db, 5000);
    int state = check_fedge_db(db);
    if (state < 0)
        FAIL(state);
    if (state == 2 && read_only) {
        FEDGE_ERROR("database %s has schema 1; this build reads %s", path, FEDGE_SCHEMA_VERSION);
        FAIL(FEDGE_ERR_SCHEMA_OLD);
    }
    if (read_only) {
        if (state == 0)
            FAIL(FEDGE_ERR_AUDIT_NOT_FEDGE_DB);
        goto cleanup;
    }
    if (state == 0 && page_size) { /* before anything is written; before auto_vacuum, which fixes it */
        char sql[48];
        snprintf(sql, sizeof sql, "PRAGMA page_size=%ld", page_size);
        CHK(fedge_store_exec(db, sql));
    }
    if (state == 0) /* only before the first table: lets retention shrink the file */
        CHK(fedge_store_exec(db, "PRAGMA auto_vacuum=INCREMENTAL"));
    CHK(fedge_store_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;"));
    CHK(set_wal_autocheckpoint(db));
    if (state == 2)
        CHK(fedge_retention_migrate_v1(db));
    if (state == 3) { /* from here on its audit entries are FCN2: a schema 2 build must refuse it */
        CHK(fedge_store_exec(db, "UPDATE meta SET value = '" FEDGE_SCHEMA_VERSION
                                 "' WHERE key = 'fedge_schema' AND value = '2'"));
        FEDGE_INFO("database %s marked schema " FEDGE_SCHEMA_VERSION
                   " (its new audit entries are FCN2; fedge builds of schema 2 refuse it from now on)", path);
    }
    if (state == 0) {
        CHK(fedge_store_begin(db));
        CHK(fedge_store_exec(db, SCHEMA_SQL));
        CHK(fedge_store_exec(db, "INSERT INTO meta(key, value) VALUES('fedge_schema', '" FEDGE_SCHEMA_VERSION
                         "'), ('created_at', strftime('%Y-%m-%dT%H:%M:%fZ','now'))"));
        CHK(fedge_store_commit(db));
    } else {
        CHK(migrate(db));
    }
    CHK(migrate_train_metrics(db));
cleanup:
    if (ret != FEDGE_OK) {
        if (db)
            fedge_store_rollback(db);
        sqlite3_close_v2(db);
        db = NULL;
    }
    *out = db;
    return ret;
}
