/* fuzz_envelope.c — envelope parsing and opening (shared/envelope.h) with a
 * fixed key, on arbitrary frames.
 *
 * Input: one mode byte, then the frame. Odd modes write the fixed key's id
 * into the frame (bytes 8..16) so inputs reach the replay and GCM checks.
 * Invariants: open == parse + check + decrypt, with the same status; a
 * parsed view lies inside the frame; a failed open leaves no plaintext. */
#include "envelope.h"
#include "error.h"
#include "fuzz_key.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    size_t len = size - 1;
    uint8_t *in = malloc(len + 1);
    uint8_t *plain = malloc(len + 1);
    FUZZ_CHECK(in != NULL && plain != NULL);
    memcpy(in, data + 1, len);
    const fedge_device_key *k = fuzz_key();
    if ((mode & 1) && len >= 8 + FEDGE_KEY_ID_LEN)
        memcpy(in + 8, k->key_id, FEDGE_KEY_ID_LEN);
    uint64_t last_counter = (uint64_t)(mode >> 1);

    fedge_envelope_view v;
    int parsed = fedge_envelope_parse(in, len, &v);
    if (parsed == FEDGE_OK) {
        FUZZ_CHECK(FEDGE_ENV_OVERHEAD + v.aad_len + v.ct_len == len);
        FUZZ_CHECK(v.aad == in + FEDGE_ENV_HEADER_LEN);
    }
    int stepwise = parsed;
    if (stepwise == FEDGE_OK)
        stepwise = fedge_envelope_check(k, last_counter, &v);
    if (stepwise == FEDGE_OK) {
        stepwise = fedge_envelope_decrypt(k, in, &v, plain, len);
        if (stepwise != FEDGE_OK)
            for (size_t i = 0; i < v.ct_len; i++)
                FUZZ_CHECK(plain[i] == 0);
    }

    size_t plain_len = 0;
    fedge_envelope_view v2;
    int opened = fedge_envelope_open(k, last_counter, in, len, plain, len, &plain_len, &v2);
    FUZZ_CHECK(opened == stepwise);
    if (opened == FEDGE_OK)
        FUZZ_CHECK(plain_len == v2.ct_len && v2.counter > last_counter);
    free(in);
    free(plain);
    return 0;
}
