/* control.c — the client control variate file (see control.h). */
#include "control.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fileio.h"
#include "modelfile.h"

int fedge_edge_control_path(const char *state_dir, const char *id, char **out)
{
    if (!state_dir || !id || !out)
        return FEDGE_ERR_INVALID_ARG;
    size_t n = strlen(state_dir) + 1 + strlen(id) + sizeof ".control";
    *out = malloc(n);
    if (!*out)
        return FEDGE_ERR_NOMEM;
    snprintf(*out, n, "%s/%s.control", state_dir, id);
    return FEDGE_OK;
}

static int same_spec(const fedge_model_spec *a, const fedge_model_spec *b)
{
    char ta[FEDGE_MODEL_SPEC_MAX], tb[FEDGE_MODEL_SPEC_MAX];
    return fedge_model_spec_format(a, ta, sizeof ta) == FEDGE_OK &&
           fedge_model_spec_format(b, tb, sizeof tb) == FEDGE_OK && strcmp(ta, tb) == 0;
}

int fedge_edge_control_load(const char *path, const fedge_model_spec *spec, fedge_model *ci,
                            fedge_control_status *status, int *why)
{
    if (!path || !spec || !ci || !status)
        return FEDGE_ERR_INVALID_ARG;
    fedge_model_free(ci);
    if (why)
        *why = FEDGE_OK;
    int ret = fedge_model_load(path, ci, NULL);
    if (ret == FEDGE_OK && same_spec(&ci->spec, spec)) {
        *status = FEDGE_CONTROL_LOADED;
        return FEDGE_OK;
    }
    if (ret == FEDGE_OK) {
        *status = FEDGE_CONTROL_OTHER_SPEC;
        fedge_model_free(ci);
    } else if (ret == FEDGE_ERR_NOT_FOUND) {
        *status = FEDGE_CONTROL_NEW;
    } else {
        *status = FEDGE_CONTROL_CORRUPT;
        if (why)
            *why = ret;
    }
    return fedge_model_init(ci, spec); /* zeros */
}

int fedge_edge_control_commit(const char *path, const fedge_model *ci)
{
    if (!path || !ci)
        return FEDGE_ERR_INVALID_ARG;
    uint8_t *buf = NULL;
    size_t len = 0;
    int ret = fedge_model_serialize(ci, &buf, &len, NULL);
    if (ret == FEDGE_OK)
        ret = fedge_write_file_atomic(path, buf, len, 0600, 0);
    free(buf);
    return ret;
}
