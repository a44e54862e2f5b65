/* bench-train_accuracy — what the edge's training-accuracy report costs
 * (shared/update.h's metrics block, edge/trainer.c): after its local epochs
 * the edge makes one inference pass (fedge_model_evaluate) over
 * FEDGE_EDGE_ACCURACY_ROWS rows of its shard to report the trained model's
 * accuracy. Measured here against its baseline in the same run: one local
 * epoch (fedge_train_epoch, SGD with momentum, the edge's default batch 32)
 * over ROWS rows; beside it, the pass over all ROWS rows (what an uncapped
 * report would cost). One thread, thread CPU time, best of REPEATS.
 *
 *   bench-train_accuracy SPEC [ROWS [REPEATS]]   (defaults 2000 5)
 *
 * Prints one line: epoch_cpu_s, pass_cpu_s (capped), full_pass_cpu_s and
 * their ratios to the epoch (the overhead on a one-epoch round; divide by
 * the epochs for more). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "blas.h"
#include "common.h"
#include "dataset.h"
#include "model.h"
#include "optim.h"
#include "rng.h"
#include "train.h"
#include "trainer.h"

static double cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: bench-train_accuracy SPEC [ROWS [REPEATS]]\n");
        return 2;
    }
    size_t rows = argc > 2 ? strtoul(argv[2], NULL, 10) : 2000;
    int repeats = argc > 3 ? atoi(argv[3]) : 5;
    const int batch = 32;
    if (rows < 1 || repeats < 1) {
        fprintf(stderr, "bench-train_accuracy: ROWS and REPEATS must be >= 1\n");
        return 2;
    }
    int ret = FEDGE_OK;
    const char *what = "spec";
    fedge_model_spec spec;
    fedge_dataset train = {0};
    fedge_model m = {0};
    fedge_sgd opt = {0};
    float *scratch = NULL, *grad = NULL, *xbatch = NULL;
    uint8_t *ybatch = NULL;
    CHK(fedge_model_spec_parse(argv[1], &spec));
    what = "blas threads";
    CHK(fedge_blas_set_threads(1));
    what = "Fashion-MNIST (dataset-fashion-mnist)";
    CHK(fedge_dataset_load_fashion_mnist(&train, NULL, 1));
    if (rows > train.n)
        rows = train.n;
    what = "model";
    fedge_rng rng;
    fedge_rng_seed(&rng, 1);
    CHK(fedge_model_init(&m, &spec));
    CHK(fedge_model_randomize(&m, &rng));
    fedge_sgd_config cfg = {.lr = 0.02f, .momentum = 0.9f};
    CHK(fedge_sgd_init(&opt, m.n_params, &cfg));
    scratch = malloc(fedge_model_scratch_floats(&spec, batch) * sizeof(float));
    grad = malloc(m.n_params * sizeof(float));
    xbatch = malloc((size_t)batch * train.dim * sizeof(float));
    ybatch = malloc((size_t)batch);
    if (!scratch || !grad || !xbatch || !ybatch)
        FAIL(FEDGE_ERR_NOMEM);
    double best_epoch = 1e30, best_pass = 1e30, best_full = 1e30, loss = 0, acc = 0;
    size_t capped = rows < FEDGE_EDGE_ACCURACY_ROWS ? rows : FEDGE_EDGE_ACCURACY_ROWS;
    what = "timing";
    for (int r = 0; r < repeats; r++) {
        double t0 = cpu_s();
        CHK(fedge_train_epoch(&m, &opt, train.x, train.y, rows, batch, &rng, scratch, grad, xbatch, ybatch,
                              &loss));
        double t1 = cpu_s();
        size_t correct = 0;
        double ls = 0;
        CHK(fedge_model_evaluate(&m, train.x, train.y, capped, batch, scratch, &correct, &ls));
        double t2 = cpu_s();
        CHK(fedge_model_evaluate(&m, train.x, train.y, rows, batch, scratch, &correct, &ls));
        double t3 = cpu_s();
        acc = (double)correct / (double)rows;
        if (t1 - t0 < best_epoch)
            best_epoch = t1 - t0;
        if (t2 - t1 < best_pass)
            best_pass = t2 - t1;
        if (t3 - t2 < best_full)
            best_full = t3 - t2;
    }
    printf("spec=%s rows=%zu batch=%d repeats=%d epoch_cpu_s=%.4f pass_rows=%zu pass_cpu_s=%.4f ratio=%.3f "
           "full_pass_cpu_s=%.4f full_ratio=%.3f train_loss=%.4f train_acc=%.4f blas=%s\n",
           argv[1], rows, batch, repeats, best_epoch, capped, best_pass, best_pass / best_epoch, best_full,
           best_full / best_epoch, loss, acc, fedge_blas_name());
cleanup:
    if (ret != FEDGE_OK)
        fprintf(stderr, "bench-train_accuracy: %s: %s\n", what, fedge_strerror(ret));
    fedge_model_free(&m);
    fedge_sgd_free(&opt);
    fedge_dataset_free(&train);
    free(scratch);
    free(grad);
    free(xbatch);
    free(ybatch);
    return ret == FEDGE_OK ? 0 : 1;
}
