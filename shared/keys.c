#include "keys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/hkdf.h>
#include <mbedtls/constant_time.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

#include "common.h"
#include "fileio.h"

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

static int id_ref_casecmp(const void *a, const void *b)
{
    const id_ref *x = a, *y = b;
    int c = strcasecmp(x->id, y->id);
    return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

typedef struct {
    const uint8_t *secret;
    uint32_t idx;
} secret_ref;

static int secret_ref_cmp(const void *a, const void *b)
{
    const secret_ref *x = a, *y = b;
    int c = memcmp(x->secret, y->secret, FEDGE_SECRET_LEN);
    return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

/* Two devices whose ids differ only in case (one device to a person
 * reading a report or revoking it), or sharing a secret (either could
 * speak as the other): fails naming both lines. */
static int check_lookalikes(fedge_keys *k, id_ref *refs, const size_t *lines, const char *path, char *err,
                            size_t errlen)
{
    int ret = FEDGE_OK;
    secret_ref *sr = NULL;
    qsort(refs, k->n, sizeof *refs, id_ref_casecmp);
    for (size_t i = 1; i < k->n; i++)
        if (strcasecmp(refs[i - 1].id, refs[i].id) == 0) {
            snprintf(err, errlen, "%s:%zu: device %s differs only in case from %s (line %zu): ids name devices "
                     "case-insensitively", path, lines[refs[i].idx], refs[i].id, refs[i - 1].id,
                     lines[refs[i - 1].idx]);
            FAIL(FEDGE_ERR_CONFIG_VALUE);
        }
    sr = malloc(k->n * sizeof *sr);
    if (!sr)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < k->n; i++)
        sr[i] = (secret_ref){.secret = k->devices[i].secret, .idx = (uint32_t)i};
    qsort(sr, k->n, sizeof *sr, secret_ref_cmp);
    for (size_t i = 1; i < k->n; i++)
        if (memcmp(sr[i - 1].secret, sr[i].secret, FEDGE_SECRET_LEN) == 0) {
            snprintf(err, errlen, "%s:%zu: device %s has the same secret as %s (line %zu): each device needs its "
                     "own (fedge-keygen)", path, lines[sr[i].idx], k->devices[sr[i].idx].id,
                     k->devices[sr[i - 1].idx].id, lines[sr[i - 1].idx]);
            FAIL(FEDGE_ERR_CONFIG_VALUE);
        }
cleanup:
    free(sr);
    return ret;
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
    CHK(check_lookalikes(k, refs, lines, path, err, errlen));
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
    ret = fedge_fopen_regular(path, 0, &f, &st);
    if (ret == FEDGE_ERR_NOT_REGULAR) {
        snprintf(err, errlen, "%s: not a regular file (a FIFO, device, socket or directory)", path);
        goto cleanup;
    }
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto cleanup;
    }
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
            return e->removed ? NULL : e;
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

/* ---- live enrolment ---- */

/* Index of id in k (tombstones too), or -1. */
static long find_slot(const fedge_keys *k, const char *id)
{
    size_t lo = 0, hi = k->by_id ? k->n : 0, len = strlen(id);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = id_cmp(k->devices[k->by_id[mid]].id, id, len);
        if (c == 0)
            return (long)k->by_id[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

int fedge_keys_merge(const fedge_keys *cur, const fedge_keys *fresh, fedge_keys *out,
                     fedge_keys_diff *diff)
{
    int ret = FEDGE_OK;
    size_t *lines = NULL;
    fedge_keys_diff d = {0};
    if (!cur || !fresh || !out)
        return FEDGE_ERR_INVALID_ARG;
    memset(out, 0, sizeof *out);
    size_t n_new = 0;
    for (size_t i = 0; i < fresh->n; i++)
        n_new += find_slot(cur, fresh->devices[i].id) < 0;
    size_t n = cur->n + n_new;
    if (n > FEDGE_KEYS_MAX_DEVICES)
        return FEDGE_ERR_RANGE;
    if (n == 0)
        goto done;
    out->devices = calloc(n, sizeof *out->devices);
    lines = calloc(n, sizeof *lines);
    if (!out->devices || !lines)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < cur->n; i++) {
        const fedge_device_entry *was = &cur->devices[i];
        fedge_device_entry *e = &out->devices[i];
        const fedge_device_entry *now = fedge_keys_find(fresh, was->id, strlen(was->id));
        *e = *was;
        if (!now) {
            mbedtls_platform_zeroize(e->secret, sizeof e->secret);
            d.removed += !was->removed;
            e->removed = 1;
        } else {
            if (was->removed)
                d.added++;
            else if (strcmp(was->region, now->region) != 0 || memcmp(was->secret, now->secret, FEDGE_SECRET_LEN) != 0)
                d.changed++;
            memcpy(e->region, now->region, sizeof e->region);
            memcpy(e->secret, now->secret, sizeof e->secret);
            e->removed = 0;
            d.live++;
        }
        lines[i] = i + 1;
    }
    out->n = cur->n;
    for (size_t i = 0; i < fresh->n; i++) {
        if (find_slot(cur, fresh->devices[i].id) >= 0)
            continue;
        out->devices[out->n] = fresh->devices[i];
        out->devices[out->n].removed = 0;
        lines[out->n] = out->n + 1;
        out->n++;
        d.added++;
        d.live++;
    }
    CHK(index_ids(out, lines, "merge", NULL, 0));
done:
    if (diff)
        *diff = d;
cleanup:
    free(lines);
    if (ret != FEDGE_OK)
        fedge_keys_free(out);
    return ret;
}

#define KEYS_FILE_MAX ((size_t)FEDGE_KEYS_MAX_DEVICES * 512)

/* The whole file (NUL-terminated, *len bytes); *data NULL with *len 0 when
 * it does not exist. */
static int read_text(const char *path, char **data, size_t *len)
{
    int ret = FEDGE_OK;
    FILE *f = NULL;
    struct stat st;
    *data = NULL;
    *len = 0;
    ret = fedge_fopen_regular(path, FEDGE_FILE_NOFOLLOW, &f, &st);
    if (ret != FEDGE_OK)
        return ret == FEDGE_ERR_IO && errno == ENOENT ? FEDGE_OK : ret;
    if ((size_t)st.st_size > KEYS_FILE_MAX)
        FAIL(FEDGE_ERR_RANGE);
    *data = malloc((size_t)st.st_size + 2);
    if (!*data)
        FAIL(FEDGE_ERR_NOMEM);
    *len = fread(*data, 1, (size_t)st.st_size + 1, f);
    if (ferror(f) || *len > (size_t)st.st_size)
        FAIL(FEDGE_ERR_IO); /* it grew while read: an edit behind the lock's back */
    (*data)[*len] = '\0';
cleanup:
    fclose(f);
    if (ret != FEDGE_OK) {
        free(*data);
        *data = NULL;
        *len = 0;
    }
    return ret;
}

static int lock_keys_file(const char *path, int *fd)
{
    char lock_path[4096];
    if (snprintf(lock_path, sizeof lock_path, "%s.lock", path) >= (int)sizeof lock_path)
        return FEDGE_ERR_RANGE;
    *fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (*fd < 0)
        return FEDGE_ERR_IO;
    if (flock(*fd, LOCK_EX) != 0) {
        close(*fd);
        *fd = -1;
        return FEDGE_ERR_IO;
    }
    return FEDGE_OK;
}

/* Loads path as the daemon would (a missing file is an empty one). */
static int load_existing(const char *path, fedge_keys *k, char *err, size_t errlen)
{
    memset(k, 0, sizeof *k);
    if (access(path, F_OK) != 0 && errno == ENOENT)
        return FEDGE_OK;
    return fedge_keys_load(path, k, err, errlen);
}

int fedge_keys_file_add(const char *path, const fedge_device_entry *e, char *err, size_t errlen)
{
    int ret, lock = -1;
    fedge_keys k = {0};
    char *text = NULL, *buf = NULL, line[FEDGE_KEYS_LINE_MAX];
    size_t len = 0, n;
    char errbuf[1];
    if (!err) {
        err = errbuf;
        errlen = sizeof errbuf;
    }
    err[0] = '\0';
    if (!path || !e || !fedge_device_id_valid(e->id, strlen(e->id)) || !e->region[0])
        return FEDGE_ERR_INVALID_ARG;
    CHK(lock_keys_file(path, &lock));
    CHK(load_existing(path, &k, err, errlen));
    if (find_slot(&k, e->id) >= 0) {
        snprintf(err, errlen, "%s already lists device %s", path, e->id);
        FAIL(FEDGE_ERR_DUPLICATE);
    }
    for (size_t i = 0; i < k.n; i++) {
        if (strcasecmp(k.devices[i].id, e->id) == 0) {
            snprintf(err, errlen, "%s already lists device %s, which differs from %s only in case", path,
                     k.devices[i].id, e->id);
            FAIL(FEDGE_ERR_DUPLICATE);
        }
        if (mbedtls_ct_memcmp(k.devices[i].secret, e->secret, FEDGE_SECRET_LEN) == 0) {
            snprintf(err, errlen, "%s: device %s already has this secret", path, k.devices[i].id);
            FAIL(FEDGE_ERR_DUPLICATE);
        }
    }
    if (k.n >= FEDGE_KEYS_MAX_DEVICES) {
        snprintf(err, errlen, "%s already lists %d devices", path, FEDGE_KEYS_MAX_DEVICES);
        FAIL(FEDGE_ERR_RANGE);
    }
    ret = read_text(path, &text, &len);
    if (ret == FEDGE_ERR_NOT_REGULAR)
        snprintf(err, errlen, "%s is a symbolic link or not a regular file: the keys file is replaced "
                 "atomically, never through a link (give the link's target)", path);
    CHK(ret);
    n = fedge_keys_format_line(e, line, sizeof line);
    if (n == 0)
        FAIL(FEDGE_ERR_INVALID_ARG);
    buf = malloc(len + 1 + n);
    if (!buf)
        FAIL(FEDGE_ERR_NOMEM);
    size_t off = len;
    if (len)
        memcpy(buf, text, len);
    if (len && buf[len - 1] != '\n')
        buf[off++] = '\n';
    memcpy(buf + off, line, n);
    ret = fedge_write_file_atomic(path, buf, off + n, 0600, 0);
    if (ret != FEDGE_OK)
        snprintf(err, errlen, "%s: %s", path, ret == FEDGE_ERR_IO ? strerror(errno) : fedge_strerror(ret));
    mbedtls_platform_zeroize(buf, off + n);
cleanup:
    mbedtls_platform_zeroize(line, sizeof line);
    if (text)
        mbedtls_platform_zeroize(text, len);
    free(text);
    free(buf);
    fedge_keys_free(&k);
    if (lock >= 0)
        close(lock);
    return ret;
}

int fedge_keys_file_remove(const char *path, const char *id, char *region, char *err, size_t errlen)
{
    int ret, lock = -1;
    fedge_keys k = {0};
    char *text = NULL, *buf = NULL;
    size_t len = 0, off = 0;
    char errbuf[1];
    if (!err) {
        err = errbuf;
        errlen = sizeof errbuf;
    }
    err[0] = '\0';
    if (!path || !id || !fedge_device_id_valid(id, strlen(id)))
        return FEDGE_ERR_INVALID_ARG;
    CHK(lock_keys_file(path, &lock));
    CHK(fedge_keys_load(path, &k, err, errlen));
    const fedge_device_entry *e = fedge_keys_find(&k, id, strlen(id));
    if (!e) {
        snprintf(err, errlen, "%s does not list device %s", path, id);
        FAIL(FEDGE_ERR_NOT_FOUND);
    }
    if (region)
        snprintf(region, FEDGE_REGION_MAX + 1, "%s", e->region);
    ret = read_text(path, &text, &len);
    if (ret == FEDGE_ERR_NOT_REGULAR)
        snprintf(err, errlen, "%s is a symbolic link or not a regular file: the keys file is replaced "
                 "atomically, never through a link (give the link's target)", path);
    CHK(ret);
    buf = malloc(len + 1);
    if (!buf)
        FAIL(FEDGE_ERR_NOMEM);
    /* the line whose first word is id goes; the load above proved there is one */
    size_t idlen = strlen(id);
    for (char *p = text; p < text + len;) {
        char *eol = memchr(p, '\n', (size_t)(text + len - p));
        size_t ll = eol ? (size_t)(eol - p) + 1 : (size_t)(text + len - p);
        const char *w = p + strspn(p, " \t");
        int match = (size_t)(p + ll - w) > idlen && strncmp(w, id, idlen) == 0 &&
                    (w[idlen] == ' ' || w[idlen] == '\t');
        if (!match) {
            memcpy(buf + off, p, ll);
            off += ll;
        }
        p += ll;
    }
    ret = fedge_write_file_atomic(path, buf, off, 0600, 0);
    if (ret != FEDGE_OK)
        snprintf(err, errlen, "%s: %s", path, ret == FEDGE_ERR_IO ? strerror(errno) : fedge_strerror(ret));
cleanup:
    if (text)
        mbedtls_platform_zeroize(text, len);
    if (buf)
        mbedtls_platform_zeroize(buf, len + 1);
    free(text);
    free(buf);
    fedge_keys_free(&k);
    if (lock >= 0)
        close(lock);
    return ret;
}

static const char BUNDLE_TAG[] = "# fedge-bundle server ";

static int server_valid(const char *s, size_t n)
{
    if (n == 0 || n > FEDGE_BUNDLE_SERVER_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
              strchr(".:_[]-", s[i])))
            return 0;
    return 1;
}

int fedge_keys_bundle_write(const char *path, const fedge_device_entry *e, const char *server)
{
    char line[FEDGE_KEYS_LINE_MAX], buf[sizeof BUNDLE_TAG + FEDGE_BUNDLE_SERVER_MAX + 1 + FEDGE_KEYS_LINE_MAX];
    if (!path || !e || !server || !server_valid(server, strlen(server)))
        return FEDGE_ERR_INVALID_ARG;
    size_t n = fedge_keys_format_line(e, line, sizeof line);
    if (n == 0)
        return FEDGE_ERR_INVALID_ARG;
    int len = snprintf(buf, sizeof buf, "%s%s\n%s", BUNDLE_TAG, server, line);
    int ret = (len < 0 || (size_t)len >= sizeof buf)
                  ? FEDGE_ERR_BUFFER_TOO_SMALL
                  : fedge_write_file_inplace(path, buf, (size_t)len, 0600, FEDGE_FILE_EXCL);
    mbedtls_platform_zeroize(line, sizeof line);
    mbedtls_platform_zeroize(buf, sizeof buf);
    return ret;
}

int fedge_keys_bundle_read(const char *path, fedge_keys *out, char server[FEDGE_BUNDLE_SERVER_MAX + 1],
                           char *err, size_t errlen)
{
    char line[512];
    char errbuf[1];
    int ret;
    if (!err) {
        err = errbuf;
        errlen = sizeof errbuf;
    }
    server[0] = '\0';
    CHK(fedge_keys_load(path, out, err, errlen));
    if (out->n != 1) {
        snprintf(err, errlen, "%s: a bundle holds one device, this file %zu", path, out->n);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    FILE *f = NULL;
    ret = fedge_fopen_regular(path, 0, &f, NULL);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "%s: %s", path,
                 ret == FEDGE_ERR_NOT_REGULAR ? "not a regular file" : strerror(errno));
        goto cleanup;
    }
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, BUNDLE_TAG, sizeof BUNDLE_TAG - 1) != 0)
            continue;
        char *v = line + sizeof BUNDLE_TAG - 1;
        size_t n = strcspn(v, "\r\n");
        if (!server_valid(v, n) || server[0]) {
            snprintf(err, errlen, "%s: a malformed or second '%.*s' line", path, (int)sizeof BUNDLE_TAG - 2,
                     BUNDLE_TAG);
            ret = FEDGE_ERR_CONFIG_VALUE;
            break;
        }
        memcpy(server, v, n);
        server[n] = '\0';
    }
    mbedtls_platform_zeroize(line, sizeof line);
    fclose(f);
cleanup:
    if (ret != FEDGE_OK) {
        fedge_keys_free(out);
        server[0] = '\0';
    }
    return ret;
}
