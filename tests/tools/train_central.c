/* train_central.c — trains a model centrally on Fashion-MNIST and saves it
 * (test helper for tests/integration/model_export.sh).
 *
 *   train_central SPEC OUT.fmdl [ROWS [EPOCHS [SEED]]]
 *
 * Trains on the first ROWS (default 10000) rows of the train split, EPOCHS
 * (default 1) epochs of SGD (lr 0.05, momentum 0.9, batch 32), prints the
 * test accuracy and writes the model file. Exit 0 ok, 1 failure, 2 usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dataset.h"
#include "model.h"
#include "modelfile.h"
#include "optim.h"
#include "rng.h"
#include "train.h"

#define BATCH 32

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 6) {
        fprintf(stderr, "usage: train_central SPEC OUT.fmdl [ROWS [EPOCHS [SEED]]]\n");
        return 2;
    }
    long rows = argc > 3 ? atol(argv[3]) : 10000;
    long epochs = argc > 4 ? atol(argv[4]) : 1;
    unsigned long long seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 1;
    if (rows < 1 || epochs < 1 || epochs > 100) {
        fprintf(stderr, "train_central: bad ROWS or EPOCHS\n");
        return 2;
    }
    int ret = FEDGE_OK;
    fedge_model_spec spec;
    fedge_model m;
    fedge_sgd opt;
    fedge_dataset train, test;
    fedge_rng rng;
    float *scratch = NULL, *grad = NULL, *xb = NULL;
    uint8_t *yb = NULL;
    memset(&m, 0, sizeof m);
    memset(&opt, 0, sizeof opt);
    memset(&train, 0, sizeof train);
    memset(&test, 0, sizeof test);
    CHK(fedge_model_spec_parse(argv[1], &spec));
    CHK(fedge_dataset_load_fashion_mnist(&train, NULL, 1));
    CHK(fedge_dataset_load_fashion_mnist(&test, NULL, 0));
    fedge_dataset part = fedge_dataset_head(&train, (size_t)rows < train.n ? (size_t)rows : train.n);
    CHK(fedge_model_init(&m, &spec));
    fedge_rng_seed(&rng, seed);
    CHK(fedge_model_randomize(&m, &rng));
    fedge_sgd_config cfg = {.lr = 0.05f, .momentum = 0.9f, .weight_decay = 0.0f};
    CHK(fedge_sgd_init(&opt, m.n_params, &cfg));
    scratch = malloc(fedge_model_scratch_floats(&spec, BATCH) * sizeof *scratch);
    grad = malloc(m.n_params * sizeof *grad);
    xb = malloc((size_t)BATCH * (size_t)part.dim * sizeof *xb);
    yb = malloc(BATCH);
    if (!scratch || !grad || !xb || !yb)
        FAIL(FEDGE_ERR_NOMEM);
    for (long e = 0; e < epochs; e++)
        CHK(fedge_train_epoch(&m, &opt, part.x, part.y, part.n, BATCH, &rng, scratch, grad, xb, yb, NULL));
    double acc = 0;
    CHK(fedge_evaluate_accuracy(&m, &test, &acc, NULL));
    CHK(fedge_model_save(&m, argv[2], NULL));
    printf("%s: %s trained on %zu rows x %ld epochs, test accuracy %.4f\n", argv[2], argv[1], part.n,
           epochs, acc);
cleanup:
    if (ret != FEDGE_OK)
        fprintf(stderr, "train_central: %s\n", fedge_strerror(ret));
    free(scratch);
    free(grad);
    free(xb);
    free(yb);
    fedge_sgd_free(&opt);
    fedge_model_free(&m);
    fedge_dataset_free(&train);
    fedge_dataset_free(&test);
    return ret == FEDGE_OK ? 0 : 1;
}
