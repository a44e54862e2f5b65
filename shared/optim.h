/* optim.h — SGD with momentum and decoupled-from-loss L2 weight decay.
 *   v = momentum * v + (grad + weight_decay * w);  w -= lr * v
 * (the PyTorch SGD formulation). Works on any flat slice, which is what the
 * ZeRO-1 path in cluster/ needs. */
#ifndef FEDGE_OPTIM_H
#define FEDGE_OPTIM_H

#include <stddef.h>

typedef struct {
    float lr;
    float momentum;
    float weight_decay;
} fedge_sgd_config;

typedef struct {
    fedge_sgd_config cfg;
    size_t n;
    float *velocity; /* owned, n floats, zeroed at init */
} fedge_sgd;

/* FEDGE_ERR_INVALID_ARG for n == 0, lr < 0, momentum outside [0, 1),
 * weight_decay < 0 or a non-finite value. */
int fedge_sgd_init(fedge_sgd *opt, size_t n, const fedge_sgd_config *cfg);
void fedge_sgd_free(fedge_sgd *opt);
/* The caller-buffer form (no heap; init is a wrapper of it): velocity, n
 * floats, is zeroed and used, not owned; never pass opt to fedge_sgd_free. */
int fedge_sgd_bind(fedge_sgd *opt, size_t n, const fedge_sgd_config *cfg, float *velocity);
/* Update params[0..n) in place from grad[0..n). */
int fedge_sgd_step(fedge_sgd *opt, float *params, const float *grad);
/* Same rule on a caller-owned velocity slice (for sharded state). The three
 * slices must not overlap. */
void fedge_sgd_update(const fedge_sgd_config *cfg, float *params, float *velocity,
                      const float *grad, size_t n);

#endif
