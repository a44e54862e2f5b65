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
#include "clock.h"
#include "combine.h"
#include "common.h"
#include "log.h"
#include "policy.h"
#include "store.h"
#include "train_metrics.h"

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
 * Only the last head is checked; verify checks them all. Reads only. */
static int log_signer_fits(sqlite3 *db, mbedtls_pk_context *key, const char *key_path, int allow_unsigned,
                           long long *n_heads_out, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    long long n_heads = 0, last_round = -1, last_seq = 0;
    *n_heads_out = 0;
    CHK(fedge_store_prepare(db,
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
    *n_heads_out = n_heads;
    if (!key) {
        if (!allow_unsigned) {
            snprintf(err, errlen,
                     "the log has %lld signed heads (the last at round %lld) and no signing_key is "
                     "given: start with the key that signed them, or with allow_unsigned "
                     "(--allow-unsigned) to go on without signatures (fedge-audit verify will then "
                     "report every unsigned round)",
                     n_heads, last_round);
            FAIL(FEDGE_ERR_SIGNING_KEY);
        }
        goto cleanup;
    }
    {
        /* after a rotation (audit.h) the key in force is the one it names */
        mbedtls_pk_context rot;
        int found = 0;
        int64_t rot_seq = 0;
        char want[FEDGE_HASH_HEX_LEN], have[FEDGE_HASH_HEX_LEN];
        mbedtls_pk_init(&rot);
        ret = fedge_audit_last_rotation(db, &found, &rot_seq, &rot);
        if (ret == FEDGE_OK && found)
            ret = fedge_audit_key_fingerprint(&rot, want);
        if (ret == FEDGE_OK && found)
            ret = fedge_audit_key_fingerprint(key, have);
        mbedtls_pk_free(&rot);
        if (ret != FEDGE_OK) {
            snprintf(err, errlen, "the log's signing-key rotation record is unreadable (%s); run fedge-audit verify",
                     fedge_strerror(ret));
            FAIL(FEDGE_ERR_AUDIT_SIGNATURE);
        }
        if (found) {
            if (strcmp(want, have) != 0) {
                snprintf(err, errlen,
                         "signing_key %s (sha256 %.16s...) is not the log's signing key: the rotation at seq %lld"
                         " made sha256 %.16s... the key in force; start with that key",
                         key_path, have, (long long)rot_seq, want);
                FAIL(FEDGE_ERR_SIGNING_KEY);
            }
            goto cleanup;
        }
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
    if (mbedtls_pk_verify(key, MBEDTLS_MD_SHA256, digest, sizeof digest, sig, sig_len) != 0) {
        snprintf(err, errlen,
                 "signing_key %s did not sign this log: its last signed head (round %lld, seq %lld) "
                 "does not verify with it; start with the key that signed the log",
                 key_path, last_round, last_seq);
        FAIL(FEDGE_ERR_SIGNING_KEY);
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* Without a key the start goes ahead only with allow_unsigned, and that is
 * logged as an audited event. */
static int check_log_signer(fedge_aggregator *a, char *err, size_t errlen)
{
    long long n_heads = 0;
    char detail[256];
    int ret = log_signer_fits(a->db, a->signer ? &a->signer->key : NULL, a->cfg.signing_key,
                              a->cfg.allow_unsigned, &n_heads, err, errlen);
    if (ret == FEDGE_OK && !a->signer && n_heads > 0) {
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

int fedge_gov_check_signing_key(sqlite3 *db, const fedge_agg_config *cfg, long long *n_heads, char *err,
                                size_t errlen)
{
    struct fedge_signer *s = NULL;
    int ret = FEDGE_OK;
    *n_heads = 0;
    if (cfg->signing_key[0])
        CHK(signer_load(cfg->signing_key, &s, err, errlen));
    if (db)
        CHK(log_signer_fits(db, s ? &s->key : NULL, cfg->signing_key, cfg->allow_unsigned, n_heads, err, errlen));
cleanup:
    signer_free(s);
    return ret;
}

int fedge_gov_load_policy(const fedge_agg_config *cfg, fedge_policy **out, char *err, size_t errlen)
{
    if (cfg->policy_file[0])
        return fedge_policy_load(cfg->policy_file, out, err, errlen);
    return fedge_policy_default(out);
}

int fedge_gov_policy_fits(const fedge_agg_config *cfg, size_t n_devices, const fedge_policy *p, char *err,
                          size_t errlen)
{
    unsigned k = fedge_policy_min_clients(p);
    /* DP-FedAvg's noise is calibrated to a clipped sum over a fixed
     * denominator; a robust rule or SCAFFOLD's control half is not that sum. */
    if (fedge_policy_dp_enabled(p) && (strcmp(cfg->aggregation, "mean") != 0 || cfg->scaffold)) {
        snprintf(err, errlen, "the policy enables DP, which %s%s cannot take: DP-FedAvg's noise is "
                 "calibrated to the clipped sum of the deltas (needs aggregation = mean, scaffold = false)",
                 cfg->scaffold ? "scaffold = true" : "aggregation = ", cfg->scaffold ? "" : cfg->aggregation);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (cfg->clients_per_round > 0 && (long)k > cfg->clients_per_round) {
        snprintf(err, errlen, "policy round.min_clients %u is more than clients_per_round %ld: no round could"
                 " aggregate", k, cfg->clients_per_round);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (k > n_devices) {
        snprintf(err, errlen, "policy round.min_clients %u is more than the %zu devices in %s: no round could"
                 " aggregate", k, n_devices, cfg->keys_file);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if ((size_t)cfg->min_updates > n_devices) {
        snprintf(err, errlen, "min_updates %ld is more than the %zu devices in %s: no round could aggregate",
                 cfg->min_updates, n_devices, cfg->keys_file);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    /* participants per round when every device is eligible (the most any
     * round can have) */
    size_t n = n_devices;
    size_t sel = fedge_agg_config_round_size(cfg, n);
    if (cfg->clients_per_round == 0 && (k > sel || (size_t)cfg->min_updates > sel)) {
        snprintf(err, errlen, "client_fraction %g selects %zu of %zu devices, fewer than %s %ld: no round could"
                 " aggregate", cfg->client_fraction, sel, n, k > sel ? "round.min_clients" : "min_updates",
                 k > sel ? (long)k : cfg->min_updates);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    char why[256];
    if (fedge_agg_config_combiner_min(cfg, sel, why, sizeof why) > sel) {
        snprintf(err, errlen, "at most %zu devices are selected a round: no round could aggregate (%s)", sel, why);
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

static int policy_fits(const fedge_aggregator *a, const fedge_policy *p, char *err, size_t errlen)
{
    return fedge_gov_policy_fits(&a->cfg, a->keys.n, p, err, errlen);
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
    char summary[512];
    if (fedge_policy_summary(a->policy, summary, sizeof summary) == FEDGE_OK)
        FEDGE_INFO("policy %s: %s", fedge_policy_name(a->policy), summary);
}

int fedge_gov_init(fedge_aggregator *a, char *err, size_t errlen)
{
    int ret;
    ret = fedge_gov_load_policy(&a->cfg, &a->policy, err, errlen);
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
    int ret = fedge_gov_load_policy(&a->cfg, &p, err, sizeof err);
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
    sqlite3_bind_double(st, 1, fedge_clock_wall());
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

/* Async mode: the update's round is the step it was admitted in, which says
 * nothing exact about its base model; the policy's staleness rule (versions
 * since the base, audited) is what refuses an old update. */
uint32_t fedge_gov_round_window(const fedge_aggregator *a)
{
    if (fedge_gov_async(a))
        return UINT32_MAX / 2;
    return fedge_policy_max_staleness(a->policy);
}

int fedge_gov_async(const fedge_aggregator *a)
{
    return strcmp(a->cfg.mode, "async") == 0;
}

int fedge_gov_device_eligible(const fedge_aggregator *a, size_t i, const char *status)
{
    fedge_policy_decision d;
    const fedge_device_entry *e = &a->keys.devices[i];
    if (e->removed) /* taken out of the keys file by a reload */
        return 0;
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
    /* async: devices choose when to come, so there is no sampling to
     * amplify privacy; each step is charged at q = 1 (docs/POLICY.md) */
    double q = fedge_gov_async(a) ? 1.0 : fmin(1.0, (double)k / (double)n_allowed);
    CHK(fedge_policy_budget_check(a->policy, spent.rdp, q, &eps, &d));
    if (d.decision == FEDGE_DECISION_REJECT) {
        *refused = 1;
        snprintf(reason, reason_len, "%s", d.reason);
    }
cleanup:
    return ret;
}

int fedge_gov_dp_device_check(fedge_aggregator *a, const char *device, double *eps,
                              fedge_policy_decision *d)
{
    fedge_dp_spent spent;
    int ret = fedge_dp_ledger_spent(a->db, device, &spent);
    if (ret == FEDGE_OK)
        ret = fedge_policy_device_budget_check(a->policy, device, spent.rdp, eps, d);
    return ret;
}

int fedge_gov_staleness_at(sqlite3 *db, const uint8_t version[FEDGE_HASH_LEN],
                           const uint8_t current[FEDGE_HASH_LEN], int64_t before_round, int *found,
                           uint32_t *staleness)
{
    char hex[FEDGE_HASH_HEX_LEN];
    int64_t made_in = 0, later = 0;
    fedge_hash_to_hex(version, hex);
    int ret = fedge_store_query_int64(db, &made_in, found,
                                      "SELECT max(coalesce((SELECT max(id) FROM rounds WHERE status='closed'"
                                      " AND new_version=?1), 0), round) FROM models WHERE version=?1",
                                      "t", hex);
    if (ret != FEDGE_OK || !*found)
        return ret;
    if (memcmp(version, current, FEDGE_HASH_LEN) == 0) {
        *staleness = 0;
        return FEDGE_OK;
    }
    ret = fedge_store_query_int64(db, &later, NULL,
                                  "SELECT count(*) FROM rounds WHERE status='closed' AND id>? AND id<?", "ii",
                                  made_in, before_round);
    if (ret == FEDGE_OK)
        *staleness = later > UINT32_MAX ? UINT32_MAX : (uint32_t)later;
    return ret;
}

int fedge_gov_staleness(fedge_aggregator *a, const uint8_t version[FEDGE_HASH_LEN], int *found,
                        uint32_t *staleness)
{
    return fedge_gov_staleness_at(a->db, version, a->version, INT64_MAX, found, staleness);
}

int fedge_gov_update_decision(const fedge_policy *p, const fedge_policy_update_in *in, const double *device_spent,
                              fedge_policy_decision *d)
{
    int ret = fedge_policy_check_update(p, in, d);
    if (ret != FEDGE_OK || d->decision == FEDGE_DECISION_REJECT || !fedge_policy_dp_enabled(p))
        return ret;
    if (!device_spent)
        return FEDGE_ERR_INVALID_ARG;
    fedge_policy_decision db;
    double eps = 0;
    ret = fedge_policy_device_budget_check(p, in->device_id, device_spent, &eps, &db);
    if (ret == FEDGE_OK && db.decision == FEDGE_DECISION_REJECT)
        *d = db;
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

/* in->encoded's payload into in->decode_into (the bytes fedge_update_open
 * decoded and checked) */
static int decode_encoded(const fedge_gov_update_in *in)
{
    if (in->encoded_len < FEDGE_DELTA_HEADER_LEN)
        return FEDGE_ERR_INVALID_ARG;
    return fedge_delta_decode_payload(in->header, in->encoded + FEDGE_DELTA_HEADER_LEN,
                                      in->encoded_len - FEDGE_DELTA_HEADER_LEN, in->decode_into);
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
    double wall = fedge_clock_wall();
    *accepted = 0;

    uint8_t body_sha[FEDGE_HASH_LEN];
    float *delta = in->delta;
    if (!delta && (!in->norm || !in->decode_into)) {
        if (!in->decode_into)
            return FEDGE_ERR_INVALID_ARG;
        CHK(decode_encoded(in));
        delta = in->decode_into;
    }
    double norm = in->norm ? *in->norm : fedge_l2_norm(delta, in->n_params);
    CHK(fedge_gov_staleness(a, in->header->base_version, &found, &staleness));
    double window = fedge_policy_rate_window_s(a->policy);
    if (window > 0)
        CHK(count_recent(a, in->device, wall - window, &recent));
    if (!found) {
        memset(&d, 0, sizeof d);
        d.decision = FEDGE_DECISION_REJECT;
        snprintf(d.rule, sizeof d.rule, "base_version");
        snprintf(d.reason, sizeof d.reason, "base model is not a version this aggregator published");
    } else if (in->control_refusal) {
        memset(&d, 0, sizeof d);
        d.decision = FEDGE_DECISION_REJECT;
        snprintf(d.rule, sizeof d.rule, "scaffold_control");
        snprintf(d.reason, sizeof d.reason, "%s", in->control_refusal);
    } else {
        fedge_policy_update_in pin = {
            .device_id = in->device,
            .device_status = in->status,
            .device_region = a->keys.devices[in->device_index].region,
            .round = a->round,
            .staleness = staleness,
            /* a listed relay's partial: bounded by relay_max_samples (ingest.c) */
            .n_samples = (in->header->flags & FEDGE_DELTA_FLAG_PARTIAL) ? 1 : in->header->n_samples,
            .l2_norm = norm,
            .finite = isfinite(norm),
            .recent_updates = recent,
        };
        fedge_dp_spent spent;
        if (fedge_policy_dp_enabled(a->policy))
            CHK(fedge_dp_ledger_spent(a->db, in->device, &spent));
        CHK(fedge_gov_update_decision(a->policy, &pin, fedge_policy_dp_enabled(a->policy) ? spent.rdp : NULL, &d));
    }
    if (d.decision == FEDGE_DECISION_CLIP) {
        /* Store the delta as it enters the aggregate: clipped, in fp32. The
         * norm rules see the model delta alone: a SCAFFOLD update's control
         * half is stored as sent. */
        if (!delta) {
            CHK(decode_encoded(in));
            delta = in->decode_into;
        }
        CHK(fedge_l2_clip(delta, in->n_params, d.clip_bound, norm, NULL));
        fedge_delta_header h = *in->header;
        h.encoding = FEDGE_ENC_FP32;
        h.block_size = 0;
        h.flags = in->header->flags & (FEDGE_DELTA_FLAG_CONTROL | FEDGE_DELTA_FLAG_PARTIAL);
        blob_len = fedge_delta_encoded_size(&h);
        clipped = malloc(blob_len);
        if (!clipped)
            FAIL(FEDGE_ERR_NOMEM);
        CHK(fedge_delta_encode(&h, delta, NULL, clipped, blob_len, &blob_len));
        blob = clipped;
    }
    if (d.decision != FEDGE_DECISION_REJECT) {
        if (blob == in->encoded && in->encoded_sha256)
            memcpy(body_sha, in->encoded_sha256, FEDGE_HASH_LEN);
        else
            CHK(fedge_sha256(blob, blob_len, body_sha));
    }

    if (!a->ingest_group_tx) {
        CHK(fedge_store_begin(a->db));
        in_tx = 1;
    }
    CHK(fedge_store_cached(a->db, "INSERT INTO updates(round, device, received_at, n_samples, encoding, bytes, counter,"
                           " norm, decision, rule, reason, delta, sealed_sha256, delta_sha256)"
                           " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)", &st));
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
    if (d.decision != FEDGE_DECISION_REJECT) {
        sqlite3_bind_blob(st, 12, blob, (int)blob_len, SQLITE_STATIC);
        sqlite3_bind_blob(st, 14, body_sha, FEDGE_HASH_LEN, SQLITE_STATIC);
    }
    if (in->sealed_sha256)
        sqlite3_bind_blob(st, 13, in->sealed_sha256, FEDGE_HASH_LEN, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        FEDGE_ERROR("sqlite insert update: %s", sqlite3_errmsg(a->db));
        FAIL(fedge_store_status(rc));
    }
    fedge_store_done(st);
    st = NULL;
    snprintf(key, sizeof key, "%lld", (long long)sqlite3_last_insert_rowid(a->db));
    CHK(fedge_train_metrics_store(a->db, sqlite3_last_insert_rowid(a->db), in->metrics));
    if (d.decision != FEDGE_DECISION_REJECT)
        CHK(fedge_audit_append_body(a->db, "updates", key, body_sha));
    else
        CHK(fedge_audit_append(a->db, "updates", key));
    CHK(fedge_store_cached(a->db, "UPDATE devices SET last_counter=?, last_seen=? WHERE id=?", &st));
    sqlite3_bind_int64(st, 1, (sqlite3_int64)in->counter);
    sqlite3_bind_double(st, 2, wall);
    sqlite3_bind_text(st, 3, in->device, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    if (in_tx) {
        CHK(fedge_store_commit(a->db));
        in_tx = 0;
    }

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
    fedge_store_done(st);
    free(clipped);
    return ret;
}

int fedge_gov_eligible_devices(fedge_aggregator *a, size_t *idx, size_t *n)
{
    sqlite3_stmt *st = NULL;
    int ret;
    *n = 0;
    CHK(fedge_store_prepare(a->db, "SELECT status FROM devices WHERE id=?", &st));
    for (size_t i = 0; i < a->keys.n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, a->keys.devices[i].id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW &&
            fedge_gov_device_eligible(a, i, (const char *)sqlite3_column_text(st, 0))) {
            if (idx)
                idx[*n] = i;
            (*n)++;
        }
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
    CHK(fedge_gov_eligible_devices(a, NULL, &eligible));
    size_t selected = a->n_selected ? a->n_selected : n_clients;
    double q = eligible > 0 && !fedge_gov_async(a) ? fmin(1.0, (double)selected / (double)eligible) : 1.0;
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

int fedge_gov_device_event(sqlite3 *db, const char *device, const char *kind, const char *detail, double at)
{
    sqlite3_stmt *st = NULL;
    char key[24];
    int ret;
    CHK(fedge_store_prepare(db, "INSERT INTO events(at, device, kind, rule, detail) VALUES(?,?,?,'operator',?)",
                            &st));
    sqlite3_bind_double(st, 1, at);
    sqlite3_bind_text(st, 2, device, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, detail, -1, SQLITE_STATIC);
    ret = fedge_store_step_done(db, st);
    st = NULL;
    if (ret != FEDGE_OK)
        goto cleanup;
    snprintf(key, sizeof key, "%lld", (long long)sqlite3_last_insert_rowid(db));
    CHK(fedge_audit_append(db, "events", key));
cleanup:
    sqlite3_finalize(st);
    return ret;
}

int fedge_device_set_status(sqlite3 *db, const char *device, const char *status, const char *reason)
{
    sqlite3_stmt *st = NULL;
    char detail[512], old[16] = "";
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
    CHK(fedge_gov_device_event(db, device, "device_status", detail, fedge_clock_wall()));
    CHK(fedge_store_commit(db));
    in_tx = 0;
cleanup:
    sqlite3_finalize(st);
    if (in_tx)
        fedge_store_rollback(db);
    return ret;
}

int fedge_device_enrol(sqlite3 *db, const char *device, const char *region, const char *detail)
{
    sqlite3_stmt *st = NULL;
    int ret, in_tx = 0;
    if (!device || !region || !detail || !detail[0])
        return FEDGE_ERR_INVALID_ARG;
    CHK(fedge_store_begin(db));
    in_tx = 1;
    CHK(fedge_store_prepare(db, "SELECT status FROM devices WHERE id=?", &st));
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(st, 0), "revoked") == 0)
        FAIL(FEDGE_ERR_DUPLICATE);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    sqlite3_finalize(st);
    st = NULL;
    CHK(fedge_store_prepare(db, "INSERT INTO devices(id, region, first_seen) VALUES(?1, ?2, ?3)"
                                " ON CONFLICT(id) DO UPDATE SET region = ?2",
                            &st));
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, region, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 3, fedge_clock_wall());
    if (sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    sqlite3_finalize(st);
    st = NULL;
    CHK(fedge_gov_device_event(db, device, "enrolled", detail, fedge_clock_wall()));
    CHK(fedge_store_commit(db));
    in_tx = 0;
cleanup:
    sqlite3_finalize(st);
    if (in_tx)
        fedge_store_rollback(db);
    return ret;
}
