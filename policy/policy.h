/* policy.h — the governance engine: the policy decides, the aggregator obeys
 * and logs.
 *
 * Contract
 * - A policy is loaded from a YAML file (docs/POLICY.md lists every key)
 *   with fedge_policy_load(); path NULL gives the built-in default policy.
 *   Unknown keys, duplicate keys and bad values are errors naming the key and
 *   line; nothing is half-loaded. A policy is immutable once loaded, so the
 *   aggregator can load a new one on SIGHUP, swap pointers, and free the old
 *   one (a failed reload leaves the old one in force). The caller frees with
 *   fedge_policy_free().
 * - fedge_policy_name() is "NAME@SHA12" (name key + first 12 hex digits of
 *   the file's SHA-256); fedge_policy_sha256_hex() is the full digest. Store
 *   them with every decision batch (fedge_policy_record does so in meta and
 *   in an audited event).
 * - Checks never touch the database and return FEDGE_OK with a decision
 *   (ACCEPT / CLIP / REJECT, the rule that made it and a one-line reason);
 *   a non-zero status means the input was invalid, not that it was refused.
 *   The aggregator writes decision, rule and reason into updates/events.
 *
 * Per update, in this order (the first refusing rule wins):
 *   device_status, region, rate_limit, sample_count, finite, staleness,
 *   max_norm, dp_clip.
 *   Clipping (max_norm with norm_action clip, and the DP clip to C) yields
 *   CLIP with clip_factor = bound / norm < 1 and clip_bound = bound: scale
 *   the delta so that its norm is at most the bound (fedge_l2_clip:
 *   bound / norm rounded to float can leave it a few ulps over).
 * Per round, at close, on the accepted (already clipped) deltas:
 *   anomaly (norm z-score against the others, cosine to the mean of the
 *   others), then k_anonymity (min_clients after anomaly removal), then
 *   max_share (weights above the cap are lowered to it; the round is refused
 *   only when n * max_share < 1).
 * Privacy (DP-FedAvg, McMahan et al. 2018): clip each delta to C (dp_clip),
 *   sum with weight 1 each, add N(0, (zC)^2) per coordinate
 *   (fedge_policy_dp_apply), divide by the EXPECTED number of clients
 *   q * population (fixed-denominator estimator). The accountant is the RDP
 *   of the sampled Gaussian (Mironov, Talwar, Zhang 2019; rdp.h) at sampling
 *   rate q and noise multiplier z, composed over rounds by adding RDP per
 *   order and converted to (epsilon, delta) once (Mironov 2017). Each DP
 *   round's own (q, z, C) and RDP vector go into the privacy ledger
 *   (dp_ledger table, fedge_dp_ledger_append), so a policy change (a new z on
 *   SIGHUP) never re-prices past rounds: epsilon = conversion of the ledger
 *   sum. A round whose ledger sum plus its own cost at the current settings
 *   would exceed the budget is not run (fedge_policy_budget_check -> REJECT,
 *   rule "privacy_budget"); likewise per device. */
#ifndef FEDGE_POLICY_H
#define FEDGE_POLICY_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "rdp.h"
#include "rng.h"

#define FEDGE_POLICY_MAX_FILE (1024 * 1024)
#define FEDGE_POLICY_NAME_MAX 64
#define FEDGE_POLICY_RULE_MAX 32
#define FEDGE_POLICY_REASON_MAX 256
#define FEDGE_POLICY_MAX_REGIONS 64

typedef struct fedge_policy fedge_policy;

typedef enum {
    FEDGE_DECISION_ACCEPT = 0,
    FEDGE_DECISION_CLIP = 1,
    FEDGE_DECISION_REJECT = 2,
} fedge_decision_kind;

typedef struct {
    fedge_decision_kind decision;
    double clip_factor;                   /* 1.0 unless CLIP */
    char rule[FEDGE_POLICY_RULE_MAX];     /* "all" when every rule passed */
    char reason[FEDGE_POLICY_REASON_MAX]; /* one line, for people */
    double clip_bound;                    /* CLIP: the bound the clipped delta's norm must not pass */
} fedge_policy_decision;

/* "accepted" | "clipped" | "rejected": the updates.decision column values. */
const char *fedge_decision_name(fedge_decision_kind d);

/* ---- loading ------------------------------------------------------------ */

/* path NULL: the default policy. err (may be NULL) gets a one-line reason:
 * "FILE:LINE: KEY: what is wrong", escaped already (text.h: print it as
 * is; escaping it again doubles every backslash). Status FEDGE_ERR_IO / _NOT_FOUND (file),
 * FEDGE_ERR_POLICY_SYNTAX (YAML syntax, duplicate key, wrong node kind),
 * FEDGE_ERR_POLICY_UNKNOWN_KEY, FEDGE_ERR_POLICY_VALUE (a bad value or a bad
 * combination). */
int fedge_policy_load(const char *path, fedge_policy **out, char *err, size_t errlen);
/* The same from memory; `origin` names it in messages and in the name default. */
int fedge_policy_load_buffer(const char *text, size_t len, const char *origin,
                             fedge_policy **out, char *err, size_t errlen);
int fedge_policy_default(fedge_policy **out);
void fedge_policy_free(fedge_policy *p); /* NULL is fine */

const char *fedge_policy_name(const fedge_policy *p);       /* "NAME@SHA12" */
const char *fedge_policy_sha256_hex(const fedge_policy *p); /* 64 hex digits */
/* One line for logs: the settings in force (without the name), e.g.
 * "max_norm 10 (clip); staleness <= 1; regions eu; ...; DP off". */
int fedge_policy_summary(const fedge_policy *p, char *buf, size_t cap);
/* The policy in force as YAML with every key set (defaults filled in,
 * numbers as the shortest decimal that reads back exactly), which loads back to the same settings: what
 * `fedge-policy validate` prints. FEDGE_ERR_IO when out fails. */
int fedge_policy_write_yaml(const fedge_policy *p, FILE *out);

/* ---- per update ----------------------------------------------------------- */

typedef struct {
    const char *device_id;
    const char *device_status; /* devices.status: allowed|suspended|revoked */
    const char *device_region; /* devices.region, "" when unknown */
    uint32_t round;            /* the round this update is for */
    uint32_t staleness;        /* model versions published (aggregations that
                                  closed) since the update's base model: 0
                                  for an update on the current model. Failed
                                  rounds publish nothing, so they add none. */
    uint64_t n_samples;        /* as the device states it (its weight) */
    double l2_norm;            /* of the decoded delta (finite or not) */
    int finite;                /* 0 when any value is NaN or Inf */
    uint32_t recent_updates;   /* rows in updates from this device with
                                  received_at > now - rate_window_s, any
                                  decision, not counting this one */
} fedge_policy_update_in;

int fedge_policy_check_update(const fedge_policy *p, const fedge_policy_update_in *in,
                              fedge_policy_decision *out);
/* The device rules alone (device_status, region), as check_update applies
 * them: for choosing participants, so a device the policy would refuse is
 * not selected. ACCEPT with rule "all", or REJECT. */
int fedge_policy_check_device(const fedge_policy *p, const char *device_id,
                              const char *device_status, const char *device_region,
                              fedge_policy_decision *out);
/* The rate-limit window in seconds; 0 when rate limiting is off. */
double fedge_policy_rate_window_s(const fedge_policy *p);

/* ---- per round ------------------------------------------------------------ */

/* deltas[i]: the i-th accepted delta as it will be aggregated (clipped),
 * n_params floats each. weights[i] > 0: its aggregation weight (sample count;
 * 1.0 each under DP). On return weights_out[i] is the weight to use (0 for an
 * update refused here, lowered when capped by max_share), per_update[i] is
 * REJECT (rule "anomaly") for an update to drop — the aggregator marks that
 * updates row rejected with this rule and reason and re-audits it — or
 * ACCEPT, with rule "max_share" when its weight was capped. round_out is
 * ACCEPT, or REJECT with rule "k_anonymity" or "max_share": do not aggregate.
 * Allocates O(n_params) doubles of scratch; FEDGE_ERR_NOMEM if that fails.
 * The same decision as fedge_policy_check_round_stats on the deltas' stats. */
int fedge_policy_check_round(const fedge_policy *p, size_t n, const float *const *deltas,
                             size_t n_params, const double *weights, double *weights_out,
                             fedge_policy_decision *per_update,
                             fedge_policy_decision *round_out);

/* The round rules need only these per-update numbers, so a caller can
 * stream the deltas (memory O(n_params), not O(n * n_params)): a first
 * pass sums them (S) and takes the norms, a second takes <d_i, S>. */
typedef struct {
    double norm;    /* |d_i| (L2) */
    double dot_sum; /* <d_i, S>, S = the sum of the n deltas; read only when
                       fedge_policy_round_needs_dots(p, n) */
} fedge_policy_round_stat;
/* 1 when the round rules will read dot_sum (the anomaly rule runs). */
int fedge_policy_round_needs_dots(const fedge_policy *p, size_t n);
/* fedge_policy_check_round on statistics; sum_norm2 = |S|^2. */
int fedge_policy_check_round_stats(const fedge_policy *p, size_t n,
                                   const fedge_policy_round_stat *stats, double sum_norm2,
                                   const double *weights, double *weights_out,
                                   fedge_policy_decision *per_update,
                                   fedge_policy_decision *round_out);
unsigned fedge_policy_min_clients(const fedge_policy *p);
/* update.max_staleness: how many rounds late an update may arrive and still
 * be aggregated (its base model that many rounds old). */
unsigned fedge_policy_max_staleness(const fedge_policy *p);
/* update.max_samples: the largest sample count an update may state (its
 * aggregation weight); 0 samples or more are refused (rule sample_count). */
unsigned fedge_policy_max_samples(const fedge_policy *p);
/* round.max_share: the largest share of a round's weight one device may have. */
double fedge_policy_max_share(const fedge_policy *p);
/* Longest a round may stay open, seconds; 0: the aggregator's own setting. */
double fedge_policy_round_deadline_s(const fedge_policy *p);

/* ---- differential privacy ------------------------------------------------- */

int fedge_policy_dp_enabled(const fedge_policy *p);
double fedge_policy_dp_clip_norm(const fedge_policy *p);        /* C */
double fedge_policy_dp_noise_multiplier(const fedge_policy *p); /* z */
double fedge_policy_dp_delta(const fedge_policy *p);
double fedge_policy_epsilon_budget(const fedge_policy *p);        /* global */
double fedge_policy_device_epsilon_budget(const fedge_policy *p); /* 0: none */
/* privacy.max_participations: in async mode, how many aggregation steps one
 * device may be admitted to over the run (0: no cap; docs/POLICY.md). */
unsigned fedge_policy_max_participations(const fedge_policy *p);

/* sum += N(0, (zC)^2) per coordinate (sum of n_clients clipped deltas).
 * FEDGE_ERR_STATE when DP is off, FEDGE_ERR_INVALID_ARG for n_clients 0.
 * rng must be seeded from the OS (getrandom) for every round in production:
 * predictable noise is no noise. */
int fedge_policy_dp_apply(const fedge_policy *p, float *sum, size_t n_params,
                          size_t n_clients, fedge_rng *rng);

/* ---- privacy accounting ----------------------------------------------------
 * RDP vectors are at the accountant's orders (rdp.h's default orders,
 * FEDGE_DP_N_ORDERS of them, fedge_policy_dp_orders); `spent` is a sum of
 * per-round RDP vectors (NULL: nothing spent yet). */
#define FEDGE_DP_N_ORDERS FEDGE_RDP_N_DEFAULT_ORDERS

void fedge_policy_dp_orders(double orders[FEDGE_DP_N_ORDERS]);
/* RDP of one round at sampling rate q in (0, 1] with the policy's noise
 * multiplier; INFINITY at an order rdp.h refuses to compute (FEDGE_ERR_RANGE),
 * so that order is never the one epsilon comes from. FEDGE_ERR_STATE when DP
 * is off (a round without noise has no finite cost). */
int fedge_policy_dp_round_rdp(const fedge_policy *p, double q, double rdp[FEDGE_DP_N_ORDERS]);
/* Epsilon of an accumulated RDP vector at the policy's delta (improved
 * conversion, minimised over the orders). */
int fedge_policy_dp_epsilon(const fedge_policy *p, const double spent[FEDGE_DP_N_ORDERS],
                            double *eps);

/* Global budget: epsilon of spent + one round at sampling rate q (expected
 * clients / eligible population) with the current noise multiplier. out:
 * ACCEPT, or REJECT rule "privacy_budget" when that exceeds the budget. With
 * DP off: ACCEPT and eps_after = INFINITY (no DP guarantee). eps_after may
 * be NULL. */
int fedge_policy_budget_check(const fedge_policy *p, const double *spent, double q,
                              double *eps_after, fedge_policy_decision *out);
/* Per-device budget: the device's epsilon after one more contribution, its
 * spent vector being the rounds it contributed to, each counted without
 * sampling amplification (q = 1, a bound that holds however devices are
 * selected) at that round's own noise multiplier, plus this contribution at
 * the current one. REJECT rule "device_privacy_budget" when it exceeds the
 * device budget; eps_after computed but never refused when there is no
 * per-device budget; ACCEPT with eps_after = INFINITY when DP is off. */
int fedge_policy_device_budget_check(const fedge_policy *p, const char *device_id,
                                     const double *spent, double *eps_after,
                                     fedge_policy_decision *out);

/* The privacy ledger in the database: table dp_ledger(round INTEGER PRIMARY
 * KEY, q, sigma, clip, orders BLOB, rdp BLOB), one audited row per round
 * that released a noised aggregate, written in the round close's
 * transaction. BLOBs are fedge_rdp_pack'ed vectors. */
typedef struct {
    double rdp[FEDGE_DP_N_ORDERS]; /* sum over the rounds */
    long rounds;                   /* ledger rows summed */
} fedge_dp_spent;

/* Inserts round's row and appends it to the audit chain (caller's
 * transaction). FEDGE_ERR_INVALID_ARG for q outside (0, 1], sigma <= 0 or a
 * negative/NaN rdp value; FEDGE_ERR_SQL if the round is already charged. */
int fedge_dp_ledger_append(sqlite3 *db, uint32_t round, double q, double sigma, double clip,
                           const double rdp[FEDGE_DP_N_ORDERS]);
/* device NULL: the sum of every ledger row's RDP vector (the run's spend).
 * device set: the device's spend, over the ledger rounds in which it has an
 * update that was not rejected, each at q = 1 with that round's sigma. A row
 * stored at other orders is re-priced from its (q, sigma) at these orders;
 * a malformed row is FEDGE_ERR_INVALID_ARG. */
int fedge_dp_ledger_spent(sqlite3 *db, const char *device, fedge_dp_spent *out);

/* Records the policy in the database: meta keys policy_name, policy_sha256,
 * policy_dp_enabled, policy_clip_norm, policy_noise_multiplier,
 * policy_epsilon_budget, policy_delta, policy_device_epsilon_budget
 * (replacing older values; fedge-audit reads them), and one audited events
 * row (kind "policy", at = now in Unix seconds, detail = name, sha256 and
 * summary). Atomic (a savepoint), inside or outside the caller's
 * transaction. */
int fedge_policy_record(sqlite3 *db, const fedge_policy *p);

#endif
