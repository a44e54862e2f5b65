/* bench_keys.h — the keys file the in-process aggregator benchmarks give
 * their aggregator: n devices "dev-000".., fixed secrets, mode 0600.
 * Header-only: each benchmark is one .c file. */
#ifndef FEDGE_BENCH_KEYS_H
#define FEDGE_BENCH_KEYS_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "agg.h"
#include "common.h"
#include "keys.h"

static int bench_write_keys(const char *path, int n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return FEDGE_ERR_IO;
    for (int i = 0; i < n; i++) {
        fprintf(f, "dev-%03d eu ", i);
        for (int j = 0; j < FEDGE_SECRET_LEN; j++) /* the first four bytes are i: distinct */
            fprintf(f, "%02x", j < 4 ? (unsigned)(((unsigned)i >> (8 * j)) & 0xff)
                                     : (unsigned)((i * 31 + j * 7 + 1) & 0xff));
        fprintf(f, "\n");
    }
    int ok = fclose(f) == 0;
    return ok && chmod(path, 0600) == 0 ? FEDGE_OK : FEDGE_ERR_IO;
}

/* The defaults, with the keys file, the log and the models in dir. */
static void bench_agg_config(fedge_agg_config *cfg, const char *dir)
{
    fedge_agg_config_defaults(cfg);
    snprintf(cfg->keys_file, sizeof cfg->keys_file, "%s/keys", dir);
    snprintf(cfg->db, sizeof cfg->db, "%s/fedge.db", dir);
    snprintf(cfg->model_dir, sizeof cfg->model_dir, "%s/models", dir);
}

/* Writes cfg's keys file for n devices and starts agg on cfg; says why on
 * stderr when it cannot. */
static int bench_agg_init(fedge_aggregator *agg, const fedge_agg_config *cfg, int n)
{
    char err[512] = "";
    int ret = bench_write_keys(cfg->keys_file, n);
    if (ret != FEDGE_OK)
        return ret;
    ret = fedge_agg_init(agg, cfg, err, sizeof err);
    if (ret != FEDGE_OK)
        fprintf(stderr, "init: %s\n", err);
    return ret;
}

/* Removes dir (a mkdtemp name: no quote in it) and what it holds; says so
 * on stderr when it cannot. */
static void bench_remove_dir(const char *dir)
{
    char cmd[160];
    if (snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir) >= (int)sizeof cmd || system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

#endif
