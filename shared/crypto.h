/* crypto.h — SHA-256 and AES-256-GCM on a selectable backend.
 *
 * Every per-byte cryptographic operation in fedge (content hashes, shard and
 * model-file checksums, the audit chain, envelope sealing and opening) goes
 * through these calls. Two backends compute the same standard functions, so
 * their bytes are interchangeable (an edge on one, an aggregator on the other):
 *   - mbedTLS (crypto.c), the default: what the edge links, no libcrypto.
 *   - OpenSSL libcrypto EVP (crypto_openssl.c): SHA-NI / AES-NI + VPCLMULQDQ
 *     code paths, several times faster. Only programs that call
 *     fedge_crypto_use_openssl() link it (and -lcrypto).
 * The backend is process-wide: select it once at start-up, before any thread
 * runs. HKDF and HMAC (per key, not per byte) stay on mbedTLS (envelope.c).
 *
 * Errors: FEDGE_ERR_INVALID_ARG, FEDGE_ERR_NOMEM, FEDGE_ERR_CRYPTO (the
 * library failed), FEDGE_ERR_ENV_AUTH (GCM tag did not verify). */
#ifndef FEDGE_CRYPTO_H
#define FEDGE_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define FEDGE_SHA256_LEN 32
#define FEDGE_GCM_KEY_LEN 32
#define FEDGE_GCM_TAG_LEN 16
#define FEDGE_SHA256_STATE_LEN 128

typedef struct fedge_crypto_backend fedge_crypto_backend;

/* Streaming SHA-256. A zero-initialised ctx ({0}) may be freed without init;
 * free after init (whatever it or later calls returned) releases everything;
 * final leaves the ctx to be freed. */
typedef struct {
    const fedge_crypto_backend *be;
    _Alignas(16) unsigned char state[FEDGE_SHA256_STATE_LEN];
} fedge_sha256_ctx;

struct fedge_crypto_backend {
    const char *name;
    int (*sha256)(const void *data, size_t len, uint8_t out[FEDGE_SHA256_LEN]);
    int (*sha256_init)(fedge_sha256_ctx *ctx);
    int (*sha256_update)(fedge_sha256_ctx *ctx, const void *data, size_t len);
    int (*sha256_final)(fedge_sha256_ctx *ctx, uint8_t out[FEDGE_SHA256_LEN]);
    void (*sha256_free)(fedge_sha256_ctx *ctx);
    int (*gcm_seal)(const uint8_t key[FEDGE_GCM_KEY_LEN], const uint8_t *iv, size_t iv_len,
                    const uint8_t *aad, size_t aad_len, const uint8_t *plain, size_t len,
                    uint8_t *ct, uint8_t tag[FEDGE_GCM_TAG_LEN]);
    int (*gcm_open)(const uint8_t key[FEDGE_GCM_KEY_LEN], const uint8_t *iv, size_t iv_len,
                    const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t len,
                    const uint8_t tag[FEDGE_GCM_TAG_LEN], uint8_t *plain);
};

/* The backends. fedge_crypto_openssl() is in crypto_openssl.c: referencing it
 * links libcrypto; it returns NULL when libcrypto lacks SHA-256 or
 * AES-256-GCM (a FIPS-only provider set-up, say). */
const fedge_crypto_backend *fedge_crypto_mbedtls(void);
const fedge_crypto_backend *fedge_crypto_openssl(void);

/* The backend in use (mbedTLS until set). */
const fedge_crypto_backend *fedge_crypto_backend_get(void);
/* NULL selects the default (mbedTLS). */
void fedge_crypto_backend_set(const fedge_crypto_backend *be);
/* Server programs: switch to OpenSSL (defined in crypto_openssl.c, so only
 * its callers link libcrypto). FEDGE_ERR_UNSUPPORTED, and the backend left as
 * it was, when fedge_crypto_openssl() is NULL. */
int fedge_crypto_use_openssl(void);

/* On the backend in use. */
int fedge_crypto_sha256(const void *data, size_t len, uint8_t out[FEDGE_SHA256_LEN]);
int fedge_sha256_init(fedge_sha256_ctx *ctx);
int fedge_sha256_update(fedge_sha256_ctx *ctx, const void *data, size_t len);
int fedge_sha256_final(fedge_sha256_ctx *ctx, uint8_t out[FEDGE_SHA256_LEN]);
void fedge_sha256_free(fedge_sha256_ctx *ctx);

/* AES-256-GCM, 16-byte tag; iv_len 1..64 (fedge uses 12). ct may equal plain
 * (in place); any other overlap is the caller's bug. open writes plain only
 * through the backend's decryption and wipes it (len bytes) when the tag does
 * not verify (FEDGE_ERR_ENV_AUTH). */
int fedge_gcm_seal(const uint8_t key[FEDGE_GCM_KEY_LEN], const uint8_t *iv, size_t iv_len,
                   const uint8_t *aad, size_t aad_len, const uint8_t *plain, size_t len,
                   uint8_t *ct, uint8_t tag[FEDGE_GCM_TAG_LEN]);
int fedge_gcm_open(const uint8_t key[FEDGE_GCM_KEY_LEN], const uint8_t *iv, size_t iv_len,
                   const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t len,
                   const uint8_t tag[FEDGE_GCM_TAG_LEN], uint8_t *plain);

#endif
