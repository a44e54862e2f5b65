/* control.h — SCAFFOLD's client control variate c_i on disk.
 *
 * c_i lives in <state_dir>/<id>.control, a model file (modelfile.h: the
 * round's spec, c_i as its parameters), written atomically, mode 0600. The file is the
 * committed c_i: the client writes c_i+ only after the aggregator accepted
 * the update that carried c_i+ - c_i (2.04), because the server's c is the
 * mean of the c_i it has counted; a refused or lost update leaves the file,
 * and so c_i, as it was.
 *
 * Loading never fails over the file's content: an absent file is SCAFFOLD's
 * start (zeros); a corrupt or unreadable file, or one for another model
 * spec, is reset to zeros too, and *status says which so the caller can warn
 * (the next commit replaces the file). Only the allocation can fail. */
#ifndef FEDGE_EDGE_CONTROL_H
#define FEDGE_EDGE_CONTROL_H

#include "model.h"

typedef enum {
    FEDGE_CONTROL_LOADED = 0,  /* the file's c_i */
    FEDGE_CONTROL_NEW = 1,     /* no file yet: zeros */
    FEDGE_CONTROL_OTHER_SPEC = 2, /* a c_i for another model: zeros */
    FEDGE_CONTROL_CORRUPT = 3, /* unreadable or corrupt (*why): zeros */
} fedge_control_status;

/* Malloc'd "<state_dir>/<id>.control" into *out (caller frees). */
int fedge_edge_control_path(const char *state_dir, const char *id, char **out);
/* *ci (zeroed, or holding last round's c_i: freed first) becomes c_i for spec.
 * why (may be NULL): the load error behind FEDGE_CONTROL_CORRUPT. */
int fedge_edge_control_load(const char *path, const fedge_model_spec *spec, fedge_model *ci,
                            fedge_control_status *status, int *why);
/* Atomic replace of the file by ci (c_i+), mode 0600: c_i is a mean of
 * local gradients, as telling about the device's data as an update. A
 * non-finite ci is refused (FEDGE_ERR_MODEL_NONFINITE), the file kept. */
int fedge_edge_control_commit(const char *path, const fedge_model *ci);

#endif
