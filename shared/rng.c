/* rng.c — xoshiro256** (Blackman & Vigna), seeded through splitmix64. */
#include <math.h>

#include "rng.h"

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void fedge_rng_seed(fedge_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
    /* splitmix64 is a bijection of its counter, so four zero outputs in a row
     * cannot happen; the all-zero state (a fixed point) is unreachable. */
}

uint64_t fedge_rng_u64(fedge_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Lemire's multiply-shift with rejection: exact uniformity, one multiply in
 * the common case. */
uint32_t fedge_rng_below(fedge_rng *r, uint32_t n)
{
    if (n == 0)
        return 0;
    uint64_t m = (uint64_t)(uint32_t)(fedge_rng_u64(r) >> 32) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(-n) % n;
        while (low < threshold) {
            m = (uint64_t)(uint32_t)(fedge_rng_u64(r) >> 32) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

float fedge_rng_uniform(fedge_rng *r)
{
    return (float)(fedge_rng_u64(r) >> 40) * 0x1.0p-24f;
}

double fedge_rng_uniform_d(fedge_rng *r)
{
    return (double)(fedge_rng_u64(r) >> 11) * 0x1.0p-53;
}

/* Marsaglia polar method. The second variate is dropped: the state holds no
 * cache, so the stream stays a pure function of the four state words. */
double fedge_rng_normal(fedge_rng *r)
{
    double u, v, s;
    do {
        u = 2.0 * fedge_rng_uniform_d(r) - 1.0;
        v = 2.0 * fedge_rng_uniform_d(r) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    return u * sqrt(-2.0 * log(s) / s);
}

/* Marsaglia & Tsang (2000); for shape < 1, Gamma(shape) = Gamma(shape + 1) * U^(1/shape). */
double fedge_rng_gamma(fedge_rng *r, double shape)
{
    if (!(shape > 0.0) || isinf(shape))
        return NAN;
    double boost = 1.0;
    if (shape < 1.0) {
        double u;
        do
            u = fedge_rng_uniform_d(r);
        while (u == 0.0);
        boost = pow(u, 1.0 / shape);
        shape += 1.0;
    }
    double d = shape - 1.0 / 3.0;
    double c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = fedge_rng_normal(r);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        double u = fedge_rng_uniform_d(r);
        if (u < 1.0 - 0.0331 * (x * x) * (x * x))
            return d * v * boost;
        if (u > 0.0 && log(u) < 0.5 * x * x + d * (1.0 - v + log(v)))
            return d * v * boost;
    }
}

/* The xoshiro256 jump (2^128 steps), then the stream number folded in through
 * splitmix64 so that children of one parent with different streams differ. */
void fedge_rng_split(const fedge_rng *parent, uint64_t stream, fedge_rng *child)
{
    static const uint64_t jump[4] = {0x180ec6d33cfd0abaull, 0xd5a61266f0c9392cull,
                                     0xa9582618e03fc9aaull, 0x39abdc4529b1661cull};
    fedge_rng t = *parent;
    uint64_t s[4] = {0, 0, 0, 0};
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 64; b++) {
            if (jump[i] & (1ull << b))
                for (int w = 0; w < 4; w++)
                    s[w] ^= t.s[w];
            fedge_rng_u64(&t);
        }
    uint64_t x = stream ^ 0x5851f42d4c957f2dull;
    for (int w = 0; w < 4; w++)
        child->s[w] = s[w] ^ splitmix64(&x);
    if ((child->s[0] | child->s[1] | child->s[2] | child->s[3]) == 0)
        child->s[0] = 1;
}
