/* scheduler.c — the schedulers' table and what they share (scheduler.h). */
#include "scheduler.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "clock.h"
#include "close.h"
#include "governance.h"
#include "modelstore.h"
#include "retention.h"
#include "strategy.h"

#include "common.h"
#include "log.h"
#include "store.h"
#include "train_metrics.h"

extern const fedge_sched fedge_sched_sync;
extern const fedge_sched fedge_sched_async;

/* mode -> scheduler */
static const fedge_sched *const schedulers[] = {&fedge_sched_sync, &fedge_sched_async};

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

int fedge_sched_finish_round(fedge_aggregator *a, const char *status, const char *new_version,
                             double accuracy, double epsilon, const char *reason)
{
    sqlite3_stmt *st = NULL;
    int ret;
    double now = fedge_clock_wall();
    CHK(fedge_store_prepare(a->db, "UPDATE rounds SET closed_at=?, status=?, new_version=?, n_accepted=?,"
                           " n_rejected=?, bytes_received=?, accuracy=?, epsilon=?, reason=? WHERE id=?",
                    &st));
    sqlite3_bind_double(st, 1, now);
    sqlite3_bind_text(st, 2, status, -1, SQLITE_STATIC);
    if (new_version)
        sqlite3_bind_text(st, 3, new_version, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)a->n_accepted);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)a->n_rejected);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)a->bytes_received);
    if (accuracy >= 0)
        sqlite3_bind_double(st, 7, accuracy);
    if (epsilon >= 0)
        sqlite3_bind_double(st, 8, epsilon);
    if (reason)
        sqlite3_bind_text(st, 9, reason, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 10, a->round);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret != FEDGE_OK)
        goto cleanup;
    char key[24];
    snprintf(key, sizeof key, "%u", a->round);
    CHK(fedge_gov_audit(a, "rounds", key));
    int trained = 0;
    CHK(fedge_train_metrics_round(a->db, a->round, &trained));
    if (trained)
        CHK(fedge_gov_audit(a, "round_training", key));
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* A persistent fault of the daemon itself (storage, memory): the caller
 * stops. Anything else that goes wrong while aggregating comes from the
 * round's data and fails only the round. */
static int is_daemon_fault(int ret)
{
    return ret == FEDGE_ERR_SQL || ret == FEDGE_ERR_BUSY || ret == FEDGE_ERR_IO || ret == FEDGE_ERR_NOMEM;
}

/* Aggregates the round's accepted updates into a new model, evaluates it,
 * logs everything in one transaction, then (outside it) refines if due. */
int fedge_sched_close_step(fedge_aggregator *a)
{
    fedge_close_result res;
    char parent[FEDGE_HASH_HEX_LEN];
    int ret;
    double t0 = fedge_clock_mono();
    memset(&res, 0, sizeof res);
    memcpy(parent, a->version_hex, sizeof parent);

    CHK(fedge_store_begin(a->db));
    ret = fedge_close_aggregate(a, &res);
    if (ret != FEDGE_OK && !is_daemon_fault(ret)) {
        /* Last line of defence: the round fails with an audited reason and
         * the daemon goes on; restarting would only meet the same data. */
        int agg_err = ret;
        fedge_store_rollback(a->db);
        fedge_strategy_discard(a);
        char err[256] = "";
        CHK(fedge_modelstore_load_current(a, err, sizeof err));
        memset(&res, 0, sizeof res);
        snprintf(res.reason, sizeof res.reason, "aggregation failed: %s", fedge_strerror(agg_err));
        CHK(fedge_store_begin(a->db));
        CHK(fedge_gov_event(a, a->round, NULL, "round_failed", "aggregate", res.reason));
        res.n_used = 0;
    } else if (ret != FEDGE_OK) {
        goto cleanup;
    }
    a->n_accepted = res.n_used;
    a->n_rejected += res.n_excluded;
    if (!res.ok) {
        CHK(fedge_sched_finish_round(a, "failed", NULL, -1, -1, res.reason));
        CHK(fedge_gov_sign_head(a, a->round));
        CHK(fedge_store_commit(a->db));
        FEDGE_WARN("round %u failed: %s; model unchanged", a->round, res.reason);
    } else {
        double acc = -1;
        CHK(fedge_modelstore_adopt(a, &a->model, a->round));
        CHK(fedge_modelstore_evaluate(a, &acc));
        CHK(fedge_modelstore_record(a, parent, "aggregate", a->round, acc, NULL));
        CHK(fedge_sched_finish_round(a, "closed", a->version_hex, acc, res.epsilon, res.reason[0] ? res.reason : NULL));
        CHK(fedge_strategy_save(a, a->round));
        CHK(fedge_gov_sign_head(a, a->round));
        CHK(fedge_store_commit(a->db));
        CHK(fedge_strategy_commit(a));
        a->last_accuracy = acc;
        a->rounds_aggregated++;
        FEDGE_INFO("round %u closed: %zu accepted, %zu rejected, %llu bytes, accuracy %.4f, model %.16s,"
                   " %.2fs aggregate+eval", a->round, a->n_accepted, a->n_rejected,
                   (unsigned long long)a->bytes_received, acc, a->version_hex, fedge_clock_mono() - t0);
    }
    if (a->cfg.retain_deltas_rounds > 0) { /* housekeeping: a failure is retried next round */
        int rr = fedge_retention_after_round(a);
        if (rr != FEDGE_OK)
            FEDGE_WARN("round %u: dropping old delta bodies failed: %s", a->round, fedge_strerror(rr));
    }
    a->rounds_done++;
    a->state = FEDGE_AGG_WAITING;
    /* the round is logged: whatever refinement meets, the run still ends
     * at `rounds` */
    int refined = FEDGE_OK;
    if (res.ok && a->cfg.refine_every > 0 && a->rounds_done % a->cfg.refine_every == 0)
        refined = fedge_modelstore_refine(a);
    if (a->cfg.rounds > 0 && a->rounds_done >= a->cfg.rounds) {
        a->state = FEDGE_AGG_FINISHED;
        a->finished_at = fedge_clock_mono();
        char msg[256];
        if (fedge_sched_outcome(a, msg, sizeof msg) == 0)
            FEDGE_INFO("%s", msg);
        else
            FEDGE_ERROR("%s", msg);
    }
    ret = refined;
cleanup:
    if (ret != FEDGE_OK) {
        fedge_store_rollback(a->db);
        fedge_strategy_discard(a);
        /* the in-memory model may be half-updated: reload the logged one */
        char err[256] = "";
        if (fedge_modelstore_load_current(a, err, sizeof err) != FEDGE_OK)
            FEDGE_ERROR("cannot reload the current model: %s", err);
    }
    return ret;
}

/* Restores an open round left by a crash: participants and accepted updates. */
int fedge_sched_resume_open(fedge_aggregator *a)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    CHK(fedge_store_prepare(a->db, "SELECT id, opened_at, deadline, n_selected FROM rounds WHERE status='open'"
                           " ORDER BY id DESC LIMIT 1", &st));
    if (sqlite3_step(st) != SQLITE_ROW)
        goto cleanup;
    a->round = (uint32_t)sqlite3_column_int64(st, 0);
    a->opened_at = sqlite3_column_double(st, 1);
    a->n_selected = (size_t)sqlite3_column_int64(st, 3);
    /* The log keeps the deadline in wall time; across a restart that is all
     * there is. A wall clock stepped back while the daemon was down must not
     * stretch the round past its length. */
    double left = sqlite3_column_double(st, 2) - fedge_clock_wall();
    if (left > a->cfg.round_timeout_s)
        left = a->cfg.round_timeout_s;
    a->deadline = fedge_clock_mono() + (left > 0 ? left : 0);
    sqlite3_finalize(st);
    st = NULL;
    CHK(fedge_store_prepare(a->db, "SELECT device FROM round_participants WHERE round=?", &st));
    sqlite3_bind_int64(st, 1, a->round);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int d = fedge_agg_device_index(a, (const char *)sqlite3_column_text(st, 0));
        if (d >= 0)
            a->selected[d] = 1;
    }
    sqlite3_finalize(st);
    st = NULL;
    CHK(fedge_store_prepare(a->db, "SELECT device, decision, bytes FROM updates WHERE round=?", &st));
    sqlite3_bind_int64(st, 1, a->round);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int d = fedge_agg_device_index(a, (const char *)sqlite3_column_text(st, 0));
        const char *decision = (const char *)sqlite3_column_text(st, 1);
        a->bytes_received += (uint64_t)sqlite3_column_int64(st, 2);
        if (strcmp(decision, "rejected") == 0) {
            a->n_rejected++;
        } else {
            a->n_accepted++;
            if (d >= 0)
                a->submitted[d] = 1;
        }
    }
    a->state = FEDGE_AGG_OPEN;
    FEDGE_INFO("resuming open round %u: %zu selected, %zu accepted so far", a->round, a->n_selected,
               a->n_accepted);
cleanup:
    sqlite3_finalize(st);
    return ret;
}

double fedge_sched_staleness_discount(const fedge_agg_config *cfg, uint32_t s)
{
    double a = cfg->async_staleness_a, b = cfg->async_staleness_b, t = (double)s;
    if (strcmp(cfg->async_staleness, "constant") == 0)
        return 1.0;
    if (strcmp(cfg->async_staleness, "hinge") == 0)
        return t <= b ? 1.0 : 1.0 / (a * (t - b) + 1.0);
    return pow(1.0 + t, -a);
}

int fedge_sched_async_rank(uint64_t seed, uint32_t step, const char *device, uint64_t *rank)
{
    uint8_t msg[12 + FEDGE_DEVICE_ID_MAX], h[FEDGE_HASH_LEN];
    size_t n = device ? strlen(device) : 0;
    if (!device || !rank || n > FEDGE_DEVICE_ID_MAX)
        return FEDGE_ERR_INVALID_ARG;
    for (int i = 0; i < 8; i++)
        msg[i] = (uint8_t)(seed >> (8 * i));
    for (int i = 0; i < 4; i++)
        msg[8 + i] = (uint8_t)(step >> (8 * i));
    memcpy(msg + 12, device, n);
    int ret = fedge_sha256(msg, 12 + n, h);
    if (ret != FEDGE_OK)
        return ret;
    uint64_t r = 0;
    for (int i = 0; i < 8; i++)
        r = (r << 8) | h[i];
    *rank = r;
    return FEDGE_OK;
}

int fedge_sched_refuse_round(fedge_aggregator *a, uint32_t round, const char *reason, double now)
{
    sqlite3_stmt *st = NULL;
    int ret;
    CHK(fedge_store_begin(a->db));
    CHK(fedge_store_prepare(a->db, "INSERT INTO rounds(id, opened_at, deadline, closed_at, status,"
                           " base_version, strategy, n_selected, reason)"
                           " VALUES(?,?,?,?, 'refused', ?, 'fedavg', 0, ?)", &st));
    double wall = fedge_clock_wall();
    sqlite3_bind_int64(st, 1, round);
    sqlite3_bind_double(st, 2, wall);
    sqlite3_bind_double(st, 3, wall);
    sqlite3_bind_double(st, 4, wall);
    sqlite3_bind_text(st, 5, a->version_hex, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, reason, -1, SQLITE_STATIC);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret != FEDGE_OK)
        goto cleanup;
    char key[24];
    snprintf(key, sizeof key, "%u", round);
    CHK(fedge_gov_audit(a, "rounds", key));
    CHK(fedge_gov_event(a, round, NULL, "round_refused", "privacy_budget", reason));
    CHK(fedge_gov_sign_head(a, round));
    CHK(fedge_store_commit(a->db));
    a->round = round;
    a->state = FEDGE_AGG_FINISHED;
    a->finished_at = now;
    FEDGE_WARN("round %u refused: %s; stopping", round, reason);
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    return ret;
}

void fedge_sched_view_changed(fedge_aggregator *a, int d)
{
    if (!a->view_changed || d < 0 || (size_t)d >= a->keys.n || a->view_changed_mark[d])
        return;
    a->view_changed_mark[d] = 1;
    a->view_changed[a->n_view_changed++] = (uint32_t)d;
}

void fedge_sched_tally(fedge_aggregator *a, int d, int accepted, size_t bytes)
{
    a->bytes_received += bytes;
    if (accepted) {
        a->submitted[d] = 1;
        a->n_accepted++;
    } else {
        a->n_rejected++;
    }
}

int fedge_sched_resume_log(fedge_aggregator *a)
{
    int ret;
    CHK(fedge_sched_count_rounds(a));
    CHK(fedge_sched_resume_open(a));
    a->start_at = fedge_clock_mono() + a->cfg.start_delay_s;
    if (a->state != FEDGE_AGG_OPEN && a->cfg.rounds > 0 && a->rounds_done >= a->cfg.rounds) {
        a->state = FEDGE_AGG_FINISHED;
        a->finished_at = fedge_clock_mono();
    }
cleanup:
    return ret;
}
