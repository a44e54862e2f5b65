/* combine.h — turning a round's usable client deltas into one pseudo-gradient.
 *
 * A combiner reads the n deltas through a reader, one block of coordinates
 * at a time, so its memory is O(n × block + n²) floats, never O(n × params):
 * the deltas stay where they are stored (the SQLite log) and are read back
 * a block at a time. Each combiner is one file under aggregator/combine/ and
 * one row of the table in combine.c:
 *   mean          weighted mean, sum_i w_i d_i / sum_i w_i (FedAvg,
 *                 McMahan et al. 2017)
 *   median        coordinate-wise median (Yin et al. 2018); an even count
 *                 takes the mean of the two middle values
 *   trimmed_mean  coordinate-wise mean after dropping floor(beta·n) lowest
 *                 and highest values (Yin et al. 2018)
 *   krum          the one delta with the smallest sum of squared distances
 *                 to its n − f − 2 nearest others (Blanchard et al. 2017)
 *   multikrum     mean of the m deltas with the best Krum scores
 *   bulyan        θ = n − 2f deltas chosen by repeated Krum, then per
 *                 coordinate the mean of the β = θ − 2f values closest to
 *                 their median (El Mhamdi et al. 2018)
 * Only mean uses the weights (sample counts × staleness discount): a robust
 * rule must not let a client's own claim about its sample count buy it
 * influence. Every combiner checks its preconditions (n against f and beta)
 * before reading anything and refuses with FEDGE_ERR_STRATEGY_TOO_FEW and a
 * reason naming the rule, which fails the round with that audited reason. */
#ifndef FEDGE_COMBINE_H
#define FEDGE_COMBINE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char name[24];           /* a combiner in the table */
    double trim_beta;        /* trimmed_mean: fraction cut at each end, [0, 0.5) */
    long f;                  /* krum, multikrum, bulyan: Byzantine clients tolerated, >= 0 */
    long m;                  /* multikrum: deltas averaged; 0: n − f */
    size_t block;            /* coordinates per block read, >= 1 */
} fedge_combine_params;

/* The stored deltas, read by block. read() writes coordinates [k0, k1) of
 * delta i (i < n, k0 < k1 <= n_params) to out[0 .. k1 − k0) and returns a
 * status; a failure aborts the combination with that status. */
typedef struct fedge_update_reader {
    size_t n;
    size_t n_params;
    int (*read)(struct fedge_update_reader *r, size_t i, size_t k0, size_t k1, float *out);
    void *ctx;
} fedge_update_reader;

typedef struct {
    const char *name;
    /* FEDGE_OK when n deltas are enough for p; otherwise
     * FEDGE_ERR_STRATEGY_TOO_FEW and why gets the reason. */
    int (*check)(const fedge_combine_params *p, size_t n, char *why, size_t whylen);
    /* out[n_params] = the combination; w[n] > 0 and finite; used[n] gets 1
     * for each delta that counts in the result (all for mean, median and
     * trimmed_mean; the selection for krum, multikrum and bulyan). Allocates
     * its own O(n × block + n²) scratch and frees it. */
    int (*combine)(const fedge_combine_params *p, fedge_update_reader *r, const double *w, float *out,
                   uint8_t *used);
} fedge_combiner;

/* out[k] = scale × sum_i w[i]·d_i[k], summed in double a block at a time:
 * the mean's arithmetic (scale = 1/sum w), and DP-FedAvg's clipped sum
 * (scale = 1). */
int fedge_combine_weighted_sum(fedge_update_reader *r, size_t block, const double *w, double scale, float *out);

/* NULL when name is not in the table. */
const fedge_combiner *fedge_combiner_find(const char *name);
/* The table's names separated by '|', for help and error messages. */
const char *fedge_combiner_names(void);
/* Check the parameters alone (ranges); why gets the reason. */
int fedge_combine_params_check(const fedge_combine_params *p, char *why, size_t whylen);

/* The modules (aggregator/combine/NAME.c). */
extern const fedge_combiner fedge_combine_mean, fedge_combine_median, fedge_combine_trimmed_mean,
    fedge_combine_krum, fedge_combine_multikrum, fedge_combine_bulyan;

/* Euclidean norm of v, accumulated in double. */
double fedge_l2_norm(const float *v, size_t n);
/* Clips v (whose fedge_l2_norm is norm > bound > 0) in place: every element
 * times one float factor, the largest not above bound / norm for which the
 * result's fedge_l2_norm is <= bound (a bound/norm rounded to float, and the
 * products' rounding, can leave it a few ulps over: DP's sensitivity is the
 * bound). *factor_out gets the factor when not NULL. FEDGE_ERR_INVALID_ARG
 * for a bound or norm that is not finite and positive, or norm <= bound. */
int fedge_l2_clip(float *v, size_t n, double bound, double norm, float *factor_out);

#endif
