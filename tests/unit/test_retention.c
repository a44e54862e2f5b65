/* Delta retention (aggregator/retention.h) on databases built by the
 * aggregator itself, driven without network: bodies of old rounds are
 * dropped, their hashes stay, `verify` still proves the log, recent and
 * open rounds keep their bodies, every kind of tampering around a dropped
 * body is still caught, the file stops growing, and a schema 1 database is
 * migrated (refused read-only). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>

#include "agg.h"
#include "audit.h"
#include "common.h"
#include "config.h"
#include "hash.h"
#include "log.h"
#include "retention.h"
#include "shard.h"
#include "store.h"
#include "update.h"

#include "agg_fixture.h"

#define N_DEV 3
static const char *DEVICES[N_DEV] = {"dev-a", "dev-b", "dev-c"};

typedef struct {
    char dir[64];
    char pub[128];
    fedge_agg_config cfg;
    fedge_aggregator agg;
    fedge_device_key keys[N_DEV];
    uint64_t counter;
} fixture;

static void write_signing_key(fixture *fx)
{
    static const char pers[] = "fedge test_retention";
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    char priv[128];
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    assert_int_equal(mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy,
                                           (const unsigned char *)pers, sizeof pers - 1),
                     0);
    snprintf(priv, sizeof priv, "%s/aggregator.key", fx->dir);
    snprintf(fx->pub, sizeof fx->pub, "%s/aggregator.pub", fx->dir);
    assert_int_equal(fedge_audit_generate_keypair(priv, fx->pub, &drbg), FEDGE_OK);
    snprintf(fx->cfg.signing_key, sizeof fx->cfg.signing_key, "%s", priv);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
}

static void start(fixture *fx)
{
    char err[256] = "";
    if (fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err) != FEDGE_OK)
        fail_msg("fedge_agg_init: %s", err);
}

/* A fresh directory and a configured (not started) aggregator. */
static fixture *new_fixture(const char *spec, long retain)
{
    fixture *fx = calloc(1, sizeof *fx);
    char err[256] = "";
    assert_non_null(fx);
    fixture_prepare_dir(fx->dir, sizeof fx->dir, &fx->cfg, "retention", DEVICES, N_DEV, 60, spec);
    fx->cfg.round_timeout_s = 600;
    fx->cfg.retain_deltas_rounds = retain;
    write_signing_key(fx);
    assert_int_equal(fedge_agg_config_validate(&fx->cfg, err, sizeof err), FEDGE_OK);
    for (int i = 0; i < N_DEV; i++) {
        uint8_t s[FEDGE_SECRET_LEN];
        fixture_secret(i, s);
        assert_int_equal(fedge_envelope_derive_key(s, sizeof s, DEVICES[i], &fx->keys[i]),
                         FEDGE_OK);
    }
    fx->counter = 1;
    return fx;
}

static void free_fixture(fixture *fx)
{
    char cmd[160];
    fedge_agg_free(&fx->agg);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx);
}

/* Device `dev` sends a valid fp32 update for the open round. */
static void submit(fixture *fx, int dev)
{
    size_t n = fx->agg.model.n_params, len = 0;
    float *delta = malloc(n * sizeof *delta);
    uint8_t *sealed = NULL;
    char msg[320];
    int code = 0;
    assert_non_null(delta);
    for (size_t i = 0; i < n; i++)
        delta[i] = 0.001f * (float)((int)((i + fx->counter) % 11) - 5);
    fedge_delta_header h = {
        .encoding = FEDGE_ENC_FP32,
        .model_id = fx->agg.model_id,
        .round = fx->agg.round,
        .n_samples = 20 + (uint32_t)dev,
        .n_elems = (uint32_t)n,
    };
    memcpy(h.base_version, fx->agg.version, FEDGE_HASH_LEN);
    assert_int_equal(fedge_update_seal(&fx->keys[dev], fx->counter++, fx->agg.run_id, &h, delta, NULL,
                                       &sealed, &len),
                     FEDGE_OK);
    assert_int_equal(fedge_agg_submit(&fx->agg, DEVICES[dev], sealed, len, fedge_now(), &code, msg,
                                      sizeof msg),
                     FEDGE_OK);
    if (code != 204)
        fail_msg("%s: %d %s", DEVICES[dev], code, msg);
    free(sealed);
    free(delta);
}

/* Opens the next round and sends one update per device, which closes it. */
static void run_round(fixture *fx)
{
    if (fx->agg.state == FEDGE_AGG_WAITING)
        assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    uint32_t round = fx->agg.round;
    for (int i = 0; i < N_DEV; i++)
        submit(fx, i);
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_WAITING);
    assert_int_equal(fx->agg.round, round);
}

static int64_t q1(fixture *fx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int64_t q1(fixture *fx, const char *fmt, ...)
{
    char sql[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    sqlite3_stmt *st;
    int64_t v = -1;
    if (sqlite3_prepare_v2(fx->agg.db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(fx->agg.db));
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void exec(fixture *fx, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(fx->agg.db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg ? msg : "?");
}

static int verify(fixture *fx, fedge_audit_report *rep)
{
    return fedge_audit_verify(fx->agg.db, fx->pub, fx->agg.cfg.model_dir, rep);
}

/* verify passes; signed_to_end: nothing after the last signed head. */
static void expect_ok(fixture *fx, int signed_to_end)
{
    fedge_audit_report rep;
    int rc = verify(fx, &rep);
    if (rc != FEDGE_OK || !rep.ok)
        fail_msg("verify: %s: %s: %s", fedge_strerror(rc),
                 rep.n_failures ? fedge_audit_fail_name(rep.failures[0].kind) : "-",
                 rep.n_failures ? rep.failures[0].message : "-");
    if (signed_to_end)
        assert_int_equal(rep.unsigned_tail, 0);
}

static void expect_failure(fixture *fx, fedge_audit_fail_kind kind, const char *key,
                           const char *text)
{
    fedge_audit_report rep;
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    assert_int_equal(rep.n_failures, 1);
    const fedge_audit_failure *f = &rep.failures[0];
    if (f->kind != kind || strcmp(f->table, "updates") != 0 || strcmp(f->row_key, key) != 0 ||
        !strstr(f->message, text))
        fail_msg("want %s on updates %s saying '%s'; got %s on %s %s: %s",
                 fedge_audit_fail_name(kind), key, text, fedge_audit_fail_name(f->kind), f->table,
                 f->row_key, f->message);
}

/* 1 when every body present hashes to its delta_sha256. */
static int bodies_match_hashes(fixture *fx)
{
    sqlite3_stmt *st;
    int ok = 1;
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db,
                                        "SELECT delta, delta_sha256 FROM updates WHERE delta IS NOT NULL",
                                        -1, &st, NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        uint8_t h[FEDGE_HASH_LEN];
        assert_int_equal(fedge_sha256(sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), h),
                         FEDGE_OK);
        if (sqlite3_column_bytes(st, 1) != FEDGE_HASH_LEN ||
            memcmp(sqlite3_column_blob(st, 1), h, FEDGE_HASH_LEN) != 0)
            ok = 0;
    }
    sqlite3_finalize(st);
    return ok;
}

/* ---- setups: five rounds with retain_deltas_rounds = 2 ------------------- */

static int setup_five(void **state)
{
    fixture *fx = new_fixture("mlp:16-8-3", 2);
    start(fx);
    for (int r = 0; r < 5; r++)
        run_round(fx);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    free_fixture(*state);
    return 0;
}

/* ---- tests ------------------------------------------------------------------ */

static void test_old_bodies_dropped_hashes_kept(void **state)
{
    fixture *fx = *state;
    /* After round 5 with N = 2: rounds 1-3 dropped, 4-5 kept. */
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round <= 3"), 9);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round <= 3 AND delta IS NULL"
                            " AND length(delta_sha256) = 32"),
                     9);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE delta_pruned_round = round + 2"), 9);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round >= 4 AND delta IS NOT NULL"
                            " AND delta_pruned_round IS NULL AND length(delta_sha256) = 32"),
                     6);
    assert_true(bodies_match_hashes(fx));

    /* One audited, signed event per drop, naming the rounds and the bytes. */
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind = 'delta_pruned'"), 3);
    int64_t bytes = q1(fx, "SELECT length(delta) FROM updates WHERE round = 5 LIMIT 1");
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind = 'delta_pruned' AND round = 5"
                            " AND rule = 'retain_deltas_rounds'"
                            " AND detail LIKE 'rounds 3-3: 3 delta bodies dropped, %" PRId64
                            " bytes;%%'",
                            3 * bytes),
                     1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events e WHERE kind = 'delta_pruned' AND NOT EXISTS"
                            " (SELECT 1 FROM audit WHERE tbl = 'events' AND row_key = CAST(e.id AS TEXT))"),
                     0);
    assert_int_equal(q1(fx, "SELECT count(*) FROM audit_heads WHERE round = 5"), 2);

    /* The chain and the rows still verify, with nothing unsigned. */
    expect_ok(fx, 1);

    /* A body reader is told what happened. */
    uint8_t *body = NULL;
    size_t len = 0;
    uint32_t at = 0;
    int64_t old_id = q1(fx, "SELECT min(id) FROM updates WHERE round = 1");
    int64_t new_id = q1(fx, "SELECT min(id) FROM updates WHERE round = 5");
    assert_int_equal(fedge_retention_body(fx->agg.db, old_id, &body, &len, &at), FEDGE_ERR_DELTA_PRUNED);
    assert_null(body);
    assert_int_equal(at, 3);
    assert_int_equal(fedge_retention_body(fx->agg.db, new_id, &body, &len, &at), FEDGE_OK);
    assert_int_equal(len, bytes);
    free(body);
    assert_int_equal(fedge_retention_body(fx->agg.db, 999999, &body, &len, NULL), FEDGE_ERR_NOT_FOUND);
}

static void test_tampered_kept_hash_detected(void **state)
{
    fixture *fx = *state;
    int64_t id = q1(fx, "SELECT min(id) FROM updates WHERE round = 2");
    char sql[160], key[24];
    snprintf(sql, sizeof sql, "UPDATE updates SET delta_sha256 = zeroblob(32) WHERE id = %" PRId64, id);
    snprintf(key, sizeof key, "%" PRId64, id);
    exec(fx, sql);
    expect_failure(fx, FEDGE_AUDIT_FAIL_ROW_MODIFIED, key, "column delta is blob sha256 0000");
}

static void test_tampered_recent_hash_detected(void **state)
{
    fixture *fx = *state;
    int64_t id = q1(fx, "SELECT max(id) FROM updates WHERE round = 5");
    char sql[160], key[24];
    snprintf(sql, sizeof sql, "UPDATE updates SET delta_sha256 = zeroblob(32) WHERE id = %" PRId64, id);
    snprintf(key, sizeof key, "%" PRId64, id);
    exec(fx, sql);
    expect_failure(fx, FEDGE_AUDIT_FAIL_ROW_MODIFIED, key, "column delta_sha256 is 0000");
}

static void test_tampered_recent_body_detected(void **state)
{
    fixture *fx = *state;
    int64_t id = q1(fx, "SELECT max(id) FROM updates WHERE round = 4");
    char sql[200], key[24];
    snprintf(sql, sizeof sql,
             "UPDATE updates SET delta = zeroblob(length(delta)) WHERE id = %" PRId64, id);
    snprintf(key, sizeof key, "%" PRId64, id);
    exec(fx, sql);
    expect_failure(fx, FEDGE_AUDIT_FAIL_ROW_MODIFIED, key, "column delta");
}

/* A body deleted behind the log's back, with or without a forged mark. */
static void test_body_dropped_outside_retention_detected(void **state)
{
    fixture *fx = *state;
    int64_t id = q1(fx, "SELECT min(id) FROM updates WHERE round = 4");
    char sql[200], key[24];
    snprintf(key, sizeof key, "%" PRId64, id);
    snprintf(sql, sizeof sql, "UPDATE updates SET delta = NULL WHERE id = %" PRId64, id);
    exec(fx, sql);
    expect_failure(fx, FEDGE_AUDIT_FAIL_ROW_MODIFIED, key, "column delta is NULL in the table");
    /* marked as if retention had dropped it at round 5: no event covers round 4 */
    snprintf(sql, sizeof sql, "UPDATE updates SET delta_pruned_round = 5 WHERE id = %" PRId64, id);
    exec(fx, sql);
    expect_failure(fx, FEDGE_AUDIT_FAIL_ROW_MODIFIED, key,
                   "no delta_pruned event of that round covers round 4");
    /* nor does a forged mark pointing at a round without any event */
    snprintf(sql, sizeof sql, "UPDATE updates SET delta_pruned_round = 9 WHERE id = %" PRId64, id);
    exec(fx, sql);
    expect_failure(fx, FEDGE_AUDIT_FAIL_ROW_MODIFIED, key, "dropped by retention at round 9");
}

/* A widened event range is a modified events row. */
static void test_tampered_prune_event_detected(void **state)
{
    fixture *fx = *state;
    exec(fx, "UPDATE events SET detail = replace(detail, 'rounds 3-3', 'rounds 3-4')"
             " WHERE kind = 'delta_pruned' AND round = 5");
    fedge_audit_report rep;
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    assert_int_equal(rep.failures[0].kind, FEDGE_AUDIT_FAIL_ROW_MODIFIED);
    assert_string_equal(rep.failures[0].table, "events");
}

/* The open round's updates keep their bodies whatever the arguments. */
static void test_open_round_untouched(void **state)
{
    fixture *fx = *state;
    fedge_retention_result r;
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.round, 6);
    submit(fx, 0);
    submit(fx, 1);
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    assert_int_equal(fedge_retention_prune(fx->agg.db, 7, 1, NULL, NULL, &r), FEDGE_OK);
    assert_int_equal(r.n_bodies, 6); /* rounds 4 and 5 */
    assert_int_equal(r.first_round, 4);
    assert_int_equal(r.last_round, 5);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round = 6 AND delta IS NOT NULL"), 2);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round < 6 AND delta IS NOT NULL"), 0);
    /* Nothing left to drop: no event. */
    int64_t events = q1(fx, "SELECT count(*) FROM events");
    assert_int_equal(fedge_retention_prune(fx->agg.db, 7, 1, NULL, NULL, &r), FEDGE_OK);
    assert_int_equal(r.n_bodies, 0);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events"), events);
    assert_int_equal(fedge_retention_prune(fx->agg.db, 7, 0, NULL, NULL, &r), FEDGE_ERR_INVALID_ARG);
    /* The round closes from the bodies it kept. */
    submit(fx, 2);
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT n_accepted FROM rounds WHERE id = 6 AND status = 'closed'"), 3);
}

/* A body that no longer matches its hash is kept as evidence. */
static void test_mismatched_body_kept(void **state)
{
    fixture *fx = *state;
    fedge_retention_result r;
    int64_t id = q1(fx, "SELECT min(id) FROM updates WHERE round = 5");
    char sql[200];
    snprintf(sql, sizeof sql, "UPDATE updates SET delta = zeroblob(length(delta)) WHERE id = %" PRId64, id);
    exec(fx, sql);
    fedge_log_set_level(FEDGE_LOG_OFF);
    assert_int_equal(fedge_retention_prune(fx->agg.db, 6, 1, NULL, NULL, &r), FEDGE_OK);
    fedge_log_set_level(FEDGE_LOG_WARN);
    assert_int_equal(r.n_bodies, 5);
    assert_int_equal(r.n_skipped, 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE delta IS NOT NULL"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE detail LIKE '%%no longer match%%'"), 1);
}

/* ---- growth ------------------------------------------------------------------- */

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

static long long db_bytes(fixture *fx)
{
    char wal[FEDGE_PATH_MAX + 8];
    snprintf(wal, sizeof wal, "%s-wal", fx->cfg.db);
    return file_size(fx->cfg.db) + file_size(wal);
}

/* Ten rounds of a 41 KB fp32 delta per device: the database grows by every
 * body without retention and stays flat after round N with it. */
static void test_file_stays_bounded(void **state)
{
    (void)state;
    long long size[2][11], stored[2];
    for (int k = 0; k < 2; k++) {
        fixture *fx = new_fixture("mlp:16-512-3", k ? 2 : 0);
        start(fx);
        for (int r = 1; r <= 10; r++) {
            run_round(fx);
            size[k][r] = db_bytes(fx);
        }
        if (k)
            expect_ok(fx, 1);
        assert_int_equal(q1(fx, "PRAGMA auto_vacuum"), 2);
        /* what is stored, apart from the WAL's high-water mark (which
         * depends on when the last checkpoint fell) */
        exec(fx, "PRAGMA wal_checkpoint(TRUNCATE)");
        stored[k] = db_bytes(fx);
        free_fixture(fx);
    }
    long long body = 4LL * 10243;
    print_message("db + wal bytes after rounds 3/5/10: without retention %lld/%lld/%lld, "
                  "retain_deltas_rounds = 2: %lld/%lld/%lld; checkpointed %lld / %lld\n",
                  size[0][3], size[0][5], size[0][10], size[1][3], size[1][5], size[1][10], stored[0], stored[1]);
    /* without: rounds 5..10 added at least their 18 bodies */
    assert_true(size[0][10] - size[0][5] >= 18 * body);
    /* with: rounds 5..10 added less than one round's bodies */
    assert_true(size[1][10] - size[1][5] < 3 * body);
    assert_true(stored[1] < stored[0] / 2);
}

/* ---- schema 1 ------------------------------------------------------------------ */

static void test_schema1_migrated(void **state)
{
    (void)state;
    fixture *fx = new_fixture("mlp:16-8-3", 0);
    start(fx);
    run_round(fx);
    run_round(fx);
    /* Turn it into what a schema 1 build wrote. */
    exec(fx, "ALTER TABLE updates DROP COLUMN delta_pruned_round;"
             "ALTER TABLE updates DROP COLUMN delta_sha256;"
             "UPDATE meta SET value = '1' WHERE key = 'fedge_schema';"
             "PRAGMA auto_vacuum = NONE; VACUUM;");
    assert_int_equal(q1(fx, "PRAGMA auto_vacuum"), 0);
    fedge_agg_free(&fx->agg);

    sqlite3 *db = NULL;
    fedge_log_set_level(FEDGE_LOG_OFF);
    assert_int_equal(fedge_store_open_db(fx->cfg.db, 1, &db), FEDGE_ERR_SCHEMA_OLD);
    fedge_log_set_level(FEDGE_LOG_WARN);
    assert_null(db);

    /* The aggregator migrates it, with retention on from now. */
    fx->cfg.retain_deltas_rounds = 1;
    start(fx);
    assert_int_equal(q1(fx, "SELECT value FROM meta WHERE key = 'fedge_schema'"), 3);
    assert_int_equal(q1(fx, "PRAGMA auto_vacuum"), 2);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE length(delta_sha256) = 32"), 6);
    assert_true(bodies_match_hashes(fx));
    expect_ok(fx, 0); /* entries written under schema 1 still hold (the start logs the policy) */
    run_round(fx);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE delta IS NULL"), 6);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round = 3 AND delta IS NOT NULL"), 3);
    expect_ok(fx, 1);
    free_fixture(fx);
}

static void test_config_key(void **state)
{
    (void)state;
    fedge_agg_config c;
    char err[256] = "";
    fedge_agg_config_defaults(&c);
    assert_int_equal(c.retain_deltas_rounds, 0);
    assert_int_equal(fedge_agg_config_set(&c, "retain_deltas_rounds", "5", err, sizeof err), FEDGE_OK);
    assert_int_equal(c.retain_deltas_rounds, 5);
    assert_int_equal(fedge_agg_config_set(&c, "retain_deltas_rounds", "-1", err, sizeof err),
                     FEDGE_ERR_CONFIG_VALUE);
    if (!strstr(err, "retain"))
        fail_msg("the error should name the key: %s", err);
    assert_int_equal(c.retain_deltas_rounds, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_old_bodies_dropped_hashes_kept, setup_five, teardown),
        cmocka_unit_test_setup_teardown(test_tampered_kept_hash_detected, setup_five, teardown),
        cmocka_unit_test_setup_teardown(test_tampered_recent_hash_detected, setup_five, teardown),
        cmocka_unit_test_setup_teardown(test_tampered_recent_body_detected, setup_five, teardown),
        cmocka_unit_test_setup_teardown(test_body_dropped_outside_retention_detected, setup_five,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_tampered_prune_event_detected, setup_five, teardown),
        cmocka_unit_test_setup_teardown(test_open_round_untouched, setup_five, teardown),
        cmocka_unit_test_setup_teardown(test_mismatched_body_kept, setup_five, teardown),
        cmocka_unit_test(test_file_stays_bounded),
        cmocka_unit_test(test_schema1_migrated),
        cmocka_unit_test(test_config_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
