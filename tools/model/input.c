/* input.c — IDX images and CSV feature rows for fedge-model predict (input.h). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "common.h"
#include "dataset.h"
#include "input.h"

#define IDX_MAGIC_IMAGES 0x00000803u

__attribute__((format(printf, 4, 5))) static int fail(char *err, size_t errlen, int code,
                                                     const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

/* The whole (decompressed) file, NUL-terminated. */
static int read_all(const char *path, uint8_t **out, size_t *out_len, char *err, size_t errlen)
{
    int ret = FEDGE_OK;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    gzFile f = gzopen(path, "rb");
    if (f == NULL)
        return fail(err, errlen, errno == ENOENT ? FEDGE_ERR_NOT_FOUND : FEDGE_ERR_IO, "%s: %s", path,
                    strerror(errno ? errno : EIO));
    for (;;) {
        if (cap - len < 65536) {
            if (cap >= MDL_INPUT_MAX_BYTES)
                FAIL(fail(err, errlen, FEDGE_ERR_RANGE, "%s: more than %zu bytes", path, MDL_INPUT_MAX_BYTES));
            size_t ncap = cap ? cap * 2 : (1u << 20);
            uint8_t *nb = realloc(buf, ncap + 1);
            if (nb == NULL)
                FAIL(FEDGE_ERR_NOMEM);
            buf = nb;
            cap = ncap;
        }
        int r = gzread(f, buf + len, (unsigned)(cap - len > (1u << 30) ? (1u << 30) : cap - len));
        if (r < 0) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            FAIL(fail(err, errlen, FEDGE_ERR_IO, "%s: %s", path, zerr == Z_ERRNO ? strerror(errno) : msg));
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    buf = NULL;
cleanup:
    gzclose(f);
    free(buf);
    return ret;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int load_idx(const char *path, const uint8_t *b, size_t len, int dim, int c, int h, int w,
                    float **x, size_t *n, char *err, size_t errlen)
{
    if (len < 16)
        return fail(err, errlen, FEDGE_ERR_DATA_TRUNCATED, "%s: IDX header cut short", path);
    uint32_t count = be32(b + 4), rows = be32(b + 8), cols = be32(b + 12);
    if (count == 0 || count > FEDGE_DATASET_MAX_ROWS || rows == 0 || cols == 0 ||
        (uint64_t)rows * cols > FEDGE_DATASET_MAX_DIM)
        return fail(err, errlen, FEDGE_ERR_RANGE, "%s: IDX dimensions %u x %u x %u out of range", path,
                    count, rows, cols);
    if (h > 0 && (c != 1 || rows != (uint32_t)h || cols != (uint32_t)w))
        return fail(err, errlen, FEDGE_ERR_MODEL_SHAPE, "%s: images are 1 x %u x %u, the model takes %d x %d x %d",
                    path, rows, cols, c, h, w);
    if ((uint64_t)rows * cols != (uint64_t)dim)
        return fail(err, errlen, FEDGE_ERR_MODEL_SHAPE, "%s: images are %u x %u = %u pixels, the model takes %d",
                    path, rows, cols, rows * cols, dim);
    uint64_t need = (uint64_t)count * dim;
    if (len - 16 < need)
        return fail(err, errlen, FEDGE_ERR_DATA_TRUNCATED, "%s: %u images need %llu bytes, the file has %zu",
                    path, count, (unsigned long long)need, len - 16);
    if (len - 16 > need)
        return fail(err, errlen, FEDGE_ERR_DATA_FORMAT, "%s: %zu bytes after the last image", path,
                    (size_t)(len - 16 - need));
    float *v = malloc((size_t)need * sizeof *v);
    if (v == NULL)
        return FEDGE_ERR_NOMEM;
    for (size_t i = 0; i < need; i++)
        v[i] = (float)b[16 + i] * (1.0f / 255.0f);
    *x = v;
    *n = count;
    return FEDGE_OK;
}

static int numeric_start(const char *p)
{
    return (*p >= '0' && *p <= '9') || *p == '-' || *p == '+' || *p == '.';
}

static int load_csv(const char *path, char *text, size_t len, int dim, float **x, size_t *n,
                    char *err, size_t errlen)
{
    int ret = FEDGE_OK;
    float *v = NULL;
    size_t rows = 0, cap = 0, line_no = 0;
    if (memchr(text, '\0', len) != NULL)
        return fail(err, errlen, FEDGE_ERR_DATA_FORMAT, "%s: NUL byte (neither IDX images nor CSV)", path);
    char *p = text;
    while (*p != '\0') {
        char *eol = strchr(p, '\n');
        char *next = eol ? eol + 1 : p + strlen(p);
        if (eol)
            *eol = '\0';
        line_no++;
        size_t ll = strlen(p);
        if (ll > 0 && p[ll - 1] == '\r')
            p[--ll] = '\0';
        if (ll == 0) {
            p = next;
            continue;
        }
        if (rows == 0 && line_no == 1 && !numeric_start(p)) { /* header */
            p = next;
            continue;
        }
        if (rows == FEDGE_DATASET_MAX_ROWS)
            FAIL(fail(err, errlen, FEDGE_ERR_RANGE, "%s: more than %u rows", path, FEDGE_DATASET_MAX_ROWS));
        if (cap - rows == 0) {
            size_t ncap = cap ? cap * 2 : 1024;
            float *nv = realloc(v, ncap * (size_t)dim * sizeof *v);
            if (nv == NULL)
                FAIL(FEDGE_ERR_NOMEM);
            v = nv;
            cap = ncap;
        }
        float *row = v + rows * (size_t)dim;
        const char *q = p;
        for (int k = 0; k < dim; k++) {
            char *e;
            errno = 0;
            while (*q == ' ' || *q == '\t')
                q++;
            float f = strtof(q, &e);
            if (e == q || errno == ERANGE || !isfinite(f))
                FAIL(fail(err, errlen, FEDGE_ERR_DATA_FORMAT, "%s:%zu: field %d is not a finite number",
                          path, line_no, k + 1));
            q = e;
            while (*q == ' ' || *q == '\t')
                q++;
            row[k] = f;
            if (k + 1 < dim) {
                if (*q != ',')
                    FAIL(fail(err, errlen, FEDGE_ERR_MODEL_SHAPE, "%s:%zu: %d fields, the model takes %d",
                              path, line_no, k + 1, dim));
                q++;
            }
        }
        if (*q != '\0')
            FAIL(fail(err, errlen, FEDGE_ERR_MODEL_SHAPE, "%s:%zu: more than %d fields (the model takes %d)",
                      path, line_no, dim, dim));
        rows++;
        p = next;
    }
    if (rows == 0)
        FAIL(fail(err, errlen, FEDGE_ERR_DATA_FORMAT, "%s: no rows", path));
    *x = v;
    *n = rows;
    v = NULL;
cleanup:
    free(v);
    return ret;
}

int mdl_input_load(const char *path, int dim, int c, int h, int w, float **x, size_t *n, char *err,
                   size_t errlen)
{
    if (path == NULL || x == NULL || n == NULL || dim < 1)
        return FEDGE_ERR_INVALID_ARG;
    uint8_t *buf = NULL;
    size_t len = 0;
    int ret = read_all(path, &buf, &len, err, errlen);
    if (ret != FEDGE_OK)
        return ret;
    ret = mdl_input_parse(path, buf, len, dim, c, h, w, x, n, err, errlen);
    free(buf);
    return ret;
}

int mdl_input_parse(const char *name, uint8_t *buf, size_t len, int dim, int c, int h, int w, float **x,
                    size_t *n, char *err, size_t errlen)
{
    if (name == NULL || buf == NULL || buf[len] != '\0' || x == NULL || n == NULL || dim < 1)
        return FEDGE_ERR_INVALID_ARG;
    const char *path = name;
    int ret;
    if (len >= 4 && be32(buf) == IDX_MAGIC_IMAGES)
        ret = load_idx(path, buf, len, dim, c, h, w, x, n, err, errlen);
    else if (len >= 4 && buf[0] == 0 && buf[1] == 0)
        ret = fail(err, errlen, FEDGE_ERR_DATA_FORMAT, "%s: IDX magic %08x is not an image file (0x00000803)",
                   path, be32(buf));
    else
        ret = load_csv(path, (char *)buf, len, dim, x, n, err, errlen);
    return ret;
}
