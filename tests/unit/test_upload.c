/* Bounded Block1 reassembly: a body arrives whole; a declared or running
 * size over the limit is refused before anything is allocated for it; the
 * per-device, total and memory caps refuse new transfers with a retry time
 * unless an idle transfer can give way; idle and closed transfers are freed; lost, repeated and malformed blocks
 * get the right verdict; a body with Size1 is allocated once at that size
 * while what is allocated ahead of the bytes' arrival, over all uploads,
 * stays within a quarter of the budget (hostile claims cannot make the
 * daemon allocate more); otherwise buffers grow with the bytes received,
 * not with what a client declares. */
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

#define BS 1024u

static int k1, k2, k3, k4; /* session stand-ins: only their addresses matter */
static uint8_t pattern[(1 << 20) + 1024];

static fedge_upload_limits limits(void)
{
    fedge_upload_limits l = {
        .max_body = 10 * BS, .max_per_device = 2, .max_total = 3, .budget_bytes = 30 * BS,
        .idle_timeout_s = 5, .evict_idle_s = 3,
    };
    return l;
}

static fedge_uploads *make(const fedge_upload_limits *l)
{
    fedge_uploads *u = NULL;
    assert_int_equal(fedge_uploads_new(l, &u), FEDGE_OK);
    return u;
}

/* Block `num` of a body of `total` bytes (Size1 sent when size1 != 0). */
static fedge_upload_verdict send_block(fedge_uploads *u, const void *key, const char *dev,
                                       size_t num, size_t total, uint64_t size1, double now,
                                       fedge_upload_result *r)
{
    size_t off = num * BS;
    size_t len = total - off < BS ? total - off : BS;
    fedge_upload_block b = {
        .key = key, .device = dev, .offset = off, .block_size = BS, .more = off + len < total,
        .has_size1 = size1 != 0, .size1 = size1, .data = pattern + off, .len = len,
    };
    assert_int_equal(fedge_uploads_block(u, &b, now, r), FEDGE_OK);
    return r->verdict;
}

static fedge_upload_stats stats(const fedge_uploads *u)
{
    fedge_upload_stats s;
    fedge_uploads_stats(u, &s);
    return s;
}

static void test_body_in_blocks(void **state)
{
    (void)state;
    fedge_upload_limits l = limits();
    fedge_uploads *u = make(&l);
    fedge_upload_result r;
    size_t total = 4 * BS + 100;
    for (size_t n = 0; n < 4; n++)
        assert_int_equal(send_block(u, &k1, "dev-1", n, total, total, n, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(stats(u).partial, 1);
    assert_int_equal(send_block(u, &k1, "dev-1", 4, total, total, 4, &r), FEDGE_UPLOAD_COMPLETE);
    assert_int_equal(r.body_len, total);
    assert_memory_equal(r.body, pattern, total);
    free(r.body);
    fedge_upload_stats s = stats(u);
    assert_int_equal(s.partial, 0);
    assert_int_equal(s.held_bytes, 0);
    assert_int_equal(s.reserved_bytes, 0);
    assert_int_equal(s.completed, 1);
    /* a body of exactly the limit, without Size1 */
    for (size_t n = 0; n < 9; n++)
        assert_int_equal(send_block(u, &k2, "dev-2", n, 10 * BS, 0, 1, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k2, "dev-2", 9, 10 * BS, 0, 1, &r), FEDGE_UPLOAD_COMPLETE);
    assert_int_equal(r.body_len, 10 * BS);
    free(r.body);
    /* a body in one Block1 block needs no transfer */
    assert_int_equal(send_block(u, &k3, "dev-3", 0, 100, 100, 1, &r), FEDGE_UPLOAD_COMPLETE);
    assert_int_equal(r.body_len, 100);
    free(r.body);
    assert_int_equal(stats(u).partial, 0);
    fedge_uploads_free(u);
}

static void test_declared_size_over_limit(void **state)
{
    (void)state;
    fedge_upload_limits l = limits();
    fedge_uploads *u = make(&l);
    fedge_upload_result r;
    uint64_t declared[] = {10 * BS + 1, 64u * 1000 * 1000, 0xffffffffu, UINT64_MAX};
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(declared); i++) {
        assert_int_equal(send_block(u, &k1, "dev-1", 0, 5 * BS, declared[i], 0, &r),
                         FEDGE_UPLOAD_TOO_LARGE);
        assert_non_null(strstr(r.msg, "exceeds the limit of 10240"));
        assert_null(r.body);
        fedge_upload_stats s = stats(u);
        assert_int_equal(s.partial, 0);
        assert_int_equal(s.held_bytes, 0);
        assert_int_equal(s.refused_size, i + 1);
    }
    /* Size1 on a later block is checked too */
    assert_int_equal(send_block(u, &k1, "dev-1", 0, 5 * BS, 5 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 1, 5 * BS, 0xffffffffu, 0, &r), FEDGE_UPLOAD_TOO_LARGE);
    assert_int_equal(stats(u).partial, 0);
    fedge_uploads_free(u);
}

static void test_running_size_over_limit(void **state)
{
    (void)state;
    fedge_upload_limits l = limits();
    fedge_uploads *u = make(&l);
    fedge_upload_result r;
    size_t total = 20 * BS; /* no Size1: the limit is found as blocks arrive */
    for (size_t n = 0; n < 10; n++)
        assert_int_equal(send_block(u, &k1, "dev-1", n, total, 0, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_true(stats(u).held_bytes <= l.max_body);
    assert_int_equal(send_block(u, &k1, "dev-1", 10, total, 0, 0, &r), FEDGE_UPLOAD_TOO_LARGE);
    fedge_upload_stats s = stats(u);
    assert_int_equal(s.partial, 0);
    assert_int_equal(s.held_bytes, 0);
    /* a Size1 that lies low: the body may grow to the limit, then no further */
    for (size_t n = 0; n < 10; n++)
        assert_int_equal(send_block(u, &k1, "dev-1", n, total, 2 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 10, total, 2 * BS, 0, &r), FEDGE_UPLOAD_TOO_LARGE);
    /* an offset far past the limit on a block of no transfer */
    fedge_upload_block b = {.key = &k2, .device = "dev-2", .offset = SIZE_MAX - 10,
                            .block_size = BS, .more = 1, .data = pattern, .len = BS};
    assert_int_equal(fedge_uploads_block(u, &b, 0, &r), FEDGE_OK);
    assert_int_equal(r.verdict, FEDGE_UPLOAD_TOO_LARGE);
    assert_int_equal(stats(u).partial, 0);
    fedge_uploads_free(u);
}

/* Without Size1 a buffer grows with the bytes received, not to max_body. */
static void test_buffers_follow_received_bytes(void **state)
{
    (void)state;
    fedge_upload_limits l = {.max_body = 1 << 20, .max_per_device = 1, .max_total = 4,
                             .budget_bytes = 4 << 20, .idle_timeout_s = 5, .evict_idle_s = 5};
    fedge_uploads *u = make(&l);
    fedge_upload_result r;
    assert_int_equal(send_block(u, &k1, "dev-1", 0, 1 << 20, 0, 0, &r), FEDGE_UPLOAD_CONTINUE);
    fedge_upload_stats s = stats(u);
    assert_int_equal(s.reserved_bytes, 1 << 20);
    assert_true(s.held_bytes <= 16 * 1024); /* not the megabyte max_body allows */
    assert_int_equal(s.unsent_bytes, 0);
    for (size_t n = 1; n < 40; n++)
        assert_int_equal(send_block(u, &k1, "dev-1", n, 1 << 20, 0, 0, &r), FEDGE_UPLOAD_CONTINUE);
    s = stats(u);
    assert_true(s.held_bytes >= 40 * BS && s.held_bytes <= 2 * 40 * BS);
    fedge_uploads_free(u);
}

/* A declared Size1 gets its buffer at once (no regrowth, no copies), the
 * body arrives whole and right. */
static void test_sized_body_allocated_once(void **state)
{
    (void)state;
    fedge_upload_limits l = {.max_body = 1 << 20, .max_per_device = 1, .max_total = 4,
                             .budget_bytes = 4 << 20, .idle_timeout_s = 5, .evict_idle_s = 5};
    fedge_uploads *u = make(&l);
    fedge_upload_result r;
    size_t total = 60 * BS + 17;
    assert_int_equal(send_block(u, &k1, "dev-1", 0, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    fedge_upload_stats s = stats(u);
    assert_int_equal(s.held_bytes, total);
    assert_int_equal(s.unsent_bytes, total - BS);
    for (size_t n = 1; n < 60; n++) {
        assert_int_equal(send_block(u, &k1, "dev-1", n, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
        assert_int_equal(stats(u).held_bytes, total);
        assert_int_equal(stats(u).unsent_bytes, total - (n + 1) * BS);
    }
    assert_int_equal(send_block(u, &k1, "dev-1", 60, total, total, 0, &r), FEDGE_UPLOAD_COMPLETE);
    assert_int_equal(r.body_len, total);
    assert_memory_equal(r.body, pattern, total);
    free(r.body);
    s = stats(u);
    assert_int_equal(s.held_bytes, 0);
    assert_int_equal(s.unsent_bytes, 0);
    fedge_uploads_free(u);
}

/* Hostile claims: sessions that declare the largest Size1 and send one
 * block get at most budget_bytes / 4 allocated ahead of what they sent,
 * all together; the rest grow as bytes arrive. A body longer than its
 * Size1 stops being allocated ahead. */
static void test_claimed_sizes_bounded(void **state)
{
    (void)state;
    enum { N = 8 };
    fedge_upload_limits l = {.max_body = 1 << 20, .max_per_device = 1, .max_total = N,
                             .budget_bytes = 8 << 20, .idle_timeout_s = 5, .evict_idle_s = 5};
    fedge_uploads *u = make(&l);
    fedge_upload_result r;
    int keys[N];
    char dev[16];
    for (int i = 0; i < N; i++) {
        snprintf(dev, sizeof dev, "dev-%d", i);
        assert_int_equal(send_block(u, &keys[i], dev, 0, 1 << 20, 1 << 20, 0, &r), FEDGE_UPLOAD_CONTINUE);
    }
    fedge_upload_stats s = stats(u);
    assert_int_equal(s.reserved_bytes, (size_t)8 << 20);
    assert_true(s.unsent_bytes <= (size_t)2 << 20);
    /* two claims fit whole (less the block each sent); the other six grow as bytes arrive */
    assert_int_equal(s.unsent_bytes, 2 * (((size_t)1 << 20) - BS));
    assert_true(s.held_bytes <= ((size_t)2 << 20) + N * 16 * 1024);
    /* as a whole one's bytes arrive, room is freed for the next to be sized at its next growth */
    for (size_t n = 1; n < 1023; n++)
        assert_int_equal(send_block(u, &keys[0], "dev-0", n, 1 << 20, 1 << 20, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(stats(u).unsent_bytes, ((size_t)1 << 20) - BS + BS);
    assert_int_equal(send_block(u, &keys[0], "dev-0", 1023, 1 << 20, 1 << 20, 0, &r), FEDGE_UPLOAD_COMPLETE);
    assert_memory_equal(r.body, pattern, (size_t)1 << 20);
    free(r.body);
    assert_int_equal(stats(u).unsent_bytes, ((size_t)1 << 20) - BS);
    for (size_t n = 1; n <= 16; n++)
        assert_int_equal(send_block(u, &keys[2], "dev-2", n, 1 << 20, 1 << 20, 0, &r), FEDGE_UPLOAD_CONTINUE);
    s = stats(u);
    assert_int_equal(s.unsent_bytes, (((size_t)1 << 20) - BS) + (((size_t)1 << 20) - 17 * BS));
    assert_true(s.unsent_bytes <= (size_t)2 << 20);
    /* the budget is full again: the next growth of another doubles */
    for (size_t n = 1; n <= 16; n++)
        assert_int_equal(send_block(u, &keys[3], "dev-3", n, 1 << 20, 1 << 20, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(stats(u).unsent_bytes, s.unsent_bytes);
    assert_int_equal(stats(u).held_bytes, s.held_bytes + 16 * 1024);
    fedge_uploads_free(u);

    /* Size1 too small: the body grows its reservation, then by doubling */
    u = make(&l);
    assert_int_equal(send_block(u, &k1, "dev-1", 0, 8 * BS, 2 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(stats(u).unsent_bytes, BS);
    assert_int_equal(send_block(u, &k1, "dev-1", 1, 8 * BS, 2 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 2, 8 * BS, 2 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(stats(u).unsent_bytes, 0);
    for (size_t n = 3; n < 8; n++)
        send_block(u, &k1, "dev-1", n, 8 * BS, 2 * BS, 0, &r);
    assert_int_equal(r.verdict, FEDGE_UPLOAD_COMPLETE);
    assert_int_equal(r.body_len, 8 * BS);
    assert_memory_equal(r.body, pattern, 8 * BS);
    free(r.body);
    assert_int_equal(stats(u).unsent_bytes, 0);
    fedge_uploads_free(u);
}

static void test_per_device_and_total_caps(void **state)
{
    (void)state;
    fedge_upload_limits l = limits();
    fedge_uploads *u = make(&l);
    fedge_upload_result r;
    assert_int_equal(send_block(u, &k1, "dev-1", 0, 5 * BS, 5 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k2, "dev-1", 0, 5 * BS, 5 * BS, 1, &r), FEDGE_UPLOAD_CONTINUE);
    /* a third session of dev-1: busy until its oldest may be evicted (t=0 + 3 s) */
    assert_int_equal(send_block(u, &k3, "dev-1", 0, 5 * BS, 5 * BS, 2, &r), FEDGE_UPLOAD_BUSY);
    assert_int_equal(r.retry_s, 1);
    assert_null(r.body);
    assert_int_equal(stats(u).partial, 2);
    /* another device still gets a slot, up to the total */
    assert_int_equal(send_block(u, &k3, "dev-2", 0, 5 * BS, 5 * BS, 2, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k4, "dev-3", 0, 5 * BS, 5 * BS, 2, &r), FEDGE_UPLOAD_BUSY);
    assert_non_null(strstr(r.msg, "3 uploads in progress"));
    assert_int_equal(stats(u).refused_busy, 2);
    /* the transfers in progress are unaffected and complete */
    for (size_t n = 1; n < 5; n++)
        send_block(u, &k1, "dev-1", n, 5 * BS, 5 * BS, 3, &r);
    assert_int_equal(r.verdict, FEDGE_UPLOAD_COMPLETE);
    free(r.body);
    assert_int_equal(send_block(u, &k4, "dev-3", 0, 5 * BS, 5 * BS, 3, &r), FEDGE_UPLOAD_CONTINUE);
    fedge_uploads_free(u);
}

static void test_memory_budget(void **state)
{
    (void)state;
    fedge_upload_limits l = limits();
    l.max_total = 10;
    l.max_per_device = 10;
    l.budget_bytes = 25 * BS;
    fedge_uploads *u = make(&l);
    fedge_upload_result r;
    int keys[8];
    /* without Size1 each transfer reserves max_body: two fit in 25 KiB */
    assert_int_equal(send_block(u, &keys[0], "dev-1", 0, 5 * BS, 0, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[1], "dev-2", 0, 5 * BS, 0, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[2], "dev-3", 0, 8 * BS, 8 * BS, 0, &r), FEDGE_UPLOAD_BUSY);
    assert_non_null(strstr(r.msg, "memory"));
    /* a declared Size1 reserves only that much */
    assert_int_equal(send_block(u, &keys[3], "dev-4", 0, 5 * BS, 5 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(stats(u).reserved_bytes, 25 * BS);
    fedge_uploads_drop(u, &keys[0]);
    assert_int_equal(stats(u).reserved_bytes, 15 * BS);
    assert_int_equal(stats(u).closed, 1);
    /* a body longer than its Size1 grows its reservation while the budget allows */
    assert_int_equal(send_block(u, &keys[4], "dev-5", 0, 8 * BS, 2 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[4], "dev-5", 1, 8 * BS, 2 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[4], "dev-5", 2, 8 * BS, 2 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(stats(u).reserved_bytes, 19 * BS);
    assert_int_equal(send_block(u, &keys[5], "dev-6", 0, 6 * BS, 6 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[4], "dev-5", 3, 8 * BS, 2 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[4], "dev-5", 4, 8 * BS, 2 * BS, 0, &r), FEDGE_UPLOAD_BUSY);
    fedge_upload_stats s = stats(u);
    assert_int_equal(s.partial, 3);
    assert_int_equal(s.reserved_bytes, 21 * BS);
    fedge_uploads_free(u);
}

static void test_idle_transfers_make_room(void **state)
{
    (void)state;
    fedge_upload_limits l = limits();
    fedge_uploads *u = make(&l);
    fedge_upload_result r;
    int keys[8];
    /* per device: dev-1's longest idle upload gives way to its new one */
    assert_int_equal(send_block(u, &keys[0], "dev-1", 0, 5 * BS, 5 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[1], "dev-1", 0, 5 * BS, 5 * BS, 1, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[2], "dev-1", 0, 5 * BS, 5 * BS, 2.9, &r), FEDGE_UPLOAD_BUSY);
    assert_int_equal(send_block(u, &keys[2], "dev-1", 0, 5 * BS, 5 * BS, 3, &r), FEDGE_UPLOAD_CONTINUE);
    fedge_upload_stats s = stats(u);
    assert_int_equal(s.evicted, 1);
    assert_int_equal(s.partial, 2);
    assert_int_equal(send_block(u, &keys[0], "dev-1", 1, 5 * BS, 5 * BS, 3, &r), FEDGE_UPLOAD_INCOMPLETE);
    assert_int_equal(send_block(u, &keys[1], "dev-1", 1, 5 * BS, 5 * BS, 3.5, &r), FEDGE_UPLOAD_CONTINUE);
    /* in all: dev-2 fills the third slot; dev-3 takes the longest idle one (keys[2], since 3) */
    assert_int_equal(send_block(u, &keys[3], "dev-2", 0, 5 * BS, 5 * BS, 4, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[4], "dev-3", 0, 5 * BS, 5 * BS, 5.5, &r), FEDGE_UPLOAD_BUSY);
    assert_int_equal(r.retry_s, 1); /* keys[2] may go at t=6 */
    assert_int_equal(send_block(u, &keys[4], "dev-3", 0, 5 * BS, 5 * BS, 6, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[2], "dev-1", 1, 5 * BS, 5 * BS, 6, &r), FEDGE_UPLOAD_INCOMPLETE);
    assert_int_equal(stats(u).evicted, 2);
    assert_int_equal(stats(u).partial, 3);
    fedge_uploads_free(u);

    /* memory: without Size1 two transfers fill the budget; the idle one makes room */
    l.budget_bytes = 20 * BS;
    l.max_total = 10;
    u = make(&l);
    assert_int_equal(send_block(u, &keys[0], "dev-1", 0, 5 * BS, 0, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[1], "dev-2", 0, 5 * BS, 0, 2, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &keys[2], "dev-3", 0, 5 * BS, 0, 2.5, &r), FEDGE_UPLOAD_BUSY);
    assert_int_equal(send_block(u, &keys[2], "dev-3", 0, 5 * BS, 0, 3, &r), FEDGE_UPLOAD_CONTINUE);
    s = stats(u);
    assert_int_equal(s.evicted, 1);
    assert_int_equal(s.reserved_bytes, 20 * BS);
    assert_int_equal(send_block(u, &keys[1], "dev-2", 1, 5 * BS, 0, 3, &r), FEDGE_UPLOAD_CONTINUE);
    fedge_uploads_free(u);
}

static void test_idle_transfers_expire(void **state)
{
    (void)state;
    fedge_upload_limits l = limits();
    fedge_uploads *u = make(&l);
    fedge_upload_result r;
    assert_int_equal(send_block(u, &k1, "dev-1", 0, 5 * BS, 5 * BS, 100, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k2, "dev-2", 0, 5 * BS, 5 * BS, 100, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k2, "dev-2", 1, 5 * BS, 5 * BS, 103, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(fedge_uploads_expire(u, 104.9), 0);
    assert_int_equal(fedge_uploads_expire(u, 105), 1); /* dev-1, idle since 100 */
    fedge_upload_stats s = stats(u);
    assert_int_equal(s.partial, 1);
    assert_int_equal(s.expired, 1);
    assert_true(s.held_bytes > 0);
    assert_int_equal(fedge_uploads_expire(u, 108), 1);
    s = stats(u);
    assert_int_equal(s.partial, 0);
    assert_int_equal(s.held_bytes, 0);
    assert_int_equal(s.reserved_bytes, 0);
    /* a block of an expired transfer: 4.08, resend the whole update */
    assert_int_equal(send_block(u, &k1, "dev-1", 1, 5 * BS, 5 * BS, 109, &r), FEDGE_UPLOAD_INCOMPLETE);
    assert_non_null(strstr(r.msg, "resend the whole update"));
    assert_int_equal(stats(u).partial, 0);
    fedge_uploads_free(u);
}

static void test_lost_repeated_and_bad_blocks(void **state)
{
    (void)state;
    fedge_upload_limits l = limits();
    fedge_uploads *u = make(&l);
    fedge_upload_result r;
    size_t total = 5 * BS;
    assert_int_equal(send_block(u, &k1, "dev-1", 0, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 1, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    /* block 1 again (our 2.31 was lost): same answer, nothing appended */
    assert_int_equal(send_block(u, &k1, "dev-1", 1, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    for (size_t n = 2; n < 5; n++)
        send_block(u, &k1, "dev-1", n, total, total, 0, &r);
    assert_int_equal(r.verdict, FEDGE_UPLOAD_COMPLETE);
    assert_int_equal(r.body_len, total);
    assert_memory_equal(r.body, pattern, total);
    free(r.body);
    /* blocks out of order (a client with several in flight): kept */
    assert_int_equal(send_block(u, &k1, "dev-1", 0, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 2, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 3, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 2, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 1, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 4, total, total, 0, &r), FEDGE_UPLOAD_COMPLETE);
    assert_int_equal(r.body_len, total);
    assert_memory_equal(r.body, pattern, total);
    free(r.body);
    /* the last block with a block before it missing: the transfer is dropped */
    assert_int_equal(send_block(u, &k1, "dev-1", 0, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 1, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 3, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 4, total, total, 0, &r), FEDGE_UPLOAD_INCOMPLETE);
    assert_int_equal(stats(u).partial, 0);
    /* a short block before the last */
    fedge_upload_block b = {.key = &k1, .device = "dev-1", .offset = 0, .block_size = BS,
                            .more = 1, .data = pattern, .len = BS - 1};
    assert_int_equal(fedge_uploads_block(u, &b, 0, &r), FEDGE_OK);
    assert_int_equal(r.verdict, FEDGE_UPLOAD_BAD);
    assert_int_equal(stats(u).partial, 0);
    /* a new first block on the same session supersedes the old transfer */
    assert_int_equal(send_block(u, &k1, "dev-1", 0, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 1, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 0, 2 * BS, 2 * BS, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-1", 1, 2 * BS, 2 * BS, 0, &r), FEDGE_UPLOAD_COMPLETE);
    assert_int_equal(r.body_len, 2 * BS);
    free(r.body);
    fedge_upload_stats s = stats(u);
    assert_int_equal(s.superseded, 1);
    assert_int_equal(s.partial, 0);
    /* another device cannot continue this session's transfer */
    assert_int_equal(send_block(u, &k1, "dev-1", 0, total, total, 0, &r), FEDGE_UPLOAD_CONTINUE);
    assert_int_equal(send_block(u, &k1, "dev-2", 1, total, total, 0, &r), FEDGE_UPLOAD_INCOMPLETE);
    fedge_uploads_free(u);
}

static void test_bad_limits(void **state)
{
    (void)state;
    fedge_uploads *u = NULL;
    fedge_upload_limits l = limits();
    l.max_total = 0;
    assert_int_equal(fedge_uploads_new(&l, &u), FEDGE_ERR_INVALID_ARG);
    l = limits();
    l.budget_bytes = l.max_body - 1;
    assert_int_equal(fedge_uploads_new(&l, &u), FEDGE_ERR_INVALID_ARG);
    l = limits();
    l.idle_timeout_s = 0;
    assert_int_equal(fedge_uploads_new(&l, &u), FEDGE_ERR_INVALID_ARG);
    l = limits();
    l.evict_idle_s = 0;
    assert_int_equal(fedge_uploads_new(&l, &u), FEDGE_ERR_INVALID_ARG);
    l = limits();
    l.evict_idle_s = l.idle_timeout_s + 1;
    assert_int_equal(fedge_uploads_new(&l, &u), FEDGE_ERR_INVALID_ARG);
    assert_null(u);
}

int main(void)
{
    fedge_log_set_level(FEDGE_LOG_WARN);
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (uint8_t)(i * 131 + (i >> 8));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_in_blocks),
        cmocka_unit_test(test_declared_size_over_limit),
        cmocka_unit_test(test_running_size_over_limit),
        cmocka_unit_test(test_buffers_follow_received_bytes),
        cmocka_unit_test(test_sized_body_allocated_once),
        cmocka_unit_test(test_claimed_sizes_bounded),
        cmocka_unit_test(test_per_device_and_total_caps),
        cmocka_unit_test(test_memory_budget),
        cmocka_unit_test(test_idle_transfers_make_room),
        cmocka_unit_test(test_idle_transfers_expire),
        cmocka_unit_test(test_lost_repeated_and_bad_blocks),
        cmocka_unit_test(test_bad_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
