/* fuzz_train_metrics.c — the training metrics block an edge puts in its
 * update's aad after the run id (shared/update.h), as fedge_update_open
 * decodes it.
 *
 * Input: the block's bytes. Invariants: decode either refuses
 * (FEDGE_ERR_UPDATE_METRICS, *m untouched) or gives values within the
 * documented ranges that encode back to exactly the input. */
#include <math.h>

#include "error.h"
#include "fuzz_util.h"
#include "update.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    fedge_train_metrics m;
    memset(&m, 0x5a, sizeof m);
    fedge_train_metrics before = m;
    int rc = fedge_train_metrics_decode(data, size, &m);
    if (rc != FEDGE_OK) {
        FUZZ_CHECK(rc == FEDGE_ERR_UPDATE_METRICS);
        FUZZ_CHECK(memcmp(&m, &before, sizeof m) == 0);
        return 0;
    }
    FUZZ_CHECK(size == FEDGE_TRAIN_METRICS_LEN);
    FUZZ_CHECK(m.present != 0 && (m.present & ~FEDGE_TRAIN_HAS_ALL) == 0);
    if (m.present & FEDGE_TRAIN_HAS_LOSS)
        FUZZ_CHECK(isfinite(m.loss) && m.loss >= 0.0f);
    if (m.present & FEDGE_TRAIN_HAS_ACCURACY)
        FUZZ_CHECK(m.accuracy >= 0.0f && m.accuracy <= 1.0f);
    if (m.present & FEDGE_TRAIN_HAS_EPOCHS)
        FUZZ_CHECK(m.epochs >= 1);
    uint8_t back[FEDGE_TRAIN_METRICS_LEN];
    FUZZ_CHECK(fedge_train_metrics_encode(&m, back) == FEDGE_OK);
    /* -0.0 decodes as a valid 0 loss; it encodes back with its sign */
    FUZZ_CHECK(memcmp(back, data, sizeof back) == 0);
    return 0;
}
