/* agg_updates.h — the aggregator tests' fixture and the sealed updates they
 * send (test_aggregator.c, test_sched_async.c, test_relay.c,
 * test_ingest_pool.c). Define N_DEV before
 * including; static functions, one copy per test program. */
#ifndef FEDGE_TEST_AGG_UPDATES_H
#define FEDGE_TEST_AGG_UPDATES_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "agg.h"
#include "log.h"
#include "delta.h"
#include "envelope.h"
#include "update.h"

typedef struct {
    char dir[64];
    fedge_agg_config cfg;
    fedge_aggregator agg;
    fedge_device_key keys[N_DEV];
} fixture;

/* A fresh directory /tmp/fedge-TAG-XXXXXX with the keys file of DEVICES and
 * a 120-row test shard, and fx->cfg at its defaults pointing there (db,
 * model store, mlp:16-8-3); the caller sets the rest, validates and inits. */
static void fixture_prepare(fixture *fx, const char *tag)
{
    fixture_prepare_dir(fx->dir, sizeof fx->dir, &fx->cfg, tag, DEVICES, N_DEV, 120, "mlp:16-8-3");
}

/* The devices' envelope keys, as each edge derives its own. */
static void fixture_derive_keys(fixture *fx)
{
    for (int i = 0; i < N_DEV; i++) {
        uint8_t s[FEDGE_SECRET_LEN];
        fixture_secret(i, s);
        assert_int_equal(fedge_envelope_derive_key(s, sizeof s, DEVICES[i], &fx->keys[i]), FEDGE_OK);
    }
}

/* Validates fx->cfg, derives the keys, starts the aggregator and ticks it
 * once: its first round is open. */
static void fixture_start(fixture *fx)
{
    char err[256] = "";
    assert_int_equal(fedge_agg_config_validate(&fx->cfg, err, sizeof err), FEDGE_OK);
    fixture_derive_keys(fx);
    if (fedge_agg_init(&fx->agg, &fx->cfg, err, sizeof err) != FEDGE_OK)
        fail_msg("fedge_agg_init: %s", err);
    assert_int_equal(fedge_agg_tick(&fx->agg, fedge_now()), FEDGE_OK);
    assert_int_equal(fx->agg.state, FEDGE_AGG_OPEN);
}

/* Frees the aggregator, removes its directory and frees fx. */
static void fixture_stop(fixture *fx)
{
    char cmd[160];
    fedge_agg_free(&fx->agg);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx);
}

typedef struct {
    uint32_t round;
    uint64_t counter;
    int key_of;          /* seal with this device's key */
    const char *spec;    /* NULL: the aggregator's model */
    float fill;          /* delta value */
    int nan_at;          /* >= 0: put a NaN there */
    fedge_encoding enc;
    int64_t samples;     /* < 0: 10 + device index */
    const uint8_t *run;  /* NULL: the aggregator's run id */
    int control;         /* SCAFFOLD form: the control-variate delta follows */
    float control_fill;  /* its value */
    const float *honest_c; /* non-NULL: the control half an honest edge trained against this c sends */
} update_spec;

/* SCAFFOLD option II as the edge computes it (edge/trainer.c): dc = -c -
 * dy (1 - momentum) / (K lr), lr and momentum as the round's "%g" text. */
static void honest_control(const fedge_agg_config *cfg, uint32_t round, uint32_t n_samples, const float *c,
                           float *delta, size_t n)
{
    char t[32];
    snprintf(t, sizeof t, "%g", cfg->lr * pow(cfg->lr_decay, round > 0 ? round - 1.0 : 0.0));
    float lr = strtof(t, NULL);
    snprintf(t, sizeof t, "%g", cfg->momentum);
    float mom = strtof(t, NULL);
    float steps = (float)(cfg->local_epochs * ((n_samples + cfg->batch - 1) / cfg->batch));
    float inv = (1.0f - mom) / (steps * lr);
    for (size_t i = 0; i < n; i++)
        delta[n + i] = -delta[i] * inv - c[i];
}

static uint8_t *make_update(fixture *fx, int dev, update_spec u, size_t *len)
{
    fedge_model_spec spec = fx->agg.model.spec;
    if (u.spec)
        assert_int_equal(fedge_model_spec_parse(u.spec, &spec), FEDGE_OK);
    size_t n = fedge_model_spec_param_count(&spec);
    float *delta = malloc(2 * n * sizeof *delta);
    assert_non_null(delta);
    for (size_t i = 0; i < n; i++) {
        delta[i] = u.fill * (float)((int)(i % 7) - 3) / 3.0f;
        delta[n + i] = u.control_fill * (float)((int)(i % 5) - 2) / 2.0f;
    }
    if (u.control && u.honest_c)
        honest_control(&fx->cfg, u.round, u.samples >= 0 ? (uint32_t)u.samples : 10 + (uint32_t)dev, u.honest_c,
                       delta, n);
    fedge_delta_header h = {
        .encoding = (uint8_t)u.enc,
        .flags = u.control ? FEDGE_DELTA_FLAG_CONTROL : 0,
        .model_id = fedge_model_spec_id(&spec),
        .round = u.round,
        .n_samples = u.samples >= 0 ? (uint32_t)u.samples : 10 + (uint32_t)dev,
        .n_elems = (uint32_t)(u.control ? 2 * n : n),
        .block_size = u.enc == FEDGE_ENC_INT8 ? FEDGE_DELTA_DEFAULT_BLOCK : 0,
    };
    memcpy(h.base_version, fx->agg.version, FEDGE_HASH_LEN);
    uint8_t *out = NULL;
    int key = u.key_of >= 0 ? u.key_of : dev;
    const uint8_t *run = u.run ? u.run : fx->agg.run_id;
    if (u.nan_at < 0) {
        assert_int_equal(fedge_update_seal(&fx->keys[key], u.counter, run, &h, delta, NULL, &out, len), FEDGE_OK);
        free(delta);
        return out;
    }
    /* A NaN cannot be encoded by the library: patch it into a valid fp32
     * payload, then seal that by hand as a misbehaving client would. */
    assert_int_equal(u.enc, FEDGE_ENC_FP32);
    size_t enc_len = fedge_delta_encoded_size(&h);
    uint8_t *enc = malloc(enc_len);
    assert_non_null(enc);
    assert_int_equal(fedge_delta_encode(&h, delta, NULL, enc, enc_len, &enc_len), FEDGE_OK);
    uint32_t nan_bits = 0x7fc00000u;
    memcpy(enc + FEDGE_DELTA_HEADER_LEN + 4 * (size_t)u.nan_at, &nan_bits, 4); /* little-endian host */
    size_t cap = fedge_envelope_sealed_size(FEDGE_UPDATE_AAD_LEN, enc_len - FEDGE_DELTA_HEADER_LEN);
    uint8_t aad[FEDGE_UPDATE_AAD_LEN];
    memcpy(aad, enc, FEDGE_DELTA_HEADER_LEN);
    memcpy(aad + FEDGE_DELTA_HEADER_LEN, run, FEDGE_RUN_ID_LEN);
    out = malloc(cap);
    assert_non_null(out);
    static const uint8_t prefix[4] = {1, 2, 3, 4};
    assert_int_equal(fedge_envelope_seal(&fx->keys[key], u.counter, prefix, aad, sizeof aad,
                                         enc + FEDGE_DELTA_HEADER_LEN, enc_len - FEDGE_DELTA_HEADER_LEN, out,
                                         cap, len),
                     FEDGE_OK);
    free(enc);
    free(delta);
    return out;
}

static update_spec good(fixture *fx, uint64_t counter)
{
    update_spec u = {.round = fx->agg.round, .counter = counter, .key_of = -1, .fill = 0.01f,
                     .nan_at = -1, .enc = FEDGE_ENC_FP32, .samples = -1};
    return u;
}

static long long q1(fixture *fx, const char *sql)
{
    sqlite3_stmt *st;
    long long v = -1;
    assert_int_equal(sqlite3_prepare_v2(fx->agg.db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

#endif
