/* fuzz_safetensors.c — fedge-model's safetensors import decoder
 * (tools/model/safetensors.h).
 *
 * Input: one byte picking the spec the file is decoded against, then the
 * file. Invariants: a refusal writes nothing into the parameters and sets a
 * message; an accepted file has only finite values, and encoding those
 * parameters and decoding the result gives them back bit for bit. */
#include <math.h>

#include "error.h"
#include "fuzz_util.h"
#include "model.h"
#include "safetensors.h"

static const char *const specs[] = {
    "softmax:4-3",
    "mlp:4-3-2",
    "mlp:2-2-2-2",
    "cnn:1x6x6-c2k3p1-p2-f4-d50-3",
    "cnn:2x5x5-c2k2s2-p2s1-3",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size < 1)
        return 0;
    const char *text = specs[data[0] % (sizeof specs / sizeof specs[0])];
    data++;
    size--;
    fedge_model_spec spec;
    static mdl_view v;
    FUZZ_CHECK(fedge_model_spec_parse(text, &spec) == FEDGE_OK);
    FUZZ_CHECK(mdl_view_init(&spec, &v) == FEDGE_OK);
    size_t n = v.n_params;
    float *params = malloc(n * sizeof *params), *again = malloc(n * sizeof *again);
    FUZZ_CHECK(params != NULL && again != NULL);
    for (size_t i = 0; i < n; i++)
        params[i] = 12345.0f;
    char err[512] = "";
    int ret = mdl_st_decode(data, size, &v, params, err, sizeof err);
    if (ret != FEDGE_OK) {
        FUZZ_CHECK(ret == FEDGE_ERR_IMPORT_FORMAT || ret == FEDGE_ERR_IMPORT_TENSOR ||
                   ret == FEDGE_ERR_MODEL_NONFINITE || ret == FEDGE_ERR_NOMEM);
        FUZZ_CHECK(ret == FEDGE_ERR_NOMEM || err[0] != '\0');
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(params[i] == 12345.0f);
    } else {
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(isfinite(params[i]));
        uint8_t *out = NULL;
        size_t out_len = 0;
        FUZZ_CHECK(mdl_st_encode(&v, params, NULL, &out, &out_len) == FEDGE_OK);
        FUZZ_CHECK(mdl_st_decode(out, out_len, &v, again, err, sizeof err) == FEDGE_OK);
        FUZZ_CHECK(memcmp(params, again, n * sizeof *params) == 0);
        free(out);
    }
    free(params);
    free(again);
    return 0;
}
