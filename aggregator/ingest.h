/* ingest.h — the path of one update (POST /update), in two stages:
 *
 *   fedge_ingest_snapshot_take  owner thread: what stage (a) needs
 *                               (device key, expected round / model id /
 *                               n_elems, the device's last counter)
 *   (a) fedge_ingest_open       ANY thread: frame size, envelope, header,
 *                               run id, counter freshness against the
 *                               snapshot, AEAD, decode, the delta's L2
 *                               norm (for the policy). A pure function of
 *                               the frame and the snapshot: no SQLite, no
 *                               aggregator state; its result records every
 *                               outcome without deciding the reply.
 *   (b) fedge_ingest_commit     owner thread: the reply in the order of the
 *                               checks (resend of a decided frame, the
 *                               scheduler's admission, the update's form,
 *                               the AEAD/decode outcome), then the policy,
 *                               the updates row, the replay counter and the
 *                               audit entry in one committed transaction
 *                               (governance.h), then the scheduler counts it.
 *
 * The ingest workers open the frame in place (fedge_ingest_open_inplace):
 * the delta's norm is read from the payload without decoding it, and a
 * frame waiting for its commit holds one buffer, its sealed bytes with the
 * payload decrypted over the ciphertext. (b) decodes the decrypted bytes
 * again into the group's scratch only to clip the delta or for a SCAFFOLD
 * control check; the worker hashed them (the stored body's SHA-256).
 *
 * fedge_agg_submit is snapshot, (a), (b). The device learns "accepted" only
 * after its update is committed. Errors returned are the daemon's own (SQL,
 * memory); everything a device sends ends in a reply code (agg.h). */
#ifndef FEDGE_INGEST_H
#define FEDGE_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "agg.h"
#include "delta.h"
#include "envelope.h"
#include "update.h"
#include "hash.h"

/* Immutable input of stage (a). The device key is a copy (a keys reload
 * may move the aggregator's table while a worker opens the frame); run_id
 * points into the aggregator, which does not change it while it runs. */
typedef struct {
    fedge_device_key key;
    uint32_t model_id;
    size_t n_params;          /* the model's; an update carries n_params x 2 under SCAFFOLD */
    int scaffold;
    uint32_t round;           /* the open round (the last one when none is open) */
    uint32_t round_window;    /* the policy's staleness window */
    uint64_t last_counter;    /* devices.last_counter when taken */
    size_t max_len;           /* max_update_bytes */
    const uint8_t *run_id;    /* FEDGE_STORE_RUN_ID_LEN bytes */
} fedge_ingest_snapshot;

typedef enum {
    FEDGE_INGEST_FORM_OK = 0,
    FEDGE_INGEST_FORM_NEEDS_CONTROL,  /* SCAFFOLD run, the model delta alone (or the wrong size) */
    FEDGE_INGEST_FORM_NO_CONTROL,     /* not SCAFFOLD, a control-variate delta */
} fedge_ingest_form;

/* Output of stage (a); owns plain and delta (fedge_ingest_frame_free). */
typedef struct {
    size_t len;                  /* sealed size on the wire */
    int oversized;               /* len > max_len: nothing else was looked at */
    int parse_status;            /* envelope framing; FEDGE_OK to go on */
    uint64_t frame_counter;      /* the envelope's counter, unauthenticated */
    uint8_t sealed_sha256[FEDGE_HASH_LEN]; /* of the frame: tells a resend apart */
    int have_header;             /* the AAD's delta header reads */
    fedge_delta_header peek;     /* unauthenticated until open_status == FEDGE_OK */
    fedge_ingest_form form;
    int opened;                  /* fedge_update_open ran (form OK) */
    int open_status;             /* its result */
    fedge_delta_header header;   /* authenticated, when open_status == FEDGE_OK */
    uint64_t counter;
    uint8_t *plain;              /* decrypted encoded delta (len bytes, wiped on free) */
    size_t encoded_len;
    float *delta;                /* decoded, n_params (x 2 under SCAFFOLD); NULL from open_inplace */
    double norm;                 /* L2 norm of the model half, when open_status == FEDGE_OK */
    fedge_train_metrics metrics; /* the aad's training metrics (present 0: none), when open */
    uint8_t plain_sha256[FEDGE_HASH_LEN]; /* of plain[0..encoded_len), when open_status == FEDGE_OK */
    uint8_t *owned;              /* open_inplace: the sealed frame (len bytes), plain points into it */
} fedge_ingest_frame;

/* Owner thread: the snapshot for device index d. */
int fedge_ingest_snapshot_take(fedge_aggregator *a, int d, fedge_ingest_snapshot *snap);
/* (a): any thread. FEDGE_OK with *f filled (whatever the frame holds);
 * FEDGE_ERR_NOMEM only. */
int fedge_ingest_open(const fedge_ingest_snapshot *snap, const uint8_t *body, size_t len, fedge_ingest_frame *f);
void fedge_ingest_frame_free(fedge_ingest_frame *f);

/* Decoded-delta work space (the commit's), reused by one thread at a time:
 * grows to the largest n_elems x 4 bytes asked of it. Zero-initialise. */
typedef struct {
    float *v;
    size_t cap;   /* floats */
} fedge_ingest_scratch;
void fedge_ingest_scratch_free(fedge_ingest_scratch *w);
/* (a) as fedge_ingest_open, decrypting in place in body (malloc'd,
 * len bytes; fedge_update_open_inplace_norm): one buffer per update instead
 * of the sealed frame and its decrypted copy, and no decoded delta at all:
 * the norm is read from the payload (fedge_delta_payload_norm, the same
 * double). body is the frame's from this call on, whatever it returns
 * (fedge_ingest_frame_free wipes and frees it); f->plain points into it.
 * FEDGE_ERR_NOMEM, or INVALID_ARG for a NULL body, only. */
int fedge_ingest_open_inplace(const fedge_ingest_snapshot *snap, uint8_t *body, size_t len, fedge_ingest_frame *f);
/* (b): owner thread; snap is the one f was opened against. The device's
 * counter and status are read again here, and the frame is checked against
 * the current counter and round: one opened against an older snapshot that
 * is no longer fresh is refused as a replay or a wrong round (4.09), so
 * frames may be opened in any order or at once. */
int fedge_ingest_commit(fedge_aggregator *a, int d, const char *device, const fedge_ingest_snapshot *snap,
                        fedge_ingest_frame *f, int *code, char *msg, size_t msglen);

/* (b) for several frames in one transaction (one fsync): group commit.
 * Each item is judged exactly as fedge_ingest_commit would judge it with
 * the items committed one at a time in array order (the same checks, rows,
 * audit entries and counters), and gets its own reply; a refusal does not
 * affect the others. A daemon error (SQL, busy, memory) on any item or at
 * COMMIT rolls the whole group back, restores the scheduler's in-memory
 * counts, gives every item 503 ("retry") and returns that error; nothing
 * of the group is stored. The replies may be sent once this returns. */
typedef struct {
    int device;                          /* index into keys.devices (>= 0) */
    const fedge_ingest_snapshot *snap;
    fedge_ingest_frame *frame;
    int code;                            /* out: the reply */
    char msg[320];
    /* private: the in-memory state the item's commit may change */
    uint8_t undo_submitted;
    uint32_t undo_adm_step;
} fedge_ingest_item;

typedef struct {
    double work_s;    /* checks, policy, inserts and audit of the group */
    double commit_s;  /* COMMIT: the WAL write and its fsync */
} fedge_ingest_group_times;

/* times may be NULL. */
int fedge_ingest_commit_group(fedge_aggregator *a, fedge_ingest_item *items, size_t n,
                              fedge_ingest_group_times *times);

#endif
