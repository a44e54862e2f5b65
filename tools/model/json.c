/* json.c — strict JSON tokens for the safetensors header (json.h). */
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "json.h"

#define JSON_MAX_INT (UINT64_C(1) << 53)

void mdl_json_init(mdl_json *j, const uint8_t *buf, size_t len, char *err, size_t errlen)
{
    j->start = j->p = buf;
    j->end = buf + len;
    j->err = err;
    j->errlen = errlen;
}

int mdl_json_fail(mdl_json *j, const char *what)
{
    if (j->err != NULL && j->errlen > 0)
        snprintf(j->err, j->errlen, "header JSON: %s at byte %zu", what, (size_t)(j->p - j->start));
    return FEDGE_ERR_IMPORT_FORMAT;
}

static void skip_ws(mdl_json *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

int mdl_json_peek(mdl_json *j)
{
    skip_ws(j);
    return j->p < j->end ? *j->p : -1;
}

int mdl_json_expect(mdl_json *j, char c)
{
    char what[32];
    if (mdl_json_peek(j) != (unsigned char)c) {
        snprintf(what, sizeof what, "expected '%c'", c);
        return mdl_json_fail(j, what);
    }
    j->p++;
    return FEDGE_OK;
}

static int hex4(mdl_json *j, uint32_t *out)
{
    if (j->end - j->p < 4)
        return mdl_json_fail(j, "short \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = j->p[i];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return mdl_json_fail(j, "bad \\u escape");
        v = v * 16 + (uint32_t)d;
    }
    j->p += 4;
    *out = v;
    return FEDGE_OK;
}

/* Length of the valid UTF-8 sequence at p (shortest form, no surrogates, at
 * most U+10FFFF), 0 if invalid. */
static size_t utf8_len(const uint8_t *p, const uint8_t *end)
{
    size_t avail = (size_t)(end - p);
    uint8_t c = p[0];
    if (c < 0x80)
        return 1;
    size_t n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, cp = c & 0x07;
    else
        return 0;
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static int put(mdl_json *j, char *out, size_t cap, size_t *n, const uint8_t *b, size_t k)
{
    if (*n + k >= cap)
        return mdl_json_fail(j, "string too long");
    memcpy(out + *n, b, k);
    *n += k;
    return FEDGE_OK;
}

int mdl_json_string(mdl_json *j, char *out, size_t cap, size_t *len)
{
    int ret = FEDGE_OK;
    size_t n = 0;
    if (cap == 0)
        return FEDGE_ERR_INVALID_ARG;
    CHK(mdl_json_expect(j, '"'));
    for (;;) {
        if (j->p >= j->end)
            FAIL(mdl_json_fail(j, "unterminated string"));
        uint8_t c = *j->p;
        if (c == '"') {
            j->p++;
            break;
        }
        if (c < 0x20)
            FAIL(mdl_json_fail(j, "control byte in a string"));
        if (c != '\\') {
            size_t k = utf8_len(j->p, j->end);
            if (k == 0)
                FAIL(mdl_json_fail(j, "invalid UTF-8 in a string"));
            CHK(put(j, out, cap, &n, j->p, k));
            j->p += k;
            continue;
        }
        j->p++;
        if (j->p >= j->end)
            FAIL(mdl_json_fail(j, "unterminated escape"));
        uint8_t e = *j->p++, b[4];
        switch (e) {
        case '"': case '\\': case '/': b[0] = e; CHK(put(j, out, cap, &n, b, 1)); break;
        case 'b': b[0] = '\b'; CHK(put(j, out, cap, &n, b, 1)); break;
        case 'f': b[0] = '\f'; CHK(put(j, out, cap, &n, b, 1)); break;
        case 'n': b[0] = '\n'; CHK(put(j, out, cap, &n, b, 1)); break;
        case 'r': b[0] = '\r'; CHK(put(j, out, cap, &n, b, 1)); break;
        case 't': b[0] = '\t'; CHK(put(j, out, cap, &n, b, 1)); break;
        case 'u': {
            uint32_t cp;
            CHK(hex4(j, &cp));
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                FAIL(mdl_json_fail(j, "lone low surrogate"));
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                    FAIL(mdl_json_fail(j, "lone high surrogate"));
                j->p += 2;
                CHK(hex4(j, &lo));
                if (lo < 0xDC00 || lo > 0xDFFF)
                    FAIL(mdl_json_fail(j, "bad surrogate pair"));
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp == 0)
                FAIL(mdl_json_fail(j, "\\u0000 in a string"));
            size_t k;
            if (cp < 0x80)
                b[0] = (uint8_t)cp, k = 1;
            else if (cp < 0x800)
                b[0] = (uint8_t)(0xC0 | (cp >> 6)), b[1] = (uint8_t)(0x80 | (cp & 0x3F)), k = 2;
            else if (cp < 0x10000)
                b[0] = (uint8_t)(0xE0 | (cp >> 12)), b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)),
                b[2] = (uint8_t)(0x80 | (cp & 0x3F)), k = 3;
            else
                b[0] = (uint8_t)(0xF0 | (cp >> 18)), b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F)),
                b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)), b[3] = (uint8_t)(0x80 | (cp & 0x3F)), k = 4;
            CHK(put(j, out, cap, &n, b, k));
            break;
        }
        default:
            FAIL(mdl_json_fail(j, "unknown escape"));
        }
    }
    out[n] = '\0';
    if (len != NULL)
        *len = n;
cleanup:
    return ret;
}

int mdl_json_uint(mdl_json *j, uint64_t *v)
{
    int c = mdl_json_peek(j);
    if (c < '0' || c > '9')
        return mdl_json_fail(j, "expected an unsigned integer");
    if (c == '0' && j->end - j->p > 1 && j->p[1] >= '0' && j->p[1] <= '9')
        return mdl_json_fail(j, "leading zero");
    uint64_t x = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        x = x * 10 + (uint64_t)(*j->p - '0');
        if (x > JSON_MAX_INT)
            return mdl_json_fail(j, "integer above 2^53");
        j->p++;
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
        return mdl_json_fail(j, "not an integer");
    *v = x;
    return FEDGE_OK;
}

int mdl_json_end(mdl_json *j)
{
    if (mdl_json_peek(j) != -1)
        return mdl_json_fail(j, "bytes after the JSON object");
    return FEDGE_OK;
}
