/* agg.c — the aggregator's public API (agg.h) as glue: init/free, and each
 * call handed to its module: the scheduler (scheduler.h) for the clock and the
 * round, ingest (ingest.h) for an update, the model store (modelstore.h). */
#include "agg.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "audit.h"
#include "clock.h"
#include "common.h"
#include "delta.h"
#include "governance.h"
#include "ingest.h"
#include "keys_audit.h"
#include "round_config.h"
#include "log.h"
#include "modelstore.h"
#include "scheduler.h"
#include "store.h"
#include "strategy.h"
#include "update.h"

double fedge_now(void)
{
    return fedge_clock_mono();
}

double fedge_wall_now(void)
{
    return fedge_clock_wall(); /* step-free: the log and the rate-limit window never jump */
}

/* The devices row's column (status or region) into out; "" when there is no row. */
static int device_column(sqlite3 *db, const char *sql, const char *device, char *out, size_t cap)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    out[0] = '\0';
    CHK(fedge_store_prepare(db, sql, &st));
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
    else if (rc != SQLITE_DONE)
        ret = FEDGE_ERR_SQL;
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* The devices table from keys, in one transaction. With old (a keys reload:
 * keys is old merged with the file, slots kept), every device the file adds
 * (no devices row yet: fedge-admin device add writes its own), takes out
 * (not revoked already: fedge-admin device remove revokes it first) or moves
 * to another region is an audited event, as fedge-admin writes them, the
 * keys ledger records the changes, and the transaction signs the audit head
 * when it wrote anything (as the start-up's keys record does), so no reload
 * admission sits in the unsigned tail while the device is served. */
static int sync_devices(fedge_aggregator *a, const fedge_keys *keys, const fedge_keys *old)
{
    sqlite3_stmt *st = NULL;
    int ret;
    size_t wrote = 0;
    fedge_keys_audit_diff kd = {0};
    double now = fedge_wall_now();
    char prev[FEDGE_REGION_MAX + 16], detail[4608];
    CHK(fedge_store_begin(a->db));
    for (size_t i = 0; i < keys->n; i++) {
        const fedge_device_entry *d = &keys->devices[i];
        if (d->removed)
            continue;
        if (old)
            CHK(device_column(a->db, "SELECT region FROM devices WHERE id=?", d->id, prev, sizeof prev));
        CHK(fedge_store_prepare(a->db,
                        "INSERT INTO devices(id, region, first_seen) VALUES(?1, ?2, ?3)"
                        " ON CONFLICT(id) DO UPDATE SET region = ?2 WHERE region <> ?2",
                        &st));
        sqlite3_bind_text(st, 1, d->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, d->region, -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 3, now);
        ret = fedge_store_step_done(a->db, st);
        st = NULL;
        if (ret != FEDGE_OK)
            goto cleanup;
        if (!old || (prev[0] && strcmp(prev, d->region) == 0))
            continue;
        if (!prev[0]) {
            snprintf(detail, sizeof detail, "device %s enrolled in region %s by a keys reload (keys file %.4000s)",
                     d->id, d->region, a->cfg.keys_file);
            CHK(fedge_gov_device_event(a->db, d->id, "enrolled", detail, now));
            wrote++;
        } else {
            snprintf(detail, sizeof detail, "device %s: region %s -> %s by a keys reload (keys file %.4000s)", d->id,
                     prev, d->region, a->cfg.keys_file);
            CHK(fedge_gov_device_event(a->db, d->id, "enrolled", detail, now));
            wrote++;
        }
    }
    for (size_t i = 0; old && i < old->n && i < keys->n; i++) {
        if (old->devices[i].removed || !keys->devices[i].removed)
            continue;
        CHK(device_column(a->db, "SELECT status FROM devices WHERE id=?", keys->devices[i].id, prev, sizeof prev));
        if (strcmp(prev, "revoked") == 0)
            continue;
        snprintf(detail, sizeof detail, "device %s: key taken out of the keys file by a keys reload (keys file "
                 "%.4000s); status %s kept, it cannot authenticate until listed again", keys->devices[i].id,
                 a->cfg.keys_file, prev[0] ? prev : "unknown");
        CHK(fedge_gov_device_event(a->db, keys->devices[i].id, "device_status", detail, now));
        wrote++;
    }
    detail[0] = '\0';
    if (old && (ret = fedge_keys_audit_record(a->db, keys, "reload", a->cfg.keys_file, now, &kd, detail,
                                              sizeof detail)) != FEDGE_OK) { /* the keys ledger (keys_audit.h) */
        FEDGE_ERROR("keys reload: keys ledger: %s", detail[0] ? detail : fedge_strerror(ret));
        goto cleanup;
    }
    if (old && wrote + kd.added + kd.removed + kd.rekeyed + kd.moved)
        CHK(fedge_gov_sign_head(a, a->round));
    CHK(fedge_store_commit(a->db));
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    return ret;
}

int fedge_agg_init(fedge_aggregator *a, const fedge_agg_config *cfg, char *err, size_t errlen)
{
    int ret;
    memset(a, 0, sizeof *a);
    a->cfg = *cfg;
    a->last_accuracy = -1;
    fedge_rng_seed(&a->rng, (uint64_t)cfg->seed ^ 0x5eed5eedULL);
    a->sched = fedge_sched_find(cfg->mode[0] ? cfg->mode : "sync");
    if (!a->sched) {
        snprintf(err, errlen, "mode '%s': no such run mode", cfg->mode);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }

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
    ret = fedge_store_open_db_paged(cfg->db, cfg->db_page_size, &a->db);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "database %s: %s", cfg->db, fedge_strerror(ret));
        goto cleanup;
    }
    fedge_store_cache_open(a->db);
    CHK(fedge_gov_init(a, err, errlen));
    { /* the round-shaping configuration, for replay (round_config.h) */
        int recorded = 0;
        CHK(fedge_store_begin(a->db));
        ret = fedge_round_config_record(a->db, &a->cfg, fedge_clock_wall(), &recorded);
        if (ret == FEDGE_OK)
            ret = fedge_store_commit(a->db);
        if (ret != FEDGE_OK) {
            fedge_store_rollback(a->db);
            snprintf(err, errlen, "cannot record the round configuration: %s", fedge_strerror(ret));
            goto cleanup;
        }
    }
    fedge_strategy_name(a);
    ret = fedge_store_run_id(a->db, a->run_id);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "database %s: cannot read or create the run id: %s", cfg->db, fedge_strerror(ret));
        goto cleanup;
    }
    fedge_hex_encode(a->run_id, sizeof a->run_id, a->run_id_hex);
    CHK(sync_devices(a, &a->keys, NULL));
    CHK(fedge_modelstore_load_test_set(a, err, errlen));
    ret = fedge_modelstore_load_current(a, err, errlen);
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
                                                               sizeof(float) + FEDGE_DELTA_PARTIAL_HEAD_LEN);
    CHK(a->sched->resume(a));
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
    free(a->adm_step);
    free(a->adm_at);
    free(a->asked_at);
    free(a->view_changed);
    free(a->view_changed_mark);
    free(a->askers);
    free(a->holders);
    free(a->async_mark);
    free(a->rank);
    free(a->rank_step);
    fedge_keys_free(&a->keys);
    fedge_model_free(&a->model);
    free(a->model_blob);
    free(a->eval_scratch);
    fedge_dataset_free(&a->test);
    fedge_store_cache_close(a->db);
    if (a->db)
        sqlite3_close_v2(a->db);
    memset(a, 0, sizeof *a);
}

int fedge_agg_tick(fedge_aggregator *a, double now)
{
    if (now < a->retry_at)
        return FEDGE_OK;
    return fedge_sched_transient(a, now, a->sched->on_tick(a, now));
}

int fedge_agg_maybe_close(fedge_aggregator *a, double now)
{
    if (now < a->retry_at)
        return FEDGE_OK;
    return fedge_sched_transient(a, now, a->sched->on_accepted(a, now));
}

int fedge_agg_outcome(const fedge_aggregator *a, char *msg, size_t msglen)
{
    return fedge_sched_outcome(a, msg, msglen);
}

int fedge_agg_round_info(fedge_aggregator *a, const char *device, double now, char *buf, size_t cap)
{
    static const char *states[] = {"waiting", "open", "finished"};
    fedge_sched_view v;
    a->sched->view(a, fedge_agg_device_index(a, device), now, &v);
    char spec[FEDGE_MODEL_SPEC_MAX];
    int ret = fedge_model_spec_format(&a->model.spec, spec, sizeof spec);
    if (ret != FEDGE_OK)
        return ret;
    int n = snprintf(buf, cap,
                     "state=%s\nround=%u\nselected=%d\ndeadline_ms=%.0f\nmodel=%s\nrun=%s\nspec=%s\n"
                     "epochs=%ld\nlr=%g\nbatch=%ld\nmomentum=%g\n",
                     states[a->state], a->round, v.selected, v.deadline_ms, a->version_hex,
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
    size_t seen = 0, live = 0;
    for (size_t i = 0; i < a->keys.n; i++) {
        seen += a->submitted[i];
        live += !a->keys.devices[i].removed;
    }
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
                     live, a->n_selected, seen, a->n_accepted, a->n_rejected,
                     (unsigned long long)a->bytes_received, acc,
                     a->state == FEDGE_AGG_FINISHED ? "true" : "false");
    return (n < 0 || (size_t)n >= cap) ? FEDGE_ERR_BUFFER_TOO_SMALL : FEDGE_OK;
}

int fedge_agg_submit(fedge_aggregator *a, const char *device, const uint8_t *body, size_t len,
                     double now, int *code, char *msg, size_t msglen)
{
    fedge_ingest_snapshot snap;
    fedge_ingest_frame f = {0};
    int ret;
    int d = fedge_agg_device_index(a, device);
    (void)now;
    memset(&snap, 0, sizeof snap);
    if (d < 0) {
        *code = 403;
        snprintf(msg, msglen, "unknown device");
        return FEDGE_OK;
    }
    CHK(fedge_ingest_snapshot_take(a, d, &snap));
    CHK(fedge_ingest_open(&snap, body, len, &f));
    CHK(fedge_ingest_commit(a, d, device, &snap, &f, code, msg, msglen));
cleanup:
    if (ret == FEDGE_ERR_BUSY) {
        /* transient: the device retries, nothing was stored */
        *code = 503;
        snprintf(msg, msglen, "database busy; retry later");
        ret = FEDGE_OK;
    }
    fedge_ingest_frame_free(&f);
    fedge_device_key_wipe(&snap.key);
    return ret;
}

int fedge_agg_reload_policy(fedge_aggregator *a)
{
    int ret = fedge_gov_reload(a);
    if (ret == FEDGE_OK)
        fedge_strategy_name(a);
    a->admit_dirty = 1;
    return ret;
}

/* ---- keys reload (SIGHUP) ---- */

#define GROW(dst, src, n_old, n_new)                                         \
    do {                                                                     \
        (dst) = calloc((n_new) ? (n_new) : 1, sizeof *(dst));               \
        if (!(dst))                                                          \
            FAIL(FEDGE_ERR_NOMEM);                                           \
        if ((src) && (n_old))                                                \
            memcpy((dst), (src), (n_old) * sizeof *(dst));                   \
    } while (0)

void fedge_agg_keys_abort(fedge_agg_keys_reload *r)
{
    if (!r)
        return;
    if (r->dev_keys)
        for (size_t i = 0; i < r->keys.n; i++)
            fedge_device_key_wipe(&r->dev_keys[i]);
    free(r->dev_keys);
    free(r->selected);
    free(r->submitted);
    free(r->adm_step);
    free(r->adm_at);
    free(r->asked_at);
    free(r->view_changed);
    free(r->view_changed_mark);
    fedge_keys_free(&r->keys);
    memset(r, 0, sizeof *r);
}

int fedge_agg_keys_prepare(fedge_aggregator *a, fedge_agg_keys_reload *r)
{
    fedge_keys fresh = {0};
    int ret;
    memset(r, 0, sizeof *r);
    ret = fedge_keys_load(a->cfg.keys_file, &fresh, r->err, sizeof r->err);
    if (ret != FEDGE_OK)
        goto cleanup;
    size_t n_old = a->keys.n;
    if (fresh.n == 0) {
        snprintf(r->err, sizeof r->err, "%.400s lists no devices", a->cfg.keys_file);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    ret = fedge_keys_merge(&a->keys, &fresh, &r->keys, &r->diff);
    if (ret != FEDGE_OK) {
        snprintf(r->err, sizeof r->err, "%.300s: %s%s", a->cfg.keys_file, fedge_strerror(ret),
                 ret == FEDGE_ERR_RANGE ? " (removed devices keep their slots until a restart)" : "");
        goto cleanup;
    }
    size_t n = r->keys.n;
    r->dev_keys = calloc(n, sizeof *r->dev_keys);
    if (!r->dev_keys)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < n; i++)
        if (!r->keys.devices[i].removed)
            CHK(fedge_envelope_derive_key(r->keys.devices[i].secret, FEDGE_SECRET_LEN, r->keys.devices[i].id,
                                          &r->dev_keys[i]));
    GROW(r->selected, a->selected, n_old, n);
    GROW(r->submitted, a->submitted, n_old, n);
    if (a->adm_step) {
        GROW(r->adm_step, a->adm_step, n_old, n);
        GROW(r->adm_at, a->adm_at, n_old, n);
        GROW(r->asked_at, a->asked_at, n_old, n);
        for (size_t i = n_old; i < n; i++)
            r->asked_at[i] = -1e300; /* never */
        GROW(r->view_changed, a->view_changed, a->n_view_changed, n);
        GROW(r->view_changed_mark, a->view_changed_mark, n_old, n);
    }
cleanup:
    fedge_keys_free(&fresh);
    if (ret != FEDGE_OK) {
        char why[sizeof r->err];
        memcpy(why, r->err, sizeof why);
        if (!why[0])
            snprintf(why, sizeof why, "%s", fedge_strerror(ret));
        fedge_agg_keys_abort(r);
        memcpy(r->err, why, sizeof r->err);
    }
    return ret;
}

int fedge_agg_keys_record(fedge_aggregator *a, fedge_agg_keys_reload *r)
{
    int ret = sync_devices(a, &r->keys, &a->keys);
    if (ret != FEDGE_OK)
        snprintf(r->err, sizeof r->err, "database: %s", fedge_strerror(ret));
    return ret;
}

void fedge_agg_keys_commit(fedge_aggregator *a, fedge_agg_keys_reload *r)
{
    size_t n_old = a->keys.n;
    if (a->dev_keys)
        for (size_t i = 0; i < n_old; i++)
            fedge_device_key_wipe(&a->dev_keys[i]);
    free(a->dev_keys);
    free(a->selected);
    free(a->submitted);
    fedge_keys_free(&a->keys);
    a->keys = r->keys;
    a->dev_keys = r->dev_keys;
    a->selected = r->selected;
    a->submitted = r->submitted;
    if (r->adm_step) {
        free(a->adm_step);
        free(a->adm_at);
        free(a->asked_at);
        free(a->view_changed);
        free(a->view_changed_mark);
        a->adm_step = r->adm_step;
        a->adm_at = r->adm_at;
        a->asked_at = r->asked_at;
        a->view_changed = r->view_changed;
        a->view_changed_mark = r->view_changed_mark;
    }
    fedge_keys_diff diff = r->diff;
    memset(r, 0, sizeof *r);
    /* a removed device holds no async slot, and a sync round stops waiting for it */
    for (size_t i = 0; i < n_old; i++)
        if (a->keys.devices[i].removed && a->sched->left)
            a->sched->left(a, (int)i);
    a->n_selected_gone = 0;
    for (size_t i = 0; i < n_old; i++)
        a->n_selected_gone += a->keys.devices[i].removed && a->selected[i] && !a->submitted[i];
    a->round_epoch++;
    a->admit_dirty = 1;
    FEDGE_INFO("keys reloaded from %s: %zu devices (%zu added, %zu removed, %zu changed)", a->cfg.keys_file,
               diff.live, diff.added, diff.removed, diff.changed);
}

int fedge_agg_reload_keys(fedge_aggregator *a)
{
    fedge_agg_keys_reload r;
    int ret = fedge_agg_keys_prepare(a, &r);
    if (ret == FEDGE_OK && (ret = fedge_agg_keys_record(a, &r)) != FEDGE_OK) {
        FEDGE_ERROR("keys reload: %s; keeping the previous keys", r.err);
        fedge_agg_keys_abort(&r);
        return ret;
    }
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("keys reload: %s; keeping the previous keys", r.err);
        return ret;
    }
    fedge_agg_keys_commit(a, &r);
    return FEDGE_OK;
}
