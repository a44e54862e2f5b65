/* The SQLite log's page size (aggregator/store.h, the aggregator's
 * db_page_size): a new log opened with fedge_store_open_db_paged gets the
 * page size asked for, a plain open SQLite's 4 KiB; a log whose page size
 * was fixed before (an older log: 4 KiB) keeps it, opens read-write and
 * read-only, and takes an update-sized blob; a bad page size is refused
 * before any file is made. The statement cache of the per-update path:
 * one prepared statement per text and opted-in connection, handed back
 * reset with no binding left, a fresh one for a nested user or a connection
 * that did not opt in, all finalized when the connection leaves. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "log.h"
#include "store.h"

#define BLOB_LEN 161638 /* an mlp:784-200-10 int8 frame */

typedef struct {
    char dir[64];
    char path[96];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/fedge-test.store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/fedge.db", f->dir);
    fedge_log_set_level(FEDGE_LOG_WARN);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char p[128];
    static const char *suffix[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", f->path, suffix[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static int64_t page_size(sqlite3 *db)
{
    int64_t v = 0;
    assert_int_equal(fedge_store_query_int64(db, &v, NULL, "PRAGMA page_size", ""), FEDGE_OK);
    return v;
}

/* Inserts an accepted update row with a BLOB_LEN delta and reads it back. */
static void blob_round_trip(sqlite3 *db, int64_t id)
{
    uint8_t *blob = malloc(BLOB_LEN);
    assert_non_null(blob);
    for (size_t i = 0; i < BLOB_LEN; i++)
        blob[i] = (uint8_t)(i * 31 + (size_t)id);
    sqlite3_stmt *st = NULL;
    assert_int_equal(fedge_store_prepare(db,
                                         "INSERT INTO updates(id, round, device, received_at, n_samples, encoding,"
                                         " bytes, counter, decision, rule, reason, delta)"
                                         " VALUES(?, ?, 'dev-a', 0, 10, 'int8', ?, ?, 'accepted', '', '', ?)",
                                         &st),
                     FEDGE_OK);
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, id); /* its round: one accepted update per device and round */
    sqlite3_bind_int64(st, 3, BLOB_LEN);
    sqlite3_bind_int64(st, 4, id);
    sqlite3_bind_blob(st, 5, blob, BLOB_LEN, SQLITE_STATIC);
    assert_int_equal(fedge_store_step_done(db, st), FEDGE_OK);
    assert_int_equal(fedge_store_prepare(db, "SELECT delta FROM updates WHERE id = ?", &st), FEDGE_OK);
    sqlite3_bind_int64(st, 1, id);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_bytes(st, 0), BLOB_LEN);
    assert_memory_equal(sqlite3_column_blob(st, 0), blob, BLOB_LEN);
    sqlite3_finalize(st);
    free(blob);
}

static void test_new_log_gets_large_pages(void **state)
{
    fixture *f = *state;
    sqlite3 *db = NULL;
    assert_int_equal(fedge_store_open_db_paged(f->path, 65536, &db), FEDGE_OK);
    assert_int_equal(page_size(db), 65536);
    int64_t av = -1;
    assert_int_equal(fedge_store_query_int64(db, &av, NULL, "PRAGMA auto_vacuum", ""), FEDGE_OK);
    assert_int_equal(av, 2); /* INCREMENTAL, as before */
    blob_round_trip(db, 1);
    sqlite3_close_v2(db);
    assert_int_equal(fedge_store_open_db(f->path, 1, &db), FEDGE_OK);
    assert_int_equal(page_size(db), 65536);
    sqlite3_close_v2(db);
}

static int64_t schema_of(sqlite3 *db)
{
    int64_t v = 0;
    assert_int_equal(fedge_store_query_int64(db, &v, NULL,
                                             "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'fedge_schema'", ""),
                     FEDGE_OK);
    return v;
}

/* review19 F1: a schema 2 build appends FCN1 audit entries to a log this build
 * has written FCN2 entries to, which verify then refuses for good as a
 * downgrade. A writer of this build marks a schema 2 log 3, so that a schema 2
 * build refuses it (as any build refuses a newer schema) instead; readers read
 * a schema 2 log as it is. */
static void test_schema2_log_marked_3_by_a_writer(void **state)
{
    fixture *f = *state;
    sqlite3 *db = NULL;
    assert_int_equal(fedge_store_open_db(f->path, 0, &db), FEDGE_OK);
    assert_int_equal(schema_of(db), 3);
    assert_int_equal(fedge_store_exec(db, "UPDATE meta SET value = '2' WHERE key = 'fedge_schema'"), FEDGE_OK);
    sqlite3_close_v2(db);
    assert_int_equal(fedge_store_open_db(f->path, 1, &db), FEDGE_OK); /* a reader: as it is */
    assert_int_equal(schema_of(db), 2);
    sqlite3_close_v2(db);
    assert_int_equal(fedge_store_open_db(f->path, 0, &db), FEDGE_OK); /* a writer marks it */
    assert_int_equal(schema_of(db), 3);
    /* what a schema 2 build meets: a newer schema, refused */
    assert_int_equal(fedge_store_exec(db, "UPDATE meta SET value = '4' WHERE key = 'fedge_schema'"), FEDGE_OK);
    sqlite3_close_v2(db);
    db = NULL;
    assert_int_not_equal(fedge_store_open_db(f->path, 0, &db), FEDGE_OK);
    assert_null(db);
}

static void test_default_and_bad_page_sizes(void **state)
{
    fixture *f = *state;
    sqlite3 *db = NULL;
    static const long bad[] = {-1, 256, 1000, 131072};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_false(fedge_store_page_size_valid(bad[i]));
        assert_int_equal(fedge_store_open_db_paged(f->path, bad[i], &db), FEDGE_ERR_INVALID_ARG);
        assert_null(db);
        assert_int_equal(access(f->path, F_OK), -1);
    }
    assert_int_equal(fedge_store_open_db_paged(f->path, 0, &db), FEDGE_OK);
    assert_int_equal(page_size(db), 4096);
    blob_round_trip(db, 1);
    sqlite3_close_v2(db);
}

static void test_old_log_keeps_its_pages(void **state)
{
    fixture *f = *state;
    sqlite3 *db = NULL;
    /* an empty file whose page size is already fixed at 4 KiB */
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA page_size=4096; PRAGMA user_version=1", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(fedge_store_open_db_paged(f->path, 65536, &db), FEDGE_OK);
    assert_int_equal(page_size(db), 4096);
    blob_round_trip(db, 1);
    sqlite3_close_v2(db);
    /* reopened as the existing fedge log it now is */
    assert_int_equal(fedge_store_open_db_paged(f->path, 65536, &db), FEDGE_OK);
    assert_int_equal(page_size(db), 4096);
    blob_round_trip(db, 2);
    int64_t n = 0;
    assert_int_equal(fedge_store_query_int64(db, &n, NULL, "SELECT count(*) FROM updates", ""), FEDGE_OK);
    assert_int_equal(n, 2);
    sqlite3_close_v2(db);
    assert_int_equal(fedge_store_open_db(f->path, 1, &db), FEDGE_OK);
    assert_int_equal(page_size(db), 4096);
    sqlite3_close_v2(db);
}

static int n_statements(sqlite3 *db)
{
    int n = 0;
    for (sqlite3_stmt *st = sqlite3_next_stmt(db, NULL); st; st = sqlite3_next_stmt(db, st))
        n++;
    return n;
}

static void test_statement_cache(void **state)
{
    fixture *f = *state;
    sqlite3 *db = NULL;
    assert_int_equal(fedge_store_open_db(f->path, 0, &db), FEDGE_OK);
    assert_int_equal(fedge_store_exec(db, "CREATE TABLE t(k INTEGER PRIMARY KEY, v INTEGER)"), FEDGE_OK);
    const char *ins = "INSERT INTO t(k, v) VALUES(?, ?)";
    char copy[64];
    snprintf(copy, sizeof copy, "%s", ins);
    sqlite3_stmt *a = NULL, *b = NULL, *c = NULL;

    /* not opted in: a fresh statement each time, finalized when handed back */
    assert_int_equal(fedge_store_cached(db, ins, &a), FEDGE_OK);
    assert_int_equal(n_statements(db), 1);
    fedge_store_done(a);
    assert_int_equal(n_statements(db), 0);

    fedge_store_cache_open(db);
    assert_int_equal(fedge_store_cached(db, ins, &a), FEDGE_OK);
    sqlite3_bind_int64(a, 1, 1);
    sqlite3_bind_int64(a, 2, 7);
    assert_int_equal(sqlite3_step(a), SQLITE_DONE);
    /* in use: a nested user of the same text gets its own */
    assert_int_equal(fedge_store_cached(db, copy, &b), FEDGE_OK);
    assert_ptr_not_equal(a, b);
    fedge_store_done(b);
    assert_int_equal(n_statements(db), 1);
    fedge_store_done(a);
    /* handed back: the same statement for the same text (another copy of
     * it), reset, with no binding of the last use left */
    assert_int_equal(fedge_store_cached(db, copy, &c), FEDGE_OK);
    assert_ptr_equal(c, a);
    sqlite3_bind_int64(c, 1, 2);
    assert_int_equal(sqlite3_step(c), SQLITE_DONE);
    fedge_store_done(c);
    int64_t v = 0;
    int found = 1;
    assert_int_equal(fedge_store_query_int64(db, &v, &found, "SELECT v FROM t WHERE k=?", "i", (int64_t)2), FEDGE_OK);
    assert_int_equal(found, 0); /* NULL: v was not bound the second time */
    assert_int_equal(fedge_store_query_int64(db, &v, &found, "SELECT v FROM t WHERE k=?", "i", (int64_t)1), FEDGE_OK);
    assert_int_equal(found, 1);
    assert_int_equal(v, 7);
    assert_int_equal(n_statements(db), 2); /* the INSERT and the SELECT, kept */
    /* no read left open: another connection checkpoints the whole WAL */
    sqlite3 *other = NULL;
    assert_int_equal(fedge_store_open_db(f->path, 0, &other), FEDGE_OK);
    assert_int_equal(sqlite3_wal_checkpoint_v2(other, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(other), SQLITE_OK);

    fedge_store_cache_close(db);
    assert_int_equal(n_statements(db), 0);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_new_log_gets_large_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_old_log_keeps_its_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_and_bad_page_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_statement_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_schema2_log_marked_3_by_a_writer, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
