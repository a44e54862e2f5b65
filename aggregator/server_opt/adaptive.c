/* adaptive.c — FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021, Algorithm 2;
 * server_opt.h): one step with the second-moment rule as the only difference. */
#include <math.h>
#include <stdio.h>

#include "common.h"
#include "server_opt.h"

static const char *const names[] = {"m", "v"};

typedef enum { ADAM, YOGI, ADAGRAD } rule;

/* v_{-1} = τ²: Algorithm 2 asks v_{-1} ≥ τ². */
static void adaptive_init(fedge_server_opt *o)
{
    float v0 = (float)(o->p.tau * o->p.tau);
    for (size_t i = 0; i < o->n; i++)
        o->vec[1][i] = v0;
}

static void adaptive_step(fedge_server_opt *o, float *w, const float *d, rule r)
{
    float *m = o->vec[0], *v = o->vec[1];
    double b1 = o->p.beta1, b2 = o->p.beta2;
    for (size_t i = 0; i < o->n; i++) {
        double g = d[i], g2 = g * g;
        double mi = b1 * (double)m[i] + (1 - b1) * g;
        double vi = v[i];
        switch (r) {
        case ADAM: vi = b2 * vi + (1 - b2) * g2; break;
        case YOGI: vi = vi - (1 - b2) * g2 * (vi > g2 ? 1.0 : vi < g2 ? -1.0 : 0.0); break;
        case ADAGRAD: vi = vi + g2; break;
        }
        m[i] = (float)mi;
        v[i] = (float)vi;
        w[i] = (float)((double)w[i] + o->p.lr * mi / (sqrt(vi) + o->p.tau));
    }
}

static void adam_step(fedge_server_opt *o, float *w, const float *d) { adaptive_step(o, w, d, ADAM); }
static void yogi_step(fedge_server_opt *o, float *w, const float *d) { adaptive_step(o, w, d, YOGI); }
static void adagrad_step(fedge_server_opt *o, float *w, const float *d) { adaptive_step(o, w, d, ADAGRAD); }

static int fmt(char *buf, size_t cap, const char *name, const fedge_server_opt_params *p, int with_beta2)
{
    int n = with_beta2 ? snprintf(buf, cap, "%s(lr=%g,beta1=%g,beta2=%g,tau=%g)", name, p->lr, p->beta1,
                                  p->beta2, p->tau)
                       : snprintf(buf, cap, "%s(lr=%g,beta1=%g,tau=%g)", name, p->lr, p->beta1, p->tau);
    return (n < 0 || (size_t)n >= cap) ? FEDGE_ERR_BUFFER_TOO_SMALL : FEDGE_OK;
}

static int adam_describe(const fedge_server_opt_params *p, char *b, size_t c) { return fmt(b, c, "fedadam", p, 1); }
static int yogi_describe(const fedge_server_opt_params *p, char *b, size_t c) { return fmt(b, c, "fedyogi", p, 1); }
static int adagrad_describe(const fedge_server_opt_params *p, char *b, size_t c)
{
    return fmt(b, c, "fedadagrad", p, 0);
}

const fedge_server_optimizer fedge_server_opt_adam = {
    .name = "adam", .n_vectors = 2, .vector_names = names, .init = adaptive_init,
    .step = adam_step, .describe = adam_describe,
};
const fedge_server_optimizer fedge_server_opt_yogi = {
    .name = "yogi", .n_vectors = 2, .vector_names = names, .init = adaptive_init,
    .step = yogi_step, .describe = yogi_describe,
};
const fedge_server_optimizer fedge_server_opt_adagrad = {
    .name = "adagrad", .n_vectors = 2, .vector_names = names, .init = adaptive_init,
    .step = adagrad_step, .describe = adagrad_describe,
};
