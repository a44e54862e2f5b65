/* trainer.h — the edge's local training state, sized once per model spec.
 *
 * Buffers (all owned, allocated by fedge_edge_trainer_prepare, freed by
 * fedge_edge_trainer_free): the local model, the round's global model, one
 * gradient (which holds the delta after training), one velocity, the model's
 * minibatch scratch, and one minibatch of features and labels. The shard is
 * streamed one record at a time (shard.h), so nothing here grows with the
 * shard. fedge_edge_memory_plan gives the byte count of every buffer,
 * including the transient ones (the model body libcoap reassembles during
 * GET /model, the sealed update), before anything is allocated. */
#ifndef FEDGE_EDGE_TRAINER_H
#define FEDGE_EDGE_TRAINER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "delta.h"
#include "hash.h"
#include "model.h"
#include "optim.h"
#include "shard.h"

typedef struct {
    size_t local;     /* local model parameters */
    size_t global;    /* the round's base model */
    size_t grad;      /* gradient, reused for the delta */
    size_t velocity;  /* SGD momentum */
    size_t scratch;   /* activations of one minibatch */
    size_t batch;     /* one minibatch of features + labels */
    size_t record;    /* the shard reader's one record */
    size_t model_body;/* serialized model, held by libcoap while GET /model completes */
    size_t sealed;    /* sealed update, kept until POST /update is answered */
    size_t peak;      /* resident buffers + the larger of model_body and sealed */
} fedge_edge_memory;

/* record_size: the shard's bytes per record (1 + dim * feature size). */
int fedge_edge_memory_plan(const fedge_model_spec *spec, int batch, size_t record_size,
                           fedge_encoding enc, fedge_edge_memory *out);
/* The exact size of the sealed update for spec and encoding (0 if invalid). */
size_t fedge_edge_sealed_size(const fedge_model_spec *spec, fedge_encoding enc);
/* One line: "model=... global=... ... peak=... bytes". */
void fedge_edge_memory_format(const fedge_edge_memory *m, char *buf, size_t cap);

typedef struct {
    int sized;                          /* buffers match spec and batch */
    fedge_model_spec spec;
    int batch;
    fedge_model local;
    fedge_model global;
    int have_global;                    /* global holds a verified model */
    uint8_t global_version[FEDGE_HASH_LEN];
    float *grad;                        /* n_params; the delta after train() */
    fedge_sgd opt;
    float *scratch;
    float *xbatch;                      /* batch x input_dim */
    uint8_t *ybatch;                    /* batch */
} fedge_edge_trainer;

typedef struct {
    int epochs;
    float lr;
    float momentum;
    float weight_decay;
    uint64_t seed;                      /* shuffle seed (the client passes seed + round) */
} fedge_edge_train_params;

void fedge_edge_trainer_init(fedge_edge_trainer *t);
void fedge_edge_trainer_free(fedge_edge_trainer *t);
/* (Re)allocate for spec and batch; a no-op when both are unchanged. A new
 * spec drops the cached global model. *resized (may be NULL) = 1 when it
 * allocated. */
int fedge_edge_trainer_prepare(fedge_edge_trainer *t, const fedge_model_spec *spec, int batch,
                               int *resized);
/* Replace the global model by a serialized model file (GET /model body).
 * The old one is freed first (memory stays bounded); on failure no global
 * model is cached. FEDGE_ERR_MODEL_SHAPE when the body's spec is not the
 * prepared one. */
int fedge_edge_trainer_set_global(fedge_edge_trainer *t, const uint8_t *body, size_t len);
/* local = global; fresh optimizer; p->epochs shuffled epochs over the shard;
 * then grad = local - global (the delta). mean_loss: sample-weighted mean
 * training loss of the last epoch. FEDGE_ERR_MODEL_SHAPE when the shard's
 * dim or classes do not fit the model, FEDGE_ERR_MODEL_NONFINITE when the
 * loss diverges, FEDGE_ERR_EDGE_STOPPED when *stop becomes nonzero (checked
 * every minibatch; stop may be NULL). */
int fedge_edge_trainer_train(fedge_edge_trainer *t, fedge_shard_reader *shard,
                             const fedge_edge_train_params *p,
                             const volatile sig_atomic_t *stop, double *mean_loss);

#endif
