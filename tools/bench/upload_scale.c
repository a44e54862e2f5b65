/* bench-upload_scale — what one Block1 block costs upload.c as the number of
 * transfers in progress grows (issue 9: per-request work must not grow with
 * the sessions).
 *
 *   bench-upload_scale [BLOCKS]     (default 200000 timed blocks per figure)
 *
 * T transfers (T = 10, 100, 1,000, 10,000; T devices, one each) carry
 * 161,638-byte bodies (mlp:784-200-10 int8, sealed) with Size1, in 1,024-byte
 * blocks. All T are started untimed; then BLOCKS blocks are timed, one
 * message at a time to a transfer drawn at random: over DTLS a message is one
 * block; over TLS/TCP it is one BERT block of 15 x 1,024 bytes (the edge's
 * size under 16 KiB TLS records), which server.c hands to upload.c as 15
 * consecutive 1,024-byte blocks. After each message fedge_uploads_expire
 * runs once, as it does on each pass of the daemon's loop. A finished body
 * is freed and its session starts the next at once, so T stay in progress.
 * A third figure isolates the bookkeeping: each message repeats a block
 * already received (a client whose answer was lost), which upload.c finds,
 * checks and answers without copying or allocating anything.
 * A fourth figure is a refusal storm: one device at its max_per_device
 * (2, then 1,000 transfers of its own) sends first blocks that are refused.
 * The same run drives upload.c as it was before the index
 * (tests/unit/upload_linear.h: linear walks) as the baseline. Prints ns per
 * block at each T, its ratio to T = 10, and linear / indexed. Every verdict
 * must be CONTINUE or COMPLETE (else exit 1). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "common.h"
#include "log.h"
#include "upload.h"
#include "../../tests/unit/upload_linear.h"

#define BODY 161638u
#define BS 1024u
#define BERT_BLOCKS 15u
#define MAX_T 10000u

typedef struct {
    const char *name;
    int (*block)(void *u, const fedge_upload_block *b, double now, fedge_upload_result *r);
    size_t (*expire)(void *u, double now);
    int (*make)(const fedge_upload_limits *l, void **u);
    void (*release)(void *u);
} impl;

static int idx_block(void *u, const fedge_upload_block *b, double now, fedge_upload_result *r)
{
    return fedge_uploads_block(u, b, now, r);
}
static size_t idx_expire(void *u, double now) { return fedge_uploads_expire(u, now); }
static int idx_make(const fedge_upload_limits *l, void **u)
{
    return fedge_uploads_new(l, (fedge_uploads **)u);
}
static void idx_release(void *u) { fedge_uploads_free(u); }

static int lin_block(void *u, const fedge_upload_block *b, double now, fedge_upload_result *r)
{
    return lin_uploads_block(u, b, now, r);
}
static size_t lin_expire(void *u, double now) { return lin_uploads_expire(u, now); }
static int lin_make(const fedge_upload_limits *l, void **u)
{
    return lin_uploads_new(l, (lin_uploads **)u);
}
static void lin_release(void *u) { lin_uploads_free(u); }

static const impl impls[2] = {
    {"indexed", idx_block, idx_expire, idx_make, idx_release},
    {"linear", lin_block, lin_expire, lin_make, lin_release},
};

static uint8_t body[BODY];
static char sessions[MAX_T];
static char devices[MAX_T][16];
static size_t next_block[MAX_T];
static uint64_t rng = 88172645463325252ULL;

static uint32_t draw(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

/* The next block of transfer i (a new body after the last); repeat: the
 * block before it again. */
static int send(const impl *im, void *u, size_t i, double now, int repeat)
{
    size_t off = (next_block[i] - (repeat ? 1 : 0)) * BS;
    size_t len = BODY - off < BS ? BODY - off : BS;
    fedge_upload_block b = {
        .key = &sessions[i], .device = devices[i], .offset = off, .block_size = BS,
        .more = off + len < BODY, .has_size1 = off == 0, .size1 = BODY,
        .data = body + off, .len = len,
    };
    fedge_upload_result r;
    if (im->block(u, &b, now, &r) != FEDGE_OK)
        return FEDGE_ERR_INVALID_ARG;
    if (r.verdict == FEDGE_UPLOAD_COMPLETE) {
        free(r.body);
        next_block[i] = 0;
        return FEDGE_OK;
    }
    if (r.verdict != FEDGE_UPLOAD_CONTINUE || (repeat && next_block[i] < 2)) {
        fprintf(stderr, "bench-upload_scale: %s: transfer %zu block at %zu: %s\n", im->name, i,
                off, r.msg);
        return FEDGE_ERR_INVALID_ARG;
    }
    next_block[i] += !repeat;
    return FEDGE_OK;
}

/* ns per block with T transfers in progress, messages of per_msg blocks
 * (0: one repeated block). */
static int measure(const impl *im, size_t T, size_t per_msg, size_t blocks, double *ns)
{
    fedge_upload_limits l = {
        .max_body = BODY, .max_per_device = 4, .max_total = T,
        .budget_bytes = T * (size_t)BODY, .idle_timeout_s = 60, .evict_idle_s = 30,
    };
    void *u = NULL;
    int ret = FEDGE_OK;
    double now = 1000;
    CHK(im->make(&l, &u));
    memset(next_block, 0, sizeof next_block);
    for (size_t i = 0; i < T; i++) {
        CHK(send(im, u, i, now, 0));
        CHK(send(im, u, i, now, 0));
    }
    size_t sent = 0;
    double t0 = fedge_clock_mono();
    while (sent < blocks) {
        size_t i = draw((uint32_t)T);
        now += 1e-6;
        if (per_msg == 0) {
            CHK(send(im, u, i, now, 1));
            sent++;
        }
        for (size_t k = 0; k < per_msg && sent < blocks; k++) {
            int last = (next_block[i] + 1) * BS >= BODY;
            CHK(send(im, u, i, now, 0));
            sent++;
            if (last)
                break; /* a BERT message ends with its body */
        }
        im->expire(u, now);
    }
    *ns = (fedge_clock_mono() - t0) * 1e9 / (double)sent;
cleanup:
    if (u)
        im->release(u);
    return ret;
}

/* ns per refused first block of a device holding per_device fresh transfers
 * (at its max_per_device, none idle long enough to give way): the refusal
 * looks for one to evict and computes its retry time. */
static int refusal_ns(const impl *im, size_t per_device, size_t n, double *ns)
{
    static char keys[1001];
    fedge_upload_limits l = {.max_body = 4 * BS, .max_per_device = per_device,
                             .max_total = per_device + 8, .budget_bytes = (per_device + 8) * 4 * BS,
                             .idle_timeout_s = 30, .evict_idle_s = 10};
    fedge_upload_result r;
    void *u = NULL;
    int ret = FEDGE_OK;
    if (per_device >= sizeof keys)
        return FEDGE_ERR_INVALID_ARG;
    CHK(im->make(&l, &u));
    for (size_t i = 0; i < per_device; i++) {
        fedge_upload_block b = {.key = &keys[i], .device = "dev-a", .block_size = BS, .more = 1,
                                .len = BS, .data = body};
        CHK(im->block(u, &b, 100.0 + (double)i * 1e-3, &r));
        if (r.verdict != FEDGE_UPLOAD_CONTINUE)
            FAIL(FEDGE_ERR_INVALID_ARG);
    }
    fedge_upload_block b = {.key = &keys[per_device], .device = "dev-a", .block_size = BS, .more = 1,
                            .len = BS, .data = body};
    double t0 = fedge_clock_mono();
    for (size_t i = 0; i < n; i++) {
        CHK(im->block(u, &b, 102.0, &r));
        if (r.verdict != FEDGE_UPLOAD_BUSY)
            FAIL(FEDGE_ERR_INVALID_ARG);
    }
    *ns = (fedge_clock_mono() - t0) * 1e9 / (double)n;
cleanup:
    if (u)
        im->release(u);
    return ret;
}

int main(int argc, char **argv)
{
    size_t blocks = argc > 1 ? strtoul(argv[1], NULL, 10) : 200000;
    if (blocks == 0) {
        fprintf(stderr, "usage: bench-upload_scale [BLOCKS]\n");
        return 2;
    }
    fedge_log_set_level(FEDGE_LOG_WARN);
    for (size_t i = 0; i < BODY; i++)
        body[i] = (uint8_t)(i * 131 + 7);
    for (size_t i = 0; i < MAX_T; i++)
        snprintf(devices[i], sizeof devices[i], "dev-%zu", i);
    static const size_t Ts[] = {10, 100, 1000, 10000};
    static const struct { const char *name; size_t per_msg; } modes[] = {
        {"dtls (1 x 1024 B per message)", 1},
        {"tls/tcp (BERT, 15 x 1024 B per message)", BERT_BLOCKS},
        {"bookkeeping only (a repeated 1024 B block per message)", 0},
    };
    printf("bench-upload_scale: %u-byte bodies, %zu timed blocks per figure, "
           "one expire per message\n", BODY, blocks);
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        printf("%s\n%8s %12s %10s %12s %10s %15s\n", modes[m].name, "T", "indexed ns", "/ T=10",
               "linear ns", "/ T=10", "linear/indexed");
        double base[2] = {0, 0};
        for (size_t t = 0; t < sizeof Ts / sizeof Ts[0]; t++) {
            double ns[2];
            for (size_t k = 0; k < 2; k++) {
                if (measure(&impls[k], Ts[t], modes[m].per_msg, blocks, &ns[k]) != FEDGE_OK)
                    return 1;
                if (t == 0)
                    base[k] = ns[k];
            }
            printf("%8zu %12.1f %10.2f %12.1f %10.2f %15.2f\n", Ts[t], ns[0], ns[0] / base[0],
                   ns[1], ns[1] / base[1], ns[1] / ns[0]);
            fflush(stdout);
        }
    }
    /* one device at its max_per_device sending first blocks that are refused */
    printf("refused first blocks of one device at its max_per_device (best of 3)\n"
           "%8s %12s %12s %15s\n", "its T", "indexed ns", "linear ns", "linear/indexed");
    static const size_t per_device[] = {2, 1000};
    for (size_t t = 0; t < 2; t++) {
        double best[2] = {1e30, 1e30};
        for (int rep = 0; rep < 3; rep++)
            for (size_t k = 0; k < 2; k++) {
                double ns;
                if (refusal_ns(&impls[k], per_device[t], 20000, &ns) != FEDGE_OK)
                    return 1;
                best[k] = ns < best[k] ? ns : best[k];
            }
        printf("%8zu %12.1f %12.1f %15.2f\n", per_device[t], best[0], best[1], best[1] / best[0]);
    }
    return 0;
}
