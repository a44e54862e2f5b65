/* fuzz_round_config.c — the round configuration event's detail
 * (aggregator/round_config.h), as fedge-audit replay parses it from a log
 * that may have been edited.
 *
 * Input: the detail text (inputs holding a NUL are skipped: SQLite's text
 * reaches the parser NUL-terminated). Invariants: parse either refuses
 * (FEDGE_ERR_DATA_FORMAT, the configuration untouched) or gives one whose
 * formatted text parses back to the same text. */
#include "error.h"
#include "fuzz_util.h"
#include "round_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size > 4096 || memchr(data, 0, size))
        return 0;
    char *detail = malloc(size + 1);
    FUZZ_CHECK(detail);
    memcpy(detail, data, size);
    detail[size] = '\0';
    fedge_agg_config c, before;
    fedge_agg_config_defaults(&c);
    before = c;
    int rc = fedge_round_config_parse(detail, &c);
    if (rc != FEDGE_OK) {
        FUZZ_CHECK(rc == FEDGE_ERR_DATA_FORMAT);
        FUZZ_CHECK(memcmp(&c, &before, sizeof c) == 0);
    } else {
        char a[256], b[256];
        FUZZ_CHECK(fedge_round_config_format(&c, a, sizeof a) == FEDGE_OK);
        fedge_agg_config d;
        fedge_agg_config_defaults(&d);
        FUZZ_CHECK(fedge_round_config_parse(a, &d) == FEDGE_OK);
        FUZZ_CHECK(fedge_round_config_format(&d, b, sizeof b) == FEDGE_OK);
        FUZZ_CHECK(strcmp(a, b) == 0);
    }
    free(detail);
    return 0;
}
