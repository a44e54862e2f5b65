/* Async mode (sched_async.c, FedBuff) driven directly: the staleness
 * discounts, the seeded admission rule, a full aggregation step, the
 * max_staleness refusal, a restart with a half-full buffer (the step then
 * aggregates exactly the K accepted updates), DP accounting at q = 1, the
 * participation cap, and that a device is never left selected=1 for an
 * admission already used up. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agg.h"
#include "common.h"
#include "config.h"
#include "governance.h"
#include "hash.h"
#include "ingest.h"
#include "log.h"
#include "scheduler.h"
#include "store.h"
#include "update.h"

#include "agg_fixture.h"

static long g_seed = 1; /* the aggregator's seed in start() */

#define N_DEV 4
static const char *DEVICES[N_DEV] = {"dev-a", "dev-b", "dev-c", "dev-d"};

#include "agg_updates.h"


/* An aggregator in async mode; policy: YAML text or NULL (the default). */
static fixture *start(long k, long concurrency, const char *policy)
{
    fixture *fx = calloc(1, sizeof *fx);
    char path[128];
    assert_non_null(fx);
    fixture_prepare(fx, "async");
    snprintf(fx->cfg.mode, sizeof fx->cfg.mode, "async");
    fx->cfg.rounds = 5;
    fx->cfg.seed = g_seed;
    fx->cfg.async_buffer_k = k;
    fx->cfg.async_concurrency = concurrency;
    if (policy) {
        snprintf(path, sizeof path, "%s/policy.yaml", fx->dir);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(policy, f);
        fclose(f);
        snprintf(fx->cfg.policy_file, sizeof fx->cfg.policy_file, "%s", path);
    }
    fixture_start(fx);
    assert_int_equal(fx->agg.round, 1);
    return fx;
}


/* A sealed update from device i; tweak lets a test break one thing. */



static int submit(fixture *fx, const char *dev, const uint8_t *b, size_t len, char *msg)
{
    int code = 0;
    assert_int_equal(fedge_agg_submit(&fx->agg, dev, b, len, fedge_now(), &code, msg, 320), FEDGE_OK);
    if (code == 204)
        assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    return code;
}

/* GET /round from device i; returns its selected= */
static int ask(fixture *fx, int i)
{
    char body[1024];
    assert_int_equal(fedge_agg_round_info(&fx->agg, DEVICES[i], fedge_now(), body, sizeof body), FEDGE_OK);
    const char *s = strstr(body, "selected=");
    assert_non_null(s);
    return s[9] == '1';
}

/* Devices in the mask ask, one tick admits. */
static void ask_and_tick(fixture *fx, unsigned mask)
{
    for (int i = 0; i < N_DEV; i++)
        if (mask & (1u << i))
            ask(fx, i);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
}

/* An update from device i trained on the current model and sent now. */
static int send_now(fixture *fx, int i, uint64_t counter, float fill, char *msg)
{
    size_t len;
    update_spec u = good(fx, counter);
    u.fill = fill;
    uint8_t *b = make_update(fx, i, u, &len);
    int code = submit(fx, DEVICES[i], b, len, msg);
    free(b);
    return code;
}

static void test_staleness_discounts(void **state)
{
    (void)state;
    fedge_agg_config c;
    fedge_agg_config_defaults(&c);
    assert_string_equal(c.mode, "sync");
    assert_string_equal(c.async_staleness, "polynomial");
    assert_true(fabs(fedge_sched_staleness_discount(&c, 0) - 1.0) < 1e-12);
    assert_true(fabs(fedge_sched_staleness_discount(&c, 3) - 0.5) < 1e-12); /* (1+3)^-0.5 */
    c.async_staleness_a = 1.0;
    assert_true(fabs(fedge_sched_staleness_discount(&c, 4) - 0.2) < 1e-12);
    snprintf(c.async_staleness, sizeof c.async_staleness, "constant");
    assert_true(fedge_sched_staleness_discount(&c, 1000) == 1.0);
    snprintf(c.async_staleness, sizeof c.async_staleness, "hinge");
    c.async_staleness_a = 0.5;
    c.async_staleness_b = 2;
    assert_true(fedge_sched_staleness_discount(&c, 2) == 1.0);
    assert_true(fabs(fedge_sched_staleness_discount(&c, 6) - 1.0 / 3.0) < 1e-12); /* 1/(0.5*4+1) */
    char err[128];
    assert_int_equal(fedge_agg_config_set(&c, "async_staleness", "linear", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_int_equal(fedge_agg_config_set(&c, "mode", "semi", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_int_equal(fedge_agg_config_set(&c, "mode", "async", err, sizeof err), FEDGE_OK);
}

static void test_rank_is_keyed(void **state)
{
    (void)state;
    uint64_t r1, r2, r3, r4;
    assert_int_equal(fedge_sched_async_rank(1, 1, "dev-a", &r1), FEDGE_OK);
    assert_int_equal(fedge_sched_async_rank(1, 1, "dev-a", &r2), FEDGE_OK);
    assert_true(r1 == r2);
    assert_int_equal(fedge_sched_async_rank(2, 1, "dev-a", &r3), FEDGE_OK);
    assert_int_equal(fedge_sched_async_rank(1, 2, "dev-a", &r4), FEDGE_OK);
    assert_true(r1 != r3 && r1 != r4);
    /* SHA-256(01 00.. | 01 00 00 00 | "dev-a"), first 8 bytes: recomputed
     * independently with Python's hashlib */
    uint8_t msg[17] = {1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 'd', 'e', 'v', '-', 'a'};
    uint8_t h[FEDGE_HASH_LEN];
    assert_int_equal(fedge_sha256(msg, sizeof msg, h), FEDGE_OK);
    uint64_t want = 0;
    for (int i = 0; i < 8; i++)
        want = (want << 8) | h[i];
    assert_true(r1 == want);
}

/* Two slots, four devices asking in either order: the two lowest ranks are
 * admitted, logged, and see selected=1; the others wait. */
static void admission_order(int reverse, char winners[2][16])
{
    fixture *fx = start(4, 2, NULL);
    for (int k = 0; k < N_DEV; k++)
        assert_int_equal(ask(fx, reverse ? N_DEV - 1 - k : k), 0);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.in_flight, 2);
    assert_int_equal(q1(fx, "SELECT count(*) FROM round_participants WHERE round=1"), 2);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='async_admitted' AND round=1"), 2);
    uint64_t rank[N_DEV];
    for (int i = 0; i < N_DEV; i++)
        assert_int_equal(fedge_sched_async_rank((uint64_t)fx->cfg.seed, 1, DEVICES[i], &rank[i]), FEDGE_OK);
    int n = 0;
    for (int i = 0; i < N_DEV; i++) {
        int lower = 0;
        for (int j = 0; j < N_DEV; j++)
            lower += rank[j] < rank[i];
        assert_int_equal(ask(fx, i), lower < 2);
        if (lower < 2)
            snprintf(winners[n++], 16, "%s", DEVICES[i]);
    }
    assert_int_equal(n, 2);
    fixture_stop(fx);
}

/* Over a few seeds the winners change (the rank decides, not the device's
 * place in the keys file) and never depend on the order of asking. */
static void test_admission_rule(void **state)
{
    (void)state;
    int differ = 0;
    for (g_seed = 1; g_seed <= 4; g_seed++) {
        char w1[2][16], w2[2][16];
        admission_order(0, w1);
        admission_order(1, w2);
        assert_string_equal(w1[0], w2[0]);
        assert_string_equal(w1[1], w2[1]);
        differ += strcmp(w1[0], "dev-a") != 0 || strcmp(w1[1], "dev-b") != 0;
    }
    g_seed = 1;
    assert_true(differ > 0);
}

/* A device that was not admitted is refused; two accepted updates fill a
 * buffer of 2: step 1 closes with a new version whose lineage and rounds
 * row name them, and step 2 opens. */
static void test_full_step(void **state)
{
    (void)state;
    char msg[320];
    fixture *fx = start(2, 4, NULL);
    char v0[FEDGE_HASH_HEX_LEN];
    memcpy(v0, fx->agg.version_hex, sizeof v0);
    assert_int_equal(send_now(fx, 0, 10, 0.01f, msg), 403);
    assert_int_equal(fedge_device_set_status(fx->agg.db, "dev-d", "suspended", "test"), FEDGE_OK);
    ask_and_tick(fx, 0xf); /* a suspended device asking is not admitted */
    assert_int_equal(fx->agg.in_flight, 3);
    assert_int_equal(fx->agg.adm_step[3], 0);
    assert_int_equal(send_now(fx, 0, 11, 0.01f, msg), 204);
    assert_int_equal(fx->agg.in_flight, 2);
    assert_int_equal(send_now(fx, 0, 12, 0.01f, msg), 409); /* one update per admission */
    assert_int_equal(fx->agg.round, 1);
    assert_int_equal(send_now(fx, 1, 13, 0.02f, msg), 204);
    assert_int_equal(fx->agg.round, 2);
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
    assert_string_not_equal(fx->agg.version_hex, v0);
    assert_int_equal(q1(fx, "SELECT n_accepted FROM rounds WHERE id=1 AND status='closed'"), 2);
    assert_int_equal(q1(fx, "SELECT count(*) FROM round_participants WHERE round=1"), 3);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE id=2 AND status='open'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM models m JOIN rounds r ON r.new_version=m.version"
                            " WHERE r.id=1 AND m.kind='aggregate' AND m.round=1 AND m.parent=r.base_version"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round=1 AND decision='accepted'"), 2);
    /* dev-c, admitted in step 1, still holds its slot and may send */
    assert_int_equal(ask(fx, 2), 1);
    assert_int_equal(send_now(fx, 2, 14, 0.01f, msg), 204);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round=2 AND device='dev-c'"), 1);
    fixture_stop(fx);
}

/* An update trained on a version that is more than max_staleness versions
 * old is refused by the policy's staleness rule: an audited rejected row. */
static void stale_update(unsigned max_staleness, int want_code)
{
    char msg[320], policy[128];
    snprintf(policy, sizeof policy, "version: 1\nname: async\nupdate:\n  max_staleness: %u\n", max_staleness);
    fixture *fx = start(1, 4, policy);
    ask_and_tick(fx, 0x3);
    size_t len;
    uint8_t *old = make_update(fx, 0, good(fx, 20), &len); /* on version 0, read in step 1 */
    assert_int_equal(send_now(fx, 1, 21, 0.01f, msg), 204);  /* step 1 closes: version 1 */
    assert_int_equal(fx->agg.round, 2);
    assert_int_equal(submit(fx, DEVICES[0], old, len, msg), want_code);
    free(old);
    if (want_code == 403) {
        assert_non_null(strstr(msg, "stale"));
        assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-a' AND decision='rejected'"
                                " AND rule='staleness'"),
                         1);
        assert_int_equal(q1(fx, "SELECT count(*) FROM audit a JOIN updates u ON a.tbl='updates'"
                                " AND a.row_key=CAST(u.id AS TEXT) WHERE u.device='dev-a'"),
                         1);
    } else {
        /* accepted into step 2 (K = 1: it closes it), discounted by (1+1)^-0.5 */
        assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-a' AND round=2"
                                " AND decision='accepted'"),
                         1);
        assert_int_equal(fx->agg.round, 3);
    }
    fixture_stop(fx);
}

static void test_max_staleness_refused(void **state)
{
    (void)state;
    stale_update(0, 403);
    stale_update(1, 204);
}

/* K = 3: two updates accepted, the daemon "crashes" (freed without a
 * close), restarts, and the third update closes the step with exactly the
 * three: the same model as a run without the crash. */
static void buffered_run(int crash, char out_version[FEDGE_HASH_HEX_LEN])
{
    char msg[320], err[256] = "";
    fixture *fx = start(3, 4, NULL);
    ask_and_tick(fx, 0x7);
    assert_int_equal(send_now(fx, 0, 30, 0.01f, msg), 204);
    assert_int_equal(send_now(fx, 1, 31, 0.03f, msg), 204);
    size_t len;
    uint8_t *third = make_update(fx, 2, good(fx, 32), &len);
    if (crash) {
        fedge_agg_free(&fx->agg);
        if (fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err) != FEDGE_OK)
            fail_msg("restart: %s", err);
        assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
        assert_int_equal(fx->agg.round, 1);
        assert_int_equal(fx->agg.n_accepted, 2); /* the buffer */
        assert_int_equal(fx->agg.in_flight, 1);   /* dev-c's slot */
        assert_int_equal(ask(fx, 2), 1);
        assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
        /* an update already in the buffer is not counted twice */
        assert_int_equal(send_now(fx, 0, 33, 0.01f, msg), 409);
    }
    assert_int_equal(submit(fx, DEVICES[2], third, len, msg), 204);
    free(third);
    assert_int_equal(fx->agg.round, 2);
    assert_int_equal(q1(fx, "SELECT n_accepted FROM rounds WHERE id=1 AND status='closed'"), 3);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE round=1 AND decision<>'rejected'"), 3);
    memcpy(out_version, fx->agg.version_hex, FEDGE_HASH_HEX_LEN);
    fixture_stop(fx);
}

static void test_restart_half_full_buffer(void **state)
{
    (void)state;
    char straight[FEDGE_HASH_HEX_LEN], crashed[FEDGE_HASH_HEX_LEN];
    buffered_run(0, straight);
    buffered_run(1, crashed);
    assert_string_equal(straight, crashed);
}

/* DP in async mode: each step is charged at q = 1 in the ledger, and a
 * device capped at one participation is not admitted again. */
static void test_dp_q1_and_participation_cap(void **state)
{
    (void)state;
    char msg[320];
    fixture *fx = start(1, 4,
                        "version: 1\nname: async-dp\nprivacy:\n  enabled: true\n  clip_norm: 1.0\n"
                        "  noise_multiplier: 1.0\n  epsilon_budget: 1000\n  delta: 1.0e-5\n"
                        "  max_participations: 1\n");
    ask_and_tick(fx, 0x1);
    assert_int_equal(send_now(fx, 0, 40, 0.01f, msg), 204);
    assert_int_equal(fx->agg.round, 2);
    assert_int_equal(q1(fx, "SELECT count(*) FROM dp_ledger WHERE round=1 AND q=1.0"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM audit WHERE tbl='dp_ledger'"), 1);
    ask_and_tick(fx, 0x3); /* dev-a has used its one participation */
    assert_int_equal(ask(fx, 0), 0);
    assert_int_equal(ask(fx, 1), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM round_participants WHERE device='dev-a'"), 1);
    fixture_stop(fx);
}

/* async_max_versions = 1: while a device trained on version 1 is in flight,
 * nobody is admitted to train on version 2; its slot freed (by its update
 * or by async_slot_timeout_s), admission resumes. */
static void test_max_versions_and_slot_timeout(void **state)
{
    (void)state;
    char msg[320];
    fixture *fx = start(1, 4, NULL);
    fx->agg.cfg.async_max_versions = 1;
    fx->agg.cfg.async_slot_timeout_s = 30;
    ask_and_tick(fx, 0x3);
    assert_int_equal(fx->agg.in_flight, 2);
    assert_int_equal(send_now(fx, 1, 50, 0.01f, msg), 204); /* step 1 closes */
    assert_int_equal(fx->agg.round, 2);
    ask_and_tick(fx, 0x4);
    assert_int_equal(ask(fx, 2), 0); /* dev-a still holds a step-1 slot */
    assert_int_equal(fx->agg.in_flight, 1);
    /* dev-a never answers: 30 s later its slot is freed and dev-c gets one */
    double later = fedge_now() + 31;
    assert_int_equal(fedge_agg_round_info(&fx->agg, DEVICES[2], later, msg, sizeof msg), FEDGE_OK);
    assert_int_equal(fedge_agg_tick(&fx->agg, later), FEDGE_OK);
    assert_int_equal(fx->agg.adm_step[0], 0);
    assert_int_equal(fx->agg.adm_step[2], 2);
    assert_int_equal(fx->agg.in_flight, 1);
    fixture_stop(fx);
}

/* Slots held: the count kept and the adm_step array agree. */
static size_t slots_held(const fixture *fx)
{
    size_t n = 0;
    for (size_t i = 0; i < fx->agg.keys.n; i++)
        n += fx->agg.adm_step[i] != 0;
    return n;
}

/* The benchmark's fault (issue 9): dev-c, admitted in step 1, has its update
 * counted in step 2 (the buffer filled meanwhile). Asking again, it must
 * not be admitted in step 2 (any admission there is used up by that update:
 * it would read selected=1 and get 4.09 in every later step until its slot
 * timed out); in step 3 it is admitted and its update accepted. */
static void test_late_update_then_ask(void **state)
{
    (void)state;
    char msg[320];
    fixture *fx = start(2, 4, "version: 1\nname: async\nupdate:\n  max_staleness: 4\n");
    ask_and_tick(fx, 0x7);
    size_t len;
    uint8_t *late = make_update(fx, 2, good(fx, 60), &len); /* dev-c trains on step 1's model */
    assert_int_equal(send_now(fx, 0, 61, 0.01f, msg), 204);
    assert_int_equal(send_now(fx, 1, 62, 0.01f, msg), 204); /* step 1 closes */
    assert_int_equal(fx->agg.round, 2);
    assert_int_equal(submit(fx, DEVICES[2], late, len, msg), 204);
    free(late);
    assert_int_equal(fx->agg.adm_step[2], 0);
    for (int k = 0; k < 3; k++) /* it keeps asking (as an observer is re-marked) */
        ask_and_tick(fx, 0x4);
    assert_int_equal(ask(fx, 2), 0);
    assert_int_equal(q1(fx, "SELECT count(*) FROM round_participants WHERE round=2 AND device='dev-c'"), 0);
    ask_and_tick(fx, 0x1);
    assert_int_equal(ask(fx, 0), 1);
    assert_int_equal(send_now(fx, 0, 63, 0.01f, msg), 204); /* step 2 closes */
    assert_int_equal(fx->agg.round, 3);
    ask_and_tick(fx, 0x4);
    assert_int_equal(ask(fx, 2), 1);
    assert_int_equal(send_now(fx, 2, 64, 0.01f, msg), 204);
    assert_int_equal(fx->agg.in_flight, slots_held(fx));
    fixture_stop(fx);
}

/* Should a slot ever outlive its admission (the state the fault above left),
 * the 4.09 that says so frees it at once: selected=0, the slot free. */
static void test_used_admission_frees_slot(void **state)
{
    (void)state;
    char msg[320];
    fixture *fx = start(2, 4, NULL);
    ask_and_tick(fx, 0x3);
    assert_int_equal(send_now(fx, 0, 70, 0.01f, msg), 204);
    assert_int_equal(fx->agg.in_flight, 1);
    fx->agg.adm_step[0] = 1; /* as if the slot had not been freed */
    fx->agg.in_flight++;
    assert_int_equal(ask(fx, 0), 1);
    assert_int_equal(send_now(fx, 0, 71, 0.01f, msg), 409); /* its update is in this step's buffer */
    assert_int_equal(fx->agg.adm_step[0], 0);
    assert_int_equal(fx->agg.in_flight, 1);
    assert_int_equal(ask(fx, 0), 0);
    assert_int_equal(send_now(fx, 1, 72, 0.01f, msg), 204); /* step 1 closes */
    assert_int_equal(fx->agg.round, 2);
    fx->agg.adm_step[0] = 1;
    fx->agg.in_flight++;
    assert_int_equal(send_now(fx, 0, 73, 0.01f, msg), 409); /* step 1's admission was counted */
    assert_non_null(strstr(msg, "already counted"));
    assert_int_equal(fx->agg.adm_step[0], 0);
    assert_int_equal(fx->agg.in_flight, 0);
    assert_int_equal(ask(fx, 0), 0);
    fixture_stop(fx);
}

/* An admission and a freed slot change that device's view alone: it is
 * listed (once) for the server to notify just it, and round_epoch, which
 * notifies every observer, does not move (issue 9: O(1) per admission). */
static void test_view_changes_are_per_device(void **state)
{
    (void)state;
    char msg[320];
    fixture *fx = start(2, 4, NULL);
    uint64_t epoch = fx->agg.round_epoch;
    fx->agg.n_view_changed = 0;
    memset(fx->agg.view_changed_mark, 0, fx->agg.keys.n);
    ask_and_tick(fx, 0x3);
    ask_and_tick(fx, 0x3); /* asking again changes nothing */
    assert_int_equal(fx->agg.n_view_changed, 2);
    assert_true((fx->agg.view_changed[0] == 0 && fx->agg.view_changed[1] == 1) ||
                (fx->agg.view_changed[0] == 1 && fx->agg.view_changed[1] == 0));
    fx->agg.n_view_changed = 0;
    memset(fx->agg.view_changed_mark, 0, fx->agg.keys.n);
    assert_int_equal(send_now(fx, 0, 80, 0.01f, msg), 204);
    assert_int_equal(fx->agg.n_view_changed, 1);
    assert_int_equal(fx->agg.view_changed[0], 0);
    assert_true(fx->agg.round_epoch == epoch);
    fixture_stop(fx);
}

/* A device whose session ended (the server calls `left`) frees its slot at
 * once and no longer counts as asking; its admission stays, so the update
 * it trained is still accepted if it comes back with it. */
static void test_left_frees_slot(void **state)
{
    (void)state;
    char msg[320];
    fixture *fx = start(2, 1, NULL);
    ask_and_tick(fx, 0x3); /* one slot: one of the two is admitted */
    int in = fx->agg.adm_step[0] ? 0 : 1, out = 1 - in;
    assert_int_equal(fx->agg.in_flight, 1);
    assert_non_null(fx->agg.sched->left);
    fx->agg.sched->left(&fx->agg, in);
    assert_int_equal(fx->agg.adm_step[in], 0);
    assert_int_equal(fx->agg.in_flight, 0);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK); /* the other one, still asking, gets it */
    assert_int_equal(fx->agg.adm_step[in], 0);
    assert_int_equal(fx->agg.adm_step[out], 1);
    assert_int_equal(send_now(fx, in, 90, 0.01f, msg), 204);
    fixture_stop(fx);
}

/* A group commit (ingest worker pool) holding more updates than the buffer
 * has room for: exactly K go into the step; the others get 5.03 (retry,
 * nothing stored, slots kept) and go into the next step. */
static void test_group_commit_stops_at_k(void **state)
{
    (void)state;
    char msg[320];
    fixture *fx = start(2, 4, "version: 1\nname: async\nupdate:\n  max_staleness: 4\n");
    ask_and_tick(fx, 0x7);
    assert_int_equal(send_now(fx, 0, 100, 0.01f, msg), 204); /* buffer 1 of 2 */
    fedge_ingest_snapshot snap[2];
    fedge_ingest_frame f[2];
    fedge_ingest_item it[2];
    uint8_t *b[2];
    memset(f, 0, sizeof f);
    memset(it, 0, sizeof it);
    for (int k = 0; k < 2; k++) {
        size_t len;
        b[k] = make_update(fx, 1 + k, good(fx, 101 + (uint64_t)k), &len);
        assert_int_equal(fedge_ingest_snapshot_take(&fx->agg, 1 + k, &snap[k]), FEDGE_OK);
        assert_int_equal(fedge_ingest_open(&snap[k], b[k], len, &f[k]), FEDGE_OK);
        it[k].device = 1 + k;
        it[k].snap = &snap[k];
        it[k].frame = &f[k];
    }
    assert_int_equal(fedge_ingest_commit_group(&fx->agg, it, 2, NULL), FEDGE_OK);
    assert_int_equal(it[0].code, 204);
    assert_int_equal(it[1].code, 503);
    assert_int_equal(fx->agg.n_accepted, 2);
    assert_int_equal(fedge_agg_maybe_close(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.round, 2);
    assert_int_equal(q1(fx, "SELECT n_accepted FROM rounds WHERE id=1"), 2);
    assert_int_equal(fx->agg.adm_step[3 - 1], 1); /* dev-c keeps its slot */
    size_t len;
    uint8_t *again = make_update(fx, 2, good(fx, 103), &len);
    assert_int_equal(submit(fx, DEVICES[2], again, len, msg), 204);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-c' AND round=2"), 1);
    free(again);
    for (int k = 0; k < 2; k++) {
        fedge_ingest_frame_free(&f[k]);
        free(b[k]);
    }
    fixture_stop(fx);
}

/* A keys reload in async mode: the removed device's slot is freed, the
 * other slot holder keeps its slot, and a device added by the reload can
 * ask and be admitted to the freed slot. */
static void test_keys_reload_frees_and_admits(void **state)
{
    (void)state;
    fixture *fx = start(3, 2, NULL);
    char path[128], err[256] = "", msg[320], body[1024];
    static const char *const five[] = {"dev-a", "dev-b", "dev-c", "dev-d", "dev-e"};
    ask_and_tick(fx, 0x3);
    assert_int_equal(fx->agg.in_flight, 2);
    assert_true(fx->agg.adm_step[0] && fx->agg.adm_step[1]);
    size_t len;
    uint8_t *b = make_update(fx, 0, good(fx, 700), &len);

    snprintf(path, sizeof path, "%s/keys", fx->dir);
    fixture_write_keys(path, five, 5);
    assert_int_equal(fedge_keys_file_remove(path, "dev-a", NULL, err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_reload_keys(&fx->agg), FEDGE_OK);
    assert_int_equal(fx->agg.keys.n, 5);
    assert_int_equal(fx->agg.in_flight, 1);
    assert_int_equal(fx->agg.adm_step[0], 0);
    assert_true(fx->agg.adm_step[1] != 0);
    assert_int_equal(submit(fx, "dev-a", b, len, msg), 403);
    assert_string_equal(msg, "unknown device");

    assert_int_equal(fedge_agg_round_info(&fx->agg, "dev-e", fedge_now(), body, sizeof body), FEDGE_OK);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fedge_agg_round_info(&fx->agg, "dev-e", fedge_now(), body, sizeof body), FEDGE_OK);
    assert_non_null(strstr(body, "selected=1"));
    assert_true(fx->agg.adm_step[4] != 0);
    assert_int_equal(fx->agg.in_flight, 2);
    free(b);
    fixture_stop(fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_staleness_discounts),
        cmocka_unit_test(test_rank_is_keyed),
        cmocka_unit_test(test_admission_rule),
        cmocka_unit_test(test_full_step),
        cmocka_unit_test(test_max_staleness_refused),
        cmocka_unit_test(test_restart_half_full_buffer),
        cmocka_unit_test(test_dp_q1_and_participation_cap),
        cmocka_unit_test(test_max_versions_and_slot_timeout),
        cmocka_unit_test(test_late_update_then_ask),
        cmocka_unit_test(test_used_admission_frees_slot),
        cmocka_unit_test(test_view_changes_are_per_device),
        cmocka_unit_test(test_left_frees_slot),
        cmocka_unit_test(test_group_commit_stops_at_k),
        cmocka_unit_test(test_keys_reload_frees_and_admits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
