/* envelope.h — AES-256-GCM sealing of an encoded update (mbedTLS).
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

#define FEDGE_KEY_LEN 32
#define FEDGE_KEY_ID_LEN 8
#define FEDGE_ENV_HEADER_LEN 44
#define FEDGE_ENV_TAG_LEN 16
#define FEDGE_ENV_OVERHEAD (FEDGE_ENV_HEADER_LEN + FEDGE_ENV_TAG_LEN)
#define FEDGE_ENV_MAX_LEN (512u * 1024u * 1024u)

typedef struct {
    uint8_t key[FEDGE_KEY_LEN];
    uint8_t key_id[FEDGE_KEY_ID_LEN];
} fedge_device_key;

int fedge_envelope_derive_key(const uint8_t *secret, size_t secret_len,
                              const char *device_id, fedge_device_key *out);
/* Wipes the key. */
void fedge_device_key_wipe(fedge_device_key *k);

size_t fedge_envelope_sealed_size(size_t aad_len, size_t plain_len);
/* random_prefix: 4 bytes for the nonce (from the caller's DRBG). */
int fedge_envelope_seal(const fedge_device_key *k, uint64_t counter,
                        const uint8_t random_prefix[4], const uint8_t *aad,
                        size_t aad_len, const uint8_t *plain, size_t plain_len,
                        uint8_t *out, size_t cap, size_t *out_len);

/* Parsed view of a frame; pointers point into the caller's buffer. */
typedef struct {
    uint8_t key_id[FEDGE_KEY_ID_LEN];
    uint64_t counter;
    const uint8_t *aad;
    size_t aad_len;
    size_t ct_len;
} fedge_envelope_view;

/* Structure only: magic, version, lengths (FEDGE_ERR_ENV_TRUNCATED /
 * _OVERSIZED when the frame length disagrees with the declared lengths). */
int fedge_envelope_parse(const uint8_t *in, size_t len, fedge_envelope_view *v);
/* parse + key id + replay + GCM decrypt into plain (cap >= ct_len). */
int fedge_envelope_open(const fedge_device_key *k, uint64_t last_counter,
                        const uint8_t *in, size_t len, uint8_t *plain, size_t cap,
                        size_t *plain_len, fedge_envelope_view *v);

#endif
