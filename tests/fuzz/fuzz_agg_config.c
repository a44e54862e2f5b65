/* fuzz_agg_config.c — the aggregator's config file loader
 * (aggregator/config.h) on arbitrary file contents.
 *
 * Invariants: a file applies all or nothing (the config is unchanged on
 * error) and an error is one line naming the file; every string setting stays
 * NUL-terminated; validation of whatever loaded returns a status. */
#include "config.h"
#include "error.h"
#include "fuzz_util.h"
#include "text.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    const char *path = fuzz_write_file(data, size);
    fedge_agg_config c, before;
    fedge_agg_config_defaults(&c);
    before = c;
    char err[1024];
    err[0] = '\0';
    int ret = fedge_agg_config_load_file(&c, path, err, sizeof err);
    if (ret != FEDGE_OK) {
        FUZZ_CHECK(memcmp(&c, &before, sizeof c) == 0);
        FUZZ_CHECK(strncmp(err, path, strlen(path)) == 0);
        FUZZ_CHECK(fedge_text_is_printable(err, strlen(err)));
        return 0;
    }
    FUZZ_CHECK(memchr(c.listen, '\0', sizeof c.listen) != NULL);
    FUZZ_CHECK(memchr(c.model_spec, '\0', sizeof c.model_spec) != NULL);
    FUZZ_CHECK(memchr(c.log_level, '\0', sizeof c.log_level) != NULL);
    FUZZ_CHECK(memchr(c.refine_command, '\0', sizeof c.refine_command) != NULL);
    err[0] = '\0';
    ret = fedge_agg_config_validate(&c, err, sizeof err);
    if (ret != FEDGE_OK)
        FUZZ_CHECK(err[0] != '\0');
    return 0;
}
