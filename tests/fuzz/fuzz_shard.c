/* fuzz_shard.c — the shard file reader (shared/shard.h): open, a streamed
 * epoch in both orders, verify, load.
 *
 * Input: one mode byte, then the file. Odd modes rewrite the trailing
 * SHA-256 first so the fuzzer reaches the record checks.
 * Invariants: an epoch yields n rows when every record is good, in either
 * order; verify fails whenever open does; load succeeds exactly when verify
 * and a full epoch do, with the same rows. */
#include <math.h>

#include "dataset.h"
#include "error.h"
#include "fuzz_util.h"
#include "shard.h"

#define BATCH 7

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
    const char *path = fuzz_write_file(data, size);

    fedge_shard_reader r;
    int opened = fedge_shard_open(&r, path);
    int verified = fedge_shard_verify(path);
    fedge_dataset ds;
    memset(&ds, 0, sizeof ds);
    int loaded = fedge_shard_load(path, &ds);
    if (opened != FEDGE_OK) {
        FUZZ_CHECK(verified == opened);
        FUZZ_CHECK(loaded == opened);
        free(fixed);
        return 0;
    }
    FUZZ_CHECK(r.n >= 1 && r.dim >= 1 && r.n_classes >= 1);
    FUZZ_CHECK(r.n * (uint64_t)r.record_size <= size);

    float *x = malloc((size_t)BATCH * (size_t)r.dim * sizeof(float));
    uint8_t y[BATCH];
    FUZZ_CHECK(x != NULL);
    int epoch_ret[2] = {FEDGE_OK, FEDGE_OK};
    for (int shuffle = 0; shuffle < 2; shuffle++) {
        fedge_shard_rewind(&r, shuffle, (uint64_t)mode * 7919u);
        uint64_t rows = 0;
        for (;;) {
            int got = -1;
            int ret = fedge_shard_next_batch(&r, BATCH, x, y, &got);
            FUZZ_CHECK(got >= 0 && got <= BATCH);
            for (int i = 0; i < got; i++) {
                FUZZ_CHECK(y[i] < r.n_classes);
                for (int j = 0; j < r.dim; j++)
                    FUZZ_CHECK(isfinite(x[(size_t)i * (size_t)r.dim + (size_t)j]));
            }
            rows += (uint64_t)got;
            FUZZ_CHECK(rows <= r.n);
            if (ret != FEDGE_OK) {
                FUZZ_CHECK(ret == FEDGE_ERR_DATA_LABEL || ret == FEDGE_ERR_DATA_FORMAT);
                epoch_ret[shuffle] = ret;
                break;
            }
            if (got == 0)
                break;
        }
        if (epoch_ret[shuffle] == FEDGE_OK)
            FUZZ_CHECK(rows == r.n);
    }
    /* Both orders see the same records, so they agree on whether all are good. */
    FUZZ_CHECK((epoch_ret[0] == FEDGE_OK) == (epoch_ret[1] == FEDGE_OK));
    if (verified == FEDGE_OK) {
        FUZZ_CHECK(loaded == epoch_ret[0]);
    } else {
        FUZZ_CHECK(verified == FEDGE_ERR_SHARD_CHECKSUM);
        FUZZ_CHECK(loaded == FEDGE_ERR_SHARD_CHECKSUM);
    }
    if (loaded == FEDGE_OK) {
        FUZZ_CHECK(ds.n == r.n && ds.dim == r.dim && ds.n_classes == r.n_classes);
        /* The first batch in file order equals the loaded rows. */
        fedge_shard_rewind(&r, 0, 0);
        int got = 0;
        FUZZ_CHECK(fedge_shard_next_batch(&r, BATCH, x, y, &got) == FEDGE_OK);
        for (int i = 0; i < got; i++) {
            FUZZ_CHECK(y[i] == ds.y[i]);
            FUZZ_CHECK(memcmp(x + (size_t)i * (size_t)r.dim, ds.x + (size_t)i * (size_t)r.dim,
                              (size_t)r.dim * sizeof(float)) == 0);
        }
        fedge_dataset_free(&ds);
    }
    free(x);
    fedge_shard_close(&r);
    free(fixed);
    return 0;
}
