/* round_info.h — the body of GET /round (docs/PROTOCOL.md), parsed.
 *
 * `key=value` lines (LF or CRLF). Unknown keys are ignored (forward
 * compatibility); a known key given twice, a line without '=', a value out of
 * range or a key required for the state is an error with a distinct code and
 * a one-line reason naming the key. `state` is always required; an open round
 * also needs round, selected, model, spec, epochs, lr, batch and run (momentum,
 * weight_decay and prox_mu default to 0, deadline_ms to "unknown", control to
 * absent: not a SCAFFOLD round). `*out` is written
 * only on success. Pure logic: no I/O, no allocation. */
#ifndef FEDGE_EDGE_ROUND_INFO_H
#define FEDGE_EDGE_ROUND_INFO_H

#include <stddef.h>
#include <stdint.h>

#include "hash.h"
#include "model.h"
#include "update.h"

#define FEDGE_ROUND_BODY_MAX 4096 /* longer bodies are refused */
#define FEDGE_ROUND_LINE_MAX (FEDGE_MODEL_SPEC_MAX + 8) /* "spec=" and the longest spec */
#define FEDGE_ROUND_EPOCHS_MAX 1000
#define FEDGE_ROUND_BATCH_MAX 65536
#define FEDGE_ROUND_PROX_MU_MAX 1e3f

typedef enum {
    FEDGE_ROUND_OPEN = 1,
    FEDGE_ROUND_WAITING = 2,
    FEDGE_ROUND_FINISHED = 3,
} fedge_round_state;

typedef struct {
    fedge_round_state state;
    int has_round;
    uint32_t round;
    int selected;                         /* 0 or 1 */
    int64_t deadline_ms;                  /* -1 when absent */
    int has_model;
    uint8_t model[FEDGE_HASH_LEN];        /* base model version */
    int has_spec;
    fedge_model_spec spec;
    char spec_text[FEDGE_MODEL_SPEC_MAX]; /* as sent */
    int epochs;                           /* 1 .. FEDGE_ROUND_EPOCHS_MAX */
    int batch;                            /* 1 .. FEDGE_ROUND_BATCH_MAX */
    float lr;                             /* (0, 100] */
    float momentum;                       /* [0, 1) */
    float weight_decay;                   /* [0, 1) */
    int has_run;
    uint8_t run_id[FEDGE_RUN_ID_LEN];     /* the aggregator run, sealed into the update */
    float prox_mu;                        /* FedProx mu, [0, 1e3]; 0: plain local SGD */
    int has_control;                      /* a SCAFFOLD round */
    uint8_t control[FEDGE_HASH_LEN];      /* version of the server control variate c */
} fedge_round_info;

/* text need not be NUL-terminated; err (may be NULL) gets the reason. */
int fedge_round_info_parse(const char *text, size_t len, fedge_round_info *out, char *err,
                           size_t errlen);
const char *fedge_round_state_name(fedge_round_state s);

#endif
