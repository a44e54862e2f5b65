/* select.h — what the robust combiners (aggregator/combine/) share: ranking
 * values in a total order, the walk over a block's column buffer, and
 * Krum's distances and scores. Internal to aggregator/combine/.
 *
 * Every choice is made on (value, index) pairs, so ties go to the lower
 * index, and every sum runs in an order that does not depend on the block
 * size: the same deltas give the same bits for any block. */
#ifndef FEDGE_COMBINE_SELECT_H
#define FEDGE_COMBINE_SELECT_H

#include <stddef.h>
#include <stdint.h>

#include "combine.h"

/* A value and its position; ordered by v, then by i (NaN after numbers). */
typedef struct {
    double v;
    size_t i;
} fedge_rank;

/* Reorders a[0..n) so that a[k] (k < n) holds the k-th smallest, with the
 * smaller ones before it and the larger after it. O(n) expected, O(n log n)
 * at worst (heapsort once the partitions stop shrinking). */
void fedge_rank_select(fedge_rank *a, size_t n, size_t k);
/* The median of a[0..n), n >= 1; an even n gives the mean of the two middle
 * values. Reorders a. */
double fedge_rank_median(fedge_rank *a, size_t n);
/* The unweighted mean of a[0..n).v, n >= 1, summed in array order. */
double fedge_rank_mean(const fedge_rank *a, size_t n);

/* One coordinate: vals[j] = {row j's value, j} for j < m, in row order;
 * returns the combined value and may reorder vals. */
typedef float (*fedge_column_fn)(fedge_rank *vals, size_t m, void *ctx);

/* out[k] = fn(column k) for every coordinate k < r->n_params, reading the
 * m deltas rows[0..m) (rows NULL: deltas 0..m−1) once each per block of
 * `block` coordinates into an m × block column buffer. */
int fedge_combine_columns(fedge_update_reader *r, const size_t *rows, size_t m, size_t block, fedge_column_fn fn,
                          void *ctx, float *out);

/* d[i·n + j] = ‖δ_i − δ_j‖² for the reader's n deltas (d has n² entries),
 * read once each per block. */
int fedge_krum_distances(fedge_update_reader *r, size_t block, double *d);
/* For each i with in[i]: score[i] = the sum of the q smallest distances
 * from i to the other members (those j with in[j]), q = members − f − 2,
 * at least 1 (Bulyan's last steps have fewer members than Krum needs; as
 * Flower's Krum does). scratch has n entries. */
void fedge_krum_scores(const double *d, size_t n, const uint8_t *in, long f, double *score, fedge_rank *scratch);
/* The member with the lowest score (ties: lowest index); n when none. */
size_t fedge_krum_best(const double *score, size_t n, const uint8_t *in);

/* The rule's "n >= a·f + 3" precondition (Krum a = 2, Bulyan a = 4):
 * FEDGE_OK, or FEDGE_ERR_STRATEGY_TOO_FEW with the reason in why. */
int fedge_combine_check_f(const char *rule, long a, long f, size_t n, char *why, size_t whylen);
/* The row list of the deltas with used[i] set, in index order; *m gets
 * their count. Free with free(). */
int fedge_combine_rows(const uint8_t *used, size_t n, size_t **rows, size_t *m);

#endif
