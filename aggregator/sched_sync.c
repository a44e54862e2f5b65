/* sched_sync.c — synchronous rounds (scheduler.h, mode "sync"): a round opens
 * with a seeded sample of the eligible devices, takes one update from each
 * participant (or a straggler's late one within the policy's staleness
 * window), and closes at quorum or deadline. */
#include "scheduler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "close.h"
#include "common.h"
#include "governance.h"
#include "log.h"
#include "modelstore.h"
#include "policy.h"
#include "retention.h"
#include "store.h"
#include "strategy.h"

/* Restores an open round left by a crash: participants and accepted updates. */
static int resume_round(fedge_aggregator *a)
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

static int sync_resume(fedge_aggregator *a)
{
    int ret;
    CHK(fedge_sched_count_rounds(a));
    CHK(resume_round(a));
    a->start_at = fedge_clock_mono() + a->cfg.start_delay_s;
    if (a->state != FEDGE_AGG_OPEN && a->cfg.rounds > 0 && a->rounds_done >= a->cfg.rounds) {
        a->state = FEDGE_AGG_FINISHED;
        a->finished_at = fedge_clock_mono();
    }
cleanup:
    return ret;
}

static int open_round(fedge_aggregator *a, double now)
{
    sqlite3_stmt *st = NULL;
    size_t *allowed = NULL, n_allowed = 0;
    int ret;
    uint32_t round = a->round + 1;

    allowed = malloc(a->keys.n * sizeof *allowed);
    if (!allowed)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(fedge_gov_eligible_devices(a, allowed, &n_allowed));
    if (n_allowed == 0) {
        FEDGE_WARN("no eligible devices; round %u not opened, retrying in 5s", round);
        a->start_at = now + 5.0;
        goto cleanup;
    }
    size_t k = a->cfg.clients_per_round > 0 ? (size_t)a->cfg.clients_per_round
                                            : (size_t)ceil(a->cfg.client_fraction * (double)n_allowed);
    if (k > n_allowed)
        k = n_allowed;
    if (k == 0)
        k = 1;
    int refused = 0;
    char reason[256] = "";
    CHK(fedge_gov_round_admission(a, round, k, n_allowed, &refused, reason, sizeof reason));
    if (refused) {
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
        goto cleanup;
    }

    fedge_rng rng;
    fedge_rng_split(&a->rng, round, &rng);
    for (size_t i = 0; i < k; i++) { /* partial Fisher-Yates */
        size_t j = i + fedge_rng_below(&rng, (uint32_t)(n_allowed - i));
        size_t t = allowed[i];
        allowed[i] = allowed[j];
        allowed[j] = t;
    }
    memset(a->selected, 0, a->keys.n);
    memset(a->submitted, 0, a->keys.n);

    double wall = fedge_clock_wall();
    CHK(fedge_store_begin(a->db));
    CHK(fedge_store_prepare(a->db, "INSERT INTO rounds(id, opened_at, deadline, status, base_version, strategy,"
                           " n_selected) VALUES(?,?,?, 'open', ?, ?, ?)", &st));
    sqlite3_bind_int64(st, 1, round);
    sqlite3_bind_double(st, 2, wall);
    sqlite3_bind_double(st, 3, wall + a->cfg.round_timeout_s);
    sqlite3_bind_text(st, 4, a->version_hex, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, fedge_gov_strategy(a), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)k);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret != FEDGE_OK)
        goto cleanup;
    CHK(fedge_store_prepare(a->db, "INSERT INTO round_participants(round, device) VALUES(?,?)", &st));
    for (size_t i = 0; i < k; i++) {
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, round);
        sqlite3_bind_text(st, 2, a->keys.devices[allowed[i]].id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE)
            FAIL(FEDGE_ERR_SQL);
    }
    sqlite3_finalize(st);
    st = NULL;
    char key[24];
    snprintf(key, sizeof key, "%u", round);
    CHK(fedge_gov_audit(a, "rounds", key));
    CHK(fedge_store_commit(a->db));

    for (size_t i = 0; i < k; i++)
        a->selected[allowed[i]] = 1;
    a->round = round;
    a->state = FEDGE_AGG_OPEN;
    a->opened_at = wall;
    /* the round's length counts from when devices can see it, not from
     * before its participants were written (seconds with 10^5 devices) */
    a->deadline = fedge_clock_mono() + a->cfg.round_timeout_s;
    a->n_selected = k;
    a->n_accepted = a->n_rejected = 0;
    a->bytes_received = 0;
    FEDGE_INFO("round %u open: %zu of %zu devices selected, base %.16s, deadline %.0fs", round, k,
               n_allowed, a->version_hex, a->cfg.round_timeout_s);
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    free(allowed);
    return ret;
}

static int finish_round_row(fedge_aggregator *a, const char *status, const char *new_version,
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
static int close_round(fedge_aggregator *a, double now)
{
    fedge_close_result res;
    char parent[FEDGE_HASH_HEX_LEN];
    int ret;
    double t0 = fedge_clock_mono();
    (void)now;
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
        CHK(finish_round_row(a, "failed", NULL, -1, -1, res.reason));
        CHK(fedge_gov_sign_head(a, a->round));
        CHK(fedge_store_commit(a->db));
        FEDGE_WARN("round %u failed: %s; model unchanged", a->round, res.reason);
    } else {
        double acc = -1;
        CHK(fedge_modelstore_adopt(a, &a->model, a->round));
        CHK(fedge_modelstore_evaluate(a, &acc));
        CHK(fedge_modelstore_record(a, parent, "aggregate", a->round, acc, NULL));
        CHK(finish_round_row(a, "closed", a->version_hex, acc, res.epsilon, res.reason[0] ? res.reason : NULL));
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

/* Accepted updates that close the round early: the quorum, but never fewer
 * than a round needs to aggregate at all (min_updates, the policy's
 * min_clients, the combiner's minimum), so an early close cannot fail a
 * round the deadline could still save. */
static size_t quorum_count(const fedge_aggregator *a)
{
    size_t q = (size_t)ceil(a->cfg.quorum * (double)a->n_selected - 1e-9);
    size_t combiner_min = fedge_agg_config_combiner_min(&a->cfg, NULL, 0);
    if (q < (size_t)a->cfg.min_updates)
        q = (size_t)a->cfg.min_updates;
    if (q < combiner_min)
        q = combiner_min;
    if (q < fedge_policy_min_clients(a->policy))
        q = fedge_policy_min_clients(a->policy);
    return q ? q : 1;
}

static int sync_on_accepted(fedge_aggregator *a, double now)
{
    if (now < a->retry_at)
        return FEDGE_OK;
    if (a->state == FEDGE_AGG_OPEN && a->n_accepted >= quorum_count(a))
        return fedge_sched_transient(a, now, close_round(a, now));
    return FEDGE_OK;
}

static int tick_step(fedge_aggregator *a, double now)
{
    switch (a->state) {
    case FEDGE_AGG_WAITING:
        if (now >= a->start_at)
            return open_round(a, now);
        return FEDGE_OK;
    case FEDGE_AGG_OPEN:
        if (a->n_accepted >= quorum_count(a))
            return close_round(a, now);
        if (now >= a->deadline) {
            FEDGE_INFO("round %u deadline: %zu of %zu updates", a->round, a->n_accepted, a->n_selected);
            return close_round(a, now);
        }
        return FEDGE_OK;
    case FEDGE_AGG_FINISHED:
        return FEDGE_OK;
    }
    return FEDGE_ERR_STATE;
}

static int sync_on_tick(fedge_aggregator *a, double now)
{
    if (now < a->retry_at)
        return FEDGE_OK;
    return fedge_sched_transient(a, now, tick_step(a, now));
}

static int was_participant(fedge_aggregator *a, uint32_t round, const char *device, int *was)
{
    int64_t one;
    return fedge_store_query_int64(a->db, &one, was, "SELECT 1 FROM round_participants WHERE round=? AND device=?",
                                   "it", (int64_t)round, device);
}

static int sync_admit(fedge_aggregator *a, int d, const char *device, uint32_t for_round, int *ok, int *code,
                      char *msg, size_t msglen)
{
    int ret = FEDGE_OK;
    *ok = 0;
    if (a->state != FEDGE_AGG_OPEN) {
        *code = 503;
        snprintf(msg, msglen, "%s", a->state == FEDGE_AGG_FINISHED ? "run finished" : "no open round");
        goto cleanup;
    }
    if (a->submitted[d]) {
        *code = 409;
        snprintf(msg, msglen, "an update for round %u was already accepted", a->round);
        goto cleanup;
    }
    /* A straggler's update for an earlier round (within the policy's
     * staleness window) joins this round's aggregate, discounted; it must
     * come from a participant of the round it was trained for. The round
     * read here is authenticated by the GCM tag in fedge_update_open. */
    uint32_t window = fedge_gov_round_window(a);
    if (for_round < a->round && a->round - for_round <= window) {
        int was = 0, already = 0;
        int64_t one;
        CHK(was_participant(a, for_round, device, &was));
        if (!was) {
            *code = 403;
            snprintf(msg, msglen, "not selected for round %u", for_round);
            goto cleanup;
        }
        /* Training for round r counts once: not again when the device has
         * an update counted in round r or later. */
        CHK(fedge_store_query_int64(a->db, &one, &already,
                                    "SELECT 1 FROM updates WHERE device=? AND round>=? AND decision<>'rejected'",
                                    "ti", device, (int64_t)for_round));
        if (already) {
            *code = 409;
            snprintf(msg, msglen, "an update of this device for round %u or later was already counted", for_round);
            goto cleanup;
        }
    } else if (!a->selected[d]) {
        *code = 403;
        snprintf(msg, msglen, "not selected for round %u", a->round);
        goto cleanup;
    }
    *ok = 1;
cleanup:
    return ret;
}

static void sync_counted(fedge_aggregator *a, int d, int accepted, size_t bytes)
{
    a->bytes_received += bytes;
    if (accepted) {
        a->submitted[d] = 1;
        a->n_accepted++;
    } else {
        a->n_rejected++;
    }
}

static void sync_view(const fedge_aggregator *a, int d, double now, fedge_sched_view *v)
{
    v->selected = a->state == FEDGE_AGG_OPEN && d >= 0 && a->selected[d] && !a->submitted[d];
    double left_ms = a->state == FEDGE_AGG_OPEN ? (a->deadline - now) * 1000.0 : 0;
    v->deadline_ms = left_ms > 0 ? left_ms : 0;
}

const fedge_sched fedge_sched_sync = {
    .mode = "sync",
    .resume = sync_resume,
    .on_tick = sync_on_tick,
    .on_accepted = sync_on_accepted,
    .admit = sync_admit,
    .counted = sync_counted,
    .view = sync_view,
};
