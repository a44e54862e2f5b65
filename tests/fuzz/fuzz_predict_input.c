/* fuzz_predict_input.c — fedge-model predict's input decoder
 * (tools/model/input.h): IDX images or CSV feature rows, decoded by the
 * same stream predict reads files with (mdl_input_parse runs it over the
 * bytes in small pieces and batches, so rows and lines cross refills).
 *
 * Input: one byte picking the model input shape, then the file's bytes.
 * Invariants: a refusal allocates nothing and says why; accepted rows are
 * exactly n x dim finite values (IDX pixels within [0, 1]). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fuzz_util.h"
#include "input.h"

static const struct { int dim, c, h, w; } shapes[] = {
    {4, 0, 0, 0},   /* a flat input: CSV rows of 4, IDX 2 x 2 */
    {4, 1, 2, 2},   /* an image input */
    {1, 0, 0, 0},
    {6, 1, 3, 2},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size < 1)
        return 0;
    int s = data[0] % (int)(sizeof shapes / sizeof shapes[0]);
    data++;
    size--;
    uint8_t *buf = malloc(size + 1);
    FUZZ_CHECK(buf != NULL);
    memcpy(buf, data, size);
    buf[size] = '\0';
    float *x = NULL;
    size_t n = 0;
    char err[256] = "";
    int ret = mdl_input_parse("fuzz", buf, size, shapes[s].dim, shapes[s].c, shapes[s].h,
                              shapes[s].w, &x, &n, err, sizeof err);
    if (ret != FEDGE_OK) {
        FUZZ_CHECK(x == NULL);
        FUZZ_CHECK(ret == FEDGE_ERR_NOMEM || err[0] != '\0');
    } else {
        FUZZ_CHECK(x != NULL && n >= 1);
        int idx = size >= 4 && data[0] == 0 && data[1] == 0 && data[2] == 8 && data[3] == 3;
        for (size_t i = 0; i < n * (size_t)shapes[s].dim; i++) {
            FUZZ_CHECK(isfinite(x[i]));
            if (idx)
                FUZZ_CHECK(x[i] >= 0.0f && x[i] <= 1.0f);
        }
    }
    free(x);
    free(buf);
    return 0;
}
