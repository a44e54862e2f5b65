/* sgd.c — FedAvg's server step, w += η·Δ (server_opt.h). */
#include <stdio.h>

#include "common.h"
#include "server_opt.h"

static void sgd_step(fedge_server_opt *o, float *w, const float *d)
{
    float lr = (float)o->p.lr; /* as FedAvg always applied it: same bits */
    for (size_t i = 0; i < o->n; i++)
        w[i] += lr * d[i];
}

static int sgd_describe(const fedge_server_opt_params *p, char *buf, size_t cap)
{
    int n = p->lr == 1.0 ? snprintf(buf, cap, "fedavg") : snprintf(buf, cap, "fedavg(lr=%g)", p->lr);
    return (n < 0 || (size_t)n >= cap) ? FEDGE_ERR_BUFFER_TOO_SMALL : FEDGE_OK;
}

const fedge_server_optimizer fedge_server_opt_sgd = {
    .name = "sgd",
    .n_vectors = 0,
    .vector_names = NULL,
    .init = NULL,
    .step = sgd_step,
    .describe = sgd_describe,
};
