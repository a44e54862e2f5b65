/* The combiners (aggregator/combine.h) through their table, on deltas held
 * in memory behind a reader that counts its reads and can be told to fail:
 * hand-computed small cases for each rule (ties, beta boundaries, Krum's
 * choice, Bulyan on 7 clients), the precondition refusals and their
 * reasons, the same bits for every block size, the bound on reads, the
 * error path, and that only mean listens to the weights. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "combine.h"
#include "combine/select.h"
#include "common.h"

#define MAX_N 256

typedef struct {
    fedge_update_reader r;
    const float *data; /* n rows of n_params */
    size_t reads[MAX_N];
    size_t n_reads, widest;
    long fail_at; /* this read (0-based) fails with FEDGE_ERR_IO; -1: none */
} mem_reader;

static int mem_read(fedge_update_reader *r, size_t i, size_t k0, size_t k1, float *out)
{
    mem_reader *m = r->ctx;
    assert_true(i < r->n);
    assert_true(k0 < k1 && k1 <= r->n_params);
    if (m->fail_at >= 0 && (long)m->n_reads == m->fail_at)
        return FEDGE_ERR_IO;
    m->n_reads++;
    m->reads[i]++;
    if (k1 - k0 > m->widest)
        m->widest = k1 - k0;
    memcpy(out, m->data + i * r->n_params + k0, (k1 - k0) * sizeof *out);
    return FEDGE_OK;
}

static void mem_reader_init(mem_reader *m, const float *data, size_t n, size_t n_params)
{
    memset(m, 0, sizeof *m);
    m->r = (fedge_update_reader){.n = n, .n_params = n_params, .read = mem_read, .ctx = m};
    m->data = data;
    m->fail_at = -1;
}

static fedge_combine_params params(const char *name, double beta, long f, long m, size_t block)
{
    fedge_combine_params p = {.trim_beta = beta, .f = f, .m = m, .block = block};
    snprintf(p.name, sizeof p.name, "%s", name);
    return p;
}

/* Combines data (n × n_params) with p; w NULL: all weights 1. */
static int combine(const fedge_combine_params *p, const float *data, size_t n, size_t n_params, const double *w,
                   float *out, uint8_t *used, mem_reader *m)
{
    double ones[MAX_N];
    mem_reader local;
    const fedge_combiner *c = fedge_combiner_find(p->name);
    char why[256];
    assert_non_null(c);
    assert_true(n <= MAX_N);
    assert_int_equal(fedge_combine_params_check(p, why, sizeof why), FEDGE_OK);
    for (size_t i = 0; i < n; i++)
        ones[i] = 1;
    if (!m)
        m = &local;
    mem_reader_init(m, data, n, n_params);
    memset(used, 0xee, n);
    return c->combine(p, &m->r, w ? w : ones, out, used);
}

static void assert_used(const uint8_t *used, const uint8_t *want, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (used[i] != want[i])
            fail_msg("used[%zu] = %u, expected %u", i, used[i], want[i]);
    }
}

static void assert_floats(const float *got, const float *want, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (memcmp(&got[k], &want[k], sizeof got[k]) != 0)
            fail_msg("coordinate %zu: got %.9g, expected %.9g", k, got[k], want[k]);
}

static const uint8_t ALL7[7] = {1, 1, 1, 1, 1, 1, 1};

static void test_table(void **state)
{
    (void)state;
    static const char *names[] = {"mean", "median", "trimmed_mean", "krum", "multikrum", "bulyan"};
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(names); i++) {
        const fedge_combiner *c = fedge_combiner_find(names[i]);
        assert_non_null(c);
        assert_string_equal(c->name, names[i]);
    }
    assert_null(fedge_combiner_find("geomed"));
    assert_string_equal(fedge_combiner_names(), "mean|median|trimmed_mean|krum|multikrum|bulyan");
}

/* 3 clients × 5 coordinates, weights 1, 2, 1: (d0 + 2 d1 + d2) / 4. */
static void test_mean_weighted(void **state)
{
    (void)state;
    static const float d[3 * 5] = {
        1, 5, 2, 0, -1,
        3, 5, 2, 7, -3,
        2, 1, 9, 7, 4,
    };
    static const double w[3] = {1, 2, 1};
    static const float want[5] = {9.0f / 4, 16.0f / 4, 15.0f / 4, 21.0f / 4, -3.0f / 4};
    fedge_combine_params p = params("mean", 0, 0, 0, 2);
    float out[5];
    uint8_t used[3];
    assert_int_equal(combine(&p, d, 3, 5, w, out, used, NULL), FEDGE_OK);
    assert_floats(out, want, 5);
    assert_used(used, ALL7, 3);
}

/* The same 3 × 5: per coordinate {1,3,2} {5,5,1} {2,2,9} {0,7,7}
 * {-1,-3,4}; ties in coordinates 1 to 3. */
static void test_median_odd_with_ties(void **state)
{
    (void)state;
    static const float d[3 * 5] = {
        1, 5, 2, 0, -1,
        3, 5, 2, 7, -3,
        2, 1, 9, 7, 4,
    };
    static const float want[5] = {2, 5, 2, 7, -1};
    fedge_combine_params p = params("median", 0, 0, 0, 3);
    float out[5];
    uint8_t used[3];
    assert_int_equal(combine(&p, d, 3, 5, NULL, out, used, NULL), FEDGE_OK);
    assert_floats(out, want, 5);
    assert_used(used, ALL7, 3);
}

/* 4 clients: the mean of the two middle values. Coordinates {1,2,3,4}
 * -> 2.5, {5,5,1,9} -> 5, {9,-1,0,0} -> 0, {7,7,7,7} -> 7,
 * {-2,10,3,0.5} -> 1.75. */
static void test_median_even(void **state)
{
    (void)state;
    static const float d[4 * 5] = {
        1, 5, 9, 7, -2,
        2, 5, -1, 7, 10,
        3, 1, 0, 7, 3,
        4, 9, 0, 7, 0.5f,
    };
    static const float want[5] = {2.5f, 5, 0, 7, 1.75f};
    fedge_combine_params p = params("median", 0, 0, 0, 65536);
    float out[5];
    uint8_t used[4];
    assert_int_equal(combine(&p, d, 4, 5, NULL, out, used, NULL), FEDGE_OK);
    assert_floats(out, want, 5);
    assert_used(used, ALL7, 4);
}

/* 10 clients, one coordinate holding {-50, 1, 2, 3, 4, 5, 6, 8, 20, 1000}
 * shuffled, the other its negation. Cut c = floor(beta · 10) at each end:
 *   beta 0      c 0   999 / 10        = 99.9
 *   beta 0.19   c 1   (1+…+8+20) / 8  = 49 / 8 = 6.125   (beta·n = 1.9)
 *   beta 0.2    c 2   (2+…+8) / 6     = 28 / 6           (beta·n = 2 exactly)
 *   beta 0.29   c 2   28 / 6                             (2.9)
 *   beta 0.3    c 3   (3+4+5+6) / 4   = 4.5
 *   beta 0.49   c 4   (4+5) / 2       = 4.5 */
static void test_trimmed_mean_beta_boundaries(void **state)
{
    (void)state;
    static const float v[10] = {5, 1000, -50, 3, 20, 1, 8, 4, 6, 2};
    static const struct {
        double beta, sum;
        size_t kept;
    } cases[] = {
        {0, 999, 10}, {0.19, 49, 8}, {0.2, 28, 6}, {0.29, 28, 6}, {0.3, 18, 4}, {0.49, 9, 2},
    };
    float d[10 * 2];
    for (size_t i = 0; i < 10; i++) {
        d[i * 2] = v[i];
        d[i * 2 + 1] = -v[i];
    }
    for (size_t c = 0; c < FEDGE_ARRAY_LEN(cases); c++) {
        fedge_combine_params p = params("trimmed_mean", cases[c].beta, 0, 0, 1);
        float out[2], want[2];
        uint8_t used[10];
        want[0] = (float)(cases[c].sum * (1.0 / (double)cases[c].kept));
        want[1] = -want[0];
        assert_int_equal(combine(&p, d, 10, 2, NULL, out, used, NULL), FEDGE_OK);
        assert_floats(out, want, 2);
        assert_used(used, (const uint8_t[10]){1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 10);
    }
    /* 0.29 · 100 is 28.999999999999996 in binary: still 29 cut. */
    const fedge_combiner *tm = fedge_combiner_find("trimmed_mean");
    fedge_combine_params p = params("trimmed_mean", 0.29, 0, 0, 1);
    float big[100 * 1], out[1];
    uint8_t used[100];
    for (size_t i = 0; i < 100; i++)
        big[i] = (float)(i < 29 ? -1000 : i >= 71 ? 1000 : (double)i);
    /* kept: 29 … 70, sum 42 · 99 / 2 */
    assert_int_equal(combine(&p, big, 100, 1, NULL, out, used, NULL), FEDGE_OK);
    assert_true(out[0] == (float)(42.0 * 99 / 2 * (1.0 / 42)));
    char why[256];
    assert_int_equal(tm->check(&p, 100, why, sizeof why), FEDGE_OK);
}

static uint64_t lcg_state;
static float random_value(void)
{
    lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(lcg_state >> 11) / 9007199254740992.0 * 2 - 1);
}

static float *random_deltas(size_t n, size_t n_params, uint64_t seed)
{
    float *d = malloc(n * n_params * sizeof *d);
    assert_non_null(d);
    lcg_state = seed;
    for (size_t k = 0; k < n * n_params; k++)
        d[k] = random_value();
    return d;
}

/* beta 0 keeps every value: the unweighted mean, to the bit. */
static void test_trimmed_mean_beta_zero_is_mean(void **state)
{
    (void)state;
    enum { N = 9, P = 301 };
    float *d = random_deltas(N, P, 7), a[P], b[P];
    uint8_t used[N];
    fedge_combine_params tm = params("trimmed_mean", 0, 0, 0, 64), mean = params("mean", 0, 0, 0, 64);
    assert_int_equal(combine(&tm, d, N, P, NULL, a, used, NULL), FEDGE_OK);
    assert_int_equal(combine(&mean, d, N, P, NULL, b, used, NULL), FEDGE_OK);
    assert_floats(a, b, P);
    free(d);
}

static int cmp_float(const void *x, const void *y)
{
    float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

/* Columns longer than the selection's insertion-sort cut-off, in orders
 * that defeat naive pivots (sorted, reversed, all equal, organ pipe,
 * random), against a sort. */
static void test_median_and_trim_against_sort(void **state)
{
    (void)state;
    enum { P = 5 };
    for (size_t n = 99; n <= 100; n++) {
        float *d = malloc(n * P * sizeof *d), col[MAX_N], out[P], want[P];
        uint8_t used[MAX_N];
        assert_non_null(d);
        lcg_state = n;
        for (size_t i = 0; i < n; i++) {
            d[i * P + 0] = (float)i;
            d[i * P + 1] = (float)(n - i);
            d[i * P + 2] = 3;
            d[i * P + 3] = (float)(i < n / 2 ? i : n - i);
            d[i * P + 4] = random_value();
        }
        for (int rule = 0; rule < 2; rule++) {
            fedge_combine_params p = rule ? params("trimmed_mean", 0.1, 0, 0, 2) : params("median", 0, 0, 0, 2);
            size_t cut = n / 10;
            for (size_t k = 0; k < P; k++) {
                for (size_t i = 0; i < n; i++)
                    col[i] = d[i * P + k];
                qsort(col, n, sizeof col[0], cmp_float);
                if (!rule) {
                    want[k] = n % 2 ? col[n / 2] : (float)(((double)col[n / 2 - 1] + col[n / 2]) / 2);
                } else {
                    double sum = 0;
                    for (size_t i = cut; i < n - cut; i++)
                        sum += col[i];
                    want[k] = (float)(sum * (1.0 / (double)(n - 2 * cut)));
                }
            }
            assert_int_equal(combine(&p, d, n, P, NULL, out, used, NULL), FEDGE_OK);
            for (size_t k = 0; k < P; k++)
                assert_float_equal(out[k], want[k], 1e-6 * (1 + fabsf(want[k])));
            if (!rule)
                assert_floats(out, want, P); /* a median is one of the values or the mean of two */
        }
        free(d);
    }
}

/* 5 clients in the plane, f = 1, so each score sums the n − f − 2 = 2
 * smallest squared distances to the others:
 *   0 (1,0)  to 1,2,3,4: 1, 0.5, 2, 181      score 1.5
 *   1 (1,1)  to 0,2,3,4: 1, 0.5, 1, 162      score 1.5
 *   2 (.5,.5) to 0,1,3,4: 0.5, 0.5, 0.5, 180.5  score 1
 *   3 (0,1)  to 0,1,2,4: 2, 1, 0.5, 181      score 1.5
 *   4 (10,10) to 0,1,2,3: 181, 162, 180.5, 181  score 342.5 */
static const float KRUM_D[5 * 2] = {1, 0, 1, 1, 0.5f, 0.5f, 0, 1, 10, 10};

static void test_krum_selection(void **state)
{
    (void)state;
    fedge_combine_params p = params("krum", 0, 1, 0, 1);
    float out[2];
    uint8_t used[5];
    /* the attacker's weight is ignored */
    assert_int_equal(combine(&p, KRUM_D, 5, 2, (const double[5]){1, 1, 1, 1, 1e6}, out, used, NULL), FEDGE_OK);
    assert_floats(out, (const float[2]){0.5f, 0.5f}, 2);
    assert_used(used, (const uint8_t[5]){0, 0, 1, 0, 0}, 5);
}

/* m = 3: client 2, then the 1.5 tie among 0, 1, 3 goes to 0 and 1:
 * ((1+1+.5)/3, (0+1+.5)/3). m = 0 means n − f = 4: clients 0 to 3. */
static void test_multikrum_m(void **state)
{
    (void)state;
    float out[2];
    uint8_t used[5];
    fedge_combine_params p = params("multikrum", 0, 1, 3, 2);
    assert_int_equal(combine(&p, KRUM_D, 5, 2, NULL, out, used, NULL), FEDGE_OK);
    assert_floats(out, (const float[2]){(float)(2.5 * (1.0 / 3)), (float)(1.5 * (1.0 / 3))}, 2);
    assert_used(used, (const uint8_t[5]){1, 1, 1, 0, 0}, 5);

    p = params("multikrum", 0, 1, 0, 2);
    assert_int_equal(combine(&p, KRUM_D, 5, 2, NULL, out, used, NULL), FEDGE_OK);
    assert_floats(out, (const float[2]){0.625f, 0.625f}, 2);
    assert_used(used, (const uint8_t[5]){1, 1, 1, 1, 0}, 5);
}

/* 7 clients, f = 1: θ = 5 chosen by Krum over the shrinking set, β = 3.
 *   0 (0,0)  1 (1,0)  2 (0,2)  3 (20,-20) attacker  4 (1,1)  5 (2,1)  6 (1,3)
 * Scores sum the |S| − f − 2 smallest squared distances (at least 1):
 *   S = all, q = 4:  0:12 1:9 2:13 3:3128 4:6 5:13 6:20        -> 4
 *   S − {4}, q = 3:  0:10 1:8 2:11 3:2326 5:12 6:16            -> 1
 *   q = 2:           0:9 2:6 3:1565 5:10 6:7                   -> 2
 *   q = 1:           0:5 3:765 5:5 6:5                         -> 0 (tie)
 *   q = 1:           3:765 5:5 6:5                             -> 5 (tie)
 * Chosen {0, 1, 2, 4, 5}. Coordinate 0: {0,1,0,1,2}, median 1, distances
 * {1,0,1,0,1}: clients 1 and 4, then the tie among 0, 2, 5 goes to 0:
 * (1+1+0)/3. Coordinate 1: {0,0,2,1,1}, median 1: clients 4, 5, then 0:
 * (1+1+0)/3. (Ties by value instead of index would give 4/3.) */
static void test_bulyan_seven_clients(void **state)
{
    (void)state;
    static const float d[7 * 2] = {0, 0, 1, 0, 0, 2, 20, -20, 1, 1, 2, 1, 1, 3};
    fedge_combine_params p = params("bulyan", 0, 1, 0, 1);
    float out[2], want = (float)(2.0 * (1.0 / 3));
    uint8_t used[7];
    assert_int_equal(combine(&p, d, 7, 2, (const double[7]){1, 1, 1, 1e9, 1, 1, 1}, out, used, NULL), FEDGE_OK);
    assert_floats(out, (const float[2]){want, want}, 2);
    assert_used(used, (const uint8_t[7]){1, 1, 1, 0, 1, 1, 0}, 7);
}

/* f = 0: Bulyan keeps every delta and every value: the mean of all. */
static void test_bulyan_f0_is_mean(void **state)
{
    (void)state;
    static const float d[3 * 2] = {1, 2, 4, 8, 7, -1};
    fedge_combine_params p = params("bulyan", 0, 0, 0, 1);
    float out[2];
    uint8_t used[3];
    assert_int_equal(combine(&p, d, 3, 2, NULL, out, used, NULL), FEDGE_OK);
    assert_floats(out, (const float[2]){4, 3}, 2);
    assert_used(used, ALL7, 3);
}

/* Ties among more values than the selection sorts by insertion: 40
 * clients at +1 (even) and −1 (odd) in every coordinate, f = 1, so every
 * Krum score ties; the lower indices win.
 *   multikrum m = 5: clients 0..4, (1 − 1 + 1 − 1 + 1) / 5 = 0.2
 *   bulyan: θ = 38 is 0..37 (each step the lowest of the best-placed
 *     side), median 0, every distance 1: β = 36 values of clients 0..35,
 *     18 of each sign: 0. */
static void test_ties_go_to_lower_index(void **state)
{
    (void)state;
    enum { N = 40, P = 3 };
    float d[N * P], out[P];
    uint8_t used[N], want[N];
    for (size_t i = 0; i < N; i++)
        for (size_t k = 0; k < P; k++)
            d[i * P + k] = i % 2 ? -1.0f : 1.0f;

    fedge_combine_params p = params("multikrum", 0, 1, 5, 2);
    assert_int_equal(combine(&p, d, N, P, NULL, out, used, NULL), FEDGE_OK);
    for (size_t i = 0; i < N; i++)
        want[i] = i < 5;
    assert_used(used, want, N);
    assert_floats(out, (const float[P]){(float)(1.0 * (1.0 / 5)), (float)(1.0 * (1.0 / 5)), (float)(1.0 * (1.0 / 5))}, P);

    p = params("bulyan", 0, 1, 0, 2);
    assert_int_equal(combine(&p, d, N, P, NULL, out, used, NULL), FEDGE_OK);
    for (size_t i = 0; i < N; i++)
        want[i] = i < 38;
    assert_used(used, want, N);
    assert_floats(out, (const float[P]){0, 0, 0}, P);
}

static void expect_refusal(const fedge_combine_params *p, size_t n, const char *reason)
{
    char why[256] = "";
    float data[MAX_N] = {0}, out[1];
    uint8_t used[MAX_N];
    mem_reader m;
    const fedge_combiner *c = fedge_combiner_find(p->name);
    assert_non_null(c);
    assert_int_equal(c->check(p, n, why, sizeof why), FEDGE_ERR_STRATEGY_TOO_FEW);
    if (!strstr(why, reason))
        fail_msg("%s: reason '%s' lacks '%s'", p->name, why, reason);
    if (n <= MAX_N) {
        assert_int_equal(combine(p, data, n, 1, NULL, out, used, &m), FEDGE_ERR_STRATEGY_TOO_FEW);
        assert_int_equal(m.n_reads, 0);
    }
}

static void expect_accepted(const fedge_combine_params *p, size_t n)
{
    char why[256] = "";
    assert_int_equal(fedge_combiner_find(p->name)->check(p, n, why, sizeof why), FEDGE_OK);
}

static void test_check_refusals(void **state)
{
    (void)state;
    fedge_combine_params p = params("krum", 0, 1, 0, 8);
    expect_refusal(&p, 4, "krum with byzantine_f = 1 needs at least 2f + 3 = 5 updates; the round has 4");
    expect_accepted(&p, 5);
    p = params("krum", 0, 2, 0, 8);
    expect_refusal(&p, 6, "needs at least 2f + 3 = 7 updates; the round has 6");
    expect_accepted(&p, 7);
    p = params("krum", 0, 0, 0, 8);
    expect_refusal(&p, 2, "2f + 3 = 3");
    expect_accepted(&p, 3);

    p = params("multikrum", 0, 1, 0, 8);
    expect_refusal(&p, 4, "multikrum with byzantine_f = 1 needs at least 2f + 3 = 5");
    expect_accepted(&p, 5);
    p = params("multikrum", 0, 1, 6, 8);
    expect_refusal(&p, 5, "multikrum with multikrum_m = 6 averages more updates than the round's 5");
    expect_accepted(&p, 6);

    p = params("bulyan", 0, 1, 0, 8);
    expect_refusal(&p, 6, "bulyan with byzantine_f = 1 needs at least 4f + 3 = 7 updates; the round has 6");
    expect_accepted(&p, 7);
    p = params("bulyan", 0, 3, 0, 8);
    expect_refusal(&p, 14, "4f + 3 = 15");
    expect_accepted(&p, 15);

    p = params("median", 0, 0, 0, 8);
    expect_refusal(&p, 0, "median needs at least 1 update");
    expect_accepted(&p, 1);
    p = params("trimmed_mean", 0.2, 0, 0, 8);
    expect_refusal(&p, 0, "trimmed_mean with trim_beta = 0.2 cuts 0 of 0 updates");
    expect_accepted(&p, 1);
    expect_accepted(&p, 5);
    p = params("trimmed_mean", 0.4999999999999, 0, 0, 8);
    expect_accepted(&p, 3);
    /* within the 1e-9 tolerance, beta·n = 999.9999999998 counts as 1000: nothing left */
    expect_refusal(&p, 2000, "cuts 1000 of 2000 updates at each end and keeps none");
}

/* Same deltas, block 1, 2, 5, n_params and more than n_params: the same
 * bits and the same choice from every rule. */
static void test_block_size_independent(void **state)
{
    (void)state;
    enum { N = 11, P = 37 };
    static const size_t blocks[] = {1, 2, 5, P, 1000};
    float *d = random_deltas(N, P, 42);
    double w[N];
    for (size_t i = 0; i < N; i++)
        w[i] = 1 + (double)i;
    /* two attackers: one sign-flipped ×10, one far off */
    for (size_t k = 0; k < P; k++) {
        d[3 * P + k] *= -10;
        d[8 * P + k] += 50;
    }
    fedge_combine_params rules[] = {
        params("mean", 0, 0, 0, 1),      params("median", 0, 0, 0, 1),    params("trimmed_mean", 0.2, 0, 0, 1),
        params("krum", 0, 2, 0, 1),      params("multikrum", 0, 2, 4, 1), params("multikrum", 0, 2, 0, 1),
        params("bulyan", 0, 2, 0, 1),
    };
    for (size_t r = 0; r < FEDGE_ARRAY_LEN(rules); r++) {
        float first[P], out[P];
        uint8_t first_used[N], used[N];
        for (size_t b = 0; b < FEDGE_ARRAY_LEN(blocks); b++) {
            rules[r].block = blocks[b];
            assert_int_equal(combine(&rules[r], d, N, P, w, b ? out : first, b ? used : first_used, NULL), FEDGE_OK);
            if (b) {
                assert_floats(out, first, P);
                assert_used(used, first_used, N);
            }
        }
        if (strcmp(rules[r].name, "krum") == 0 || strcmp(rules[r].name, "multikrum") == 0 ||
            strcmp(rules[r].name, "bulyan") == 0)
            assert_true(!first_used[3] && !first_used[8]);
    }
    free(d);
}

/* Krum's squared distances: the same bits for every block size (what
 * makes its choice independent of the block), and the distances. */
static void test_krum_distances_block_independent(void **state)
{
    (void)state;
    enum { N = 6, P = 37 };
    static const size_t blocks[] = {1, 2, 3, 5, 8, P, 1000};
    float *d = random_deltas(N, P, 9);
    double first[N * N], dist[N * N];
    for (size_t b = 0; b < FEDGE_ARRAY_LEN(blocks); b++) {
        mem_reader m;
        mem_reader_init(&m, d, N, P);
        assert_int_equal(fedge_krum_distances(&m.r, blocks[b], b ? dist : first), FEDGE_OK);
        if (b && memcmp(dist, first, sizeof dist) != 0)
            fail_msg("block %zu: distances differ from block 1", blocks[b]);
    }
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < N; j++) {
            double want = 0;
            for (size_t k = 0; k < P; k++)
                want += ((double)d[i * P + k] - d[j * P + k]) * ((double)d[i * P + k] - d[j * P + k]);
            assert_float_equal(first[i * N + j], want, 1e-12 * (1 + want));
            assert_true(first[i * N + j] == first[j * N + i]);
        }
    free(d);
}

/* Each rule reads each delta once per block, plus once more for the
 * deltas Krum, Multi-Krum and Bulyan chose; never wider than the block. */
static void test_reads_bounded(void **state)
{
    (void)state;
    enum { N = 7, P = 37, BLOCK = 5, BLOCKS = (P + BLOCK - 1) / BLOCK };
    float *d = random_deltas(N, P, 3);
    fedge_combine_params rules[] = {
        params("mean", 0, 0, 0, BLOCK), params("median", 0, 0, 0, BLOCK), params("trimmed_mean", 0.3, 0, 0, BLOCK),
        params("krum", 0, 1, 0, BLOCK), params("multikrum", 0, 1, 3, BLOCK), params("bulyan", 0, 1, 0, BLOCK),
    };
    for (size_t r = 0; r < FEDGE_ARRAY_LEN(rules); r++) {
        float out[P];
        uint8_t used[N];
        mem_reader m;
        int selects = r >= 3;
        size_t chosen = 0;
        assert_int_equal(combine(&rules[r], d, N, P, NULL, out, used, &m), FEDGE_OK);
        assert_int_equal(m.widest, BLOCK);
        for (size_t i = 0; i < N; i++) {
            assert_true(used[i] <= 1);
            chosen += used[i];
            size_t want = BLOCKS * (1 + (size_t)(selects && used[i]));
            if (m.reads[i] != want)
                fail_msg("%s: delta %zu read %zu times, expected %zu", rules[r].name, i, m.reads[i], want);
        }
        assert_int_equal(chosen, r == 3 ? 1 : r == 4 ? 3 : r == 5 ? 5 : N);
    }
    free(d);
}

/* No coordinates: nothing is read, every rule still chooses (Krum's
 * distances are all 0, so the lowest indices). */
static void test_no_parameters(void **state)
{
    (void)state;
    const char *names[] = {"mean", "median", "trimmed_mean", "krum", "multikrum", "bulyan"};
    for (size_t r = 0; r < FEDGE_ARRAY_LEN(names); r++) {
        fedge_combine_params p = params(names[r], 0.2, 1, 0, 4);
        float data[1] = {0}, out[1] = {42};
        uint8_t used[7];
        mem_reader m;
        assert_int_equal(combine(&p, data, 7, 0, NULL, out, used, &m), FEDGE_OK);
        assert_int_equal(m.n_reads, 0);
        assert_true(out[0] == 42);
        assert_true(used[0] == 1 && used[6] == (r < 3));
    }
}

/* A read failing anywhere (first, middle of the distance pass, the second
 * pass, the last read) fails the combination with the reader's status. */
static void test_reader_failure(void **state)
{
    (void)state;
    enum { N = 7, P = 10, BLOCK = 4 };
    float *d = random_deltas(N, P, 5);
    const char *names[] = {"mean", "median", "trimmed_mean", "krum", "multikrum", "bulyan"};
    for (size_t r = 0; r < FEDGE_ARRAY_LEN(names); r++) {
        fedge_combine_params p = params(names[r], 0.2, 1, 0, BLOCK);
        float out[P];
        uint8_t used[N];
        mem_reader m;
        assert_int_equal(combine(&p, d, N, P, NULL, out, used, &m), FEDGE_OK);
        long total = (long)m.n_reads;
        long at[] = {0, total / 2, N * 3 - 1, total - 1};
        for (size_t a = 0; a < FEDGE_ARRAY_LEN(at); a++) {
            const fedge_combiner *c = fedge_combiner_find(names[r]);
            double w[N];
            for (size_t i = 0; i < N; i++)
                w[i] = 1;
            mem_reader_init(&m, d, N, P);
            m.fail_at = at[a];
            assert_int_equal(c->combine(&p, &m.r, w, out, used), FEDGE_ERR_IO);
            assert_int_equal((long)m.n_reads, at[a]);
        }
    }
    free(d);
}

/* Only mean listens to the weights: a client claiming a huge sample count
 * moves the mean and nothing else. */
static void test_weights_only_for_mean(void **state)
{
    (void)state;
    enum { N = 7, P = 13 };
    float *d = random_deltas(N, P, 11);
    double even[N], skewed[N];
    for (size_t i = 0; i < N; i++)
        even[i] = 1, skewed[i] = i == 6 ? 1e6 : 1;
    const char *names[] = {"mean", "median", "trimmed_mean", "krum", "multikrum", "bulyan"};
    for (size_t r = 0; r < FEDGE_ARRAY_LEN(names); r++) {
        fedge_combine_params p = params(names[r], 0.2, 1, 0, 4);
        float a[P], b[P];
        uint8_t used[N];
        assert_int_equal(combine(&p, d, N, P, even, a, used, NULL), FEDGE_OK);
        assert_int_equal(combine(&p, d, N, P, skewed, b, used, NULL), FEDGE_OK);
        if (r == 0)
            assert_true(memcmp(a, b, sizeof a) != 0);
        else
            assert_floats(b, a, P);
    }
    free(d);
}

/* review18 F2: scaling by (float)(bound / norm) can leave a clipped delta's
 * norm a few ulps over the bound (DP's sensitivity); fedge_l2_clip never
 * does, and takes the largest such float factor. */
static void test_l2_clip_never_over(void **state)
{
    (void)state;
    enum { N_MAX = 3000, TRIALS = 3000 };
    float *v = malloc(N_MAX * sizeof *v), *w = malloc(N_MAX * sizeof *w);
    assert_non_null(v);
    assert_non_null(w);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    int naive_over = 0;
    for (int t = 0; t < TRIALS; t++) {
        size_t n = 1 + (size_t)(t * 7919u) % N_MAX;
        float mag = ldexpf(1.0f, (t % 40) - 20);
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            v[i] = mag * ((float)(x >> 40) / (float)(1u << 24) - 0.5f);
        }
        double norm = fedge_l2_norm(v, n);
        if (!(norm > 0.0))
            continue;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double u = t % 3 == 0 ? 1.0 - ldexp((double)(x % 64 + 1), -52) : (double)(x >> 11) / 9007199254740992.0;
        double bound = norm * (u > 1e-6 ? u : 1e-6);
        if (!(norm > bound))
            continue;
        memcpy(w, v, n * sizeof *w);
        float naive = (float)(bound / norm);
        for (size_t i = 0; i < n; i++)
            w[i] *= naive;
        naive_over += fedge_l2_norm(w, n) > bound;
        memcpy(w, v, n * sizeof *w);
        float f = 0.0f;
        assert_int_equal(fedge_l2_clip(w, n, bound, norm, &f), FEDGE_OK);
        assert_true(fedge_l2_norm(w, n) <= bound);
        assert_true((double)f <= bound / norm);
        for (size_t i = 0; i < n; i++)
            assert_true(w[i] == v[i] * f);
        float up = nextafterf(f, INFINITY); /* the largest: one ulp more is over, or past bound / norm */
        for (size_t i = 0; i < n; i++)
            w[i] = v[i] * up;
        assert_true(fedge_l2_norm(w, n) > bound || (double)up > bound / norm);
    }
    assert_true(naive_over > 0); /* the kind of fault is real on these inputs */
    float one = 1.0f;
    assert_int_equal(fedge_l2_clip(&one, 1, 2.0, 1.0, NULL), FEDGE_ERR_INVALID_ARG); /* not over */
    assert_int_equal(fedge_l2_clip(&one, 1, 0.0, 1.0, NULL), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_l2_clip(&one, 1, 0.5, NAN, NULL), FEDGE_ERR_INVALID_ARG);
    assert_true(one == 1.0f);
    free(v);
    free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_mean_weighted),
        cmocka_unit_test(test_median_odd_with_ties),
        cmocka_unit_test(test_median_even),
        cmocka_unit_test(test_trimmed_mean_beta_boundaries),
        cmocka_unit_test(test_trimmed_mean_beta_zero_is_mean),
        cmocka_unit_test(test_median_and_trim_against_sort),
        cmocka_unit_test(test_krum_selection),
        cmocka_unit_test(test_multikrum_m),
        cmocka_unit_test(test_bulyan_seven_clients),
        cmocka_unit_test(test_bulyan_f0_is_mean),
        cmocka_unit_test(test_ties_go_to_lower_index),
        cmocka_unit_test(test_check_refusals),
        cmocka_unit_test(test_block_size_independent),
        cmocka_unit_test(test_krum_distances_block_independent),
        cmocka_unit_test(test_reads_bounded),
        cmocka_unit_test(test_no_parameters),
        cmocka_unit_test(test_reader_failure),
        cmocka_unit_test(test_weights_only_for_mean),
        cmocka_unit_test(test_l2_clip_never_over),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
