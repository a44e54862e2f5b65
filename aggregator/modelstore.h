/* modelstore.h — the model store: one file per version in model_dir
 * (<version hex>.fmdl, the version being the content hash), its `models`
 * row, the current model in memory (a->model, a->version*, a->model_blob
 * served as GET /model) and its evaluation on the test set.
 *
 * Owner thread only: these read and write a->model and a->db. The current
 * model is whatever meta 'current_version' names (a version published again
 * has no new models row); fedge_modelstore_load_current rebuilds the
 * in-memory state from the log after a restart or a rolled-back close.
 * Errors: FEDGE_ERR_AUDIT_FILE when a model file does not hash to the
 * version the log names; I/O, SQL and memory errors as they come. */
#ifndef FEDGE_MODELSTORE_H
#define FEDGE_MODELSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "agg.h"

/* model_dir/<version_hex>.fmdl */
int fedge_modelstore_path(const fedge_aggregator *a, const char *version_hex, char *out, size_t cap);
/* Makes *m the current model (takes its buffers unless m is &a->model):
 * version, model id, serialized blob for GET /model; `round` produced it. */
int fedge_modelstore_adopt(fedge_aggregator *a, fedge_model *m, uint32_t round);
/* Saves the current model's file, inserts its models row (audited; kept
 * when the version exists) and sets meta 'current_version' (caller's
 * transaction). accuracy < 0: NULL; parent_hex and info may be NULL. */
int fedge_modelstore_record(fedge_aggregator *a, const char *parent_hex, const char *kind, uint32_t round,
                            double accuracy, const char *info);
/* Test accuracy of the current model (a->test), in chunks that fit the
 * model's activation limit. */
int fedge_modelstore_evaluate(fedge_aggregator *a, double *accuracy);
/* Loads the log's current model (checking its file's hash), or creates and
 * records the initial one (init_model, or model_spec randomized by seed). */
int fedge_modelstore_load_current(fedge_aggregator *a, char *err, size_t errlen);
/* The reading half of load_current, on any handle (read-only is fine):
 * *found = 0 when the log has no model yet; else the current model's file
 * (under model_dir) loaded into *m (the caller frees it) after its hash was
 * checked against the log: FEDGE_ERR_AUDIT_FILE and err when it differs,
 * the load's status when it cannot be read. */
int fedge_modelstore_check_current(sqlite3 *db, const char *model_dir, int *found, fedge_model *m,
                                   uint32_t *round, char *err, size_t errlen);
/* Rolls back the open transaction and reloads the log's current model (the
 * in-memory one may be half-updated); a reload failure is logged. */
void fedge_modelstore_rollback(fedge_aggregator *a);
/* The test set (a->test) named by cfg.test_data. */
int fedge_modelstore_load_test_set(fedge_aggregator *a, char *err, size_t errlen);
/* Runs the configured refinement command on the current model. A refined
 * model becomes the next version (kind refine, parent = the aggregate) with
 * the strategy state carried over; a failure or timeout is logged as an
 * audited event and the aggregate stays. Outside any transaction. */
int fedge_modelstore_refine(fedge_aggregator *a);

#endif
