#include "governance.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>

#include "audit.h"
#include "audit_impl.h"
#include "combine.h"
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

/* fedge-audit verify checks every signed head with one public key, so a log
 * that has signed heads must go on being signed by the same key: a start
 * without a key, or with another one, would leave it unverifiable for good.
 * Only the last head is checked; verify checks them all. Without a key the
 * start goes ahead only with allow_unsigned, and that is logged as an
 * audited event. */
static int check_log_signer(fedge_aggregator *a, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK, unsigned_start = 0;
    long long n_heads = 0, last_round = -1, last_seq = 0;
    char detail[256];
    CHK(fedge_store_prepare(a->db,
                            "SELECT seq, round, head_hash, signature, signed_at, "
                            "(SELECT count(*) FROM audit_heads) FROM audit_heads ORDER BY seq DESC LIMIT 1",
                            &st));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        goto cleanup;
    if (rc != SQLITE_ROW)
        FAIL(FEDGE_ERR_SQL);
    last_seq = sqlite3_column_int64(st, 0);
    int has_round = sqlite3_column_type(st, 1) != SQLITE_NULL;
    last_round = has_round ? sqlite3_column_int64(st, 1) : -1;
    n_heads = sqlite3_column_int64(st, 5);
    if (!a->signer) {
        if (!a->cfg.allow_unsigned) {
            snprintf(err, errlen,
                     "the log has %lld signed heads (the last at round %lld) and no signing_key is "
                     "given: start with the key that signed them, or with allow_unsigned "
                     "(--allow-unsigned) to go on without signatures (fedge-audit verify will then "
                     "report every unsigned round)",
                     n_heads, last_round);
            FAIL(FEDGE_ERR_SIGNING_KEY);
        }
        unsigned_start = 1;
        goto cleanup;
    }
    const uint8_t *head = sqlite3_column_blob(st, 2);
    const uint8_t *sig = sqlite3_column_blob(st, 3);
    size_t sig_len = (size_t)sqlite3_column_bytes(st, 3);
    uint8_t digest[FEDGE_HASH_LEN];
    if (!head || sqlite3_column_bytes(st, 2) != FEDGE_HASH_LEN || !sig || last_round > UINT32_MAX) {
        snprintf(err, errlen, "the last signed head (seq %lld) is malformed; run fedge-audit verify",
                 last_seq);
        FAIL(FEDGE_ERR_AUDIT_SIGNATURE);
    }
    CHK(audit_head_digest(last_seq, has_round, has_round ? (uint32_t)last_round : 0, head,
                          sqlite3_column_double(st, 4), digest));
    if (mbedtls_pk_verify(&a->signer->key, MBEDTLS_MD_SHA256, digest, sizeof digest, sig, sig_len) != 0) {
        snprintf(err, errlen,
                 "signing_key %s did not sign this log: its last signed head (round %lld, seq %lld) "
                 "does not verify with it; start with the key that signed the log",
                 a->cfg.signing_key, last_round, last_seq);
        FAIL(FEDGE_ERR_SIGNING_KEY);
    }
cleanup:
    sqlite3_finalize(st);
    if (ret == FEDGE_OK && unsigned_start) {
        snprintf(detail, sizeof detail,
                 "started without a signing key on a log with %lld signed heads (allow_unsigned); "
                 "rounds from here on are not signed",
                 n_heads);
        FEDGE_WARN("%s", detail);
        ret = fedge_store_begin(a->db);
        if (ret == FEDGE_OK)
            ret = fedge_gov_event(a, 0, NULL, "unsigned_start", "operator", detail);
        if (ret == FEDGE_OK)
            ret = fedge_store_commit(a->db);
        if (ret != FEDGE_OK) {
            fedge_store_rollback(a->db);
            snprintf(err, errlen, "cannot log the unsigned start: %s", fedge_strerror(ret));
        }
    }
    return ret;
}

static int load_policy(const fedge_agg_config *cfg, fedge_policy **out, char *err, size_t errlen)
{
    if (cfg->policy_file[0])
        return fedge_policy_load(cfg->policy_file, out, err, errlen);
    return fedge_policy_default(out);
}

/* Settings no round could ever satisfy are refused, at start and reload. */
static int policy_fits(const fedge_aggregator *a, const fedge_policy *p, char *err, size_t errlen)
{
    unsigned k = fedge_policy_min_clients(p);
    /* DP-FedAvg's noise is calibrated to a clipped sum over a fixed
     * denominator; a robust rule or SCAFFOLD's control half is not that sum. */
    if (fedge_policy_dp_enabled(p) && (strcmp(a->cfg.aggregation, "mean") != 0 || a->cfg.scaffold)) {
        snprintf(err, errlen, "the policy enables DP, which %s%s cannot take: DP-FedAvg's noise is "
                 "calibrated to the clipped sum of the deltas (needs aggregation = mean, scaffold = false)",
                 a->cfg.scaffold ? "scaffold = true" : "aggregation = ", a->cfg.scaffold ? "" : a->cfg.aggregation);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (a->cfg.clients_per_round > 0 && (long)k > a->cfg.clients_per_round) {
        snprintf(err, errlen, "policy round.min_clients %u is more than clients_per_round %ld: no round could"
                 " aggregate", k, a->cfg.clients_per_round);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (k > a->keys.n) {
        snprintf(err, errlen, "policy round.min_clients %u is more than the %zu devices in %s: no round could"
                 " aggregate", k, a->keys.n, a->cfg.keys_file);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if ((size_t)a->cfg.min_updates > a->keys.n) {
        snprintf(err, errlen, "min_updates %ld is more than the %zu devices in %s: no round could aggregate",
                 a->cfg.min_updates, a->keys.n, a->cfg.keys_file);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    /* participants per round when every device is eligible (the most any
     * round can have): as open_round computes it */
    size_t n = a->keys.n;
    size_t sel = a->cfg.clients_per_round > 0 ? (size_t)a->cfg.clients_per_round
                                              : (size_t)ceil(a->cfg.client_fraction * (double)n);
    if (sel > n)
        sel = n;
    if (sel == 0)
        sel = 1;
    if (a->cfg.clients_per_round == 0 && (k > sel || (size_t)a->cfg.min_updates > sel)) {
        snprintf(err, errlen, "client_fraction %g selects %zu of %zu devices, fewer than %s %ld: no round could"
                 " aggregate", a->cfg.client_fraction, sel, n, k > sel ? "round.min_clients" : "min_updates",
                 k > sel ? (long)k : a->cfg.min_updates);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if ((double)sel * fedge_policy_max_share(p) < 1.0 - 1e-12) {
        snprintf(err, errlen, "policy round.max_share %g needs at least %.0f updates a round, but at most %zu"
                 " devices are selected: no round could aggregate", fedge_policy_max_share(p),
                 ceil(1.0 / fedge_policy_max_share(p) - 1e-9), sel);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    return FEDGE_OK;
}

static void apply_policy_settings(fedge_aggregator *a)
{
    /* the policy's deadline when it sets one, else the configured one (a
     * reload that drops the key goes back to it) */
    double deadline = fedge_policy_round_deadline_s(a->policy);
    double want = deadline > 0 ? deadline : a->round_timeout_cfg_s;
    if (want != a->cfg.round_timeout_s) {
        FEDGE_INFO("round deadline %.1fs (%s)", want, deadline > 0 ? "set by the policy" : "round_timeout_s");
        a->cfg.round_timeout_s = want;
    }
    if (fedge_strategy_describe(&a->cfg, fedge_policy_dp_enabled(a->policy), a->strategy, sizeof a->strategy) !=
        FEDGE_OK)
        snprintf(a->strategy, sizeof a->strategy, "%s", fedge_policy_dp_enabled(a->policy) ? "dp-fedavg" : "fedavg");
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
    a->round_timeout_cfg_s = a->cfg.round_timeout_s;
    CHK(policy_fits(a, a->policy, err, errlen));
    if (a->cfg.signing_key[0])
        CHK(signer_load(a->cfg.signing_key, &a->signer, err, errlen));
    CHK(check_log_signer(a, err, errlen));
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
    if (ret == FEDGE_OK && (ret = policy_fits(a, p, err, sizeof err)) != FEDGE_OK)
        fedge_policy_free(p);
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
    return a->strategy;
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
    sqlite3_bind_double(st, 1, fedge_wall_now());
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

int fedge_gov_round_admission(fedge_aggregator *a, uint32_t round, size_t k, size_t n_allowed,
                              int *refused, char *reason, size_t reason_len)
{
    fedge_policy_decision d;
    fedge_dp_spent spent;
    double eps = 0;
    int ret;
    (void)round;
    *refused = 0;
    if (!fedge_policy_dp_enabled(a->policy))
        return FEDGE_OK;
    if (n_allowed == 0 || k == 0)
        return FEDGE_ERR_INVALID_ARG;
    /* DP rounds of a log from before the ledger: their own cost is unknown */
    int64_t unpriced = 0;
    CHK(fedge_store_query_int64(a->db, &unpriced, NULL,
                                "SELECT count(*) FROM rounds WHERE status='closed' AND epsilon IS NOT NULL"
                                " AND id NOT IN (SELECT round FROM dp_ledger)", ""));
    if (unpriced > 0) {
        *refused = 1;
        snprintf(reason, reason_len,
                 "%lld DP round(s) closed before this log had a privacy ledger: their cost at their "
                 "own settings is unknown, so no budget can be checked; start a new run",
                 (long long)unpriced);
        return FEDGE_OK;
    }
    CHK(fedge_dp_ledger_spent(a->db, NULL, &spent));
    CHK(fedge_policy_budget_check(a->policy, spent.rdp, fmin(1.0, (double)k / (double)n_allowed),
                                  &eps, &d));
    if (d.decision == FEDGE_DECISION_REJECT) {
        *refused = 1;
        snprintf(reason, reason_len, "%s", d.reason);
    }
cleanup:
    return ret;
}

/* The device's ledger spend plus one contribution at the current settings. */
static int dp_device_check(fedge_aggregator *a, const char *device, double *eps,
                           fedge_policy_decision *d)
{
    fedge_dp_spent spent;
    int ret = fedge_dp_ledger_spent(a->db, device, &spent);
    if (ret == FEDGE_OK)
        ret = fedge_policy_device_budget_check(a->policy, device, spent.rdp, eps, d);
    return ret;
}

/* Staleness of an update's base model: the model versions published since
 * it was last the current one. An update on the current model is fresh. For
 * an older base, every round that closed after the last round that
 * published it (as an aggregate, or a refinement in that round) published
 * one; failed rounds publish nothing. A round whose aggregate re-publishes
 * its base (a zero delta) makes that base current again. *found = 0: not a
 * version of this log. */
static int staleness_of(fedge_aggregator *a, const uint8_t version[FEDGE_HASH_LEN], int *found,
                        uint32_t *staleness)
{
    char hex[FEDGE_HASH_HEX_LEN];
    int64_t made_in = 0, later = 0;
    fedge_hash_to_hex(version, hex);
    int ret = fedge_store_query_int64(a->db, &made_in, found,
                                      "SELECT max(coalesce((SELECT max(id) FROM rounds WHERE status='closed'"
                                      " AND new_version=?1), 0), round) FROM models WHERE version=?1",
                                      "t", hex);
    if (ret != FEDGE_OK || !*found)
        return ret;
    if (memcmp(version, a->version, FEDGE_HASH_LEN) == 0) {
        *staleness = 0;
        return FEDGE_OK;
    }
    ret = fedge_store_query_int64(a->db, &later, NULL, "SELECT count(*) FROM rounds WHERE status='closed' AND id>?",
                                  "i", made_in);
    if (ret == FEDGE_OK)
        *staleness = later > UINT32_MAX ? UINT32_MAX : (uint32_t)later;
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

int fedge_gov_admit_update(fedge_aggregator *a, const fedge_gov_update_in *in, int *accepted, char *reason,
                           size_t reason_len)
{
    fedge_policy_decision d;
    sqlite3_stmt *st = NULL;
    uint8_t *clipped = NULL;
    const uint8_t *blob = in->encoded;
    size_t blob_len = in->encoded_len;
    int ret, found = 0, in_tx = 0;
    uint32_t staleness = 0, recent = 0;
    char key[24];
    double wall = fedge_wall_now();
    *accepted = 0;

    double norm = fedge_l2_norm(in->delta, in->n_params);
    CHK(staleness_of(a, in->header->base_version, &found, &staleness));
    double window = fedge_policy_rate_window_s(a->policy);
    if (window > 0)
        CHK(count_recent(a, in->device, wall - window, &recent));
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
            .staleness = staleness,
            .n_samples = in->header->n_samples,
            .l2_norm = norm,
            .finite = isfinite(norm),
            .recent_updates = recent,
        };
        CHK(fedge_policy_check_update(a->policy, &pin, &d));
    }
    if (d.decision != FEDGE_DECISION_REJECT && fedge_policy_dp_enabled(a->policy)) {
        fedge_policy_decision db;
        double eps = 0;
        CHK(dp_device_check(a, in->device, &eps, &db));
        if (db.decision == FEDGE_DECISION_REJECT)
            d = db;
    }
    if (d.decision == FEDGE_DECISION_CLIP) {
        /* Store the delta as it enters the aggregate: clipped, in fp32. The
         * norm rules see the model delta alone: a SCAFFOLD update's control
         * half is stored as sent. */
        for (size_t i = 0; i < in->n_params; i++)
            in->delta[i] *= (float)d.clip_factor;
        fedge_delta_header h = *in->header;
        h.encoding = FEDGE_ENC_FP32;
        h.block_size = 0;
        h.flags = in->header->flags & FEDGE_DELTA_FLAG_CONTROL;
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
                           " norm, decision, rule, reason, delta, sealed_sha256) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)", &st));
    sqlite3_bind_int64(st, 1, a->round);
    sqlite3_bind_text(st, 2, in->device, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 3, wall);
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
    if (in->sealed_sha256)
        sqlite3_bind_blob(st, 13, in->sealed_sha256, FEDGE_HASH_LEN, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        FEDGE_ERROR("sqlite insert update: %s", sqlite3_errmsg(a->db));
        FAIL(fedge_store_status(rc));
    }
    sqlite3_finalize(st);
    st = NULL;
    snprintf(key, sizeof key, "%lld", (long long)sqlite3_last_insert_rowid(a->db));
    CHK(fedge_audit_append(a->db, "updates", key));
    CHK(fedge_store_prepare(a->db, "UPDATE devices SET last_counter=?, last_seen=? WHERE id=?", &st));
    sqlite3_bind_int64(st, 1, (sqlite3_int64)in->counter);
    sqlite3_bind_double(st, 2, wall);
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

/* The round's accepted updates without their deltas: O(devices) memory. */
typedef struct {
    size_t n, cap;
    int64_t *ids;
    char (*devices)[FEDGE_DEVICE_ID_MAX + 1];
    double *weights;                 /* aggregation weight; 0: excluded at load */
    fedge_policy_round_stat *stats;
    fedge_policy_decision *excluded; /* why, for weights[i] == 0 */
    fedge_delta_header *hdr;         /* of each readable delta: where its blocks lie */
} round_updates;

static void round_updates_free(round_updates *u)
{
    free(u->ids);
    free(u->devices);
    free(u->weights);
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
    if (n_samples < 1 || (uint64_t)n_samples > max_samples) {
        exclude_at_load(u, i, "sample_count", "stated sample count %lld is outside 1..%llu (update.max_samples)",
                        (long long)n_samples, (unsigned long long)max_samples);
        return FEDGE_OK;
    }
    double norm = fedge_l2_norm(delta, a->model.n_params);
    if (!isfinite(norm)) {
        exclude_at_load(u, i, "finite", "delta norm is not finite");
        return FEDGE_OK;
    }
    u->stats[i].norm = norm;
    /* DP-FedAvg weighs every client equally; otherwise by stated samples,
     * and a late update less: FedAsync's polynomial discount (1 + s)^-1/2
     * for an update whose base model is s versions old. */
    u->weights[i] = c->dp ? 1.0 : (double)n_samples;
    if (c->dp) {
        /* Clipped to C when it was accepted, but to the C of that time: a
         * policy reload since may have lowered C or turned DP on. The noise
         * is calibrated to today's C, so the sum must be bounded by it:
         * a weight below 1 clips the delta as it is added. */
        double clip = fedge_policy_dp_clip_norm(a->policy);
        if (norm > clip * (1.0 + 1e-6)) {
            u->weights[i] = clip / norm;
            FEDGE_INFO("round %u: update %lld of %s clipped again to the current DP norm %.4g (norm %.4g)",
                       a->round, (long long)id, device, clip, norm);
        }
    }
    int found = 0;
    uint32_t staleness = 0;
    CHK(staleness_of(a, h->base_version, &found, &staleness));
    if (found && staleness > 0 && !c->dp)
        u->weights[i] /= sqrt(1.0 + (double)staleness);
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

/* The population a round samples from: devices the policy would select now. */
static int dp_eligible(fedge_aggregator *a, size_t *n)
{
    sqlite3_stmt *st = NULL;
    int ret;
    *n = 0;
    CHK(fedge_store_prepare(a->db, "SELECT status FROM devices WHERE id=?", &st));
    for (size_t i = 0; i < a->keys.n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, a->keys.devices[i].id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW &&
            fedge_gov_device_eligible(a, i, (const char *)sqlite3_column_text(st, 0)))
            (*n)++;
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* devices.epsilon_spent of every device whose update entered this round:
 * the composition of the ledger rounds it contributed to (this one included). */
static int dp_charge_devices(fedge_aggregator *a)
{
    sqlite3_stmt *sel = NULL, *upd = NULL;
    int ret, rc;
    CHK(fedge_store_prepare(a->db, "SELECT device FROM updates WHERE round=? AND decision<>'rejected'", &sel));
    CHK(fedge_store_prepare(a->db, "UPDATE devices SET epsilon_spent=? WHERE id=?", &upd));
    sqlite3_bind_int64(sel, 1, a->round);
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
        const char *device = (const char *)sqlite3_column_text(sel, 0);
        fedge_dp_spent spent;
        double eps;
        CHK(fedge_dp_ledger_spent(a->db, device, &spent));
        CHK(fedge_policy_dp_epsilon(a->policy, spent.rdp, &eps));
        sqlite3_reset(upd);
        sqlite3_bind_double(upd, 1, eps);
        sqlite3_bind_text(upd, 2, device, -1, SQLITE_TRANSIENT);
        if (sqlite3_step(upd) != SQLITE_DONE)
            FAIL(FEDGE_ERR_SQL);
    }
    if (rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
cleanup:
    sqlite3_finalize(sel);
    sqlite3_finalize(upd);
    return ret;
}

int fedge_gov_dp_charge(fedge_aggregator *a, size_t n_clients, double *epsilon, int *over,
                        char *reason, size_t reason_len)
{
    fedge_policy_decision d;
    fedge_dp_spent spent;
    double rdp[FEDGE_DP_N_ORDERS];
    size_t eligible = 0;
    int ret;
    *over = 0;
    *epsilon = -1;
    if (!fedge_policy_dp_enabled(a->policy))
        return FEDGE_ERR_STATE;
    CHK(dp_eligible(a, &eligible));
    size_t selected = a->n_selected ? a->n_selected : n_clients;
    double q = eligible > 0 ? fmin(1.0, (double)selected / (double)eligible) : 1.0;
    CHK(fedge_dp_ledger_spent(a->db, NULL, &spent));
    CHK(fedge_policy_budget_check(a->policy, spent.rdp, q, epsilon, &d));
    if (d.decision == FEDGE_DECISION_REJECT) {
        *over = 1;
        snprintf(reason, reason_len, "%s: %s", d.rule, d.reason);
        CHK(fedge_gov_event(a, a->round, NULL, "round_rejected", d.rule, d.reason));
        goto cleanup;
    }
    CHK(fedge_policy_dp_round_rdp(a->policy, q, rdp));
    CHK(fedge_dp_ledger_append(a->db, a->round, q, fedge_policy_dp_noise_multiplier(a->policy),
                               fedge_policy_dp_clip_norm(a->policy), rdp));
    CHK(dp_charge_devices(a));
cleanup:
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

/* out = sum_i w_i d_i, block by block, in double as FedAvg always summed
 * (DP-FedAvg's numerator). */
static int weighted_sum(fedge_update_reader *r, size_t block, const double *w, float *out)
{
    block = block < r->n_params ? block : r->n_params;
    double *acc = malloc(block * sizeof *acc);
    float *buf = malloc(block * sizeof *buf);
    int ret = FEDGE_OK;
    if (!acc || !buf)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t k0 = 0; k0 < r->n_params; k0 += block) {
        size_t k1 = k0 + block < r->n_params ? k0 + block : r->n_params;
        for (size_t k = 0; k < k1 - k0; k++)
            acc[k] = 0;
        for (size_t i = 0; i < r->n; i++) {
            CHK(r->read(r, i, k0, k1, buf));
            for (size_t k = 0; k < k1 - k0; k++)
                acc[k] += w[i] * (double)buf[k];
        }
        for (size_t k = 0; k < k1 - k0; k++)
            out[k0 + k] = (float)acc[k];
    }
cleanup:
    free(acc);
    free(buf);
    return ret;
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

int fedge_gov_aggregate(fedge_aggregator *a, fedge_gov_round_result *res)
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
    u.stats = calloc(u.cap, sizeof *u.stats);
    u.excluded = calloc(u.cap, sizeof *u.excluded);
    u.hdr = calloc(u.cap, sizeof *u.hdr);
    buf = malloc((stored_elems(a) ? stored_elems(a) : 1) * sizeof *buf);
    if (!u.ids || !u.devices || !u.weights || !u.stats || !u.excluded || !u.hdr || !buf)
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
        CHK(dp_device_check(a, u.devices[i], &eps, &d));
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
    if (dp) {
        /* Fixed-denominator DP-FedAvg: (sum of clipped deltas + noise) / expected clients. */
        CHK(weighted_sum(&rd, cp.block, use_w, mean));
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
        double denom = (double)(a->n_selected ? a->n_selected : n_use);
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
        if (n_used < n_use)
            CHK(log_left_out(a, &u, use_idx, used, n_use, n_used));
        res->n_used = n_used;
    }
    stored_reader_close(&sr);

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
        CHK(dp_eligible(a, &eligible));
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
    sqlite3_bind_double(st, 1, fedge_wall_now());
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
