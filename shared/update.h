/* update.h — a client update on the wire: an encoded delta sealed in an
 * envelope. The envelope's (authenticated, clear) aad is the 64-byte delta
 * header followed by the 16-byte run id of the aggregator run the update is
 * for (GET /round's `run=`); the payload is encrypted. This is what POST
 * /update carries. The run id binds an update to one run: a frame captured in
 * one run and posted into another run on the same keys (a fresh database,
 * whose replay counters start again) is refused with FEDGE_ERR_ENV_RUN.
 *
 * Receiver order of checks (each a distinct code, nothing written before all
 * pass): frame structure -> key id -> replay counter -> aad length and run id
 * -> delta header (round, model id, element count, sizes) -> GCM tag ->
 * payload values. */
#ifndef FEDGE_UPDATE_H
#define FEDGE_UPDATE_H

#include <stddef.h>
#include <stdint.h>

#include "delta.h"
#include "envelope.h"

#define FEDGE_RUN_ID_LEN 16
#define FEDGE_UPDATE_AAD_LEN (FEDGE_DELTA_HEADER_LEN + FEDGE_RUN_ID_LEN)

/* Seals h + delta for run run_id; *out is malloc'd, caller frees. rng:
 * stochastic int8 rounding and the nonce prefix (NULL: round-to-nearest,
 * prefix from counter). */
int fedge_update_seal(const fedge_device_key *k, uint64_t counter,
                      const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_delta_header *h, const float *delta, fedge_rng *rng,
                      uint8_t **out, size_t *out_len);

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

#endif
