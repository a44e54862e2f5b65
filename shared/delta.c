/* delta.c — encode and decode weight deltas (see delta.h for the layout).
 *
 * Decoding is two passes: a scan of the wire bytes that rejects NaN/Inf
 * (and int8 blocks whose products would overflow), then the conversion, so
 * the caller's buffer is written only once the whole payload is known good. */
#include "delta.h"

#include <math.h>
#include <string.h>

#include "bytes.h"
#include "common.h"

static const uint8_t delta_magic[4] = {'F', 'D', 'L', 'T'};

#define FLAG_STOCHASTIC 0x01u
#define FLAG_KNOWN (FLAG_STOCHASTIC | FEDGE_DELTA_FLAG_CONTROL | FEDGE_DELTA_FLAG_PARTIAL)

/* ---- float bits ------------------------------------------------------------ */

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- half precision (round to nearest even) ------------------------------ */

/* The conversions compute every case and select, without branches, so the
 * chunked loops below vectorise. */
static inline uint16_t f32_to_f16(float f)
{
    uint32_t w = f32_bits(f);
    uint32_t sign = (w >> 16) & 0x8000u;
    uint32_t x = w & 0x7fffffffu;
    /* normal: rebias the exponent (-112 << 23) and round to nearest even on
     * bit 13; a carry into exponent 31 gives Inf */
    uint32_t normal = (x + 0xc8000fffu + ((x >> 13) & 1u)) >> 13;
    /* below 2^-14 (f16 subnormal or zero): adding 0.5 aligns the kept bits at
     * the bottom of the mantissa and the FPU rounds to nearest even */
    uint32_t subnormal = f32_bits(bits_f32(x) + 0.5f) - 0x3f000000u;
    uint32_t special = x > 0x7f800000u ? 0x7e00u : 0x7c00u; /* NaN, Inf, |f| >= 65536 */
    uint32_t o = x >= 0x47800000u ? special : x < 0x38800000u ? subnormal : normal;
    return (uint16_t)(o | sign);
}

static inline float f16_to_f32(uint16_t h)
{
    uint32_t o = (uint32_t)(h & 0x7fffu) << 13;
    uint32_t exp = o & 0x0f800000u;
    uint32_t normal = o + 0x38000000u;    /* rebias exponent (+112 << 23) */
    uint32_t special = o + 0x70000000u;   /* Inf / NaN: exponent 255 */
    uint32_t subnormal = f32_bits(bits_f32(o + 0x38800000u) - bits_f32(0x38800000u));
    uint32_t r = exp == 0x0f800000u ? special : exp == 0 ? subnormal : normal;
    return bits_f32(r | (uint32_t)(h & 0x8000u) << 16);
}

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16; /* past FLT_MAX: Inf */
    uint32_t quiet_nan = (x >> 16) | 0x0040u;                  /* sign kept */
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

static inline float bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t fedge_f32_to_f16(float f) { return f32_to_f16(f); }
float fedge_f16_to_f32(uint16_t h) { return f16_to_f32(h); }
uint16_t fedge_f32_to_bf16(float f) { return f32_to_bf16(f); }
float fedge_bf16_to_f32(uint16_t h) { return bf16_to_f32(h); }

/* ---- names and sizes ------------------------------------------------------ */

static const char *const encoding_names[] = {"fp32", "fp16", "bf16", "int8"};

int fedge_encoding_parse(const char *text, fedge_encoding *out)
{
    if (text == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(encoding_names); i++) {
        if (strcmp(text, encoding_names[i]) == 0) {
            *out = (fedge_encoding)i;
            return FEDGE_OK;
        }
    }
    return FEDGE_ERR_DELTA_ENCODING;
}

const char *fedge_encoding_name(fedge_encoding e)
{
    if ((unsigned)e < FEDGE_ARRAY_LEN(encoding_names))
        return encoding_names[e];
    return "unknown";
}

static uint64_t payload_size(uint8_t encoding, uint32_t n, uint32_t block)
{
    switch (encoding) {
    case FEDGE_ENC_FP32: return (uint64_t)n * 4;
    case FEDGE_ENC_FP16:
    case FEDGE_ENC_BF16: return (uint64_t)n * 2;
    case FEDGE_ENC_INT8: return (uint64_t)n + 4 * (((uint64_t)n + block - 1) / block);
    default: return 0;
    }
}

/* Field checks shared by the encoder and the decoder. */
static int check_fields(uint8_t encoding, uint32_t n_elems, uint32_t block)
{
    if (encoding > FEDGE_ENC_INT8)
        return FEDGE_ERR_DELTA_ENCODING;
    if (encoding == FEDGE_ENC_INT8 ? (block < 1 || block > 65536) : block != 0)
        return FEDGE_ERR_DELTA_BLOCK;
    if (n_elems > FEDGE_DELTA_MAX_ELEMS)
        return FEDGE_ERR_DELTA_SHAPE;
    return FEDGE_OK;
}

size_t fedge_delta_encoded_size(const fedge_delta_header *h)
{
    if (h == NULL || check_fields(h->encoding, h->n_elems, h->block_size) != FEDGE_OK)
        return 0;
    return FEDGE_DELTA_HEADER_LEN + (size_t)payload_size(h->encoding, h->n_elems, h->block_size) +
           ((h->flags & FEDGE_DELTA_FLAG_PARTIAL) ? FEDGE_DELTA_PARTIAL_HEAD_LEN : 0);
}

/* The flag combinations the format allows (delta.h). */
static int check_partial(uint8_t flags, uint8_t encoding)
{
    if (!(flags & FEDGE_DELTA_FLAG_PARTIAL))
        return FEDGE_OK;
    if (encoding != FEDGE_ENC_FP32)
        return FEDGE_ERR_DELTA_ENCODING;
    if (flags & FEDGE_DELTA_FLAG_CONTROL)
        return FEDGE_ERR_DELTA_SHAPE;
    return FEDGE_OK;
}

/* ---- encoding ------------------------------------------------------------- */

static void write_header(const fedge_delta_header *h, uint8_t flags, uint8_t *p)
{
    memcpy(p, delta_magic, 4);
    fedge_put_u16(p + 4, FEDGE_DELTA_VERSION);
    p[6] = h->encoding;
    p[7] = flags;
    fedge_put_u32(p + 8, h->model_id);
    fedge_put_u32(p + 12, h->round);
    fedge_put_u32(p + 16, h->n_samples);
    fedge_put_u32(p + 20, h->n_elems);
    fedge_put_u32(p + 24, h->block_size);
    fedge_put_u32(p + 28, 0);
    memcpy(p + 32, h->base_version, FEDGE_HASH_LEN);
}

/* ---- bulk loops ------------------------------------------------------------
 * Element loops run over chunks of CHUNK elements: with a constant trip
 * count the compiler vectorises them even at -O2, and the last, shorter
 * chunk takes the same code with a variable count. On little-endian hosts
 * wire order is memory order, so fedge_get/put (bytes.h) are plain loads and
 * stores. */

#define CHUNK 32

#define CHUNK_LOOP(k, body)                          \
    do {                                             \
        if ((k) == CHUNK) {                          \
            for (size_t j = 0; j < CHUNK; j++) {     \
                body;                                \
            }                                        \
        } else {                                     \
            for (size_t j = 0; j < (k); j++) {       \
                body;                                \
            }                                        \
        }                                            \
    } while (0)

/* Bit 31 of (bits & exponent mask) + lowest exponent bit is set exactly when
 * the exponent is all ones (NaN or Inf): an OR-reduction, no branches. */
#define F32_SPECIAL(u) (((u) & 0x7f800000u) + 0x00800000u)
#define F16_SPECIAL(h) (((uint32_t)(h) & 0x7c00u) + 0x0400u)   /* bit 15 */
#define BF16_SPECIAL(h) (((uint32_t)(h) & 0x7f80u) + 0x0080u)  /* bit 15 */

static int any_nonfinite(const float *x, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        CHUNK_LOOP(k, bad |= F32_SPECIAL(f32_bits(x[i + j])));
    }
    return (bad & 0x80000000u) != 0;
}

static int encode_fp32(const float *x, size_t n, uint8_t *p)
{
    if (any_nonfinite(x, n))
        return FEDGE_ERR_DELTA_NONFINITE;
    if (FEDGE_HOST_LE) {
        memcpy(p, x, 4 * n);
    } else {
        for (size_t i = 0; i < n; i++)
            fedge_put_f32(p + 4 * i, x[i]);
    }
    return FEDGE_OK;
}

/* A finite input that rounds to Inf is out of the encoding's range. */
static int encode_half(const float *x, size_t n, uint8_t *p, int bf16)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        const float *xc = x + i;
        uint8_t *pc = p + 2 * i;
        if (bf16) {
            CHUNK_LOOP(k, {
                uint16_t v = f32_to_bf16(xc[j]);
                bad |= BF16_SPECIAL(v);
                fedge_put_u16(pc + 2 * j, v);
            });
        } else {
            CHUNK_LOOP(k, {
                uint16_t v = f32_to_f16(xc[j]);
                bad |= F16_SPECIAL(v);
                fedge_put_u16(pc + 2 * j, v);
            });
        }
    }
    if (bad & 0x8000u)
        return any_nonfinite(x, n) ? FEDGE_ERR_DELTA_NONFINITE : FEDGE_ERR_RANGE;
    return FEDGE_OK;
}

/* Round to nearest even for |v| < 2^22 without libm (vectorisable). */
static inline float round_even(float v)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23; needs IEEE arithmetic, no fast-math */
    return (v + magic) - magic;
}

/* q = floor(v) + (u < frac(v)), u uniform in [0, 1): E[q] = v. */
static inline int8_t stochastic_round(float v, uint32_t u24)
{
    float r = round_even(v);
    float fl = r > v ? r - 1.0f : r;
    float u = (float)(int32_t)u24 * 0x1p-24f;
    float q = fl + (u < v - fl ? 1.0f : 0.0f);
    q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
    return (int8_t)(int)q;
}

static int encode_int8(const float *x, size_t n, uint32_t block, fedge_rng *rng, uint8_t *p)
{
    uint32_t rnd[CHUNK];
    for (size_t start = 0; start < n; start += block) {
        size_t len = n - start < block ? n - start : block;
        const float *xb = x + start;
        uint32_t amax = 0;
        for (size_t i = 0; i < len; i += CHUNK) {
            size_t k = len - i < CHUNK ? len - i : CHUNK;
            CHUNK_LOOP(k, {
                uint32_t a = f32_bits(xb[i + j]) & 0x7fffffffu;
                amax = a > amax ? a : amax;
            });
        }
        if (amax >= 0x7f800000u)
            return FEDGE_ERR_DELTA_NONFINITE;
        float max = bits_f32(amax);
        float scale = max / 127.0f;
        /* Round the scale up when needed so |x / scale| <= 127 always holds
         * (matters only for tiny, subnormal maxima). */
        if ((double)scale * 127.0 < (double)max)
            scale = nextafterf(scale, INFINITY);
        if (!isfinite(scale * 127.0f))
            return FEDGE_ERR_RANGE;
        fedge_put_f32(p, scale);
        int8_t *q = (int8_t *)(p + 4);
        /* x * (1 / scale) is within 2^-22 relative of x / scale, which only
         * moves |v| <= 127 by far less than a rounding step; the reciprocal
         * of a subnormal scale overflows, so those use the division. */
        float inv = 1.0f / scale;
        if (scale == 0.0f) {
            memset(q, 0, len);
        } else if (rng == NULL && scale >= 0x1p-126f) {
            for (size_t i = 0; i < len; i += CHUNK) {
                size_t k = len - i < CHUNK ? len - i : CHUNK;
                CHUNK_LOOP(k, q[i + j] = (int8_t)(int)round_even(xb[i + j] * inv));
            }
        } else if (rng == NULL) {
            for (size_t i = 0; i < len; i++)
                q[i] = (int8_t)(int)round_even(xb[i] / scale);
        } else {
            for (size_t i = 0; i < len; i += CHUNK) {
                size_t k = len - i < CHUNK ? len - i : CHUNK;
                for (size_t j = 0; j < k; j += 2) { /* 24 uniform bits per element */
                    uint64_t r = fedge_rng_u64(rng);
                    rnd[j] = (uint32_t)r & 0xffffffu;
                    rnd[j + 1] = (uint32_t)(r >> 32) & 0xffffffu;
                }
                if (scale >= 0x1p-126f)
                    CHUNK_LOOP(k, q[i + j] = stochastic_round(xb[i + j] * inv, rnd[j]));
                else
                    CHUNK_LOOP(k, q[i + j] = stochastic_round(xb[i + j] / scale, rnd[j]));
            }
        }
        p += 4 + len;
    }
    return FEDGE_OK;
}

int fedge_delta_encode(const fedge_delta_header *h, const float *delta, fedge_rng *rng,
                       uint8_t *out, size_t cap, size_t *out_len)
{
    if (h == NULL || out == NULL || out_len == NULL || (delta == NULL && h->n_elems > 0))
        return FEDGE_ERR_INVALID_ARG;
    *out_len = 0;
    if ((h->flags & ~FLAG_KNOWN) != 0 || ((h->flags & FEDGE_DELTA_FLAG_CONTROL) && (h->n_elems & 1u)))
        return FEDGE_ERR_INVALID_ARG;
    int ret = check_fields(h->encoding, h->n_elems, h->block_size);
    if (ret == FEDGE_OK)
        ret = check_partial(h->flags, h->encoding);
    if (ret != FEDGE_OK)
        return ret;
    size_t size = fedge_delta_encoded_size(h);
    if (cap < size)
        return FEDGE_ERR_BUFFER_TOO_SMALL;

    int stochastic = h->encoding == FEDGE_ENC_INT8 && rng != NULL;
    uint8_t *payload = out + FEDGE_DELTA_HEADER_LEN;
    write_header(h, (uint8_t)((stochastic ? FLAG_STOCHASTIC : 0) |
                              (h->flags & (FEDGE_DELTA_FLAG_CONTROL | FEDGE_DELTA_FLAG_PARTIAL))), out);
    switch (h->encoding) {
    case FEDGE_ENC_FP32: ret = encode_fp32(delta, h->n_elems, payload); break;
    case FEDGE_ENC_FP16: ret = encode_half(delta, h->n_elems, payload, 0); break;
    case FEDGE_ENC_BF16: ret = encode_half(delta, h->n_elems, payload, 1); break;
    default: ret = encode_int8(delta, h->n_elems, h->block_size, stochastic ? rng : NULL, payload); break;
    }
    if (ret == FEDGE_OK && (h->flags & FEDGE_DELTA_FLAG_PARTIAL))
        memcpy(out + size - FEDGE_DELTA_PARTIAL_HEAD_LEN, h->partial_head, FEDGE_DELTA_PARTIAL_HEAD_LEN);
    if (ret == FEDGE_OK)
        *out_len = size;
    return ret;
}

/* ---- decoding ------------------------------------------------------------- */

int fedge_delta_parse_header(const uint8_t hdr[FEDGE_DELTA_HEADER_LEN], fedge_delta_header *h)
{
    if (hdr == NULL || h == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (memcmp(hdr, delta_magic, 4) != 0)
        return FEDGE_ERR_DELTA_MAGIC;
    if (fedge_get_u16(hdr + 4) != FEDGE_DELTA_VERSION)
        return FEDGE_ERR_DELTA_VERSION;
    /* Unknown flag bits and a non-zero reserved word belong to a later version. */
    if ((hdr[7] & ~FLAG_KNOWN) != 0 || fedge_get_u32(hdr + 28) != 0)
        return FEDGE_ERR_DELTA_VERSION;
    fedge_delta_header t;
    memset(&t, 0, sizeof t);
    t.encoding = hdr[6];
    t.flags = hdr[7];
    t.model_id = fedge_get_u32(hdr + 8);
    t.round = fedge_get_u32(hdr + 12);
    t.n_samples = fedge_get_u32(hdr + 16);
    t.n_elems = fedge_get_u32(hdr + 20);
    t.block_size = fedge_get_u32(hdr + 24);
    memcpy(t.base_version, hdr + 32, FEDGE_HASH_LEN);
    int ret = check_fields(t.encoding, t.n_elems, t.block_size);
    if (ret != FEDGE_OK)
        return ret;
    if ((t.flags & FLAG_STOCHASTIC) && t.encoding != FEDGE_ENC_INT8)
        return FEDGE_ERR_DELTA_ENCODING;
    if ((t.flags & FEDGE_DELTA_FLAG_CONTROL) && (t.n_elems & 1u))
        return FEDGE_ERR_DELTA_SHAPE;
    ret = check_partial(t.flags, t.encoding);
    if (ret != FEDGE_OK)
        return ret;
    *h = t;
    return FEDGE_OK;
}

int fedge_delta_check_length(const fedge_delta_header *h, size_t len)
{
    size_t want = fedge_delta_encoded_size(h);
    if (want == 0)
        return FEDGE_ERR_INVALID_ARG;
    if (len < want)
        return FEDGE_ERR_DELTA_TRUNCATED;
    if (len > want)
        return FEDGE_ERR_DELTA_OVERSIZED;
    return FEDGE_OK;
}

int fedge_delta_decode_header(const uint8_t *buf, size_t len, fedge_delta_header *h)
{
    if (buf == NULL || h == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (len >= 4 && memcmp(buf, delta_magic, 4) != 0)
        return FEDGE_ERR_DELTA_MAGIC;
    if (len < FEDGE_DELTA_HEADER_LEN)
        return FEDGE_ERR_DELTA_TRUNCATED;
    fedge_delta_header t;
    int ret = fedge_delta_parse_header(buf, &t);
    if (ret == FEDGE_OK)
        ret = fedge_delta_check_length(&t, len);
    if (ret == FEDGE_OK)
        *h = t;
    return ret;
}

static int scan_fp32(const uint8_t *p, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        const uint8_t *pc = p + 4 * i;
        CHUNK_LOOP(k, bad |= F32_SPECIAL(fedge_get_u32(pc + 4 * j)));
    }
    return (bad & 0x80000000u) != 0;
}

static int scan_half(const uint8_t *p, size_t n, int bf16)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        const uint8_t *pc = p + 2 * i;
        if (bf16)
            CHUNK_LOOP(k, bad |= BF16_SPECIAL(fedge_get_u16(pc + 2 * j)));
        else
            CHUNK_LOOP(k, bad |= F16_SPECIAL(fedge_get_u16(pc + 2 * j)));
    }
    return (bad & 0x8000u) != 0;
}

/* Only the scales can be non-finite, and q * scale can overflow only when
 * |scale| > FLT_MAX / 128, so elements are looked at in such blocks alone. */
static int scan_int8(const uint8_t *p, size_t n, uint32_t block)
{
    for (size_t start = 0; start < n; start += block) {
        size_t len = n - start < block ? n - start : block;
        float scale = fedge_get_f32(p);
        if (!isfinite(scale))
            return 1;
        if (fabsf(scale) > 0x1p120f) {
            for (size_t i = 0; i < len; i++)
                if (!isfinite((float)(int8_t)p[4 + i] * scale))
                    return 1;
        }
        p += 4 + len;
    }
    return 0;
}

/* acc[(g0 + j) % 8] += x[j]^2 for j < k: element g's square goes to lane g % 8 */
static void add_squares(double acc[8], size_t g0, const float *x, size_t k)
{
    if (k == CHUNK && (g0 & 7) == 0) { /* lanes in step: fixed trip counts, vectorised */
        /* eight named sums stay in registers (acc may alias x under -fno-strict-aliasing) */
        double a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
        double a4 = acc[4], a5 = acc[5], a6 = acc[6], a7 = acc[7];
        for (size_t j = 0; j < CHUNK; j += 8) {
            a0 += (double)x[j] * (double)x[j];
            a1 += (double)x[j + 1] * (double)x[j + 1];
            a2 += (double)x[j + 2] * (double)x[j + 2];
            a3 += (double)x[j + 3] * (double)x[j + 3];
            a4 += (double)x[j + 4] * (double)x[j + 4];
            a5 += (double)x[j + 5] * (double)x[j + 5];
            a6 += (double)x[j + 6] * (double)x[j + 6];
            a7 += (double)x[j + 7] * (double)x[j + 7];
        }
        acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
        acc[4] = a4, acc[5] = a5, acc[6] = a6, acc[7] = a7;
        return;
    }
    for (size_t j = 0; j < k; j++)
        acc[(g0 + j) & 7] += (double)x[j] * (double)x[j];
}

/* The payload checked whole (its fields, its length, no non-finite value),
 * then its first n_dec elements decoded a chunk at a time: into out[0..n_dec)
 * when out is given, and each element g's square added to acc[g % 8] when
 * acc is given. */
static int decode_walk(const fedge_delta_header *h, const uint8_t *payload, size_t payload_len,
                       size_t n_dec, float *out, double acc[8])
{
    int ret = check_fields(h->encoding, h->n_elems, h->block_size);
    if (ret != FEDGE_OK)
        return ret;
    ret = fedge_delta_check_length(h, FEDGE_DELTA_HEADER_LEN + payload_len);
    if (ret != FEDGE_OK)
        return ret;

    size_t n = h->n_elems;
    const uint8_t *p = payload;
    float x[CHUNK];
    switch (h->encoding) {
    case FEDGE_ENC_FP32:
        if (scan_fp32(p, n))
            return FEDGE_ERR_DELTA_NONFINITE;
        if (FEDGE_HOST_LE && acc == NULL) {
            memcpy(out, p, 4 * n_dec);
            break;
        }
        for (size_t i = 0; i < n_dec; i += CHUNK) {
            size_t k = n_dec - i < CHUNK ? n_dec - i : CHUNK;
            float *d = out != NULL ? out + i : x;
            for (size_t j = 0; j < k; j++)
                d[j] = fedge_get_f32(p + 4 * (i + j));
            if (acc != NULL)
                add_squares(acc, i, d, k);
        }
        break;
    case FEDGE_ENC_FP16:
    case FEDGE_ENC_BF16: {
        int bf16 = h->encoding == FEDGE_ENC_BF16;
        if (scan_half(p, n, bf16))
            return FEDGE_ERR_DELTA_NONFINITE;
        for (size_t i = 0; i < n_dec; i += CHUNK) {
            size_t k = n_dec - i < CHUNK ? n_dec - i : CHUNK;
            const uint8_t *pc = p + 2 * i;
            float *d = out != NULL ? out + i : x;
            if (bf16)
                CHUNK_LOOP(k, d[j] = bf16_to_f32(fedge_get_u16(pc + 2 * j)));
            else
                CHUNK_LOOP(k, d[j] = f16_to_f32(fedge_get_u16(pc + 2 * j)));
            if (acc != NULL)
                add_squares(acc, i, d, k);
        }
        break;
    }
    default: {
        uint32_t block = h->block_size;
        if (scan_int8(p, n, block))
            return FEDGE_ERR_DELTA_NONFINITE;
        for (size_t start = 0; start < n_dec; start += block) {
            size_t len = n - start < block ? n - start : block;
            if (len > n_dec - start)
                len = n_dec - start;
            float scale = fedge_get_f32(p);
            const int8_t *q = (const int8_t *)(p + 4);
            for (size_t i = 0; i < len; i += CHUNK) {
                size_t k = len - i < CHUNK ? len - i : CHUNK;
                float *d = out != NULL ? out + start + i : x;
                CHUNK_LOOP(k, d[j] = (float)q[i + j] * scale);
                if (acc != NULL)
                    add_squares(acc, start + i, d, k);
            }
            p += 4 + block;
        }
        break;
    }
    }
    return FEDGE_OK;
}

int fedge_delta_decode_payload(const fedge_delta_header *h, const uint8_t *payload,
                               size_t payload_len, float *out)
{
    if (h == NULL || (payload == NULL && payload_len > 0) || (out == NULL && h->n_elems > 0))
        return FEDGE_ERR_INVALID_ARG;
    return decode_walk(h, payload, payload_len, h->n_elems, out, NULL);
}

int fedge_delta_payload_norm(const fedge_delta_header *h, const uint8_t *payload, size_t payload_len,
                             size_t n_first, double *norm)
{
    if (h == NULL || norm == NULL || (payload == NULL && payload_len > 0) || n_first > h->n_elems)
        return FEDGE_ERR_INVALID_ARG;
    double acc[8] = {0};
    int ret = decode_walk(h, payload, payload_len, n_first, NULL, acc);
    if (ret != FEDGE_OK)
        return ret;
    double sum = 0;
    for (int l = 0; l < 8; l++)
        sum += acc[l];
    *norm = sqrt(sum);
    return FEDGE_OK;
}

int fedge_delta_decode(const uint8_t *buf, size_t len, uint32_t expected_model_id,
                       uint32_t expected_elems, fedge_delta_header *h, float *out)
{
    if (buf == NULL || h == NULL || (out == NULL && expected_elems > 0))
        return FEDGE_ERR_INVALID_ARG;
    fedge_delta_header t;
    int ret = fedge_delta_decode_header(buf, len, &t);
    if (ret != FEDGE_OK)
        return ret;
    if (t.n_elems != expected_elems || t.model_id != expected_model_id)
        return FEDGE_ERR_DELTA_SHAPE;
    ret = fedge_delta_decode_payload(&t, buf + FEDGE_DELTA_HEADER_LEN,
                                     len - FEDGE_DELTA_HEADER_LEN, out);
    if (ret == FEDGE_OK && (t.flags & FEDGE_DELTA_FLAG_PARTIAL))
        memcpy(t.partial_head, buf + len - FEDGE_DELTA_PARTIAL_HEAD_LEN, FEDGE_DELTA_PARTIAL_HEAD_LEN);
    if (ret == FEDGE_OK)
        *h = t;
    return ret;
}

int fedge_delta_partial_head(const uint8_t *buf, size_t len, uint8_t out[FEDGE_DELTA_PARTIAL_HEAD_LEN])
{
    fedge_delta_header t;
    if (out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    int ret = fedge_delta_decode_header(buf, len, &t);
    if (ret != FEDGE_OK)
        return ret;
    if (!(t.flags & FEDGE_DELTA_FLAG_PARTIAL))
        return FEDGE_ERR_NOT_FOUND;
    memcpy(out, buf + len - FEDGE_DELTA_PARTIAL_HEAD_LEN, FEDGE_DELTA_PARTIAL_HEAD_LEN);
    return FEDGE_OK;
}

/* ---- range decoding --------------------------------------------------------- */

int fedge_delta_span(const fedge_delta_header *h, size_t k0, size_t k1, size_t *byte_off, size_t *byte_len)
{
    if (h == NULL || byte_off == NULL || byte_len == NULL || k0 >= k1 || k1 > h->n_elems ||
        check_fields(h->encoding, h->n_elems, h->block_size) != FEDGE_OK)
        return FEDGE_ERR_INVALID_ARG;
    switch (h->encoding) {
    case FEDGE_ENC_FP32:
        *byte_off = FEDGE_DELTA_HEADER_LEN + 4 * k0;
        *byte_len = 4 * (k1 - k0);
        return FEDGE_OK;
    case FEDGE_ENC_FP16:
    case FEDGE_ENC_BF16:
        *byte_off = FEDGE_DELTA_HEADER_LEN + 2 * k0;
        *byte_len = 2 * (k1 - k0);
        return FEDGE_OK;
    default: {
        size_t b = h->block_size, first = k0 / b, last = (k1 - 1) / b;
        size_t end = (last + 1) * b < h->n_elems ? (last + 1) * b : h->n_elems; /* elements to the block's end */
        *byte_off = FEDGE_DELTA_HEADER_LEN + first * (4 + b);
        *byte_len = (last - first + 1) * 4 + (end - first * b);
        return FEDGE_OK;
    }
    }
}

int fedge_delta_decode_span(const fedge_delta_header *h, size_t k0, size_t k1, const uint8_t *bytes,
                            size_t len, float *out)
{
    size_t off = 0, want = 0;
    int ret = fedge_delta_span(h, k0, k1, &off, &want);
    if (ret != FEDGE_OK)
        return ret;
    if (bytes == NULL || out == NULL || len != want)
        return FEDGE_ERR_INVALID_ARG;
    size_t n = k1 - k0;
    if (h->encoding != FEDGE_ENC_INT8) {
        fedge_delta_header part = *h;
        part.n_elems = (uint32_t)n;
        part.flags &= (uint8_t)~FEDGE_DELTA_FLAG_PARTIAL; /* the span holds values only, no trailer */
        return fedge_delta_decode_payload(&part, bytes, len, out);
    }
    size_t b = h->block_size, first = k0 / b;
    const uint8_t *p = bytes;
    for (size_t start = first * b; start < k1; start += b) { /* scan, then convert */
        size_t blen = h->n_elems - start < b ? h->n_elems - start : b;
        float scale = fedge_get_f32(p);
        if (!isfinite(scale))
            return FEDGE_ERR_DELTA_NONFINITE;
        if (fabsf(scale) > 0x1p120f)
            for (size_t i = 0; i < blen; i++)
                if (!isfinite((float)(int8_t)p[4 + i] * scale))
                    return FEDGE_ERR_DELTA_NONFINITE;
        p += 4 + blen;
    }
    p = bytes;
    for (size_t start = first * b; start < k1; start += b) {
        size_t blen = h->n_elems - start < b ? h->n_elems - start : b;
        float scale = fedge_get_f32(p);
        const int8_t *q = (const int8_t *)(p + 4);
        for (size_t i = 0; i < blen; i++) {
            size_t k = start + i;
            if (k >= k0 && k < k1)
                out[k - k0] = (float)q[i] * scale;
        }
        p += 4 + blen;
    }
    return FEDGE_OK;
}
