/* update.h — a client update on the wire: an encoded delta sealed in an
 * envelope. The envelope's (authenticated, clear) aad is the 64-byte delta
 * header followed by the 16-byte run id of the aggregator run the update is
 * for (GET /round's `run=`); the payload is encrypted. This is what POST
 * /update carries. The run id binds an update to one run: a frame captured in
 * one run and posted into another run on the same keys (a fresh database,
 * whose replay counters start again) is refused with FEDGE_ERR_ENV_RUN.
 *
 * The aad may go on after the run id with the edge's training metrics
 * (fedge_train_metrics, docs/PROTOCOL.md "Training metrics"): a versioned
 * block of FEDGE_TRAIN_METRICS_LEN bytes, authenticated with the rest. A
 * frame without it (sealed by an older edge) opens as before, with no
 * metrics; one with a malformed block is FEDGE_ERR_UPDATE_METRICS.
 *
 * Receiver order of checks (each a distinct code, nothing written before all
 * pass): frame structure -> key id -> replay counter -> aad length and run id
 * -> metrics block -> delta header (round, model id, element count, sizes) ->
 * GCM tag -> payload values. */
#ifndef FEDGE_UPDATE_H
#define FEDGE_UPDATE_H

#include <stddef.h>
#include <stdint.h>

#include "delta.h"
#include "envelope.h"

#define FEDGE_RUN_ID_LEN 16
#define FEDGE_UPDATE_AAD_LEN (FEDGE_DELTA_HEADER_LEN + FEDGE_RUN_ID_LEN)

/* The training metrics block, version 1 (little-endian, 20 bytes):
 *   0 u8 version (1)   1 u8 flags (FEDGE_TRAIN_HAS_*; other bits 0)
 *   2 u16 block length (20)   4 f32 loss   8 f32 accuracy
 *   12 u32 epochs   16 u32 duration in ms
 * A field whose flag is clear is absent and its bytes are 0. loss: the
 * sample-weighted mean cross-entropy of the last local epoch (finite, >= 0);
 * accuracy: the trained model's share of correct predictions on the device's
 * own data, in [0, 1] (edge/trainer.h says which rows); epochs >= 1. The sample count is the delta header's
 * n_samples. */
#define FEDGE_TRAIN_METRICS_VERSION 1
#define FEDGE_TRAIN_METRICS_LEN 20
#define FEDGE_TRAIN_HAS_LOSS 0x01u
#define FEDGE_TRAIN_HAS_ACCURACY 0x02u
#define FEDGE_TRAIN_HAS_EPOCHS 0x04u
#define FEDGE_TRAIN_HAS_MS 0x08u
#define FEDGE_TRAIN_HAS_ALL 0x0fu

typedef struct {
    unsigned present;    /* FEDGE_TRAIN_HAS_* bits; 0: no block */
    float loss;
    float accuracy;
    uint32_t epochs;
    uint32_t train_ms;
} fedge_train_metrics;

/* out: FEDGE_TRAIN_METRICS_LEN bytes. FEDGE_ERR_UPDATE_METRICS for values
 * the decoder would refuse (present == 0 has no block: INVALID_ARG). */
int fedge_train_metrics_encode(const fedge_train_metrics *m, uint8_t out[FEDGE_TRAIN_METRICS_LEN]);
/* Any len; FEDGE_ERR_UPDATE_METRICS unless it is exactly one valid block. */
int fedge_train_metrics_decode(const uint8_t *in, size_t len, fedge_train_metrics *m);

/* Seals h + delta for run run_id; *out is malloc'd, caller frees. rng:
 * stochastic int8 rounding and the nonce prefix (NULL: round-to-nearest,
 * prefix from counter). */
int fedge_update_seal(const fedge_device_key *k, uint64_t counter,
                      const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_delta_header *h, const float *delta, fedge_rng *rng,
                      uint8_t **out, size_t *out_len);
/* The same with the training metrics block in the aad (m NULL or
 * m->present == 0: no block, fedge_update_seal's frame). */
int fedge_update_seal_metrics(const fedge_device_key *k, uint64_t counter,
                              const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_train_metrics *m,
                              const fedge_delta_header *h, const float *delta, fedge_rng *rng,
                              uint8_t **out, size_t *out_len);

/* The frame fedge_update_seal gives, byte for byte, without holding it: a
 * reader of any byte range, producing the ciphertext front to back in
 * chunks of a few KiB and keeping the last `ring` bytes of it. A read behind
 * what the ring still holds starts the sealing again from the same state
 * (same counter, nonce, rounding stream), so it gives the same bytes: a
 * retry, or a block sent afresh, costs time, never memory. delta must stay
 * unchanged while the stream lives. init encodes the whole delta once
 * (discarding it) to report what seal would (FEDGE_ERR_DELTA_NONFINITE,
 * FEDGE_ERR_RANGE) before anything is sent, and leaves *rng where seal
 * would. The stream owns a copy of the key, wiped by free; its heap is
 * fedge_update_stream_bytes(h) plus the struct. */
typedef struct fedge_update_stream fedge_update_stream;

size_t fedge_update_stream_bytes(const fedge_delta_header *h); /* 0: invalid header */
int fedge_update_stream_new(const fedge_device_key *k, uint64_t counter,
                            const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_delta_header *h,
                            const float *delta, fedge_rng *rng, fedge_update_stream **out);
/* fedge_update_seal_metrics's frame, streamed. */
int fedge_update_stream_new_metrics(const fedge_device_key *k, uint64_t counter,
                                    const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_train_metrics *m,
                                    const fedge_delta_header *h, const float *delta, fedge_rng *rng,
                                    fedge_update_stream **out);
size_t fedge_update_stream_size(const fedge_update_stream *s); /* the frame's length */
/* dst[0..len) = frame[off .. off + len); off + len <= the frame's length. */
int fedge_update_stream_read(fedge_update_stream *s, size_t off, uint8_t *dst, size_t len);
void fedge_update_stream_free(fedge_update_stream *s); /* NULL is fine */
/* The caller-buffer form (no heap: the freestanding core, mcu/): the stream
 * lives in mem, mem_len >= fedge_update_stream_bytes(h), aligned for any
 * object (FEDGE_ERR_INVALID_ARG otherwise; FEDGE_ERR_BUFFER_TOO_SMALL when
 * short); otherwise as stream_new, the same frame byte for byte. wipe erases
 * the key and plaintext (after use, or to drop it); free of such a stream
 * only wipes it. */
int fedge_update_stream_init(void *mem, size_t mem_len, const fedge_device_key *k,
                             uint64_t counter, const uint8_t run_id[FEDGE_RUN_ID_LEN],
                             const fedge_delta_header *h, const float *delta, fedge_rng *rng,
                             fedge_update_stream **out);
void fedge_update_stream_wipe(fedge_update_stream *s);

typedef struct {
    uint32_t model_id;
    uint32_t n_elems;
    uint32_t round;
    uint32_t round_window;  /* also accept rounds round - round_window .. round - 1
                               (late updates of stragglers); 0: exactly round */
    uint64_t last_counter;  /* last counter accepted from this device */
    size_t max_len;         /* refuse larger frames (FEDGE_ERR_ENV_OVERSIZED);
                               0: FEDGE_ENV_MAX_LEN */
    const uint8_t *run_id;  /* FEDGE_RUN_ID_LEN bytes: this run (required) */
} fedge_update_expect;

/* Opens and validates; on success writes the header, counter and
 * delta[0..n_elems), and scratch[0 .. len - FEDGE_ENV_OVERHEAD) holds the
 * decrypted encoded delta (64-byte header + payload, for storing; the run id
 * is not part of it; the caller wipes
 * it when it must). On failure h, counter and delta are left untouched and
 * no plaintext is left in scratch. scratch: at least len bytes, not
 * overlapping in. The caller checks h->base_version (FEDGE_ERR_DELTA_BASE)
 * and persists *counter as the device's new last counter once it accepts. */
int fedge_update_open(const fedge_device_key *k, const uint8_t *in, size_t len,
                      const fedge_update_expect *exp, uint8_t *scratch,
                      fedge_delta_header *h, uint64_t *counter, float *delta);
/* The same, also giving the metrics block (m->present == 0 when the frame
 * has none); m is written only on success. */
int fedge_update_open_metrics(const fedge_device_key *k, const uint8_t *in, size_t len,
                              const fedge_update_expect *exp, uint8_t *scratch,
                              fedge_delta_header *h, uint64_t *counter, float *delta,
                              fedge_train_metrics *m);

/* fedge_update_open_metrics in place, for a receiver that owns the frame
 * (one buffer per update instead of two): the same checks in the same
 * order, the same results. On success the decrypted encoded delta (64-byte
 * header + payload, len - FEDGE_ENV_OVERHEAD - the aad's bytes past the
 * header) lies at frame + *enc_off; the frame's ciphertext and the aad's
 * run id and metrics block are overwritten (its envelope header and the
 * bytes before *enc_off are not). On a failure before decryption the frame
 * is unchanged; after it (the tag, the payload's values) the plaintext is
 * wiped and the frame no longer opens. *enc_off is written only on
 * success. */
int fedge_update_open_inplace(const fedge_device_key *k, uint8_t *frame, size_t len,
                              const fedge_update_expect *exp, size_t *enc_off,
                              fedge_delta_header *h, uint64_t *counter, float *delta,
                              fedge_train_metrics *m);
/* fedge_update_open_inplace without decoding the delta: every payload value
 * is checked as the decode checks it (the same errors) and *norm is the L2
 * norm of its first norm_n values (fedge_delta_payload_norm: the double
 * summing the decoded floats would give, bit for bit); norm_n <= n_elems.
 * *norm is written only on success. */
int fedge_update_open_inplace_norm(const fedge_device_key *k, uint8_t *frame, size_t len,
                                   const fedge_update_expect *exp, size_t norm_n, size_t *enc_off,
                                   fedge_delta_header *h, uint64_t *counter, double *norm,
                                   fedge_train_metrics *m);

#endif
