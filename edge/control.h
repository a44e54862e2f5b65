/* control.h — SCAFFOLD's client control variate c_i on disk.
 *
 * c_i lives in <state_dir>/<id>.control: a model file (modelfile.h: the
 * round's spec, c_i as its parameters) followed by a 32-byte trailer
 * binding it to one aggregator run ("FEDGECV1", the run id of /round's run=,
 * a counter), written atomically and durably, mode 0600. The file is the
 * committed c_i: c_i+ becomes c_i only once the aggregator accepted the
 * update that carried c_i+ - c_i (2.04), because the server's c is the mean
 * of the c_i it has counted; a refused or lost update leaves c_i as it was.
 *
 * Pending: before the update is submitted, c_i+ is written durably to
 * <id>.control.pending with the update's envelope counter in the trailer.
 * settle(accepted) renames it over the committed file, settle(refused)
 * removes it. A process killed between the aggregator's commit and its own
 * learns the outcome on restart from the log (is there an update of this
 * device with that counter?) and settles then.
 *
 * Loading never fails over the file's content: an absent file is SCAFFOLD's
 * start (zeros); a corrupt file, one for another model spec, one of another
 * run (or of none: a file without the trailer), or one whose values are
 * implausible (fedge_edge_control_check) is reset to zeros too, and *status
 * says which so the caller can warn (the next commit replaces the file).
 * Only the allocation can fail.
 *
 * Plausibility: c and c_i estimate the clients' mean gradient, so the
 * correction c - c_i moves a weight by lr·|c - c_i| a step. A value with
 * lr·|v| > FEDGE_CONTROL_STEP_BOUND · max(1, max|w|) (w: the round's global
 * model) would move a weight by more than 1000 times the model's scale in
 * one step from the correction alone: no honest run gets there, and a served
 * c or a c_i beyond it (or non-finite) is refused. */
#ifndef FEDGE_EDGE_CONTROL_H
#define FEDGE_EDGE_CONTROL_H

#include <stdint.h>

#include "model.h"

#define FEDGE_CONTROL_RUN_ID_LEN 16     /* FEDGE_RUN_ID_LEN (update.h) */
#define FEDGE_CONTROL_STEP_BOUND 1000.0f

typedef enum {
    FEDGE_CONTROL_LOADED = 0,  /* the file's c_i */
    FEDGE_CONTROL_NEW = 1,     /* no file yet: zeros */
    FEDGE_CONTROL_OTHER_SPEC = 2, /* a c_i for another model: zeros */
    FEDGE_CONTROL_CORRUPT = 3, /* unreadable or corrupt (*why): zeros */
    FEDGE_CONTROL_OTHER_RUN = 4, /* a c_i of another aggregator run, or of none: zeros */
    FEDGE_CONTROL_IMPLAUSIBLE = 5, /* values beyond the bound (needs bound > 0): zeros */
} fedge_control_status;

/* Malloc'd "<state_dir>/<id>.control" into *out (caller frees). */
int fedge_edge_control_path(const char *state_dir, const char *id, char **out);
/* *ci (zeroed, or holding last round's c_i: freed first) becomes c_i for spec
 * and run_id. bound: fedge_edge_control_bound's, or 0 for no value check.
 * why (may be NULL): the load error behind FEDGE_CONTROL_CORRUPT. */
int fedge_edge_control_load(const char *path, const fedge_model_spec *spec,
                            const uint8_t run_id[FEDGE_CONTROL_RUN_ID_LEN], float bound,
                            fedge_model *ci, fedge_control_status *status, int *why);
/* Atomic, durable replace of the file by ci (c_i+) for run_id, mode 0600: c_i
 * is a mean of local gradients, as telling about the device's data as an
 * update. A non-finite ci is refused (FEDGE_ERR_MODEL_NONFINITE), the file
 * kept. */
int fedge_edge_control_commit(const char *path, const uint8_t run_id[FEDGE_CONTROL_RUN_ID_LEN],
                              const fedge_model *ci);
/* c_i+ of the update sealed with `counter`, to <path>.pending (as commit). */
int fedge_edge_control_write_pending(const char *path, const uint8_t run_id[FEDGE_CONTROL_RUN_ID_LEN],
                                     uint64_t counter, const fedge_model *ci);
/* The pending file's run and counter: FEDGE_OK, FEDGE_ERR_NOT_FOUND (none),
 * or another error for a file that cannot be settled (remove it). */
int fedge_edge_control_pending_info(const char *path, uint8_t run_id[FEDGE_CONTROL_RUN_ID_LEN],
                                    uint64_t *counter);
/* accepted: <path>.pending becomes <path> (rename, directory fsync);
 * otherwise <path>.pending is removed. No pending file: FEDGE_OK. */
int fedge_edge_control_settle(const char *path, int accepted);

/* The largest plausible |value| of c or c_i for a round at client rate lr on
 * the global model (see above); 0 when lr is not > 0. */
float fedge_edge_control_bound(const fedge_model *global, float lr);
/* FEDGE_OK when every v[i] is finite and |v[i]| <= bound, else
 * FEDGE_ERR_CONTROL_RANGE; *max_abs (may be NULL): the largest |v[i]| (inf
 * for a non-finite one). */
int fedge_edge_control_check(const float *v, size_t n, float bound, float *max_abs);

#endif
