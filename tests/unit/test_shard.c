/* test_shard.c — shard files: round trips, the on-the-fly permutation,
 * batch boundaries, bounded reader memory, and every malformed file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "error.h"
#include "shard.h"

#define HEADER_LEN 32
#define HASH_LEN 32

/* ---- fixtures ------------------------------------------------------------- */

static char tmp_dir[64];

static int setup(void **state)
{
    (void)state;
    strcpy(tmp_dir, "/tmp/fedge-shard-XXXXXX");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    DIR *d = opendir(tmp_dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(p, sizeof p, "%s/%s", tmp_dir, e->d_name);
            if (unlink(p) != 0)
                rmdir(p);
        }
        closedir(d);
    }
    return rmdir(tmp_dir);
}

static void path_in_tmp(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmp_dir, name);
}

static int count_dir_entries(void)
{
    int c = 0;
    DIR *d = opendir(tmp_dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            c++;
    closedir(d);
    return c;
}

/* u8-representable features (k / 255), labels i % n_classes. */
static void make_u8_dataset(fedge_dataset *ds, size_t n, int dim, int n_classes)
{
    ds->n = n;
    ds->dim = dim;
    ds->n_classes = n_classes;
    ds->x = malloc(n * (size_t)dim * sizeof(float));
    ds->y = malloc(n);
    assert_non_null(ds->x);
    assert_non_null(ds->y);
    for (size_t i = 0; i < n; i++) {
        ds->y[i] = (uint8_t)(i % (size_t)n_classes);
        for (int j = 0; j < dim; j++)
            ds->x[i * (size_t)dim + (size_t)j] = (float)((i * 31 + (size_t)j * 7) % 256) * FEDGE_SHARD_U8_SCALE;
    }
}

/* f32 features; feature 0 is the row number, so a record names itself. */
static void make_f32_dataset(fedge_dataset *ds, size_t n, int dim, int n_classes)
{
    ds->n = n;
    ds->dim = dim;
    ds->n_classes = n_classes;
    ds->x = malloc(n * (size_t)dim * sizeof(float));
    ds->y = malloc(n);
    assert_non_null(ds->x);
    assert_non_null(ds->y);
    for (size_t i = 0; i < n; i++) {
        ds->y[i] = (uint8_t)((i * 7) % (size_t)n_classes);
        ds->x[i * (size_t)dim] = (float)i;
        for (int j = 1; j < dim; j++)
            ds->x[i * (size_t)dim + (size_t)j] = (float)(sin((double)(i + 1) * j) * 1e3) - 1e-7f;
    }
}

static void free_dataset(fedge_dataset *ds)
{
    free(ds->x);
    free(ds->y);
    memset(ds, 0, sizeof *ds);
}

static size_t *iota(size_t n)
{
    size_t *idx = malloc((n ? n : 1) * sizeof *idx);
    assert_non_null(idx);
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    return idx;
}

static long file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (long)st.st_size;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*len ? *len : 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static void write_file(const char *path, const uint8_t *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, len, f), len);
    fclose(f);
}

/* Reads one whole epoch, returning the rows' feature-0 values as indices. */
static void read_epoch_ids(fedge_shard_reader *r, int shuffle, uint64_t seed, int batch,
                           uint64_t *ids)
{
    float *x = malloc((size_t)batch * (size_t)r->dim * sizeof(float));
    uint8_t *y = malloc((size_t)batch);
    assert_non_null(x);
    assert_non_null(y);
    fedge_shard_rewind(r, shuffle, seed);
    uint64_t total = 0;
    int got;
    for (;;) {
        assert_int_equal(fedge_shard_next_batch(r, batch, x, y, &got), FEDGE_OK);
        if (got == 0)
            break;
        for (int i = 0; i < got; i++)
            ids[total++] = (uint64_t)x[(size_t)i * (size_t)r->dim];
        assert_true(total <= r->n);
    }
    assert_int_equal(total, r->n);
    assert_int_equal(r->pos, r->n);
    /* The epoch stays finished. */
    assert_int_equal(fedge_shard_next_batch(r, batch, x, y, &got), FEDGE_OK);
    assert_int_equal(got, 0);
    free(x);
    free(y);
}

/* ---- round trips ---------------------------------------------------------- */

static void test_roundtrip_u8(void **state)
{
    (void)state;
    char path[256];
    path_in_tmp(path, sizeof path, "u8.bin");
    fedge_dataset ds, back;
    make_u8_dataset(&ds, 257, 5, 10);
    size_t idx[257];
    for (size_t i = 0; i < 257; i++)
        idx[i] = 256 - i;

    assert_int_equal(fedge_shard_write(path, &ds, idx, 257, FEDGE_SHARD_U8), FEDGE_OK);
    assert_int_equal(file_size(path), HEADER_LEN + 257 * (1 + 5) + HASH_LEN);
    assert_int_equal(fedge_shard_verify(path), FEDGE_OK);

    assert_int_equal(fedge_shard_load(path, &back), FEDGE_OK);
    assert_int_equal(back.n, 257);
    assert_int_equal(back.dim, 5);
    assert_int_equal(back.n_classes, 10);
    for (size_t i = 0; i < 257; i++) {
        assert_int_equal(back.y[i], ds.y[idx[i]]);
        assert_memory_equal(back.x + i * 5, ds.x + idx[i] * 5, 5 * sizeof(float));
    }

    fedge_shard_reader r;
    assert_int_equal(fedge_shard_open(&r, path), FEDGE_OK);
    assert_int_equal(r.feature_type, FEDGE_SHARD_U8);
    float x[16 * 5];
    uint8_t y[16];
    int got;
    size_t row = 0;
    do {
        assert_int_equal(fedge_shard_next_batch(&r, 16, x, y, &got), FEDGE_OK);
        for (int i = 0; i < got; i++, row++) {
            assert_int_equal(y[i], back.y[row]);
            assert_memory_equal(x + i * 5, back.x + row * 5, 5 * sizeof(float));
        }
    } while (got > 0);
    assert_int_equal(row, 257);
    /* the same rows as stored (fedge_shard_next_batch_u8): each byte times
     * FEDGE_SHARD_U8_SCALE is the float the reader gives */
    fedge_shard_rewind(&r, 0, 0);
    uint8_t xu[16 * 5];
    row = 0;
    do {
        assert_int_equal(fedge_shard_next_batch_u8(&r, 16, xu, y, &got), FEDGE_OK);
        for (int i = 0; i < got; i++, row++) {
            assert_int_equal(y[i], back.y[row]);
            for (int j = 0; j < 5; j++)
                assert_true((float)xu[i * 5 + j] * FEDGE_SHARD_U8_SCALE == back.x[row * 5 + j]);
        }
    } while (got > 0);
    assert_int_equal(row, 257);
    assert_int_equal(fedge_shard_next_batch_u8(&r, 16, NULL, y, &got), FEDGE_ERR_INVALID_ARG);
    fedge_shard_close(&r);
    assert_int_equal(r.fd, -1);
    assert_null(r.record);
    fedge_shard_close(&r); /* twice is harmless */

    fedge_dataset_free(&back);
    free_dataset(&ds);
}

static void test_roundtrip_f32(void **state)
{
    (void)state;
    char path[256];
    path_in_tmp(path, sizeof path, "f32.bin");
    fedge_dataset ds, back;
    make_f32_dataset(&ds, 300, 7, 3);
    ds.x[7 * 5 + 1] = -0.0f;
    ds.x[7 * 6 + 2] = 1e-38f;
    ds.x[7 * 8 + 3] = -3.4e38f;
    size_t idx[100];
    for (size_t i = 0; i < 100; i++)
        idx[i] = i * 3;

    assert_int_equal(fedge_shard_write(path, &ds, idx, 100, FEDGE_SHARD_F32), FEDGE_OK);
    assert_int_equal(file_size(path), HEADER_LEN + 100 * (1 + 4 * 7) + HASH_LEN);
    assert_int_equal(fedge_shard_verify(path), FEDGE_OK);
    assert_int_equal(fedge_shard_load(path, &back), FEDGE_OK);
    assert_int_equal(back.n, 100);
    assert_int_equal(back.dim, 7);
    assert_int_equal(back.n_classes, 3);
    for (size_t i = 0; i < 100; i++) {
        assert_int_equal(back.y[i], ds.y[idx[i]]);
        assert_memory_equal(back.x + i * 7, ds.x + idx[i] * 7, 7 * sizeof(float));
    }
    fedge_shard_reader r;
    uint8_t xu[7], y;
    int got = -1;
    assert_int_equal(fedge_shard_open(&r, path), FEDGE_OK);
    assert_int_equal(fedge_shard_next_batch_u8(&r, 1, xu, &y, &got), FEDGE_ERR_STATE); /* f32 */
    assert_int_equal(got, 0);
    fedge_shard_close(&r);
    fedge_dataset_free(&back);
    free_dataset(&ds);
}

/* ---- the permutation ------------------------------------------------------ */

static void test_epoch_visits_every_record_once(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 2, 3, 4, 5, 7, 8, 9, 31, 100, 1000, 1025, 4097};
    char path[256];
    path_in_tmp(path, sizeof path, "perm.bin");

    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = sizes[s];
        fedge_dataset ds;
        make_f32_dataset(&ds, n, 2, 4);
        size_t *idx = iota(n);
        assert_int_equal(fedge_shard_write(path, &ds, idx, n, FEDGE_SHARD_F32), FEDGE_OK);

        fedge_shard_reader r;
        assert_int_equal(fedge_shard_open(&r, path), FEDGE_OK);
        uint64_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
        uint8_t *seen = calloc(n, 1);
        assert_non_null(a);
        assert_non_null(b);
        assert_non_null(seen);

        /* Unshuffled: file order. */
        read_epoch_ids(&r, 0, 99, 5, a);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(a[i], i);

        /* Shuffled: a permutation of [0, n). */
        read_epoch_ids(&r, 1, 42, 7, a);
        for (size_t i = 0; i < n; i++) {
            assert_true(a[i] < n);
            assert_int_equal(seen[a[i]], 0);
            seen[a[i]] = 1;
        }

        /* Same seed, same order, whatever the batch size. */
        read_epoch_ids(&r, 1, 42, 64, b);
        assert_memory_equal(a, b, n * sizeof *a);

        /* Another seed, another order (certain enough from n = 8 on). */
        if (n >= 8) {
            read_epoch_ids(&r, 1, 43, 7, b);
            assert_memory_not_equal(a, b, n * sizeof *a);
        }

        if (n == 1000) {
            /* Looks shuffled: few fixed points, about half the steps rise. */
            size_t fixed = 0, rises = 0;
            for (size_t i = 0; i < n; i++) {
                fixed += a[i] == i;
                rises += i > 0 && a[i] > a[i - 1];
            }
            assert_true(fixed < 10);
            assert_true(rises > 400 && rises < 600);
            /* 50 seeds give 50 different first records often enough:
             * at least 40 distinct values out of 1000 possible. */
            uint8_t first_seen[1000] = {0};
            int distinct = 0;
            for (uint64_t seed = 0; seed < 50; seed++) {
                read_epoch_ids(&r, 1, seed, 1000, b);
                distinct += first_seen[b[0]] == 0;
                first_seen[b[0]] = 1;
            }
            assert_true(distinct >= 40);
        }

        fedge_shard_close(&r);
        free(a);
        free(b);
        free(seen);
        free(idx);
        free_dataset(&ds);
    }
}

static void test_batch_boundaries(void **state)
{
    (void)state;
    char path[256];
    path_in_tmp(path, sizeof path, "batch.bin");
    fedge_dataset ds;
    make_f32_dataset(&ds, 10, 3, 2);
    size_t *idx = iota(10);
    assert_int_equal(fedge_shard_write(path, &ds, idx, 10, FEDGE_SHARD_F32), FEDGE_OK);

    fedge_shard_reader r;
    assert_int_equal(fedge_shard_open(&r, path), FEDGE_OK);
    float x[64 * 3];
    uint8_t y[64];
    int got;

    static const int expect3[] = {3, 3, 3, 1, 0, 0};
    fedge_shard_rewind(&r, 1, 7);
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(fedge_shard_next_batch(&r, 3, x, y, &got), FEDGE_OK);
        assert_int_equal(got, expect3[i]);
    }
    fedge_shard_rewind(&r, 0, 0);
    assert_int_equal(fedge_shard_next_batch(&r, 10, x, y, &got), FEDGE_OK);
    assert_int_equal(got, 10);
    assert_int_equal(fedge_shard_next_batch(&r, 10, x, y, &got), FEDGE_OK);
    assert_int_equal(got, 0);
    fedge_shard_rewind(&r, 1, 7);
    assert_int_equal(fedge_shard_next_batch(&r, 64, x, y, &got), FEDGE_OK);
    assert_int_equal(got, 10);
    for (int i = 0; i < 10; i++) /* label follows its row */
        assert_int_equal(y[i], ds.y[(size_t)x[i * 3]]);
    assert_int_equal(fedge_shard_next_batch(&r, 64, x, y, &got), FEDGE_OK);
    assert_int_equal(got, 0);

    /* Bad calls. */
    fedge_shard_rewind(&r, 0, 0);
    assert_int_equal(fedge_shard_next_batch(&r, 0, x, y, &got), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_shard_next_batch(&r, -1, x, y, &got), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_shard_next_batch(&r, 3, NULL, y, &got), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(r.pos, 0);
    fedge_shard_close(&r);
    assert_int_equal(fedge_shard_next_batch(&r, 3, x, y, &got), FEDGE_ERR_STATE);

    free(idx);
    free_dataset(&ds);
}

/* ---- bounded memory ------------------------------------------------------- */

static void test_reader_memory_is_one_record(void **state)
{
    (void)state;
    char path[256];
    path_in_tmp(path, sizeof path, "big.bin");
    const size_t n = getenv("FEDGE_TEST_QUICK") ? 3000 : 20000;
    const int dim = 784;
    fedge_dataset ds;
    make_u8_dataset(&ds, n, dim, 10);
    size_t *idx = iota(n);
    assert_int_equal(fedge_shard_write(path, &ds, idx, n, FEDGE_SHARD_U8), FEDGE_OK);
    free(idx);
    free_dataset(&ds);

    fedge_shard_reader r;
    assert_int_equal(fedge_shard_open(&r, path), FEDGE_OK);
    assert_int_equal(r.n, n);
    assert_int_equal(r.record_size, 1 + 784);
    assert_non_null(r.record);
    assert_true(malloc_usable_size(r.record) < r.record_size + 64);
    uint8_t *record = r.record;

    float *x = malloc(32 * (size_t)dim * sizeof(float));
    uint8_t y[32];
    assert_non_null(x);
    struct mallinfo2 before = mallinfo2();
    for (int epoch = 0; epoch < 2; epoch++) {
        fedge_shard_rewind(&r, 1, (uint64_t)epoch);
        int got;
        size_t total = 0;
        do {
            assert_int_equal(fedge_shard_next_batch(&r, 32, x, y, &got), FEDGE_OK);
            total += (size_t)got;
        } while (got > 0);
        assert_int_equal(total, n);
    }
    struct mallinfo2 after = mallinfo2();
    /* Two full epochs over an n * 785-byte file allocate nothing new. */
    assert_true(after.uordblks <= before.uordblks + 1024);
    assert_ptr_equal(r.record, record);
    assert_int_equal(r.record_size, 785);
    fedge_shard_close(&r);

    /* An f32 shard's one record is 1 + 4 * dim bytes. */
    make_f32_dataset(&ds, 4, 9, 2);
    idx = iota(4);
    assert_int_equal(fedge_shard_write(path, &ds, idx, 4, FEDGE_SHARD_F32), FEDGE_OK);
    assert_int_equal(fedge_shard_open(&r, path), FEDGE_OK);
    assert_int_equal(r.record_size, 1 + 4 * 9);
    assert_true(malloc_usable_size(r.record) < r.record_size + 64);
    fedge_shard_close(&r);
    free(idx);
    free_dataset(&ds);
    free(x);
}

/* ---- malformed files ------------------------------------------------------ */

static void expect_open_fails(const char *path, int code)
{
    fedge_shard_reader r;
    fedge_dataset ds = {0};
    assert_int_equal(fedge_shard_open(&r, path), code);
    assert_int_equal(r.fd, -1);
    assert_null(r.record);
    fedge_shard_close(&r);
    assert_int_equal(fedge_shard_verify(path), code);
    assert_int_equal(fedge_shard_load(path, &ds), code);
    assert_null(ds.x);
    assert_null(ds.y);
}

/* Rewrites the good file with one edit applied. */
static void write_variant(const char *path, const uint8_t *good, size_t len, size_t at,
                          const uint8_t *bytes, size_t nbytes, size_t new_len)
{
    uint8_t *b = malloc(new_len + 1);
    assert_non_null(b);
    memcpy(b, good, len < new_len ? len : new_len);
    if (new_len > len)
        memset(b + len, 0, new_len - len);
    if (bytes)
        memcpy(b + at, bytes, nbytes);
    write_file(path, b, new_len);
    free(b);
}

static void test_malformed_files(void **state)
{
    (void)state;
    char good_path[256], bad[256];
    path_in_tmp(good_path, sizeof good_path, "good.bin");
    path_in_tmp(bad, sizeof bad, "bad.bin");
    fedge_dataset ds;
    make_f32_dataset(&ds, 20, 4, 3);
    size_t *idx = iota(20);
    assert_int_equal(fedge_shard_write(good_path, &ds, idx, 20, FEDGE_SHARD_F32), FEDGE_OK);
    size_t len;
    uint8_t *good = read_file(good_path, &len);
    const size_t rec = 1 + 4 * 4;
    assert_int_equal(len, HEADER_LEN + 20 * rec + HASH_LEN);

    path_in_tmp(bad, sizeof bad, "missing.bin");
    expect_open_fails(bad, FEDGE_ERR_NOT_FOUND);
    path_in_tmp(bad, sizeof bad, "bad.bin");

    /* Lengths. */
    write_variant(bad, good, len, 0, NULL, 0, 0);
    expect_open_fails(bad, FEDGE_ERR_SHARD_TRUNCATED);
    write_variant(bad, good, len, 0, NULL, 0, 6);
    expect_open_fails(bad, FEDGE_ERR_SHARD_TRUNCATED);
    write_variant(bad, good, len, 0, NULL, 0, 20);
    expect_open_fails(bad, FEDGE_ERR_SHARD_TRUNCATED);
    write_variant(bad, good, len, 0, NULL, 0, len - 1);
    expect_open_fails(bad, FEDGE_ERR_SHARD_TRUNCATED);
    write_variant(bad, good, len, 0, NULL, 0, len - HASH_LEN);
    expect_open_fails(bad, FEDGE_ERR_SHARD_TRUNCATED);
    write_variant(bad, good, len, 0, NULL, 0, len + 1);
    expect_open_fails(bad, FEDGE_ERR_SHARD_OVERSIZED);

    /* Magic and version. */
    write_variant(bad, good, len, 0, (const uint8_t *)"FSHE", 4, len);
    expect_open_fails(bad, FEDGE_ERR_SHARD_MAGIC);
    write_variant(bad, good, len, 0, (const uint8_t *)"MZ", 2, 2);
    expect_open_fails(bad, FEDGE_ERR_SHARD_TRUNCATED);
    const uint8_t v2[4] = {2, 0, 0, 0}, v0[4] = {0, 0, 0, 0};
    write_variant(bad, good, len, 4, v2, 4, len);
    expect_open_fails(bad, FEDGE_ERR_SHARD_VERSION);
    write_variant(bad, good, len, 4, v0, 4, len);
    expect_open_fails(bad, FEDGE_ERR_SHARD_VERSION);

    /* Header fields out of range. */
    const uint8_t zero8[8] = {0}, huge_n[8] = {0, 0, 0, 0, 0, 1, 0, 0};
    const uint8_t n21[8] = {21, 0, 0, 0, 0, 0, 0, 0}, ft2[4] = {2, 0, 0, 0};
    const uint8_t classes300[4] = {0x2c, 0x01, 0, 0}, one[4] = {1, 0, 0, 0};
    write_variant(bad, good, len, 8, zero8, 8, len);   /* n = 0 */
    expect_open_fails(bad, FEDGE_ERR_SHARD_HEADER);
    write_variant(bad, good, len, 8, huge_n, 8, len);  /* n = 2^40 */
    expect_open_fails(bad, FEDGE_ERR_SHARD_HEADER);
    write_variant(bad, good, len, 16, zero8, 4, len);  /* dim = 0 */
    expect_open_fails(bad, FEDGE_ERR_SHARD_HEADER);
    write_variant(bad, good, len, 20, zero8, 4, len);  /* n_classes = 0 */
    expect_open_fails(bad, FEDGE_ERR_SHARD_HEADER);
    write_variant(bad, good, len, 20, classes300, 4, len);
    expect_open_fails(bad, FEDGE_ERR_SHARD_HEADER);
    write_variant(bad, good, len, 24, ft2, 4, len);    /* unknown feature type */
    expect_open_fails(bad, FEDGE_ERR_SHARD_HEADER);
    write_variant(bad, good, len, 28, one, 4, len);    /* reserved != 0 */
    expect_open_fails(bad, FEDGE_ERR_SHARD_HEADER);
    /* Plausible header, wrong length for it. */
    write_variant(bad, good, len, 8, n21, 8, len);
    expect_open_fails(bad, FEDGE_ERR_SHARD_TRUNCATED);
    write_variant(bad, good, len, 24, v0, 4, len);     /* claims u8: file too long */
    expect_open_fails(bad, FEDGE_ERR_SHARD_OVERSIZED);

    /* One corrupted byte: opens (lengths are right), verify and load fail. */
    fedge_shard_reader r;
    fedge_dataset back = {0};
    const size_t corrupt_at[] = {HEADER_LEN + 3 * rec + 2, len - 1, 12};
    for (size_t c = 0; c < 3; c++) {
        uint8_t flipped = good[corrupt_at[c]] ^ 0x10;
        write_variant(bad, good, len, corrupt_at[c], &flipped, 1, len);
        if (corrupt_at[c] != 12) { /* offset 12 is inside n: a length error instead */
            assert_int_equal(fedge_shard_open(&r, bad), FEDGE_OK);
            fedge_shard_close(&r);
            assert_int_equal(fedge_shard_verify(bad), FEDGE_ERR_SHARD_CHECKSUM);
            assert_int_equal(fedge_shard_load(bad, &back), FEDGE_ERR_SHARD_CHECKSUM);
            assert_null(back.x);
        } else {
            expect_open_fails(bad, FEDGE_ERR_SHARD_HEADER);
        }
    }

    /* A label beyond n_classes: the checksum catches it first; a reader that
     * skipped verify still refuses the record. */
    const uint8_t label200 = 200;
    write_variant(bad, good, len, HEADER_LEN + 2 * rec, &label200, 1, len);
    assert_int_equal(fedge_shard_verify(bad), FEDGE_ERR_SHARD_CHECKSUM);
    assert_int_equal(fedge_shard_load(bad, &back), FEDGE_ERR_SHARD_CHECKSUM);
    assert_int_equal(fedge_shard_open(&r, bad), FEDGE_OK);
    float x[20 * 4];
    uint8_t y[20];
    int got;
    assert_int_equal(fedge_shard_next_batch(&r, 20, x, y, &got), FEDGE_ERR_DATA_LABEL);
    assert_int_equal(got, 2); /* the rows before it were delivered */
    fedge_shard_close(&r);

    /* A NaN feature in an f32 record. */
    const uint8_t nan_bits[4] = {0x00, 0x00, 0xc0, 0x7f};
    write_variant(bad, good, len, HEADER_LEN + 5 * rec + 1 + 4, nan_bits, 4, len);
    assert_int_equal(fedge_shard_verify(bad), FEDGE_ERR_SHARD_CHECKSUM);
    assert_int_equal(fedge_shard_open(&r, bad), FEDGE_OK);
    assert_int_equal(fedge_shard_next_batch(&r, 20, x, y, &got), FEDGE_ERR_DATA_FORMAT);
    assert_int_equal(got, 5);
    fedge_shard_close(&r);

    /* The good file is still good. */
    assert_int_equal(fedge_shard_verify(good_path), FEDGE_OK);
    free(good);
    free(idx);
    free_dataset(&ds);
}

/* ---- the writer ----------------------------------------------------------- */

static void test_writer_atomic_and_rejects(void **state)
{
    (void)state;
    char path[256];
    path_in_tmp(path, sizeof path, "atomic.bin");
    fedge_dataset ds;
    make_u8_dataset(&ds, 50, 3, 4);
    size_t *idx = iota(50);
    assert_int_equal(fedge_shard_write(path, &ds, idx, 50, FEDGE_SHARD_U8), FEDGE_OK);
    size_t len0;
    uint8_t *orig = read_file(path, &len0);
    assert_int_equal(count_dir_entries(), 1);

    /* Each bad call fails with its own code and leaves the file alone. */
    size_t bad_idx[2] = {0, 50};
    assert_int_equal(fedge_shard_write(path, &ds, bad_idx, 2, FEDGE_SHARD_U8), FEDGE_ERR_RANGE);
    assert_int_equal(fedge_shard_write(path, &ds, idx, 0, FEDGE_SHARD_U8), FEDGE_ERR_RANGE);
    assert_int_equal(fedge_shard_write(path, &ds, idx, 10, 7), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_shard_write(path, NULL, idx, 10, FEDGE_SHARD_U8),
                     FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_shard_write(path, &ds, NULL, 10, FEDGE_SHARD_U8),
                     FEDGE_ERR_INVALID_ARG);
    ds.y[7] = 4;
    assert_int_equal(fedge_shard_write(path, &ds, idx, 50, FEDGE_SHARD_U8), FEDGE_ERR_DATA_LABEL);
    ds.y[7] = 3;
    ds.x[40 * 3 + 1] = 1.5f; /* not representable as u8 */
    assert_int_equal(fedge_shard_write(path, &ds, idx, 50, FEDGE_SHARD_U8), FEDGE_ERR_RANGE);
    ds.x[40 * 3 + 1] = -0.25f;
    assert_int_equal(fedge_shard_write(path, &ds, idx, 50, FEDGE_SHARD_U8), FEDGE_ERR_RANGE);
    ds.x[40 * 3 + 1] = NAN;
    assert_int_equal(fedge_shard_write(path, &ds, idx, 50, FEDGE_SHARD_U8), FEDGE_ERR_RANGE);
    assert_int_equal(fedge_shard_write(path, &ds, idx, 50, FEDGE_SHARD_F32), FEDGE_ERR_RANGE);
    ds.x[40 * 3 + 1] = 0.5f;
    ds.x[3 * 3 + 2] = 0.5f;
    char nodir[300];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir.bin", tmp_dir);
    assert_int_equal(fedge_shard_write(nodir, &ds, idx, 50, FEDGE_SHARD_U8), FEDGE_ERR_NOT_FOUND);

    /* I/O failures after the temp file exists: the temp file goes, the old
     * file stays. A file-size limit makes write() fail part-way (EFBIG). */
    struct rlimit old_lim, small_lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old_lim), 0);
    small_lim = old_lim;
    small_lim.rlim_cur = 100;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small_lim), 0);
    int io_ret = fedge_shard_write(path, &ds, idx, 50, FEDGE_SHARD_F32);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old_lim), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(io_ret, FEDGE_ERR_IO);
    assert_int_equal(count_dir_entries(), 1);
    /* rename() onto a directory fails after the data was written. */
    char dir_path[300];
    snprintf(dir_path, sizeof dir_path, "%s/sub", tmp_dir);
    assert_int_equal(mkdir(dir_path, 0700), 0);
    assert_int_equal(fedge_shard_write(dir_path, &ds, idx, 50, FEDGE_SHARD_U8), FEDGE_ERR_IO);
    assert_int_equal(count_dir_entries(), 2);
    assert_int_equal(rmdir(dir_path), 0);

    size_t len1;
    uint8_t *now = read_file(path, &len1);
    assert_int_equal(len1, len0);
    assert_memory_equal(now, orig, len0);
    free(now);
    assert_int_equal(count_dir_entries(), 1); /* no temp file left behind */

    /* Overwriting replaces the content in one step. */
    assert_int_equal(fedge_shard_write(path, &ds, idx, 20, FEDGE_SHARD_F32), FEDGE_OK);
    assert_int_equal(count_dir_entries(), 1);
    fedge_dataset back;
    assert_int_equal(fedge_shard_load(path, &back), FEDGE_OK);
    assert_int_equal(back.n, 20);
    assert_int_equal(back.dim, 3);
    assert_memory_equal(back.x, ds.x, 20 * 3 * sizeof(float)); /* f32 keeps 0.5 exactly */
    assert_memory_equal(back.y, ds.y, 20);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    fedge_dataset_free(&back);

    free(orig);
    free(idx);
    free_dataset(&ds);
}

/* ---- real data ------------------------------------------------------------ */

static void test_fashion_mnist_roundtrip(void **state)
{
    (void)state;
    char path[256];
    path_in_tmp(path, sizeof path, "fmnist-test.bin");
    fedge_dataset ds, back;
    assert_int_equal(fedge_dataset_load_fashion_mnist(&ds, NULL, 0), FEDGE_OK);
    assert_int_equal(ds.n, 10000);
    assert_int_equal(ds.dim, 784);
    size_t *idx = iota(ds.n);
    assert_int_equal(fedge_shard_write(path, &ds, idx, ds.n, FEDGE_SHARD_U8), FEDGE_OK);
    assert_int_equal(file_size(path), HEADER_LEN + 10000 * 785 + HASH_LEN);
    assert_int_equal(fedge_shard_verify(path), FEDGE_OK);
    assert_int_equal(fedge_shard_load(path, &back), FEDGE_OK);
    assert_int_equal(back.n, ds.n);
    assert_int_equal(back.n_classes, ds.n_classes);
    /* u8 storage is lossless for pixels already scaled by 1/255. */
    assert_memory_equal(back.x, ds.x, ds.n * 784 * sizeof(float));
    assert_memory_equal(back.y, ds.y, ds.n);

    /* A shuffled epoch sees the same label histogram as the file. */
    size_t hist_file[256] = {0}, hist_epoch[256] = {0};
    for (size_t i = 0; i < ds.n; i++)
        hist_file[ds.y[i]]++;
    fedge_shard_reader r;
    assert_int_equal(fedge_shard_open(&r, path), FEDGE_OK);
    fedge_shard_rewind(&r, 1, 2024);
    float *x = malloc(100 * 784 * sizeof(float));
    uint8_t y[100];
    int got;
    double pixel_sum = 0.0, pixel_sum_ref = 0.0;
    assert_non_null(x);
    do {
        assert_int_equal(fedge_shard_next_batch(&r, 100, x, y, &got), FEDGE_OK);
        for (int i = 0; i < got; i++) {
            hist_epoch[y[i]]++;
            for (int j = 0; j < 784; j++)
                pixel_sum += x[i * 784 + j];
        }
    } while (got > 0);
    for (size_t i = 0; i < ds.n * 784; i++)
        pixel_sum_ref += ds.x[i];
    assert_memory_equal(hist_epoch, hist_file, sizeof hist_file);
    assert_float_equal(pixel_sum, pixel_sum_ref, 1e-6 * pixel_sum_ref);
    fedge_shard_close(&r);
    free(x);
    free(idx);
    fedge_dataset_free(&back);
    fedge_dataset_free(&ds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_u8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_f32, setup, teardown),
        cmocka_unit_test_setup_teardown(test_epoch_visits_every_record_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_boundaries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reader_memory_is_one_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_atomic_and_rejects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fashion_mnist_roundtrip, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
