/* modelfile.c — model files and their version hash (see modelfile.h). */
#include "modelfile.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/platform_util.h>

#include "bytes.h"
#include "common.h"
#include "crypto.h"
#include "fileio.h"

static const uint8_t file_magic[4] = {'F', 'M', 'D', 'L'};

#define FILE_VERSION 1
/* magic + version + spec_len, and the longest prefix (spec + n_params) */
#define FIXED_LEN 12
#define PREFIX_MAX (FIXED_LEN + (FEDGE_MODEL_SPEC_MAX - 1) + 8)
#define PARAM_CHUNK 4096

static void params_to_le(const float *src, size_t n, uint8_t *dst)
{
    for (size_t i = 0; i < n; i++)
        fedge_put_f32(dst + 4 * i, src[i]);
}

static void params_from_le(const uint8_t *src, size_t n, float *dst)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = fedge_get_f32(src + 4 * i);
}

static int params_finite(const float *p, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &p[i], sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return bad == 0;
}

/* The bytes before the parameters: magic, version, spec_len, spec, n_params. */
static int build_prefix(const fedge_model *m, uint8_t prefix[PREFIX_MAX], size_t *prefix_len)
{
    char spec[FEDGE_MODEL_SPEC_MAX];
    if (fedge_model_spec_format(&m->spec, spec, sizeof spec) != FEDGE_OK)
        return FEDGE_ERR_MODEL_SPEC;
    if (m->n_params != fedge_model_spec_param_count(&m->spec))
        return FEDGE_ERR_MODEL_SHAPE;
    size_t sl = strlen(spec);
    memcpy(prefix, file_magic, 4);
    fedge_put_u32(prefix + 4, FILE_VERSION);
    fedge_put_u32(prefix + 8, (uint32_t)sl);
    memcpy(prefix + FIXED_LEN, spec, sl);
    fedge_put_u64(prefix + FIXED_LEN + sl, (uint64_t)m->n_params);
    *prefix_len = FIXED_LEN + sl + 8;
    return FEDGE_OK;
}

/* SHA-256 of prefix || params as little-endian bytes, without a copy of the
 * whole parameter block. */
static int hash_body(const uint8_t *prefix, size_t prefix_len, const float *params,
                     size_t n, uint8_t out[FEDGE_HASH_LEN])
{
    int ret = FEDGE_OK;
    uint8_t chunk[4 * PARAM_CHUNK];
    fedge_sha256_ctx ctx = {0};
    CHK(fedge_sha256_init(&ctx));
    CHK(fedge_sha256_update(&ctx, prefix, prefix_len));
    for (size_t i = 0; i < n; i += PARAM_CHUNK) {
        size_t k = n - i < PARAM_CHUNK ? n - i : PARAM_CHUNK;
        params_to_le(params + i, k, chunk);
        CHK(fedge_sha256_update(&ctx, chunk, 4 * k));
    }
    CHK(fedge_sha256_final(&ctx, out));
cleanup:
    fedge_sha256_free(&ctx);
    return ret;
}

int fedge_model_version(const fedge_model *m, uint8_t version[FEDGE_HASH_LEN])
{
    if (m == NULL || version == NULL || (m->params == NULL && m->n_params > 0))
        return FEDGE_ERR_INVALID_ARG;
    uint8_t prefix[PREFIX_MAX];
    size_t prefix_len;
    int ret = build_prefix(m, prefix, &prefix_len);
    if (ret != FEDGE_OK)
        return ret;
    return hash_body(prefix, prefix_len, m->params, m->n_params, version);
}

int fedge_model_serialize(const fedge_model *m, uint8_t **out, size_t *out_len,
                          uint8_t version_out[FEDGE_HASH_LEN])
{
    if (m == NULL || out == NULL || out_len == NULL || (m->params == NULL && m->n_params > 0))
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    *out_len = 0;
    uint8_t prefix[PREFIX_MAX];
    size_t prefix_len;
    int ret = build_prefix(m, prefix, &prefix_len);
    if (ret != FEDGE_OK)
        return ret;
    if (!params_finite(m->params, m->n_params))
        return FEDGE_ERR_MODEL_NONFINITE;
    size_t body = prefix_len + 4 * m->n_params;
    uint8_t *buf = malloc(body + FEDGE_HASH_LEN);
    if (buf == NULL)
        return FEDGE_ERR_NOMEM;
    memcpy(buf, prefix, prefix_len);
    params_to_le(m->params, m->n_params, buf + prefix_len);
    ret = fedge_sha256(buf, body, buf + body);
    if (ret != FEDGE_OK) {
        free(buf);
        return ret;
    }
    if (version_out != NULL)
        memcpy(version_out, buf + body, FEDGE_HASH_LEN);
    *out = buf;
    *out_len = body + FEDGE_HASH_LEN;
    return FEDGE_OK;
}

typedef struct {
    fedge_model_spec spec;
    size_t prefix_len;
    size_t n_params;
} prefix_info;

/* Validates the prefix from its first `avail` bytes against the total
 * length of the file or buffer. */
static int parse_prefix(const uint8_t *p, size_t avail, uint64_t total_len, prefix_info *info)
{
    if (avail >= 4 && memcmp(p, file_magic, 4) != 0)
        return FEDGE_ERR_MODEL_FILE_MAGIC;
    if (avail < FIXED_LEN)
        return FEDGE_ERR_MODEL_FILE_TRUNCATED;
    if (fedge_get_u32(p + 4) != FILE_VERSION)
        return FEDGE_ERR_MODEL_FILE_VERSION;
    uint32_t sl = fedge_get_u32(p + 8);
    if (sl == 0 || sl >= FEDGE_MODEL_SPEC_MAX)
        return FEDGE_ERR_MODEL_SPEC;
    if (avail < FIXED_LEN + (size_t)sl + 8)
        return FEDGE_ERR_MODEL_FILE_TRUNCATED;

    char spec[FEDGE_MODEL_SPEC_MAX], canon[FEDGE_MODEL_SPEC_MAX];
    memcpy(spec, p + FIXED_LEN, sl);
    spec[sl] = '\0';
    if (memchr(spec, '\0', sl) != NULL || fedge_model_spec_parse(spec, &info->spec) != FEDGE_OK ||
        fedge_model_spec_format(&info->spec, canon, sizeof canon) != FEDGE_OK ||
        strcmp(spec, canon) != 0)
        return FEDGE_ERR_MODEL_SPEC;
    uint64_t n = fedge_get_u64(p + FIXED_LEN + sl);
    size_t want = fedge_model_spec_param_count(&info->spec);
    if (n != (uint64_t)want)
        return FEDGE_ERR_MODEL_SHAPE;
    info->prefix_len = FIXED_LEN + sl + 8;
    info->n_params = want;
    if (total_len != (uint64_t)info->prefix_len + 4 * (uint64_t)want + FEDGE_HASH_LEN)
        return FEDGE_ERR_MODEL_FILE_TRUNCATED;
    return FEDGE_OK;
}

/* Checksum, then values; the model is handed over only when both pass. */
static int finish_load(const uint8_t *prefix, const prefix_info *info, fedge_model *tmp,
                       const uint8_t stored[FEDGE_HASH_LEN], fedge_model *m,
                       uint8_t version_out[FEDGE_HASH_LEN])
{
    uint8_t h[FEDGE_HASH_LEN];
    int ret = hash_body(prefix, info->prefix_len, tmp->params, tmp->n_params, h);
    if (ret != FEDGE_OK)
        return ret;
    if (fedge_memcmp_ct(h, stored, FEDGE_HASH_LEN) != 0)
        return FEDGE_ERR_MODEL_FILE_CHECKSUM;
    if (!params_finite(tmp->params, tmp->n_params))
        return FEDGE_ERR_MODEL_NONFINITE;
    if (version_out != NULL)
        memcpy(version_out, h, FEDGE_HASH_LEN);
    *m = *tmp;
    memset(tmp, 0, sizeof *tmp);
    return FEDGE_OK;
}

int fedge_model_deserialize(const uint8_t *buf, size_t len, fedge_model *m,
                            uint8_t version_out[FEDGE_HASH_LEN])
{
    if (buf == NULL || m == NULL)
        return FEDGE_ERR_INVALID_ARG;
    prefix_info info;
    int ret = parse_prefix(buf, len, len, &info);
    if (ret != FEDGE_OK)
        return ret;
    fedge_model tmp;
    memset(&tmp, 0, sizeof tmp);
    CHK(fedge_model_init(&tmp, &info.spec));
    params_from_le(buf + info.prefix_len, info.n_params, tmp.params);
    CHK(finish_load(buf, &info, &tmp, buf + len - FEDGE_HASH_LEN, m, version_out));
cleanup:
    fedge_model_free(&tmp);
    return ret;
}

int fedge_model_deserialize_owned(uint8_t *buf, size_t len, fedge_model *m,
                                  uint8_t version_out[FEDGE_HASH_LEN])
{
    if (buf == NULL || m == NULL) {
        free(buf);
        return FEDGE_ERR_INVALID_ARG;
    }
    prefix_info info;
    uint8_t prefix[PREFIX_MAX], stored[FEDGE_HASH_LEN];
    fedge_model tmp;
    memset(&tmp, 0, sizeof tmp);
    int ret = parse_prefix(buf, len, len, &info);
    if (ret != FEDGE_OK || info.prefix_len > sizeof prefix || info.n_params == 0) {
        free(buf);
        return ret != FEDGE_OK ? ret : FEDGE_ERR_MODEL_SPEC;
    }
    memcpy(prefix, buf, info.prefix_len);
    memcpy(stored, buf + len - FEDGE_HASH_LEN, FEDGE_HASH_LEN);
    /* the parameters move to the front and become host floats in place */
    memmove(buf, buf + info.prefix_len, 4 * info.n_params);
    params_from_le(buf, info.n_params, (float *)(void *)buf);
    float *params = realloc(buf, 4 * info.n_params);
    tmp.spec = info.spec;
    tmp.n_params = info.n_params;
    tmp.params = params != NULL ? params : (float *)(void *)buf; /* else the larger block stays */
    CHK(finish_load(prefix, &info, &tmp, stored, m, version_out));
cleanup:
    fedge_model_free(&tmp);
    return ret;
}

int fedge_model_load(const char *path, fedge_model *m, uint8_t version_out[FEDGE_HASH_LEN])
{
    if (path == NULL || m == NULL)
        return FEDGE_ERR_INVALID_ARG;
    int ret = FEDGE_OK;
    fedge_model tmp;
    memset(&tmp, 0, sizeof tmp);
    uint8_t prefix[PREFIX_MAX], stored[FEDGE_HASH_LEN];
    prefix_info info;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        FAIL(errno == ENOENT ? FEDGE_ERR_NOT_FOUND : FEDGE_ERR_IO);
    if (fstat(fd, &st) != 0)
        FAIL(FEDGE_ERR_IO);
    if (!S_ISREG(st.st_mode))
        FAIL(FEDGE_ERR_IO);
    size_t avail = (uint64_t)st.st_size < PREFIX_MAX ? (size_t)st.st_size : PREFIX_MAX;
    CHK(fedge_pread_all(fd, prefix, avail, 0, FEDGE_ERR_MODEL_FILE_TRUNCATED));
    CHK(parse_prefix(prefix, avail, (uint64_t)st.st_size, &info));
    CHK(fedge_model_init(&tmp, &info.spec));
    /* Read the parameters straight into the model; on a little-endian host
     * the conversion below is the identity. */
    CHK(fedge_pread_all(fd, tmp.params, 4 * info.n_params, info.prefix_len,
                        FEDGE_ERR_MODEL_FILE_TRUNCATED));
    params_from_le((const uint8_t *)tmp.params, info.n_params, tmp.params);
    CHK(fedge_pread_all(fd, stored, FEDGE_HASH_LEN, info.prefix_len + 4 * info.n_params,
                        FEDGE_ERR_MODEL_FILE_TRUNCATED));
    CHK(finish_load(prefix, &info, &tmp, stored, m, version_out));
cleanup:
    if (fd >= 0)
        close(fd);
    fedge_model_free(&tmp);
    return ret;
}

int fedge_model_save(const fedge_model *m, const char *path, uint8_t version_out[FEDGE_HASH_LEN])
{
    if (m == NULL || path == NULL || path[0] == '\0')
        return FEDGE_ERR_INVALID_ARG;
    uint8_t *buf = NULL;
    size_t len = 0;
    uint8_t version[FEDGE_HASH_LEN];
    int ret = fedge_model_serialize(m, &buf, &len, version);
    if (ret == FEDGE_OK)
        ret = fedge_write_file_atomic(path, buf, len, 0644, 0);
    if (ret == FEDGE_OK && version_out != NULL)
        memcpy(version_out, version, FEDGE_HASH_LEN);
    free(buf);
    return ret;
}

int fedge_model_version_begin(fedge_sha256_ctx *ctx, const fedge_model_spec *spec, size_t n_params)
{
    if (!ctx || !spec)
        return FEDGE_ERR_INVALID_ARG;
    fedge_model m;
    memset(&m, 0, sizeof m);
    m.spec = *spec;
    m.n_params = n_params;
    uint8_t prefix[PREFIX_MAX];
    size_t prefix_len;
    int ret = build_prefix(&m, prefix, &prefix_len);
    if (ret != FEDGE_OK)
        return ret;
    ret = fedge_sha256_init(ctx);
    return ret != FEDGE_OK ? ret : fedge_sha256_update(ctx, prefix, prefix_len);
}

int fedge_model_version_update(fedge_sha256_ctx *ctx, const float *params, size_t n)
{
    if (!ctx || (!params && n > 0))
        return FEDGE_ERR_INVALID_ARG;
    uint8_t chunk[4 * PARAM_CHUNK];
    for (size_t i = 0; i < n; i += PARAM_CHUNK) {
        size_t k = n - i < PARAM_CHUNK ? n - i : PARAM_CHUNK;
        params_to_le(params + i, k, chunk);
        int ret = fedge_sha256_update(ctx, chunk, 4 * k);
        if (ret != FEDGE_OK)
            return ret;
    }
    return FEDGE_OK;
}
