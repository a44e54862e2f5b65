/* bytes.h — fixed-width integers and floats packed into byte buffers.
 *
 * Contract: explicit little-endian. fedge_put_uN / fedge_put_f32 store the
 * value at p, least significant byte first, whatever the host's byte order;
 * fedge_get_* read it back. p needs no alignment (every access is a byte
 * loop or a memcpy), so these are safe on any offset of a wire or file
 * buffer and portable to aarch64 and big-endian hosts. A float travels as
 * its IEEE-754 binary32 bit pattern, NaN payloads included. On a
 * little-endian host each call is one unaligned load or store.
 * Header-only (static inline), no state, nothing to free. */
#ifndef FEDGE_BYTES_H
#define FEDGE_BYTES_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FEDGE_HOST_LE 1
#else
#define FEDGE_HOST_LE 0
#endif

static inline void fedge_put_u16(uint8_t *p, uint16_t v)
{
    if (FEDGE_HOST_LE) {
        memcpy(p, &v, sizeof v);
        return;
    }
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void fedge_put_u32(uint8_t *p, uint32_t v)
{
    if (FEDGE_HOST_LE) {
        memcpy(p, &v, sizeof v);
        return;
    }
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void fedge_put_u64(uint8_t *p, uint64_t v)
{
    if (FEDGE_HOST_LE) {
        memcpy(p, &v, sizeof v);
        return;
    }
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t fedge_get_u16(const uint8_t *p)
{
    uint16_t v;
    if (FEDGE_HOST_LE)
        memcpy(&v, p, sizeof v);
    else
        v = (uint16_t)(p[0] | p[1] << 8);
    return v;
}

static inline uint32_t fedge_get_u32(const uint8_t *p)
{
    uint32_t v;
    if (FEDGE_HOST_LE)
        memcpy(&v, p, sizeof v);
    else
        v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return v;
}

static inline uint64_t fedge_get_u64(const uint8_t *p)
{
    uint64_t v;
    if (FEDGE_HOST_LE)
        memcpy(&v, p, sizeof v);
    else
        v = (uint64_t)fedge_get_u32(p) | (uint64_t)fedge_get_u32(p + 4) << 32;
    return v;
}

static inline void fedge_put_f32(uint8_t *p, float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    fedge_put_u32(p, bits);
}

static inline float fedge_get_f32(const uint8_t *p)
{
    uint32_t bits = fedge_get_u32(p);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#endif
