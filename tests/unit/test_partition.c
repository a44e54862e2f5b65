/* test_partition.c — IID, Dirichlet, quantity, label-quantity (#C = k) and
 * feature-noise splits on synthetic data and on the real Fashion-MNIST
 * training set: coverage, sizes, skew, noise, seeds. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "error.h"
#include "partition.h"

/* ---- helpers -------------------------------------------------------------- */

/* n rows, 10 classes; class 0 is three times as frequent as each other one. */
static void make_synthetic(fedge_dataset *ds, size_t n)
{
    ds->n = n;
    ds->dim = 1;
    ds->n_classes = 10;
    ds->x = calloc(n, sizeof(float));
    ds->y = malloc(n);
    assert_non_null(ds->x);
    assert_non_null(ds->y);
    for (size_t i = 0; i < n; i++) {
        size_t r = (i * 7919) % 12;
        ds->y[i] = (uint8_t)(r < 2 ? 0 : r - 2);
    }
}

static void free_synthetic(fedge_dataset *ds)
{
    free(ds->x);
    free(ds->y);
    memset(ds, 0, sizeof *ds);
}

/* Sizes sum to n, every row in exactly one client, each client >= min. */
static void check_valid(const fedge_partition *p, const fedge_dataset *ds, int n_clients,
                        size_t min_size)
{
    assert_int_equal(p->n_clients, n_clients);
    uint8_t *seen = calloc(ds->n, 1);
    assert_non_null(seen);
    size_t total = 0;
    for (int j = 0; j < p->n_clients; j++) {
        assert_true(p->sizes[j] >= min_size);
        assert_true(p->sizes[j] >= 1);
        total += p->sizes[j];
        for (size_t i = 0; i < p->sizes[j]; i++) {
            size_t row = p->indices[j][i];
            assert_true(row < ds->n);
            assert_int_equal(seen[row], 0);
            seen[row] = 1;
        }
    }
    assert_int_equal(total, ds->n);
    free(seen);

    /* The histogram agrees with the sizes. */
    size_t *hist = malloc((size_t)n_clients * (size_t)ds->n_classes * sizeof *hist);
    assert_non_null(hist);
    fedge_partition_label_histogram(p, ds, hist);
    for (int j = 0; j < n_clients; j++) {
        size_t s = 0;
        for (int k = 0; k < ds->n_classes; k++)
            s += hist[(size_t)j * (size_t)ds->n_classes + (size_t)k];
        assert_int_equal(s, p->sizes[j]);
    }
    free(hist);
}

static void make(const fedge_dataset *ds, fedge_partition_kind kind, int n_clients, double beta,
                 size_t min_size, uint64_t seed, fedge_partition *p)
{
    fedge_partition_config cfg = {
        .kind = kind, .n_clients = n_clients, .beta = beta, .min_size = min_size, .seed = seed};
    assert_int_equal(fedge_partition_make(ds, &cfg, p), FEDGE_OK);
    check_valid(p, ds, n_clients, min_size);
}

static double mean_tv(const fedge_partition *p, const fedge_dataset *ds)
{
    double tv = -1.0;
    assert_int_equal(fedge_partition_label_tv(p, ds, &tv), FEDGE_OK);
    assert_true(tv >= 0.0 && tv <= 1.0);
    return tv;
}

/* TV weighted by client size: small clients' sampling noise counts less. */
static double weighted_tv(const fedge_partition *p, const fedge_dataset *ds)
{
    const size_t K = (size_t)ds->n_classes;
    size_t *hist = malloc((size_t)p->n_clients * K * sizeof *hist);
    double *global = calloc(K, sizeof *global);
    assert_non_null(hist);
    assert_non_null(global);
    fedge_partition_label_histogram(p, ds, hist);
    for (size_t i = 0; i < ds->n; i++)
        global[ds->y[i]] += 1.0 / (double)ds->n;
    double acc = 0.0;
    for (int j = 0; j < p->n_clients; j++) {
        double d = 0.0;
        for (size_t k = 0; k < K; k++)
            d += fabs((double)hist[(size_t)j * K + k] / (double)p->sizes[j] - global[k]);
        acc += 0.5 * d * (double)p->sizes[j] / (double)ds->n;
    }
    free(hist);
    free(global);
    return acc;
}

static double size_cv(const fedge_partition *p)
{
    double mean = 0.0, var = 0.0;
    for (int j = 0; j < p->n_clients; j++)
        mean += (double)p->sizes[j] / p->n_clients;
    for (int j = 0; j < p->n_clients; j++)
        var += ((double)p->sizes[j] - mean) * ((double)p->sizes[j] - mean) / p->n_clients;
    return sqrt(var) / mean;
}

static int same_partition(const fedge_partition *a, const fedge_partition *b)
{
    if (a->n_clients != b->n_clients)
        return 0;
    for (int j = 0; j < a->n_clients; j++)
        if (a->sizes[j] != b->sizes[j] ||
            memcmp(a->indices[j], b->indices[j], a->sizes[j] * sizeof(size_t)) != 0)
            return 0;
    return 1;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_parse_kind(void **state)
{
    (void)state;
    fedge_partition_kind k = (fedge_partition_kind)99;
    assert_int_equal(fedge_partition_parse_kind("iid", &k), FEDGE_OK);
    assert_int_equal(k, FEDGE_PARTITION_IID);
    assert_int_equal(fedge_partition_parse_kind("dirichlet", &k), FEDGE_OK);
    assert_int_equal(k, FEDGE_PARTITION_DIRICHLET);
    assert_int_equal(fedge_partition_parse_kind("quantity", &k), FEDGE_OK);
    assert_int_equal(k, FEDGE_PARTITION_QUANTITY);
    assert_int_equal(fedge_partition_parse_kind("labels", &k), FEDGE_OK);
    assert_int_equal(k, FEDGE_PARTITION_LABELS);
    assert_int_equal(fedge_partition_parse_kind("noise", &k), FEDGE_OK);
    assert_int_equal(k, FEDGE_PARTITION_NOISE);
    k = FEDGE_PARTITION_IID;
    assert_int_equal(fedge_partition_parse_kind("IID", &k), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_partition_parse_kind("dir", &k), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_partition_parse_kind("", &k), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_partition_parse_kind(NULL, &k), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(k, FEDGE_PARTITION_IID);
}

static void test_bad_configs(void **state)
{
    (void)state;
    fedge_dataset ds;
    make_synthetic(&ds, 1000);
    fedge_partition p;
    fedge_partition_config cfg = {.kind = FEDGE_PARTITION_DIRICHLET, .n_clients = 10,
                                  .beta = 0.5, .min_size = 10, .seed = 1};
#define EXPECT(code)                                               \
    do {                                                           \
        memset(&p, 0xab, sizeof p);                                \
        assert_int_equal(fedge_partition_make(&ds, &cfg, &p), code); \
        assert_int_equal(p.n_clients, 0);                          \
        assert_null(p.sizes);                                      \
        assert_null(p.indices);                                    \
        fedge_partition_free(&p);                                  \
    } while (0)

    cfg.n_clients = 0;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.n_clients = -3;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.n_clients = 1000000;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.n_clients = 10;
    cfg.beta = 0.0;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.beta = -1.0;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.beta = NAN;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.beta = INFINITY;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.kind = FEDGE_PARTITION_QUANTITY;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.beta = 0.5;
    cfg.min_size = 101; /* 10 clients x 101 > 1000 rows */
    EXPECT(FEDGE_ERR_RANGE);
    cfg.kind = FEDGE_PARTITION_IID;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.min_size = 100; /* exactly enough */
    assert_int_equal(fedge_partition_make(&ds, &cfg, &p), FEDGE_OK);
    check_valid(&p, &ds, 10, 100);
    fedge_partition_free(&p);
    cfg.kind = (fedge_partition_kind)7;
    EXPECT(FEDGE_ERR_INVALID_ARG);
    cfg.kind = FEDGE_PARTITION_DIRICHLET;
    ds.y[500] = 10; /* label >= n_classes */
    EXPECT(FEDGE_ERR_DATA_LABEL);
    ds.y[500] = 3;
    assert_int_equal(fedge_partition_make(NULL, &cfg, &p), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_partition_make(&ds, NULL, &p), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_partition_make(&ds, &cfg, NULL), FEDGE_ERR_INVALID_ARG);
    fedge_dataset empty = ds;
    empty.n = 0;
    assert_int_equal(fedge_partition_make(&empty, &cfg, &p), FEDGE_ERR_INVALID_ARG);
    /* IID ignores beta. */
    cfg.kind = FEDGE_PARTITION_IID;
    cfg.beta = -1.0;
    cfg.min_size = 10;
    assert_int_equal(fedge_partition_make(&ds, &cfg, &p), FEDGE_OK);
    fedge_partition_free(&p);
    fedge_partition_free(&p); /* twice is harmless */

    /* Label-quantity skew: k in 1..n_classes (10 here). */
    cfg.kind = FEDGE_PARTITION_LABELS;
    cfg.classes_per_client = 0;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.classes_per_client = -2;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.classes_per_client = 11;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.classes_per_client = 10;
    assert_int_equal(fedge_partition_make(&ds, &cfg, &p), FEDGE_OK);
    fedge_partition_free(&p);
    /* 5 clients x k=1: client i gets class i alone (at most 167 rows), so
     * min_size 200 passes the n / N check (1000 / 5) but cannot be met. */
    cfg.n_clients = 5;
    cfg.classes_per_client = 1;
    cfg.min_size = 200;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.n_clients = 10;
    cfg.min_size = 10;

    /* Feature noise: sigma finite and >= 0. */
    cfg.kind = FEDGE_PARTITION_NOISE;
    cfg.noise_sigma = -0.1;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.noise_sigma = NAN;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.noise_sigma = INFINITY;
    EXPECT(FEDGE_ERR_RANGE);
    cfg.noise_sigma = 0.0;
    assert_int_equal(fedge_partition_make(&ds, &cfg, &p), FEDGE_OK);
    fedge_dataset cd = {0};
    cfg.noise_sigma = NAN; /* the data call checks it too */
    assert_int_equal(fedge_partition_client_data(&ds, &p, &cfg, 1, 0, &cd), FEDGE_ERR_RANGE);
    cfg.noise_sigma = 0.1;
    assert_int_equal(fedge_partition_client_data(&ds, &p, &cfg, 10, 0, &cd),
                     FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_partition_client_data(&ds, &p, &cfg, -1, 0, &cd),
                     FEDGE_ERR_INVALID_ARG);
    assert_null(cd.x);
    fedge_partition_free(&p);
#undef EXPECT
    free_synthetic(&ds);
}

static void test_iid(void **state)
{
    (void)state;
    fedge_dataset ds;
    make_synthetic(&ds, 20003);
    fedge_partition p;
    make(&ds, FEDGE_PARTITION_IID, 10, 0.0, 10, 5, &p);
    size_t lo = p.sizes[0], hi = p.sizes[0];
    for (int j = 0; j < 10; j++) {
        lo = p.sizes[j] < lo ? p.sizes[j] : lo;
        hi = p.sizes[j] > hi ? p.sizes[j] : hi;
    }
    assert_true(hi - lo <= 1);
    double tv = mean_tv(&p, &ds);
    print_message("  synthetic IID, 10 clients: mean TV %.4f\n", tv);
    assert_true(tv < 0.05);
    fedge_partition_free(&p);

    /* One client gets everything. */
    make(&ds, FEDGE_PARTITION_IID, 1, 0.0, 10, 5, &p);
    assert_int_equal(p.sizes[0], ds.n);
    assert_true(mean_tv(&p, &ds) < 1e-12);
    fedge_partition_free(&p);
    free_synthetic(&ds);
}

static void test_dirichlet_skew_follows_beta(void **state)
{
    (void)state;
    static const double betas[] = {0.1, 0.5, 1.0, 10.0, 100.0};
    double tv[5];
    fedge_dataset ds;
    make_synthetic(&ds, 20000);
    for (int b = 0; b < 5; b++) {
        tv[b] = 0.0;
        for (uint64_t seed = 1; seed <= 3; seed++) {
            fedge_partition p;
            make(&ds, FEDGE_PARTITION_DIRICHLET, 10, betas[b], 10, seed, &p);
            tv[b] += mean_tv(&p, &ds) / 3.0;
            fedge_partition_free(&p);
        }
        print_message("  synthetic Dirichlet beta %-5g 10 clients: mean TV %.4f\n", betas[b],
                      tv[b]);
    }
    assert_true(tv[0] > 0.5);
    assert_true(tv[4] < 0.08);
    assert_true(tv[0] > tv[1] && tv[1] > tv[2] && tv[2] > tv[3] && tv[3] > tv[4]);
    assert_true(tv[0] > 6.0 * tv[4]);
    free_synthetic(&ds);
}

static void test_dirichlet_min_size(void **state)
{
    (void)state;
    fedge_dataset ds;
    make_synthetic(&ds, 20000);
    fedge_partition p;
    /* Many clients and strong skew: resampling finds a valid draw. */
    make(&ds, FEDGE_PARTITION_DIRICHLET, 100, 0.1, 10, 3, &p);
    print_message("  synthetic Dirichlet beta 0.1 100 clients: mean TV %.4f\n", mean_tv(&p, &ds));
    fedge_partition_free(&p);
    /* A minimum no random draw meets: the repair path must honour it. */
    make(&ds, FEDGE_PARTITION_DIRICHLET, 50, 0.01, 300, 3, &p);
    double tv = mean_tv(&p, &ds);
    print_message("  synthetic Dirichlet beta 0.01 50 clients min 300: mean TV %.4f\n", tv);
    assert_true(tv > 0.5); /* still skewed after the repair */
    fedge_partition_free(&p);
    /* min_size 0 still gives every client a row. */
    make(&ds, FEDGE_PARTITION_DIRICHLET, 200, 0.05, 0, 3, &p);
    fedge_partition_free(&p);
    free_synthetic(&ds);
}

/* Fraction of class k's rows held by the client holding most of them,
 * averaged over classes (1 = every class on one client). */
static double class_concentration(const fedge_partition *p, const fedge_dataset *ds,
                                  double *worst)
{
    const size_t K = (size_t)ds->n_classes;
    size_t *hist = malloc((size_t)p->n_clients * K * sizeof *hist);
    assert_non_null(hist);
    fedge_partition_label_histogram(p, ds, hist);
    double mean = 0.0;
    *worst = 1.0;
    for (size_t k = 0; k < K; k++) {
        size_t top = 0, total = 0;
        for (int j = 0; j < p->n_clients; j++) {
            size_t c = hist[(size_t)j * K + k];
            total += c;
            if (c > top)
                top = c;
        }
        double f = total ? (double)top / (double)total : 1.0;
        mean += f / (double)K;
        if (f < *worst)
            *worst = f;
    }
    free(hist);
    return mean;
}

/* Tiny beta once underflowed every gamma draw to 0 and fell back to uniform
 * proportions: beta 1e-5 gave IID shards. Drawn in log space, each class
 * goes (almost) whole to one client. */
static void test_dirichlet_tiny_beta_is_extreme(void **state)
{
    (void)state;
    fedge_dataset ds;
    make_synthetic(&ds, 20000);
    static const double betas[] = {1e-5, 1e-12, 1e-300};
    for (size_t b = 0; b < sizeof betas / sizeof *betas; b++) {
        for (uint64_t seed = 1; seed <= 3; seed++) {
            fedge_partition p;
            make(&ds, FEDGE_PARTITION_DIRICHLET, 10, betas[b], 10, seed, &p);
            double worst, conc = class_concentration(&p, &ds, &worst);
            double tv = mean_tv(&p, &ds);
            print_message("  synthetic Dirichlet beta %g seed %llu: class on one client %.4f "
                          "(worst %.4f), mean TV %.4f\n",
                          betas[b], (unsigned long long)seed, conc, worst, tv);
            assert_true(worst > 0.95);
            assert_true(tv > 0.75);
            fedge_partition_free(&p);
        }
    }
    /* 1e-3 and 0.5 as before: strong and moderate skew. */
    fedge_partition p;
    double worst;
    make(&ds, FEDGE_PARTITION_DIRICHLET, 10, 1e-3, 10, 1, &p);
    double tv3 = mean_tv(&p, &ds), conc3 = class_concentration(&p, &ds, &worst);
    fedge_partition_free(&p);
    make(&ds, FEDGE_PARTITION_DIRICHLET, 10, 0.5, 10, 1, &p);
    double tv05 = mean_tv(&p, &ds), conc05 = class_concentration(&p, &ds, &worst);
    fedge_partition_free(&p);
    print_message("  beta 1e-3: TV %.4f conc %.4f; beta 0.5: TV %.4f conc %.4f\n", tv3, conc3,
                  tv05, conc05);
    assert_true(tv3 > 0.75 && conc3 > 0.95);
    assert_true(tv05 > 0.2 && tv05 < 0.75 && conc05 < 0.9);

    /* Below the floor is refused, not silently uniform. */
    fedge_partition_config cfg = {.kind = FEDGE_PARTITION_DIRICHLET, .n_clients = 10,
                                  .beta = 1e-310, .min_size = 10, .seed = 1};
    assert_int_equal(fedge_partition_make(&ds, &cfg, &p), FEDGE_ERR_RANGE);
    cfg.kind = FEDGE_PARTITION_QUANTITY;
    assert_int_equal(fedge_partition_make(&ds, &cfg, &p), FEDGE_ERR_RANGE);
    free_synthetic(&ds);
}

static void test_quantity(void **state)
{
    (void)state;
    fedge_dataset ds;
    make_synthetic(&ds, 20000);
    fedge_partition p, d;
    make(&ds, FEDGE_PARTITION_QUANTITY, 10, 0.5, 10, 9, &p);
    make(&ds, FEDGE_PARTITION_DIRICHLET, 10, 0.5, 10, 9, &d);
    double cv = size_cv(&p), wtv = weighted_tv(&p, &ds), wtv_dir = weighted_tv(&d, &ds);
    print_message("  synthetic quantity beta 0.5: size CV %.3f, size-weighted TV %.4f "
                  "(Dirichlet 0.5: %.4f)\n", cv, wtv, wtv_dir);
    assert_true(cv > 0.3);
    assert_true(wtv < 0.05);
    assert_true(wtv_dir > 4.0 * wtv);
    fedge_partition_free(&p);
    fedge_partition_free(&d);

    /* Rows sorted by label: the deal must still mix labels. */
    fedge_dataset sorted;
    make_synthetic(&sorted, 20000);
    size_t at = 0;
    for (int k = 0; k < 10; k++)
        for (size_t i = 0; i < ds.n; i++)
            if (ds.y[i] == k)
                sorted.y[at++] = (uint8_t)k;
    make(&sorted, FEDGE_PARTITION_QUANTITY, 10, 0.5, 10, 9, &p);
    wtv = weighted_tv(&p, &sorted);
    print_message("  synthetic quantity beta 0.5, label-sorted rows: size-weighted TV %.4f\n", wtv);
    assert_true(wtv < 0.05);
    fedge_partition_free(&p);
    free_synthetic(&sorted);

    /* Sizes follow beta: large beta gives near-equal sizes. */
    make(&ds, FEDGE_PARTITION_QUANTITY, 10, 1000.0, 10, 9, &p);
    print_message("  synthetic quantity beta 1000: size CV %.3f\n", size_cv(&p));
    assert_true(size_cv(&p) < 0.1);
    fedge_partition_free(&p);

    /* Strong skew with a high minimum: repaired, minimum honoured. */
    make(&ds, FEDGE_PARTITION_QUANTITY, 100, 0.1, 50, 9, &p);
    assert_true(size_cv(&p) > 1.0);
    fedge_partition_free(&p);
    free_synthetic(&ds);
}

/* n_classes classes of `per_class` rows each (row i has class i % n_classes);
 * features x[i][f] = 0.5 + 0.001 * f, away from u8 clipping. */
static void make_balanced(fedge_dataset *ds, int n_classes, size_t per_class, int dim)
{
    ds->n = (size_t)n_classes * per_class;
    ds->dim = dim;
    ds->n_classes = n_classes;
    ds->x = malloc(ds->n * (size_t)dim * sizeof(float));
    ds->y = malloc(ds->n);
    assert_non_null(ds->x);
    assert_non_null(ds->y);
    for (size_t i = 0; i < ds->n; i++) {
        ds->y[i] = (uint8_t)(i % (size_t)n_classes);
        for (int f = 0; f < dim; f++)
            ds->x[i * (size_t)dim + (size_t)f] = 0.5f + 0.001f * (float)f;
    }
}

static fedge_partition make_labels(const fedge_dataset *ds, int n_clients, int k, uint64_t seed)
{
    fedge_partition p;
    fedge_partition_config cfg = {.kind = FEDGE_PARTITION_LABELS, .n_clients = n_clients,
                                  .min_size = 1, .seed = seed, .classes_per_client = k};
    assert_int_equal(fedge_partition_make(ds, &cfg, &p), FEDGE_OK);
    return p;
}

/* Each client holds exactly k labels, client j among them label j % C, each
 * label's rows split among its holders within 1, every label held when
 * N * k >= C (then every row is placed once). */
static void check_labels(const fedge_partition *p, const fedge_dataset *ds, int k)
{
    const int N = p->n_clients, C = ds->n_classes;
    size_t *hist = malloc((size_t)N * (size_t)C * sizeof *hist);
    assert_non_null(hist);
    fedge_partition_label_histogram(p, ds, hist);
    for (int j = 0; j < N; j++) {
        int held = 0;
        for (int c = 0; c < C; c++)
            held += hist[(size_t)j * C + c] > 0;
        assert_int_equal(held, k);
        assert_true(hist[(size_t)j * C + j % C] > 0);
    }
    for (int c = 0; c < C; c++) {
        size_t lo = SIZE_MAX, hi = 0, sum = 0, rows = 0;
        for (size_t i = 0; i < ds->n; i++)
            rows += ds->y[i] == c;
        for (int j = 0; j < N; j++) {
            size_t h = hist[(size_t)j * C + c];
            if (h == 0)
                continue;
            lo = h < lo ? h : lo;
            hi = h > hi ? h : hi;
            sum += h;
        }
        if ((long)N * k >= C) {
            assert_true(hi > 0);
            assert_int_equal(sum, rows);
        }
        if (hi > 0)
            assert_true(hi - lo <= 1);
    }
    if ((long)N * k >= C)
        check_valid(p, ds, N, 1);
    free(hist);
}

static void test_labels_small(void **state)
{
    (void)state;
    fedge_dataset ds;
    /* 4 clients x k=2 over 4 classes of 10 rows (+1 row to make splits odd). */
    make_balanced(&ds, 4, 10, 1);
    for (uint64_t seed = 1; seed <= 50; seed++) {
        fedge_partition p = make_labels(&ds, 4, 2, seed);
        check_labels(&p, &ds, 2);
        fedge_partition_free(&p);
    }
    free_synthetic(&ds);

    /* k = 1, N = C: client j holds class j alone, all of it. */
    make_balanced(&ds, 5, 7, 1);
    fedge_partition p = make_labels(&ds, 5, 1, 9);
    check_labels(&p, &ds, 1);
    for (int j = 0; j < 5; j++) {
        assert_int_equal(p.sizes[j], 7);
        for (size_t i = 0; i < p.sizes[j]; i++)
            assert_int_equal(ds.y[p.indices[j][i]], j);
    }
    fedge_partition_free(&p);

    /* k = C: every client holds every class; 7 rows over 3 holders: 3/2/2. */
    p = make_labels(&ds, 3, 5, 4);
    check_labels(&p, &ds, 5);
    for (int j = 0; j < 3; j++)
        assert_int_equal(p.sizes[j], j == 0 ? 15 : 10);
    fedge_partition_free(&p);

    /* N * k < C: 2 clients x k=1 over 5 classes hold classes 0 and 1 only;
     * the other rows are left out. */
    p = make_labels(&ds, 2, 1, 4);
    check_labels(&p, &ds, 1);
    assert_int_equal(p.sizes[0], 7);
    assert_int_equal(p.sizes[1], 7);
    fedge_partition_free(&p);
    free_synthetic(&ds);

    /* Uneven class sizes (the synthetic set: class 0 twice as large). */
    make_synthetic(&ds, 1001);
    for (uint64_t seed = 1; seed <= 20; seed++) {
        p = make_labels(&ds, 10, 3, seed);
        check_labels(&p, &ds, 3);
        fedge_partition_free(&p);
        /* Fewer clients than labels, N * k >= C: still every label held. */
        p = make_labels(&ds, 7, 2, seed);
        check_labels(&p, &ds, 2);
        fedge_partition_free(&p);
        p = make_labels(&ds, 4, 3, seed);
        check_labels(&p, &ds, 3);
        fedge_partition_free(&p);
        p = make_labels(&ds, 1, 10, seed);
        check_labels(&p, &ds, 10);
        fedge_partition_free(&p);
    }
    free_synthetic(&ds);
}

/* The mean and std of client j's (noisy - clean) feature differences. */
static void noise_stats(const fedge_dataset *ds, const fedge_partition *p, int j,
                        const fedge_dataset *noisy, double *mean, double *std)
{
    const size_t dim = (size_t)ds->dim;
    double s = 0.0, s2 = 0.0;
    size_t m = 0;
    assert_int_equal(noisy->n, p->sizes[j]);
    assert_int_equal(noisy->dim, ds->dim);
    for (size_t i = 0; i < noisy->n; i++) {
        size_t row = p->indices[j][i];
        assert_int_equal(noisy->y[i], ds->y[row]);
        for (size_t f = 0; f < dim; f++) {
            double d = (double)noisy->x[i * dim + f] - (double)ds->x[row * dim + f];
            s += d;
            s2 += d * d;
            m++;
        }
    }
    *mean = s / (double)m;
    *std = sqrt(s2 / (double)m - *mean * *mean);
}

static void test_noise(void **state)
{
    (void)state;
    fedge_dataset ds;
    make_balanced(&ds, 4, 500, 20); /* 2000 rows x 20 features */
    const int N = 5;
    fedge_partition_config cfg = {.kind = FEDGE_PARTITION_NOISE, .n_clients = N, .min_size = 1,
                                  .seed = 11, .noise_sigma = 0.2};
    fedge_partition p, iid;
    assert_int_equal(fedge_partition_make(&ds, &cfg, &p), FEDGE_OK);
    check_valid(&p, &ds, N, 1);
    /* The rows are the IID split's for the same seed. */
    fedge_partition_config icfg = cfg;
    icfg.kind = FEDGE_PARTITION_IID;
    assert_int_equal(fedge_partition_make(&ds, &icfg, &iid), FEDGE_OK);
    assert_true(same_partition(&p, &iid));

    double prev = -1.0;
    for (int j = 0; j < N; j++) {
        fedge_dataset d = {0};
        double mean, std;
        assert_int_equal(fedge_partition_client_data(&ds, &p, &cfg, j, 0, &d), FEDGE_OK);
        noise_stats(&ds, &p, j, &d, &mean, &std);
        const double want = 0.2 * j / N;
        if (j == 0) {
            /* Client 0 unchanged, bit for bit. */
            for (size_t i = 0; i < d.n; i++)
                assert_memory_equal(d.x + i * 20, ds.x + p.indices[0][i] * 20,
                                    20 * sizeof(float));
        } else {
            /* 8000 draws: the sample std is within 3% of sigma * j / N. */
            assert_true(fabs(std - want) < 0.03 * want);
            assert_true(fabs(mean) < 4.0 * want / sqrt(8000.0));
        }
        assert_true(std > prev);
        prev = std;
        printf("  noise sigma 0.2, client %d of %d: measured std %.4f (want %.4f)\n", j, N, std,
               want);
        fedge_dataset_free(&d);

        /* u8 shards: every feature k/255 in [0, 1]; client 0 still unchanged. */
        assert_int_equal(fedge_partition_client_data(&ds, &p, &cfg, j, 1, &d), FEDGE_OK);
        for (size_t i = 0; i < d.n * 20; i++) {
            float v = d.x[i];
            assert_true(v >= 0.0f && v <= 1.0f);
            if (j > 0)
                assert_true(fabsf((float)lrintf(v * 255.0f) / 255.0f - v) < 1e-6f);
        }
        if (j > 0) {
            double m2, s2;
            noise_stats(&ds, &p, j, &d, &m2, &s2);
            assert_true(fabs(s2 - want) < 0.05 * want + 0.002);
        } else {
            assert_memory_equal(d.x, ds.x + p.indices[0][0] * 20, 20 * sizeof(float));
        }
        fedge_dataset_free(&d);
    }

    /* Large noise saturates: u8 output clipped to [0, 1], f32 not. */
    cfg.noise_sigma = 50.0;
    fedge_dataset d8 = {0}, d32 = {0};
    assert_int_equal(fedge_partition_client_data(&ds, &p, &cfg, N - 1, 1, &d8), FEDGE_OK);
    assert_int_equal(fedge_partition_client_data(&ds, &p, &cfg, N - 1, 0, &d32), FEDGE_OK);
    size_t at_edge = 0, outside = 0;
    for (size_t i = 0; i < d8.n * 20; i++) {
        assert_true(d8.x[i] >= 0.0f && d8.x[i] <= 1.0f);
        at_edge += d8.x[i] == 0.0f || d8.x[i] == 1.0f;
        outside += d32.x[i] < 0.0f || d32.x[i] > 1.0f;
    }
    assert_true(at_edge > d8.n * 20 * 9 / 10);
    assert_true(outside > d32.n * 20 * 9 / 10);
    fedge_dataset_free(&d8);
    fedge_dataset_free(&d32);

    /* Other kinds: a plain copy of the client's rows. */
    fedge_dataset dc = {0};
    assert_int_equal(fedge_partition_client_data(&ds, &iid, &icfg, N - 1, 1, &dc), FEDGE_OK);
    for (size_t i = 0; i < dc.n; i++)
        assert_memory_equal(dc.x + i * 20, ds.x + iid.indices[N - 1][i] * 20, 20 * sizeof(float));
    fedge_dataset_free(&dc);

    fedge_partition_free(&p);
    fedge_partition_free(&iid);
    free_synthetic(&ds);
}

static void test_seeds(void **state)
{
    (void)state;
    static const fedge_partition_kind kinds[] = {FEDGE_PARTITION_IID, FEDGE_PARTITION_DIRICHLET,
                                                 FEDGE_PARTITION_QUANTITY};
    fedge_dataset ds;
    make_synthetic(&ds, 5000);
    for (size_t k = 0; k < 3; k++) {
        fedge_partition a, b, c;
        make(&ds, kinds[k], 8, 0.5, 10, 77, &a);
        make(&ds, kinds[k], 8, 0.5, 10, 77, &b);
        make(&ds, kinds[k], 8, 0.5, 10, 78, &c);
        assert_true(same_partition(&a, &b));
        assert_false(same_partition(&a, &c));
        fedge_partition_free(&a);
        fedge_partition_free(&b);
        fedge_partition_free(&c);
    }

    /* Label-quantity skew: same seed, same labels and rows. */
    fedge_partition a = make_labels(&ds, 8, 3, 77), b = make_labels(&ds, 8, 3, 77),
                    c = make_labels(&ds, 8, 3, 78);
    assert_true(same_partition(&a, &b));
    assert_false(same_partition(&a, &c));
    fedge_partition_free(&a);
    fedge_partition_free(&b);
    fedge_partition_free(&c);

    /* Feature noise: same seed, same noisy features; another seed differs. */
    fedge_partition_config cfg = {.kind = FEDGE_PARTITION_NOISE, .n_clients = 4, .min_size = 1,
                                  .seed = 5, .noise_sigma = 0.3};
    assert_int_equal(fedge_partition_make(&ds, &cfg, &a), FEDGE_OK);
    fedge_dataset d1 = {0}, d2 = {0}, d3 = {0};
    assert_int_equal(fedge_partition_client_data(&ds, &a, &cfg, 3, 0, &d1), FEDGE_OK);
    assert_int_equal(fedge_partition_client_data(&ds, &a, &cfg, 3, 0, &d2), FEDGE_OK);
    assert_memory_equal(d1.x, d2.x, d1.n * sizeof(float));
    cfg.seed = 6;
    assert_int_equal(fedge_partition_client_data(&ds, &a, &cfg, 3, 0, &d3), FEDGE_OK);
    assert_true(memcmp(d1.x, d3.x, d1.n * sizeof(float)) != 0);
    fedge_dataset_free(&d1);
    fedge_dataset_free(&d2);
    fedge_dataset_free(&d3);
    fedge_partition_free(&a);
    free_synthetic(&ds);
}

static void test_fashion_mnist(void **state)
{
    (void)state;
    fedge_dataset ds;
    assert_int_equal(fedge_dataset_load_fashion_mnist(&ds, NULL, 1), FEDGE_OK);
    assert_int_equal(ds.n, 60000);
    assert_int_equal(ds.n_classes, 10);
    fedge_partition p, q;

    make(&ds, FEDGE_PARTITION_IID, 10, 0.0, 10, 1, &p);
    double tv_iid = mean_tv(&p, &ds);
    fedge_partition_free(&p);

    static const double betas[] = {0.1, 0.5, 1.0, 100.0};
    double tv_dir[4];
    for (int b = 0; b < 4; b++) {
        make(&ds, FEDGE_PARTITION_DIRICHLET, 10, betas[b], 10, 1, &p);
        tv_dir[b] = mean_tv(&p, &ds);
        fedge_partition_free(&p);
    }
    make(&ds, FEDGE_PARTITION_DIRICHLET, 100, 0.1, 10, 1, &p);
    double tv_dir100 = mean_tv(&p, &ds);
    fedge_partition_free(&p);

    make(&ds, FEDGE_PARTITION_QUANTITY, 10, 0.5, 10, 1, &p);
    double cv_q = size_cv(&p), wtv_q = weighted_tv(&p, &ds);
    /* Same seed, same shards; another seed, others. */
    make(&ds, FEDGE_PARTITION_QUANTITY, 10, 0.5, 10, 1, &q);
    assert_true(same_partition(&p, &q));
    fedge_partition_free(&q);
    make(&ds, FEDGE_PARTITION_QUANTITY, 10, 0.5, 10, 2, &q);
    assert_false(same_partition(&p, &q));
    fedge_partition_free(&q);
    fedge_partition_free(&p);

    /* NIID-Bench's #C=2 and #C=3 on the real set: 10 clients, every row placed. */
    double tv_c[2];
    for (int k = 2; k <= 3; k++) {
        p = make_labels(&ds, 10, k, 1);
        check_labels(&p, &ds, k);
        tv_c[k - 2] = mean_tv(&p, &ds);
        fedge_partition_free(&p);
    }
    print_message("  Fashion-MNIST train, 10 clients: #C=2 TV %.4f, #C=3 TV %.4f\n", tv_c[0],
                  tv_c[1]);
    assert_true(tv_c[0] > tv_c[1] && tv_c[1] > tv_dir[3]);

    print_message("  Fashion-MNIST train, 10 clients: IID TV %.4f | Dirichlet TV beta 0.1 %.4f, "
                  "0.5 %.4f, 1 %.4f, 100 %.4f | 100 clients beta 0.1 TV %.4f | quantity 0.5 "
                  "size CV %.3f weighted TV %.4f\n",
                  tv_iid, tv_dir[0], tv_dir[1], tv_dir[2], tv_dir[3], tv_dir100, cv_q, wtv_q);
    assert_true(tv_iid < 0.03);
    assert_true(tv_dir[0] > 0.5);
    assert_true(tv_dir[3] < 0.05);
    assert_true(tv_dir[0] > tv_dir[1] && tv_dir[1] > tv_dir[2] && tv_dir[2] > tv_dir[3]);
    assert_true(tv_dir100 > 0.5);
    assert_true(cv_q > 0.3);
    assert_true(wtv_q < 0.03);
    fedge_dataset_free(&ds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_kind),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_iid),
        cmocka_unit_test(test_dirichlet_skew_follows_beta),
        cmocka_unit_test(test_dirichlet_min_size),
        cmocka_unit_test(test_dirichlet_tiny_beta_is_extreme),
        cmocka_unit_test(test_quantity),
        cmocka_unit_test(test_labels_small),
        cmocka_unit_test(test_noise),
        cmocka_unit_test(test_seeds),
        cmocka_unit_test(test_fashion_mnist),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
