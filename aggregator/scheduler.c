/* scheduler.c — the schedulers' table and what they share (scheduler.h). */
#include "scheduler.h"

#include <stdio.h>
#include <string.h>

#include "common.h"
#include "log.h"
#include "store.h"

extern const fedge_sched fedge_sched_sync;

/* mode -> scheduler; `mode = async` (FedBuff) becomes one more row */
static const fedge_sched *const schedulers[] = {&fedge_sched_sync};

const fedge_sched *fedge_sched_find(const char *mode)
{
    for (size_t i = 0; i < sizeof schedulers / sizeof schedulers[0]; i++)
        if (strcmp(schedulers[i]->mode, mode) == 0)
            return schedulers[i];
    return NULL;
}

int fedge_sched_transient(fedge_aggregator *a, double now, int ret)
{
    if (ret != FEDGE_ERR_BUSY) {
        if (ret == FEDGE_OK)
            a->busy_since = 0;
        return ret;
    }
    if (a->busy_since == 0)
        a->busy_since = now;
    if (now - a->busy_since >= a->cfg.db_busy_retry_s) {
        FEDGE_ERROR("the database has been locked by another process for %.0fs (db_busy_retry_s); stopping",
                    now - a->busy_since);
        return ret;
    }
    a->retry_at = now + 1.0;
    FEDGE_WARN("the database is locked by another process; retrying round %u in 1s (locked for %.0fs so far)",
               a->round, now - a->busy_since);
    return FEDGE_OK;
}

int fedge_sched_count_rounds(fedge_aggregator *a)
{
    sqlite3_stmt *st = NULL;
    int ret;
    CHK(fedge_store_prepare(a->db, "SELECT coalesce(max(id),0), count(*) FILTER (WHERE status <> 'open'),"
                           " (SELECT accuracy FROM models ORDER BY rowid DESC LIMIT 1),"
                           " count(*) FILTER (WHERE status = 'closed') FROM rounds",
                    &st));
    if (sqlite3_step(st) == SQLITE_ROW) {
        a->round = (uint32_t)sqlite3_column_int64(st, 0);
        a->rounds_done = sqlite3_column_int64(st, 1);
        if (sqlite3_column_type(st, 2) != SQLITE_NULL)
            a->last_accuracy = sqlite3_column_double(st, 2);
        a->rounds_aggregated = sqlite3_column_int64(st, 3);
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

int fedge_sched_outcome(const fedge_aggregator *a, char *msg, size_t msglen)
{
    long failed = a->rounds_done - a->rounds_aggregated;
    if (a->rounds_done > 0 && a->rounds_aggregated == 0) {
        snprintf(msg, msglen, "run ended after %ld round(s) and none aggregated: the model is the initial one"
                 " (see the rounds' reasons: fedge-audit report)", a->rounds_done);
        return 3;
    }
    snprintf(msg, msglen, "finished %ld rounds (%ld aggregated, %ld failed); final accuracy %.4f",
             a->rounds_done, a->rounds_aggregated, failed, a->last_accuracy);
    return 0;
}
