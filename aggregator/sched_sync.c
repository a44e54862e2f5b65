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
#include "relay.h"
#include "retention.h"
#include "store.h"
#include "strategy.h"

/* Opens round `round` lasting timeout_s (a relay: the parent's round id and
 * what is left of its time). */
static int open_round(fedge_aggregator *a, double now, uint32_t round, double timeout_s)
{
    sqlite3_stmt *st = NULL;
    size_t *allowed = NULL, n_allowed = 0;
    int ret;

    allowed = malloc(a->keys.n * sizeof *allowed);
    if (!allowed)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(fedge_gov_eligible_devices(a, allowed, &n_allowed));
    if (n_allowed == 0) {
        FEDGE_WARN("no eligible devices; round %u not opened, retrying in 5s", round);
        a->start_at = now + 5.0;
        goto cleanup;
    }
    size_t k = fedge_agg_config_round_size(&a->cfg, n_allowed);
    int refused = 0;
    char reason[256] = "";
    CHK(fedge_gov_round_admission(a, round, k, n_allowed, &refused, reason, sizeof reason));
    if (refused) {
        CHK(fedge_sched_refuse_round(a, round, reason, now));
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
    a->n_selected_gone = 0;

    double wall = fedge_clock_wall();
    CHK(fedge_store_begin(a->db));
    CHK(fedge_store_prepare(a->db, "INSERT INTO rounds(id, opened_at, deadline, status, base_version, strategy,"
                           " n_selected) VALUES(?,?,?, 'open', ?, ?, ?)", &st));
    sqlite3_bind_int64(st, 1, round);
    sqlite3_bind_double(st, 2, wall);
    sqlite3_bind_double(st, 3, wall + timeout_s);
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
    a->deadline = fedge_clock_mono() + timeout_s;
    a->n_selected = k;
    a->n_accepted = a->n_rejected = 0;
    a->bytes_received = 0;
    FEDGE_INFO("round %u open: %zu of %zu devices selected, base %.16s, deadline %.0fs", round, k,
               n_allowed, a->version_hex, timeout_s);
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    free(allowed);
    return ret;
}

/* Accepted updates that close the round early: the quorum of the selected
 * devices that can still report (not taken out by a keys reload), but never fewer
 * than a round needs to aggregate at all (min_updates, the policy's
 * min_clients, the combiner's minimum), so an early close cannot fail a
 * round the deadline could still save. */
static size_t quorum_count(const fedge_aggregator *a)
{
    size_t can_report = a->n_selected - (a->n_selected_gone < a->n_selected ? a->n_selected_gone : a->n_selected);
    size_t q = (size_t)ceil(a->cfg.quorum * (double)can_report - 1e-9);
    size_t combiner_min = fedge_agg_config_combiner_min(&a->cfg, 0, NULL, 0);
    if (q < (size_t)a->cfg.min_updates)
        q = (size_t)a->cfg.min_updates;
    if (q < combiner_min)
        q = combiner_min;
    if (q < fedge_policy_min_clients(a->policy))
        q = fedge_policy_min_clients(a->policy);
    return q ? q : 1;
}

/* A root's close, or a relay's (relay.h: a partial sum sent to the parent). */
static int close_step(fedge_aggregator *a)
{
    return a->relay ? fedge_relay_close_round(a) : fedge_sched_close_step(a);
}

static int sync_on_accepted(fedge_aggregator *a, double now)
{
    (void)now;
    if (a->state == FEDGE_AGG_OPEN && a->n_accepted >= quorum_count(a))
        return close_step(a);
    return FEDGE_OK;
}

/* A relay waits for its parent's rounds instead of opening its own. */
static int relay_on_wait(fedge_aggregator *a, double now)
{
    fedge_relay_next next;
    int ret = fedge_relay_poll(a, now, &next);
    if (ret != FEDGE_OK)
        return ret;
    if (next.finished) {
        a->state = FEDGE_AGG_FINISHED;
        a->finished_at = now;
        char msg[256];
        if (fedge_sched_outcome(a, msg, sizeof msg) == 0)
            FEDGE_INFO("%s", msg);
        else
            FEDGE_ERROR("%s", msg);
        return FEDGE_OK;
    }
    return next.open ? open_round(a, now, next.round, next.timeout_s) : FEDGE_OK;
}

static int sync_on_tick(fedge_aggregator *a, double now)
{
    if (a->cfg.upstream[0] && !a->relay)
        return FEDGE_ERR_STATE; /* a relay's link is opened after init (relay.h) */
    switch (a->state) {
    case FEDGE_AGG_WAITING:
        if (now < a->start_at)
            return FEDGE_OK;
        return a->relay ? relay_on_wait(a, now) : open_round(a, now, a->round + 1, a->cfg.round_timeout_s);
    case FEDGE_AGG_OPEN:
        if (a->relay) {
            int gone = 0, ret = fedge_relay_check_open(a, now, &gone);
            if (ret != FEDGE_OK)
                return ret;
            if (gone) {
                FEDGE_WARN("round %u: the parent is no longer in this round (a restart); closing it", a->round);
                a->deadline = now;
            }
        }
        if (a->n_accepted >= quorum_count(a))
            return close_step(a);
        if (now >= a->deadline) {
            FEDGE_INFO("round %u deadline: %zu of %zu updates", a->round, a->n_accepted, a->n_selected);
            return close_step(a);
        }
        return FEDGE_OK;
    case FEDGE_AGG_FINISHED:
        return FEDGE_OK;
    }
    return FEDGE_ERR_STATE;
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
    fedge_sched_tally(a, d, accepted, bytes);
}

static void sync_view(fedge_aggregator *a, int d, double now, fedge_sched_view *v)
{
    v->selected = a->state == FEDGE_AGG_OPEN && d >= 0 && a->selected[d] && !a->submitted[d];
    double left_ms = a->state == FEDGE_AGG_OPEN ? (a->deadline - now) * 1000.0 : 0;
    v->deadline_ms = left_ms > 0 ? left_ms : 0;
}

const fedge_sched fedge_sched_sync = {
    .mode = "sync",
    .resume = fedge_sched_resume_log,
    .on_tick = sync_on_tick,
    .on_accepted = sync_on_accepted,
    .admit = sync_admit,
    .counted = sync_counted,
    .view = sync_view,
};
