/* test_update.c — a delta sealed in an envelope: round trips for every
 * encoding, each rejection with its own code in the documented order, and
 * outputs left untouched on failure. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "combine.h"
#include "crypto.h"
#include "error.h"
#include "update.h"

#define MODEL_ID 0x5eed0001u
#define ROUND 3
#define SENTINEL 0xa5

static const uint8_t RUN_ID[FEDGE_RUN_ID_LEN] = "run-id-for-test";

static const uint8_t secret[32] = "0123456789abcdef0123456789abcdef";

static fedge_device_key device_key(const char *id)
{
    fedge_device_key k;
    assert_int_equal(fedge_envelope_derive_key(secret, sizeof secret, id, &k), FEDGE_OK);
    return k;
}

static fedge_delta_header header(fedge_encoding enc, uint32_t n)
{
    fedge_delta_header h;
    memset(&h, 0, sizeof h);
    h.encoding = (uint8_t)enc;
    h.model_id = MODEL_ID;
    h.round = ROUND;
    h.n_samples = 1000;
    h.n_elems = n;
    h.block_size = enc == FEDGE_ENC_INT8 ? FEDGE_DELTA_DEFAULT_BLOCK : 0;
    memset(h.base_version, 0xb5, FEDGE_HASH_LEN);
    return h;
}

static float *random_delta(uint32_t n, uint64_t seed)
{
    float *x = malloc(sizeof(float) * n);
    fedge_rng r;
    fedge_rng_seed(&r, seed);
    for (uint32_t i = 0; i < n; i++)
        x[i] = (float)(fedge_rng_normal(&r) * 0.01);
    return x;
}

static fedge_update_expect expect_for(uint32_t n, uint64_t last)
{
    fedge_update_expect e = {.model_id = MODEL_ID, .n_elems = n, .round = ROUND,
                             .last_counter = last, .max_len = 0, .run_id = RUN_ID};
    return e;
}

static void test_round_trip_each_encoding(void **state)
{
    (void)state;
    const uint32_t sizes[] = {1, 257, 159010};
    fedge_device_key k = device_key("edge-7");
    for (int enc = 0; enc < 5; enc++) { /* 4 = int8 with stochastic rounding */
        fedge_encoding e = enc == 4 ? FEDGE_ENC_INT8 : (fedge_encoding)enc;
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            uint32_t n = sizes[s];
            float *x = random_delta(n, 10 * enc + s);
            fedge_delta_header h = header(e, n);
            fedge_rng r, r_copy;
            fedge_rng_seed(&r, 1234);
            r_copy = r;
            uint8_t *frame = NULL;
            size_t len = 0;
            assert_int_equal(fedge_update_seal(&k, 100 + s, RUN_ID, &h, x, enc == 4 ? &r : NULL, &frame,
                                               &len), FEDGE_OK);
            size_t enc_size = fedge_delta_encoded_size(&h);
            assert_int_equal(len, FEDGE_ENV_OVERHEAD + FEDGE_RUN_ID_LEN + enc_size);

            /* reference: the plain codec with the same rounding stream */
            uint8_t *plain = malloc(enc_size);
            float *want = malloc(sizeof(float) * n);
            size_t plain_len;
            fedge_delta_header ref_h;
            assert_int_equal(fedge_delta_encode(&h, x, enc == 4 ? &r_copy : NULL, plain, enc_size,
                                                &plain_len), FEDGE_OK);
            assert_int_equal(fedge_delta_decode(plain, plain_len, MODEL_ID, n, &ref_h, want), FEDGE_OK);
            /* the delta header is the clear aad, the payload is not in the clear */
            assert_memory_equal(frame + FEDGE_ENV_HEADER_LEN, plain, FEDGE_DELTA_HEADER_LEN);
            if (n >= 16)
                assert_memory_not_equal(frame + FEDGE_ENV_HEADER_LEN + 64, plain + 64, 16);

            uint8_t *scratch = malloc(len);
            float *got = malloc(sizeof(float) * n);
            fedge_update_expect ex = expect_for(n, 99 + s);
            ex.max_len = len;
            fedge_delta_header oh;
            uint64_t counter = 0;
            assert_int_equal(fedge_update_open(&k, frame, len, &ex, scratch, &oh, &counter, got),
                             FEDGE_OK);
            assert_memory_equal(got, want, sizeof(float) * n);
            assert_int_equal(counter, 100 + s);
            assert_int_equal(oh.round, ROUND);
            assert_int_equal(oh.model_id, MODEL_ID);
            assert_int_equal(oh.n_samples, 1000);
            assert_int_equal(oh.encoding, e);
            assert_int_equal(oh.flags, enc == 4 ? 1 : 0);
            assert_memory_equal(oh.base_version, h.base_version, FEDGE_HASH_LEN);
            /* scratch holds the encoded delta, as the sender encoded it */
            assert_int_equal(len - FEDGE_ENV_OVERHEAD - FEDGE_RUN_ID_LEN, plain_len);
            assert_memory_equal(scratch, plain, plain_len);
            /* error bound of the encoding holds end to end */
            double amax = 0;
            for (uint32_t i = 0; i < n; i++)
                amax = fmax(amax, fabs((double)x[i]));
            for (uint32_t i = 0; i < n; i++) {
                double err = fabs((double)got[i] - x[i]);
                if (e == FEDGE_ENC_FP32)
                    assert_true(err == 0);
                else if (e == FEDGE_ENC_BF16)
                    assert_true(err <= fabs((double)x[i]) * 0x1p-8);
                else if (e == FEDGE_ENC_FP16)
                    assert_true(err <= fmax(fabs((double)x[i]) * 0x1p-11, 0x1p-25));
                else
                    assert_true(err <= amax / 127 * 1.001); /* >= any block's scale */
            }
            free(frame);
            free(plain);
            free(want);
            free(scratch);
            free(got);
            free(x);
        }
    }
    fedge_device_key_wipe(&k);
}

static void test_deterministic_without_rng(void **state)
{
    (void)state;
    fedge_device_key k = device_key("edge-7");
    float x[8] = {1, -1, 0.5f, 0.25f, 0, 3, 2, 1};
    fedge_delta_header h = header(FEDGE_ENC_FP16, 8);
    uint8_t *a, *b, *c;
    size_t la, lb, lc;
    assert_int_equal(fedge_update_seal(&k, 5, RUN_ID, &h, x, NULL, &a, &la), FEDGE_OK);
    assert_int_equal(fedge_update_seal(&k, 5, RUN_ID, &h, x, NULL, &b, &lb), FEDGE_OK);
    assert_int_equal(fedge_update_seal(&k, 6, RUN_ID, &h, x, NULL, &c, &lc), FEDGE_OK);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    assert_memory_not_equal(a + 24, c + 24, 12); /* the nonce follows the counter */
    free(a);
    free(b);
    free(c);
    /* refused encodings allocate nothing */
    uint8_t *none = (uint8_t *)&k;
    size_t nl = 9;
    x[3] = NAN;
    assert_int_equal(fedge_update_seal(&k, 7, RUN_ID, &h, x, NULL, &none, &nl), FEDGE_ERR_DELTA_NONFINITE);
    assert_null(none);
    assert_int_equal(nl, 0);
}

/* ---- rejections ---------------------------------------------------------- */

typedef struct {
    uint8_t *frame;
    size_t len;
} frame;

/* Seal a hand-made delta (header bytes + payload bytes), bypassing the
 * encoder's own checks, as a malicious or buggy client could. */
/* Seals payload with aad = hdr[0..hdr_len) || run (run NULL: no run id). */
static frame seal_raw_run(const fedge_device_key *k, uint64_t counter, const uint8_t *hdr,
                          size_t hdr_len, const uint8_t *run, const uint8_t *payload,
                          size_t payload_len)
{
    frame f;
    size_t aad_len = hdr_len + (run ? FEDGE_RUN_ID_LEN : 0);
    uint8_t *aad = malloc(aad_len);
    memcpy(aad, hdr, hdr_len);
    if (run)
        memcpy(aad + hdr_len, run, FEDGE_RUN_ID_LEN);
    f.frame = malloc(fedge_envelope_sealed_size(aad_len, payload_len) + 1);
    const uint8_t prefix[4] = {1, 2, 3, 4};
    assert_int_equal(fedge_envelope_seal(k, counter, prefix, aad, aad_len, payload, payload_len,
                                         f.frame, fedge_envelope_sealed_size(aad_len, payload_len),
                                         &f.len), FEDGE_OK);
    free(aad);
    return f;
}

/* The delta header hdr[0..hdr_len) sealed for this test's run. */
static frame seal_raw(const fedge_device_key *k, uint64_t counter, const uint8_t *hdr,
                      size_t hdr_len, const uint8_t *payload, size_t payload_len)
{
    return seal_raw_run(k, counter, hdr, hdr_len, RUN_ID, payload, payload_len);
}

/* An honest fp32 delta of n elements, as plain bytes (caller frees). */
static uint8_t *encoded(fedge_delta_header h, size_t *len)
{
    float *x = random_delta(h.n_elems, 77);
    size_t size = fedge_delta_encoded_size(&h);
    uint8_t *buf = malloc(size);
    assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, size, len), FEDGE_OK);
    free(x);
    return buf;
}

/* open must fail with `want`; h, counter and delta keep their sentinels
 * and the scratch holds no plaintext. */
static void expect_open(const fedge_device_key *k, const uint8_t *in, size_t len,
                        const fedge_update_expect *ex, int want)
{
    size_t n = ex->n_elems;
    float *delta = malloc(sizeof(float) * (n + 1));
    uint8_t *scratch = malloc(len + 1);
    fedge_delta_header h;
    uint64_t counter = 0x1122334455667788ull;
    memset(delta, SENTINEL, sizeof(float) * (n + 1));
    memset(scratch, 0, len + 1);
    memset(&h, SENTINEL, sizeof h);
    int rc = fedge_update_open(k, in, len, ex, scratch, &h, &counter, delta);
    if (rc != want)
        fail_msg("open gave %d (%s), wanted %d (%s)", rc, fedge_strerror(rc), want,
                 fedge_strerror(want));
    assert_true(counter == 0x1122334455667788ull);
    for (size_t i = 0; i < sizeof h; i++)
        assert_int_equal(((uint8_t *)&h)[i], SENTINEL);
    for (size_t i = 0; i < sizeof(float) * (n + 1); i++)
        assert_int_equal(((uint8_t *)delta)[i], SENTINEL);
    for (size_t i = 0; i < len + 1; i++)
        assert_int_equal(scratch[i], 0);
    free(delta);
    free(scratch);
}

static void test_rejections(void **state)
{
    (void)state;
    const uint32_t n = 100;
    fedge_device_key k = device_key("edge-1");
    fedge_device_key other = device_key("edge-2");
    fedge_delta_header h = header(FEDGE_ENC_FP16, n);
    float *x = random_delta(n, 5);
    uint8_t *f;
    size_t len;
    assert_int_equal(fedge_update_seal(&k, 10, RUN_ID, &h, x, NULL, &f, &len), FEDGE_OK);
    uint8_t *b = malloc(len + 1);
    fedge_update_expect ex = expect_for(n, 9);

    /* the good frame opens */
    float *out = malloc(sizeof(float) * n);
    uint8_t *scratch = malloc(len);
    fedge_delta_header oh;
    uint64_t counter;
    assert_int_equal(fedge_update_open(&k, f, len, &ex, scratch, &oh, &counter, out), FEDGE_OK);
    assert_int_equal(counter, 10);

    expect_open(&k, f, len - 1, &ex, FEDGE_ERR_ENV_TRUNCATED);
    expect_open(&k, f, 20, &ex, FEDGE_ERR_ENV_TRUNCATED);
    memcpy(b, f, len);
    b[len] = 0;
    expect_open(&k, b, len + 1, &ex, FEDGE_ERR_ENV_OVERSIZED);
    fedge_update_expect small = ex;
    small.max_len = len - 1;
    expect_open(&k, f, len, &small, FEDGE_ERR_ENV_OVERSIZED);
    memcpy(b, f, len);
    b[1] = 'X';
    expect_open(&k, b, len, &ex, FEDGE_ERR_ENV_MAGIC);
    expect_open(&other, f, len, &ex, FEDGE_ERR_ENV_KEY_MISMATCH);

    /* replays: the same counter and a lower one */
    fedge_update_expect rep = ex;
    rep.last_counter = 10;
    expect_open(&k, f, len, &rep, FEDGE_ERR_ENV_REPLAY);
    rep.last_counter = 11;
    expect_open(&k, f, len, &rep, FEDGE_ERR_ENV_REPLAY);

    fedge_update_expect wrong = ex;
    wrong.round = ROUND + 1;
    expect_open(&k, f, len, &wrong, FEDGE_ERR_DELTA_ROUND);
    wrong = ex;
    wrong.model_id = MODEL_ID + 1;
    expect_open(&k, f, len, &wrong, FEDGE_ERR_DELTA_SHAPE);
    wrong = ex;
    wrong.n_elems = n + 1;
    expect_open(&k, f, len, &wrong, FEDGE_ERR_DELTA_SHAPE);

    /* tampering: ciphertext, tag, authenticated header fields */
    const size_t tamper[] = {
        24,                  /* nonce */
        16,                  /* counter (raised: fresh, so only the tag can tell) */
        44 + 16,             /* aad: delta n_samples */
        44 + 40,             /* aad: delta base version */
        44 + 80,             /* first ciphertext byte */
        44 + 80 + 2 * n - 1, /* last ciphertext byte */
        len - 16,            /* tag */
        len - 1,
    };
    for (size_t i = 0; i < sizeof tamper / sizeof tamper[0]; i++) {
        memcpy(b, f, len);
        b[tamper[i]] ^= 0x04;
        expect_open(&k, b, len, &ex, FEDGE_ERR_ENV_AUTH);
    }
    free(f);
    free(b);
    free(out);
    free(scratch);
    free(x);
}

static void test_malformed_delta_inside(void **state)
{
    (void)state;
    const uint32_t n = 64;
    fedge_device_key k = device_key("edge-1");
    fedge_update_expect ex = expect_for(n, 0);
    size_t plen;

    /* NaN and Inf values in each float encoding, a NaN int8 scale */
    struct { fedge_encoding e; size_t off; uint32_t bad; int width; } cases[] = {
        {FEDGE_ENC_FP32, 64 + 4 * 7, 0x7fc00000u, 4},
        {FEDGE_ENC_FP32, 64 + 4 * 63, 0xff800000u, 4},
        {FEDGE_ENC_FP16, 64 + 2 * 5, 0x7e00, 2},
        {FEDGE_ENC_FP16, 64, 0xfc00, 2},
        {FEDGE_ENC_BF16, 64 + 2 * 9, 0xffc0, 2},
        {FEDGE_ENC_BF16, 64 + 2 * 63, 0x7f80, 2},
        {FEDGE_ENC_INT8, 64, 0x7fc00000u, 4},
        {FEDGE_ENC_INT8, 64, 0x7f800000u, 4},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        uint8_t *d = encoded(header(cases[c].e, n), &plen);
        for (int i = 0; i < cases[c].width; i++)
            d[cases[c].off + i] = (uint8_t)(cases[c].bad >> (8 * i));
        frame fr = seal_raw(&k, 1, d, 64, d + 64, plen - 64);
        expect_open(&k, fr.frame, fr.len, &ex, FEDGE_ERR_DELTA_NONFINITE);
        free(fr.frame);
        free(d);
    }

    uint8_t *d = encoded(header(FEDGE_ENC_FP32, n), &plen);
    frame fr;
    /* aad shorter / longer than a delta header */
    fr = seal_raw(&k, 1, d, 60, d + 64, plen - 64);
    expect_open(&k, fr.frame, fr.len, &ex, FEDGE_ERR_DELTA_TRUNCATED);
    free(fr.frame);
    fr = seal_raw(&k, 1, d, 68, d + 68, plen - 68); /* a tail after the run id: no metrics block */
    expect_open(&k, fr.frame, fr.len, &ex, FEDGE_ERR_UPDATE_METRICS);
    free(fr.frame);
    /* payload shorter / longer than the header says */
    fr = seal_raw(&k, 1, d, 64, d + 64, plen - 65);
    expect_open(&k, fr.frame, fr.len, &ex, FEDGE_ERR_DELTA_TRUNCATED);
    free(fr.frame);
    uint8_t *longer = calloc(plen + 4, 1);
    memcpy(longer, d, plen);
    fr = seal_raw(&k, 1, longer, 64, longer + 64, plen - 60);
    expect_open(&k, fr.frame, fr.len, &ex, FEDGE_ERR_DELTA_OVERSIZED);
    free(fr.frame);
    free(longer);
    /* header fields */
    uint8_t hdr[64];
    memcpy(hdr, d, 64);
    hdr[0] = 'G';
    fr = seal_raw(&k, 1, hdr, 64, d + 64, plen - 64);
    expect_open(&k, fr.frame, fr.len, &ex, FEDGE_ERR_DELTA_MAGIC);
    free(fr.frame);
    memcpy(hdr, d, 64);
    hdr[4] = 9;
    fr = seal_raw(&k, 1, hdr, 64, d + 64, plen - 64);
    expect_open(&k, fr.frame, fr.len, &ex, FEDGE_ERR_DELTA_VERSION);
    free(fr.frame);
    memcpy(hdr, d, 64);
    hdr[6] = 5;
    fr = seal_raw(&k, 1, hdr, 64, d + 64, plen - 64);
    expect_open(&k, fr.frame, fr.len, &ex, FEDGE_ERR_DELTA_ENCODING);
    free(fr.frame);
    free(d);
}

/* With several faults at once, the first in the documented order wins:
 * structure -> key id -> replay -> round -> shape -> tag -> values. */
static void test_check_order(void **state)
{
    (void)state;
    const uint32_t n = 32;
    fedge_device_key k = device_key("edge-1");
    fedge_device_key other = device_key("edge-2");
    size_t plen;
    uint8_t *d = encoded(header(FEDGE_ENC_FP32, n), &plen);
    d[64 + 4 * 3 + 3] = 0x7f; /* a NaN */
    d[64 + 4 * 3 + 2] = 0xc0;
    frame fr = seal_raw(&k, 5, d, 64, d + 64, plen - 64);
    uint8_t *b = malloc(fr.len);
    fedge_update_expect ex = expect_for(n, 4);

    expect_open(&k, fr.frame, fr.len, &ex, FEDGE_ERR_DELTA_NONFINITE);
    memcpy(b, fr.frame, fr.len);
    b[fr.len - 3] ^= 1; /* + tampered tag */
    expect_open(&k, b, fr.len, &ex, FEDGE_ERR_ENV_AUTH);
    fedge_update_expect e2 = ex;
    e2.n_elems = n + 1; /* + other shape */
    expect_open(&k, b, fr.len, &e2, FEDGE_ERR_DELTA_SHAPE);
    e2.round = ROUND + 2; /* + other round */
    expect_open(&k, b, fr.len, &e2, FEDGE_ERR_DELTA_ROUND);
    e2.last_counter = 5; /* + replay */
    expect_open(&k, b, fr.len, &e2, FEDGE_ERR_ENV_REPLAY);
    expect_open(&other, b, fr.len, &e2, FEDGE_ERR_ENV_KEY_MISMATCH); /* + wrong key */
    expect_open(&other, b, fr.len - 1, &e2, FEDGE_ERR_ENV_TRUNCATED);  /* + truncated */
    free(b);
    free(fr.frame);
    free(d);
}

static int open_status(const fedge_device_key *k, const uint8_t *in, size_t len,
                       const fedge_update_expect *ex)
{
    float *delta = malloc(sizeof(float) * ex->n_elems);
    uint8_t *scratch = malloc(len);
    fedge_delta_header h;
    uint64_t counter;
    int rc = fedge_update_open(k, in, len, ex, scratch, &h, &counter, delta);
    free(delta);
    free(scratch);
    return rc;
}

/* An update is bound to the run it was sealed for: a frame without a run id
 * (the format before runs) or sealed for another run is refused before any
 * decryption, with its own code; the same frame opens in its own run. */
static void test_bound_to_run(void **state)
{
    (void)state;
    const uint32_t n = 16;
    fedge_device_key k = device_key("edge-1");
    static const uint8_t other_run[FEDGE_RUN_ID_LEN] = "another-run-id!";
    size_t plen;
    uint8_t *d = encoded(header(FEDGE_ENC_FP32, n), &plen);
    fedge_update_expect ex = expect_for(n, 0);

    frame none = seal_raw_run(&k, 1, d, 64, NULL, d + 64, plen - 64);
    expect_open(&k, none.frame, none.len, &ex, FEDGE_ERR_ENV_RUN);
    frame other = seal_raw_run(&k, 1, d, 64, other_run, d + 64, plen - 64);
    expect_open(&k, other.frame, other.len, &ex, FEDGE_ERR_ENV_RUN);
    fedge_update_expect in_other = ex;
    in_other.run_id = other_run;
    assert_int_equal(open_status(&k, other.frame, other.len, &in_other), FEDGE_OK);

    /* Through the real sealer: the run id sits after the delta header. */
    float *x = random_delta(n, 3);
    fedge_delta_header h = header(FEDGE_ENC_FP32, n);
    uint8_t *f = NULL;
    size_t len = 0;
    assert_int_equal(fedge_update_seal(&k, 2, RUN_ID, &h, x, NULL, &f, &len), FEDGE_OK);
    assert_memory_equal(f + FEDGE_ENV_HEADER_LEN + FEDGE_DELTA_HEADER_LEN, RUN_ID, FEDGE_RUN_ID_LEN);
    expect_open(&k, f, len, &in_other, FEDGE_ERR_ENV_RUN);
    assert_int_equal(open_status(&k, f, len, &ex), FEDGE_OK);
    assert_int_equal(fedge_update_seal(&k, 2, NULL, &h, x, NULL, &f, &len), FEDGE_ERR_INVALID_ARG);
    free(f);
    free(x);
    free(none.frame);
    free(other.frame);
    free(d);
}

/* A small frame: every single-bit flip is refused, and flips in the nonce,
 * the delta header's unchecked fields, the ciphertext and the tag are
 * reported as tampering. */
static void test_every_bit_flip(void **state)
{
    (void)state;
    const uint32_t n = 4;
    fedge_device_key k = device_key("edge-1");
    float x[4] = {0.5f, -0.25f, 1e-3f, 7.0f};
    fedge_delta_header h = header(FEDGE_ENC_FP32, n);
    uint8_t *f;
    size_t len;
    assert_int_equal(fedge_update_seal(&k, 77, RUN_ID, &h, x, NULL, &f, &len), FEDGE_OK);
    assert_int_equal(len, 44 + 64 + 16 + 16 + 16);
    uint8_t *b = malloc(len);
    fedge_update_expect ex = expect_for(n, 0);
    int auth = 0;
    for (size_t pos = 0; pos < len; pos++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(b, f, len);
            b[pos] ^= (uint8_t)(1u << bit);
            float out[5];
            uint8_t scratch[160];
            fedge_delta_header oh;
            uint64_t counter = 1;
            memset(out, SENTINEL, sizeof out);
            int rc = fedge_update_open(&k, b, len, &ex, scratch, &oh, &counter, out);
            if (rc == FEDGE_OK)
                fail_msg("flip of bit %d at byte %zu was accepted", bit, pos);
            assert_int_equal(counter, 1);
            for (size_t i = 0; i < sizeof out; i++)
                assert_int_equal(((uint8_t *)out)[i], SENTINEL);
            size_t in_delta = pos >= 44 ? pos - 44 : 0;
            int unchecked_header_field = pos >= 44 && pos < 44 + 64 &&
                                         ((in_delta >= 16 && in_delta < 20) || in_delta >= 32);
            int in_run_id = pos >= 44 + 64 && pos < 44 + 64 + FEDGE_RUN_ID_LEN;
            if (in_run_id)
                assert_int_equal(rc, FEDGE_ERR_ENV_RUN);
            else if ((pos >= 24 && pos < 36) || unchecked_header_field || pos >= 44 + 64)
                assert_int_equal(rc, FEDGE_ERR_ENV_AUTH);
            auth += rc == FEDGE_ERR_ENV_AUTH;
        }
    }
    assert_true(auth >= (12 + 4 + 32 + 16 + 16) * 8);
    free(b);
    free(f);
}

static void test_counter_flow(void **state)
{
    (void)state;
    fedge_device_key k = device_key("edge-9");
    float x[3] = {1, 2, 3};
    fedge_delta_header h = header(FEDGE_ENC_BF16, 3);
    uint64_t last = 0;
    for (uint64_t c = 1; c <= 3; c++) {
        uint8_t *f;
        size_t len;
        assert_int_equal(fedge_update_seal(&k, c, RUN_ID, &h, x, NULL, &f, &len), FEDGE_OK);
        fedge_update_expect ex = expect_for(3, last);
        uint8_t scratch[256];
        float out[3];
        fedge_delta_header oh;
        uint64_t got;
        assert_int_equal(fedge_update_open(&k, f, len, &ex, scratch, &oh, &got, out), FEDGE_OK);
        assert_int_equal(got, c);
        last = got; /* the receiver persists it */
        ex.last_counter = last;
        expect_open(&k, f, len, &ex, FEDGE_ERR_ENV_REPLAY); /* the same frame again */
        free(f);
    }
}


/* The streaming sealer gives fedge_update_seal's frame byte for byte,
 * whatever order its bytes are read in: in Block1-sized pieces front to
 * back, a piece again behind the ring (a block sent afresh, a retry from the
 * start), and the tag first; the rounding stream ends where seal leaves it. */
static void check_stream(fedge_encoding enc, int stochastic, int control, uint32_t n)
{
    fedge_device_key k = device_key("dev-stream");
    fedge_delta_header h = header(enc, n);
    if (control)
        h.flags = FEDGE_DELTA_FLAG_CONTROL;
    float *x = random_delta(n, 1000u + n);
    x[n / 2] = 0.5f;
    fedge_rng r1, r2;
    fedge_rng_seed(&r1, 42);
    r2 = r1;
    uint8_t *sealed_ref = NULL;
    size_t len = 0;
    assert_int_equal(fedge_update_seal(&k, 77, RUN_ID, &h, x, stochastic ? &r1 : NULL, &sealed_ref, &len),
                     FEDGE_OK);
    fedge_update_stream *s = NULL;
    assert_int_equal(fedge_update_stream_new(&k, 77, RUN_ID, &h, x, stochastic ? &r2 : NULL, &s),
                     FEDGE_OK);
    assert_int_equal(fedge_update_stream_size(s), len);
    assert_memory_equal(&r1, &r2, sizeof r1);
    uint8_t *got = malloc(len);
    uint8_t tag[FEDGE_ENV_TAG_LEN];
    assert_int_equal(fedge_update_stream_read(s, len - sizeof tag, tag, sizeof tag), FEDGE_OK);
    assert_memory_equal(tag, sealed_ref + len - sizeof tag, sizeof tag);
    for (size_t off = 0; off < len; off += 1024)
        assert_int_equal(fedge_update_stream_read(s, off, got + off, len - off < 1024 ? len - off : 1024),
                         FEDGE_OK);
    assert_memory_equal(got, sealed_ref, len);
    memset(got, 0, len);
    size_t mid = len / 3;
    assert_int_equal(fedge_update_stream_read(s, mid, got + mid, len - mid), FEDGE_OK);
    assert_int_equal(fedge_update_stream_read(s, 0, got, mid), FEDGE_OK);
    assert_memory_equal(got, sealed_ref, len);
    uint8_t one;
    assert_int_equal(fedge_update_stream_read(s, len, &one, 1), FEDGE_ERR_RANGE);
    fedge_update_stream_free(s);
    free(got);
    free(sealed_ref);
    free(x);
}

static void test_stream_same_bytes(void **state)
{
    (void)state;
    static const uint32_t sizes[] = {1, 255, 1024, 5000, 70001};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        check_stream(FEDGE_ENC_FP32, 0, 0, sizes[i]);
        check_stream(FEDGE_ENC_FP16, 0, 0, sizes[i]);
        check_stream(FEDGE_ENC_BF16, 0, 0, sizes[i]);
        check_stream(FEDGE_ENC_INT8, 0, 0, sizes[i]);
        check_stream(FEDGE_ENC_INT8, 1, 0, sizes[i]);
        check_stream(FEDGE_ENC_FP32, 1, 0, sizes[i]);
    }
    check_stream(FEDGE_ENC_INT8, 0, 1, 70000);
    check_stream(FEDGE_ENC_FP32, 0, 1, 4096);
}

/* Seal and the stream size the frame alike, and as the format says
 * (envelope overhead + aad + encoded payload), for every encoding, int8
 * block sizes around the stream's chunk, with and without the metrics
 * block, over lengths at and around chunk and block boundaries. */
static void test_frame_size_both_paths(void **state)
{
    (void)state;
    static const uint32_t sizes[] = {1, 2, 63, 64, 65, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 4097, 9999};
    static const uint32_t blocks[] = {1, 7, 256, 1020, 1021, 4096};
    static const fedge_train_metrics metrics = {
        .present = FEDGE_TRAIN_HAS_ALL, .loss = 0.5f, .accuracy = 0.75f, .epochs = 1, .train_ms = 10};
    fedge_device_key k = device_key("dev-size");
    float *x = random_delta(9999, 3);
    for (int enc = FEDGE_ENC_FP32; enc <= FEDGE_ENC_INT8; enc++)
        for (size_t b = 0; b < (enc == FEDGE_ENC_INT8 ? sizeof blocks / sizeof blocks[0] : 1); b++)
            for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
                for (int with = 0; with < 2; with++) {
                    fedge_delta_header h = header((fedge_encoding)enc, sizes[i]);
                    if (enc == FEDGE_ENC_INT8)
                        h.block_size = blocks[b];
                    const fedge_train_metrics *m = with ? &metrics : NULL;
                    uint8_t *sealed = NULL;
                    size_t len = 0;
                    assert_int_equal(fedge_update_seal_metrics(&k, 5, RUN_ID, m, &h, x, NULL, &sealed, &len),
                                     FEDGE_OK);
                    fedge_update_stream *s = NULL;
                    assert_int_equal(fedge_update_stream_new_metrics(&k, 5, RUN_ID, m, &h, x, NULL, &s), FEDGE_OK);
                    size_t want = FEDGE_ENV_OVERHEAD + FEDGE_UPDATE_AAD_LEN + (with ? FEDGE_TRAIN_METRICS_LEN : 0) +
                                  fedge_delta_encoded_size(&h) - FEDGE_DELTA_HEADER_LEN;
                    assert_int_equal(len, want);
                    assert_int_equal(fedge_update_stream_size(s), want);
                    uint8_t tag[FEDGE_ENV_TAG_LEN];
                    assert_int_equal(fedge_update_stream_read(s, len - sizeof tag, tag, sizeof tag), FEDGE_OK);
                    assert_memory_equal(tag, sealed + len - sizeof tag, sizeof tag);
                    fedge_update_stream_free(s);
                    free(sealed);
                }
    free(x);
}

/* What seal refuses, the stream refuses at creation, before a byte goes out. */
static void test_stream_refuses_up_front(void **state)
{
    (void)state;
    fedge_device_key k = device_key("dev-stream");
    fedge_delta_header h = header(FEDGE_ENC_FP32, 9000);
    float *x = random_delta(9000, 5);
    x[8999] = NAN;
    fedge_update_stream *s = (fedge_update_stream *)&h;
    assert_int_equal(fedge_update_stream_new(&k, 1, RUN_ID, &h, x, NULL, &s), FEDGE_ERR_DELTA_NONFINITE);
    assert_null(s);
    x[8999] = 70000.0f;
    h = header(FEDGE_ENC_FP16, 9000);
    assert_int_equal(fedge_update_stream_new(&k, 1, RUN_ID, &h, x, NULL, &s), FEDGE_ERR_RANGE);
    h.flags = FEDGE_DELTA_FLAG_PARTIAL;
    assert_int_equal(fedge_update_stream_new(&k, 1, RUN_ID, &h, x, NULL, &s), FEDGE_ERR_INVALID_ARG);
    free(x);
}

/* ---- the training metrics block ---- */

static const fedge_train_metrics FULL_METRICS = {
    .present = FEDGE_TRAIN_HAS_ALL, .loss = 0.6931f, .accuracy = 0.8125f, .epochs = 3, .train_ms = 1234};

/* Sealed with metrics (whole and streamed: the same bytes), opened with and
 * without asking for them; a frame without the block (an older edge) opens
 * with present == 0; a partial set of fields comes back as sent. */
static void test_metrics_round_trip(void **state)
{
    (void)state;
    fedge_device_key k = device_key("dev-metrics");
    const uint32_t n = 3000;
    fedge_delta_header h = header(FEDGE_ENC_INT8, n);
    float *x = random_delta(n, 9);
    fedge_update_expect ex = expect_for(n, 0);
    uint8_t *f = NULL, *plain_f = NULL;
    size_t len = 0, plain_len = 0;
    assert_int_equal(fedge_update_seal_metrics(&k, 10, RUN_ID, &FULL_METRICS, &h, x, NULL, &f, &len), FEDGE_OK);
    assert_int_equal(fedge_update_seal(&k, 10, RUN_ID, &h, x, NULL, &plain_f, &plain_len), FEDGE_OK);
    assert_int_equal(len, plain_len + FEDGE_TRAIN_METRICS_LEN);
    /* the block travels in the clear, right after the run id */
    assert_int_equal(f[FEDGE_ENV_HEADER_LEN + FEDGE_UPDATE_AAD_LEN], FEDGE_TRAIN_METRICS_VERSION);

    fedge_update_stream *s = NULL;
    assert_int_equal(fedge_update_stream_new_metrics(&k, 10, RUN_ID, &FULL_METRICS, &h, x, NULL, &s), FEDGE_OK);
    assert_int_equal(fedge_update_stream_size(s), len);
    uint8_t *streamed = malloc(len);
    assert_int_equal(fedge_update_stream_read(s, 0, streamed, len), FEDGE_OK);
    assert_memory_equal(streamed, f, len);
    fedge_update_stream_free(s);
    free(streamed);

    float *out = malloc(n * sizeof(float));
    uint8_t *scratch = malloc(len);
    fedge_delta_header oh;
    uint64_t counter = 0;
    fedge_train_metrics m;
    memset(&m, 0xab, sizeof m);
    assert_int_equal(fedge_update_open_metrics(&k, f, len, &ex, scratch, &oh, &counter, out, &m), FEDGE_OK);
    assert_int_equal(m.present, FEDGE_TRAIN_HAS_ALL);
    assert_true(m.loss == FULL_METRICS.loss && m.accuracy == FULL_METRICS.accuracy);
    assert_int_equal(m.epochs, 3);
    assert_int_equal(m.train_ms, 1234);
    assert_int_equal(oh.n_samples, h.n_samples);
    assert_int_equal(fedge_update_open(&k, f, len, &ex, scratch, &oh, &counter, out), FEDGE_OK);

    memset(&m, 0xab, sizeof m);
    assert_int_equal(fedge_update_open_metrics(&k, plain_f, plain_len, &ex, scratch, &oh, &counter, out, &m),
                     FEDGE_OK);
    assert_int_equal(m.present, 0);

    free(f);
    fedge_train_metrics part = {.present = FEDGE_TRAIN_HAS_LOSS | FEDGE_TRAIN_HAS_EPOCHS, .loss = 2.5f, .epochs = 1};
    assert_int_equal(fedge_update_seal_metrics(&k, 11, RUN_ID, &part, &h, x, NULL, &f, &len), FEDGE_OK);
    assert_int_equal(fedge_update_open_metrics(&k, f, len, &ex, scratch, &oh, &counter, out, &m), FEDGE_OK);
    assert_int_equal(m.present, part.present);
    assert_true(m.loss == 2.5f && m.accuracy == 0.0f && m.epochs == 1 && m.train_ms == 0);
    free(f);
    free(plain_f);
    free(out);
    free(scratch);
    free(x);
}

/* What the sealer refuses to write, and the decoder on its own. */
/* Opens in (len bytes) with fedge_update_open_metrics and, on a copy, with
 * fedge_update_open_inplace: the same status, and on success the same
 * header, counter, delta, metrics and encoded bytes; a refusal before
 * decryption leaves the copy as it was, one after it (the tag) leaves no
 * plaintext in it. Returns the status. */
static int open_both_ways(const fedge_device_key *k, const uint8_t *in, size_t len, const fedge_update_expect *ex)
{
    size_t n = ex->n_elems;
    float *d1 = malloc(sizeof(float) * (n + 1)), *d2 = malloc(sizeof(float) * (n + 1));
    uint8_t *scratch = malloc(len), *copy = malloc(len);
    assert_true(d1 && d2 && scratch && copy);
    memset(d1, SENTINEL, sizeof(float) * (n + 1));
    memset(d2, SENTINEL, sizeof(float) * (n + 1));
    memcpy(copy, in, len);
    fedge_delta_header h1, h2;
    memset(&h1, SENTINEL, sizeof h1);
    memset(&h2, SENTINEL, sizeof h2);
    uint64_t c1 = 7, c2 = 7;
    fedge_train_metrics m1, m2;
    memset(&m1, SENTINEL, sizeof m1);
    memset(&m2, SENTINEL, sizeof m2);
    size_t off = 12345;
    int r1 = fedge_update_open_metrics(k, in, len, ex, scratch, &h1, &c1, d1, &m1);
    int r2 = fedge_update_open_inplace(k, copy, len, ex, &off, &h2, &c2, d2, &m2);
    assert_int_equal(r2, r1);
    {   /* without decoding: the norm of the values instead, the same verdict and bytes */
        uint8_t *copy3 = malloc(len);
        assert_non_null(copy3);
        memcpy(copy3, in, len);
        fedge_delta_header h3;
        memset(&h3, SENTINEL, sizeof h3);
        uint64_t c3 = 7;
        fedge_train_metrics m3;
        memset(&m3, SENTINEL, sizeof m3);
        size_t off3 = 12345;
        double norm = -1;
        int r3 = fedge_update_open_inplace_norm(k, copy3, len, ex, n / 2, &off3, &h3, &c3, &norm, &m3);
        assert_int_equal(r3, r1);
        assert_memory_equal(&h3, &h1, sizeof h1);
        assert_true(c3 == c1);
        assert_memory_equal(&m3, &m1, sizeof m1);
        if (r1 == FEDGE_OK) {
            double want = fedge_l2_norm(d1, n / 2);
            assert_memory_equal(&norm, &want, sizeof norm);
            assert_int_equal(off3, off);
            assert_memory_equal(copy3, copy, len);
        } else {
            assert_true(norm == -1);
        }
        free(copy3);
    }
    assert_memory_equal(&h1, &h2, sizeof h1);
    assert_true(c1 == c2);
    assert_memory_equal(d1, d2, sizeof(float) * (n + 1));
    assert_memory_equal(&m1, &m2, sizeof m1);
    fedge_envelope_view v;
    size_t ct_at = 0;
    if (fedge_envelope_parse(in, len, &v) != FEDGE_OK) {
        assert_int_not_equal(r1, FEDGE_OK);
        assert_memory_equal(copy, in, len);
    } else if (r1 == FEDGE_OK) {
        ct_at = FEDGE_ENV_HEADER_LEN + v.aad_len;
        assert_int_equal(off, ct_at - FEDGE_DELTA_HEADER_LEN);
        assert_memory_equal(copy + off, scratch, FEDGE_DELTA_HEADER_LEN + v.ct_len);
        assert_memory_equal(copy, in, off); /* untouched */
        assert_memory_equal(copy + ct_at + v.ct_len, in + ct_at + v.ct_len, FEDGE_ENV_TAG_LEN);
    } else {
        ct_at = FEDGE_ENV_HEADER_LEN + v.aad_len;
        assert_int_equal(off, 12345);
        if (r1 == FEDGE_ERR_ENV_AUTH) {
            for (size_t i = 0; i < v.ct_len; i++)
                assert_int_equal(copy[ct_at + i], 0);
            assert_memory_equal(copy, in, ct_at);
        } else if (memcmp(copy, in, len) != 0) {
            /* refused after decryption (a payload value): no plaintext left */
            for (size_t i = 0; i < v.ct_len; i++)
                assert_int_equal(copy[ct_at + i], 0);
        }
    }
    free(d1);
    free(d2);
    free(scratch);
    free(copy);
    return r1;
}

static void inplace_cases(void)
{
    fedge_device_key k = device_key("edge-1");
    static const fedge_encoding encs[] = {FEDGE_ENC_FP32, FEDGE_ENC_FP16, FEDGE_ENC_BF16, FEDGE_ENC_INT8};
    const uint32_t n = 3000;
    float *x = random_delta(n, 11);
    fedge_update_expect ex = expect_for(n, 0);
    for (size_t e = 0; e < sizeof encs / sizeof encs[0]; e++) {
        for (int with_metrics = 0; with_metrics < 2; with_metrics++) {
            fedge_delta_header h = header(encs[e], n);
            uint8_t *f = NULL;
            size_t len = 0;
            assert_int_equal(fedge_update_seal_metrics(&k, 3, RUN_ID, with_metrics ? &FULL_METRICS : NULL, &h, x,
                                                       NULL, &f, &len),
                             FEDGE_OK);
            assert_int_equal(open_both_ways(&k, f, len, &ex), FEDGE_OK);
            fedge_update_expect replay = expect_for(n, 3), other_run = ex;
            other_run.run_id = (const uint8_t *)"another-run-id!";
            assert_int_equal(open_both_ways(&k, f, len, &replay), FEDGE_ERR_ENV_REPLAY);
            assert_int_equal(open_both_ways(&k, f, len, &other_run), FEDGE_ERR_ENV_RUN);
            f[len - 1] ^= 1; /* the tag */
            assert_int_equal(open_both_ways(&k, f, len, &ex), FEDGE_ERR_ENV_AUTH);
            free(f);
        }
    }
    free(x);

    /* every single-bit flip of a small frame: the same verdict both ways */
    float y[4] = {0.5f, -0.25f, 1e-3f, 7.0f};
    fedge_delta_header h = header(FEDGE_ENC_FP32, 4);
    fedge_update_expect ey = expect_for(4, 0);
    uint8_t *f = NULL;
    size_t len = 0;
    assert_int_equal(fedge_update_seal(&k, 77, RUN_ID, &h, y, NULL, &f, &len), FEDGE_OK);
    uint8_t *b = malloc(len);
    for (size_t pos = 0; pos < len; pos++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(b, f, len);
            b[pos] ^= (uint8_t)(1u << bit);
            assert_int_not_equal(open_both_ways(&k, b, len, &ey), FEDGE_OK);
        }
    free(b);
    free(f);
}

/* fedge_update_open_inplace against fedge_update_open_metrics, on mbedTLS's
 * GCM and, where linked, OpenSSL's (the aggregator's). */
static void test_open_inplace_same_as_open(void **state)
{
    (void)state;
    inplace_cases();
    if (fedge_crypto_use_openssl() == FEDGE_OK) {
        inplace_cases();
        fedge_crypto_backend_set(NULL);
    }
}

static void test_metrics_encode_decode(void **state)
{
    (void)state;
    uint8_t b[FEDGE_TRAIN_METRICS_LEN];
    fedge_train_metrics m = FULL_METRICS, got;
    assert_int_equal(fedge_train_metrics_encode(&m, b), FEDGE_OK);
    assert_int_equal(fedge_train_metrics_decode(b, sizeof b, &got), FEDGE_OK);
    assert_memory_equal(&got, &m, sizeof m);
    assert_int_equal(fedge_train_metrics_decode(b, sizeof b - 1, &got), FEDGE_ERR_UPDATE_METRICS);
    m.loss = NAN;
    assert_int_equal(fedge_train_metrics_encode(&m, b), FEDGE_ERR_UPDATE_METRICS);
    m = FULL_METRICS;
    m.accuracy = 1.01f;
    assert_int_equal(fedge_train_metrics_encode(&m, b), FEDGE_ERR_UPDATE_METRICS);
    m = FULL_METRICS;
    m.present = 0;
    assert_int_equal(fedge_train_metrics_encode(&m, b), FEDGE_ERR_INVALID_ARG);
    fedge_device_key k = device_key("dev-metrics");
    fedge_delta_header h = header(FEDGE_ENC_FP32, 10);
    float x[10] = {0};
    uint8_t *f = (uint8_t *)&m;
    size_t len = 1;
    m = FULL_METRICS;
    m.epochs = 0;
    assert_int_equal(fedge_update_seal_metrics(&k, 1, RUN_ID, &m, &h, x, NULL, &f, &len), FEDGE_ERR_UPDATE_METRICS);
    assert_null(f);
    fedge_update_stream *s = (fedge_update_stream *)&h;
    assert_int_equal(fedge_update_stream_new_metrics(&k, 1, RUN_ID, &m, &h, x, NULL, &s), FEDGE_ERR_UPDATE_METRICS);
    assert_null(s);
}

/* A malformed block, sealed by a device that holds the key, is refused with
 * FEDGE_ERR_UPDATE_METRICS and nothing is written (expect_open); a block
 * changed on the way fails authentication. */
static void test_metrics_malformed(void **state)
{
    (void)state;
    fedge_device_key k = device_key("dev-metrics");
    const uint32_t n = 40;
    fedge_delta_header h = header(FEDGE_ENC_FP32, n);
    fedge_update_expect ex = expect_for(n, 0);
    size_t plen = 0;
    uint8_t *d = encoded(h, &plen);
    uint8_t good[FEDGE_TRAIN_METRICS_LEN];
    assert_int_equal(fedge_train_metrics_encode(&FULL_METRICS, good), FEDGE_OK);
    static const struct {
        size_t off;
        uint8_t val;
    } bad[] = {
        {0, 0}, {0, 2},           /* version */
        {2, 19}, {3, 1},          /* stated length */
        {1, 0x1f}, {1, 0x80},     /* unknown flag bits */
        {7, 0x7f},                /* loss: NaN (with byte 6 set below) */
        {7, 0xbf},                /* loss < 0 */
        {11, 0x40},               /* accuracy 2.x */
        {11, 0xbf},               /* accuracy < 0 */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t blk[FEDGE_TRAIN_METRICS_LEN];
        memcpy(blk, good, sizeof blk);
        blk[bad[i].off] = bad[i].val;
        if (bad[i].off == 7 && bad[i].val == 0x7f)
            blk[6] = 0xc0; /* 0x7fc0....: a quiet NaN */
        /* hdr || run id || block, sealed as the aad by hand */
        uint8_t full[FEDGE_UPDATE_AAD_LEN + FEDGE_TRAIN_METRICS_LEN];
        memcpy(full, d, FEDGE_DELTA_HEADER_LEN);
        memcpy(full + FEDGE_DELTA_HEADER_LEN, RUN_ID, FEDGE_RUN_ID_LEN);
        memcpy(full + FEDGE_UPDATE_AAD_LEN, blk, sizeof blk);
        frame fr = seal_raw_run(&k, 1, full, sizeof full, NULL, d + 64, plen - 64);
        expect_open(&k, fr.frame, fr.len, &ex, FEDGE_ERR_UPDATE_METRICS);
        free(fr.frame);
    }
    /* an absent field with bytes, a flagged epochs of 0 */
    {
        fedge_train_metrics m = {.present = FEDGE_TRAIN_HAS_LOSS, .loss = 1.0f};
        uint8_t blk[FEDGE_TRAIN_METRICS_LEN];
        assert_int_equal(fedge_train_metrics_encode(&m, blk), FEDGE_OK);
        blk[16] = 5; /* train_ms without its flag */
        fedge_train_metrics out;
        assert_int_equal(fedge_train_metrics_decode(blk, sizeof blk, &out), FEDGE_ERR_UPDATE_METRICS);
        blk[16] = 0;
        blk[1] |= FEDGE_TRAIN_HAS_EPOCHS; /* epochs flagged, 0 */
        assert_int_equal(fedge_train_metrics_decode(blk, sizeof blk, &out), FEDGE_ERR_UPDATE_METRICS);
    }
    /* a tail of the wrong length after the run id */
    for (size_t extra = 1; extra <= FEDGE_TRAIN_METRICS_LEN + 4; extra += FEDGE_TRAIN_METRICS_LEN / 2 + 1) {
        uint8_t full[FEDGE_UPDATE_AAD_LEN + 2 * FEDGE_TRAIN_METRICS_LEN];
        memcpy(full, d, FEDGE_DELTA_HEADER_LEN);
        memcpy(full + FEDGE_DELTA_HEADER_LEN, RUN_ID, FEDGE_RUN_ID_LEN);
        memcpy(full + FEDGE_UPDATE_AAD_LEN, good, sizeof good);
        memcpy(full + FEDGE_UPDATE_AAD_LEN + sizeof good, good, sizeof good);
        if (FEDGE_UPDATE_AAD_LEN + extra == sizeof full - FEDGE_TRAIN_METRICS_LEN)
            continue;
        frame fr = seal_raw_run(&k, 1, full, FEDGE_UPDATE_AAD_LEN + extra, NULL, d + 64, plen - 64);
        expect_open(&k, fr.frame, fr.len, &ex, FEDGE_ERR_UPDATE_METRICS);
        free(fr.frame);
    }
    /* a good block changed in transit: authenticated, so refused */
    float *x = random_delta(n, 3);
    uint8_t *f = NULL;
    size_t len = 0;
    assert_int_equal(fedge_update_seal_metrics(&k, 2, RUN_ID, &FULL_METRICS, &h, x, NULL, &f, &len), FEDGE_OK);
    f[FEDGE_ENV_HEADER_LEN + FEDGE_UPDATE_AAD_LEN + 4] ^= 1; /* the loss's lowest bit */
    expect_open(&k, f, len, &ex, FEDGE_ERR_ENV_AUTH);
    free(f);
    free(x);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_each_encoding),
        cmocka_unit_test(test_deterministic_without_rng),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_malformed_delta_inside),
        cmocka_unit_test(test_check_order),
        cmocka_unit_test(test_every_bit_flip),
        cmocka_unit_test(test_bound_to_run),
        cmocka_unit_test(test_counter_flow),
        cmocka_unit_test(test_open_inplace_same_as_open),
        cmocka_unit_test(test_stream_same_bytes),
        cmocka_unit_test(test_stream_refuses_up_front),
        cmocka_unit_test(test_frame_size_both_paths),
        cmocka_unit_test(test_metrics_round_trip),
        cmocka_unit_test(test_metrics_encode_decode),
        cmocka_unit_test(test_metrics_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
