#include "keys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <mbedtls/hkdf.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

#include "common.h"

int fedge_device_id_valid(const char *id, size_t len)
{
    if (!id || len == 0 || len > FEDGE_DEVICE_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int parse_secret(const char *hex, uint8_t out[FEDGE_SECRET_LEN])
{
    if (strlen(hex) != 2 * FEDGE_SECRET_LEN)
        return FEDGE_ERR_CONFIG_VALUE;
    for (int i = 0; i < FEDGE_SECRET_LEN; i++) {
        int hi = hex_nibble(hex[2 * i]), lo = hex_nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return FEDGE_ERR_CONFIG_VALUE;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return FEDGE_OK;
}

typedef struct {
    const char *id;
    uint32_t idx;
} id_ref;

static int id_ref_cmp(const void *a, const void *b)
{
    const id_ref *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

/* Builds k->by_id; on a duplicate id fails naming both lines. */
static int index_ids(fedge_keys *k, const size_t *lines, const char *path, char *err,
                     size_t errlen)
{
    int ret = FEDGE_OK;
    id_ref *refs = NULL;
    if (k->n == 0)
        return FEDGE_OK;
    refs = malloc(k->n * sizeof *refs);
    k->by_id = malloc(k->n * sizeof *k->by_id);
    if (!refs || !k->by_id)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < k->n; i++) {
        refs[i].id = k->devices[i].id;
        refs[i].idx = (uint32_t)i;
    }
    qsort(refs, k->n, sizeof *refs, id_ref_cmp);
    for (size_t i = 0; i < k->n; i++) {
        if (i > 0 && strcmp(refs[i - 1].id, refs[i].id) == 0) {
            snprintf(err, errlen, "%s:%zu: device %s listed twice (first on line %zu)", path,
                     lines[refs[i].idx], refs[i].id, lines[refs[i - 1].idx]);
            FAIL(FEDGE_ERR_CONFIG_VALUE);
        }
        k->by_id[i] = refs[i].idx;
    }
cleanup:
    free(refs);
    return ret;
}

int fedge_keys_load(const char *path, fedge_keys *out, char *err, size_t errlen)
{
    size_t *lines = NULL;
    char line[512];
    char dummy[8];
    FILE *f = NULL;
    struct stat st;
    size_t cap = 0, lineno = 0;
    int ret = FEDGE_OK;
    char errbuf[1];
    if (!err) {
        err = errbuf;
        errlen = sizeof errbuf;
    }
    memset(out, 0, sizeof *out);
    f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        FAIL(FEDGE_ERR_IO);
    }
    if (fstat(fileno(f), &st) != 0)
        FAIL(FEDGE_ERR_IO);
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        snprintf(err, errlen, "%s: mode %03o gives group/other access; chmod 600 it", path,
                 (unsigned)(st.st_mode & 0777));
        FAIL(FEDGE_ERR_CONFIG_PERMS);
    }
    while (fgets(line, sizeof line, f)) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            snprintf(err, errlen, "%s:%zu: line too long", path, lineno);
            FAIL(FEDGE_ERR_CONFIG_SYNTAX);
        }
        char *p = line + strspn(line, " \t");
        if (*p == '#' || *p == '\n' || *p == '\0')
            continue;
        char id[FEDGE_DEVICE_ID_MAX + 2], region[FEDGE_REGION_MAX + 2], hex[2 * FEDGE_SECRET_LEN + 2];
        int n = sscanf(p, "%65s %33s %65s %7s", id, region, hex, dummy);
        if (n != 3) {
            snprintf(err, errlen, "%s:%zu: expected 'DEVICE_ID REGION SECRET_HEX'", path, lineno);
            FAIL(FEDGE_ERR_CONFIG_SYNTAX);
        }
        if (!fedge_device_id_valid(id, strlen(id))) {
            snprintf(err, errlen, "%s:%zu: bad device id (1-64 of [A-Za-z0-9._-])", path, lineno);
            FAIL(FEDGE_ERR_CONFIG_VALUE);
        }
        if (strlen(region) > FEDGE_REGION_MAX) {
            snprintf(err, errlen, "%s:%zu: region longer than %d", path, lineno, FEDGE_REGION_MAX);
            FAIL(FEDGE_ERR_CONFIG_VALUE);
        }
        if (out->n >= FEDGE_KEYS_MAX_DEVICES) {
            snprintf(err, errlen, "%s:%zu: more than %d devices", path, lineno,
                     FEDGE_KEYS_MAX_DEVICES);
            FAIL(FEDGE_ERR_RANGE);
        }
        if (out->n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            if (ncap > FEDGE_KEYS_MAX_DEVICES)
                ncap = FEDGE_KEYS_MAX_DEVICES;
            fedge_device_entry *d = realloc(out->devices, ncap * sizeof *d);
            if (!d)
                FAIL(FEDGE_ERR_NOMEM);
            out->devices = d;
            size_t *l = realloc(lines, ncap * sizeof *l);
            if (!l)
                FAIL(FEDGE_ERR_NOMEM);
            lines = l;
            cap = ncap;
        }
        fedge_device_entry *e = &out->devices[out->n];
        memset(e, 0, sizeof *e);
        snprintf(e->id, sizeof e->id, "%.*s", FEDGE_DEVICE_ID_MAX, id);
        snprintf(e->region, sizeof e->region, "%.*s", FEDGE_REGION_MAX, region);
        ret = parse_secret(hex, e->secret);
        mbedtls_platform_zeroize(hex, sizeof hex);
        if (ret != FEDGE_OK) {
            snprintf(err, errlen, "%s:%zu: secret must be 64 hex digits", path, lineno);
            goto cleanup;
        }
        lines[out->n++] = lineno;
    }
    if (ferror(f))
        FAIL(FEDGE_ERR_IO);
    CHK(index_ids(out, lines, path, err, errlen));
cleanup:
    free(lines);
    mbedtls_platform_zeroize(line, sizeof line);
    if (f)
        fclose(f);
    if (ret != FEDGE_OK)
        fedge_keys_free(out);
    return ret;
}

void fedge_keys_free(fedge_keys *k)
{
    if (!k)
        return;
    if (k->devices)
        mbedtls_platform_zeroize(k->devices, k->n * sizeof *k->devices);
    free(k->devices);
    free(k->by_id);
    k->devices = NULL;
    k->by_id = NULL;
    k->n = 0;
}

/* strcmp order between a NUL-terminated id and id[0..len). */
static int id_cmp(const char *stored, const char *id, size_t len)
{
    size_t n = strlen(stored);
    int c = memcmp(stored, id, n < len ? n : len);
    if (c)
        return c;
    return (n > len) - (n < len);
}

const fedge_device_entry *fedge_keys_find(const fedge_keys *k, const char *id, size_t id_len)
{
    if (!k || !k->by_id || !id || id_len > FEDGE_DEVICE_ID_MAX)
        return NULL;
    size_t lo = 0, hi = k->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const fedge_device_entry *e = &k->devices[k->by_id[mid]];
        int c = id_cmp(e->id, id, id_len);
        if (c == 0)
            return e;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

size_t fedge_keys_format_line(const fedge_device_entry *e, char *buf, size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    char hex[2 * FEDGE_SECRET_LEN + 1];
    if (!e || !buf || cap < FEDGE_KEYS_LINE_MAX)
        return 0;
    for (size_t i = 0; i < FEDGE_SECRET_LEN; i++) {
        hex[2 * i] = digits[e->secret[i] >> 4];
        hex[2 * i + 1] = digits[e->secret[i] & 15];
    }
    hex[2 * FEDGE_SECRET_LEN] = '\0';
    int n = snprintf(buf, cap, "%s %s %s\n", e->id, e->region, hex);
    mbedtls_platform_zeroize(hex, sizeof hex);
    return (n < 0 || (size_t)n >= cap) ? 0 : (size_t)n;
}

int fedge_keys_dtls_psk(const uint8_t secret[FEDGE_SECRET_LEN], const char *id,
                        char psk[FEDGE_PSK_LEN + 1])
{
    static const char salt[] = "fedge-v1";
    static const char label[] = "fedge dtls psk";
    uint8_t info[sizeof label - 1 + FEDGE_DEVICE_ID_MAX];
    size_t id_len = strlen(id);
    if (!fedge_device_id_valid(id, id_len))
        return FEDGE_ERR_INVALID_ARG;
    memcpy(info, label, sizeof label - 1);
    memcpy(info + sizeof label - 1, id, id_len);
    uint8_t raw[FEDGE_PSK_LEN / 2];
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (mbedtls_hkdf(md, (const unsigned char *)salt, sizeof salt - 1, secret, FEDGE_SECRET_LEN,
                     info, sizeof label - 1 + id_len, raw, sizeof raw) != 0)
        return FEDGE_ERR_CRYPTO;
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        psk[2 * i] = digits[raw[i] >> 4];
        psk[2 * i + 1] = digits[raw[i] & 15];
    }
    psk[FEDGE_PSK_LEN] = '\0';
    mbedtls_platform_zeroize(raw, sizeof raw);
    return FEDGE_OK;
}
