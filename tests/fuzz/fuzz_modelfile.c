/* fuzz_modelfile.c — the model file reader (shared/modelfile.h), from memory
 * (fedge_model_deserialize, what an edge does with GET /model) and from a
 * file (fedge_model_load, what the aggregator and fedge-audit do).
 *
 * Input: one mode byte, then the file. Odd modes rewrite the trailing
 * checksum first so the fuzzer reaches the value checks.
 * Invariants: load, deserialize and deserialize_owned (the edge's GET /model
 * path since it stopped copying the body) give the same status; a model that loads
 * serialises back to exactly the input bytes, its version the trailer. */
#include <math.h>

#include "error.h"
#include "fuzz_util.h"
#include "model.h"
#include "modelfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    uint8_t *fixed = NULL;
    if ((mode & 1) && fuzz_fix_checksum(data, size, &fixed))
        data = fixed;

    fedge_model m, mf;
    memset(&m, 0, sizeof m);
    memset(&mf, 0, sizeof mf);
    uint8_t version[FEDGE_HASH_LEN], version_f[FEDGE_HASH_LEN];
    int ret = fedge_model_deserialize(data, size, &m, version);
    int ret_f = fedge_model_load(fuzz_write_file(data, size), &mf, version_f);
    if (ret != ret_f) {
        fprintf(stderr, "deserialize: %d, load: %d\n", ret, ret_f);
        abort();
    }
    fedge_model mo;
    memset(&mo, 0, sizeof mo);
    uint8_t version_o[FEDGE_HASH_LEN];
    uint8_t *own = malloc(size ? size : 1);
    FUZZ_CHECK(own != NULL);
    memcpy(own, data, size);
    int ret_o = fedge_model_deserialize_owned(own, size, &mo, version_o); /* owns it now */
    if (ret != ret_o) {
        fprintf(stderr, "deserialize: %d, deserialize_owned: %d\n", ret, ret_o);
        abort();
    }
    if (ret == FEDGE_OK) {
        FUZZ_CHECK(memcmp(version, version_o, FEDGE_HASH_LEN) == 0);
        FUZZ_CHECK(mo.n_params == m.n_params &&
                   memcmp(mo.params, m.params, m.n_params * sizeof(float)) == 0);
        fedge_model_free(&mo);
        FUZZ_CHECK(memcmp(version, version_f, FEDGE_HASH_LEN) == 0);
        FUZZ_CHECK(memcmp(version, data + size - FEDGE_HASH_LEN, FEDGE_HASH_LEN) == 0);
        FUZZ_CHECK(m.n_params == mf.n_params &&
                   m.n_params == fedge_model_spec_param_count(&m.spec));
        FUZZ_CHECK(memcmp(m.params, mf.params, m.n_params * sizeof(float)) == 0);
        for (size_t i = 0; i < m.n_params; i++)
            FUZZ_CHECK(isfinite(m.params[i]));
        uint8_t *out = NULL;
        size_t out_len = 0;
        uint8_t version_s[FEDGE_HASH_LEN];
        FUZZ_CHECK(fedge_model_serialize(&m, &out, &out_len, version_s) == FEDGE_OK);
        FUZZ_CHECK(out_len == size && memcmp(out, data, size) == 0);
        FUZZ_CHECK(memcmp(version_s, version, FEDGE_HASH_LEN) == 0);
        free(out);
        fedge_model_free(&m);
        fedge_model_free(&mf);
    }
    free(fixed);
    return 0;
}
