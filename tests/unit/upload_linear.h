/* upload_linear.h — upload.c as it was before the index (commit bd31787):
 * every block finds its transfer by walking all of them, every first block
 * counts its device's by walking them again, expire walks them on every
 * call. Kept whole as the reference model of test_upload_index.c and as the
 * baseline of tools/bench/upload_scale.c; everything is static and prefixed
 * lin_. Include it in one translation unit, after upload.h. */
#ifndef FEDGE_UPLOAD_LINEAR_H
#define FEDGE_UPLOAD_LINEAR_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "keys.h"
#include "log.h"
#include "upload.h"

#define LIN_FIRST_ALLOC ((size_t)16 * 1024) /* a body's first buffer, at most */
#define LIN_AHEAD_BLOCKS 64                  /* blocks beyond the contiguous prefix kept */
#define LIN_PREALLOC_SHARE 4                 /* budget_bytes / this: bytes allocated before they arrive */

typedef struct {
    const void *key;
    char device[FEDGE_DEVICE_ID_MAX + 1];
    uint8_t *buf;
    size_t len;       /* contiguous bytes received */
    size_t block;     /* the transfer's block size (from its first block) */
    uint64_t ahead;   /* bit k: the block at len + k * block has arrived */
    size_t cap;       /* allocated */
    size_t reserved;  /* share of budget_bytes; cap never exceeds it */
    int sized;        /* reserved is the body's Size1: a buffer of that size may be allocated at once */
    size_t hi;        /* end of the furthest block written */
    size_t unsent;    /* cap - hi when the buffer was allocated at its Size1, else 0 */
    double last;      /* monotonic time of the last block */
} lin_transfer;

typedef struct lin_uploads lin_uploads;
struct lin_uploads {
    fedge_upload_limits lim;
    lin_transfer *t;  /* dense: t[0..n) are in progress; room for max_total */
    size_t n;
    size_t reserved;
    size_t held;
    size_t unsent;    /* sum of t[].unsent, within prealloc */
    size_t prealloc;  /* budget_bytes / LIN_PREALLOC_SHARE */
    fedge_upload_stats st;
};

__attribute__((unused)) static int lin_uploads_new(const fedge_upload_limits *lim, lin_uploads **out)
{
    if (!lim || !out || lim->max_body == 0 || lim->max_per_device == 0 || lim->max_total == 0 ||
        lim->budget_bytes < lim->max_body || !(lim->evict_idle_s > 0) ||
        !(lim->evict_idle_s <= lim->idle_timeout_s) ||
        lim->max_total > SIZE_MAX / sizeof(lin_transfer))
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    lin_uploads *u = calloc(1, sizeof *u);
    if (!u)
        return FEDGE_ERR_NOMEM;
    u->t = calloc(lim->max_total, sizeof *u->t);
    if (!u->t) {
        free(u);
        return FEDGE_ERR_NOMEM;
    }
    u->lim = *lim;
    u->prealloc = lim->budget_bytes / LIN_PREALLOC_SHARE;
    *out = u;
    return FEDGE_OK;
}

__attribute__((unused)) static void lin_uploads_free(lin_uploads *u)
{
    if (!u)
        return;
    for (size_t i = 0; i < u->n; i++)
        free(u->t[i].buf);
    free(u->t);
    free(u);
}

static void lin_remove_at(lin_uploads *u, size_t i)
{
    lin_transfer *t = &u->t[i];
    free(t->buf);
    u->reserved -= t->reserved;
    u->held -= t->cap;
    u->unsent -= t->unsent;
    u->t[i] = u->t[--u->n];
    memset(&u->t[u->n], 0, sizeof u->t[u->n]);
}

static long lin_find(const lin_uploads *u, const void *key)
{
    for (size_t i = 0; i < u->n; i++)
        if (u->t[i].key == key)
            return (long)i;
    return -1;
}

static void lin_verdict(fedge_upload_result *r, fedge_upload_verdict v, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void lin_verdict(fedge_upload_result *r, fedge_upload_verdict v, const char *fmt, ...)
{
    va_list ap;
    r->verdict = v;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
}

/* Seconds until the longest idle of the matching transfers (device NULL:
 * all) may be evicted. */
static unsigned lin_retry_after(const lin_uploads *u, const char *device, double now)
{
    double oldest = now;
    for (size_t i = 0; i < u->n; i++)
        if ((!device || !strcmp(u->t[i].device, device)) && u->t[i].last < oldest)
            oldest = u->t[i].last;
    double left = oldest + u->lim.evict_idle_s - now;
    return left < 1 ? 1u : left > 3600 ? 3600u : (unsigned)ceil(left);
}

/* Frees the longest idle transfer (of device; NULL: any) when it has been
 * idle for evict_idle_s; returns whether one was freed. */
static int lin_evict_idle(lin_uploads *u, const char *device, double now)
{
    long best = -1;
    for (size_t i = 0; i < u->n; i++)
        if ((!device || !strcmp(u->t[i].device, device)) &&
            (best < 0 || u->t[i].last < u->t[best].last))
            best = (long)i;
    if (best < 0 || now - u->t[best].last < u->lim.evict_idle_s)
        return 0;
    FEDGE_INFO("upload from %s abandoned after %zu bytes (idle %.1f s); freed for a new upload",
               u->t[best].device, u->t[best].len, now - u->t[best].last);
    lin_remove_at(u, (size_t)best);
    u->st.evicted++;
    return 1;
}

/* Makes room for `need` bytes in t, within its reservation (already checked):
 * at once for its whole Size1 when the bytes allocated ahead of arrival,
 * over all transfers, stay within u->prealloc; else by doubling. */
static int lin_grow(lin_uploads *u, lin_transfer *t, size_t need)
{
    if (need <= t->cap)
        return FEDGE_OK;
    size_t others = u->unsent - t->unsent;
    int whole = t->sized && t->reserved >= need && others <= u->prealloc &&
                t->reserved - need <= u->prealloc - others;
    size_t cap = t->reserved;
    if (!whole) {
        cap = t->cap ? t->cap : LIN_FIRST_ALLOC;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
        if (cap > t->reserved)
            cap = t->reserved;
    }
    uint8_t *p = realloc(t->buf, cap);
    if (!p)
        return FEDGE_ERR_NOMEM;
    u->held += cap - t->cap;
    t->buf = p;
    t->cap = cap;
    u->unsent = others;
    t->unsent = whole ? cap - need : 0;
    u->unsent += t->unsent;
    return FEDGE_OK;
}

/* Bytes up to end are written: what was allocated ahead of them shrinks. */
static void lin_written(lin_uploads *u, lin_transfer *t, size_t end)
{
    if (end <= t->hi)
        return;
    t->hi = end;
    size_t left = t->unsent && t->cap > end ? t->cap - end : 0;
    u->unsent -= t->unsent;
    t->unsent = left;
    u->unsent += left;
}

static int lin_first_block(lin_uploads *u, const fedge_upload_block *b, double now,
                       fedge_upload_result *r)
{
    const fedge_upload_limits *lim = &u->lim;
    if (!b->more) {
        /* a body in one block: no transfer state at all */
        r->body = malloc(b->len ? b->len : 1);
        if (!r->body) {
            r->retry_s = 1;
            lin_verdict(r, FEDGE_UPLOAD_BUSY, "out of memory; retry later");
            return FEDGE_OK;
        }
        memcpy(r->body, b->data, b->len);
        r->body_len = b->len;
        u->st.completed++;
        r->verdict = FEDGE_UPLOAD_COMPLETE;
        return FEDGE_OK;
    }
    size_t per_device = 0;
    for (size_t i = 0; i < u->n; i++)
        per_device += !strcmp(u->t[i].device, b->device);
    if (per_device >= lim->max_per_device && lin_evict_idle(u, b->device, now))
        per_device--;
    if (per_device >= lim->max_per_device) {
        u->st.refused_busy++;
        r->retry_s = lin_retry_after(u, b->device, now);
        lin_verdict(r, FEDGE_UPLOAD_BUSY, "%zu uploads of this device in progress; retry in %u s",
                per_device, r->retry_s);
        FEDGE_DEBUG("upload from %s refused: %zu of its uploads in progress (limit %zu)", b->device,
                   per_device, lim->max_per_device);
        return FEDGE_OK;
    }
    if (u->n >= lim->max_total)
        lin_evict_idle(u, NULL, now);
    if (u->n >= lim->max_total) {
        u->st.refused_busy++;
        r->retry_s = lin_retry_after(u, NULL, now);
        lin_verdict(r, FEDGE_UPLOAD_BUSY, "%zu uploads in progress; retry in %u s", u->n, r->retry_s);
        FEDGE_DEBUG("upload from %s refused: %zu uploads in progress (limit %zu)", b->device, u->n,
                   lim->max_total);
        return FEDGE_OK;
    }
    size_t reserve = lim->max_body;
    int sized = b->has_size1 && b->size1 >= b->len && b->size1 <= reserve;
    if (sized)
        reserve = (size_t)b->size1;
    while (reserve > lim->budget_bytes - u->reserved && lin_evict_idle(u, NULL, now))
        ;
    if (reserve > lim->budget_bytes - u->reserved) {
        u->st.refused_busy++;
        r->retry_s = lin_retry_after(u, NULL, now);
        lin_verdict(r, FEDGE_UPLOAD_BUSY, "upload memory in use; retry in %u s", r->retry_s);
        FEDGE_DEBUG("upload from %s refused: %zu of %zu bytes of upload memory reserved", b->device,
                   u->reserved, lim->budget_bytes);
        return FEDGE_OK;
    }
    lin_transfer *t = &u->t[u->n];
    memset(t, 0, sizeof *t);
    t->key = b->key;
    snprintf(t->device, sizeof t->device, "%s", b->device);
    t->reserved = reserve;
    t->sized = sized;
    t->last = now;
    u->reserved += reserve;
    u->n++;
    if (lin_grow(u, t, b->len) != FEDGE_OK) {
        lin_remove_at(u, u->n - 1);
        r->retry_s = 1;
        lin_verdict(r, FEDGE_UPLOAD_BUSY, "out of memory; retry later");
        return FEDGE_OK;
    }
    memcpy(t->buf, b->data, b->len);
    lin_written(u, t, b->len);
    t->len = b->len;
    t->block = b->block_size;
    r->verdict = FEDGE_UPLOAD_CONTINUE;
    return FEDGE_OK;
}

static int lin_next_block(lin_uploads *u, const fedge_upload_block *b, double now,
                      fedge_upload_result *r)
{
    long i = lin_find(u, b->key);
    if (i < 0 || strcmp(u->t[i].device, b->device) != 0) {
        u->st.incomplete++;
        lin_verdict(r, FEDGE_UPLOAD_INCOMPLETE,
                "incomplete Block1 body (no upload in progress for block at byte %zu); "
                "resend the whole update", b->offset);
        return FEDGE_OK;
    }
    lin_transfer *t = &u->t[i];
    size_t end = b->offset + b->len;
    if (end <= t->len) {
        /* a retransmitted block (our answer was lost) */
        t->last = now;
        if (!b->more) {
            lin_remove_at(u, (size_t)i);
            u->st.refused_bad++;
            lin_verdict(r, FEDGE_UPLOAD_BAD, "last block at byte %zu inside the body received so far",
                    b->offset);
            return FEDGE_OK;
        }
        r->verdict = FEDGE_UPLOAD_CONTINUE;
        return FEDGE_OK;
    }
    /* A client may keep several blocks in flight (the edge does): a middle
     * block up to LIN_AHEAD_BLOCKS past the contiguous prefix is kept; the last
     * block must lin_find every block before it received. */
    size_t k = 0;
    if (b->block_size != t->block || b->offset < t->len || (b->offset - t->len) % t->block != 0 ||
        (k = (b->offset - t->len) / t->block) >= LIN_AHEAD_BLOCKS || (!b->more && k != 0)) {
        lin_remove_at(u, (size_t)i);
        u->st.incomplete++;
        lin_verdict(r, FEDGE_UPLOAD_INCOMPLETE,
                "block at byte %zu but %zu bytes received: a block is missing; resend the whole update",
                b->offset, t->len);
        return FEDGE_OK;
    }
    if (end > t->reserved) {
        /* past its Size1 (an estimate, RFC 7959 4); end <= max_body was checked */
        size_t want = t->reserved > u->lim.max_body / 2 ? u->lim.max_body : t->reserved * 2;
        if (want < end)
            want = end;
        if (want > u->lim.max_body)
            want = u->lim.max_body;
        if (want - t->reserved > u->lim.budget_bytes - u->reserved) {
            lin_remove_at(u, (size_t)i);
            u->st.refused_busy++;
            r->retry_s = lin_retry_after(u, NULL, now);
            lin_verdict(r, FEDGE_UPLOAD_BUSY, "body longer than its Size1 and upload memory in use; "
                    "retry in %u s", r->retry_s);
            return FEDGE_OK;
        }
        u->reserved += want - t->reserved;
        t->reserved = want;
        t->sized = 0; /* Size1 was wrong: grow as bytes arrive */
    }
    if (lin_grow(u, t, end) != FEDGE_OK) {
        lin_remove_at(u, (size_t)i);
        r->retry_s = 1;
        lin_verdict(r, FEDGE_UPLOAD_BUSY, "out of memory; retry later");
        return FEDGE_OK;
    }
    memcpy(t->buf + b->offset, b->data, b->len);
    lin_written(u, t, end);
    t->last = now;
    if (b->more) {
        t->ahead |= (uint64_t)1 << k;
        while (t->ahead & 1) { /* the prefix grows over what has arrived */
            t->len += t->block;
            t->ahead >>= 1;
        }
        r->verdict = FEDGE_UPLOAD_CONTINUE;
        return FEDGE_OK;
    }
    t->len = end;
    r->body = t->buf;
    r->body_len = t->len;
    t->buf = NULL;
    lin_remove_at(u, (size_t)i);
    u->st.completed++;
    r->verdict = FEDGE_UPLOAD_COMPLETE;
    return FEDGE_OK;
}

__attribute__((unused)) static int lin_uploads_block(lin_uploads *u, const fedge_upload_block *b, double now,
                        fedge_upload_result *r)
{
    if (!u || !b || !r || !b->key || !b->device || (!b->data && b->len) || b->block_size == 0)
        return FEDGE_ERR_INVALID_ARG;
    memset(r, 0, sizeof *r);
    const size_t max = u->lim.max_body;
    long i = lin_find(u, b->key);
    if (b->offset == 0 && i >= 0) {
        /* a new transfer on this session: the old one is given up */
        lin_remove_at(u, (size_t)i);
        u->st.superseded++;
    }
    if ((b->has_size1 && b->size1 > max) || b->len > max || b->offset > max - b->len) {
        if (b->offset != 0 && (i = lin_find(u, b->key)) >= 0)
            lin_remove_at(u, (size_t)i);
        u->st.refused_size++;
        uint64_t size = b->has_size1 && b->size1 > max ? b->size1 : (uint64_t)b->offset + b->len;
        lin_verdict(r, FEDGE_UPLOAD_TOO_LARGE, "update of %s%llu bytes exceeds the limit of %zu",
                b->has_size1 && b->size1 > max ? "" : "at least ", (unsigned long long)size, max);
        FEDGE_INFO("upload from %s refused at byte %zu: %s%llu bytes, over the limit of %zu",
                   b->device, b->offset, b->has_size1 && b->size1 > max ? "Size1 " : "",
                   (unsigned long long)size, max);
        return FEDGE_OK;
    }
    if (b->more && b->len != b->block_size) {
        if (b->offset != 0 && (i = lin_find(u, b->key)) >= 0)
            lin_remove_at(u, (size_t)i);
        u->st.refused_bad++;
        lin_verdict(r, FEDGE_UPLOAD_BAD, "block of %zu bytes before the last; expected %zu", b->len,
                b->block_size);
        return FEDGE_OK;
    }
    if (b->offset == 0)
        return lin_first_block(u, b, now, r);
    return lin_next_block(u, b, now, r);
}

__attribute__((unused)) static size_t lin_uploads_expire(lin_uploads *u, double now)
{
    size_t n = 0;
    if (!u)
        return 0;
    for (size_t i = 0; i < u->n;) {
        lin_transfer *t = &u->t[i];
        double idle = now - t->last;
        if (idle >= u->lim.idle_timeout_s) {
            FEDGE_INFO("upload from %s abandoned after %zu bytes (idle %.1f s); freed", t->device,
                       t->len, idle);
            lin_remove_at(u, i);
            u->st.expired++;
            n++;
        } else {
            i++;
        }
    }
    return n;
}

__attribute__((unused)) static void lin_uploads_drop(lin_uploads *u, const void *key)
{
    if (!u)
        return;
    long i = lin_find(u, key);
    if (i < 0)
        return;
    FEDGE_INFO("upload from %s dropped after %zu bytes: its session closed", u->t[i].device,
               u->t[i].len);
    lin_remove_at(u, (size_t)i);
    u->st.closed++;
}

__attribute__((unused)) static void lin_uploads_stats(const lin_uploads *u, fedge_upload_stats *out)
{
    if (!u || !out)
        return;
    *out = u->st;
    out->partial = u->n;
    out->reserved_bytes = u->reserved;
    out->held_bytes = u->held;
    out->unsent_bytes = u->unsent;
}

#endif
