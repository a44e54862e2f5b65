/* krum.c — Krum and Multi-Krum (Blanchard et al. 2017; combine.h).
 *
 * Pass 1 reads every delta once for the n × n squared distances; each
 * delta's score is the sum of its n − f − 2 smallest distances to the
 * others. Krum returns the best-scored delta, Multi-Krum the unweighted
 * mean of the m best (m = multikrum_m, or n − f when 0); ties go to the
 * lower index. Pass 2 reads only the chosen deltas. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "combine.h"
#include "common.h"
#include "select.h"

static int krum_check(const fedge_combine_params *p, size_t n, char *why, size_t whylen)
{
    return fedge_combine_check_f("krum", 2, p->f, n, why, whylen);
}

static size_t multikrum_m(const fedge_combine_params *p, size_t n)
{
    return p->m > 0 ? (size_t)p->m : n - (size_t)p->f;
}

static int multikrum_check(const fedge_combine_params *p, size_t n, char *why, size_t whylen)
{
    int ret = fedge_combine_check_f("multikrum", 2, p->f, n, why, whylen);
    if (ret == FEDGE_OK && multikrum_m(p, n) > n) {
        snprintf(why, whylen, "multikrum with multikrum_m = %ld averages more updates than the round's %zu", p->m, n);
        ret = FEDGE_ERR_STRATEGY_TOO_FEW;
    }
    return ret;
}

static float mean_column(fedge_rank *vals, size_t m, void *ctx)
{
    (void)ctx;
    return (float)fedge_rank_mean(vals, m);
}

/* used[] = the m best Krum scores of the n deltas; out = their mean. */
static int krum_mean_of_best(const fedge_combine_params *p, fedge_update_reader *r, size_t m, float *out,
                             uint8_t *used)
{
    int ret = FEDGE_OK;
    size_t n = r->n, *rows = NULL, n_rows = 0;
    double *d = NULL, *score = NULL;
    fedge_rank *scratch = NULL;
    uint8_t *all = NULL;
    if (n > SIZE_MAX / n)
        return FEDGE_ERR_NOMEM;
    d = calloc(n * n, sizeof *d);
    score = calloc(n, sizeof *score);
    scratch = calloc(n, sizeof *scratch);
    all = malloc(n);
    if (!d || !score || !scratch || !all)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(fedge_krum_distances(r, p->block, d));
    memset(all, 1, n);
    fedge_krum_scores(d, n, all, p->f, score, scratch);
    for (size_t i = 0; i < n; i++)
        scratch[i] = (fedge_rank){score[i], i};
    fedge_rank_select(scratch, n, m - 1);
    memset(used, 0, n);
    for (size_t j = 0; j < m; j++)
        used[scratch[j].i] = 1;
    CHK(fedge_combine_rows(used, n, &rows, &n_rows));
    CHK(fedge_combine_columns(r, rows, n_rows, p->block, mean_column, NULL, out));
cleanup:
    free(d);
    free(score);
    free(scratch);
    free(all);
    free(rows);
    return ret;
}

static int krum_combine(const fedge_combine_params *p, fedge_update_reader *r, const double *w, float *out,
                        uint8_t *used)
{
    char why[160];
    int ret = krum_check(p, r->n, why, sizeof why);
    (void)w;
    return ret == FEDGE_OK ? krum_mean_of_best(p, r, 1, out, used) : ret;
}

static int multikrum_combine(const fedge_combine_params *p, fedge_update_reader *r, const double *w, float *out,
                             uint8_t *used)
{
    char why[160];
    int ret = multikrum_check(p, r->n, why, sizeof why);
    (void)w;
    return ret == FEDGE_OK ? krum_mean_of_best(p, r, multikrum_m(p, r->n), out, used) : ret;
}

const fedge_combiner fedge_combine_krum = {
    .name = "krum",
    .check = krum_check,
    .combine = krum_combine,
};

const fedge_combiner fedge_combine_multikrum = {
    .name = "multikrum",
    .check = multikrum_check,
    .combine = multikrum_combine,
};
