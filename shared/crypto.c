/* crypto.c — the crypto dispatch and its default backend, mbedTLS (crypto.h). */
#include "crypto.h"

#include <string.h>

#include <mbedtls/gcm.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/sha256.h>

#include "common.h"

_Static_assert(sizeof(mbedtls_sha256_context) <= FEDGE_SHA256_STATE_LEN,
               "fedge_sha256_ctx too small for mbedTLS's context");

/* ---- mbedTLS --------------------------------------------------------------- */

static int mb_sha256(const void *data, size_t len, uint8_t out[FEDGE_SHA256_LEN])
{
    return mbedtls_sha256_ret(data, len, out, 0) == 0 ? FEDGE_OK : FEDGE_ERR_CRYPTO;
}

static int mb_sha256_init(fedge_sha256_ctx *ctx)
{
    mbedtls_sha256_context *c = (mbedtls_sha256_context *)ctx->state;
    mbedtls_sha256_init(c);
    return mbedtls_sha256_starts_ret(c, 0) == 0 ? FEDGE_OK : FEDGE_ERR_CRYPTO;
}

static int mb_sha256_update(fedge_sha256_ctx *ctx, const void *data, size_t len)
{
    mbedtls_sha256_context *c = (mbedtls_sha256_context *)ctx->state;
    return mbedtls_sha256_update_ret(c, data, len) == 0 ? FEDGE_OK : FEDGE_ERR_CRYPTO;
}

static int mb_sha256_final(fedge_sha256_ctx *ctx, uint8_t out[FEDGE_SHA256_LEN])
{
    mbedtls_sha256_context *c = (mbedtls_sha256_context *)ctx->state;
    return mbedtls_sha256_finish_ret(c, out) == 0 ? FEDGE_OK : FEDGE_ERR_CRYPTO;
}

static void mb_sha256_free(fedge_sha256_ctx *ctx)
{
    mbedtls_sha256_free((mbedtls_sha256_context *)ctx->state);
}

static int mb_gcm_seal(const uint8_t key[FEDGE_GCM_KEY_LEN], const uint8_t *iv, size_t iv_len,
                       const uint8_t *aad, size_t aad_len, const uint8_t *plain, size_t len,
                       uint8_t *ct, uint8_t tag[FEDGE_GCM_TAG_LEN])
{
    int ret = FEDGE_OK;
    mbedtls_gcm_context gcm;
    mbedtls_gcm_init(&gcm);
    if (mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, 8 * FEDGE_GCM_KEY_LEN) != 0)
        FAIL(FEDGE_ERR_CRYPTO);
    if (mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, len, iv, iv_len, aad, aad_len, plain,
                                  ct, FEDGE_GCM_TAG_LEN, tag) != 0)
        FAIL(FEDGE_ERR_CRYPTO);
cleanup:
    mbedtls_gcm_free(&gcm); /* wipes the expanded key */
    return ret;
}

static int mb_gcm_open(const uint8_t key[FEDGE_GCM_KEY_LEN], const uint8_t *iv, size_t iv_len,
                       const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t len,
                       const uint8_t tag[FEDGE_GCM_TAG_LEN], uint8_t *plain)
{
    int ret = FEDGE_OK;
    mbedtls_gcm_context gcm;
    mbedtls_gcm_init(&gcm);
    if (mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, 8 * FEDGE_GCM_KEY_LEN) != 0)
        FAIL(FEDGE_ERR_CRYPTO);
    int rc = mbedtls_gcm_auth_decrypt(&gcm, len, iv, iv_len, aad, aad_len, tag,
                                      FEDGE_GCM_TAG_LEN, ct, plain);
    if (rc == MBEDTLS_ERR_GCM_AUTH_FAILED)
        FAIL(FEDGE_ERR_ENV_AUTH);
    if (rc != 0)
        FAIL(FEDGE_ERR_CRYPTO);
cleanup:
    mbedtls_gcm_free(&gcm);
    return ret;
}

static const fedge_crypto_backend mbedtls_backend = {
    .name = "mbedtls",
    .sha256 = mb_sha256,
    .sha256_init = mb_sha256_init,
    .sha256_update = mb_sha256_update,
    .sha256_final = mb_sha256_final,
    .sha256_free = mb_sha256_free,
    .gcm_seal = mb_gcm_seal,
    .gcm_open = mb_gcm_open,
};

const fedge_crypto_backend *fedge_crypto_mbedtls(void)
{
    return &mbedtls_backend;
}

/* ---- dispatch -------------------------------------------------------------- */

static const fedge_crypto_backend *active = &mbedtls_backend;

const fedge_crypto_backend *fedge_crypto_backend_get(void)
{
    return active;
}

void fedge_crypto_backend_set(const fedge_crypto_backend *be)
{
    active = be != NULL ? be : &mbedtls_backend;
}

int fedge_crypto_sha256(const void *data, size_t len, uint8_t out[FEDGE_SHA256_LEN])
{
    if ((data == NULL && len > 0) || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return active->sha256(data, len, out);
}

int fedge_sha256_init(fedge_sha256_ctx *ctx)
{
    if (ctx == NULL)
        return FEDGE_ERR_INVALID_ARG;
    memset(ctx, 0, sizeof *ctx);
    ctx->be = active;
    return ctx->be->sha256_init(ctx);
}

int fedge_sha256_update(fedge_sha256_ctx *ctx, const void *data, size_t len)
{
    if (ctx == NULL || ctx->be == NULL || (data == NULL && len > 0))
        return FEDGE_ERR_INVALID_ARG;
    if (len == 0)
        return FEDGE_OK;
    return ctx->be->sha256_update(ctx, data, len);
}

int fedge_sha256_final(fedge_sha256_ctx *ctx, uint8_t out[FEDGE_SHA256_LEN])
{
    if (ctx == NULL || ctx->be == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return ctx->be->sha256_final(ctx, out);
}

void fedge_sha256_free(fedge_sha256_ctx *ctx)
{
    if (ctx == NULL || ctx->be == NULL)
        return;
    ctx->be->sha256_free(ctx);
    mbedtls_platform_zeroize(ctx, sizeof *ctx);
}

static int gcm_args_ok(const uint8_t *key, const uint8_t *iv, size_t iv_len, const uint8_t *aad,
                       size_t aad_len, const uint8_t *in, const uint8_t *out, size_t len,
                       const uint8_t *tag)
{
    return key != NULL && iv != NULL && iv_len >= 1 && iv_len <= 64 && tag != NULL &&
           (aad != NULL || aad_len == 0) && ((in != NULL && out != NULL) || len == 0);
}

int fedge_gcm_seal(const uint8_t key[FEDGE_GCM_KEY_LEN], const uint8_t *iv, size_t iv_len,
                   const uint8_t *aad, size_t aad_len, const uint8_t *plain, size_t len,
                   uint8_t *ct, uint8_t tag[FEDGE_GCM_TAG_LEN])
{
    if (!gcm_args_ok(key, iv, iv_len, aad, aad_len, plain, ct, len, tag))
        return FEDGE_ERR_INVALID_ARG;
    return active->gcm_seal(key, iv, iv_len, aad, aad_len, plain, len, ct, tag);
}

int fedge_gcm_open(const uint8_t key[FEDGE_GCM_KEY_LEN], const uint8_t *iv, size_t iv_len,
                   const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t len,
                   const uint8_t tag[FEDGE_GCM_TAG_LEN], uint8_t *plain)
{
    if (!gcm_args_ok(key, iv, iv_len, aad, aad_len, ct, plain, len, tag))
        return FEDGE_ERR_INVALID_ARG;
    int ret = active->gcm_open(key, iv, iv_len, aad, aad_len, ct, len, tag, plain);
    if (ret != FEDGE_OK && len > 0)
        mbedtls_platform_zeroize(plain, len);
    return ret;
}
