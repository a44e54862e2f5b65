/* test_envelope.c — SHA-256 and HKDF known answers, per-device keys, and
 * the AES-256-GCM frame: round trip, structure errors, wrong key, replay and
 * tampering at every byte. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mbedtls/hkdf.h>
#include <mbedtls/md.h>

#include "envelope.h"
#include "error.h"
#include "hash.h"

static void unhex(const char *hex, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
}

static void test_sha256_known_answers(void **state)
{
    (void)state;
    uint8_t h[FEDGE_HASH_LEN], want[FEDGE_HASH_LEN];
    char hex[FEDGE_HASH_HEX_LEN];
    assert_int_equal(fedge_sha256("abc", 3, h), FEDGE_OK);
    fedge_hash_to_hex(h, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(fedge_sha256(NULL, 0, h), FEDGE_OK);
    fedge_hash_to_hex(h, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_int_equal(fedge_sha256(two_blocks, strlen(two_blocks), h), FEDGE_OK);
    unhex("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", want, 32);
    assert_memory_equal(h, want, 32);

    /* hex round trip, upper case accepted, bad lengths and digits refused */
    uint8_t back[FEDGE_HASH_LEN];
    fedge_hash_to_hex(h, hex);
    assert_int_equal(fedge_hash_from_hex(hex, back), FEDGE_OK);
    assert_memory_equal(back, h, 32);
    char upper[FEDGE_HASH_HEX_LEN];
    for (int i = 0; i < 65; i++)
        upper[i] = (char)(hex[i] >= 'a' && hex[i] <= 'f' ? hex[i] - 32 : hex[i]);
    assert_int_equal(fedge_hash_from_hex(upper, back), FEDGE_OK);
    assert_memory_equal(back, h, 32);
    memset(back, 0x77, sizeof back);
    char bad[80];
    snprintf(bad, sizeof bad, "%.63s", hex);
    assert_int_equal(fedge_hash_from_hex(bad, back), FEDGE_ERR_INVALID_ARG);
    snprintf(bad, sizeof bad, "%s0", hex);
    assert_int_equal(fedge_hash_from_hex(bad, back), FEDGE_ERR_INVALID_ARG);
    snprintf(bad, sizeof bad, "%s", hex);
    bad[10] = 'g';
    assert_int_equal(fedge_hash_from_hex(bad, back), FEDGE_ERR_INVALID_ARG);
    for (int i = 0; i < 32; i++)
        assert_int_equal(back[i], 0x77); /* untouched on error */

    assert_int_equal(fedge_memcmp_ct(h, want, 32), 0);
    want[31] ^= 1;
    assert_int_not_equal(fedge_memcmp_ct(h, want, 32), 0);
}

static void test_sha256_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/fedge-env-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/data", dir);
    /* 200 KiB: several read chunks */
    size_t n = 200 * 1024;
    uint8_t *data = malloc(n);
    for (size_t i = 0; i < n; i++)
        data[i] = (uint8_t)(i * 131 + (i >> 9));
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
    uint8_t a[32], b[32];
    assert_int_equal(fedge_sha256_file(path, a), FEDGE_OK);
    assert_int_equal(fedge_sha256(data, n, b), FEDGE_OK);
    assert_memory_equal(a, b, 32);
    unlink(path);
    assert_int_equal(fedge_sha256_file(path, a), FEDGE_ERR_NOT_FOUND);
    rmdir(dir);
    free(data);
}

/* RFC 5869 test case 1, through mbedtls_hkdf the way envelope.c calls it. */
static void test_hkdf_rfc5869_case1(void **state)
{
    (void)state;
    uint8_t ikm[22], salt[13], info[10], okm[42], want[42];
    memset(ikm, 0x0b, sizeof ikm);
    for (int i = 0; i < 13; i++)
        salt[i] = (uint8_t)i;
    for (int i = 0; i < 10; i++)
        info[i] = (uint8_t)(0xf0 + i);
    unhex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
          want, 42);
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    assert_non_null(md);
    assert_int_equal(mbedtls_hkdf(md, salt, sizeof salt, ikm, sizeof ikm, info, sizeof info, okm,
                                  sizeof okm), 0);
    assert_memory_equal(okm, want, 42);
}

static const uint8_t secret_a[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                     17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static void test_derive_key(void **state)
{
    (void)state;
    fedge_device_key k1, k2, k1b, k3;
    assert_int_equal(fedge_envelope_derive_key(secret_a, 32, "dev-1", &k1), FEDGE_OK);
    assert_int_equal(fedge_envelope_derive_key(secret_a, 32, "dev-2", &k2), FEDGE_OK);
    assert_int_equal(fedge_envelope_derive_key(secret_a, 32, "dev-1", &k1b), FEDGE_OK);
    uint8_t other[32];
    memcpy(other, secret_a, 32);
    other[0] ^= 1;
    assert_int_equal(fedge_envelope_derive_key(other, 32, "dev-1", &k3), FEDGE_OK);
    assert_memory_equal(&k1, &k1b, sizeof k1);                       /* deterministic */
    assert_memory_not_equal(k1.key, k2.key, FEDGE_KEY_LEN);           /* per device */
    assert_memory_not_equal(k1.key_id, k2.key_id, FEDGE_KEY_ID_LEN);
    assert_memory_not_equal(k1.key, k3.key, FEDGE_KEY_LEN);           /* per secret */

    /* The documented derivation, recomputed here. */
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    uint8_t key[32], mac[32];
    const char *info = "fedge update keydev-1";
    assert_int_equal(mbedtls_hkdf(md, (const uint8_t *)"fedge-v1", 8, secret_a, 32,
                                  (const uint8_t *)info, strlen(info), key, 32), 0);
    assert_memory_equal(k1.key, key, 32);
    assert_int_equal(mbedtls_md_hmac(md, key, 32, (const uint8_t *)"fedge key id", 12, mac), 0);
    assert_memory_equal(k1.key_id, mac, FEDGE_KEY_ID_LEN);
    uint8_t kid[FEDGE_KEY_ID_LEN];
    assert_int_equal(fedge_envelope_key_id(k1.key, kid), FEDGE_OK);
    assert_memory_equal(kid, k1.key_id, FEDGE_KEY_ID_LEN);

    /* refused inputs leave the output alone */
    fedge_device_key z;
    memset(&z, 0x33, sizeof z);
    assert_int_equal(fedge_envelope_derive_key(secret_a, FEDGE_SECRET_MIN_LEN - 1, "dev-1", &z),
                     FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_envelope_derive_key(secret_a, 32, "", &z), FEDGE_ERR_INVALID_ARG);
    char long_id[FEDGE_ENV_ID_MAX + 2];
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    assert_int_equal(fedge_envelope_derive_key(secret_a, 32, long_id, &z), FEDGE_ERR_INVALID_ARG);
    for (size_t i = 0; i < sizeof z; i++)
        assert_int_equal(((uint8_t *)&z)[i], 0x33);

    fedge_device_key_wipe(&k1);
    for (size_t i = 0; i < sizeof k1; i++)
        assert_int_equal(((uint8_t *)&k1)[i], 0);
}

/* A small frame: 5 bytes of aad, 13 bytes of plaintext. */
typedef struct {
    fedge_device_key key;
    uint8_t frame[FEDGE_ENV_OVERHEAD + 5 + 13 + 1];
    size_t len;
} sealed;

static const uint8_t small_aad[5] = {'h', 'e', 'a', 'd', 'r'};
static const uint8_t small_plain[13] = "secret delta";

static void seal_small(sealed *s, uint64_t counter)
{
    const uint8_t prefix[4] = {0xde, 0xad, 0xbe, 0xef};
    assert_int_equal(fedge_envelope_derive_key(secret_a, 32, "dev-1", &s->key), FEDGE_OK);
    assert_int_equal(fedge_envelope_seal(&s->key, counter, prefix, small_aad, sizeof small_aad,
                                         small_plain, sizeof small_plain, s->frame,
                                         sizeof s->frame, &s->len), FEDGE_OK);
    assert_int_equal(s->len, fedge_envelope_sealed_size(5, 13));
    s->frame[s->len] = 0;
}

static void test_seal_open_round_trip(void **state)
{
    (void)state;
    sealed s;
    seal_small(&s, 42);
    assert_int_equal(s.len, 44 + 5 + 13 + 16);
    /* layout */
    assert_memory_equal(s.frame, "FENV", 4);
    assert_int_equal(s.frame[4], 1);
    assert_int_equal(s.frame[5], 0);
    assert_memory_equal(s.frame + 8, s.key.key_id, 8);
    assert_int_equal(s.frame[16], 42);
    assert_memory_equal(s.frame + 24, "\xde\xad\xbe\xef", 4);
    assert_int_equal(s.frame[28], 42); /* nonce = prefix || counter */
    assert_int_equal(s.frame[36], 5);
    assert_int_equal(s.frame[40], 13);
    assert_memory_equal(s.frame + 44, small_aad, 5);
    assert_memory_not_equal(s.frame + 49, small_plain, 13); /* encrypted */

    uint8_t plain[64];
    size_t plain_len = 0;
    fedge_envelope_view v;
    assert_int_equal(fedge_envelope_open(&s.key, 41, s.frame, s.len, plain, sizeof plain,
                                         &plain_len, &v), FEDGE_OK);
    assert_int_equal(plain_len, 13);
    assert_memory_equal(plain, small_plain, 13);
    assert_int_equal(v.counter, 42);
    assert_int_equal(v.aad_len, 5);
    assert_int_equal(v.ct_len, 13);
    assert_ptr_equal(v.aad, s.frame + 44);
    assert_memory_equal(v.key_id, s.key.key_id, 8);

    /* in place: aad and plaintext already in the output buffer */
    uint8_t buf[sizeof s.frame];
    size_t len;
    memcpy(buf + 44, small_aad, 5);
    memcpy(buf + 49, small_plain, 13);
    const uint8_t prefix[4] = {0xde, 0xad, 0xbe, 0xef};
    assert_int_equal(fedge_envelope_seal(&s.key, 42, prefix, buf + 44, 5, buf + 49, 13, buf,
                                         sizeof buf, &len), FEDGE_OK);
    assert_int_equal(len, s.len);
    assert_memory_equal(buf, s.frame, len);
    /* any other overlap is refused */
    assert_int_equal(fedge_envelope_seal(&s.key, 42, prefix, buf + 44, 5, buf + 50, 13, buf,
                                         sizeof buf, &len), FEDGE_ERR_INVALID_ARG);

    /* decrypting in place: over the frame's own ciphertext, and nowhere else in it */
    uint8_t frame[sizeof s.frame];
    memcpy(frame, s.frame, s.len);
    assert_int_equal(fedge_envelope_decrypt(&s.key, frame, &v, frame + 50, 13), FEDGE_ERR_INVALID_ARG);
    assert_memory_equal(frame, s.frame, s.len);
    assert_int_equal(fedge_envelope_parse(frame, s.len, &v), FEDGE_OK);
    assert_int_equal(fedge_envelope_decrypt(&s.key, frame, &v, frame + 49, 13), FEDGE_OK);
    assert_memory_equal(frame + 49, small_plain, 13);
    memcpy(frame, s.frame, s.len);
    frame[s.len - 1] ^= 1;
    assert_int_equal(fedge_envelope_decrypt(&s.key, frame, &v, frame + 49, 13), FEDGE_ERR_ENV_AUTH);
    for (size_t i = 0; i < 13; i++)
        assert_int_equal(frame[49 + i], 0);

    /* empty aad and plaintext are valid frames too */
    uint8_t tiny[FEDGE_ENV_OVERHEAD];
    assert_int_equal(fedge_envelope_seal(&s.key, 1, prefix, NULL, 0, NULL, 0, tiny, sizeof tiny,
                                         &len), FEDGE_OK);
    assert_int_equal(fedge_envelope_open(&s.key, 0, tiny, len, plain, sizeof plain, &plain_len,
                                         &v), FEDGE_OK);
    assert_int_equal(plain_len, 0);
    assert_int_equal(fedge_envelope_seal(&s.key, 1, prefix, NULL, 0, NULL, 0, tiny,
                                         sizeof tiny - 1, &len), FEDGE_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(fedge_envelope_sealed_size(FEDGE_ENV_MAX_LEN, 1), 0);
}

/* open must fail with `want`, leaving plain_len and the view alone. */
static void expect_open(const fedge_device_key *k, uint64_t last, const uint8_t *in, size_t len,
                        int want)
{
    uint8_t plain[64];
    size_t plain_len = 777;
    fedge_envelope_view v;
    memset(&v, 0x44, sizeof v);
    int rc = fedge_envelope_open(k, last, in, len, plain, sizeof plain, &plain_len, &v);
    if (rc != want)
        fail_msg("open gave %d (%s), wanted %d (%s)", rc, fedge_strerror(rc), want,
                 fedge_strerror(want));
    assert_int_equal(plain_len, 777);
    for (size_t i = 0; i < sizeof v; i++)
        assert_int_equal(((uint8_t *)&v)[i], 0x44);
}

static void test_open_errors(void **state)
{
    (void)state;
    sealed s;
    seal_small(&s, 42);
    uint8_t b[sizeof s.frame];

    for (size_t len = 0; len < s.len; len++)
        expect_open(&s.key, 0, s.frame, len, FEDGE_ERR_ENV_TRUNCATED);
    expect_open(&s.key, 0, s.frame, s.len + 1, FEDGE_ERR_ENV_OVERSIZED);

    memcpy(b, s.frame, s.len);
    b[0] = 'X';
    expect_open(&s.key, 0, b, s.len, FEDGE_ERR_ENV_MAGIC);
    expect_open(&s.key, 0, b, 10, FEDGE_ERR_ENV_MAGIC);
    memcpy(b, s.frame, s.len);
    b[4] = 2;
    expect_open(&s.key, 0, b, s.len, FEDGE_ERR_ENV_VERSION);
    memcpy(b, s.frame, s.len);
    b[40] = 14; /* declares more ciphertext than sent */
    expect_open(&s.key, 0, b, s.len, FEDGE_ERR_ENV_TRUNCATED);
    b[40] = 12;
    expect_open(&s.key, 0, b, s.len, FEDGE_ERR_ENV_OVERSIZED);
    memcpy(b, s.frame, s.len);
    b[39] = 0xff; /* aad_len ~ 4 GiB */
    expect_open(&s.key, 0, b, s.len, FEDGE_ERR_ENV_TRUNCATED);

    /* another device's key: told apart from tampering */
    fedge_device_key other;
    assert_int_equal(fedge_envelope_derive_key(secret_a, 32, "dev-2", &other), FEDGE_OK);
    expect_open(&other, 0, s.frame, s.len, FEDGE_ERR_ENV_KEY_MISMATCH);
    /* a key with the right id but the wrong bytes still fails the tag */
    fedge_device_key forged = other;
    memcpy(forged.key_id, s.key.key_id, FEDGE_KEY_ID_LEN);
    expect_open(&forged, 0, s.frame, s.len, FEDGE_ERR_ENV_AUTH);

    /* replay: same counter, lower counter */
    expect_open(&s.key, 42, s.frame, s.len, FEDGE_ERR_ENV_REPLAY);
    expect_open(&s.key, 43, s.frame, s.len, FEDGE_ERR_ENV_REPLAY);
    expect_open(&s.key, UINT64_MAX, s.frame, s.len, FEDGE_ERR_ENV_REPLAY);

    /* too small an output buffer */
    uint8_t plain[4];
    size_t plain_len;
    fedge_envelope_view v;
    assert_int_equal(fedge_envelope_open(&s.key, 0, s.frame, s.len, plain, sizeof plain,
                                         &plain_len, &v), FEDGE_ERR_BUFFER_TOO_SMALL);
}

/* Every bit of the frame matters: each single-bit flip is refused, and a
 * flip in the nonce, the ciphertext or the tag is reported as tampering. */
static void test_every_bit_flip(void **state)
{
    (void)state;
    sealed s;
    seal_small(&s, 42);
    uint8_t b[sizeof s.frame];
    int counts[256] = {0};
    for (size_t pos = 0; pos < s.len; pos++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(b, s.frame, s.len);
            b[pos] ^= (uint8_t)(1u << bit);
            uint8_t plain[64];
            memset(plain, 0x55, sizeof plain);
            size_t plain_len = 777;
            fedge_envelope_view v;
            int rc = fedge_envelope_open(&s.key, 0, b, s.len, plain, sizeof plain, &plain_len, &v);
            if (rc == FEDGE_OK)
                fail_msg("flip of bit %d at byte %zu was accepted", bit, pos);
            assert_int_equal(plain_len, 777);
            counts[-rc & 0xff]++;
            if (pos >= 24 && pos < 36) /* nonce */
                assert_int_equal(rc, FEDGE_ERR_ENV_AUTH);
            if (pos >= 44) /* aad, ciphertext, tag */
                assert_int_equal(rc, FEDGE_ERR_ENV_AUTH);
            if (rc == FEDGE_ERR_ENV_AUTH) /* no unauthenticated plaintext left */
                for (size_t i = 0; i < 13; i++)
                    assert_int_equal(plain[i], 0);
            if (pos >= 8 && pos < 16)
                assert_int_equal(rc, FEDGE_ERR_ENV_KEY_MISMATCH);
        }
    }
    /* counter flips: lowering it below last is a replay, raising it is tampering */
    assert_true(counts[-FEDGE_ERR_ENV_AUTH] > 0);
    memcpy(b, s.frame, s.len);
    b[16] ^= 0x01; /* counter 43: fresh, but the tag covers it */
    expect_open(&s.key, 42, b, s.len, FEDGE_ERR_ENV_AUTH);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_known_answers),
        cmocka_unit_test(test_sha256_file),
        cmocka_unit_test(test_hkdf_rfc5869_case1),
        cmocka_unit_test(test_derive_key),
        cmocka_unit_test(test_seal_open_round_trip),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_every_bit_flip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
