/* The edge's link timing: RTT smoothing (RFC 6298) with Karn's rule for
 * ambiguous samples, the ACK timeout and MAX_RETRANSMIT derived from it, and
 * request deadlines that grow with the RTT and the number of blocks (a 31 KB
 * model over a 240 ms or 400 ms round trip fits its deadline; the old fixed
 * 5 s per 64 KiB did not), never below the floor, never past the round. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "common.h"
#include "link_rtt.h"

#define MODEL_BYTES (7850 * 4) /* softmax:784-10 as float32 */

static void test_no_estimate(void **state)
{
    (void)state;
    fedge_link_rtt r;
    fedge_link_rtt_init(&r);
    assert_false(r.has_rtt);
    assert_int_equal(fedge_link_rtt_ack_timeout_ms(&r), FEDGE_LINK_ACK_DEFAULT_MS);
    assert_int_equal(fedge_link_rtt_ack_timeout_ms(NULL), FEDGE_LINK_ACK_DEFAULT_MS);
    assert_int_equal(fedge_link_rtt_sample(NULL, 10, 0), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_link_rtt_pace_sample(&r, 10, 0), FEDGE_ERR_INVALID_ARG);
}

static void test_karn_seed_and_smoothing(void **state)
{
    (void)state;
    fedge_link_rtt r;
    fedge_link_rtt_init(&r);
    /* A handshake seed (ambiguous) fills an empty estimate... */
    assert_int_equal(fedge_link_rtt_sample(&r, 900, 1), FEDGE_OK);
    assert_true(r.has_rtt);
    assert_int_equal(r.srtt_ms, 900);
    assert_int_equal(r.samples, 0);
    /* ...a larger ambiguous sample does not move it, a smaller one (a
     * tighter upper bound) does. */
    assert_int_equal(fedge_link_rtt_sample(&r, 5000, 1), FEDGE_OK);
    assert_int_equal(r.srtt_ms, 900);
    assert_int_equal(fedge_link_rtt_sample(&r, 600, 1), FEDGE_OK);
    assert_int_equal(r.srtt_ms, 600);
    assert_int_equal(r.rttvar_ms, 150);
    /* The first clean sample replaces the seed outright. */
    assert_int_equal(fedge_link_rtt_sample(&r, 100, 0), FEDGE_OK);
    assert_int_equal(r.srtt_ms, 100);
    assert_int_equal(r.rttvar_ms, 50);
    assert_int_equal(r.samples, 1);
    /* RFC 6298: rttvar = 3/4 rttvar + 1/4 |srtt - s|, srtt = 7/8 srtt + 1/8 s. */
    assert_int_equal(fedge_link_rtt_sample(&r, 200, 0), FEDGE_OK);
    assert_int_equal(r.rttvar_ms, (50 * 3 + 100) / 4);
    assert_int_equal(r.srtt_ms, (100 * 7 + 200) / 8);
    /* Ambiguous samples never move an estimate that clean ones built. */
    assert_int_equal(fedge_link_rtt_sample(&r, 60000, 1), FEDGE_OK);
    assert_int_equal(r.srtt_ms, (100 * 7 + 200) / 8);
    /* Absurd samples are clipped, not overflowed. */
    for (int i = 0; i < 100; i++)
        assert_int_equal(fedge_link_rtt_sample(&r, UINT32_MAX, 0), FEDGE_OK);
    assert_true(r.srtt_ms <= 600000u);
    assert_int_equal(fedge_link_rtt_ack_timeout_ms(&r), FEDGE_LINK_ACK_MAX_MS);
}

static fedge_link_rtt steady(uint32_t rtt_ms)
{
    fedge_link_rtt r;
    fedge_link_rtt_init(&r);
    for (int i = 0; i < 40; i++)
        fedge_link_rtt_sample(&r, rtt_ms, 0);
    return r;
}

static void test_ack_timeout_follows_rtt(void **state)
{
    (void)state;
    fedge_link_rtt r = steady(1);
    /* libcoap's floor */
    assert_int_equal(fedge_link_rtt_ack_timeout_ms(&r), FEDGE_LINK_ACK_MIN_MS);
    r = steady(400);
    assert_int_equal(fedge_link_rtt_ack_timeout_ms(&r), FEDGE_LINK_ACK_MIN_MS);
    r = steady(1000);
    assert_int_equal(fedge_link_rtt_ack_timeout_ms(&r), 1500);
    /* a satellite hop: the RFC 7252 default of 2 s would fire before any answer */
    r = steady(2400);
    assert_true(fedge_link_rtt_ack_timeout_ms(&r) > 2400);
    /* Jitter raises it: srtt + 4 rttvar. */
    fedge_link_rtt j;
    fedge_link_rtt_init(&j);
    for (int i = 0; i < 40; i++)
        fedge_link_rtt_sample(&j, i % 2 ? 200 : 1000, 0);
    assert_true(fedge_link_rtt_ack_timeout_ms(&j) >= j.srtt_ms + 4 * j.rttvar_ms - 1);
    assert_true(fedge_link_rtt_ack_timeout_ms(&j) > 1500);
}

static void test_max_retransmit_spans_the_deadline(void **state)
{
    (void)state;
    assert_int_equal(fedge_link_rtt_max_retransmit(1000, 0), FEDGE_LINK_RETRANSMIT_MIN);
    assert_int_equal(fedge_link_rtt_max_retransmit(1000, 5000), FEDGE_LINK_RETRANSMIT_MIN);
    /* 1.5 s * (2^(n+1) - 1) >= 200 s first at n = 7 */
    assert_int_equal(fedge_link_rtt_max_retransmit(1000, 200000), 7);
    assert_int_equal(fedge_link_rtt_max_retransmit(1000, UINT32_MAX), FEDGE_LINK_RETRANSMIT_MAX);
    assert_int_equal(fedge_link_rtt_max_retransmit(UINT32_MAX, UINT32_MAX),
                     FEDGE_LINK_RETRANSMIT_MIN);
    for (uint32_t span = 0; span < 400000; span += 7919) {
        uint16_t n = fedge_link_rtt_max_retransmit(1000, span);
        assert_true(n >= FEDGE_LINK_RETRANSMIT_MIN && n <= FEDGE_LINK_RETRANSMIT_MAX);
        if (n < FEDGE_LINK_RETRANSMIT_MAX)
            assert_true(1500ull * ((1u << (n + 1)) - 1) >= span);
    }
}

static void test_deadline_grows_with_rtt_and_blocks(void **state)
{
    (void)state;
    /* The old rule: 5 s per started 64 KiB, whatever the RTT. A 31 KB model
     * is 31 Block2 round trips; at 240 ms that is 7.4 s, at 400 ms 12.4 s. */
    for (uint32_t rtt = 100; rtt <= 2400; rtt += 20) {
        fedge_link_rtt r = steady(rtt);
        uint32_t t = fedge_link_rtt_deadline_ms(&r, MODEL_BYTES, 1024, 5000, 0);
        assert_true(t >= 31u * rtt * 2); /* room for a retransmission per block */
        assert_true(t >= 5000);
    }
    fedge_link_rtt a = steady(100), b = steady(400);
    assert_true(fedge_link_rtt_deadline_ms(&b, MODEL_BYTES, 1024, 0, 0) >
                fedge_link_rtt_deadline_ms(&a, MODEL_BYTES, 1024, 0, 0));
    assert_true(fedge_link_rtt_deadline_ms(&b, 2 * MODEL_BYTES, 1024, 0, 0) >
                fedge_link_rtt_deadline_ms(&b, MODEL_BYTES, 1024, 0, 0));
    /* A small request still allows three transmissions of its one block. */
    assert_true(fedge_link_rtt_deadline_ms(&b, 0, 1024, 0, 0) >= 1000u * (1 + 2 + 4));
}

static void test_deadline_floor_cap_and_pace(void **state)
{
    (void)state;
    fedge_link_rtt r = steady(400);
    uint32_t plain = fedge_link_rtt_deadline_ms(&r, MODEL_BYTES, 1024, 0, 0);
    /* --timeout-ms stays a floor. */
    assert_int_equal(fedge_link_rtt_deadline_ms(&r, MODEL_BYTES, 1024, 600000, 0), 600000);
    /* The round's time left caps it, even below the floor. */
    assert_int_equal(fedge_link_rtt_deadline_ms(&r, MODEL_BYTES, 1024, 600000, 3000), 3000);
    assert_int_equal(fedge_link_rtt_deadline_ms(&r, MODEL_BYTES, 1024, 0, plain + 1), plain);
    assert_true(fedge_link_rtt_deadline_ms(&r, SIZE_MAX, 1024, 0, 0) <= FEDGE_LINK_DEADLINE_MAX_MS);
    /* A lossy link's observed pace (3 s per exchange) lengthens it. */
    assert_int_equal(fedge_link_rtt_pace_sample(&r, 31 * 3000, 31), FEDGE_OK);
    assert_int_equal(r.pace_ms, 3000);
    assert_true(fedge_link_rtt_deadline_ms(&r, MODEL_BYTES, 1024, 0, 0) >= 2u * 31 * 2 * 3000);
    /* Pace is smoothed by 1/4. */
    assert_int_equal(fedge_link_rtt_pace_sample(&r, 1000, 1), FEDGE_OK);
    assert_int_equal(r.pace_ms, (3000 * 3 + 1000) / 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_estimate),
        cmocka_unit_test(test_karn_seed_and_smoothing),
        cmocka_unit_test(test_ack_timeout_follows_rtt),
        cmocka_unit_test(test_max_retransmit_spans_the_deadline),
        cmocka_unit_test(test_deadline_grows_with_rtt_and_blocks),
        cmocka_unit_test(test_deadline_floor_cap_and_pace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
