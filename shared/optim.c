/* optim.c — SGD with momentum and L2 weight decay (PyTorch's formulation). */
#include <math.h>
#include <stdint.h>
#if !FEDGE_FREESTANDING
#include <stdlib.h>
#endif
#include <string.h>

#include "common.h"
#include "optim.h"

static int config_check(const fedge_sgd_config *cfg)
{
    if (cfg == NULL || !isfinite(cfg->lr) || cfg->lr < 0.0f || !(cfg->momentum >= 0.0f) ||
        !(cfg->momentum < 1.0f) || !isfinite(cfg->weight_decay) || cfg->weight_decay < 0.0f)
        return FEDGE_ERR_INVALID_ARG;
    return FEDGE_OK;
}

int fedge_sgd_bind(fedge_sgd *opt, size_t n, const fedge_sgd_config *cfg, float *velocity)
{
    if (opt == NULL)
        return FEDGE_ERR_INVALID_ARG;
    memset(opt, 0, sizeof *opt);
    if (n == 0 || n > SIZE_MAX / sizeof(float) || config_check(cfg) != FEDGE_OK ||
        velocity == NULL)
        return FEDGE_ERR_INVALID_ARG;
    memset(velocity, 0, n * sizeof(float));
    opt->velocity = velocity;
    opt->cfg = *cfg;
    opt->n = n;
    return FEDGE_OK;
}

#if !FEDGE_FREESTANDING
int fedge_sgd_init(fedge_sgd *opt, size_t n, const fedge_sgd_config *cfg)
{
    if (opt == NULL)
        return FEDGE_ERR_INVALID_ARG;
    memset(opt, 0, sizeof *opt);
    if (n == 0 || n > SIZE_MAX / sizeof(float) || config_check(cfg) != FEDGE_OK)
        return FEDGE_ERR_INVALID_ARG;
    float *velocity = calloc(n, sizeof(float));
    if (velocity == NULL)
        return FEDGE_ERR_NOMEM;
    return fedge_sgd_bind(opt, n, cfg, velocity);
}

void fedge_sgd_free(fedge_sgd *opt)
{
    if (opt == NULL)
        return;
    free(opt->velocity);
    memset(opt, 0, sizeof *opt);
}
#endif

int fedge_sgd_step(fedge_sgd *opt, float *params, const float *grad)
{
    if (opt == NULL || opt->velocity == NULL || params == NULL || grad == NULL)
        return FEDGE_ERR_INVALID_ARG;
    fedge_sgd_update(&opt->cfg, params, opt->velocity, grad, opt->n);
    return FEDGE_OK;
}

/* The three arrays never overlap (restrict). The inner loop has a fixed trip
 * count of SGD_BLOCK, which GCC -O2 (its "very cheap" vectoriser) turns into
 * straight vector code (SSE/AVX on x86-64, NEON on aarch64); a loop of unknown
 * length it would leave scalar. Per element the arithmetic is exactly the
 * scalar rule, in the same order (ISO C mode: no FMA contraction). */
#define SGD_BLOCK 16
static void sgd_update_kernel(float lr, float mu, float wd, float *restrict params,
                              float *restrict velocity, const float *restrict grad, size_t n)
{
    size_t i = 0;
    for (; n - i >= SGD_BLOCK; i += SGD_BLOCK) {
        float *restrict p = params + i, *restrict vel = velocity + i;
        const float *restrict g = grad + i;
        for (int j = 0; j < SGD_BLOCK; j++) {
            float v = mu * vel[j] + (g[j] + wd * p[j]);
            vel[j] = v;
            p[j] -= lr * v;
        }
    }
    for (; i < n; i++) {
        float v = mu * velocity[i] + (grad[i] + wd * params[i]);
        velocity[i] = v;
        params[i] -= lr * v;
    }
}

void fedge_sgd_update(const fedge_sgd_config *cfg, float *params, float *velocity,
                      const float *grad, size_t n)
{
    sgd_update_kernel(cfg->lr, cfg->momentum, cfg->weight_decay, params, velocity, grad, n);
}
