/* npz.c — NumPy .npz writer (npz.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "common.h"
#include "npz.h"

#define NPY_ALIGN 64
#define NPZ_MAX_ENTRIES (MDL_MAX_TENSORS + 2)
#define NPZ_NAME_MAX 48

typedef struct {
    char name[NPZ_NAME_MAX];
    uint32_t crc, size, offset;
} zentry;

typedef struct {
    uint8_t *buf;
    size_t len, cap;
} bytes;

static int grow(bytes *b, size_t more)
{
    if (b->len + more <= b->cap)
        return FEDGE_OK;
    if (more > SIZE_MAX / 2 - b->len)
        return FEDGE_ERR_RANGE;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    uint8_t *nb = realloc(b->buf, cap);
    if (nb == NULL)
        return FEDGE_ERR_NOMEM;
    b->buf = nb;
    b->cap = cap;
    return FEDGE_OK;
}

static int put(bytes *b, const void *p, size_t n)
{
    int ret = grow(b, n);
    if (ret == FEDGE_OK && n > 0) {
        memcpy(b->buf + b->len, p, n);
        b->len += n;
    }
    return ret;
}

static int put16(bytes *b, uint32_t v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    return put(b, x, 2);
}

static int put32(bytes *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return put(b, x, 4);
}

/* .npy 1.0 header for descr and shape text, padded so the data starts at a
 * multiple of NPY_ALIGN. */
static int npy_header(bytes *b, const char *descr, const char *shape)
{
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                     descr, shape);
    if (n < 0 || (size_t)n >= sizeof dict)
        return FEDGE_ERR_INTERNAL;
    size_t hl = (size_t)n + 1; /* with the final '\n' */
    while ((10 + hl) % NPY_ALIGN != 0)
        hl++;
    int ret;
    static const uint8_t magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    if ((ret = put(b, magic, 8)) != FEDGE_OK || (ret = put16(b, (uint32_t)hl)) != FEDGE_OK ||
        (ret = put(b, dict, (size_t)n)) != FEDGE_OK)
        return ret;
    for (size_t i = (size_t)n; i + 1 < hl; i++)
        if ((ret = put(b, " ", 1)) != FEDGE_OK)
            return ret;
    return put(b, "\n", 1);
}

static int local_header(bytes *z, zentry *e, size_t start, size_t data_len)
{
    if (start > UINT32_MAX || data_len > UINT32_MAX - 1)
        return FEDGE_ERR_RANGE;
    e->offset = (uint32_t)start;
    e->size = (uint32_t)data_len;
    int ret = FEDGE_OK;
    size_t nl = strlen(e->name);
    CHK(put32(z, 0x04034b50));
    CHK(put16(z, 20));          /* version needed */
    CHK(put16(z, 0));           /* flags */
    CHK(put16(z, 0));           /* stored */
    CHK(put16(z, 0));           /* time */
    CHK(put16(z, (1 << 5) | 1)); /* date 1980-01-01 */
    CHK(put32(z, e->crc));
    CHK(put32(z, e->size));
    CHK(put32(z, e->size));
    CHK(put16(z, (uint32_t)nl));
    CHK(put16(z, 0));
    CHK(put(z, e->name, nl));
cleanup:
    return ret;
}

/* One entry: the .npy bytes built in npy, appended to the archive. */
static int add_entry(bytes *z, zentry *e, const char *name, const bytes *npy)
{
    snprintf(e->name, sizeof e->name, "%s.npy", name);
    size_t off = 0;
    uLong crc = crc32(0L, Z_NULL, 0);
    while (off < npy->len) {
        size_t k = npy->len - off > (1u << 30) ? (1u << 30) : npy->len - off;
        crc = crc32(crc, npy->buf + off, (uInt)k);
        off += k;
    }
    e->crc = (uint32_t)crc;
    int ret = local_header(z, e, z->len, npy->len);
    if (ret == FEDGE_OK)
        ret = put(z, npy->buf, npy->len);
    return ret;
}

static int unicode_scalar(bytes *npy, const char *s)
{
    char descr[32];
    size_t n = strlen(s);
    snprintf(descr, sizeof descr, "<U%zu", n > 0 ? n : 1);
    int ret = npy_header(npy, descr, "()");
    for (size_t i = 0; ret == FEDGE_OK && i < (n > 0 ? n : 1); i++)
        ret = put32(npy, n > 0 ? (uint8_t)s[i] : 0);
    return ret;
}

int mdl_npz_encode(const mdl_view *v, const float *params, const char *version_hex,
                   uint8_t **out, size_t *out_len)
{
    if (v == NULL || params == NULL || out == NULL || out_len == NULL)
        return FEDGE_ERR_INVALID_ARG;
    int ret = FEDGE_OK;
    bytes z = {0}, npy = {0};
    zentry ent[NPZ_MAX_ENTRIES];
    int n = 0;
    for (int i = 0; i < v->n_tensors; i++) {
        const mdl_tensor *t = &v->tensor[i];
        char shape[128];
        size_t sl = 0;
        sl += (size_t)snprintf(shape, sizeof shape, "(");
        for (int d = 0; d < t->rank; d++)
            sl += (size_t)snprintf(shape + sl, sizeof shape - sl, "%s%lld", d ? ", " : "",
                                   (long long)t->shape[d]);
        snprintf(shape + sl, sizeof shape - sl, t->rank == 1 ? ",)" : ")"); /* numpy's repr */
        npy.len = 0;
        CHK(npy_header(&npy, "<f4", shape));
        CHK(grow(&npy, t->count * 4));
        for (size_t k = 0; k < t->count; k++) {
            uint32_t u;
            memcpy(&u, &params[t->offset + k], 4);
            CHK(put32(&npy, u));
        }
        CHK(add_entry(&z, &ent[n++], t->name, &npy));
    }
    npy.len = 0;
    CHK(unicode_scalar(&npy, v->spec_text));
    CHK(add_entry(&z, &ent[n++], "fedge.spec", &npy));
    if (version_hex != NULL) {
        npy.len = 0;
        CHK(unicode_scalar(&npy, version_hex));
        CHK(add_entry(&z, &ent[n++], "fedge.version", &npy));
    }
    size_t cd_start = z.len;
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(ent[i].name);
        CHK(put32(&z, 0x02014b50));
        CHK(put16(&z, 20));  /* made by */
        CHK(put16(&z, 20));  /* needed */
        CHK(put16(&z, 0));
        CHK(put16(&z, 0));
        CHK(put16(&z, 0));
        CHK(put16(&z, (1 << 5) | 1));
        CHK(put32(&z, ent[i].crc));
        CHK(put32(&z, ent[i].size));
        CHK(put32(&z, ent[i].size));
        CHK(put16(&z, (uint32_t)nl));
        CHK(put16(&z, 0)); /* extra */
        CHK(put16(&z, 0)); /* comment */
        CHK(put16(&z, 0)); /* disk */
        CHK(put16(&z, 0)); /* internal attrs */
        CHK(put32(&z, 0)); /* external attrs */
        CHK(put32(&z, ent[i].offset));
        CHK(put(&z, ent[i].name, nl));
    }
    size_t cd_len = z.len - cd_start;
    if (z.len > UINT32_MAX || cd_start > UINT32_MAX)
        FAIL(FEDGE_ERR_RANGE);
    CHK(put32(&z, 0x06054b50));
    CHK(put16(&z, 0));
    CHK(put16(&z, 0));
    CHK(put16(&z, (uint32_t)n));
    CHK(put16(&z, (uint32_t)n));
    CHK(put32(&z, (uint32_t)cd_len));
    CHK(put32(&z, (uint32_t)cd_start));
    CHK(put16(&z, 0));
    *out = z.buf;
    *out_len = z.len;
    z.buf = NULL;
cleanup:
    free(z.buf);
    free(npy.buf);
    return ret;
}
