/* hash.h — SHA-256 content hashes (on crypto.h's backend: mbedTLS, or OpenSSL
 * in server programs) and their hex form. Streaming: crypto.h. Also two
 * non-cryptographic hashes for in-memory tables and change digests, never
 * for content an adversary may choose to collide. */
#ifndef FEDGE_HASH_H
#define FEDGE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define FEDGE_HASH_LEN 32
#define FEDGE_HASH_HEX_LEN 65 /* 64 hex digits + NUL */

int fedge_sha256(const void *data, size_t len, uint8_t out[FEDGE_HASH_LEN]);
int fedge_sha256_file(const char *path, uint8_t out[FEDGE_HASH_LEN]);
void fedge_hash_to_hex(const uint8_t h[FEDGE_HASH_LEN], char out[FEDGE_HASH_HEX_LEN]);
/* out: 2n + 1 chars, lowercase, NUL-terminated. */
void fedge_hex_encode(const uint8_t *bytes, size_t n, char *out);
/* Exactly 2n hex digits then NUL (n <= 64), else FEDGE_ERR_INVALID_ARG and
 * out untouched. */
int fedge_hex_decode(const char *hex, uint8_t *out, size_t n);
/* Exactly 64 hex digits, else FEDGE_ERR_INVALID_ARG. */
int fedge_hash_from_hex(const char *hex, uint8_t out[FEDGE_HASH_LEN]);
/* Constant-time comparison; 0 when equal. */
int fedge_memcmp_ct(const void *a, const void *b, size_t len);

/* MurmurHash3's 64-bit finaliser: every input bit moves every output bit
 * (a pointer's low bits are zero, its high ones shared). */
static inline uint64_t fedge_mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* FNV-1a over len bytes, continuing from h (start: FEDGE_FNV1A_INIT). */
#define FEDGE_FNV1A_INIT 0xcbf29ce484222325ULL
static inline uint64_t fedge_fnv1a(uint64_t h, const void *data, size_t len)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

#endif
