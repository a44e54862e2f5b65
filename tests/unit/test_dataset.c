/* test_dataset.c — the real Fashion-MNIST files, IDX files written here (good
 * and broken in one way each), CSV files, standardisation and head views. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include "common.h"
#include "dataset.h"

static char tmpdir[64];

static int setup_dir(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/fedge-test-dataset-XXXXXX");
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int remove_dir(void **state)
{
    (void)state;
    static const char *names[] = {"img", "lbl", "img.gz", "lbl.gz", "cut.gz", "data.csv"};
    char path[128];
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(names); i++) {
        snprintf(path, sizeof path, "%s/%s", tmpdir, names[i]);
        unlink(path);
    }
    return rmdir(tmpdir);
}

static const char *tmp_path(const char *name)
{
    static char paths[4][128];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, 128, "%s/%s", tmpdir, name);
    return p;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void write_file(const char *path, const uint8_t *data, size_t len, int gz)
{
    if (gz) {
        gzFile f = gzopen(path, "wb");
        assert_non_null(f);
        if (len > 0)
            assert_int_equal(gzwrite(f, data, (unsigned)len), (int)len);
        assert_int_equal(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(data, 1, len, f), len);
        assert_int_equal(fclose(f), 0);
    }
}

/* An IDX image file: magic, n, rows, cols (as given), then `payload` pixel
 * bytes i*7 mod 256. Returns its total length. */
static size_t idx_images(uint8_t *buf, uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols,
                         size_t payload)
{
    put_be32(buf, magic);
    put_be32(buf + 4, n);
    put_be32(buf + 8, rows);
    put_be32(buf + 12, cols);
    for (size_t i = 0; i < payload; i++)
        buf[16 + i] = (uint8_t)(i * 7);
    return 16 + payload;
}

static size_t idx_labels(uint8_t *buf, uint32_t magic, uint32_t n, const uint8_t *labels,
                         size_t count)
{
    put_be32(buf, magic);
    put_be32(buf + 4, n);
    memcpy(buf + 8, labels, count);
    return 8 + count;
}

static const uint8_t good_labels[5] = {3, 0, 7, 3, 1};

/* The 5-image 2x3 files, raw or gzip. */
static void write_good_pair(int gz)
{
    uint8_t img[64], lbl[16];
    size_t ni = idx_images(img, 0x803, 5, 2, 3, 30);
    size_t nl = idx_labels(lbl, 0x801, 5, good_labels, 5);
    write_file(tmp_path(gz ? "img.gz" : "img"), img, ni, gz);
    write_file(tmp_path(gz ? "lbl.gz" : "lbl"), lbl, nl, gz);
}

static void test_fashion_mnist(void **state)
{
    (void)state;
    fedge_dataset train, test;
    assert_int_equal(fedge_dataset_load_fashion_mnist(&train, NULL, 1), FEDGE_OK);
    assert_int_equal(fedge_dataset_load_fashion_mnist(&test, FEDGE_FASHION_MNIST_DIR, 0), FEDGE_OK);
    assert_int_equal(train.n, 60000);
    assert_int_equal(test.n, 10000);
    assert_int_equal(train.dim, 784);
    assert_int_equal(test.dim, 784);
    assert_int_equal(train.n_classes, 10);
    assert_int_equal(test.n_classes, 10);

    /* balanced classes: 6000 / 1000 each */
    size_t count[10] = {0}, tcount[10] = {0};
    for (size_t i = 0; i < train.n; i++) {
        assert_true(train.y[i] < 10);
        count[train.y[i]]++;
    }
    for (size_t i = 0; i < test.n; i++) {
        assert_true(test.y[i] < 10);
        tcount[test.y[i]]++;
    }
    for (int c = 0; c < 10; c++) {
        assert_int_equal(count[c], 6000);
        assert_int_equal(tcount[c], 1000);
    }
    float lo = 1.0f, hi = 0.0f;
    for (size_t i = 0; i < train.n * 784; i++) {
        lo = train.x[i] < lo ? train.x[i] : lo;
        hi = train.x[i] > hi ? train.x[i] : hi;
    }
    assert_true(lo == 0.0f);
    assert_true(hi == 1.0f);

    float mean, std;
    fedge_dataset_stats(&train, &mean, &std);
    assert_true(mean > 0.2f && mean < 0.4f); /* Fashion-MNIST: 0.286, 0.353 */
    assert_true(std > 0.3f && std < 0.4f);

    fedge_dataset head = fedge_dataset_head(&test, 100);
    assert_int_equal(head.n, 100);
    assert_ptr_equal(head.x, test.x);
    assert_ptr_equal(head.y, test.y);
    head = fedge_dataset_head(&test, 20000);
    assert_int_equal(head.n, 10000);

    fedge_dataset_free(&train);
    fedge_dataset_free(&test);
    assert_null(train.x);
    fedge_dataset_free(&train);

    fedge_dataset none;
    assert_int_equal(fedge_dataset_load_fashion_mnist(&none, tmpdir, 1), FEDGE_ERR_NOT_FOUND);
}

static void test_idx_good_raw_and_gzip(void **state)
{
    (void)state;
    for (int gz = 0; gz < 2; gz++) {
        write_good_pair(gz);
        fedge_dataset ds;
        assert_int_equal(fedge_dataset_load_idx(&ds, tmp_path(gz ? "img.gz" : "img"),
                                                tmp_path(gz ? "lbl.gz" : "lbl")),
                         FEDGE_OK);
        assert_int_equal(ds.n, 5);
        assert_int_equal(ds.dim, 6);
        assert_int_equal(ds.n_classes, 8);
        assert_memory_equal(ds.y, good_labels, 5);
        for (int i = 0; i < 30; i++)
            assert_float_equal(ds.x[i], (float)(uint8_t)(i * 7) / 255.0f, 1e-7);
        fedge_dataset_free(&ds);
    }
}

/* One broken file at a time against a good partner; the result code is the
 * specific one and *ds is left exactly as it was. */
static void expect_idx(const uint8_t *img, size_t ni, int img_gz, const uint8_t *lbl, size_t nl,
                       int want, const char *what)
{
    const char *ip = tmp_path(img_gz ? "img.gz" : "img");
    write_file(ip, img, ni, img_gz);
    write_file(tmp_path("lbl"), lbl, nl, 0);
    fedge_dataset ds;
    memset(&ds, 0xa5, sizeof ds);
    fedge_dataset before = ds;
    int ret = fedge_dataset_load_idx(&ds, ip, tmp_path("lbl"));
    if (ret != want)
        fail_msg("%s: got %d, want %d", what, ret, want);
    assert_memory_equal(&ds, &before, sizeof ds);
}

static void test_idx_bad(void **state)
{
    (void)state;
    uint8_t img[128], lbl[32];
    size_t ni, nl;
    nl = idx_labels(lbl, 0x801, 5, good_labels, 5);

    ni = idx_images(img, 0x803, 5, 2, 3, 29);
    expect_idx(img, ni, 0, lbl, nl, FEDGE_ERR_DATA_TRUNCATED, "images one byte short");
    expect_idx(img, ni, 1, lbl, nl, FEDGE_ERR_DATA_TRUNCATED, "gzip images one byte short");
    expect_idx(img, 10, 0, lbl, nl, FEDGE_ERR_DATA_TRUNCATED, "header cut");
    expect_idx(img, 0, 0, lbl, nl, FEDGE_ERR_DATA_TRUNCATED, "empty file");
    ni = idx_images(img, 0x803, 5, 2, 3, 30);
    expect_idx(img, ni, 0, lbl, nl - 1, FEDGE_ERR_DATA_TRUNCATED, "labels one short");
    /* a header that claims the maximum row count over a 30-byte payload */
    ni = idx_images(img, 0x803, FEDGE_DATASET_MAX_ROWS, 2, 3, 30);
    uint8_t big_lbl[16];
    size_t nbl = idx_labels(big_lbl, 0x801, FEDGE_DATASET_MAX_ROWS, good_labels, 5);
    expect_idx(img, ni, 1, big_lbl, nbl, FEDGE_ERR_DATA_TRUNCATED, "lying row count");

    ni = idx_images(img, 0x801, 5, 2, 3, 30);
    expect_idx(img, ni, 0, lbl, nl, FEDGE_ERR_DATA_FORMAT, "labels magic on images");
    ni = idx_images(img, 0x0803 | 0x01000000, 5, 2, 3, 30);
    expect_idx(img, ni, 1, lbl, nl, FEDGE_ERR_DATA_FORMAT, "bad magic");
    ni = idx_images(img, 0x803, 5, 2, 3, 30);
    uint8_t bad_lbl[16];
    size_t nbad = idx_labels(bad_lbl, 0x803, 5, good_labels, 5);
    expect_idx(img, ni, 0, bad_lbl, nbad, FEDGE_ERR_DATA_FORMAT, "images magic on labels");
    ni = idx_images(img, 0x803, 5, 2, 3, 31);
    expect_idx(img, ni, 0, lbl, nl, FEDGE_ERR_DATA_FORMAT, "a byte after the payload");

    /* labels are bytes, so >= 256 cannot be written; counts can disagree */
    ni = idx_images(img, 0x803, 4, 2, 3, 24);
    expect_idx(img, ni, 0, lbl, nl, FEDGE_ERR_DATA_MISMATCH, "4 images, 5 labels");
    ni = idx_images(img, 0x803, 6, 2, 3, 36);
    expect_idx(img, ni, 1, lbl, nl, FEDGE_ERR_DATA_MISMATCH, "6 images, 5 labels");

    ni = idx_images(img, 0x803, 0, 2, 3, 0);
    uint8_t zero_lbl[8];
    size_t nz = idx_labels(zero_lbl, 0x801, 0, good_labels, 0);
    expect_idx(img, ni, 0, zero_lbl, nz, FEDGE_ERR_RANGE, "zero rows");
    ni = idx_images(img, 0x803, 5, 0, 3, 0);
    expect_idx(img, ni, 0, lbl, nl, FEDGE_ERR_RANGE, "zero-height images");
    ni = idx_images(img, 0x803, 5, 257, 256, 30);
    expect_idx(img, ni, 0, lbl, nl, FEDGE_ERR_RANGE, "oversized images");
    ni = idx_images(img, 0x803, 0xffffffffu, 2, 3, 30);
    expect_idx(img, ni, 0, lbl, nl, FEDGE_ERR_RANGE, "too many rows");

    /* a gzip stream cut in the middle */
    uint8_t large[16 + 3000];
    size_t nlarge = idx_images(large, 0x803, 5, 20, 30, 3000);
    write_file(tmp_path("img.gz"), large, nlarge, 1);
    FILE *f = fopen(tmp_path("img.gz"), "rb");
    assert_non_null(f);
    uint8_t comp[8192];
    size_t nc = fread(comp, 1, sizeof comp, f);
    fclose(f);
    assert_true(nc > 40);
    write_file(tmp_path("cut.gz"), comp, nc / 2, 0);
    write_file(tmp_path("lbl"), lbl, nl, 0);
    fedge_dataset ds;
    assert_int_equal(fedge_dataset_load_idx(&ds, tmp_path("cut.gz"), tmp_path("lbl")),
                     FEDGE_ERR_DATA_TRUNCATED);

    assert_int_equal(fedge_dataset_load_idx(&ds, tmp_path("nothing"), tmp_path("lbl")),
                     FEDGE_ERR_NOT_FOUND);
    assert_int_equal(fedge_dataset_load_idx(&ds, NULL, tmp_path("lbl")), FEDGE_ERR_INVALID_ARG);
}

static void write_text(const char *text)
{
    write_file(tmp_path("data.csv"), (const uint8_t *)text, strlen(text), 0);
}

static void test_csv_good(void **state)
{
    (void)state;
    fedge_dataset ds;
    write_text("label,a,b,c\n2,0.5,-1,3e2\n0, 1.25,2 ,0\r\n\n1,-0.0,7,8");
    assert_int_equal(fedge_dataset_load_csv(&ds, tmp_path("data.csv")), FEDGE_OK);
    assert_int_equal(ds.n, 3);
    assert_int_equal(ds.dim, 3);
    assert_int_equal(ds.n_classes, 3);
    static const float want[9] = {0.5f, -1.0f, 300.0f, 1.25f, 2.0f, 0.0f, -0.0f, 7.0f, 8.0f};
    assert_memory_equal(ds.x, want, sizeof want);
    assert_int_equal(ds.y[0], 2);
    assert_int_equal(ds.y[1], 0);
    assert_int_equal(ds.y[2], 1);
    fedge_dataset_free(&ds);

    /* no header, one class present: n_classes is still 2 */
    write_text("0,1\n0,2\n");
    assert_int_equal(fedge_dataset_load_csv(&ds, tmp_path("data.csv")), FEDGE_OK);
    assert_int_equal(ds.n, 2);
    assert_int_equal(ds.dim, 1);
    assert_int_equal(ds.n_classes, 2);
    fedge_dataset_free(&ds);

    /* enough rows to grow the buffers a few times */
    FILE *f = fopen(tmp_path("data.csv"), "w");
    assert_non_null(f);
    for (int i = 0; i < 5000; i++)
        fprintf(f, "%d,%d,%d\n", i % 4, i, -i);
    fclose(f);
    assert_int_equal(fedge_dataset_load_csv(&ds, tmp_path("data.csv")), FEDGE_OK);
    assert_int_equal(ds.n, 5000);
    assert_int_equal(ds.n_classes, 4);
    assert_true(ds.x[2 * 4999] == 4999.0f && ds.x[2 * 4999 + 1] == -4999.0f);
    fedge_dataset_free(&ds);
}

static void test_csv_bad(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int want;
    } cases[] = {
        {"", FEDGE_ERR_DATA_FORMAT},
        {"label,a,b\n", FEDGE_ERR_DATA_FORMAT},          /* header only */
        {"1\n2\n", FEDGE_ERR_DATA_FORMAT},                /* no features */
        {"1,2,3\n0,4\n", FEDGE_ERR_DATA_FORMAT},          /* short row */
        {"1,2,3\n0,4,5,6\n", FEDGE_ERR_DATA_FORMAT},      /* long row */
        {"1,2,3\n0,4,x\n", FEDGE_ERR_DATA_FORMAT},        /* non-numeric */
        {"1,2,3\n0,4,5x\n", FEDGE_ERR_DATA_FORMAT},
        {"1,2,3\n0,4,\n", FEDGE_ERR_DATA_FORMAT},         /* empty field */
        {"1,2,nan\n", FEDGE_ERR_DATA_FORMAT},             /* non-finite */
        {"1,2,1e999\n", FEDGE_ERR_DATA_FORMAT},
        {"1,2,3\n256,4,5\n", FEDGE_ERR_DATA_LABEL},
        {"1,2,3\n-1,4,5\n", FEDGE_ERR_DATA_LABEL},
        {"1,2,3\n1.5,4,5\n", FEDGE_ERR_DATA_LABEL},
        {"1,2,3\ncat,4,5\n", FEDGE_ERR_DATA_LABEL},       /* only the first line may be a header */
        {"1,2,3\n,4,5\n", FEDGE_ERR_DATA_LABEL},
    };
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(cases); i++) {
        write_text(cases[i].text);
        fedge_dataset ds;
        memset(&ds, 0x3c, sizeof ds);
        fedge_dataset before = ds;
        int ret = fedge_dataset_load_csv(&ds, tmp_path("data.csv"));
        if (ret != cases[i].want)
            fail_msg("csv case %zu: got %d, want %d", i, ret, cases[i].want);
        assert_memory_equal(&ds, &before, sizeof ds);
    }
    fedge_dataset ds;
    assert_int_equal(fedge_dataset_load_csv(&ds, tmp_path("missing.csv")), FEDGE_ERR_NOT_FOUND);
}

static void test_stats_normalize(void **state)
{
    (void)state;
    float x[6] = {1, 2, 3, 4, 5, 9};
    uint8_t y[3] = {0, 1, 0};
    fedge_dataset ds = {.n = 3, .dim = 2, .n_classes = 2, .x = x, .y = y};
    float mean, std;
    fedge_dataset_stats(&ds, &mean, &std);
    assert_float_equal(mean, 4.0f, 1e-6);
    assert_float_equal(std, sqrtf(40.0f / 6.0f), 1e-5); /* population std */
    fedge_dataset_normalize(&ds, mean, std);
    double s1 = 0, s2 = 0;
    for (int i = 0; i < 6; i++) {
        s1 += x[i];
        s2 += (double)x[i] * x[i];
    }
    assert_true(fabs(s1 / 6) < 1e-6);
    assert_true(fabs(s2 / 6 - 1.0) < 1e-5);

    float c[4] = {2, 2, 2, 2};
    fedge_dataset cds = {.n = 2, .dim = 2, .n_classes = 2, .x = c, .y = y};
    fedge_dataset_stats(&cds, &mean, &std);
    assert_float_equal(mean, 2.0f, 0.0);
    assert_float_equal(std, 1.0f, 0.0); /* constant features: std 1, no division by 0 */
    fedge_dataset_normalize(&cds, mean, std);
    for (int i = 0; i < 4; i++)
        assert_true(c[i] == 0.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fashion_mnist),
        cmocka_unit_test(test_idx_good_raw_and_gzip),
        cmocka_unit_test(test_idx_bad),
        cmocka_unit_test(test_csv_good),
        cmocka_unit_test(test_csv_bad),
        cmocka_unit_test(test_stats_normalize),
    };
    return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
