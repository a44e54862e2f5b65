/* bench-train — single-thread training throughput of mlp:784-200-10 against
 * this core's GEMM rate, measured in the same run.
 *
 *   bench-train [seconds per case, default 2]
 *
 * A training step is fedge_model_loss_grad + fedge_sgd_step on one minibatch
 * (rows gathered in advance; data is Fashion-MNIST when it is installed,
 * random otherwise: the cost does not depend on the values).
 * FLOPs per sample, two counts:
 *   nominal   6 * P (P = parameters: 2P forward, 4P backward)
 *   executed  2 * sum_l in_l*out_l * (2 + [l > 0]), the GEMM work really done
 *             (the first layer computes no gradient for the input)
 * The baselines: fedge_sgemm on 512 x 512 x 512 (the "peak" this code reaches
 * on one core) and a naive triple loop on the same shape.
 * Rates are per second of this thread's CPU time, so a core shared with other
 * work does not deflate them (cache sharing still does); the wall-clock share
 * the thread got is printed alongside. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "dataset.h"
#include "model.h"
#include "optim.h"
#include "rng.h"

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double wall_total, cpu_total; /* over all cases, for the CPU share */

/* Cases run for a wall-clock duration and are rated by the CPU time they used. */
typedef struct {
    double wall0, cpu0;
} stopwatch;

static stopwatch stopwatch_start(void)
{
    return (stopwatch){clock_s(CLOCK_MONOTONIC), clock_s(CLOCK_THREAD_CPUTIME_ID)};
}

static double stopwatch_wall(const stopwatch *w)
{
    return clock_s(CLOCK_MONOTONIC) - w->wall0;
}

static double stopwatch_cpu(const stopwatch *w)
{
    double wall = stopwatch_wall(w), cpu = clock_s(CLOCK_THREAD_CPUTIME_ID) - w->cpu0;
    wall_total += wall;
    cpu_total += cpu;
    return cpu;
}

static volatile float sink;

static void naive_gemm(int n, const float *A, const float *B, float *C)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            float acc = 0.0f;
            for (int k = 0; k < n; k++)
                acc += A[(size_t)i * n + k] * B[(size_t)k * n + j];
            C[(size_t)i * n + j] = acc;
        }
}

/* GFLOP/s of an n^3 product, repeated for at least `seconds`. */
static double gemm_rate(int n, int naive, double seconds)
{
    size_t nn = (size_t)n * n;
    float *A = malloc(nn * sizeof(float)), *B = malloc(nn * sizeof(float)),
          *C = malloc(nn * sizeof(float));
    if (A == NULL || B == NULL || C == NULL) {
        free(A);
        free(B);
        free(C);
        return 0.0;
    }
    fedge_rng r;
    fedge_rng_seed(&r, 5);
    for (size_t i = 0; i < nn; i++) {
        A[i] = fedge_rng_uniform(&r) - 0.5f;
        B[i] = fedge_rng_uniform(&r) - 0.5f;
    }
    long reps = 0;
    stopwatch w = stopwatch_start();
    do {
        if (naive)
            naive_gemm(n, A, B, C);
        else
            fedge_sgemm(0, 0, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
        reps++;
    } while (stopwatch_wall(&w) < seconds);
    double t = stopwatch_cpu(&w);
    sink = C[nn / 2];
    free(A);
    free(B);
    free(C);
    return 2.0 * n * (double)n * n * (double)reps / t / 1e9;
}

typedef struct {
    int batch;
    double samples_per_s;
    double gflops_nominal;
    double gflops_executed;
    double final_loss;
} train_result;

static int train_rate(const fedge_model_spec *spec, const fedge_dataset *ds, int batch,
                      double seconds, train_result *out)
{
    int ret = FEDGE_OK;
    fedge_model m = {0};
    fedge_sgd opt = {0};
    float *scratch = NULL, *grad = NULL, *xb = NULL;
    uint8_t *yb = NULL;
    const int din = spec->input_dim;
    enum { N_BATCHES = 16 }; /* pre-gathered minibatches, cycled */

    fedge_rng r;
    fedge_rng_seed(&r, 1);
    fedge_sgd_config cfg = {.lr = 0.01f, .momentum = 0.9f, .weight_decay = 0.0f};
    CHK(fedge_model_init(&m, spec));
    CHK(fedge_model_randomize(&m, &r));
    CHK(fedge_sgd_init(&opt, m.n_params, &cfg));
    scratch = malloc(fedge_model_scratch_floats(spec, batch) * sizeof(float));
    grad = malloc(m.n_params * sizeof(float));
    xb = malloc((size_t)N_BATCHES * batch * din * sizeof(float));
    yb = malloc((size_t)N_BATCHES * batch);
    if (scratch == NULL || grad == NULL || xb == NULL || yb == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < (size_t)N_BATCHES * batch; i++) {
        size_t src = fedge_rng_below(&r, (uint32_t)ds->n);
        memcpy(xb + i * din, ds->x + src * din, (size_t)din * sizeof(float));
        yb[i] = ds->y[src];
    }

    float loss = 0.0f;
    for (int w = 0; w < 3; w++) /* warm-up: page in buffers, settle the clock */
        fedge_model_loss_grad(&m, xb, yb, batch, (uint64_t)w, scratch, grad, &loss);
    long steps = 0;
    stopwatch w = stopwatch_start();
    do {
        size_t k = (size_t)(steps % N_BATCHES) * batch;
        CHK(fedge_model_loss_grad(&m, xb + k * din, yb + k, batch, (uint64_t)steps, scratch, grad,
                                  &loss));
        CHK(fedge_sgd_step(&opt, m.params, grad));
        steps++;
    } while (stopwatch_wall(&w) < seconds);
    double t = stopwatch_cpu(&w);

    double macs_fwd = 0.0, macs_exec = 0.0;
    int first = 1;
    for (int i = 0; i < spec->n_layers; i++) {
        double mac = fedge_layer_macs(&spec->layer[i]);
        if (mac == 0.0)
            continue;
        macs_fwd += mac;
        macs_exec += mac * (first ? 2.0 : 3.0); /* forward, dW, and dX above the first */
        first = 0;
    }
    double samples = (double)steps * batch;
    out->batch = batch;
    out->samples_per_s = samples / t;
    out->gflops_nominal = 6.0 * (double)m.n_params * samples / t / 1e9;
    out->gflops_executed = 2.0 * macs_exec * samples / t / 1e9;
    out->final_loss = loss;
cleanup:
    fedge_model_free(&m);
    fedge_sgd_free(&opt);
    free(scratch);
    free(grad);
    free(xb);
    free(yb);
    return ret;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    if (!(seconds > 0.0) || seconds > 600.0) {
        fprintf(stderr, "usage: bench-train [seconds per case, 0..600]\n");
        return 2;
    }
    const char *spec_text = "mlp:784-200-10";
    fedge_model_spec spec;
    if (fedge_model_spec_parse(spec_text, &spec) != FEDGE_OK)
        return 1;

    fedge_dataset ds;
    const char *data = "Fashion-MNIST train";
    float *rx = NULL;
    uint8_t *ry = NULL;
    if (fedge_dataset_load_fashion_mnist(&ds, NULL, 1) != FEDGE_OK) {
        enum { RN = 4096 };
        data = "random (Fashion-MNIST not found)";
        rx = malloc((size_t)RN * 784 * sizeof(float));
        ry = malloc(RN);
        if (rx == NULL || ry == NULL)
            return 1;
        fedge_rng r;
        fedge_rng_seed(&r, 3);
        for (size_t i = 0; i < (size_t)RN * 784; i++)
            rx[i] = fedge_rng_uniform(&r);
        for (size_t i = 0; i < RN; i++)
            ry[i] = (uint8_t)fedge_rng_below(&r, 10);
        ds = (fedge_dataset){.n = RN, .dim = 784, .n_classes = 10, .x = rx, .y = ry};
    }

    printf("bench-train: %s (%zu params), one thread, %.1f s per case, data: %s\n", spec_text,
           fedge_model_spec_param_count(&spec), seconds, data);
    double peak = gemm_rate(512, 0, seconds);
    double naive = gemm_rate(512, 1, seconds);

    static const int batches[] = {32, 256};
    train_result res[2];
    for (int i = 0; i < 2; i++)
        if (train_rate(&spec, &ds, batches[i], seconds, &res[i]) != FEDGE_OK) {
            fprintf(stderr, "training step failed\n");
            return 1;
        }

    printf("\n%-34s %12s %10s %10s\n", "case", "samples/s", "GFLOP/s", "of sgemm");
    printf("%-34s %12s %10.2f %9.0f%%\n", "sgemm 512^3 (baseline)", "-", peak, 100.0);
    printf("%-34s %12s %10.2f %9.1f%%\n", "naive triple loop 512^3", "-", naive,
           100.0 * naive / peak);
    for (int i = 0; i < 2; i++) {
        char name[64];
        snprintf(name, sizeof name, "train batch %d, nominal 6P", res[i].batch);
        printf("%-34s %12.0f %10.2f %9.1f%%\n", name, res[i].samples_per_s,
               res[i].gflops_nominal, 100.0 * res[i].gflops_nominal / peak);
        snprintf(name, sizeof name, "train batch %d, executed GEMM", res[i].batch);
        printf("%-34s %12s %10.2f %9.1f%%\n", name, "", res[i].gflops_executed,
               100.0 * res[i].gflops_executed / peak);
    }
    printf("\nthis thread got %.0f%% of the wall-clock time (rates use CPU time)\n",
           100.0 * cpu_total / wall_total);
    printf("ratios: sgemm / naive = %.1fx; batch 256 / batch 32 throughput = %.2fx\n",
           peak / naive, res[1].samples_per_s / res[0].samples_per_s);
    printf("one epoch of 60000 samples: %.2f CPU s at batch 32, %.2f at batch 256\n",
           60000.0 / res[0].samples_per_s, 60000.0 / res[1].samples_per_s);

    if (rx != NULL) {
        free(rx);
        free(ry);
    } else {
        fedge_dataset_free(&ds);
    }
    return 0;
}
