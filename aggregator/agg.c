#include "agg.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "common.h"
#include "delta.h"
#include "governance.h"
#include "policy.h"
#include "log.h"
#include "modelfile.h"
#include "refine.h"
#include "retention.h"
#include "shard.h"
#include "store.h"
#include "strategy.h"
#include "train.h"
#include "update.h"

#define EVAL_BATCH 500

double fedge_now(void)
{
    return fedge_clock_mono();
}

double fedge_wall_now(void)
{
    return fedge_clock_wall(); /* step-free: the log and the rate-limit window never jump */
}

/* ---- small SQL helpers ---------------------------------------------------- */

static int find_device(const fedge_aggregator *a, const char *id)
{
    if (!id)
        return -1;
    const fedge_device_entry *e = fedge_keys_find(&a->keys, id, strlen(id));
    return e ? (int)(e - a->keys.devices) : -1;
}

/* ---- model store -------------------------------------------------------- */

static int model_path(const fedge_aggregator *a, const char *version_hex, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s.fmdl", a->cfg.model_dir, version_hex);
    return (n < 0 || (size_t)n >= cap) ? FEDGE_ERR_BUFFER_TOO_SMALL : FEDGE_OK;
}

/* Makes `m` the current model: version, serialized blob for GET /model. */
static int adopt_model(fedge_aggregator *a, fedge_model *m, uint32_t round)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    uint8_t version[FEDGE_HASH_LEN];
    int ret = fedge_model_serialize(m, &blob, &len, version);
    if (ret != FEDGE_OK)
        return ret;
    if (a->model.params != m->params) {
        fedge_model_free(&a->model);
        a->model = *m;
        memset(m, 0, sizeof *m);
    }
    free(a->model_blob);
    a->model_blob = blob;
    a->model_blob_len = len;
    memcpy(a->version, version, FEDGE_HASH_LEN);
    fedge_hash_to_hex(version, a->version_hex);
    a->model_id = fedge_model_spec_id(&a->model.spec);
    a->model_round = round;
    return FEDGE_OK;
}

/* Saves the current model file and inserts its models row (caller's transaction). */
static int record_model(fedge_aggregator *a, const char *parent_hex, const char *kind,
                        uint32_t round, double accuracy, const char *info)
{
    char path[FEDGE_PATH_MAX + 80], sha_hex[FEDGE_HASH_HEX_LEN];
    uint8_t sha[FEDGE_HASH_LEN];
    sqlite3_stmt *st = NULL;
    int ret;
    CHK(model_path(a, a->version_hex, path, sizeof path));
    CHK(fedge_model_save(&a->model, path, NULL));
    CHK(fedge_sha256_file(path, sha));
    fedge_hash_to_hex(sha, sha_hex);
    CHK(fedge_store_prepare(a->db,
                    "INSERT OR IGNORE INTO models(version, parent, kind, round, path, sha256, accuracy,"
                    " created_at, info) VALUES(?,?,?,?,?,?,?,?,?)",
                    &st));
    sqlite3_bind_text(st, 1, a->version_hex, -1, SQLITE_TRANSIENT);
    if (parent_hex)
        sqlite3_bind_text(st, 2, parent_hex, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, round);
    /* relative to the model store, so a copied run (db + model_dir) still audits */
    sqlite3_bind_text(st, 5, strrchr(path, '/') + 1, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 6, sha_hex, -1, SQLITE_TRANSIENT);
    if (accuracy >= 0)
        sqlite3_bind_double(st, 7, accuracy);
    sqlite3_bind_double(st, 8, fedge_wall_now());
    if (info)
        sqlite3_bind_text(st, 9, info, -1, SQLITE_TRANSIENT);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret != FEDGE_OK)
        goto cleanup;
    if (sqlite3_changes(a->db) > 0)
        CHK(fedge_gov_audit(a, "models", a->version_hex));
    /* The current model by name: a version published again (a zero
     * aggregate, a refinement that returns an earlier model) has no new
     * models row, so "the newest row" would not say which model is current. */
    CHK(fedge_store_prepare(a->db, "INSERT INTO meta(key, value) VALUES('current_version', ?)"
                                   " ON CONFLICT(key) DO UPDATE SET value=excluded.value", &st));
    sqlite3_bind_text(st, 1, a->version_hex, -1, SQLITE_TRANSIENT);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
cleanup:
    sqlite3_finalize(st);
    return ret;
}

static int evaluate(fedge_aggregator *a, double *accuracy)
{
    size_t correct = 0;
    double loss = 0;
    if (!a->eval_scratch) { /* the spec is fixed for the daemon's life */
        /* A model whose activations at EVAL_BATCH rows pass the model's
         * limit is evaluated in smaller chunks. */
        int batch = fedge_model_max_batch(&a->model.spec, EVAL_BATCH);
        if (batch == 0) {
            FEDGE_ERROR("model %s: the activations of one row exceed the model's limit",
                        a->cfg.model_spec);
            return FEDGE_ERR_MODEL_SPEC;
        }
        a->eval_scratch = malloc(fedge_model_scratch_floats(&a->model.spec, batch) * sizeof(float));
        if (!a->eval_scratch)
            return FEDGE_ERR_NOMEM;
        a->eval_batch = batch;
    }
    int ret = fedge_model_evaluate(&a->model, a->test.x, a->test.y, a->test.n, a->eval_batch,
                                   a->eval_scratch, &correct, &loss);
    if (ret == FEDGE_OK)
        *accuracy = a->test.n ? (double)correct / (double)a->test.n : 0.0;
    return ret;
}

/* Loads the newest model in the log, or creates the initial one. */
static int load_current_model(fedge_aggregator *a, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    fedge_model m = {0};
    uint8_t version[FEDGE_HASH_LEN];
    int ret;
    CHK(fedge_store_prepare(a->db, "SELECT version, path, round FROM models WHERE version ="
                                   " coalesce((SELECT value FROM meta WHERE key='current_version'),"
                                   " (SELECT version FROM models ORDER BY rowid DESC LIMIT 1))", &st));
    if (sqlite3_step(st) == SQLITE_ROW) {
        char want[FEDGE_HASH_HEX_LEN];
        snprintf(want, sizeof want, "%s", (const char *)sqlite3_column_text(st, 0));
        const char *stored = (const char *)sqlite3_column_text(st, 1);
        uint32_t round = (uint32_t)sqlite3_column_int64(st, 2);
        char path[FEDGE_PATH_MAX + 80]; /* relative paths start at model_dir; old logs hold absolute ones */
        snprintf(path, sizeof path, "%s%s%s", stored && stored[0] == '/' ? "" : a->cfg.model_dir,
                 stored && stored[0] == '/' ? "" : "/", stored ? stored : "");
        if (stored && stored[0] == '/' && access(path, F_OK) != 0) /* a moved old run */
            snprintf(path, sizeof path, "%s/%s", a->cfg.model_dir, strrchr(stored, '/') + 1);
        ret = fedge_model_load(path, &m, version);
        if (ret != FEDGE_OK) {
            snprintf(err, errlen, "current model %s: %s", path, fedge_strerror(ret));
            goto cleanup;
        }
        char got[FEDGE_HASH_HEX_LEN];
        fedge_hash_to_hex(version, got);
        if (strcmp(got, want) != 0) {
            snprintf(err, errlen, "model file %s has version %s, the log says %s", path, got, want);
            FAIL(FEDGE_ERR_AUDIT_FILE);
        }
        CHK(adopt_model(a, &m, round));
        FEDGE_INFO("resuming from model %.16s (round %u)", a->version_hex, round);
        goto cleanup;
    }
    sqlite3_finalize(st);
    st = NULL;

    if (a->cfg.init_model[0]) {
        ret = fedge_model_load(a->cfg.init_model, &m, version);
        if (ret != FEDGE_OK) {
            snprintf(err, errlen, "init_model %s: %s", a->cfg.init_model, fedge_strerror(ret));
            goto cleanup;
        }
    } else {
        fedge_model_spec spec;
        fedge_rng rng;
        CHK(fedge_model_spec_parse(a->cfg.model_spec, &spec));
        CHK(fedge_model_init(&m, &spec));
        fedge_rng_seed(&rng, (uint64_t)a->cfg.seed);
        CHK(fedge_model_randomize(&m, &rng));
    }
    CHK(adopt_model(a, &m, 0));
    double acc = -1;
    if (a->test.n)
        CHK(evaluate(a, &acc));
    a->last_accuracy = acc;
    CHK(fedge_store_begin(a->db));
    CHK(record_model(a, NULL, "init", 0, acc, NULL));
    CHK(fedge_store_commit(a->db));
    FEDGE_INFO("initial model %s %.16s (test accuracy %.4f)", a->cfg.model_spec, a->version_hex, acc);
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    fedge_model_free(&m);
    return ret;
}

static int sync_devices(fedge_aggregator *a)
{
    sqlite3_stmt *st = NULL;
    int ret;
    double now = fedge_wall_now();
    CHK(fedge_store_begin(a->db));
    for (size_t i = 0; i < a->keys.n; i++) {
        CHK(fedge_store_prepare(a->db,
                        "INSERT INTO devices(id, region, first_seen) VALUES(?1, ?2, ?3)"
                        " ON CONFLICT(id) DO UPDATE SET region = ?2 WHERE region <> ?2",
                        &st));
        sqlite3_bind_text(st, 1, a->keys.devices[i].id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, a->keys.devices[i].region, -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 3, now);
        ret = fedge_store_step_done(a->db, st);
        st = NULL;
        if (ret != FEDGE_OK)
            goto cleanup;
    }
    CHK(fedge_store_commit(a->db));
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    return ret;
}

/* Restores an open round left by a crash: participants and accepted updates. */
static int resume_round(fedge_aggregator *a)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    CHK(fedge_store_prepare(a->db, "SELECT id, opened_at, deadline, n_selected FROM rounds WHERE status='open'"
                           " ORDER BY id DESC LIMIT 1", &st));
    if (sqlite3_step(st) != SQLITE_ROW)
        goto cleanup;
    a->round = (uint32_t)sqlite3_column_int64(st, 0);
    a->opened_at = sqlite3_column_double(st, 1);
    a->n_selected = (size_t)sqlite3_column_int64(st, 3);
    /* The log keeps the deadline in wall time; across a restart that is all
     * there is. A wall clock stepped back while the daemon was down must not
     * stretch the round past its length. */
    double left = sqlite3_column_double(st, 2) - fedge_wall_now();
    if (left > a->cfg.round_timeout_s)
        left = a->cfg.round_timeout_s;
    a->deadline = fedge_now() + (left > 0 ? left : 0);
    sqlite3_finalize(st);
    st = NULL;
    CHK(fedge_store_prepare(a->db, "SELECT device FROM round_participants WHERE round=?", &st));
    sqlite3_bind_int64(st, 1, a->round);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int d = find_device(a, (const char *)sqlite3_column_text(st, 0));
        if (d >= 0)
            a->selected[d] = 1;
    }
    sqlite3_finalize(st);
    st = NULL;
    CHK(fedge_store_prepare(a->db, "SELECT device, decision, bytes FROM updates WHERE round=?", &st));
    sqlite3_bind_int64(st, 1, a->round);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int d = find_device(a, (const char *)sqlite3_column_text(st, 0));
        const char *decision = (const char *)sqlite3_column_text(st, 1);
        a->bytes_received += (uint64_t)sqlite3_column_int64(st, 2);
        if (strcmp(decision, "rejected") == 0) {
            a->n_rejected++;
        } else {
            a->n_accepted++;
            if (d >= 0)
                a->submitted[d] = 1;
        }
    }
    a->state = FEDGE_AGG_OPEN;
    FEDGE_INFO("resuming open round %u: %zu selected, %zu accepted so far", a->round, a->n_selected,
               a->n_accepted);
cleanup:
    sqlite3_finalize(st);
    return ret;
}

static int count_rounds(fedge_aggregator *a)
{
    sqlite3_stmt *st = NULL;
    int ret;
    CHK(fedge_store_prepare(a->db, "SELECT coalesce(max(id),0), count(*) FILTER (WHERE status <> 'open'),"
                           " (SELECT accuracy FROM models ORDER BY rowid DESC LIMIT 1),"
                           " count(*) FILTER (WHERE status = 'closed') FROM rounds",
                    &st));
    if (sqlite3_step(st) == SQLITE_ROW) {
        a->round = (uint32_t)sqlite3_column_int64(st, 0);
        a->rounds_done = sqlite3_column_int64(st, 1);
        if (sqlite3_column_type(st, 2) != SQLITE_NULL)
            a->last_accuracy = sqlite3_column_double(st, 2);
        a->rounds_aggregated = sqlite3_column_int64(st, 3);
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

static int load_test_set(fedge_aggregator *a, char *err, size_t errlen)
{
    int ret;
    if (strcmp(a->cfg.test_data, "fashion-mnist") == 0)
        ret = fedge_dataset_load_fashion_mnist(&a->test, NULL, 0);
    else
        ret = fedge_shard_load(a->cfg.test_data, &a->test);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "test_data %s: %s", a->cfg.test_data, fedge_strerror(ret));
        return ret;
    }
    return FEDGE_OK;
}

int fedge_agg_init(fedge_aggregator *a, const fedge_agg_config *cfg, char *err, size_t errlen)
{
    int ret;
    memset(a, 0, sizeof *a);
    a->cfg = *cfg;
    a->last_accuracy = -1;
    fedge_rng_seed(&a->rng, (uint64_t)cfg->seed ^ 0x5eed5eedULL);

    CHK(fedge_keys_load(cfg->keys_file, &a->keys, err, errlen));
    if (a->keys.n == 0) {
        snprintf(err, errlen, "%s lists no devices", cfg->keys_file);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    a->dev_keys = calloc(a->keys.n, sizeof *a->dev_keys);
    a->selected = calloc(a->keys.n, 1);
    a->submitted = calloc(a->keys.n, 1);
    if (!a->dev_keys || !a->selected || !a->submitted)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < a->keys.n; i++)
        CHK(fedge_envelope_derive_key(a->keys.devices[i].secret, FEDGE_SECRET_LEN,
                                      a->keys.devices[i].id, &a->dev_keys[i]));

    if (mkdir(cfg->model_dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "model_dir %s: %s", cfg->model_dir, strerror(errno));
        FAIL(FEDGE_ERR_IO);
    }
    /* model_dir absolute, so the store does not move with the working directory */
    char abs_dir[PATH_MAX];
    if (!realpath(cfg->model_dir, abs_dir) || strlen(abs_dir) >= sizeof a->cfg.model_dir) {
        snprintf(err, errlen, "model_dir %s: cannot resolve", cfg->model_dir);
        FAIL(FEDGE_ERR_IO);
    }
    memcpy(a->cfg.model_dir, abs_dir, strlen(abs_dir) + 1);
    ret = fedge_store_open_db(cfg->db, 0, &a->db);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "database %s: %s", cfg->db, fedge_strerror(ret));
        goto cleanup;
    }
    CHK(fedge_gov_init(a, err, errlen));
    ret = fedge_store_run_id(a->db, a->run_id);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "database %s: cannot read or create the run id: %s", cfg->db, fedge_strerror(ret));
        goto cleanup;
    }
    fedge_hex_encode(a->run_id, sizeof a->run_id, a->run_id_hex);
    CHK(sync_devices(a));
    CHK(load_test_set(a, err, errlen));
    ret = load_current_model(a, err, errlen);
    if (ret != FEDGE_OK) {
        if (!err[0])
            snprintf(err, errlen, "model: %s", fedge_strerror(ret));
        goto cleanup;
    }
    if (a->test.dim != a->model.spec.input_dim) {
        snprintf(err, errlen, "test set has %d features, the model expects %d", a->test.dim,
                 a->model.spec.input_dim);
        FAIL(FEDGE_ERR_MODEL_SHAPE);
    }
    if (cfg->max_update_bytes > 0) {
        fedge_delta_header smallest = {.encoding = FEDGE_ENC_INT8,
                                       .n_elems = (uint32_t)(a->model.n_params * (cfg->scaffold ? 2 : 1)),
                                       .block_size = FEDGE_DELTA_DEFAULT_BLOCK};
        size_t least = fedge_envelope_sealed_size(FEDGE_UPDATE_AAD_LEN,
                                                  fedge_delta_encoded_size(&smallest) - FEDGE_DELTA_HEADER_LEN);
        if ((size_t)cfg->max_update_bytes < least) {
            snprintf(err, errlen, "max_update_bytes %ld is below the smallest update of this model (%zu bytes,"
                     " int8): no update could be accepted", cfg->max_update_bytes, least);
            FAIL(FEDGE_ERR_CONFIG_VALUE);
        }
    }
    CHK(fedge_strategy_init(a, err, errlen));
    a->max_update_bytes = cfg->max_update_bytes > 0
                              ? (size_t)cfg->max_update_bytes
                              : fedge_envelope_sealed_size(FEDGE_UPDATE_AAD_LEN,
                                                           a->model.n_params * (cfg->scaffold ? 2 : 1) *
                                                               sizeof(float));
    CHK(count_rounds(a));
    CHK(resume_round(a));
    a->start_at = fedge_now() + cfg->start_delay_s;
    if (a->state != FEDGE_AGG_OPEN && cfg->rounds > 0 && a->rounds_done >= cfg->rounds) {
        a->state = FEDGE_AGG_FINISHED;
        a->finished_at = fedge_now();
    }
cleanup:
    if (ret != FEDGE_OK) {
        if (!err[0])
            snprintf(err, errlen, "%s", fedge_strerror(ret));
        fedge_agg_free(a);
    }
    return ret;
}

void fedge_agg_free(fedge_aggregator *a)
{
    if (!a)
        return;
    fedge_strategy_free(a);
    fedge_gov_free(a);
    if (a->dev_keys)
        for (size_t i = 0; i < a->keys.n; i++)
            fedge_device_key_wipe(&a->dev_keys[i]);
    free(a->dev_keys);
    free(a->selected);
    free(a->submitted);
    fedge_keys_free(&a->keys);
    fedge_model_free(&a->model);
    free(a->model_blob);
    free(a->eval_scratch);
    fedge_dataset_free(&a->test);
    if (a->db)
        sqlite3_close_v2(a->db);
    memset(a, 0, sizeof *a);
}

/* ---- rounds --------------------------------------------------------------- */

static int open_round(fedge_aggregator *a, double now)
{
    sqlite3_stmt *st = NULL;
    size_t *allowed = NULL, n_allowed = 0;
    int ret;
    uint32_t round = a->round + 1;

    allowed = malloc(a->keys.n * sizeof *allowed);
    if (!allowed)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(fedge_store_prepare(a->db, "SELECT status FROM devices WHERE id=?", &st));
    for (size_t i = 0; i < a->keys.n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, a->keys.devices[i].id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW &&
            fedge_gov_device_eligible(a, i, (const char *)sqlite3_column_text(st, 0)))
            allowed[n_allowed++] = i;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (n_allowed == 0) {
        FEDGE_WARN("no eligible devices; round %u not opened, retrying in 5s", round);
        a->start_at = now + 5.0;
        goto cleanup;
    }
    size_t k = a->cfg.clients_per_round > 0 ? (size_t)a->cfg.clients_per_round
                                            : (size_t)ceil(a->cfg.client_fraction * (double)n_allowed);
    if (k > n_allowed)
        k = n_allowed;
    if (k == 0)
        k = 1;
    int refused = 0;
    char reason[256] = "";
    CHK(fedge_gov_round_admission(a, round, k, n_allowed, &refused, reason, sizeof reason));
    if (refused) {
        CHK(fedge_store_begin(a->db));
        CHK(fedge_store_prepare(a->db, "INSERT INTO rounds(id, opened_at, deadline, closed_at, status,"
                               " base_version, strategy, n_selected, reason)"
                               " VALUES(?,?,?,?, 'refused', ?, 'fedavg', 0, ?)", &st));
        double wall = fedge_wall_now();
        sqlite3_bind_int64(st, 1, round);
        sqlite3_bind_double(st, 2, wall);
        sqlite3_bind_double(st, 3, wall);
        sqlite3_bind_double(st, 4, wall);
        sqlite3_bind_text(st, 5, a->version_hex, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, reason, -1, SQLITE_STATIC);
        ret = fedge_store_step_done(a->db, st);
        st = NULL;
        if (ret != FEDGE_OK)
            goto cleanup;
        char key[24];
        snprintf(key, sizeof key, "%u", round);
        CHK(fedge_gov_audit(a, "rounds", key));
        CHK(fedge_gov_event(a, round, NULL, "round_refused", "privacy_budget", reason));
        CHK(fedge_gov_sign_head(a, round));
        CHK(fedge_store_commit(a->db));
        a->round = round;
        a->state = FEDGE_AGG_FINISHED;
        a->finished_at = now;
        FEDGE_WARN("round %u refused: %s; stopping", round, reason);
        goto cleanup;
    }

    fedge_rng rng;
    fedge_rng_split(&a->rng, round, &rng);
    for (size_t i = 0; i < k; i++) { /* partial Fisher-Yates */
        size_t j = i + fedge_rng_below(&rng, (uint32_t)(n_allowed - i));
        size_t t = allowed[i];
        allowed[i] = allowed[j];
        allowed[j] = t;
    }
    memset(a->selected, 0, a->keys.n);
    memset(a->submitted, 0, a->keys.n);

    double wall = fedge_wall_now();
    CHK(fedge_store_begin(a->db));
    CHK(fedge_store_prepare(a->db, "INSERT INTO rounds(id, opened_at, deadline, status, base_version, strategy,"
                           " n_selected) VALUES(?,?,?, 'open', ?, ?, ?)", &st));
    sqlite3_bind_int64(st, 1, round);
    sqlite3_bind_double(st, 2, wall);
    sqlite3_bind_double(st, 3, wall + a->cfg.round_timeout_s);
    sqlite3_bind_text(st, 4, a->version_hex, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, fedge_gov_strategy(a), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)k);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret != FEDGE_OK)
        goto cleanup;
    CHK(fedge_store_prepare(a->db, "INSERT INTO round_participants(round, device) VALUES(?,?)", &st));
    for (size_t i = 0; i < k; i++) {
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, round);
        sqlite3_bind_text(st, 2, a->keys.devices[allowed[i]].id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE)
            FAIL(FEDGE_ERR_SQL);
    }
    sqlite3_finalize(st);
    st = NULL;
    char key[24];
    snprintf(key, sizeof key, "%u", round);
    CHK(fedge_gov_audit(a, "rounds", key));
    CHK(fedge_store_commit(a->db));

    for (size_t i = 0; i < k; i++)
        a->selected[allowed[i]] = 1;
    a->round = round;
    a->state = FEDGE_AGG_OPEN;
    a->opened_at = wall;
    /* the round's length counts from when devices can see it, not from
     * before its participants were written (seconds with 10^5 devices) */
    a->deadline = fedge_now() + a->cfg.round_timeout_s;
    a->n_selected = k;
    a->n_accepted = a->n_rejected = 0;
    a->bytes_received = 0;
    FEDGE_INFO("round %u open: %zu of %zu devices selected, base %.16s, deadline %.0fs", round, k,
               n_allowed, a->version_hex, a->cfg.round_timeout_s);
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    free(allowed);
    return ret;
}

static int finish_round_row(fedge_aggregator *a, const char *status, const char *new_version,
                            double accuracy, double epsilon, const char *reason)
{
    sqlite3_stmt *st = NULL;
    int ret;
    double now = fedge_wall_now();
    CHK(fedge_store_prepare(a->db, "UPDATE rounds SET closed_at=?, status=?, new_version=?, n_accepted=?,"
                           " n_rejected=?, bytes_received=?, accuracy=?, epsilon=?, reason=? WHERE id=?",
                    &st));
    sqlite3_bind_double(st, 1, now);
    sqlite3_bind_text(st, 2, status, -1, SQLITE_STATIC);
    if (new_version)
        sqlite3_bind_text(st, 3, new_version, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)a->n_accepted);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)a->n_rejected);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)a->bytes_received);
    if (accuracy >= 0)
        sqlite3_bind_double(st, 7, accuracy);
    if (epsilon >= 0)
        sqlite3_bind_double(st, 8, epsilon);
    if (reason)
        sqlite3_bind_text(st, 9, reason, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 10, a->round);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret != FEDGE_OK)
        goto cleanup;
    char key[24];
    snprintf(key, sizeof key, "%u", a->round);
    CHK(fedge_gov_audit(a, "rounds", key));
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* Runs the configured refinement on the current (aggregated) model. The
 * refined model becomes the next version (kind refine, parent = aggregate);
 * a failure or timeout is logged as an event and the aggregate stays. */
/* BEGIN IMMEDIATE, waiting out another process's lock up to db_busy_retry_s:
 * for a step that cannot simply be retried from the tick (the refinement
 * command has already run). */
static int begin_patiently(fedge_aggregator *a)
{
    double since = fedge_now();
    int ret;
    while ((ret = fedge_store_begin(a->db)) == FEDGE_ERR_BUSY && fedge_now() - since < a->cfg.db_busy_retry_s &&
           !fedge_refine_stop_requested()) {
        FEDGE_WARN("the database is locked by another process; waiting to log the refinement");
        sleep(1);
    }
    return ret;
}

static int refine_model(fedge_aggregator *a)
{
    char in[FEDGE_PATH_MAX + 80], out[FEDGE_PATH_MAX + 80], summary[512], detail[700];
    char parent[FEDGE_HASH_HEX_LEN];
    fedge_model m = {0};
    int exit_status = -1, ret, ok = 0;
    double t0 = fedge_now();
    memcpy(parent, a->version_hex, sizeof parent);
    CHK(model_path(a, a->version_hex, in, sizeof in));
    snprintf(out, sizeof out, "%s/refine-%u.tmp", a->cfg.model_dir, a->round);
    ret = fedge_refine_command_run(a->cfg.refine_command, in, out, a->round, a->cfg.refine_timeout_s,
                                   &exit_status, summary, sizeof summary);
    if (ret != FEDGE_OK) {
        snprintf(detail, sizeof detail, "could not run refinement: %s", fedge_strerror(ret));
    } else if (exit_status != 0) {
        snprintf(detail, sizeof detail, "refinement %s (exit %d): %s",
                 exit_status < 0 ? "timed out or was killed" : "failed", exit_status, summary);
    } else if ((ret = fedge_model_load(out, &m, NULL)) != FEDGE_OK) {
        snprintf(detail, sizeof detail, "refined model unreadable: %s", fedge_strerror(ret));
    } else if (m.n_params != a->model.n_params ||
               fedge_model_spec_id(&m.spec) != fedge_model_spec_id(&a->model.spec)) {
        snprintf(detail, sizeof detail, "refined model has another shape");
    } else {
        ok = 1;
    }
    ret = FEDGE_OK;
    CHK(begin_patiently(a));
    if (ok) {
        double acc = -1;
        CHK(adopt_model(a, &m, a->round));
        CHK(evaluate(a, &acc));
        CHK(record_model(a, parent, "refine", a->round, acc, summary));
        CHK(fedge_strategy_carry(a, parent, a->version_hex));
        snprintf(detail, sizeof detail, "refined %.16s -> %.16s in %.1fs, accuracy %.4f -> %.4f: %s", parent,
                 a->version_hex, fedge_now() - t0, a->last_accuracy, acc, summary);
        CHK(fedge_gov_event(a, a->round, NULL, "refine", "refine_every", detail));
        CHK(fedge_gov_sign_head(a, a->round));
        CHK(fedge_store_commit(a->db));
        a->last_accuracy = acc;
        FEDGE_INFO("%s", detail);
    } else {
        CHK(fedge_gov_event(a, a->round, NULL, "refine_failed", "refine_every", detail));
        CHK(fedge_gov_sign_head(a, a->round));
        CHK(fedge_store_commit(a->db));
        FEDGE_WARN("%s; keeping the aggregate %.16s", detail, parent);
    }
cleanup:
    if (ret != FEDGE_OK) {
        fedge_store_rollback(a->db);
        char err[256] = "";
        if (load_current_model(a, err, sizeof err) != FEDGE_OK)
            FEDGE_ERROR("cannot reload the current model: %s", err);
    }
    unlink(out);
    fedge_model_free(&m);
    return ret;
}

/* A persistent fault of the daemon itself (storage, memory): the caller
 * stops. Anything else that goes wrong while aggregating comes from the
 * round's data and fails only the round. */
static int is_daemon_fault(int ret)
{
    return ret == FEDGE_ERR_SQL || ret == FEDGE_ERR_BUSY || ret == FEDGE_ERR_IO || ret == FEDGE_ERR_NOMEM;
}

/* Aggregates the round's accepted updates into a new model, evaluates it,
 * logs everything in one transaction, then (outside it) refines if due. */
static int close_round(fedge_aggregator *a, double now)
{
    fedge_gov_round_result res;
    char parent[FEDGE_HASH_HEX_LEN];
    int ret;
    double t0 = fedge_now();
    (void)now;
    memset(&res, 0, sizeof res);
    memcpy(parent, a->version_hex, sizeof parent);

    CHK(fedge_store_begin(a->db));
    ret = fedge_gov_aggregate(a, &res);
    if (ret != FEDGE_OK && !is_daemon_fault(ret)) {
        /* Last line of defence: the round fails with an audited reason and
         * the daemon goes on; restarting would only meet the same data. */
        int agg_err = ret;
        fedge_store_rollback(a->db);
        fedge_strategy_discard(a);
        char err[256] = "";
        CHK(load_current_model(a, err, sizeof err));
        memset(&res, 0, sizeof res);
        snprintf(res.reason, sizeof res.reason, "aggregation failed: %s", fedge_strerror(agg_err));
        CHK(fedge_store_begin(a->db));
        CHK(fedge_gov_event(a, a->round, NULL, "round_failed", "aggregate", res.reason));
        res.n_used = 0;
    } else if (ret != FEDGE_OK) {
        goto cleanup;
    }
    a->n_accepted = res.n_used;
    a->n_rejected += res.n_excluded;
    if (!res.ok) {
        CHK(finish_round_row(a, "failed", NULL, -1, -1, res.reason));
        CHK(fedge_gov_sign_head(a, a->round));
        CHK(fedge_store_commit(a->db));
        FEDGE_WARN("round %u failed: %s; model unchanged", a->round, res.reason);
    } else {
        double acc = -1;
        CHK(adopt_model(a, &a->model, a->round));
        CHK(evaluate(a, &acc));
        CHK(record_model(a, parent, "aggregate", a->round, acc, NULL));
        CHK(finish_round_row(a, "closed", a->version_hex, acc, res.epsilon, res.reason[0] ? res.reason : NULL));
        CHK(fedge_strategy_save(a, a->round));
        CHK(fedge_gov_sign_head(a, a->round));
        CHK(fedge_store_commit(a->db));
        CHK(fedge_strategy_commit(a));
        a->last_accuracy = acc;
        a->rounds_aggregated++;
        FEDGE_INFO("round %u closed: %zu accepted, %zu rejected, %llu bytes, accuracy %.4f, model %.16s,"
                   " %.2fs aggregate+eval", a->round, a->n_accepted, a->n_rejected,
                   (unsigned long long)a->bytes_received, acc, a->version_hex, fedge_now() - t0);
    }
    if (a->cfg.retain_deltas_rounds > 0) { /* housekeeping: a failure is retried next round */
        int rr = fedge_retention_after_round(a);
        if (rr != FEDGE_OK)
            FEDGE_WARN("round %u: dropping old delta bodies failed: %s", a->round, fedge_strerror(rr));
    }
    a->rounds_done++;
    a->state = FEDGE_AGG_WAITING;
    /* the round is logged: whatever refinement meets, the run still ends
     * at `rounds` */
    int refined = FEDGE_OK;
    if (res.ok && a->cfg.refine_every > 0 && a->rounds_done % a->cfg.refine_every == 0)
        refined = refine_model(a);
    if (a->cfg.rounds > 0 && a->rounds_done >= a->cfg.rounds) {
        a->state = FEDGE_AGG_FINISHED;
        a->finished_at = fedge_now();
        char msg[256];
        if (fedge_agg_outcome(a, msg, sizeof msg) == 0)
            FEDGE_INFO("%s", msg);
        else
            FEDGE_ERROR("%s", msg);
    }
    ret = refined;
cleanup:
    if (ret != FEDGE_OK) {
        fedge_store_rollback(a->db);
        fedge_strategy_discard(a);
        /* the in-memory model may be half-updated: reload the logged one */
        char err[256] = "";
        if (load_current_model(a, err, sizeof err) != FEDGE_OK)
            FEDGE_ERROR("cannot reload the current model: %s", err);
    }
    return ret;
}

/* Accepted updates that close the round early: the quorum, but never fewer
 * than a round needs to aggregate at all (min_updates, the policy's
 * min_clients), so an early close cannot fail a round the deadline could
 * still save. */
static size_t quorum_count(const fedge_aggregator *a)
{
    size_t q = (size_t)ceil(a->cfg.quorum * (double)a->n_selected - 1e-9);
    if (q < (size_t)a->cfg.min_updates)
        q = (size_t)a->cfg.min_updates;
    if (q < fedge_policy_min_clients(a->policy))
        q = fedge_policy_min_clients(a->policy);
    return q ? q : 1;
}

int fedge_agg_outcome(const fedge_aggregator *a, char *msg, size_t msglen)
{
    long failed = a->rounds_done - a->rounds_aggregated;
    if (a->rounds_done > 0 && a->rounds_aggregated == 0) {
        snprintf(msg, msglen, "run ended after %ld round(s) and none aggregated: the model is the initial one"
                 " (see the rounds' reasons: fedge-audit report)", a->rounds_done);
        return 3;
    }
    snprintf(msg, msglen, "finished %ld rounds (%ld aggregated, %ld failed); final accuracy %.4f",
             a->rounds_done, a->rounds_aggregated, failed, a->last_accuracy);
    return 0;
}

/* FEDGE_ERR_BUSY is transient: the step that met it is retried (every
 * second) until it has lasted db_busy_retry_s; then it is returned. */
static int transient(fedge_aggregator *a, double now, int ret)
{
    if (ret != FEDGE_ERR_BUSY) {
        if (ret == FEDGE_OK)
            a->busy_since = 0;
        return ret;
    }
    if (a->busy_since == 0)
        a->busy_since = now;
    if (now - a->busy_since >= a->cfg.db_busy_retry_s) {
        FEDGE_ERROR("the database has been locked by another process for %.0fs (db_busy_retry_s); stopping",
                    now - a->busy_since);
        return ret;
    }
    a->retry_at = now + 1.0;
    FEDGE_WARN("the database is locked by another process; retrying round %u in 1s (locked for %.0fs so far)",
               a->round, now - a->busy_since);
    return FEDGE_OK;
}

int fedge_agg_maybe_close(fedge_aggregator *a, double now)
{
    if (now < a->retry_at)
        return FEDGE_OK;
    if (a->state == FEDGE_AGG_OPEN && a->n_accepted >= quorum_count(a))
        return transient(a, now, close_round(a, now));
    return FEDGE_OK;
}

static int tick_step(fedge_aggregator *a, double now);

int fedge_agg_tick(fedge_aggregator *a, double now)
{
    if (now < a->retry_at)
        return FEDGE_OK;
    return transient(a, now, tick_step(a, now));
}

static int tick_step(fedge_aggregator *a, double now)
{
    switch (a->state) {
    case FEDGE_AGG_WAITING:
        if (now >= a->start_at)
            return open_round(a, now);
        return FEDGE_OK;
    case FEDGE_AGG_OPEN:
        if (a->n_accepted >= quorum_count(a))
            return close_round(a, now);
        if (now >= a->deadline) {
            FEDGE_INFO("round %u deadline: %zu of %zu updates", a->round, a->n_accepted, a->n_selected);
            return close_round(a, now);
        }
        return FEDGE_OK;
    case FEDGE_AGG_FINISHED:
        return FEDGE_OK;
    }
    return FEDGE_ERR_STATE;
}

/* ---- requests ------------------------------------------------------------- */

int fedge_agg_round_info(const fedge_aggregator *a, const char *device, double now, char *buf, size_t cap)
{
    static const char *states[] = {"waiting", "open", "finished"};
    int d = find_device(a, device);
    int selected = a->state == FEDGE_AGG_OPEN && d >= 0 && a->selected[d] && !a->submitted[d];
    double left_ms = a->state == FEDGE_AGG_OPEN ? (a->deadline - now) * 1000.0 : 0;
    char spec[FEDGE_MODEL_SPEC_MAX];
    int ret = fedge_model_spec_format(&a->model.spec, spec, sizeof spec);
    if (ret != FEDGE_OK)
        return ret;
    int n = snprintf(buf, cap,
                     "state=%s\nround=%u\nselected=%d\ndeadline_ms=%.0f\nmodel=%s\nrun=%s\nspec=%s\n"
                     "epochs=%ld\nlr=%g\nbatch=%ld\nmomentum=%g\n",
                     states[a->state], a->round, selected, left_ms > 0 ? left_ms : 0, a->version_hex,
                     a->run_id_hex,
                     spec, a->cfg.local_epochs, a->cfg.lr * pow(a->cfg.lr_decay, a->round > 0 ? a->round - 1.0 : 0.0),
                     a->cfg.batch, a->cfg.momentum);
    if (n < 0 || (size_t)n >= cap)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    size_t off = (size_t)n;
    if (a->cfg.fedprox_mu > 0) {
        n = snprintf(buf + off, cap - off, "prox_mu=%g\n", a->cfg.fedprox_mu);
        if (n < 0 || (size_t)n >= cap - off)
            return FEDGE_ERR_BUFFER_TOO_SMALL;
        off += (size_t)n;
    }
    if (a->cfg.scaffold) {
        n = snprintf(buf + off, cap - off, "control=%s\n", a->control_version_hex);
        if (n < 0 || (size_t)n >= cap - off)
            return FEDGE_ERR_BUFFER_TOO_SMALL;
    }
    return FEDGE_OK;
}

int fedge_agg_status_json(const fedge_aggregator *a, char *buf, size_t cap)
{
    static const char *states[] = {"waiting", "open", "finished"};
    size_t seen = 0;
    for (size_t i = 0; i < a->keys.n; i++)
        seen += a->submitted[i];
    char acc[32];
    if (a->last_accuracy >= 0)
        snprintf(acc, sizeof acc, "%.4f", a->last_accuracy);
    else
        snprintf(acc, sizeof acc, "null");
    int n = snprintf(buf, cap,
                     "{\"state\":\"%s\",\"round\":%u,\"rounds_done\":%ld,\"rounds_total\":%ld,"
                     "\"model\":\"%s\",\"devices\":%zu,\"selected\":%zu,\"clients_seen\":%zu,"
                     "\"accepted\":%zu,\"rejected\":%zu,\"bytes_received\":%llu,\"accuracy\":%s,"
                     "\"finished\":%s}",
                     states[a->state], a->round, a->rounds_done, a->cfg.rounds, a->version_hex,
                     a->keys.n, a->n_selected, seen, a->n_accepted, a->n_rejected,
                     (unsigned long long)a->bytes_received, acc,
                     a->state == FEDGE_AGG_FINISHED ? "true" : "false");
    return (n < 0 || (size_t)n >= cap) ? FEDGE_ERR_BUFFER_TOO_SMALL : FEDGE_OK;
}

static void reply(int *code, char *msg, size_t msglen, int c, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void reply(int *code, char *msg, size_t msglen, int c, const char *fmt, ...)
{
    va_list ap;
    *code = c;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
}

/* Maps a validation error of the sealed update to a CoAP code. */
static int code_for(int err)
{
    switch (err) {
    case FEDGE_ERR_ENV_KEY_MISMATCH:
    case FEDGE_ERR_ENV_AUTH:
        return 401;
    case FEDGE_ERR_ENV_REPLAY:
    case FEDGE_ERR_ENV_RUN:
    case FEDGE_ERR_DELTA_ROUND:
    case FEDGE_ERR_DELTA_BASE:
        return 409;
    case FEDGE_ERR_ENV_OVERSIZED:
        return 413;
    default:
        return 400;
    }
}

static int device_counter(fedge_aggregator *a, const char *device, uint64_t *counter, char *status,
                          size_t status_len)
{
    sqlite3_stmt *st = NULL;
    int ret;
    CHK(fedge_store_prepare(a->db, "SELECT last_counter, status FROM devices WHERE id=?", &st));
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW)
        FAIL(FEDGE_ERR_NOT_FOUND);
    *counter = (uint64_t)sqlite3_column_int64(st, 0);
    snprintf(status, status_len, "%s", (const char *)sqlite3_column_text(st, 1));
cleanup:
    sqlite3_finalize(st);
    return ret;
}

static int was_participant(fedge_aggregator *a, uint32_t round, const char *device, int *was)
{
    int64_t one;
    return fedge_store_query_int64(a->db, &one, was, "SELECT 1 FROM round_participants WHERE round=? AND device=?",
                                   "it", (int64_t)round, device);
}

/* A frame whose counter is not fresh may be a resend of one already
 * decided: the same sealed bytes from the same device. Its stored decision is
 * the true answer, whatever state the aggregator is in now (the round may
 * have closed, the run finished, the daemon restarted). *found = 0 when no
 * stored update has these bytes. */
static int stored_decision(fedge_aggregator *a, const char *device, uint64_t counter,
                           const uint8_t sealed_hash[FEDGE_HASH_LEN], int *found, int *accepted,
                           uint32_t *round, char *reason, size_t reason_len)
{
    sqlite3_stmt *st = NULL;
    int ret;
    *found = 0;
    CHK(fedge_store_prepare(a->db, "SELECT round, decision, rule, reason FROM updates"
                                   " WHERE device=? AND counter=? AND sealed_sha256=?"
                                   " ORDER BY id DESC LIMIT 1", &st));
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)counter);
    sqlite3_bind_blob(st, 3, sealed_hash, FEDGE_HASH_LEN, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *found = 1;
        *round = (uint32_t)sqlite3_column_int64(st, 0);
        *accepted = strcmp((const char *)sqlite3_column_text(st, 1), "rejected") != 0;
        snprintf(reason, reason_len, "%s: %s", (const char *)sqlite3_column_text(st, 2),
                 (const char *)sqlite3_column_text(st, 3));
    } else if (rc != SQLITE_DONE) {
        FAIL(fedge_store_status(rc));
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

int fedge_agg_submit(fedge_aggregator *a, const char *device, const uint8_t *body, size_t len,
                     double now, int *code, char *msg, size_t msglen)
{
    fedge_delta_header h;
    fedge_envelope_view view;
    uint8_t *plain = NULL;
    float *delta = NULL;
    uint8_t sealed_hash[FEDGE_HASH_LEN];
    uint64_t counter = 0, last_counter = 0;
    char status[16];
    int ret = FEDGE_OK;
    int d = find_device(a, device);
    (void)now;

    if (d < 0) {
        reply(code, msg, msglen, 403, "unknown device");
        goto cleanup;
    }
    if (len > a->max_update_bytes) {
        reply(code, msg, msglen, 413, "update of %zu bytes exceeds the limit of %zu", len,
              a->max_update_bytes);
        goto cleanup;
    }
    int pr = fedge_envelope_parse(body, len, &view);
    if (pr != FEDGE_OK) {
        reply(code, msg, msglen, code_for(pr), "malformed update: %s", fedge_strerror(pr));
        goto cleanup;
    }
    CHK(device_counter(a, device, &last_counter, status, sizeof status));
    if (view.counter <= last_counter) {
        int found = 0, was_accepted = 0;
        uint32_t in_round = 0;
        char why[FEDGE_POLICY_REASON_MAX + FEDGE_POLICY_RULE_MAX + 4];
        CHK(fedge_sha256(body, len, sealed_hash));
        CHK(stored_decision(a, device, view.counter, sealed_hash, &found, &was_accepted, &in_round, why,
                            sizeof why));
        if (found && was_accepted) {
            reply(code, msg, msglen, 204, "accepted (duplicate of the update for round %u)", in_round);
            goto cleanup;
        }
        if (found) {
            reply(code, msg, msglen, 403, "rejected (duplicate of the update for round %u): %s", in_round, why);
            goto cleanup;
        }
    }
    if (a->state != FEDGE_AGG_OPEN) {
        reply(code, msg, msglen, 503, a->state == FEDGE_AGG_FINISHED ? "run finished" : "no open round");
        goto cleanup;
    }
    if (a->submitted[d]) {
        reply(code, msg, msglen, 409, "an update for round %u was already accepted", a->round);
        goto cleanup;
    }
    /* A straggler's update for an earlier round (within the policy's
     * staleness window) joins this round's aggregate, discounted; it must
     * come from a participant of the round it was trained for. The round
     * read here is authenticated by the GCM tag in fedge_update_open. */
    uint32_t window = fedge_gov_round_window(a);
    uint32_t for_round = a->round;
    fedge_delta_header peek;
    if (view.aad_len >= FEDGE_DELTA_HEADER_LEN && fedge_delta_parse_header(view.aad, &peek) == FEDGE_OK)
        for_round = peek.round;
    if (for_round < a->round && a->round - for_round <= window) {
        int was = 0, already = 0;
        int64_t one;
        CHK(was_participant(a, for_round, device, &was));
        if (!was) {
            reply(code, msg, msglen, 403, "not selected for round %u", for_round);
            goto cleanup;
        }
        /* Training for round r counts once: not again when the device has
         * an update counted in round r or later. */
        CHK(fedge_store_query_int64(a->db, &one, &already,
                                    "SELECT 1 FROM updates WHERE device=? AND round>=? AND decision<>'rejected'",
                                    "ti", device, (int64_t)for_round));
        if (already) {
            reply(code, msg, msglen, 409, "an update of this device for round %u or later was already counted",
                  for_round);
            goto cleanup;
        }
    } else if (!a->selected[d]) {
        reply(code, msg, msglen, 403, "not selected for round %u", a->round);
        goto cleanup;
    }

    /* A SCAFFOLD round takes the model delta and the control-variate delta
     * in one encoding, any other round the model delta alone: the other
     * form is refused before it is opened, with the form it needs. */
    if (view.aad_len >= FEDGE_DELTA_HEADER_LEN && fedge_delta_parse_header(view.aad, &peek) == FEDGE_OK) {
        int control = (peek.flags & FEDGE_DELTA_FLAG_CONTROL) != 0;
        if (a->cfg.scaffold && (!control || peek.n_elems != 2 * a->model.n_params)) {
            reply(code, msg, msglen, 400, "this run is SCAFFOLD: an update carries the model delta and the"
                  " control-variate delta (flags 0x02, n_elems = 2 x %zu)", a->model.n_params);
            goto cleanup;
        }
        if (!a->cfg.scaffold && control) {
            reply(code, msg, msglen, 400, "this run is not SCAFFOLD: an update carries the model delta alone"
                  " (no control-variate flag, n_elems = %zu)", a->model.n_params);
            goto cleanup;
        }
    }
    size_t n_elems = a->model.n_params * (a->cfg.scaffold ? 2 : 1);
    plain = malloc(len);
    delta = malloc(n_elems * sizeof(float));
    if (!plain || !delta)
        FAIL(FEDGE_ERR_NOMEM);
    fedge_update_expect exp = {
        .model_id = a->model_id,
        .n_elems = (uint32_t)n_elems,
        .round = a->round,
        .round_window = window,
        .last_counter = last_counter,
        .max_len = a->max_update_bytes,
        .run_id = a->run_id,
    };
    int vr = fedge_update_open(&a->dev_keys[d], body, len, &exp, plain, &h, &counter, delta);
    if (vr != FEDGE_OK) {
        if (vr == FEDGE_ERR_ENV_RUN)
            reply(code, msg, msglen, 409, "%s: this is run %.8s", fedge_strerror(vr), a->run_id_hex);
        else
            reply(code, msg, msglen, code_for(vr), "%s", fedge_strerror(vr));
        FEDGE_INFO("update from %s refused: %s", device, fedge_strerror(vr));
        goto cleanup;
    }
    CHK(fedge_sha256(body, len, sealed_hash));

    /* Authenticated from here on: the decision is logged with its reason. */
    fedge_gov_update_in in = {
        .device_index = d,
        .device = device,
        .status = status,
        .header = &h,
        .delta = delta,
        .n_params = a->model.n_params,
        .counter = counter,
        .bytes = len,
        .encoded = plain,
        .encoded_len = FEDGE_DELTA_HEADER_LEN + view.ct_len,
        .sealed_sha256 = sealed_hash,
    };
    int accepted = 0;
    char reason[FEDGE_POLICY_REASON_MAX + 64];
    CHK(fedge_gov_admit_update(a, &in, &accepted, reason, sizeof reason));
    a->bytes_received += len;
    if (accepted) {
        a->submitted[d] = 1;
        a->n_accepted++;
        reply(code, msg, msglen, 204, "%s", reason);
        FEDGE_INFO("round %u: %s %s (%u samples, %s, %zu bytes)", a->round, device, reason, h.n_samples,
                   fedge_encoding_name((fedge_encoding)h.encoding), len);
    } else {
        a->n_rejected++;
        reply(code, msg, msglen, 403, "%s", reason);
        FEDGE_INFO("round %u: %s rejected: %s", a->round, device, reason);
    }
cleanup:
    if (ret == FEDGE_ERR_BUSY) {
        /* transient: the device retries, nothing was stored */
        reply(code, msg, msglen, 503, "database busy; retry later");
        ret = FEDGE_OK;
    }
    if (plain) {
        memset(plain, 0, len);
        free(plain);
    }
    free(delta);
    return ret;
}

int fedge_agg_reload_policy(fedge_aggregator *a)
{
    return fedge_gov_reload(a);
}
