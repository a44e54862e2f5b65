/* upload.c's indexes against the implementation they replaced: up to
 * 10,000 transfers in progress from 3,000 devices, blocks interleaved at
 * random, supersedes, drops, wrong devices, lost, repeated, early and
 * malformed blocks, bodies over the limit, expiries (now and then the
 * clock stands still or steps back), evictions and completions. After every
 * step fedge_uploads_* must answer exactly as upload_linear.h (upload.c
 * before the index, which finds everything by walking all transfers):
 * verdict, message, retry time, body bytes, every statistic, every expire
 * count. A second run keeps the memory budget tight so that memory, not
 * the counts, refuses. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "log.h"
#include "upload.h"
#include "upload_linear.h"

#define BS 32u
#define NDEV 3000
#define NKEY 40000
#define MAX_BLOCKS 10
#define FILL_STEPS 30000 /* new transfers outnumber finished ones, no lulls */

static char keys[NKEY]; /* session stand-ins: only their addresses matter */
static char devices[NDEV][16];
static uint8_t pattern[128 + MAX_BLOCKS * BS];

typedef struct {
    size_t total;      /* body bytes */
    size_t next;       /* next block in order */
    int has_size1;
    uint64_t size1;
    const char *device;
} plan;

static plan plans[NKEY];
static uint64_t rng_state;

static uint32_t rnd(uint32_t n)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)((rng_state >> 33) % n);
}

typedef struct {
    fedge_uploads *u;
    lin_uploads *ref;
    uint64_t verdicts[6];
    uint64_t expired_calls;
} pair;

static void same_stats(const pair *p)
{
    fedge_upload_stats a, b;
    fedge_uploads_stats(p->u, &a);
    lin_uploads_stats(p->ref, &b);
    assert_int_equal(a.partial, b.partial);
    assert_int_equal(a.reserved_bytes, b.reserved_bytes);
    assert_int_equal(a.held_bytes, b.held_bytes);
    assert_int_equal(a.unsent_bytes, b.unsent_bytes);
    assert_int_equal(a.completed, b.completed);
    assert_int_equal(a.expired, b.expired);
    assert_int_equal(a.evicted, b.evicted);
    assert_int_equal(a.closed, b.closed);
    assert_int_equal(a.superseded, b.superseded);
    assert_int_equal(a.refused_size, b.refused_size);
    assert_int_equal(a.refused_busy, b.refused_busy);
    assert_int_equal(a.refused_bad, b.refused_bad);
    assert_int_equal(a.incomplete, b.incomplete);
}

static void both(pair *p, const fedge_upload_block *b, double now)
{
    fedge_upload_result x, y;
    assert_int_equal(fedge_uploads_block(p->u, b, now, &x), FEDGE_OK);
    assert_int_equal(lin_uploads_block(p->ref, b, now, &y), FEDGE_OK);
    assert_int_equal(x.verdict, y.verdict);
    assert_string_equal(x.msg, y.msg);
    assert_int_equal(x.retry_s, y.retry_s);
    assert_int_equal(x.body_len, y.body_len);
    if (x.verdict == FEDGE_UPLOAD_COMPLETE)
        assert_memory_equal(x.body, y.body, x.body_len);
    free(x.body);
    free(y.body);
    p->verdicts[x.verdict]++;
}

/* Block num of key k's body as planned; bs_wrong sends a short block before the last. */
static void send(pair *p, size_t k, const char *device, size_t num, int bs_wrong, double now)
{
    const plan *pl = &plans[k];
    size_t off = num * BS;
    size_t len = off < pl->total ? (pl->total - off < BS ? pl->total - off : BS) : 0;
    fedge_upload_block b = {
        .key = &keys[k], .device = device, .offset = off, .block_size = BS,
        .more = off + len < pl->total, .has_size1 = pl->has_size1, .size1 = pl->size1,
        .data = pattern + k % 97 + off, .len = len,
    };
    if (bs_wrong && b.more)
        b.len = BS / 2;
    both(p, &b, now);
}

static void start(size_t k)
{
    plan *pl = &plans[k];
    pl->total = 1 + rnd(MAX_BLOCKS * BS);
    pl->next = 0;
    uint32_t s = rnd(10);
    pl->has_size1 = s < 7;
    pl->size1 = s < 6 ? pl->total : pl->total / 2 + 1; /* exact, else an underestimate */
    pl->device = devices[k % NDEV];
}

static void run(const fedge_upload_limits *l, uint64_t seed, size_t steps, size_t full)
{
    pair p = {0};
    assert_int_equal(fedge_uploads_new(l, &p.u), FEDGE_OK);
    assert_int_equal(lin_uploads_new(l, &p.ref), FEDGE_OK);
    rng_state = seed;
    double now = 1000;
    size_t most = 0;
    for (size_t step = 0; step < steps; step++) {
        uint32_t dice = rnd(1000);
        if (dice < (step < FILL_STEPS ? 750u : 450u) || p.ref->n == 0) { /* a new body on a session, maybe superseding one */
            size_t k = rnd(NKEY);
            start(k);
            send(&p, k, plans[k].device, 0, 0, now);
            plans[k].next = 1;
        } else if (dice < 910) { /* a block of a transfer in progress */
            size_t k = (size_t)((const char *)p.ref->t[rnd((uint32_t)p.ref->n)].key - keys);
            plan *pl = &plans[k];
            uint32_t how = rnd(100);
            if (how < 75) {
                send(&p, k, pl->device, pl->next++, 0, now);
            } else if (how < 85) {
                send(&p, k, pl->device, pl->next + 1 + rnd(3), 0, now); /* ahead (or a gap) */
            } else if (how < 93) {
                send(&p, k, pl->device, pl->next ? pl->next - 1 : 0, 0, now); /* repeated */
            } else if (how < 96) {
                send(&p, k, pl->device, pl->next, 1, now);
            } else {
                send(&p, k, devices[rnd(NDEV)], pl->next, 0, now);
            }
        } else if (dice < 935) { /* a block of any session, most in no transfer */
            size_t k = rnd(NKEY);
            send(&p, k, plans[k].device ? plans[k].device : devices[0], 1 + rnd(3), 0, now);
        } else if (dice < 960) {
            const void *key = rnd(2) && p.ref->n ? p.ref->t[rnd((uint32_t)p.ref->n)].key
                                                 : (const void *)&keys[rnd(NKEY)];
            fedge_uploads_drop(p.u, key);
            lin_uploads_drop(p.ref, key);
        } else {
            /* a declared size over the limit, at once */
            size_t k = rnd(NKEY);
            start(k);
            plans[k].has_size1 = 1;
            plans[k].size1 = l->max_body + 1 + rnd(1000);
            send(&p, k, plans[k].device, 0, 0, now);
        }
        uint32_t t = rnd(10000);
        if (step > FILL_STEPS && step % 2999 == 0)
            now += 2.5 + rnd(3000) / 1000.0; /* a lull: expiries and evictions */
        else if (t < 3)
            now -= rnd(500) / 1000.0; /* a clock that steps back (not monotonic) */
        else if (t < 2000)
            ; /* the same instant: ties */
        else
            now += rnd(100) / 1e6;
        size_t e1 = fedge_uploads_expire(p.u, now), e2 = lin_uploads_expire(p.ref, now);
        assert_int_equal(e1, e2);
        p.expired_calls += e1 > 0;
        same_stats(&p);
        if (p.ref->n > most)
            most = p.ref->n;
    }
    fedge_upload_stats s;
    fedge_uploads_stats(p.u, &s);
    print_message("max_total %zu budget %zu: %zu steps, at most %zu in progress; completed %llu, "
                  "expired %llu in %llu calls, evicted %llu, closed %llu, superseded %llu, "
                  "refused size %llu busy %llu bad %llu, incomplete %llu\n",
                  l->max_total, l->budget_bytes, steps, most, (unsigned long long)s.completed,
                  (unsigned long long)s.expired, (unsigned long long)p.expired_calls,
                  (unsigned long long)s.evicted, (unsigned long long)s.closed,
                  (unsigned long long)s.superseded, (unsigned long long)s.refused_size,
                  (unsigned long long)s.refused_busy, (unsigned long long)s.refused_bad,
                  (unsigned long long)s.incomplete);
    /* the run exercised every path it is meant to */
    assert_true(s.completed > 100 && s.expired > 50 && s.evicted > 50 && s.closed > 100 &&
                s.superseded > 100 && s.refused_size > 100 && s.refused_busy > 100 &&
                s.refused_bad > 100 && s.incomplete > 100);
    assert_true(most >= full);
    fedge_uploads_free(p.u);
    lin_uploads_free(p.ref);
}

static size_t steps(void)
{
    return getenv("FEDGE_TEST_QUICK") ? 45000 : 60000;
}

static void test_index_matches_linear_walk(void **state)
{
    (void)state;
    fedge_upload_limits l = {
        .max_body = 8 * BS, .max_per_device = 6, .max_total = 10000,
        .budget_bytes = (size_t)10000 * 8 * BS, .idle_timeout_s = 5, .evict_idle_s = 2,
    };
    run(&l, 1, steps(), l.max_total); /* max_total reached */
}

static void test_index_matches_linear_walk_tight_memory(void **state)
{
    (void)state;
    fedge_upload_limits l = {
        .max_body = 8 * BS, .max_per_device = 4, .max_total = 10000,
        .budget_bytes = (size_t)2000 * 8 * BS, .idle_timeout_s = 5, .evict_idle_s = 2,
    };
    run(&l, 2, steps(), 0);
}

int main(void)
{
    fedge_log_set_level(FEDGE_LOG_OFF);
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (uint8_t)(i * 131 + 7);
    for (size_t i = 0; i < NDEV; i++)
        snprintf(devices[i], sizeof devices[i], "dev-%zu", i);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_matches_linear_walk),
        cmocka_unit_test(test_index_matches_linear_walk_tight_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
