/* bench-sched_tick: the async scheduler's cost per pass of the daemon's loop
 * (fedge_agg_tick, called after every fedge_server_process wake) against the
 * device population P (issue 9).
 *
 * An in-process async aggregator (aggregator/agg.h) with P devices, 16
 * slots, 8 of them held, and 64 devices asking (GET /round's path,
 * fedge_agg_round_info) whose status is 'suspended' (set in the log as
 * fedge-admin does), so every evaluation ranks, sorts and queries them and
 * admits no one. Per P, in the same run:
 *   full     slots full (concurrency lowered to the 8 held): nothing to admit
 *   idle     slots free, nothing changed since the last pass
 *   new-ask  slots free, one asker's session ended and it asked again
 *            before each tick (a change: the admission is evaluated)
 * Prints us per tick (wall, CLOCK_MONOTONIC) and the ratio to P = 1,000.
 *
 *   bench-sched_tick [ticks]   (default 2000 per case) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agg.h"
#include "bench_agg.h"
#include "common.h"
#include "log.h"
#include "scheduler.h"
#include "store.h"

#define HELD 8
#define ASKING 64
#define SLOTS 16

static void ask(fedge_aggregator *a, int d)
{
    char id[16], buf[1024];
    snprintf(id, sizeof id, "dev-%03d", d);
    if (fedge_agg_round_info(a, id, fedge_now(), buf, sizeof buf) != FEDGE_OK)
        fprintf(stderr, "round_info failed for %s\n", id);
}

static void ask_all(fedge_aggregator *a, int first)
{
    for (int i = 0; i < ASKING; i++)
        ask(a, first + i);
}

/* us per tick over `ticks` ticks; change: one asker leaves and asks again first */
static int time_ticks(fedge_aggregator *a, int ticks, int change, int first_asker, double *us)
{
    double total = 0;
    int ret = FEDGE_OK;
    for (int done = 0; done < ticks;) {
        ask_all(a, first_asker); /* keep them within the asking TTL; not timed */
        int batch = ticks - done < 200 ? ticks - done : 200;
        for (int k = 0; k < batch; k++) {
            int d = first_asker + (done + k) % ASKING;
            if (change) {
                a->sched->left(a, d);
                ask(a, d);
            }
            double t0 = fedge_now();
            CHK(fedge_agg_tick(a, fedge_now()));
            total += fedge_now() - t0;
        }
        done += batch;
    }
    *us = total * 1e6 / ticks;
cleanup:
    return ret;
}

static int bench(int population, int ticks, double us[3])
{
    char dir[] = "/tmp/fedge-bench-tick-XXXXXX";
    fedge_agg_config cfg;
    fedge_aggregator agg;
    int ret = FEDGE_OK, inited = 0;
    if (!mkdtemp(dir))
        return FEDGE_ERR_IO;
    bench_agg_config(&cfg, dir);
    snprintf(cfg.mode, sizeof cfg.mode, "async");
    cfg.rounds = 5;
    cfg.seed = 7;
    cfg.async_buffer_k = 4;
    cfg.async_concurrency = SLOTS;
    cfg.async_slot_timeout_s = 3600;
    CHK(bench_agg_init(&agg, &cfg, population));
    inited = 1;
    CHK(fedge_agg_tick(&agg, fedge_now())); /* opens step 1 */
    for (int d = 0; d < HELD; d++)
        ask(&agg, d);
    CHK(fedge_agg_tick(&agg, fedge_now()));
    if (agg.in_flight != HELD) {
        fprintf(stderr, "expected %d slots held, got %zu\n", HELD, agg.in_flight);
        FAIL(FEDGE_ERR_STATE);
    }
    /* the askers: the last 64 devices, suspended */
    int first = population - ASKING;
    char sql[160];
    snprintf(sql, sizeof sql, "UPDATE devices SET status='suspended' WHERE CAST(substr(id,5) AS INTEGER)>=%d", first);
    if (sqlite3_exec(agg.db, sql, NULL, NULL, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    ask_all(&agg, first);
    CHK(fedge_agg_tick(&agg, fedge_now()));

    agg.cfg.async_concurrency = HELD;
    CHK(time_ticks(&agg, ticks, 0, first, &us[0]));
    agg.cfg.async_concurrency = SLOTS;
    CHK(time_ticks(&agg, ticks, 0, first, &us[1]));
    CHK(time_ticks(&agg, ticks, 1, first, &us[2]));
    if (agg.in_flight != HELD) {
        fprintf(stderr, "a suspended device was admitted (%zu in flight)\n", agg.in_flight);
        FAIL(FEDGE_ERR_STATE);
    }
cleanup:
    if (inited)
        fedge_agg_free(&agg);
    bench_remove_dir(dir);
    return ret;
}

int main(int argc, char **argv)
{
    int ticks = argc > 1 ? atoi(argv[1]) : 2000;
    if (ticks < 1 || ticks > 1000000) {
        fprintf(stderr, "usage: bench-sched_tick [ticks 1..1000000]\n");
        return 2;
    }
    fedge_log_set_level(FEDGE_LOG_WARN);
    const int pops[] = {1000, 10000, 100000};
    double us[3][3];
    printf("async fedge_agg_tick, us per tick (%d ticks per case; %d slots, %d held, %d suspended devices asking)\n",
           ticks, SLOTS, HELD, ASKING);
    printf("%9s %12s %12s %12s   %s\n", "P", "full", "idle", "new-ask", "ratio to P=1000 (full idle new-ask)");
    for (size_t p = 0; p < 3; p++) {
        int ret = bench(pops[p], ticks, us[p]);
        if (ret != FEDGE_OK) {
            fprintf(stderr, "bench failed at P=%d: %s\n", pops[p], fedge_strerror(ret));
            return 1;
        }
        printf("%9d %12.2f %12.2f %12.2f   %.2fx %.2fx %.2fx\n", pops[p], us[p][0], us[p][1], us[p][2],
               us[p][0] / us[0][0], us[p][1] / us[0][1], us[p][2] / us[0][2]);
        fflush(stdout);
    }
    printf("full: slots full; idle: slots free, nothing changed; new-ask: one asker re-asked before the tick\n");
    return 0;
}
