/* policy.c — applying a loaded policy: per-update rules, round rules,
 * differential privacy and budgets, and recording the policy in the log. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit.h"
#include "common.h"
#include "policy_impl.h"
#include "rdp.h"

/* The spread under a norm z-score is at least this share of the others'
 * mean norm, so near-identical norms do not make small differences extreme. */
#define ANOMALY_MIN_RELATIVE_SPREAD 0.05

const char *fedge_decision_name(fedge_decision_kind d)
{
    switch (d) {
    case FEDGE_DECISION_ACCEPT: return "accepted";
    case FEDGE_DECISION_CLIP: return "clipped";
    case FEDGE_DECISION_REJECT: return "rejected";
    default: return "unknown";
    }
}

const char *fedge_policy_name(const fedge_policy *p) { return p ? p->display_name : ""; }
const char *fedge_policy_sha256_hex(const fedge_policy *p) { return p ? p->sha256_hex : ""; }
double fedge_policy_rate_window_s(const fedge_policy *p)
{
    return (p && p->rate_max_updates > 0) ? p->rate_window_s : 0.0;
}
unsigned fedge_policy_min_clients(const fedge_policy *p) { return p ? p->min_clients : 1; }
unsigned fedge_policy_max_staleness(const fedge_policy *p) { return p ? p->max_staleness : 0; }
unsigned fedge_policy_max_samples(const fedge_policy *p) { return p ? p->max_samples : 0; }
double fedge_policy_max_share(const fedge_policy *p) { return p ? p->max_share : 1.0; }
double fedge_policy_round_deadline_s(const fedge_policy *p) { return p ? p->deadline_s : 0.0; }
int fedge_policy_dp_enabled(const fedge_policy *p) { return p ? p->dp_enabled : 0; }
double fedge_policy_dp_clip_norm(const fedge_policy *p) { return p ? p->dp_clip_norm : 0.0; }
double fedge_policy_dp_noise_multiplier(const fedge_policy *p)
{
    return p ? p->dp_noise_multiplier : 0.0;
}
double fedge_policy_dp_delta(const fedge_policy *p) { return p ? p->dp_delta : 0.0; }
double fedge_policy_epsilon_budget(const fedge_policy *p) { return p ? p->dp_epsilon_budget : 0.0; }
double fedge_policy_device_epsilon_budget(const fedge_policy *p)
{
    return p ? p->dp_device_epsilon_budget : 0.0;
}
unsigned fedge_policy_max_participations(const fedge_policy *p) { return p ? p->max_participations : 0; }

static void decide(fedge_policy_decision *d, fedge_decision_kind kind, double clip_factor,
                   const char *rule, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void decide(fedge_policy_decision *d, fedge_decision_kind kind, double clip_factor,
                   const char *rule, const char *fmt, ...)
{
    d->decision = kind;
    d->clip_factor = clip_factor;
    d->clip_bound = 0.0;
    snprintf(d->rule, sizeof d->rule, "%s", rule);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->reason, sizeof d->reason, fmt, ap);
    va_end(ap);
}

static void regions_text(const fedge_policy *p, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < p->n_regions && used < cap; i++) {
        int n = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", p->regions[i]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

int fedge_policy_summary(const fedge_policy *p, char *buf, size_t cap)
{
    if (!p || !buf || cap == 0)
        return FEDGE_ERR_INVALID_ARG;
    char regions[FEDGE_POLICY_MAX_REGIONS * (FEDGE_POLICY_REGION_MAX + 2) + 1];
    char norm[64], rate[64], anomaly[96], dp[160];
    regions_text(p, regions, sizeof regions);
    if (p->max_norm > 0)
        snprintf(norm, sizeof norm, "%g (%s)", p->max_norm,
                 p->norm_action_reject ? "reject" : "clip");
    else
        snprintf(norm, sizeof norm, "off");
    if (p->rate_max_updates > 0)
        snprintf(rate, sizeof rate, "%u per %g s", p->rate_max_updates, p->rate_window_s);
    else
        snprintf(rate, sizeof rate, "off");
    if (p->anomaly_enabled)
        snprintf(anomaly, sizeof anomaly, "z <= %g, cosine >= %g, from %u updates",
                 p->anomaly_max_norm_z, p->anomaly_min_cosine, p->anomaly_min_updates);
    else
        snprintf(anomaly, sizeof anomaly, "off");
    if (p->dp_enabled) {
        int n = snprintf(dp, sizeof dp, "C=%g z=%g epsilon budget %g at delta %g", p->dp_clip_norm,
                         p->dp_noise_multiplier, p->dp_epsilon_budget, p->dp_delta);
        if (p->dp_device_epsilon_budget > 0 && n > 0 && (size_t)n < sizeof dp)
            snprintf(dp + n, sizeof dp - (size_t)n, ", per device %g",
                     p->dp_device_epsilon_budget);
    } else {
        snprintf(dp, sizeof dp, "off");
    }
    int n = snprintf(buf, cap,
                     "max_norm %s; staleness <= %u; regions %s; rate limit %s; "
                     "anomaly %s; min_clients %u; max_share %g; deadline %g s; DP %s",
                     norm, p->max_staleness, p->regions_any ? "any" : regions,
                     rate, anomaly, p->min_clients, p->max_share, p->deadline_s, dp);
    if (n >= 0 && (size_t)n < cap && p->max_participations > 0)
        n += snprintf(buf + n, cap - (size_t)n, "; participations <= %u", p->max_participations);
    return (n < 0 || (size_t)n >= cap) ? FEDGE_ERR_BUFFER_TOO_SMALL : FEDGE_OK;
}

/* The shortest decimal that reads back as v (at most 17 digits). */
static const char *num_text(double v, char buf[32])
{
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return buf;
}

int fedge_policy_write_yaml(const fedge_policy *p, FILE *out)
{
    char b[8][32];
    if (!p || !out)
        return FEDGE_ERR_INVALID_ARG;
    fprintf(out, "version: 1\nname: %s\n", p->name);
    fprintf(out, "update:\n  max_norm: %s\n  norm_action: %s\n  max_staleness: %u\n  max_samples: %u\n",
            num_text(p->max_norm, b[0]), p->norm_action_reject ? "reject" : "clip", p->max_staleness,
            p->max_samples);
    if (!p->regions_any) {
        fputs("  allowed_regions: [", out);
        for (unsigned i = 0; i < p->n_regions; i++)
            fprintf(out, "%s%s", i ? ", " : "", p->regions[i]);
        fputs("]\n", out);
    }
    fprintf(out, "  rate_limit:\n    max_updates: %u\n    window_s: %s\n", p->rate_max_updates,
            num_text(p->rate_window_s, b[0]));
    fprintf(out, "anomaly:\n  enabled: %s\n  min_updates: %u\n  max_norm_z: %s\n  min_cosine: %s\n",
            p->anomaly_enabled ? "true" : "false", p->anomaly_min_updates, num_text(p->anomaly_max_norm_z, b[0]),
            num_text(p->anomaly_min_cosine, b[1]));
    fprintf(out, "round:\n  min_clients: %u\n  max_share: %s\n  deadline_s: %s\n", p->min_clients,
            num_text(p->max_share, b[0]), num_text(p->deadline_s, b[1]));
    fprintf(out,
            "privacy:\n  enabled: %s\n  clip_norm: %s\n  noise_multiplier: %s\n  epsilon_budget: %s\n"
            "  delta: %s\n  device_epsilon_budget: %s\n  max_participations: %u\n",
            p->dp_enabled ? "true" : "false", num_text(p->dp_clip_norm, b[0]), num_text(p->dp_noise_multiplier, b[1]),
            num_text(p->dp_epsilon_budget, b[2]), num_text(p->dp_delta, b[3]),
            num_text(p->dp_device_epsilon_budget, b[4]), p->max_participations);
    return ferror(out) ? FEDGE_ERR_IO : FEDGE_OK;
}

/* ---- per update ----------------------------------------------------------- */

int fedge_policy_check_device(const fedge_policy *p, const char *dev, const char *status,
                              const char *region, fedge_policy_decision *out)
{
    if (!p || !dev || !status || !region || !out)
        return FEDGE_ERR_INVALID_ARG;
    if (strcmp(status, "allowed") != 0) {
        if (strcmp(status, "revoked") == 0)
            decide(out, FEDGE_DECISION_REJECT, 1.0, "device_status",
                   "device %.64s was revoked; its updates are refused", dev);
        else if (strcmp(status, "suspended") == 0)
            decide(out, FEDGE_DECISION_REJECT, 1.0, "device_status",
                   "device %.64s is suspended", dev);
        else
            decide(out, FEDGE_DECISION_REJECT, 1.0, "device_status",
                   "device %.64s has unknown status '%.32s'", dev, status);
        return FEDGE_OK;
    }
    if (!p->regions_any) {
        int ok = 0;
        for (unsigned i = 0; i < p->n_regions && !ok; i++)
            ok = strcmp(p->regions[i], region) == 0;
        if (!ok) {
            char regions[FEDGE_POLICY_MAX_REGIONS * (FEDGE_POLICY_REGION_MAX + 2) + 1];
            regions_text(p, regions, sizeof regions);
            if (region[0] == '\0')
                decide(out, FEDGE_DECISION_REJECT, 1.0, "region",
                       "device %.64s has no region; allowed regions are [%.100s]", dev, regions);
            else
                decide(out, FEDGE_DECISION_REJECT, 1.0, "region",
                       "device %.64s region '%.32s' is not in the allowed regions [%.100s]", dev,
                       region, regions);
            return FEDGE_OK;
        }
    }
    decide(out, FEDGE_DECISION_ACCEPT, 1.0, "all", "device %.64s may contribute", dev);
    return FEDGE_OK;
}

int fedge_policy_check_update(const fedge_policy *p, const fedge_policy_update_in *in,
                              fedge_policy_decision *out)
{
    if (!p || !in || !out || !in->device_id || !in->device_status || !in->device_region)
        return FEDGE_ERR_INVALID_ARG;
    if (in->finite && (isnan(in->l2_norm) || in->l2_norm < 0 || isinf(in->l2_norm)))
        return FEDGE_ERR_INVALID_ARG;
    const char *dev = in->device_id;

    int ret = fedge_policy_check_device(p, dev, in->device_status, in->device_region, out);
    if (ret != FEDGE_OK || out->decision == FEDGE_DECISION_REJECT)
        return ret;
    if (p->rate_max_updates > 0 && in->recent_updates >= p->rate_max_updates) {
        decide(out, FEDGE_DECISION_REJECT, 1.0, "rate_limit",
               "device %.64s sent %u updates in the last %g s; the limit is %u", dev,
               in->recent_updates, p->rate_window_s, p->rate_max_updates);
        return FEDGE_OK;
    }
    if (!in->finite) {
        decide(out, FEDGE_DECISION_REJECT, 1.0, "finite", "delta has NaN or Inf values");
        return FEDGE_OK;
    }
    if (in->n_samples == 0 || in->n_samples > p->max_samples) {
        decide(out, FEDGE_DECISION_REJECT, 1.0, "sample_count",
               "stated sample count %llu is outside 1..%u (update.max_samples)",
               (unsigned long long)in->n_samples, p->max_samples);
        return FEDGE_OK;
    }
    if (in->staleness > p->max_staleness) {
        decide(out, FEDGE_DECISION_REJECT, 1.0, "staleness",
               "base model is %u versions old; max staleness is %u", in->staleness,
               p->max_staleness);
        return FEDGE_OK;
    }
    double norm = in->l2_norm;
    if (p->max_norm > 0 && norm > p->max_norm && p->norm_action_reject) {
        decide(out, FEDGE_DECISION_REJECT, 1.0, "max_norm", "L2 norm %.4g exceeds max %.4g",
               norm, p->max_norm);
        return FEDGE_OK;
    }
    /* Clipping: the smaller of the two bounds binds. */
    double bound = INFINITY;
    const char *rule = NULL;
    if (p->max_norm > 0) {
        bound = p->max_norm;
        rule = "max_norm";
    }
    if (p->dp_enabled && p->dp_clip_norm < bound) {
        bound = p->dp_clip_norm;
        rule = "dp_clip";
    }
    if (rule && norm > bound) {
        if (strcmp(rule, "dp_clip") == 0)
            decide(out, FEDGE_DECISION_CLIP, bound / norm, rule,
                   "L2 norm %.4g exceeds the DP clipping norm %.4g; clipped to %.4g", norm, bound,
                   bound);
        else
            decide(out, FEDGE_DECISION_CLIP, bound / norm, rule,
                   "L2 norm %.4g exceeds max %.4g; clipped to %.4g", norm, bound, bound);
        out->clip_bound = bound;
        return FEDGE_OK;
    }
    char limits[160];
    int n = snprintf(limits, sizeof limits, "L2 norm %.4g", norm);
    if (rule && n > 0 && (size_t)n < sizeof limits)
        n += snprintf(limits + n, sizeof limits - (size_t)n, " <= %.4g", bound);
    if (n > 0 && (size_t)n < sizeof limits)
        n += snprintf(limits + n, sizeof limits - (size_t)n, ", staleness %u <= %u", in->staleness,
                      p->max_staleness);
    if (p->rate_max_updates > 0 && n > 0 && (size_t)n < sizeof limits)
        snprintf(limits + n, sizeof limits - (size_t)n, ", %u earlier updates in %g s (limit %u)",
                 in->recent_updates, p->rate_window_s, p->rate_max_updates);
    decide(out, FEDGE_DECISION_ACCEPT, 1.0, "all", "passed: %s", limits);
    return FEDGE_OK;
}

/* ---- per round ------------------------------------------------------------ */

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

int fedge_policy_round_needs_dots(const fedge_policy *p, size_t n)
{
    return p && p->anomaly_enabled && n >= p->anomaly_min_updates;
}

/* Anomaly check on per-update statistics: per_update[i] REJECT for outliers;
 * keep[i] = 1 otherwise. With S the sum of all n deltas, the cosine of d_i
 * to the sum of the others is <d_i, S - d_i> / (|d_i| |S - d_i|), where
 * <d_i, S - d_i> = dot_sum_i - |d_i|^2 and
 * |S - d_i|^2 = |S|^2 - 2 dot_sum_i + |d_i|^2. */
static int anomaly_check(const fedge_policy *p, size_t n, const fedge_policy_round_stat *stats,
                         double sum_norm2, fedge_policy_decision *per_update, unsigned char *keep)
{
    if (!fedge_policy_round_needs_dots(p, n)) {
        for (size_t i = 0; i < n; i++) {
            if (p->anomaly_enabled)
                decide(&per_update[i], FEDGE_DECISION_ACCEPT, 1.0, "all",
                       "anomaly check skipped: %zu updates, fewer than %u", n,
                       p->anomaly_min_updates);
            else
                decide(&per_update[i], FEDGE_DECISION_ACCEPT, 1.0, "all",
                       "no round-level objection");
        }
        return FEDGE_OK;
    }
    for (size_t i = 0; i < n; i++) {
        /* Norm z-score against the other n-1 updates (sample spread). */
        double mean = 0, var = 0;
        for (size_t j = 0; j < n; j++)
            if (j != i)
                mean += stats[j].norm;
        mean /= (double)(n - 1);
        for (size_t j = 0; j < n; j++)
            if (j != i)
                var += (stats[j].norm - mean) * (stats[j].norm - mean);
        double sd = sqrt(var / (double)(n - 2));
        double floor_sd = fmax(ANOMALY_MIN_RELATIVE_SPREAD * mean, 1e-12);
        double norm = stats[i].norm;
        double z = (norm - mean) / fmax(sd, floor_sd);

        double dot = stats[i].dot_sum - norm * norm;
        double oo = sum_norm2 - 2.0 * stats[i].dot_sum + norm * norm;
        int have_cos = norm > 0 && oo > 1e-30 * fmax(sum_norm2, 1e-300);
        double cosv = have_cos ? dot / (norm * sqrt(oo)) : 0.0;
        if (cosv > 1.0)
            cosv = 1.0;
        if (cosv < -1.0)
            cosv = -1.0;

        if (z > p->anomaly_max_norm_z) {
            decide(&per_update[i], FEDGE_DECISION_REJECT, 1.0, "anomaly",
                   "norm z-score %.3g against the other %zu updates exceeds %.3g "
                   "(norm %.4g, others' mean %.4g)",
                   z, n - 1, p->anomaly_max_norm_z, norm, mean);
            keep[i] = 0;
        } else if (have_cos && cosv < p->anomaly_min_cosine) {
            decide(&per_update[i], FEDGE_DECISION_REJECT, 1.0, "anomaly",
                   "cosine %.3g to the mean of the other %zu updates is below %.3g", cosv, n - 1,
                   p->anomaly_min_cosine);
            keep[i] = 0;
        } else {
            decide(&per_update[i], FEDGE_DECISION_ACCEPT, 1.0, "all",
                   "norm z-score %.3g, cosine to the others %.3g", z, cosv);
        }
    }
    return FEDGE_OK;
}

/* Lowers the largest weights to a common cap c so that no kept weight
 * exceeds max_share of the total: with the top k capped,
 * c = s * R / (1 - k s), R = the sum of the uncapped weights. */
static int cap_weights(const fedge_policy *p, size_t n, const unsigned char *keep,
                       double *w, fedge_policy_decision *per_update, double *largest_share)
{
    double s = p->max_share, total = 0;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (keep[i]) {
            total += w[i];
            m++;
        }
    *largest_share = 0;
    if (m == 0 || total <= 0)
        return FEDGE_OK;
    if (s < 1.0) {
        double *sorted = malloc(m * sizeof *sorted);
        if (!sorted)
            return FEDGE_ERR_NOMEM;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (keep[i])
                sorted[k++] = w[i];
        qsort(sorted, m, sizeof *sorted, cmp_desc);
        double cap = INFINITY, rest = total;
        for (k = 0; k < m; k++) {
            double c = s * rest / (1.0 - (double)k * s);
            if (sorted[k] <= c * (1.0 + 1e-12)) {
                cap = (k == 0) ? INFINITY : c;
                break;
            }
            rest -= sorted[k];
        }
        free(sorted);
        if (isfinite(cap)) {
            for (size_t i = 0; i < n; i++)
                if (keep[i] && w[i] > cap) {
                    decide(&per_update[i], FEDGE_DECISION_ACCEPT, 1.0, "max_share",
                           "weight %.6g capped to %.6g so no device exceeds %.3g of the round",
                           w[i], cap, s);
                    w[i] = cap;
                }
        }
    }
    total = 0;
    for (size_t i = 0; i < n; i++)
        if (keep[i])
            total += w[i];
    for (size_t i = 0; i < n; i++)
        if (keep[i] && w[i] / total > *largest_share)
            *largest_share = w[i] / total;
    return FEDGE_OK;
}

int fedge_policy_check_round_stats(const fedge_policy *p, size_t n,
                                   const fedge_policy_round_stat *stats, double sum_norm2,
                                   const double *weights, double *weights_out,
                                   fedge_policy_decision *per_update,
                                   fedge_policy_decision *round_out)
{
    int ret = FEDGE_OK;
    unsigned char *keep = NULL;
    if (!p || !round_out || (n > 0 && (!stats || !weights || !weights_out || !per_update)))
        return FEDGE_ERR_INVALID_ARG;
    for (size_t i = 0; i < n; i++)
        if (!(weights[i] > 0) || isinf(weights[i]) || !isfinite(stats[i].norm))
            return FEDGE_ERR_INVALID_ARG;
    keep = malloc(n ? n : 1);
    if (!keep)
        return FEDGE_ERR_NOMEM;
    memset(keep, 1, n ? n : 1);
    CHK(anomaly_check(p, n, stats, sum_norm2, per_update, keep));
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        weights_out[i] = keep[i] ? weights[i] : 0.0;
        kept += keep[i];
    }
    if (kept < p->min_clients) {
        decide(round_out, FEDGE_DECISION_REJECT, 1.0, "k_anonymity",
               "%zu accepted updates after %zu anomaly rejections; the policy requires at least "
               "%u (k-anonymity of the aggregate)",
               kept, n - kept, p->min_clients);
        goto cleanup;
    }
    if ((double)kept * p->max_share < 1.0 - 1e-12) {
        decide(round_out, FEDGE_DECISION_REJECT, 1.0, "max_share",
               "%zu updates cannot keep every device at or below %.3g of the round (needs at "
               "least %.0f)",
               kept, p->max_share, ceil(1.0 / p->max_share - 1e-9));
        goto cleanup;
    }
    double largest = 0;
    CHK(cap_weights(p, n, keep, weights_out, per_update, &largest));
    decide(round_out, FEDGE_DECISION_ACCEPT, 1.0, "all",
           "%zu of %zu updates kept (%zu anomalous); min_clients %u; largest share %.3g (max %.3g)",
           kept, n, n - kept, p->min_clients, largest, p->max_share);
cleanup:
    free(keep);
    return ret;
}

int fedge_policy_check_round(const fedge_policy *p, size_t n, const float *const *deltas,
                             size_t n_params, const double *weights, double *weights_out,
                             fedge_policy_decision *per_update,
                             fedge_policy_decision *round_out)
{
    int ret = FEDGE_OK;
    double *sum = NULL, sum_norm2 = 0;
    fedge_policy_round_stat *stats = NULL;
    if (!p || !round_out || (n > 0 && (!deltas || !weights || !weights_out || !per_update)))
        return FEDGE_ERR_INVALID_ARG;
    for (size_t i = 0; i < n; i++)
        if (!deltas[i] || !(weights[i] > 0) || isinf(weights[i]))
            return FEDGE_ERR_INVALID_ARG;
    stats = calloc(n ? n : 1, sizeof *stats);
    sum = calloc(n_params ? n_params : 1, sizeof *sum);
    if (!stats || !sum)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < n; i++) {
        double nn = 0;
        for (size_t k = 0; k < n_params; k++) {
            double v = deltas[i][k];
            sum[k] += v;
            nn += v * v;
        }
        stats[i].norm = sqrt(nn);
    }
    for (size_t k = 0; k < n_params; k++)
        sum_norm2 += sum[k] * sum[k];
    for (size_t i = 0; i < n; i++) {
        double dot = 0;
        for (size_t k = 0; k < n_params; k++)
            dot += (double)deltas[i][k] * sum[k];
        stats[i].dot_sum = dot;
    }
    ret = fedge_policy_check_round_stats(p, n, stats, sum_norm2, weights, weights_out, per_update,
                                         round_out);
cleanup:
    free(stats);
    free(sum);
    return ret;
}

/* ---- differential privacy ------------------------------------------------- */

int fedge_policy_dp_apply(const fedge_policy *p, float *sum, size_t n_params, size_t n_clients,
                          fedge_rng *rng)
{
    if (!p || (!sum && n_params > 0) || !rng)
        return FEDGE_ERR_INVALID_ARG;
    if (!p->dp_enabled)
        return FEDGE_ERR_STATE;
    if (n_clients == 0)
        return FEDGE_ERR_INVALID_ARG;
    double sd = p->dp_noise_multiplier * p->dp_clip_norm;
    for (size_t k = 0; k < n_params; k++)
        sum[k] += (float)(sd * fedge_rng_normal(rng));
    return FEDGE_OK;
}

void fedge_policy_dp_orders(double orders[FEDGE_DP_N_ORDERS])
{
    fedge_rdp_default_orders(orders);
}

int fedge_policy_dp_round_rdp(const fedge_policy *p, double q, double rdp[FEDGE_DP_N_ORDERS])
{
    double orders[FEDGE_DP_N_ORDERS];
    if (!p || !rdp || !(q > 0.0 && q <= 1.0))
        return FEDGE_ERR_INVALID_ARG;
    if (!p->dp_enabled)
        return FEDGE_ERR_STATE;
    fedge_policy_dp_orders(orders);
    for (size_t k = 0; k < FEDGE_DP_N_ORDERS; k++) {
        int ret = fedge_rdp_compute(q, p->dp_noise_multiplier, 1, &orders[k], 1, &rdp[k]);
        /* an order that cannot be computed accurately is not used: +inf is a
         * valid (vacuous) bound there, and epsilon is the minimum over orders */
        if (ret == FEDGE_ERR_RANGE)
            rdp[k] = INFINITY;
        else if (ret != FEDGE_OK)
            return ret;
    }
    return FEDGE_OK;
}

int fedge_policy_dp_epsilon(const fedge_policy *p, const double spent[FEDGE_DP_N_ORDERS],
                            double *eps)
{
    double orders[FEDGE_DP_N_ORDERS];
    if (!p || !spent || !eps)
        return FEDGE_ERR_INVALID_ARG;
    fedge_policy_dp_orders(orders);
    return fedge_rdp_to_epsilon(orders, spent, FEDGE_DP_N_ORDERS, p->dp_delta,
                                FEDGE_RDP_CONV_IMPROVED, eps, NULL);
}

/* eps of spent + one round at (q, the policy's z) */
static int epsilon_after(const fedge_policy *p, const double *spent, double q, double *eps)
{
    double rdp[FEDGE_DP_N_ORDERS];
    int ret = fedge_policy_dp_round_rdp(p, q, rdp);
    if (ret != FEDGE_OK)
        return ret;
    for (size_t k = 0; spent && k < FEDGE_DP_N_ORDERS; k++) {
        if (isnan(spent[k]) || spent[k] < 0.0)
            return FEDGE_ERR_INVALID_ARG;
        rdp[k] += spent[k];
    }
    return fedge_policy_dp_epsilon(p, rdp, eps);
}

int fedge_policy_budget_check(const fedge_policy *p, const double *spent, double q,
                              double *eps_after, fedge_policy_decision *out)
{
    if (!p || !out || !(q > 0.0 && q <= 1.0))
        return FEDGE_ERR_INVALID_ARG;
    if (eps_after)
        *eps_after = INFINITY;
    if (!p->dp_enabled) {
        decide(out, FEDGE_DECISION_ACCEPT, 1.0, "privacy_budget",
               "differential privacy is off: no DP guarantee applies");
        return FEDGE_OK;
    }
    double eps;
    int ret = epsilon_after(p, spent, q, &eps);
    if (ret != FEDGE_OK)
        return ret;
    if (eps_after)
        *eps_after = eps;
    if (eps > p->dp_epsilon_budget)
        decide(out, FEDGE_DECISION_REJECT, 1.0, "privacy_budget",
               "this round would bring epsilon to %.4g (q %.4g, z %.4g, delta %.3g), over the "
               "budget %.4g",
               eps, q, p->dp_noise_multiplier, p->dp_delta, p->dp_epsilon_budget);
    else
        decide(out, FEDGE_DECISION_ACCEPT, 1.0, "privacy_budget",
               "epsilon after this round: %.4g of budget %.4g (q %.4g, z %.4g, delta %.3g)",
               eps, p->dp_epsilon_budget, q, p->dp_noise_multiplier, p->dp_delta);
    return FEDGE_OK;
}

int fedge_policy_device_budget_check(const fedge_policy *p, const char *device_id,
                                     const double *spent, double *eps_after,
                                     fedge_policy_decision *out)
{
    if (!p || !out || !device_id)
        return FEDGE_ERR_INVALID_ARG;
    if (eps_after)
        *eps_after = INFINITY;
    if (!p->dp_enabled) {
        decide(out, FEDGE_DECISION_ACCEPT, 1.0, "device_privacy_budget",
               "differential privacy is off: no DP guarantee applies");
        return FEDGE_OK;
    }
    double eps;
    int ret = epsilon_after(p, spent, 1.0, &eps);
    if (ret != FEDGE_OK)
        return ret;
    if (eps_after)
        *eps_after = eps;
    if (p->dp_device_epsilon_budget > 0 && eps > p->dp_device_epsilon_budget)
        decide(out, FEDGE_DECISION_REJECT, 1.0, "device_privacy_budget",
               "device %.64s: this contribution would bring its epsilon to %.4g, over the "
               "per-device budget %.4g",
               device_id, eps, p->dp_device_epsilon_budget);
    else
        decide(out, FEDGE_DECISION_ACCEPT, 1.0, "device_privacy_budget",
               "device %.64s: epsilon after this contribution %.4g", device_id, eps);
    return FEDGE_OK;
}

/* ---- the privacy ledger ------------------------------------------------------ */

int fedge_dp_ledger_append(sqlite3 *db, uint32_t round, double q, double sigma, double clip,
                           const double rdp[FEDGE_DP_N_ORDERS])
{
    int ret = FEDGE_OK;
    sqlite3_stmt *st = NULL;
    double orders[FEDGE_DP_N_ORDERS];
    unsigned char orders_blob[FEDGE_RDP_PACKED_SIZE(FEDGE_DP_N_ORDERS)];
    unsigned char rdp_blob[FEDGE_RDP_PACKED_SIZE(FEDGE_DP_N_ORDERS)];
    if (!db || !rdp || !(q > 0.0 && q <= 1.0) || !(sigma > 0.0) || isinf(sigma) ||
        !(clip > 0.0) || isinf(clip))
        return FEDGE_ERR_INVALID_ARG;
    for (size_t k = 0; k < FEDGE_DP_N_ORDERS; k++)
        if (isnan(rdp[k]) || rdp[k] < 0.0)
            return FEDGE_ERR_INVALID_ARG;
    fedge_policy_dp_orders(orders);
    fedge_rdp_pack(orders, FEDGE_DP_N_ORDERS, orders_blob);
    fedge_rdp_pack(rdp, FEDGE_DP_N_ORDERS, rdp_blob);
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO dp_ledger(round, q, sigma, clip, orders, rdp) "
                           "VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                           -1, &st, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    if (sqlite3_bind_int64(st, 1, round) != SQLITE_OK ||
        sqlite3_bind_double(st, 2, q) != SQLITE_OK ||
        sqlite3_bind_double(st, 3, sigma) != SQLITE_OK ||
        sqlite3_bind_double(st, 4, clip) != SQLITE_OK ||
        sqlite3_bind_blob(st, 5, orders_blob, (int)sizeof orders_blob, SQLITE_STATIC) !=
            SQLITE_OK ||
        sqlite3_bind_blob(st, 6, rdp_blob, (int)sizeof rdp_blob, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    CHK(fedge_audit_append_id(db, "dp_ledger", round));
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* One ledger row's RDP vector at the accountant's orders: the stored one, or
 * (stored at other orders) recomputed from its q and sigma; q = 1 for a
 * device's own, unamplified cost. */
static int ledger_row_rdp(sqlite3_stmt *st, int device, double rdp[FEDGE_DP_N_ORDERS])
{
    double orders[FEDGE_DP_N_ORDERS], stored[FEDGE_DP_N_ORDERS];
    double q = sqlite3_column_double(st, 0), sigma = sqlite3_column_double(st, 1);
    if (sqlite3_column_type(st, 0) == SQLITE_NULL || sqlite3_column_type(st, 1) == SQLITE_NULL ||
        !(q > 0.0 && q <= 1.0) || !(sigma > 0.0) || isinf(sigma))
        return FEDGE_ERR_INVALID_ARG;
    fedge_policy_dp_orders(orders);
    if (device)
        return fedge_rdp_compute(1.0, sigma, 1, orders, FEDGE_DP_N_ORDERS, rdp);
    int same = fedge_rdp_unpack(sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2),
                                stored, FEDGE_DP_N_ORDERS) == FEDGE_OK &&
               memcmp(stored, orders, sizeof orders) == 0;
    if (!same)
        return fedge_rdp_compute(q, sigma, 1, orders, FEDGE_DP_N_ORDERS, rdp);
    return fedge_rdp_unpack(sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3), rdp,
                            FEDGE_DP_N_ORDERS);
}

int fedge_dp_ledger_spent(sqlite3 *db, const char *device, fedge_dp_spent *out)
{
    int ret = FEDGE_OK, rc;
    sqlite3_stmt *st = NULL;
    double row[FEDGE_DP_N_ORDERS];
    if (!db || !out)
        return FEDGE_ERR_INVALID_ARG;
    memset(out, 0, sizeof *out);
    const char *sql = device ? "SELECT l.q, l.sigma, l.orders, l.rdp FROM dp_ledger l"
                               " WHERE EXISTS (SELECT 1 FROM updates u WHERE u.round = l.round"
                               " AND u.device = ?1 AND u.decision <> 'rejected')"
                               " ORDER BY l.round"
                             : "SELECT q, sigma, orders, rdp FROM dp_ledger ORDER BY round";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    if (device && sqlite3_bind_text(st, 1, device, -1, SQLITE_TRANSIENT) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        CHK(ledger_row_rdp(st, device != NULL, row));
        for (size_t k = 0; k < FEDGE_DP_N_ORDERS; k++)
            out->rdp[k] += row[k];
        out->rounds++;
    }
    if (rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* ---- recording ------------------------------------------------------------- */

static int exec_sql(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? FEDGE_OK : FEDGE_ERR_SQL;
}

static int put_meta(sqlite3_stmt *st, const char *key, const char *value)
{
    sqlite3_reset(st);
    if (sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, value, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_DONE)
        return FEDGE_ERR_SQL;
    return FEDGE_OK;
}

int fedge_policy_record(sqlite3 *db, const fedge_policy *p)
{
    int ret = FEDGE_OK, in_savepoint = 0;
    sqlite3_stmt *st = NULL;
    char num[64];
    char summary[1024], detail[1400];
    if (!db || !p)
        return FEDGE_ERR_INVALID_ARG;
    CHK(fedge_policy_summary(p, summary, sizeof summary));
    snprintf(detail, sizeof detail, "loaded policy %s sha256 %s: %s", p->display_name,
             p->sha256_hex, summary);
    CHK(exec_sql(db, "SAVEPOINT fedge_policy_record"));
    in_savepoint = 1;
    if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)", -1, &st,
                           NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    CHK(put_meta(st, "policy_name", p->display_name));
    CHK(put_meta(st, "policy_sha256", p->sha256_hex));
    CHK(put_meta(st, "policy_dp_enabled", p->dp_enabled ? "1" : "0"));
    snprintf(num, sizeof num, "%.17g", p->dp_clip_norm);
    CHK(put_meta(st, "policy_clip_norm", num));
    snprintf(num, sizeof num, "%.17g", p->dp_noise_multiplier);
    CHK(put_meta(st, "policy_noise_multiplier", num));
    snprintf(num, sizeof num, "%.17g", p->dp_epsilon_budget);
    CHK(put_meta(st, "policy_epsilon_budget", num));
    snprintf(num, sizeof num, "%.17g", p->dp_delta);
    CHK(put_meta(st, "policy_delta", num));
    snprintf(num, sizeof num, "%.17g", p->dp_device_epsilon_budget);
    CHK(put_meta(st, "policy_device_epsilon_budget", num));
    sqlite3_finalize(st);
    st = NULL;

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO events(at, round, device, kind, rule, detail) "
                           "VALUES(?1, NULL, NULL, 'policy', NULL, ?2)",
                           -1, &st, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    if (sqlite3_bind_double(st, 1, now) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, detail, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    CHK(fedge_audit_append_id(db, "events", sqlite3_last_insert_rowid(db)));
    CHK(exec_sql(db, "RELEASE fedge_policy_record"));
    in_savepoint = 0;
cleanup:
    sqlite3_finalize(st);
    if (ret == FEDGE_ERR_SQL && ((sqlite3_errcode(db) & 0xff) == SQLITE_BUSY ||
                                 (sqlite3_errcode(db) & 0xff) == SQLITE_LOCKED))
        ret = FEDGE_ERR_BUSY; /* another process holds the lock: the caller may retry */
    if (in_savepoint) {
        sqlite3_exec(db, "ROLLBACK TO fedge_policy_record", NULL, NULL, NULL);
        sqlite3_exec(db, "RELEASE fedge_policy_record", NULL, NULL, NULL);
    }
    return ret;
}
