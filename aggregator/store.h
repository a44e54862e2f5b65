/* store.h — the aggregator's SQLite round log (WAL, prepared statements only).
 *
 * One transaction per state change; an accepted update is committed before
 * the client hears "accepted". Audited tables (devices' status changes are
 * logged as events, not audited rows) are append-mostly: `models`, `updates`,
 * `rounds` (a row inserted at open, closed once), `events`. Each audited write
 * also appends to the hash chain in `audit` (policy/audit.h) inside the same
 * transaction.
 *
 * Schema (schema_version 3; created with auto_vacuum = INCREMENTAL):
 *   meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)
 *       keys: fedge_schema ('3'), model_spec, created_at,
 *       run_id (32 hex digits, random, made once: every update is sealed
 *       for it, so updates cannot be replayed from one log into another),
 *       current_version (the model being served; a version published
 *       again has no new models row)
 *   devices(id TEXT PRIMARY KEY, region TEXT NOT NULL DEFAULT '',
 *       status TEXT NOT NULL DEFAULT 'allowed'  -- allowed|suspended|revoked
 *       last_counter INTEGER NOT NULL DEFAULT 0, epsilon_spent REAL NOT NULL DEFAULT 0,
 *       first_seen REAL, last_seen REAL)
 *   models(version TEXT PRIMARY KEY,              -- hex content hash
 *       parent TEXT, kind TEXT NOT NULL,          -- init|aggregate|refine
 *       round INTEGER NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,  -- of the file
 *       accuracy REAL, created_at REAL NOT NULL, info TEXT)  -- info: refine JSON etc.
 *   rounds(id INTEGER PRIMARY KEY, opened_at REAL NOT NULL, deadline REAL NOT NULL,
 *       closed_at REAL, status TEXT NOT NULL,     -- open|closed|failed|refused
 *       base_version TEXT NOT NULL, new_version TEXT, strategy TEXT NOT NULL,
 *       n_selected INTEGER NOT NULL, n_accepted INTEGER, n_rejected INTEGER,
 *       bytes_received INTEGER, accuracy REAL, epsilon REAL, reason TEXT)
 *   round_participants(round INTEGER, device TEXT, PRIMARY KEY(round, device))
 *   updates(id INTEGER PRIMARY KEY, round INTEGER NOT NULL, device TEXT NOT NULL,
 *       received_at REAL NOT NULL, n_samples INTEGER NOT NULL, encoding TEXT NOT NULL,
 *       bytes INTEGER NOT NULL, counter INTEGER NOT NULL, norm REAL,
 *       decision TEXT NOT NULL,                   -- accepted|clipped|rejected
 *       rule TEXT NOT NULL, reason TEXT NOT NULL,
 *       delta BLOB,                               -- encoded delta of an accepted update
 *       sealed_sha256 BLOB,                       -- of the frame as received (resends)
 *       delta_sha256 BLOB,                        -- SHA-256 of delta (with the row, or by its audit append)
 *       delta_pruned_round INTEGER)               -- round whose retention dropped delta
 *       UNIQUE(round, device) for accepted/clipped rows (partial index)
 *   events(id INTEGER PRIMARY KEY, at REAL NOT NULL, round INTEGER, device TEXT,
 *       kind TEXT NOT NULL, rule TEXT, detail TEXT NOT NULL)
 *       -- round-level decisions (k-anonymity, budget refusal, anomaly),
 *       -- device status changes, refinement results, policy reloads
 *   dp_ledger(round INTEGER PRIMARY KEY, q REAL NOT NULL, sigma REAL NOT NULL,
 *       clip REAL NOT NULL, orders BLOB NOT NULL, rdp BLOB NOT NULL)
 *       -- audited; one row per round released with DP (policy.h's ledger)
 *   strategy_state(version TEXT PRIMARY KEY,  -- model version the state was saved with
 *       round INTEGER NOT NULL, strategy TEXT NOT NULL,  -- rounds.strategy's description
 *       state BLOB NOT NULL,                      -- server_opt.h's state blob (+ SCAFFOLD's c)
 *       sha256 TEXT NOT NULL)                     -- of state; also in an audited events row
 *       -- written with each close, other versions' rows deleted then
 *       -- (docs/STRATEGIES.md); created on open for logs from before it
 *   audit(seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, row_key TEXT NOT NULL,
 *       canon BLOB NOT NULL, prev_hash BLOB NOT NULL, row_hash BLOB NOT NULL)
 *   audit_heads(seq INTEGER PRIMARY KEY, round INTEGER, head_hash BLOB NOT NULL,
 *       signature BLOB NOT NULL, signed_at REAL NOT NULL)
 */
#ifndef FEDGE_STORE_H
#define FEDGE_STORE_H

#include <sqlite3.h>
#include <stdint.h>

/* 3: as 2, and the audit chain may hold FCN2 entries (policy/audit.h), which
 * a build of schema 2 would follow with FCN1 ones, a downgrade verify
 * refuses: a writer of this build marks a schema 2 log 3 when it opens it,
 * and a schema 2 build then refuses the log instead of breaking its chain. */
#define FEDGE_SCHEMA_VERSION "3"

/* Opens (creating if absent) the database at path, sets WAL, foreign keys,
 * busy timeout, and creates the schema. A file that exists but is not a
 * fedge database gives FEDGE_ERR_AUDIT_NOT_FEDGE_DB and is left unchanged.
 * *db is owned by the caller: sqlite3_close_v2 it. read_only opens
 * without creating or altering anything. A schema 1 database is migrated
 * (fedge_retention_migrate_v1) when opened read-write, refused read-only
 * with FEDGE_ERR_SCHEMA_OLD. */
int fedge_store_open_db(const char *path, int read_only, sqlite3 **db);

/* The same, read-write, for the aggregator's log: a new log gets
 * page_size-byte pages (0: SQLite's default, 4096; else a power of two in
 * 512..65536, else FEDGE_ERR_INVALID_ARG); an existing log keeps its own
 * (SQLite fixes it with the first write). Larger pages hold an update's
 * delta in fewer overflow pages (faster group commits) but every commit
 * writes whole pages to the WAL and each table takes at least one
 * (docs/BENCHMARKS.md). Both opens checkpoint the WAL every ~4 MB of pages. */
int fedge_store_open_db_paged(const char *path, long page_size, sqlite3 **db);
/* 1 when page_size is 0 or a power of two in 512..65536. */
int fedge_store_page_size_valid(long page_size);

#define FEDGE_STORE_RUN_ID_LEN 16
/* The log's run id (meta 'run_id'), created at random on first use. */
int fedge_store_run_id(sqlite3 *db, uint8_t run_id[FEDGE_STORE_RUN_ID_LEN]);

/* Runs sql (one or more statements without parameters). */
int fedge_store_exec(sqlite3 *db, const char *sql);
/* Prepares sql (logging SQLite's message on failure). */
int fedge_store_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st);
/* Steps a statement that returns no row and finalizes it. */
int fedge_store_step_done(sqlite3 *db, sqlite3_stmt *st);
/* Steps an INSERT into tbl, finalizes it, and appends the new row to the
 * audit chain (policy/audit.h). */
int fedge_store_insert_audited(sqlite3 *db, sqlite3_stmt *st, const char *tbl);
/* One-value query: binds the parameters described by `types` ('i' int64,
 * 'd' double, 't' text), steps once, and stores the first column of the
 * first row in *out (*found = 0 and *out untouched when there is no row or
 * the value is NULL). found may be NULL. */
int fedge_store_query_int64(sqlite3 *db, int64_t *out, int *found, const char *sql, const char *types, ...);

/* Prepared statements kept per connection for the per-update path (the
 * parse of each statement was ~4 % of the daemon's CPU per update). A
 * connection opts in with fedge_store_cache_open (best effort: with every
 * slot taken its statements are prepared each time) and, before it is
 * closed, fedge_store_cache_close (which finalizes them). fedge_store_cached
 * prepares sql once per opted-in connection (keyed by its text) and hands
 * out that statement, or, when the connection did
 * not opt in or the statement is in use (a nested caller), a fresh one;
 * either way the caller hands it back with fedge_store_done (reset with its
 * bindings cleared, or finalized; NULL is ignored), never sqlite3_finalize.
 * fedge_store_query_int64 uses it. At most FEDGE_STORE_CACHE_MAX statements
 * over all connections; thread-safe as SQLite connections are (one thread
 * at a time per connection). */
#define FEDGE_STORE_CACHE_MAX 32
void fedge_store_cache_open(sqlite3 *db);
void fedge_store_cache_close(sqlite3 *db);
int fedge_store_cached(sqlite3 *db, const char *sql, sqlite3_stmt **st);
void fedge_store_done(sqlite3_stmt *st);

/* Maps an SQLite result code to a fedge status: FEDGE_OK for OK/ROW/DONE,
 * FEDGE_ERR_BUSY for BUSY/LOCKED (transient: another process holds the lock
 * past the busy timeout; the caller retries later), FEDGE_ERR_SQL otherwise.
 * Every helper here returns statuses mapped this way. */
int fedge_store_status(int rc);

/* Runs BEGIN IMMEDIATE / COMMIT / ROLLBACK. */
int fedge_store_begin(sqlite3 *db);
int fedge_store_commit(sqlite3 *db);
void fedge_store_rollback(sqlite3 *db);

/* sqlite3_open_v2 read-only for readers that must write nothing beside
 * the log (--check, fedge-audit): with no PATH-wal (no writer has the log
 * open; every commit is in the file) it opens `file:PATH?immutable=1`, so
 * SQLite creates no -wal or -shm; with one, a plain read-only open that
 * reads through the writer's WAL (and shares its -shm). Returns SQLite's
 * result code; *db as sqlite3_open_v2 leaves it. */
int fedge_store_open_ro(const char *path, sqlite3 **db);

#endif
