/* model.h — feed-forward classifiers over one flat float32 parameter buffer.
 *
 * Spec strings: "softmax:784-10" (one dense layer + softmax) and
 * "mlp:784-200-10" / "mlp:784-256-128-10" (dense+ReLU hidden layers, dense
 * output + softmax). All parameters live in one contiguous buffer so a delta,
 * a gradient or an allreduce is one vector. Layout per layer l, in order:
 * W_l [out_l x in_l] row-major, then b_l [out_l].
 *
 * The training step allocates nothing: the caller passes scratch sized by
 * fedge_model_scratch_floats(spec, batch). */
#ifndef FEDGE_MODEL_H
#define FEDGE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

#define FEDGE_MODEL_MAX_LAYERS 8
#define FEDGE_MODEL_MAX_DIM 65536
#define FEDGE_MODEL_SPEC_MAX 128 /* longest canonical spec string, with NUL */
#define FEDGE_MODEL_MAX_CLASSES 256      /* labels are uint8 */
#define FEDGE_MODEL_MAX_PARAMS (1u << 28) /* 1 GiB of float32; larger specs are refused */

typedef enum { FEDGE_MODEL_SOFTMAX = 1, FEDGE_MODEL_MLP = 2 } fedge_model_kind;

typedef struct {
    fedge_model_kind kind;
    int n_layers;                          /* dense layers, >= 1 */
    int dims[FEDGE_MODEL_MAX_LAYERS + 1];  /* dims[0] input, dims[n_layers] classes */
} fedge_model_spec;

/* FEDGE_ERR_MODEL_SPEC for anything else than the forms above: dims in plain
 * decimal (no sign, no leading zero) in 1..FEDGE_MODEL_MAX_DIM, 2..MAX_CLASSES
 * classes, softmax with exactly two dims, mlp with at least one hidden layer,
 * at most MAX_LAYERS dense layers and MAX_PARAMS parameters, nothing trailing.
 * An accepted text is its own canonical form. *out is untouched on error. */
int fedge_model_spec_parse(const char *text, fedge_model_spec *out);
/* Canonical text, e.g. "mlp:784-200-10"; FEDGE_ERR_BUFFER_TOO_SMALL if it does not fit. */
int fedge_model_spec_format(const fedge_model_spec *spec, char *buf, size_t cap);
size_t fedge_model_spec_param_count(const fedge_model_spec *spec);
/* 32-bit id of the canonical spec (first 4 bytes of its SHA-256, little-endian):
 * the delta wire format carries it so a delta for another shape is refused. */
uint32_t fedge_model_spec_id(const fedge_model_spec *spec);

typedef struct {
    fedge_model_spec spec;
    size_t n_params;
    float *params;                       /* owned; n_params floats */
    float *W[FEDGE_MODEL_MAX_LAYERS];    /* views into params */
    float *b[FEDGE_MODEL_MAX_LAYERS];
} fedge_model;

/* Allocates params (zeroed). fedge_model_free(NULL) and double free are safe. */
int fedge_model_init(fedge_model *m, const fedge_model_spec *spec);
void fedge_model_free(fedge_model *m);
/* He-uniform weights, zero biases. */
int fedge_model_randomize(fedge_model *m, fedge_rng *rng);
/* Pointer table for an arbitrary buffer with the model's layout (gradients, deltas). */
void fedge_model_views(const fedge_model_spec *spec, float *base,
                       float *W[FEDGE_MODEL_MAX_LAYERS], float *b[FEDGE_MODEL_MAX_LAYERS]);

size_t fedge_model_scratch_floats(const fedge_model_spec *spec, int batch);

/* Class probabilities for `batch` rows of x (batch x dims[0]) into probs
 * (batch x classes). */
int fedge_model_forward(const fedge_model *m, const float *x, int batch,
                        float *scratch, float *probs);
/* Mean cross-entropy loss over the batch and its gradient (same layout as
 * params, overwritten). Weight decay is not included (the optimizer adds it). */
int fedge_model_loss_grad(const fedge_model *m, const float *x, const uint8_t *y,
                          int batch, float *scratch, float *grad, float *loss);
/* Number of correct argmax predictions and summed loss over n rows, in
 * chunks of at most `batch` rows using scratch sized for `batch`. */
int fedge_model_evaluate(const fedge_model *m, const float *x, const uint8_t *y,
                         size_t n, int batch, float *scratch, size_t *n_correct,
                         double *loss_sum);

/* C[M x N] = alpha * op(A) * op(B) + beta * C, row-major, op = transpose when
 * the flag is set. The one GEMM used by the CPU paths. */
void fedge_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc);

#endif
