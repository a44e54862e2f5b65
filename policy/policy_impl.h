/* policy_impl.h — the policy record shared by policy_load.c (which fills it
 * from YAML) and policy.c (which applies it). Not part of the public API. */
#ifndef FEDGE_POLICY_IMPL_H
#define FEDGE_POLICY_IMPL_H

#include <stdint.h>

#include "hash.h"
#include "policy.h"

#define FEDGE_POLICY_REGION_MAX 32

struct fedge_policy {
    char name[FEDGE_POLICY_NAME_MAX + 1];
    char display_name[FEDGE_POLICY_NAME_MAX + 14]; /* NAME@SHA12 */
    char sha256_hex[FEDGE_HASH_HEX_LEN];

    /* update */
    double max_norm;           /* 0: off */
    int norm_action_reject;    /* 0: clip */
    uint32_t max_staleness;
    uint32_t max_samples;     /* largest sample count an update may state */
    int regions_any;           /* allowed_regions absent */
    unsigned n_regions;
    char regions[FEDGE_POLICY_MAX_REGIONS][FEDGE_POLICY_REGION_MAX + 1];
    uint32_t rate_max_updates; /* 0: off */
    double rate_window_s;

    /* anomaly */
    int anomaly_enabled;
    uint32_t anomaly_min_updates;
    double anomaly_max_norm_z;
    double anomaly_min_cosine;

    /* round */
    uint32_t min_clients;
    double max_share;
    double deadline_s;

    /* privacy */
    int dp_enabled;
    double dp_clip_norm;
    double dp_noise_multiplier;
    double dp_epsilon_budget;
    double dp_delta;
    double dp_device_epsilon_budget; /* 0: none */
    uint32_t max_participations;     /* async mode: admissions per device; 0: none */
};

/* The built-in default policy, as YAML text (docs/POLICY.md shows it). */
extern const char fedge_policy_default_text[];

#endif
