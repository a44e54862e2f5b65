/* bulyan.c — Bulyan (El Mhamdi et al. 2018; combine.h).
 *
 * Pass 1: the n × n squared distances, then θ = n − 2f deltas chosen one
 * at a time by Krum over the shrinking set of the others (scores
 * recomputed from the same distances). Pass 2 reads the θ chosen: per
 * coordinate, the mean of the β = θ − 2f values closest to their median
 * (ties: lower index). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "combine.h"
#include "common.h"
#include "select.h"

static int bulyan_check(const fedge_combine_params *p, size_t n, char *why, size_t whylen)
{
    return fedge_combine_check_f("bulyan", 4, p->f, n, why, whylen);
}

typedef struct {
    size_t beta;
    double *value; /* θ entries: the column's values by row */
} bulyan_ctx;

static float bulyan_column(fedge_rank *vals, size_t m, void *ctx)
{
    bulyan_ctx *c = ctx;
    for (size_t j = 0; j < m; j++)
        c->value[vals[j].i] = vals[j].v;
    double med = fedge_rank_median(vals, m);
    for (size_t j = 0; j < m; j++)
        vals[j] = (fedge_rank){fabs(c->value[j] - med), j};
    if (c->beta < m)
        fedge_rank_select(vals, m, c->beta - 1);
    double sum = 0;
    for (size_t j = 0; j < c->beta; j++)
        sum += c->value[vals[j].i];
    return (float)(sum * (1.0 / (double)c->beta));
}

static int bulyan_combine(const fedge_combine_params *p, fedge_update_reader *r, const double *w, float *out,
                          uint8_t *used)
{
    char why[160];
    int ret = bulyan_check(p, r->n, why, sizeof why);
    size_t n = r->n, *rows = NULL, n_rows = 0;
    double *d = NULL, *score = NULL;
    fedge_rank *scratch = NULL;
    uint8_t *left = NULL;
    (void)w;
    if (ret != FEDGE_OK)
        return ret;
    size_t theta = n - 2 * (size_t)p->f;
    bulyan_ctx ctx = {.beta = theta - 2 * (size_t)p->f};
    if (n > SIZE_MAX / n)
        return FEDGE_ERR_NOMEM;
    d = calloc(n * n, sizeof *d);
    score = calloc(n, sizeof *score);
    scratch = calloc(n, sizeof *scratch);
    left = malloc(n);
    ctx.value = calloc(theta, sizeof *ctx.value);
    if (!d || !score || !scratch || !left || !ctx.value)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(fedge_krum_distances(r, p->block, d));
    memset(left, 1, n);
    memset(used, 0, n);
    for (size_t t = 0; t < theta; t++) {
        fedge_krum_scores(d, n, left, p->f, score, scratch);
        size_t best = fedge_krum_best(score, n, left);
        left[best] = 0;
        used[best] = 1;
    }
    CHK(fedge_combine_rows(used, n, &rows, &n_rows));
    CHK(fedge_combine_columns(r, rows, n_rows, p->block, bulyan_column, &ctx, out));
cleanup:
    free(d);
    free(score);
    free(scratch);
    free(left);
    free(ctx.value);
    free(rows);
    return ret;
}

const fedge_combiner fedge_combine_bulyan = {
    .name = "bulyan",
    .check = bulyan_check,
    .combine = bulyan_combine,
};
