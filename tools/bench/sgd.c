/* bench-sgd — fedge_sgd_update (vectorised, optim.c) against the plain scalar
 * loop of the same rule, compiled here with the same flags, in the same run.
 *
 *   bench-sgd [steps, default 2000]
 *
 * Sizes: mlp:784-200-10 (159,010 parameters, L2/L3-resident) and 4M (DRAM).
 * Per-step time by this thread's CPU time, best of 3. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "optim.h"

/* The loop as it was, kept scalar whatever the build's vectorizer flags. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noinline, optimize("no-tree-vectorize")))
#endif
static void sgd_scalar(const fedge_sgd_config *cfg, float *params, float *velocity,
                       const float *grad, size_t n)
{
    const float lr = cfg->lr, mu = cfg->momentum, wd = cfg->weight_decay;
    for (size_t i = 0; i < n; i++) {
        float v = mu * velocity[i] + (grad[i] + wd * params[i]);
        velocity[i] = v;
        params[i] -= lr * v;
    }
}

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

typedef void (*update_fn)(const fedge_sgd_config *, float *, float *, const float *, size_t);

static double us_per_step(update_fn fn, const fedge_sgd_config *c, float *p, float *v,
                          const float *g, size_t n, long steps)
{
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = cpu_now();
        for (long k = 0; k < steps; k++)
            fn(c, p, v, g, n);
        double t = (cpu_now() - t0) / (double)steps * 1e6;
        if (t < best)
            best = t;
    }
    return best;
}

int main(int argc, char **argv)
{
    long steps = argc > 1 ? atol(argv[1]) : 2000;
    if (steps < 1 || steps > 10000000) {
        fprintf(stderr, "usage: bench-sgd [steps 1..10000000]\n");
        return 2;
    }
    static const size_t sizes[] = {159010, 4u << 20};
    const fedge_sgd_config cfg = {.lr = 0.01f, .momentum = 0.9f, .weight_decay = 5e-4f};
    printf("%-10s %14s %14s %8s %12s\n", "params", "scalar us", "fedge us", "ratio", "fedge GB/s");
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        float *p = malloc(n * sizeof(float)), *v = calloc(n, sizeof(float)),
              *g = malloc(n * sizeof(float));
        if (p == NULL || v == NULL || g == NULL)
            return 1;
        for (size_t i = 0; i < n; i++) {
            p[i] = (float)(i % 1000) * 1e-3f;
            g[i] = (float)(i % 7) * 1e-3f - 3e-3f;
        }
        long st = n > 1000000 ? steps / 20 + 1 : steps;
        double a = us_per_step(sgd_scalar, &cfg, p, v, g, n, st);
        double b = us_per_step(fedge_sgd_update, &cfg, p, v, g, n, st);
        /* bytes: read p, v, g; write p, v */
        printf("%-10zu %14.1f %14.1f %7.2fx %12.1f\n", n, a, b, a / b,
               20.0 * (double)n / (b * 1e-6) / 1e9);
        free(p);
        free(v);
        free(g);
    }
    return 0;
}
