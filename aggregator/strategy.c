#include "strategy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

int fedge_fedavg_init(fedge_fedavg *f, size_t n_params)
{
    memset(f, 0, sizeof *f);
    if (n_params == 0)
        return FEDGE_ERR_INVALID_ARG;
    f->sum = calloc(n_params, sizeof *f->sum);
    if (!f->sum)
        return FEDGE_ERR_NOMEM;
    f->n_params = n_params;
    return FEDGE_OK;
}

void fedge_fedavg_free(fedge_fedavg *f)
{
    if (!f)
        return;
    free(f->sum);
    memset(f, 0, sizeof *f);
}

int fedge_fedavg_add(fedge_fedavg *f, const float *delta, double weight)
{
    if (!(weight > 0) || !isfinite(weight))
        return FEDGE_ERR_INVALID_ARG;
    for (size_t i = 0; i < f->n_params; i++)
        f->sum[i] += weight * (double)delta[i];
    f->total_weight += weight;
    f->n++;
    return FEDGE_OK;
}

int fedge_fedavg_mean(const fedge_fedavg *f, float *mean_out)
{
    if (f->n == 0 || !(f->total_weight > 0))
        return FEDGE_ERR_STATE;
    double inv = 1.0 / f->total_weight;
    for (size_t i = 0; i < f->n_params; i++)
        mean_out[i] = (float)(f->sum[i] * inv);
    return FEDGE_OK;
}

void fedge_apply_delta(float *params, const float *mean, size_t n, float server_lr)
{
    for (size_t i = 0; i < n; i++)
        params[i] += server_lr * mean[i];
}

double fedge_l2_norm(const float *v, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)v[i] * (double)v[i];
    return sqrt(s);
}
