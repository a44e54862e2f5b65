/* core.h — the bare-metal core of a fedge edge (a Cortex-M4F with no OS):
 * one local round on shared/'s model, training step, delta encoding and
 * update sealing, in buffers the caller gives, sized by fedge_core_plan.
 *
 * A round: fedge_core_begin(global, global_len) copies the round's base
 * model into the local parameters; each fedge_core_step takes one SGD step on a minibatch
 * (fedge_model_loss_grad_sliced with the optimizer step fused into its
 * gradient slices, as the Linux edge trains: edge/trainer.c); fedge_core_seal
 * forms delta = local - global in place and sets up the sealed update
 * (update.h's stream, in the caller's buffer): read it front to back with
 * fedge_update_stream_read; the frame is the one the aggregator opens
 * (fedge_update_open: same envelope, aad = delta header + run id).
 *
 * No heap, files, threads or clocks here: the board's fedge_platform gives
 * randomness (the nonce prefix, int8 stochastic rounding) and a clock (only
 * for the round's timings). mbedTLS's GCM and HMAC allocate their contexts
 * through mbedtls_calloc: the board hands mbedTLS a FEDGE_CORE_CRYPTO_POOL
 * byte pool (mbedtls_memory_buffer_alloc_init) before the first call.
 * The global model, the minibatches (float, or u8 as stored) and the key may
 * lie in flash (const).
 *
 * Buffers (bytes, fedge_core_plan; each 8-byte aligned in one caller block):
 *   params    n_params floats: the local model, then the delta
 *   velocity  momentum > 0: n_params floats; 0: one gradient slice (no state)
 *   chunk     one gradient slice (fedge_model_grad_chunk_floats)
 *   scratch   activations of one minibatch (fedge_model_scratch_floats)
 *   stream    the sealed update's stream (fedge_update_stream_bytes)
 * Errors: FEDGE_ERR_INVALID_ARG, FEDGE_ERR_MODEL_SPEC, FEDGE_ERR_BUFFER_TOO_SMALL,
 * FEDGE_ERR_CRYPTO (the random hook failed), and those of model.h / update.h. */
#ifndef FEDGE_MCU_CORE_H
#define FEDGE_MCU_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "delta.h"
#include "envelope.h"
#include "model.h"
#include "optim.h"
#include "update.h"

#define FEDGE_CORE_CRYPTO_POOL 2048u /* mbedTLS's GCM + HMAC contexts, with its allocator's headers */

typedef struct {
    int (*random)(void *ctx, uint8_t *out, size_t len); /* 0: filled; a TRNG on a real board */
    uint64_t (*now_us)(void *ctx);                       /* monotonic microseconds */
    void *ctx;
} fedge_platform;

typedef struct {
    size_t params, velocity, chunk, scratch, stream;
    size_t total; /* the caller's block, alignment included */
} fedge_core_plan;

typedef struct {
    fedge_model model;   /* params in the caller's block */
    fedge_sgd_config sgd;
    fedge_encoding enc;
    int batch;
    float *velocity;
    float *chunk;
    float *scratch;
    void *stream_mem;
    size_t stream_len;
    fedge_platform platform;
    uint32_t steps;      /* this round's */
    uint32_t samples;
    uint64_t train_us;
} fedge_core;

/* The update a round seals: what GET /round and the device's provisioning give. */
typedef struct {
    const fedge_device_key *key;
    uint64_t counter;                   /* above every counter this key sealed before */
    const uint8_t *run_id;              /* FEDGE_RUN_ID_LEN bytes */
    uint32_t round;
    const uint8_t *base_version;        /* FEDGE_HASH_LEN bytes: the global model's version */
} fedge_core_update;

int fedge_core_plan_bytes(const fedge_model_spec *spec, int batch, const fedge_sgd_config *cfg,
                          fedge_encoding enc, fedge_core_plan *out);
/* buf: plan.total bytes, 8-byte aligned; nothing else is used. */
int fedge_core_init(fedge_core *c, const fedge_model_spec *spec, int batch,
                    const fedge_sgd_config *cfg, fedge_encoding enc, const fedge_platform *pf,
                    void *buf, size_t buf_len);
/* global_len: the floats global holds; other than the spec's parameter
 * count is FEDGE_ERR_MODEL_SHAPE, before anything is read (round data whose
 * spec does not match its model). */
int fedge_core_begin(fedge_core *c, const float *global, size_t global_len);
/* rows (1..batch) x input_dim features, rows labels; x_len and y_len: the
 * floats x and the labels y hold (at least rows x input_dim and rows, else
 * FEDGE_ERR_BUFFER_TOO_SMALL before anything is read); *loss (may be NULL):
 * the minibatch's mean loss before the step. A non-finite loss is
 * FEDGE_ERR_MODEL_NONFINITE and the step is not taken. */
int fedge_core_step(fedge_core *c, const float *x, size_t x_len, const uint8_t *y, size_t y_len,
                    int rows, float *loss);
/* The same on features kept as stored, u8 (e.g. pixels; x_len bytes), each
 * x * scale (fedge_model_loss_grad_sliced_u8: converted inside the first
 * layer, a few floats at a time, the same bits as the float rows x * scale). */
int fedge_core_step_u8(fedge_core *c, const uint8_t *x, size_t x_len, float scale, const uint8_t *y,
                       size_t y_len, int rows, float *loss);
/* global (global_len floats, as begin): the model begin was given. After it
 * the local parameters hold the delta (a new round begins again). The
 * stream lives in c's block: wipe it (fedge_update_stream_wipe) once sent. */
int fedge_core_seal(fedge_core *c, const float *global, size_t global_len, const fedge_core_update *u,
                    fedge_update_stream **out);

#endif
