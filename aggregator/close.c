/* close.c — the round close (close.h): stored deltas -> exclusions -> round
 * rules -> combiner or DP-FedAvg -> server optimiser -> a->model. */
#include "close.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "audit.h"
#include "combine.h"
#include "common.h"
#include "governance.h"
#include "log.h"
#include "policy.h"
#include "relay.h"
#include "scheduler.h"
#include "store.h"
#include "strategy.h"

/* The round's accepted updates without their deltas: O(devices) memory. */
typedef struct {
    size_t n, cap;
    int64_t *ids;
    char (*devices)[FEDGE_DEVICE_ID_MAX + 1];
    double *weights;                 /* aggregation weight; 0: excluded at load */
    int64_t *samples;                /* stated sample count */
    fedge_policy_round_stat *stats;
    fedge_policy_decision *excluded; /* why, for weights[i] == 0 */
    fedge_delta_header *hdr;         /* of each readable delta: where its blocks lie */
} round_updates;

static void round_updates_free(round_updates *u)
{
    free(u->ids);
    free(u->devices);
    free(u->weights);
    free(u->samples);
    free(u->stats);
    free(u->excluded);
    free(u->hdr);
    memset(u, 0, sizeof *u);
}

/* Calls fn for each accepted update of the open round, in id order, with its
 * delta decoded into one reused buffer (delta NULL and decode_err set when
 * the stored delta is unreadable). */
typedef int (*delta_fn)(fedge_aggregator *a, void *ctx, size_t i, int64_t id, const char *device,
                        int64_t n_samples, const fedge_delta_header *h, const float *delta,
                        int decode_err);

/* Accepted rows of the open round (normally at most one per device, but a
 * device dropped from the keys file since still has its row). */
static int round_rows(fedge_aggregator *a, size_t *n)
{
    int64_t v = 0;
    int ret = fedge_store_query_int64(a->db, &v, NULL,
                                      "SELECT count(*) FROM updates WHERE round=? AND decision<>'rejected'", "i",
                                      (int64_t)a->round);
    *n = (size_t)(v > 0 ? v : 0);
    return ret;
}

/* Elements of a stored delta: the model delta, and with SCAFFOLD the
 * control-variate delta after it. */
static size_t stored_elems(const fedge_aggregator *a)
{
    return a->model.n_params * (a->cfg.scaffold ? 2 : 1);
}

static int for_each_delta(fedge_aggregator *a, float *buf, delta_fn fn, void *ctx)
{
    sqlite3_stmt *st = NULL, *row = NULL;
    int64_t *ids = NULL;
    size_t n = 0, cap = 0;
    int ret, rc;
    /* The ids first, then one row at a time: a single query ordered by id
     * would be planned over the (round, device) index and sort every row,
     * deltas included, in memory. */
    CHK(round_rows(a, &cap));
    ids = malloc((cap ? cap : 1) * sizeof *ids);
    if (!ids)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(fedge_store_prepare(a->db, "SELECT id FROM updates WHERE round=? AND decision<>'rejected' ORDER BY id", &st));
    sqlite3_bind_int64(st, 1, a->round);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap)
            break; /* none can appear: this close holds the write lock */
        ids[n++] = sqlite3_column_int64(st, 0);
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        FAIL(fedge_store_status(rc));
    CHK(fedge_store_prepare(a->db, "SELECT device, n_samples, delta FROM updates WHERE id=?", &row));
    for (size_t i = 0; i < n; i++) {
        sqlite3_reset(row);
        sqlite3_bind_int64(row, 1, ids[i]);
        rc = sqlite3_step(row);
        if (rc != SQLITE_ROW)
            FAIL(rc == SQLITE_DONE ? FEDGE_ERR_STATE : fedge_store_status(rc));
        fedge_delta_header h;
        const uint8_t *blob = sqlite3_column_blob(row, 2);
        size_t len = (size_t)sqlite3_column_bytes(row, 2);
        int dr = blob ? fedge_delta_decode(blob, len, a->model_id, (uint32_t)stored_elems(a), &h, buf)
                      : FEDGE_ERR_DELTA_TRUNCATED;
        if (dr == FEDGE_OK && !(h.flags & FEDGE_DELTA_FLAG_CONTROL) != !a->cfg.scaffold)
            dr = FEDGE_ERR_DELTA_SHAPE; /* the other form: logged before scaffold was switched */
        CHK(fn(a, ctx, i, ids[i], (const char *)sqlite3_column_text(row, 0), sqlite3_column_int64(row, 1),
               dr == FEDGE_OK ? &h : NULL, dr == FEDGE_OK ? buf : NULL, dr));
    }
cleanup:
    sqlite3_finalize(st);
    sqlite3_finalize(row);
    free(ids);
    return ret;
}

typedef struct {
    round_updates *u;
    double *sum;   /* pass 1: sum of the usable deltas (anomaly rule), or NULL */
    int dp;
} index_ctx;

static void exclude_at_load(round_updates *u, size_t i, const char *rule, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void exclude_at_load(round_updates *u, size_t i, const char *rule, const char *fmt, ...)
{
    va_list ap;
    u->weights[i] = 0;
    u->excluded[i].decision = FEDGE_DECISION_REJECT;
    u->excluded[i].clip_factor = 1.0;
    snprintf(u->excluded[i].rule, sizeof u->excluded[i].rule, "%s", rule);
    va_start(ap, fmt);
    vsnprintf(u->excluded[i].reason, sizeof u->excluded[i].reason, fmt, ap);
    va_end(ap);
}

/* Pass 1: ids, devices, weights, norms; every check a stored update must
 * pass before it may weigh on the aggregate (rows logged before these
 * checks existed, or changed on disk, meet them here). */
static int index_update(fedge_aggregator *a, void *vctx, size_t i, int64_t id, const char *device,
                        int64_t n_samples, const fedge_delta_header *h, const float *delta, int decode_err)
{
    index_ctx *c = vctx;
    round_updates *u = c->u;
    int ret = FEDGE_OK;
    if (i >= u->cap)
        return FEDGE_ERR_STATE; /* the partial unique index allows one per device */
    u->n = i + 1;
    u->ids[i] = id;
    snprintf(u->devices[i], sizeof u->devices[i], "%s", device ? device : "?");
    u->weights[i] = 1.0;
    uint64_t max_samples = fedge_policy_max_samples(a->policy);
    if (!device || !fedge_keys_find(&a->keys, device, strlen(device))) {
        exclude_at_load(u, i, "device_status", "device %.64s is no longer in the keys file", device ? device : "?");
        return FEDGE_OK;
    }
    if (!delta) {
        exclude_at_load(u, i, "integrity", "stored delta is unreadable: %s", fedge_strerror(decode_err));
        return FEDGE_OK;
    }
    u->hdr[i] = *h;
    u->samples[i] = n_samples;
    if (h->flags & FEDGE_DELTA_FLAG_PARTIAL) {
        if (!fedge_relay_listed(&a->cfg, device)) {
            exclude_at_load(u, i, "relay", "partial sum from %.64s, which is not listed in relays", device);
            return FEDGE_OK;
        }
        max_samples = (uint64_t)a->cfg.relay_max_samples;
        /* a relay's partial sum: its signed head for the round, which the
         * cross-tier lineage checks against the relay's log (docs/AUDIT.md) */
        char head_hex[FEDGE_HASH_HEX_LEN], detail[160];
        fedge_hash_to_hex(h->partial_head, head_hex);
        snprintf(detail, sizeof detail, "update %lld: relay round %u head %s", (long long)id, h->round, head_hex);
        CHK(fedge_gov_event(a, a->round, device, FEDGE_CLOSE_RELAY_HEAD_EVENT, "relay", detail));
    }
    if (n_samples < 1 || (uint64_t)n_samples > max_samples) {
        exclude_at_load(u, i, "sample_count", "stated sample count %lld is outside 1..%llu (%s)",
                        (long long)n_samples, (unsigned long long)max_samples,
                        (h->flags & FEDGE_DELTA_FLAG_PARTIAL) ? "relay_max_samples" : "update.max_samples");
        return FEDGE_OK;
    }
    double norm = fedge_l2_norm(delta, a->model.n_params);
    if (!isfinite(norm)) {
        exclude_at_load(u, i, "finite", "delta norm is not finite");
        return FEDGE_OK;
    }
    u->stats[i].norm = norm;
    /* DP-FedAvg weighs every client equally; otherwise by stated samples,
     * and a late update less: the configured staleness discount
     * (async_staleness; by default FedAsync's (1 + s)^-1/2) for an update
     * whose base model is s versions old. */
    u->weights[i] = c->dp ? 1.0 : (double)n_samples;
    if (c->dp) {
        /* Clipped to C when it was accepted, but to the C of that time: a
         * policy reload since may have lowered C or turned DP on. The noise
         * is calibrated to today's C, so the sum must be bounded by it:
         * a weight below 1 clips the delta as it is added. */
        double clip = fedge_policy_dp_clip_norm(a->policy);
        if (norm > clip) { /* fedge_l2_clip leaves none over: no rounding slack */
            u->weights[i] = clip / norm;
            FEDGE_INFO("round %u: update %lld of %s clipped again to the current DP norm %.4g (norm %.4g)",
                       a->round, (long long)id, device, clip, norm);
        }
    }
    int found = 0;
    uint32_t staleness = 0;
    CHK(fedge_gov_staleness(a, h->base_version, &found, &staleness));
    if (found && staleness > 0 && !c->dp)
        u->weights[i] *= fedge_sched_staleness_discount(&a->cfg, staleness);
    if (c->sum)
        for (size_t k = 0; k < a->model.n_params; k++)
            c->sum[k] += delta[k];
cleanup:
    return ret;
}

/* Rows excluded along the way no longer show in later passes: they are
 * matched by id (pass 1 saw them in id order), not by position. */
static int index_of(const round_updates *u, int64_t id, size_t *i)
{
    size_t lo = 0, hi = u->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (u->ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < u->n && u->ids[lo] == id) {
        *i = lo;
        return 1;
    }
    return 0;
}

typedef struct {
    round_updates *u;
    const double *sum;
} dots_ctx;

/* Pass 2: <d_i, S> for the anomaly rule. */
static int dot_update(fedge_aggregator *a, void *vctx, size_t i, int64_t id, const char *device,
                      int64_t n_samples, const fedge_delta_header *h, const float *delta, int decode_err)
{
    dots_ctx *c = vctx;
    (void)device, (void)n_samples, (void)h, (void)decode_err;
    if (!index_of(c->u, id, &i) || !delta || c->u->weights[i] <= 0)
        return FEDGE_OK;
    double dot = 0;
    for (size_t k = 0; k < a->model.n_params; k++)
        dot += (double)delta[k] * c->sum[k];
    c->u->stats[i].dot_sum = dot;
    return FEDGE_OK;
}

static int exclude_update(fedge_aggregator *a, int64_t id, const fedge_policy_decision *d)
{
    sqlite3_stmt *st = NULL;
    char key[24];
    int ret;
    CHK(fedge_store_prepare(a->db, "UPDATE updates SET decision='rejected', rule=?, reason=? WHERE id=?", &st));
    sqlite3_bind_text(st, 1, d->rule, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, d->reason, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, id);
    if (sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    snprintf(key, sizeof key, "%lld", (long long)id);
    CHK(fedge_audit_append(a->db, "updates", key));
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* The usable updates' stored deltas, read a block at a time straight from
 * updates.delta (sqlite3_blob_read of the bytes holding the block): the
 * combiners' reader (combine.h). elem_off selects the half of a SCAFFOLD
 * update: 0 the model delta, n_params the control-variate delta. */
typedef struct {
    sqlite3 *db;
    const int64_t *ids;
    const fedge_delta_header *hdr;
    size_t elem_off;
    sqlite3_blob *blob;
    int64_t blob_row;
    uint8_t *bytes;
    size_t cap;
} stored_reader;

static int stored_read(fedge_update_reader *r, size_t i, size_t k0, size_t k1, float *out)
{
    stored_reader *s = r->ctx;
    size_t off = 0, len = 0;
    int ret = fedge_delta_span(&s->hdr[i], s->elem_off + k0, s->elem_off + k1, &off, &len);
    if (ret != FEDGE_OK)
        return ret;
    if (off > INT_MAX || len > INT_MAX - off)
        return FEDGE_ERR_RANGE;
    if (len > s->cap) {
        uint8_t *b = realloc(s->bytes, len);
        if (!b)
            return FEDGE_ERR_NOMEM;
        s->bytes = b;
        s->cap = len;
    }
    int rc = SQLITE_OK;
    if (!s->blob)
        rc = sqlite3_blob_open(s->db, "main", "updates", "delta", s->ids[i], 0, &s->blob);
    else if (s->blob_row != s->ids[i])
        rc = sqlite3_blob_reopen(s->blob, s->ids[i]);
    if (rc != SQLITE_OK) {
        FEDGE_ERROR("reading the delta of update %lld: %s", (long long)s->ids[i], sqlite3_errmsg(s->db));
        return fedge_store_status(rc);
    }
    s->blob_row = s->ids[i];
    rc = sqlite3_blob_read(s->blob, s->bytes, (int)len, (int)off);
    if (rc != SQLITE_OK) {
        FEDGE_ERROR("reading the delta of update %lld: %s", (long long)s->ids[i], sqlite3_errmsg(s->db));
        return fedge_store_status(rc);
    }
    return fedge_delta_decode_span(&s->hdr[i], s->elem_off + k0, s->elem_off + k1, s->bytes, len, out);
}

static void stored_reader_close(stored_reader *s)
{
    if (s->blob)
        sqlite3_blob_close(s->blob);
    free(s->bytes);
    s->blob = NULL;
    s->bytes = NULL;
    s->cap = 0;
}

/* An audited event naming the updates a robust rule left out. */
static int log_left_out(fedge_aggregator *a, const round_updates *u, const size_t *use_idx, const uint8_t *used,
                        size_t n_use, size_t n_used)
{
    char detail[1024];
    int n = snprintf(detail, sizeof detail, "%s used %zu of %zu updates; left out:", a->strategy, n_used, n_use);
    size_t off = n > 0 && (size_t)n < sizeof detail ? (size_t)n : 0, listed = 0;
    for (size_t j = 0; j < n_use; j++) {
        if (used[j])
            continue;
        const char *dev = u->devices[use_idx[j]];
        if (off + strlen(dev) + 32 >= sizeof detail) {
            snprintf(detail + off, sizeof detail - off, " and %zu more", n_use - n_used - listed);
            break;
        }
        off += (size_t)snprintf(detail + off, sizeof detail - off, "%s %s", listed ? "," : "", dev);
        listed++;
    }
    FEDGE_INFO("round %u: %s", a->round, detail);
    return fedge_gov_event(a, a->round, NULL, "aggregation_left_out", a->cfg.aggregation, detail);
}

/* The close; with partial (a relay) it stops at the combined mean: the
 * partial sum, with no server step and no change to a->model. */
static int close_round(fedge_aggregator *a, fedge_close_result *res, fedge_close_partial *partial)
{
    round_updates u;
    stored_reader sr, cr;
    double *weights = NULL, *kept_w = NULL, *kept_out = NULL, *sum = NULL, *use_w = NULL;
    int64_t *use_ids = NULL;
    fedge_delta_header *use_hdr = NULL;
    size_t *use_idx = NULL, n_use = 0;
    uint8_t *used = NULL;
    float *next = NULL, *dc = NULL;
    fedge_policy_decision *per = NULL, round_d;
    fedge_policy_round_stat *kept_stats = NULL;
    size_t *kept_idx = NULL;
    float *mean = NULL, *buf = NULL;
    size_t n_params = a->model.n_params, n_kept = 0;
    int dp = fedge_policy_dp_enabled(a->policy);
    int ret;
    memset(&u, 0, sizeof u);
    memset(&sr, 0, sizeof sr);
    memset(&cr, 0, sizeof cr);
    memset(res, 0, sizeof *res);
    res->epsilon = -1;

    CHK(round_rows(a, &u.cap));
    if (u.cap == 0)
        u.cap = 1;
    u.ids = calloc(u.cap, sizeof *u.ids);
    u.devices = calloc(u.cap, sizeof *u.devices);
    u.weights = calloc(u.cap, sizeof *u.weights);
    u.samples = calloc(u.cap, sizeof *u.samples);
    u.stats = calloc(u.cap, sizeof *u.stats);
    u.excluded = calloc(u.cap, sizeof *u.excluded);
    u.hdr = calloc(u.cap, sizeof *u.hdr);
    buf = malloc((stored_elems(a) ? stored_elems(a) : 1) * sizeof *buf);
    if (!u.ids || !u.devices || !u.weights || !u.samples || !u.stats || !u.excluded || !u.hdr || !buf)
        FAIL(FEDGE_ERR_NOMEM);
    /* The anomaly rule needs the sum S of the usable deltas; it is kept only
     * when the rule is on (it runs when enough updates are usable). */
    if (fedge_policy_round_needs_dots(a->policy, SIZE_MAX)) {
        sum = calloc(n_params ? n_params : 1, sizeof *sum);
        if (!sum)
            FAIL(FEDGE_ERR_NOMEM);
    }
    index_ctx ic = {.u = &u, .sum = sum, .dp = dp};
    CHK(for_each_delta(a, buf, index_update, &ic));
    if (u.n == 0) {
        snprintf(res->reason, sizeof res->reason, "no accepted updates before the deadline");
        goto cleanup;
    }
    for (size_t i = 0; i < u.n; i++) {
        if (u.weights[i] > 0)
            continue;
        CHK(exclude_update(a, u.ids[i], &u.excluded[i]));
        res->n_excluded++;
        FEDGE_WARN("round %u: excluding %s: %s: %s", a->round, u.devices[i], u.excluded[i].rule,
                   u.excluded[i].reason);
    }
    n_kept = u.n - res->n_excluded;
    if (n_kept == 0) {
        snprintf(res->reason, sizeof res->reason, "every update was excluded (%zu unusable)", res->n_excluded);
        goto cleanup;
    }
    if (n_kept < (size_t)a->cfg.min_updates) {
        snprintf(res->reason, sizeof res->reason, "%zu usable updates, fewer than min_updates %ld", n_kept,
                 a->cfg.min_updates);
        goto cleanup;
    }

    /* The round rules see the usable updates only. */
    kept_idx = malloc(n_kept * sizeof *kept_idx);
    kept_w = malloc(n_kept * sizeof *kept_w);
    kept_out = malloc(n_kept * sizeof *kept_out);
    kept_stats = calloc(n_kept, sizeof *kept_stats);
    per = calloc(n_kept, sizeof *per);
    weights = calloc(u.n, sizeof *weights);
    mean = malloc((n_params ? n_params : 1) * sizeof *mean);
    if (!kept_idx || !kept_w || !kept_out || !kept_stats || !per || !weights || !mean)
        FAIL(FEDGE_ERR_NOMEM);
    double sum_norm2 = 0;
    if (sum && fedge_policy_round_needs_dots(a->policy, n_kept)) {
        for (size_t k = 0; k < n_params; k++)
            sum_norm2 += sum[k] * sum[k];
        dots_ctx dots = {.u = &u, .sum = sum};
        CHK(for_each_delta(a, buf, dot_update, &dots));
    }
    for (size_t i = 0, j = 0; i < u.n; i++) {
        if (!(u.weights[i] > 0))
            continue;
        kept_idx[j] = i;
        kept_w[j] = u.weights[i];
        kept_stats[j] = u.stats[i];
        j++;
    }
    CHK(fedge_policy_check_round_stats(a->policy, n_kept, kept_stats, sum_norm2, kept_w, kept_out, per,
                                       &round_d));
    for (size_t j = 0; j < n_kept; j++) {
        size_t i = kept_idx[j];
        weights[i] = kept_out[j];
        if (per[j].decision == FEDGE_DECISION_REJECT) {
            CHK(exclude_update(a, u.ids[i], &per[j]));
            res->n_excluded++;
            weights[i] = 0;
            FEDGE_INFO("round %u: excluding %s: %s", a->round, u.devices[i], per[j].reason);
        }
    }
    if (round_d.decision == FEDGE_DECISION_REJECT) {
        snprintf(res->reason, sizeof res->reason, "%s: %s", round_d.rule, round_d.reason);
        CHK(fedge_gov_event(a, a->round, NULL, "round_rejected", round_d.rule, round_d.reason));
        goto cleanup;
    }

    /* The device budgets were checked at submit with the settings then; a
     * policy reload since (a lower noise multiplier) can make this round
     * cost more: check again and leave out whoever it would take over. */
    for (size_t i = 0; dp && i < u.n; i++) {
        if (!(weights[i] > 0))
            continue;
        double eps = 0;
        fedge_policy_decision d;
        CHK(fedge_gov_dp_device_check(a, u.devices[i], &eps, &d));
        if (d.decision == FEDGE_DECISION_REJECT) {
            CHK(exclude_update(a, u.ids[i], &d));
            res->n_excluded++;
            weights[i] = 0;
            FEDGE_INFO("round %u: excluding %s: %s", a->round, u.devices[i], d.reason);
        }
    }

    free(sum);
    sum = NULL;
    /* The usable updates, in id order, read back block by block. */
    for (size_t i = 0; i < u.n; i++)
        n_use += weights[i] > 0;
    if (n_use == 0) {
        snprintf(res->reason, sizeof res->reason, "every update was excluded");
        goto cleanup;
    }
    use_ids = malloc(n_use * sizeof *use_ids);
    use_hdr = malloc(n_use * sizeof *use_hdr);
    use_idx = malloc(n_use * sizeof *use_idx);
    use_w = malloc(n_use * sizeof *use_w);
    used = calloc(n_use, 1);
    next = malloc((n_params ? n_params : 1) * sizeof *next);
    if (!use_ids || !use_hdr || !use_idx || !use_w || !used || !next)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0, j = 0; i < u.n; i++) {
        if (!(weights[i] > 0))
            continue;
        use_ids[j] = u.ids[i];
        use_hdr[j] = u.hdr[i];
        use_idx[j] = i;
        use_w[j] = weights[i];
        j++;
    }
    sr = (stored_reader){.db = a->db, .ids = use_ids, .hdr = use_hdr, .elem_off = 0};
    fedge_update_reader rd = {.n = n_use, .n_params = n_params, .read = stored_read, .ctx = &sr};
    fedge_combine_params cp = {.trim_beta = a->cfg.trim_beta, .f = a->cfg.byzantine_f, .m = a->cfg.multikrum_m,
                               .block = (size_t)a->cfg.aggregation_block};
    snprintf(cp.name, sizeof cp.name, "%s", a->cfg.aggregation);
    res->n_used = n_use;
    if (partial && (dp || strcmp(cp.name, "mean") != 0)) {
        /* refused at start-up (relay.h); a policy reloaded since may have turned DP on */
        snprintf(res->reason, sizeof res->reason, "a relay sends a plain sample-weighted mean: %s",
                 dp ? "DP is on in the policy (noise belongs to the root)" : "aggregation is not mean");
        CHK(fedge_gov_event(a, a->round, NULL, "round_rejected", "relay", res->reason));
        res->n_used = 0;
        goto cleanup;
    }
    if (dp) {
        /* Fixed-denominator DP-FedAvg: (sum of clipped deltas + noise) / expected clients. */
        CHK(fedge_combine_weighted_sum(&rd, cp.block, use_w, 1.0, mean)); /* DP-FedAvg's numerator */
        fedge_rng noise_rng;
        uint64_t seed = 0;
        if (a->noise_seed) {
            fedge_rng base;
            fedge_rng_seed(&base, a->noise_seed);
            fedge_rng_split(&base, a->round, &noise_rng);
        } else {
            if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
                FAIL(FEDGE_ERR_CRYPTO);
            fedge_rng_seed(&noise_rng, seed);
        }
        CHK(fedge_policy_dp_apply(a->policy, mean, n_params, n_use, &noise_rng));
        /* async: a step takes async_buffer_k updates, whoever was admitted */
        double denom = fedge_gov_async(a) ? (double)a->cfg.async_buffer_k
                                          : (double)(a->n_selected ? a->n_selected : n_use);
        for (size_t i = 0; i < n_params; i++)
            mean[i] = (float)(mean[i] / denom);
    } else {
        const fedge_combiner *cb = fedge_combiner_find(cp.name);
        char why[256] = "";
        if (!cb)
            FAIL(FEDGE_ERR_CONFIG_VALUE);
        int chk = cb->check(&cp, n_use, why, sizeof why);
        if (chk == FEDGE_ERR_STRATEGY_TOO_FEW) {
            if (!why[0])
                snprintf(why, sizeof why, "%zu usable updates are too few for aggregation %s", n_use, cp.name);
            snprintf(res->reason, sizeof res->reason, "aggregation: %s", why);
            CHK(fedge_gov_event(a, a->round, NULL, "round_rejected", "aggregation", why));
            res->n_used = 0;
            goto cleanup;
        }
        CHK(chk);
        CHK(cb->combine(&cp, &rd, use_w, mean, used));
        size_t n_used = 0;
        for (size_t j = 0; j < n_use; j++)
            n_used += used[j] != 0;
        if (n_used < n_use) {
            /* left out: excluded rows, as the round rules exclude, so the
             * log, the lineage and n_accepted agree on what counted */
            fedge_policy_decision d = {.decision = FEDGE_DECISION_REJECT, .clip_factor = 1.0};
            snprintf(d.rule, sizeof d.rule, "%s", cp.name);
            snprintf(d.reason, sizeof d.reason, "left out by the robust aggregation rule %.160s (%zu of %zu used)",
                     a->strategy, n_used, n_use);
            for (size_t j = 0; j < n_use; j++) {
                if (used[j])
                    continue;
                CHK(exclude_update(a, use_ids[j], &d));
                res->n_excluded++;
            }
            CHK(log_left_out(a, &u, use_idx, used, n_use, n_used));
        }
        res->n_used = n_used;
    }
    stored_reader_close(&sr);
    if (partial) {
        uint64_t total = 0;
        for (size_t j = 0; j < n_use; j++)
            if (used[j])
                total += (uint64_t)u.samples[use_idx[j]];
        for (size_t i = 0; i < n_params; i++)
            if (!isfinite(mean[i])) {
                snprintf(res->reason, sizeof res->reason, "the partial sum is not finite (parameter %zu)", i);
                CHK(fedge_gov_event(a, a->round, NULL, "round_rejected", "finite", res->reason));
                res->n_used = 0;
                goto cleanup;
            }
        memcpy(partial->mean, mean, n_params * sizeof *mean);
        partial->n_samples = total;
        res->ok = 1;
        goto cleanup;
    }

    /* The server optimiser (and SCAFFOLD's c) step on copies: the model
     * and the state change only when the round is released. */
    CHK(fedge_strategy_begin_step(a));
    memcpy(next, a->model.params, n_params * sizeof *next);
    fedge_server_opt_step(&a->opt_next, next, mean);
    /* A finite sum of finite deltas can still overflow a float: such an
     * aggregate fails the round instead of poisoning the model. */
    for (size_t i = 0; i < n_params; i++) {
        if (!isfinite(next[i])) {
            snprintf(res->reason, sizeof res->reason,
                     "the aggregate is not finite (parameter %zu); model unchanged", i);
            CHK(fedge_gov_event(a, a->round, NULL, "round_rejected", "finite", res->reason));
            res->n_used = 0;
            goto cleanup;
        }
    }
    for (size_t v = 0; v < a->opt_next.impl->n_vectors; v++)
        for (size_t i = 0; i < n_params; i++)
            if (!isfinite(a->opt_next.vec[v][i])) {
                snprintf(res->reason, sizeof res->reason,
                         "the server optimiser's state is not finite (%s[%zu]); model unchanged",
                         a->opt_next.impl->vector_names[v], i);
                CHK(fedge_gov_event(a, a->round, NULL, "round_rejected", "finite", res->reason));
                res->n_used = 0;
                goto cleanup;
            }
    if (a->cfg.scaffold) {
        /* c += (|S| / N) · mean(Δc) over the used updates, N the eligible devices. */
        size_t eligible = 0;
        dc = malloc((n_params ? n_params : 1) * sizeof *dc);
        if (!dc)
            FAIL(FEDGE_ERR_NOMEM);
        for (size_t j = 0; j < n_use; j++)
            use_w[j] = 1.0;
        cr = (stored_reader){.db = a->db, .ids = use_ids, .hdr = use_hdr, .elem_off = n_params};
        fedge_update_reader crd = {.n = n_use, .n_params = n_params, .read = stored_read, .ctx = &cr};
        fedge_combine_params mp = cp;
        snprintf(mp.name, sizeof mp.name, "mean");
        CHK(fedge_combine_mean.combine(&mp, &crd, use_w, dc, used));
        stored_reader_close(&cr);
        CHK(fedge_gov_eligible_devices(a, NULL, &eligible));
        double frac = eligible > 0 ? (double)n_use / (double)eligible : 1.0;
        for (size_t i = 0; i < n_params; i++) {
            a->control_next[i] = (float)((double)a->control[i] + frac * (double)dc[i]);
            if (!isfinite(a->control_next[i])) {
                snprintf(res->reason, sizeof res->reason,
                         "the control variate is not finite (parameter %zu); model unchanged", i);
                CHK(fedge_gov_event(a, a->round, NULL, "round_rejected", "finite", res->reason));
                res->n_used = 0;
                goto cleanup;
            }
        }
    }
    if (dp) { /* charged only when the aggregate is released */
        int over = 0;
        CHK(fedge_gov_dp_charge(a, n_use, &res->epsilon, &over, res->reason, sizeof res->reason));
        if (over) {
            res->n_used = 0;
            goto cleanup;
        }
    }
    memcpy(a->model.params, next, n_params * sizeof *next);
    res->ok = 1;
    if (res->n_excluded)
        snprintf(res->reason, sizeof res->reason, "%zu update(s) excluded by round checks", res->n_excluded);
cleanup:
    if (!res->ok)
        fedge_strategy_discard(a);
    stored_reader_close(&sr);
    stored_reader_close(&cr);
    free(use_ids);
    free(use_hdr);
    free(use_idx);
    free(use_w);
    free(used);
    free(next);
    free(dc);
    round_updates_free(&u);
    free(weights);
    free(kept_idx);
    free(kept_w);
    free(kept_out);
    free(kept_stats);
    free(per);
    free(sum);
    free(mean);
    free(buf);
    return ret;
}

int fedge_close_aggregate(fedge_aggregator *a, fedge_close_result *res)
{
    return close_round(a, res, NULL);
}

int fedge_close_partial_sum(fedge_aggregator *a, fedge_close_result *res, fedge_close_partial *partial)
{
    if (!partial || !partial->mean)
        return FEDGE_ERR_INVALID_ARG;
    partial->n_samples = 0;
    return close_round(a, res, partial);
}
