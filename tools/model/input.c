/* input.c — IDX images and CSV feature rows for fedge-model predict, decoded
 * as a stream from a bounded buffer (input.h). */
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
#define READ_CHUNK ((size_t)65536)
/* In memory the bytes arrive in small pieces, so lines and images cross
 * buffer refills as they do in a large file (and the fuzz target sees it). */
#define MEM_PIECE ((size_t)509)

enum { KIND_IDX = 1, KIND_CSV };

struct mdl_input {
    char *name;
    int dim, kind, failed, done;
    gzFile gz;
    const uint8_t *mem;
    size_t mem_len, mem_pos;
    uint8_t *buf; /* cap + 1 bytes: a line can be NUL-terminated in place */
    size_t cap, start, end, scan, line_max;
    int eof;
    uint32_t count, images; /* IDX: images in the header, decoded so far */
    size_t line_no, rows;   /* CSV */
};

__attribute__((format(printf, 4, 5))) static int fail(char *err, size_t errlen, int code,
                                                     const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Moves the unread bytes to the front and reads more behind them; at the end
 * of the input sets eof. */
static int fill(mdl_input *in, char *err, size_t errlen)
{
    if (in->start > 0) {
        memmove(in->buf, in->buf + in->start, in->end - in->start);
        in->end -= in->start;
        in->scan = in->scan > in->start ? in->scan - in->start : 0;
        in->start = 0;
    }
    size_t room = in->cap - in->end;
    if (room == 0 || in->eof)
        return FEDGE_OK;
    size_t got;
    if (in->gz != NULL) {
        int r = gzread(in->gz, in->buf + in->end, (unsigned)(room < READ_CHUNK ? room : READ_CHUNK));
        if (r < 0) {
            int zerr;
            const char *msg = gzerror(in->gz, &zerr);
            return fail(err, errlen, FEDGE_ERR_IO, "%s: %s", in->name,
                        zerr == Z_ERRNO ? strerror(errno) : msg);
        }
        got = (size_t)r;
    } else {
        got = in->mem_len - in->mem_pos;
        if (got > room)
            got = room;
        if (got > MEM_PIECE)
            got = MEM_PIECE;
        if (got > 0)
            memcpy(in->buf + in->end, in->mem + in->mem_pos, got);
        in->mem_pos += got;
    }
    if (got == 0)
        in->eof = 1;
    in->end += got;
    return FEDGE_OK;
}

/* At least n unread bytes, unless the input ends first. */
static int want(mdl_input *in, size_t n, char *err, size_t errlen)
{
    while (in->end - in->start < n && !in->eof) {
        int ret = fill(in, err, errlen);
        if (ret != FEDGE_OK)
            return ret;
    }
    return FEDGE_OK;
}

static int open_idx(mdl_input *in, int c, int h, int w, char *err, size_t errlen)
{
    int ret = want(in, 16, err, errlen);
    if (ret != FEDGE_OK)
        return ret;
    if (in->end - in->start < 16)
        return fail(err, errlen, FEDGE_ERR_DATA_TRUNCATED, "%s: IDX header cut short", in->name);
    const uint8_t *b = in->buf + in->start;
    uint32_t count = be32(b + 4), rows = be32(b + 8), cols = be32(b + 12);
    if (count == 0 || count > FEDGE_DATASET_MAX_ROWS || rows == 0 || cols == 0 ||
        (uint64_t)rows * cols > FEDGE_DATASET_MAX_DIM)
        return fail(err, errlen, FEDGE_ERR_RANGE, "%s: IDX dimensions %u x %u x %u out of range",
                    in->name, count, rows, cols);
    if (h > 0 && (c != 1 || rows != (uint32_t)h || cols != (uint32_t)w))
        return fail(err, errlen, FEDGE_ERR_MODEL_SHAPE,
                    "%s: images are 1 x %u x %u, the model takes %d x %d x %d", in->name, rows, cols, c,
                    h, w);
    if ((uint64_t)rows * cols != (uint64_t)in->dim)
        return fail(err, errlen, FEDGE_ERR_MODEL_SHAPE,
                    "%s: images are %u x %u = %u pixels, the model takes %d", in->name, rows, cols,
                    rows * cols, in->dim);
    in->count = count;
    in->start += 16;
    return FEDGE_OK;
}

static int read_idx(mdl_input *in, float *x, size_t max_rows, size_t *got, char *err, size_t errlen)
{
    const size_t dim = (size_t)in->dim;
    size_t r = 0;
    while (r < max_rows && in->images < in->count) {
        int ret = want(in, dim, err, errlen);
        if (ret != FEDGE_OK)
            return ret;
        if (in->end - in->start < dim)
            return fail(err, errlen, FEDGE_ERR_DATA_TRUNCATED,
                        "%s: %u images need %llu bytes, the file ends in image %u", in->name, in->count,
                        (unsigned long long)in->count * dim, in->images + 1);
        const uint8_t *p = in->buf + in->start;
        float *row = x + r * dim;
        for (size_t i = 0; i < dim; i++)
            row[i] = (float)p[i] * (1.0f / 255.0f);
        in->start += dim;
        in->images++;
        r++;
    }
    if (in->images == in->count) {
        int ret = want(in, 1, err, errlen);
        if (ret != FEDGE_OK)
            return ret;
        if (in->end > in->start)
            return fail(err, errlen, FEDGE_ERR_DATA_FORMAT, "%s: bytes after the last of %u images",
                        in->name, in->count);
    }
    *got = r;
    return FEDGE_OK;
}

/* The next line, NUL-terminated in place without its newline (and CR);
 * *line NULL at the end of the input. */
static int next_line(mdl_input *in, char **line, size_t *len, char *err, size_t errlen)
{
    *line = NULL;
    for (;;) {
        uint8_t *nl = memchr(in->buf + in->scan, '\n', in->end - in->scan);
        size_t ll = nl ? (size_t)(nl - (in->buf + in->start)) : in->end - in->start;
        if (ll > in->line_max)
            return fail(err, errlen, FEDGE_ERR_DATA_FORMAT,
                        "%s:%zu: line longer than %zu bytes (%d fields of a number each)", in->name,
                        in->line_no + 1, in->line_max, in->dim);
        if (nl == NULL && !in->eof) {
            in->scan = in->end;
            int ret = fill(in, err, errlen);
            if (ret != FEDGE_OK)
                return ret;
            continue;
        }
        if (nl == NULL && ll == 0)
            return FEDGE_OK;
        char *p = (char *)in->buf + in->start;
        p[ll] = '\0'; /* the newline, or the byte after the buffered ones */
        in->start += ll + (nl ? 1 : 0);
        in->scan = in->start;
        in->line_no++;
        if (memchr(p, '\0', ll) != NULL)
            return fail(err, errlen, FEDGE_ERR_DATA_FORMAT,
                        "%s:%zu: NUL byte (neither IDX images nor CSV)", in->name, in->line_no);
        if (ll > 0 && p[ll - 1] == '\r')
            p[--ll] = '\0';
        *line = p;
        *len = ll;
        return FEDGE_OK;
    }
}

static const char *skip_blanks(const char *q)
{
    while (*q == ' ' || *q == '\t')
        q++;
    return q;
}

/* A header's first field is not a number at all (a non-finite one is). */
static int csv_header(const char *line)
{
    const char *q = skip_blanks(line);
    char *e;
    (void)strtof(q, &e);
    return e == q;
}

static int csv_row(mdl_input *in, const char *line, float *row, char *err, size_t errlen)
{
    const char *q = line;
    for (int k = 0; k < in->dim; k++) {
        char *e;
        errno = 0;
        q = skip_blanks(q);
        float f = strtof(q, &e);
        if (e == q || errno == ERANGE || !isfinite(f))
            return fail(err, errlen, FEDGE_ERR_DATA_FORMAT, "%s:%zu: field %d is not a finite number",
                        in->name, in->line_no, k + 1);
        q = skip_blanks(e);
        row[k] = f;
        if (k + 1 < in->dim) {
            if (*q != ',')
                return fail(err, errlen, FEDGE_ERR_MODEL_SHAPE, "%s:%zu: %d fields, the model takes %d",
                            in->name, in->line_no, k + 1, in->dim);
            q++;
        }
    }
    if (*q != '\0')
        return fail(err, errlen, FEDGE_ERR_MODEL_SHAPE, "%s:%zu: more than %d fields (the model takes %d)",
                    in->name, in->line_no, in->dim, in->dim);
    return FEDGE_OK;
}

static int read_csv(mdl_input *in, float *x, size_t max_rows, size_t *got, char *err, size_t errlen)
{
    size_t r = 0;
    while (r < max_rows) {
        char *line;
        size_t ll;
        int ret = next_line(in, &line, &ll, err, errlen);
        if (ret != FEDGE_OK)
            return ret;
        if (line == NULL) {
            if (in->rows == 0)
                return fail(err, errlen, FEDGE_ERR_DATA_FORMAT, "%s: no rows", in->name);
            break;
        }
        if (ll == 0 || (in->line_no == 1 && csv_header(line)))
            continue;
        if (in->rows == FEDGE_DATASET_MAX_ROWS)
            return fail(err, errlen, FEDGE_ERR_RANGE, "%s: more than %u rows", in->name,
                        FEDGE_DATASET_MAX_ROWS);
        ret = csv_row(in, line, x + r * (size_t)in->dim, err, errlen);
        if (ret != FEDGE_OK)
            return ret;
        in->rows++;
        r++;
    }
    *got = r;
    return FEDGE_OK;
}

static int start(const char *name, int dim, int c, int h, int w, gzFile gz, const uint8_t *mem,
                 size_t mem_len, mdl_input **out, char *err, size_t errlen)
{
    int ret = FEDGE_OK;
    mdl_input *in = calloc(1, sizeof *in);
    if (in == NULL) {
        if (gz != NULL)
            gzclose(gz);
        return fail(err, errlen, FEDGE_ERR_NOMEM, "out of memory");
    }
    in->gz = gz;
    in->mem = mem;
    in->mem_len = mem_len;
    in->dim = dim;
    in->line_max = MDL_CSV_LINE_MAX(dim);
    in->cap = in->line_max + READ_CHUNK;
    in->name = strdup(name);
    in->buf = malloc(in->cap + 1);
    if (in->name == NULL || in->buf == NULL)
        FAIL(fail(err, errlen, FEDGE_ERR_NOMEM, "out of memory"));
    CHK(want(in, 4, err, errlen));
    const uint8_t *b = in->buf;
    if (in->end >= 4 && be32(b) == IDX_MAGIC_IMAGES) {
        in->kind = KIND_IDX;
        CHK(open_idx(in, c, h, w, err, errlen));
    } else if (in->end >= 4 && b[0] == 0 && b[1] == 0) {
        FAIL(fail(err, errlen, FEDGE_ERR_DATA_FORMAT,
                  "%s: IDX magic %08x is not an image file (0x00000803)", name, be32(b)));
    } else {
        in->kind = KIND_CSV;
    }
    *out = in;
    in = NULL;
cleanup:
    mdl_input_close(in);
    return ret;
}

int mdl_input_open(const char *path, int dim, int c, int h, int w, mdl_input **in, char *err,
                   size_t errlen)
{
    if (path == NULL || in == NULL || err == NULL || dim < 1 || (size_t)dim > FEDGE_DATASET_MAX_DIM)
        return FEDGE_ERR_INVALID_ARG;
    *in = NULL;
    errno = 0;
    gzFile gz = gzopen(path, "rb");
    if (gz == NULL)
        return fail(err, errlen, errno == ENOENT ? FEDGE_ERR_NOT_FOUND : FEDGE_ERR_IO, "%s: %s", path,
                    strerror(errno ? errno : EIO));
    return start(path, dim, c, h, w, gz, NULL, 0, in, err, errlen);
}

int mdl_input_open_mem(const char *name, const uint8_t *buf, size_t len, int dim, int c, int h,
                       int w, mdl_input **in, char *err, size_t errlen)
{
    if (name == NULL || (buf == NULL && len > 0) || in == NULL || err == NULL || dim < 1 ||
        (size_t)dim > FEDGE_DATASET_MAX_DIM)
        return FEDGE_ERR_INVALID_ARG;
    *in = NULL;
    return start(name, dim, c, h, w, NULL, buf, len, in, err, errlen);
}

int mdl_input_read(mdl_input *in, float *x, size_t max_rows, size_t *got, char *err, size_t errlen)
{
    if (in == NULL || x == NULL || got == NULL || err == NULL || max_rows == 0)
        return FEDGE_ERR_INVALID_ARG;
    *got = 0;
    if (in->failed)
        return fail(err, errlen, FEDGE_ERR_INVALID_ARG, "%s: read after a failure", in->name);
    if (in->done)
        return FEDGE_OK;
    int ret = in->kind == KIND_IDX ? read_idx(in, x, max_rows, got, err, errlen)
                                   : read_csv(in, x, max_rows, got, err, errlen);
    if (ret != FEDGE_OK) {
        in->failed = 1;
        *got = 0;
    } else if (*got == 0) {
        in->done = 1;
    }
    return ret;
}

void mdl_input_close(mdl_input *in)
{
    if (in == NULL)
        return;
    if (in->gz != NULL)
        gzclose(in->gz);
    free(in->buf);
    free(in->name);
    free(in);
}

int mdl_input_parse(const char *name, const uint8_t *buf, size_t len, int dim, int c, int h, int w,
                    float **x, size_t *n, char *err, size_t errlen)
{
    if (x == NULL || n == NULL)
        return FEDGE_ERR_INVALID_ARG;
    *x = NULL;
    *n = 0;
    const size_t batch = 7; /* small, so rows cross reads */
    mdl_input *in = NULL;
    float *v = NULL;
    size_t rows = 0, cap = 0;
    int ret = mdl_input_open_mem(name, buf, len, dim, c, h, w, &in, err, errlen);
    if (ret != FEDGE_OK)
        return ret;
    for (;;) {
        if (cap - rows < batch) {
            size_t ncap = cap ? cap * 2 : 64;
            float *nv = realloc(v, ncap * (size_t)dim * sizeof *v);
            if (nv == NULL)
                FAIL(fail(err, errlen, FEDGE_ERR_NOMEM, "out of memory"));
            v = nv;
            cap = ncap;
        }
        size_t got;
        CHK(mdl_input_read(in, v + rows * (size_t)dim, batch, &got, err, errlen));
        if (got == 0)
            break;
        rows += got;
    }
    *x = v;
    *n = rows;
    v = NULL;
cleanup:
    free(v);
    mdl_input_close(in);
    return ret;
}
