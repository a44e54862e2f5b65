/* fuzz_round_info.c — the edge's parser of GET /round bodies
 * (edge/round_info.h): what a server, or anyone on the path of plain CoAP,
 * says to every edge.
 *
 * Invariants: on failure *out is untouched and the reason is one line; on success the state is known and an open round carries every
 * required key with its value in the documented range, and a spec that
 * parses to the same canonical text. */
#include <math.h>

#include "error.h"
#include "fuzz_util.h"
#include "model.h"
#include "round_info.h"

#define SENTINEL 0x5a

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    fedge_round_info ri;
    memset(&ri, SENTINEL, sizeof ri);
    char err[256];
    err[0] = '\0';
    int ret = fedge_round_info_parse((const char *)data, size, &ri, err, sizeof err);
    if (ret != FEDGE_OK) {
        const uint8_t *b = (const uint8_t *)&ri;
        for (size_t i = 0; i < sizeof ri; i++)
            FUZZ_CHECK(b[i] == SENTINEL);
        /* one line; the edge's log escapes the server's bytes in it */
        FUZZ_CHECK(err[0] != '\0' && strchr(err, '\n') == NULL);
        return 0;
    }
    FUZZ_CHECK(size <= FEDGE_ROUND_BODY_MAX);
    FUZZ_CHECK(ri.state == FEDGE_ROUND_OPEN || ri.state == FEDGE_ROUND_WAITING ||
               ri.state == FEDGE_ROUND_FINISHED);
    FUZZ_CHECK(strcmp(fedge_round_state_name(ri.state), "") != 0);
    if (ri.state != FEDGE_ROUND_OPEN)
        return 0;
    FUZZ_CHECK(ri.has_round && ri.has_model && ri.has_spec && ri.has_run);
    FUZZ_CHECK(ri.selected == 0 || ri.selected == 1);
    FUZZ_CHECK(ri.epochs >= 1 && ri.epochs <= FEDGE_ROUND_EPOCHS_MAX);
    FUZZ_CHECK(ri.batch >= 1 && ri.batch <= FEDGE_ROUND_BATCH_MAX);
    FUZZ_CHECK(isfinite(ri.lr) && ri.lr > 0.0f && ri.lr <= 100.0f);
    FUZZ_CHECK(isfinite(ri.momentum) && ri.momentum >= 0.0f && ri.momentum < 1.0f);
    FUZZ_CHECK(isfinite(ri.weight_decay) && ri.weight_decay >= 0.0f && ri.weight_decay < 1.0f);
    FUZZ_CHECK(ri.deadline_ms >= -1);
    FUZZ_CHECK(memchr(ri.spec_text, '\0', sizeof ri.spec_text) != NULL);
    fedge_model_spec spec;
    char canon[FEDGE_MODEL_SPEC_MAX];
    FUZZ_CHECK(fedge_model_spec_parse(ri.spec_text, &spec) == FEDGE_OK);
    FUZZ_CHECK(fedge_model_spec_format(&ri.spec, canon, sizeof canon) == FEDGE_OK);
    FUZZ_CHECK(strcmp(canon, ri.spec_text) == 0);
    FUZZ_CHECK(fedge_model_spec_param_count(&ri.spec) == fedge_model_spec_param_count(&spec));
    return 0;
}
