/* upload.c — bounded Block1 reassembly (see upload.h). */
#include "upload.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "hash.h"
#include "keys.h"
#include "log.h"

#define FIRST_ALLOC ((size_t)16 * 1024) /* a body's first buffer, at most */
#define AHEAD_BLOCKS 64                  /* blocks beyond the contiguous prefix kept */
#define PREALLOC_SHARE 4                 /* budget_bytes / this: bytes allocated before they arrive */
#define NIL SIZE_MAX                     /* no slot */

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
    size_t older, newer;       /* neighbours in the list by last */
    size_t dev_prev, dev_next; /* neighbours among the same device's transfers, by last */
    size_t dev_hash;           /* of device */
    int doomed;                /* fedge_uploads_expire frees it in this call */
} transfer;

/* One device with transfers in progress: its list (by last, as the list of
 * all) and how long it is. */
typedef struct {
    size_t slot1;     /* 1 + the slot of its longest idle transfer; 0: an empty entry */
    size_t count;
    size_t hash;
    size_t newest1;   /* 1 + the slot of its most recently active transfer */
} device_entry;

struct fedge_uploads {
    fedge_upload_limits lim;
    transfer *t;      /* dense: t[0..n) are in progress; room for max_total */
    size_t n;
    size_t reserved;
    size_t held;
    size_t unsent;    /* sum of t[].unsent, within prealloc */
    size_t prealloc;  /* budget_bytes / PREALLOC_SHARE */
    fedge_upload_stats st;
    /* Indexes over t[0..n), kept in step by every insertion, removal and
     * move (remove_at swaps the last slot in). Both tables are open
     * addressing with linear probing, at most half full. */
    size_t *by_key;         /* 1 + slot, 0: empty */
    size_t key_mask;
    device_entry *by_dev;
    size_t dev_mask;
    size_t oldest, newest;  /* the list of transfers by last, oldest first */
    size_t *scratch;        /* max_total slots, for fedge_uploads_expire */
};

static size_t key_home(const fedge_uploads *u, const void *key)
{
    return (size_t)fedge_mix64((uint64_t)(uintptr_t)key) & u->key_mask;
}

/* The entry of key in by_key, or the empty one where it would go. */
static size_t key_pos(const fedge_uploads *u, const void *key)
{
    size_t p = key_home(u, key);
    while (u->by_key[p] && u->t[u->by_key[p] - 1].key != key)
        p = (p + 1) & u->key_mask;
    return p;
}

/* Empties entry p, moving later entries of its probe run back (no tombstones). */
static void key_erase(fedge_uploads *u, size_t p)
{
    const size_t m = u->key_mask;
    for (size_t q = (p + 1) & m; u->by_key[q]; q = (q + 1) & m) {
        size_t home = key_home(u, u->t[u->by_key[q] - 1].key);
        if (((q - home) & m) >= ((q - p) & m)) {
            u->by_key[p] = u->by_key[q];
            p = q;
        }
    }
    u->by_key[p] = 0;
}

static size_t device_hash(const char *device)
{
    uint64_t h = fedge_fnv1a(FEDGE_FNV1A_INIT, device, strlen(device));
    return (size_t)(h ^ (h >> 32));
}

static size_t dev_pos(const fedge_uploads *u, const char *device, size_t hash)
{
    size_t p = hash & u->dev_mask;
    while (u->by_dev[p].slot1 && (u->by_dev[p].hash != hash ||
                                  strcmp(u->t[u->by_dev[p].slot1 - 1].device, device) != 0))
        p = (p + 1) & u->dev_mask;
    return p;
}

static void dev_erase(fedge_uploads *u, size_t p)
{
    const size_t m = u->dev_mask;
    for (size_t q = (p + 1) & m; u->by_dev[q].slot1; q = (q + 1) & m) {
        size_t home = u->by_dev[q].hash & m;
        if (((q - home) & m) >= ((q - p) & m)) {
            u->by_dev[p] = u->by_dev[q];
            p = q;
        }
    }
    memset(&u->by_dev[p], 0, sizeof u->by_dev[p]);
}

static void list_unlink(fedge_uploads *u, size_t i)
{
    transfer *t = &u->t[i];
    if (t->older != NIL)
        u->t[t->older].newer = t->newer;
    else
        u->oldest = t->newer;
    if (t->newer != NIL)
        u->t[t->newer].older = t->older;
    else
        u->newest = t->older;
}

/* Links i after the newest transfer with last <= its own: at the end when
 * now never goes back. */
static void list_insert(fedge_uploads *u, size_t i)
{
    transfer *t = &u->t[i];
    size_t a = u->newest;
    while (a != NIL && u->t[a].last > t->last)
        a = u->t[a].older;
    t->older = a;
    t->newer = a == NIL ? u->oldest : u->t[a].newer;
    if (t->older != NIL)
        u->t[t->older].newer = i;
    else
        u->oldest = i;
    if (t->newer != NIL)
        u->t[t->newer].older = i;
    else
        u->newest = i;
}

static void dev_unlink(fedge_uploads *u, device_entry *e, size_t i)
{
    transfer *t = &u->t[i];
    if (t->dev_prev != NIL)
        u->t[t->dev_prev].dev_next = t->dev_next;
    else
        e->slot1 = t->dev_next == NIL ? 0 : t->dev_next + 1;
    if (t->dev_next != NIL)
        u->t[t->dev_next].dev_prev = t->dev_prev;
    else
        e->newest1 = t->dev_prev == NIL ? 0 : t->dev_prev + 1;
}

/* Links i into its device's list after the newest with last <= its own. */
static void dev_insert(fedge_uploads *u, device_entry *e, size_t i)
{
    transfer *t = &u->t[i];
    size_t a = e->newest1 ? e->newest1 - 1 : NIL;
    while (a != NIL && u->t[a].last > t->last)
        a = u->t[a].dev_prev;
    t->dev_prev = a;
    t->dev_next = a != NIL ? u->t[a].dev_next : e->slot1 ? e->slot1 - 1 : NIL;
    if (t->dev_prev != NIL)
        u->t[t->dev_prev].dev_next = i;
    else
        e->slot1 = i + 1;
    if (t->dev_next != NIL)
        u->t[t->dev_next].dev_prev = i;
    else
        e->newest1 = i + 1;
}

static void touch(fedge_uploads *u, size_t i, double now)
{
    transfer *t = &u->t[i];
    int stays = u->newest == i && now >= t->last; /* a BERT message's next block */
    int dev_stays = t->dev_next == NIL && now >= t->last;
    t->last = now;
    if (!dev_stays) {
        device_entry *e = &u->by_dev[dev_pos(u, t->device, t->dev_hash)];
        dev_unlink(u, e, i);
        dev_insert(u, e, i);
    }
    if (stays)
        return;
    list_unlink(u, i);
    list_insert(u, i);
}

/* Enters the transfer in slot i (key, device and last set) in the indexes. */
static void index_add(fedge_uploads *u, size_t i)
{
    transfer *t = &u->t[i];
    u->by_key[key_pos(u, t->key)] = i + 1;
    t->dev_hash = device_hash(t->device);
    device_entry *e = &u->by_dev[dev_pos(u, t->device, t->dev_hash)];
    if (!e->slot1) {
        e->hash = t->dev_hash;
        e->count = 0;
        e->newest1 = 0;
    }
    e->count++;
    dev_insert(u, e, i);
    list_insert(u, i);
}

static void index_remove(fedge_uploads *u, size_t i)
{
    transfer *t = &u->t[i];
    key_erase(u, key_pos(u, t->key));
    size_t p = dev_pos(u, t->device, t->dev_hash);
    if (--u->by_dev[p].count == 0)
        dev_erase(u, p);
    else
        dev_unlink(u, &u->by_dev[p], i);
    list_unlink(u, i);
}

/* A transfer has been copied to slot to from another: references follow. */
static void index_move(fedge_uploads *u, size_t to)
{
    transfer *t = &u->t[to];
    u->by_key[key_pos(u, t->key)] = to + 1; /* finds the old slot's entry: same key */
    device_entry *e = t->dev_prev == NIL || t->dev_next == NIL
                          ? &u->by_dev[dev_pos(u, t->device, t->dev_hash)] : NULL;
    if (t->dev_prev != NIL)
        u->t[t->dev_prev].dev_next = to;
    else
        e->slot1 = to + 1;
    if (t->dev_next != NIL)
        u->t[t->dev_next].dev_prev = to;
    else
        e->newest1 = to + 1;
    if (t->older != NIL)
        u->t[t->older].newer = to;
    else
        u->oldest = to;
    if (t->newer != NIL)
        u->t[t->newer].older = to;
    else
        u->newest = to;
}

/* The device's entry in by_dev, or NULL when it has no transfer. */
static const device_entry *device_of(const fedge_uploads *u, const char *device)
{
    const device_entry *e = &u->by_dev[dev_pos(u, device, device_hash(device))];
    return e->slot1 ? e : NULL;
}

/* Smallest power of two >= 2 * n (tables at most half full). */
static size_t table_size(size_t n)
{
    size_t s = 2;
    while (s < 2 * n)
        s *= 2;
    return s;
}

int fedge_uploads_new(const fedge_upload_limits *lim, fedge_uploads **out)
{
    if (!lim || !out || lim->max_body == 0 || lim->max_per_device == 0 || lim->max_total == 0 ||
        lim->budget_bytes < lim->max_body || !(lim->evict_idle_s > 0) ||
        !(lim->evict_idle_s <= lim->idle_timeout_s) ||
        lim->max_total > SIZE_MAX / 4 / sizeof(device_entry) ||
        lim->max_total > SIZE_MAX / sizeof(transfer))
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    fedge_uploads *u = calloc(1, sizeof *u);
    if (!u)
        return FEDGE_ERR_NOMEM;
    size_t slots = table_size(lim->max_total);
    u->t = calloc(lim->max_total, sizeof *u->t);
    u->by_key = calloc(slots, sizeof *u->by_key);
    u->by_dev = calloc(slots, sizeof *u->by_dev);
    u->scratch = calloc(lim->max_total, sizeof *u->scratch);
    if (!u->t || !u->by_key || !u->by_dev || !u->scratch) {
        fedge_uploads_free(u);
        return FEDGE_ERR_NOMEM;
    }
    u->key_mask = u->dev_mask = slots - 1;
    u->oldest = u->newest = NIL;
    u->lim = *lim;
    u->prealloc = lim->budget_bytes / PREALLOC_SHARE;
    *out = u;
    return FEDGE_OK;
}

void fedge_uploads_free(fedge_uploads *u)
{
    if (!u)
        return;
    for (size_t i = 0; i < u->n; i++)
        free(u->t[i].buf);
    free(u->t);
    free(u->by_key);
    free(u->by_dev);
    free(u->scratch);
    free(u);
}

static void remove_at(fedge_uploads *u, size_t i)
{
    transfer *t = &u->t[i];
    free(t->buf);
    u->reserved -= t->reserved;
    u->held -= t->cap;
    u->unsent -= t->unsent;
    index_remove(u, i);
    if (i != --u->n) {
        u->t[i] = u->t[u->n];
        index_move(u, i);
    }
    memset(&u->t[u->n], 0, sizeof u->t[u->n]);
}

static long find(const fedge_uploads *u, const void *key)
{
    size_t s = u->by_key[key_pos(u, key)];
    return s ? (long)(s - 1) : -1;
}

static void verdict(fedge_upload_result *r, fedge_upload_verdict v, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void verdict(fedge_upload_result *r, fedge_upload_verdict v, const char *fmt, ...)
{
    va_list ap;
    r->verdict = v;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
}

/* Seconds until the longest idle of the matching transfers (device NULL:
 * all) may be evicted. */
static unsigned retry_after(const fedge_uploads *u, const char *device, double now)
{
    double oldest = now;
    if (!device) {
        if (u->oldest != NIL && u->t[u->oldest].last < oldest)
            oldest = u->t[u->oldest].last;
    } else {
        const device_entry *e = device_of(u, device);
        if (e && u->t[e->slot1 - 1].last < oldest)
            oldest = u->t[e->slot1 - 1].last;
    }
    double left = oldest + u->lim.evict_idle_s - now;
    return left < 1 ? 1u : left > 3600 ? 3600u : (unsigned)ceil(left);
}

/* Frees the longest idle transfer (of device; NULL: any; of equally idle
 * ones, the lowest slot) when it has been idle for evict_idle_s; returns
 * whether one was freed. */
static int evict_idle(fedge_uploads *u, const char *device, double now)
{
    long best = -1;
    if (!device) {
        for (size_t i = u->oldest; i != NIL && u->t[i].last == u->t[u->oldest].last; i = u->t[i].newer)
            if (best < 0 || i < (size_t)best)
                best = (long)i;
    } else {
        const device_entry *e = device_of(u, device);
        size_t h = e ? e->slot1 - 1 : NIL;
        for (size_t i = h; i != NIL && u->t[i].last == u->t[h].last; i = u->t[i].dev_next)
            if (best < 0 || i < (size_t)best)
                best = (long)i;
    }
    if (best < 0 || now - u->t[best].last < u->lim.evict_idle_s)
        return 0;
    FEDGE_INFO("upload from %s abandoned after %zu bytes (idle %.1f s); freed for a new upload",
               u->t[best].device, u->t[best].len, now - u->t[best].last);
    remove_at(u, (size_t)best);
    u->st.evicted++;
    return 1;
}

/* Makes room for `need` bytes in t, within its reservation (already checked):
 * at once for its whole Size1 when the bytes allocated ahead of arrival,
 * over all transfers, stay within u->prealloc; else by doubling. */
static int grow(fedge_uploads *u, transfer *t, size_t need)
{
    if (need <= t->cap)
        return FEDGE_OK;
    size_t others = u->unsent - t->unsent;
    int whole = t->sized && t->reserved >= need && others <= u->prealloc &&
                t->reserved - need <= u->prealloc - others;
    size_t cap = t->reserved;
    if (!whole) {
        cap = t->cap ? t->cap : FIRST_ALLOC;
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
static void written(fedge_uploads *u, transfer *t, size_t end)
{
    if (end <= t->hi)
        return;
    t->hi = end;
    size_t left = t->unsent && t->cap > end ? t->cap - end : 0;
    u->unsent -= t->unsent;
    t->unsent = left;
    u->unsent += left;
}

static int first_block(fedge_uploads *u, const fedge_upload_block *b, double now,
                       fedge_upload_result *r)
{
    const fedge_upload_limits *lim = &u->lim;
    if (!b->more) {
        /* a body in one block: no transfer state at all */
        r->body = malloc(b->len ? b->len : 1);
        if (!r->body) {
            r->retry_s = 1;
            verdict(r, FEDGE_UPLOAD_BUSY, "out of memory; retry later");
            return FEDGE_OK;
        }
        memcpy(r->body, b->data, b->len);
        r->body_len = b->len;
        u->st.completed++;
        r->verdict = FEDGE_UPLOAD_COMPLETE;
        return FEDGE_OK;
    }
    const device_entry *e = device_of(u, b->device);
    size_t per_device = e ? e->count : 0;
    if (per_device >= lim->max_per_device && evict_idle(u, b->device, now))
        per_device--;
    if (per_device >= lim->max_per_device) {
        u->st.refused_busy++;
        r->retry_s = retry_after(u, b->device, now);
        verdict(r, FEDGE_UPLOAD_BUSY, "%zu uploads of this device in progress; retry in %u s",
                per_device, r->retry_s);
        FEDGE_DEBUG("upload from %s refused: %zu of its uploads in progress (limit %zu)", b->device,
                   per_device, lim->max_per_device);
        return FEDGE_OK;
    }
    if (u->n >= lim->max_total)
        evict_idle(u, NULL, now);
    if (u->n >= lim->max_total) {
        u->st.refused_busy++;
        r->retry_s = retry_after(u, NULL, now);
        verdict(r, FEDGE_UPLOAD_BUSY, "%zu uploads in progress; retry in %u s", u->n, r->retry_s);
        FEDGE_DEBUG("upload from %s refused: %zu uploads in progress (limit %zu)", b->device, u->n,
                   lim->max_total);
        return FEDGE_OK;
    }
    size_t reserve = lim->max_body;
    int sized = b->has_size1 && b->size1 >= b->len && b->size1 <= reserve;
    if (sized)
        reserve = (size_t)b->size1;
    while (reserve > lim->budget_bytes - u->reserved && evict_idle(u, NULL, now))
        ;
    if (reserve > lim->budget_bytes - u->reserved) {
        u->st.refused_busy++;
        r->retry_s = retry_after(u, NULL, now);
        verdict(r, FEDGE_UPLOAD_BUSY, "upload memory in use; retry in %u s", r->retry_s);
        FEDGE_DEBUG("upload from %s refused: %zu of %zu bytes of upload memory reserved", b->device,
                   u->reserved, lim->budget_bytes);
        return FEDGE_OK;
    }
    transfer *t = &u->t[u->n];
    memset(t, 0, sizeof *t);
    t->key = b->key;
    snprintf(t->device, sizeof t->device, "%s", b->device);
    t->reserved = reserve;
    t->sized = sized;
    t->last = now;
    u->reserved += reserve;
    index_add(u, u->n++);
    if (grow(u, t, b->len) != FEDGE_OK) {
        remove_at(u, u->n - 1);
        r->retry_s = 1;
        verdict(r, FEDGE_UPLOAD_BUSY, "out of memory; retry later");
        return FEDGE_OK;
    }
    memcpy(t->buf, b->data, b->len);
    written(u, t, b->len);
    t->len = b->len;
    t->block = b->block_size;
    r->verdict = FEDGE_UPLOAD_CONTINUE;
    return FEDGE_OK;
}

/* i: the slot of b's key, -1 when none. */
static int next_block(fedge_uploads *u, const fedge_upload_block *b, long i, double now,
                      fedge_upload_result *r)
{
    if (i < 0 || strcmp(u->t[i].device, b->device) != 0) {
        u->st.incomplete++;
        verdict(r, FEDGE_UPLOAD_INCOMPLETE,
                "incomplete Block1 body (no upload in progress for block at byte %zu); "
                "resend the whole update", b->offset);
        return FEDGE_OK;
    }
    transfer *t = &u->t[i];
    size_t end = b->offset + b->len;
    if (end <= t->len) {
        /* a retransmitted block (our answer was lost) */
        touch(u, (size_t)i, now);
        if (!b->more) {
            remove_at(u, (size_t)i);
            u->st.refused_bad++;
            verdict(r, FEDGE_UPLOAD_BAD, "last block at byte %zu inside the body received so far",
                    b->offset);
            return FEDGE_OK;
        }
        r->verdict = FEDGE_UPLOAD_CONTINUE;
        return FEDGE_OK;
    }
    /* A client may keep several blocks in flight (the edge does): a middle
     * block up to AHEAD_BLOCKS past the contiguous prefix is kept; the last
     * block must find every block before it received. */
    size_t k = 0;
    if (b->block_size != t->block || b->offset < t->len || (b->offset - t->len) % t->block != 0 ||
        (k = (b->offset - t->len) / t->block) >= AHEAD_BLOCKS || (!b->more && k != 0)) {
        remove_at(u, (size_t)i);
        u->st.incomplete++;
        verdict(r, FEDGE_UPLOAD_INCOMPLETE,
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
            remove_at(u, (size_t)i);
            u->st.refused_busy++;
            r->retry_s = retry_after(u, NULL, now);
            verdict(r, FEDGE_UPLOAD_BUSY, "body longer than its Size1 and upload memory in use; "
                    "retry in %u s", r->retry_s);
            return FEDGE_OK;
        }
        u->reserved += want - t->reserved;
        t->reserved = want;
        t->sized = 0; /* Size1 was wrong: grow as bytes arrive */
    }
    if (grow(u, t, end) != FEDGE_OK) {
        remove_at(u, (size_t)i);
        r->retry_s = 1;
        verdict(r, FEDGE_UPLOAD_BUSY, "out of memory; retry later");
        return FEDGE_OK;
    }
    memcpy(t->buf + b->offset, b->data, b->len);
    written(u, t, end);
    touch(u, (size_t)i, now);
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
    remove_at(u, (size_t)i);
    u->st.completed++;
    r->verdict = FEDGE_UPLOAD_COMPLETE;
    return FEDGE_OK;
}

int fedge_uploads_block(fedge_uploads *u, const fedge_upload_block *b, double now,
                        fedge_upload_result *r)
{
    if (!u || !b || !r || !b->key || !b->device || (!b->data && b->len) || b->block_size == 0)
        return FEDGE_ERR_INVALID_ARG;
    r->verdict = FEDGE_UPLOAD_CONTINUE; /* not a memset of msg: this runs for every block */
    r->body = NULL;
    r->body_len = 0;
    r->retry_s = 0;
    r->msg[0] = '\0';
    const size_t max = u->lim.max_body;
    long i = find(u, b->key);
    if (b->offset == 0 && i >= 0) {
        /* a new transfer on this session: the old one is given up */
        remove_at(u, (size_t)i);
        u->st.superseded++;
    }
    if ((b->has_size1 && b->size1 > max) || b->len > max || b->offset > max - b->len) {
        if (b->offset != 0 && (i = find(u, b->key)) >= 0)
            remove_at(u, (size_t)i);
        u->st.refused_size++;
        uint64_t size = b->has_size1 && b->size1 > max ? b->size1 : (uint64_t)b->offset + b->len;
        verdict(r, FEDGE_UPLOAD_TOO_LARGE, "update of %s%llu bytes exceeds the limit of %zu",
                b->has_size1 && b->size1 > max ? "" : "at least ", (unsigned long long)size, max);
        FEDGE_INFO("upload from %s refused at byte %zu: %s%llu bytes, over the limit of %zu",
                   b->device, b->offset, b->has_size1 && b->size1 > max ? "Size1 " : "",
                   (unsigned long long)size, max);
        return FEDGE_OK;
    }
    if (b->more && b->len != b->block_size) {
        if (b->offset != 0 && (i = find(u, b->key)) >= 0)
            remove_at(u, (size_t)i);
        u->st.refused_bad++;
        verdict(r, FEDGE_UPLOAD_BAD, "block of %zu bytes before the last; expected %zu", b->len,
                b->block_size);
        return FEDGE_OK;
    }
    if (b->offset == 0)
        return first_block(u, b, now, r);
    return next_block(u, b, i, now, r);
}

static int slot_order(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

/* The idle transfers are the head of the list by last. They are freed in
 * the order (and so leave the slots in the layout) of a walk over t[] in
 * slot order that frees each idle one with remove_at: eviction's choice
 * among equally idle transfers depends on the layout. */
size_t fedge_uploads_expire(fedge_uploads *u, double now)
{
    size_t n = 0, k = 0;
    if (!u)
        return 0;
    for (size_t i = u->oldest; i != NIL && now - u->t[i].last >= u->lim.idle_timeout_s; i = u->t[i].newer) {
        u->t[i].doomed = 1;
        u->scratch[k++] = i;
    }
    if (k == 0)
        return 0;
    qsort(u->scratch, k, sizeof *u->scratch, slot_order);
    /* a slot past the one being freed keeps its transfer until it is the
     * last one, swapped into the freed slot (and freed there if doomed) */
    for (size_t j = 0; j < k && u->scratch[j] < u->n; j++) {
        size_t i = u->scratch[j];
        while (i < u->n && u->t[i].doomed) {
            transfer *t = &u->t[i];
            FEDGE_INFO("upload from %s abandoned after %zu bytes (idle %.1f s); freed", t->device,
                       t->len, now - t->last);
            remove_at(u, i);
            u->st.expired++;
            n++;
        }
    }
    return n;
}

void fedge_uploads_drop(fedge_uploads *u, const void *key)
{
    if (!u)
        return;
    long i = find(u, key);
    if (i < 0)
        return;
    FEDGE_INFO("upload from %s dropped after %zu bytes: its session closed", u->t[i].device,
               u->t[i].len);
    remove_at(u, (size_t)i);
    u->st.closed++;
}

void fedge_uploads_stats(const fedge_uploads *u, fedge_upload_stats *out)
{
    if (!u || !out)
        return;
    *out = u->st;
    out->partial = u->n;
    out->reserved_bytes = u->reserved;
    out->held_bytes = u->held;
    out->unsent_bytes = u->unsent;
}
