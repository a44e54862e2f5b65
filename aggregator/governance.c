#include "governance.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>

#include "audit.h"
#include "common.h"
#include "log.h"
#include "policy.h"
#include "store.h"
#include "strategy.h"

struct fedge_signer {
    mbedtls_pk_context key;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
};

static void signer_free(struct fedge_signer *s)
{
    if (!s)
        return;
    mbedtls_pk_free(&s->key);
    mbedtls_ctr_drbg_free(&s->drbg);
    mbedtls_entropy_free(&s->entropy);
    free(s);
}

static int signer_load(const char *path, struct fedge_signer **out, char *err, size_t errlen)
{
    static const char pers[] = "fedge audit signer";
    struct fedge_signer *s = calloc(1, sizeof *s);
    int ret = FEDGE_OK;
    *out = NULL;
    if (!s)
        return FEDGE_ERR_NOMEM;
    mbedtls_pk_init(&s->key);
    mbedtls_entropy_init(&s->entropy);
    mbedtls_ctr_drbg_init(&s->drbg);
    if (mbedtls_ctr_drbg_seed(&s->drbg, mbedtls_entropy_func, &s->entropy, (const unsigned char *)pers,
                              sizeof pers - 1) != 0)
        FAIL(FEDGE_ERR_CRYPTO);
    ret = fedge_audit_load_private_key(path, &s->key);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "signing_key %s: %s (an EC P-256 private key PEM, mode 0600)", path,
                 fedge_strerror(ret));
        goto cleanup;
    }
cleanup:
    if (ret != FEDGE_OK)
        signer_free(s);
    else
        *out = s;
    return ret;
}

static int load_policy(const fedge_agg_config *cfg, fedge_policy **out, char *err, size_t errlen)
{
    if (cfg->policy_file[0])
        return fedge_policy_load(cfg->policy_file, out, err, errlen);
    return fedge_policy_default(out);
}

static void apply_policy_settings(fedge_aggregator *a)
{
    double deadline = fedge_policy_round_deadline_s(a->policy);
    if (deadline > 0 && deadline != a->cfg.round_timeout_s) {
        FEDGE_INFO("policy sets the round deadline to %.1fs", deadline);
        a->cfg.round_timeout_s = deadline;
    }
    char summary[512];
    if (fedge_policy_summary(a->policy, summary, sizeof summary) == FEDGE_OK)
        FEDGE_INFO("policy %s: %s", fedge_policy_name(a->policy), summary);
}

int fedge_gov_init(fedge_aggregator *a, char *err, size_t errlen)
{
    int ret;
    ret = load_policy(&a->cfg, &a->policy, err, errlen);
    if (ret != FEDGE_OK) {
        if (!err[0])
            snprintf(err, errlen, "policy: %s", fedge_strerror(ret));
        return ret;
    }
    if (a->cfg.signing_key[0])
        CHK(signer_load(a->cfg.signing_key, &a->signer, err, errlen));
    CHK(fedge_policy_record(a->db, a->policy));
    apply_policy_settings(a);
cleanup:
    return ret;
}

void fedge_gov_free(fedge_aggregator *a)
{
    fedge_policy_free(a->policy);
    a->policy = NULL;
    signer_free(a->signer);
    a->signer = NULL;
}

int fedge_gov_reload(fedge_aggregator *a)
{
    fedge_policy *p = NULL;
    char err[512] = "";
    int ret = load_policy(&a->cfg, &p, err, sizeof err);
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("policy reload: %s", err[0] ? err : fedge_strerror(ret));
        return ret;
    }
    ret = fedge_policy_record(a->db, p);
    if (ret != FEDGE_OK) {
        fedge_policy_free(p);
        return ret;
    }
    fedge_policy_free(a->policy);
    a->policy = p;
    apply_policy_settings(a);
    return FEDGE_OK;
}

const char *fedge_gov_strategy(const fedge_aggregator *a)
{
    return fedge_policy_dp_enabled(a->policy) ? "dp-fedavg" : "fedavg";
}

int fedge_gov_audit(fedge_aggregator *a, const char *tbl, const char *key)
{
    return fedge_audit_append(a->db, tbl, key);
}

int fedge_gov_sign_head(fedge_aggregator *a, uint32_t round)
{
    if (!a->signer)
        return FEDGE_OK;
    return fedge_audit_sign_head(a->db, round, &a->signer->key, &a->signer->drbg);
}

int fedge_gov_event(fedge_aggregator *a, uint32_t round, const char *device, const char *kind,
                    const char *rule, const char *detail)
{
    sqlite3_stmt *st = NULL;
    int ret;
    char key[24];
    CHK(fedge_store_prepare(a->db, "INSERT INTO events(at, round, device, kind, rule, detail) VALUES(?,?,?,?,?,?)", &st));
    sqlite3_bind_double(st, 1, fedge_now());
    if (round)
        sqlite3_bind_int64(st, 2, round);
    if (device)
        sqlite3_bind_text(st, 3, device, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, kind, -1, SQLITE_STATIC);
    if (rule)
        sqlite3_bind_text(st, 5, rule, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, detail, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    snprintf(key, sizeof key, "%lld", (long long)sqlite3_last_insert_rowid(a->db));
    CHK(fedge_audit_append(a->db, "events", key));
cleanup:
    sqlite3_finalize(st);
    return ret;
}

uint32_t fedge_gov_round_window(const fedge_aggregator *a)
{
    return fedge_policy_max_staleness(a->policy);
}

int fedge_gov_device_eligible(const fedge_aggregator *a, size_t i, const char *status)
{
    fedge_policy_decision d;
    const fedge_device_entry *e = &a->keys.devices[i];
    if (fedge_policy_check_device(a->policy, e->id, status, e->region, &d) != FEDGE_OK)
        return 0;
    return d.decision != FEDGE_DECISION_REJECT;
}

/* Rounds that consumed privacy budget so far (closed with DP). */
static int dp_rounds_done(fedge_aggregator *a, long *n)
{
    int64_t v = 0;
    int ret = fedge_store_query_int64(a->db, &v, NULL,
                                      "SELECT count(*) FROM rounds WHERE status='closed' AND epsilon IS NOT NULL", "");
    *n = (long)v;
    return ret;
}

int fedge_gov_round_admission(fedge_aggregator *a, uint32_t round, size_t k, size_t n_allowed,
                              int *refused, char *reason, size_t reason_len)
{
    fedge_policy_decision d;
    long done = 0;
    double eps = 0;
    int ret;
    (void)round;
    *refused = 0;
    if (!fedge_policy_dp_enabled(a->policy))
        return FEDGE_OK;
    CHK(dp_rounds_done(a, &done));
    CHK(fedge_policy_budget_check(a->policy, (double)k / (double)n_allowed, done + 1, &eps, &d));
    if (d.decision == FEDGE_DECISION_REJECT) {
        *refused = 1;
        snprintf(reason, reason_len, "%s", d.reason);
    }
cleanup:
    return ret;
}

static int base_round_of(fedge_aggregator *a, const uint8_t version[FEDGE_HASH_LEN], int *found,
                         uint32_t *base_round)
{
    char hex[FEDGE_HASH_HEX_LEN];
    int64_t made_in = 0;
    fedge_hash_to_hex(version, hex);
    int ret = fedge_store_query_int64(a->db, &made_in, found, "SELECT round FROM models WHERE version=?", "t", hex);
    if (ret == FEDGE_OK && *found) /* a model made in round k is the opening model of round k + 1 */
        *base_round = (uint32_t)made_in + 1;
    return ret;
}

static int count_recent(fedge_aggregator *a, const char *device, double since, uint32_t *n)
{
    int64_t v = 0;
    int ret = fedge_store_query_int64(a->db, &v, NULL, "SELECT count(*) FROM updates WHERE device=? AND received_at>?",
                                      "td", device, since);
    *n = (uint32_t)v;
    return ret;
}

static int device_contributions(fedge_aggregator *a, const char *device, long *n)
{
    int64_t v = 0;
    int ret = fedge_store_query_int64(a->db, &v, NULL,
                                      "SELECT count(*) FROM updates u JOIN rounds r ON r.id=u.round"
                                      " WHERE u.device=? AND u.decision<>'rejected' AND r.status='closed'",
                                      "t", device);
    *n = (long)v;
    return ret;
}

int fedge_gov_admit_update(fedge_aggregator *a, const fedge_gov_update_in *in, int *accepted, char *reason,
                           size_t reason_len)
{
    fedge_policy_decision d;
    sqlite3_stmt *st = NULL;
    uint8_t *clipped = NULL;
    const uint8_t *blob = in->encoded;
    size_t blob_len = in->encoded_len;
    int ret, found = 0, in_tx = 0;
    uint32_t base_round = 0, recent = 0;
    char key[24];
    *accepted = 0;

    double norm = fedge_l2_norm(in->delta, in->n_params);
    CHK(base_round_of(a, in->header->base_version, &found, &base_round));
    double window = fedge_policy_rate_window_s(a->policy);
    if (window > 0)
        CHK(count_recent(a, in->device, in->now - window, &recent));
    if (!found) {
        memset(&d, 0, sizeof d);
        d.decision = FEDGE_DECISION_REJECT;
        snprintf(d.rule, sizeof d.rule, "base_version");
        snprintf(d.reason, sizeof d.reason, "base model is not a version this aggregator published");
    } else {
        fedge_policy_update_in pin = {
            .device_id = in->device,
            .device_status = in->status,
            .device_region = a->keys.devices[in->device_index].region,
            .round = a->round,
            .base_round = base_round,
            .l2_norm = norm,
            .finite = isfinite(norm),
            .recent_updates = recent,
        };
        CHK(fedge_policy_check_update(a->policy, &pin, &d));
    }
    if (d.decision != FEDGE_DECISION_REJECT && fedge_policy_dp_enabled(a->policy)) {
        long contributed = 0;
        fedge_policy_decision db;
        double eps = 0;
        CHK(device_contributions(a, in->device, &contributed));
        CHK(fedge_policy_device_budget_check(a->policy, in->device, contributed + 1, &eps, &db));
        if (db.decision == FEDGE_DECISION_REJECT)
            d = db;
    }
    if (d.decision == FEDGE_DECISION_CLIP) {
        /* Store the delta as it enters the aggregate: clipped, in fp32. */
        for (size_t i = 0; i < in->n_params; i++)
            in->delta[i] *= (float)d.clip_factor;
        fedge_delta_header h = *in->header;
        h.encoding = FEDGE_ENC_FP32;
        h.block_size = 0;
        h.flags = 0;
        blob_len = fedge_delta_encoded_size(&h);
        clipped = malloc(blob_len);
        if (!clipped)
            FAIL(FEDGE_ERR_NOMEM);
        CHK(fedge_delta_encode(&h, in->delta, NULL, clipped, blob_len, &blob_len));
        blob = clipped;
    }

    CHK(fedge_store_begin(a->db));
    in_tx = 1;
    CHK(fedge_store_prepare(a->db, "INSERT INTO updates(round, device, received_at, n_samples, encoding, bytes, counter,"
                           " norm, decision, rule, reason, delta) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)", &st));
    sqlite3_bind_int64(st, 1, a->round);
    sqlite3_bind_text(st, 2, in->device, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 3, in->now);
    sqlite3_bind_int64(st, 4, in->header->n_samples);
    sqlite3_bind_text(st, 5, fedge_encoding_name((fedge_encoding)in->header->encoding), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)in->bytes);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)in->counter);
    if (isfinite(norm))
        sqlite3_bind_double(st, 8, norm);
    sqlite3_bind_text(st, 9, fedge_decision_name(d.decision), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, d.rule, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 11, d.reason, -1, SQLITE_STATIC);
    if (d.decision != FEDGE_DECISION_REJECT)
        sqlite3_bind_blob(st, 12, blob, (int)blob_len, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        FEDGE_ERROR("sqlite insert update: %s", sqlite3_errmsg(a->db));
        FAIL(FEDGE_ERR_SQL);
    }
    sqlite3_finalize(st);
    st = NULL;
    snprintf(key, sizeof key, "%lld", (long long)sqlite3_last_insert_rowid(a->db));
    CHK(fedge_audit_append(a->db, "updates", key));
    CHK(fedge_store_prepare(a->db, "UPDATE devices SET last_counter=?, last_seen=? WHERE id=?", &st));
    sqlite3_bind_int64(st, 1, (sqlite3_int64)in->counter);
    sqlite3_bind_double(st, 2, in->now);
    sqlite3_bind_text(st, 3, in->device, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    CHK(fedge_store_commit(a->db));
    in_tx = 0;

    *accepted = d.decision != FEDGE_DECISION_REJECT;
    if (d.decision == FEDGE_DECISION_ACCEPT)
        snprintf(reason, reason_len, "accepted");
    else if (d.decision == FEDGE_DECISION_CLIP)
        snprintf(reason, reason_len, "clipped: %s", d.reason);
    else
        snprintf(reason, reason_len, "rejected by %s: %s", d.rule, d.reason);
cleanup:
    if (in_tx && ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    free(clipped);
    return ret;
}

typedef struct {
    size_t n, cap;
    int64_t *ids;
    char (*devices)[FEDGE_DEVICE_ID_MAX + 1];
    double *weights;
    float **deltas;
} round_updates;

static void round_updates_free(round_updates *u)
{
    for (size_t i = 0; i < u->n; i++)
        free(u->deltas[i]);
    free(u->ids);
    free(u->devices);
    free(u->weights);
    free(u->deltas);
    memset(u, 0, sizeof *u);
}

static int load_round_updates(fedge_aggregator *a, round_updates *u)
{
    sqlite3_stmt *st = NULL;
    int ret;
    size_t n_params = a->model.n_params;
    memset(u, 0, sizeof *u);
    u->cap = a->keys.n ? a->keys.n : 1;
    u->ids = calloc(u->cap, sizeof *u->ids);
    u->devices = calloc(u->cap, sizeof *u->devices);
    u->weights = calloc(u->cap, sizeof *u->weights);
    u->deltas = calloc(u->cap, sizeof *u->deltas);
    if (!u->ids || !u->devices || !u->weights || !u->deltas)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(fedge_store_prepare(a->db, "SELECT id, device, n_samples, delta FROM updates"
                           " WHERE round=? AND decision<>'rejected' ORDER BY id", &st));
    sqlite3_bind_int64(st, 1, a->round);
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (u->n == u->cap)
            FAIL(FEDGE_ERR_STATE); /* one accepted update per device per round */
        fedge_delta_header h;
        const uint8_t *blob = sqlite3_column_blob(st, 3);
        size_t len = (size_t)sqlite3_column_bytes(st, 3);
        float *d = malloc(n_params * sizeof *d);
        if (!d)
            FAIL(FEDGE_ERR_NOMEM);
        u->deltas[u->n] = d;
        u->ids[u->n] = sqlite3_column_int64(st, 0);
        snprintf(u->devices[u->n], sizeof u->devices[u->n], "%s", (const char *)sqlite3_column_text(st, 1));
        u->weights[u->n] = (double)sqlite3_column_int64(st, 2);
        u->n++;
        ret = fedge_delta_decode(blob, len, a->model_id, (uint32_t)n_params, &h, d);
        if (ret != FEDGE_OK) {
            FEDGE_ERROR("stored delta of update %lld is unreadable: %s", (long long)u->ids[u->n - 1],
                        fedge_strerror(ret));
            goto cleanup;
        }
        /* Late updates count less: FedAsync's polynomial discount (1 + s)^-1/2
         * for an update whose base model is s rounds old. */
        int found = 0;
        uint32_t base_round = a->round;
        CHK(base_round_of(a, h.base_version, &found, &base_round));
        if (found && base_round < a->round)
            u->weights[u->n - 1] /= sqrt(1.0 + (double)(a->round - base_round));
    }
    ret = FEDGE_OK;
cleanup:
    sqlite3_finalize(st);
    return ret;
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

static int charge_devices(fedge_aggregator *a, const round_updates *u, const double *weights)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    CHK(fedge_store_prepare(a->db, "UPDATE devices SET epsilon_spent=? WHERE id=?", &st));
    for (size_t i = 0; i < u->n; i++) {
        if (weights[i] <= 0)
            continue;
        long contributed = 0;
        double eps = 0;
        fedge_policy_decision d;
        CHK(device_contributions(a, u->devices[i], &contributed));
        /* this round is not closed yet: count it */
        CHK(fedge_policy_device_budget_check(a->policy, u->devices[i], contributed + 1, &eps, &d));
        sqlite3_reset(st);
        sqlite3_bind_double(st, 1, eps);
        sqlite3_bind_text(st, 2, u->devices[i], -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE)
            FAIL(FEDGE_ERR_SQL);
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

int fedge_gov_aggregate(fedge_aggregator *a, fedge_gov_round_result *res)
{
    round_updates u;
    fedge_fedavg avg;
    double *weights = NULL;
    fedge_policy_decision *per = NULL, round_d;
    float *mean = NULL;
    size_t n_params = a->model.n_params;
    int dp = fedge_policy_dp_enabled(a->policy);
    int ret;
    memset(&avg, 0, sizeof avg);
    memset(res, 0, sizeof *res);
    res->epsilon = -1;

    CHK(load_round_updates(a, &u));
    if (u.n == 0) {
        snprintf(res->reason, sizeof res->reason, "no accepted updates before the deadline");
        goto cleanup;
    }
    if (u.n < (size_t)a->cfg.min_updates) {
        snprintf(res->reason, sizeof res->reason, "%zu accepted updates, fewer than min_updates %ld", u.n,
                 a->cfg.min_updates);
        goto cleanup;
    }
    weights = malloc(u.n * sizeof *weights);
    per = calloc(u.n, sizeof *per);
    mean = malloc(n_params * sizeof *mean);
    if (!weights || !per || !mean)
        FAIL(FEDGE_ERR_NOMEM);
    if (dp)
        for (size_t i = 0; i < u.n; i++)
            u.weights[i] = 1.0; /* DP-FedAvg weighs every client equally */
    CHK(fedge_policy_check_round(a->policy, u.n, (const float *const *)u.deltas, n_params, u.weights, weights,
                                 per, &round_d));
    for (size_t i = 0; i < u.n; i++) {
        if (per[i].decision == FEDGE_DECISION_REJECT) {
            CHK(exclude_update(a, u.ids[i], &per[i]));
            res->n_excluded++;
            weights[i] = 0;
            FEDGE_INFO("round %u: excluding %s: %s", a->round, u.devices[i], per[i].reason);
        }
    }
    if (round_d.decision == FEDGE_DECISION_REJECT) {
        snprintf(res->reason, sizeof res->reason, "%s: %s", round_d.rule, round_d.reason);
        CHK(fedge_gov_event(a, a->round, NULL, "round_rejected", round_d.rule, round_d.reason));
        goto cleanup;
    }

    CHK(fedge_fedavg_init(&avg, n_params));
    for (size_t i = 0; i < u.n; i++) {
        if (weights[i] > 0) {
            CHK(fedge_fedavg_add(&avg, u.deltas[i], weights[i]));
            res->n_used++;
        }
    }
    if (avg.n == 0) {
        snprintf(res->reason, sizeof res->reason, "every update was excluded");
        goto cleanup;
    }
    if (dp) {
        /* Fixed-denominator DP-FedAvg: (sum of clipped deltas + noise) / expected clients. */
        for (size_t i = 0; i < n_params; i++)
            mean[i] = (float)avg.sum[i];
        fedge_rng noise_rng;
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
            FAIL(FEDGE_ERR_CRYPTO);
        fedge_rng_seed(&noise_rng, seed);
        CHK(fedge_policy_dp_apply(a->policy, mean, n_params, avg.n, &noise_rng));
        double denom = (double)(a->n_selected ? a->n_selected : avg.n);
        for (size_t i = 0; i < n_params; i++)
            mean[i] = (float)(mean[i] / denom);
        long done = 0;
        fedge_policy_decision bd;
        CHK(dp_rounds_done(a, &done));
        int64_t population = 0;
        CHK(fedge_store_query_int64(a->db, &population, NULL, "SELECT count(*) FROM devices WHERE status='allowed'", ""));
        double q = population > 0 ? (double)a->n_selected / (double)population : 1.0;
        CHK(fedge_policy_budget_check(a->policy, q > 1 ? 1 : q, done + 1, &res->epsilon, &bd));
        CHK(charge_devices(a, &u, weights));
    } else {
        CHK(fedge_fedavg_mean(&avg, mean));
    }
    fedge_apply_delta(a->model.params, mean, n_params, (float)a->cfg.server_lr);
    res->ok = 1;
    if (res->n_excluded)
        snprintf(res->reason, sizeof res->reason, "%zu update(s) excluded by round checks", res->n_excluded);
cleanup:
    round_updates_free(&u);
    fedge_fedavg_free(&avg);
    free(weights);
    free(per);
    free(mean);
    return ret;
}

int fedge_device_set_status(sqlite3 *db, const char *device, const char *status, const char *reason)
{
    sqlite3_stmt *st = NULL;
    char detail[512], key[24], old[16] = "";
    int ret, in_tx = 0;
    if (!device || !status || !reason || !reason[0] ||
        (strcmp(status, "allowed") && strcmp(status, "suspended") && strcmp(status, "revoked")))
        return FEDGE_ERR_INVALID_ARG;
    CHK(fedge_store_begin(db));
    in_tx = 1;
    CHK(fedge_store_prepare(db, "SELECT status FROM devices WHERE id=?", &st));
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW)
        FAIL(FEDGE_ERR_NOT_FOUND);
    snprintf(old, sizeof old, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    st = NULL;
    CHK(fedge_store_prepare(db, "UPDATE devices SET status=? WHERE id=?", &st));
    sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, device, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    sqlite3_finalize(st);
    st = NULL;
    snprintf(detail, sizeof detail, "device %s: %s -> %s: %s", device, old, status, reason);
    CHK(fedge_store_prepare(db, "INSERT INTO events(at, device, kind, rule, detail) VALUES(?,?,'device_status','operator',?)",
                    &st));
    sqlite3_bind_double(st, 1, fedge_now());
    sqlite3_bind_text(st, 2, device, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, detail, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    snprintf(key, sizeof key, "%lld", (long long)sqlite3_last_insert_rowid(db));
    CHK(fedge_audit_append(db, "events", key));
    CHK(fedge_store_commit(db));
    in_tx = 0;
cleanup:
    sqlite3_finalize(st);
    if (in_tx)
        fedge_store_rollback(db);
    return ret;
}
