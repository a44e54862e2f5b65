/* bench-epoch — one training epoch of any model spec on Fashion-MNIST, one
 * thread: the fedge side of tools/bench/vs_torch.sh.
 *
 *   bench-epoch SPEC BATCH [LR [MOMENTUM [SEED]]]     (defaults 0.02 0.9 1)
 *
 * He-uniform init with zero biases (fedge_model_randomize), SGD with momentum,
 * one pass over the 60,000 training images in a seeded random order
 * (fedge_train_epoch, which gathers each minibatch), then the accuracy on the
 * 10,000 test images. Only the epoch is timed, by this thread's CPU time
 * (wall time beside it). Prints one line of key=value pairs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blas.h"
#include "common.h"
#include "dataset.h"
#include "model.h"
#include "optim.h"
#include "rng.h"
#include "train.h"

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 6) {
        fprintf(stderr, "usage: bench-epoch SPEC BATCH [LR [MOMENTUM [SEED]]]\n");
        return 2;
    }
    const char *spec_text = argv[1];
    int batch = atoi(argv[2]);
    float lr = argc > 3 ? strtof(argv[3], NULL) : 0.02f;
    float momentum = argc > 4 ? strtof(argv[4], NULL) : 0.9f;
    unsigned long long seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 1;
    if (batch < 1 || batch > 65536) {
        fprintf(stderr, "bench-epoch: BATCH must be 1..65536\n");
        return 2;
    }

    int ret = FEDGE_OK;
    fedge_model_spec spec;
    fedge_dataset train = {0}, test = {0};
    fedge_model m = {0};
    fedge_sgd opt = {0};
    float *scratch = NULL, *grad = NULL, *xbatch = NULL;
    uint8_t *ybatch = NULL;
    double mean_loss = 0.0, acc = 0.0;
    const char *what = "spec";

    CHK(fedge_model_spec_parse(spec_text, &spec));
    what = "blas threads";
    CHK(fedge_blas_set_threads(1));
    what = "Fashion-MNIST (dataset-fashion-mnist)";
    CHK(fedge_dataset_load_fashion_mnist(&train, NULL, 1));
    CHK(fedge_dataset_load_fashion_mnist(&test, NULL, 0));
    what = "model";
    fedge_rng rng;
    fedge_rng_seed(&rng, seed);
    CHK(fedge_model_init(&m, &spec));
    CHK(fedge_model_randomize(&m, &rng));
    fedge_sgd_config cfg = {.lr = lr, .momentum = momentum, .weight_decay = 0.0f};
    CHK(fedge_sgd_init(&opt, m.n_params, &cfg));
    scratch = malloc(fedge_model_scratch_floats(&spec, batch) * sizeof(float));
    grad = malloc(m.n_params * sizeof(float));
    xbatch = malloc((size_t)batch * (size_t)train.dim * sizeof(float));
    ybatch = malloc((size_t)batch);
    if (scratch == NULL || grad == NULL || xbatch == NULL || ybatch == NULL)
        FAIL(FEDGE_ERR_NOMEM);

    what = "training";
    double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
    CHK(fedge_train_epoch(&m, &opt, train.x, train.y, train.n, batch, &rng, scratch, grad,
                          xbatch, ybatch, &mean_loss));
    double cpu = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0, wall = clock_s(CLOCK_MONOTONIC) - w0;
    what = "evaluation";
    CHK(fedge_evaluate_accuracy(&m, &test, &acc, NULL));

    printf("impl=fedge spec=%s batch=%d lr=%g momentum=%g samples=%zu cpu_s=%.3f wall_s=%.3f "
           "samples_per_s=%.0f train_loss=%.4f test_acc=%.4f blas=%s\n",
           spec_text, batch, (double)lr, (double)momentum, train.n, cpu, wall,
           (double)train.n / cpu, mean_loss, acc, fedge_blas_name());
cleanup:
    if (ret != FEDGE_OK)
        fprintf(stderr, "bench-epoch: %s: %s\n", what, fedge_strerror(ret));
    fedge_model_free(&m);
    fedge_sgd_free(&opt);
    fedge_dataset_free(&train);
    fedge_dataset_free(&test);
    free(scratch);
    free(grad);
    free(xbatch);
    free(ybatch);
    return ret == FEDGE_OK ? 0 : 1;
}
