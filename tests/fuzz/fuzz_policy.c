/* fuzz_policy.c — the policy loader (policy/policy.h) on arbitrary text,
 * from memory and from a file, then every check on the loaded policy.
 *
 * Invariants: the buffer and file loaders agree; a failure leaves *out NULL
 * and a one-line printable error; a loaded policy's checks return OK with a
 * decision of a known kind, a clip factor in (0, 1) exactly for CLIP, round
 * weights in [0, the weight given], and epsilons and RDP costs >= 0 (never
 * NaN). */
#include <math.h>

#include "error.h"
#include "fuzz_util.h"
#include "text.h"
#include "policy.h"

#define N_UPD 5
#define N_PARAMS 4

static void check_decision(const fedge_policy_decision *d)
{
    FUZZ_CHECK(d->decision == FEDGE_DECISION_ACCEPT || d->decision == FEDGE_DECISION_CLIP ||
               d->decision == FEDGE_DECISION_REJECT);
    if (d->decision == FEDGE_DECISION_CLIP)
        FUZZ_CHECK(d->clip_factor > 0.0 && d->clip_factor < 1.0);
    else
        FUZZ_CHECK(d->clip_factor == 1.0);
    FUZZ_CHECK(memchr(d->rule, '\0', sizeof d->rule) != NULL);
    FUZZ_CHECK(memchr(d->reason, '\0', sizeof d->reason) != NULL);
}

static void exercise(const fedge_policy *p, const uint8_t *data, size_t size)
{
    char buf[1024];
    FUZZ_CHECK(fedge_policy_summary(p, buf, sizeof buf) == FEDGE_OK);
    FUZZ_CHECK(strlen(fedge_policy_name(p)) > 13);
    FUZZ_CHECK(strlen(fedge_policy_sha256_hex(p)) == 64);

    static const char *const statuses[] = {"allowed", "suspended", "revoked"};
    static const char *const regions[] = {"eu", "", "us-east"};
    static const double norms[] = {0.0, 0.5, 3.0, 1e6, INFINITY};
    fedge_policy_decision d;
    for (unsigned i = 0; i < 3; i++) {
        FUZZ_CHECK(fedge_policy_check_device(p, "dev-1", statuses[i], regions[i], &d) == FEDGE_OK);
        check_decision(&d);
        FUZZ_CHECK(d.decision != FEDGE_DECISION_CLIP);
    }
    for (unsigned i = 0; i < (sizeof norms / sizeof norms[0]); i++) {
        fedge_policy_update_in in = {
            .device_id = "dev-1",
            .device_status = statuses[i % 3 == 2 ? 0 : i % 3],
            .device_region = regions[i % 3],
            .round = 7,
            .staleness = i % 4,
            .n_samples = i == 3 ? UINT64_MAX : (uint64_t)i * 1000u,
            .l2_norm = norms[i],
            .finite = isfinite(norms[i]),
            .recent_updates = (uint32_t)i * 3,
        };
        FUZZ_CHECK(fedge_policy_check_update(p, &in, &d) == FEDGE_OK);
        check_decision(&d);
    }

    /* Round checks on deltas made from the input's bytes. */
    float storage[N_UPD][N_PARAMS];
    const float *deltas[N_UPD];
    double weights[N_UPD], weights_out[N_UPD];
    fedge_policy_decision per[N_UPD], round_d;
    for (size_t i = 0; i < N_UPD; i++) {
        for (size_t j = 0; j < N_PARAMS; j++) {
            uint8_t b = size > 0 ? data[(i * N_PARAMS + j) % size] : 0;
            storage[i][j] = ((float)b - 128.0f) / 16.0f;
        }
        deltas[i] = storage[i];
        weights[i] = 1.0 + (double)(size > i ? data[i] : i);
    }
    for (size_t n = 1; n <= N_UPD; n += 2) {
        FUZZ_CHECK(fedge_policy_check_round(p, n, deltas, N_PARAMS, weights, weights_out, per,
                                            &round_d) == FEDGE_OK);
        check_decision(&round_d);
        for (size_t i = 0; i < n; i++) {
            check_decision(&per[i]);
            FUZZ_CHECK(weights_out[i] >= 0.0 && weights_out[i] <= weights[i]);
        }
    }

    /* Budgets from nothing spent, then from one round's cost. */
    double spent[FEDGE_DP_N_ORDERS], rdp[FEDGE_DP_N_ORDERS];
    memset(spent, 0, sizeof spent);
    for (int round = 0; round < 2; round++) {
        double eps = -1.0;
        FUZZ_CHECK(fedge_policy_budget_check(p, spent, 0.1, &eps, &d) == FEDGE_OK);
        check_decision(&d);
        FUZZ_CHECK(eps >= 0.0);
        eps = -1.0;
        FUZZ_CHECK(fedge_policy_device_budget_check(p, "dev-1", spent, &eps, &d) == FEDGE_OK);
        check_decision(&d);
        FUZZ_CHECK(eps >= 0.0);
        if (!fedge_policy_dp_enabled(p)) {
            FUZZ_CHECK(fedge_policy_dp_round_rdp(p, 0.1, rdp) == FEDGE_ERR_STATE);
            break;
        }
        FUZZ_CHECK(fedge_policy_dp_round_rdp(p, 0.1, rdp) == FEDGE_OK);
        for (int k = 0; k < FEDGE_DP_N_ORDERS; k++) {
            FUZZ_CHECK(rdp[k] >= 0.0); /* INFINITY at an order the accountant refuses */
            spent[k] += rdp[k];
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    char err[512];
    err[0] = '\0';
    fedge_policy *p = (fedge_policy *)&err; /* must be set to NULL on failure */
    int ret = fedge_policy_load_buffer((const char *)data, size, "fuzz.yaml", &p, err, sizeof err);
    if (ret != FEDGE_OK) {
        FUZZ_CHECK(p == NULL);
        FUZZ_CHECK(err[0] != '\0' && fedge_text_is_printable(err, strlen(err)));
    } else {
        FUZZ_CHECK(p != NULL);
        exercise(p, data, size);
    }

    char err_f[512];
    fedge_policy *pf = NULL;
    int ret_f = fedge_policy_load(fuzz_write_file(data, size), &pf, err_f, sizeof err_f);
    if (ret_f != ret) {
        fprintf(stderr, "load_buffer: %d (%s), load: %d (%s)\n", ret, ret ? err : "ok", ret_f,
                ret_f ? err_f : "ok");
        abort();
    }
    if (ret == FEDGE_OK)
        FUZZ_CHECK(strcmp(fedge_policy_sha256_hex(p), fedge_policy_sha256_hex(pf)) == 0);
    fedge_policy_free(pf);
    fedge_policy_free(p);
    return 0;
}
