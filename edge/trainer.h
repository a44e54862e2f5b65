/* trainer.h — the edge's local training state, sized once per model spec.
 *
 * Buffers (all owned, freed by fedge_edge_trainer_free): the local model
 * (allocated by fedge_edge_trainer_prepare; it holds the delta after
 * training) and the round's global model; while fedge_edge_trainer_train
 * runs (allocated after a heavy-ball round's base went to its file, freed
 * before it returns), one velocity, one slice of the gradient (each step
 * is taken slice by slice as the backward pass hands them over:
 * fedge_model_loss_grad_sliced, the same bits as a whole gradient), the
 * model's minibatch scratch, and one minibatch of features as the shard
 * stores them (u8 pixels stay u8: the first layer converts them) and
 * labels. The shard is streamed one record at a time (shard.h), so
 * nothing here grows with the shard. fedge_edge_memory_plan gives the byte
 * count of every buffer, including the transient ones (the model body the
 * link reassembles during GET /model, which becomes the global model; the
 * streaming sealer of POST /update) and the client's fixed heap, before
 * anything is allocated.
 *
 * FedProx (Li et al. 2020, eq. 2): with prox_mu > 0 every step's gradient
 * gains mu * (w - w_global). SCAFFOLD (Karimireddy et al. 2020, Algorithm 1,
 * option II): with a server variate c and the client's c_i every step uses
 * g + (c - c_i); after the K steps of the round
 *   dc = (1 - momentum) * (w_global - w_local) / (K * lr) - c,  c_i += dc
 * (c_i+ = c_i - c + (x - y) / (K * lr_eff)). Momentum: heavy-ball SGD moves
 * a steady gradient lr / (1 - momentum) per step, so the displacement is
 * divided by the effective step lr / (1 - momentum); without that the
 * variate would overstate the mean gradient by 1 / (1 - momentum) (10x at
 * 0.9). With momentum 0 it is the paper's formula exactly. dc is kept right
 * after the model delta (grad[n .. 2n), control_delta), so the two seal as
 * one delta of 2n elements (FEDGE_DELTA_FLAG_CONTROL). SCAFFOLD needs
 * fedge_edge_trainer_prepare_control once per shape (grad: 2n, the delta
 * then dc);
 * fedge_edge_memory_plan_scaffold counts that and the caller's c and c_i. */
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

/* The heap a running client holds whatever the model: its own state, the
 * shard reader, libcoap's context and one DTLS session (mbedTLS's SSL
 * context and its in and out record buffers). Measured with massif
 * (tools/bench/edge_heap.sh): FEDGE_EDGE_BASE_HEAP with Debian's mbedTLS
 * 2.28 and libcoap (the native build), FEDGE_EDGE_BASE_HEAP_TRIMMED with
 * edge/mbedtls_config_edge.h (1152-byte records) and the client-only
 * libcoap (the edge profile: the cross edges, make EDGE_TRIM=1).
 * fedge_edge_base_heap() is this build's. */
#define FEDGE_EDGE_BASE_HEAP (92u * 1024u)
#define FEDGE_EDGE_BASE_HEAP_TRIMMED (16u * 1024u)
size_t fedge_edge_base_heap(void);
#define FEDGE_EDGE_BLOB_HEAP 64u /* fedge_edge_blob and its allocator overhead */
/* A SCAFFOLD round's client state beside its buffers: the model structs of
 * c and c_i (a plain round holds none; the plan adds it to link). */
#define FEDGE_EDGE_SCAFFOLD_HEAP (2u * sizeof(fedge_model) + 96u)

typedef struct {
    size_t local;     /* local model parameters */
    size_t global;    /* the round's base model */
    size_t grad;      /* one slice of the gradient (fedge_edge_chunk_floats);
                         SCAFFOLD: + the model delta (n) */
    size_t velocity;  /* SGD momentum */
    size_t scratch;   /* activations of one minibatch */
    size_t batch;     /* one minibatch of features + labels */
    size_t record;    /* the shard reader's one record */
    size_t model_body;/* serialized model, held by libcoap while GET /model completes */
    size_t sealed;    /* the streaming sealer (update.h), kept until POST /update
                         is answered: a few KiB, not the sealed update */
    size_t link;      /* fedge_edge_base_heap(): the client, libcoap, one DTLS session */
    size_t peak;      /* link + resident buffers + the larger of model_body and
                         global + sealed (the body becomes the global model) */
    /* SCAFFOLD only (0 otherwise); model_body then also bounds GET /control's
     * body and the state file read, and sealed holds 2n elements. */
    size_t control;        /* server control variate c */
    size_t client_control; /* client control variate c_i */
    size_t control_delta;  /* c_i+ - c_i, after the model delta */
    size_t base_file;      /* bytes of the base model in the state dir during training
                              (not heap; 0: it stays in RAM) */
} fedge_edge_memory;

/* Where a round's momentum lives: none (momentum 0: the step needs no
 * velocity), in RAM beside the global model, or in RAM while the global
 * model waits in the base file (fedge_edge_train_params.base_file). */
typedef enum {
    FEDGE_EDGE_VELOCITY_NONE = 0,
    FEDGE_EDGE_VELOCITY_RAM = 1,
    FEDGE_EDGE_VELOCITY_BASE_FILE = 2,
} fedge_edge_velocity;

/* record_size: the shard's bytes per record (1 + dim * feature size). */
int fedge_edge_memory_plan(const fedge_model_spec *spec, int batch, size_t record_size,
                           fedge_encoding enc, fedge_edge_memory *out);
/* The same for a SCAFFOLD round: c, c_i and dc, and a sealed update of 2n. */
int fedge_edge_memory_plan_scaffold(const fedge_model_spec *spec, int batch, size_t record_size,
                                    fedge_encoding enc, fedge_edge_memory *out);
/* The plan of one round as train() will run it (velocity from
 * fedge_edge_velocity_of); the two above are its RAM-velocity cases.
 * FEDGE_ERR_INVALID_ARG for SCAFFOLD with the base file (it reads the base). */
int fedge_edge_memory_plan_round(const fedge_model_spec *spec, int batch, size_t record_size,
                                 fedge_encoding enc, int scaffold, fedge_edge_velocity velocity,
                                 fedge_edge_memory *out);
/* What train() does with these parameters (have_base_file: a base_file
 * given; micro: fedge_edge_micro_batch is below the batch). */
fedge_edge_velocity fedge_edge_velocity_of(float momentum, float prox_mu, int scaffold,
                                           int have_base_file, int micro);

/* Activations of one pass are kept within one model copy (4 P bytes) or
 * this, whichever is larger: a minibatch whose scratch
 * (fedge_model_scratch_floats) is larger runs as micro-batches (a bound that
 * grows with the model: a wide dense layer run one row at a time would read
 * its weights once per row). */
#ifndef FEDGE_EDGE_ACT_BUDGET /* the edge profile sets a fixed 12 KiB (Makefile) */
#define FEDGE_EDGE_ACT_BUDGET (128u * 1024u)
#define FEDGE_EDGE_ACT_GROWS 1 /* the budget is at least 4 P */
#endif
/* Rows per pass for spec at batch: batch when its least scratch
 * (fedge_model_scratch_floats_min) fits the budget, else the most rows that
 * do (at least 1); 0 for an invalid spec. Micro-
 * batches accumulate the minibatch's mean gradient, each micro-batch's
 * weighted by its share of the rows, in the velocity buffer (v = momentum v
 * + the first share, += the others; then the weight decay, FedProx and
 * SCAFFOLD terms, and w -= lr v): the same step as one pass but for the order
 * of the sums (rounding), and a dropout layer draws its masks per micro-
 * batch. A momentum-0 round then holds the velocity too. */
int fedge_edge_micro_batch(const fedge_model_spec *spec, int batch);
/* The scratch of a pass of micro rows: the budget, or less when the model's
 * fastest layout is smaller (fedge_model_scratch_floats_fit: the GEMM's
 * blocking takes what the activations leave), or the least layout when one
 * row is over the budget. */
size_t fedge_edge_scratch_floats(const fedge_model_spec *spec, int micro);
/* The gradient slice of a pass of micro rows: FEDGE_EDGE_FULL_CHUNK floats
 * (or P) when the budget holds the full layout (more dense rows per weight-
 * gradient product, the native build's slices), else
 * fedge_model_grad_chunk_floats_fit for fedge_edge_scratch_floats (the
 * patch layout's smaller slices, fedge_model_grad_chunk_floats otherwise). */
#define FEDGE_EDGE_FULL_CHUNK 4096u
size_t fedge_edge_chunk_floats(const fedge_model_spec *spec, int micro);
/* The activation budget of a pass in bytes, for the whole process (set before
 * any round, like sqlite3_config): 0 restores the build's default above. A
 * device with RAM to spare trades it for speed — a wide dense layer run a
 * row at a time reads all its weights once per row (fedge-edge
 * --act-budget-kb). */
void fedge_edge_set_act_budget(size_t bytes);
/* A build's activation constants (FEDGE_EDGE_ACT_BUDGET, FEDGE_EDGE_ACT_GROWS)
 * and its fedge_edge_base_heap(); fedge_edge_build_profile fills this build's. */
typedef struct {
    size_t act_budget;
    int act_grows;
    size_t link;
} fedge_edge_profile;
void fedge_edge_build_profile(fedge_edge_profile *p);
/* Issue 12's bound on a round's heap: two model copies (fp32), one minibatch
 * as stored and 64 KiB (0 for an invalid spec or batch). */
#define FEDGE_EDGE_BOUND_SLACK (64u * 1024u)
size_t fedge_edge_heap_bound(const fedge_model_spec *spec, int batch, size_t record_size);
/* fedge_edge_memory_plan_round for passes of micro rows (0: as
 * fedge_edge_micro_batch makes of the budget) in act_budget_bytes of
 * scratch (0: the build's): what fedge_edge_trainer_prepare_pass sizes for
 * the same two. */
int fedge_edge_memory_plan_pass(const fedge_model_spec *spec, int batch, size_t record_size,
                                fedge_encoding enc, int scaffold, fedge_edge_velocity velocity,
                                int micro, size_t act_budget_bytes, fedge_edge_memory *out);
/* One round's plan as train() runs it: the activation budget the trainer is
 * to be prepared with, its rows per pass, the velocity and the buffers. */
typedef struct {
    size_t act_budget;               /* scratch bytes for fedge_edge_trainer_prepare_pass */
    int micro;                       /* rows per pass, for it too */
    fedge_edge_velocity velocity;
    fedge_edge_memory mem;
} fedge_edge_round_plan;
/* The round's plan for the shard's record_size, the encoding, SCAFFOLD and
 * the optimizer (momentum, prox_mu, a base file: fedge_edge_velocity_of).
 * With a fixed budget (profile->act_grows 0: the edge profile) and no
 * fedge_edge_set_act_budget, the fastest pass whose whole plan (mem.peak)
 * stays within fedge_edge_heap_bound less FEDGE_EDGE_BOUND_MARGIN or 1% of
 * it, whichever is more (--print-memory is within ~1% of massif), and within
 * cap (bytes; 0: none): the layouts FULL, SMALL_GEMM, LEAN, PATCH in turn,
 * each for the whole minibatch, then halves of it down to the rows of the
 * build's budget's pass, taking the first that is faster than that pass
 * (else that one; it is kept when it runs the minibatch in one small-GEMM
 * pass already).
 * Otherwise the build's (or the set) budget, as fedge_edge_micro_batch.
 * profile NULL: this build's. */
#define FEDGE_EDGE_BOUND_MARGIN 2048u
int fedge_edge_plan_round(const fedge_model_spec *spec, int batch, size_t record_size,
                          fedge_encoding enc, int scaffold, float momentum, float prox_mu,
                          int have_base_file, size_t cap, const fedge_edge_profile *profile,
                          fedge_edge_round_plan *out);
/* The exact size of the sealed update for spec and encoding, as the client
 * seals it (with the training metrics block, update.h; 0 if invalid). */
size_t fedge_edge_sealed_size(const fedge_model_spec *spec, fedge_encoding enc);
/* One line: "model=... global=... ... peak=... bytes" (with control=...
 * client_control=... control_delta=... before peak in a SCAFFOLD plan). */
void fedge_edge_memory_format(const fedge_edge_memory *m, char *buf, size_t cap);

/* Rows the reported training accuracy is measured on: an inference pass
 * over all of a 2000-row shard costs 40-50% of a local epoch
 * (tools/bench/train_accuracy.c); 512 rows bound it, with a standard error
 * of at most 2.2 points. */
#define FEDGE_EDGE_ACCURACY_ROWS 512u

typedef struct {
    int sized;                          /* buffers match spec and batch */
    int batch;
    fedge_model local;                  /* local.spec: the prepared spec */
    fedge_model global;
    int have_global;                    /* global holds a verified model */
    uint8_t global_version[FEDGE_HASH_LEN];
    float *gchunk;                      /* fedge_model_grad_chunk_floats: the gradient
                                           slice by slice (no whole gradient is held);
                                           this and the minibatch buffers below are
                                           NULL outside train() */
    float *grad;                        /* SCAFFOLD only (prepare_control): 2 * n_params,
                                           the delta then dc; NULL otherwise */
    float *control_delta;               /* grad + n_params, or NULL: SCAFFOLD's dc */
    float *delta;                       /* after train(): local.params (the delta formed
                                           in place) or, SCAFFOLD, grad; else NULL */
    uint64_t steps;                     /* K: optimizer steps of the last train() */
    fedge_sgd opt;
    float *scratch;
    float *xbatch;                      /* f32 shards: batch x input_dim floats */
    uint8_t *ybatch;                    /* batch */
    uint8_t *xbatch_u8;                 /* u8 shards: batch x input_dim as stored, read
                                           as floats inside the first layer */
    double accuracy;                    /* after train(): the trained model's accuracy on
                                           a sample of the shard (FEDGE_EDGE_ACCURACY_ROWS);
                                           < 0: none */
    int micro;                          /* fedge_edge_micro_batch(spec, batch): rows
                                           per pass; scratch is sized for it */
    int spilled;                        /* the last train() kept its base in base_file:
                                           global freed (have_global 0), version kept */
    int base_write_errno;               /* the last train()'s failed base_file write
                                           (errno; ELOOP: not a regular file), else 0 */
    size_t scratch_floats;              /* scratch's size: fedge_edge_scratch_floats */
    size_t chunk_floats;                /* gchunk's size: fedge_edge_chunk_floats */
    size_t act_budget;                  /* the pass's budget, bytes (prepare_pass) */
} fedge_edge_trainer;

typedef struct {
    int epochs;
    float lr;
    float momentum;
    float weight_decay;
    uint64_t seed;                      /* shuffle seed (the client passes seed + round) */
    float prox_mu;                      /* FedProx mu (>= 0, finite); 0: none */
    const float *control;               /* SCAFFOLD server variate c (n_params) or NULL */
    float *client_control;              /* SCAFFOLD client variate c_i (n_params), updated
                                           in place to c_i+ after training; NULL when
                                           not SCAFFOLD (exactly when control is NULL) */
    const char *base_file;              /* NULL, or where a heavy-ball round (momentum > 0,
                                           no FedProx, no SCAFFOLD) keeps its base model */
    uint32_t round;                     /* binds base_file to the round */
    int base_ram_fallback;              /* base_file cannot be written: keep the base in
                                           RAM this round (1: the memory plan allows it)
                                           or fail with FEDGE_ERR_BASE_WRITE (0) */
} fedge_edge_train_params;

/* The base file (train()'s base_file): a header binding it to the round,
 * the base model's version and n, the n parameters, and the SHA-256 of all
 * of it; written atomically (fedge_atomic_open: a temporary file, mode
 * 0600, renamed over path; a link, device or FIFO at path is refused with
 * FEDGE_ERR_NOT_REGULAR and left alone; nothing left behind on failure).
 * fedge_edge_base_delta forms w -= base in place, reading the file in pieces
 * of buf (cap floats), and checks it whole in the same pass: the parameters
 * read back must hash, with spec, to `version` (fedge_model_version: the
 * model the round announced, so a rewritten file with a recomputed
 * trailer is refused too). FEDGE_ERR_MODEL_FILE_CHECKSUM for a missing,
 * short, longer or altered file, a link, or one of another round, version,
 * spec or size (w is then not a delta and must not be sent). */
int fedge_edge_base_write(const char *path, uint32_t round, const uint8_t version[FEDGE_HASH_LEN],
                          const float *w, size_t n);
int fedge_edge_base_delta(const char *path, uint32_t round, const fedge_model_spec *spec,
                          const uint8_t version[FEDGE_HASH_LEN], float *w, size_t n, float *buf,
                          size_t cap);

void fedge_edge_trainer_init(fedge_edge_trainer *t);
void fedge_edge_trainer_free(fedge_edge_trainer *t);
/* (Re)allocate for spec and batch; a no-op when both are unchanged. A new
 * spec drops the cached global model. *resized (may be NULL) = 1 when it
 * allocated. */
int fedge_edge_trainer_prepare(fedge_edge_trainer *t, const fedge_model_spec *spec, int batch,
                               int *resized);
/* The same for passes of micro rows in act_budget_bytes of scratch (a
 * fedge_edge_round_plan's micro and act_budget; 0, 0: the build's, as
 * prepare): a new budget or micro resizes too. */
int fedge_edge_trainer_prepare_pass(fedge_edge_trainer *t, const fedge_model_spec *spec,
                                    int batch, int micro, size_t act_budget_bytes, int *resized);
/* After prepare: allocate grad (2 * n_params: the delta, then dc) and set
 * control_delta (a no-op when already done for this shape; a new shape
 * undoes it). On failure the trainer is as it was. */
int fedge_edge_trainer_prepare_control(fedge_edge_trainer *t);
/* Undo it (a plain round after SCAFFOLD ones): grad freed, so the plain
 * memory plan holds again. */
void fedge_edge_trainer_drop_control(fedge_edge_trainer *t);
/* Replace the global model by a serialized model file (GET /model body).
 * The old one is freed first (memory stays bounded); on failure no global
 * model is cached. FEDGE_ERR_MODEL_SHAPE when the body's spec is not the
 * prepared one. */
int fedge_edge_trainer_set_global(fedge_edge_trainer *t, const uint8_t *body, size_t len);
/* Forget the cached global model (before fetching a new one). */
void fedge_edge_trainer_drop_global(fedge_edge_trainer *t);
/* The same as set_global, taking over a malloc'd body (freed on failure) that becomes the
 * global model's parameters (fedge_model_deserialize_owned). */
int fedge_edge_trainer_take_global(fedge_edge_trainer *t, uint8_t *body, size_t len);
/* local = global; fresh optimizer; p->epochs shuffled epochs over the shard;
 * then the delta local - global in t->delta (the local model's place; with
 * p->control in grad, before dc), and with p->control dc in
 * control_delta and p->client_control advanced to c_i+ (untouched on any
 * failure). mean_loss: sample-weighted mean training loss of the last
 * epoch; t->accuracy: the trained model's share of correct predictions on
 * FEDGE_EDGE_ACCURACY_ROWS rows of the shard drawn in a seeded random order
 * (all of a smaller shard; inference only, in the trainer's buffers). FEDGE_ERR_MODEL_SHAPE when the shard's dim or classes do not fit
 * the model, FEDGE_ERR_MODEL_NONFINITE when the loss, the delta or dc
 * diverges, FEDGE_ERR_EDGE_STOPPED when *stop becomes nonzero (checked
 * every minibatch; stop may be NULL), FEDGE_ERR_INVALID_ARG for a bad
 * prox_mu or only one of control / client_control, FEDGE_ERR_STATE for
 * control without prepare_control, FEDGE_ERR_CONTROL_RANGE when c or c_i
 * is beyond fedge_edge_control_bound (nothing trained) or c_i+ would be
 * (control.h). */
int fedge_edge_trainer_train(fedge_edge_trainer *t, fedge_shard_reader *shard,
                             const fedge_edge_train_params *p,
                             const volatile sig_atomic_t *stop, double *mean_loss);

#endif
