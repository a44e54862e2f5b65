/* envelope.c — AES-256-GCM frames keyed per device (see envelope.h); GCM on
 * crypto.h's backend, HKDF and HMAC on mbedTLS. */
#include "envelope.h"

#include <string.h>

#include <mbedtls/hkdf.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/version.h>

#include "bytes.h"
#include "common.h"
#include "crypto.h"
#include "hash.h"

static const uint8_t env_magic[4] = {'F', 'E', 'N', 'V'};
static const char kdf_salt[] = "fedge-v1";
static const char kdf_info[] = "fedge update key";
static const char key_id_label[] = "fedge key id";

#define ENV_VERSION 1
#define NONCE_LEN 12

int fedge_envelope_derive_key(const uint8_t *secret, size_t secret_len,
                              const char *device_id, fedge_device_key *out)
{
    if (secret == NULL || device_id == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    size_t id_len = strlen(device_id);
    if (secret_len < FEDGE_SECRET_MIN_LEN || id_len == 0 || id_len > FEDGE_ENV_ID_MAX)
        return FEDGE_ERR_INVALID_ARG;

    int ret = FEDGE_OK;
    uint8_t info[sizeof kdf_info - 1 + FEDGE_ENV_ID_MAX];
    fedge_device_key k;
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (md == NULL)
        return FEDGE_ERR_CRYPTO;
    memcpy(info, kdf_info, sizeof kdf_info - 1);
    memcpy(info + sizeof kdf_info - 1, device_id, id_len);
    if (mbedtls_hkdf(md, (const uint8_t *)kdf_salt, sizeof kdf_salt - 1, secret, secret_len,
                     info, sizeof kdf_info - 1 + id_len, k.key, sizeof k.key) != 0)
        FAIL(FEDGE_ERR_CRYPTO);
    CHK(fedge_envelope_key_id(k.key, k.key_id));
    *out = k;
cleanup:
    mbedtls_platform_zeroize(&k, sizeof k);
    return ret;
}

int fedge_envelope_key_id(const uint8_t key[FEDGE_KEY_LEN], uint8_t key_id[FEDGE_KEY_ID_LEN])
{
    if (key == NULL || key_id == NULL)
        return FEDGE_ERR_INVALID_ARG;
    uint8_t mac[32];
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (md == NULL || mbedtls_md_hmac(md, key, FEDGE_KEY_LEN, (const uint8_t *)key_id_label,
                                      sizeof key_id_label - 1, mac) != 0)
        return FEDGE_ERR_CRYPTO;
    memcpy(key_id, mac, FEDGE_KEY_ID_LEN);
    return FEDGE_OK;
}

void fedge_device_key_wipe(fedge_device_key *k)
{
    if (k != NULL)
        mbedtls_platform_zeroize(k, sizeof *k);
}

size_t fedge_envelope_sealed_size(size_t aad_len, size_t plain_len)
{
    if (aad_len > FEDGE_ENV_MAX_LEN || plain_len > FEDGE_ENV_MAX_LEN ||
        FEDGE_ENV_OVERHEAD + aad_len + plain_len > FEDGE_ENV_MAX_LEN)
        return 0;
    return FEDGE_ENV_OVERHEAD + aad_len + plain_len;
}

static void write_head(const fedge_device_key *k, uint64_t counter,
                       const uint8_t random_prefix[4], size_t aad_len, size_t plain_len,
                       uint8_t *out)
{
    memcpy(out, env_magic, 4);
    fedge_put_u16(out + 4, ENV_VERSION);
    fedge_put_u16(out + 6, 0);
    memcpy(out + 8, k->key_id, FEDGE_KEY_ID_LEN);
    fedge_put_u64(out + 16, counter);
    memcpy(out + 24, random_prefix, 4);
    fedge_put_u64(out + 28, counter);
    fedge_put_u32(out + 36, (uint32_t)aad_len);
    fedge_put_u32(out + 40, (uint32_t)plain_len);
}

int fedge_envelope_seal(const fedge_device_key *k, uint64_t counter,
                        const uint8_t random_prefix[4], const uint8_t *aad,
                        size_t aad_len, const uint8_t *plain, size_t plain_len,
                        uint8_t *out, size_t cap, size_t *out_len)
{
    if (k == NULL || random_prefix == NULL || out == NULL || out_len == NULL ||
        (aad == NULL && aad_len > 0) || (plain == NULL && plain_len > 0))
        return FEDGE_ERR_INVALID_ARG;
    *out_len = 0;
    size_t total = fedge_envelope_sealed_size(aad_len, plain_len);
    if (total == 0)
        return FEDGE_ERR_RANGE;
    if (cap < total)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    uint8_t *out_aad = out + FEDGE_ENV_HEADER_LEN;
    uint8_t *out_ct = out_aad + aad_len;
    /* In-place sealing: aad and plain may already sit where they belong in out,
     * any other overlap is refused. */
    if (plain_len > 0 && plain != out_ct && plain < out + total && out < plain + plain_len)
        return FEDGE_ERR_INVALID_ARG;
    if (aad_len > 0 && aad != out_aad && aad < out + total && out < aad + aad_len)
        return FEDGE_ERR_INVALID_ARG;

    int ret = FEDGE_OK;
    write_head(k, counter, random_prefix, aad_len, plain_len, out);
    if (aad_len > 0 && aad != out_aad)
        memcpy(out_aad, aad, aad_len);
    CHK(fedge_gcm_seal(k->key, out + 24, NONCE_LEN, out, FEDGE_ENV_HEADER_LEN + aad_len, plain,
                       plain_len, out_ct, out_ct + plain_len));
    *out_len = total;
cleanup:
    if (ret != FEDGE_OK)
        mbedtls_platform_zeroize(out, total);
    return ret;
}

int fedge_envelope_sealer_start(fedge_envelope_sealer *s, const fedge_device_key *k,
                                uint64_t counter, const uint8_t random_prefix[4],
                                const uint8_t *aad, size_t aad_len, size_t plain_len,
                                uint8_t *head, size_t head_cap)
{
    if (s == NULL || k == NULL || random_prefix == NULL || head == NULL ||
        (aad == NULL && aad_len > 0))
        return FEDGE_ERR_INVALID_ARG;
    memset(s, 0, sizeof *s);
    mbedtls_gcm_init(&s->gcm);
    s->started = 1;
    if (fedge_envelope_sealed_size(aad_len, plain_len) == 0)
        return FEDGE_ERR_RANGE;
    if (head_cap < FEDGE_ENV_HEADER_LEN + aad_len)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    write_head(k, counter, random_prefix, aad_len, plain_len, head);
    if (aad_len > 0)
        memmove(head + FEDGE_ENV_HEADER_LEN, aad, aad_len);
    s->plain_len = plain_len;
    if (mbedtls_gcm_setkey(&s->gcm, MBEDTLS_CIPHER_ID_AES, k->key, 8 * FEDGE_KEY_LEN) != 0)
        return FEDGE_ERR_CRYPTO;
#if MBEDTLS_VERSION_MAJOR >= 3
    if (mbedtls_gcm_starts(&s->gcm, MBEDTLS_GCM_ENCRYPT, head + 24, NONCE_LEN) != 0 ||
        mbedtls_gcm_update_ad(&s->gcm, head, FEDGE_ENV_HEADER_LEN + aad_len) != 0)
        return FEDGE_ERR_CRYPTO;
#else
    if (mbedtls_gcm_starts(&s->gcm, MBEDTLS_GCM_ENCRYPT, head + 24, NONCE_LEN, head,
                           FEDGE_ENV_HEADER_LEN + aad_len) != 0)
        return FEDGE_ERR_CRYPTO;
#endif
    return FEDGE_OK;
}

/* GCM over n bytes, n a multiple of 16 except at the very end (mbedTLS 2's rule). */
static int gcm_blocks(fedge_envelope_sealer *s, const uint8_t *in, size_t n, uint8_t *out)
{
    if (n == 0)
        return FEDGE_OK;
#if MBEDTLS_VERSION_MAJOR >= 3
    size_t olen = 0;
    return mbedtls_gcm_update(&s->gcm, in, n, out, n, &olen) == 0 && olen == n
               ? FEDGE_OK : FEDGE_ERR_CRYPTO;
#else
    return mbedtls_gcm_update(&s->gcm, n, in, out) == 0 ? FEDGE_OK : FEDGE_ERR_CRYPTO;
#endif
}

int fedge_envelope_sealer_update(fedge_envelope_sealer *s, const uint8_t *plain, size_t len,
                                 uint8_t *out, size_t cap, size_t *out_len)
{
    if (s == NULL || !s->started || out_len == NULL || out == NULL ||
        (plain == NULL && len > 0))
        return FEDGE_ERR_INVALID_ARG;
    *out_len = 0;
    if (len > s->plain_len - s->fed)
        return FEDGE_ERR_RANGE;
    if (cap < len + 15)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    int ret = FEDGE_OK;
    size_t done = 0;
    if (s->carry_len > 0) {
        size_t take = 16 - s->carry_len < len ? 16 - s->carry_len : len;
        memcpy(s->carry + s->carry_len, plain, take);
        s->carry_len += take;
        plain += take;
        len -= take;
        s->fed += take;
        if (s->carry_len < 16)
            return FEDGE_OK;
        CHK(gcm_blocks(s, s->carry, 16, out));
        done = 16;
        s->carry_len = 0;
    }
    size_t whole = len & ~(size_t)15;
    CHK(gcm_blocks(s, plain, whole, out + done));
    done += whole;
    s->fed += whole;
    memcpy(s->carry, plain + whole, len - whole);
    s->carry_len = len - whole;
    s->fed += len - whole;
    *out_len = done;
cleanup:
    return ret;
}

int fedge_envelope_sealer_finish(fedge_envelope_sealer *s, uint8_t *out, size_t cap,
                                 size_t *out_len, uint8_t tag[FEDGE_ENV_TAG_LEN])
{
    if (s == NULL || !s->started || out == NULL || out_len == NULL || tag == NULL)
        return FEDGE_ERR_INVALID_ARG;
    *out_len = 0;
    if (s->fed != s->plain_len)
        return FEDGE_ERR_STATE;
    if (cap < s->carry_len)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    int ret = gcm_blocks(s, s->carry, s->carry_len, out);
    if (ret != FEDGE_OK)
        return ret;
#if MBEDTLS_VERSION_MAJOR >= 3
    size_t olen = 0;
    if (mbedtls_gcm_finish(&s->gcm, NULL, 0, &olen, tag, FEDGE_ENV_TAG_LEN) != 0)
        return FEDGE_ERR_CRYPTO;
#else
    if (mbedtls_gcm_finish(&s->gcm, tag, FEDGE_ENV_TAG_LEN) != 0)
        return FEDGE_ERR_CRYPTO;
#endif
    *out_len = s->carry_len;
    mbedtls_platform_zeroize(s->carry, sizeof s->carry);
    s->carry_len = 0;
    return FEDGE_OK;
}

void fedge_envelope_sealer_free(fedge_envelope_sealer *s)
{
    if (s == NULL)
        return;
    if (s->started)
        mbedtls_gcm_free(&s->gcm);
    mbedtls_platform_zeroize(s, sizeof *s);
}

int fedge_envelope_parse(const uint8_t *in, size_t len, fedge_envelope_view *v)
{
    if (in == NULL || v == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (len >= 4 && memcmp(in, env_magic, 4) != 0)
        return FEDGE_ERR_ENV_MAGIC;
    if (len >= 6 && fedge_get_u16(in + 4) != ENV_VERSION)
        return FEDGE_ERR_ENV_VERSION;
    if (len < FEDGE_ENV_HEADER_LEN)
        return FEDGE_ERR_ENV_TRUNCATED;
    if (fedge_get_u16(in + 6) != 0)
        return FEDGE_ERR_ENV_VERSION;
    uint64_t aad_len = fedge_get_u32(in + 36);
    uint64_t ct_len = fedge_get_u32(in + 40);
    uint64_t total = FEDGE_ENV_OVERHEAD + aad_len + ct_len;
    if (len < total)
        return FEDGE_ERR_ENV_TRUNCATED;
    if (len > total || total > FEDGE_ENV_MAX_LEN)
        return FEDGE_ERR_ENV_OVERSIZED;
    memcpy(v->key_id, in + 8, FEDGE_KEY_ID_LEN);
    v->counter = fedge_get_u64(in + 16);
    v->aad = in + FEDGE_ENV_HEADER_LEN;
    v->aad_len = (size_t)aad_len;
    v->ct_len = (size_t)ct_len;
    return FEDGE_OK;
}

int fedge_envelope_check(const fedge_device_key *k, uint64_t last_counter,
                         const fedge_envelope_view *v)
{
    if (k == NULL || v == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (fedge_memcmp_ct(k->key_id, v->key_id, FEDGE_KEY_ID_LEN) != 0)
        return FEDGE_ERR_ENV_KEY_MISMATCH;
    if (v->counter <= last_counter)
        return FEDGE_ERR_ENV_REPLAY;
    return FEDGE_OK;
}

int fedge_envelope_decrypt(const fedge_device_key *k, const uint8_t *in,
                           const fedge_envelope_view *v, uint8_t *plain, size_t cap)
{
    if (k == NULL || in == NULL || v == NULL || (plain == NULL && v->ct_len > 0))
        return FEDGE_ERR_INVALID_ARG;
    if (cap < v->ct_len)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    size_t hdr_len = FEDGE_ENV_HEADER_LEN + v->aad_len;
    const uint8_t *ct = in + hdr_len;
    if (v->ct_len > 0 && plain != ct && plain < ct + v->ct_len + FEDGE_ENV_TAG_LEN && ct < plain + v->ct_len)
        return FEDGE_ERR_INVALID_ARG; /* in place (plain == ct), or apart */
    int ret = fedge_gcm_open(k->key, in + 24, NONCE_LEN, in, hdr_len, ct, v->ct_len,
                             ct + v->ct_len, plain);
    if (ret != FEDGE_OK && v->ct_len > 0 && cap >= v->ct_len)
        mbedtls_platform_zeroize(plain, v->ct_len);
    return ret;
}

int fedge_envelope_open(const fedge_device_key *k, uint64_t last_counter,
                        const uint8_t *in, size_t len, uint8_t *plain, size_t cap,
                        size_t *plain_len, fedge_envelope_view *v)
{
    if (k == NULL || in == NULL || plain_len == NULL || v == NULL)
        return FEDGE_ERR_INVALID_ARG;
    fedge_envelope_view t;
    int ret = fedge_envelope_parse(in, len, &t);
    if (ret == FEDGE_OK)
        ret = fedge_envelope_check(k, last_counter, &t);
    if (ret == FEDGE_OK)
        ret = fedge_envelope_decrypt(k, in, &t, plain, cap);
    if (ret != FEDGE_OK)
        return ret;
    *plain_len = t.ct_len;
    *v = t;
    return FEDGE_OK;
}
