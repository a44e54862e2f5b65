/* median.c — coordinate-wise median (Yin et al. 2018; combine.h). */
#include <stdio.h>
#include <string.h>

#include "combine.h"
#include "common.h"
#include "select.h"

static int median_check(const fedge_combine_params *p, size_t n, char *why, size_t whylen)
{
    (void)p;
    if (n >= 1)
        return FEDGE_OK;
    snprintf(why, whylen, "median needs at least 1 update; the round has none");
    return FEDGE_ERR_STRATEGY_TOO_FEW;
}

static float median_column(fedge_rank *vals, size_t m, void *ctx)
{
    (void)ctx;
    return (float)fedge_rank_median(vals, m);
}

static int median_combine(const fedge_combine_params *p, fedge_update_reader *r, const double *w, float *out,
                          uint8_t *used)
{
    char why[160];
    int ret = median_check(p, r->n, why, sizeof why);
    (void)w;
    if (ret == FEDGE_OK)
        ret = fedge_combine_columns(r, NULL, r->n, p->block, median_column, NULL, out);
    if (ret == FEDGE_OK)
        memset(used, 1, r->n);
    return ret;
}

const fedge_combiner fedge_combine_median = {
    .name = "median",
    .check = median_check,
    .combine = median_combine,
};
