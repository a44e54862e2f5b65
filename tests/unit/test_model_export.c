/* test_model_export.c — fedge-model's formats without Python: the safetensors
 * reader accepts every well-formed variant of a file (tensor order, white
 * space, escapes, no metadata) and refuses each kind of fault with its code,
 * the parameters untouched; the JSON reader's strings and integers; the npz
 * archive's zip and .npy structure (CRC-32, alignment, shapes). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "error.h"
#include "json.h"
#include "layers.h"
#include "model.h"
#include "npz.h"
#include "safetensors.h"

#define SENTINEL 777.0f

static void view_of(const char *spec_text, mdl_view *v)
{
    fedge_model_spec spec;
    assert_int_equal(fedge_model_spec_parse(spec_text, &spec), FEDGE_OK);
    assert_int_equal(mdl_view_init(&spec, v), FEDGE_OK);
}

static float *ramp(size_t n)
{
    float *p = malloc(n * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)i * 0.01f - 1.0f;
    return p;
}

/* A safetensors file from a header text and the view's params, data laid out
 * in the order the header's offsets give (the caller writes them). */
static uint8_t *file_of(const char *header, const mdl_view *v, const float *params,
                        const int *order, size_t *len)
{
    size_t hl = strlen(header), data = v->n_params * 4;
    uint8_t *b = malloc(8 + hl + data);
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    size_t at = 8 + hl;
    for (int k = 0; k < v->n_tensors; k++) {
        const mdl_tensor *t = &v->tensor[order[k]];
        memcpy(b + at, params + t->offset, t->count * 4); /* little-endian host */
        at += t->count * 4;
    }
    *len = at;
    return b;
}

static int decode(const uint8_t *b, size_t len, const mdl_view *v, float *out, char *err)
{
    for (size_t i = 0; i < v->n_params; i++)
        out[i] = SENTINEL;
    return mdl_st_decode(b, len, v, out, err, 512);
}

static void test_round_trip_every_kind(void **state)
{
    const char *specs[] = {"softmax:5-3", "mlp:6-4-3-2", "cnn:2x6x6-c3k3p1-p2-c4k2s2-f5-d20-3"};
    for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++) {
        static mdl_view v;
        view_of(specs[s], &v);
        float *p = ramp(v.n_params), *q = malloc(v.n_params * sizeof *q);
        uint8_t *b = NULL;
        size_t len = 0;
        char err[512];
        assert_int_equal(mdl_st_encode(&v, p, "ab12", &b, &len), FEDGE_OK);
        uint64_t hl = 0;
        memcpy(&hl, b, 8);
        assert_int_equal(hl % 8, 0);
        assert_int_equal(len, 8 + hl + v.n_params * 4);
        assert_int_equal(decode(b, len, &v, q, err), FEDGE_OK);
        assert_memory_equal(p, q, v.n_params * sizeof *p);
        free(b);
        free(p);
        free(q);
    }
}

/* softmax:3-2: layers.0.weight [2,3] (24 bytes), layers.0.bias [2] (8 bytes). */
static void test_accepts_well_formed_variants(void **state)
{
    static mdl_view v;
    view_of("softmax:3-2", &v);
    float *p = ramp(v.n_params), q[8];
    int fwd[] = {0, 1}, rev[] = {1, 0};
    struct {
        const char *header;
        const int *order;
    } cases[] = {
        /* bias first in the data and in the JSON, no metadata */
        {"{\"layers.0.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"layers.0.weight\":{\"data_offsets\":[8,32],\"shape\":[2,3],\"dtype\":\"F32\"}}", rev},
        /* white space between all tokens (the header starts with '{'), metadata
         * last with escapes and non-ASCII */
        {"{ \"layers.0.weight\" : { \"dtype\" : \"F32\" , \"shape\" : [ 2 , 3 ] , \"data_offsets\" : [ 0 , 24 ] } ,\r\n"
         "\t\"layers.0.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]},"
         "\"__metadata__\":{\"n\\u00e9e \\ud83d\\ude00\":\"a\\\"b\\\\c\\/d\\n\",\"caf\xc3\xa9\":\"\"}}   ", fwd},
        /* a tensor name spelled with escapes */
        {"{\"layers\\u002e0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
         "\"layers.0.b\\u0069as\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]},"
         "\"__metadata__\":{}}", fwd},
        /* fedge.spec equal to the spec */
        {"{\"__metadata__\":{\"fedge.spec\":\"softmax:3-2\"},"
         "\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
         "\"layers.0.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]}}", fwd},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t len;
        char err[512] = "";
        uint8_t *b = file_of(cases[c].header, &v, p, cases[c].order, &len);
        int ret = decode(b, len, &v, q, err);
        if (ret != FEDGE_OK)
            fail_msg("case %zu refused: %s", c, err);
        assert_memory_equal(p, q, v.n_params * sizeof *p);
        free(b);
    }
    free(p);
}

static void test_refuses_each_fault(void **state)
{
    static mdl_view v;
    view_of("softmax:3-2", &v);
    float *p = ramp(v.n_params), q[8];
    int fwd[] = {0, 1};
    const char *W = "\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}";
    const char *B = "\"layers.0.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]}";
    char many[8192];
    size_t n = (size_t)snprintf(many, sizeof many, "{\"__metadata__\":{");
    for (int i = 0; i < MDL_ST_META_MAX + 1; i++)
        n += (size_t)snprintf(many + n, sizeof many - n, "%s\"k%d\":\"v\"", i ? "," : "", i);
    snprintf(many + n, sizeof many - n, "},%s,%s}", W, B);
    char long_key[600];
    memset(long_key, 'a', sizeof long_key);
    memcpy(long_key, "{\"", 2);
    memcpy(long_key + sizeof long_key - 7, "\":1}\0", 5);
    struct {
        const char *header;
        int code;
        const char *says;
    } cases[] = {
        {many, FEDGE_ERR_IMPORT_FORMAT, "more than 64 entries"},
        {long_key, FEDGE_ERR_IMPORT_FORMAT, "string too long"},
        {"{\"__metadata__\":{},\"__metadata__\":{}}", FEDGE_ERR_IMPORT_FORMAT, "__metadata__ given twice"},
        {"{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", FEDGE_ERR_IMPORT_FORMAT, "given twice"},
        {"{\"__metadata__\":{\"fedge.spec\":\"softmax:3-3\"}}", FEDGE_ERR_IMPORT_TENSOR, "exported from spec"},
        {"{\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24],"
         "\"dtype\":\"F32\"}}", FEDGE_ERR_IMPORT_FORMAT, "\"dtype\" given twice"},
        {"{\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,24]}}",
         FEDGE_ERR_IMPORT_TENSOR, "shape [3,2], the spec needs [2,3]"},
        {"{\"layers.0.weight\":{\"dtype\":\"F64\",\"shape\":[2,3],\"data_offsets\":[0,24]}}",
         FEDGE_ERR_IMPORT_TENSOR, "dtype F64"},
        {"{\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24,32]}}",
         FEDGE_ERR_IMPORT_FORMAT, "array too long"},
        {"{\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0]}}",
         FEDGE_ERR_IMPORT_FORMAT, "needs 2 numbers"},
        {"{\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24.0]}}",
         FEDGE_ERR_IMPORT_FORMAT, "not an integer"},
        {"{\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,2e1]}}",
         FEDGE_ERR_IMPORT_FORMAT, "not an integer"},
        {"{\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},}",
         FEDGE_ERR_IMPORT_FORMAT, "expected '\"'"},
        {"{\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}} {}",
         FEDGE_ERR_IMPORT_FORMAT, "bytes after the JSON object"},
        {"{\"layers.1.weight\":{}}", FEDGE_ERR_IMPORT_TENSOR, "is not in spec softmax:3-2"},
        {"{\"__metadata__\":{\"x\":\"\\ud800\"}}", FEDGE_ERR_IMPORT_FORMAT, "lone high surrogate"},
        {"{\"__metadata__\":{\"x\":\"\\udc00\"}}", FEDGE_ERR_IMPORT_FORMAT, "lone low surrogate"},
        {"{\"__metadata__\":{\"x\":\"\xc0\x80\"}}", FEDGE_ERR_IMPORT_FORMAT, "invalid UTF-8"},
        {"{\"__metadata__\":{\"x\":\"\xed\xa0\x80\"}}", FEDGE_ERR_IMPORT_FORMAT, "invalid UTF-8"},
        {"{\"__metadata__\":{\"x\":\"a\tb\"}}", FEDGE_ERR_IMPORT_FORMAT, "control byte"},
        {"{\"__metadata__\":{\"x\":\"\\q\"}}", FEDGE_ERR_IMPORT_FORMAT, "unknown escape"},
        {"{}", FEDGE_ERR_IMPORT_TENSOR, "layers.0.weight (spec softmax:3-2) is missing"},
        {"{\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
         "\"layers.0.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[20,28]}}",
         FEDGE_ERR_IMPORT_FORMAT, "layers.0.bias overlaps"},
        {"{\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[4,28]},"
         "\"layers.0.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[28,36]}}",
         FEDGE_ERR_IMPORT_FORMAT, "gap of 4 bytes in the data before tensor layers.0.weight"},
        {"{\"layers.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
         "\"layers.0.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]}}  x",
         FEDGE_ERR_IMPORT_FORMAT, "bytes after the JSON object"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t len;
        char err[512] = "";
        uint8_t *b = file_of(cases[c].header, &v, p, fwd, &len);
        int ret = decode(b, len, &v, q, err);
        if (ret != cases[c].code || strstr(err, cases[c].says) == NULL)
            fail_msg("case %zu: %d '%s', want %d '%s'", c, ret, err, cases[c].code, cases[c].says);
        for (size_t i = 0; i < v.n_params; i++)
            assert_true(q[i] == SENTINEL);
        free(b);
    }
    free(p);
}

static void test_json_integers(void **state)
{
    char err[128];
    mdl_json j;
    uint64_t x;
    const char *ok = "9007199254740992";
    mdl_json_init(&j, (const uint8_t *)ok, strlen(ok), err, sizeof err);
    assert_int_equal(mdl_json_uint(&j, &x), FEDGE_OK);
    assert_true(x == (UINT64_C(1) << 53));
    const char *bad[] = {"9007199254740993", "18446744073709551616", "01", "-1", "1.5", "1e3", "x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mdl_json_init(&j, (const uint8_t *)bad[i], strlen(bad[i]), err, sizeof err);
        assert_int_equal(mdl_json_uint(&j, &x), FEDGE_ERR_IMPORT_FORMAT);
    }
    const char *zero = "0";
    mdl_json_init(&j, (const uint8_t *)zero, 1, err, sizeof err);
    assert_int_equal(mdl_json_uint(&j, &x), FEDGE_OK);
    assert_true(x == 0);
}

static void test_json_strings(void **state)
{
    char err[128], out[16];
    size_t n;
    mdl_json j;
    const char *s = "\"\\ud83d\\ude00\\u00e9\"";
    mdl_json_init(&j, (const uint8_t *)s, strlen(s), err, sizeof err);
    assert_int_equal(mdl_json_string(&j, out, sizeof out, &n), FEDGE_OK);
    assert_int_equal(n, 6);
    assert_memory_equal(out, "\xf0\x9f\x98\x80\xc3\xa9", 6);
    /* exactly cap - 1 bytes fit, cap do not */
    const char *fits = "\"0123456789abcde\"", *over = "\"0123456789abcdef\"";
    mdl_json_init(&j, (const uint8_t *)fits, strlen(fits), err, sizeof err);
    assert_int_equal(mdl_json_string(&j, out, sizeof out, &n), FEDGE_OK);
    assert_int_equal(n, 15);
    mdl_json_init(&j, (const uint8_t *)over, strlen(over), err, sizeof err);
    assert_int_equal(mdl_json_string(&j, out, sizeof out, &n), FEDGE_ERR_IMPORT_FORMAT);
    const char *unterminated = "\"abc";
    mdl_json_init(&j, (const uint8_t *)unterminated, strlen(unterminated), err, sizeof err);
    assert_int_equal(mdl_json_string(&j, out, sizeof out, &n), FEDGE_ERR_IMPORT_FORMAT);
    assert_non_null(strstr(err, "unterminated string"));
}

static void test_container_bounds(void **state)
{
    static mdl_view v;
    view_of("softmax:3-2", &v);
    float *p = ramp(v.n_params), q[8];
    uint8_t *b = NULL;
    size_t len = 0;
    char err[512];
    assert_int_equal(mdl_st_encode(&v, p, NULL, &b, &len), FEDGE_OK);
    /* every truncation is refused */
    for (size_t cut = 0; cut < len; cut++)
        assert_int_not_equal(decode(b, cut, &v, q, err), FEDGE_OK);
    /* a header length past the limit, and one past the file */
    uint8_t save[8];
    memcpy(save, b, 8);
    uint64_t big = (uint64_t)MDL_ST_HEADER_MAX + 8;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(big >> (8 * i));
    assert_int_equal(decode(b, len, &v, q, err), FEDGE_ERR_IMPORT_FORMAT);
    assert_non_null(strstr(err, "outside 2.."));
    memcpy(b, save, 8);
    b[0] = (uint8_t)(b[0] + 8);
    assert_int_equal(decode(b, len, &v, q, err), FEDGE_ERR_IMPORT_FORMAT);
    memcpy(b, save, 8);
    /* NaN in the last element */
    float nan = NAN;
    memcpy(b + len - 4, &nan, 4);
    assert_int_equal(decode(b, len, &v, q, err), FEDGE_ERR_MODEL_NONFINITE);
    assert_true(q[0] == SENTINEL);
    free(b);
    free(p);
}

static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | p[1] << 8; }

static void test_npz_structure(void **state)
{
    static mdl_view v;
    view_of("cnn:1x4x4-c2k3-f3-2", &v);
    float *p = ramp(v.n_params);
    uint8_t *z = NULL;
    size_t len = 0;
    assert_int_equal(mdl_npz_encode(&v, p, "00ff", &z, &len), FEDGE_OK);
    const char *want_shape[] = {"(2, 1, 3, 3)", "(2,)", "(3, 8)", "(3,)", "(2, 3)", "(2,)"};
    assert_int_equal(v.n_tensors, 6);
    size_t at = 0;
    int entries = 0;
    while (le32(z + at) == 0x04034b50) {
        uint32_t crc = le32(z + at + 14), size = le32(z + at + 18);
        uint32_t nl = le16(z + at + 26), xl = le16(z + at + 28);
        const uint8_t *name = z + at + 30, *data = name + nl + xl;
        assert_int_equal(le16(z + at + 8), 0); /* stored */
        assert_int_equal((uint32_t)crc32(0, data, size), crc);
        assert_memory_equal(data, "\x93NUMPY\x01\x00", 8);
        uint32_t hl = le16(data + 8);
        assert_int_equal((10 + hl) % 64, 0);
        assert_int_equal(data[10 + hl - 1], '\n');
        if (entries < v.n_tensors) {
            const mdl_tensor *t = &v.tensor[entries];
            char want_name[64];
            snprintf(want_name, sizeof want_name, "%s.npy", t->name);
            assert_int_equal(nl, strlen(want_name));
            assert_memory_equal(name, want_name, nl);
            char *hdr = strndup((const char *)data + 10, hl);
            assert_non_null(strstr(hdr, "'descr': '<f4'"));
            assert_non_null(strstr(hdr, want_shape[entries]));
            free(hdr);
            assert_int_equal(size, 10 + hl + t->count * 4);
            assert_memory_equal(data + 10 + hl, p + t->offset, t->count * 4);
        }
        entries++;
        at = (size_t)(data - z) + size;
    }
    assert_int_equal(entries, v.n_tensors + 2); /* + fedge.spec, fedge.version */
    /* end of central directory: entry count and directory offset */
    const uint8_t *eocd = z + len - 22;
    assert_int_equal(le32(eocd), 0x06054b50);
    assert_int_equal(le16(eocd + 10), entries);
    assert_int_equal(le32(eocd + 16), at);
    free(z);
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_every_kind),
        cmocka_unit_test(test_accepts_well_formed_variants),
        cmocka_unit_test(test_refuses_each_fault),
        cmocka_unit_test(test_json_integers),
        cmocka_unit_test(test_json_strings),
        cmocka_unit_test(test_container_bounds),
        cmocka_unit_test(test_npz_structure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
