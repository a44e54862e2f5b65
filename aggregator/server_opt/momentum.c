/* momentum.c — FedAvgM (Hsu, Qi, Brown 2019): m = β·m + Δ; w += η·m (server_opt.h). */
#include <stdio.h>

#include "common.h"
#include "server_opt.h"

static const char *const names[] = {"m"};

static void momentum_step(fedge_server_opt *o, float *w, const float *d)
{
    float *m = o->vec[0];
    for (size_t i = 0; i < o->n; i++) {
        double mi = o->p.momentum * (double)m[i] + (double)d[i];
        m[i] = (float)mi;
        w[i] = (float)((double)w[i] + o->p.lr * mi);
    }
}

static int momentum_describe(const fedge_server_opt_params *p, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "fedavgm(lr=%g,momentum=%g)", p->lr, p->momentum);
    return (n < 0 || (size_t)n >= cap) ? FEDGE_ERR_BUFFER_TOO_SMALL : FEDGE_OK;
}

const fedge_server_optimizer fedge_server_opt_momentum = {
    .name = "momentum",
    .n_vectors = 1,
    .vector_names = names,
    .init = NULL,
    .step = momentum_step,
    .describe = momentum_describe,
};
