/* sched_async.c — buffered asynchronous aggregation (scheduler.h, mode
 * "async"; Nguyen et al., FedBuff, AISTATS 2022).
 *
 * Each aggregation step is a rounds row: it opens at once (status 'open',
 * n_selected 0: its admissions are its round_participants rows),
 * devices are admitted to it while fewer than async_concurrency are in
 * flight, and the accepted update rows of the open step ARE the buffer: at
 * async_buffer_k of them the step closes like a sync round
 * (fedge_sched_close_step: staleness-discounted weights, the combiner, the
 * server optimiser, a new version, evaluation, lineage, a signed head) and
 * the next step opens. A crash leaves the open step and its accepted rows in
 * the log, so a restart resumes the buffer exactly.
 *
 * Admission: GET /round marks the device as asking; each tick ranks the
 * devices asking (fedge_sched_async_rank, keyed by seed and step) and gives
 * the free slots to the lowest ranks, logging each as a round_participants
 * row of the step plus an audited 'async_admitted' event with its rank. An
 * admission lets the device send one update (for the step it read or later);
 * its slot is freed when that update is decided, when the session the
 * device observed /round on ends (`left`), or after async_slot_timeout_s. At most async_max_versions distinct steps (base
 * versions) are in flight. Slots are memory only: after a restart the open
 * step's admissions without an update get theirs back (a fresh timeout);
 * an earlier step's admitted device may still send its one update.
 *
 * Cost per pass (issue 9): the daemon ticks after every wake of its I/O
 * loop, so a pass must not walk the population. The askers and the slot
 * holders are kept in lists (agg.h) and a pass visits them only: the slot
 * timeouts are checked when the earliest slot given can be due; a device's
 * rank is cached with its step. The ranking, sorting and status queries run
 * only when something that can change who is admitted changed since the
 * last evaluation (a new ask, a slot freed, a new step, a policy or keys
 * reload), and at least once a second anyway (ADMIT_REEVAL_S): a device's
 * status in the log can be changed by fedge-admin from outside the
 * process, which such a device then sees up to a second later. Who is
 * admitted, with which rank and "k of n asking", is what the rule above
 * gives on the pass that evaluates. */
#include "scheduler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "common.h"
#include "governance.h"
#include "log.h"
#include "policy.h"
#include "store.h"

/* a device that asked longer ago than this is no longer waiting */
#define ASK_TTL_S 10.0
/* an admission is evaluated at least this often (module comment) */
#define ADMIT_REEVAL_S 1.0
#define MARK_ASKER 1u
#define MARK_HOLDER 2u

/* The askers and holders lists from asked_at and adm_step, for keys.n
 * devices (at init, a restart, a keys reload that added devices). */
static int index_rebuild(fedge_aggregator *a, double now)
{
    size_t n = a->keys.n ? a->keys.n : 1;
    free(a->askers);
    free(a->holders);
    free(a->async_mark);
    free(a->rank);
    free(a->rank_step);
    a->askers = calloc(n, sizeof *a->askers);
    a->holders = calloc(n, sizeof *a->holders);
    a->async_mark = calloc(n, 1);
    a->rank = calloc(n, sizeof *a->rank);
    a->rank_step = calloc(n, sizeof *a->rank_step);
    a->n_askers = a->n_holders = a->async_n = 0;
    a->slot_min_at = 1e300;
    a->admit_dirty = 1;
    if (!a->askers || !a->holders || !a->async_mark || !a->rank || !a->rank_step)
        return FEDGE_ERR_NOMEM;
    a->async_n = a->keys.n;
    for (size_t i = 0; i < a->keys.n; i++) {
        if (now - a->asked_at[i] <= ASK_TTL_S) {
            a->askers[a->n_askers++] = (uint32_t)i;
            a->async_mark[i] |= MARK_ASKER;
        }
        if (a->adm_step[i]) {
            a->holders[a->n_holders++] = (uint32_t)i;
            a->async_mark[i] |= MARK_HOLDER;
            if (a->adm_at[i] < a->slot_min_at)
                a->slot_min_at = a->adm_at[i];
        }
    }
    return FEDGE_OK;
}

static int async_alloc(fedge_aggregator *a)
{
    size_t n = a->keys.n ? a->keys.n : 1;
    free(a->adm_step);
    free(a->adm_at);
    free(a->asked_at);
    free(a->view_changed);
    free(a->view_changed_mark);
    a->adm_step = calloc(n, sizeof *a->adm_step);
    a->adm_at = calloc(n, sizeof *a->adm_at);
    a->asked_at = calloc(n, sizeof *a->asked_at);
    a->view_changed = calloc(n, sizeof *a->view_changed);
    a->view_changed_mark = calloc(n, 1);
    a->in_flight = 0;
    a->n_view_changed = 0;
    if (a->asked_at)
        for (size_t i = 0; i < n; i++)
            a->asked_at[i] = -1e300; /* never */
    return a->adm_step && a->adm_at && a->asked_at && a->view_changed && a->view_changed_mark ? FEDGE_OK
                                                                                                  : FEDGE_ERR_NOMEM;
}

static int async_resume(fedge_aggregator *a)
{
    int ret;
    CHK(async_alloc(a));
    CHK(fedge_sched_resume_log(a));
    double now = fedge_clock_mono();
    if (a->state == FEDGE_AGG_OPEN) { /* the step's admissions so far hold slots again */
        a->n_selected = 0;
        for (size_t i = 0; i < a->keys.n; i++) {
            a->n_selected += a->selected[i];
            if (a->selected[i] && !a->submitted[i]) {
                a->adm_step[i] = a->round;
                a->adm_at[i] = now;
                a->in_flight++;
            }
        }
    }
    CHK(index_rebuild(a, now));
cleanup:
    return ret;
}

static int open_step(fedge_aggregator *a, double now)
{
    sqlite3_stmt *st = NULL;
    int ret, refused = 0;
    uint32_t step = a->round + 1;
    char reason[256] = "";
    CHK(fedge_gov_round_admission(a, step, 1, 1, &refused, reason, sizeof reason));
    if (refused) {
        CHK(fedge_sched_refuse_round(a, step, reason, now));
        goto cleanup;
    }
    double wall = fedge_clock_wall();
    CHK(fedge_store_begin(a->db));
    CHK(fedge_store_prepare(a->db, "INSERT INTO rounds(id, opened_at, deadline, status, base_version, strategy,"
                           " n_selected) VALUES(?,?,?, 'open', ?, ?, 0)", &st));
    sqlite3_bind_int64(st, 1, step);
    sqlite3_bind_double(st, 2, wall);
    sqlite3_bind_double(st, 3, wall + a->cfg.round_timeout_s);
    sqlite3_bind_text(st, 4, a->version_hex, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, fedge_gov_strategy(a), -1, SQLITE_STATIC);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret != FEDGE_OK)
        goto cleanup;
    char key[24];
    snprintf(key, sizeof key, "%u", step);
    CHK(fedge_gov_audit(a, "rounds", key));
    CHK(fedge_store_commit(a->db));
    memset(a->selected, 0, a->keys.n);
    memset(a->submitted, 0, a->keys.n);
    a->round = step;
    a->state = FEDGE_AGG_OPEN;
    a->opened_at = wall;
    a->deadline = 0;
    a->n_selected = a->n_accepted = a->n_rejected = 0;
    a->bytes_received = 0;
    a->admit_dirty = 1;
    FEDGE_INFO("step %u open: base %.16s, buffer of %ld", step, a->version_hex, a->cfg.async_buffer_k);
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    return ret;
}

static void free_slot(fedge_aggregator *a, int d)
{
    if (a->adm_step[d]) {
        a->adm_step[d] = 0;
        a->in_flight--;
        a->admit_dirty = 1;
        fedge_sched_view_changed(a, d);
    }
}

/* Drops the holders whose slot was freed; frees those timed out; the
 * earliest slot given among those left. */
static void walk_holders(fedge_aggregator *a, double now, int timeouts)
{
    size_t kept = 0;
    a->slot_min_at = 1e300;
    a->async_visits += a->n_holders;
    for (size_t k = 0; k < a->n_holders; k++) {
        uint32_t i = a->holders[k];
        if (timeouts && a->adm_step[i] && now - a->adm_at[i] > a->cfg.async_slot_timeout_s) {
            FEDGE_INFO("step %u: %s's slot (step %u) timed out", a->round, a->keys.devices[i].id, a->adm_step[i]);
            free_slot(a, (int)i);
        }
        if (!a->adm_step[i]) {
            a->async_mark[i] &= (uint8_t)~MARK_HOLDER;
            continue;
        }
        if (a->adm_at[i] < a->slot_min_at)
            a->slot_min_at = a->adm_at[i];
        a->holders[kept++] = i;
    }
    a->n_holders = kept;
}

/* Distinct steps (base versions) among the slots held, and whether the open
 * step is one of them. */
static size_t versions_in_flight(fedge_aggregator *a, int *has_current)
{
    uint32_t seen[64];
    size_t n = 0;
    *has_current = 0;
    a->async_visits += a->n_holders;
    for (size_t k = 0; k < a->n_holders; k++) {
        uint32_t s = a->adm_step[a->holders[k]];
        if (!s)
            continue;
        if (s == a->round)
            *has_current = 1;
        size_t j = 0;
        while (j < n && seen[j] != s)
            j++;
        if (j == n) {
            if (n == sizeof seen / sizeof seen[0])
                return n; /* more than any sane async_max_versions */
            seen[n++] = s;
        }
    }
    return n;
}

/* Device i asked lately, holds no slot, and has neither an admission nor a
 * counted update in the open step. The last matters: async_admit counts an
 * admission in step s as used by any update counted in step s or later, so
 * a device whose update (admitted in an earlier step) was counted in this
 * step would get an admission that is used up before it is given. */
static int waiting(const fedge_aggregator *a, size_t i, double now)
{
    return !a->adm_step[i] && !a->selected[i] && !a->submitted[i] && now - a->asked_at[i] <= ASK_TTL_S;
}

typedef struct {
    uint64_t rank;
    size_t d;
} candidate;

static int by_rank(const void *x, const void *y)
{
    const candidate *p = x, *q = y;
    if (p->rank != q->rank)
        return p->rank < q->rank ? -1 : 1;
    return p->d < q->d ? -1 : p->d > q->d;
}

/* Drops the askers whose ask expired; the number waiting. */
static size_t walk_askers(fedge_aggregator *a, double now)
{
    size_t kept = 0, asking = 0;
    a->async_visits += a->n_askers;
    for (size_t k = 0; k < a->n_askers; k++) {
        uint32_t i = a->askers[k];
        if (now - a->asked_at[i] > ASK_TTL_S) {
            a->async_mark[i] &= (uint8_t)~MARK_ASKER;
            continue;
        }
        asking += waiting(a, i, now);
        a->askers[kept++] = i;
    }
    a->n_askers = kept;
    return asking;
}

/* The free slots go to the lowest-ranked devices asking (module comment). */
static int admit_waiting(fedge_aggregator *a, double now)
{
    candidate *c = NULL;
    size_t n = 0;
    sqlite3_stmt *st = NULL, *status = NULL;
    int ret = FEDGE_OK, has_current = 0;
    if (a->async_n != a->keys.n) /* a keys reload added devices */
        CHK(index_rebuild(a, now));
    if (a->n_holders && now - a->slot_min_at > a->cfg.async_slot_timeout_s)
        walk_holders(a, now, 1);
    if (a->in_flight >= (size_t)a->cfg.async_concurrency)
        return FEDGE_OK;
    if (!a->admit_dirty && now - a->admit_eval_at < ADMIT_REEVAL_S)
        return FEDGE_OK;
    a->admit_dirty = 0;
    a->admit_eval_at = now;
    walk_holders(a, now, 0);
    if (versions_in_flight(a, &has_current) >= (size_t)a->cfg.async_max_versions && !has_current)
        return FEDGE_OK;
    size_t asking = walk_askers(a, now);
    if (asking == 0)
        return FEDGE_OK;
    c = malloc(asking * sizeof *c);
    if (!c)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t k = 0; k < a->n_askers && n < asking; k++) {
        size_t i = a->askers[k];
        if (!waiting(a, i, now))
            continue;
        if (a->rank_step[i] != a->round) {
            CHK(fedge_sched_async_rank((uint64_t)a->cfg.seed, a->round, a->keys.devices[i].id, &a->rank[i]));
            a->rank_step[i] = a->round;
        }
        c[n].d = i;
        c[n].rank = a->rank[i];
        n++;
    }
    if (n == 0)
        goto cleanup;
    qsort(c, n, sizeof *c, by_rank);
    size_t want = (size_t)a->cfg.async_concurrency - a->in_flight, take = 0;
    unsigned cap = fedge_policy_max_participations(a->policy);
    CHK(fedge_store_prepare(a->db, "SELECT status FROM devices WHERE id=?", &status));
    /* down the ranking: skip devices the policy makes ineligible (status,
     * region) and those at the participation cap */
    for (size_t k = 0; k < n && take < want; k++) {
        sqlite3_reset(status);
        sqlite3_bind_text(status, 1, a->keys.devices[c[k].d].id, -1, SQLITE_STATIC);
        if (sqlite3_step(status) != SQLITE_ROW ||
            !fedge_gov_device_eligible(a, c[k].d, (const char *)sqlite3_column_text(status, 0)))
            continue;
        if (cap > 0) {
            int64_t times = 0;
            CHK(fedge_store_query_int64(a->db, &times, NULL, "SELECT count(*) FROM round_participants WHERE device=?",
                                        "t", a->keys.devices[c[k].d].id));
            if (times >= (int64_t)cap)
                continue;
        }
        c[take++] = c[k];
    }
    if (take == 0)
        goto cleanup;
    CHK(fedge_store_begin(a->db));
    CHK(fedge_store_prepare(a->db, "INSERT INTO round_participants(round, device) VALUES(?,?)", &st));
    for (size_t k = 0; k < take; k++) {
        const char *id = a->keys.devices[c[k].d].id;
        char detail[96];
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, a->round);
        sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE)
            FAIL(FEDGE_ERR_SQL);
        snprintf(detail, sizeof detail, "rank %016llx, %zu of %zu asking", (unsigned long long)c[k].rank, k + 1, n);
        CHK(fedge_gov_event(a, a->round, id, "async_admitted", "admission", detail));
    }
    CHK(fedge_store_commit(a->db));
    for (size_t k = 0; k < take; k++) {
        size_t i = c[k].d;
        a->selected[i] = 1;
        a->adm_step[i] = a->round;
        a->adm_at[i] = now;
        a->in_flight++;
        a->n_selected++;
        if (!(a->async_mark[i] & MARK_HOLDER)) {
            a->async_mark[i] |= MARK_HOLDER;
            a->holders[a->n_holders++] = (uint32_t)i;
        }
        if (now < a->slot_min_at)
            a->slot_min_at = now;
        fedge_sched_view_changed(a, (int)i);
    }
cleanup:
    if (ret != FEDGE_OK) {
        fedge_store_rollback(a->db);
        a->admit_dirty = 1;
    }
    sqlite3_finalize(st);
    sqlite3_finalize(status);
    free(c);
    return ret;
}

static int close_if_full(fedge_aggregator *a, double now)
{
    int ret = FEDGE_OK;
    if (a->state == FEDGE_AGG_OPEN && a->n_accepted >= (size_t)a->cfg.async_buffer_k) {
        CHK(fedge_sched_close_step(a));
        if (a->state == FEDGE_AGG_WAITING)
            CHK(open_step(a, now));
    }
cleanup:
    return ret;
}

static int async_on_tick(fedge_aggregator *a, double now)
{
    switch (a->state) {
    case FEDGE_AGG_WAITING:
        if (now >= a->start_at)
            return open_step(a, now);
        return FEDGE_OK;
    case FEDGE_AGG_OPEN: {
        int ret = close_if_full(a, now);
        if (ret == FEDGE_OK && a->state == FEDGE_AGG_OPEN)
            ret = admit_waiting(a, now);
        return ret;
    }
    case FEDGE_AGG_FINISHED:
        return FEDGE_OK;
    }
    return FEDGE_ERR_STATE;
}


/* Device d holds a slot whose admission an update counted already used up:
 * it must not read selected=1 any longer, nor keep a slot others could
 * take. waiting() keeps this from happening; this is the safety net. */
static void drop_used_slot(fedge_aggregator *a, int d, const char *device)
{
    FEDGE_WARN("step %u: %s held a slot (step %u) for an admission already used; freed", a->round, device,
               a->adm_step[d]);
    free_slot(a, d);
}

static int async_admit(fedge_aggregator *a, int d, const char *device, uint32_t for_round, int *ok, int *code,
                       char *msg, size_t msglen)
{
    int ret = FEDGE_OK, found = 0, already = 0;
    int64_t admitted_in = 0, one;
    *ok = 0;
    if (a->state != FEDGE_AGG_OPEN) {
        *code = 503;
        snprintf(msg, msglen, "%s", a->state == FEDGE_AGG_FINISHED ? "run finished" : "no open step");
        goto cleanup;
    }
    if (a->n_accepted >= (size_t)a->cfg.async_buffer_k) {
        /* K updates already went in earlier in this group commit (the step
         * closes after it): this one goes to the next step; the slot stays */
        *code = 503;
        snprintf(msg, msglen, "step %u's buffer is full; retry", a->round);
        goto cleanup;
    }
    if (a->submitted[d]) {
        if (a->adm_step[d])
            drop_used_slot(a, d, device);
        *code = 409;
        snprintf(msg, msglen, "an update of this device is already in step %u's buffer", a->round);
        FEDGE_INFO("step %u: %s refused (trained for %u): %s", a->round, device, for_round, msg);
        goto cleanup;
    }
    /* One update per admission: the device's latest admission, at or
     * before the step it says it trained for, with nothing counted since. */
    CHK(fedge_store_query_int64(a->db, &admitted_in, &found,
                                "SELECT max(round) FROM round_participants WHERE device=? AND round<=?", "ti",
                                device, (int64_t)for_round));
    if (!found) {
        *code = 403;
        snprintf(msg, msglen, "not admitted (ask GET /round and wait for selected=1)");
        goto cleanup;
    }
    CHK(fedge_store_query_int64(a->db, &one, &already,
                                "SELECT 1 FROM updates WHERE device=? AND round>=? AND decision<>'rejected'", "ti",
                                device, admitted_in));
    if (already) {
        /* the slot's admission is at or before this one: used up too */
        if (a->adm_step[d] && (int64_t)a->adm_step[d] <= admitted_in)
            drop_used_slot(a, d, device);
        *code = 409;
        snprintf(msg, msglen, "the update for this device's admission in step %lld was already counted",
                 (long long)admitted_in);
        FEDGE_INFO("step %u: %s refused (trained for %u): %s", a->round, device, for_round, msg);
        goto cleanup;
    }
    *ok = 1;
cleanup:
    return ret;
}

static void async_counted(fedge_aggregator *a, int d, int accepted, size_t bytes)
{
    fedge_sched_tally(a, d, accepted, bytes);
    free_slot(a, d);
}

static void async_view(fedge_aggregator *a, int d, double now, fedge_sched_view *v)
{
    v->selected = 0;
    v->deadline_ms = 0;
    if (d < 0 || a->state != FEDGE_AGG_OPEN)
        return;
    if (!(now - a->asked_at[d] <= ASK_TTL_S)) /* it was not asking */
        a->admit_dirty = 1;
    a->asked_at[d] = now;
    if ((size_t)d < a->async_n && !(a->async_mark[d] & MARK_ASKER)) {
        a->async_mark[d] |= MARK_ASKER;
        a->askers[a->n_askers++] = (uint32_t)d;
    }
    if (a->adm_step[d]) {
        double left_ms = (a->adm_at[d] + a->cfg.async_slot_timeout_s - now) * 1000.0;
        v->selected = 1;
        v->deadline_ms = left_ms > 0 ? left_ms : 0;
    }
}

static void async_left(fedge_aggregator *a, int d)
{
    if (d < 0 || (size_t)d >= a->keys.n)
        return;
    a->asked_at[d] = -1e300;
    if (a->adm_step[d])
        FEDGE_INFO("step %u: %s left; its slot (step %u) is free", a->round, a->keys.devices[d].id, a->adm_step[d]);
    free_slot(a, d);
}

const fedge_sched fedge_sched_async = {
    .mode = "async",
    .resume = async_resume,
    .on_tick = async_on_tick,
    .on_accepted = close_if_full,
    .admit = async_admit,
    .counted = async_counted,
    .view = async_view,
    .left = async_left,
};
