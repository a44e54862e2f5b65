/* upload.h — bounded reassembly of Block1 (RFC 7959) request bodies.
 *
 * The CoAP server hands every block of POST /update to fedge_uploads_block.
 * Limits are checked before anything is allocated:
 *  - a declared Size1 or a running size above max_body: 4.13, at once;
 *  - a new transfer past max_per_device or max_total partial transfers, or
 *    whose reservation (Size1, else max_body) does not fit budget_bytes: 5.03;
 * a body's buffer is then allocated once at its declared Size1 while the
 * bytes so allocated ahead of their arrival, summed over all transfers,
 * stay within budget_bytes / 4 (a claimed size alone cannot make the daemon
 * allocate more than that); past it, without Size1, or once a body runs
 * past its Size1, a buffer grows by doubling as its bytes arrive (at most
 * twice what has arrived); never past its reservation. Before refusing
 * with 5.03, a transfer idle for evict_idle_s or longer (the longest idle
 * first; of the same device when its cap is the limit) is freed to make
 * room. One transfer per key (the CoAP
 * session): a new first block supersedes the previous one. Blocks may
 * arrive out of order (a client keeps several in flight): a middle block up
 * to 64 blocks past the contiguous prefix is kept, a repeated one is
 * harmless; the last block must find every block before it (else 4.08).
 * fedge_uploads_expire frees transfers idle longer than idle_timeout_s;
 * fedge_uploads_drop frees a closed session's.
 * Cost does not grow with the transfers in progress: a block finds its
 * transfer through a hash of the key and a first block its device's count
 * through a hash of the device id (O(1) expected, no allocation but the
 * body's); transfers are kept in a list by the time of their last block,
 * so fedge_uploads_expire is O(1) when none is due (exact: it looks at the
 * longest idle one on every call) and O(k log k) when it frees k, and
 * making room (evict_idle_s) and a refusal's retry time look at the longest
 * idle only (the device's own, first in its list by idle time, when its cap
 * is the limit: not a walk of up to max_per_device). Equally idle
 * transfers (the same time passed in) are chosen among as before the
 * index: tests/unit/upload_linear.h keeps that implementation, the
 * reference of test_upload_index.c. A time earlier than one passed before
 * is handled exactly, at a cost linear in the transfers it passes back.
 * Memory held is bounded by budget_bytes + max_total small records (the
 * records, both indexes at most half full, and the expiry scratch).
 * Bookkeeping only: no I/O; times are monotonic seconds passed in. */
#ifndef FEDGE_UPLOAD_H
#define FEDGE_UPLOAD_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t max_body;        /* largest body accepted */
    size_t max_per_device;  /* partial transfers of one device */
    size_t max_total;       /* partial transfers of all devices */
    size_t budget_bytes;    /* sum of the reservations of partial transfers */
    double idle_timeout_s;  /* a partial transfer silent this long is freed */
    double evict_idle_s;    /* ... and this long, when its room is wanted (<= idle_timeout_s) */
} fedge_upload_limits;

typedef struct {
    size_t partial;         /* transfers in progress */
    size_t reserved_bytes;  /* their reservations */
    size_t held_bytes;      /* their buffers as allocated now */
    uint64_t completed, expired, evicted, closed, superseded;
    uint64_t refused_size, refused_busy, refused_bad, incomplete;
    size_t unsent_bytes;    /* allocated at Size1 ahead of the bytes' arrival (<= budget_bytes / 4) */
} fedge_upload_stats;

typedef enum {
    FEDGE_UPLOAD_CONTINUE = 0, /* 2.31: send the next block */
    FEDGE_UPLOAD_COMPLETE,     /* whole body handed over in *body */
    FEDGE_UPLOAD_TOO_LARGE,    /* 4.13 */
    FEDGE_UPLOAD_BUSY,         /* 5.03, retry after *retry_s */
    FEDGE_UPLOAD_INCOMPLETE,   /* 4.08: no transfer this block belongs to */
    FEDGE_UPLOAD_BAD,          /* 4.00: an inconsistent block */
} fedge_upload_verdict;

typedef struct {
    const void *key;        /* the transfer's session; compared as a pointer */
    const char *device;     /* a valid device id */
    size_t offset;          /* byte offset of this block in the body */
    size_t block_size;      /* 2^(SZX+4); a block before the last is exactly this long */
    int more;               /* the M bit */
    int has_size1;
    uint64_t size1;         /* declared body size (Size1), when has_size1 */
    const uint8_t *data;
    size_t len;
} fedge_upload_block;

typedef struct {
    fedge_upload_verdict verdict;
    uint8_t *body;          /* COMPLETE: the body, now the caller's to free() */
    size_t body_len;
    unsigned retry_s;       /* BUSY: seconds until room may be made */
    char msg[160];          /* one line for the reply, on every verdict but CONTINUE */
} fedge_upload_result;

typedef struct fedge_uploads fedge_uploads;

/* Limits must be non-zero (0 < evict_idle_s <= idle_timeout_s;
 * budget_bytes >= max_body). */
int fedge_uploads_new(const fedge_upload_limits *lim, fedge_uploads **out);
void fedge_uploads_free(fedge_uploads *u);

/* One block of a transfer at monotonic time now. Returns FEDGE_OK with the
 * verdict in *res (a refused transfer is freed); an error only for bad
 * arguments. Running out of memory is answered as BUSY. */
int fedge_uploads_block(fedge_uploads *u, const fedge_upload_block *b, double now,
                        fedge_upload_result *res);

/* Frees transfers idle for idle_timeout_s or longer (each is logged);
 * returns how many. */
size_t fedge_uploads_expire(fedge_uploads *u, double now);

/* Frees the transfer of key, if any (its session closed). */
void fedge_uploads_drop(fedge_uploads *u, const void *key);

void fedge_uploads_stats(const fedge_uploads *u, fedge_upload_stats *out);

#endif
