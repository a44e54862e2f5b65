/* modelstore.c — model files, models rows, the current model (modelstore.h). */
#include "modelstore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "common.h"
#include "governance.h"
#include "log.h"
#include "modelfile.h"
#include "refine.h"
#include "shard.h"
#include "store.h"
#include "strategy.h"

#define EVAL_BATCH 500

int fedge_modelstore_path(const fedge_aggregator *a, const char *version_hex, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s.fmdl", a->cfg.model_dir, version_hex);
    return (n < 0 || (size_t)n >= cap) ? FEDGE_ERR_BUFFER_TOO_SMALL : FEDGE_OK;
}

int fedge_modelstore_adopt(fedge_aggregator *a, fedge_model *m, uint32_t round)
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

int fedge_modelstore_record(fedge_aggregator *a, const char *parent_hex, const char *kind,
                        uint32_t round, double accuracy, const char *info)
{
    char path[FEDGE_PATH_MAX + 80], sha_hex[FEDGE_HASH_HEX_LEN];
    uint8_t sha[FEDGE_HASH_LEN];
    sqlite3_stmt *st = NULL;
    int ret;
    CHK(fedge_modelstore_path(a, a->version_hex, path, sizeof path));
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
    sqlite3_bind_double(st, 8, fedge_clock_wall());
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

int fedge_modelstore_evaluate(fedge_aggregator *a, double *accuracy)
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

int fedge_modelstore_check_current(sqlite3 *db, const char *model_dir, int *found, fedge_model *m,
                                   uint32_t *round, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    uint8_t version[FEDGE_HASH_LEN];
    int ret = FEDGE_OK;
    *found = 0;
    CHK(fedge_store_prepare(db, "SELECT version, path, round FROM models WHERE version ="
                                " coalesce((SELECT value FROM meta WHERE key='current_version'),"
                                " (SELECT version FROM models ORDER BY rowid DESC LIMIT 1))", &st));
    if (sqlite3_step(st) == SQLITE_ROW) {
        *found = 1;
        char want[FEDGE_HASH_HEX_LEN];
        const char *v = (const char *)sqlite3_column_text(st, 0);
        snprintf(want, sizeof want, "%s", v ? v : "");
        const char *stored = (const char *)sqlite3_column_text(st, 1);
        *round = (uint32_t)sqlite3_column_int64(st, 2);
        char path[FEDGE_PATH_MAX + 80]; /* relative paths start at model_dir; old logs hold absolute ones */
        snprintf(path, sizeof path, "%s%s%s", stored && stored[0] == '/' ? "" : model_dir,
                 stored && stored[0] == '/' ? "" : "/", stored ? stored : "");
        if (stored && stored[0] == '/' && access(path, F_OK) != 0) /* a moved old run */
            snprintf(path, sizeof path, "%s/%s", model_dir, strrchr(stored, '/') + 1);
        ret = fedge_model_load(path, m, version);
        if (ret != FEDGE_OK) {
            snprintf(err, errlen, "current model %s: %s", path, fedge_strerror(ret));
            goto cleanup;
        }
        char got[FEDGE_HASH_HEX_LEN];
        fedge_hash_to_hex(version, got);
        if (strcmp(got, want) != 0) {
            snprintf(err, errlen, "model file %s has version %s, the log says %s", path, got, want);
            fedge_model_free(m);
            FAIL(FEDGE_ERR_AUDIT_FILE);
        }
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

int fedge_modelstore_load_current(fedge_aggregator *a, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    fedge_model m = {0};
    uint8_t version[FEDGE_HASH_LEN];
    uint32_t round = 0;
    int ret, found = 0;
    CHK(fedge_modelstore_check_current(a->db, a->cfg.model_dir, &found, &m, &round, err, errlen));
    if (found) {
        CHK(fedge_modelstore_adopt(a, &m, round));
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
    CHK(fedge_modelstore_adopt(a, &m, 0));
    double acc = -1;
    if (a->test.n)
        CHK(fedge_modelstore_evaluate(a, &acc));
    a->last_accuracy = acc;
    CHK(fedge_store_begin(a->db));
    CHK(fedge_modelstore_record(a, NULL, "init", 0, acc, NULL));
    CHK(fedge_store_commit(a->db));
    FEDGE_INFO("initial model %s %.16s (test accuracy %.4f)", a->cfg.model_spec, a->version_hex, acc);
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    fedge_model_free(&m);
    return ret;
}

void fedge_modelstore_rollback(fedge_aggregator *a)
{
    fedge_store_rollback(a->db);
    char err[256] = "";
    if (fedge_modelstore_load_current(a, err, sizeof err) != FEDGE_OK)
        FEDGE_ERROR("cannot reload the current model: %s", err);
}

int fedge_modelstore_load_test_set(fedge_aggregator *a, char *err, size_t errlen)
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

/* BEGIN IMMEDIATE, waiting out another process's lock up to db_busy_retry_s:
 * for a step that cannot simply be retried from the tick (the refinement
 * command has already run). */
static int begin_patiently(fedge_aggregator *a)
{
    double since = fedge_clock_mono();
    int ret;
    while ((ret = fedge_store_begin(a->db)) == FEDGE_ERR_BUSY && fedge_clock_mono() - since < a->cfg.db_busy_retry_s &&
           !fedge_refine_stop_requested()) {
        FEDGE_WARN("the database is locked by another process; waiting to log the refinement");
        sleep(1);
    }
    return ret;
}

int fedge_modelstore_refine(fedge_aggregator *a)
{
    char in[FEDGE_PATH_MAX + 80], out[FEDGE_PATH_MAX + 80], summary[FEDGE_REFINE_SUMMARY_MAX],
        detail[FEDGE_REFINE_SUMMARY_MAX + 200];
    char parent[FEDGE_HASH_HEX_LEN];
    fedge_model m = {0};
    int exit_status = -1, ret, ok = 0;
    double t0 = fedge_clock_mono();
    memcpy(parent, a->version_hex, sizeof parent);
    CHK(fedge_modelstore_path(a, a->version_hex, in, sizeof in));
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
        CHK(fedge_modelstore_adopt(a, &m, a->round));
        CHK(fedge_modelstore_evaluate(a, &acc));
        CHK(fedge_modelstore_record(a, parent, "refine", a->round, acc, summary));
        CHK(fedge_strategy_carry(a, parent, a->version_hex));
        snprintf(detail, sizeof detail, "refined %.16s -> %.16s in %.1fs, accuracy %.4f -> %.4f: %s", parent,
                 a->version_hex, fedge_clock_mono() - t0, a->last_accuracy, acc, summary);
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
    if (ret != FEDGE_OK)
        fedge_modelstore_rollback(a);
    unlink(out);
    fedge_model_free(&m);
    return ret;
}
