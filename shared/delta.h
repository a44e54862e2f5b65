/* delta.h — the wire format of a weight delta (w_local - w_global).
 *
 * Header, 64 bytes little-endian:
 *   0  magic "FDLT"      4  u16 format version (1)   6  u8 encoding  7 u8 flags
 *   8  u32 model id      12 u32 round                 16 u32 n_samples
 *   20 u32 n_elems       24 u32 block size (int8; 0 otherwise)
 *   28 u32 reserved (0)  32 base-version hash [32]
 * Payload: fp32 (4 B/elem), fp16 / bf16 (2 B/elem), or int8: for each block of
 * `block size` elements an f32 scale followed by the int8 values
 * (value = q * scale, scale = max|x| / 127).
 *
 * Error bound per element: fp16 relative 2^-11 (normal range), bf16 relative
 * 2^-8, int8 absolute scale/2 with round-to-nearest and < scale with
 * stochastic rounding (unbiased).
 *
 * Decoding checks magic, version, encoding, block size, the element count
 * and model id against what the caller expects, the exact payload length and
 * every decoded value for NaN/Inf, before writing to the caller's buffer.
 * Flag bits other than 0, 1 and 2, or a non-zero reserved word, are FEDGE_ERR_DELTA_VERSION
 * (a later format); the stochastic flag on a non-int8 encoding is
 * FEDGE_ERR_DELTA_ENCODING; an int8 block whose scale is NaN/Inf or whose
 * q * scale overflows is FEDGE_ERR_DELTA_NONFINITE. */
#ifndef FEDGE_DELTA_H
#define FEDGE_DELTA_H

#include <stddef.h>
#include <stdint.h>

#include "hash.h"
#include "rng.h"

#define FEDGE_DELTA_HEADER_LEN 64
#define FEDGE_DELTA_VERSION 1
#define FEDGE_DELTA_DEFAULT_BLOCK 256
#define FEDGE_DELTA_MAX_ELEMS (64u * 1024u * 1024u)
/* flags bit 1: a SCAFFOLD update. n_elems = 2 * n_params: the model delta
 * then the client control-variate delta, in one encoding (an odd n_elems
 * with this flag is FEDGE_ERR_DELTA_SHAPE). Set by the caller of encode. */
#define FEDGE_DELTA_FLAG_CONTROL 0x02u
/* flags bit 2: a relay's partial sum (docs/PROTOCOL.md "Partial sums"): the
 * weighted mean of the relay's accepted updates, n_samples their total.
 * fp32 only (another encoding is FEDGE_ERR_DELTA_ENCODING), not with
 * FEDGE_DELTA_FLAG_CONTROL (FEDGE_ERR_DELTA_SHAPE). The payload is followed
 * by a 32-byte trailer, partial_head: the head_hash of the relay's signed
 * audit head for the round, inside the encrypted, authenticated part of an
 * update. Element offsets (fedge_delta_span) are unchanged by it. */
#define FEDGE_DELTA_FLAG_PARTIAL 0x04u
#define FEDGE_DELTA_PARTIAL_HEAD_LEN FEDGE_HASH_LEN

typedef enum {
    FEDGE_ENC_FP32 = 0,
    FEDGE_ENC_FP16 = 1,
    FEDGE_ENC_BF16 = 2,
    FEDGE_ENC_INT8 = 3,
} fedge_encoding;

typedef struct {
    uint8_t encoding;           /* fedge_encoding */
    uint8_t flags;              /* bit 0: int8 used stochastic rounding (informational);
                                   bit 1: FEDGE_DELTA_FLAG_CONTROL */
    uint32_t model_id;
    uint32_t round;
    uint32_t n_samples;
    uint32_t n_elems;
    uint32_t block_size;        /* int8 only: 1..65536; set 0 for others */
    uint8_t base_version[FEDGE_HASH_LEN];
    /* FEDGE_DELTA_FLAG_PARTIAL: the trailer. Written by encode; filled by
     * fedge_delta_decode and fedge_delta_partial_head; zero otherwise. */
    uint8_t partial_head[FEDGE_DELTA_PARTIAL_HEAD_LEN];
} fedge_delta_header;

int fedge_encoding_parse(const char *text, fedge_encoding *out); /* fp32|fp16|bf16|int8 */
const char *fedge_encoding_name(fedge_encoding e);

/* Total bytes (header + payload); 0 for an invalid combination. */
size_t fedge_delta_encoded_size(const fedge_delta_header *h);
/* Encode h + delta[0..h->n_elems) into out. rng != NULL selects stochastic
 * rounding for int8 (and sets flags bit 0); NULL is round-to-nearest.
 * FEDGE_ERR_DELTA_NONFINITE for NaN/Inf input, FEDGE_ERR_RANGE for a finite
 * value the encoding cannot hold (|x| >= 65520 in fp16). */
int fedge_delta_encode(const fedge_delta_header *h, const float *delta, fedge_rng *rng,
                       uint8_t *out, size_t cap, size_t *out_len);
/* Parse and validate the header only (magic, version, encoding, block size,
 * n_elems <= FEDGE_DELTA_MAX_ELEMS, and len == encoded size). */
int fedge_delta_decode_header(const uint8_t *buf, size_t len, fedge_delta_header *h);
/* Full decode: header checks, then n_elems == expected_elems and
 * model_id == expected_model_id (FEDGE_ERR_DELTA_SHAPE), then values into
 * out[0..expected_elems) (FEDGE_ERR_DELTA_NONFINITE on NaN/Inf). h and out
 * are written only on success. */
int fedge_delta_decode(const uint8_t *buf, size_t len, uint32_t expected_model_id,
                       uint32_t expected_elems, fedge_delta_header *h, float *out);

/* The pieces of fedge_delta_decode, for a payload that does not follow its
 * header in memory (an update keeps the header in the envelope's aad):
 * parse_header checks the 64 header bytes alone (magic, version, flags,
 * encoding, block size, n_elems <= FEDGE_DELTA_MAX_ELEMS); check_length
 * compares a total length (header + payload) with h (TRUNCATED / OVERSIZED);
 * decode_payload checks the length and every value, then writes
 * out[0..h->n_elems) — nothing is written when it fails. */
int fedge_delta_parse_header(const uint8_t hdr[FEDGE_DELTA_HEADER_LEN], fedge_delta_header *h);
int fedge_delta_check_length(const fedge_delta_header *h, size_t len);
int fedge_delta_decode_payload(const fedge_delta_header *h, const uint8_t *payload,
                               size_t payload_len, float *out);

/* The L2 norm of the first n_first values that decode_payload would give,
 * without writing them: the same checks and errors as decode_payload (every
 * value, not just the first n_first), and the same double as summing the
 * decoded floats' squares in eight lanes (element i in lane i % 8, lanes
 * added 0..7), aggregator/combine.h's fedge_l2_norm, bit for bit. An int8
 * update's norm is read from its blocks (scale x q) without the n x 4-byte
 * float buffer. *norm is written only on success; n_first <= n_elems. */
int fedge_delta_payload_norm(const fedge_delta_header *h, const uint8_t *payload, size_t payload_len,
                             size_t n_first, double *norm);

/* Range decoding, to read elements [k0, k1) of a stored delta without the
 * rest (a combiner's block; the SCAFFOLD control half). span gives the bytes
 * of the encoded delta (header included, so offsets are from its start)
 * that hold them: for int8 from the start of the block holding k0 (its
 * scale) to the end of the block holding k1 - 1. decode_span converts those
 * bytes (len must be span's byte_len) into out[0 .. k1 - k0), checking every
 * value as fedge_delta_decode does; nothing is written when it fails. h must
 * be a header fedge_delta_decode_header accepted; 0 <= k0 < k1 <= n_elems,
 * else FEDGE_ERR_INVALID_ARG. */
int fedge_delta_span(const fedge_delta_header *h, size_t k0, size_t k1, size_t *byte_off, size_t *byte_len);
int fedge_delta_decode_span(const fedge_delta_header *h, size_t k0, size_t k1, const uint8_t *bytes,
                            size_t len, float *out);

/* The partial_head trailer of an encoded delta (header + payload + trailer,
 * as stored) whose header carries FEDGE_DELTA_FLAG_PARTIAL: header checks
 * and the exact length as fedge_delta_decode_header, values not read.
 * FEDGE_ERR_NOT_FOUND when the flag is not set. */
int fedge_delta_partial_head(const uint8_t *buf, size_t len, uint8_t out[FEDGE_DELTA_PARTIAL_HEAD_LEN]);

/* Half-precision conversions (round to nearest even), used by the GPU path too. */
uint16_t fedge_f32_to_f16(float f);
float fedge_f16_to_f32(uint16_t h);
uint16_t fedge_f32_to_bf16(float f);
float fedge_bf16_to_f32(uint16_t h);

#endif
