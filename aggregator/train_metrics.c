/* train_metrics.c — training metrics in the round log (train_metrics.h). */
#include "train_metrics.h"

#include <math.h>

#include "common.h"
#include "store.h"

int fedge_train_metrics_store(sqlite3 *db, int64_t update_id, const fedge_train_metrics *m)
{
    if (db == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (m == NULL || m->present == 0)
        return FEDGE_OK;
    sqlite3_stmt *st = NULL;
    int ret;
    CHK(fedge_store_prepare(db, "UPDATE updates SET train_loss=?, train_accuracy=?, train_epochs=?, train_ms=?"
                                " WHERE id=?", &st));
    if (m->present & FEDGE_TRAIN_HAS_LOSS)
        sqlite3_bind_double(st, 1, (double)m->loss);
    if (m->present & FEDGE_TRAIN_HAS_ACCURACY)
        sqlite3_bind_double(st, 2, (double)m->accuracy);
    if (m->present & FEDGE_TRAIN_HAS_EPOCHS)
        sqlite3_bind_int64(st, 3, m->epochs);
    if (m->present & FEDGE_TRAIN_HAS_MS)
        sqlite3_bind_int64(st, 4, m->train_ms);
    sqlite3_bind_int64(st, 5, update_id);
    ret = fedge_store_step_done(db, st);
    st = NULL;
cleanup:
    sqlite3_finalize(st);
    return ret;
}

typedef struct {
    double w, sum, sq; /* Σw, Σw·x, Σw·x² */
} wstat;

static void wstat_add(wstat *s, double w, double x)
{
    s->w += w;
    s->sum += w * x;
    s->sq += w * x * x;
}

/* Binds the mean and standard deviation at columns i and i + 1 (NULL when nothing was added). */
static void wstat_bind(const wstat *s, sqlite3_stmt *st, int i)
{
    if (!(s->w > 0.0))
        return;
    double mean = s->sum / s->w;
    double var = s->sq / s->w - mean * mean;
    sqlite3_bind_double(st, i, mean);
    sqlite3_bind_double(st, i + 1, var > 0.0 ? sqrt(var) : 0.0);
}

int fedge_train_metrics_round(sqlite3 *db, uint32_t round, int *written)
{
    if (db == NULL || written == NULL)
        return FEDGE_ERR_INVALID_ARG;
    *written = 0;
    sqlite3_stmt *st = NULL;
    int ret, rc;
    wstat loss = {0}, acc = {0};
    int64_t reports = 0, samples = 0;
    CHK(fedge_store_prepare(db, "SELECT n_samples, train_loss, train_accuracy FROM updates WHERE round=?"
                                " AND decision <> 'rejected' AND (train_loss IS NOT NULL OR"
                                " train_accuracy IS NOT NULL) ORDER BY id", &st));
    sqlite3_bind_int64(st, 1, round);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        double w = (double)sqlite3_column_int64(st, 0);
        reports++;
        samples += sqlite3_column_int64(st, 0);
        if (sqlite3_column_type(st, 1) != SQLITE_NULL)
            wstat_add(&loss, w, sqlite3_column_double(st, 1));
        if (sqlite3_column_type(st, 2) != SQLITE_NULL)
            wstat_add(&acc, w, sqlite3_column_double(st, 2));
    }
    if (rc != SQLITE_DONE)
        FAIL(fedge_store_status(rc));
    sqlite3_finalize(st);
    st = NULL;
    if (reports == 0)
        goto cleanup;
    CHK(fedge_store_prepare(db, "INSERT OR IGNORE INTO round_training(round, reports, samples, train_loss,"
                                " train_loss_sd, train_accuracy, train_accuracy_sd) VALUES(?,?,?,?,?,?,?)", &st));
    sqlite3_bind_int64(st, 1, round);
    sqlite3_bind_int64(st, 2, reports);
    sqlite3_bind_int64(st, 3, samples);
    wstat_bind(&loss, st, 4);
    wstat_bind(&acc, st, 6);
    ret = fedge_store_step_done(db, st);
    st = NULL;
    if (ret == FEDGE_OK)
        *written = sqlite3_changes(db) == 1; /* a round closes once: never rewritten */
cleanup:
    sqlite3_finalize(st);
    return ret;
}
