/* select.c — ranking, the column walk and Krum scoring for the robust
 * combiners (select.h). */
#include "select.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

static int rank_less(const fedge_rank *a, const fedge_rank *b)
{
    if (a->v < b->v)
        return 1;
    if (a->v > b->v)
        return 0;
    int a_nan = isnan(a->v), b_nan = isnan(b->v);
    if (a_nan != b_nan)
        return b_nan;
    return a->i < b->i;
}

static void rank_swap(fedge_rank *a, size_t x, size_t y)
{
    fedge_rank t = a[x];
    a[x] = a[y];
    a[y] = t;
}

static void insertion_sort(fedge_rank *a, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        fedge_rank t = a[i];
        size_t j = i;
        for (; j > 0 && rank_less(&t, &a[j - 1]); j--)
            a[j] = a[j - 1];
        a[j] = t;
    }
}

static void sift_down(fedge_rank *a, size_t root, size_t n)
{
    for (size_t child; (child = 2 * root + 1) < n; root = child) {
        if (child + 1 < n && rank_less(&a[child], &a[child + 1]))
            child++;
        if (!rank_less(&a[root], &a[child]))
            return;
        rank_swap(a, root, child);
    }
}

static void heap_sort(fedge_rank *a, size_t n)
{
    for (size_t i = n / 2; i-- > 0;)
        sift_down(a, i, n);
    for (size_t end = n; end-- > 1;) {
        rank_swap(a, 0, end);
        sift_down(a, 0, end);
    }
}

void fedge_rank_select(fedge_rank *a, size_t n, size_t k)
{
    size_t lo = 0, hi = n, budget = 8;
    for (size_t s = n; s > 1; s >>= 1)
        budget += 2;
    while (hi - lo > 16) {
        if (budget-- == 0) {
            heap_sort(a + lo, hi - lo);
            return;
        }
        /* median of three to a[hi − 1], then Lomuto; the keys are distinct
         * (the index breaks ties), so equal values cannot unbalance it */
        size_t mid = lo + (hi - lo) / 2, last = hi - 1;
        if (rank_less(&a[mid], &a[lo]))
            rank_swap(a, mid, lo);
        if (rank_less(&a[last], &a[lo]))
            rank_swap(a, last, lo);
        if (rank_less(&a[mid], &a[last]))
            rank_swap(a, mid, last);
        size_t p = lo;
        for (size_t j = lo; j < last; j++)
            if (rank_less(&a[j], &a[last]))
                rank_swap(a, j, p++);
        rank_swap(a, p, last);
        if (k == p)
            return;
        if (k < p)
            hi = p;
        else
            lo = p + 1;
    }
    insertion_sort(a + lo, hi - lo);
}

double fedge_rank_median(fedge_rank *a, size_t n)
{
    size_t h = n / 2;
    fedge_rank_select(a, n, h);
    if (n % 2)
        return a[h].v;
    size_t below = 0; /* the largest of a[0..h), the lower middle value */
    for (size_t j = 1; j < h; j++)
        if (rank_less(&a[below], &a[j]))
            below = j;
    return (a[below].v + a[h].v) / 2;
}

double fedge_rank_mean(const fedge_rank *a, size_t n)
{
    double sum = 0;
    for (size_t j = 0; j < n; j++)
        sum += a[j].v;
    return sum * (1.0 / (double)n); /* as mean.c scales: equal weights give its bits */
}

/* Coordinates transposed at once into the rank tile: small enough to stay in
 * cache, large enough to read each row's block in whole cache lines. */
#define COLUMN_TILE 64

int fedge_combine_columns(fedge_update_reader *r, const size_t *rows, size_t m, size_t block, fedge_column_fn fn,
                          void *ctx, float *out)
{
    int ret = FEDGE_OK;
    float *col = NULL;
    fedge_rank *tile = NULL;
    if (m == 0 || block == 0)
        return FEDGE_ERR_INVALID_ARG;
    size_t bw = block < r->n_params ? block : r->n_params;
    if (bw == 0)
        return FEDGE_OK;
    if (bw > SIZE_MAX / sizeof *col / m)
        return FEDGE_ERR_NOMEM;
    col = calloc(m, bw * sizeof *col);
    tile = calloc(m, COLUMN_TILE * sizeof *tile);
    if (!col || !tile)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t k0 = 0; k0 < r->n_params; k0 += bw) {
        size_t w = r->n_params - k0 < bw ? r->n_params - k0 : bw;
        for (size_t j = 0; j < m; j++)
            CHK(r->read(r, rows ? rows[j] : j, k0, k0 + w, col + j * bw));
        for (size_t t0 = 0; t0 < w; t0 += COLUMN_TILE) {
            size_t tw = w - t0 < COLUMN_TILE ? w - t0 : COLUMN_TILE;
            for (size_t j = 0; j < m; j++)
                for (size_t t = 0; t < tw; t++)
                    tile[t * m + j] = (fedge_rank){col[j * bw + t0 + t], j};
            for (size_t t = 0; t < tw; t++)
                out[k0 + t0 + t] = fn(tile + t * m, m, ctx);
        }
    }
cleanup:
    free(col);
    free(tile);
    return ret;
}

/* Each pair's squared distance is summed in KRUM_LANES running sums, lane
 * = global coordinate mod KRUM_LANES, each in coordinate order: independent
 * chains the CPU can overlap, and the same additions in the same order
 * whatever the block size. */
#define KRUM_LANES 4
/* Coordinates of all pairs done at once: n rows of it stay in cache. */
#define KRUM_TILE 1024

static void lanes_add(double *lane, const float *a, const float *b, size_t k0, size_t k, size_t end)
{
    for (; k < end && (k0 + k) % KRUM_LANES; k++) {
        double t = (double)a[k] - (double)b[k];
        lane[(k0 + k) % KRUM_LANES] += t * t;
    }
    double l0 = lane[0], l1 = lane[1], l2 = lane[2], l3 = lane[3];
    for (; k + KRUM_LANES <= end; k += KRUM_LANES) {
        double t0 = (double)a[k] - (double)b[k], t1 = (double)a[k + 1] - (double)b[k + 1];
        double t2 = (double)a[k + 2] - (double)b[k + 2], t3 = (double)a[k + 3] - (double)b[k + 3];
        l0 += t0 * t0;
        l1 += t1 * t1;
        l2 += t2 * t2;
        l3 += t3 * t3;
    }
    lane[0] = l0, lane[1] = l1, lane[2] = l2, lane[3] = l3;
    for (; k < end; k++) {
        double t = (double)a[k] - (double)b[k];
        lane[(k0 + k) % KRUM_LANES] += t * t;
    }
}

int fedge_krum_distances(fedge_update_reader *r, size_t block, double *d)
{
    int ret = FEDGE_OK;
    size_t n = r->n, bw = block < r->n_params ? block : r->n_params;
    float *col = NULL;
    double *lanes = NULL;
    if (block == 0)
        return FEDGE_ERR_INVALID_ARG;
    if (n < 2) {
        if (n == 1)
            d[0] = 0;
        return FEDGE_OK;
    }
    if (n > SIZE_MAX / n || (bw ? bw : 1) > SIZE_MAX / sizeof *col / n)
        return FEDGE_ERR_NOMEM;
    lanes = calloc(n * (n - 1) / 2, KRUM_LANES * sizeof *lanes);
    col = calloc(n, (bw ? bw : 1) * sizeof *col);
    if (!lanes || !col)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t k0 = 0; k0 < r->n_params; k0 += bw) {
        size_t w = r->n_params - k0 < bw ? r->n_params - k0 : bw;
        for (size_t i = 0; i < n; i++)
            CHK(r->read(r, i, k0, k0 + w, col + i * bw));
        for (size_t t0 = 0; t0 < w; t0 += KRUM_TILE) {
            size_t t1 = w - t0 < KRUM_TILE ? w : t0 + KRUM_TILE;
            double *lane = lanes;
            for (size_t i = 0; i < n; i++)
                for (size_t j = i + 1; j < n; j++, lane += KRUM_LANES)
                    lanes_add(lane, col + i * bw, col + j * bw, k0, t0, t1);
        }
    }
    const double *lane = lanes;
    for (size_t i = 0; i < n; i++) {
        d[i * n + i] = 0;
        for (size_t j = i + 1; j < n; j++, lane += KRUM_LANES)
            d[i * n + j] = d[j * n + i] = (lane[0] + lane[1]) + (lane[2] + lane[3]);
    }
cleanup:
    free(col);
    free(lanes);
    return ret;
}

void fedge_krum_scores(const double *d, size_t n, const uint8_t *in, long f, double *score, fedge_rank *scratch)
{
    size_t members = 0;
    for (size_t i = 0; i < n; i++)
        members += in[i] != 0;
    size_t q = members > (size_t)f + 2 ? members - (size_t)f - 2 : 1;
    if (q >= members) /* one member: no others */
        q = members - 1;
    for (size_t i = 0; i < n; i++) {
        if (!in[i])
            continue;
        size_t c = 0;
        for (size_t j = 0; j < n; j++)
            if (in[j] && j != i)
                scratch[c++] = (fedge_rank){d[i * n + j], j};
        double s = 0;
        if (q > 0) {
            fedge_rank_select(scratch, c, q - 1);
            for (size_t t = 0; t < q; t++)
                s += scratch[t].v;
        }
        score[i] = s;
    }
}

size_t fedge_krum_best(const double *score, size_t n, const uint8_t *in)
{
    size_t best = n;
    for (size_t i = 0; i < n; i++)
        if (in[i] && (best == n || score[i] < score[best]))
            best = i;
    return best;
}

int fedge_combine_check_f(const char *rule, long a, long f, size_t n, char *why, size_t whylen)
{
    if (f >= 0 && n >= 3 && (size_t)f <= (n - 3) / (size_t)a)
        return FEDGE_OK;
    snprintf(why, whylen, "%s with byzantine_f = %ld needs at least %ldf + 3 = %.0f updates; the round has %zu", rule,
             f, a, (double)a * (double)f + 3, n);
    return FEDGE_ERR_STRATEGY_TOO_FEW;
}

int fedge_combine_rows(const uint8_t *used, size_t n, size_t **rows, size_t *m)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += used[i] != 0;
    *m = c;
    *rows = calloc(c ? c : 1, sizeof **rows);
    if (!*rows)
        return FEDGE_ERR_NOMEM;
    c = 0;
    for (size_t i = 0; i < n; i++)
        if (used[i])
            (*rows)[c++] = i;
    return FEDGE_OK;
}
