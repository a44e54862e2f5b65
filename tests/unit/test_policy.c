/* test_policy.c — the policy engine: YAML loading (good file, each kind of
 * bad file with its message), every per-update rule, the round rules, DP
 * noise statistics, the privacy budgets, and recording in the database. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "hash.h"
#include "policy.h"
#include "rdp.h"
#include "rng.h"
#include "store.h"

typedef struct {
    char dir[64];
    char path[128];
} tmp_t;

static int setup_tmp(void **state)
{
    tmp_t *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    snprintf(t->dir, sizeof t->dir, "/tmp/fedge-test-policy-XXXXXX");
    if (!mkdtemp(t->dir)) {
        free(t);
        return -1;
    }
    *state = t;
    return 0;
}

static int teardown_tmp(void **state)
{
    tmp_t *t = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
    int rc = system(cmd);
    free(t);
    return rc == 0 ? 0 : -1;
}

static const char *write_policy(tmp_t *t, const char *name, const char *text)
{
    snprintf(t->path, sizeof t->path, "%s/%s", t->dir, name);
    FILE *f = fopen(t->path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    return t->path;
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle)) {
        print_error("'%s' does not contain '%s'\n", haystack, needle);
        fail();
    }
}

static const char GOOD[] =
    "# a strict EU policy\n"
    "version: 1\n"
    "name: strict-eu\n"
    "update:\n"
    "  max_norm: 10.0\n"
    "  norm_action: clip\n"
    "  max_staleness: 1\n"
    "  allowed_regions: [eu, eu-west]\n"
    "  rate_limit:\n"
    "    max_updates: 3\n"
    "    window_s: 60\n"
    "anomaly:\n"
    "  enabled: true\n"
    "  min_updates: 4\n"
    "  max_norm_z: 3.0\n"
    "  min_cosine: 0.0\n"
    "round:\n"
    "  min_clients: 3\n"
    "  max_share: 0.5\n"
    "  deadline_s: 120\n"
    "privacy:\n"
    "  enabled: true\n"
    "  clip_norm: 2.0\n"
    "  noise_multiplier: 1.1\n"
    "  epsilon_budget: 8\n"
    "  delta: 1e-5\n"
    "  device_epsilon_budget: 20\n";

/* ---- loading ---------------------------------------------------------------- */

static void test_load_good_file(void **state)
{
    tmp_t *t = *state;
    fedge_policy *p = NULL;
    char err[256] = "";
    const char *path = write_policy(t, "strict.yaml", GOOD);
    assert_int_equal(fedge_policy_load(path, &p, err, sizeof err), FEDGE_OK);
    assert_string_equal(err, "");

    uint8_t h[FEDGE_HASH_LEN];
    char hex[FEDGE_HASH_HEX_LEN], want_name[96];
    assert_int_equal(fedge_sha256_file(path, h), FEDGE_OK);
    fedge_hash_to_hex(h, hex);
    assert_string_equal(fedge_policy_sha256_hex(p), hex);
    snprintf(want_name, sizeof want_name, "strict-eu@%.12s", hex);
    assert_string_equal(fedge_policy_name(p), want_name);

    assert_true(fedge_policy_dp_enabled(p));
    assert_true(fedge_policy_dp_clip_norm(p) == 2.0);
    assert_true(fedge_policy_dp_noise_multiplier(p) == 1.1);
    assert_true(fedge_policy_dp_delta(p) == 1e-5);
    assert_true(fedge_policy_epsilon_budget(p) == 8.0);
    assert_true(fedge_policy_device_epsilon_budget(p) == 20.0);
    assert_true(fedge_policy_rate_window_s(p) == 60.0);
    assert_true(fedge_policy_round_deadline_s(p) == 120.0);
    assert_int_equal(fedge_policy_min_clients(p), 3);

    char summary[1024];
    assert_int_equal(fedge_policy_summary(p, summary, sizeof summary), FEDGE_OK);
    assert_contains(summary, "max_norm 10 (clip)");
    assert_contains(summary, "regions eu, eu-west");
    assert_contains(summary, "rate limit 3 per 60 s");
    assert_contains(summary, "C=2 z=1.1 epsilon budget 8");
    fedge_policy_free(p);

    /* Without a name key the file's base name names the policy. */
    path = write_policy(t, "lab-policy.yml", "round:\n  min_clients: 2\n");
    assert_int_equal(fedge_policy_load(path, &p, err, sizeof err), FEDGE_OK);
    assert_true(strncmp(fedge_policy_name(p), "lab-policy@", 11) == 0);
    assert_int_equal(fedge_policy_min_clients(p), 2);
    assert_false(fedge_policy_dp_enabled(p));
    fedge_policy_free(p);
}

/* fedge_policy_write_yaml (fedge-policy validate's output): every setting,
 * written so that it loads back to the same policy, and writing that one
 * again gives the same text. */
static void test_write_yaml_round_trip(void **state)
{
    tmp_t *t = *state;
    static const char *const texts[] = {
        GOOD,
        "name: odd\nupdate:\n  max_norm: 0.1\n  norm_action: reject\n  max_samples: 7\n"
        "anomaly:\n  min_cosine: -0.3\nround:\n  max_share: 0.3333333333333333\n"
        "privacy:\n  delta: 3e-7\n  max_participations: 5\n",
        "version: 1\n",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        fedge_policy *p = NULL, *q = NULL;
        char err[256] = "", *y1 = NULL, *y2 = NULL, s1[1024], s2[1024];
        size_t n1 = 0, n2 = 0;
        assert_int_equal(fedge_policy_load(write_policy(t, "rt.yaml", texts[i]), &p, err, sizeof err), FEDGE_OK);
        FILE *f = open_memstream(&y1, &n1);
        assert_non_null(f);
        assert_int_equal(fedge_policy_write_yaml(p, f), FEDGE_OK);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(fedge_policy_load_buffer(y1, n1, "rt.yaml", &q, err, sizeof err), FEDGE_OK);
        f = open_memstream(&y2, &n2);
        assert_non_null(f);
        assert_int_equal(fedge_policy_write_yaml(q, f), FEDGE_OK);
        assert_int_equal(fclose(f), 0);
        assert_string_equal(y1, y2);
        assert_int_equal(fedge_policy_summary(p, s1, sizeof s1), FEDGE_OK);
        assert_int_equal(fedge_policy_summary(q, s2, sizeof s2), FEDGE_OK);
        assert_string_equal(s1, s2);
        assert_true(fedge_policy_dp_delta(p) == fedge_policy_dp_delta(q));
        assert_true(fedge_policy_max_share(p) == fedge_policy_max_share(q));
        assert_int_equal(fedge_policy_max_participations(p), fedge_policy_max_participations(q));
        assert_int_equal(fedge_policy_max_samples(p), fedge_policy_max_samples(q));
        if (i == 1) {
            assert_contains(y1, "  max_norm: 0.1\n  norm_action: reject\n");
            assert_contains(y1, "  max_share: 0.3333333333333333\n");
            assert_contains(y1, "  delta: 3e-07\n");
        }
        free(y1);
        free(y2);
        fedge_policy_free(p);
        fedge_policy_free(q);
    }
}

static void test_default_policy_matches_its_text(void **state)
{
    tmp_t *t = *state;
    fedge_policy *def = NULL, *minimal = NULL;
    char a[1024], b[1024], err[256];
    assert_int_equal(fedge_policy_default(&def), FEDGE_OK);
    assert_true(strncmp(fedge_policy_name(def), "default@", 8) == 0);
    assert_int_equal(fedge_policy_load(NULL, &minimal, err, sizeof err), FEDGE_OK);
    assert_string_equal(fedge_policy_sha256_hex(def), fedge_policy_sha256_hex(minimal));
    fedge_policy_free(minimal);

    /* The built-in defaults (C) equal the default text (YAML), key for key. */
    const char *path = write_policy(t, "default.yaml", "version: 1\n");
    assert_int_equal(fedge_policy_load(path, &minimal, err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_policy_summary(def, a, sizeof a), FEDGE_OK);
    assert_int_equal(fedge_policy_summary(minimal, b, sizeof b), FEDGE_OK);
    assert_string_equal(a, b);
    assert_false(fedge_policy_dp_enabled(def));
    assert_true(fedge_policy_rate_window_s(def) == 0.0);
    assert_int_equal(fedge_policy_min_clients(def), 1);
    fedge_policy_free(def);
    fedge_policy_free(minimal);
}

typedef struct {
    const char *text;
    int code;
    const char *msg1, *msg2;
} bad_case;

static void test_load_bad_files(void **state)
{
    tmp_t *t = *state;
    const bad_case cases[] = {
        {"update:\n  max_norm: 10\n  max_nrm: 3\n", FEDGE_ERR_POLICY_UNKNOWN_KEY,
         "bad.yaml:3: update.max_nrm: unknown key", NULL},
        {"privacy:\n  enabled: true\n  epsilon: 3\n", FEDGE_ERR_POLICY_UNKNOWN_KEY,
         ":3: privacy.epsilon: unknown key", NULL},
        {"version: 1\nupdate:\n  max_norm: ten\n", FEDGE_ERR_POLICY_VALUE,
         "bad.yaml:3: update.max_norm: expected a number", "got 'ten'"},
        {"update:\n  norm_action: squash\n", FEDGE_ERR_POLICY_VALUE,
         ":2: update.norm_action: expected clip or reject", "'squash'"},
        {"privacy:\n  delta: 2\n", FEDGE_ERR_POLICY_VALUE, ":2: privacy.delta", "< 1"},
        {"privacy:\n  enabled: yes\n", FEDGE_ERR_POLICY_VALUE, "privacy.enabled",
         "expected true or false"},
        {"round:\n  max_share: 0\n", FEDGE_ERR_POLICY_VALUE, "round.max_share", "> 0"},
        {"round:\n  min_clients: -2\n", FEDGE_ERR_POLICY_VALUE, "round.min_clients",
         "whole number"},
        {"anomaly:\n  min_updates: 2\n", FEDGE_ERR_POLICY_VALUE, "anomaly.min_updates", ">= 3"},
        {"version: 2\n", FEDGE_ERR_POLICY_VALUE, ":1: version", "version 1, got '2'"},
        {"name: 'has space'\n", FEDGE_ERR_POLICY_VALUE, "name", "[A-Za-z0-9._-]"},
        {"update:\n  allowed_regions: []\n", FEDGE_ERR_POLICY_VALUE, "update.allowed_regions",
         "omit the key"},
        {"update:\n  allowed_regions: eu\n", FEDGE_ERR_POLICY_SYNTAX, "update.allowed_regions",
         "list of regions"},
        {"update:\n  allowed_regions: [eu, eu]\n", FEDGE_ERR_POLICY_VALUE, "listed twice", NULL},
        {"round:\n  min_clients: 2\nround:\n  max_share: 0.5\n", FEDGE_ERR_POLICY_SYNTAX,
         ":3: round: key given twice", NULL},
        {"update: [1, 2\n", FEDGE_ERR_POLICY_SYNTAX, "YAML syntax error", NULL},
        {"update: 3\n", FEDGE_ERR_POLICY_SYNTAX, "update: expected a mapping", NULL},
        {"- a\n- b\n", FEDGE_ERR_POLICY_SYNTAX, "must be a mapping", NULL},
        {"# only a comment\n", FEDGE_ERR_POLICY_SYNTAX, "empty policy", NULL},
        {"round:\n  min_clients: 2\n---\nround:\n  min_clients: 3\n", FEDGE_ERR_POLICY_SYNTAX,
         "more than one YAML document", NULL},
    };
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(cases); i++) {
        fedge_policy *p = (fedge_policy *)0x1;
        char err[256] = "";
        const char *path = write_policy(t, "bad.yaml", cases[i].text);
        int rc = fedge_policy_load(path, &p, err, sizeof err);
        if (rc != cases[i].code) {
            print_error("case %zu: got %d (%s), want %d\n", i, rc, err, cases[i].code);
            fail();
        }
        assert_null(p);
        assert_contains(err, cases[i].msg1);
        if (cases[i].msg2)
            assert_contains(err, cases[i].msg2);
    }

    fedge_policy *p = NULL;
    char err[256] = "";
    snprintf(t->path, sizeof t->path, "%s/missing.yaml", t->dir);
    assert_int_equal(fedge_policy_load(t->path, &p, err, sizeof err), FEDGE_ERR_NOT_FOUND);
    assert_contains(err, "missing.yaml: cannot open policy file");
    assert_int_equal(fedge_policy_load_buffer("a\0b", 3, "nul", &p, err, sizeof err) < 0, 1);
    assert_null(p);
}

/* ---- per update ----------------------------------------------------------------- */

static fedge_policy_update_in good_update(void)
{
    fedge_policy_update_in in = {
        .device_id = "dev-1",
        .device_status = "allowed",
        .device_region = "eu",
        .round = 7,
        .staleness = 0,
        .n_samples = 600,
        .l2_norm = 1.5,
        .finite = 1,
        .recent_updates = 0,
    };
    return in;
}

static fedge_policy *load_text(const char *text)
{
    fedge_policy *p = NULL;
    char err[256] = "";
    int rc = fedge_policy_load_buffer(text, strlen(text), "test", &p, err, sizeof err);
    if (rc != FEDGE_OK) {
        print_error("policy: %s\n", err);
        fail();
    }
    return p;
}

static void expect(const fedge_policy *p, const fedge_policy_update_in *in,
                   fedge_decision_kind kind, const char *rule, const char *reason_part)
{
    fedge_policy_decision d;
    assert_int_equal(fedge_policy_check_update(p, in, &d), FEDGE_OK);
    if (d.decision != kind || strcmp(d.rule, rule) != 0) {
        print_error("got %s/%s (%s), want %s/%s\n", fedge_decision_name(d.decision), d.rule,
                    d.reason, fedge_decision_name(kind), rule);
        fail();
    }
    assert_contains(d.reason, reason_part);
    if (kind != FEDGE_DECISION_CLIP)
        assert_true(d.clip_factor == 1.0);
}

static void test_update_rules(void **state)
{
    (void)state;
    fedge_policy *p = load_text(GOOD);
    fedge_policy_update_in in = good_update();
    expect(p, &in, FEDGE_DECISION_ACCEPT, "all", "passed: L2 norm 1.5 <= 2");

    in.device_status = "revoked";
    expect(p, &in, FEDGE_DECISION_REJECT, "device_status",
           "device dev-1 was revoked; its updates are refused");
    in.device_status = "suspended";
    expect(p, &in, FEDGE_DECISION_REJECT, "device_status", "device dev-1 is suspended");
    in.device_status = "weird";
    expect(p, &in, FEDGE_DECISION_REJECT, "device_status", "unknown status 'weird'");
    in = good_update();

    in.device_region = "us";
    expect(p, &in, FEDGE_DECISION_REJECT, "region",
           "region 'us' is not in the allowed regions [eu, eu-west]");
    in.device_region = "";
    expect(p, &in, FEDGE_DECISION_REJECT, "region", "has no region");
    in.device_region = "eu-west";
    expect(p, &in, FEDGE_DECISION_ACCEPT, "all", "passed");
    in = good_update();

    /* The device rules alone, for choosing participants. */
    fedge_policy_decision dd;
    assert_int_equal(fedge_policy_check_device(p, "dev-2", "allowed", "eu", &dd), FEDGE_OK);
    assert_int_equal(dd.decision, FEDGE_DECISION_ACCEPT);
    assert_int_equal(fedge_policy_check_device(p, "dev-2", "allowed", "us", &dd), FEDGE_OK);
    assert_int_equal(dd.decision, FEDGE_DECISION_REJECT);
    assert_string_equal(dd.rule, "region");
    assert_int_equal(fedge_policy_check_device(p, "dev-2", "suspended", "eu", &dd), FEDGE_OK);
    assert_int_equal(dd.decision, FEDGE_DECISION_REJECT);
    assert_string_equal(dd.rule, "device_status");
    assert_int_equal(fedge_policy_check_device(p, "dev-2", NULL, "eu", &dd),
                     FEDGE_ERR_INVALID_ARG);

    in.recent_updates = 2;
    expect(p, &in, FEDGE_DECISION_ACCEPT, "all", "2 earlier updates in 60 s (limit 3)");
    in.recent_updates = 3;
    expect(p, &in, FEDGE_DECISION_REJECT, "rate_limit",
           "device dev-1 sent 3 updates in the last 60 s; the limit is 3");
    in = good_update();

    in.finite = 0;
    in.l2_norm = NAN;
    expect(p, &in, FEDGE_DECISION_REJECT, "finite", "NaN or Inf");
    in = good_update();

    in.staleness = 1;
    expect(p, &in, FEDGE_DECISION_ACCEPT, "all", "staleness 1 <= 1");
    in.staleness = 2;
    expect(p, &in, FEDGE_DECISION_REJECT, "staleness",
           "base model is 2 versions old; max staleness is 1");
    in = good_update();

    /* Stated sample counts are bounded: none, or more than update.max_samples
     * (default 100000), is refused before it can weigh on the aggregate. */
    in.n_samples = 0;
    expect(p, &in, FEDGE_DECISION_REJECT, "sample_count", "stated sample count 0 is outside 1..100000");
    in.n_samples = 1000000000;
    expect(p, &in, FEDGE_DECISION_REJECT, "sample_count", "1000000000 is outside 1..100000");
    in.n_samples = 100000;
    expect(p, &in, FEDGE_DECISION_ACCEPT, "all", "passed");
    in = good_update();

    /* DP clip (C = 2) binds before max_norm (10). */
    fedge_policy_decision d;
    in.l2_norm = 8.0;
    expect(p, &in, FEDGE_DECISION_CLIP, "dp_clip",
           "L2 norm 8 exceeds the DP clipping norm 2; clipped to 2");
    assert_int_equal(fedge_policy_check_update(p, &in, &d), FEDGE_OK);
    assert_true(fabs(d.clip_factor - 0.25) < 1e-15);
    fedge_policy_free(p);

    /* max_norm alone: clip, then reject. */
    p = load_text("update:\n  max_norm: 10.0\n");
    in = good_update();
    in.l2_norm = 12.3;
    expect(p, &in, FEDGE_DECISION_CLIP, "max_norm",
           "L2 norm 12.3 exceeds max 10; clipped to 10");
    assert_int_equal(fedge_policy_check_update(p, &in, &d), FEDGE_OK);
    assert_true(fabs(d.clip_factor - 10.0 / 12.3) < 1e-15);
    in.l2_norm = 10.0;
    expect(p, &in, FEDGE_DECISION_ACCEPT, "all", "L2 norm 10 <= 10");
    in.device_region = "anywhere"; /* no allowed_regions: any region */
    expect(p, &in, FEDGE_DECISION_ACCEPT, "all", "passed");
    fedge_policy_free(p);

    p = load_text("update:\n  max_norm: 10.0\n  norm_action: reject\n");
    in = good_update();
    in.l2_norm = 12.3;
    expect(p, &in, FEDGE_DECISION_REJECT, "max_norm", "L2 norm 12.3 exceeds max 10");
    fedge_policy_free(p);

    /* Invalid input is a status, not a decision. */
    p = load_text("version: 1\n");
    in = good_update();
    in.l2_norm = -1;
    assert_int_equal(fedge_policy_check_update(p, &in, &d), FEDGE_ERR_INVALID_ARG);
    in = good_update();
    in.device_status = NULL;
    assert_int_equal(fedge_policy_check_update(p, &in, &d), FEDGE_ERR_INVALID_ARG);
    fedge_policy_free(p);
}

/* ---- per round ---------------------------------------------------------------------- */

#define NP 64

static void fill_honest(float (*d)[NP], size_t n, fedge_rng *rng)
{
    /* A common direction plus 20% noise: honest, non-identical clients. */
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < NP; k++)
            d[i][k] = (float)(0.1 * (1.0 + (k % 3)) + 0.02 * fedge_rng_normal(rng));
}

static void test_round_anomaly(void **state)
{
    (void)state;
    fedge_policy *p = load_text("anomaly:\n  enabled: true\n  max_norm_z: 3\n  min_cosine: 0\n"
                                "round:\n  min_clients: 3\n");
    fedge_rng rng;
    fedge_rng_seed(&rng, 42);
    float d[8][NP];
    const float *ptr[8];
    double w[8], wout[8];
    fedge_policy_decision per[8], round_d;
    fill_honest(d, 8, &rng);
    for (int i = 0; i < 8; i++) {
        ptr[i] = d[i];
        w[i] = 100 + i;
    }
    /* An honest round passes untouched. */
    assert_int_equal(fedge_policy_check_round(p, 8, ptr, NP, w, wout, per, &round_d), FEDGE_OK);
    assert_int_equal(round_d.decision, FEDGE_DECISION_ACCEPT);
    assert_contains(round_d.reason, "8 of 8 updates kept (0 anomalous)");
    for (int i = 0; i < 8; i++) {
        assert_int_equal(per[i].decision, FEDGE_DECISION_ACCEPT);
        assert_true(wout[i] == w[i]);
    }
    /* Update 3 scaled by 50 (a boosting attack); update 5 sign-flipped. */
    for (int k = 0; k < NP; k++) {
        d[3][k] *= 50;
        d[5][k] = -d[5][k];
    }
    assert_int_equal(fedge_policy_check_round(p, 8, ptr, NP, w, wout, per, &round_d), FEDGE_OK);
    assert_int_equal(round_d.decision, FEDGE_DECISION_ACCEPT);
    assert_contains(round_d.reason, "6 of 8 updates kept (2 anomalous)");
    for (int i = 0; i < 8; i++) {
        if (i == 3 || i == 5) {
            assert_int_equal(per[i].decision, FEDGE_DECISION_REJECT);
            assert_string_equal(per[i].rule, "anomaly");
            assert_true(wout[i] == 0.0);
        } else {
            assert_int_equal(per[i].decision, FEDGE_DECISION_ACCEPT);
            assert_true(wout[i] == w[i]);
        }
    }
    assert_contains(per[3].reason, "norm z-score");
    assert_contains(per[3].reason, "exceeds 3");
    assert_contains(per[5].reason, "cosine -");
    assert_contains(per[5].reason, "is below 0");

    /* k-anonymity: after the two removals only 2 of 4 remain, 3 required. */
    assert_int_equal(fedge_policy_check_round(p, 4, ptr + 2, NP, w, wout, per, &round_d),
                     FEDGE_OK);
    assert_int_equal(round_d.decision, FEDGE_DECISION_REJECT);
    assert_string_equal(round_d.rule, "k_anonymity");
    assert_contains(round_d.reason, "2 accepted updates after 2 anomaly rejections");
    assert_contains(round_d.reason, "at least 3");
    fedge_policy_free(p);

    /* Anomaly off: the outliers pass; too few clients still refuse. */
    p = load_text("round:\n  min_clients: 3\n");
    assert_int_equal(fedge_policy_check_round(p, 8, ptr, NP, w, wout, per, &round_d), FEDGE_OK);
    assert_int_equal(round_d.decision, FEDGE_DECISION_ACCEPT);
    assert_int_equal(per[3].decision, FEDGE_DECISION_ACCEPT);
    assert_int_equal(fedge_policy_check_round(p, 2, ptr, NP, w, wout, per, &round_d), FEDGE_OK);
    assert_int_equal(round_d.decision, FEDGE_DECISION_REJECT);
    assert_string_equal(round_d.rule, "k_anonymity");
    fedge_policy_free(p);
}

static void test_round_max_share(void **state)
{
    (void)state;
    fedge_policy *p = load_text("round:\n  max_share: 0.4\n");
    float d[5][NP];
    const float *ptr[5];
    fedge_rng rng;
    fedge_rng_seed(&rng, 7);
    fill_honest(d, 5, &rng);
    for (int i = 0; i < 5; i++)
        ptr[i] = d[i];
    double w[5] = {1000, 500, 100, 100, 100}, wout[5];
    fedge_policy_decision per[5], round_d;
    assert_int_equal(fedge_policy_check_round(p, 5, ptr, NP, w, wout, per, &round_d), FEDGE_OK);
    assert_int_equal(round_d.decision, FEDGE_DECISION_ACCEPT);
    /* The largest weight is capped to c with c = 0.4 (c + 800): c = 1600/3;
     * 500 is then below the cap and stays. */
    double total = 0;
    for (int i = 0; i < 5; i++)
        total += wout[i];
    assert_true(fabs(wout[0] - 1600.0 / 3) < 1e-9);
    assert_true(wout[1] == 500 && wout[2] == 100 && wout[3] == 100 && wout[4] == 100);
    assert_true(fabs(wout[0] / total - 0.4) < 1e-12);
    assert_string_equal(per[0].rule, "max_share");
    assert_int_equal(per[0].decision, FEDGE_DECISION_ACCEPT);
    assert_contains(per[0].reason, "weight 1000 capped to 533.333");
    assert_string_equal(per[1].rule, "all");
    assert_contains(round_d.reason, "largest share 0.4 (max 0.4)");

    /* Two heavy devices: both capped to c = 0.3 (2c + 100) -> c = 75. */
    double w2[5] = {1000, 900, 40, 30, 30};
    fedge_policy_free(p);
    p = load_text("round:\n  max_share: 0.3\n");
    assert_int_equal(fedge_policy_check_round(p, 5, ptr, NP, w2, wout, per, &round_d), FEDGE_OK);
    assert_int_equal(round_d.decision, FEDGE_DECISION_ACCEPT);
    assert_true(fabs(wout[0] - 75) < 1e-9 && fabs(wout[1] - 75) < 1e-9);
    assert_true(wout[2] == 40 && wout[3] == 30 && wout[4] == 30);
    fedge_policy_free(p);
    p = load_text("round:\n  max_share: 0.4\n");

    /* Two clients cannot each stay at or below 40%. */
    assert_int_equal(fedge_policy_check_round(p, 2, ptr, NP, w, wout, per, &round_d), FEDGE_OK);
    assert_int_equal(round_d.decision, FEDGE_DECISION_REJECT);
    assert_string_equal(round_d.rule, "max_share");
    assert_contains(round_d.reason, "needs at least 3");

    /* Bad weights are invalid input. */
    w[1] = 0;
    assert_int_equal(fedge_policy_check_round(p, 5, ptr, NP, w, wout, per, &round_d),
                     FEDGE_ERR_INVALID_ARG);
    fedge_policy_free(p);
}

/* ---- differential privacy ------------------------------------------------------------- */

static void test_dp_noise_statistics(void **state)
{
    (void)state;
    fedge_policy *p = load_text("privacy:\n  enabled: true\n  clip_norm: 0.5\n"
                                "  noise_multiplier: 1.1\n");
    const size_t n = 200000;
    float *sum = calloc(n, sizeof *sum);
    assert_non_null(sum);
    for (size_t i = 0; i < n; i++)
        sum[i] = 3.0f;
    fedge_rng rng;
    fedge_rng_seed(&rng, 2024);
    assert_int_equal(fedge_policy_dp_apply(p, sum, n, 10, &rng), FEDGE_OK);
    double mean = 0, var = 0;
    for (size_t i = 0; i < n; i++)
        mean += sum[i] - 3.0;
    mean /= (double)n;
    for (size_t i = 0; i < n; i++)
        var += (sum[i] - 3.0 - mean) * (sum[i] - 3.0 - mean);
    var /= (double)(n - 1);
    double want = (1.1 * 0.5) * (1.1 * 0.5);
    /* Standard errors: mean sqrt(var/n) = 0.0012, variance var*sqrt(2/n) = 0.001. */
    assert_true(fabs(mean) < 0.006);
    assert_true(fabs(var - want) < 0.005);
    assert_int_equal(fedge_policy_dp_apply(p, sum, n, 0, &rng), FEDGE_ERR_INVALID_ARG);
    free(sum);
    fedge_policy_free(p);

    p = load_text("version: 1\n");
    float x = 1;
    assert_int_equal(fedge_policy_dp_apply(p, &x, 1, 3, &rng), FEDGE_ERR_STATE);
    assert_true(x == 1.0f);
    fedge_policy_free(p);
}

static void assert_rel(double got, double want, double tol)
{
    if (!(fabs(got - want) <= tol * fmax(1e-300, fabs(want)))) {
        print_error("got %.17g, want %.17g (relative tolerance %g)\n", got, want, tol);
        fail();
    }
}

static void add_vec(double *acc, const double *v)
{
    for (size_t k = 0; k < FEDGE_DP_N_ORDERS; k++)
        acc[k] += v[k];
}

static void test_privacy_budgets(void **state)
{
    (void)state;
    fedge_policy *p = load_text("privacy:\n  enabled: true\n  noise_multiplier: 1.0\n"
                                "  epsilon_budget: 5.0\n  delta: 1e-5\n"
                                "  device_epsilon_budget: 12\n");
    fedge_policy_decision d;
    double eps, want, spent[FEDGE_DP_N_ORDERS] = {0}, round_rdp[FEDGE_DP_N_ORDERS];
    /* q = 0.1: spent grows by one round's RDP each time; the decision flips
     * at the first round whose sum would pass the budget. */
    assert_int_equal(fedge_policy_dp_round_rdp(p, 0.1, round_rdp), FEDGE_OK);
    long first_over = 0;
    for (long r = 1; r <= 200 && !first_over; r++) {
        assert_int_equal(fedge_policy_budget_check(p, spent, 0.1, &eps, &d), FEDGE_OK);
        assert_int_equal(fedge_rdp_epsilon(0.1, 1.0, r, 1e-5, &want, NULL), FEDGE_OK);
        assert_rel(eps, want, 1e-12);
        assert_string_equal(d.rule, "privacy_budget");
        if (want > 5.0) {
            first_over = r;
            assert_int_equal(d.decision, FEDGE_DECISION_REJECT);
            assert_contains(d.reason, "over the budget 5");
        } else {
            assert_int_equal(d.decision, FEDGE_DECISION_ACCEPT);
            assert_contains(d.reason, "of budget 5");
        }
        add_vec(spent, round_rdp);
    }
    assert_true(first_over > 1);

    /* Per device: its own rounds counted without amplification (q = 1). */
    double dev_spent[FEDGE_DP_N_ORDERS] = {0}, dev_rdp[FEDGE_DP_N_ORDERS];
    assert_int_equal(fedge_policy_dp_round_rdp(p, 1.0, dev_rdp), FEDGE_OK);
    long first_dev_over = 0;
    for (long k = 1; k <= 100 && !first_dev_over; k++) {
        assert_int_equal(fedge_policy_device_budget_check(p, "dev-9", dev_spent, &eps, &d),
                         FEDGE_OK);
        assert_int_equal(fedge_rdp_epsilon(1.0, 1.0, k, 1e-5, &want, NULL), FEDGE_OK);
        assert_rel(eps, want, 1e-12);
        if (want > 12) {
            first_dev_over = k;
            assert_int_equal(d.decision, FEDGE_DECISION_REJECT);
            assert_string_equal(d.rule, "device_privacy_budget");
            assert_contains(d.reason, "device dev-9");
            assert_contains(d.reason, "per-device budget 12");
        } else {
            assert_int_equal(d.decision, FEDGE_DECISION_ACCEPT);
        }
        add_vec(dev_spent, dev_rdp);
    }
    assert_true(first_dev_over > 1);
    assert_int_equal(fedge_policy_budget_check(p, NULL, 0.0, &eps, &d), FEDGE_ERR_INVALID_ARG);
    spent[7] = -1e-3; /* a negative RDP is never a spend */
    assert_int_equal(fedge_policy_budget_check(p, spent, 0.1, &eps, &d), FEDGE_ERR_INVALID_ARG);
    fedge_policy_free(p);

    /* A noise multiplier too small for the fractional orders: those orders
     * are +inf (unused), epsilon comes from the integer ones. */
    fedge_policy *tiny = load_text("privacy:\n  enabled: true\n  noise_multiplier: 0.001\n");
    double orders[FEDGE_DP_N_ORDERS];
    fedge_policy_dp_orders(orders);
    assert_int_equal(fedge_policy_dp_round_rdp(tiny, 0.5, round_rdp), FEDGE_OK);
    for (size_t k = 0; k < FEDGE_DP_N_ORDERS; k++)
        assert_true(orders[k] == floor(orders[k]) ? isfinite(round_rdp[k]) : isinf(round_rdp[k]));
    assert_int_equal(fedge_policy_dp_epsilon(tiny, round_rdp, &eps), FEDGE_OK);
    assert_true(isfinite(eps) && eps > 1e5);
    fedge_policy_free(tiny);

    /* DP off: no guarantee, so no finite epsilon either. */
    p = load_text("version: 1\n");
    assert_int_equal(fedge_policy_budget_check(p, NULL, 0.5, &eps, &d), FEDGE_OK);
    assert_int_equal(d.decision, FEDGE_DECISION_ACCEPT);
    assert_true(isinf(eps));
    assert_contains(d.reason, "no DP guarantee applies");
    assert_int_equal(fedge_policy_dp_round_rdp(p, 0.5, round_rdp), FEDGE_ERR_STATE);
    fedge_policy_free(p);
}

/* ---- the privacy ledger ------------------------------------------------------------------- */

static fedge_policy *dp_policy(double z, double budget)
{
    char text[256];
    snprintf(text, sizeof text,
             "privacy:\n  enabled: true\n  clip_norm: 2\n  noise_multiplier: %g\n"
             "  epsilon_budget: %g\n  delta: 1e-5\n  device_epsilon_budget: 100\n",
             z, budget);
    return load_text(text);
}

static void ledger_round(sqlite3 *db, const fedge_policy *p, uint32_t round, double q)
{
    double rdp[FEDGE_DP_N_ORDERS];
    assert_int_equal(fedge_policy_dp_round_rdp(p, q, rdp), FEDGE_OK);
    assert_int_equal(fedge_dp_ledger_append(db, round, q, fedge_policy_dp_noise_multiplier(p),
                                            fedge_policy_dp_clip_norm(p), rdp),
                     FEDGE_OK);
}

static void sql_ok(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        print_error("%s: %s\n", sql, msg ? msg : "?");
        fail();
    }
}

static void add_update_row(sqlite3 *db, int round, const char *device, const char *decision)
{
    char sql[400];
    snprintf(sql, sizeof sql,
             "INSERT INTO updates(round, device, received_at, n_samples, encoding, bytes, counter,"
             " decision, rule, reason) VALUES(%d, '%s', 0, 10, 'fp32', 100, %d, '%s', 'all', '-')",
             round, device, round, decision);
    sql_ok(db, sql);
}

/* A noise multiplier raised from 1 to 4 after 3 rounds (the SIGHUP case):
 * epsilon is the conversion of 3 rounds at z = 1 plus 2 at z = 4, more than
 * after the first 3, far more than 5 rounds re-priced at z = 4. */
static void test_ledger_composes_each_rounds_own_cost(void **state)
{
    tmp_t *t = *state;
    sqlite3 *db = NULL;
    char path[160];
    snprintf(path, sizeof path, "%s/ledger.db", t->dir);
    assert_int_equal(fedge_store_open_db(path, 0, &db), FEDGE_OK);
    fedge_policy *z1 = dp_policy(1.0, 100), *z4 = dp_policy(4.0, 100);
    const double q = 0.5;
    for (uint32_t r = 1; r <= 3; r++)
        ledger_round(db, z1, r, q);
    fedge_dp_spent after3, after5;
    double eps3, eps5;
    assert_int_equal(fedge_dp_ledger_spent(db, NULL, &after3), FEDGE_OK);
    assert_int_equal(after3.rounds, 3);
    assert_int_equal(fedge_policy_dp_epsilon(z4, after3.rdp, &eps3), FEDGE_OK);
    for (uint32_t r = 4; r <= 5; r++)
        ledger_round(db, z4, r, q);
    assert_int_equal(fedge_dp_ledger_spent(db, NULL, &after5), FEDGE_OK);
    assert_int_equal(after5.rounds, 5);
    assert_int_equal(fedge_policy_dp_epsilon(z4, after5.rdp, &eps5), FEDGE_OK);

    /* By hand: per order, 3 RDP(q, 1) + 2 RDP(q, 4). */
    double orders[FEDGE_DP_N_ORDERS], r1[FEDGE_DP_N_ORDERS], r4[FEDGE_DP_N_ORDERS];
    double sum[FEDGE_DP_N_ORDERS], want;
    fedge_policy_dp_orders(orders);
    assert_int_equal(fedge_rdp_compute(q, 1.0, 3, orders, FEDGE_DP_N_ORDERS, r1), FEDGE_OK);
    assert_int_equal(fedge_rdp_compute(q, 4.0, 2, orders, FEDGE_DP_N_ORDERS, r4), FEDGE_OK);
    for (size_t k = 0; k < FEDGE_DP_N_ORDERS; k++) {
        sum[k] = r1[k] + r4[k];
        assert_rel(after5.rdp[k], sum[k], 1e-14);
    }
    assert_int_equal(fedge_rdp_to_epsilon(orders, sum, FEDGE_DP_N_ORDERS, 1e-5,
                                          FEDGE_RDP_CONV_IMPROVED, &want, NULL),
                     FEDGE_OK);
    assert_rel(eps5, want, 1e-14);
    assert_true(eps5 > eps3);
    double repriced; /* what recomputing from the round count at the current z gave */
    assert_int_equal(fedge_rdp_epsilon(q, 4.0, 5, 1e-5, &repriced, NULL), FEDGE_OK);
    assert_true(repriced < eps3 / 2);

    /* q = 1 by hand in closed form: RDP(a) = a * (3/2 + 2/32), a Gaussian with
     * sigma^2 = 1 / (2 (3/2 + 2/32)). Per device: dev-a contributed to rounds
     * 1, 2 and 4 (rejected in 3, absent in 5), dev-b only to round 5. */
    sqlite3_exec(db, "DELETE FROM dp_ledger", NULL, NULL, NULL);
    add_update_row(db, 1, "dev-a", "accepted");
    add_update_row(db, 2, "dev-a", "clipped");
    add_update_row(db, 3, "dev-a", "rejected");
    add_update_row(db, 4, "dev-a", "accepted");
    add_update_row(db, 5, "dev-b", "accepted");
    for (uint32_t r = 1; r <= 5; r++)
        ledger_round(db, r <= 3 ? z1 : z4, r, r == 5 ? 1.0 : 0.25);
    fedge_dp_spent all, dev_a, dev_b;
    assert_int_equal(fedge_dp_ledger_spent(db, NULL, &all), FEDGE_OK);
    assert_int_equal(fedge_dp_ledger_spent(db, "dev-a", &dev_a), FEDGE_OK);
    assert_int_equal(fedge_dp_ledger_spent(db, "dev-b", &dev_b), FEDGE_OK);
    assert_int_equal(all.rounds, 5);
    assert_int_equal(dev_a.rounds, 3);
    assert_int_equal(dev_b.rounds, 1);
    for (size_t k = 0; k < FEDGE_DP_N_ORDERS; k++) {
        assert_rel(dev_a.rdp[k], orders[k] * (2.0 / 2.0 + 1.0 / 32.0), 1e-14);
        assert_rel(dev_b.rdp[k], orders[k] / 32.0, 1e-14);
    }
    double eps_a;
    assert_int_equal(fedge_policy_dp_epsilon(z4, dev_a.rdp, &eps_a), FEDGE_OK);
    assert_int_equal(fedge_rdp_epsilon(1.0, 1.0 / sqrt(2.0 * (1.0 + 1.0 / 32.0)), 1, 1e-5, &want,
                                       NULL),
                     FEDGE_OK);
    assert_rel(eps_a, want, 1e-12);

    /* A round is charged once; a bad row is refused, not stored. */
    double rdp[FEDGE_DP_N_ORDERS];
    assert_int_equal(fedge_policy_dp_round_rdp(z1, 0.5, rdp), FEDGE_OK);
    assert_int_equal(fedge_dp_ledger_append(db, 5, 0.5, 1.0, 2.0, rdp), FEDGE_ERR_SQL);
    assert_int_equal(fedge_dp_ledger_append(db, 6, 0.0, 1.0, 2.0, rdp), FEDGE_ERR_INVALID_ARG);
    rdp[3] = -0.01;
    assert_int_equal(fedge_dp_ledger_append(db, 6, 0.5, 1.0, 2.0, rdp), FEDGE_ERR_INVALID_ARG);
    /* Every ledger row is in the audit chain. */
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM audit WHERE tbl = 'dp_ledger'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 10); /* 5 deleted above, 5 now */
    sqlite3_finalize(st);
    /* A row stored at other orders is re-priced from its (q, sigma). */
    sql_ok(db, "UPDATE dp_ledger SET orders = zeroblob(16), rdp = zeroblob(16) WHERE round = 5");
    assert_int_equal(fedge_dp_ledger_spent(db, NULL, &all), FEDGE_OK);
    fedge_dp_spent again;
    sql_ok(db, "DELETE FROM dp_ledger WHERE round = 5");
    assert_int_equal(fedge_dp_ledger_spent(db, NULL, &again), FEDGE_OK);
    assert_int_equal(fedge_rdp_compute(1.0, 4.0, 1, orders, FEDGE_DP_N_ORDERS, rdp), FEDGE_OK);
    for (size_t k = 0; k < FEDGE_DP_N_ORDERS; k++)
        assert_rel(all.rdp[k], again.rdp[k] + rdp[k], 1e-14);
    fedge_policy_free(z1);
    fedge_policy_free(z4);
    sqlite3_close_v2(db);
}

/* The budget check prices the next round on top of the ledger: after 3
 * rounds at z = 1 (q = 1), a 4th at z = 4 passes a budget just above the
 * spend plus its cost and fails one just below, where a count of rounds
 * re-priced at z = 4 would pass both. */
static void test_budget_refusal_uses_the_ledger(void **state)
{
    tmp_t *t = *state;
    sqlite3 *db = NULL;
    char path[160];
    snprintf(path, sizeof path, "%s/budget.db", t->dir);
    assert_int_equal(fedge_store_open_db(path, 0, &db), FEDGE_OK);
    fedge_policy *z1 = dp_policy(1.0, 100);
    for (uint32_t r = 1; r <= 3; r++)
        ledger_round(db, z1, r, 1.0);
    fedge_dp_spent spent;
    assert_int_equal(fedge_dp_ledger_spent(db, NULL, &spent), FEDGE_OK);
    double orders[FEDGE_DP_N_ORDERS], next[FEDGE_DP_N_ORDERS], truth, spent_eps, repriced;
    fedge_policy_dp_orders(orders);
    assert_int_equal(fedge_rdp_compute(1.0, 4.0, 1, orders, FEDGE_DP_N_ORDERS, next), FEDGE_OK);
    add_vec(next, spent.rdp);
    assert_int_equal(fedge_rdp_to_epsilon(orders, next, FEDGE_DP_N_ORDERS, 1e-5,
                                          FEDGE_RDP_CONV_IMPROVED, &truth, NULL),
                     FEDGE_OK);
    assert_int_equal(fedge_policy_dp_epsilon(z1, spent.rdp, &spent_eps), FEDGE_OK);
    assert_int_equal(fedge_rdp_epsilon(1.0, 4.0, 4, 1e-5, &repriced, NULL), FEDGE_OK);
    assert_true(truth > spent_eps && repriced < spent_eps / 2);

    fedge_policy *below = dp_policy(4.0, truth * 0.999), *above = dp_policy(4.0, truth * 1.001);
    fedge_policy_decision d;
    double eps;
    assert_int_equal(fedge_policy_budget_check(above, spent.rdp, 1.0, &eps, &d), FEDGE_OK);
    assert_int_equal(d.decision, FEDGE_DECISION_ACCEPT);
    assert_rel(eps, truth, 1e-14);
    assert_int_equal(fedge_policy_budget_check(below, spent.rdp, 1.0, &eps, &d), FEDGE_OK);
    assert_int_equal(d.decision, FEDGE_DECISION_REJECT);
    assert_string_equal(d.rule, "privacy_budget");
    /* The device check the same way (device budget 100 here: never over). */
    assert_int_equal(fedge_policy_device_budget_check(below, "dev-a", spent.rdp, &eps, &d),
                     FEDGE_OK);
    assert_rel(eps, truth, 1e-14);
    fedge_policy_free(z1);
    fedge_policy_free(below);
    fedge_policy_free(above);
    sqlite3_close_v2(db);
}

/* ---- recording ---------------------------------------------------------------------------- */

static void test_policy_record(void **state)
{
    tmp_t *t = *state;
    sqlite3 *db = NULL;
    char path[160];
    snprintf(path, sizeof path, "%s/record.db", t->dir);
    assert_int_equal(fedge_store_open_db(path, 0, &db), FEDGE_OK);
    fedge_policy *p = load_text(GOOD);
    assert_int_equal(fedge_policy_record(db, p), FEDGE_OK);

    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = ?1", -1, &st, NULL),
                     SQLITE_OK);
    const char *keys[] = {"policy_name", "policy_sha256", "policy_epsilon_budget", "policy_delta",
                          "policy_device_epsilon_budget", "policy_dp_enabled"};
    const char *want[] = {fedge_policy_name(p), fedge_policy_sha256_hex(p), "8", "1.0000000000000001e-05",
                          "20", "1"};
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(keys); i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, keys[i], -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_string_equal((const char *)sqlite3_column_text(st, 0), want[i]);
    }
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT e.kind, e.detail, a.tbl, a.seq FROM events e "
                                        "JOIN audit a ON a.tbl = 'events' AND "
                                        "a.row_key = CAST(e.id AS TEXT)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "policy");
    assert_contains((const char *)sqlite3_column_text(st, 1), fedge_policy_sha256_hex(p));
    assert_int_equal(sqlite3_column_int64(st, 3), 1);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);

    /* Reload: values replaced, a second audited event. */
    fedge_policy_free(p);
    p = load_text("name: relaxed\n");
    assert_int_equal(fedge_policy_record(db, p), FEDGE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT (SELECT value FROM meta WHERE key='policy_name'),"
                                            " (SELECT count(*) FROM audit)", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), fedge_policy_name(p));
    assert_int_equal(sqlite3_column_int(st, 1), 2);
    sqlite3_finalize(st);
    fedge_policy_free(p);
    sqlite3_close_v2(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_good_file, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(test_default_policy_matches_its_text, setup_tmp,
                                        teardown_tmp),
        cmocka_unit_test_setup_teardown(test_load_bad_files, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(test_write_yaml_round_trip, setup_tmp, teardown_tmp),
        cmocka_unit_test(test_update_rules),
        cmocka_unit_test(test_round_anomaly),
        cmocka_unit_test(test_round_max_share),
        cmocka_unit_test(test_dp_noise_statistics),
        cmocka_unit_test(test_privacy_budgets),
        cmocka_unit_test_setup_teardown(test_ledger_composes_each_rounds_own_cost, setup_tmp,
                                        teardown_tmp),
        cmocka_unit_test_setup_teardown(test_budget_refusal_uses_the_ledger, setup_tmp,
                                        teardown_tmp),
        cmocka_unit_test_setup_teardown(test_policy_record, setup_tmp, teardown_tmp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
