/* The retry schedule: exact exponential ceilings with the cap, no overflow
 * at absurd attempt numbers, every jittered delay inside [0, ceiling], the
 * jitter spread over the whole range, and reproducible for a seed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdlib.h>

#include "backoff.h"
#include "common.h"

static void test_default_ceilings(void **state)
{
    (void)state;
    fedge_backoff b = fedge_backoff_default();
    assert_int_equal(fedge_backoff_check(&b), FEDGE_OK);
    static const uint32_t want[] = {200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000};
    for (unsigned i = 0; i < FEDGE_ARRAY_LEN(want); i++)
        assert_int_equal(fedge_backoff_ceiling_ms(&b, i), want[i]);
    assert_int_equal(fedge_backoff_ceiling_ms(&b, 64), 10000);
    assert_int_equal(fedge_backoff_ceiling_ms(&b, 1000000), 10000);
    assert_int_equal(fedge_backoff_ceiling_ms(&b, UINT_MAX), 10000);
}

static void test_no_overflow_with_large_parameters(void **state)
{
    (void)state;
    /* base * factor^n passes 2^64 quickly; the ceiling must still be the cap. */
    fedge_backoff b = {UINT32_MAX / 2, UINT32_MAX, UINT32_MAX};
    assert_int_equal(fedge_backoff_check(&b), FEDGE_OK);
    assert_int_equal(fedge_backoff_ceiling_ms(&b, 0), UINT32_MAX / 2);
    assert_int_equal(fedge_backoff_ceiling_ms(&b, 1), UINT32_MAX);
    assert_int_equal(fedge_backoff_ceiling_ms(&b, 200), UINT32_MAX);
    fedge_rng rng;
    fedge_rng_seed(&rng, 5);
    (void)fedge_backoff_delay_ms(&b, 200, &rng); /* full 32-bit range: no UB */

    fedge_backoff flat = {300, 1, 5000};
    for (unsigned i = 0; i < 50; i++)
        assert_int_equal(fedge_backoff_ceiling_ms(&flat, i), 300);
}

static void test_invalid_schedules(void **state)
{
    (void)state;
    fedge_backoff zero_base = {0, 2, 100};
    fedge_backoff zero_factor = {10, 0, 100};
    fedge_backoff cap_below_base = {200, 2, 100};
    assert_int_equal(fedge_backoff_check(&zero_base), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_backoff_check(&zero_factor), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_backoff_check(&cap_below_base), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_backoff_check(NULL), FEDGE_ERR_INVALID_ARG);
}

/* Full jitter: uniform on [0, ceiling]. Bounds always; mean near ceiling/2;
 * draws reach both ends of the range. */
static void test_full_jitter_bounds_and_spread(void **state)
{
    (void)state;
    fedge_backoff b = fedge_backoff_default();
    fedge_rng rng;
    fedge_rng_seed(&rng, 42);
    const int draws = 20000;
    for (unsigned attempt = 0; attempt < 10; attempt++) {
        uint32_t ceil = fedge_backoff_ceiling_ms(&b, attempt);
        uint32_t lo = UINT32_MAX, hi = 0;
        double sum = 0;
        for (int i = 0; i < draws; i++) {
            uint32_t d = fedge_backoff_delay_ms(&b, attempt, &rng);
            assert_true(d <= ceil);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
            sum += d;
        }
        double mean = sum / draws;
        /* Uniform on [0, c]: sd of the mean = c / sqrt(12 * draws) ~ 0.002 c. */
        assert_true(mean > 0.48 * ceil && mean < 0.52 * ceil);
        assert_true(lo <= ceil / 50);
        assert_true(hi >= ceil - ceil / 50);
    }
}

static void test_reproducible_for_a_seed(void **state)
{
    (void)state;
    fedge_backoff b = fedge_backoff_default();
    fedge_rng r1, r2, r3;
    fedge_rng_seed(&r1, 7);
    fedge_rng_seed(&r2, 7);
    fedge_rng_seed(&r3, 8);
    int differs = 0;
    for (unsigned i = 0; i < 100; i++) {
        uint32_t a = fedge_backoff_delay_ms(&b, i % 8, &r1);
        uint32_t c = fedge_backoff_delay_ms(&b, i % 8, &r2);
        uint32_t d = fedge_backoff_delay_ms(&b, i % 8, &r3);
        assert_int_equal(a, c);
        differs |= a != d;
    }
    assert_true(differs); /* another seed: another schedule (devices do not sync up) */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_ceilings),
        cmocka_unit_test(test_no_overflow_with_large_parameters),
        cmocka_unit_test(test_invalid_schedules),
        cmocka_unit_test(test_full_jitter_bounds_and_spread),
        cmocka_unit_test(test_reproducible_for_a_seed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
