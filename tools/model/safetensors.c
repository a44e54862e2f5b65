/* safetensors.c — safetensors writer and strict reader (safetensors.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"
#include "safetensors.h"

#define META_KEY_MAX 256
#define META_VALUE_MAX 4096
#define TENSOR_KEY_MAX 256
#define SHAPE_MAX_RANK 8

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static float get_le_f32(const uint8_t *p)
{
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void put_le_f32(uint8_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    p[0] = (uint8_t)u, p[1] = (uint8_t)(u >> 8), p[2] = (uint8_t)(u >> 16), p[3] = (uint8_t)(u >> 24);
}

/* ---- encode --------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
} sbuf;

__attribute__((format(printf, 2, 3))) static int sb_printf(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf ? b->buf + b->len : NULL, b->buf ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return FEDGE_ERR_INTERNAL;
        if (b->buf != NULL && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return FEDGE_OK;
        }
        size_t want = b->len + (size_t)n + 1;
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < want)
            cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (nb == NULL)
            return FEDGE_ERR_NOMEM;
        b->buf = nb;
        b->cap = cap;
    }
}

int mdl_st_encode(const mdl_view *v, const float *params, const char *version_hex,
                  uint8_t **out, size_t *out_len)
{
    if (v == NULL || params == NULL || out == NULL || out_len == NULL)
        return FEDGE_ERR_INVALID_ARG;
    int ret = FEDGE_OK;
    sbuf h = {0};
    uint8_t *file = NULL;
    /* spec text and hex version are [a-z0-9:x-] only: no JSON escaping needed */
    CHK(sb_printf(&h, "{\"__metadata__\":{\"fedge.spec\":\"%s\"", v->spec_text));
    if (version_hex != NULL)
        CHK(sb_printf(&h, ",\"fedge.version\":\"%s\"", version_hex));
    CHK(sb_printf(&h, ",\"format\":\"pt\"}"));
    size_t data_len = 0;
    for (int i = 0; i < v->n_tensors; i++) {
        const mdl_tensor *t = &v->tensor[i];
        CHK(sb_printf(&h, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[", t->name));
        for (int d = 0; d < t->rank; d++)
            CHK(sb_printf(&h, "%s%lld", d ? "," : "", (long long)t->shape[d]));
        CHK(sb_printf(&h, "],\"data_offsets\":[%zu,%zu]}", data_len, data_len + t->count * 4));
        data_len += t->count * 4;
    }
    CHK(sb_printf(&h, "}"));
    while (h.len % 8 != 0)
        CHK(sb_printf(&h, " "));
    size_t total = 8 + h.len + data_len;
    file = malloc(total);
    if (file == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    put_le64(file, h.len);
    memcpy(file + 8, h.buf, h.len);
    uint8_t *d = file + 8 + h.len;
    for (int i = 0; i < v->n_tensors; i++) {
        const mdl_tensor *t = &v->tensor[i];
        for (size_t k = 0; k < t->count; k++, d += 4)
            put_le_f32(d, params[t->offset + k]);
    }
    *out = file;
    *out_len = total;
    file = NULL;
cleanup:
    free(h.buf);
    free(file);
    return ret;
}

/* ---- decode --------------------------------------------------------------- */

typedef struct {
    int seen;
    uint64_t begin, end;
} found_tensor;

__attribute__((format(printf, 4, 5))) static int fail(char *err, size_t errlen, int code,
                                                     const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

static void shape_text(char *buf, size_t cap, const uint64_t *s, int rank)
{
    size_t n = 0;
    buf[0] = '\0';
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < rank && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%llu", i ? "," : "", (unsigned long long)s[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

static int parse_metadata(mdl_json *j, const mdl_view *v, char *err, size_t errlen)
{
    int ret = FEDGE_OK;
    char key[META_KEY_MAX], val[META_VALUE_MAX];
    /* keys seen so far, to refuse duplicates: bounded by MDL_ST_META_MAX */
    char (*keys)[META_KEY_MAX] = malloc(sizeof(*keys) * MDL_ST_META_MAX);
    int n = 0;
    if (keys == NULL)
        return FEDGE_ERR_NOMEM;
    CHK(mdl_json_expect(j, '{'));
    if (mdl_json_peek(j) == '}') {
        j->p++;
        goto cleanup;
    }
    for (;;) {
        size_t klen, vlen;
        CHK(mdl_json_string(j, key, sizeof key, &klen));
        CHK(mdl_json_expect(j, ':'));
        if (mdl_json_peek(j) != '"')
            FAIL(mdl_json_fail(j, "__metadata__ value is not a string"));
        CHK(mdl_json_string(j, val, sizeof val, &vlen));
        if (strlen(key) != klen)
            FAIL(mdl_json_fail(j, "NUL in a metadata key"));
        for (int i = 0; i < n; i++)
            if (strcmp(keys[i], key) == 0)
                FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "__metadata__ key \"%.64s\" given twice", key));
        if (n == MDL_ST_META_MAX)
            FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "__metadata__ has more than %d entries",
                      MDL_ST_META_MAX));
        memcpy(keys[n++], key, klen + 1);
        if (strcmp(key, "fedge.spec") == 0 && strcmp(val, v->spec_text) != 0)
            FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_TENSOR,
                      "the file was exported from spec \"%.100s\", not %s", val, v->spec_text));
        int c = mdl_json_peek(j);
        if (c == ',') {
            j->p++;
            continue;
        }
        CHK(mdl_json_expect(j, '}'));
        break;
    }
cleanup:
    free(keys);
    return ret;
}

static int parse_uint_array(mdl_json *j, uint64_t *out, int max, int *n)
{
    int ret = FEDGE_OK;
    *n = 0;
    CHK(mdl_json_expect(j, '['));
    if (mdl_json_peek(j) == ']') {
        j->p++;
        goto cleanup;
    }
    for (;;) {
        if (*n == max)
            FAIL(mdl_json_fail(j, "array too long"));
        CHK(mdl_json_uint(j, &out[(*n)++]));
        if (mdl_json_peek(j) == ',') {
            j->p++;
            continue;
        }
        CHK(mdl_json_expect(j, ']'));
        break;
    }
cleanup:
    return ret;
}

static int parse_tensor(mdl_json *j, const mdl_tensor *t, found_tensor *f, char *err, size_t errlen)
{
    int ret = FEDGE_OK;
    char key[32], dtype[32];
    uint64_t shape[SHAPE_MAX_RANK], offs[2];
    int have_dtype = 0, have_shape = 0, have_offs = 0, rank = 0, n_offs = 0;
    CHK(mdl_json_expect(j, '{'));
    for (;;) {
        CHK(mdl_json_string(j, key, sizeof key, NULL));
        CHK(mdl_json_expect(j, ':'));
        if (strcmp(key, "dtype") == 0 && !have_dtype) {
            have_dtype = 1;
            CHK(mdl_json_string(j, dtype, sizeof dtype, NULL));
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            have_shape = 1;
            CHK(parse_uint_array(j, shape, SHAPE_MAX_RANK, &rank));
        } else if (strcmp(key, "data_offsets") == 0 && !have_offs) {
            have_offs = 1;
            CHK(parse_uint_array(j, offs, 2, &n_offs));
        } else if (strcmp(key, "dtype") == 0 || strcmp(key, "shape") == 0 ||
                   strcmp(key, "data_offsets") == 0) {
            FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "tensor %s: \"%s\" given twice", t->name, key));
        } else {
            FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "tensor %s: unknown field \"%.31s\"", t->name, key));
        }
        if (mdl_json_peek(j) == ',') {
            j->p++;
            continue;
        }
        CHK(mdl_json_expect(j, '}'));
        break;
    }
    if (!have_dtype || !have_shape || !have_offs)
        FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "tensor %s: missing %s", t->name,
                  !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets"));
    if (strcmp(dtype, "F32") != 0)
        FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_TENSOR, "tensor %s: dtype %.16s (only F32 is imported)",
                  t->name, dtype));
    int same = rank == t->rank;
    for (int i = 0; same && i < rank; i++)
        same = shape[i] == (uint64_t)t->shape[i];
    if (!same) {
        char got[160], want[160];
        uint64_t ws[MDL_MAX_RANK];
        for (int i = 0; i < t->rank; i++)
            ws[i] = (uint64_t)t->shape[i];
        shape_text(got, sizeof got, shape, rank);
        shape_text(want, sizeof want, ws, t->rank);
        FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_TENSOR, "tensor %s: shape %s, the spec needs %s",
                  t->name, got, want));
    }
    if (n_offs != 2)
        FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "tensor %s: data_offsets needs 2 numbers", t->name));
    if (offs[1] < offs[0] || offs[1] - offs[0] != (uint64_t)t->count * 4)
        FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT,
                  "tensor %s: data_offsets [%llu,%llu] do not span its %zu bytes", t->name,
                  (unsigned long long)offs[0], (unsigned long long)offs[1], t->count * 4));
    f->seen = 1;
    f->begin = offs[0];
    f->end = offs[1];
cleanup:
    return ret;
}

int mdl_st_decode(const uint8_t *buf, size_t len, const mdl_view *v, float *params,
                  char *err, size_t errlen)
{
    if (buf == NULL || v == NULL || params == NULL)
        return FEDGE_ERR_INVALID_ARG;
    int ret = FEDGE_OK;
    found_tensor found[MDL_MAX_TENSORS];
    int order[MDL_MAX_TENSORS];
    int have_meta = 0;
    memset(found, 0, sizeof found);
    if (len < 8)
        return fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "%zu bytes: too short for the header length", len);
    uint64_t hlen = get_le64(buf);
    if (hlen < 2 || hlen > MDL_ST_HEADER_MAX)
        return fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "header length %llu outside 2..%u",
                    (unsigned long long)hlen, MDL_ST_HEADER_MAX);
    if (hlen > len - 8)
        return fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT,
                    "header length %llu runs past the end of the file (%zu bytes)",
                    (unsigned long long)hlen, len);
    const uint8_t *data = buf + 8 + hlen;
    size_t data_len = len - 8 - (size_t)hlen;

    mdl_json j;
    mdl_json_init(&j, buf + 8, (size_t)hlen, err, errlen);
    if (buf[8] != '{')
        return fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "header does not start with '{'");
    CHK(mdl_json_expect(&j, '{'));
    if (mdl_json_peek(&j) == '}')
        j.p++;
    else
        for (;;) {
            char key[TENSOR_KEY_MAX];
            size_t klen;
            CHK(mdl_json_string(&j, key, sizeof key, &klen));
            CHK(mdl_json_expect(&j, ':'));
            if (klen == 12 && memcmp(key, "__metadata__", 12) == 0) {
                if (have_meta)
                    FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "__metadata__ given twice"));
                have_meta = 1;
                CHK(parse_metadata(&j, v, err, errlen));
            } else {
                const mdl_tensor *t = mdl_view_find(v, key, klen);
                if (t == NULL) {
                    char shown[96];
                    snprintf(shown, sizeof shown, "%.64s", key);
                    for (char *c = shown; *c; c++)
                        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
                            *c = '?';
                    FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_TENSOR,
                              "tensor \"%s\" is not in spec %s (it has %s ... %s)", shown, v->spec_text,
                              v->tensor[0].name, v->tensor[v->n_tensors - 1].name));
                }
                int idx = (int)(t - v->tensor);
                if (found[idx].seen)
                    FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "tensor %s given twice", t->name));
                CHK(parse_tensor(&j, t, &found[idx], err, errlen));
            }
            if (mdl_json_peek(&j) == ',') {
                j.p++;
                continue;
            }
            CHK(mdl_json_expect(&j, '}'));
            break;
        }
    CHK(mdl_json_end(&j));

    for (int i = 0; i < v->n_tensors; i++) {
        if (!found[i].seen)
            FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_TENSOR, "tensor %s (spec %s) is missing",
                      v->tensor[i].name, v->spec_text));
        order[i] = i;
    }
    /* insertion sort by begin: at most MDL_MAX_TENSORS entries */
    for (int i = 1; i < v->n_tensors; i++) {
        int k = order[i], p = i;
        while (p > 0 && found[order[p - 1]].begin > found[k].begin) {
            order[p] = order[p - 1];
            p--;
        }
        order[p] = k;
    }
    uint64_t at = 0;
    for (int i = 0; i < v->n_tensors; i++) {
        const found_tensor *f = &found[order[i]];
        const char *name = v->tensor[order[i]].name;
        if (f->begin < at)
            FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "tensor %s overlaps the one before it (begins at %llu, < %llu)",
                      name, (unsigned long long)f->begin, (unsigned long long)at));
        if (f->begin > at)
            FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "gap of %llu bytes in the data before tensor %s",
                      (unsigned long long)(f->begin - at), name));
        if (f->end > data_len)
            FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT,
                      "tensor %s ends at byte %llu, past the data section (%zu bytes)", name,
                      (unsigned long long)f->end, data_len));
        at = f->end;
    }
    if (at != data_len)
        FAIL(fail(err, errlen, FEDGE_ERR_IMPORT_FORMAT, "%llu bytes after the last tensor",
                  (unsigned long long)(data_len - at)));
    for (int i = 0; i < v->n_tensors; i++) {
        const mdl_tensor *t = &v->tensor[i];
        const uint8_t *src = data + found[i].begin;
        for (size_t k = 0; k < t->count; k++)
            if (!isfinite(get_le_f32(src + 4 * k)))
                FAIL(fail(err, errlen, FEDGE_ERR_MODEL_NONFINITE, "tensor %s: element %zu is not finite",
                          t->name, k));
    }
    for (int i = 0; i < v->n_tensors; i++) {
        const mdl_tensor *t = &v->tensor[i];
        const uint8_t *src = data + found[i].begin;
        for (size_t k = 0; k < t->count; k++)
            params[t->offset + k] = get_le_f32(src + 4 * k);
    }
cleanup:
    return ret;
}
