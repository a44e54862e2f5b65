/* shard.c — shard files: atomic writer, streaming reader, verify, load.
 * Layout and contract in shard.h. */
#include "shard.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


#include "bytes.h"
#include "common.h"
#include "crypto.h"
#include "fileio.h"

#define SHARD_MAGIC "FSHD"
#define SHARD_VERSION 1u
#define SHARD_HEADER_LEN 32u
#define SHARD_HASH_LEN 32u
#define SHARD_MAX_CLASSES 256
#define SHARD_IO_CHUNK 65536u
#define SHARD_CHECK_CHUNK 4096u /* fedge_shard_verify's read block (an edge's start-up) */
#define FEISTEL_ROUNDS 6

typedef struct {
    uint64_t n;
    uint32_t dim;
    uint32_t n_classes;
    uint32_t feature_type;
    size_t record_size;
    uint64_t file_size;
} shard_header;

static size_t feature_size(int feature_type)
{
    return feature_type == FEDGE_SHARD_F32 ? 4u : 1u;
}

/* ---- raw I/O -------------------------------------------------------------- */

/* A short read means the file shrank after it was validated. */
static int pread_all(int fd, uint8_t *buf, size_t len, uint64_t off)
{
    return fedge_pread_all(fd, buf, len, off, FEDGE_ERR_SHARD_TRUNCATED);
}

static int sha_update(fedge_sha256_ctx *sha, const uint8_t *buf, size_t len)
{
    return fedge_sha256_update(sha, buf, len);
}

/* ---- header --------------------------------------------------------------- */

static void encode_header(uint8_t out[SHARD_HEADER_LEN], uint64_t n, int dim, int n_classes,
                          int feature_type)
{
    memcpy(out, SHARD_MAGIC, 4);
    fedge_put_u32(out + 4, SHARD_VERSION);
    fedge_put_u64(out + 8, n);
    fedge_put_u32(out + 16, (uint32_t)dim);
    fedge_put_u32(out + 20, (uint32_t)n_classes);
    fedge_put_u32(out + 24, (uint32_t)feature_type);
    fedge_put_u32(out + 28, 0);
}

/* Validates the header fields and that the file length is exactly
 * header + n * record + hash, before anything else trusts them. */
static int decode_header(const uint8_t *buf, size_t got, uint64_t file_size, shard_header *h)
{
    if (got < 4)
        return FEDGE_ERR_SHARD_TRUNCATED;
    if (memcmp(buf, SHARD_MAGIC, 4) != 0)
        return FEDGE_ERR_SHARD_MAGIC;
    if (got < 8)
        return FEDGE_ERR_SHARD_TRUNCATED;
    if (fedge_get_u32(buf + 4) != SHARD_VERSION)
        return FEDGE_ERR_SHARD_VERSION;
    if (got < SHARD_HEADER_LEN)
        return FEDGE_ERR_SHARD_TRUNCATED;

    h->n = fedge_get_u64(buf + 8);
    h->dim = fedge_get_u32(buf + 16);
    h->n_classes = fedge_get_u32(buf + 20);
    h->feature_type = fedge_get_u32(buf + 24);
    if (h->n == 0 || h->n > FEDGE_DATASET_MAX_ROWS || h->dim == 0 ||
        h->dim > FEDGE_DATASET_MAX_DIM || h->n_classes == 0 ||
        h->n_classes > SHARD_MAX_CLASSES ||
        (h->feature_type != FEDGE_SHARD_U8 && h->feature_type != FEDGE_SHARD_F32) ||
        fedge_get_u32(buf + 28) != 0)
        return FEDGE_ERR_SHARD_HEADER;

    /* Bounded by the limits above: n * record < 2^27 * 2^19, no overflow. */
    h->record_size = 1 + (size_t)h->dim * feature_size((int)h->feature_type);
    uint64_t expect = SHARD_HEADER_LEN + h->n * (uint64_t)h->record_size + SHARD_HASH_LEN;
    if (file_size < expect)
        return FEDGE_ERR_SHARD_TRUNCATED;
    if (file_size > expect)
        return FEDGE_ERR_SHARD_OVERSIZED;
    h->file_size = file_size;
    return FEDGE_OK;
}

static int open_validated(const char *path, int *fd_out, shard_header *h)
{
    int ret = FEDGE_OK;
    int fd = -1;
    uint8_t buf[SHARD_HEADER_LEN];
    struct stat st;

    *fd_out = -1;
    if (!path || !h)
        return FEDGE_ERR_INVALID_ARG;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        FAIL(errno == ENOENT ? FEDGE_ERR_NOT_FOUND : FEDGE_ERR_IO);
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        FAIL(FEDGE_ERR_IO);

    size_t want = (uint64_t)st.st_size < SHARD_HEADER_LEN ? (size_t)st.st_size : SHARD_HEADER_LEN;
    CHK(pread_all(fd, buf, want, 0));
    CHK(decode_header(buf, want, (uint64_t)st.st_size, h));
    *fd_out = fd;
    fd = -1;

cleanup:
    if (fd >= 0)
        close(fd);
    return ret;
}

/* ---- record decoding ------------------------------------------------------ */

static int decode_record(const uint8_t *rec, int dim, int n_classes, int feature_type,
                         float *x, uint8_t *y)
{
    if (rec[0] >= n_classes)
        return FEDGE_ERR_DATA_LABEL;
    *y = rec[0];
    if (feature_type == FEDGE_SHARD_U8) {
        for (int j = 0; j < dim; j++)
            x[j] = (float)rec[1 + j] * FEDGE_SHARD_U8_SCALE;
    } else {
        for (int j = 0; j < dim; j++) {
            float v = fedge_get_f32(rec + 1 + 4 * (size_t)j);
            if (!isfinite(v))
                return FEDGE_ERR_DATA_FORMAT;
            x[j] = v;
        }
    }
    return FEDGE_OK;
}

static int encode_record(uint8_t *rec, const float *x, uint8_t y, int dim, int feature_type)
{
    rec[0] = y;
    if (feature_type == FEDGE_SHARD_U8) {
        for (int j = 0; j < dim; j++) {
            if (!(x[j] >= 0.0f && x[j] <= 1.0f))
                return FEDGE_ERR_RANGE;
            rec[1 + j] = (uint8_t)lrintf(x[j] * 255.0f);
        }
    } else {
        for (int j = 0; j < dim; j++) {
            if (!isfinite(x[j]))
                return FEDGE_ERR_RANGE;
            fedge_put_f32(rec + 1 + 4 * (size_t)j, x[j]);
        }
    }
    return FEDGE_OK;
}

/* ---- writer --------------------------------------------------------------- */

int fedge_shard_write(const char *path, const fedge_dataset *ds, const size_t *idx,
                      size_t count, int feature_type)
{
    int ret = FEDGE_OK;
    fedge_atomic_file out = {0};
    uint8_t *buf = NULL;
    uint8_t header[SHARD_HEADER_LEN], digest[SHARD_HASH_LEN];
    fedge_sha256_ctx sha = {0};

    if (!path || !ds || !ds->x || !ds->y || (!idx && count > 0))
        FAIL(FEDGE_ERR_INVALID_ARG);
    if (feature_type != FEDGE_SHARD_U8 && feature_type != FEDGE_SHARD_F32)
        FAIL(FEDGE_ERR_INVALID_ARG);
    if (count == 0 || count > FEDGE_DATASET_MAX_ROWS || ds->dim <= 0 ||
        (unsigned)ds->dim > FEDGE_DATASET_MAX_DIM || ds->n_classes <= 0 ||
        ds->n_classes > SHARD_MAX_CLASSES)
        FAIL(FEDGE_ERR_RANGE);

    const int dim = ds->dim;
    const size_t rec_size = 1 + (size_t)dim * feature_size(feature_type);
    const size_t per_chunk = rec_size >= SHARD_IO_CHUNK ? 1 : SHARD_IO_CHUNK / rec_size;
    buf = malloc(per_chunk * rec_size);
    if (!buf)
        FAIL(FEDGE_ERR_NOMEM);

    /* Validate every row before creating anything, so a bad call leaves the
     * destination untouched. */
    for (size_t i = 0; i < count; i++) {
        if (idx[i] >= ds->n)
            FAIL(FEDGE_ERR_RANGE);
        if (ds->y[idx[i]] >= ds->n_classes)
            FAIL(FEDGE_ERR_DATA_LABEL);
        CHK(encode_record(buf, ds->x + idx[i] * (size_t)dim, ds->y[idx[i]], dim, feature_type));
    }

    ret = fedge_atomic_open(path, 0644, 0, &out);
    if (ret == FEDGE_ERR_IO && errno == ENOENT)
        ret = FEDGE_ERR_NOT_FOUND; /* no such directory */
    if (ret != FEDGE_OK)
        goto cleanup;

    CHK(fedge_sha256_init(&sha));
    encode_header(header, count, dim, ds->n_classes, feature_type);
    CHK(sha_update(&sha, header, sizeof header));
    CHK(fedge_write_all(out.fd, header, sizeof header));

    for (size_t i = 0; i < count; i += per_chunk) {
        size_t m = count - i < per_chunk ? count - i : per_chunk;
        for (size_t k = 0; k < m; k++) {
            size_t row = idx[i + k];
            CHK(encode_record(buf + k * rec_size, ds->x + row * (size_t)dim, ds->y[row], dim,
                              feature_type));
        }
        CHK(sha_update(&sha, buf, m * rec_size));
        CHK(fedge_write_all(out.fd, buf, m * rec_size));
    }
    CHK(fedge_sha256_final(&sha, digest));
    CHK(fedge_write_all(out.fd, digest, sizeof digest));
    CHK(fedge_atomic_commit(&out));

cleanup:
    fedge_atomic_abort(&out);
    free(buf);
    fedge_sha256_free(&sha);
    return ret;
}

/* ---- reader --------------------------------------------------------------- */

static void reader_reset(fedge_shard_reader *r)
{
    memset(r, 0, sizeof *r);
    r->fd = -1;
}

int fedge_shard_open(fedge_shard_reader *r, const char *path)
{
    int ret = FEDGE_OK;
    int fd = -1;
    shard_header h;

    if (!r)
        return FEDGE_ERR_INVALID_ARG;
    reader_reset(r);
    CHK(open_validated(path, &fd, &h));
    r->record = malloc(h.record_size);
    if (!r->record)
        FAIL(FEDGE_ERR_NOMEM);
    r->fd = fd;
    fd = -1;
    r->n = h.n;
    r->dim = (int)h.dim;
    r->n_classes = (int)h.n_classes;
    r->feature_type = (int)h.feature_type;
    r->record_size = h.record_size;
    fedge_shard_rewind(r, 0, 0);

cleanup:
    if (fd >= 0)
        close(fd);
    if (ret != FEDGE_OK) {
        free(r->record);
        reader_reset(r);
    }
    return ret;
}

void fedge_shard_close(fedge_shard_reader *r)
{
    if (!r)
        return;
    if (r->fd >= 0)
        close(r->fd);
    free(r->record);
    reader_reset(r);
}

/* splitmix64's finaliser: a bijection on 64-bit values. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void fedge_shard_rewind(fedge_shard_reader *r, int shuffle, uint64_t seed)
{
    if (!r)
        return;
    r->pos = 0;
    r->shuffle = shuffle != 0;
    r->epoch_key = mix64(seed ^ 0x5348524446454447ull);
}

/* A balanced Feistel network over 2 * half_bits bits is a bijection for any
 * round function; cycle walking restricts it to [0, n) (the domain is < 4n,
 * so fewer than 4 steps are expected). */
static uint64_t permute_index(uint64_t i, uint64_t n, const uint64_t keys[FEISTEL_ROUNDS],
                              unsigned half_bits)
{
    const uint64_t mask = (1ull << half_bits) - 1;
    do {
        uint64_t l = i >> half_bits, rr = i & mask;
        for (int k = 0; k < FEISTEL_ROUNDS; k++) {
            uint64_t t = l ^ (mix64(rr ^ keys[k]) & mask);
            l = rr;
            rr = t;
        }
        i = (l << half_bits) | rr;
    } while (i >= n);
    return i;
}

/* Rows into x as floats (xf) or, for a u8 shard, as stored (xu). */
static int next_batch(fedge_shard_reader *r, int batch, float *xf, uint8_t *xu, uint8_t *y,
                      int *got)
{
    int ret = FEDGE_OK;
    uint64_t keys[FEISTEL_ROUNDS];
    unsigned bits = 0, half_bits;
    int m = 0;

    if (got)
        *got = 0;
    if (!r || !got || batch <= 0 || (!xf && !xu) || !y)
        return FEDGE_ERR_INVALID_ARG;
    if (r->fd < 0 || !r->record || (xu && r->feature_type != FEDGE_SHARD_U8))
        return FEDGE_ERR_STATE;

    while (bits < 64 && (1ull << bits) < r->n)
        bits++;
    half_bits = bits < 2 ? 1 : (bits + 1) / 2;
    for (int k = 0; k < FEISTEL_ROUNDS; k++)
        keys[k] = mix64(r->epoch_key + (uint64_t)(k + 1) * 0x9e3779b97f4a7c15ull);

    while (m < batch && r->pos < r->n) {
        uint64_t rec = r->shuffle ? permute_index(r->pos, r->n, keys, half_bits) : r->pos;
        CHK(pread_all(r->fd, r->record, r->record_size,
                      SHARD_HEADER_LEN + rec * (uint64_t)r->record_size));
        if (xu) {
            if (r->record[0] >= r->n_classes)
                FAIL(FEDGE_ERR_DATA_LABEL);
            y[m] = r->record[0];
            memcpy(xu + (size_t)m * (size_t)r->dim, r->record + 1, (size_t)r->dim);
        } else {
            CHK(decode_record(r->record, r->dim, r->n_classes, r->feature_type,
                              xf + (size_t)m * (size_t)r->dim, &y[m]));
        }
        r->pos++;
        m++;
    }

cleanup:
    *got = m;
    return ret;
}

int fedge_shard_next_batch(fedge_shard_reader *r, int batch, float *x, uint8_t *y, int *got)
{
    if (!x) {
        if (got)
            *got = 0;
        return FEDGE_ERR_INVALID_ARG;
    }
    return next_batch(r, batch, x, NULL, y, got);
}

int fedge_shard_next_batch_u8(fedge_shard_reader *r, int batch, uint8_t *x, uint8_t *y, int *got)
{
    if (!x) {
        if (got)
            *got = 0;
        return FEDGE_ERR_INVALID_ARG;
    }
    return next_batch(r, batch, NULL, x, y, got);
}

/* ---- verify and load ------------------------------------------------------ */

/* Streams the file once, hashing everything before the trailer, and hands
 * each run of whole records to `sink` (if set). A checksum mismatch is
 * reported ahead of any error the sink found in the (corrupt) records. */
typedef int (*record_sink)(void *ctx, const uint8_t *recs, size_t count);

static int stream_and_check(int fd, const shard_header *h, record_sink sink, void *ctx)
{
    int ret = FEDGE_OK, sink_ret = FEDGE_OK;
    uint8_t header[SHARD_HEADER_LEN], digest[SHARD_HASH_LEN], stored[SHARD_HASH_LEN];
    uint8_t *buf = NULL;
    fedge_sha256_ctx sha = {0};
    const size_t io = sink ? SHARD_IO_CHUNK : SHARD_CHECK_CHUNK;
    const size_t per_chunk = h->record_size >= io ? 1 : io / h->record_size;

    buf = malloc(per_chunk * h->record_size);
    if (!buf)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(fedge_sha256_init(&sha));
    CHK(pread_all(fd, header, sizeof header, 0));
    CHK(sha_update(&sha, header, sizeof header));
    for (uint64_t i = 0; i < h->n; i += per_chunk) {
        size_t m = h->n - i < per_chunk ? (size_t)(h->n - i) : per_chunk;
        CHK(pread_all(fd, buf, m * h->record_size, SHARD_HEADER_LEN + i * h->record_size));
        CHK(sha_update(&sha, buf, m * h->record_size));
        if (sink && sink_ret == FEDGE_OK)
            sink_ret = sink(ctx, buf, m);
    }
    CHK(fedge_sha256_final(&sha, digest));
    CHK(pread_all(fd, stored, sizeof stored, h->file_size - SHARD_HASH_LEN));
    uint8_t diff = 0;
    for (size_t i = 0; i < SHARD_HASH_LEN; i++)
        diff |= (uint8_t)(digest[i] ^ stored[i]);
    if (diff != 0)
        FAIL(FEDGE_ERR_SHARD_CHECKSUM);
    ret = sink_ret;

cleanup:
    free(buf);
    fedge_sha256_free(&sha);
    return ret;
}

size_t fedge_shard_verify_bytes(size_t record_size)
{
    if (record_size == 0)
        return 0;
    return record_size >= SHARD_CHECK_CHUNK ? record_size
                                            : SHARD_CHECK_CHUNK / record_size * record_size;
}

int fedge_shard_verify(const char *path)
{
    int ret = FEDGE_OK;
    int fd = -1;
    shard_header h;

    CHK(open_validated(path, &fd, &h));
    CHK(stream_and_check(fd, &h, NULL, NULL));

cleanup:
    if (fd >= 0)
        close(fd);
    return ret;
}

typedef struct {
    fedge_dataset *ds;
    const shard_header *h;
    size_t row;
} load_ctx;

static int load_sink(void *vctx, const uint8_t *recs, size_t count)
{
    load_ctx *c = vctx;
    const int dim = (int)c->h->dim;
    for (size_t k = 0; k < count; k++, c->row++) {
        int ret = decode_record(recs + k * c->h->record_size, dim, (int)c->h->n_classes,
                                (int)c->h->feature_type, c->ds->x + c->row * (size_t)dim,
                                &c->ds->y[c->row]);
        if (ret != FEDGE_OK)
            return ret;
    }
    return FEDGE_OK;
}

int fedge_shard_load(const char *path, fedge_dataset *ds)
{
    int ret = FEDGE_OK;
    int fd = -1;
    shard_header h;
    fedge_dataset tmp = {0};

    if (!ds)
        return FEDGE_ERR_INVALID_ARG;
    CHK(open_validated(path, &fd, &h));
    /* Sizes are bounded by the file length just validated. */
    tmp.n = (size_t)h.n;
    tmp.dim = (int)h.dim;
    tmp.n_classes = (int)h.n_classes;
    tmp.x = malloc(tmp.n * (size_t)tmp.dim * sizeof(float));
    tmp.y = malloc(tmp.n);
    if (!tmp.x || !tmp.y)
        FAIL(FEDGE_ERR_NOMEM);
    load_ctx ctx = {.ds = &tmp, .h = &h, .row = 0};
    CHK(stream_and_check(fd, &h, load_sink, &ctx));
    *ds = tmp;
    memset(&tmp, 0, sizeof tmp);

cleanup:
    if (fd >= 0)
        close(fd);
    free(tmp.x);
    free(tmp.y);
    return ret;
}
