/* fuzz_delta.c — the delta decoder (shared/delta.h) on arbitrary bytes.
 *
 * Invariants: a failed decode writes nothing to the caller's buffer; a
 * decoded delta is finite; fp32/fp16/bf16 re-encode to exactly the input
 * bytes (a partial sum's head trailer included); an int8 delta re-encodes
 * within the format's error bound. fedge_delta_payload_norm agrees with the
 * decode: the same refusal, or the eight-lane sum of the decoded values'
 * squares, bit for bit (the first n and the first n / 2 of them). */
#include <math.h>

#include "delta.h"
#include "error.h"
#include "fuzz_util.h"

#define SENTINEL 0x5a

static int untouched(const float *buf, size_t n)
{
    const uint8_t *b = (const uint8_t *)buf;
    for (size_t i = 0; i < n * sizeof(float); i++)
        if (b[i] != SENTINEL)
            return 0;
    return 1;
}

static void check_int8_roundtrip(const fedge_delta_header *h, const float *x)
{
    fedge_delta_header h2 = *h;
    h2.flags = 0;
    size_t size = fedge_delta_encoded_size(&h2);
    FUZZ_CHECK(size != 0);
    uint8_t *enc = malloc(size);
    float *y = malloc(((size_t)h->n_elems + 1) * sizeof(float));
    FUZZ_CHECK(enc != NULL && y != NULL);
    size_t len = 0;
    int ret = fedge_delta_encode(&h2, x, NULL, enc, size, &len);
    /* A block maximum near FLT_MAX has no finite scale * 127. */
    FUZZ_CHECK(ret == FEDGE_OK || ret == FEDGE_ERR_RANGE);
    if (ret == FEDGE_OK) {
        FUZZ_CHECK(len == size);
        fedge_delta_header h3;
        FUZZ_CHECK(fedge_delta_decode(enc, len, h->model_id, h->n_elems, &h3, y) == FEDGE_OK);
        const uint8_t *p = enc + FEDGE_DELTA_HEADER_LEN;
        for (size_t start = 0; start < h->n_elems; start += h->block_size) {
            size_t blen = h->n_elems - start < h->block_size ? h->n_elems - start : h->block_size;
            float scale;
            memcpy(&scale, p, sizeof scale);
            /* |error| <= scale / 2, plus the 2^-22 relative slack of
             * multiplying by 1/scale and the rounding of q * scale. */
            double bound = 0.5 * (double)scale * (1.0 + 0x1p-16) + 0x1p-149;
            for (size_t i = 0; i < blen; i++) {
                double err = fabs((double)y[start + i] - (double)x[start + i]);
                if (err > bound + fabs((double)x[start + i]) * 0x1p-22) {
                    fprintf(stderr, "int8 error %g > bound %g at %zu (x %a, y %a, scale %a)\n",
                            err, bound, start + i, (double)x[start + i],
                            (double)y[start + i], (double)scale);
                    abort();
                }
            }
            p += 4 + blen;
        }
    }
    free(enc);
    free(y);
}

/* fedge_l2_norm's sum (aggregator/combine.c): element i in lane i % 8 */
static double lane_norm(const float *x, size_t n)
{
    double acc[8] = {0}, s = 0;
    for (size_t i = 0; i < n; i++)
        acc[i & 7] += (double)x[i] * (double)x[i];
    for (int l = 0; l < 8; l++)
        s += acc[l];
    return sqrt(s);
}

static void check_norm(const fedge_delta_header *h, const uint8_t *data, size_t size, int decoded,
                       const float *out)
{
    size_t n = h->n_elems;
    const size_t firsts[2] = {n, n / 2};
    for (int f = 0; f < 2; f++) {
        double got = 42;
        int r = fedge_delta_payload_norm(h, data + FEDGE_DELTA_HEADER_LEN, size - FEDGE_DELTA_HEADER_LEN, firsts[f],
                                         &got);
        if (decoded != FEDGE_OK) {
            FUZZ_CHECK(r == decoded && got == 42);
        } else {
            double want = lane_norm(out, firsts[f]);
            FUZZ_CHECK(r == FEDGE_OK && memcmp(&got, &want, sizeof got) == 0);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    fedge_delta_header h;
    if (fedge_delta_decode_header(data, size, &h) != FEDGE_OK) {
        /* Header alone must agree: a header that does not parse fails decode too. */
        float one;
        memset(&one, SENTINEL, sizeof one);
        fedge_delta_header t;
        FUZZ_CHECK(fedge_delta_decode(data, size, 0, 1, &t, &one) != FEDGE_OK);
        FUZZ_CHECK(untouched(&one, 1));
        return 0;
    }
    /* The length check bounds n_elems by the input size. */
    FUZZ_CHECK(h.n_elems <= size);
    size_t n = h.n_elems;
    float *out = malloc((n + 1) * sizeof(float));
    FUZZ_CHECK(out != NULL);
    memset(out, SENTINEL, (n + 1) * sizeof(float));

    fedge_delta_header t;
    /* Wrong shape or model: refused, nothing written. */
    FUZZ_CHECK(fedge_delta_decode(data, size, h.model_id, h.n_elems + 1, &t, out) ==
               FEDGE_ERR_DELTA_SHAPE);
    FUZZ_CHECK(fedge_delta_decode(data, size, h.model_id ^ 1u, h.n_elems, &t, out) ==
               FEDGE_ERR_DELTA_SHAPE);
    FUZZ_CHECK(untouched(out, n + 1));

    int ret = fedge_delta_decode(data, size, h.model_id, h.n_elems, &t, out);
    check_norm(&h, data, size, ret, out);
    if (ret != FEDGE_OK) {
        FUZZ_CHECK(ret == FEDGE_ERR_DELTA_NONFINITE);
        FUZZ_CHECK(untouched(out, n + 1));
        free(out);
        return 0;
    }
    FUZZ_CHECK(t.encoding == h.encoding && t.flags == h.flags && t.model_id == h.model_id &&
               t.round == h.round && t.n_samples == h.n_samples && t.n_elems == h.n_elems &&
               t.block_size == h.block_size &&
               memcmp(t.base_version, h.base_version, sizeof h.base_version) == 0);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(isfinite(out[i]));
    /* a relay's partial sum: the head trailer, the same both ways */
    uint8_t head[FEDGE_DELTA_PARTIAL_HEAD_LEN];
    int hr = fedge_delta_partial_head(data, size, head);
    if (h.flags & FEDGE_DELTA_FLAG_PARTIAL) {
        FUZZ_CHECK(hr == FEDGE_OK && h.encoding == FEDGE_ENC_FP32);
        FUZZ_CHECK(memcmp(head, t.partial_head, sizeof head) == 0);
    } else {
        FUZZ_CHECK(hr == FEDGE_ERR_NOT_FOUND);
    }
    FUZZ_CHECK(untouched(out + n, 1));

    if (h.encoding == FEDGE_ENC_INT8) {
        check_int8_roundtrip(&h, out);
    } else {
        uint8_t *enc = malloc(size);
        FUZZ_CHECK(enc != NULL);
        size_t len = 0;
        FUZZ_CHECK(fedge_delta_encode(&t, out, NULL, enc, size, &len) == FEDGE_OK);
        FUZZ_CHECK(len == size && memcmp(enc, data, size) == 0);
        free(enc);
    }
    free(out);
    return 0;
}
