/* bench-close_memory: the aggregator's peak memory while it closes a round,
 * against the number of accepted updates in it.
 *
 * Drives the state machine in-process (aggregator/agg.h): n clients each
 * submit one fp32 update (sealed and freed one at a time, so the bench
 * holds no update), then the peak resident set is reset (clear_refs 5) and
 * the round closed; the peak during the close minus the resident set before
 * it is what the close needed. Baseline, in the same run: one model-sized
 * float buffer (4 * n_params bytes). The close streams the stored deltas
 * (aggregator/governance.h), so the figure must not grow with n.
 *
 *   bench-close_memory [SPEC] [N ...]   (default mlp:784-2048-2048-10, 1 4 8) */
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agg.h"
#include "bench_agg.h"
#include "common.h"
#include "log.h"
#include "update.h"

static long status_kib(const char *key)
{
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':')
            v = strtol(line + kl + 1, NULL, 10);
    fclose(f);
    return v;
}

static int reset_peak(void)
{
    int fd = open("/proc/self/clear_refs", O_WRONLY);
    if (fd < 0)
        return FEDGE_ERR_IO;
    int ok = write(fd, "5", 1) == 1;
    close(fd);
    return ok ? FEDGE_OK : FEDGE_ERR_IO;
}

/* One round with n updates; prints the close's peak above its start. */
static int one_run(const char *spec, int n_clients, long *close_kib, size_t *n_params)
{
    char dir[] = "/tmp/fedge-bench-close-XXXXXX";
    fedge_agg_config cfg;
    fedge_aggregator agg;
    int ret = FEDGE_OK, inited = 0;
    float *delta = NULL;
    if (!mkdtemp(dir))
        return FEDGE_ERR_IO;
    bench_agg_config(&cfg, dir);
    snprintf(cfg.model_spec, sizeof cfg.model_spec, "%s", spec);
    cfg.rounds = 1;
    cfg.round_timeout_s = 3600;
    CHK(bench_agg_init(&agg, &cfg, n_clients));
    inited = 1;
    size_t n = agg.model.n_params;
    *n_params = n;
    delta = malloc(n * sizeof *delta);
    if (!delta)
        FAIL(FEDGE_ERR_NOMEM);
    fedge_rng rng;
    fedge_rng_seed(&rng, 42);
    CHK(fedge_agg_tick(&agg, fedge_now()));
    for (int i = 0; i < n_clients; i++) {
        for (size_t k = 0; k < n; k++)
            delta[k] = 0.001f * (float)fedge_rng_normal(&rng);
        fedge_delta_header h = {.encoding = FEDGE_ENC_FP32, .model_id = agg.model_id, .round = agg.round,
                                .n_samples = 7500, .n_elems = (uint32_t)n};
        memcpy(h.base_version, agg.version, FEDGE_HASH_LEN);
        uint8_t *sealed = NULL;
        size_t len = 0;
        int code;
        char msg[320], id[16];
        CHK(fedge_update_seal(&agg.dev_keys[i], (uint64_t)(i + 1), agg.run_id, &h, delta, NULL, &sealed, &len));
        snprintf(id, sizeof id, "dev-%03d", i);
        ret = fedge_agg_submit(&agg, id, sealed, len, fedge_now(), &code, msg, sizeof msg);
        free(sealed);
        CHK(ret);
        if (code != 204) {
            fprintf(stderr, "update refused: %d %s\n", code, msg);
            FAIL(FEDGE_ERR_REJECTED);
        }
    }
    free(delta);
    delta = NULL;
    malloc_trim(0); /* what the submits freed goes back: it must not hide the close's needs */
    CHK(reset_peak());
    long before = status_kib("VmRSS");
    CHK(fedge_agg_maybe_close(&agg, fedge_now()));
    long peak = status_kib("VmHWM");
    if (agg.rounds_aggregated != 1) {
        fprintf(stderr, "the round did not aggregate\n");
        FAIL(FEDGE_ERR_STATE);
    }
    *close_kib = peak - before;
cleanup:
    free(delta);
    if (inited)
        fedge_agg_free(&agg);
    bench_remove_dir(dir);
    return ret;
}

int main(int argc, char **argv)
{
    const char *spec = argc > 1 ? argv[1] : "mlp:784-2048-2048-10";
    int defaults[] = {1, 4, 8};
    int n_runs = argc > 2 ? argc - 2 : 3;
    fedge_log_set_level(FEDGE_LOG_WARN);
    printf("bench-close_memory %s: peak memory of a round close above its start\n", spec);
    for (int r = 0; r < n_runs; r++) {
        int n = argc > 2 ? atoi(argv[2 + r]) : defaults[r];
        if (n < 1 || n > 1000) {
            fprintf(stderr, "usage: bench-close_memory [SPEC] [N 1..1000 ...]\n");
            return 2;
        }
        /* a fresh process per n: the allocator keeps nothing from the last */
        int fds[2];
        if (pipe(fds) != 0)
            return 1;
        pid_t pid = fork();
        if (pid == 0) {
            long kib = -1;
            size_t np = 0;
            int ret = one_run(spec, n, &kib, &np);
            char out[96];
            int len = snprintf(out, sizeof out, "%d %ld %zu\n", ret, kib, np);
            ssize_t w = write(fds[1], out, (size_t)len);
            _exit(w == len ? 0 : 1);
        }
        close(fds[1]);
        char buf[96] = "";
        ssize_t got = read(fds[0], buf, sizeof buf - 1);
        close(fds[0]);
        int st = 0;
        waitpid(pid, &st, 0);
        int ret = -1;
        long kib = -1;
        size_t np = 0;
        if (got <= 0 || sscanf(buf, "%d %ld %zu", &ret, &kib, &np) != 3 || ret != FEDGE_OK) {
            fprintf(stderr, "run with %d updates failed (%d)\n", n, ret);
            return 1;
        }
        double model_mib = (double)np * 4 / (1024.0 * 1024.0);
        printf("  %3d updates: close peak %7.1f MiB = %5.2f x one fp32 model (%.1f MiB)\n", n, kib / 1024.0,
               kib / 1024.0 / model_mib, model_mib);
    }
    return 0;
}
