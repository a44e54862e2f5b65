/* The update path (aggregator/ingest.h): stage (a), fedge_ingest_open, is a
 * pure function of the frame and a snapshot, run here with no aggregator,
 * no database and on other threads; stage (b), fedge_ingest_commit, judges
 * a frame opened against an older snapshot by the counter and round of now.
 * And the scheduler table (aggregator/scheduler.h). */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "audit.h"
#include "hash.h"
#include "ingest.h"
#include "log.h"
#include "scheduler.h"
#include "store.h"
#include "update.h"

#include "agg_fixture.h"

#define N_PARAMS 40

typedef struct {
    fedge_device_key key;
    uint8_t run_id[FEDGE_RUN_ID_LEN];
    fedge_ingest_snapshot snap;
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    uint8_t secret[FEDGE_SECRET_LEN];
    assert_non_null(fx);
    for (size_t i = 0; i < sizeof secret; i++)
        secret[i] = (uint8_t)(3 * i + 1);
    assert_int_equal(fedge_envelope_derive_key(secret, sizeof secret, "dev-a", &fx->key), FEDGE_OK);
    for (size_t i = 0; i < sizeof fx->run_id; i++)
        fx->run_id[i] = (uint8_t)(0xa0 + i);
    fx->snap = (fedge_ingest_snapshot){
        .key = fx->key,
        .model_id = 0x1234,
        .n_params = N_PARAMS,
        .round = 5,
        .round_window = 0,
        .last_counter = 7,
        .max_len = 4096,
        .run_id = fx->run_id,
    };
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    free(*state);
    return 0;
}

/* A sealed fp32 update: delta[i] = fill * (i % 5 - 2); control adds the
 * control-variate half (flag and 2 x N_PARAMS elements). */
static uint8_t *seal(const fixture *fx, uint64_t counter, uint32_t round, float fill, int control, size_t *len)
{
    float delta[2 * N_PARAMS];
    for (size_t i = 0; i < 2 * N_PARAMS; i++)
        delta[i] = fill * (float)((int)(i % 5) - 2);
    fedge_delta_header h = {
        .encoding = FEDGE_ENC_FP32,
        .flags = control ? FEDGE_DELTA_FLAG_CONTROL : 0,
        .model_id = fx->snap.model_id,
        .round = round,
        .n_samples = 12,
        .n_elems = control ? 2 * N_PARAMS : N_PARAMS,
    };
    uint8_t *out = NULL;
    assert_int_equal(fedge_update_seal(&fx->key, counter, fx->run_id, &h, delta, NULL, &out, len), FEDGE_OK);
    return out;
}

static void test_open_good_frame(void **state)
{
    fixture *fx = *state;
    size_t len;
    uint8_t *body = seal(fx, 8, 5, 0.25f, 0, &len);
    uint8_t want[FEDGE_HASH_LEN];
    fedge_ingest_frame f;
    assert_int_equal(fedge_ingest_open(&fx->snap, body, len, &f), FEDGE_OK);
    assert_false(f.oversized);
    assert_int_equal(f.parse_status, FEDGE_OK);
    assert_int_equal(f.form, FEDGE_INGEST_FORM_OK);
    assert_true(f.opened);
    assert_int_equal(f.open_status, FEDGE_OK);
    assert_int_equal(f.counter, 8);
    assert_int_equal(f.frame_counter, 8);
    assert_true(f.have_header);
    assert_int_equal(f.header.round, 5);
    assert_int_equal(f.header.n_samples, 12);
    for (size_t i = 0; i < N_PARAMS; i++)
        assert_true(f.delta[i] == 0.25f * (float)((int)(i % 5) - 2));
    assert_int_equal(fedge_sha256(body, len, want), FEDGE_OK);
    assert_memory_equal(f.sealed_sha256, want, FEDGE_HASH_LEN);
    assert_int_equal(f.encoded_len, FEDGE_DELTA_HEADER_LEN + N_PARAMS * sizeof(float));
    fedge_ingest_frame_free(&f);
    assert_null(f.plain);
    free(body);
}

/* open_inplace (the pool's way): the frame takes the sealed body and
 * decrypts in it; the same outcome, bytes and hashes as fedge_ingest_open; a
 * refused or oversized frame still takes (and frees) its body: ASan would
 * see a leak or a double free. */
static void test_open_inplace_same_as_open(void **state)
{
    fixture *fx = *state;
    fedge_ingest_frame ref, f;
    size_t len;
    uint8_t *b1 = seal(fx, 8, 5, 0.25f, 0, &len);
    assert_int_equal(fedge_ingest_open(&fx->snap, b1, len, &ref), FEDGE_OK);
    uint8_t *own = malloc(len);
    assert_non_null(own);
    memcpy(own, b1, len);
    assert_int_equal(fedge_ingest_open_inplace(&fx->snap, own, len, &f), FEDGE_OK);
    assert_int_equal(f.open_status, FEDGE_OK);
    assert_ptr_equal(f.owned, own);
    assert_true(f.plain > own && f.plain < own + len);
    assert_int_equal(f.encoded_len, ref.encoded_len);
    assert_memory_equal(f.plain, ref.plain, ref.encoded_len);
    assert_memory_equal(f.plain_sha256, ref.plain_sha256, FEDGE_HASH_LEN);
    assert_memory_equal(f.sealed_sha256, ref.sealed_sha256, FEDGE_HASH_LEN);
    assert_memory_equal(&f.header, &ref.header, sizeof f.header);
    assert_true(f.norm == ref.norm && f.counter == ref.counter);
    fedge_ingest_frame_free(&f);
    assert_null(f.owned);
    assert_null(f.plain);
    fedge_ingest_frame_free(&ref);

    fedge_ingest_snapshot other = fx->snap;
    other.key.key[0] ^= 1;
    own = malloc(len);
    assert_non_null(own);
    memcpy(own, b1, len);
    assert_int_equal(fedge_ingest_open_inplace(&other, own, len, &f), FEDGE_OK);
    assert_int_equal(f.open_status, FEDGE_ERR_ENV_AUTH);
    assert_null(f.plain);
    fedge_ingest_frame_free(&f);

    other = fx->snap;
    other.max_len = len - 1;
    own = malloc(len);
    assert_non_null(own);
    memcpy(own, b1, len);
    assert_int_equal(fedge_ingest_open_inplace(&other, own, len, &f), FEDGE_OK);
    assert_true(f.oversized);
    fedge_ingest_frame_free(&f);
    assert_int_equal(fedge_ingest_open_inplace(&fx->snap, NULL, len, &f), FEDGE_ERR_INVALID_ARG);
    free(b1);
}

/* Freshness is judged against the snapshot's counter, nothing else. */
static void test_open_counter_against_snapshot(void **state)
{
    fixture *fx = *state;
    size_t len;
    uint8_t *body = seal(fx, 7, 5, 0.1f, 0, &len);
    fedge_ingest_frame f;
    assert_int_equal(fedge_ingest_open(&fx->snap, body, len, &f), FEDGE_OK);
    assert_int_equal(f.open_status, FEDGE_ERR_ENV_REPLAY);
    assert_int_equal(f.frame_counter, 7);
    fedge_ingest_frame_free(&f);
    fedge_ingest_snapshot older = fx->snap;
    older.last_counter = 6;
    assert_int_equal(fedge_ingest_open(&older, body, len, &f), FEDGE_OK);
    assert_int_equal(f.open_status, FEDGE_OK);
    fedge_ingest_frame_free(&f);
    free(body);
}

static void test_open_records_each_refusal(void **state)
{
    fixture *fx = *state;
    size_t len;
    uint8_t *body = seal(fx, 9, 5, 0.1f, 0, &len);
    fedge_ingest_frame f;
    fedge_ingest_snapshot s = fx->snap;

    s.max_len = len - 1; /* over the limit: nothing else is looked at */
    assert_int_equal(fedge_ingest_open(&s, body, len, &f), FEDGE_OK);
    assert_true(f.oversized);
    assert_false(f.opened);
    fedge_ingest_frame_free(&f);

    uint8_t junk[80] = {1, 2, 3};
    assert_int_equal(fedge_ingest_open(&fx->snap, junk, sizeof junk, &f), FEDGE_OK);
    assert_int_not_equal(f.parse_status, FEDGE_OK);
    assert_false(f.opened);
    fedge_ingest_frame_free(&f);

    s = fx->snap;
    s.scaffold = 1; /* the model delta alone in a SCAFFOLD run: not opened */
    assert_int_equal(fedge_ingest_open(&s, body, len, &f), FEDGE_OK);
    assert_int_equal(f.form, FEDGE_INGEST_FORM_NEEDS_CONTROL);
    assert_false(f.opened);
    fedge_ingest_frame_free(&f);
    free(body);

    body = seal(fx, 9, 5, 0.1f, 1, &len); /* a control delta outside SCAFFOLD */
    assert_int_equal(fedge_ingest_open(&fx->snap, body, len, &f), FEDGE_OK);
    assert_int_equal(f.form, FEDGE_INGEST_FORM_NO_CONTROL);
    assert_false(f.opened);
    fedge_ingest_frame_free(&f);
    s.scaffold = 1;
    assert_int_equal(fedge_ingest_open(&s, body, len, &f), FEDGE_OK);
    assert_int_equal(f.open_status, FEDGE_OK);
    fedge_ingest_frame_free(&f);
    free(body);

    body = seal(fx, 9, 4, 0.1f, 0, &len); /* a past round outside the window */
    assert_int_equal(fedge_ingest_open(&fx->snap, body, len, &f), FEDGE_OK);
    assert_int_equal(f.peek.round, 4);
    assert_int_equal(f.open_status, FEDGE_ERR_DELTA_ROUND);
    fedge_ingest_frame_free(&f);
    s = fx->snap;
    s.round_window = 1;
    assert_int_equal(fedge_ingest_open(&s, body, len, &f), FEDGE_OK);
    assert_int_equal(f.open_status, FEDGE_OK);
    fedge_ingest_frame_free(&f);
    body[len - 1] ^= 1; /* the tag */
    assert_int_equal(fedge_ingest_open(&s, body, len, &f), FEDGE_OK);
    assert_int_equal(f.open_status, FEDGE_ERR_ENV_AUTH);
    fedge_ingest_frame_free(&f);
    free(body);
}

typedef struct {
    const fedge_ingest_snapshot *snap;
    const uint8_t *body;
    size_t len;
    int ret, open_status;
    float first;
} open_job;

static void *open_on_thread(void *p)
{
    open_job *j = p;
    fedge_ingest_frame f;
    j->ret = fedge_ingest_open(j->snap, j->body, j->len, &f);
    j->open_status = f.open_status;
    j->first = f.delta ? f.delta[0] : 0;
    fedge_ingest_frame_free(&f);
    return NULL;
}

static void test_open_on_worker_threads(void **state)
{
    fixture *fx = *state;
    enum { N = 4 };
    open_job jobs[N];
    uint8_t *bodies[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        bodies[i] = seal(fx, 10 + (uint64_t)i, 5, 0.5f * (float)(i + 1), 0, &jobs[i].len);
        jobs[i].snap = &fx->snap;
        jobs[i].body = bodies[i];
        assert_int_equal(pthread_create(&th[i], NULL, open_on_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(jobs[i].ret, FEDGE_OK);
        assert_int_equal(jobs[i].open_status, FEDGE_OK);
        assert_true(jobs[i].first == -2.0f * 0.5f * (float)(i + 1));
        free(bodies[i]);
    }
}

static void test_scheduler_table(void **state)
{
    (void)state;
    static const char *const modes[] = {"sync", "async"};
    for (size_t i = 0; i < 2; i++) {
        const fedge_sched *s = fedge_sched_find(modes[i]);
        assert_non_null(s);
        assert_string_equal(s->mode, modes[i]);
        assert_non_null(s->resume);
        assert_non_null(s->on_tick);
        assert_non_null(s->on_accepted);
        assert_non_null(s->admit);
        assert_non_null(s->counted);
        assert_non_null(s->view);
    }
    assert_null(fedge_sched_find("semi"));
    assert_null(fedge_sched_find(""));
}

/* ---- stage (b) on a real aggregator ---------------------------------------- */

#define N_DEV 3
static const char *DEVICES[N_DEV] = {"dev-a", "dev-b", "dev-c"};

typedef struct {
    char dir[64];
    fedge_aggregator agg;
    fedge_device_key keys[N_DEV];
} agg_fixture;

static const char *policy_action = "reject";

/* Three devices, all selected; the policy refuses (setup_agg_clip: clips) a
 * delta whose norm is over 1. */
static int setup_agg(void **state)
{
    agg_fixture *fx = calloc(1, sizeof *fx);
    fedge_agg_config cfg;
    char err[256] = "";
    assert_non_null(fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/fedge-ingest-XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    fedge_log_set_level(FEDGE_LOG_ERROR);
    fedge_agg_config_defaults(&cfg);
    snprintf(cfg.keys_file, sizeof cfg.keys_file, "%s/keys", fx->dir);
    fixture_write_keys(cfg.keys_file, DEVICES, N_DEV);
    snprintf(cfg.test_data, sizeof cfg.test_data, "%s/test.bin", fx->dir);
    fixture_write_test_shard(cfg.test_data, 60);
    snprintf(cfg.db, sizeof cfg.db, "%s/fedge.db", fx->dir);
    snprintf(cfg.model_dir, sizeof cfg.model_dir, "%s/models", fx->dir);
    snprintf(cfg.model_spec, sizeof cfg.model_spec, "mlp:16-8-3");
    snprintf(cfg.policy_file, sizeof cfg.policy_file, "%s/policy.yaml", fx->dir);
    FILE *f = fopen(cfg.policy_file, "w");
    assert_non_null(f);
    fprintf(f, "version: 1\nname: norm\nupdate:\n  max_norm: 1.0\n  norm_action: %s\n", policy_action);
    fclose(f);
    cfg.rounds = 3;
    cfg.round_timeout_s = 600;
    assert_int_equal(fedge_agg_config_validate(&cfg, err, sizeof err), FEDGE_OK);
    for (int i = 0; i < N_DEV; i++) {
        uint8_t sec[FEDGE_SECRET_LEN];
        fixture_secret(i, sec);
        assert_int_equal(fedge_envelope_derive_key(sec, sizeof sec, DEVICES[i], &fx->keys[i]), FEDGE_OK);
    }
    if (fedge_agg_init(&fx->agg, &cfg, err, sizeof err) != FEDGE_OK)
        fail_msg("fedge_agg_init: %s", err);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    assert_int_equal(fx->agg.round, 1);
    assert_int_equal(fx->agg.selected[0], 1);
    *state = fx;
    return 0;
}

static int setup_agg_clip(void **state)
{
    policy_action = "clip";
    int r = setup_agg(state);
    policy_action = "reject";
    return r;
}

static int teardown_agg(void **state)
{
    agg_fixture *fx = *state;
    char cmd[160];
    fedge_agg_free(&fx->agg);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx);
    return 0;
}

static uint8_t *seal_for(agg_fixture *fx, int dev, uint64_t counter, uint32_t round, float fill, size_t *len)
{
    size_t n = fx->agg.model.n_params;
    float *delta = malloc(n * sizeof *delta);
    assert_non_null(delta);
    for (size_t i = 0; i < n; i++)
        delta[i] = fill * (float)((int)(i % 3) - 1);
    fedge_delta_header h = {
        .encoding = FEDGE_ENC_FP32,
        .model_id = fx->agg.model_id,
        .round = round,
        .n_samples = 10,
        .n_elems = (uint32_t)n,
    };
    memcpy(h.base_version, fx->agg.version, FEDGE_HASH_LEN);
    uint8_t *out = NULL;
    assert_int_equal(fedge_update_seal(&fx->keys[dev], counter, fx->agg.run_id, &h, delta, NULL, &out, len),
                     FEDGE_OK);
    free(delta);
    return out;
}

static int64_t update_rows(agg_fixture *fx, const char *device)
{
    int64_t n = -1;
    assert_int_equal(fedge_store_query_int64(fx->agg.db, &n, NULL, "SELECT count(*) FROM updates WHERE device=?",
                                             "t", device),
                     FEDGE_OK);
    return n;
}

/* Two frames with counter 1 opened against the same snapshot (last counter
 * 0), as a worker pool would: once the first is logged (refused by the
 * policy, which still spends the counter), the second is a replay. */
static void test_commit_rechecks_counter(void **state)
{
    agg_fixture *fx = *state;
    fedge_ingest_snapshot snap;
    fedge_ingest_frame big, small;
    size_t big_len, small_len;
    int code = 0;
    char msg[320];
    uint8_t *big_body = seal_for(fx, 0, 1, 1, 5.0f, &big_len);
    uint8_t *small_body = seal_for(fx, 0, 1, 1, 0.01f, &small_len);
    assert_int_equal(fedge_ingest_snapshot_take(&fx->agg, 0, &snap), FEDGE_OK);
    assert_int_equal(snap.last_counter, 0);
    assert_int_equal(fedge_ingest_open(&snap, big_body, big_len, &big), FEDGE_OK);
    assert_int_equal(fedge_ingest_open(&snap, small_body, small_len, &small), FEDGE_OK);
    assert_int_equal(big.open_status, FEDGE_OK);
    assert_int_equal(small.open_status, FEDGE_OK);

    assert_int_equal(fedge_ingest_commit(&fx->agg, 0, "dev-a", &snap, &big, &code, msg, sizeof msg), FEDGE_OK);
    assert_int_equal(code, 403);
    assert_non_null(strstr(msg, "max_norm"));
    assert_int_equal(fedge_ingest_commit(&fx->agg, 0, "dev-a", &snap, &small, &code, msg, sizeof msg), FEDGE_OK);
    assert_int_equal(code, 409);
    assert_string_equal(msg, fedge_strerror(FEDGE_ERR_ENV_REPLAY));
    assert_int_equal(update_rows(fx, "dev-a"), 1);
    assert_int_equal(fx->agg.n_accepted, 0);
    fedge_ingest_frame_free(&big);
    fedge_ingest_frame_free(&small);
    free(big_body);
    free(small_body);
}

/* A frame for round 1 opened while round 1 was open, committed after round
 * 1 has ended and round 2 opened (the device selected again): out of the
 * window (max_staleness 0), so refused as the wrong round, not counted in
 * round 2. */
static void test_commit_rechecks_round(void **state)
{
    agg_fixture *fx = *state;
    fedge_ingest_snapshot snap;
    fedge_ingest_frame f;
    size_t len;
    int code = 0;
    char msg[320];
    uint8_t *body = seal_for(fx, 0, 1, 1, 0.01f, &len);
    assert_int_equal(fedge_ingest_snapshot_take(&fx->agg, 0, &snap), FEDGE_OK);
    assert_int_equal(fedge_ingest_open(&snap, body, len, &f), FEDGE_OK);
    assert_int_equal(f.open_status, FEDGE_OK);

    fx->agg.deadline = 0; /* round 1 ends with nothing: it fails, the model stays */
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    assert_int_equal(fx->agg.round, 2);
    assert_int_equal(fx->agg.selected[0], 1);

    assert_int_equal(fedge_ingest_commit(&fx->agg, 0, "dev-a", &snap, &f, &code, msg, sizeof msg), FEDGE_OK);
    assert_int_equal(code, 409);
    assert_string_equal(msg, fedge_strerror(FEDGE_ERR_DELTA_ROUND));
    assert_int_equal(update_rows(fx, "dev-a"), 0);
    assert_int_equal(fx->agg.n_accepted, 0);
    fedge_ingest_frame_free(&f);
    free(body);

    /* the same update sealed for round 2 goes in */
    body = seal_for(fx, 0, 2, 2, 0.01f, &len);
    assert_int_equal(fedge_agg_submit(&fx->agg, "dev-a", body, len, fedge_now(), &code, msg, sizeof msg), FEDGE_OK);
    assert_int_equal(code, 204);
    assert_int_equal(update_rows(fx, "dev-a"), 1);
    free(body);
}

typedef struct {
    int inserts, updates;
} row_writes;

static void count_update_rows(void *p, int op, const char *dbname, const char *tbl, sqlite3_int64 rowid)
{
    row_writes *w = p;
    (void)dbname;
    (void)rowid;
    if (strcmp(tbl, "updates") == 0) {
        w->inserts += op == SQLITE_INSERT;
        w->updates += op == SQLITE_UPDATE;
    }
}

/* An accepted update opened on a worker (open_inplace) and group-committed:
 * its row is written once, with the SHA-256 of its body (taken on the
 * worker) in delta_sha256: no second write of the row's 158 KiB body for
 * the audit append, and the body is not read back to be hashed. */
static void test_commit_writes_row_once(void **state)
{
    agg_fixture *fx = *state;
    fedge_ingest_snapshot snap;
    fedge_ingest_frame f;
    size_t len;
    uint8_t *body = seal_for(fx, 1, 1, 1, 0.01f, &len);
    assert_int_equal(fedge_ingest_snapshot_take(&fx->agg, 1, &snap), FEDGE_OK);
    assert_int_equal(fedge_ingest_open_inplace(&snap, body, len, &f), FEDGE_OK); /* f owns body */
    assert_int_equal(f.open_status, FEDGE_OK);
    row_writes rw = {0};
    sqlite3_update_hook(fx->agg.db, count_update_rows, &rw);
    fedge_ingest_item it = {.device = 1, .snap = &snap, .frame = &f};
    assert_int_equal(fedge_ingest_commit_group(&fx->agg, &it, 1, NULL), FEDGE_OK);
    sqlite3_update_hook(fx->agg.db, NULL, NULL);
    assert_int_equal(it.code, 204);
    assert_int_equal(rw.inserts, 1);
    assert_int_equal(rw.updates, 0);

    sqlite3_stmt *st = NULL;
    uint8_t sha[FEDGE_HASH_LEN];
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db, "SELECT delta, delta_sha256 FROM updates WHERE device='dev-b'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(fedge_sha256(sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), sha), FEDGE_OK);
    assert_int_equal(sqlite3_column_bytes(st, 1), FEDGE_HASH_LEN);
    assert_memory_equal(sqlite3_column_blob(st, 1), sha, FEDGE_HASH_LEN);
    assert_memory_equal(f.plain_sha256, sha, FEDGE_HASH_LEN);
    sqlite3_finalize(st);
    uint8_t *canon = NULL;
    size_t canon_len = 0;
    assert_int_equal(fedge_audit_canon(fx->agg.db, "updates", "1", &canon, &canon_len), FEDGE_OK);
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db, "SELECT canon FROM audit WHERE tbl='updates' AND row_key='1'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_bytes(st, 0), (int)canon_len);
    assert_memory_equal(sqlite3_column_blob(st, 0), canon, canon_len);
    sqlite3_finalize(st);
    free(canon);
    fedge_ingest_frame_free(&f);
}

static char *row_text(agg_fixture *fx, const char *device)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db, "SELECT decision || ',' || rule || ',' || reason || ',' ||"
                                        " encoding || ',' || norm || ',' || hex(delta) || ',' || hex(delta_sha256)"
                                        " FROM updates WHERE device=?", -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    char *t = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    assert_non_null(t);
    return t;
}

/* A clipped update opened on a worker (no decoded delta kept) is decoded
 * again at the commit and stored clipped, the same row as the same update
 * submitted inline. */
static void test_commit_clips_worker_frame(void **state)
{
    agg_fixture *fx = *state;
    fedge_ingest_snapshot snap;
    fedge_ingest_frame f;
    size_t len_a, len_b;
    int code = 0;
    char msg[320];
    uint8_t *a = seal_for(fx, 0, 1, 1, 5.0f, &len_a), *b = seal_for(fx, 1, 1, 1, 5.0f, &len_b);
    assert_int_equal(fedge_agg_submit(&fx->agg, "dev-a", a, len_a, fedge_now(), &code, msg, sizeof msg), FEDGE_OK);
    assert_int_equal(code, 204);
    assert_non_null(strstr(msg, "clipped"));
    assert_int_equal(fedge_ingest_snapshot_take(&fx->agg, 1, &snap), FEDGE_OK);
    assert_int_equal(fedge_ingest_open_inplace(&snap, b, len_b, &f), FEDGE_OK); /* f owns b */
    assert_null(f.delta);
    fedge_ingest_item it = {.device = 1, .snap = &snap, .frame = &f};
    assert_int_equal(fedge_ingest_commit_group(&fx->agg, &it, 1, NULL), FEDGE_OK);
    assert_int_equal(it.code, 204);
    assert_string_equal(it.msg, msg);
    char *ra = row_text(fx, "dev-a"), *rb = row_text(fx, "dev-b");
    assert_non_null(strstr(ra, "fp32"));
    assert_string_equal(ra, rb);
    free(ra);
    free(rb);
    fedge_ingest_frame_free(&f);
    free(a);
}

/* seal_for with n_samples and the edge's training metrics (m NULL: an older edge's frame). */
static uint8_t *seal_metrics(agg_fixture *fx, int dev, uint64_t counter, uint32_t n_samples,
                             const fedge_train_metrics *m, size_t *len)
{
    size_t n = fx->agg.model.n_params;
    float *delta = calloc(n, sizeof *delta);
    assert_non_null(delta);
    delta[0] = 0.01f;
    fedge_delta_header h = {
        .encoding = FEDGE_ENC_FP32,
        .model_id = fx->agg.model_id,
        .round = 1,
        .n_samples = n_samples,
        .n_elems = (uint32_t)n,
    };
    memcpy(h.base_version, fx->agg.version, FEDGE_HASH_LEN);
    uint8_t *out = NULL;
    assert_int_equal(fedge_update_seal_metrics(&fx->keys[dev], counter, fx->agg.run_id, m, &h, delta, NULL, &out,
                                               len),
                     FEDGE_OK);
    free(delta);
    return out;
}

/* The audit entry of an updates / round_training row is its current canon
 * (what verify recomputes), and names column col exactly when want. */
static void check_canon(agg_fixture *fx, const char *tbl, const char *key, const char *col, int want)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db, "SELECT canon FROM audit WHERE tbl=? AND row_key=?"
                                                    " ORDER BY seq DESC LIMIT 1", -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, tbl, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    uint8_t *now = NULL;
    size_t now_len = 0;
    assert_int_equal(fedge_audit_canon(fx->agg.db, tbl, key, &now, &now_len), FEDGE_OK);
    assert_int_equal((size_t)sqlite3_column_bytes(st, 0), now_len);
    assert_memory_equal(sqlite3_column_blob(st, 0), now, now_len);
    assert_int_equal(memmem(now, now_len, col, strlen(col)) != NULL, want);
    free(now);
    sqlite3_finalize(st);
}

/* The edge's training metrics land in its updates row (inside the row's
 * audit canon); an older edge's update has NULL there and its canon is the
 * one it always had; at the round's close round_training holds the
 * n_samples-weighted mean and spread of the counted updates. */
static void test_train_metrics_logged(void **state)
{
    agg_fixture *fx = *state;
    int code = 0;
    char msg[320];
    size_t len;
    const fedge_train_metrics ma = {.present = FEDGE_TRAIN_HAS_ALL, .loss = 0.5f, .accuracy = 0.75f,
                                    .epochs = 2, .train_ms = 100};
    const fedge_train_metrics mb = {.present = FEDGE_TRAIN_HAS_LOSS | FEDGE_TRAIN_HAS_ACCURACY, .loss = 1.0f,
                                    .accuracy = 0.5f};
    uint8_t *a = seal_metrics(fx, 0, 1, 10, &ma, &len);
    assert_int_equal(fedge_agg_submit(&fx->agg, "dev-a", a, len, fedge_now(), &code, msg, sizeof msg), FEDGE_OK);
    assert_int_equal(code, 204);
    free(a);
    uint8_t *b = seal_metrics(fx, 1, 1, 30, &mb, &len);
    assert_int_equal(fedge_agg_submit(&fx->agg, "dev-b", b, len, fedge_now(), &code, msg, sizeof msg), FEDGE_OK);
    assert_int_equal(code, 204);
    free(b);
    uint8_t *c = seal_metrics(fx, 2, 1, 20, NULL, &len);
    assert_int_equal(fedge_agg_submit(&fx->agg, "dev-c", c, len, fedge_now(), &code, msg, sizeof msg), FEDGE_OK);
    assert_int_equal(code, 204);
    free(c);

    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db, "SELECT device, train_loss, train_accuracy, train_epochs,"
                                                    " train_ms, id FROM updates ORDER BY id", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "dev-a");
    assert_true(sqlite3_column_double(st, 1) == 0.5 && sqlite3_column_double(st, 2) == 0.75);
    assert_int_equal(sqlite3_column_int64(st, 3), 2);
    assert_int_equal(sqlite3_column_int64(st, 4), 100);
    check_canon(fx, "updates", (const char *)sqlite3_column_text(st, 5), "train_loss", 1);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_true(sqlite3_column_double(st, 1) == 1.0 && sqlite3_column_double(st, 2) == 0.5);
    assert_int_equal(sqlite3_column_type(st, 3), SQLITE_NULL); /* not sent */
    assert_int_equal(sqlite3_column_type(st, 4), SQLITE_NULL);
    check_canon(fx, "updates", (const char *)sqlite3_column_text(st, 5), "train_ms", 0);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "dev-c");
    for (int i = 1; i <= 4; i++)
        assert_int_equal(sqlite3_column_type(st, i), SQLITE_NULL);
    check_canon(fx, "updates", (const char *)sqlite3_column_text(st, 5), "train_", 0);
    sqlite3_finalize(st);

    fx->agg.deadline = 0; /* close round 1 with the three */
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db, "SELECT reports, samples, train_loss, train_loss_sd,"
                                                    " train_accuracy, train_accuracy_sd FROM round_training"
                                                    " WHERE round = 1", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int64(st, 0), 2);
    assert_int_equal(sqlite3_column_int64(st, 1), 40);
    /* loss: (10 x 0.5 + 30 x 1.0) / 40; sd: sqrt((10 x 0.25 + 30 x 1) / 40 - mean^2) */
    assert_float_equal(sqlite3_column_double(st, 2), 0.875, 1e-9);
    assert_float_equal(sqlite3_column_double(st, 3), sqrt(0.8125 - 0.875 * 0.875), 1e-9);
    assert_float_equal(sqlite3_column_double(st, 4), 0.5625, 1e-9);
    assert_float_equal(sqlite3_column_double(st, 5), sqrt((10 * 0.5625 + 30 * 0.25) / 40.0 - 0.5625 * 0.5625),
                       1e-9);
    sqlite3_finalize(st);
    check_canon(fx, "round_training", "1", "train_loss_sd", 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_good_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_inplace_same_as_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_counter_against_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_records_each_refusal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_on_worker_threads, setup, teardown),
        cmocka_unit_test(test_scheduler_table),
        cmocka_unit_test_setup_teardown(test_commit_rechecks_counter, setup_agg, teardown_agg),
        cmocka_unit_test_setup_teardown(test_commit_rechecks_round, setup_agg, teardown_agg),
        cmocka_unit_test_setup_teardown(test_train_metrics_logged, setup_agg, teardown_agg),
        cmocka_unit_test_setup_teardown(test_commit_writes_row_once, setup_agg, teardown_agg),
        cmocka_unit_test_setup_teardown(test_commit_clips_worker_frame, setup_agg_clip, teardown_agg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
