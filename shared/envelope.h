/* envelope.h — AES-256-GCM sealing of an encoded update (GCM on crypto.h's
 * backend: mbedTLS, or OpenSSL in server programs; HKDF/HMAC on mbedTLS).
 *
 * Per-device key: HKDF-SHA256(ikm = device secret, salt = "fedge-v1",
 * info = "fedge update key" || device id) -> 32 bytes. A key id (first 8 bytes
 * of HMAC-SHA256(key, "fedge key id")) travels in the clear so a wrong key is
 * told apart from tampering.
 *
 * Sealed frame (little-endian):
 *   0 magic "FENV" | 4 u16 version (1) | 6 u16 reserved | 8 key id [8] |
 *   16 u64 counter | 24 nonce [12] | 36 u32 aad_len | 40 u32 ct_len |
 *   44 aad [aad_len] | ct [ct_len] | tag [16]
 * GCM's additional data is the whole frame up to the ciphertext (header +
 * aad), so counter and aad are authenticated; aad is the delta header, in the
 * clear so the receiver can check round, model and size before decrypting.
 * Nonce = 4 random bytes || u64 counter.
 *
 * Replay protection: the receiver keeps the last accepted counter per device
 * and passes it in; open() refuses counter <= last (FEDGE_ERR_ENV_REPLAY)
 * before decrypting. The caller persists the new counter once it accepts. */
#ifndef FEDGE_ENVELOPE_H
#define FEDGE_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include <mbedtls/gcm.h>

#define FEDGE_KEY_LEN 32
#define FEDGE_KEY_ID_LEN 8
#define FEDGE_ENV_HEADER_LEN 44
#define FEDGE_ENV_TAG_LEN 16
#define FEDGE_ENV_OVERHEAD (FEDGE_ENV_HEADER_LEN + FEDGE_ENV_TAG_LEN)
#define FEDGE_ENV_MAX_LEN (512u * 1024u * 1024u)
#define FEDGE_SECRET_MIN_LEN 16  /* device secrets shorter than this are refused */
#define FEDGE_ENV_ID_MAX 255     /* longest device id derive_key takes (keys.h is stricter) */

typedef struct {
    uint8_t key[FEDGE_KEY_LEN];
    uint8_t key_id[FEDGE_KEY_ID_LEN];
} fedge_device_key;

/* FEDGE_ERR_INVALID_ARG for a secret shorter than FEDGE_SECRET_MIN_LEN or an
 * empty / over-long device id. */
int fedge_envelope_derive_key(const uint8_t *secret, size_t secret_len,
                              const char *device_id, fedge_device_key *out);
/* The key id of a raw key (what derive_key puts in out->key_id). */
int fedge_envelope_key_id(const uint8_t key[FEDGE_KEY_LEN], uint8_t key_id[FEDGE_KEY_ID_LEN]);
/* Wipes the key. */
void fedge_device_key_wipe(fedge_device_key *k);

/* 0 when the frame would exceed FEDGE_ENV_MAX_LEN. */
size_t fedge_envelope_sealed_size(size_t aad_len, size_t plain_len);
/* random_prefix: 4 bytes for the nonce (from the caller's DRBG). aad and
 * plain may already lie at their places in out (out + 44 and out + 44 +
 * aad_len: sealing in place); any other overlap is FEDGE_ERR_INVALID_ARG. */
int fedge_envelope_seal(const fedge_device_key *k, uint64_t counter,
                        const uint8_t random_prefix[4], const uint8_t *aad,
                        size_t aad_len, const uint8_t *plain, size_t plain_len,
                        uint8_t *out, size_t cap, size_t *out_len);

/* The same frame as fedge_envelope_seal, produced front to back in pieces
 * (mbedTLS GCM, whatever crypto.h's backend): start writes the header and
 * aad (head: FEDGE_ENV_HEADER_LEN + aad_len bytes); update encrypts the next
 * plaintext piece into out (cap >= len + 15: up to 15 bytes of the previous
 * pieces are held back so GCM sees whole 16-byte blocks) and gives the count
 * written; finish, once plain_len bytes went in, writes the held-back bytes
 * (at most 15) and the tag. Sealing the same inputs again gives the same
 * bytes. free wipes the state (also after a failure, or without start). */
typedef struct {
    mbedtls_gcm_context gcm;
    uint8_t carry[16];
    size_t carry_len;
    size_t plain_len;   /* declared at start */
    size_t fed;         /* plaintext bytes taken so far */
    int started;
} fedge_envelope_sealer;

int fedge_envelope_sealer_start(fedge_envelope_sealer *s, const fedge_device_key *k,
                                uint64_t counter, const uint8_t random_prefix[4],
                                const uint8_t *aad, size_t aad_len, size_t plain_len,
                                uint8_t *head, size_t head_cap);
int fedge_envelope_sealer_update(fedge_envelope_sealer *s, const uint8_t *plain, size_t len,
                                 uint8_t *out, size_t cap, size_t *out_len);
int fedge_envelope_sealer_finish(fedge_envelope_sealer *s, uint8_t *out, size_t cap,
                                 size_t *out_len, uint8_t tag[FEDGE_ENV_TAG_LEN]);
void fedge_envelope_sealer_free(fedge_envelope_sealer *s);

/* Parsed view of a frame; pointers point into the caller's buffer. */
typedef struct {
    uint8_t key_id[FEDGE_KEY_ID_LEN];
    uint64_t counter;
    const uint8_t *aad;
    size_t aad_len;
    size_t ct_len;
} fedge_envelope_view;

/* Structure only: magic (checked once 4 bytes are there), version and a zero
 * reserved field (FEDGE_ERR_ENV_VERSION), lengths (FEDGE_ERR_ENV_TRUNCATED /
 * _OVERSIZED when the frame length disagrees with the declared lengths).
 * *v is written only on success. */
int fedge_envelope_parse(const uint8_t *in, size_t len, fedge_envelope_view *v);
/* Key id (FEDGE_ERR_ENV_KEY_MISMATCH) then counter > last_counter
 * (FEDGE_ERR_ENV_REPLAY), on a parsed view. */
int fedge_envelope_check(const fedge_device_key *k, uint64_t last_counter,
                         const fedge_envelope_view *v);
/* GCM decrypt of a parsed frame into plain (cap >= ct_len): plain is the
 * frame's own ciphertext (in place) or does not overlap in (any other
 * overlap: FEDGE_ERR_INVALID_ARG); FEDGE_ERR_ENV_AUTH when the tag does not
 * verify, and then plain's first ct_len bytes are zeroed. */
int fedge_envelope_decrypt(const fedge_device_key *k, const uint8_t *in,
                           const fedge_envelope_view *v, uint8_t *plain, size_t cap);
/* parse + key id + replay + GCM decrypt into plain (cap >= ct_len).
 * *plain_len and *v are written only on success. */
int fedge_envelope_open(const fedge_device_key *k, uint64_t last_counter,
                        const uint8_t *in, size_t len, uint8_t *plain, size_t cap,
                        size_t *plain_len, fedge_envelope_view *v);

#endif
