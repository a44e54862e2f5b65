/* The aggregator's state machine driven directly (no network): accepted
 * updates, every kind of bad input (each with its reply code and no stored
 * state changed), round close, and resuming an open round after a "crash". */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agg.h"
#include "combine.h"
#include "common.h"
#include "config.h"
#include "governance.h"
#include "hash.h"
#include "log.h"
#include "modelfile.h"
#include "rng.h"
#include "server_opt.h"
#include "shard.h"
#include "store.h"
#include "strategy.h"
#include "update.h"

#include "agg_fixture.h"

#define N_DEV 3
static const char *DEVICES[N_DEV] = {"dev-a", "dev-b", "dev-c"};

#include "agg_updates.h"


static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    fixture_prepare(fx, "agg");
    fx->cfg.rounds = 3;
    fx->cfg.round_timeout_s = 600;
    fixture_start(fx);
    assert_int_equal(fx->agg.round, 1);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture_stop(*state);
    return 0;
}

/* A sealed update from device i; tweak lets a test break one thing. */
/* Everything a bad update must leave alone. */
typedef struct {
    long long updates, audit, counters, models, events;
    size_t accepted;
} snapshot;

static snapshot snap(fixture *fx)
{
    snapshot s = {
        .updates = q1(fx, "SELECT count(*) FROM updates"),
        .audit = q1(fx, "SELECT count(*) FROM audit"),
        .counters = q1(fx, "SELECT sum(last_counter) FROM devices"),
        .models = q1(fx, "SELECT count(*) FROM models"),
        .events = q1(fx, "SELECT count(*) FROM events"),
        .accepted = fx->agg.n_accepted,
    };
    return s;
}

static void assert_unchanged(fixture *fx, snapshot before)
{
    snapshot now = snap(fx);
    assert_int_equal(now.updates, before.updates);
    assert_int_equal(now.audit, before.audit);
    assert_int_equal(now.counters, before.counters);
    assert_int_equal(now.models, before.models);
    assert_int_equal(now.events, before.events);
    assert_int_equal(now.accepted, before.accepted);
}

static int submit(fixture *fx, const char *dev, const uint8_t *b, size_t len, char *msg)
{
    int code = 0;
    assert_int_equal(fedge_agg_submit(&fx->agg, dev, b, len, fedge_now(), &code, msg, 320), FEDGE_OK);
    return code;
}

static void test_accept_and_duplicate(void **state)
{
    fixture *fx = *state;
    char msg[320];
    size_t len;
    uint8_t *b = make_update(fx, 0, good(fx, 100), &len);
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 204);
    assert_string_equal(msg, "accepted");
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-a' AND decision='accepted'"), 1);
    assert_int_equal(q1(fx, "SELECT last_counter FROM devices WHERE id='dev-a'"), 100);

    snapshot before = snap(fx);
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 204); /* lost ACK, same bytes again */
    assert_string_equal(msg, "accepted (duplicate of the update for round 1)");
    assert_unchanged(fx, before);

    uint8_t *b2 = make_update(fx, 0, good(fx, 101), &len); /* a second, different update */
    assert_int_equal(submit(fx, "dev-a", b2, len, msg), 409);
    assert_unchanged(fx, before);
    free(b);
    free(b2);
}

static void expect_refused(fixture *fx, const char *dev, const uint8_t *b, size_t len, int code,
                           const char *needle)
{
    char msg[320];
    snapshot before = snap(fx);
    int got = submit(fx, dev, b, len, msg);
    if (got != code || !strstr(msg, needle))
        fail_msg("expected %d '%s', got %d '%s'", code, needle, got, msg);
    assert_unchanged(fx, before);
}

static void test_bad_inputs(void **state)
{
    fixture *fx = *state;
    size_t len;
    update_spec u;

    uint8_t *b = make_update(fx, 1, good(fx, 500), &len);
    expect_refused(fx, "dev-b", b, len - 1, 400, "truncated");
    expect_refused(fx, "dev-b", b, 10, 400, "truncated");
    uint8_t *big = calloc(1, fx->agg.max_update_bytes + 1);
    memcpy(big, b, len);
    expect_refused(fx, "dev-b", big, fx->agg.max_update_bytes + 1, 413, "exceeds the limit");
    free(big);
    u = good(fx, 500);
    u.enc = FEDGE_ENC_INT8;
    size_t len8;
    uint8_t *b8 = make_update(fx, 1, u, &len8);
    uint8_t *longer = calloc(1, len8 + 1);
    memcpy(longer, b8, len8);
    expect_refused(fx, "dev-b", longer, len8 + 1, 413, "oversized");
    free(longer);
    free(b8);
    b[len - 20] ^= 0x01; /* ciphertext */
    expect_refused(fx, "dev-b", b, len, 401, "authentication failed");
    b[len - 20] ^= 0x01;
    b[0] ^= 0xff;
    expect_refused(fx, "dev-b", b, len, 400, "not a fedge envelope");
    b[0] ^= 0xff;
    expect_refused(fx, "dev-zzz", b, len, 403, "unknown device");
    expect_refused(fx, "dev-c", b, len, 401, "another key"); /* dev-b's update as dev-c */
    free(b);

    u = good(fx, 501);
    u.key_of = 2; /* sealed with dev-c's key, sent by dev-b */
    b = make_update(fx, 1, u, &len);
    expect_refused(fx, "dev-b", b, len, 401, "another key");
    free(b);

    u = good(fx, 502);
    u.round = fx->agg.round + 5;
    b = make_update(fx, 1, u, &len);
    expect_refused(fx, "dev-b", b, len, 409, "another round");
    free(b);

    u = good(fx, 503);
    u.spec = "mlp:16-7-3"; /* fewer params: under the size limit */
    b = make_update(fx, 1, u, &len);
    expect_refused(fx, "dev-b", b, len, 400, "shape");
    free(b);

    u = good(fx, 504);
    u.nan_at = 17;
    b = make_update(fx, 1, u, &len);
    expect_refused(fx, "dev-b", b, len, 400, "NaN");
    free(b);

    /* The valid one still goes through after all that. */
    b = make_update(fx, 1, good(fx, 505), &len);
    char msg[320];
    assert_int_equal(submit(fx, "dev-b", b, len, msg), 204);
    free(b);

    /* An older counter from the same device is a replay. */
    u = good(fx, 400);
    b = make_update(fx, 1, u, &len);
    expect_refused(fx, "dev-b", b, len, 409, "already accepted");
    free(b);
}

static void close_round_with_all(fixture *fx, uint64_t counter, fedge_encoding enc)
{
    char msg[320];
    for (int i = 0; i < N_DEV; i++) {
        size_t len;
        update_spec u = good(fx, counter + (uint64_t)i);
        u.enc = enc;
        uint8_t *b = make_update(fx, i, u, &len);
        int code = submit(fx, DEVICES[i], b, len, msg);
        if (code != 204)
            fail_msg("%s: %d %s", DEVICES[i], code, msg);
        free(b);
    }
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
}

static void test_round_close_and_replay(void **state)
{
    fixture *fx = *state;
    char before[FEDGE_HASH_HEX_LEN], msg[320];
    memcpy(before, fx->agg.version_hex, sizeof before);
    size_t len;
    uint8_t *old = make_update(fx, 0, good(fx, 1000), &len);

    close_round_with_all(fx, 1000, FEDGE_ENC_INT8);
    assert_int_equal(fx->agg.state, FEDGE_AGG_WAITING);
    assert_string_not_equal(before, fx->agg.version_hex);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='closed' AND n_accepted=3"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM models WHERE kind='aggregate' AND round=1"), 1);

    /* The models row's sha256 is the file's. */
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db, "SELECT path, sha256, version FROM models", -1, &st, NULL),
                     SQLITE_OK);
    int rows = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        uint8_t h[FEDGE_HASH_LEN], v[FEDGE_HASH_LEN];
        char hex[FEDGE_HASH_HEX_LEN];
        fedge_model m;
        char file[512]; /* paths are relative to the model store */
        assert_null(strchr((const char *)sqlite3_column_text(st, 0), '/'));
        snprintf(file, sizeof file, "%s/models/%s", fx->dir, (const char *)sqlite3_column_text(st, 0));
        assert_int_equal(fedge_sha256_file(file, h), FEDGE_OK);
        fedge_hash_to_hex(h, hex);
        assert_string_equal(hex, (const char *)sqlite3_column_text(st, 1));
        assert_int_equal(fedge_model_load(file, &m, v), FEDGE_OK);
        fedge_hash_to_hex(v, hex);
        assert_string_equal(hex, (const char *)sqlite3_column_text(st, 2));
        fedge_model_free(&m);
        rows++;
    }
    sqlite3_finalize(st);
    assert_int_equal(rows, 2);

    /* Round 2: the round-1 bytes again are a replay (and for another round). */
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.round, 2);
    expect_refused(fx, "dev-a", old, len, 409, "replayed");
    free(old);
    /* A stale base model is refused by the staleness rule and logged. */
    (void)msg;
}

static void test_resume_after_crash(void **state)
{
    fixture *fx = *state;
    char msg[320], err[256] = "";
    size_t len;
    uint8_t *b = make_update(fx, 0, good(fx, 2000), &len);
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 204);
    char version[FEDGE_HASH_HEX_LEN];
    memcpy(version, fx->agg.version_hex, sizeof version);

    /* "crash": drop the in-memory state without closing anything */
    fedge_agg_free(&fx->agg);
    assert_int_equal(fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    assert_int_equal(fx->agg.round, 1);
    assert_int_equal(fx->agg.n_accepted, 1);
    assert_string_equal(fx->agg.version_hex, version);
    /* the accepted update is remembered: resending it is a duplicate */
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 204);
    assert_string_equal(msg, "accepted (duplicate of the update for round 1)");
    free(b);
    for (int i = 1; i < N_DEV; i++) {
        b = make_update(fx, i, good(fx, 2000 + (uint64_t)i), &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        free(b);
    }
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT n_accepted FROM rounds WHERE id=1"), 3);
}

static void test_finish_and_no_round(void **state)
{
    fixture *fx = *state;
    char msg[320];
    for (int r = 0; r < 3; r++) {
        if (fx->agg.state == FEDGE_AGG_WAITING)
            assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
        close_round_with_all(fx, 3000 + 10 * (uint64_t)r, r == 1 ? FEDGE_ENC_FP16 : FEDGE_ENC_BF16);
    }
    assert_int_equal(fx->agg.state, FEDGE_AGG_FINISHED);
    size_t len;
    uint8_t *b = make_update(fx, 0, good(fx, 5000), &len);
    snapshot before = snap(fx);
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 503);
    assert_unchanged(fx, before);
    free(b);
    char info[1024];
    assert_int_equal(fedge_agg_round_info(&fx->agg, "dev-a", fedge_now(), info, sizeof info), FEDGE_OK);
    assert_non_null(strstr(info, "state=finished\n"));
    assert_int_equal(fedge_agg_status_json(&fx->agg, info, sizeof info), FEDGE_OK);
    assert_non_null(strstr(info, "\"rounds_done\":3"));
}

/* A straggler: dev-a trains for round 1 but its update arrives when round 2
 * is open. With the policy's max_staleness 1 it joins round 2 (discounted);
 * two rounds late, or with the default policy (staleness 0), it is refused
 * and nothing is stored. */
static void late_update(void **state, int staleness_allowed)
{
    fixture *fx = *state;
    char msg[320], err[256] = "", path[128];
    if (staleness_allowed) { /* restart the fixture's aggregator under a policy */
        fedge_agg_free(&fx->agg);
        snprintf(path, sizeof path, "%s/policy.yaml", fx->dir);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs("version: 1\nname: stragglers\nupdate:\n  max_staleness: 1\n", f);
        fclose(f);
        snprintf(fx->cfg.policy_file, sizeof fx->cfg.policy_file, "%s", path);
        assert_int_equal(fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err), FEDGE_OK);
        assert_int_equal(fx->agg.round, 1);
    }
    size_t late_len, later_len;
    uint8_t *late = make_update(fx, 0, good(fx, 7000), &late_len); /* for round 1 */
    for (int i = 1; i < N_DEV; i++) {
        size_t len;
        uint8_t *b = make_update(fx, i, good(fx, 7000 + (uint64_t)i), &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        free(b);
    }
    double later = fedge_now() + fx->cfg.round_timeout_s + 1; /* round 1 deadline passes */
    assert_int_equal(fedge_agg_tick(&fx->agg, later), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT n_accepted FROM rounds WHERE id=1 AND status='closed'"), 2);
    assert_int_equal(fedge_agg_tick(&fx->agg, later), FEDGE_OK);
    assert_int_equal(fx->agg.round, 2);

    if (!staleness_allowed) {
        expect_refused(fx, "dev-a", late, late_len, 409, "another round");
        free(late);
        return;
    }
    assert_int_equal(submit(fx, "dev-a", late, late_len, msg), 204);
    assert_string_equal(msg, "accepted");
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round=2 AND device='dev-a' AND decision='accepted'"), 1);
    free(late);

    /* round 3: an update trained for round 1 is two rounds late */
    update_spec u = good(fx, 7100);
    u.round = 1;
    uint8_t *stale = make_update(fx, 1, u, &later_len);
    assert_int_equal(fedge_agg_tick(&fx->agg, later + 2 * fx->cfg.round_timeout_s), FEDGE_OK);
    assert_int_equal(fedge_agg_tick(&fx->agg, later + 2 * fx->cfg.round_timeout_s), FEDGE_OK);
    assert_int_equal(fx->agg.round, 3);
    assert_int_equal(q1(fx, "SELECT n_accepted FROM rounds WHERE id=2"), 1);
    expect_refused(fx, "dev-b", stale, later_len, 409, "another round");
    free(stale);
}

static void test_late_update_within_staleness(void **state) { late_update(state, 1); }
static void test_late_update_refused_by_default(void **state) { late_update(state, 0); }

/* "Forget this device": an operator revokes dev-a in the middle of a round
 * (fedge-admin); its update is refused by the policy, and the refusal and
 * the revocation are both logged; bad operator input changes nothing. */
static void test_revoke_device(void **state)
{
    fixture *fx = *state;
    char msg[320];
    size_t len;
    assert_int_equal(fedge_device_set_status(fx->agg.db, "dev-zzz", "revoked", "x"), FEDGE_ERR_NOT_FOUND);
    assert_int_equal(fedge_device_set_status(fx->agg.db, "dev-a", "banned", "x"), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_device_set_status(fx->agg.db, "dev-a", "revoked", ""), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='device_status'"), 0);
    assert_int_equal(q1(fx, "SELECT count(*) FROM devices WHERE status<>'allowed'"), 0);

    assert_int_equal(fedge_device_set_status(fx->agg.db, "dev-a", "revoked", "owner asked to be forgotten"),
                     FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='device_status' AND device='dev-a'"), 1);
    uint8_t *b = make_update(fx, 0, good(fx, 8000), &len);
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 403);
    assert_non_null(strstr(msg, "revoked"));
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-a' AND decision='rejected'"
                            " AND rule='device_status'"), 1);
    free(b);
    /* the next round leaves it out */
    for (int i = 1; i < N_DEV; i++) {
        b = make_update(fx, i, good(fx, 8000 + (uint64_t)i), &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        free(b);
    }
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now() + fx->cfg.round_timeout_s + 1), FEDGE_OK);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now() + fx->cfg.round_timeout_s + 1), FEDGE_OK);
    assert_int_equal(fx->agg.round, 2);
    assert_int_equal(q1(fx, "SELECT count(*) FROM round_participants WHERE round=2 AND device='dev-a'"), 0);
}

/* DP-FedAvg under a small budget: round 1 runs and is charged (epsilon in
 * the rounds row, per-device epsilon), the round that would exceed the
 * budget is refused, logged and signed, and the run ends. */
static void test_dp_budget_refusal(void **state)
{
    fixture *fx = *state;
    char err[256] = "", path[128], msg[320];
    fedge_agg_free(&fx->agg);
    snprintf(path, sizeof path, "%s/dp.yaml", fx->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    /* q = 1 (all 3 devices), z = 1: one round costs 4.73 at delta 1e-5,
     * two cost 7.08 > 6 */
    fputs("version: 1\nname: dp-small\nprivacy:\n  enabled: true\n  clip_norm: 0.5\n"
          "  noise_multiplier: 1.0\n  epsilon_budget: 6\n  delta: 1e-5\n", f);
    fclose(f);
    snprintf(fx->cfg.policy_file, sizeof fx->cfg.policy_file, "%s", path);
    assert_int_equal(fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err), FEDGE_OK);
    char before[FEDGE_HASH_HEX_LEN];
    memcpy(before, fx->agg.version_hex, sizeof before);
    for (int i = 0; i < N_DEV; i++) {
        size_t len;
        uint8_t *b = make_update(fx, i, good(fx, 9000 + (uint64_t)i), &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        assert_string_equal(msg, "accepted"); /* norm about 0.1: under the clip norm */
        free(b);
    }
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_string_not_equal(before, fx->agg.version_hex);
    /* (round 1 was opened under the fixture's default policy, so its
     * strategy column says fedavg; it closes under DP and is charged) */
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='closed'"
                            " AND epsilon > 4.7 AND epsilon < 4.8"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM devices WHERE epsilon_spent > 0"), N_DEV);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_FINISHED);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=2 AND status='refused'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='round_refused' AND rule='privacy_budget'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM audit_heads WHERE round=2"), 0); /* no signing key here */
}

static void test_round_info(void **state)
{
    fixture *fx = *state;
    char info[1024];
    assert_int_equal(fedge_agg_round_info(&fx->agg, "dev-b", fedge_now(), info, sizeof info), FEDGE_OK);
    assert_non_null(strstr(info, "state=open\nround=1\nselected=1\n"));
    assert_non_null(strstr(info, "spec=mlp:16-8-3\n"));
    char model_line[80];
    snprintf(model_line, sizeof model_line, "model=%s\n", fx->agg.version_hex);
    assert_non_null(strstr(info, model_line));
    assert_int_equal(fedge_agg_round_info(&fx->agg, "nobody", fedge_now(), info, sizeof info), FEDGE_OK);
    assert_non_null(strstr(info, "selected=0\n"));
}

/* Reopens the fixture's aggregator on the same database, as a restart does. */
static void restart(fixture *fx)
{
    char err[256] = "";
    fedge_agg_free(&fx->agg);
    int ret = fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err);
    if (ret != FEDGE_OK)
        fail_msg("restart: %s", err);
}

/* Issue 8 case 1: a round that ends with no update keeps the model, and
 * the next round must still take updates trained on it: staleness counts
 * model versions, not rounds. Before the fix the update for round 2 on the
 * initial model was refused as "1 round old", forever, restart or not. */
static void test_failed_round_does_not_stop_training(void **state)
{
    fixture *fx = *state;
    char msg[320], model[FEDGE_HASH_HEX_LEN];
    double t = fedge_now() + fx->cfg.round_timeout_s + 1;
    memcpy(model, fx->agg.version_hex, sizeof model);
    assert_int_equal(fedge_agg_tick(&fx->agg, t), FEDGE_OK); /* round 1: nobody came */
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='failed'"), 1);
    assert_string_equal(fx->agg.version_hex, model);
    assert_int_equal(fedge_agg_tick(&fx->agg, t), FEDGE_OK);
    assert_int_equal(fx->agg.round, 2);
    restart(fx); /* and a restart does not change the verdict */
    assert_int_equal(fx->agg.round, 2);
    for (int i = 0; i < N_DEV; i++) {
        size_t len;
        uint8_t *b = make_update(fx, i, good(fx, 100 + (uint64_t)i), &len);
        int code = submit(fx, DEVICES[i], b, len, msg);
        if (code != 204)
            fail_msg("%s after a failed round: %d %s", DEVICES[i], code, msg);
        assert_string_equal(msg, "accepted");
        free(b);
    }
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=2 AND status='closed' AND n_accepted=3"), 1);
    assert_string_not_equal(fx->agg.version_hex, model);
    char out[256];
    assert_int_equal(fedge_agg_outcome(&fx->agg, out, sizeof out), 0);
}

/* A run in which no round aggregated does not end as a success. */
static void test_run_without_aggregation_is_an_error(void **state)
{
    fixture *fx = *state;
    char out[256];
    double t = fedge_now();
    for (int r = 0; r < 3; r++) {
        t += fx->cfg.round_timeout_s + 1;
        assert_int_equal(fedge_agg_tick(&fx->agg, t), FEDGE_OK); /* deadline: failed */
        if (fx->agg.state == FEDGE_AGG_WAITING)
            assert_int_equal(fedge_agg_tick(&fx->agg, t), FEDGE_OK);
    }
    assert_int_equal(fx->agg.state, FEDGE_AGG_FINISHED);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE status='failed'"), 3);
    assert_int_equal(fedge_agg_outcome(&fx->agg, out, sizeof out), 3);
    assert_non_null(strstr(out, "none aggregated"));
}

/* Issue 8 case 2: a stated sample count of 0 (or absurdly many) is refused
 * at submit with an audited reason; nothing reaches the round close. */
static void test_sample_count_bounds(void **state)
{
    fixture *fx = *state;
    char msg[320];
    size_t len;
    update_spec u = good(fx, 10);
    u.samples = 0;
    uint8_t *b = make_update(fx, 0, u, &len);
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 403);
    assert_non_null(strstr(msg, "sample_count"));
    free(b);
    u = good(fx, 11);
    u.samples = 1000000000;
    b = make_update(fx, 1, u, &len);
    assert_int_equal(submit(fx, "dev-b", b, len, msg), 403);
    assert_non_null(strstr(msg, "sample_count"));
    free(b);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE decision='rejected' AND rule='sample_count'"), 2);
    b = make_update(fx, 2, good(fx, 12), &len);
    assert_int_equal(submit(fx, "dev-c", b, len, msg), 204);
    free(b);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now() + fx->cfg.round_timeout_s + 1), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='closed' AND n_accepted=1"), 1);
}

/* The close itself is robust: accepted rows that cannot be used (a zero
 * sample count or an unreadable delta, as a log written before the submit
 * checks, or a damaged one, may hold) are excluded with an audited reason
 * and the round aggregates the rest; when nothing is usable the round
 * fails; either way the daemon goes on and a restart does not crash-loop. */
static void test_unusable_stored_updates_are_excluded(void **state)
{
    fixture *fx = *state;
    char msg[320];
    for (int i = 0; i < N_DEV; i++) {
        size_t len;
        uint8_t *b = make_update(fx, i, good(fx, 20 + (uint64_t)i), &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        free(b);
    }
    char *e = NULL;
    assert_int_equal(sqlite3_exec(fx->agg.db, "UPDATE updates SET n_samples=0 WHERE device='dev-a';"
                                              "UPDATE updates SET delta=x'00' WHERE device='dev-b'",
                                  NULL, NULL, &e), SQLITE_OK);
    restart(fx); /* as after the crash the old code went into */
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='closed' AND n_accepted=1"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-a' AND decision='rejected'"
                            " AND rule='sample_count'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-b' AND decision='rejected'"
                            " AND rule='integrity'"), 1);

    /* round 2: the only update is unusable: the round fails, the daemon goes on */
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.round, 2);
    size_t len;
    uint8_t *b = make_update(fx, 2, good(fx, 30), &len);
    assert_int_equal(submit(fx, "dev-c", b, len, msg), 204);
    free(b);
    assert_int_equal(sqlite3_exec(fx->agg.db, "UPDATE updates SET n_samples=0 WHERE round=2", NULL, NULL, &e),
                     SQLITE_OK);
    char model[FEDGE_HASH_HEX_LEN];
    memcpy(model, fx->agg.version_hex, sizeof model);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now() + fx->cfg.round_timeout_s + 1), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=2 AND status='failed'"), 1);
    assert_string_equal(fx->agg.version_hex, model);
    restart(fx);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.round, 3);
}

/* A finite delta whose aggregate overflows float fails the round instead of
 * making the model non-finite. */
static void test_overflowing_aggregate_fails_round(void **state)
{
    fixture *fx = *state;
    char msg[320], model[FEDGE_HASH_HEX_LEN];
    memcpy(model, fx->agg.version_hex, sizeof model);
    fx->agg.cfg.server_lr = 10; /* every delta finite, the step is not */
    for (int i = 0; i < N_DEV; i++) {
        size_t len;
        update_spec u = good(fx, 40 + (uint64_t)i);
        u.fill = 1e38f;
        uint8_t *b = make_update(fx, i, u, &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        free(b);
    }
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='failed'"), 1);
    assert_string_equal(fx->agg.version_hex, model);
    for (size_t k = 0; k < fx->agg.model.n_params; k++)
        assert_true(isfinite(fx->agg.model.params[k]));
}

/* Issue 8 case 7: the resend of an accepted update whose reply was lost is
 * told the truth in every state: the round open, closed, the next round
 * open, after a restart, after the run finished. */
static void test_duplicate_answer_in_every_state(void **state)
{
    fixture *fx = *state;
    char msg[320];
    size_t len, len_b;
    uint8_t *a = make_update(fx, 0, good(fx, 50), &len);
    assert_int_equal(submit(fx, "dev-a", a, len, msg), 204);
    update_spec ub = good(fx, 51);
    ub.samples = 0;
    uint8_t *rb = make_update(fx, 1, ub, &len_b); /* refused by policy */
    assert_int_equal(submit(fx, "dev-b", rb, len_b, msg), 403);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now() + fx->cfg.round_timeout_s + 1), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_WAITING); /* round 1 closed, nothing open */
    for (int step = 0; step < 4; step++) {
        if (step == 1)
            assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK); /* round 2 open */
        if (step == 2)
            restart(fx);
        if (step == 3) { /* finish the run */
            double t = fedge_now();
            while (fx->agg.state != FEDGE_AGG_FINISHED) {
                t += fx->cfg.round_timeout_s + 1;
                assert_int_equal(fedge_agg_tick(&fx->agg, t), FEDGE_OK);
            }
        }
        snapshot before = snap(fx);
        assert_int_equal(submit(fx, "dev-a", a, len, msg), 204);
        assert_string_equal(msg, "accepted (duplicate of the update for round 1)");
        assert_int_equal(submit(fx, "dev-b", rb, len_b, msg), 403);
        assert_non_null(strstr(msg, "rejected (duplicate of the update for round 1): sample_count"));
        assert_unchanged(fx, before);
    }
    free(a);
    free(rb);
}

/* Issue 8 case 7: an update sealed for another run (captured in one run and
 * posted into a new one on the same keys) is refused and stores nothing. */
static void test_update_from_another_run(void **state)
{
    fixture *fx = *state;
    size_t len;
    static const uint8_t other[FEDGE_RUN_ID_LEN] = "some other run!";
    update_spec u = good(fx, 60);
    u.run = other;
    uint8_t *b = make_update(fx, 0, u, &len);
    expect_refused(fx, "dev-a", b, len, 409, "another run");
    free(b);
    char info[1024], line[64];
    assert_int_equal(fedge_agg_round_info(&fx->agg, "dev-a", fedge_now(), info, sizeof info), FEDGE_OK);
    snprintf(line, sizeof line, "run=%s\n", fx->agg.run_id_hex);
    assert_non_null(strstr(info, line));
    /* a second log (a fresh database on the same keys) has another run id */
    uint8_t first[FEDGE_RUN_ID_LEN];
    memcpy(first, fx->agg.run_id, sizeof first);
    fedge_agg_free(&fx->agg);
    snprintf(fx->cfg.db, sizeof fx->cfg.db, "%s/second.db", fx->dir);
    char err[256] = "";
    assert_int_equal(fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err), FEDGE_OK);
    assert_memory_not_equal(first, fx->agg.run_id, sizeof first);
}

/* Issue 8 case 2, transient faults: while another process holds the write
 * lock, an update gets 5.03 and stores nothing, and the round close is
 * retried instead of stopping the daemon; once the lock is released the
 * round closes. A lock held past db_busy_retry_s is a persistent fault. */
static void test_busy_database_is_retried(void **state)
{
    fixture *fx = *state;
    char msg[320];
    sqlite3 *other = NULL;
    for (int i = 0; i < N_DEV - 1; i++) {
        size_t len;
        uint8_t *b = make_update(fx, i, good(fx, 70 + (uint64_t)i), &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        free(b);
    }
    sqlite3_busy_timeout(fx->agg.db, 100); /* the daemon waits 5 s; the test need not */
    assert_int_equal(sqlite3_open(fx->cfg.db, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);

    size_t len;
    uint8_t *b = make_update(fx, 2, good(fx, 72), &len);
    assert_int_equal(submit(fx, "dev-c", b, len, msg), 503);
    assert_non_null(strstr(msg, "busy"));
    double t = fedge_now() + fx->cfg.round_timeout_s + 1;
    assert_int_equal(fedge_agg_tick(&fx->agg, t), FEDGE_OK); /* close meets the lock */
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    assert_int_equal(fedge_agg_tick(&fx->agg, t + 2), FEDGE_OK); /* and again */
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    assert_int_equal(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(fedge_agg_tick(&fx->agg, t + 4), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='closed' AND n_accepted=2"), 1);

    /* persistent: past the bound the fault is returned */
    assert_int_equal(fedge_agg_tick(&fx->agg, t + 5), FEDGE_OK);
    assert_int_equal(fx->agg.round, 2);
    fx->agg.cfg.db_busy_retry_s = 3;
    assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    double t2 = t + 10 + fx->cfg.round_timeout_s;
    assert_int_equal(fedge_agg_tick(&fx->agg, t2), FEDGE_OK);
    assert_int_equal(fedge_agg_tick(&fx->agg, t2 + 1.5), FEDGE_OK);
    assert_int_equal(fedge_agg_tick(&fx->agg, t2 + 3.5), FEDGE_ERR_BUSY);
    assert_int_equal(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(other);
    free(b);
}

/* A device's privacy budget is checked again at close: lowering the noise
 * multiplier by a policy reload while its update waits in the open round
 * must not take it over its budget. */
static void test_device_budget_rechecked_at_close(void **state)
{
    fixture *fx = *state;
    char err[256] = "", path[128], msg[320];
    fedge_agg_free(&fx->agg);
    snprintf(path, sizeof path, "%s/dp.yaml", fx->dir);
    const char *fmt = "version: 1\nname: dp-dev\nprivacy:\n  enabled: true\n  clip_norm: 0.5\n"
                      "  noise_multiplier: %s\n  epsilon_budget: 1000\n  delta: 1e-5\n"
                      "  device_epsilon_budget: 3\n";
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, fmt, "4.0"); /* one round at q = 1: about 1.2, under 3 */
    fclose(f);
    snprintf(fx->cfg.policy_file, sizeof fx->cfg.policy_file, "%s", path);
    assert_int_equal(fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err), FEDGE_OK);
    for (int i = 0; i < N_DEV; i++) {
        size_t len;
        uint8_t *b = make_update(fx, i, good(fx, 9100 + (uint64_t)i), &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        free(b);
    }
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, fmt, "0.8"); /* one round now costs more than 3 */
    fclose(f);
    assert_int_equal(fedge_agg_reload_policy(&fx->agg), FEDGE_OK);
    char model[FEDGE_HASH_HEX_LEN];
    memcpy(model, fx->agg.version_hex, sizeof model);
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE decision='rejected' AND rule='device_privacy_budget'"),
                     N_DEV);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='failed'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM dp_ledger"), 0);
    assert_int_equal(q1(fx, "SELECT count(*) FROM devices WHERE epsilon_spent > 0"), 0);
    assert_string_equal(fx->agg.version_hex, model);
}

/* A round whose aggregate is the model it started from (every delta zero,
 * as a learning rate decayed to nothing gives) publishes that version again:
 * the next rounds' updates on it are fresh, not "1 version old" forever, and
 * a restart serves the same model. */
static void test_republished_version_stays_current(void **state)
{
    fixture *fx = *state;
    char msg[320], model[FEDGE_HASH_HEX_LEN];
    memcpy(model, fx->agg.version_hex, sizeof model);
    for (int i = 0; i < N_DEV; i++) {
        size_t len;
        update_spec u = good(fx, 300 + (uint64_t)i);
        u.fill = 0;
        uint8_t *b = make_update(fx, i, u, &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        free(b);
    }
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='closed'"), 1);
    assert_string_equal(fx->agg.version_hex, model); /* the same version */
    for (int r = 2; r <= 3; r++) {
        if (r == 3)
            restart(fx);
        assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
        assert_int_equal(fx->agg.round, (uint32_t)r);
        assert_string_equal(fx->agg.version_hex, model);
        for (int i = 0; i < N_DEV; i++) {
            size_t len;
            uint8_t *b = make_update(fx, i, good(fx, 300 + 10 * (uint64_t)r + (uint64_t)i), &len);
            int code = submit(fx, DEVICES[i], b, len, msg);
            if (code != 204)
                fail_msg("round %d %s: %d %s", r, DEVICES[i], code, msg);
            free(b);
            if (r == 3)
                break; /* one update is enough to see the model move */
        }
        if (r == 2) { /* round 2 takes them: the model moves on */
            assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
            assert_string_not_equal(fx->agg.version_hex, model);
            memcpy(model, fx->agg.version_hex, sizeof model);
        }
    }
}

/* Verifier's F4: a device removed from the keys file while its accepted
 * update waits in the open round (then a restart) is excluded with its
 * reason; the others still aggregate, and a failed close names its real
 * cause. */
static void test_device_removed_from_keys(void **state)
{
    fixture *fx = *state;
    char msg[320], path[128];
    for (int i = 0; i < N_DEV; i++) {
        size_t len;
        uint8_t *b = make_update(fx, i, good(fx, 400 + (uint64_t)i), &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        free(b);
    }
    snprintf(path, sizeof path, "%s/keys", fx->dir);
    fixture_write_keys(path, DEVICES, N_DEV - 1); /* dev-c is gone */
    fx->cfg.quorum = 1;
    restart(fx);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now() + fx->cfg.round_timeout_s + 1), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='closed' AND n_accepted=2"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-c' AND decision='rejected'"
                            " AND rule='device_status'"), 1);
}

/* SIGHUP's keys reload on a running aggregator: dev-b taken out, dev-d
 * added. Every index stays, dev-b's next update is refused as from an
 * unknown device and stores nothing, the others go on (dev-a's accepted
 * update still answers as a duplicate), the round closes without dev-b and
 * the next one selects dev-d. A keys file that does not load changes
 * nothing. */
static void test_keys_reload_live(void **state)
{
    fixture *fx = *state;
    char msg[320], path[128], err[256] = "";
    static const char *const four[] = {"dev-a", "dev-b", "dev-c", "dev-d"};
    size_t len_a, len_b, len_c;
    uint8_t *a = make_update(fx, 0, good(fx, 500), &len_a);
    uint8_t *b = make_update(fx, 1, good(fx, 501), &len_b);
    uint8_t *c = make_update(fx, 2, good(fx, 502), &len_c);
    assert_int_equal(submit(fx, "dev-a", a, len_a, msg), 204);
    snprintf(path, sizeof path, "%s/keys", fx->dir);
    fixture_write_keys(path, four, 4);
    assert_int_equal(fedge_keys_file_remove(path, "dev-b", NULL, err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_reload_keys(&fx->agg), FEDGE_OK);
    assert_int_equal(fx->agg.keys.n, 4);
    assert_int_equal(fedge_agg_device_index(&fx->agg, "dev-a"), 0);
    assert_int_equal(fedge_agg_device_index(&fx->agg, "dev-b"), -1);
    assert_int_equal(fedge_agg_device_index(&fx->agg, "dev-c"), 2);
    assert_int_equal(fedge_agg_device_index(&fx->agg, "dev-d"), 3);
    assert_int_equal(q1(fx, "SELECT count(*) FROM devices WHERE id='dev-d' AND status='allowed'"), 1);
    char status[1024];
    assert_int_equal(fedge_agg_status_json(&fx->agg, status, sizeof status), FEDGE_OK);
    assert_non_null(strstr(status, "\"devices\":3,")); /* the tombstone is not a device */

    snapshot before = snap(fx);
    assert_int_equal(submit(fx, "dev-b", b, len_b, msg), 403);
    assert_string_equal(msg, "unknown device");
    assert_unchanged(fx, before);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-b'"), 0);
    assert_int_equal(submit(fx, "dev-a", a, len_a, msg), 204);
    assert_string_equal(msg, "accepted (duplicate of the update for round 1)");
    assert_int_equal(submit(fx, "dev-c", c, len_c, msg), 204);

    /* a malformed file: refused, the table as it was */
    FILE *f = fopen(path, "a");
    assert_non_null(f);
    fputs("dev-e eu 1234\n", f);
    fclose(f);
    assert_int_not_equal(fedge_agg_reload_keys(&fx->agg), FEDGE_OK);
    assert_int_equal(fx->agg.keys.n, 4);
    assert_int_equal(fedge_agg_device_index(&fx->agg, "dev-d"), 3);

    double t = fedge_now() + fx->cfg.round_timeout_s + 1;
    assert_int_equal(fedge_agg_tick(&fx->agg, t), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='closed' AND n_accepted=2"), 1);
    for (int i = 0; i < 50 && !(fx->agg.state == FEDGE_AGG_OPEN && fx->agg.round == 2); i++)
        assert_int_equal(fedge_agg_tick(&fx->agg, t += 1), FEDGE_OK);
    assert_int_equal(fx->agg.round, 2);
    assert_int_equal(q1(fx, "SELECT count(*) FROM round_participants WHERE round=2 AND device='dev-d'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM round_participants WHERE round=2 AND device='dev-b'"), 0);
    free(a);
    free(b);
    free(c);
}

/* Verifier's F3: updates accepted before DP was switched on (or before C
 * was lowered) are clipped to today's C at close, so the released sum is
 * what the noise and the ledger assume. */
static void test_dp_reclips_at_close(void **state)
{
    fixture *fx = *state;
    char msg[320], path[128];
    float *before = malloc(fx->agg.model.n_params * sizeof *before);
    assert_non_null(before);
    memcpy(before, fx->agg.model.params, fx->agg.model.n_params * sizeof *before);
    for (int i = 0; i < N_DEV; i++) {
        size_t len;
        update_spec u = good(fx, 500 + (uint64_t)i);
        u.fill = 0.5f; /* norm about 4.3, DP off: accepted as it is */
        uint8_t *b = make_update(fx, i, u, &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        assert_string_equal(msg, "accepted");
        free(b);
    }
    snprintf(path, sizeof path, "%s/dp.yaml", fx->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("version: 1\nname: dp-on\nprivacy:\n  enabled: true\n  clip_norm: 0.5\n"
          "  noise_multiplier: 0.01\n  epsilon_budget: 1e6\n  delta: 1e-5\n", f);
    fclose(f);
    snprintf(fx->agg.cfg.policy_file, sizeof fx->agg.cfg.policy_file, "%s", path);
    assert_int_equal(fedge_agg_reload_policy(&fx->agg), FEDGE_OK);
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='closed'"), 1);
    double moved = 0;
    for (size_t k = 0; k < fx->agg.model.n_params; k++)
        moved += (double)(fx->agg.model.params[k] - before[k]) * (fx->agg.model.params[k] - before[k]);
    moved = sqrt(moved);
    /* three deltas clipped to 0.5 over 3 selected: at most 0.5, plus noise */
    if (moved > 0.6)
        fail_msg("the model moved %.3f: the deltas were not clipped to the current C", moved);
    free(before);
}

/* Verifier's F7: with stragglers allowed (max_staleness 1), a device whose
 * update for round 1 was counted cannot have a second round-1 update
 * counted in round 2. */
static void test_training_counts_once(void **state)
{
    fixture *fx = *state;
    char msg[320], err[256] = "", path[128];
    fedge_agg_free(&fx->agg);
    snprintf(path, sizeof path, "%s/policy.yaml", fx->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("version: 1\nname: stragglers\nupdate:\n  max_staleness: 1\n", f);
    fclose(f);
    snprintf(fx->cfg.policy_file, sizeof fx->cfg.policy_file, "%s", path);
    assert_int_equal(fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err), FEDGE_OK);
    update_spec u1 = good(fx, 600); /* for round 1, on the initial model */
    size_t len2;
    update_spec u2 = good(fx, 601);
    u2.fill = 0.02f;
    uint8_t *second = make_update(fx, 0, u2, &len2); /* also for round 1 */
    size_t len;
    uint8_t *b = make_update(fx, 0, u1, &len);
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 204);
    free(b);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now() + fx->cfg.round_timeout_s + 1), FEDGE_OK);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now() + fx->cfg.round_timeout_s + 1), FEDGE_OK);
    assert_int_equal(fx->agg.round, 2);
    expect_refused(fx, "dev-a", second, len2, 409, "already counted");
    free(second);
}

/* Verifier's F6: a quorum smaller than min_updates does not close a round
 * on its first update (which would fail it); the round waits for enough. */
static void test_quorum_waits_for_min_updates(void **state)
{
    fixture *fx = *state;
    char msg[320];
    fx->agg.cfg.quorum = 0.25;
    fx->agg.cfg.min_updates = 2;
    size_t len;
    uint8_t *b = make_update(fx, 0, good(fx, 700), &len);
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 204);
    free(b);
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    b = make_update(fx, 1, good(fx, 701), &len);
    assert_int_equal(submit(fx, "dev-b", b, len, msg), 204);
    free(b);
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='closed' AND n_accepted=2"), 1);
}

static void expect_init_refused(fixture *fx, const char *needle)
{
    char err[512] = "";
    fedge_agg_free(&fx->agg);
    assert_int_equal(fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    if (!strstr(err, needle))
        fail_msg("start-up refused with '%s', expected '%s'", err, needle);
}

/* Verifier's F6 and F9: settings no round could satisfy are refused at start
 * and on reload; a reload that drops the policy's deadline goes back to the
 * configured one. */
static void test_impossible_settings_refused(void **state)
{
    fixture *fx = *state;
    char err[512] = "", path[128];
    fedge_agg_config good_cfg = fx->cfg;
    fx->cfg.min_updates = N_DEV + 1;
    expect_init_refused(fx, "min_updates 4 is more than the 3 devices");
    fx->cfg = good_cfg;
    fx->cfg.client_fraction = 0.34; /* 2 of 3 */
    fx->cfg.min_updates = 3;
    expect_init_refused(fx, "client_fraction 0.34 selects 2 of 3 devices, fewer than min_updates 3");
    fx->cfg = good_cfg;
    fx->cfg.max_update_bytes = 10;
    expect_init_refused(fx, "below the smallest update");
    fx->cfg = good_cfg;
    snprintf(path, sizeof path, "%s/k3.yaml", fx->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("version: 1\nname: k3\nround:\n  min_clients: 3\n  deadline_s: 30\n", f);
    fclose(f);
    fx->cfg.clients_per_round = 2;
    snprintf(fx->cfg.policy_file, sizeof fx->cfg.policy_file, "%s", path);
    expect_init_refused(fx, "min_clients 3 is more than clients_per_round 2");
    fx->cfg = good_cfg;
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("version: 1\nname: share\nround:\n  max_share: 0.2\n", f);
    fclose(f);
    snprintf(fx->cfg.policy_file, sizeof fx->cfg.policy_file, "%s", path);
    expect_init_refused(fx, "max_share 0.2 needs at least 5 updates a round, but at most 3");
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("version: 1\nname: k3\nround:\n  min_clients: 3\n  deadline_s: 30\n", f);
    fclose(f);
    fx->cfg = good_cfg;
    snprintf(fx->cfg.policy_file, sizeof fx->cfg.policy_file, "%s", path);
    assert_int_equal(fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err), FEDGE_OK);
    assert_true(fx->agg.cfg.round_timeout_s == 30);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("version: 1\nname: k9\nround:\n  min_clients: 9\n", f);
    fclose(f);
    assert_int_equal(fedge_agg_reload_policy(&fx->agg), FEDGE_ERR_CONFIG_VALUE); /* kept the old */
    assert_true(fx->agg.cfg.round_timeout_s == 30);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("version: 1\nname: nodeadline\n", f);
    fclose(f);
    assert_int_equal(fedge_agg_reload_policy(&fx->agg), FEDGE_OK);
    assert_true(fx->agg.cfg.round_timeout_s == good_cfg.round_timeout_s);
}


/* ---- strategies (docs/STRATEGIES.md) -------------------------------------- */

/* A fresh run in fx->dir/NAME with cfg: the fixture's aggregator is replaced. */
static void fresh_run(fixture *fx, const fedge_agg_config *cfg, const char *name)
{
    char err[256] = "", cmd[256];
    fedge_agg_free(&fx->agg);
    fx->cfg = *cfg;
    snprintf(cmd, sizeof cmd, "rm -rf '%s/%s' && mkdir '%s/%s'", fx->dir, name, fx->dir, name);
    assert_int_equal(system(cmd), 0);
    snprintf(fx->cfg.db, sizeof fx->cfg.db, "%s/%s/fedge.db", fx->dir, name);
    snprintf(fx->cfg.model_dir, sizeof fx->cfg.model_dir, "%s/%s/models", fx->dir, name);
    fx->cfg.rounds = 0;
    int ret = fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err);
    if (ret != FEDGE_OK)
        fail_msg("fedge_agg_init: %s", err);
}

/* One round: open, an update from every device (device i's delta is
 * fill_i = 0.01 (i + 1) (round) times the pattern, encodings fp32, fp16,
 * int8), close. */
static void strategy_round(fixture *fx, int equal_samples)
{
    static const fedge_encoding encs[N_DEV] = {FEDGE_ENC_FP32, FEDGE_ENC_FP16, FEDGE_ENC_INT8};
    char msg[320];
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    for (int i = 0; i < N_DEV; i++) {
        size_t len;
        update_spec u = good(fx, 100 * fx->agg.round + (uint64_t)i);
        u.fill = equal_samples ? 0.25f : 0.01f * (float)(i + 1) * (float)fx->agg.round;
        u.enc = equal_samples ? FEDGE_ENC_FP32 : encs[i];
        u.samples = equal_samples ? 10 : -1;
        u.control = fx->cfg.scaffold;
        u.honest_c = fx->agg.control;
        uint8_t *b = make_update(fx, i, u, &len);
        int code = submit(fx, DEVICES[i], b, len, msg);
        if (code != 204)
            fail_msg("round %u %s: %d %s", fx->agg.round, DEVICES[i], code, msg);
        free(b);
    }
    uint32_t r = fx->agg.round;
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM rounds WHERE id=%u AND status='closed'", r);
    assert_int_equal(q1(fx, sql), 1);
}

static fedge_agg_config strategy_cfg(fixture *fx, const char *opt)
{
    fedge_agg_config c = fx->cfg;
    snprintf(c.server_optimizer, sizeof c.server_optimizer, "%s", opt);
    c.server_lr = 0.5;
    return c;
}

/* The reader goes block by block through the stored bytes: a block of 7
 * coordinates (fewer than the model's 163, not dividing it, cutting the int8
 * scale block) gives the very bits of one block. */
static void test_block_reader_same_bits(void **state)
{
    fixture *fx = *state;
    char one_block[FEDGE_HASH_HEX_LEN];
    fedge_agg_config c = fx->cfg;
    fresh_run(fx, &c, "whole");
    for (int r = 0; r < 2; r++)
        strategy_round(fx, 0);
    memcpy(one_block, fx->agg.version_hex, sizeof one_block);
    c.aggregation_block = 7;
    fresh_run(fx, &c, "blocks");
    for (int r = 0; r < 2; r++)
        strategy_round(fx, 0);
    assert_string_equal(fx->agg.version_hex, one_block);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE strategy='fedavg'"), 2);
    assert_int_equal(q1(fx, "SELECT count(*) FROM strategy_state"), 0); /* sgd keeps no state */
}

/* Each server optimiser through the close: three devices send the same
 * delta d with the same weight, so the combined Δ is d, and two rounds must
 * move the model as two steps of the optimiser from the initial model. */
static void test_server_optimizers_on_close(void **state)
{
    fixture *fx = *state;
    const char *opts[] = {"sgd", "momentum", "adam", "yogi", "adagrad"};
    for (size_t k = 0; k < sizeof opts / sizeof opts[0]; k++) {
        fedge_agg_config c = strategy_cfg(fx, opts[k]);
        c.server_tau = 0.01;
        fresh_run(fx, &c, opts[k]);
        size_t n = fx->agg.model.n_params;
        float *want = malloc(n * sizeof *want), *d = malloc(n * sizeof *d);
        assert_non_null(want);
        assert_non_null(d);
        memcpy(want, fx->agg.model.params, n * sizeof *want);
        for (size_t i = 0; i < n; i++)
            d[i] = 0.25f * (float)((int)(i % 7) - 3) / 3.0f;
        fedge_server_opt o;
        fedge_server_opt_params p = {.lr = c.server_lr, .momentum = c.server_momentum, .beta1 = c.server_beta1,
                                     .beta2 = c.server_beta2, .tau = c.server_tau};
        snprintf(p.name, sizeof p.name, "%s", opts[k]);
        assert_int_equal(fedge_server_opt_init(&o, &p, n), FEDGE_OK);
        for (int r = 0; r < 2; r++) {
            strategy_round(fx, 1);
            fedge_server_opt_step(&o, want, d);
        }
        assert_memory_equal(fx->agg.model.params, want, n * sizeof *want);
        fedge_server_opt_free(&o);
        free(want);
        free(d);
        char desc[160], sql[320];
        assert_int_equal(fedge_server_opt_describe(&p, desc, sizeof desc), FEDGE_OK);
        snprintf(sql, sizeof sql, "SELECT count(*) FROM rounds WHERE strategy='%s'", desc);
        assert_int_equal(q1(fx, sql), 2);
        /* state kept for the current model only, its hash in an audited event */
        long long rows = strcmp(opts[k], "sgd") == 0 ? 0 : 1;
        assert_int_equal(q1(fx, "SELECT count(*) FROM strategy_state"), rows);
        assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='strategy_state' AND id IN"
                                " (SELECT CAST(row_key AS INTEGER) FROM audit WHERE tbl='events')"), 2 * rows);
    }
    assert_string_equal(fx->agg.strategy, "fedadagrad(lr=0.5,beta1=0.9,tau=0.01)");
}

/* FedAdam stopped after round 2 and started again gives the model of the
 * run that never stopped; without its saved state it would not (and says so). */
static void test_adam_restart_resumes_exactly(void **state)
{
    fixture *fx = *state;
    char straight[FEDGE_HASH_HEX_LEN];
    fedge_agg_config c = strategy_cfg(fx, "adam");
    c.server_lr = 0.01;
    fresh_run(fx, &c, "straight");
    for (int r = 0; r < 4; r++)
        strategy_round(fx, 0);
    memcpy(straight, fx->agg.version_hex, sizeof straight);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE strategy="
                            "'fedadam(lr=0.01,beta1=0.9,beta2=0.99,tau=0.001)'"), 4);

    fresh_run(fx, &c, "restarted");
    for (int r = 0; r < 2; r++)
        strategy_round(fx, 0);
    restart(fx);
    assert_int_equal(fx->agg.opt.steps, 2);
    for (int r = 0; r < 2; r++)
        strategy_round(fx, 0);
    assert_string_equal(fx->agg.version_hex, straight);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='strategy_state_reset'"), 0);

    /* the same with the state row gone: a fresh start, logged, another model */
    fresh_run(fx, &c, "lost");
    for (int r = 0; r < 2; r++)
        strategy_round(fx, 0);
    assert_int_equal(sqlite3_exec(fx->agg.db, "DELETE FROM strategy_state", NULL, NULL, NULL), SQLITE_OK);
    restart(fx);
    assert_int_equal(fx->agg.opt.steps, 0);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='strategy_state_reset'"), 1);
    for (int r = 0; r < 2; r++)
        strategy_round(fx, 0);
    assert_string_not_equal(fx->agg.version_hex, straight);

    /* another optimiser on the saved state: a fresh start, logged */
    fresh_run(fx, &c, "changed");
    strategy_round(fx, 0);
    fx->cfg.server_beta1 = 0.5;
    restart(fx);
    assert_int_equal(fx->agg.opt.steps, 0);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='strategy_state_reset'"
                            " AND detail LIKE '%beta1=0.9%beta1=0.5%'"), 1);

    /* a state row whose bytes were altered stops the start */
    fresh_run(fx, &c, "altered");
    strategy_round(fx, 0);
    assert_int_equal(sqlite3_exec(fx->agg.db, "UPDATE strategy_state SET state = zeroblob(length(state))", NULL, NULL,
                                  NULL),
                     SQLITE_OK);
    char err[256] = "";
    fedge_agg_free(&fx->agg);
    assert_int_equal(fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err), FEDGE_ERR_STRATEGY_STATE);
    assert_non_null(strstr(err, "does not match its sha256"));
    c = fx->cfg;
    fresh_run(fx, &c, "after"); /* teardown frees a live aggregator */
}

/* FedProx: μ goes to the edges in GET /round and into the strategy's name. */
static void test_fedprox_mu_in_round_info(void **state)
{
    fixture *fx = *state;
    char info[1024];
    assert_int_equal(fedge_agg_round_info(&fx->agg, "dev-a", fedge_now(), info, sizeof info), FEDGE_OK);
    assert_null(strstr(info, "prox_mu="));
    assert_null(strstr(info, "control="));
    fedge_agg_config c = fx->cfg;
    c.fedprox_mu = 0.01;
    fresh_run(fx, &c, "prox");
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fedge_agg_round_info(&fx->agg, "dev-a", fedge_now(), info, sizeof info), FEDGE_OK);
    assert_non_null(strstr(info, "\nprox_mu=0.01\n"));
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND strategy='fedprox(mu=0.01)'"), 1);
}

/* SCAFFOLD: the round names c's version, only the two-part form is taken,
 * and the close moves c by (|S|/N) mean(Δc), saved with the round. */
static void test_scaffold_server_side(void **state)
{
    fixture *fx = *state;
    char msg[320], info[1024], line[100];
    size_t len;
    /* a plain run refuses the SCAFFOLD form */
    update_spec u = good(fx, 50);
    u.control = 1;
    u.enc = FEDGE_ENC_FP16; /* within the plain run's size limit */
    uint8_t *b = make_update(fx, 0, u, &len);
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 400);
    assert_non_null(strstr(msg, "not SCAFFOLD"));
    free(b);

    fedge_agg_config c = fx->cfg;
    c.scaffold = 1;
    fresh_run(fx, &c, "scaffold");
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    size_t n = fx->agg.model.n_params;
    for (size_t k = 0; k < n; k++)
        assert_true(fx->agg.control[k] == 0.0f);
    char c0[FEDGE_HASH_HEX_LEN];
    memcpy(c0, fx->agg.control_version_hex, sizeof c0);
    assert_int_equal(fedge_agg_round_info(&fx->agg, "dev-a", fedge_now(), info, sizeof info), FEDGE_OK);
    snprintf(line, sizeof line, "\ncontrol=%s\n", c0);
    assert_non_null(strstr(info, line));
    /* c's model file has the model's spec and c as its parameters */
    fedge_model m;
    uint8_t v[FEDGE_HASH_LEN];
    char path[160];
    snprintf(path, sizeof path, "%s/control.fmdl", fx->dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(fx->agg.control_blob, 1, fx->agg.control_blob_len, f), fx->agg.control_blob_len);
    fclose(f);
    assert_int_equal(fedge_model_load(path, &m, v), FEDGE_OK);
    assert_int_equal(m.n_params, n);
    assert_memory_equal(v, fx->agg.control_version, FEDGE_HASH_LEN);
    fedge_model_free(&m);

    /* the plain form is refused in a SCAFFOLD run, nothing stored */
    snapshot before = snap(fx);
    b = make_update(fx, 0, good(fx, 60), &len);
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 400);
    assert_non_null(strstr(msg, "SCAFFOLD"));
    assert_unchanged(fx, before);
    free(b);

    /* the round closes with the two-part updates (fp32, the same honest
     * Δc from each): c = (3/3) mean(Δc_i) */
    float *expect = calloc(2 * n, sizeof *expect);
    assert_non_null(expect);
    for (size_t k = 0; k < n; k++)
        expect[k] = 0.25f * (float)((int)(k % 7) - 3) / 3.0f;
    honest_control(&fx->cfg, 1, 10, fx->agg.control, expect, n);
    strategy_round(fx, 1);
    assert_string_equal(fx->agg.strategy, "scaffold");
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND strategy='scaffold'"), 1);
    for (size_t k = 0; k < n; k++)
        assert_float_equal(fx->agg.control[k], expect[n + k], 1e-5 * (1 + fabs(expect[n + k])));
    free(expect);
    assert_string_not_equal(fx->agg.control_version_hex, c0);
    assert_int_equal(q1(fx, "SELECT count(*) FROM strategy_state"), 1);
    char c1[FEDGE_HASH_HEX_LEN];
    memcpy(c1, fx->agg.control_version_hex, sizeof c1);
    restart(fx);
    assert_string_equal(fx->agg.control_version_hex, c1);
}

/* The control-half check alone: honest halves (the edge's float arithmetic,
 * then each encoding's rounding, int8 nearest and stochastic, values from
 * 1e-9 to 1) always pass; one coordinate moved by a tenth of the half's
 * scale never does. */
static void test_scaffold_control_tolerance(void **state)
{
    (void)state;
    enum { N = 300 };
    static const struct { fedge_encoding enc; int stochastic; } encs[] = {
        {FEDGE_ENC_FP32, 0}, {FEDGE_ENC_FP16, 0}, {FEDGE_ENC_BF16, 0}, {FEDGE_ENC_INT8, 0}, {FEDGE_ENC_INT8, 1}};
    float *v = malloc(2 * N * sizeof *v), *got = malloc(2 * N * sizeof *got), *c = malloc(N * sizeof *c);
    uint8_t *buf = malloc(16 * N + 4096);
    assert_true(v && got && c && buf);
    fedge_rng rng, qrng;
    fedge_rng_seed(&rng, 7);
    fedge_rng_seed(&qrng, 8);
    char why[256];
    for (int trial = 0; trial < 2000; trial++) {
        size_t e = (size_t)trial % FEDGE_ARRAY_LEN(encs);
        double scale = pow(10.0, -9.0 + 9.0 * fedge_rng_uniform_d(&rng));
        double lr = 0.001 + 0.2 * fedge_rng_uniform_d(&rng), mom = trial % 2 ? 0.9 : 0.0;
        long epochs = 1 + trial % 3, batch = 1 + trial % 64;
        uint32_t samples = 1 + (uint32_t)(fedge_rng_uniform_d(&rng) * 500);
        for (size_t i = 0; i < N; i++) {
            v[i] = (float)(scale * fedge_rng_normal(&rng));
            c[i] = (float)(scale * fedge_rng_normal(&rng));
        }
        /* the edge: float, lr and momentum as their %g text */
        char t[32];
        snprintf(t, sizeof t, "%g", lr);
        float lr_f = strtof(t, NULL);
        snprintf(t, sizeof t, "%g", mom);
        float mom_f = strtof(t, NULL);
        float steps = (float)(epochs * (long)((samples + (uint32_t)batch - 1) / (uint32_t)batch));
        float inv = (1.0f - mom_f) / (steps * lr_f);
        for (size_t i = 0; i < N; i++)
            v[N + i] = -v[i] * inv - c[i];
        fedge_delta_header h = {.encoding = (uint8_t)encs[e].enc, .flags = FEDGE_DELTA_FLAG_CONTROL, .model_id = 1,
                                .round = 1, .n_samples = samples, .n_elems = 2 * N,
                                .block_size = encs[e].enc == FEDGE_ENC_INT8 ? 64 : 0};
        size_t len = 0;
        assert_int_equal(fedge_delta_encode(&h, v, encs[e].stochastic ? &qrng : NULL, buf, 16 * N + 4096, &len),
                         FEDGE_OK);
        fedge_delta_header hd;
        assert_int_equal(fedge_delta_decode(buf, len, 1, 2 * N, &hd, got), FEDGE_OK);
        int ok = 0;
        assert_int_equal(fedge_scaffold_control_check(&hd, got, c, N, lr, mom, epochs, batch, &ok, why, sizeof why),
                         FEDGE_OK);
        if (!ok)
            fail_msg("honest %s%s half refused (trial %d, scale %g): %s", fedge_encoding_name(encs[e].enc),
                     encs[e].stochastic ? " stochastic" : "", trial, scale, why);
        double top = 0;
        for (size_t i = 0; i < 2 * N; i++)
            top = fmax(top, fabs((double)got[i]));
        /* (a model coordinate in int8's block shared by both halves takes
         * the control half's scale: its error, times inv, may be larger) */
        size_t k = N + (size_t)trial % 256;
        /* (fp16's subnormal step is a floor: 2^-24, times inv in the model half) */
        double moved = 0.1 * top + (encs[e].enc == FEDGE_ENC_FP16 ? 4.0 * ((double)inv + 1) * 0x1p-24 : 0.0);
        got[k] += (float)moved;
        assert_int_equal(fedge_scaffold_control_check(&hd, got, c, N, lr, mom, epochs, batch, &ok, why, sizeof why),
                         FEDGE_OK);
        if (ok)
            fail_msg("%s half moved by %g at %zu passed (trial %d)", fedge_encoding_name(encs[e].enc), moved, k,
                     trial);
    }
    free(v);
    free(got);
    free(c);
    free(buf);
}

/* Turning SCAFFOLD on between restarts starts c at zero with an audited
 * strategy_state_reset event, as an optimiser change does; changing the
 * combiner alone keeps the optimiser's state. */
static void test_scaffold_switch_logged(void **state)
{
    fixture *fx = *state;
    fedge_agg_config c = strategy_cfg(fx, "adam");
    fresh_run(fx, &c, "switch");
    strategy_round(fx, 1);
    if (fedge_combiner_find("median")) {
        snprintf(fx->cfg.aggregation, sizeof fx->cfg.aggregation, "median");
        restart(fx);
        assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='strategy_state_reset'"), 0);
        assert_true(fx->agg.opt.steps == 1);
        snprintf(fx->cfg.aggregation, sizeof fx->cfg.aggregation, "mean");
    }
    fx->cfg.scaffold = 1;
    restart(fx);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='strategy_state_reset' AND detail LIKE"
                            " '%scaffold+fedadam%starts fresh (SCAFFOLD''s c at zero)'"
                            " AND id IN (SELECT CAST(row_key AS INTEGER) FROM audit WHERE tbl='events')"), 1);
    for (size_t k = 0; k < fx->agg.model.n_params; k++)
        assert_true(fx->agg.control[k] == 0.0f);
    /* off again, to a stateless strategy: c is dropped, and said once */
    strategy_round(fx, 1);
    fx->cfg.scaffold = 0;
    snprintf(fx->cfg.server_optimizer, sizeof fx->cfg.server_optimizer, "sgd");
    fx->cfg.server_lr = 1;
    restart(fx);
    restart(fx);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='strategy_state_reset' AND detail LIKE"
                            " '%not used: fedavg keeps none'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM strategy_state"), 0);
}

/* SCAFFOLD's control half must be the one its model half implies (option
 * II): anything else, a huge finite value or FLT_MAX included, is refused and
 * audited (rule scaffold_control) and never reaches c; honest halves pass in
 * every encoding; a late update is checked against the c of its own base
 * (the kept row), and a base whose c is gone is refused. */
static void scaffold_submit(fixture *fx, int dev, uint64_t counter, fedge_encoding enc, const float *c, float poison,
                            int want, const char *needle)
{
    char msg[320];
    size_t len;
    update_spec u = good(fx, counter);
    u.control = 1;
    u.enc = enc;
    u.honest_c = c;
    uint8_t *b;
    if (poison != 0) { /* an honest model half, any control half */
        u.honest_c = NULL;
        u.control_fill = poison;
    }
    b = make_update(fx, dev, u, &len);
    int code = submit(fx, DEVICES[dev], b, len, msg);
    if (code != want || (needle && !strstr(msg, needle)))
        fail_msg("dev %d counter %llu: %d %s (wanted %d %s)", dev, (unsigned long long)counter, code, msg, want,
                 needle ? needle : "");
    free(b);
}

static void test_scaffold_control_checked(void **state)
{
    fixture *fx = *state;
    char path[128];
    fedge_agg_config c = fx->cfg;
    c.scaffold = 1;
    snprintf(path, sizeof path, "%s/policy.yaml", fx->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("version: 1\nname: stragglers\nupdate:\n  max_staleness: 1\n", f);
    fclose(f);
    snprintf(c.policy_file, sizeof c.policy_file, "%s", path);
    fresh_run(fx, &c, "scaffold_check");
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    size_t n = fx->agg.model.n_params;
    float *c0 = malloc(n * sizeof *c0);
    assert_non_null(c0);
    memcpy(c0, fx->agg.control, n * sizeof *c0);

    /* round 1: the poisoned control halves are refused, audited */
    scaffold_submit(fx, 0, 10, FEDGE_ENC_FP32, NULL, 1e30f, 403, "scaffold_control");
    scaffold_submit(fx, 0, 11, FEDGE_ENC_FP32, NULL, 0.5f * FLT_MAX, 403, "scaffold_control");
    scaffold_submit(fx, 0, 12, FEDGE_ENC_FP32, NULL, 0.5f, 403, "not the one its model half implies");
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE decision='rejected' AND rule='scaffold_control'"
                            " AND id IN (SELECT CAST(row_key AS INTEGER) FROM audit WHERE tbl='updates')"), 3);
    /* honest halves pass in every encoding; dev-a's late one waits for round 2 */
    size_t late_len;
    update_spec lu = good(fx, 13);
    lu.control = 1;
    lu.honest_c = c0;
    uint8_t *late = make_update(fx, 0, lu, &late_len);
    scaffold_submit(fx, 1, 20, FEDGE_ENC_FP16, c0, 0, 204, NULL);
    scaffold_submit(fx, 2, 30, FEDGE_ENC_INT8, c0, 0, 204, NULL);
    double later = fedge_now() + fx->cfg.round_timeout_s + 1;
    assert_int_equal(fedge_agg_tick(&fx->agg, later), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT n_accepted FROM rounds WHERE id=1 AND status='closed'"), 2);
    assert_int_equal(fedge_agg_tick(&fx->agg, later), FEDGE_OK);
    assert_int_equal(fx->agg.round, 2);
    double c_max = 0;
    for (size_t k = 0; k < n; k++)
        c_max = fmax(c_max, fabs(fx->agg.control[k]));
    assert_true(c_max > 0 && c_max < 100); /* moved by the honest updates alone */

    /* round 2: the late update trained against c0 is checked against c0 (its
     * base's kept c), not against the current c */
    char msg[320];
    assert_int_equal(submit(fx, "dev-a", late, late_len, msg), 204);
    free(late);
    scaffold_submit(fx, 1, 21, FEDGE_ENC_FP32, fx->agg.control, 0, 204, NULL);
    /* a round-2 update that claims round 1's c is refused */
    scaffold_submit(fx, 2, 31, FEDGE_ENC_FP32, c0, 0, 403, "scaffold_control");

    /* a late update whose base's c is gone */
    lu = good(fx, 40);
    lu.control = 1;
    lu.honest_c = fx->agg.control;
    late = make_update(fx, 2, lu, &late_len);
    later += 2 * fx->cfg.round_timeout_s;
    assert_int_equal(fedge_agg_tick(&fx->agg, later), FEDGE_OK);
    assert_int_equal(fedge_agg_tick(&fx->agg, later), FEDGE_OK);
    assert_int_equal(fx->agg.round, 3);
    assert_true(q1(fx, "SELECT count(*) FROM strategy_state") >= 2); /* round 2's base kept */
    char sql[160];
    snprintf(sql, sizeof sql, "DELETE FROM strategy_state WHERE version<>'%s'", fx->agg.version_hex);
    assert_int_equal(sqlite3_exec(fx->agg.db, sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(submit(fx, "dev-c", late, late_len, msg), 403);
    assert_non_null(strstr(msg, "no longer kept"));
    free(late);
    free(c0);
}

/* DP-FedAvg's noise fits a clipped sum: a robust rule or SCAFFOLD with a DP
 * policy is refused at start and at reload. */
static void test_dp_refuses_robust_and_scaffold(void **state)
{
    fixture *fx = *state;
    char err[256] = "", path[128];
    snprintf(path, sizeof path, "%s/dp.yaml", fx->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("version: 1\nname: dp\nprivacy:\n  enabled: true\n  clip_norm: 0.5\n"
          "  noise_multiplier: 1.0\n  epsilon_budget: 60\n  delta: 1e-5\n", f);
    fclose(f);
    fedge_agg_config c = fx->cfg;
    fedge_agg_free(&fx->agg);
    c.scaffold = 1;
    snprintf(c.policy_file, sizeof c.policy_file, "%s", path);
    assert_int_equal(fedge_agg_init(&fx->agg, &c, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "scaffold = true"));
    c.scaffold = 0;
    snprintf(c.aggregation, sizeof c.aggregation, "mean");
    assert_int_equal(fedge_agg_init(&fx->agg, &c, err, sizeof err), FEDGE_OK);
    assert_string_equal(fx->agg.strategy, "dp-fedavg");
    fedge_agg_free(&fx->agg);
    /* the run without DP, then a reload that turns DP on */
    c.scaffold = 1;
    c.policy_file[0] = '\0';
    fx->cfg = c;
    restart(fx);
    snprintf(fx->agg.cfg.policy_file, sizeof fx->agg.cfg.policy_file, "%s", path);
    assert_int_not_equal(fedge_agg_reload_policy(&fx->agg), FEDGE_OK);
    assert_string_equal(fx->agg.strategy, "scaffold");
}

/* Round with device i's delta = fills[i] × the pattern, fp32, 10 samples each. */
static void round_with_fills(fixture *fx, const float fills[N_DEV])
{
    char msg[320];
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    for (int i = 0; i < N_DEV; i++) {
        size_t len;
        update_spec u = good(fx, 100 * fx->agg.round + (uint64_t)i);
        u.fill = fills[i];
        u.samples = 10;
        uint8_t *b = make_update(fx, i, u, &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        free(b);
    }
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
}

/* A robust rule's selection is an audited event naming who was left out,
 * the round counts only the updates used, and the model moves by the
 * selected delta. (Runs once "robust"'s krum is in the combiner table.) */
static void test_robust_selection_logged(void **state)
{
    fixture *fx = *state;
    if (!fedge_combiner_find("krum"))
        skip();
    fedge_agg_config c = fx->cfg;
    snprintf(c.aggregation, sizeof c.aggregation, "krum");
    c.byzantine_f = 0;
    fresh_run(fx, &c, "krum");
    assert_string_equal(fx->agg.strategy, "krum(f=0)");
    size_t n = fx->agg.model.n_params;
    float *want = malloc(n * sizeof *want);
    assert_non_null(want);
    memcpy(want, fx->agg.model.params, n * sizeof *want);
    /* dev-a and dev-b are each other's nearest (a tie, to the lower index);
     * dev-c is far off */
    const float fills[N_DEV] = {0.01f, 0.011f, 0.5f};
    round_with_fills(fx, fills);
    for (size_t i = 0; i < n; i++)
        want[i] += 1.0f * (0.01f * (float)((int)(i % 7) - 3) / 3.0f);
    assert_memory_equal(fx->agg.model.params, want, n * sizeof *want);
    free(want);
    assert_int_equal(q1(fx, "SELECT n_accepted FROM rounds WHERE id=1 AND status='closed'"
                            " AND strategy='krum(f=0)'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='aggregation_left_out' AND rule='krum'"
                            " AND round=1 AND detail LIKE '%used 1 of 3 updates; left out: dev-b, dev-c'"
                            " AND id IN (SELECT CAST(row_key AS INTEGER) FROM audit WHERE tbl='events')"), 1);
    /* the left-out updates are excluded rows (rule krum), audited again, so
     * the rows, the round's n_accepted and the lineage agree */
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round=1 AND decision<>'rejected'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round=1 AND decision='accepted' AND device='dev-a'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates u WHERE round=1 AND decision='rejected' AND rule='krum'"
                            " AND reason LIKE 'left out by the robust aggregation rule krum(f=0)%'"
                            " AND (SELECT count(*) FROM audit WHERE tbl='updates' AND row_key=CAST(u.id AS TEXT)) = 2"),
                     2);
}

/* A round with fewer updates than the rule needs fails with the rule's
 * reason, audited, and keeps the model. */
static void test_robust_too_few_fails_round(void **state)
{
    fixture *fx = *state;
    char msg[320], err[512] = "";
    if (!fedge_combiner_find("krum"))
        skip();
    /* a config no round could aggregate is refused at start: 3 devices
     * (clients_per_round, or the population with client_fraction) for krum
     * with f = 1, which needs 5, or multikrum averaging 4 */
    fedge_agg_config c = fx->cfg;
    snprintf(c.aggregation, sizeof c.aggregation, "krum");
    c.byzantine_f = 1;
    c.clients_per_round = 3;
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "2f + 3 = 5"));
    c.clients_per_round = 0;
    snprintf(c.mode, sizeof c.mode, "async"); /* a buffer of 4 can never feed krum(f=1) */
    c.async_buffer_k = 4;
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "async_buffer_k = 4: no step could aggregate"));
    snprintf(c.mode, sizeof c.mode, "sync");
    fx->cfg = c;
    expect_init_refused(fx, "at most 3 devices are selected a round: no round could aggregate (krum");
    snprintf(c.aggregation, sizeof c.aggregation, "multikrum");
    c.byzantine_f = 0;
    c.multikrum_m = 4;
    fx->cfg = c;
    expect_init_refused(fx, "multikrum_m = 4");

    /* krum with f = 0 needs all 3: a quorum of 0.5 does not close the round
     * at 2 updates (it would fail), the deadline does, and the round fails
     * with the combiner's reason */
    c.byzantine_f = 0;
    c.multikrum_m = 0;
    snprintf(c.aggregation, sizeof c.aggregation, "krum");
    c.quorum = 0.5;
    fresh_run(fx, &c, "krum-few");
    char model[FEDGE_HASH_HEX_LEN];
    memcpy(model, fx->agg.version_hex, sizeof model);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    for (int i = 0; i < 2; i++) {
        size_t len;
        uint8_t *b = make_update(fx, i, good(fx, 100 + (uint64_t)i), &len);
        assert_int_equal(submit(fx, DEVICES[i], b, len, msg), 204);
        free(b);
    }
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now() + fx->cfg.round_timeout_s + 1), FEDGE_OK);
    assert_string_equal(fx->agg.version_hex, model);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=1 AND status='failed'"
                            " AND reason LIKE 'aggregation: %krum%'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='round_rejected' AND rule='aggregation'"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_info, setup, teardown),
        cmocka_unit_test_setup_teardown(test_accept_and_duplicate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_inputs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_close_and_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_after_crash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_finish_and_no_round, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_update_within_staleness, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_update_refused_by_default, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoke_device, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dp_budget_refusal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_round_does_not_stop_training, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_without_aggregation_is_an_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sample_count_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unusable_stored_updates_are_excluded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overflowing_aggregate_fails_round, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_answer_in_every_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_from_another_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy_database_is_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_budget_rechecked_at_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_republished_version_stays_current, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_removed_from_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keys_reload_live, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dp_reclips_at_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_training_counts_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quorum_waits_for_min_updates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_impossible_settings_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_block_reader_same_bits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_optimizers_on_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_adam_restart_resumes_exactly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fedprox_mu_in_round_info, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scaffold_server_side, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scaffold_control_checked, setup, teardown),
        cmocka_unit_test(test_scaffold_control_tolerance),
        cmocka_unit_test_setup_teardown(test_scaffold_switch_logged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dp_refuses_robust_and_scaffold, setup, teardown),
        cmocka_unit_test_setup_teardown(test_robust_selection_logged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_robust_too_few_fails_round, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
