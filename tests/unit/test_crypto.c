/* test_crypto.c — the two crypto backends (shared/crypto.h) against published
 * vectors and against each other: SHA-256 and AES-256-GCM known answers on
 * both, byte-for-byte agreement on random inputs of many lengths, cross
 * opening (sealed on one, opened on the other, envelopes included), and
 * tampering refused by both.
 *
 * Vectors:
 *   SHA-256: FIPS 180-4 / NIST "Examples with intermediate values" (SHA256.pdf):
 *     "abc", the 448-bit two-block message, and one million 'a' (the
 *     long-message example); the empty string from NIST CAVP SHA256ShortMsg.rsp
 *     (Len = 0).
 *   AES-256-GCM: McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)",
 *     the specification submitted to NIST (csrc.nist.gov, GCM revised spec),
 *     Appendix B test cases 13, 14, 15 and 16 (16: with AAD); NIST CAVP
 *     gcmEncryptExtIV256.rsp, [Keylen = 256, IVlen = 96, PTlen = 128,
 *     AADlen = 0, Taglen = 128] Count = 0. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "envelope.h"
#include "error.h"
#include "hash.h"

static const fedge_crypto_backend *backends[2];

static int setup(void **state)
{
    (void)state;
    backends[0] = fedge_crypto_mbedtls();
    backends[1] = fedge_crypto_openssl();
    return backends[0] != NULL && backends[1] != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    fedge_crypto_backend_set(NULL);
    return 0;
}

static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex) / 2;
    assert_true(n <= cap);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
    return n;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static void fill_random(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        p[i] = (uint8_t)(rng_state >> 24);
    }
}

/* ---- SHA-256 ---------------------------------------------------------------- */

static void sha256_on(const fedge_crypto_backend *be, const uint8_t *data, size_t len,
                      size_t piece, uint8_t oneshot[32], uint8_t streamed[32])
{
    fedge_crypto_backend_set(be);
    assert_int_equal(fedge_sha256(data, len, oneshot), FEDGE_OK);
    fedge_sha256_ctx ctx = {0};
    assert_int_equal(fedge_sha256_init(&ctx), FEDGE_OK);
    for (size_t off = 0; off < len; off += piece)
        assert_int_equal(fedge_sha256_update(&ctx, data + off, len - off < piece ? len - off : piece),
                         FEDGE_OK);
    assert_int_equal(fedge_sha256_final(&ctx, streamed), FEDGE_OK);
    fedge_sha256_free(&ctx);
}

static void test_sha256_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *msg;
        const char *digest;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    uint8_t a[32], b[32], want[32];
    for (size_t be = 0; be < 2; be++) {
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
            unhex(v[i].digest, want, sizeof want);
            sha256_on(backends[be], (const uint8_t *)v[i].msg, strlen(v[i].msg), 7, a, b);
            assert_memory_equal(a, want, 32);
            assert_memory_equal(b, want, 32);
        }
        size_t n = 1000000;
        uint8_t *m = malloc(n);
        assert_non_null(m);
        memset(m, 'a', n);
        unhex("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", want, 32);
        sha256_on(backends[be], m, n, 4093, a, b);
        assert_memory_equal(a, want, 32);
        assert_memory_equal(b, want, 32);
        free(m);
    }
}

static void test_sha256_backends_agree(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 1, 15, 16, 17, 55, 56, 63, 64, 65, 4095, (1u << 20) + 3};
    static const size_t pieces[] = {1, 13, 64, 4096};
    uint8_t *data = malloc((1u << 20) + 3);
    assert_non_null(data);
    fill_random(data, (1u << 20) + 3);
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t piece = pieces[i % 4];
        if (lens[i] > 100000 && piece == 1)
            piece = 13;
        uint8_t a1[32], a2[32], b1[32], b2[32];
        sha256_on(backends[0], data, lens[i], piece, a1, a2);
        sha256_on(backends[1], data, lens[i], piece, b1, b2);
        assert_memory_equal(a1, a2, 32);
        assert_memory_equal(a1, b1, 32);
        assert_memory_equal(a1, b2, 32);
    }
    free(data);
}

/* A zeroed context frees cleanly; update or final without init is refused. */
static void test_sha256_ctx_lifecycle(void **state)
{
    (void)state;
    uint8_t out[32];
    for (size_t be = 0; be < 2; be++) {
        fedge_crypto_backend_set(backends[be]);
        fedge_sha256_ctx ctx = {0};
        fedge_sha256_free(&ctx);
        assert_int_equal(fedge_sha256_update(&ctx, "x", 1), FEDGE_ERR_INVALID_ARG);
        assert_int_equal(fedge_sha256_final(&ctx, out), FEDGE_ERR_INVALID_ARG);
        assert_int_equal(fedge_sha256_init(&ctx), FEDGE_OK);
        assert_int_equal(fedge_sha256_update(&ctx, NULL, 1), FEDGE_ERR_INVALID_ARG);
        fedge_sha256_free(&ctx); /* freed before final: no leak under ASan */
        assert_null(ctx.be);
        /* a stream started on one backend finishes on it after a switch */
        assert_int_equal(fedge_sha256_init(&ctx), FEDGE_OK);
        assert_int_equal(fedge_sha256_update(&ctx, "ab", 2), FEDGE_OK);
        fedge_crypto_backend_set(backends[1 - be]);
        assert_int_equal(fedge_sha256_update(&ctx, "c", 1), FEDGE_OK);
        assert_int_equal(fedge_sha256_final(&ctx, out), FEDGE_OK);
        fedge_sha256_free(&ctx);
        uint8_t want[32];
        unhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", want, 32);
        assert_memory_equal(out, want, 32);
    }
}

/* ---- AES-256-GCM ------------------------------------------------------------ */

static void test_gcm_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *name, *key, *iv, *aad, *pt, *ct, *tag;
    } v[] = {
        {"GCM spec test case 13", "0000000000000000000000000000000000000000000000000000000000000000",
         "000000000000000000000000", "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
        {"GCM spec test case 14", "0000000000000000000000000000000000000000000000000000000000000000",
         "000000000000000000000000", "", "00000000000000000000000000000000",
         "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
        {"GCM spec test case 15", "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
         "cafebabefacedbaddecaf888", "",
         "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
         "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
         "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
         "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
         "b094dac5d93471bdec1a502270e3cc6c"},
        {"GCM spec test case 16 (AAD)",
         "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
         "cafebabefacedbaddecaf888", "feedfacedeadbeeffeedfacedeadbeefabaddad2",
         "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
         "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
         "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
         "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
         "76fc6ece0f4e1768cddf8853bb2d551b"},
        {"CAVP gcmEncryptExtIV256 PTlen=128 Count=0",
         "31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22",
         "0d18e06c7c725ac9e362e1ce", "", "2db5168e932556f8089a0622981d017d",
         "fa4362189661d163fcd6a56d8bf0405a", "d636ac1bbedd5cc3ee727dc2ab4a9489"},
    };
    for (size_t be = 0; be < 2; be++) {
        fedge_crypto_backend_set(backends[be]);
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
            uint8_t key[32], iv[12], aad[64], pt[64], ct[64], tag[16], out[64], got_tag[16];
            assert_int_equal(unhex(v[i].key, key, sizeof key), 32);
            size_t iv_len = unhex(v[i].iv, iv, sizeof iv);
            size_t aad_len = unhex(v[i].aad, aad, sizeof aad);
            size_t len = unhex(v[i].pt, pt, sizeof pt);
            assert_int_equal(unhex(v[i].ct, ct, sizeof ct), len);
            unhex(v[i].tag, tag, sizeof tag);
            printf("%s: %s\n", backends[be]->name, v[i].name);
            assert_int_equal(fedge_gcm_seal(key, iv, iv_len, aad, aad_len, pt, len, out, got_tag),
                             FEDGE_OK);
            assert_memory_equal(out, ct, len);
            assert_memory_equal(got_tag, tag, 16);
            memset(out, 0xa5, sizeof out);
            assert_int_equal(fedge_gcm_open(key, iv, iv_len, aad, aad_len, ct, len, tag, out),
                             FEDGE_OK);
            assert_memory_equal(out, pt, len);
            tag[15] ^= 1;
            assert_int_equal(fedge_gcm_open(key, iv, iv_len, aad, aad_len, ct, len, tag, out),
                             FEDGE_ERR_ENV_AUTH);
            for (size_t j = 0; j < len; j++)
                assert_int_equal(out[j], 0); /* no unauthenticated plaintext left */
        }
    }
}

/* Tampered ciphertext, AAD, tag or IV: refused with FEDGE_ERR_ENV_AUTH. */
static void expect_refused(const uint8_t *key, const uint8_t *iv, const uint8_t *aad,
                           size_t aad_len, const uint8_t *ct, size_t len, const uint8_t *tag,
                           uint8_t *plain)
{
    assert_int_equal(fedge_gcm_open(key, iv, 12, aad, aad_len, ct, len, tag, plain),
                     FEDGE_ERR_ENV_AUTH);
}

static void test_gcm_backends_agree(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 1, 15, 16, 17, 4095, (1u << 20) + 3};
    static const size_t aad_lens[] = {0, 44, 1, 60, 17, 44, 100};
    const size_t max = (1u << 20) + 3;
    uint8_t *plain = malloc(max), *ct[2], *back = malloc(max);
    ct[0] = malloc(max);
    ct[1] = malloc(max);
    assert_true(plain && back && ct[0] && ct[1]);
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t len = lens[i], aad_len = aad_lens[i];
        uint8_t key[32], iv[12], aad[100], tag[2][16];
        fill_random(key, sizeof key);
        fill_random(iv, sizeof iv);
        fill_random(aad, aad_len);
        fill_random(plain, len);
        for (size_t be = 0; be < 2; be++) {
            fedge_crypto_backend_set(backends[be]);
            assert_int_equal(fedge_gcm_seal(key, iv, 12, aad, aad_len, plain, len, ct[be], tag[be]),
                             FEDGE_OK);
        }
        assert_memory_equal(ct[0], ct[1], len);
        assert_memory_equal(tag[0], tag[1], 16);
        for (size_t be = 0; be < 2; be++) {
            fedge_crypto_backend_set(backends[be]);
            /* cross-opening: the other backend's frame */
            memset(back, 0, len);
            assert_int_equal(fedge_gcm_open(key, iv, 12, aad, aad_len, ct[1 - be], len, tag[1 - be],
                                            back),
                             FEDGE_OK);
            assert_memory_equal(back, plain, len);
            if (len > 0) {
                ct[1 - be][len / 2] ^= 0x40;
                expect_refused(key, iv, aad, aad_len, ct[1 - be], len, tag[1 - be], back);
                ct[1 - be][len / 2] ^= 0x40;
            }
            if (aad_len > 0) {
                aad[aad_len - 1] ^= 1;
                expect_refused(key, iv, aad, aad_len, ct[1 - be], len, tag[1 - be], back);
                aad[aad_len - 1] ^= 1;
            }
            tag[1 - be][0] ^= 0x80;
            expect_refused(key, iv, aad, aad_len, ct[1 - be], len, tag[1 - be], back);
            tag[1 - be][0] ^= 0x80;
            iv[11] ^= 1;
            expect_refused(key, iv, aad, aad_len, ct[1 - be], len, tag[1 - be], back);
            iv[11] ^= 1;
            key[0] ^= 1;
            expect_refused(key, iv, aad, aad_len, ct[1 - be], len, tag[1 - be], back);
            key[0] ^= 1;
        }
        /* sealing in place gives the same bytes */
        for (size_t be = 0; be < 2; be++) {
            uint8_t t[16];
            fedge_crypto_backend_set(backends[be]);
            memcpy(back, plain, len);
            assert_int_equal(fedge_gcm_seal(key, iv, 12, aad, aad_len, back, len, back, t), FEDGE_OK);
            assert_memory_equal(back, ct[0], len);
            assert_memory_equal(t, tag[0], 16);
        }
    }
    free(plain);
    free(back);
    free(ct[0]);
    free(ct[1]);
}

static void test_gcm_args(void **state)
{
    (void)state;
    uint8_t key[32] = {0}, iv[12] = {0}, buf[16] = {0}, tag[16];
    for (size_t be = 0; be < 2; be++) {
        fedge_crypto_backend_set(backends[be]);
        assert_int_equal(fedge_gcm_seal(NULL, iv, 12, NULL, 0, buf, 16, buf, tag),
                         FEDGE_ERR_INVALID_ARG);
        assert_int_equal(fedge_gcm_seal(key, iv, 0, NULL, 0, buf, 16, buf, tag),
                         FEDGE_ERR_INVALID_ARG);
        assert_int_equal(fedge_gcm_seal(key, iv, 12, NULL, 5, buf, 16, buf, tag),
                         FEDGE_ERR_INVALID_ARG);
        assert_int_equal(fedge_gcm_seal(key, iv, 12, NULL, 0, NULL, 16, buf, tag),
                         FEDGE_ERR_INVALID_ARG);
        assert_int_equal(fedge_gcm_open(key, iv, 12, NULL, 0, buf, 16, NULL, buf),
                         FEDGE_ERR_INVALID_ARG);
        assert_int_equal(fedge_gcm_seal(key, iv, 12, NULL, 0, NULL, 0, NULL, tag), FEDGE_OK);
        assert_int_equal(fedge_gcm_open(key, iv, 12, NULL, 0, NULL, 0, tag, NULL), FEDGE_OK);
    }
}

/* The envelope as the edge (mbedTLS) seals it and the aggregator (OpenSSL)
 * opens it, and the other way round; a flipped byte is refused by both. */
static void test_envelope_across_backends(void **state)
{
    (void)state;
    static const uint8_t secret[] = "0123456789abcdef0123456789abcdef";
    fedge_device_key k;
    assert_int_equal(fedge_envelope_derive_key(secret, 32, "dev-7", &k), FEDGE_OK);
    const size_t plain_len = 159 * 1024 + 5, aad_len = 48;
    uint8_t *plain = malloc(plain_len), aad[48], prefix[4] = {1, 2, 3, 4};
    fill_random(plain, plain_len);
    fill_random(aad, aad_len);
    size_t cap = fedge_envelope_sealed_size(aad_len, plain_len);
    uint8_t *frame[2] = {malloc(cap), malloc(cap)}, *out = malloc(plain_len);
    assert_true(plain && frame[0] && frame[1] && out);
    for (size_t be = 0; be < 2; be++) {
        size_t n = 0;
        fedge_crypto_backend_set(backends[be]);
        assert_int_equal(fedge_envelope_seal(&k, 9, prefix, aad, aad_len, plain, plain_len,
                                             frame[be], cap, &n),
                         FEDGE_OK);
        assert_int_equal(n, cap);
    }
    assert_memory_equal(frame[0], frame[1], cap);
    for (size_t be = 0; be < 2; be++) {
        fedge_crypto_backend_set(backends[be]);
        size_t got = 0;
        fedge_envelope_view v;
        assert_int_equal(fedge_envelope_open(&k, 8, frame[1 - be], cap, out, plain_len, &got, &v),
                         FEDGE_OK);
        assert_int_equal(got, plain_len);
        assert_memory_equal(out, plain, plain_len);
        static const size_t at[] = {30, 44 + 3, 44 + 48 + 1000};
        for (size_t j = 0; j < 3; j++) {
            frame[1 - be][at[j]] ^= 0x10;
            assert_int_equal(fedge_envelope_open(&k, 8, frame[1 - be], cap, out, plain_len, &got, &v),
                             FEDGE_ERR_ENV_AUTH);
            frame[1 - be][at[j]] ^= 0x10;
        }
    }
    fedge_device_key_wipe(&k);
    free(plain);
    free(frame[0]);
    free(frame[1]);
    free(out);
}

static void test_backend_selection(void **state)
{
    (void)state;
    fedge_crypto_backend_set(NULL);
    assert_string_equal(fedge_crypto_backend_get()->name, "mbedtls");
    assert_int_equal(fedge_crypto_use_openssl(), FEDGE_OK);
    assert_string_equal(fedge_crypto_backend_get()->name, "openssl");
    assert_ptr_equal(fedge_crypto_backend_get(), backends[1]);
    fedge_crypto_backend_set(NULL);
    assert_ptr_equal(fedge_crypto_backend_get(), backends[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sha256_vectors, teardown),
        cmocka_unit_test_teardown(test_sha256_backends_agree, teardown),
        cmocka_unit_test_teardown(test_sha256_ctx_lifecycle, teardown),
        cmocka_unit_test_teardown(test_gcm_vectors, teardown),
        cmocka_unit_test_teardown(test_gcm_backends_agree, teardown),
        cmocka_unit_test_teardown(test_gcm_args, teardown),
        cmocka_unit_test_teardown(test_envelope_across_backends, teardown),
        cmocka_unit_test_teardown(test_backend_selection, teardown),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
