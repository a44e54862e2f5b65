/* bench-ingest_path — the aggregator's update path without the transport:
 * how many updates per second it opens and durably commits, against the
 * raw rate of opening them, all measured in this run.
 *
 *   bench-ingest_path [N] [WORKERS] [GROUP]   (default 256 2 32)
 *
 * An in-process aggregator (aggregator/agg.h; mlp:784-200-10, one sync
 * round selecting N devices, the SQLite log with synchronous=FULL, OpenSSL
 * for the envelope as the daemon) takes N pre-sealed int8 updates:
 *   raw      fedge_update_open (AEAD + decode) over the frames, one thread;
 *   inline   fedge_agg_submit one at a time (open, policy, insert, audit,
 *            one fsync each): ingest_workers = 0;
 *   pool     the frames opened by WORKERS pool threads (ingest_pool.h) and
 *            committed GROUP at a time (fedge_ingest_commit_group), as the
 *            daemon does; with the time split into open (per worker),
 *            checks + policy + insert + audit, and COMMIT (fsync).
 * inline and pool run twice: on a log with SQLite's default 4 KiB pages
 * (db_page_size = 0, the default) and on one with db_page_size = 65536 (an
 * int8 delta of 158 KiB in 3 overflow pages instead of 40).
 * Wall-clock times; each rate is updates that got 2.04 per second. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agg.h"
#include "bench_agg.h"
#include "common.h"
#include "crypto.h"
#include "ingest.h"
#include "ingest_pool.h"
#include "log.h"
#include "store.h"
#include "update.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    char dir[64];
    fedge_agg_config cfg;
    fedge_aggregator agg;
    int inited;
    uint8_t **sealed;
    size_t *lens;
    int n;
} bench_agg;

static void agg_free(bench_agg *b)
{
    if (b->sealed)
        for (int i = 0; i < b->n; i++)
            free(b->sealed[i]);
    free(b->sealed);
    free(b->lens);
    if (b->inited)
        fedge_agg_free(&b->agg);
    if (b->dir[0])
        bench_remove_dir(b->dir);
    memset(b, 0, sizeof *b);
}

/* A fresh aggregator with round 1 open for n devices, and their frames;
 * page: its db_page_size. */
static int agg_start(bench_agg *b, int n, int page)
{
    int ret = FEDGE_OK;
    float *delta = NULL;
    memset(b, 0, sizeof *b);
    snprintf(b->dir, sizeof b->dir, "/tmp/fedge-bench-ingest-XXXXXX");
    if (!mkdtemp(b->dir)) {
        b->dir[0] = '\0';
        return FEDGE_ERR_IO;
    }
    b->n = n;
    bench_agg_config(&b->cfg, b->dir);
    b->cfg.rounds = 1;
    b->cfg.round_timeout_s = 3600;
    b->cfg.db_page_size = page;
    CHK(bench_agg_init(&b->agg, &b->cfg, n));
    b->inited = 1;
    CHK(fedge_agg_tick(&b->agg, fedge_now()));
    size_t np = b->agg.model.n_params;
    delta = malloc(np * sizeof *delta);
    b->sealed = calloc((size_t)n, sizeof *b->sealed);
    b->lens = calloc((size_t)n, sizeof *b->lens);
    if (!delta || !b->sealed || !b->lens)
        FAIL(FEDGE_ERR_NOMEM);
    fedge_rng rng;
    fedge_rng_seed(&rng, 42);
    for (int i = 0; i < n; i++) {
        for (size_t k = 0; k < np; k++)
            delta[k] = 0.01f * (float)fedge_rng_normal(&rng);
        fedge_delta_header h = {.encoding = FEDGE_ENC_INT8, .model_id = b->agg.model_id, .round = b->agg.round,
                                .n_samples = 100, .n_elems = (uint32_t)np, .block_size = FEDGE_DELTA_DEFAULT_BLOCK};
        memcpy(h.base_version, b->agg.version, FEDGE_HASH_LEN);
        CHK(fedge_update_seal(&b->agg.dev_keys[i], 1, b->agg.run_id, &h, delta, NULL, &b->sealed[i], &b->lens[i]));
    }
cleanup:
    free(delta);
    return ret;
}

/* inline then pool on a fresh log each (page as agg_start's). */
static int run_paths(int n, int workers, int group, int page, double raw)
{
    bench_agg b;
    memset(&b, 0, sizeof b);
    int ret = FEDGE_OK, accepted = 0;
    fedge_ingest_pool *pool = NULL;
    fedge_ingest_job **jobs = NULL;
    fedge_ingest_item *items = NULL;
    int64_t got_page = 0;
    CHK(agg_start(&b, n, page));
    CHK(fedge_store_query_int64(b.agg.db, &got_page, NULL, "PRAGMA page_size", ""));
    printf("-- log with %lld-byte pages\n", (long long)got_page);

    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        int code;
        char msg[320], id[16];
        snprintf(id, sizeof id, "dev-%03d", i);
        CHK(fedge_agg_submit(&b.agg, id, b.sealed[i], b.lens[i], fedge_now(), &code, msg, sizeof msg));
        accepted += code == 204;
    }
    double t_inline = now_s() - t0;
    printf("inline   ingest_workers = 0:      %8.0f updates/s (%d accepted)  = %.3f x raw\n", accepted / t_inline,
           accepted, accepted / t_inline / raw);
    agg_free(&b);

    CHK(agg_start(&b, n, page));
    CHK(fedge_ingest_pool_new((size_t)workers, (size_t)n, &pool));
    jobs = calloc((size_t)n, sizeof *jobs);
    items = calloc((size_t)group, sizeof *items);
    if (!jobs || !items)
        FAIL(FEDGE_ERR_NOMEM);
    accepted = 0;
    double open_s = 0, work_s = 0, commit_s = 0;
    size_t groups = 0;
    t0 = now_s();
    for (int i = 0; i < n; i++) {
        fedge_ingest_snapshot snap;
        CHK(fedge_ingest_snapshot_take(&b.agg, i, &snap));
        fedge_ingest_job *j = fedge_ingest_job_new(NULL, i, &snap, b.sealed[i], b.lens[i]);
        if (!j)
            FAIL(FEDGE_ERR_NOMEM);
        CHK(fedge_ingest_pool_submit(pool, j));
    }
    for (int done = 0; done < n;) {
        fedge_ingest_pool_wait(pool, 1000);
        size_t k = fedge_ingest_pool_take(pool, jobs, (size_t)group);
        for (size_t i = 0; i < k; i++) {
            items[i] = (fedge_ingest_item){.device = jobs[i]->device, .snap = &jobs[i]->snap,
                                           .frame = &jobs[i]->frame};
            open_s += jobs[i]->done_at - jobs[i]->opened_at;
        }
        if (k) {
            fedge_ingest_group_times t;
            CHK(fedge_ingest_commit_group(&b.agg, items, k, &t));
            work_s += t.work_s;
            commit_s += t.commit_s;
            groups++;
        }
        for (size_t i = 0; i < k; i++) {
            accepted += items[i].code == 204;
            fedge_ingest_job_free(jobs[i]);
        }
        done += (int)k;
    }
    double t_pool = now_s() - t0;
    printf("pool     %d workers, groups <= %d: %8.0f updates/s (%d accepted)  = %.3f x raw, %.2f x inline\n",
           workers, group, accepted / t_pool, accepted, accepted / t_pool / raw, t_inline / t_pool);
    printf("breakdown per update: open %.0f us (on a worker), checks+policy+insert+audit %.0f us, COMMIT %.0f us"
           " (%.0f us per group of %.1f)\n",
           1e6 * open_s / n, 1e6 * work_s / n, 1e6 * commit_s / n, 1e6 * commit_s / (double)groups,
           (double)n / (double)groups);
cleanup:
    fedge_ingest_pool_free(pool);
    free(jobs);
    free(items);
    agg_free(&b);
    return ret;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 256, workers = argc > 2 ? atoi(argv[2]) : 2;
    int group = argc > 3 ? atoi(argv[3]) : 32;
    bench_agg b;
    memset(&b, 0, sizeof b);
    int ret = FEDGE_OK;
    if (n < 1 || n > 1000 || workers < 1 || workers > 64 || group < 1 || group > 4096) {
        fprintf(stderr, "usage: bench-ingest_path [N 1..1000] [WORKERS 1..64] [GROUP 1..4096]\n");
        return 2;
    }
    fedge_log_set_level(FEDGE_LOG_WARN);
    if (fedge_crypto_use_openssl() != FEDGE_OK)
        fprintf(stderr, "OpenSSL unavailable: mbedTLS opens the envelope\n");
    printf("load average: ");
    fflush(stdout);
    if (system("cut -d' ' -f1-3 /proc/loadavg") != 0)
        printf("?\n");
    printf("%d mlp:784-200-10 int8 updates, %ld cores, envelope on %s\n", n, sysconf(_SC_NPROCESSORS_ONLN),
           fedge_crypto_backend_get()->name);

    /* raw: open only, one thread */
    CHK(agg_start(&b, n, 0));
    size_t np = b.agg.model.n_params, len0 = b.lens[0];
    uint8_t *scratch = malloc(len0);
    float *delta = malloc(np * sizeof *delta);
    if (!scratch || !delta) {
        free(scratch);
        free(delta);
        FAIL(FEDGE_ERR_NOMEM);
    }
    fedge_update_expect exp = {.model_id = b.agg.model_id, .n_elems = (uint32_t)np, .round = b.agg.round,
                               .run_id = b.agg.run_id};
    double t0 = now_s();
    for (int i = 0; i < n && ret == FEDGE_OK; i++) {
        fedge_delta_header h;
        uint64_t counter;
        ret = fedge_update_open(&b.agg.dev_keys[i], b.sealed[i], b.lens[i], &exp, scratch, &h, &counter, delta);
    }
    double raw = n / (now_s() - t0);
    free(scratch);
    free(delta);
    CHK(ret);
    agg_free(&b);
    printf("raw      AEAD+decode, 1 thread: %8.0f updates/s (%zu-byte frames)\n", raw, len0);

    CHK(run_paths(n, workers, group, 0, raw));
    CHK(run_paths(n, workers, group, 65536, raw));
    printf("load average: ");
    fflush(stdout);
    if (system("cut -d' ' -f1-3 /proc/loadavg") != 0)
        printf("?\n");
cleanup:
    agg_free(&b);
    if (ret != FEDGE_OK)
        fprintf(stderr, "bench-ingest_path: %s\n", fedge_strerror(ret));
    return ret == FEDGE_OK ? 0 : 1;
}
