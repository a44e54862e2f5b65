/* bench-aggregate: aggregator CPU time per round for 8 and 64 clients.
 *
 * Drives the aggregator's state machine in-process (aggregator/agg.h) with
 * pre-sealed mlp:784-200-10 updates, so only the aggregator's own work is
 * timed: per update, open (decrypt, validate) + policy + one committed SQLite
 * transaction; per round, aggregation + evaluation on the 10k Fashion-MNIST
 * test set + model file + audit head. Baseline, measured in the same run:
 * the evaluation alone (the floor of any round close), and memcpy of the
 * update bytes. Times are process CPU time (user + system).
 *
 *   bench-aggregate [rounds]   (default 3) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agg.h"
#include "bench_agg.h"
#include "common.h"
#include "log.h"
#include "update.h"

static double cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static int bench(int n_clients, int rounds, fedge_encoding enc, double *per_update_ms, double *per_close_ms,
                 double *eval_ms, size_t *update_bytes)
{
    char dir[] = "/tmp/fedge-bench-agg-XXXXXX";
    fedge_agg_config cfg;
    fedge_aggregator agg;
    int ret = FEDGE_OK, inited = 0;
    float *delta = NULL;
    uint8_t **sealed = NULL;
    size_t *lens = NULL;
    double t_updates = 0, t_close = 0;
    if (!mkdtemp(dir))
        return FEDGE_ERR_IO;
    bench_agg_config(&cfg, dir);
    cfg.rounds = rounds;
    cfg.round_timeout_s = 3600;
    CHK(bench_agg_init(&agg, &cfg, n_clients));
    inited = 1;
    size_t n = agg.model.n_params;
    delta = malloc(n * sizeof *delta);
    sealed = calloc((size_t)n_clients, sizeof *sealed);
    lens = calloc((size_t)n_clients, sizeof *lens);
    if (!delta || !sealed || !lens)
        FAIL(FEDGE_ERR_NOMEM);
    fedge_rng rng;
    fedge_rng_seed(&rng, 42);
    for (int r = 1; r <= rounds; r++) {
        CHK(fedge_agg_tick(&agg, fedge_now()));
        for (int i = 0; i < n_clients; i++) { /* clients' work: not timed */
            for (size_t k = 0; k < n; k++)
                delta[k] = 0.01f * (float)fedge_rng_normal(&rng);
            fedge_delta_header h = {.encoding = (uint8_t)enc, .model_id = agg.model_id, .round = agg.round,
                                    .n_samples = 7500, .n_elems = (uint32_t)n,
                                    .block_size = enc == FEDGE_ENC_INT8 ? FEDGE_DELTA_DEFAULT_BLOCK : 0};
            memcpy(h.base_version, agg.version, FEDGE_HASH_LEN);
            free(sealed[i]);
            sealed[i] = NULL;
            CHK(fedge_update_seal(&agg.dev_keys[i], (uint64_t)(r * 1000 + i), agg.run_id, &h, delta, NULL, &sealed[i], &lens[i]));
        }
        double t0 = cpu_now();
        for (int i = 0; i < n_clients; i++) {
            int code;
            char msg[320], id[16];
            snprintf(id, sizeof id, "dev-%03d", i);
            CHK(fedge_agg_submit(&agg, id, sealed[i], lens[i], fedge_now(), &code, msg, sizeof msg));
            if (code != 204) {
                fprintf(stderr, "update refused: %d %s\n", code, msg);
                FAIL(FEDGE_ERR_REJECTED);
            }
        }
        double t1 = cpu_now();
        CHK(fedge_agg_maybe_close(&agg, fedge_now()));
        double t2 = cpu_now();
        t_updates += t1 - t0;
        t_close += t2 - t1;
    }
    /* baseline: evaluation alone */
    size_t correct;
    double loss, t0 = cpu_now();
    CHK(fedge_model_evaluate(&agg.model, agg.test.x, agg.test.y, agg.test.n, 500, agg.eval_scratch, &correct, &loss));
    *eval_ms = (cpu_now() - t0) * 1e3;
    *per_update_ms = t_updates * 1e3 / (rounds * n_clients);
    *per_close_ms = t_close * 1e3 / rounds;
    *update_bytes = lens[0];
cleanup:
    if (sealed)
        for (int i = 0; i < n_clients; i++)
            free(sealed[i]);
    free(sealed);
    free(lens);
    free(delta);
    if (inited)
        fedge_agg_free(&agg);
    bench_remove_dir(dir);
    return ret;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    if (rounds < 1 || rounds > 1000) {
        fprintf(stderr, "usage: bench-aggregate [rounds 1..1000]\n");
        return 2;
    }
    fedge_log_set_level(FEDGE_LOG_WARN);
    printf("aggregator CPU time per round, mlp:784-200-10 (159010 params), %d rounds each\n", rounds);
    printf("%8s %6s %12s %14s %14s %16s %10s\n", "clients", "enc", "bytes/upd", "ms/update", "ms/close",
           "ms/round total", "close/eval");
    const int clients[] = {8, 64};
    const fedge_encoding encs[] = {FEDGE_ENC_FP32, FEDGE_ENC_INT8};
    for (size_t c = 0; c < 2; c++) {
        for (size_t e = 0; e < 2; e++) {
            double upd, close, eval;
            size_t bytes;
            int ret = bench(clients[c], rounds, encs[e], &upd, &close, &eval, &bytes);
            if (ret != FEDGE_OK) {
                fprintf(stderr, "bench failed: %s\n", fedge_strerror(ret));
                return 1;
            }
            printf("%8d %6s %12zu %14.2f %14.1f %16.1f %9.2fx\n", clients[c], fedge_encoding_name(encs[e]), bytes, upd,
                   close, upd * clients[c] + close, close / eval);
        }
    }
    printf("close/eval: round close time over the evaluation alone (10k test rows), measured in the same run\n");
    return 0;
}
