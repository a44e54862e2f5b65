/* upload.c when one device holds many transfers (review20): a refused
 * first block of a device at its max_per_device, and the eviction of its
 * longest idle transfer, look at the head of the device's list kept in
 * idle order (their cost: bench-upload_scale's refusal figure), and must
 * answer as tests/unit/upload_linear.h does: the same victim, the same retry time
 * (which the linear walk takes from the device's longest idle transfer),
 * with blocks of a few devices interleaved at random, the clock standing
 * still (ties) or stepping back now and then. */
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
#define NKEY 600

static char keys[NKEY];
static const char *devices[3] = {"dev-a", "dev-b", "dev-c"};
static uint8_t pattern[16 * BS];
static size_t next_num[NKEY];
static uint64_t rng_state;

static uint32_t rnd(uint32_t n)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)((rng_state >> 33) % n);
}

static void same(fedge_uploads *u, lin_uploads *ref, const fedge_upload_block *b, double now,
                 uint64_t *busy_retry)
{
    fedge_upload_result x, y;
    assert_int_equal(fedge_uploads_block(u, b, now, &x), FEDGE_OK);
    assert_int_equal(lin_uploads_block(ref, b, now, &y), FEDGE_OK);
    assert_int_equal(x.verdict, y.verdict);
    assert_string_equal(x.msg, y.msg);
    assert_int_equal(x.retry_s, y.retry_s);
    assert_int_equal(x.body_len, y.body_len);
    if (x.verdict == FEDGE_UPLOAD_BUSY && x.retry_s > 1 && strstr(x.msg, "of this device"))
        (*busy_retry)++; /* refused at the device's cap, retry time from its longest idle */
    free(x.body);
    free(y.body);
    fedge_upload_stats a, c;
    fedge_uploads_stats(u, &a);
    lin_uploads_stats(ref, &c);
    assert_memory_equal(&a, &c, sizeof a);
}

static void test_one_device_many_transfers_matches_linear(void **state)
{
    (void)state;
    /* evict_idle_s long against the steps of the clock: retry times vary */
    fedge_upload_limits l = {.max_body = 16 * BS, .max_per_device = 120, .max_total = 1000,
                             .budget_bytes = (size_t)1000 * 16 * BS, .idle_timeout_s = 400,
                             .evict_idle_s = 60};
    fedge_uploads *u = NULL;
    lin_uploads *ref = NULL;
    assert_int_equal(fedge_uploads_new(&l, &u), FEDGE_OK);
    assert_int_equal(lin_uploads_new(&l, &ref), FEDGE_OK);
    rng_state = 7;
    memset(next_num, 0, sizeof next_num);
    double now = 1000;
    uint64_t busy_retry = 0;
    for (size_t step = 0; step < 60000; step++) {
        size_t k = rnd(NKEY);
        const char *dev = devices[k % 3];
        size_t num = next_num[k] && rnd(10) ? next_num[k] : 0;
        if (num && rnd(20) == 0)
            num--; /* a repeated block */
        fedge_upload_block b = {.key = &keys[k], .device = dev, .offset = num * BS,
                                .block_size = BS, .more = num < 14 || rnd(4), .data = pattern,
                                .len = BS, .has_size1 = rnd(2), .size1 = 16 * BS};
        same(u, ref, &b, now, &busy_retry);
        next_num[k] = num + 1 >= 16 ? 0 : num + 1;
        if (rnd(50) == 0) {
            fedge_uploads_drop(u, &keys[k]);
            lin_uploads_drop(ref, &keys[k]);
        }
        uint32_t t = rnd(1000);
        if (step % 7000 == 6999)
            now += 45 + rnd(30); /* a lull: some give way to new transfers */
        else if (t < 2)
            now -= rnd(3000) / 1000.0; /* the clock steps back */
        else if (t < 300)
            ; /* ties */
        else
            now += rnd(40) / 1000.0;
        assert_int_equal(fedge_uploads_expire(u, now), lin_uploads_expire(ref, now));
    }
    fedge_upload_stats s;
    fedge_uploads_stats(u, &s);
    print_message("one device many: evicted %llu, busy %llu (%llu with retry > 1 s), completed %llu\n",
                  (unsigned long long)s.evicted, (unsigned long long)s.refused_busy,
                  (unsigned long long)busy_retry, (unsigned long long)s.completed);
    assert_true(s.evicted > 100 && s.refused_busy > 1000 && busy_retry > 1000);
    fedge_uploads_free(u);
    lin_uploads_free(ref);
}

int main(void)
{
    fedge_log_set_level(FEDGE_LOG_OFF);
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (uint8_t)(i * 131 + 7);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_device_many_transfers_matches_linear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
