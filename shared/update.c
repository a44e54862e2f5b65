/* update.c — an encoded delta sealed in an envelope (see update.h). */
#include "update.h"

#include <stdlib.h>
#include <string.h>

#include <mbedtls/platform_util.h>

#include "common.h"

int fedge_update_seal(const fedge_device_key *k, uint64_t counter,
                      const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_delta_header *h,
                      const float *delta, fedge_rng *rng, uint8_t **out, size_t *out_len)
{
    if (k == NULL || run_id == NULL || h == NULL || out == NULL || out_len == NULL)
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    *out_len = 0;
    size_t delta_len = fedge_delta_encoded_size(h);
    if (delta_len == 0)
        return FEDGE_ERR_INVALID_ARG;
    size_t total = fedge_envelope_sealed_size(FEDGE_UPDATE_AAD_LEN,
                                              delta_len - FEDGE_DELTA_HEADER_LEN);
    if (total == 0)
        return FEDGE_ERR_RANGE;

    int ret = FEDGE_OK;
    uint8_t *buf = malloc(total);
    if (buf == NULL)
        return FEDGE_ERR_NOMEM;
    /* Encode straight into the frame (header || run id = aad, payload =
     * plaintext), then encrypt in place so no plaintext copy outlives this
     * call. The encoder writes header and payload contiguously, so the
     * payload is encoded one run id further and the header moved back. */
    uint8_t *aad = buf + FEDGE_ENV_HEADER_LEN;
    uint8_t *plain = aad + FEDGE_UPDATE_AAD_LEN;
    size_t enc_len = 0, sealed_len = 0;
    CHK(fedge_delta_encode(h, delta, rng, aad + FEDGE_RUN_ID_LEN, delta_len, &enc_len));
    memmove(aad, aad + FEDGE_RUN_ID_LEN, FEDGE_DELTA_HEADER_LEN);
    memcpy(aad + FEDGE_DELTA_HEADER_LEN, run_id, FEDGE_RUN_ID_LEN);

    uint8_t prefix[4];
    uint32_t p = rng != NULL ? (uint32_t)fedge_rng_u64(rng) : (uint32_t)(counter >> 32);
    for (int i = 0; i < 4; i++)
        prefix[i] = (uint8_t)(p >> (8 * i));
    CHK(fedge_envelope_seal(k, counter, prefix, aad, FEDGE_UPDATE_AAD_LEN, plain,
                            enc_len - FEDGE_DELTA_HEADER_LEN, buf, total, &sealed_len));
    *out = buf;
    *out_len = sealed_len;
    buf = NULL;
cleanup:
    if (buf != NULL) {
        mbedtls_platform_zeroize(buf, total);
        free(buf);
    }
    return ret;
}

int fedge_update_open(const fedge_device_key *k, const uint8_t *in, size_t len,
                      const fedge_update_expect *exp, uint8_t *scratch,
                      fedge_delta_header *h, uint64_t *counter, float *delta)
{
    if (k == NULL || in == NULL || exp == NULL || exp->run_id == NULL || scratch == NULL ||
        h == NULL || counter == NULL || (delta == NULL && exp->n_elems > 0))
        return FEDGE_ERR_INVALID_ARG;
    size_t max_len = exp->max_len != 0 ? exp->max_len : FEDGE_ENV_MAX_LEN;
    if (len > max_len)
        return FEDGE_ERR_ENV_OVERSIZED;

    int ret = FEDGE_OK;
    fedge_envelope_view v;
    fedge_delta_header t;
    int decrypted = 0;
    CHK(fedge_envelope_parse(in, len, &v));
    CHK(fedge_envelope_check(k, exp->last_counter, &v));

    /* The delta header and run id travel as the clear, authenticated aad:
     * check them before spending time on decryption. A frame without a run
     * id (aad = the delta header alone) was sealed outside any run. */
    if (v.aad_len == FEDGE_DELTA_HEADER_LEN)
        FAIL(FEDGE_ERR_ENV_RUN);
    if (v.aad_len < FEDGE_UPDATE_AAD_LEN)
        FAIL(FEDGE_ERR_DELTA_TRUNCATED);
    if (v.aad_len > FEDGE_UPDATE_AAD_LEN)
        FAIL(FEDGE_ERR_DELTA_OVERSIZED);
    if (memcmp(v.aad + FEDGE_DELTA_HEADER_LEN, exp->run_id, FEDGE_RUN_ID_LEN) != 0)
        FAIL(FEDGE_ERR_ENV_RUN);
    CHK(fedge_delta_parse_header(v.aad, &t));
    if (t.round > exp->round || exp->round - t.round > exp->round_window)
        FAIL(FEDGE_ERR_DELTA_ROUND);
    if (t.model_id != exp->model_id || t.n_elems != exp->n_elems)
        FAIL(FEDGE_ERR_DELTA_SHAPE);
    CHK(fedge_delta_check_length(&t, FEDGE_DELTA_HEADER_LEN + v.ct_len));

    /* scratch ends up holding the encoded delta, header then payload. */
    decrypted = 1;
    CHK(fedge_envelope_decrypt(k, in, &v, scratch + FEDGE_DELTA_HEADER_LEN,
                               len - FEDGE_DELTA_HEADER_LEN));
    CHK(fedge_delta_decode_payload(&t, scratch + FEDGE_DELTA_HEADER_LEN, v.ct_len, delta));
    if (t.flags & FEDGE_DELTA_FLAG_PARTIAL)
        memcpy(t.partial_head, scratch + FEDGE_DELTA_HEADER_LEN + v.ct_len - FEDGE_DELTA_PARTIAL_HEAD_LEN,
               FEDGE_DELTA_PARTIAL_HEAD_LEN);
    memcpy(scratch, v.aad, FEDGE_DELTA_HEADER_LEN);
    *h = t;
    *counter = v.counter;
cleanup:
    if (decrypted && ret != FEDGE_OK)
        mbedtls_platform_zeroize(scratch + FEDGE_DELTA_HEADER_LEN, v.ct_len);
    return ret;
}
