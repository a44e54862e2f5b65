/* fuzz_finished_marker.c — the edge's finished marker parser and Observe
 * option decoder (edge/observe.h): a file in the state directory, and an
 * option value any peer (or, over plain CoAP, anyone on the path) sends.
 *
 * Invariants: a refused marker leaves run_id untouched; an accepted one is
 * "run=" and 32 hex digits (one optional final LF) that encode run_id back
 * (case aside). The option value: at most 3 bytes accepted, its value below
 * 2^24. */
#include <ctype.h>

#include "error.h"
#include "fuzz_util.h"
#include "hash.h"
#include "observe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    uint8_t run[FEDGE_RUN_ID_LEN];
    memset(run, 0x5a, sizeof run);
    int ret = fedge_finished_marker_parse((const char *)data, size, run);
    if (ret != FEDGE_OK) {
        FUZZ_CHECK(ret == FEDGE_ERR_PROTO);
        for (size_t i = 0; i < sizeof run; i++)
            FUZZ_CHECK(run[i] == 0x5a);
    } else {
        char hex[2 * FEDGE_RUN_ID_LEN + 1];
        FUZZ_CHECK(size == 36 || (size == 37 && data[36] == '\n'));
        FUZZ_CHECK(memcmp(data, "run=", 4) == 0);
        fedge_hex_encode(run, FEDGE_RUN_ID_LEN, hex);
        for (size_t i = 0; i < 2 * FEDGE_RUN_ID_LEN; i++)
            FUZZ_CHECK(tolower(data[4 + i]) == hex[i]);
    }
    uint32_t v = 0;
    ret = fedge_observe_value(data, size, &v);
    FUZZ_CHECK((ret == FEDGE_OK) == (size <= 3));
    FUZZ_CHECK(ret != FEDGE_OK || v < (1u << 24));
    return 0;
}
