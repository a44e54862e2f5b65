/* control.c — the client control variate file (see control.h). */
#include "control.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "fileio.h"
#include "modelfile.h"

#define TRAILER_MAGIC "FEDGECV1"
#define TRAILER_LEN (8 + FEDGE_CONTROL_RUN_ID_LEN + 8)

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

static char *pending_path(const char *path)
{
    size_t n = strlen(path) + sizeof ".pending";
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s.pending", path);
    return p;
}

static int same_spec(const fedge_model_spec *a, const fedge_model_spec *b)
{
    char ta[FEDGE_MODEL_SPEC_MAX], tb[FEDGE_MODEL_SPEC_MAX];
    return fedge_model_spec_format(a, ta, sizeof ta) == FEDGE_OK &&
           fedge_model_spec_format(b, tb, sizeof tb) == FEDGE_OK && strcmp(ta, tb) == 0;
}

/* The whole file into *buf, refusing one over cap bytes (FEDGE_ERR_RANGE). */
static int read_capped(const char *path, size_t cap, uint8_t **buf, size_t *len)
{
    struct stat sb;
    int ret = FEDGE_OK, fd = open(path, O_RDONLY | O_CLOEXEC);
    *buf = NULL;
    if (fd < 0)
        return errno == ENOENT ? FEDGE_ERR_NOT_FOUND : FEDGE_ERR_IO;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
        FAIL(FEDGE_ERR_IO);
    if ((uint64_t)sb.st_size > cap)
        FAIL(FEDGE_ERR_RANGE);
    *len = (size_t)sb.st_size;
    *buf = malloc(*len ? *len : 1);
    if (!*buf)
        FAIL(FEDGE_ERR_NOMEM);
    ret = fedge_pread_all(fd, *buf, *len, 0, FEDGE_ERR_MODEL_FILE_TRUNCATED);
cleanup:
    if (ret != FEDGE_OK) {
        free(*buf);
        *buf = NULL;
    }
    close(fd);
    return ret;
}

/* Splits a control file: the model file, and the trailer when there is one. */
static int has_trailer(const uint8_t *buf, size_t len)
{
    return len > TRAILER_LEN && memcmp(buf + len - TRAILER_LEN, TRAILER_MAGIC, 8) == 0;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

int fedge_edge_control_load(const char *path, const fedge_model_spec *spec,
                            const uint8_t run_id[FEDGE_CONTROL_RUN_ID_LEN], float bound,
                            fedge_model *ci, fedge_control_status *status, int *why)
{
    if (!path || !spec || !run_id || !ci || !status)
        return FEDGE_ERR_INVALID_ARG;
    fedge_model_free(ci);
    if (why)
        *why = FEDGE_OK;
    uint8_t *buf = NULL;
    size_t len = 0;
    /* a c_i of this spec: its model file plus the trailer; a bigger file is
     * none of this spec's and is not read whole */
    size_t cap = fedge_model_spec_param_count(spec) * sizeof(float) + 2 * FEDGE_MODEL_SPEC_MAX + 4096;
    int ret = read_capped(path, cap, &buf, &len);
    if (ret == FEDGE_OK) {
        int bound_run = has_trailer(buf, len);
        ret = fedge_model_deserialize(buf, bound_run ? len - TRAILER_LEN : len, ci, NULL);
        if (ret == FEDGE_OK && !same_spec(&ci->spec, spec)) {
            *status = FEDGE_CONTROL_OTHER_SPEC;
        } else if (ret == FEDGE_OK &&
                   (!bound_run || memcmp(buf + len - TRAILER_LEN + 8, run_id, FEDGE_CONTROL_RUN_ID_LEN) != 0)) {
            *status = FEDGE_CONTROL_OTHER_RUN;
        } else if (ret == FEDGE_OK && bound > 0.0f &&
                   fedge_edge_control_check(ci->params, ci->n_params, bound, NULL) != FEDGE_OK) {
            *status = FEDGE_CONTROL_IMPLAUSIBLE;
        } else if (ret == FEDGE_OK) {
            *status = FEDGE_CONTROL_LOADED;
            free(buf);
            return FEDGE_OK;
        }
    }
    free(buf);
    fedge_model_free(ci);
    if (ret == FEDGE_ERR_NOT_FOUND) {
        *status = FEDGE_CONTROL_NEW;
    } else if (ret != FEDGE_OK) {
        *status = FEDGE_CONTROL_CORRUPT;
        if (why)
            *why = ret == FEDGE_ERR_RANGE ? FEDGE_ERR_MODEL_SHAPE : ret;
    }
    return fedge_model_init(ci, spec); /* zeros */
}

static int write_bound(const char *path, const uint8_t run_id[FEDGE_CONTROL_RUN_ID_LEN], uint64_t counter,
                       const fedge_model *ci)
{
    if (!path || !run_id || !ci)
        return FEDGE_ERR_INVALID_ARG;
    uint8_t *buf = NULL, *all = NULL;
    size_t len = 0;
    int ret = fedge_model_serialize(ci, &buf, &len, NULL);
    if (ret == FEDGE_OK && !(all = realloc(buf, len + TRAILER_LEN)))
        ret = FEDGE_ERR_NOMEM;
    if (ret == FEDGE_OK) {
        buf = all;
        memcpy(buf + len, TRAILER_MAGIC, 8);
        memcpy(buf + len + 8, run_id, FEDGE_CONTROL_RUN_ID_LEN);
        put_u64(buf + len + 8 + FEDGE_CONTROL_RUN_ID_LEN, counter);
        ret = fedge_write_file_atomic(path, buf, len + TRAILER_LEN, 0600, 0);
    }
    free(buf);
    return ret;
}

int fedge_edge_control_commit(const char *path, const uint8_t run_id[FEDGE_CONTROL_RUN_ID_LEN],
                              const fedge_model *ci)
{
    return write_bound(path, run_id, 0, ci);
}

int fedge_edge_control_write_pending(const char *path, const uint8_t run_id[FEDGE_CONTROL_RUN_ID_LEN],
                                     uint64_t counter, const fedge_model *ci)
{
    if (!path)
        return FEDGE_ERR_INVALID_ARG;
    char *p = pending_path(path);
    if (!p)
        return FEDGE_ERR_NOMEM;
    int ret = write_bound(p, run_id, counter, ci);
    free(p);
    return ret;
}

int fedge_edge_control_pending_info(const char *path, uint8_t run_id[FEDGE_CONTROL_RUN_ID_LEN],
                                    uint64_t *counter)
{
    if (!path || !run_id || !counter)
        return FEDGE_ERR_INVALID_ARG;
    char *p = pending_path(path);
    if (!p)
        return FEDGE_ERR_NOMEM;
    uint8_t tail[TRAILER_LEN];
    struct stat sb;
    int ret = FEDGE_OK, fd = open(p, O_RDONLY | O_CLOEXEC);
    free(p);
    if (fd < 0)
        return errno == ENOENT ? FEDGE_ERR_NOT_FOUND : FEDGE_ERR_IO;
    if (fstat(fd, &sb) != 0 || sb.st_size <= TRAILER_LEN)
        FAIL(FEDGE_ERR_MODEL_FILE_TRUNCATED);
    CHK(fedge_pread_all(fd, tail, TRAILER_LEN, (uint64_t)sb.st_size - TRAILER_LEN, FEDGE_ERR_MODEL_FILE_TRUNCATED));
    if (memcmp(tail, TRAILER_MAGIC, 8) != 0)
        FAIL(FEDGE_ERR_MODEL_FILE_MAGIC);
    memcpy(run_id, tail + 8, FEDGE_CONTROL_RUN_ID_LEN);
    *counter = get_u64(tail + 8 + FEDGE_CONTROL_RUN_ID_LEN);
cleanup:
    close(fd);
    return ret;
}

int fedge_edge_control_settle(const char *path, int accepted)
{
    if (!path)
        return FEDGE_ERR_INVALID_ARG;
    char *p = pending_path(path);
    if (!p)
        return FEDGE_ERR_NOMEM;
    int ret = FEDGE_OK;
    if (accepted) {
        if (rename(p, path) != 0)
            ret = errno == ENOENT ? FEDGE_OK : FEDGE_ERR_IO;
        else
            ret = fedge_fsync_dir_of(path);
    } else if (unlink(p) != 0 && errno != ENOENT) {
        ret = FEDGE_ERR_IO;
    }
    free(p);
    return ret;
}

float fedge_edge_control_bound(const fedge_model *global, float lr)
{
    if (!global || !(lr > 0.0f) || !isfinite(lr))
        return 0.0f;
    float scale = 1.0f;
    for (size_t i = 0; i < global->n_params; i++) {
        float a = fabsf(global->params[i]);
        if (a > scale)
            scale = a;
    }
    float b = FEDGE_CONTROL_STEP_BOUND * scale / lr;
    return isfinite(b) ? b : 3.0e38f;
}

int fedge_edge_control_check(const float *v, size_t n, float bound, float *max_abs)
{
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(v[i]);
        if (!isfinite(a)) {
            m = INFINITY;
            break;
        }
        if (a > m)
            m = a;
    }
    if (max_abs)
        *max_abs = m;
    return m <= bound ? FEDGE_OK : FEDGE_ERR_CONTROL_RANGE;
}
