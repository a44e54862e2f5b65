/* test_delta.c — the delta wire format: round trips, error bounds, the
 * half-precision conversions and every malformed input. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "combine.h"
#include "common.h"
#include "delta.h"
#include "error.h"

static const uint32_t awkward_sizes[] = {1, 255, 257, 100003};

static int quick(void)
{
    return getenv("FEDGE_TEST_QUICK") != NULL;
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Values spread over many binades: normal(0,1) * 2^k, k uniform in [lo, hi]. */
static void fill_random(float *x, size_t n, uint64_t seed, int lo, int hi)
{
    fedge_rng r;
    fedge_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) {
        int k = lo + (int)fedge_rng_below(&r, (uint32_t)(hi - lo + 1));
        x[i] = (float)ldexp(fedge_rng_normal(&r), k);
    }
}

static fedge_delta_header make_header(fedge_encoding enc, uint32_t n)
{
    fedge_delta_header h;
    memset(&h, 0, sizeof h);
    h.encoding = (uint8_t)enc;
    h.model_id = 0x1234abcdu;
    h.round = 7;
    h.n_samples = 600;
    h.n_elems = n;
    h.block_size = enc == FEDGE_ENC_INT8 ? FEDGE_DELTA_DEFAULT_BLOCK : 0;
    for (int i = 0; i < FEDGE_HASH_LEN; i++)
        h.base_version[i] = (uint8_t)(0xa0 + i);
    return h;
}

/* Encodes, decodes, checks the header survived; returns the decoded values
 * (caller frees) and the wire buffer when wire != NULL. */
static float *round_trip(const fedge_delta_header *h, const float *x, fedge_rng *rng,
                         uint8_t **wire, size_t *wire_len)
{
    size_t size = fedge_delta_encoded_size(h);
    assert_true(size > FEDGE_DELTA_HEADER_LEN);
    uint8_t *buf = malloc(size);
    float *y = malloc(sizeof(float) * h->n_elems);
    assert_non_null(buf);
    assert_non_null(y);
    size_t len = 0;
    assert_int_equal(fedge_delta_encode(h, x, rng, buf, size, &len), FEDGE_OK);
    assert_int_equal(len, size);
    fedge_delta_header got;
    assert_int_equal(fedge_delta_decode(buf, len, h->model_id, h->n_elems, &got, y), FEDGE_OK);
    assert_int_equal(got.encoding, h->encoding);
    assert_int_equal(got.model_id, h->model_id);
    assert_int_equal(got.round, h->round);
    assert_int_equal(got.n_samples, h->n_samples);
    assert_int_equal(got.n_elems, h->n_elems);
    assert_int_equal(got.block_size, h->block_size);
    assert_memory_equal(got.base_version, h->base_version, FEDGE_HASH_LEN);
    assert_int_equal(got.flags, h->encoding == FEDGE_ENC_INT8 && rng != NULL ? 1 : 0);
    if (wire != NULL) {
        *wire = buf;
        *wire_len = len;
    } else {
        free(buf);
    }
    return y;
}

static void test_names_and_sizes(void **state)
{
    (void)state;
    fedge_encoding e;
    const char *names[] = {"fp32", "fp16", "bf16", "int8"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(fedge_encoding_parse(names[i], &e), FEDGE_OK);
        assert_int_equal(e, i);
        assert_string_equal(fedge_encoding_name(e), names[i]);
    }
    assert_int_equal(fedge_encoding_parse("fp8", &e), FEDGE_ERR_DELTA_ENCODING);
    assert_int_equal(fedge_encoding_parse("FP32", &e), FEDGE_ERR_DELTA_ENCODING);

    fedge_delta_header h = make_header(FEDGE_ENC_FP32, 257);
    assert_int_equal(fedge_delta_encoded_size(&h), 64 + 4 * 257);
    h = make_header(FEDGE_ENC_FP16, 257);
    assert_int_equal(fedge_delta_encoded_size(&h), 64 + 2 * 257);
    h = make_header(FEDGE_ENC_BF16, 1);
    assert_int_equal(fedge_delta_encoded_size(&h), 64 + 2);
    h = make_header(FEDGE_ENC_INT8, 257); /* two blocks of 256: 2 scales */
    assert_int_equal(fedge_delta_encoded_size(&h), 64 + 257 + 2 * 4);
    h.block_size = 0;
    assert_int_equal(fedge_delta_encoded_size(&h), 0);
    h.block_size = 65537;
    assert_int_equal(fedge_delta_encoded_size(&h), 0);
    h = make_header(FEDGE_ENC_FP32, FEDGE_DELTA_MAX_ELEMS + 1);
    assert_int_equal(fedge_delta_encoded_size(&h), 0);
    h = make_header(FEDGE_ENC_FP32, 10);
    h.encoding = 4;
    assert_int_equal(fedge_delta_encoded_size(&h), 0);
}

static void test_header_layout(void **state)
{
    (void)state;
    float x[3] = {1.0f, -2.0f, 0.5f};
    fedge_delta_header h = make_header(FEDGE_ENC_FP32, 3);
    uint8_t buf[64 + 12];
    size_t len;
    assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len), FEDGE_OK);
    assert_memory_equal(buf, "FDLT", 4);
    assert_int_equal(buf[4] | buf[5] << 8, 1);
    assert_int_equal(buf[6], FEDGE_ENC_FP32);
    assert_int_equal(buf[7], 0);
    assert_int_equal(rd32(buf + 8), 0x1234abcdu);
    assert_int_equal(rd32(buf + 12), 7);
    assert_int_equal(rd32(buf + 16), 600);
    assert_int_equal(rd32(buf + 20), 3);
    assert_int_equal(rd32(buf + 24), 0);
    assert_int_equal(rd32(buf + 28), 0);
    assert_memory_equal(buf + 32, h.base_version, 32);
    assert_int_equal(rd32(buf + 64), bits(1.0f));
    assert_int_equal(rd32(buf + 68), bits(-2.0f));
    assert_int_equal(rd32(buf + 72), bits(0.5f));
}

static void test_fp32_round_trip(void **state)
{
    (void)state;
    for (size_t s = 0; s < FEDGE_ARRAY_LEN(awkward_sizes); s++) {
        uint32_t n = awkward_sizes[s];
        float *x = malloc(sizeof(float) * n);
        fill_random(x, n, 100 + s, -140, 120);
        fedge_delta_header h = make_header(FEDGE_ENC_FP32, n);
        float *y = round_trip(&h, x, NULL, NULL, NULL);
        assert_memory_equal(x, y, sizeof(float) * n); /* bit exact, subnormals included */
        free(x);
        free(y);
    }
}

static void test_fp16_round_trip(void **state)
{
    (void)state;
    for (size_t s = 0; s < FEDGE_ARRAY_LEN(awkward_sizes); s++) {
        uint32_t n = awkward_sizes[s];
        float *x = malloc(sizeof(float) * n);
        fill_random(x, n, 200 + s, -30, 13);
        fedge_delta_header h = make_header(FEDGE_ENC_FP16, n);
        float *y = round_trip(&h, x, NULL, NULL, NULL);
        for (uint32_t i = 0; i < n; i++) {
            double err = fabs((double)y[i] - x[i]);
            if (fabsf(x[i]) >= 0x1p-14f)
                assert_true(err <= fabs((double)x[i]) * 0x1p-11);
            else /* subnormal range: half the spacing 2^-24 */
                assert_true(err <= 0x1p-25);
            assert_int_equal(bits(y[i]) >> 31, bits(x[i]) >> 31);
        }
        free(x);
        free(y);
    }
}

static void test_bf16_round_trip(void **state)
{
    (void)state;
    for (size_t s = 0; s < FEDGE_ARRAY_LEN(awkward_sizes); s++) {
        uint32_t n = awkward_sizes[s];
        float *x = malloc(sizeof(float) * n);
        fill_random(x, n, 300 + s, -100, 100);
        fedge_delta_header h = make_header(FEDGE_ENC_BF16, n);
        float *y = round_trip(&h, x, NULL, NULL, NULL);
        for (uint32_t i = 0; i < n; i++)
            assert_true(fabs((double)y[i] - x[i]) <= fabs((double)x[i]) * 0x1p-8);
        free(x);
        free(y);
    }
}

/* The scale of block b, read from the wire. */
static float wire_scale(const uint8_t *wire, uint32_t n, uint32_t block, uint32_t b)
{
    (void)n;
    return from_bits(rd32(wire + 64 + (size_t)b * (block + 4)));
}

/* Rounding slack of the float division and product: a few ulps of
 * 127 * scale, or half the smallest subnormal. */
static double int8_slack(float scale)
{
    return (double)scale * 127.0 * 0x1p-21 + 0x1p-149;
}

static void check_int8(uint32_t n, uint32_t block, int stochastic, uint64_t seed)
{
    float *x = malloc(sizeof(float) * n);
    fill_random(x, n, seed, -12, 4);
    fedge_delta_header h = make_header(FEDGE_ENC_INT8, n);
    h.block_size = block;
    fedge_rng r;
    fedge_rng_seed(&r, seed * 31);
    uint8_t *wire;
    size_t wire_len;
    float *y = round_trip(&h, x, stochastic ? &r : NULL, &wire, &wire_len);
    for (uint32_t b = 0; b * block < n; b++) {
        uint32_t start = b * block, end = start + block < n ? start + block : n;
        float amax = 0;
        for (uint32_t i = start; i < end; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        float scale = wire_scale(wire, n, block, b);
        /* scale = max|x| / 127, within one rounding */
        assert_true(fabs((double)scale * 127.0 - amax) <= amax * 0x1p-22);
        /* slack for the float division and product: a few ulps of 127 * scale */
        double slack = int8_slack(scale);
        double bound = stochastic ? scale : scale / 2.0;
        for (uint32_t i = start; i < end; i++) {
            double err = fabs((double)y[i] - x[i]);
            assert_true(err <= bound + slack);
            /* the decoded value is exactly q * scale with |q| <= 127 */
            double q = (double)y[i] / scale;
            assert_true(fabs(q) <= 127.0 + 1e-3);
            assert_true(fabs(q - nearbyint(q)) < 1e-3);
        }
    }
    free(wire);
    free(x);
    free(y);
}

static void test_int8_nearest(void **state)
{
    (void)state;
    for (size_t s = 0; s < FEDGE_ARRAY_LEN(awkward_sizes); s++) {
        check_int8(awkward_sizes[s], FEDGE_DELTA_DEFAULT_BLOCK, 0, 400 + s);
        check_int8(awkward_sizes[s], 1, 0, 410 + s);
        check_int8(awkward_sizes[s], 100, 0, 420 + s);
    }
}

static void test_int8_stochastic_bound(void **state)
{
    (void)state;
    for (size_t s = 0; s < FEDGE_ARRAY_LEN(awkward_sizes); s++) {
        check_int8(awkward_sizes[s], FEDGE_DELTA_DEFAULT_BLOCK, 1, 500 + s);
        check_int8(awkward_sizes[s], 64, 1, 510 + s);
    }
}

/* Mean error of T stochastic encodings of the same vector, per element. */
static void mean_errors(const float *x, uint32_t n, uint32_t block, fedge_rng *rng, int trials,
                        double *mean_err, float *scale0)
{
    fedge_delta_header h = make_header(FEDGE_ENC_INT8, n);
    h.block_size = block;
    size_t size = fedge_delta_encoded_size(&h), len;
    uint8_t *buf = malloc(size);
    float *y = malloc(sizeof(float) * n);
    fedge_delta_header got;
    memset(mean_err, 0, sizeof(double) * n);
    for (int t = 0; t < trials; t++) {
        assert_int_equal(fedge_delta_encode(&h, x, rng, buf, size, &len), FEDGE_OK);
        assert_int_equal(fedge_delta_decode(buf, len, h.model_id, n, &got, y), FEDGE_OK);
        for (uint32_t i = 0; i < n; i++)
            mean_err[i] += ((double)y[i] - x[i]) / trials;
    }
    *scale0 = from_bits(rd32(buf + 64));
    free(buf);
    free(y);
}

static void test_int8_stochastic_unbiased(void **state)
{
    (void)state;
    const uint32_t n = 257, block = 257;
    const int trials = quick() ? 1500 : 6000;
    float x[257];
    double err[257];
    /* x = (k + 0.3) * scale with max 127 * scale: round-to-nearest is biased
     * by -0.3 scale on every element, stochastic rounding is not. */
    const float s = 0.01f;
    for (uint32_t i = 0; i < n; i++)
        x[i] = (float)((int)(i % 250) - 124 + 0.3) * s;
    x[n - 1] = 127.0f * s; /* pins the scale */
    fedge_rng r;
    fedge_rng_seed(&r, 99);
    float scale;
    mean_errors(x, n, block, &r, trials, err, &scale);
    assert_true(fabsf(scale - s) < s * 1e-5f);

    /* Each trial error is a two-point variable with sd <= scale/2, so the
     * mean over T trials has sd <= scale / (2 sqrt T); allow 6 sd. */
    double per_elem = 6.0 * 0.5 * scale / sqrt((double)trials);
    double total = 0;
    for (uint32_t i = 0; i < n; i++) {
        assert_true(fabs(err[i]) <= per_elem + scale * 1e-4);
        total += err[i];
    }
    assert_true(fabs(total / n) <= 6.0 * 0.5 * scale / sqrt((double)trials * n) + scale * 1e-4);

    /* The same criterion rejects round-to-nearest (the test can fail). */
    mean_errors(x, n, block, NULL, 1, err, &scale);
    assert_true(fabs(err[0]) > 2 * per_elem);
}

static void test_int8_edges(void **state)
{
    (void)state;
    /* an all-zero block, tiny subnormal maxima, values near FLT_MAX */
    float x[12] = {0, 0, 0, 0, 1e-45f, -3e-45f, 2e-44f, -1e-40f, 3e38f, -3e38f, 1.0f, 0};
    fedge_delta_header h = make_header(FEDGE_ENC_INT8, 12);
    h.block_size = 4;
    uint8_t *wire;
    size_t len;
    float *y = round_trip(&h, x, NULL, &wire, &len);
    for (int i = 0; i < 4; i++)
        assert_true(y[i] == 0.0f);
    for (uint32_t b = 1; b < 3; b++) {
        float scale = wire_scale(wire, 12, 4, b);
        assert_true(scale > 0);
        for (uint32_t i = 4 * b; i < 4 * b + 4; i++)
            assert_true(fabs((double)y[i] - x[i]) <= scale / 2.0 + int8_slack(scale));
    }
    free(wire);
    free(y);

    /* Subnormal maxima k * 2^-149: the scale is coarse there and must be
     * rounded up so that |x / scale| <= 127 stays true. */
    for (uint32_t k = 1; k < 3000; k++) {
        float v[2] = {ldexpf((float)k, -149), -ldexpf((float)(k / 2), -149)};
        fedge_delta_header hk = make_header(FEDGE_ENC_INT8, 2);
        uint8_t wk[64 + 4 + 2];
        float yk[2];
        fedge_delta_header gk;
        assert_int_equal(fedge_delta_encode(&hk, v, NULL, wk, sizeof wk, &len), FEDGE_OK);
        assert_int_equal(fedge_delta_decode(wk, len, hk.model_id, 2, &gk, yk), FEDGE_OK);
        float scale = from_bits(rd32(wk + 64));
        for (int i = 0; i < 2; i++) {
            assert_true(abs((int8_t)wk[68 + i]) <= 127);
            assert_true(fabs((double)yk[i] - v[i]) <= scale / 2.0 + int8_slack(scale));
        }
    }

    /* All maxima that a float can hold still decode to finite values. */
    float big[2] = {FLT_MAX, -FLT_MAX};
    h = make_header(FEDGE_ENC_INT8, 2);
    uint8_t buf[64 + 4 + 2];
    float out[2];
    fedge_delta_header got;
    int rc = fedge_delta_encode(&h, big, NULL, buf, sizeof buf, &len);
    assert_true(rc == FEDGE_OK || rc == FEDGE_ERR_RANGE);
    if (rc == FEDGE_OK) {
        assert_int_equal(fedge_delta_decode(buf, len, h.model_id, 2, &got, out), FEDGE_OK);
        assert_true(isfinite(out[0]) && isfinite(out[1]));
    }
}

static void test_f16_edges(void **state)
{
    (void)state;
    assert_int_equal(fedge_f32_to_f16(0.0f), 0x0000);
    assert_int_equal(fedge_f32_to_f16(-0.0f), 0x8000);
    assert_true(signbit(fedge_f16_to_f32(0x8000)) && fedge_f16_to_f32(0x8000) == 0.0f);
    assert_int_equal(fedge_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(fedge_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(fedge_f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(fedge_f32_to_f16(-INFINITY), 0xfc00);
    uint16_t hn = fedge_f32_to_f16(NAN);
    assert_int_equal(hn & 0x7c00, 0x7c00);
    assert_true((hn & 0x03ff) != 0);
    assert_int_equal(fedge_f32_to_f16(from_bits(0x7f800001u)) & 0x7fff, 0x7e00); /* sNaN stays NaN */
    assert_true(isnan(fedge_f16_to_f32(0x7e00)));
    assert_true(isnan(fedge_f16_to_f32(0xfc01)));
    assert_true(isinf(fedge_f16_to_f32(0x7c00)) && fedge_f16_to_f32(0xfc00) < 0);
    /* largest finite, overflow */
    assert_int_equal(fedge_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(fedge_f32_to_f16(65519.996f), 0x7bff);
    assert_int_equal(fedge_f32_to_f16(65520.0f), 0x7c00); /* tie rounds to even: Inf */
    assert_int_equal(fedge_f32_to_f16(-1e6f), 0xfc00);
    assert_int_equal(fedge_f32_to_f16(FLT_MAX), 0x7c00);
    assert_true(fedge_f16_to_f32(0x7bff) == 65504.0f);
    /* subnormals */
    assert_int_equal(fedge_f32_to_f16(0x1p-24f), 0x0001);
    assert_int_equal(fedge_f32_to_f16(0x1p-25f), 0x0000);         /* tie to even */
    assert_int_equal(fedge_f32_to_f16(0x1.000002p-25f), 0x0001);   /* just above the tie */
    assert_int_equal(fedge_f32_to_f16(0x3p-25f), 0x0002);          /* tie to even */
    assert_int_equal(fedge_f32_to_f16(-0x1p-24f), 0x8001);
    assert_int_equal(fedge_f32_to_f16(0x3ffp-24f), 0x03ff);        /* largest subnormal */
    assert_int_equal(fedge_f32_to_f16(0x1p-14f), 0x0400);          /* smallest normal */
    assert_int_equal(fedge_f32_to_f16(0x1.ffcp-15f), 0x0400);      /* rounds up into normal */
    assert_int_equal(fedge_f32_to_f16(1e-40f), 0x0000);            /* f32 subnormal */
    assert_int_equal(fedge_f32_to_f16(-1e-40f), 0x8000);
    assert_true(fedge_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(fedge_f16_to_f32(0x03ff) == 0x3ffp-24f);
    assert_true(fedge_f16_to_f32(0x8001) == -0x1p-24f);
    /* normal ties */
    assert_int_equal(fedge_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
    assert_int_equal(fedge_f32_to_f16(1.0f + 0x3p-11f), 0x3c02);
    assert_int_equal(fedge_f32_to_f16(1.0f + 0x1.8p-11f), 0x3c01);

    /* every half round-trips through f32 */
    for (uint32_t u = 0; u <= 0xffff; u++) {
        float f = fedge_f16_to_f32((uint16_t)u);
        if ((u & 0x7c00) == 0x7c00 && (u & 0x3ff) != 0) {
            assert_true(isnan(f));
            assert_true(isnan(fedge_f16_to_f32(fedge_f32_to_f16(f))));
        } else {
            assert_int_equal(fedge_f32_to_f16(f), u);
        }
    }
}

/* Round-to-nearest-even against an independent criterion on random bit
 * patterns: no neighbour is closer, and a tie picks the even one. Where the
 * compiler has _Float16, its conversion is checked as well. */
static void test_f16_random_patterns(void **state)
{
    (void)state;
    fedge_rng r;
    fedge_rng_seed(&r, 4242);
    const int n = quick() ? 200000 : 2000000;
    for (int i = 0; i < n; i++) {
        uint32_t u = (uint32_t)fedge_rng_u64(&r);
        if (i & 1) /* half of them near the f16 range */
            u = (u & 0x80ffffffu) | (uint32_t)(0x30 + fedge_rng_below(&r, 0x20)) << 24;
        float x = from_bits(u);
        uint16_t h = fedge_f32_to_f16(x);
#if defined(__FLT16_MAX__)
        if (!isnan(x)) {
            _Float16 ref = (_Float16)x;
            uint16_t rb;
            memcpy(&rb, &ref, sizeof rb);
            assert_int_equal(h, rb);
        }
#endif
        if (isnan(x)) {
            assert_true(isnan(fedge_f16_to_f32(h)));
            continue;
        }
        double ax = fabs((double)x);
        uint16_t mag = h & 0x7fff;
        assert_int_equal(h >> 15, u >> 31);
        if (ax >= 65520.0) {
            assert_int_equal(mag, 0x7c00);
            continue;
        }
        double d = fabs(fabs((double)fedge_f16_to_f32(mag)) - ax);
        double up = fabs((double)fedge_f16_to_f32((uint16_t)(mag + 1)) - ax);
        assert_true(d <= up);
        if (mag > 0) {
            double down = fabs((double)fedge_f16_to_f32((uint16_t)(mag - 1)) - ax);
            assert_true(d <= down);
            if (d == down || d == up)
                assert_int_equal(mag & 1, 0);
        }
    }
}

static void test_bf16_edges(void **state)
{
    (void)state;
    assert_int_equal(fedge_f32_to_bf16(0.0f), 0x0000);
    assert_int_equal(fedge_f32_to_bf16(-0.0f), 0x8000);
    assert_true(signbit(fedge_bf16_to_f32(0x8000)));
    assert_int_equal(fedge_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(fedge_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(fedge_f32_to_bf16(-INFINITY), 0xff80);
    uint16_t n1 = fedge_f32_to_bf16(NAN), n2 = fedge_f32_to_bf16(from_bits(0x7f800001u));
    uint16_t n3 = fedge_f32_to_bf16(from_bits(0xffffffffu));
    assert_true(isnan(fedge_bf16_to_f32(n1)));
    assert_true(isnan(fedge_bf16_to_f32(n2))); /* low payload bits only: must not become Inf */
    assert_true(isnan(fedge_bf16_to_f32(n3)) && (n3 & 0x8000));
    assert_int_equal(fedge_f32_to_bf16(FLT_MAX), 0x7f80);              /* overflow to Inf */
    assert_int_equal(fedge_f32_to_bf16(-FLT_MAX), 0xff80);
    assert_int_equal(fedge_f32_to_bf16(from_bits(0x7f7f7fffu)), 0x7f7f); /* just below the tie */
    assert_int_equal(fedge_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);       /* tie to even */
    assert_int_equal(fedge_f32_to_bf16(1.0f + 0x3p-8f), 0x3f82);       /* tie to even */
    assert_int_equal(fedge_f32_to_bf16(1.0f + 0x1.2p-8f), 0x3f81);
    /* subnormals keep their top bits, with rounding */
    assert_int_equal(fedge_f32_to_bf16(from_bits(0x00010000u)), 0x0001);
    assert_int_equal(fedge_f32_to_bf16(from_bits(0x00008000u)), 0x0000); /* tie to even */
    assert_int_equal(fedge_f32_to_bf16(from_bits(0x00018000u)), 0x0002); /* tie to even */
    assert_int_equal(fedge_f32_to_bf16(from_bits(0x807fffffu)), 0x8080); /* rounds into normal */
    assert_true(fedge_bf16_to_f32(0x0001) == from_bits(0x00010000u));
    for (uint32_t u = 0; u <= 0xffff; u++) {
        float f = fedge_bf16_to_f32((uint16_t)u);
        if ((u & 0x7f80) == 0x7f80 && (u & 0x7f) != 0)
            assert_true(isnan(fedge_bf16_to_f32(fedge_f32_to_bf16(f))));
        else
            assert_int_equal(fedge_f32_to_bf16(f), u);
    }
    /* random patterns: nearest, ties to even */
    fedge_rng r;
    fedge_rng_seed(&r, 77);
    for (int i = 0; i < (quick() ? 100000 : 1000000); i++) {
        uint32_t u = (uint32_t)fedge_rng_u64(&r);
        float x = from_bits(u);
        if (isnan(x))
            continue;
        uint16_t h = fedge_f32_to_bf16(x), mag = h & 0x7fff;
        double ax = fabs((double)x);
        if (mag == 0x7f80) {
            assert_true(ax > FLT_MAX * (1.0 - 0x1p-9)); /* only past the last tie */
            continue;
        }
        double d = fabs(fabs((double)fedge_bf16_to_f32(mag)) - ax);
        double up = (uint16_t)(mag + 1) == 0x7f80 ? INFINITY
                                                  : fabs((double)fedge_bf16_to_f32((uint16_t)(mag + 1)) - ax);
        assert_true(d <= up);
        if (mag > 0) {
            double down = fabs((double)fedge_bf16_to_f32((uint16_t)(mag - 1)) - ax);
            assert_true(d <= down);
            if (d == down || d == up)
                assert_int_equal(mag & 1, 0);
        }
    }
}

/* ---- malformed input ---------------------------------------------------- */

#define SENTINEL 0x5a

typedef struct {
    uint8_t *buf;
    size_t len;
    fedge_delta_header h;
} wire;

static wire make_wire(fedge_encoding enc, uint32_t n, uint32_t block)
{
    float *x = malloc(sizeof(float) * n);
    fill_random(x, n, 9000 + enc, -8, 2);
    wire w;
    w.h = make_header(enc, n);
    if (enc == FEDGE_ENC_INT8)
        w.h.block_size = block;
    size_t size = fedge_delta_encoded_size(&w.h);
    w.buf = malloc(size + 1); /* room for the "extended by one byte" case */
    assert_int_equal(fedge_delta_encode(&w.h, x, NULL, w.buf, size, &w.len), FEDGE_OK);
    w.buf[size] = 0;
    free(x);
    return w;
}

/* Decoding must fail with `want` and leave the outputs alone. */
static void expect_decode(const uint8_t *buf, size_t len, uint32_t model_id, uint32_t n, int want)
{
    float *out = malloc(sizeof(float) * (n + 1));
    fedge_delta_header h;
    memset(out, SENTINEL, sizeof(float) * (n + 1));
    memset(&h, SENTINEL, sizeof h);
    int rc = fedge_delta_decode(buf, len, model_id, n, &h, out);
    if (rc != want)
        fail_msg("decode gave %d (%s), wanted %d (%s)", rc, fedge_strerror(rc), want,
                 fedge_strerror(want));
    for (size_t i = 0; i < sizeof(float) * (n + 1); i++)
        assert_int_equal(((uint8_t *)out)[i], SENTINEL);
    for (size_t i = 0; i < sizeof h; i++)
        assert_int_equal(((uint8_t *)&h)[i], SENTINEL);
    free(out);
}

static void test_bad_lengths(void **state)
{
    (void)state;
    for (int enc = 0; enc < 4; enc++) {
        wire w = make_wire((fedge_encoding)enc, 300, 128);
        uint32_t id = w.h.model_id;
        assert_int_equal(fedge_delta_decode_header(w.buf, w.len, &w.h), FEDGE_OK);
        expect_decode(w.buf, w.len - 1, id, 300, FEDGE_ERR_DELTA_TRUNCATED);
        expect_decode(w.buf, w.len + 1, id, 300, FEDGE_ERR_DELTA_OVERSIZED);
        expect_decode(w.buf, 64, id, 300, FEDGE_ERR_DELTA_TRUNCATED);
        expect_decode(w.buf, 63, id, 300, FEDGE_ERR_DELTA_TRUNCATED);
        expect_decode(w.buf, 3, id, 300, FEDGE_ERR_DELTA_TRUNCATED);
        expect_decode(w.buf, 0, id, 300, FEDGE_ERR_DELTA_TRUNCATED);
        free(w.buf);
    }
}

static void test_bad_header_fields(void **state)
{
    (void)state;
    wire w = make_wire(FEDGE_ENC_FP32, 100, 0);
    uint32_t id = w.h.model_id;
    uint8_t *b = malloc(w.len);
#define MUTATE(stmt, code)                       \
    do {                                         \
        memcpy(b, w.buf, w.len);                 \
        stmt;                                    \
        expect_decode(b, w.len, id, 100, code);  \
    } while (0)
    MUTATE(b[0] = 'X', FEDGE_ERR_DELTA_MAGIC);
    MUTATE(b[3] ^= 0x20, FEDGE_ERR_DELTA_MAGIC);
    MUTATE(b[4] = 2, FEDGE_ERR_DELTA_VERSION);
    MUTATE(b[5] = 1, FEDGE_ERR_DELTA_VERSION);
    MUTATE(b[7] = 0x80, FEDGE_ERR_DELTA_VERSION);    /* unknown flag */
    MUTATE(b[7] = 0x08, FEDGE_ERR_DELTA_VERSION);    /* unknown flag */
    MUTATE(b[28] = 1, FEDGE_ERR_DELTA_VERSION);      /* reserved word */
    MUTATE(b[6] = 4, FEDGE_ERR_DELTA_ENCODING);
    MUTATE(b[6] = 0xff, FEDGE_ERR_DELTA_ENCODING);
    MUTATE(b[7] = 1, FEDGE_ERR_DELTA_ENCODING);      /* stochastic flag on fp32 */
    MUTATE(wr32(b + 24, 256), FEDGE_ERR_DELTA_BLOCK); /* block size on fp32 */
    MUTATE(wr32(b + 20, FEDGE_DELTA_MAX_ELEMS + 1), FEDGE_ERR_DELTA_SHAPE);
    MUTATE(wr32(b + 20, 99), FEDGE_ERR_DELTA_OVERSIZED); /* header says fewer than sent */
    MUTATE(wr32(b + 20, 101), FEDGE_ERR_DELTA_TRUNCATED);
    /* another model's delta, or a count the caller does not expect */
    expect_decode(w.buf, w.len, id + 1, 100, FEDGE_ERR_DELTA_SHAPE);
    expect_decode(w.buf, w.len, id, 101, FEDGE_ERR_DELTA_SHAPE);
    expect_decode(w.buf, w.len, id, 99, FEDGE_ERR_DELTA_SHAPE);
    free(w.buf);

    w = make_wire(FEDGE_ENC_INT8, 100, 32);
    b = realloc(b, w.len);
    MUTATE(wr32(b + 24, 0), FEDGE_ERR_DELTA_BLOCK);
    MUTATE(wr32(b + 24, 65537), FEDGE_ERR_DELTA_BLOCK);
    MUTATE(wr32(b + 24, 0xffffffffu), FEDGE_ERR_DELTA_BLOCK);
    MUTATE(wr32(b + 24, 64), FEDGE_ERR_DELTA_OVERSIZED); /* fewer scales than sent */
    MUTATE(wr32(b + 24, 16), FEDGE_ERR_DELTA_TRUNCATED);
#undef MUTATE
    free(w.buf);
    free(b);
}

static void test_nonfinite_payloads(void **state)
{
    (void)state;
    const uint32_t n = 50;
    const uint32_t fp32_bad[] = {0x7fc00000u, 0xff800000u, 0x7f800000u, 0x7f800001u};
    const uint16_t f16_bad[] = {0x7e00, 0xfc00, 0x7c00, 0x7c01};
    const uint16_t bf16_bad[] = {0x7fc0, 0xff80, 0x7f80, 0x7f81};
    for (size_t k = 0; k < 4; k++) {
        for (uint32_t pos = 0; pos < n; pos += n - 1) { /* first and last element */
            wire w = make_wire(FEDGE_ENC_FP32, n, 0);
            wr32(w.buf + 64 + 4 * pos, fp32_bad[k]);
            expect_decode(w.buf, w.len, w.h.model_id, n, FEDGE_ERR_DELTA_NONFINITE);
            free(w.buf);
            w = make_wire(FEDGE_ENC_FP16, n, 0);
            w.buf[64 + 2 * pos] = (uint8_t)f16_bad[k];
            w.buf[65 + 2 * pos] = (uint8_t)(f16_bad[k] >> 8);
            expect_decode(w.buf, w.len, w.h.model_id, n, FEDGE_ERR_DELTA_NONFINITE);
            free(w.buf);
            w = make_wire(FEDGE_ENC_BF16, n, 0);
            w.buf[64 + 2 * pos] = (uint8_t)bf16_bad[k];
            w.buf[65 + 2 * pos] = (uint8_t)(bf16_bad[k] >> 8);
            expect_decode(w.buf, w.len, w.h.model_id, n, FEDGE_ERR_DELTA_NONFINITE);
            free(w.buf);
        }
        /* int8: a NaN or Inf scale in the first or the last block */
        for (uint32_t blk = 0; blk < 2; blk++) {
            wire w = make_wire(FEDGE_ENC_INT8, n, 32);
            wr32(w.buf + 64 + blk * 36, fp32_bad[k]);
            expect_decode(w.buf, w.len, w.h.model_id, n, FEDGE_ERR_DELTA_NONFINITE);
            free(w.buf);
        }
    }
    /* int8: a finite scale whose product with q overflows */
    wire w = make_wire(FEDGE_ENC_INT8, n, 32);
    wr32(w.buf + 64, bits(FLT_MAX));
    w.buf[68] = 0x80; /* q = -128 */
    expect_decode(w.buf, w.len, w.h.model_id, n, FEDGE_ERR_DELTA_NONFINITE);
    wr32(w.buf + 64, bits(0x1.8p126f)); /* below 2^127, yet 128 times it overflows */
    expect_decode(w.buf, w.len, w.h.model_id, n, FEDGE_ERR_DELTA_NONFINITE);
    /* ... while a huge scale with a small q is fine */
    wr32(w.buf + 64, bits(FLT_MAX));
    memset(w.buf + 68, 1, 32);
    float out[50];
    fedge_delta_header h;
    assert_int_equal(fedge_delta_decode(w.buf, w.len, w.h.model_id, n, &h, out), FEDGE_OK);
    assert_true(out[0] == FLT_MAX);
    free(w.buf);
}

/* payload_norm gives the norm fedge_l2_norm takes of the decoded delta (its
 * first n_first values), the same double bit for bit, for every encoding,
 * awkward sizes and int8 blocks that do not line up with its eight lanes;
 * a payload decode refuses, it refuses with the same code. */
static void test_payload_norm(void **state)
{
    (void)state;
    static const fedge_encoding encs[] = {FEDGE_ENC_FP32, FEDGE_ENC_FP16, FEDGE_ENC_BF16, FEDGE_ENC_INT8};
    static const uint32_t blocks[] = {FEDGE_DELTA_DEFAULT_BLOCK, 1, 7, 33, 65536};
    for (size_t s = 0; s < sizeof awkward_sizes / sizeof awkward_sizes[0]; s++) {
        uint32_t n = awkward_sizes[s];
        for (size_t e = 0; e < sizeof encs / sizeof encs[0]; e++) {
            size_t nb = encs[e] == FEDGE_ENC_INT8 ? sizeof blocks / sizeof blocks[0] : 1;
            for (size_t b = 0; b < nb; b++) {
                wire w = make_wire(encs[e], n, blocks[b]);
                float *x = malloc(sizeof(float) * n);
                assert_non_null(x);
                const uint8_t *pay = w.buf + FEDGE_DELTA_HEADER_LEN;
                size_t pay_len = w.len - FEDGE_DELTA_HEADER_LEN;
                assert_int_equal(fedge_delta_decode_payload(&w.h, pay, pay_len, x), FEDGE_OK);
                const size_t firsts[] = {n, n / 2, n > 1 ? n - 1 : n, 0};
                for (size_t f = 0; f < 4; f++) {
                    double got = -1, want = fedge_l2_norm(x, firsts[f]);
                    assert_int_equal(fedge_delta_payload_norm(&w.h, pay, pay_len, firsts[f], &got), FEDGE_OK);
                    if (memcmp(&got, &want, sizeof got) != 0)
                        fail_msg("%s n %u block %u first %zu: %.17g against %.17g", fedge_encoding_name(encs[e]),
                                 n, w.h.block_size, firsts[f], got, want);
                }
                double untouched = 42;
                assert_int_equal(fedge_delta_payload_norm(&w.h, pay, pay_len, (size_t)n + 1, &untouched),
                                 FEDGE_ERR_INVALID_ARG);
                assert_int_equal(fedge_delta_payload_norm(&w.h, pay, pay_len - 1, n, &untouched),
                                 FEDGE_ERR_DELTA_TRUNCATED);
                assert_true(untouched == 42);
                free(x);
                free(w.buf);
            }
        }
    }
    /* the values decode refuses: the same code, past the first n_first too */
    const uint32_t n = 50;
    wire w = make_wire(FEDGE_ENC_INT8, n, 32);
    wr32(w.buf + 64 + 36, 0x7fc00000u); /* a NaN scale in the second block */
    double got = 42;
    float out[50];
    assert_int_equal(fedge_delta_decode_payload(&w.h, w.buf + 64, w.len - 64, out), FEDGE_ERR_DELTA_NONFINITE);
    assert_int_equal(fedge_delta_payload_norm(&w.h, w.buf + 64, w.len - 64, 10, &got), FEDGE_ERR_DELTA_NONFINITE);
    wr32(w.buf + 64 + 36, bits(FLT_MAX));
    w.buf[64 + 36 + 4] = 0x80; /* q = -128: the product overflows */
    assert_int_equal(fedge_delta_payload_norm(&w.h, w.buf + 64, w.len - 64, n, &got), FEDGE_ERR_DELTA_NONFINITE);
    assert_true(got == 42);
    free(w.buf);
    w = make_wire(FEDGE_ENC_FP16, n, 0);
    w.buf[64 + 2 * 49] = 0x00;
    w.buf[65 + 2 * 49] = 0x7c; /* +Inf, the last element */
    assert_int_equal(fedge_delta_payload_norm(&w.h, w.buf + 64, w.len - 64, n, &got), FEDGE_ERR_DELTA_NONFINITE);
    free(w.buf);
}

static void test_encode_errors(void **state)
{
    (void)state;
    float x[4] = {1, 2, 3, 4};
    uint8_t buf[64 + 16 + 4];
    size_t len = 123;
    for (int enc = 0; enc < 4; enc++) {
        fedge_delta_header h = make_header((fedge_encoding)enc, 4);
        x[2] = NAN;
        assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len),
                         FEDGE_ERR_DELTA_NONFINITE);
        assert_int_equal(len, 0);
        x[2] = -INFINITY;
        assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len),
                         FEDGE_ERR_DELTA_NONFINITE);
        x[2] = 3;
        assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, fedge_delta_encoded_size(&h) - 1, &len),
                         FEDGE_ERR_BUFFER_TOO_SMALL);
        h.flags = 0x08; /* not a flag of this version */
        assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len),
                         FEDGE_ERR_INVALID_ARG);
        h.flags = FEDGE_DELTA_FLAG_CONTROL;
        h.n_elems = 3; /* a control update holds two halves */
        assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len),
                         FEDGE_ERR_INVALID_ARG);
        h.n_elems = 4;
        assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len), FEDGE_OK);
        fedge_delta_header got;
        float back[4];
        assert_int_equal(fedge_delta_decode(buf, len, h.model_id, 4, &got, back), FEDGE_OK);
        assert_int_equal(got.flags & FEDGE_DELTA_FLAG_CONTROL, FEDGE_DELTA_FLAG_CONTROL);
        buf[20] = 3; /* n_elems 3 with the control flag */
        assert_int_equal(fedge_delta_decode_header(buf, fedge_delta_encoded_size(&h), &got),
                         FEDGE_ERR_DELTA_SHAPE);
    }
    fedge_delta_header h = make_header(FEDGE_ENC_FP16, 4);
    x[1] = 70000.0f; /* finite, but past fp16's range */
    assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len), FEDGE_ERR_RANGE);
    x[1] = 2;
    h.encoding = 9;
    assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len), FEDGE_ERR_DELTA_ENCODING);
    h = make_header(FEDGE_ENC_INT8, 4);
    h.block_size = 0;
    assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len), FEDGE_ERR_DELTA_BLOCK);
    h = make_header(FEDGE_ENC_FP32, 4);
    h.block_size = 8;
    assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len), FEDGE_ERR_DELTA_BLOCK);
}

/* Range decoding gives exactly the elements the full decode gives, for every
 * encoding, ranges inside, across and at the ends of int8 blocks, and reads
 * only the bytes span names; bad ranges and a non-finite value in the range
 * are refused. */
static void test_span_decode(void **state)
{
    (void)state;
    const uint32_t n = 1000, block = 64;
    float *x = malloc(n * sizeof *x), *full = malloc(n * sizeof *full), *part = malloc(n * sizeof *part);
    assert_non_null(x);
    assert_non_null(full);
    assert_non_null(part);
    for (uint32_t i = 0; i < n; i++)
        x[i] = (float)((int)(i * 37 % 201) - 100) / 64.0f;
    const size_t ranges[][2] = {{0, 1}, {0, 1000}, {5, 6}, {63, 65}, {64, 128}, {100, 999}, {999, 1000}, {960, 1000}};
    for (int e = FEDGE_ENC_FP32; e <= FEDGE_ENC_INT8; e++) {
        fedge_delta_header h = {.encoding = (uint8_t)e, .model_id = 7, .n_elems = n,
                                .block_size = e == FEDGE_ENC_INT8 ? block : 0};
        size_t len = fedge_delta_encoded_size(&h), out_len = 0;
        uint8_t *buf = malloc(len);
        assert_non_null(buf);
        assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, len, &out_len), FEDGE_OK);
        assert_int_equal(fedge_delta_decode(buf, len, 7, n, &h, full), FEDGE_OK);
        for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
            size_t k0 = ranges[r][0], k1 = ranges[r][1], off = 0, blen = 0;
            assert_int_equal(fedge_delta_span(&h, k0, k1, &off, &blen), FEDGE_OK);
            assert_true(off >= FEDGE_DELTA_HEADER_LEN && off + blen <= len);
            if (e != FEDGE_ENC_INT8)
                assert_int_equal(blen, (k1 - k0) * (e == FEDGE_ENC_FP32 ? 4 : 2));
            memset(part, 0xff, n * sizeof *part);
            assert_int_equal(fedge_delta_decode_span(&h, k0, k1, buf + off, blen, part), FEDGE_OK);
            assert_memory_equal(part, full + k0, (k1 - k0) * sizeof *part);
            assert_true(k1 - k0 == n || bits(part[k1 - k0]) == 0xffffffffu); /* nothing past the range */
            assert_int_equal(fedge_delta_decode_span(&h, k0, k1, buf + off, blen - 1, part), FEDGE_ERR_INVALID_ARG);
        }
        size_t off, blen;
        assert_int_equal(fedge_delta_span(&h, 5, 5, &off, &blen), FEDGE_ERR_INVALID_ARG);
        assert_int_equal(fedge_delta_span(&h, 0, n + 1, &off, &blen), FEDGE_ERR_INVALID_ARG);
        /* a NaN (or a NaN scale) inside the range is refused; outside it is not read */
        assert_int_equal(fedge_delta_span(&h, 0, 1, &off, &blen), FEDGE_OK);
        memset(buf + off, 0xff, e == FEDGE_ENC_INT8 ? 4 : blen); /* all-ones: NaN in every float format */
        assert_int_equal(fedge_delta_decode_span(&h, 0, 1, buf + off, blen, part), FEDGE_ERR_DELTA_NONFINITE);
        assert_int_equal(fedge_delta_span(&h, 900, 1000, &off, &blen), FEDGE_OK);
        assert_int_equal(fedge_delta_decode_span(&h, 900, 1000, buf + off, blen, part), FEDGE_OK);
        free(buf);
    }
    free(x);
    free(full);
    free(part);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_sizes),
        cmocka_unit_test(test_payload_norm),
        cmocka_unit_test(test_header_layout),
        cmocka_unit_test(test_fp32_round_trip),
        cmocka_unit_test(test_fp16_round_trip),
        cmocka_unit_test(test_bf16_round_trip),
        cmocka_unit_test(test_int8_nearest),
        cmocka_unit_test(test_int8_stochastic_bound),
        cmocka_unit_test(test_int8_stochastic_unbiased),
        cmocka_unit_test(test_int8_edges),
        cmocka_unit_test(test_f16_edges),
        cmocka_unit_test(test_f16_random_patterns),
        cmocka_unit_test(test_bf16_edges),
        cmocka_unit_test(test_bad_lengths),
        cmocka_unit_test(test_bad_header_fields),
        cmocka_unit_test(test_nonfinite_payloads),
        cmocka_unit_test(test_encode_errors),
        cmocka_unit_test(test_span_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
