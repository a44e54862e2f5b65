/* test_partition.c — IID, Dirichlet and quantity splits on synthetic data and
 * on the real Fashion-MNIST training set: coverage, sizes, skew, seeds. */
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
        cmocka_unit_test(test_seeds),
        cmocka_unit_test(test_fashion_mnist),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
