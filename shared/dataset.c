/* dataset.c — IDX (gzip or raw) and CSV loaders, standardisation, views.
 *
 * A loader fills a local dataset and copies it to *ds only on success, so a
 * failed load leaves the caller's value as it was. File payloads are read into
 * buffers that grow as bytes actually arrive: a header that claims more rows
 * than the file holds costs at most twice what the file has, then fails with
 * FEDGE_ERR_DATA_TRUNCATED. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include "common.h"
#include "fileio.h"
#include "dataset.h"

#define IDX_MAGIC_IMAGES 0x00000803u /* unsigned byte, 3 dimensions */
#define IDX_MAGIC_LABELS 0x00000801u /* unsigned byte, 1 dimension */
#define READ_CHUNK (1u << 20)
#define FIRST_ALLOC (1u << 24)
#define CSV_MAX_LINE ((size_t)FEDGE_DATASET_MAX_DIM * 64 + 64)

static int n_classes_of(const uint8_t *y, size_t n)
{
    int mx = 0;
    for (size_t i = 0; i < n; i++)
        if (y[i] > mx)
            mx = y[i];
    return mx + 1 < 2 ? 2 : mx + 1;
}

/* ---- IDX ---------------------------------------------------------------- */

static int gz_status(gzFile f)
{
    int errnum = Z_OK;
    gzerror(f, &errnum);
    if (errnum == Z_BUF_ERROR)
        return FEDGE_ERR_DATA_TRUNCATED; /* gzip stream ends mid-member */
    if (errnum == Z_DATA_ERROR)
        return FEDGE_ERR_DATA_FORMAT;
    return FEDGE_ERR_IO;
}

/* Reads up to len bytes; *got is how many arrived before end of file. */
static int gz_read_some(gzFile f, uint8_t *dst, size_t len, size_t *got)
{
    *got = 0;
    while (*got < len) {
        size_t want = len - *got < READ_CHUNK ? len - *got : READ_CHUNK;
        int r = gzread(f, dst + *got, (unsigned)want);
        if (r < 0)
            return gz_status(f);
        if (r == 0)
            break;
        *got += (size_t)r;
    }
    return FEDGE_OK;
}

static int gz_read_exact(gzFile f, uint8_t *dst, size_t len)
{
    size_t got;
    int ret = gz_read_some(f, dst, len, &got);
    if (ret != FEDGE_OK)
        return ret;
    return got == len ? FEDGE_OK : FEDGE_ERR_DATA_TRUNCATED;
}

/* Exactly len more bytes then end of file, into a malloc'd buffer (caller frees). */
static int gz_read_payload(gzFile f, size_t len, uint8_t **out)
{
    int ret = FEDGE_OK;
    size_t cap = len < FIRST_ALLOC ? len : FIRST_ALLOC;
    size_t have = 0;
    uint8_t *buf = malloc(cap);
    if (buf == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    while (have < len) {
        if (have == cap) {
            size_t ncap = cap > len / 2 ? len : cap * 2;
            uint8_t *nb = realloc(buf, ncap);
            if (nb == NULL)
                FAIL(FEDGE_ERR_NOMEM);
            buf = nb;
            cap = ncap;
        }
        size_t got;
        CHK(gz_read_some(f, buf + have, cap - have, &got));
        if (got < cap - have)
            FAIL(FEDGE_ERR_DATA_TRUNCATED);
        have += got;
    }
    uint8_t extra;
    size_t got;
    CHK(gz_read_some(f, &extra, 1, &got));
    if (got != 0)
        FAIL(FEDGE_ERR_DATA_FORMAT); /* bytes after the declared payload */
    *out = buf;
    buf = NULL;
cleanup:
    free(buf);
    return ret;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int gz_open(const char *path, gzFile *out)
{
    int fd = -1;
    *out = NULL;
    int ret = fedge_open_regular(path, 0, &fd, NULL);
    if (ret != FEDGE_OK)
        return ret == FEDGE_ERR_IO && errno == ENOENT ? FEDGE_ERR_NOT_FOUND : ret;
    *out = gzdopen(fd, "rb");
    if (*out == NULL) {
        close(fd);
        return FEDGE_ERR_NOMEM;
    }
    return FEDGE_OK;
}

/* Reads an IDX header with the given magic and `rank` dimensions. */
static int idx_header(gzFile f, uint32_t magic, int rank, uint32_t dims[3])
{
    uint8_t hdr[16];
    int ret = gz_read_exact(f, hdr, 4 + 4 * (size_t)rank);
    if (ret != FEDGE_OK)
        return ret;
    if (be32(hdr) != magic)
        return FEDGE_ERR_DATA_FORMAT;
    for (int i = 0; i < rank; i++) {
        dims[i] = be32(hdr + 4 + 4 * i);
        if (dims[i] == 0)
            return FEDGE_ERR_RANGE;
    }
    if (dims[0] > FEDGE_DATASET_MAX_ROWS)
        return FEDGE_ERR_RANGE;
    if (rank == 3 && (uint64_t)dims[1] * dims[2] > FEDGE_DATASET_MAX_DIM)
        return FEDGE_ERR_RANGE;
    return FEDGE_OK;
}

int fedge_dataset_load_idx(fedge_dataset *ds, const char *images_path, const char *labels_path)
{
    if (ds == NULL || images_path == NULL || labels_path == NULL)
        return FEDGE_ERR_INVALID_ARG;
    int ret = FEDGE_OK;
    gzFile fi = NULL, fl = NULL;
    uint8_t *pixels = NULL, *labels = NULL;
    float *x = NULL;
    uint32_t di[3], dl[3];

    CHK(gz_open(images_path, &fi));
    CHK(gz_open(labels_path, &fl));
    CHK(idx_header(fi, IDX_MAGIC_IMAGES, 3, di));
    CHK(idx_header(fl, IDX_MAGIC_LABELS, 1, dl));
    if (di[0] != dl[0])
        FAIL(FEDGE_ERR_DATA_MISMATCH);

    size_t n = di[0];
    size_t dim = (size_t)di[1] * di[2];
    CHK(gz_read_payload(fl, n, &labels));
    CHK(gz_read_payload(fi, n * dim, &pixels));

    x = malloc(n * dim * sizeof(float));
    if (x == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < n * dim; i++)
        x[i] = (float)pixels[i] * (1.0f / 255.0f);

    ds->n = n;
    ds->dim = (int)dim;
    ds->n_classes = n_classes_of(labels, n);
    ds->x = x;
    ds->y = labels;
    x = NULL;
    labels = NULL;
cleanup:
    if (fi != NULL)
        gzclose(fi);
    if (fl != NULL)
        gzclose(fl);
    free(pixels);
    free(labels);
    free(x);
    return ret;
}

int fedge_dataset_load_fashion_mnist(fedge_dataset *ds, const char *dir, int train)
{
    if (ds == NULL)
        return FEDGE_ERR_INVALID_ARG;
    const char *base = dir != NULL ? dir : FEDGE_FASHION_MNIST_DIR;
    const char *prefix = train ? "train" : "t10k";
    char images[4096], labels[4096];
    int a = snprintf(images, sizeof images, "%s/%s-images-idx3-ubyte.gz", base, prefix);
    int b = snprintf(labels, sizeof labels, "%s/%s-labels-idx1-ubyte.gz", base, prefix);
    if (a < 0 || b < 0 || (size_t)a >= sizeof images || (size_t)b >= sizeof labels)
        return FEDGE_ERR_INVALID_ARG;
    return fedge_dataset_load_idx(ds, images, labels);
}

/* ---- CSV ---------------------------------------------------------------- */

/* Label field: an integer 0..255. */
static int csv_label(const char *p, const char **end, uint8_t *out)
{
    char *e;
    errno = 0;
    long v = strtol(p, &e, 10);
    if (e == p || (*e != ',' && *e != '\0'))
        return FEDGE_ERR_DATA_LABEL;
    if (errno != 0 || v < 0 || v > 255)
        return FEDGE_ERR_DATA_LABEL;
    *out = (uint8_t)v;
    *end = e;
    return FEDGE_OK;
}

static int is_numeric_field(const char *p)
{
    char *e;
    strtod(p, &e);
    while (*e == ' ' || *e == '\t')
        e++;
    return e != p && (*e == ',' || *e == '\0');
}

int fedge_dataset_load_csv(fedge_dataset *ds, const char *path)
{
    if (ds == NULL || path == NULL)
        return FEDGE_ERR_INVALID_ARG;
    int ret = FEDGE_OK;
    FILE *f = NULL;
    char *line = NULL;
    size_t line_cap = 0;
    float *x = NULL;
    uint8_t *y = NULL;
    size_t n = 0, cap_rows = 0;
    int dim = 0;
    float *row = NULL;
    int first = 1;

    ret = fedge_fopen_regular(path, 0, &f, NULL);
    if (ret == FEDGE_ERR_IO && errno == ENOENT)
        ret = FEDGE_ERR_NOT_FOUND;
    if (ret != FEDGE_OK)
        goto cleanup;

    for (;;) {
        errno = 0;
        ssize_t len = getline(&line, &line_cap, f);
        if (len < 0) {
            if (errno != 0 || ferror(f))
                FAIL(FEDGE_ERR_IO);
            break;
        }
        if ((size_t)len > CSV_MAX_LINE)
            FAIL(FEDGE_ERR_DATA_FORMAT);
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        if (memchr(line, '\0', (size_t)len) != NULL)
            FAIL(FEDGE_ERR_DATA_FORMAT);
        if (first) {
            first = 0;
            if (!is_numeric_field(line))
                continue; /* header line */
        }

        const char *p = line;
        uint8_t label;
        CHK(csv_label(p, &p, &label));

        /* Parse the features into a row buffer sized by the first data row. */
        int cols = 0;
        if (dim == 0) {
            for (const char *q = p; *q; q++)
                cols += *q == ',';
            if (cols < 1 || (unsigned)cols > FEDGE_DATASET_MAX_DIM)
                FAIL(FEDGE_ERR_DATA_FORMAT);
            dim = cols;
            cols = 0;
        }
        if (n == cap_rows) {
            if (n >= FEDGE_DATASET_MAX_ROWS)
                FAIL(FEDGE_ERR_RANGE);
            size_t ncap = cap_rows == 0 ? 1024 : cap_rows * 2;
            if (ncap > FEDGE_DATASET_MAX_ROWS)
                ncap = FEDGE_DATASET_MAX_ROWS;
            float *nx = realloc(x, ncap * (size_t)dim * sizeof(float));
            if (nx == NULL)
                FAIL(FEDGE_ERR_NOMEM);
            x = nx;
            uint8_t *ny = realloc(y, ncap);
            if (ny == NULL)
                FAIL(FEDGE_ERR_NOMEM);
            y = ny;
            cap_rows = ncap;
        }
        row = x + n * (size_t)dim;
        while (*p == ',') {
            p++;
            if (cols == dim)
                FAIL(FEDGE_ERR_DATA_FORMAT); /* more columns than the first row */
            char *e;
            float v = strtof(p, &e);
            if (e == p)
                FAIL(FEDGE_ERR_DATA_FORMAT);
            while (*e == ' ' || *e == '\t')
                e++;
            if ((*e != ',' && *e != '\0') || !isfinite(v))
                FAIL(FEDGE_ERR_DATA_FORMAT);
            row[cols++] = v;
            p = e;
        }
        if (*p != '\0' || cols != dim)
            FAIL(FEDGE_ERR_DATA_FORMAT);
        y[n++] = label;
    }
    if (n == 0)
        FAIL(FEDGE_ERR_DATA_FORMAT);

    ds->n = n;
    ds->dim = dim;
    ds->n_classes = n_classes_of(y, n);
    ds->x = x;
    ds->y = y;
    x = NULL;
    y = NULL;
cleanup:
    if (f != NULL)
        fclose(f);
    free(line);
    free(x);
    free(y);
    return ret;
}

/* ---- transforms and views ----------------------------------------------- */

void fedge_dataset_stats(const fedge_dataset *ds, float *mean, float *std)
{
    double sum = 0.0, sq = 0.0;
    size_t count = ds != NULL && ds->x != NULL ? ds->n * (size_t)ds->dim : 0;
    for (size_t i = 0; i < count; i++)
        sum += ds->x[i];
    double mu = count > 0 ? sum / (double)count : 0.0;
    for (size_t i = 0; i < count; i++) {
        double d = ds->x[i] - mu;
        sq += d * d;
    }
    double sd = count > 0 ? sqrt(sq / (double)count) : 0.0;
    if (mean != NULL)
        *mean = (float)mu;
    if (std != NULL)
        *std = sd > 1e-12 ? (float)sd : 1.0f;
}

void fedge_dataset_normalize(fedge_dataset *ds, float mean, float std)
{
    if (ds == NULL || ds->x == NULL)
        return;
    float inv = std > 0.0f && isfinite(std) ? 1.0f / std : 1.0f;
    size_t count = ds->n * (size_t)ds->dim;
    for (size_t i = 0; i < count; i++)
        ds->x[i] = (ds->x[i] - mean) * inv;
}

fedge_dataset fedge_dataset_head(const fedge_dataset *ds, size_t n)
{
    fedge_dataset v = *ds;
    if (n < v.n)
        v.n = n;
    return v;
}

void fedge_dataset_free(fedge_dataset *ds)
{
    if (ds == NULL)
        return;
    free(ds->x);
    free(ds->y);
    memset(ds, 0, sizeof *ds);
}
