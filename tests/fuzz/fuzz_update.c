/* fuzz_update.c — opening a client update (shared/update.h) with a fixed
 * key: fedge_update_open, as the aggregator calls it on POST /update.
 *
 * Input: one mode byte, then
 *   mode even: a raw frame (the fixed key's id written into bytes 8..16);
 *   mode odd:  the aad (64-byte delta header + 16-byte run id) and the
 *              payload, which the target seals with the fixed key first, so
 *              the fuzzer gets past the GCM tag to the payload decoder.
 * Invariants: nothing is written on failure; a sealed delta opens exactly
 * when its run id is this run's, its round in the window and
 * fedge_delta_decode accepts header + payload (same values, bit for bit).
 * fedge_update_open_inplace and _inplace_norm (on copies of the frame) give
 * the same status, header, counter and encoded bytes; the first the same
 * delta, the second its eight-lane norm, bit for bit. */
#include <math.h>

#include "delta.h"
#include "error.h"
#include "fuzz_key.h"
#include "update.h"

#define SENTINEL 0x5a

static int untouched(const void *buf, size_t n)
{
    const uint8_t *b = buf;
    for (size_t i = 0; i < n; i++)
        if (b[i] != SENTINEL)
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    const fedge_device_key *k = fuzz_key();
    fedge_update_expect exp;
    memset(&exp, 0, sizeof exp);
    exp.round_window = (mode >> 1) & 3;
    exp.last_counter = 4;

    uint8_t *frame = NULL;
    size_t frame_len = 0;
    exp.run_id = fuzz_run_id;
    if (mode & 1) {
        if (size < FEDGE_UPDATE_AAD_LEN)
            return 0;
        /* Expect what the header states (so the fuzzer reaches the payload),
         * with the round moved by the mode's upper bits. */
        uint32_t model_id, round, n_elems;
        memcpy(&model_id, data + 8, 4);
        memcpy(&round, data + 12, 4);
        memcpy(&n_elems, data + 20, 4);
        exp.model_id = model_id;
        exp.n_elems = n_elems <= size ? n_elems : 0;
        exp.round = round + ((mode >> 3) & 3);
        size_t plain_len = size - FEDGE_UPDATE_AAD_LEN;
        frame_len = fedge_envelope_sealed_size(FEDGE_UPDATE_AAD_LEN, plain_len);
        FUZZ_CHECK(frame_len != 0);
        frame = malloc(frame_len);
        FUZZ_CHECK(frame != NULL);
        const uint8_t prefix[4] = {1, 2, 3, 4};
        size_t got = 0;
        FUZZ_CHECK(fedge_envelope_seal(k, 5, prefix, data, FEDGE_UPDATE_AAD_LEN,
                                       data + FEDGE_UPDATE_AAD_LEN, plain_len, frame,
                                       frame_len, &got) == FEDGE_OK);
        FUZZ_CHECK(got == frame_len);
    } else {
        frame_len = size;
        frame = malloc(size + 1);
        FUZZ_CHECK(frame != NULL);
        memcpy(frame, data, size);
        if (size >= 8 + FEDGE_KEY_ID_LEN)
            memcpy(frame + 8, k->key_id, FEDGE_KEY_ID_LEN);
        exp.model_id = 0x12345678u;
        exp.n_elems = 16;
        exp.round = 3;
    }

    size_t n = exp.n_elems;
    float *delta = malloc((n + 1) * sizeof(float));
    uint8_t *scratch = malloc(frame_len + 1);
    FUZZ_CHECK(delta != NULL && scratch != NULL);
    memset(delta, SENTINEL, (n + 1) * sizeof(float));
    fedge_delta_header h;
    memset(&h, SENTINEL, sizeof h);
    uint64_t counter;
    memset(&counter, SENTINEL, sizeof counter);

    int ret = fedge_update_open(k, frame, frame_len, &exp, scratch, &h, &counter, delta);
    if (ret != FEDGE_OK) {
        FUZZ_CHECK(untouched(delta, (n + 1) * sizeof(float)));
        FUZZ_CHECK(untouched(&h, sizeof h));
        FUZZ_CHECK(untouched(&counter, sizeof counter));
    } else {
        FUZZ_CHECK(counter > exp.last_counter);
        FUZZ_CHECK(h.round <= exp.round && exp.round - h.round <= exp.round_window);
        FUZZ_CHECK(h.model_id == exp.model_id && h.n_elems == exp.n_elems);
        FUZZ_CHECK(untouched(delta + n, sizeof(float)));
    }

    {   /* in place, with and without decoding */
        uint8_t *c1 = malloc(frame_len + 1), *c2 = malloc(frame_len + 1);
        float *d1 = malloc((n + 1) * sizeof(float));
        FUZZ_CHECK(c1 != NULL && c2 != NULL && d1 != NULL);
        memcpy(c1, frame, frame_len);
        memcpy(c2, frame, frame_len);
        memset(d1, SENTINEL, (n + 1) * sizeof(float));
        fedge_delta_header h1, h2;
        uint64_t k1 = 0, k2 = 0;
        size_t o1 = 0, o2 = 0;
        double norm = 42;
        int r1 = fedge_update_open_inplace(k, c1, frame_len, &exp, &o1, &h1, &k1, d1, NULL);
        int r2 = fedge_update_open_inplace_norm(k, c2, frame_len, &exp, n, &o2, &h2, &k2, &norm, NULL);
        FUZZ_CHECK(r1 == ret && r2 == ret);
        if (ret == FEDGE_OK) {
            FUZZ_CHECK(memcmp(&h1, &h, sizeof h) == 0 && memcmp(&h2, &h, sizeof h) == 0);
            FUZZ_CHECK(k1 == counter && k2 == counter && o1 == o2);
            FUZZ_CHECK(memcmp(d1, delta, (n + 1) * sizeof(float)) == 0);
            size_t enc_len = frame_len - FEDGE_ENV_OVERHEAD - (o1 + FEDGE_DELTA_HEADER_LEN - FEDGE_ENV_HEADER_LEN) +
                             FEDGE_DELTA_HEADER_LEN;
            FUZZ_CHECK(memcmp(c1 + o1, scratch, enc_len) == 0 && memcmp(c2 + o2, scratch, enc_len) == 0);
            double acc[8] = {0}, sum = 0;
            for (size_t i = 0; i < n; i++)
                acc[i & 7] += (double)delta[i] * (double)delta[i];
            for (int l = 0; l < 8; l++)
                sum += acc[l];
            double want = sqrt(sum);
            FUZZ_CHECK(memcmp(&norm, &want, sizeof norm) == 0);
        } else {
            FUZZ_CHECK(norm == 42 && untouched(d1, (n + 1) * sizeof(float)));
        }
        free(c1);
        free(c2);
        free(d1);
    }

    if (mode & 1) {
        /* The sealed path and the plain decoder must agree. */
        size_t enc_len = size - FEDGE_RUN_ID_LEN;
        uint8_t *enc = malloc(enc_len);
        float *plain = malloc((n + 1) * sizeof(float));
        FUZZ_CHECK(enc != NULL && plain != NULL);
        memcpy(enc, data, FEDGE_DELTA_HEADER_LEN);
        memcpy(enc + FEDGE_DELTA_HEADER_LEN, data + FEDGE_UPDATE_AAD_LEN,
               size - FEDGE_UPDATE_AAD_LEN);
        fedge_delta_header t;
        int dret = fedge_delta_decode(enc, enc_len, exp.model_id, exp.n_elems, &t, plain);
        int same_run = memcmp(data + FEDGE_DELTA_HEADER_LEN, fuzz_run_id, FEDGE_RUN_ID_LEN) == 0;
        int openable = same_run && dret == FEDGE_OK && t.round <= exp.round &&
                       exp.round - t.round <= exp.round_window;
        if (ret == FEDGE_OK) {
            FUZZ_CHECK(openable);
            FUZZ_CHECK(memcmp(plain, delta, n * sizeof(float)) == 0);
            FUZZ_CHECK(memcmp(scratch, enc, enc_len) == 0);
        } else {
            FUZZ_CHECK(!openable);
            if (!same_run)
                FUZZ_CHECK(ret == FEDGE_ERR_ENV_RUN);
        }
        free(plain);
        free(enc);
    }
    free(frame);
    free(delta);
    free(scratch);
    return 0;
}
