/* trimmed_mean.c — coordinate-wise trimmed mean (Yin et al. 2018;
 * combine.h): per coordinate, floor(beta·n) values dropped at each end and
 * the rest averaged. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "combine.h"
#include "common.h"
#include "select.h"

/* floor(beta·n); the tolerance keeps a decimal beta whose binary value is a
 * hair under the intended one (0.29 · 100 = 28.999…) on the intended count. */
static size_t trim_count(double beta, size_t n)
{
    double c = floor(beta * (double)n + 1e-9);
    return c > 0 ? (size_t)c : 0;
}

static int trimmed_check(const fedge_combine_params *p, size_t n, char *why, size_t whylen)
{
    size_t cut = trim_count(p->trim_beta, n);
    if (n >= 1 && n > 2 * cut)
        return FEDGE_OK;
    snprintf(why, whylen, "trimmed_mean with trim_beta = %g cuts %zu of %zu updates at each end and keeps none",
             p->trim_beta, cut, n);
    return FEDGE_ERR_STRATEGY_TOO_FEW;
}

static float trimmed_column(fedge_rank *vals, size_t m, void *ctx)
{
    size_t cut = *(const size_t *)ctx;
    if (cut > 0) {
        fedge_rank_select(vals, m, cut);                      /* the cut lowest before vals[cut] */
        fedge_rank_select(vals + cut, m - cut, m - 2 * cut - 1); /* the cut highest after the rest */
    }
    return (float)fedge_rank_mean(vals + cut, m - 2 * cut);
}

static int trimmed_combine(const fedge_combine_params *p, fedge_update_reader *r, const double *w, float *out,
                           uint8_t *used)
{
    char why[160];
    size_t cut = trim_count(p->trim_beta, r->n);
    int ret = trimmed_check(p, r->n, why, sizeof why);
    (void)w;
    if (ret == FEDGE_OK)
        ret = fedge_combine_columns(r, NULL, r->n, p->block, trimmed_column, &cut, out);
    if (ret == FEDGE_OK)
        memset(used, 1, r->n);
    return ret;
}

const fedge_combiner fedge_combine_trimmed_mean = {
    .name = "trimmed_mean",
    .check = trimmed_check,
    .combine = trimmed_combine,
};
