/* Async admission against the device population (issue 9), not timed: a
 * pass visits the askers and slot holders only (the devices walked do not
 * depend on the population), runs no SQL when nothing changed since the
 * last evaluation, re-evaluates within a second anyway (a status changed
 * from outside), and admits exactly what the rule gives on every pass (a
 * seeded scenario of 900 passes, dense asks then sparse ones, checked
 * against the rule recomputed here from the public rank function: who, at
 * which step, with which "rank R, k of n asking", which slots time out).
 * Time is virtual: every tick and GET /round gets its `now`. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agg.h"
#include "common.h"
#include "config.h"
#include "rng.h"
#include "scheduler.h"
#include "store.h"

#include "agg_fixture.h"

#define N_DEV 5000
static const char *DEVICES[N_DEV];
static char g_names[N_DEV][12];

#include "agg_updates.h"

/* fixture_secret repeats after 256 devices: above that, secrets whose first
 * bytes are the index (such devices send no update here) */
static void write_big_keys(const char *path, int n)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < n; i++) {
        fprintf(f, "%s eu ", DEVICES[i]);
        for (int j = 0; j < FEDGE_SECRET_LEN; j++)
            fprintf(f, "%02x", j < 2 ? (unsigned)((i >> (8 * j)) & 0xff) : (unsigned)((i * 31 + j * 7 + 1) & 0xff));
        fprintf(f, "\n");
    }
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0600), 0);
}

static fixture *start_pop(int population, long k, long concurrency, double slot_timeout_s)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    fixture_prepare_dir(fx->dir, sizeof fx->dir, &fx->cfg, "popscale", DEVICES, population, 120, "mlp:16-8-3");
    if (population > 256)
        write_big_keys(fx->cfg.keys_file, population);
    snprintf(fx->cfg.mode, sizeof fx->cfg.mode, "async");
    fx->cfg.rounds = 1000;
    fx->cfg.seed = 11;
    fx->cfg.async_buffer_k = k;
    fx->cfg.async_concurrency = concurrency;
    fx->cfg.async_slot_timeout_s = slot_timeout_s;
    fixture_start(fx);
    return fx;
}

static void ask_at(fixture *fx, int d, double now)
{
    char body[1024];
    assert_int_equal(fedge_agg_round_info(&fx->agg, DEVICES[d], now, body, sizeof body), FEDGE_OK);
}

static void exec_sql(fixture *fx, const char *sql)
{
    assert_int_equal(sqlite3_exec(fx->agg.db, sql, NULL, NULL, NULL), SQLITE_OK);
}

static int count_stmt(unsigned type, void *ctx, void *p, void *x)
{
    (void)type;
    (void)p;
    (void)x;
    (*(long *)ctx)++;
    return 0;
}

/* 8 slots, devices 0..3 allowed and admitted, 4..15 suspended and asking:
 * 4 slots stay free. Returns the list entries the ticks visited in a phase
 * where one asker leaves and asks again before each tick. */
static uint64_t population_case(int population)
{
    fixture *fx = start_pop(population, 100, 8, 3600);
    long stmts = 0;
    double now = fedge_now();
    exec_sql(fx, "UPDATE devices SET status='suspended' WHERE id>='pd-0004' AND id<='pd-0015'");
    for (int d = 0; d < 16; d++)
        ask_at(fx, d, now);
    assert_int_equal(fedge_agg_tick(&fx->agg, now), FEDGE_OK);
    assert_int_equal(fx->agg.in_flight, 4);

    /* nothing changes: no evaluation, no SQL, no list walked */
    assert_int_equal(sqlite3_trace_v2(fx->agg.db, SQLITE_TRACE_STMT, count_stmt, &stmts), SQLITE_OK);
    uint64_t v0 = fx->agg.async_visits;
    for (int t = 1; t <= 100; t++) {
        double at = now + 0.005 * t;
        for (int d = 4; d < 16; d++)
            ask_at(fx, d, at);
        assert_int_equal(fedge_agg_tick(&fx->agg, at), FEDGE_OK);
    }
    assert_int_equal(stmts, 0);
    assert_int_equal(fx->agg.async_visits, v0);

    /* a change before each tick: evaluated, walking the lists only */
    double base = now + 0.5;
    for (int t = 0; t < 40; t++) {
        int d = 4 + t % 12;
        fx->agg.sched->left(&fx->agg, d);
        ask_at(fx, d, base + 0.001 * t);
        assert_int_equal(fedge_agg_tick(&fx->agg, base + 0.001 * t), FEDGE_OK);
    }
    uint64_t visited = fx->agg.async_visits - v0;
    assert_true(stmts >= 40 * 12); /* each evaluation asked the 12 statuses */
    assert_int_equal(fx->agg.in_flight, 4);

    /* fedge-admin allows a device from outside: admitted within a second */
    double last = base + 0.039;
    exec_sql(fx, "UPDATE devices SET status='allowed' WHERE id='pd-0009'");
    for (int d = 4; d < 16; d++)
        ask_at(fx, d, last + 0.5);
    assert_int_equal(fedge_agg_tick(&fx->agg, last + 0.5), FEDGE_OK);
    assert_int_equal(fx->agg.in_flight, 4);
    for (int d = 4; d < 16; d++)
        ask_at(fx, d, last + 1.01);
    assert_int_equal(fedge_agg_tick(&fx->agg, last + 1.01), FEDGE_OK);
    assert_int_equal(fx->agg.in_flight, 5);
    assert_int_not_equal(fx->agg.adm_step[9], 0);
    sqlite3_trace_v2(fx->agg.db, 0, NULL, NULL);
    fixture_stop(fx);
    return visited;
}

static void test_visits_do_not_depend_on_population(void **state)
{
    (void)state;
    uint64_t v50 = population_case(50), v500 = population_case(500), v5000 = population_case(5000);
    assert_true(v50 > 0);
    assert_true(v50 <= 40 * (16 + 2 * 8));
    assert_int_equal(v500, v50);
    assert_int_equal(v5000, v50);
}

typedef struct {
    uint64_t rank;
    int d;
} ranked;

static int by_rank(const void *x, const void *y)
{
    const ranked *p = x, *q = y;
    if (p->rank != q->rank)
        return p->rank < q->rank ? -1 : 1;
    return (p->d > q->d) - (p->d < q->d);
}

#define EQ_P 200
#define EQ_SLOTS 6
#define EQ_TIMEOUT 2.0

/* The admissions of one pass at `now` by the rule (sched_async.c's module
 * comment), from the state before it and the asks the test made. */
static size_t reference(const fixture *fx, const double *asked, const int *suspended, double now, uint32_t *adm,
                        ranked *out, size_t *n_asking)
{
    const fedge_aggregator *a = &fx->agg;
    size_t in_flight = 0, n = 0, take = 0;
    static ranked c[EQ_P];
    uint32_t seen[64];
    size_t versions = 0;
    int has_current = 0;
    *n_asking = 0;
    for (int d = 0; d < EQ_P; d++) {
        adm[d] = a->adm_step[d];
        if (adm[d] && now - a->adm_at[d] > EQ_TIMEOUT)
            adm[d] = 0;
        if (!adm[d])
            continue;
        in_flight++;
        has_current |= adm[d] == a->round;
        size_t j = 0;
        while (j < versions && seen[j] != adm[d])
            j++;
        if (j == versions)
            seen[versions++] = adm[d];
    }
    if (in_flight >= EQ_SLOTS || (versions >= (size_t)a->cfg.async_max_versions && !has_current))
        return 0;
    for (int d = 0; d < EQ_P; d++) {
        if (adm[d] || a->selected[d] || a->submitted[d] || !(now - asked[d] <= 10.0))
            continue;
        c[n].d = d;
        assert_int_equal(fedge_sched_async_rank((uint64_t)a->cfg.seed, a->round, DEVICES[d], &c[n].rank), FEDGE_OK);
        n++;
    }
    *n_asking = n;
    qsort(c, n, sizeof *c, by_rank);
    for (size_t k = 0; k < n && take < EQ_SLOTS - in_flight; k++)
        if (!suspended[c[k].d])
            out[take++] = c[k];
    return take;
}

/* The admission's per-device queries of round_participants (the
 * participation cap, one update per admission) search by device: a scan
 * costs every evaluation (a new ask, once a second) a walk of the whole
 * run's admissions per device asking (review21). A log from before the
 * index gets it when reopened. */
static void assert_participant_queries_search_by_device(sqlite3 *db)
{
    static const char *queries[] = {
        "EXPLAIN QUERY PLAN SELECT count(*) FROM round_participants WHERE device='pd-0001'",
        "EXPLAIN QUERY PLAN SELECT max(round) FROM round_participants WHERE device='pd-0001' AND round<=7",
    };
    for (size_t q = 0; q < sizeof queries / sizeof queries[0]; q++) {
        sqlite3_stmt *st = NULL;
        assert_int_equal(sqlite3_prepare_v2(db, queries[q], -1, &st, NULL), SQLITE_OK);
        int by_device = 0;
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *detail = (const char *)sqlite3_column_text(st, 3);
            by_device |= detail && strstr(detail, "round_participants") && strstr(detail, "(device=?");
        }
        sqlite3_finalize(st);
        if (!by_device)
            fail_msg("not a search by device: %s", queries[q]);
    }
}

static void test_participant_queries_search_by_device(void **state)
{
    (void)state;
    char err[256] = "";
    fixture *fx = start_pop(16, 100, 8, 3600);
    assert_participant_queries_search_by_device(fx->agg.db);
    exec_sql(fx, "DROP INDEX round_participants_device"); /* a log from before it */
    fedge_agg_free(&fx->agg);
    if (fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err) != FEDGE_OK)
        fail_msg("fedge_agg_init: %s", err);
    assert_participant_queries_search_by_device(fx->agg.db);
    fixture_stop(fx);
}

static void test_admissions_follow_the_rule(void **state)
{
    (void)state;
    fixture *fx = start_pop(EQ_P, 5, EQ_SLOTS, EQ_TIMEOUT);
    static double asked[EQ_P];
    static int suspended[EQ_P];
    static uint32_t adm[EQ_P];
    ranked expect[EQ_SLOTS];
    fedge_rng rng;
    sqlite3_stmt *ev;
    int64_t last_ev = 0;
    uint64_t counter = 1;
    size_t admitted = 0, steps_seen = 0;
    char msg[320];
    fedge_rng_seed(&rng, 2026);
    for (int d = 0; d < EQ_P; d++) {
        asked[d] = -1e300;
        if (d % 7 == 3) {
            char sql[96];
            suspended[d] = 1;
            snprintf(sql, sizeof sql, "UPDATE devices SET status='suspended' WHERE id='%s'", DEVICES[d]);
            exec_sql(fx, sql);
        }
    }
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db,
                                        "SELECT id, round, device, detail FROM events WHERE kind='async_admitted' AND "
                                        "id>? ORDER BY id",
                                        -1, &ev, NULL),
                     SQLITE_OK);
    double now = fedge_now();
    uint32_t first_round = fx->agg.round;
    for (int t = 0; t < 900; t++) {
        now += 0.1;
        /* dense asks, then sparse ones (free slots wait for the next ask) */
        int asks = t < 300 ? 4 : fedge_rng_below(&rng, 15) == 0;
        for (int k = 0; k < asks; k++) {
            int d = (int)fedge_rng_below(&rng, EQ_P);
            ask_at(fx, d, now);
            asked[d] = now;
        }
        if (fedge_rng_below(&rng, 10) == 0) {
            int d = (int)fedge_rng_below(&rng, EQ_P);
            fx->agg.sched->left(&fx->agg, d);
            asked[d] = -1e300;
        }
        if (fedge_rng_below(&rng, 3) == 0) { /* a holder sends its update (or a slot times out instead) */
            int d = (int)fedge_rng_below(&rng, EQ_P);
            for (int j = 0; j < EQ_P && !fx->agg.adm_step[d]; j++)
                d = (d + 1) % EQ_P;
            if (fx->agg.adm_step[d]) {
                size_t len;
                uint8_t *b = make_update(fx, d, good(fx, counter++), &len);
                int code = 0;
                assert_int_equal(fedge_agg_submit(&fx->agg, DEVICES[d], b, len, now, &code, msg, sizeof msg),
                                 FEDGE_OK);
                free(b);
                if (code == 204)
                    assert_int_equal(fedge_agg_maybe_close(&fx->agg, now), FEDGE_OK);
            }
        }
        size_t n_asking;
        size_t take = reference(fx, asked, suspended, now, adm, expect, &n_asking);
        uint32_t round = fx->agg.round;
        assert_int_equal(fedge_agg_tick(&fx->agg, now), FEDGE_OK);
        assert_int_equal(fx->agg.round, round);
        size_t got = 0;
        sqlite3_reset(ev);
        sqlite3_bind_int64(ev, 1, last_ev);
        while (sqlite3_step(ev) == SQLITE_ROW) {
            char detail[96];
            assert_true(got < take);
            last_ev = sqlite3_column_int64(ev, 0);
            assert_int_equal(sqlite3_column_int64(ev, 1), round);
            assert_string_equal((const char *)sqlite3_column_text(ev, 2), DEVICES[expect[got].d]);
            snprintf(detail, sizeof detail, "rank %016llx, %zu of %zu asking", (unsigned long long)expect[got].rank,
                     got + 1, n_asking);
            assert_string_equal((const char *)sqlite3_column_text(ev, 3), detail);
            adm[expect[got].d] = round;
            got++;
        }
        assert_int_equal(got, take);
        for (int d = 0; d < EQ_P; d++) /* the slot timeouts too */
            assert_int_equal(fx->agg.adm_step[d], adm[d]);
        admitted += got;
    }
    steps_seen = fx->agg.round - first_round;
    assert_true(admitted > 50);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='async_admitted'"), (long long)admitted);
    assert_true(steps_seen >= 5);
    sqlite3_finalize(ev);
    fixture_stop(fx);
}

int main(void)
{
    (void)fixture_prepare; /* agg_updates.h's: this test sizes its own population */
    for (int i = 0; i < N_DEV; i++) {
        snprintf(g_names[i], sizeof g_names[i], "pd-%04d", i);
        DEVICES[i] = g_names[i];
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_visits_do_not_depend_on_population),
        cmocka_unit_test(test_admissions_follow_the_rule),
        cmocka_unit_test(test_participant_queries_search_by_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
