/* crypto_openssl.c — the OpenSSL libcrypto (EVP) backend of crypto.h. Linked
 * only into programs that call fedge_crypto_use_openssl() (or reference
 * fedge_crypto_openssl()); they need -lcrypto. */
#include "crypto.h"

#include <limits.h>
#include <pthread.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common.h"

/* EVP takes int lengths: longer inputs go in pieces of this size. */
#define EVP_CHUNK ((size_t)1 << 30)

/* Fetched once: an implicit fetch on every EVP_*Init costs a provider lookup
 * under a lock. */
static EVP_MD *sha256_md;
static EVP_CIPHER *aes256gcm;
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

static void fetch_algorithms(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    aes256gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

static EVP_MD_CTX **md_slot(fedge_sha256_ctx *ctx)
{
    return (EVP_MD_CTX **)(void *)ctx->state;
}

static int ossl_sha256(const void *data, size_t len, uint8_t out[FEDGE_SHA256_LEN])
{
    if (len <= EVP_CHUNK)
        return EVP_Digest(data, len, out, NULL, sha256_md, NULL) == 1 ? FEDGE_OK
                                                                     : FEDGE_ERR_CRYPTO;
    fedge_sha256_ctx ctx = {.be = fedge_crypto_openssl()};
    int ret = ctx.be->sha256_init(&ctx);
    if (ret == FEDGE_OK)
        ret = ctx.be->sha256_update(&ctx, data, len);
    if (ret == FEDGE_OK)
        ret = ctx.be->sha256_final(&ctx, out);
    ctx.be->sha256_free(&ctx);
    return ret;
}

static int ossl_sha256_init(fedge_sha256_ctx *ctx)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    *md_slot(ctx) = c;
    if (c == NULL)
        return FEDGE_ERR_NOMEM;
    return EVP_DigestInit_ex(c, sha256_md, NULL) == 1 ? FEDGE_OK : FEDGE_ERR_CRYPTO;
}

static int ossl_sha256_update(fedge_sha256_ctx *ctx, const void *data, size_t len)
{
    EVP_MD_CTX *c = *md_slot(ctx);
    if (c == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return EVP_DigestUpdate(c, data, len) == 1 ? FEDGE_OK : FEDGE_ERR_CRYPTO;
}

static int ossl_sha256_final(fedge_sha256_ctx *ctx, uint8_t out[FEDGE_SHA256_LEN])
{
    EVP_MD_CTX *c = *md_slot(ctx);
    if (c == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return EVP_DigestFinal_ex(c, out, NULL) == 1 ? FEDGE_OK : FEDGE_ERR_CRYPTO;
}

static void ossl_sha256_free(fedge_sha256_ctx *ctx)
{
    EVP_MD_CTX_free(*md_slot(ctx));
    *md_slot(ctx) = NULL;
}

/* AAD (out == NULL) or payload through EVP_CipherUpdate in int-sized pieces. */
static int cipher_update(EVP_CIPHER_CTX *c, uint8_t *out, const uint8_t *in, size_t len)
{
    while (len > 0) {
        size_t n = len < EVP_CHUNK ? len : EVP_CHUNK;
        int outl = 0;
        if (EVP_CipherUpdate(c, out, &outl, in, (int)n) != 1)
            return FEDGE_ERR_CRYPTO;
        if (out != NULL) {
            if ((size_t)outl != n) /* GCM is a stream mode: never buffers */
                return FEDGE_ERR_CRYPTO;
            out += n;
        }
        in += n;
        len -= n;
    }
    return FEDGE_OK;
}

static int gcm_start(EVP_CIPHER_CTX *c, int enc, const uint8_t *key, const uint8_t *iv,
                     size_t iv_len)
{
    if (EVP_CipherInit_ex(c, aes256gcm, NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, (int)iv_len, NULL) != 1 ||
        EVP_CipherInit_ex(c, NULL, NULL, key, iv, enc) != 1)
        return FEDGE_ERR_CRYPTO;
    return FEDGE_OK;
}

static int ossl_gcm_seal(const uint8_t key[FEDGE_GCM_KEY_LEN], const uint8_t *iv, size_t iv_len,
                         const uint8_t *aad, size_t aad_len, const uint8_t *plain, size_t len,
                         uint8_t *ct, uint8_t tag[FEDGE_GCM_TAG_LEN])
{
    int ret = FEDGE_OK, outl = 0;
    uint8_t last[16];
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (c == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(gcm_start(c, 1, key, iv, iv_len));
    CHK(cipher_update(c, NULL, aad, aad_len));
    CHK(cipher_update(c, ct, plain, len));
    if (EVP_CipherFinal_ex(c, last, &outl) != 1 || outl != 0 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, FEDGE_GCM_TAG_LEN, tag) != 1)
        FAIL(FEDGE_ERR_CRYPTO);
cleanup:
    EVP_CIPHER_CTX_free(c); /* cleanses the expanded key */
    return ret;
}

static int ossl_gcm_open(const uint8_t key[FEDGE_GCM_KEY_LEN], const uint8_t *iv, size_t iv_len,
                         const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t len,
                         const uint8_t tag[FEDGE_GCM_TAG_LEN], uint8_t *plain)
{
    int ret = FEDGE_OK, outl = 0;
    uint8_t last[16], tag_copy[FEDGE_GCM_TAG_LEN];
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (c == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    memcpy(tag_copy, tag, sizeof tag_copy); /* SET_TAG takes a non-const pointer */
    CHK(gcm_start(c, 0, key, iv, iv_len));
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, FEDGE_GCM_TAG_LEN, tag_copy) != 1)
        FAIL(FEDGE_ERR_CRYPTO);
    CHK(cipher_update(c, NULL, aad, aad_len));
    CHK(cipher_update(c, plain, ct, len));
    /* the plaintext is written before the tag is checked; fedge_gcm_open wipes
     * it on failure */
    if (EVP_CipherFinal_ex(c, last, &outl) != 1)
        FAIL(FEDGE_ERR_ENV_AUTH);
cleanup:
    EVP_CIPHER_CTX_free(c);
    return ret;
}

static const fedge_crypto_backend openssl_backend = {
    .name = "openssl",
    .sha256 = ossl_sha256,
    .sha256_init = ossl_sha256_init,
    .sha256_update = ossl_sha256_update,
    .sha256_final = ossl_sha256_final,
    .sha256_free = ossl_sha256_free,
    .gcm_seal = ossl_gcm_seal,
    .gcm_open = ossl_gcm_open,
};

const fedge_crypto_backend *fedge_crypto_openssl(void)
{
    if (pthread_once(&fetch_once, fetch_algorithms) != 0)
        return NULL;
    return sha256_md != NULL && aes256gcm != NULL ? &openssl_backend : NULL;
}

int fedge_crypto_use_openssl(void)
{
    const fedge_crypto_backend *be = fedge_crypto_openssl();
    if (be == NULL)
        return FEDGE_ERR_UNSUPPORTED;
    fedge_crypto_backend_set(be);
    return FEDGE_OK;
}
