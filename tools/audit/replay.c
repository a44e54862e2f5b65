/* replay.c — fedge-audit replay --policy NEW.yaml: the recorded run under
 * another policy. The daemon's own rule code decides (governance.h's
 * fedge_gov_update_decision and fedge_gov_staleness_at, policy.h's
 * round rules, budget checks and accountant) on inputs rebuilt from the
 * log; nothing is written (the database is open read-only). What the log
 * does not hold is assumed, and said in the output (ASSUMPTIONS below). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "combine.h"
#include "common.h"
#include "delta.h"
#include "governance.h"
#include "hash.h"
#include "out.h"
#include "policy.h"
#include "round_config.h"
#include "scheduler.h"
#include "store.h"

static const char *const ASSUMPTIONS[] = {
    "device status: allowed at the time of each update, except updates refused by device_status "
    "(treated as still refused); today's status is not used",
    "device region: today's devices.region",
    "staleness: from the base model named in a stored delta, counting rounds closed before the "
    "update's round; a row without a delta (rejected, or pruned by retention) is taken as fresh "
    "unless it was refused by staleness (its logged staleness is used)",
    "rate limit: the recorded arrival times (received_at) of the device's earlier rows",
    "per-round rules: on the replayed accepted updates with a stored delta (directions from the "
    "stored, possibly clipped, delta; norms from the recorded pre-clip norm and the new clip)",
    "sampling rate q: the round's recorded dp_ledger q, else selected / devices the new policy "
    "makes eligible; a privacy_budget refusal before a round stops the run there, as the "
    "daemon does",
};

/* The configuration-dependent assumptions: rounds with the round-shaping
 * configuration recorded (round_config.h), and rounds without it. */
static const char *const ASSUME_CONFIG[] = {
    "weights: sample counts (1 each under DP) times the recorded staleness discount of an update "
    "whose base model is s versions old (fedge_sched_staleness_discount, not under DP), as the "
    "round close weighs them",
    "round configuration: the one recorded (an audited config event) before the round's last audit "
    "entry; a round left with fewer accepted updates than its min_updates fails, as the daemon "
    "fails it; rounds that failed or were refused for another reason outside the policy (no "
    "updates, a combiner) stay so; an async step keeps the updates it recorded (the daemon would "
    "have waited for more to fill its buffer)",
};
static const char *const ASSUME_NO_CONFIG[] = {
    "weights (rounds without a recorded configuration): sample counts (1 each under DP) without "
    "the staleness discount",
    "rounds without a recorded configuration (a log from before config events): rounds that failed "
    "or were refused for a reason outside the policy (min_updates, no updates, a combiner) stay so, "
    "and a round left with fewer replayed updates than its min_updates is still shown closed",
};

/* A text column, "" for NULL (a hostile log may hold anything). */
static const char *col_text(sqlite3_stmt *st, int i)
{
    const char *v = (const char *)sqlite3_column_text(st, i);
    return v ? v : "";
}

/* Rules that are the policy's (their decisions can change under another). */
static int policy_rule(const char *rule)
{
    static const char *const rules[] = {"all", "device_status", "region", "rate_limit", "sample_count", "finite",
                                        "staleness", "max_norm", "dp_clip", "device_privacy_budget", "anomaly",
                                        "max_share", "k_anonymity", "privacy_budget"};
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(rules); i++)
        if (!strcmp(rule, rules[i]))
            return 1;
    return 0;
}

typedef struct {
    char id[FEDGE_DEVICE_ID_MAX + 1];
    char region[FEDGE_REGION_MAX + 1];
    double spent[FEDGE_DP_N_ORDERS]; /* replayed per-device RDP (q = 1 per contribution) */
} dev_state;

typedef struct {
    int64_t id;
    char device[FEDGE_DEVICE_ID_MAX + 1];
    double received_at;
    int64_t n_samples;
    double norm; /* NaN: recorded as not finite */
    char rec_decision[16], rec_rule[FEDGE_POLICY_RULE_MAX];
    char rec_reason[FEDGE_POLICY_REASON_MAX];
    int has_delta, pruned, partial;
    int unreadable;          /* a stored delta that does not decode: fedge_strerror code */
    fedge_policy_decision d; /* replayed */
    double new_norm;
    double rec_after;        /* norm of the stored delta (after the recorded clip); NaN: none */
    double weight;
    uint32_t staleness; /* versions behind, when stale_found */
    int stale_found;
} row;

typedef struct {
    sqlite3 *db;
    const fedge_policy *p;
    dev_state *devs;
    size_t n_devs;
    out_table changes, rounds, weights;
    int64_t to_rejected, to_accepted, clip_changed, rounds_changed, unchanged;
    int64_t rounds_config, rounds_no_config; /* rounds with / without a recorded configuration */
} replay;

static dev_state *dev_find(replay *r, const char *id)
{
    for (size_t i = 0; i < r->n_devs; i++)
        if (!strcmp(r->devs[i].id, id))
            return &r->devs[i];
    return NULL;
}

static int load_devices(replay *r)
{
    sqlite3_stmt *st = NULL;
    int64_t n = 0;
    int ret;
    CHK(fedge_store_query_int64(r->db, &n, NULL, "SELECT count(*) FROM devices", ""));
    r->devs = calloc(n > 0 ? (size_t)n : 1, sizeof *r->devs);
    if (!r->devs)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(fedge_store_prepare(r->db, "SELECT id, region FROM devices ORDER BY id", &st));
    while (sqlite3_step(st) == SQLITE_ROW && r->n_devs < (size_t)n) {
        dev_state *d = &r->devs[r->n_devs++];
        snprintf(d->id, sizeof d->id, "%s", col_text(st, 0));
        snprintf(d->region, sizeof d->region, "%s", col_text(st, 1));
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

static void set_decision(fedge_policy_decision *d, fedge_decision_kind k, const char *rule, const char *reason)
{
    memset(d, 0, sizeof *d);
    d->decision = k;
    d->clip_factor = 1.0;
    snprintf(d->rule, sizeof d->rule, "%s", rule);
    snprintf(d->reason, sizeof d->reason, "%s", reason);
}

/* The per-update rules on one recorded row (base: the round's base model). */
static int replay_update(replay *r, row *u, uint32_t round, const uint8_t base[FEDGE_HASH_LEN], const uint8_t *blob,
                         size_t blob_len)
{
    const fedge_policy *p = r->p;
    dev_state *dev = dev_find(r, u->device);
    uint32_t staleness = 0, recent = 0;
    int ret = FEDGE_OK;
    u->new_norm = u->norm;
    if (!policy_rule(u->rec_rule)) { /* the aggregator's own refusal: not the policy's to change */
        set_decision(&u->d, FEDGE_DECISION_REJECT, u->rec_rule, u->rec_reason);
        return FEDGE_OK;
    }
    if (blob) {
        fedge_delta_header h;
        int found = 0;
        if (fedge_delta_decode_header(blob, blob_len, &h) == FEDGE_OK) {
            u->partial = (h.flags & FEDGE_DELTA_FLAG_PARTIAL) != 0;
            CHK(fedge_gov_staleness_at(r->db, h.base_version, base, round, &found, &staleness));
            u->stale_found = found;
            u->staleness = staleness;
        }
    } else if (!strcmp(u->rec_rule, "staleness")) {
        unsigned v = 0;
        if (sscanf(u->rec_reason, "base model is %u versions old", &v) == 1)
            staleness = v;
    }
    double window = fedge_policy_rate_window_s(p);
    if (window > 0) {
        int64_t n = 0;
        CHK(fedge_store_query_int64(r->db, &n, NULL,
                                    "SELECT count(*) FROM updates WHERE device=? AND id<? AND received_at>?", "tid",
                                    u->device, u->id, u->received_at - window));
        recent = (uint32_t)n;
    }
    fedge_policy_update_in pin = {
        .device_id = u->device,
        .device_status = strcmp(u->rec_rule, "device_status") ? "allowed" : "suspended",
        .device_region = dev ? dev->region : "",
        .round = round,
        .staleness = staleness,
        .n_samples = u->partial ? 1 : (uint64_t)(u->n_samples > 0 ? u->n_samples : 0),
        .l2_norm = u->norm,
        .finite = isfinite(u->norm),
        .recent_updates = recent,
    };
    static const double none[FEDGE_DP_N_ORDERS];
    CHK(fedge_gov_update_decision(p, &pin, dev ? dev->spent : none, &u->d));
    if (u->d.decision == FEDGE_DECISION_CLIP)
        u->new_norm = u->norm * u->d.clip_factor;
cleanup:
    return ret;
}

/* The stored delta's model half, scaled to norm `to` (direction kept). */
static int scaled_delta(const uint8_t *blob, size_t len, double to, float **buf, size_t *n, double *stored_norm)
{
    fedge_delta_header h;
    int ret;
    CHK(fedge_delta_decode_header(blob, len, &h));
    float *v = realloc(*buf, (h.n_elems ? h.n_elems : 1) * sizeof *v);
    if (!v)
        FAIL(FEDGE_ERR_NOMEM);
    *buf = v;
    CHK(fedge_delta_decode(blob, len, h.model_id, h.n_elems, &h, v));
    *n = (h.flags & FEDGE_DELTA_FLAG_CONTROL) ? h.n_elems / 2 : h.n_elems;
    double norm = fedge_l2_norm(v, *n);
    double k = norm > 0 ? to / norm : 0;
    if (stored_norm)
        *stored_norm = norm;
    for (size_t i = 0; i < *n; i++)
        v[i] = (float)(v[i] * k);
cleanup:
    return ret;
}

/* Round rules (anomaly, k_anonymity, max_share) on the replayed accepted rows. */
static int replay_round_rules(replay *r, int64_t round, const fedge_agg_config *cfg, row *rows, size_t n_rows,
                              int *use, size_t n_use, fedge_policy_decision *round_d)
{
    fedge_policy_round_stat *stats = calloc(n_use ? n_use : 1, sizeof *stats);
    double *w = calloc(n_use ? n_use : 1, sizeof *w), *w_out = calloc(n_use ? n_use : 1, sizeof *w_out);
    fedge_policy_decision *per = calloc(n_use ? n_use : 1, sizeof *per);
    size_t *idx = calloc(n_use ? n_use : 1, sizeof *idx);
    double *sum = NULL, sum_norm2 = 0;
    float *buf = NULL;
    size_t n_params = 0, k = 0;
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK, dp = fedge_policy_dp_enabled(r->p);
    if (!stats || !w || !w_out || !per || !idx)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < n_rows; i++) {
        if (!use[i])
            continue;
        idx[k] = i;
        stats[k].norm = rows[i].new_norm;
        w[k] = dp ? 1.0 : (double)rows[i].n_samples;
        if (cfg && !dp && rows[i].stale_found && rows[i].staleness > 0)
            w[k] *= fedge_sched_staleness_discount(cfg, rows[i].staleness);
        k++;
    }
    if (fedge_policy_round_needs_dots(r->p, n_use)) {
        CHK(fedge_store_prepare(r->db, "SELECT delta FROM updates WHERE id=?", &st));
        for (int pass = 0; pass < 2; pass++) {
            for (size_t j = 0; j < n_use; j++) {
                row *u = &rows[idx[j]];
                sqlite3_reset(st);
                sqlite3_bind_int64(st, 1, u->id);
                if (sqlite3_step(st) != SQLITE_ROW)
                    FAIL(FEDGE_ERR_SQL);
                size_t n = 0;
                CHK(scaled_delta(sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), u->new_norm,
                                 &buf, &n, NULL));
                if (!sum) {
                    n_params = n;
                    sum = calloc(n_params ? n_params : 1, sizeof *sum);
                    if (!sum)
                        FAIL(FEDGE_ERR_NOMEM);
                }
                if (n != n_params)
                    FAIL(FEDGE_ERR_DELTA_SHAPE);
                if (pass == 0) {
                    for (size_t e = 0; e < n; e++)
                        sum[e] += buf[e];
                } else {
                    double dot = 0;
                    for (size_t e = 0; e < n; e++)
                        dot += (double)buf[e] * sum[e];
                    stats[j].dot_sum = dot;
                }
            }
            if (pass == 0)
                for (size_t e = 0; e < n_params; e++)
                    sum_norm2 += sum[e] * sum[e];
        }
    }
    CHK(fedge_policy_check_round_stats(r->p, n_use, stats, sum_norm2, w, w_out, per, round_d));
    for (size_t j = 0; j < n_use; j++) {
        row *u = &rows[idx[j]];
        u->weight = w_out[j];
        out_row(&r->weights);
        out_int(&r->weights, 0, u->id);
        out_int(&r->weights, 1, round);
        if (u->stale_found)
            out_int(&r->weights, 2, u->staleness);
        out_num(&r->weights, 3, w[j]);
        out_num(&r->weights, 4, w_out[j]);
        if (per[j].decision == FEDGE_DECISION_REJECT)
            u->d = per[j];
        else if (!strcmp(per[j].rule, "max_share"))
            snprintf(u->d.rule, sizeof u->d.rule, "max_share");
    }
cleanup:
    sqlite3_finalize(st);
    free(stats);
    free(w);
    free(w_out);
    free(per);
    free(idx);
    free(sum);
    free(buf);
    return ret;
}

/* The round-shaping configuration in force at the round's close: the last
 * config event audited before the round's last audit entry (*have 0: none,
 * or one that does not parse, which is then not trusted). */
static int config_at(sqlite3_stmt *cs, int64_t round, fedge_agg_config *cfg, int *have)
{
    *have = 0;
    memset(cfg, 0, sizeof *cfg);
    sqlite3_reset(cs);
    sqlite3_bind_int64(cs, 1, round);
    int rc = sqlite3_step(cs);
    if (rc == SQLITE_ROW)
        *have = fedge_round_config_parse(col_text(cs, 0), cfg) == FEDGE_OK;
    else if (rc != SQLITE_DONE)
        return FEDGE_ERR_SQL;
    return FEDGE_OK;
}

static const char *decision_text(const char *decision, const char *rule, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s (%s)", decision, rule);
    return buf;
}

static void note_change(replay *r, int64_t round, row *u, const char *new_decision)
{
    int was_rej = !strcmp(u->rec_decision, "rejected"), now_rej = !strcmp(new_decision, "rejected");
    /* the same decision may clip to another bound: the stored delta's norm is the recorded one */
    int clip_diff = !was_rej && !now_rej &&
                    (strcmp(u->rec_decision, new_decision) != 0 ||
                     (!strcmp(new_decision, "clipped") && strcmp(u->rec_rule, u->d.rule) != 0) ||
                     (!isnan(u->rec_after) && fabs(u->rec_after - u->new_norm) > 1e-5 * fmax(u->new_norm, 1e-30)));
    if (was_rej == now_rej && !clip_diff && (was_rej ? !strcmp(u->rec_rule, u->d.rule) : 1)) {
        r->unchanged++;
        return;
    }
    if (!was_rej && now_rej)
        r->to_rejected++;
    else if (was_rej && !now_rej)
        r->to_accepted++;
    else if (clip_diff)
        r->clip_changed++;
    char a[64], b[64];
    out_row(&r->changes);
    out_int(&r->changes, 0, u->id);
    out_int(&r->changes, 1, round);
    out_text(&r->changes, 2, u->device);
    out_text(&r->changes, 3, decision_text(u->rec_decision, u->rec_rule, a, sizeof a));
    out_text(&r->changes, 4, decision_text(new_decision, u->d.rule, b, sizeof b));
    out_num(&r->changes, 5, u->norm);
    out_num(&r->changes, 6, was_rej ? NAN : u->rec_after);
    out_num(&r->changes, 7, now_rej ? NAN : u->new_norm);
    if (u->pruned && !was_rej)
        out_textf(&r->changes, 8, "%s (delta pruned by retention: left out of the round rules)", u->d.reason);
    else if (was_rej && !now_rej)
        out_textf(&r->changes, 8, "%s (no stored delta: left out of the round rules)", u->d.reason);
    else
        out_text(&r->changes, 8, u->d.reason);
}

static int replay_run(replay *r)
{
    sqlite3_stmt *rs = NULL, *us = NULL, *ls = NULL, *cs = NULL;
    fedge_agg_config cfg;
    row *rows = NULL;
    int *use = NULL;
    float *scratch = NULL;
    size_t cap = 0;
    double spent[FEDGE_DP_N_ORDERS] = {0}, rdp[FEDGE_DP_N_ORDERS], rdp1[FEDGE_DP_N_ORDERS];
    int ret, rc, dp = fedge_policy_dp_enabled(r->p);
    int64_t stopped_at = 0;
    size_t eligible = 0;
    for (size_t i = 0; i < r->n_devs; i++) {
        fedge_policy_decision d;
        if (fedge_policy_check_device(r->p, r->devs[i].id, "allowed", r->devs[i].region, &d) == FEDGE_OK &&
            d.decision != FEDGE_DECISION_REJECT)
            eligible++;
    }
    CHK(fedge_store_prepare(r->db,
                            "SELECT id, status, base_version, n_selected, n_accepted, epsilon, ifnull(reason, '')"
                            " FROM rounds ORDER BY id",
                            &rs));
    CHK(fedge_store_prepare(r->db,
                            "SELECT id, device, received_at, n_samples, norm, decision, rule, reason, delta,"
                            " delta_pruned_round FROM updates WHERE round=? ORDER BY id",
                            &us));
    CHK(fedge_store_prepare(r->db, "SELECT q FROM dp_ledger WHERE round=?", &ls));
    CHK(fedge_store_prepare(r->db,
                            "SELECT e.detail FROM events e JOIN audit ae ON ae.tbl='events'"
                            " AND ae.row_key=CAST(e.id AS TEXT) WHERE e.kind='" FEDGE_ROUND_CONFIG_EVENT "'"
                            " AND ae.seq < (SELECT max(seq) FROM audit WHERE tbl='rounds'"
                            " AND row_key=CAST(?1 AS TEXT)) ORDER BY ae.seq DESC LIMIT 1",
                            &cs));
    while ((rc = sqlite3_step(rs)) == SQLITE_ROW) {
        int64_t round = sqlite3_column_int64(rs, 0);
        char rec_status[16], rec_reason[256], new_status[16] = "closed", note[512] = "";
        snprintf(rec_status, sizeof rec_status, "%s", col_text(rs, 1));
        snprintf(rec_reason, sizeof rec_reason, "%s", col_text(rs, 6));
        uint8_t base[FEDGE_HASH_LEN] = {0};
        (void)fedge_hash_from_hex(col_text(rs, 2), base);
        int64_t n_selected = sqlite3_column_int64(rs, 3);
        int64_t rec_accepted = sqlite3_column_int64(rs, 4);
        double rec_eps = sqlite3_column_type(rs, 5) == SQLITE_NULL ? NAN : sqlite3_column_double(rs, 5);
        double new_eps = NAN;
        int64_t new_accepted = 0;
        int have_cfg = 0;
        CHK(config_at(cs, round, &cfg, &have_cfg));
        if (have_cfg)
            r->rounds_config++;
        else
            r->rounds_no_config++;

        double q = 1.0;
        sqlite3_reset(ls);
        sqlite3_bind_int64(ls, 1, round);
        if (sqlite3_step(ls) == SQLITE_ROW)
            q = sqlite3_column_double(ls, 0);
        else if (eligible > 0 && n_selected > 0)
            q = fmin(1.0, (double)n_selected / (double)eligible);

        /* the round's rows */
        size_t n = 0;
        sqlite3_reset(us);
        sqlite3_bind_int64(us, 1, round);
        while ((rc = sqlite3_step(us)) == SQLITE_ROW) {
            if (n == cap) {
                size_t nc = cap ? 2 * cap : 64;
                row *nr = realloc(rows, nc * sizeof *nr);
                int *nu = nr ? realloc(use, nc * sizeof *nu) : NULL;
                if (nr)
                    rows = nr;
                if (!nr || !nu)
                    FAIL(FEDGE_ERR_NOMEM);
                use = nu;
                cap = nc;
            }
            row *u = &rows[n++];
            memset(u, 0, sizeof *u);
            u->rec_after = NAN;
            u->id = sqlite3_column_int64(us, 0);
            snprintf(u->device, sizeof u->device, "%s", col_text(us, 1));
            u->received_at = sqlite3_column_double(us, 2);
            u->n_samples = sqlite3_column_int64(us, 3);
            u->norm = sqlite3_column_type(us, 4) == SQLITE_NULL ? NAN : sqlite3_column_double(us, 4);
            snprintf(u->rec_decision, sizeof u->rec_decision, "%s", col_text(us, 5));
            snprintf(u->rec_rule, sizeof u->rec_rule, "%s", col_text(us, 6));
            snprintf(u->rec_reason, sizeof u->rec_reason, "%s", col_text(us, 7));
            const uint8_t *blob = sqlite3_column_blob(us, 8);
            size_t blob_len = (size_t)sqlite3_column_bytes(us, 8);
            if (blob) {
                /* the round close refuses a stored delta that does not decode (rule integrity) */
                size_t n_el = 0;
                u->unreadable = scaled_delta(blob, blob_len, 1.0, &scratch, &n_el, &u->rec_after);
                if (u->unreadable != FEDGE_OK)
                    blob = NULL;
            }
            u->has_delta = blob != NULL;
            u->pruned = sqlite3_column_type(us, 9) != SQLITE_NULL;
            if (stopped_at) {
                set_decision(&u->d, FEDGE_DECISION_REJECT, "privacy_budget", "the run would have stopped before this round");
                continue;
            }
            CHK(replay_update(r, u, (uint32_t)round, base, blob, blob_len));
            if (u->unreadable != FEDGE_OK && u->d.decision != FEDGE_DECISION_REJECT) {
                char why[FEDGE_POLICY_REASON_MAX];
                snprintf(why, sizeof why, "stored delta is unreadable: %s", fedge_strerror(u->unreadable));
                set_decision(&u->d, FEDGE_DECISION_REJECT, "integrity", why);
            }
        }
        if (rc != SQLITE_DONE)
            FAIL(FEDGE_ERR_SQL);

        int policy_failure = strstr(rec_reason, "k_anonymity") || strstr(rec_reason, "max_share") ||
                             strstr(rec_reason, "privacy_budget") || strstr(rec_reason, "every update was excluded") ||
                             (have_cfg && strstr(rec_reason, "fewer than min_updates"));
        fedge_policy_decision bd;
        double eps_after = 0;
        int refused_before = 0;
        if (!stopped_at && dp) {
            CHK(fedge_policy_budget_check(r->p, spent, q, &eps_after, &bd));
            refused_before = bd.decision == FEDGE_DECISION_REJECT;
        }
        if (stopped_at) {
            snprintf(new_status, sizeof new_status, "not run");
            snprintf(note, sizeof note, "the run stopped at round %lld (privacy_budget)", (long long)stopped_at);
        } else if (refused_before) {
            stopped_at = round;
            snprintf(new_status, sizeof new_status, "refused");
            snprintf(note, sizeof note, "privacy_budget: %s", bd.reason);
            for (size_t i = 0; i < n; i++)
                if (policy_rule(rows[i].rec_rule))
                    set_decision(&rows[i].d, FEDGE_DECISION_REJECT, "privacy_budget", "round refused before it opened");
        } else if (!strcmp(rec_status, "open") || (strcmp(rec_status, "closed") && !policy_failure)) {
            snprintf(new_status, sizeof new_status, "%s", rec_status);
            snprintf(note, sizeof note, "%s%s", rec_status[0] == 'o' ? "still open in the log" : "kept: ", rec_reason);
        } else {
            size_t n_use = 0;
            for (size_t i = 0; i < n; i++) {
                use[i] = rows[i].d.decision != FEDGE_DECISION_REJECT && rows[i].has_delta;
                n_use += (size_t)use[i];
            }
            size_t n_acc = 0; /* the close counts usable updates before the round rules */
            for (size_t i = 0; i < n; i++)
                n_acc += rows[i].d.decision != FEDGE_DECISION_REJECT;
            fedge_policy_decision round_d;
            set_decision(&round_d, FEDGE_DECISION_ACCEPT, "all", "");
            if (have_cfg && n_acc > 0 && n_acc < (size_t)cfg.min_updates) {
                snprintf(new_status, sizeof new_status, "failed");
                snprintf(note, sizeof note, "%zu usable updates, fewer than min_updates %ld", n_acc, cfg.min_updates);
                n_use = 0;
            } else if (n_use > 0)
                CHK(replay_round_rules(r, round, have_cfg ? &cfg : NULL, rows, n, use, n_use, &round_d));
            size_t kept = 0;
            for (size_t i = 0; i < n; i++)
                kept += use[i] && rows[i].d.decision != FEDGE_DECISION_REJECT;
            if (!strcmp(new_status, "failed")) {
                /* min_updates: the updates stay accepted, the round fails */
            } else if (round_d.decision == FEDGE_DECISION_REJECT) {
                snprintf(new_status, sizeof new_status, "failed");
                snprintf(note, sizeof note, "%s: %s", round_d.rule, round_d.reason);
            } else if (kept == 0) {
                snprintf(new_status, sizeof new_status, "failed");
                snprintf(note, sizeof note, "every update was excluded");
            } else if (dp) {
                CHK(fedge_policy_budget_check(r->p, spent, q, &eps_after, &bd));
                if (bd.decision == FEDGE_DECISION_REJECT) {
                    snprintf(new_status, sizeof new_status, "failed");
                    snprintf(note, sizeof note, "%s: %s", bd.rule, bd.reason);
                } else {
                    CHK(fedge_policy_dp_round_rdp(r->p, q, rdp));
                    CHK(fedge_policy_dp_round_rdp(r->p, 1.0, rdp1));
                    for (size_t o = 0; o < FEDGE_DP_N_ORDERS; o++)
                        spent[o] += rdp[o];
                    for (size_t i = 0; i < n; i++) {
                        dev_state *d = use[i] && rows[i].d.decision != FEDGE_DECISION_REJECT
                                           ? dev_find(r, rows[i].device) : NULL;
                        for (size_t o = 0; d && o < FEDGE_DP_N_ORDERS; o++)
                            d->spent[o] += rdp1[o];
                    }
                    CHK(fedge_policy_dp_epsilon(r->p, spent, &new_eps));
                    snprintf(note, sizeof note, "q %.4g, z %g", q, fedge_policy_dp_noise_multiplier(r->p));
                }
            }
        }
        for (size_t i = 0; i < n; i++) {
            row *u = &rows[i];
            const char *nd = fedge_decision_name(u->d.decision);
            if (u->d.decision != FEDGE_DECISION_REJECT)
                new_accepted++;
            note_change(r, round, u, nd);
        }
        int changed = strcmp(rec_status, new_status) != 0 || rec_accepted != new_accepted ||
                      (isnan(rec_eps) != isnan(new_eps)) ||
                      (!isnan(rec_eps) && fabs(rec_eps - new_eps) > 1e-9 * fmax(1.0, rec_eps));
        r->rounds_changed += changed;
        out_row(&r->rounds);
        out_int(&r->rounds, 0, round);
        out_text(&r->rounds, 1, rec_status);
        out_text(&r->rounds, 2, new_status);
        out_int(&r->rounds, 3, rec_accepted);
        out_int(&r->rounds, 4, new_accepted);
        out_num(&r->rounds, 5, rec_eps);
        out_num(&r->rounds, 6, new_eps);
        out_text(&r->rounds, 7, changed ? "yes" : "no");
        out_text(&r->rounds, 8, note);
    }
    if (rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
cleanup:
    sqlite3_finalize(rs);
    sqlite3_finalize(us);
    sqlite3_finalize(ls);
    sqlite3_finalize(cs);
    free(rows);
    free(use);
    free(scratch);
    return ret;
}

int cmd_replay(sqlite3 *db, const cli_opts *o)
{
    static const char *const ccols[] = {"update", "round", "device", "recorded", "replayed",
                                        "norm", "norm_after_recorded", "norm_after", "reason"};
    static const char *const rcols[] = {"round", "recorded", "replayed", "accepted_recorded",
                                        "accepted_replayed", "epsilon_recorded", "epsilon_replayed",
                                        "changed", "note"};
    static const char *const wcols[] = {"update", "round", "staleness", "weight", "weight_after_max_share"};
    fedge_policy *p = NULL;
    char err[1024] = "";
    int status = EXIT_USAGE;
    replay r;
    memset(&r, 0, sizeof r);
    out_table_init(&r.changes, FEDGE_ARRAY_LEN(ccols), ccols);
    out_table_init(&r.rounds, FEDGE_ARRAY_LEN(rcols), rcols);
    out_table_init(&r.weights, FEDGE_ARRAY_LEN(wcols), wcols);
    if (fedge_policy_load(o->policy, &p, err, sizeof err) != FEDGE_OK) {
        /* escaped by the loader already (policy.h) */
        fprintf(stderr, "fedge-audit: %s\n", err[0] ? err : "cannot load the policy");
        goto done;
    }
    r.db = db;
    r.p = p;
    int ret = load_devices(&r);
    if (ret == FEDGE_OK)
        ret = replay_run(&r);
    if (ret != FEDGE_OK || out_table_failed(&r.changes) || out_table_failed(&r.rounds) ||
        out_table_failed(&r.weights)) {
        cli_error("replay failed: %s", ret != FEDGE_OK ? fedge_strerror(ret) : "out of memory");
        goto done;
    }
    double eps_rec = NAN, eps_new = NAN;
    for (size_t i = r.rounds.n_rows; i-- > 0;) {
        const out_cell *c = &r.rounds.cells[i * r.rounds.n_cols + 5];
        if (c->kind == CELL_NUM) {
            eps_rec = c->num;
            break;
        }
    }
    for (size_t i = r.rounds.n_rows; i-- > 0;) {
        const out_cell *c = &r.rounds.cells[i * r.rounds.n_cols + 6];
        if (c->kind == CELL_NUM) {
            eps_new = c->num;
            break;
        }
    }
    if (o->json) {
        json_w j;
        json_init(&j, stdout);
        json_obj(&j, NULL);
        json_str(&j, "policy", fedge_policy_name(p));
        json_obj(&j, "summary");
        json_int(&j, "accepted_to_rejected", r.to_rejected);
        json_int(&j, "rejected_to_accepted", r.to_accepted);
        json_int(&j, "clipping_changed", r.clip_changed);
        json_int(&j, "updates_unchanged", r.unchanged);
        json_int(&j, "rounds_changed", r.rounds_changed);
        json_int(&j, "rounds_with_recorded_config", r.rounds_config);
        json_num(&j, "epsilon_recorded", eps_rec);
        json_num(&j, "epsilon_replayed", eps_new);
        json_obj_end(&j);
        json_table(&j, "changes", &r.changes);
        json_table(&j, "rounds", &r.rounds);
        json_table(&j, "weights", &r.weights);
        json_arr(&j, "assumptions");
        for (size_t i = 0; i < FEDGE_ARRAY_LEN(ASSUMPTIONS); i++)
            json_str(&j, NULL, ASSUMPTIONS[i]);
        for (size_t i = 0; r.rounds_config && i < FEDGE_ARRAY_LEN(ASSUME_CONFIG); i++)
            json_str(&j, NULL, ASSUME_CONFIG[i]);
        for (size_t i = 0; r.rounds_no_config && i < FEDGE_ARRAY_LEN(ASSUME_NO_CONFIG); i++)
            json_str(&j, NULL, ASSUME_NO_CONFIG[i]);
        json_arr_end(&j);
        json_obj_end(&j);
        json_done(&j);
    } else {
        printf("# Policy replay: %s over the recorded run\n\n", fedge_policy_name(p));
        printf("- accepted -> rejected: %lld\n- rejected -> accepted: %lld\n- clipping changed: %lld\n"
               "- updates unchanged: %lld\n- rounds changed: %lld\n",
               (long long)r.to_rejected, (long long)r.to_accepted, (long long)r.clip_changed,
               (long long)r.unchanged, (long long)r.rounds_changed);
        printf("- rounds with a recorded round configuration: %lld of %lld\n", (long long)r.rounds_config,
               (long long)(r.rounds_config + r.rounds_no_config));
        if (isnan(eps_rec) && isnan(eps_new))
            printf("- epsilon: no DP guarantee recorded or replayed\n");
        else
            printf("- epsilon: recorded %s%.6g, replayed %s%.6g\n", isnan(eps_rec) ? "none " : "",
                   isnan(eps_rec) ? 0.0 : eps_rec, isnan(eps_new) ? "none " : "", isnan(eps_new) ? 0.0 : eps_new);
        printf("\n## Updates whose decision changes\n\n");
        if (r.changes.n_rows)
            out_print_md(stdout, &r.changes);
        else
            printf("None.\n");
        printf("\n## Rounds\n\n");
        out_print_md(stdout, &r.rounds);
        printf("\n## Assumptions\n\n");
        for (size_t i = 0; i < FEDGE_ARRAY_LEN(ASSUMPTIONS); i++)
            printf("- %s\n", ASSUMPTIONS[i]);
        for (size_t i = 0; r.rounds_config && i < FEDGE_ARRAY_LEN(ASSUME_CONFIG); i++)
            printf("- %s\n", ASSUME_CONFIG[i]);
        for (size_t i = 0; r.rounds_no_config && i < FEDGE_ARRAY_LEN(ASSUME_NO_CONFIG); i++)
            printf("- %s\n", ASSUME_NO_CONFIG[i]);
    }
    status = EXIT_OK;
done:
    out_table_free(&r.changes);
    out_table_free(&r.rounds);
    out_table_free(&r.weights);
    free(r.devs);
    fedge_policy_free(p);
    return status;
}
