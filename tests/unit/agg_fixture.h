/* agg_fixture.h — what the aggregator's unit tests provision the same way:
 * a keys file for a few named devices (secrets derived from the index) and
 * a small three-class evaluation shard (16 features, class c lights
 * features 5c..5c+4). Header-only: each test binary is one .c file. */
#ifndef FEDGE_TEST_AGG_FIXTURE_H
#define FEDGE_TEST_AGG_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "config.h"
#include "dataset.h"
#include "log.h"
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

/* A fresh directory /tmp/fedge-TAG-XXXXXX (into dir, dir_cap bytes) with the
 * keys file of devices[0..n) and a test shard of `rows` rows, and cfg at its
 * defaults pointing there: keys_file, test_data, db, model_dir, and
 * model_spec `spec`. The caller sets the rest, validates and inits. */
static inline void fixture_prepare_dir(char *dir, size_t dir_cap, fedge_agg_config *cfg, const char *tag,
                                       const char *const *devices, int n, size_t rows, const char *spec)
{
    char path[128];
    snprintf(dir, dir_cap, "/tmp/fedge-%s-XXXXXX", tag);
    assert_non_null(mkdtemp(dir));
    fedge_log_set_level(FEDGE_LOG_WARN);
    fedge_agg_config_defaults(cfg);
    snprintf(path, sizeof path, "%s/keys", dir);
    fixture_write_keys(path, devices, n);
    snprintf(cfg->keys_file, sizeof cfg->keys_file, "%s", path);
    snprintf(path, sizeof path, "%s/test.bin", dir);
    fixture_write_test_shard(path, rows);
    snprintf(cfg->test_data, sizeof cfg->test_data, "%s", path);
    snprintf(cfg->db, sizeof cfg->db, "%s/fedge.db", dir);
    snprintf(cfg->model_dir, sizeof cfg->model_dir, "%s/models", dir);
    snprintf(cfg->model_spec, sizeof cfg->model_spec, "%s", spec);
}

#endif
