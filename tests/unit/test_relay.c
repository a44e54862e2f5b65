/* The aggregation tree's arithmetic and formats without the network: a
 * relay's partial sum (the sample-weighted mean of its accepted updates and
 * their total samples), a root's mean over partials (equal to the flat mean
 * over all edges) with the relay heads it logs, the partial-sum delta form
 * (FEDGE_DELTA_FLAG_PARTIAL and its head trailer), and the relay
 * configurations refused at start-up. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agg.h"
#include "close.h"
#include "common.h"
#include "config.h"
#include "delta.h"
#include "hash.h"
#include "log.h"
#include "relay.h"
#include "store.h"
#include "update.h"

#include "agg_fixture.h"

#define N_DEV 3
static const char *DEVICES[N_DEV] = {"dev-a", "dev-b", "dev-c"};

#include "agg_updates.h"

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    fixture_prepare(fx, "relay");
    fx->cfg.rounds = 3;
    fx->cfg.round_timeout_s = 600;
    fx->cfg.client_fraction = 1.0;
    fx->cfg.quorum = 1.0;
    fixture_start(fx);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture_stop(*state);
    return 0;
}

static int submit(fixture *fx, int dev, const uint8_t *b, size_t len)
{
    int code = 0;
    char msg[320];
    assert_int_equal(fedge_agg_submit(&fx->agg, DEVICES[dev], b, len, fedge_now(), &code, msg, sizeof msg), FEDGE_OK);
    if (code != 204)
        fail_msg("%s: %d %s", DEVICES[dev], code, msg);
    return code;
}

/* make_update's delta element k for fill f */
static float pattern(float f, size_t k)
{
    return f * (float)((int)(k % 7) - 3) / 3.0f;
}

/* A relay's close: mean = sum n_i d_i / sum n_i, n_samples = sum n_i, the
 * model untouched (the relay adopts none of its own). */
static void test_partial_sum(void **state)
{
    fixture *fx = *state;
    static const float fills[N_DEV] = {0.01f, 0.02f, -0.03f};
    static const int64_t samples[N_DEV] = {10, 20, 70};
    size_t n = fx->agg.model.n_params;
    for (int i = 0; i < N_DEV; i++) {
        update_spec u = good(fx, 100 + (uint64_t)i);
        u.fill = fills[i];
        u.samples = samples[i];
        size_t len;
        uint8_t *b = make_update(fx, i, u, &len);
        submit(fx, i, b, len);
        free(b);
    }
    float *before = malloc(n * sizeof *before), *mean = malloc(n * sizeof *mean);
    assert_non_null(before);
    assert_non_null(mean);
    memcpy(before, fx->agg.model.params, n * sizeof *before);
    char version[FEDGE_HASH_HEX_LEN];
    memcpy(version, fx->agg.version_hex, sizeof version);

    fedge_close_result res;
    fedge_close_partial p = {.mean = mean};
    assert_int_equal(fedge_store_begin(fx->agg.db), FEDGE_OK);
    assert_int_equal(fedge_close_partial_sum(&fx->agg, &res, &p), FEDGE_OK);
    fedge_store_rollback(fx->agg.db);
    assert_true(res.ok);
    assert_int_equal(res.n_used, N_DEV);
    assert_int_equal(p.n_samples, 100);
    for (size_t k = 0; k < n; k++) {
        double want = 0;
        for (int i = 0; i < N_DEV; i++)
            want += (double)samples[i] * pattern(fills[i], k);
        want /= 100.0;
        assert_true(fabs(mean[k] - want) <= 1e-7 + 1e-6 * fabs(want));
    }
    assert_memory_equal(before, fx->agg.model.params, n * sizeof *before);
    assert_string_equal(version, fx->agg.version_hex);

    /* The tree's identity: two relays ({a, b} and {c}), each sending its
     * partial with its total, give the root the flat mean over all three. */
    double n_ab = (double)(samples[0] + samples[1]), n_c = (double)samples[2];
    for (size_t k = 0; k < n; k++) {
        double m_ab = ((double)samples[0] * pattern(fills[0], k) + (double)samples[1] * pattern(fills[1], k)) / n_ab;
        double m_c = pattern(fills[2], k);
        double tree = (n_ab * (double)(float)m_ab + n_c * (double)(float)m_c) / (n_ab + n_c);
        assert_true(fabs(tree - mean[k]) <= 1e-7 + 1e-6 * fabs(mean[k]));
    }
    free(before);
    free(mean);
}

/* A relay's close refuses DP: the policy may have turned it on after start. */
static void test_partial_sum_mean_only(void **state)
{
    fixture *fx = *state;
    size_t len;
    uint8_t *b = make_update(fx, 0, good(fx, 7), &len);
    submit(fx, 0, b, len);
    free(b);
    snprintf(fx->agg.cfg.aggregation, sizeof fx->agg.cfg.aggregation, "median");
    float *mean = malloc(fx->agg.model.n_params * sizeof *mean);
    assert_non_null(mean);
    fedge_close_result res;
    fedge_close_partial p = {.mean = mean};
    assert_int_equal(fedge_store_begin(fx->agg.db), FEDGE_OK);
    assert_int_equal(fedge_close_partial_sum(&fx->agg, &res, &p), FEDGE_OK);
    fedge_store_rollback(fx->agg.db);
    assert_false(res.ok);
    assert_non_null(strstr(res.reason, "aggregation is not mean"));
    free(mean);
}

/* A partial sum as a relay seals it: fp32, the flag, the head trailer. */
static uint8_t *seal_partial(fixture *fx, int dev, uint64_t counter, uint32_t n_samples, const float *m,
                             const uint8_t head[FEDGE_HASH_LEN], size_t *len)
{
    fedge_delta_header h = {
        .encoding = FEDGE_ENC_FP32,
        .flags = FEDGE_DELTA_FLAG_PARTIAL,
        .model_id = fx->agg.model_id,
        .round = fx->agg.round,
        .n_samples = n_samples,
        .n_elems = (uint32_t)fx->agg.model.n_params,
    };
    memcpy(h.base_version, fx->agg.version, FEDGE_HASH_LEN);
    memcpy(h.partial_head, head, FEDGE_HASH_LEN);
    uint8_t *out = NULL;
    assert_int_equal(fedge_update_seal(&fx->keys[dev], counter, fx->agg.run_id, &h, m, NULL, &out, len), FEDGE_OK);
    return out;
}

/* The root weighs each partial by its samples (the flat mean), keeps the
 * trailer in the stored delta and logs each relay's head at close. */
static void test_root_takes_partials(void **state)
{
    fixture *fx = *state;
    size_t n = fx->agg.model.n_params;
    float *m1 = malloc(n * sizeof *m1), *m2 = malloc(n * sizeof *m2), *before = malloc(n * sizeof *before);
    assert_non_null(m1);
    assert_non_null(m2);
    assert_non_null(before);
    for (size_t k = 0; k < n; k++) {
        m1[k] = 0.001f * (float)(k % 11) - 0.004f;
        m2[k] = -0.002f * (float)(k % 5) + 0.003f;
    }
    memcpy(before, fx->agg.model.params, n * sizeof *before);
    snprintf(fx->agg.cfg.relays, sizeof fx->agg.cfg.relays, "dev-a,dev-b");
    uint8_t head1[FEDGE_HASH_LEN], head2[FEDGE_HASH_LEN];
    for (int i = 0; i < FEDGE_HASH_LEN; i++) {
        head1[i] = (uint8_t)(i + 1);
        head2[i] = (uint8_t)(0xf0 ^ i);
    }
    size_t len;
    uint8_t *b = seal_partial(fx, 0, 11, 300, m1, head1, &len);
    submit(fx, 0, b, len);
    free(b);
    b = seal_partial(fx, 1, 12, 100, m2, head2, &len);
    submit(fx, 1, b, len);
    free(b);
    /* the stored delta keeps the head */
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db, "SELECT delta FROM updates WHERE device='dev-a'", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    uint8_t got[FEDGE_HASH_LEN];
    assert_int_equal(fedge_delta_partial_head(sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), got),
                     FEDGE_OK);
    assert_memory_equal(got, head1, FEDGE_HASH_LEN);
    sqlite3_finalize(st);

    uint32_t round = fx->agg.round;
    double later = fedge_now() + fx->cfg.round_timeout_s + 1;
    assert_int_equal(fedge_agg_tick(&fx->agg, later), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE status='closed'"), 1);
    for (size_t k = 0; k < n; k++) {
        double want = before[k] + (300.0 * m1[k] + 100.0 * m2[k]) / 400.0;
        assert_true(fabs(fx->agg.model.params[k] - want) <= 1e-6 * (1 + fabs(want)));
    }
    char hex[FEDGE_HASH_HEX_LEN], sql[320];
    fedge_hash_to_hex(head2, hex);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM events WHERE kind='%s' AND round=%u AND device='dev-b'"
             " AND detail LIKE 'update %%: relay round %u head %s'", FEDGE_CLOSE_RELAY_HEAD_EVENT, round, round, hex);
    assert_int_equal(q1(fx, sql), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='relay_head'"), 2);
    free(m1);
    free(m2);
    free(before);
}

/* A partial the root's policy clips is stored clipped, in fp32, with the
 * relay's head still in it. */
static void test_root_clips_partial(void **state)
{
    fixture *fx = *state;
    char path[128];
    snprintf(path, sizeof path, "%s/clip.yaml", fx->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("version: 1\nname: clip\nupdate:\n  max_norm: 0.001\n  norm_action: clip\n", f);
    fclose(f);
    snprintf(fx->agg.cfg.policy_file, sizeof fx->agg.cfg.policy_file, "%s", path);
    assert_int_equal(fedge_agg_reload_policy(&fx->agg), FEDGE_OK);
    size_t n = fx->agg.model.n_params, len;
    float *m = malloc(n * sizeof *m);
    assert_non_null(m);
    for (size_t k = 0; k < n; k++)
        m[k] = 0.01f;
    uint8_t head[FEDGE_HASH_LEN], got[FEDGE_HASH_LEN];
    for (int i = 0; i < FEDGE_HASH_LEN; i++)
        head[i] = (uint8_t)(0x5a + i);
    snprintf(fx->agg.cfg.relays, sizeof fx->agg.cfg.relays, "dev-c");
    uint8_t *b = seal_partial(fx, 2, 21, 50, m, head, &len);
    submit(fx, 2, b, len);
    free(b);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-c' AND decision='clipped'"), 1);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db, "SELECT delta FROM updates WHERE device='dev-c'", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(fedge_delta_partial_head(sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), got),
                     FEDGE_OK);
    assert_memory_equal(got, head, FEDGE_HASH_LEN);
    sqlite3_finalize(st);
    free(m);
}

static int submit_code(fixture *fx, int dev, const uint8_t *b, size_t len, char *msg, size_t msglen)
{
    int code = 0;
    assert_int_equal(fedge_agg_submit(&fx->agg, DEVICES[dev], b, len, fedge_now(), &code, msg, msglen), FEDGE_OK);
    return code;
}

/* Only the devices listed in relays may send the partial form: a leaf's is
 * refused (4.03, nothing stored, no relay head logged), whatever its count
 * or head; a listed relay's may state more samples than update.max_samples
 * allows a leaf, up to relay_max_samples. */
static void test_partial_only_from_relays(void **state)
{
    fixture *fx = *state;
    size_t n = fx->agg.model.n_params, len;
    float *m = calloc(n, sizeof *m);
    assert_non_null(m);
    for (size_t k = 0; k < n; k++)
        m[k] = 0.001f * (float)(k % 3);
    uint8_t head[FEDGE_HASH_LEN];
    memset(head, 0xde, sizeof head);
    char msg[320];
    snprintf(fx->agg.cfg.relays, sizeof fx->agg.cfg.relays, "dev-b,dev-c");
    fx->agg.cfg.relay_max_samples = 1000000;

    /* a leaf (dev-a): refused before anything is stored, even a small count */
    uint8_t *b = seal_partial(fx, 0, 31, 100000, m, head, &len);
    assert_int_equal(submit_code(fx, 0, b, len, msg, sizeof msg), 403);
    assert_non_null(strstr(msg, "not a relay"));
    assert_non_null(strstr(msg, "relays"));
    free(b);
    b = seal_partial(fx, 0, 32, 5, m, head, &len);
    assert_int_equal(submit_code(fx, 0, b, len, msg, sizeof msg), 403);
    free(b);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates"), 0);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-a'"), 0);
    /* its ordinary update is still taken (its counter was not consumed) */
    uint8_t *g = make_update(fx, 0, good(fx, 33), &len);
    submit(fx, 0, g, len);
    free(g);

    /* a listed relay: 500000 samples, above update.max_samples (100000) */
    b = seal_partial(fx, 1, 41, 500000, m, head, &len);
    assert_int_equal(submit_code(fx, 1, b, len, msg, sizeof msg), 204);
    free(b);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-b' AND n_samples=500000"
                            " AND decision!='rejected'"), 1);
    /* but not above relay_max_samples */
    b = seal_partial(fx, 2, 51, 1000001, m, head, &len);
    assert_int_equal(submit_code(fx, 2, b, len, msg, sizeof msg), 403);
    assert_non_null(strstr(msg, "relay_max_samples"));
    free(b);
    assert_int_equal(q1(fx, "SELECT count(*) FROM updates WHERE device='dev-c'"), 0);

    /* at close the relay's partial weighs by its count; one head logged */
    uint32_t round = fx->agg.round;
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now() + fx->cfg.round_timeout_s + 1), FEDGE_OK);
    assert_int_equal(q1(fx, "SELECT count(*) FROM rounds WHERE status='closed'"), 1);
    assert_int_equal(q1(fx, "SELECT count(*) FROM events WHERE kind='relay_head'"), 1);
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM events WHERE kind='relay_head' AND round=%u AND device='dev-b'",
             round);
    assert_int_equal(q1(fx, sql), 1);
    free(m);
}

/* relays: device ids separated by commas */
static void test_relays_key(void **state)
{
    fixture *fx = *state;
    char err[256];
    fedge_agg_config c = fx->cfg;
    assert_string_equal(c.relays, "");
    assert_int_equal(fedge_agg_config_set(&c, "relays", "relay-001,relay-002", err, sizeof err), FEDGE_OK);
    assert_true(fedge_relay_listed(&c, "relay-001"));
    assert_true(fedge_relay_listed(&c, "relay-002"));
    assert_false(fedge_relay_listed(&c, "relay-00"));
    assert_false(fedge_relay_listed(&c, "relay-0012"));
    assert_false(fedge_relay_listed(&c, ""));
    assert_int_equal(fedge_agg_config_set(&c, "relays", "a,,b", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_int_equal(fedge_agg_config_set(&c, "relays", "a, b", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_int_equal(fedge_agg_config_set(&c, "relays", "a,", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_int_equal(fedge_agg_config_set(&c, "relays", "", err, sizeof err), FEDGE_OK);
    assert_false(fedge_relay_listed(&c, "a"));
}

static void test_partial_delta_form(void **state)
{
    (void)state;
    float x[5] = {1.5f, -2.0f, 0.25f, 3.0f, -0.5f}, y[5];
    fedge_delta_header h = {.encoding = FEDGE_ENC_FP32, .flags = FEDGE_DELTA_FLAG_PARTIAL, .model_id = 9,
                            .round = 4, .n_samples = 1234, .n_elems = 5};
    for (int i = 0; i < FEDGE_HASH_LEN; i++)
        h.partial_head[i] = (uint8_t)(3 * i);
    size_t size = fedge_delta_encoded_size(&h), len = 0;
    assert_int_equal(size, FEDGE_DELTA_HEADER_LEN + 5 * 4 + FEDGE_DELTA_PARTIAL_HEAD_LEN);
    uint8_t buf[256], head[FEDGE_HASH_LEN];
    assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len), FEDGE_OK);
    assert_int_equal(len, size);
    fedge_delta_header got;
    assert_int_equal(fedge_delta_decode(buf, len, 9, 5, &got, y), FEDGE_OK);
    assert_memory_equal(x, y, sizeof x);
    assert_int_equal(got.flags, FEDGE_DELTA_FLAG_PARTIAL);
    assert_int_equal(got.n_samples, 1234);
    assert_memory_equal(got.partial_head, h.partial_head, FEDGE_HASH_LEN);
    assert_int_equal(fedge_delta_partial_head(buf, len, head), FEDGE_OK);
    assert_memory_equal(head, h.partial_head, FEDGE_HASH_LEN);
    /* a span reads values only */
    size_t off, blen;
    assert_int_equal(fedge_delta_span(&got, 1, 4, &off, &blen), FEDGE_OK);
    assert_int_equal(fedge_delta_decode_span(&got, 1, 4, buf + off, blen, y), FEDGE_OK);
    assert_memory_equal(x + 1, y, 3 * sizeof *y);
    /* the trailer is part of the exact length */
    assert_int_equal(fedge_delta_decode(buf, len - 1, 9, 5, &got, y), FEDGE_ERR_DELTA_TRUNCATED);
    /* fp32 only, not with SCAFFOLD's form */
    fedge_delta_header bad = h;
    bad.encoding = FEDGE_ENC_INT8;
    bad.block_size = FEDGE_DELTA_DEFAULT_BLOCK;
    assert_int_equal(fedge_delta_encode(&bad, x, NULL, buf, sizeof buf, &len), FEDGE_ERR_DELTA_ENCODING);
    bad = h;
    bad.flags |= FEDGE_DELTA_FLAG_CONTROL;
    bad.n_elems = 4;
    assert_int_equal(fedge_delta_encode(&bad, x, NULL, buf, sizeof buf, &len), FEDGE_ERR_DELTA_SHAPE);
    /* and a header claiming it that way is refused too */
    assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len), FEDGE_OK);
    buf[6] = FEDGE_ENC_FP16;
    assert_int_equal(fedge_delta_decode_header(buf, FEDGE_DELTA_HEADER_LEN + 10 + 32, &got), FEDGE_ERR_DELTA_ENCODING);
    /* an ordinary delta has no head */
    h.flags = 0;
    assert_int_equal(fedge_delta_encode(&h, x, NULL, buf, sizeof buf, &len), FEDGE_OK);
    assert_int_equal(fedge_delta_partial_head(buf, len, head), FEDGE_ERR_NOT_FOUND);
}

/* Relay settings the tree cannot honour are refused at start-up, naming why. */
static void test_relay_config(void **state)
{
    fixture *fx = *state;
    char err[512], path[128];
    fedge_agg_config c = fx->cfg;
    snprintf(c.upstream, sizeof c.upstream, "127.0.0.1:5684");
    snprintf(c.upstream_id, sizeof c.upstream_id, "relay-1");
    snprintf(c.upstream_keys, sizeof c.upstream_keys, "%s", fx->cfg.keys_file);
    snprintf(path, sizeof path, "%s/aggregator.key", fx->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(c.signing_key, sizeof c.signing_key, "%s", path);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_OK);

    fedge_agg_config b = c;
    snprintf(b.aggregation, sizeof b.aggregation, "krum");
    b.byzantine_f = 0;
    assert_int_equal(fedge_agg_config_validate(&b, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "aggregation = mean only"));
    b = c;
    snprintf(b.server_optimizer, sizeof b.server_optimizer, "adam");
    assert_int_equal(fedge_agg_config_validate(&b, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "server_optimizer"));
    b = c;
    snprintf(b.mode, sizeof b.mode, "async");
    assert_int_equal(fedge_agg_config_validate(&b, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    b = c;
    b.signing_key[0] = '\0';
    assert_int_equal(fedge_agg_config_validate(&b, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "signing_key"));
    b = c;
    b.upstream_id[0] = '\0';
    assert_int_equal(fedge_agg_config_validate(&b, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    b = fx->cfg;
    snprintf(b.upstream_id, sizeof b.upstream_id, "relay-1");
    assert_int_equal(fedge_agg_config_validate(&b, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_int_equal(fedge_agg_config_set(&b, "upstream", "relay.example:5684", err, sizeof err),
                     FEDGE_ERR_CONFIG_VALUE);

    /* a policy with DP on: the relay refuses to start */
    snprintf(path, sizeof path, "%s/dp.yaml", fx->dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("version: 1\nname: dp\nprivacy:\n  enabled: true\n", f);
    fclose(f);
    snprintf(fx->agg.cfg.policy_file, sizeof fx->agg.cfg.policy_file, "%s", path);
    assert_int_equal(fedge_agg_reload_policy(&fx->agg), FEDGE_OK);
    fedge_agg_config saved = fx->agg.cfg;
    fx->agg.cfg = c;
    assert_int_equal(fedge_relay_open(&fx->agg, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "refuses DP"));
    assert_null(fx->agg.relay);
    fx->agg.cfg = saved;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_partial_sum, setup, teardown),
        cmocka_unit_test_setup_teardown(test_partial_sum_mean_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_root_takes_partials, setup, teardown),
        cmocka_unit_test_setup_teardown(test_root_clips_partial, setup, teardown),
        cmocka_unit_test_setup_teardown(test_partial_only_from_relays, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relays_key, setup, teardown),
        cmocka_unit_test(test_partial_delta_form),
        cmocka_unit_test_setup_teardown(test_relay_config, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
