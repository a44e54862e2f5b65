/* agg_fixture.h — what the aggregator's unit tests provision the same way:
 * a keys file for a few named devices (secrets derived from the index) and
 * a small three-class evaluation shard (16 features, class c lights
 * features 5c..5c+4). Header-only: each test binary is one .c file. */
#ifndef FEDGE_TEST_AGG_FIXTURE_H
#define FEDGE_TEST_AGG_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "dataset.h"
#include "keys.h"
#include "shard.h"

static void fixture_secret(int i, uint8_t s[FEDGE_SECRET_LEN])
{
    for (int j = 0; j < FEDGE_SECRET_LEN; j++)
        s[j] = (uint8_t)(17 * i + j + 1);
}

static void fixture_write_keys(const char *path, const char *const *devices, int n)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < n; i++) {
        uint8_t s[FEDGE_SECRET_LEN];
        fixture_secret(i, s);
        fprintf(f, "%s eu ", devices[i]);
        for (int j = 0; j < FEDGE_SECRET_LEN; j++)
            fprintf(f, "%02x", s[j]);
        fprintf(f, "\n");
    }
    fclose(f);
    assert_int_equal(chmod(path, 0600), 0);
}

static void fixture_write_test_shard(const char *path, size_t rows)
{
    fedge_dataset ds = {.n = rows, .dim = 16, .n_classes = 3};
    size_t *idx = malloc(ds.n * sizeof *idx);
    ds.x = malloc(ds.n * 16 * sizeof(float));
    ds.y = malloc(ds.n);
    assert_non_null(idx);
    assert_non_null(ds.x);
    assert_non_null(ds.y);
    for (size_t i = 0; i < ds.n; i++) {
        idx[i] = i;
        ds.y[i] = (uint8_t)(i % 3);
        for (int j = 0; j < 16; j++)
            ds.x[i * 16 + j] = (j / 5 == ds.y[i]) ? 0.9f : 0.1f * (float)((i + j) % 3) / 3.0f;
    }
    assert_int_equal(fedge_shard_write(path, &ds, idx, ds.n, FEDGE_SHARD_U8), FEDGE_OK);
    free(idx);
    free(ds.x);
    free(ds.y);
}

#endif
