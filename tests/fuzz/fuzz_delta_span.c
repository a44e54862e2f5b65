/* fuzz_delta_span.c — range decoding of a stored delta (shared/delta.h
 * fedge_delta_span / fedge_delta_decode_span), the path a combiner reads
 * blocks through (aggregator/combine.h).
 *
 * Input: two bytes choosing the range, then an encoded delta (header +
 * payload). Invariants: span's bytes lie inside the encoded delta; when the
 * whole delta decodes, every range decodes to exactly its part of the full
 * decode; a range that fails writes nothing; a range that holds a
 * non-finite value fails and so does the whole delta. */
#include <math.h>

#include "delta.h"
#include "error.h"
#include "fuzz_util.h"

#define SENTINEL 0x5a
#define MAX_ELEMS (1u << 16)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size < 2 + FEDGE_DELTA_HEADER_LEN)
        return 0;
    uint8_t a = data[0], b = data[1];
    data += 2;
    size -= 2;
    fedge_delta_header h;
    if (fedge_delta_decode_header(data, size, &h) != FEDGE_OK || h.n_elems == 0 || h.n_elems > MAX_ELEMS)
        return 0;
    float *full = malloc(h.n_elems * sizeof *full);
    float *part = malloc((h.n_elems + 1) * sizeof *part);
    FUZZ_CHECK(full != NULL && part != NULL);
    int full_ret = fedge_delta_decode(data, size, h.model_id, h.n_elems, &h, full);

    size_t k0 = (size_t)a * h.n_elems / 256, k1 = k0 + 1 + (size_t)b * (h.n_elems - k0) / 256;
    if (k1 > h.n_elems)
        k1 = h.n_elems;
    size_t off = 0, len = 0;
    FUZZ_CHECK(fedge_delta_span(&h, k0, k1, &off, &len) == FEDGE_OK);
    FUZZ_CHECK(off >= FEDGE_DELTA_HEADER_LEN && off <= size && len <= size - off && len > 0);
    memset(part, SENTINEL, (h.n_elems + 1) * sizeof *part);
    int ret = fedge_delta_decode_span(&h, k0, k1, data + off, len, part);
    if (full_ret == FEDGE_OK) {
        FUZZ_CHECK(ret == FEDGE_OK);
        FUZZ_CHECK(memcmp(part, full + k0, (k1 - k0) * sizeof *part) == 0);
    } else {
        FUZZ_CHECK(full_ret == FEDGE_ERR_DELTA_NONFINITE);
        FUZZ_CHECK(ret == FEDGE_OK || ret == FEDGE_ERR_DELTA_NONFINITE);
    }
    if (ret != FEDGE_OK) {
        const uint8_t *p = (const uint8_t *)part;
        for (size_t i = 0; i < (h.n_elems + 1) * sizeof *part; i++)
            FUZZ_CHECK(p[i] == SENTINEL);
    } else {
        for (size_t i = 0; i < k1 - k0; i++)
            FUZZ_CHECK(isfinite(part[i]));
        const uint8_t *p = (const uint8_t *)(part + (k1 - k0));
        for (size_t i = 0; i < sizeof *part; i++)
            FUZZ_CHECK(p[i] == SENTINEL);
    }
    /* a wrong length is refused, never read past */
    FUZZ_CHECK(fedge_delta_decode_span(&h, k0, k1, data + off, len - 1, part) != FEDGE_OK);
    free(full);
    free(part);
    return 0;
}
