/* optim.c — SGD with momentum and L2 weight decay (PyTorch's formulation). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
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

int fedge_sgd_init(fedge_sgd *opt, size_t n, const fedge_sgd_config *cfg)
{
    if (opt == NULL)
        return FEDGE_ERR_INVALID_ARG;
    memset(opt, 0, sizeof *opt);
    if (n == 0 || n > SIZE_MAX / sizeof(float) || config_check(cfg) != FEDGE_OK)
        return FEDGE_ERR_INVALID_ARG;
    opt->velocity = calloc(n, sizeof(float));
    if (opt->velocity == NULL)
        return FEDGE_ERR_NOMEM;
    opt->cfg = *cfg;
    opt->n = n;
    return FEDGE_OK;
}

void fedge_sgd_free(fedge_sgd *opt)
{
    if (opt == NULL)
        return;
    free(opt->velocity);
    memset(opt, 0, sizeof *opt);
}

int fedge_sgd_step(fedge_sgd *opt, float *params, const float *grad)
{
    if (opt == NULL || opt->velocity == NULL || params == NULL || grad == NULL)
        return FEDGE_ERR_INVALID_ARG;
    fedge_sgd_update(&opt->cfg, params, opt->velocity, grad, opt->n);
    return FEDGE_OK;
}

void fedge_sgd_update(const fedge_sgd_config *cfg, float *params, float *velocity,
                      const float *grad, size_t n)
{
    const float lr = cfg->lr, mu = cfg->momentum, wd = cfg->weight_decay;
    for (size_t i = 0; i < n; i++) {
        float v = mu * velocity[i] + (grad[i] + wd * params[i]);
        velocity[i] = v;
        params[i] -= lr * v;
    }
}
