/* governance.h — where the aggregator meets the policy engine and the audit
 * chain (policy/). The policy decides; these functions make the aggregator
 * obey and log: every decision becomes a row with its rule and reason, in the
 * same transaction as the state it changes, followed by an audit entry.
 *
 * Its jobs, and only these: the policy (load, reload, per-update and
 * per-round admission, device eligibility), DP accounting (the ledger),
 * audit appends and signed heads, events rows, device status. It reads the
 * aggregator's fields (agg.h's struct) but never calls agg, sched, ingest,
 * close or the model store: they call it. Owner thread only (it uses a->db). */
#ifndef FEDGE_GOVERNANCE_H
#define FEDGE_GOVERNANCE_H

#include <stddef.h>
#include <stdint.h>

#include "agg.h"
#include "delta.h"
#include "policy.h"
#include "update.h"

typedef struct {
    int device_index;
    const char *device;
    const char *status;              /* devices.status */
    const fedge_delta_header *header;
    float *delta;                    /* decoded; scaled in place when clipped */
    size_t n_params;
    uint64_t counter;
    size_t bytes;                    /* sealed size on the wire */
    const uint8_t *encoded;          /* decrypted encoded delta (header + payload) */
    size_t encoded_len;
    const uint8_t *sealed_sha256;    /* of the frame as received: tells a resend apart */
    const char *control_refusal;     /* SCAFFOLD: why the control half is refused, or NULL */
    const double *norm;              /* the model half's L2 norm, computed by the caller; NULL: here */
    const fedge_train_metrics *metrics; /* the edge's training metrics (update.h), or NULL */
    /* SHA-256 of encoded[0..encoded_len), or NULL: computed here. Stored
     * with the row (delta_sha256) and entered in the audit entry without
     * reading the stored body back (fedge_audit_append_body). */
    const uint8_t *encoded_sha256;
    /* delta NULL: encoded is decoded into decode_into (header->n_elems
     * floats) only when the decision is to clip or norm is NULL */
    float *decode_into;
} fedge_gov_update_in;

/* Loads the policy (cfg.policy_file or the default), the signing key, and
 * records the policy in the database. */
int fedge_gov_init(fedge_aggregator *a, char *err, size_t errlen);
void fedge_gov_free(fedge_aggregator *a);
int fedge_gov_reload(fedge_aggregator *a);
const char *fedge_gov_strategy(const fedge_aggregator *a);

/* ---- the checks a start and an update make, as pure functions (read-only:
 * fedge-aggregator --check, fedge-audit replay) ---- */
/* cfg's policy_file, or the default policy when it is empty (fedge_policy_load). */
int fedge_gov_load_policy(const fedge_agg_config *cfg, fedge_policy **out, char *err, size_t errlen);
/* Settings no round could ever satisfy with n_devices keys (min_clients,
 * max_share, DP with a robust combiner, ...): FEDGE_ERR_CONFIG_VALUE and why. */
int fedge_gov_policy_fits(const fedge_agg_config *cfg, size_t n_devices, const fedge_policy *p, char *err,
                          size_t errlen);
/* Loads cfg->signing_key (when set) and, with db (may be NULL), checks it
 * against the log's last signed head as a start does: FEDGE_ERR_SIGNING_KEY
 * when it did not sign the log, or when there is no key, the log has
 * signed heads and allow_unsigned is off. *n_heads: the log's signed heads. */
int fedge_gov_check_signing_key(sqlite3 *db, const fedge_agg_config *cfg, long long *n_heads, char *err,
                                size_t errlen);
/* fedge_gov_staleness as of a past moment: current is the model that was
 * being served, and only rounds closed with id < before_round count (the
 * daemon passes its own version and INT64_MAX). */
int fedge_gov_staleness_at(sqlite3 *db, const uint8_t version[FEDGE_HASH_LEN],
                           const uint8_t current[FEDGE_HASH_LEN], int64_t before_round, int *found,
                           uint32_t *staleness);
/* The per-update policy decision fedge_gov_admit_update logs for an update
 * that passed the aggregator's own checks (base_version, scaffold_control):
 * fedge_policy_check_update, then with DP the device's budget against
 * device_spent (its ledger RDP sum, fedge_dp_ledger_spent; may be NULL when
 * DP is off). Pure: fedge-audit replay runs it over recorded rows. */
int fedge_gov_update_decision(const fedge_policy *p, const fedge_policy_update_in *in, const double *device_spent,
                              fedge_policy_decision *d);

/* Append the current row of tbl/key to the audit chain (caller's transaction). */
int fedge_gov_audit(fedge_aggregator *a, const char *tbl, const char *key);
/* Insert an events row (round may be 0, device NULL) and audit it (caller's transaction). */
int fedge_gov_event(fedge_aggregator *a, uint32_t round, const char *device, const char *kind,
                    const char *rule, const char *detail);
/* Sign the chain head, when a signing key is configured (caller's transaction). */
int fedge_gov_sign_head(fedge_aggregator *a, uint32_t round);

/* May device i (devices.status = status) be selected for a round? Devices the
 * policy would refuse anyway (status, region) are left out, so they do not
 * hold up the quorum. */
int fedge_gov_device_eligible(const fedge_aggregator *a, size_t i, const char *status);

/* The population a round samples from: the devices (status from the log)
 * fedge_gov_device_eligible admits now, as indices into keys.devices in key
 * order (idx: room for keys.n; NULL to count only). */
int fedge_gov_eligible_devices(fedge_aggregator *a, size_t *idx, size_t *n);

/* How many rounds late an update may arrive (the policy's max_staleness). */
uint32_t fedge_gov_round_window(const fedge_aggregator *a);
/* 1 in async mode (cfg.mode): DP steps are charged at q = 1, the round
 * window is left to the policy's staleness rule. */
int fedge_gov_async(const fedge_aggregator *a);

/* Before opening `round` with k of n_allowed devices: would the privacy
 * ledger's sum plus this round's cost (q = k / n_allowed, the current noise
 * multiplier) exceed the budget? Also refused when DP rounds of the log have
 * no ledger row (a log from before the ledger): their cost is unknown. */
int fedge_gov_round_admission(fedge_aggregator *a, uint32_t round, size_t k, size_t n_allowed,
                              int *refused, char *reason, size_t reason_len);
/* Staleness of an update's base model: the model versions published since
 * it was last the current one. An update on the current model is fresh. For
 * an older base, every round that closed after the last round that
 * published it (as an aggregate, or a refinement in that round) published
 * one; failed rounds publish nothing. A round whose aggregate re-publishes
 * its base (a zero delta) makes that base current again. *found = 0: not a
 * version of this log. */
int fedge_gov_staleness(fedge_aggregator *a, const uint8_t version[FEDGE_HASH_LEN], int *found,
                        uint32_t *staleness);
/* The device's ledger spend plus one contribution at the current settings. */
int fedge_gov_dp_device_check(fedge_aggregator *a, const char *device, double *eps,
                              fedge_policy_decision *d);
/* Per-update policy; writes the updates row (accepted, clipped or rejected),
 * the device's counter and the audit entry in one committed transaction
 * (in the caller's, while a->ingest_group_tx: fedge_ingest_commit_group).
 * *accepted and reason tell the client what happened. */
int fedge_gov_admit_update(fedge_aggregator *a, const fedge_gov_update_in *in, int *accepted,
                           char *reason, size_t reason_len);
/* The DP part of a round close (DP on, noise added, the aggregate not yet
 * applied), inside the caller's transaction. q = selected / eligible devices
 * (n_clients when nothing was selected). If the ledger sum plus this round's
 * cost exceeds the budget: *over = 1, reason says why (an audited
 * round_rejected event is logged) and nothing is charged: do not release the
 * aggregate. Otherwise appends the round to the privacy ledger, sets
 * devices.epsilon_spent of each contributing device, and *epsilon = the run's
 * epsilon after this round. */
int fedge_gov_dp_charge(fedge_aggregator *a, size_t n_clients, double *epsilon, int *over,
                        char *reason, size_t reason_len);
/* Operator action on a device: status allowed|suspended|revoked, with a
 * reason. Updates devices.status and logs an audited events row (kind
 * "device_status", rule "operator") in one transaction. A running
 * aggregator sees it at its next update or selection: a revoked device's
 * later updates are refused. FEDGE_ERR_NOT_FOUND for an unknown device,
 * FEDGE_ERR_INVALID_ARG for another status or an empty reason. */
int fedge_device_set_status(sqlite3 *db, const char *device, const char *status, const char *reason);

/* fedge-admin device add: the device's row (status allowed, region) and an
 * audited events row of kind 'enrolled' (rule 'operator', detail), in one
 * transaction. FEDGE_ERR_DUPLICATE when the database has the id as revoked
 * (a revoked id is not reused); FEDGE_ERR_BUSY while another writer holds
 * the database past its busy timeout. */
int fedge_device_enrol(sqlite3 *db, const char *device, const char *region, const char *detail);

/* An operator's audited event about device: an events row (kind, rule
 * 'operator', detail, at: wall seconds) and its audit entry, in the caller's
 * transaction. FEDGE_ERR_BUSY / FEDGE_ERR_SQL from the insert, or the audit
 * append's error. */
int fedge_gov_device_event(sqlite3 *db, const char *device, const char *kind, const char *detail, double at);

#endif
