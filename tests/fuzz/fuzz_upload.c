/* fuzz_upload.c — Block1 reassembly (aggregator/upload.h), every block of
 * which a peer chooses, against upload.c before its index
 * (tests/unit/upload_linear.h).
 *
 * Input: 6 bytes of limits (max_total 1..16, max_per_device 1..4, max_body
 * 1..64 blocks of 16 bytes, budget max_body..4 x max_total x max_body,
 * evict_idle_s and idle_timeout_s 1..8 s), then operations of 4 bytes each:
 * a block (session of 8, device of 4 or one id over the limit, offset, size,
 * M bit, Size1 true, short, long or absent), a drop, an expire, or the clock
 * moved (forward, or back a little). Invariants: after every operation both
 * give the same verdict, message, retry time, body and statistics, and
 * expire frees as many; a completed body is the bytes sent; the bytes
 * reserved stay within the budget and the transfers within max_total. */
#include "fuzz_util.h"
#include "keys.h"
#include "upload.h"
#include "../unit/upload_linear.h"

#define UNIT 16u

static char sessions[8];
static uint8_t pattern[64 * 64 * UNIT + 256];

static void same(fedge_uploads *u, lin_uploads *ref, const fedge_upload_limits *l)
{
    fedge_upload_stats a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    fedge_uploads_stats(u, &a);
    lin_uploads_stats(ref, &b);
    FUZZ_CHECK(memcmp(&a, &b, sizeof a) == 0);
    FUZZ_CHECK(a.reserved_bytes <= l->budget_bytes && a.partial <= l->max_total);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size < 6)
        return 0;
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (uint8_t)(i * 131 + 7);
    fedge_upload_limits l = {
        .max_total = 1 + data[0] % 16, .max_per_device = 1 + data[1] % 4,
        .max_body = (1 + data[2] % 64) * UNIT,
    };
    l.budget_bytes = l.max_body * (1 + data[3] % (4 * l.max_total));
    l.evict_idle_s = 1 + data[4] % 8;
    l.idle_timeout_s = l.evict_idle_s + data[5] % 8;
    fedge_uploads *u = NULL;
    lin_uploads *ref = NULL;
    FUZZ_CHECK(fedge_uploads_new(&l, &u) == FEDGE_OK);
    FUZZ_CHECK(lin_uploads_new(&l, &ref) == FEDGE_OK);
    static const char *devices[5] = {"dev-a", "dev-b", "dev-c", "dev-d",
                                     "dev-0123456789012345678901234567890123456789012345678901234567890123456789"};
    double now = 100;
    for (size_t p = 6; p + 4 <= size; p += 4) {
        const uint8_t *op = data + p;
        switch (op[0] % 8) {
        case 0: case 1: case 2: case 3: case 4: {
            size_t bs = UNIT << (op[0] >> 6);        /* 16..128 */
            size_t num = op[1] % 64;
            size_t len = op[2] & 1 ? bs : (size_t)(op[2] >> 1) % (bs + 1);
            fedge_upload_block b = {
                .key = &sessions[op[3] % 8], .device = devices[(op[3] >> 3) % 5],
                .offset = num * bs, .block_size = bs, .more = (op[2] >> 7) & 1,
                .has_size1 = (op[3] >> 6) != 0,
                .size1 = (op[3] >> 6) == 1 ? (uint64_t)(op[1] + 1) * bs
                       : (op[3] >> 6) == 2 ? (uint64_t)op[1] * UNIT : UINT64_MAX - op[1],
                .data = pattern + num * bs, .len = len,
            };
            fedge_upload_result x, y;
            FUZZ_CHECK(fedge_uploads_block(u, &b, now, &x) == FEDGE_OK);
            FUZZ_CHECK(lin_uploads_block(ref, &b, now, &y) == FEDGE_OK);
            FUZZ_CHECK(x.verdict == y.verdict && x.retry_s == y.retry_s && x.body_len == y.body_len);
            FUZZ_CHECK(strcmp(x.msg, y.msg) == 0);
            if (x.verdict == FEDGE_UPLOAD_COMPLETE) {
                FUZZ_CHECK(memcmp(x.body, y.body, x.body_len) == 0);
                FUZZ_CHECK(x.body_len <= l.max_body);
                /* every block sent is the pattern at its offset */
                FUZZ_CHECK(memcmp(x.body, pattern, x.body_len) == 0);
            }
            free(x.body);
            free(y.body);
            break;
        }
        case 5:
            fedge_uploads_drop(u, &sessions[op[1] % 8]);
            lin_uploads_drop(ref, &sessions[op[1] % 8]);
            break;
        case 6:
            FUZZ_CHECK(fedge_uploads_expire(u, now) == lin_uploads_expire(ref, now));
            break;
        default:
            now += op[1] & 0x80 ? -(double)(op[1] & 0x7f) / 64 : (double)op[1] / 16;
            break;
        }
        same(u, ref, &l);
    }
    fedge_uploads_free(u);
    lin_uploads_free(ref);
    return 0;
}
