/* bench-metrics_render — what one /metrics refresh costs the metrics
 * thread (fedge_metrics_render: its queries scan the log; the owner thread
 * only hands over a copy of its state) against the size of the log, with its baseline, the same render over an empty log, in
 * the same run. A temporary aggregator (mlp:16-8-3, 8 devices) gets N
 * synthetic updates rows (a few decisions and rules, as a long run has);
 * each size is rendered 5 times, best kept.
 *
 *   bench-metrics_render [N ...]     (default 0 10000 100000 1000000)
 *
 * One line per N: render_ms, and the ratio to N = 0. The refresh then runs
 * every max(1 s, 20 x render) (metrics_http.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agg.h"
#include "common.h"
#include "config.h"
#include "dataset.h"
#include "log.h"
#include "metrics_http.h"
#include "shard.h"
#include "store.h"

static double mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static int setup(char *dir, fedge_agg_config *cfg)
{
    char path[128];
    int ret = FEDGE_OK;
    fedge_agg_config_defaults(cfg);
    snprintf(path, sizeof path, "%s/keys", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return FEDGE_ERR_IO;
    for (int i = 0; i < 8; i++) {
        fprintf(f, "dev-%03d eu ", i);
        for (int j = 0; j < 32; j++)
            fprintf(f, "%02x", (unsigned)(17 * i + j + 1) & 0xff);
        fprintf(f, "\n");
    }
    fclose(f);
    chmod(path, 0600);
    snprintf(cfg->keys_file, sizeof cfg->keys_file, "%s", path);
    fedge_dataset ds = {.n = 30, .dim = 16, .n_classes = 3};
    size_t idx[30];
    float x[30 * 16];
    uint8_t y[30];
    ds.x = x;
    ds.y = y;
    for (size_t i = 0; i < 30; i++) {
        idx[i] = i;
        y[i] = (uint8_t)(i % 3);
        for (int j = 0; j < 16; j++)
            x[i * 16 + j] = (j / 5 == y[i]) ? 0.9f : 0.1f;
    }
    snprintf(path, sizeof path, "%s/test.bin", dir);
    CHK(fedge_shard_write(path, &ds, idx, ds.n, FEDGE_SHARD_U8));
    snprintf(cfg->test_data, sizeof cfg->test_data, "%s", path);
    snprintf(cfg->db, sizeof cfg->db, "%s/fedge.db", dir);
    snprintf(cfg->model_dir, sizeof cfg->model_dir, "%s/models", dir);
    snprintf(cfg->model_spec, sizeof cfg->model_spec, "mlp:16-8-3");
cleanup:
    return ret;
}

int main(int argc, char **argv)
{
    static const long def[] = {0, 10000, 100000, 1000000};
    long ns[16];
    int n_ns = 0;
    for (int i = 1; i < argc && n_ns < 16; i++)
        ns[n_ns++] = atol(argv[i]);
    if (n_ns == 0)
        for (size_t i = 0; i < FEDGE_ARRAY_LEN(def); i++)
            ns[n_ns++] = def[i];
    fedge_log_set_level(FEDGE_LOG_ERROR);
    char dir[] = "/tmp/fedge-bench-metrics-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    fedge_agg_config cfg;
    char err[256] = "";
    fedge_aggregator a;
    int ret = setup(dir, &cfg), inited = 0;
    if (ret == FEDGE_OK)
        ret = fedge_agg_config_validate(&cfg, err, sizeof err);
    if (ret == FEDGE_OK)
        ret = fedge_agg_init(&a, &cfg, err, sizeof err);
    if (ret != FEDGE_OK) {
        fprintf(stderr, "bench-metrics_render: set-up: %s %s\n", fedge_strerror(ret), err);
        goto out;
    }
    inited = 1;
    long have = 0;
    double base = 0;
    for (int k = 0; k < n_ns; k++) {
        if (ns[k] > have) {
            char sql[512];
            snprintf(sql, sizeof sql,
                     "WITH RECURSIVE n(i) AS (SELECT %ld UNION ALL SELECT i + 1 FROM n WHERE i < %ld)"
                     " INSERT INTO updates(round, device, received_at, n_samples, encoding, bytes, counter,"
                     " decision, rule, reason, train_loss, train_accuracy) SELECT i / 8 + 1,"
                     " printf('dev-%%03d', i %% 8), i, 100, 'fp32', 31560, i, CASE WHEN i %% 10 = 0 THEN"
                     " 'rejected' ELSE 'accepted' END, CASE i %% 10 WHEN 0 THEN 'max_norm' ELSE 'accepted' END,"
                     " '', 0.5, 0.8 FROM n",
                     have + 1, ns[k]);
            if ((ret = fedge_store_exec(a.db, sql)) != FEDGE_OK)
                goto out;
            have = ns[k];
        }
        double best = 1e30;
        for (int r = 0; r < 5; r++) {
            char *text = NULL, reason[256];
            size_t len = 0;
            int healthy = 0;
            double t0 = mono_ms();
            fedge_metrics_state st = {0};
            fedge_metrics_state_of(&a, &st);
            ret = fedge_metrics_render(a.db, a.cfg.db, &st, &text, &len, &healthy, reason, sizeof reason);
            double t = mono_ms() - t0;
            free(text);
            if (ret != FEDGE_OK)
                goto out;
            if (t < best)
                best = t;
        }
        if (k == 0)
            base = best;
        printf("updates=%ld render_ms=%.3f ratio=%.1f refresh_every_s=%.1f\n", have, best,
               base > 0 ? best / base : 0.0, 20 * best / 1e3 < 1 ? 1.0 : 20 * best / 1e3 > 10 ? 10.0 : 20 * best / 1e3);
    }
out:
    if (ret != FEDGE_OK)
        fprintf(stderr, "bench-metrics_render: %s\n", fedge_strerror(ret));
    if (inited)
        fedge_agg_free(&a);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        ret = FEDGE_ERR_IO;
    return ret == FEDGE_OK ? 0 : 1;
}
