/* fedge-edgesim's pure parts (tools/edgesim/plan.h): contiguous slices cover
 * the rows exactly once with sizes within 1; the pool hands out every device
 * once and refuses a device put back twice; Poisson gaps have mean 1/rate;
 * speed factors are per device, reproducible, and hit the straggler
 * fraction; nearest-rank quantiles; the command line and its refusals. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "plan.h"

static void check_slices(uint64_t n, uint32_t p)
{
    uint64_t next = 0, lo = UINT64_MAX, hi = 0;
    for (uint32_t d = 0; d < p; d++) {
        uint64_t first, count;
        fedge_edgesim_slice(n, p, d, &first, &count);
        assert_int_equal(first, next);
        next = first + count;
        lo = count < lo ? count : lo;
        hi = count > hi ? count : hi;
    }
    assert_int_equal(next, n);
    assert_true(hi - lo <= 1);
}

static void test_slices(void **state)
{
    (void)state;
    check_slices(10, 3);
    check_slices(60000, 10000);
    check_slices(59999, 7);
    check_slices(5, 8); /* more devices than rows: some get none */
    uint64_t first, count;
    fedge_edgesim_slice(10, 3, 3, &first, &count);
    assert_int_equal(count, 0);
    fedge_edgesim_slice(10, 0, 0, &first, &count);
    assert_int_equal(count, 0);
}

static void test_pool(void **state)
{
    (void)state;
    enum { P = 1000 };
    fedge_edgesim_pool pool;
    fedge_rng r;
    uint32_t order[P], again[P], d;
    uint8_t seen[P] = {0};
    assert_int_equal(fedge_edgesim_pool_init(&pool, P), FEDGE_OK);
    fedge_rng_seed(&r, 7);
    for (int i = 0; i < P; i++) {
        assert_int_equal(fedge_edgesim_pool_take(&pool, &r, &order[i]), FEDGE_OK);
        assert_true(order[i] < P);
        assert_int_equal(seen[order[i]], 0);
        seen[order[i]] = 1;
    }
    assert_int_equal(fedge_edgesim_pool_take(&pool, &r, &d), FEDGE_ERR_NOT_FOUND);
    assert_int_equal(fedge_edgesim_pool_put(&pool, 17), FEDGE_OK);
    assert_int_equal(fedge_edgesim_pool_put(&pool, 17), FEDGE_ERR_STATE);
    assert_int_equal(fedge_edgesim_pool_put(&pool, P), FEDGE_ERR_RANGE);
    assert_int_equal(fedge_edgesim_pool_take(&pool, &r, &d), FEDGE_OK);
    assert_int_equal(d, 17);
    fedge_edgesim_pool_free(&pool);

    /* the same seed gives the same order; not the identity */
    assert_int_equal(fedge_edgesim_pool_init(&pool, P), FEDGE_OK);
    fedge_rng_seed(&r, 7);
    int moved = 0;
    for (int i = 0; i < P; i++) {
        assert_int_equal(fedge_edgesim_pool_take(&pool, &r, &again[i]), FEDGE_OK);
        moved += again[i] != (uint32_t)i;
    }
    assert_memory_equal(order, again, sizeof order);
    assert_true(moved > P / 2);
    fedge_edgesim_pool_free(&pool);
    assert_int_equal(fedge_edgesim_pool_init(&pool, 0), FEDGE_ERR_RANGE);
}

static void test_gaps(void **state)
{
    (void)state;
    fedge_edgesim_options o;
    fedge_edgesim_defaults(&o);
    fedge_rng r;
    fedge_rng_seed(&r, 3);
    assert_true(fedge_edgesim_gap_s(&o, &r) == 0.0); /* all at once */
    o.arrival = EDGESIM_ARRIVAL_POISSON;
    o.rate = 50.0;
    double sum = 0.0, sq = 0.0;
    const int n = 40000;
    for (int i = 0; i < n; i++) {
        double g = fedge_edgesim_gap_s(&o, &r);
        assert_true(g >= 0.0 && isfinite(g));
        sum += g;
        sq += g * g;
    }
    double mean = sum / n, sd = sqrt(sq / n - mean * mean);
    assert_true(fabs(mean - 0.02) < 0.02 * 0.03);
    assert_true(fabs(sd - 0.02) < 0.02 * 0.05); /* exponential: sd = mean */
}

static void test_speeds(void **state)
{
    (void)state;
    fedge_edgesim_options o;
    fedge_edgesim_defaults(&o);
    assert_true(fedge_edgesim_speed(&o, 5) == 1.0);
    o.speed = EDGESIM_SPEED_STRAGGLER;
    o.straggler_frac = 0.25;
    o.slowdown = 5.0;
    int slow = 0;
    for (uint32_t d = 0; d < 10000; d++) {
        double f = fedge_edgesim_speed(&o, d);
        assert_true(f == 1.0 || f == 5.0);
        assert_true(f == fedge_edgesim_speed(&o, d)); /* fixed per device */
        slow += f == 5.0;
    }
    assert_in_range(slow, 2300, 2700);
    o.seed = 2; /* another seed, other stragglers */
    int same = 0;
    for (uint32_t d = 0; d < 1000; d++)
        same += fedge_edgesim_speed(&o, d) == 5.0;
    assert_in_range(same, 180, 320);
    o.speed = EDGESIM_SPEED_LOGNORMAL;
    o.sigma = 0.5;
    double sum = 0.0;
    for (uint32_t d = 0; d < 10000; d++) {
        double f = fedge_edgesim_speed(&o, d);
        assert_true(f >= 1.0);
        sum += log(f);
    }
    /* E|N(0, s^2)| = s sqrt(2 / pi) */
    assert_true(fabs(sum / 10000 - 0.5 * sqrt(2.0 / M_PI)) < 0.02);
}

static void test_quantiles(void **state)
{
    (void)state;
    double v[100];
    for (int i = 0; i < 100; i++)
        v[i] = 100 - i; /* unsorted */
    assert_true(fedge_edgesim_quantile(v, 100, 0.5) == 50.0);
    assert_true(fedge_edgesim_quantile(v, 100, 0.99) == 99.0);
    assert_true(fedge_edgesim_quantile(v, 100, 1.0) == 100.0);
    assert_true(fedge_edgesim_quantile(v, 100, 0.0) == 1.0);
    double one = 7.0;
    assert_true(fedge_edgesim_quantile(&one, 1, 0.99) == 7.0);
    assert_true(fedge_edgesim_quantile(NULL, 0, 0.5) == 0.0);
}

static int parse(fedge_edgesim_options *o, const char *line)
{
    char buf[512], *argv[64];
    int argc = 0;
    snprintf(buf, sizeof buf, "edgesim %s", line);
    for (char *t = strtok(buf, " "); t && argc < 63; t = strtok(NULL, " "))
        argv[argc++] = t;
    argv[argc] = NULL;
    char err[256];
    return fedge_edgesim_parse(argc, argv, o, err, sizeof err);
}

static void test_args(void **state)
{
    (void)state;
    fedge_edgesim_options o;
    assert_int_equal(parse(&o, "--keys k"), FEDGE_OK);
    assert_int_equal(o.population, 100);
    assert_int_equal(o.rounds, 1);
    assert_int_equal(o.log_level, FEDGE_LOG_WARN);
    assert_int_equal(parse(&o, "--keys k --server 10.0.0.2:7000 --population=10000 "
                               "--concurrency 1000 --arrival poisson:12.5 --speed straggler:0.1:8 "
                               "--dropout 0.3 --session-s 30 --rounds 0 --train none --seed 9"),
                     FEDGE_OK);
    assert_string_equal(o.host, "10.0.0.2");
    assert_int_equal(o.port, 7000);
    assert_int_equal(o.population, 10000);
    assert_int_equal(o.concurrency, 1000);
    assert_int_equal(o.arrival, EDGESIM_ARRIVAL_POISSON);
    assert_true(o.rate == 12.5);
    assert_int_equal(o.speed, EDGESIM_SPEED_STRAGGLER);
    assert_true(o.straggler_frac == 0.1 && o.slowdown == 8.0);
    assert_true(o.dropout == 0.3 && o.session_s == 30.0);
    assert_int_equal(o.seed, 9);
    assert_int_equal(parse(&o, "--keys k --speed lognormal:0.7"), FEDGE_OK);
    assert_true(o.sigma == 0.7);
    assert_false(o.tcp);
    assert_int_equal(parse(&o, "--keys k --transport tcp"), FEDGE_OK);
    assert_true(o.tcp);

    static const char *bad[] = {
        "",                                          /* no --keys */
        "--keys k --population 0",
        "--keys k --population 10 --concurrency 11", /* a device in two sessions */
        "--keys k --dropout 1.5",
        "--keys k --arrival poisson:0",
        "--keys k --arrival burst",
        "--keys k --speed straggler:0.1",
        "--keys k --speed straggler:2:3",
        "--keys k --speed lognormal:1:2",
        "--keys k --train sgd",                      /* no --data */
        "--keys k --train adam",
        "--keys k --rounds 0",                       /* sessions without an end */
        "--keys k --seed -1",
        "--keys k --bogus 1",
        "--keys k --transport udp",
        "--keys",
        "stray",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse(&o, bad[i]) != FEDGE_ERR_EDGE_USAGE)
            fail_msg("accepted: %s", bad[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slices),   cmocka_unit_test(test_pool),
        cmocka_unit_test(test_gaps),     cmocka_unit_test(test_speeds),
        cmocka_unit_test(test_quantiles), cmocka_unit_test(test_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
