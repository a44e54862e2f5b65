/* update.c — an encoded delta sealed in an envelope (see update.h). */
#include "update.h"

#include <float.h>
#include <stdint.h>
#include <string.h>
#if !FEDGE_FREESTANDING
#include <stdlib.h>
#endif

#include <mbedtls/platform_util.h>

#include "bytes.h"
#include "common.h"

/* ---- training metrics block ----------------------------------------------- */

static int finite_f(float x)
{
    return x == x && x <= FLT_MAX && x >= -FLT_MAX; /* no libm on a microcontroller */
}

static int metrics_valid(const fedge_train_metrics *m)
{
    if (m->present == 0 || (m->present & ~FEDGE_TRAIN_HAS_ALL) != 0)
        return 0;
    if ((m->present & FEDGE_TRAIN_HAS_LOSS) ? !(finite_f(m->loss) && m->loss >= 0.0f) : m->loss != 0.0f)
        return 0;
    if ((m->present & FEDGE_TRAIN_HAS_ACCURACY) ? !(m->accuracy >= 0.0f && m->accuracy <= 1.0f)
                                                : m->accuracy != 0.0f)
        return 0;
    if ((m->present & FEDGE_TRAIN_HAS_EPOCHS) ? m->epochs < 1 : m->epochs != 0)
        return 0;
    if (!(m->present & FEDGE_TRAIN_HAS_MS) && m->train_ms != 0)
        return 0;
    return 1;
}

int fedge_train_metrics_encode(const fedge_train_metrics *m, uint8_t out[FEDGE_TRAIN_METRICS_LEN])
{
    if (m == NULL || out == NULL || m->present == 0)
        return FEDGE_ERR_INVALID_ARG;
    if (!metrics_valid(m))
        return FEDGE_ERR_UPDATE_METRICS;
    out[0] = FEDGE_TRAIN_METRICS_VERSION;
    out[1] = (uint8_t)m->present;
    fedge_put_u16(out + 2, FEDGE_TRAIN_METRICS_LEN);
    fedge_put_f32(out + 4, m->loss);
    fedge_put_f32(out + 8, m->accuracy);
    fedge_put_u32(out + 12, m->epochs);
    fedge_put_u32(out + 16, m->train_ms);
    return FEDGE_OK;
}

int fedge_train_metrics_decode(const uint8_t *in, size_t len, fedge_train_metrics *m)
{
    if ((in == NULL && len > 0) || m == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (len != FEDGE_TRAIN_METRICS_LEN || in[0] != FEDGE_TRAIN_METRICS_VERSION ||
        fedge_get_u16(in + 2) != FEDGE_TRAIN_METRICS_LEN)
        return FEDGE_ERR_UPDATE_METRICS;
    fedge_train_metrics t = {
        .present = in[1],
        .loss = fedge_get_f32(in + 4),
        .accuracy = fedge_get_f32(in + 8),
        .epochs = fedge_get_u32(in + 12),
        .train_ms = fedge_get_u32(in + 16),
    };
    if (!metrics_valid(&t))
        return FEDGE_ERR_UPDATE_METRICS;
    *m = t;
    return FEDGE_OK;
}

/* The aad after the delta header: the run id, then the block when m has one. */
static int aad_tail(const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_train_metrics *m, uint8_t *tail,
                    size_t *aad_len)
{
    memcpy(tail, run_id, FEDGE_RUN_ID_LEN);
    *aad_len = FEDGE_UPDATE_AAD_LEN;
    if (m == NULL || m->present == 0)
        return FEDGE_OK;
    *aad_len += FEDGE_TRAIN_METRICS_LEN;
    return fedge_train_metrics_encode(m, tail + FEDGE_RUN_ID_LEN);
}

/* The frame's sizes, for seal and the stream alike: the aad (delta header,
 * run id, metrics block when m has one; tail holds its bytes after the
 * header), the payload (the encoded delta after its header) and the whole
 * sealed frame. */
typedef struct {
    uint8_t tail[FEDGE_RUN_ID_LEN + FEDGE_TRAIN_METRICS_LEN];
    size_t aad_len, payload_len, total;
} frame_layout;

static int frame_layout_of(const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_train_metrics *m,
                           const fedge_delta_header *h, frame_layout *f)
{
    int ret = aad_tail(run_id, m, f->tail, &f->aad_len);
    if (ret != FEDGE_OK)
        return ret;
    size_t delta_len = fedge_delta_encoded_size(h);
    if (delta_len == 0)
        return FEDGE_ERR_INVALID_ARG;
    f->payload_len = delta_len - FEDGE_DELTA_HEADER_LEN;
    f->total = fedge_envelope_sealed_size(f->aad_len, f->payload_len);
    return f->total == 0 ? FEDGE_ERR_RANGE : FEDGE_OK;
}

#if !FEDGE_FREESTANDING
int fedge_update_seal(const fedge_device_key *k, uint64_t counter,
                      const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_delta_header *h,
                      const float *delta, fedge_rng *rng, uint8_t **out, size_t *out_len)
{
    return fedge_update_seal_metrics(k, counter, run_id, NULL, h, delta, rng, out, out_len);
}

int fedge_update_seal_metrics(const fedge_device_key *k, uint64_t counter,
                              const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_train_metrics *m,
                              const fedge_delta_header *h, const float *delta, fedge_rng *rng,
                              uint8_t **out, size_t *out_len)
{
    if (k == NULL || run_id == NULL || h == NULL || out == NULL || out_len == NULL)
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    *out_len = 0;
    frame_layout f;
    int ret = frame_layout_of(run_id, m, h, &f);
    if (ret != FEDGE_OK)
        return ret;
    const size_t aad_len = f.aad_len, total = f.total;
    uint8_t *buf = malloc(total);
    if (buf == NULL)
        return FEDGE_ERR_NOMEM;
    /* Encode straight into the frame (header || run id [|| metrics] = aad,
     * payload = plaintext), then encrypt in place so no plaintext copy
     * outlives this call. The encoder writes header and payload
     * contiguously, so the payload is encoded one aad tail further and the
     * header moved back. */
    const size_t tail_len = aad_len - FEDGE_DELTA_HEADER_LEN;
    uint8_t *aad = buf + FEDGE_ENV_HEADER_LEN;
    uint8_t *plain = aad + aad_len;
    size_t enc_len = 0, sealed_len = 0;
    CHK(fedge_delta_encode(h, delta, rng, aad + tail_len, FEDGE_DELTA_HEADER_LEN + f.payload_len, &enc_len));
    memmove(aad, aad + tail_len, FEDGE_DELTA_HEADER_LEN);
    memcpy(aad + FEDGE_DELTA_HEADER_LEN, f.tail, tail_len);

    uint8_t prefix[4];
    uint32_t p = rng != NULL ? (uint32_t)fedge_rng_u64(rng) : (uint32_t)(counter >> 32);
    for (int i = 0; i < 4; i++)
        prefix[i] = (uint8_t)(p >> (8 * i));
    CHK(fedge_envelope_seal(k, counter, prefix, aad, aad_len, plain,
                            enc_len - FEDGE_DELTA_HEADER_LEN, buf, total, &sealed_len));
    *out = buf;
    *out_len = sealed_len;
    buf = NULL;
cleanup:
    if (buf != NULL) {
        mbedtls_platform_zeroize(buf, total);
        free(buf);
    }
    return ret;
}
#endif

int fedge_update_open(const fedge_device_key *k, const uint8_t *in, size_t len,
                      const fedge_update_expect *exp, uint8_t *scratch,
                      fedge_delta_header *h, uint64_t *counter, float *delta)
{
    return fedge_update_open_metrics(k, in, len, exp, scratch, h, counter, delta, NULL);
}

/* scratch NULL: in place (fedge_update_open_inplace), *enc_off set; norm:
 * no delta, the payload's norm of its first norm_n values instead */
static int open_frame(const fedge_device_key *k, const uint8_t *in, size_t len,
                      const fedge_update_expect *exp, uint8_t *scratch, size_t *enc_off,
                      fedge_delta_header *h, uint64_t *counter, float *delta, size_t norm_n, double *norm,
                      fedge_train_metrics *m)
{
    if (k == NULL || in == NULL || exp == NULL || exp->run_id == NULL || (scratch == NULL && enc_off == NULL) ||
        h == NULL || counter == NULL || (delta == NULL && norm == NULL && exp->n_elems > 0) ||
        (norm != NULL && norm_n > exp->n_elems))
        return FEDGE_ERR_INVALID_ARG;
    size_t max_len = exp->max_len != 0 ? exp->max_len : FEDGE_ENV_MAX_LEN;
    if (len > max_len)
        return FEDGE_ERR_ENV_OVERSIZED;

    int ret = FEDGE_OK;
    fedge_envelope_view v;
    fedge_delta_header t;
    fedge_train_metrics tm;
    memset(&tm, 0, sizeof tm);
    int decrypted = 0;
    CHK(fedge_envelope_parse(in, len, &v));
    CHK(fedge_envelope_check(k, exp->last_counter, &v));

    /* The delta header and run id travel as the clear, authenticated aad:
     * check them before spending time on decryption. A frame without a run
     * id (aad = the delta header alone) was sealed outside any run. */
    if (v.aad_len == FEDGE_DELTA_HEADER_LEN)
        FAIL(FEDGE_ERR_ENV_RUN);
    if (v.aad_len < FEDGE_UPDATE_AAD_LEN)
        FAIL(FEDGE_ERR_DELTA_TRUNCATED);
    /* anything after the run id is the metrics block (an older edge sends none) */
    if (v.aad_len > FEDGE_UPDATE_AAD_LEN && v.aad_len != FEDGE_UPDATE_AAD_LEN + FEDGE_TRAIN_METRICS_LEN)
        FAIL(FEDGE_ERR_UPDATE_METRICS);
    if (memcmp(v.aad + FEDGE_DELTA_HEADER_LEN, exp->run_id, FEDGE_RUN_ID_LEN) != 0)
        FAIL(FEDGE_ERR_ENV_RUN);
    if (v.aad_len > FEDGE_UPDATE_AAD_LEN)
        CHK(fedge_train_metrics_decode(v.aad + FEDGE_UPDATE_AAD_LEN, v.aad_len - FEDGE_UPDATE_AAD_LEN, &tm));
    CHK(fedge_delta_parse_header(v.aad, &t));
    if (t.round > exp->round || exp->round - t.round > exp->round_window)
        FAIL(FEDGE_ERR_DELTA_ROUND);
    if (t.model_id != exp->model_id || t.n_elems != exp->n_elems)
        FAIL(FEDGE_ERR_DELTA_SHAPE);
    CHK(fedge_delta_check_length(&t, FEDGE_DELTA_HEADER_LEN + v.ct_len));

    /* scratch ends up holding the encoded delta, header then payload; in
     * place, the payload is decrypted where its ciphertext was and the
     * header moved to just before it (over the aad's run id and metrics,
     * checked above). */
    size_t off = 0;
    uint8_t *dst = scratch;
    if (scratch == NULL) {
        off = FEDGE_ENV_HEADER_LEN + v.aad_len - FEDGE_DELTA_HEADER_LEN;
        dst = (uint8_t *)in + off;
    }
    decrypted = 1;
    CHK(fedge_envelope_decrypt(k, in, &v, dst + FEDGE_DELTA_HEADER_LEN, len - off - FEDGE_DELTA_HEADER_LEN));
    double l2 = 0;
    if (norm != NULL)
        CHK(fedge_delta_payload_norm(&t, dst + FEDGE_DELTA_HEADER_LEN, v.ct_len, norm_n, &l2));
    else
        CHK(fedge_delta_decode_payload(&t, dst + FEDGE_DELTA_HEADER_LEN, v.ct_len, delta));
    if (t.flags & FEDGE_DELTA_FLAG_PARTIAL)
        memcpy(t.partial_head, dst + FEDGE_DELTA_HEADER_LEN + v.ct_len - FEDGE_DELTA_PARTIAL_HEAD_LEN,
               FEDGE_DELTA_PARTIAL_HEAD_LEN);
    memmove(dst, v.aad, FEDGE_DELTA_HEADER_LEN);
    if (enc_off != NULL)
        *enc_off = off;
    if (norm != NULL)
        *norm = l2;
    *h = t;
    *counter = v.counter;
    if (m != NULL)
        *m = tm;
cleanup:
    if (decrypted && ret != FEDGE_OK)
        mbedtls_platform_zeroize(dst + FEDGE_DELTA_HEADER_LEN, v.ct_len);
    return ret;
}

int fedge_update_open_metrics(const fedge_device_key *k, const uint8_t *in, size_t len,
                              const fedge_update_expect *exp, uint8_t *scratch,
                              fedge_delta_header *h, uint64_t *counter, float *delta,
                              fedge_train_metrics *m)
{
    if (scratch == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return open_frame(k, in, len, exp, scratch, NULL, h, counter, delta, 0, NULL, m);
}

int fedge_update_open_inplace(const fedge_device_key *k, uint8_t *frame, size_t len,
                              const fedge_update_expect *exp, size_t *enc_off,
                              fedge_delta_header *h, uint64_t *counter, float *delta,
                              fedge_train_metrics *m)
{
    if (enc_off == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return open_frame(k, frame, len, exp, NULL, enc_off, h, counter, delta, 0, NULL, m);
}

int fedge_update_open_inplace_norm(const fedge_device_key *k, uint8_t *frame, size_t len,
                                   const fedge_update_expect *exp, size_t norm_n, size_t *enc_off,
                                   fedge_delta_header *h, uint64_t *counter, double *norm,
                                   fedge_train_metrics *m)
{
    if (enc_off == NULL || norm == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return open_frame(k, frame, len, exp, NULL, enc_off, h, counter, NULL, norm_n, norm, m);
}

/* ---- streaming ----------------------------------------------------------- */

#define STREAM_CHUNK_BYTES 1024u /* encoded payload per chunk (one int8 block may exceed it) */
#if FEDGE_FREESTANDING /* a microcontroller (mcu/): RAM counts, its sender reads in order */
#define STREAM_BEHIND 2048u
#else
#define STREAM_BEHIND 6144u      /* ciphertext kept behind the newest chunk: the Block1 window and more */
#endif

struct fedge_update_stream {
    fedge_device_key key;
    uint64_t counter;
    uint8_t prefix[4];
    fedge_delta_header h;       /* as given; sub-headers encode the chunks */
    const float *delta;
    int stochastic;
    fedge_rng rng0;             /* the rounding stream at the start */
    fedge_rng rng;
    uint8_t head[FEDGE_ENV_HEADER_LEN + FEDGE_UPDATE_AAD_LEN + FEDGE_TRAIN_METRICS_LEN];
    size_t head_len;            /* the envelope header and the aad: head's first bytes */
    size_t payload_len, total;
    size_t chunk_elems;
    fedge_envelope_sealer sealer;
    size_t next_elem;           /* first element not yet encoded */
    size_t ct_done;             /* ciphertext bytes in the ring so far */
    int finished;               /* tag written */
    uint8_t tag[FEDGE_ENV_TAG_LEN];
    uint8_t *chunk;             /* header + one chunk's payload */
    size_t chunk_cap;
    uint8_t *ring;              /* ciphertext byte i at ring[i % ring_len] */
    size_t ring_len;
    int caller_mem;             /* fedge_update_stream_init: wiped, never freed */
};

/* Whole units of the encoding (an element; an int8 block) filling about
 * STREAM_CHUNK_BYTES of payload, sized by the codec's own table
 * (fedge_delta_encoded_size). */
static size_t stream_chunk_elems(const fedge_delta_header *h)
{
    fedge_delta_header u = *h;
    u.flags = 0;
    u.n_elems = h->block_size ? h->block_size : 1;
    size_t per_unit = fedge_delta_encoded_size(&u) - FEDGE_DELTA_HEADER_LEN;
    size_t units = per_unit < STREAM_CHUNK_BYTES ? STREAM_CHUNK_BYTES / per_unit : 1;
    return units * u.n_elems;
}

/* A chunk's encoding: the delta's header fields with the chunk's length
 * (the control flag, which only constrains the full length, left out). */
static fedge_delta_header chunk_header(const fedge_delta_header *h, size_t elems)
{
    fedge_delta_header c = *h;
    c.n_elems = (uint32_t)elems;
    c.flags = 0;
    return c;
}

static int stream_sizes(const fedge_delta_header *h, size_t *chunk_elems, size_t *chunk_cap,
                        size_t *ring_len)
{
    if (h->flags & FEDGE_DELTA_FLAG_PARTIAL)
        return FEDGE_ERR_INVALID_ARG; /* the relay's trailer: sealed whole */
    if (fedge_delta_encoded_size(h) == 0 || h->n_elems == 0)
        return FEDGE_ERR_INVALID_ARG;
    size_t ce = stream_chunk_elems(h);
    if (ce > h->n_elems)
        ce = h->n_elems;
    fedge_delta_header c = chunk_header(h, ce);
    size_t cap = fedge_delta_encoded_size(&c);
    if (cap == 0)
        return FEDGE_ERR_INVALID_ARG;
    *chunk_elems = ce;
    *chunk_cap = cap + 16; /* + the sealer's held-back bytes */
    *ring_len = cap - FEDGE_DELTA_HEADER_LEN + 16 + STREAM_BEHIND;
    return FEDGE_OK;
}

size_t fedge_update_stream_bytes(const fedge_delta_header *h)
{
    size_t ce, cap, ring;
    if (h == NULL || stream_sizes(h, &ce, &cap, &ring) != FEDGE_OK)
        return 0;
    return sizeof(fedge_update_stream) + cap + ring;
}

/* Encodes elements [e0, e0 + n) into s->chunk; *plain, *plain_len: the payload. */
static int encode_chunk(fedge_update_stream *s, size_t e0, size_t n, fedge_rng *rng,
                        uint8_t **plain, size_t *plain_len)
{
    fedge_delta_header c = chunk_header(&s->h, n);
    size_t len = 0;
    int ret = fedge_delta_encode(&c, s->delta + e0, s->stochastic ? rng : NULL, s->chunk,
                                 s->chunk_cap, &len);
    if (ret != FEDGE_OK)
        return ret;
    *plain = s->chunk + FEDGE_DELTA_HEADER_LEN;
    *plain_len = len - FEDGE_DELTA_HEADER_LEN;
    return FEDGE_OK;
}

static void ring_put(fedge_update_stream *s, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        s->ring[(s->ct_done + i) % s->ring_len] = p[i];
    s->ct_done += n;
}

static int stream_restart(fedge_update_stream *s)
{
    fedge_envelope_sealer_free(&s->sealer);
    s->rng = s->rng0;
    s->next_elem = 0;
    s->ct_done = 0;
    s->finished = 0;
    uint8_t head[sizeof s->head];
    int ret = fedge_envelope_sealer_start(&s->sealer, &s->key, s->counter, s->prefix,
                                          s->head + FEDGE_ENV_HEADER_LEN,
                                          s->head_len - FEDGE_ENV_HEADER_LEN, s->payload_len, head,
                                          sizeof head);
    if (ret == FEDGE_OK)
        memcpy(s->head, head, FEDGE_ENV_HEADER_LEN);
    return ret;
}

/* The next chunk's ciphertext into the ring (and the tag after the last). */
static int stream_step(fedge_update_stream *s)
{
    int ret = FEDGE_OK;
    size_t n = s->h.n_elems - s->next_elem;
    if (n > s->chunk_elems)
        n = s->chunk_elems;
    uint8_t *plain = NULL;
    size_t plain_len = 0, out_len = 0;
    CHK(encode_chunk(s, s->next_elem, n, &s->rng, &plain, &plain_len));
    /* in place is not allowed with held-back bytes: the ciphertext goes to
     * the front of the chunk buffer, over the header (plain is 64 further) */
    CHK(fedge_envelope_sealer_update(&s->sealer, plain, plain_len, s->chunk, s->chunk_cap,
                                     &out_len));
    ring_put(s, s->chunk, out_len);
    s->next_elem += n;
    if (s->next_elem == s->h.n_elems) {
        CHK(fedge_envelope_sealer_finish(&s->sealer, s->chunk, s->chunk_cap, &out_len, s->tag));
        ring_put(s, s->chunk, out_len);
        s->finished = 1;
    }
cleanup:
    mbedtls_platform_zeroize(s->chunk, s->chunk_cap);
    return ret;
}

/* Fills a zeroed s whose chunk and ring buffers are in place (sizes from
 * stream_sizes); on failure the caller wipes or frees it. */
static int stream_setup(fedge_update_stream *s, const fedge_device_key *k, uint64_t counter,
                        const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_train_metrics *m,
                        const fedge_delta_header *h, const float *delta, fedge_rng *rng, size_t ce,
                        size_t cap, size_t ring)
{
    frame_layout f;
    int ret = frame_layout_of(run_id, m, h, &f);
    if (ret != FEDGE_OK)
        return ret;
    s->key = *k;
    s->counter = counter;
    s->h = *h;
    s->delta = delta;
    s->stochastic = h->encoding == FEDGE_ENC_INT8 && rng != NULL;
    s->chunk_elems = ce;
    s->chunk_cap = cap;
    s->ring_len = ring;
    s->payload_len = f.payload_len;
    s->total = f.total;
    s->head_len = FEDGE_ENV_HEADER_LEN + f.aad_len;
    if (rng != NULL)
        s->rng0 = *rng;

    /* One pass over the whole delta as seal would encode it: its errors
     * before anything is sent, the rounding stream's end for the nonce. */
    fedge_rng r = s->rng0;
    uint8_t *plain;
    size_t plain_len;
    for (size_t e = 0; e < h->n_elems; e += ce) {
        size_t n = h->n_elems - e < ce ? h->n_elems - e : ce;
        CHK(encode_chunk(s, e, n, &r, &plain, &plain_len));
        if (e == 0) {
            /* the aad: the full header (the chunk's, with the delta's length
             * and flags) then the run id and the metrics block */
            uint8_t *aad = s->head + FEDGE_ENV_HEADER_LEN;
            memcpy(aad, s->chunk, FEDGE_DELTA_HEADER_LEN);
            aad[7] = (uint8_t)(aad[7] | (h->flags & FEDGE_DELTA_FLAG_CONTROL));
            for (int i = 0; i < 4; i++)
                aad[20 + i] = (uint8_t)(h->n_elems >> (8 * i));
            memcpy(aad + FEDGE_DELTA_HEADER_LEN, f.tail, f.aad_len - FEDGE_DELTA_HEADER_LEN);
        }
    }
    mbedtls_platform_zeroize(s->chunk, s->chunk_cap);
    uint32_t p = rng != NULL ? (uint32_t)fedge_rng_u64(&r) : (uint32_t)(counter >> 32);
    for (int i = 0; i < 4; i++)
        s->prefix[i] = (uint8_t)(p >> (8 * i));
    CHK(stream_restart(s)); /* also writes the envelope header */
    if (rng != NULL)
        *rng = r;
cleanup:
    return ret;
}

#if !FEDGE_FREESTANDING
int fedge_update_stream_new(const fedge_device_key *k, uint64_t counter,
                            const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_delta_header *h,
                            const float *delta, fedge_rng *rng, fedge_update_stream **out)
{
    return fedge_update_stream_new_metrics(k, counter, run_id, NULL, h, delta, rng, out);
}

int fedge_update_stream_new_metrics(const fedge_device_key *k, uint64_t counter,
                                    const uint8_t run_id[FEDGE_RUN_ID_LEN], const fedge_train_metrics *m,
                                    const fedge_delta_header *h, const float *delta, fedge_rng *rng,
                                    fedge_update_stream **out)
{
    if (k == NULL || run_id == NULL || h == NULL || delta == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    size_t ce, cap, ring;
    int ret = stream_sizes(h, &ce, &cap, &ring);
    if (ret != FEDGE_OK)
        return ret;
    fedge_update_stream *s = calloc(1, sizeof *s);
    if (s == NULL)
        return FEDGE_ERR_NOMEM;
    s->chunk = malloc(cap);
    s->ring = malloc(ring);
    if (s->chunk == NULL || s->ring == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(stream_setup(s, k, counter, run_id, m, h, delta, rng, ce, cap, ring));
    *out = s;
    s = NULL;
cleanup:
    fedge_update_stream_free(s);
    return ret;
}
#endif

int fedge_update_stream_init(void *mem, size_t mem_len, const fedge_device_key *k,
                             uint64_t counter, const uint8_t run_id[FEDGE_RUN_ID_LEN],
                             const fedge_delta_header *h, const float *delta, fedge_rng *rng,
                             fedge_update_stream **out)
{
    if (mem == NULL || k == NULL || run_id == NULL || h == NULL || delta == NULL || out == NULL ||
        (uintptr_t)mem % _Alignof(fedge_update_stream) != 0)
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    size_t ce, cap, ring;
    int ret = stream_sizes(h, &ce, &cap, &ring);
    if (ret != FEDGE_OK)
        return ret;
    if (mem_len < sizeof(fedge_update_stream) + cap + ring)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    fedge_update_stream *s = mem;
    memset(s, 0, sizeof *s);
    s->caller_mem = 1;
    s->chunk = (uint8_t *)(s + 1);
    s->ring = s->chunk + cap;
    ret = stream_setup(s, k, counter, run_id, NULL, h, delta, rng, ce, cap, ring);
    if (ret != FEDGE_OK) {
        fedge_update_stream_wipe(s);
        return ret;
    }
    *out = s;
    return FEDGE_OK;
}

size_t fedge_update_stream_size(const fedge_update_stream *s)
{
    return s != NULL ? s->total : 0;
}

int fedge_update_stream_read(fedge_update_stream *s, size_t off, uint8_t *dst, size_t len)
{
    if (s == NULL || (dst == NULL && len > 0))
        return FEDGE_ERR_INVALID_ARG;
    if (off > s->total || len > s->total - off)
        return FEDGE_ERR_RANGE;
    const size_t head_len = s->head_len;
    const size_t ct_end = head_len + s->payload_len;
    int ret = FEDGE_OK;
    while (len > 0) {
        size_t n;
        if (off < head_len) {
            n = head_len - off < len ? head_len - off : len;
            memcpy(dst, s->head + off, n);
        } else if (off < ct_end) {
            size_t i = off - head_len;
            n = ct_end - off < len ? ct_end - off : len;
            if (n > STREAM_BEHIND / 2) /* what one pass of steps cannot overwrite */
                n = STREAM_BEHIND / 2;
            /* the ring holds ciphertext [ct_done - ring_len, ct_done) */
            if (i + s->ring_len < s->ct_done)
                CHK(stream_restart(s));
            while (s->ct_done < i + n)
                CHK(stream_step(s));
            for (size_t j = 0; j < n; j++)
                dst[j] = s->ring[(i + j) % s->ring_len];
        } else {
            while (!s->finished)
                CHK(stream_step(s));
            size_t t = off - ct_end;
            n = FEDGE_ENV_TAG_LEN - t < len ? FEDGE_ENV_TAG_LEN - t : len;
            memcpy(dst, s->tag + t, n);
        }
        dst += n;
        off += n;
        len -= n;
    }
cleanup:
    return ret;
}

void fedge_update_stream_wipe(fedge_update_stream *s)
{
    if (s == NULL)
        return;
    fedge_envelope_sealer_free(&s->sealer);
    if (s->chunk != NULL)
        mbedtls_platform_zeroize(s->chunk, s->chunk_cap);
    mbedtls_platform_zeroize(s, sizeof *s);
}

#if !FEDGE_FREESTANDING
void fedge_update_stream_free(fedge_update_stream *s)
{
    if (s == NULL)
        return;
    if (s->caller_mem) { /* fedge_update_stream_init's: not ours to free */
        fedge_update_stream_wipe(s);
        return;
    }
    uint8_t *chunk = s->chunk, *ring = s->ring;
    fedge_update_stream_wipe(s);
    free(chunk);
    free(ring);
    free(s);
}
#endif
