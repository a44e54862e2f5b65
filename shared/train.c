/* train.c — shuffled minibatch epochs and test-set evaluation. */
#include <math.h>
#if !FEDGE_FREESTANDING
#include <stdlib.h>
#endif
#include <string.h>

#include "common.h"
#include "train.h"

/* A pseudo-random permutation of [0, n): a 4-round Feistel network on the
 * smallest even-bit power-of-two domain that holds n, with cycle walking to
 * stay below n (the domain is < 4n, so fewer than 4 steps on average). */
typedef struct {
    uint64_t n;
    int half_bits;
    uint64_t mask;
    uint64_t keys[4];
} feistel_perm;

static void perm_init(feistel_perm *p, uint64_t n, fedge_rng *rng)
{
    int bits = 2;
    while (bits < 64 && ((uint64_t)1 << bits) < n)
        bits += 2;
    p->n = n;
    p->half_bits = bits / 2;
    p->mask = ((uint64_t)1 << p->half_bits) - 1;
    for (int i = 0; i < 4; i++)
        p->keys[i] = fedge_rng_u64(rng);
}

static uint64_t round_fn(uint64_t r, uint64_t key)
{
    uint64_t z = r ^ key;
    z = (z ^ (z >> 31)) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 29)) * 0xbf58476d1ce4e5b9ull;
    return z ^ (z >> 32);
}

static uint64_t perm_at(const feistel_perm *p, uint64_t i)
{
    uint64_t v = i;
    do {
        uint64_t left = v >> p->half_bits, right = v & p->mask;
        for (int r = 0; r < 4; r++) {
            uint64_t next = left ^ (round_fn(right, p->keys[r]) & p->mask);
            left = right;
            right = next;
        }
        v = left << p->half_bits | right;
    } while (v >= p->n);
    return v;
}

int fedge_train_epoch(fedge_model *m, fedge_sgd *opt, const float *x, const uint8_t *y,
                      size_t n, int batch, fedge_rng *rng, float *scratch, float *grad,
                      float *xbatch, uint8_t *ybatch, double *mean_loss)
{
    if (m == NULL || m->params == NULL || opt == NULL || x == NULL || y == NULL || n == 0 ||
        batch < 1 || rng == NULL || scratch == NULL || grad == NULL || xbatch == NULL ||
        ybatch == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (opt->n != m->n_params)
        return FEDGE_ERR_MODEL_SHAPE;
    int ret = FEDGE_OK;
    size_t dim = (size_t)m->spec.input_dim;
    int dropout = fedge_model_spec_has_dropout(&m->spec);
    feistel_perm perm;
    perm_init(&perm, n, rng);
    double loss_sum = 0.0;
    for (size_t pos = 0; pos < n; pos += (size_t)batch) {
        int rows = n - pos < (size_t)batch ? (int)(n - pos) : batch;
        for (int r = 0; r < rows; r++) {
            size_t src = (size_t)perm_at(&perm, pos + (size_t)r);
            memcpy(xbatch + (size_t)r * dim, x + src * dim, dim * sizeof(float));
            ybatch[r] = y[src];
        }
        float loss;
        /* drawn only for models with dropout, so the others train exactly as before */
        uint64_t dropout_seed = dropout ? fedge_rng_u64(rng) : 0;
        CHK(fedge_model_loss_grad(m, xbatch, ybatch, rows, dropout_seed, scratch, grad, &loss));
        if (!isfinite(loss))
            FAIL(FEDGE_ERR_MODEL_NONFINITE);
        CHK(fedge_sgd_step(opt, m->params, grad));
        loss_sum += (double)loss * rows;
    }
    if (mean_loss != NULL)
        *mean_loss = loss_sum / (double)n;
cleanup:
    return ret;
}

#if !FEDGE_FREESTANDING /* allocates its scratch */
int fedge_evaluate_accuracy(const fedge_model *m, const fedge_dataset *test, double *accuracy,
                            double *mean_loss)
{
    enum { EVAL_BATCH = 256 };
    if (m == NULL || m->params == NULL || test == NULL || test->n == 0 || test->x == NULL ||
        test->y == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (test->dim != m->spec.input_dim)
        return FEDGE_ERR_MODEL_SHAPE;
    int ret = FEDGE_OK;
    size_t correct = 0;
    double loss_sum = 0.0;
    int batch = fedge_model_max_batch(&m->spec, EVAL_BATCH); /* a wide model: smaller chunks */
    if (batch == 0)
        return FEDGE_ERR_MODEL_SPEC;
    float *scratch = malloc(fedge_model_scratch_floats(&m->spec, batch) * sizeof(float));
    if (scratch == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(fedge_model_evaluate(m, test->x, test->y, test->n, batch, scratch, &correct,
                             &loss_sum));
    if (accuracy != NULL)
        *accuracy = (double)correct / (double)test->n;
    if (mean_loss != NULL)
        *mean_loss = loss_sum / (double)test->n;
cleanup:
    free(scratch);
    return ret;
}
#endif
