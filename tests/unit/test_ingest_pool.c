/* Multi-core ingest (aggregator/ingest_pool.h, fedge_ingest_commit_group in
 * ingest.h): the worker pool's bounded queue, completion order and
 * shutdown, with real sealed frames of a real aggregator; and group commit:
 * the same replies and the same log as committing one at a time, and a SQL
 * fault in the middle of a group (a real SQLite trigger that aborts an
 * insert) leaves nothing stored and asks every device to retry. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agg.h"
#include "common.h"
#include "config.h"
#include "ingest.h"
#include "ingest_pool.h"
#include "log.h"
#include "store.h"

#include "agg_fixture.h"

#define N_DEV 4
static const char *DEVICES[N_DEV] = {"dev-a", "dev-b", "dev-c", "dev-d"};

#include "agg_updates.h"

static fixture *start_mode(const char *tag, const char *mode)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    fixture_prepare(fx, tag);
    fx->cfg.rounds = 3;
    fx->cfg.round_timeout_s = 600;
    snprintf(fx->cfg.mode, sizeof fx->cfg.mode, "%s", mode);
    fx->cfg.async_buffer_k = 2 * N_DEV;   /* async: no step closes during a test */
    fx->cfg.async_concurrency = N_DEV;
    fixture_start(fx);
    return fx;
}

static fixture *start(const char *tag) { return start_mode(tag, "sync"); }


static fedge_ingest_job *job_for(fixture *fx, int dev, const uint8_t *b, size_t len)
{
    fedge_ingest_snapshot snap;
    assert_int_equal(fedge_ingest_snapshot_take(&fx->agg, dev, &snap), FEDGE_OK);
    fedge_ingest_job *j = fedge_ingest_job_new(NULL, dev, &snap, b, len);
    assert_non_null(j);
    assert_ptr_not_equal(j->body, b);
    return j;
}

static void take_n(fedge_ingest_pool *p, fedge_ingest_job **out, size_t n);

/* A job may take a reassembled body as its own (no copy): the very buffer
 * is opened and freed with the job (ASan: no leak, no double free). */
static void test_job_adopts_body(void **state)
{
    (void)state;
    fixture *fx = start("pool-adopt");
    fedge_ingest_pool *p = NULL;
    fedge_ingest_job *got = NULL;
    fedge_ingest_snapshot snap;
    size_t len;
    uint8_t *b = make_update(fx, 0, good(fx, 10), &len);
    assert_int_equal(fedge_ingest_snapshot_take(&fx->agg, 0, &snap), FEDGE_OK);
    fedge_ingest_job *j = fedge_ingest_job_adopt(NULL, 0, &snap, b, len);
    assert_non_null(j);
    assert_ptr_equal(j->body, b);
    assert_int_equal(fedge_ingest_pool_new(1, 1, &p), FEDGE_OK);
    assert_int_equal(fedge_ingest_pool_submit(p, j), FEDGE_OK);
    take_n(p, &got, 1);
    assert_ptr_equal(got, j);
    assert_int_equal(got->frame.open_status, FEDGE_OK);
    fedge_ingest_job_free(got); /* frees b */
    fedge_ingest_pool_free(p);
    fixture_stop(fx);
}

/* Takes n jobs, waiting for each up to 10 s. */
static void take_n(fedge_ingest_pool *p, fedge_ingest_job **out, size_t n)
{
    size_t got = 0;
    while (got < n) {
        if (!fedge_ingest_pool_wait(p, 10000))
            fail_msg("no finished job within 10 s (%zu of %zu)", got, n);
        got += fedge_ingest_pool_take(p, out + got, n - got);
    }
}

/* A pool of capacity 2 holds 2 jobs (queued, opening or finished and not
 * taken): the third is refused at once with FEDGE_ERR_BUSY and stays the
 * caller's; once the two are taken there is room again. */
static void test_full_pool_refuses(void **state)
{
    (void)state;
    fixture *fx = start("pool-full");
    fedge_ingest_pool *p = NULL;
    fedge_ingest_job *j[3], *got[2];
    size_t len;
    assert_int_equal(fedge_ingest_pool_new(1, 2, &p), FEDGE_OK);
    for (int i = 0; i < 3; i++) {
        uint8_t *b = make_update(fx, i, good(fx, 10 + (uint64_t)i), &len);
        j[i] = job_for(fx, i, b, len);
        free(b);
    }
    assert_int_equal(fedge_ingest_pool_submit(p, j[0]), FEDGE_OK);
    assert_int_equal(fedge_ingest_pool_submit(p, j[1]), FEDGE_OK);
    assert_int_equal(fedge_ingest_pool_submit(p, j[2]), FEDGE_ERR_BUSY);
    assert_int_equal(fedge_ingest_pool_held(p), 2);
    take_n(p, got, 2);
    assert_int_equal(fedge_ingest_pool_held(p), 0);
    /* one worker: first in, first out; each opened for real, holding its
     * decrypted bytes and norm but no decoded delta (the commit decodes) */
    assert_ptr_equal(got[0], j[0]);
    assert_ptr_equal(got[1], j[1]);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(got[i]->status, FEDGE_OK);
        assert_int_equal(got[i]->frame.open_status, FEDGE_OK);
        assert_null(got[i]->frame.delta);
        assert_null(got[i]->body); /* freed once opened */
        assert_non_null(got[i]->frame.plain);
        assert_true(got[i]->frame.norm > 0);
        fedge_ingest_job_free(got[i]);
    }
    assert_int_equal(fedge_ingest_pool_submit(p, j[2]), FEDGE_OK);
    fedge_ingest_pool_free(p); /* frees j[2], taken or not */
    fixture_stop(fx);
}

/* Several workers: every job comes back once, in order of completion,
 * each with its own outcome (a frame sealed with another device's key
 * is refused on the worker). */
static void test_completion_order(void **state)
{
    (void)state;
    fixture *fx = start("pool-order");
    enum { N = 24 };
    fedge_ingest_pool *p = NULL;
    fedge_ingest_job *j[N], *got[N];
    size_t len;
    assert_int_equal(fedge_ingest_pool_new(3, N, &p), FEDGE_OK);
    for (int i = 0; i < N; i++) {
        update_spec u = good(fx, 100 + (uint64_t)i);
        if (i % 5 == 4)
            u.key_of = (i + 1) % N_DEV; /* the wrong key */
        uint8_t *b = make_update(fx, i % N_DEV, u, &len);
        j[i] = job_for(fx, i % N_DEV, b, len);
        j[i]->owner = &j[i];
        free(b);
        assert_int_equal(fedge_ingest_pool_submit(p, j[i]), FEDGE_OK);
    }
    take_n(p, got, N);
    int seen[N] = {0};
    double prev_done = 0;
    for (int k = 0; k < N; k++) {
        assert_true(got[k]->done_at >= prev_done);
        prev_done = got[k]->done_at;
        int i = (int)((fedge_ingest_job **)got[k]->owner - j);
        assert_true(i >= 0 && i < N);
        seen[i]++;
        assert_int_equal(got[k]->status, FEDGE_OK);
        assert_int_equal(got[k]->frame.open_status, i % 5 == 4 ? FEDGE_ERR_ENV_KEY_MISMATCH : FEDGE_OK);
        fedge_ingest_job_free(got[k]);
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(seen[i], 1);
    fedge_ingest_pool_free(p);
    fixture_stop(fx);
}

/* Shutdown opens what was queued and refuses what comes after; free
 * releases the jobs nobody took (ASan checks nothing leaks). */
static void test_shutdown_drains(void **state)
{
    (void)state;
    fixture *fx = start("pool-stop");
    enum { N = 12 };
    fedge_ingest_pool *p = NULL;
    fedge_ingest_job *got[N];
    size_t len;
    assert_int_equal(fedge_ingest_pool_new(2, N, &p), FEDGE_OK);
    uint8_t *b = make_update(fx, 0, good(fx, 7), &len);
    for (int i = 0; i < N; i++)
        assert_int_equal(fedge_ingest_pool_submit(p, job_for(fx, 0, b, len)), FEDGE_OK);
    fedge_ingest_pool_shutdown(p);
    fedge_ingest_job *late = job_for(fx, 0, b, len);
    assert_int_equal(fedge_ingest_pool_submit(p, late), FEDGE_ERR_STATE);
    fedge_ingest_job_free(late);
    assert_int_equal(fedge_ingest_pool_held(p), N);
    size_t n = fedge_ingest_pool_take(p, got, N / 2);
    assert_int_equal(n, N / 2);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(got[i]->frame.open_status, FEDGE_OK);
        fedge_ingest_job_free(got[i]);
    }
    fedge_ingest_pool_free(p); /* the other half, never taken */
    free(b);
    fixture_stop(fx);
}

static int readable(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    return poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN);
}

/* The eventfd is readable exactly while finished jobs wait to be taken,
 * however many finished between two takes. */
static void test_eventfd_follows_waiting_jobs(void **state)
{
    (void)state;
    fixture *fx = start("pool-efd");
    enum { N = 6 };
    fedge_ingest_pool *p = NULL;
    fedge_ingest_job *got[N];
    size_t len;
    assert_int_equal(fedge_ingest_pool_new(2, N, &p), FEDGE_OK);
    int fd = fedge_ingest_pool_fd(p);
    assert_false(readable(fd));
    assert_int_equal(fedge_ingest_pool_take(p, got, N), 0);
    assert_false(readable(fd));
    uint8_t *b = make_update(fx, 0, good(fx, 7), &len);
    for (int i = 0; i < N; i++)
        assert_int_equal(fedge_ingest_pool_submit(p, job_for(fx, 0, b, len)), FEDGE_OK);
    fedge_ingest_pool_shutdown(p); /* every job finished */
    assert_true(readable(fd));
    assert_true(readable(fd)); /* polling does not consume it */
    assert_int_equal(fedge_ingest_pool_take(p, got, 2), 2);
    assert_true(readable(fd));
    assert_int_equal(fedge_ingest_pool_take(p, got + 2, N), N - 2);
    assert_false(readable(fd));
    assert_int_equal(fedge_ingest_pool_take(p, got, 1), 0);
    assert_false(readable(fd));
    for (int i = 0; i < N; i++)
        fedge_ingest_job_free(got[i]);
    fedge_ingest_pool_free(p);
    free(b);
    fixture_stop(fx);
}

/* ---- group commit ---- */

typedef struct {
    int dev;
    update_spec u;
    int same_as; /* >= 0: the very bytes of that earlier frame (a resend) */
} arrival;

/* Eight arrivals that exercise every branch of the commit: accepted, a
 * policy refusal (a NaN: a logged rejected row), a forged key (401, no
 * row), a resend of an accepted frame, a replayed older counter, an
 * accepted update after a rejected one, a second update in the round. */
static size_t arrivals(fixture *fx, arrival *a)
{
    size_t n = 0;
    a[n++] = (arrival){0, good(fx, 100), -1};
    a[n] = (arrival){1, good(fx, 50), -1};
    a[n++].u.samples = 0;
    a[n] = (arrival){2, good(fx, 10), -1};
    a[n++].u.key_of = 0;
    a[n++] = (arrival){0, good(fx, 100), 0};
    a[n++] = (arrival){1, good(fx, 40), -1};
    a[n++] = (arrival){1, good(fx, 60), -1};
    a[n++] = (arrival){2, good(fx, 5), -1};
    a[n++] = (arrival){0, good(fx, 101), -1};
    return n;
}

#define MAX_ARR 8

static void seal_all(fixture *fx, const arrival *arr, size_t n, uint8_t **b, size_t *len)
{
    for (size_t i = 0; i < n; i++) {
        if (arr[i].same_as >= 0) {
            len[i] = len[arr[i].same_as];
            b[i] = malloc(len[i]);
            assert_non_null(b[i]);
            memcpy(b[i], b[arr[i].same_as], len[i]);
        } else {
            b[i] = make_update(fx, arr[i].dev, arr[i].u, &len[i]);
        }
    }
}

/* The log as a text: what two runs must agree on (not the wall clock, and
 * not the sealed bytes' hash: each log has its own run id). */
static char *log_text(fixture *fx)
{
    static const char *sql =
        "SELECT (SELECT group_concat(r, '|') FROM (SELECT round || ',' || device || ',' || n_samples || ',' ||"
        " encoding || ',' || bytes || ',' || counter || ',' || ifnull(norm, 'null') || ',' || decision || ',' ||"
        " rule || ',' || reason || ',' || ifnull(hex(delta), '') || ',' || ifnull(hex(delta_sha256), '') AS r"
        " FROM updates ORDER BY id)) || '#' ||"
        " (SELECT group_concat(d, '|') FROM (SELECT id || ',' || last_counter || ',' || status AS d FROM devices"
        " ORDER BY id)) || '#' ||"
        " (SELECT group_concat(x, '|') FROM (SELECT seq || ',' || tbl || ',' || row_key AS x FROM audit ORDER BY seq))";
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    const char *t = (const char *)sqlite3_column_text(st, 0);
    char *out = strdup(t ? t : "");
    sqlite3_finalize(st);
    assert_non_null(out);
    return out;
}

/* The same arrivals, one at a time (fedge_agg_submit) into one log and as
 * one group, all opened first on the pool's workers, into another: the
 * same replies, rows, decisions, counters, audit entries and counts. */
static void test_group_equals_one_at_a_time(void **state)
{
    (void)state;
    fixture *one = start("group-one"), *grp = start("group-all");
    arrival arr[MAX_ARR];
    uint8_t *b1[MAX_ARR], *b2[MAX_ARR];
    size_t l1[MAX_ARR], l2[MAX_ARR];
    int code1[MAX_ARR];
    char msg1[MAX_ARR][320];
    size_t n = arrivals(one, arr);
    assert_int_equal(n, MAX_ARR);
    seal_all(one, arr, n, b1, l1);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(fedge_agg_submit(&one->agg, DEVICES[arr[i].dev], b1[i], l1[i], fedge_now(), &code1[i],
                                          msg1[i], sizeof msg1[i]),
                         FEDGE_OK);
    static const int want[MAX_ARR] = {204, 403, 401, 204, 409, 204, 204, 409};
    for (size_t i = 0; i < n; i++)
        assert_int_equal(code1[i], want[i]);

    n = arrivals(grp, arr);
    seal_all(grp, arr, n, b2, l2);
    fedge_ingest_pool *p = NULL;
    fedge_ingest_job *j[MAX_ARR], *got[MAX_ARR];
    fedge_ingest_item items[MAX_ARR];
    assert_int_equal(fedge_ingest_pool_new(2, MAX_ARR, &p), FEDGE_OK);
    for (size_t i = 0; i < n; i++) {
        j[i] = job_for(grp, arr[i].dev, b2[i], l2[i]);
        assert_int_equal(fedge_ingest_pool_submit(p, j[i]), FEDGE_OK);
    }
    take_n(p, got, n);
    /* committed in arrival order, whatever order the workers finished in */
    memset(items, 0, sizeof items);
    for (size_t i = 0; i < n; i++)
        items[i] = (fedge_ingest_item){.device = j[i]->device, .snap = &j[i]->snap, .frame = &j[i]->frame};
    assert_int_equal(fedge_ingest_commit_group(&grp->agg, items, n, NULL), FEDGE_OK);
    assert_true(sqlite3_get_autocommit(grp->agg.db));
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(items[i].code, code1[i]);
        assert_string_equal(items[i].msg, msg1[i]);
    }
    char *t1 = log_text(one), *t2 = log_text(grp);
    assert_string_equal(t1, t2);
    assert_int_equal(grp->agg.n_accepted, one->agg.n_accepted);
    assert_int_equal(grp->agg.n_rejected, one->agg.n_rejected);
    assert_int_equal(grp->agg.bytes_received, one->agg.bytes_received);
    assert_memory_equal(grp->agg.submitted, one->agg.submitted, N_DEV);
    assert_int_equal(one->agg.n_accepted, 3);
    free(t1);
    free(t2);
    for (size_t i = 0; i < n; i++) {
        fedge_ingest_job_free(j[i]);
        free(b1[i]);
        free(b2[i]);
    }
    fedge_ingest_pool_free(p);
    fixture_stop(one);
    fixture_stop(grp);
}

/* A SQL error in the middle of a group (an insert aborted by a trigger)
 * rolls back the whole group: no row, counter or audit entry of any of its
 * updates is stored, the scheduler's counts are as before (async mode: the
 * devices keep their slots), and every device is told 503 (retry).
 * Retried without the fault, all go in. */
static void group_sql_fault(const char *mode)
{
    fixture *fx = start_mode("group-fault", mode);
    int async = strcmp(mode, "async") == 0;
    if (async) {
        /* every device asks, one tick gives each a slot */
        char body[1024];
        for (int i = 0; i < N_DEV; i++)
            assert_int_equal(fedge_agg_round_info(&fx->agg, DEVICES[i], fedge_now(), body, sizeof body), FEDGE_OK);
        assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
        assert_int_equal(fx->agg.in_flight, N_DEV);
    }
    uint8_t *b[N_DEV];
    size_t len[N_DEV];
    fedge_ingest_snapshot snap[N_DEV];
    fedge_ingest_frame f[N_DEV];
    fedge_ingest_item items[N_DEV];
    for (int i = 0; i < N_DEV; i++)
        b[i] = make_update(fx, i, good(fx, 20 + (uint64_t)i), &len[i]);
    char *before = log_text(fx);
    long long audit0 = q1(fx, "SELECT count(*) FROM audit");
    assert_int_equal(fedge_store_exec(fx->agg.db, "CREATE TEMP TRIGGER fault BEFORE INSERT ON updates"
                                                  " WHEN NEW.device = 'dev-c'"
                                                  " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"),
                     FEDGE_OK);
    fedge_log_set_level(FEDGE_LOG_ERROR + 1); /* the failure is logged; keep the output quiet */
    for (int round = 0; round < 2; round++) {
        memset(items, 0, sizeof items);
        for (int i = 0; i < N_DEV; i++) {
            assert_int_equal(fedge_ingest_snapshot_take(&fx->agg, i, &snap[i]), FEDGE_OK);
            assert_int_equal(fedge_ingest_open(&snap[i], b[i], len[i], &f[i]), FEDGE_OK);
            items[i] = (fedge_ingest_item){.device = i, .snap = &snap[i], .frame = &f[i]};
        }
        int ret = fedge_ingest_commit_group(&fx->agg, items, N_DEV, NULL);
        assert_true(sqlite3_get_autocommit(fx->agg.db));
        if (round == 0) {
            assert_int_not_equal(ret, FEDGE_OK);
            for (int i = 0; i < N_DEV; i++) {
                assert_int_equal(items[i].code, 503);
                assert_false(fx->agg.submitted[i]);
                if (async)
                    assert_int_equal(fx->agg.adm_step[i], fx->agg.round);
            }
            if (async)
                assert_int_equal(fx->agg.in_flight, N_DEV);
            char *after = log_text(fx);
            assert_string_equal(after, before);
            free(after);
            assert_int_equal(q1(fx, "SELECT count(*) FROM audit"), audit0);
            assert_int_equal(q1(fx, "SELECT count(*) FROM updates"), 0);
            assert_int_equal(fx->agg.n_accepted, 0);
            assert_int_equal(fx->agg.n_rejected, 0);
            assert_int_equal(fx->agg.bytes_received, 0);
            assert_int_equal(fedge_store_exec(fx->agg.db, "DROP TRIGGER fault"), FEDGE_OK);
        } else {
            assert_int_equal(ret, FEDGE_OK);
            for (int i = 0; i < N_DEV; i++) {
                assert_int_equal(items[i].code, 204);
                assert_true(fx->agg.submitted[i]);
                if (async)
                    assert_int_equal(fx->agg.adm_step[i], 0);
            }
            if (async)
                assert_int_equal(fx->agg.in_flight, 0);
            assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE decision='accepted'"), N_DEV);
            assert_int_equal(q1(fx, "SELECT sum(last_counter) FROM devices"), 20 + 21 + 22 + 23);
            assert_int_equal(fx->agg.n_accepted, N_DEV);
        }
        for (int i = 0; i < N_DEV; i++)
            fedge_ingest_frame_free(&f[i]);
    }
    free(before);
    for (int i = 0; i < N_DEV; i++)
        free(b[i]);
    fixture_stop(fx);
}

static void test_group_sql_fault(void **state)
{
    (void)state;
    group_sql_fault("sync");
}

static void test_group_sql_fault_async(void **state)
{
    (void)state;
    group_sql_fault("async");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_pool_refuses),
        cmocka_unit_test(test_job_adopts_body),
        cmocka_unit_test(test_completion_order),
        cmocka_unit_test(test_shutdown_drains),
        cmocka_unit_test(test_eventfd_follows_waiting_jobs),
        cmocka_unit_test(test_group_equals_one_at_a_time),
        cmocka_unit_test(test_group_sql_fault),
        cmocka_unit_test(test_group_sql_fault_async),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
