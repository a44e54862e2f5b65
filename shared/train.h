/* train.h — the minibatch training loop and evaluation over in-memory data.
 *
 * fedge_train_epoch visits every one of the n rows exactly once, in an order
 * drawn from rng (a keyed Feistel permutation: no index array needed), in
 * minibatches of `batch` rows (the last one may be smaller), taking one
 * optimizer step per minibatch. It allocates nothing; the caller passes
 *   scratch  fedge_model_scratch_floats(&m->spec, batch) floats
 *   grad     m->n_params floats
 *   xbatch   batch * input_dim floats,  ybatch  batch bytes
 * x is n x input_dim row-major, y holds n labels < classes. mean_loss (may be
 * NULL) gets the sample-weighted mean training loss of the epoch.
 * A non-finite minibatch loss stops the epoch before that step is applied and
 * returns FEDGE_ERR_MODEL_NONFINITE (the model keeps the previous step).
 * For a model with dropout, each step's dropout seed is drawn from rng (after the
 * epoch's permutation keys); other models draw nothing more. */
#ifndef FEDGE_TRAIN_H
#define FEDGE_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "dataset.h"
#include "model.h"
#include "optim.h"
#include "rng.h"

int fedge_train_epoch(fedge_model *m, fedge_sgd *opt, const float *x, const uint8_t *y,
                      size_t n, int batch, fedge_rng *rng, float *scratch, float *grad,
                      float *xbatch, uint8_t *ybatch, double *mean_loss);

/* Fraction of test rows whose argmax prediction is right, and the mean
 * cross-entropy (either output may be NULL). Allocates and frees its own
 * scratch. FEDGE_ERR_MODEL_SHAPE when test->dim is not the model's input. */
int fedge_evaluate_accuracy(const fedge_model *m, const fedge_dataset *test, double *accuracy,
                            double *mean_loss);

#endif
