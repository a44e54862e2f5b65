/* recompute.c — recomputes every aggregate model of a run from its log
 * (test helper for tests/integration/kill_storm.sh; non-DP runs only).
 *
 *   recompute --db FILE --models DIR [--server-lr X] [--rtol R] [--atol A]
 *
 * For each models row of kind 'aggregate' (round R, parent P): the round's
 * row names the same base and new version; P and the model are read from
 * DIR/<version>.fmdl (the file's checksum is its version); the accepted and
 * clipped updates of round R are decoded and averaged with their weights
 * (n_samples, discounted by (1 + s)^-1/2 for an update whose base model is
 * s published versions old, as docs/ARCHITECTURE.md says); then P + server_lr * mean must equal
 * the stored model to |diff| <= atol + rtol * |value|. One line per model;
 * exit 0 when every model matches, 1 when one does not, 2 on bad usage or an
 * unreadable log. */
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delta.h"
#include "error.h"
#include "hash.h"
#include "model.h"
#include "modelfile.h"

typedef struct {
    sqlite3 *db;
    const char *models_dir;
    double server_lr, rtol, atol;
} audit_ctx;

static int load_version(const audit_ctx *c, const char *hex, fedge_model *m)
{
    char path[4096];
    uint8_t version[FEDGE_HASH_LEN];
    char got[FEDGE_HASH_HEX_LEN];
    snprintf(path, sizeof path, "%s/%s.fmdl", c->models_dir, hex);
    int ret = fedge_model_load(path, m, version);
    if (ret != FEDGE_OK) {
        printf("  model %.16s: %s: %s\n", hex, path, fedge_strerror(ret));
        return ret;
    }
    fedge_hash_to_hex(version, got);
    if (strcmp(got, hex) != 0) {
        printf("  model file %s holds version %.16s\n", path, got);
        fedge_model_free(m);
        return FEDGE_ERR_MODEL_FILE_CHECKSUM;
    }
    return FEDGE_OK;
}

/* Staleness of an update in round `round` on base model `version`, as the
 * aggregator counts it at close: 0 on the round's own base; else the rounds
 * that closed (published a model) after the last one that published the
 * base and before this one. */
static int staleness_of(const audit_ctx *c, const uint8_t version[FEDGE_HASH_LEN], int64_t round,
                        int64_t *staleness)
{
    char hex[FEDGE_HASH_HEX_LEN];
    sqlite3_stmt *st = NULL;
    fedge_hash_to_hex(version, hex);
    if (sqlite3_prepare_v2(c->db, "SELECT CASE WHEN (SELECT base_version FROM rounds WHERE id=?2)=?1 THEN 0 ELSE"
                                  " (SELECT count(*) FROM rounds WHERE status='closed' AND id<?2 AND id>"
                                  " (SELECT max(coalesce((SELECT max(id) FROM rounds WHERE status='closed'"
                                  " AND new_version=?1 AND id<?2), 0), round) FROM models WHERE version=?1)) END",
                           -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    sqlite3_bind_text(st, 1, hex, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, round);
    int ok = sqlite3_step(st) == SQLITE_ROW;
    if (ok)
        *staleness = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return ok ? FEDGE_OK : FEDGE_ERR_SQL;
}

/* 0: the model matches; 1: it does not (printed); 2: the log is unusable. */
static int check_model(const audit_ctx *c, const char *version, const char *parent, int64_t round)
{
    fedge_model parent_m = {0}, model = {0};
    double *sum = NULL;
    float *delta = NULL;
    sqlite3_stmt *st = NULL;
    int result = 2;
    char base[FEDGE_HASH_HEX_LEN] = "", new_version[FEDGE_HASH_HEX_LEN] = "", status[16] = "";

    if (sqlite3_prepare_v2(c->db, "SELECT status, base_version, coalesce(new_version, '') FROM rounds"
                                  " WHERE id=?", -1, &st, NULL) != SQLITE_OK)
        goto cleanup;
    sqlite3_bind_int64(st, 1, round);
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(status, sizeof status, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(base, sizeof base, "%s", (const char *)sqlite3_column_text(st, 1));
        snprintf(new_version, sizeof new_version, "%s", (const char *)sqlite3_column_text(st, 2));
    }
    sqlite3_finalize(st);
    st = NULL;
    if (strcmp(status, "closed") != 0 || strcmp(base, parent) != 0 ||
        strcmp(new_version, version) != 0) {
        printf("round %lld model %.16s: MISMATCH: round row says status '%s', base %.16s, new %.16s;"
               " the model's parent is %.16s\n", (long long)round, version, status, base,
               new_version, parent);
        result = 1;
        goto cleanup;
    }
    if (load_version(c, parent, &parent_m) != FEDGE_OK || load_version(c, version, &model) != FEDGE_OK)
        goto cleanup;
    size_t n = model.n_params;
    if (parent_m.n_params != n) {
        printf("round %lld: parent and model differ in shape\n", (long long)round);
        goto cleanup;
    }
    uint32_t model_id = fedge_model_spec_id(&model.spec);
    sum = calloc(n, sizeof *sum);
    delta = malloc(n * sizeof *delta);
    if (!sum || !delta)
        goto cleanup;

    if (sqlite3_prepare_v2(c->db, "SELECT id, device, n_samples, delta FROM updates WHERE round=?"
                                  " AND decision IN ('accepted','clipped') ORDER BY id", -1, &st,
                           NULL) != SQLITE_OK)
        goto cleanup;
    sqlite3_bind_int64(st, 1, round);
    double total = 0;
    int used = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0);
        const uint8_t *blob = sqlite3_column_blob(st, 3);
        size_t len = (size_t)sqlite3_column_bytes(st, 3);
        fedge_delta_header h;
        int ret = blob ? fedge_delta_decode(blob, len, model_id, (uint32_t)n, &h, delta)
                       : FEDGE_ERR_NOT_FOUND;
        if (ret != FEDGE_OK) {
            printf("round %lld: update %lld (%s): stored delta unreadable: %s\n", (long long)round,
                   (long long)id, (const char *)sqlite3_column_text(st, 1), fedge_strerror(ret));
            goto cleanup;
        }
        double w = (double)sqlite3_column_int64(st, 2);
        int64_t staleness = 0;
        if (staleness_of(c, h.base_version, round, &staleness) != FEDGE_OK)
            goto cleanup;
        if (staleness > 0)
            w /= sqrt(1.0 + (double)staleness);
        for (size_t i = 0; i < n; i++)
            sum[i] += w * (double)delta[i];
        total += w;
        used++;
    }
    if (rc != SQLITE_DONE)
        goto cleanup;
    if (used == 0 || !(total > 0)) {
        printf("round %lld model %.16s: MISMATCH: aggregate made of no accepted update\n",
               (long long)round, version);
        result = 1;
        goto cleanup;
    }
    double worst = 0, worst_excess = 0;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float mean = (float)(sum[i] * (1.0 / total));
        float want = parent_m.params[i] + (float)c->server_lr * mean;
        double diff = fabs((double)want - (double)model.params[i]);
        double allowed = c->atol + c->rtol * fabs((double)model.params[i]);
        if (diff > worst)
            worst = diff;
        if (diff > allowed) {
            bad++;
            if (diff - allowed > worst_excess)
                worst_excess = diff - allowed;
        }
    }
    printf("round %lld model %.16s: %d updates, max |diff| %.3g: %s\n", (long long)round, version,
           used, worst, bad ? "MISMATCH" : "ok");
    if (bad)
        printf("  %zu of %zu parameters outside tolerance\n", bad, n);
    result = bad ? 1 : 0;
cleanup:
    sqlite3_finalize(st);
    fedge_model_free(&parent_m);
    fedge_model_free(&model);
    free(sum);
    free(delta);
    return result;
}

int main(int argc, char **argv)
{
    audit_ctx c = {.server_lr = 1.0, .rtol = 1e-5, .atol = 1e-6};
    const char *db_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--db") == 0 && v)
            db_path = argv[++i];
        else if (strcmp(argv[i], "--models") == 0 && v)
            c.models_dir = argv[++i];
        else if (strcmp(argv[i], "--server-lr") == 0 && v)
            c.server_lr = atof(argv[++i]);
        else if (strcmp(argv[i], "--rtol") == 0 && v)
            c.rtol = atof(argv[++i]);
        else if (strcmp(argv[i], "--atol") == 0 && v)
            c.atol = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s --db FILE --models DIR [--server-lr X] [--rtol R] [--atol A]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!db_path || !c.models_dir) {
        fprintf(stderr, "%s: --db and --models are required\n", argv[0]);
        return 2;
    }
    if (sqlite3_open_v2(db_path, &c.db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", db_path, sqlite3_errmsg(c.db));
        sqlite3_close(c.db);
        return 2;
    }
    sqlite3_busy_timeout(c.db, 5000);
    sqlite3_stmt *st = NULL;
    int worst = 0, models = 0;
    if (sqlite3_prepare_v2(c.db, "SELECT version, coalesce(parent, ''), round FROM models"
                                 " WHERE kind='aggregate' ORDER BY rowid", -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", db_path, sqlite3_errmsg(c.db));
        sqlite3_close(c.db);
        return 2;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        char version[FEDGE_HASH_HEX_LEN], parent[FEDGE_HASH_HEX_LEN];
        snprintf(version, sizeof version, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(parent, sizeof parent, "%s", (const char *)sqlite3_column_text(st, 1));
        int r = check_model(&c, version, parent, sqlite3_column_int64(st, 2));
        if (r > worst)
            worst = r;
        models++;
    }
    sqlite3_finalize(st);
    sqlite3_close(c.db);
    printf("%d aggregate models checked: %s\n", models,
           worst == 0 ? "all recomputed" : worst == 1 ? "MISMATCH" : "log unusable");
    return worst;
}
