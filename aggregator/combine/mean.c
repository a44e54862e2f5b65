/* mean.c — weighted FedAvg over blocks (combine.h). */
#include <stdlib.h>

#include "combine.h"
#include "common.h"

static int mean_check(const fedge_combine_params *p, size_t n, char *why, size_t whylen)
{
    (void)p, (void)why, (void)whylen;
    return n >= 1 ? FEDGE_OK : FEDGE_ERR_STRATEGY_TOO_FEW;
}

int fedge_combine_weighted_sum(fedge_update_reader *r, size_t block, const double *w, double scale, float *out)
{
    block = block < r->n_params ? block : r->n_params;
    double *acc = malloc((block ? block : 1) * sizeof *acc);
    float *buf = malloc((block ? block : 1) * sizeof *buf);
    int ret = FEDGE_OK;
    if (!acc || !buf)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t k0 = 0; k0 < r->n_params; k0 += block) {
        size_t k1 = k0 + block < r->n_params ? k0 + block : r->n_params;
        for (size_t k = 0; k < k1 - k0; k++)
            acc[k] = 0;
        for (size_t i = 0; i < r->n; i++) {
            CHK(r->read(r, i, k0, k1, buf));
            for (size_t k = 0; k < k1 - k0; k++)
                acc[k] += w[i] * (double)buf[k];
        }
        for (size_t k = 0; k < k1 - k0; k++)
            out[k0 + k] = (float)(acc[k] * scale);
    }
cleanup:
    free(acc);
    free(buf);
    return ret;
}

static int mean_combine(const fedge_combine_params *p, fedge_update_reader *r, const double *w, float *out,
                        uint8_t *used)
{
    double total = 0;
    for (size_t i = 0; i < r->n; i++) {
        total += w[i];
        used[i] = 1;
    }
    if (!(total > 0))
        return FEDGE_ERR_INVALID_ARG;
    /* times 1/total, as the running FedAvg always did: the same bits */
    return fedge_combine_weighted_sum(r, p->block, w, 1.0 / total, out);
}

const fedge_combiner fedge_combine_mean = {
    .name = "mean",
    .check = mean_check,
    .combine = mean_combine,
};
