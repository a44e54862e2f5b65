/* rdp.c — RDP of the sampled Gaussian mechanism (see rdp.h). */
#include "rdp.h"

#include <math.h>

#include "common.h"

#define MAX_SERIES_TERMS 1000000

void fedge_rdp_default_orders(double orders[FEDGE_RDP_N_DEFAULT_ORDERS])
{
    size_t k = 0;
    for (int x = 1; x <= 99; x++)
        orders[k++] = 1.0 + x / 10.0;
    for (int a = 12; a <= 63; a++)
        orders[k++] = a;
}

/* log(exp(x) + exp(y)) */
static double log_add(double x, double y)
{
    double a = fmin(x, y), b = fmax(x, y);
    if (a == -INFINITY)
        return b;
    return log1p(exp(a - b)) + b;
}

/* log(exp(x) - exp(y)), x >= y */
static int log_sub(double x, double y, double *out)
{
    if (x < y)
        return FEDGE_ERR_RANGE;
    if (y == -INFINITY) {
        *out = x;
        return FEDGE_OK;
    }
    if (x == y) {
        *out = -INFINITY;
        return FEDGE_OK;
    }
    double d = expm1(x - y);
    *out = isinf(d) ? x : log(d) + y;
    return FEDGE_OK;
}

static double log_lgamma(double x)
{
    int sign;
    return lgamma_r(x, &sign);
}

/* log(erfc(x)), accurate where erfc underflows: for large x, the asymptotic
 * series erfc(x) ~ exp(-x^2) / (x sqrt(pi)) (1 - 1/(2x^2) + 3/(4x^4) - ...). */
static double log_erfc(double x)
{
    if (x < 20.0)
        return log(erfc(x));
    double r = 1.0 / (x * x);
    double series = -0.5 * r + 0.75 * r * r - 1.875 * r * r * r + 6.5625 * r * r * r * r;
    return -0.5 * log(M_PI) - log(x) - x * x + log1p(series);
}

static double log_a_int_alpha(double q, double sigma, int alpha)
{
    double log_a = -INFINITY;
    double lq = log(q), l1q = log1p(-q);
    double lg_a1 = log_lgamma(alpha + 1.0);
    for (int i = 0; i <= alpha; i++) {
        double log_binom = lg_a1 - log_lgamma(i + 1.0) - log_lgamma(alpha - i + 1.0);
        double s = log_binom + i * lq + (alpha - i) * l1q + (double)(i * (double)i - i) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, s);
    }
    return log_a;
}

static int log_a_frac_alpha(double q, double sigma, double alpha, double *out)
{
    double log_a0 = -INFINITY, log_a1 = -INFINITY;
    double z0 = sigma * sigma * log(1.0 / q - 1.0) + 0.5;
    double lq = log(q), l1q = log1p(-q);
    double s2 = 2.0 * sigma * sigma;
    double log_coef = 0.0; /* log |binom(alpha, i)| */
    int coef_sign = 1;
    for (long i = 0; i < MAX_SERIES_TERMS; i++) {
        if (i > 0) {
            double f = alpha - (double)i + 1.0;
            log_coef += log(fabs(f)) - log((double)i);
            if (f < 0)
                coef_sign = -coef_sign;
        }
        double di = (double)i, j = alpha - di;
        double log_t0 = log_coef + di * lq + j * l1q;
        double log_t1 = log_coef + j * lq + di * l1q;
        double log_e0 = log(0.5) + log_erfc((di - z0) / (M_SQRT2 * sigma));
        double log_e1 = log(0.5) + log_erfc((z0 - j) / (M_SQRT2 * sigma));
        double log_s0 = log_t0 + (di * di - di) / s2 + log_e0;
        double log_s1 = log_t1 + (j * j - j) / s2 + log_e1;
        if (coef_sign > 0) {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            int ret = log_sub(log_a0, log_s0, &log_a0);
            if (ret == FEDGE_OK)
                ret = log_sub(log_a1, log_s1, &log_a1);
            if (ret != FEDGE_OK)
                return ret;
        }
        if (fmax(log_s0, log_s1) < -30.0) {
            *out = log_add(log_a0, log_a1);
            return FEDGE_OK;
        }
    }
    return FEDGE_ERR_RANGE;
}

/* RDP of one step at order alpha. */
static int rdp_one(double q, double sigma, double alpha, double *out)
{
    if (q == 0.0) {
        *out = 0.0;
        return FEDGE_OK;
    }
    if (sigma == 0.0 || isinf(alpha)) {
        *out = INFINITY;
        return FEDGE_OK;
    }
    if (q == 1.0) {
        *out = alpha / (2.0 * sigma * sigma);
        return FEDGE_OK;
    }
    double log_a;
    if (alpha == floor(alpha) && alpha <= 1e6) {
        log_a = log_a_int_alpha(q, sigma, (int)alpha);
    } else {
        int ret = log_a_frac_alpha(q, sigma, alpha, &log_a);
        if (ret != FEDGE_OK)
            return ret;
    }
    *out = log_a / (alpha - 1.0);
    return FEDGE_OK;
}

int fedge_rdp_compute(double q, double sigma, long steps, const double *orders,
                      size_t n_orders, double *rdp)
{
    if (!(q >= 0.0 && q <= 1.0) || !(sigma >= 0.0) || isinf(sigma) || steps < 0 ||
        !orders || !rdp || n_orders == 0)
        return FEDGE_ERR_INVALID_ARG;
    for (size_t k = 0; k < n_orders; k++)
        if (!(orders[k] > 1.0))
            return FEDGE_ERR_INVALID_ARG;
    for (size_t k = 0; k < n_orders; k++) {
        double r;
        int ret = rdp_one(q, sigma, orders[k], &r);
        if (ret != FEDGE_OK)
            return ret;
        rdp[k] = (steps == 0) ? 0.0 : r * (double)steps;
    }
    return FEDGE_OK;
}

int fedge_rdp_to_epsilon(const double *orders, const double *rdp, size_t n_orders,
                         double delta, fedge_rdp_conversion conv, double *eps,
                         double *best_order)
{
    if (!orders || !rdp || n_orders == 0 || !eps || !(delta > 0.0 && delta < 1.0) ||
        (conv != FEDGE_RDP_CONV_IMPROVED && conv != FEDGE_RDP_CONV_CLASSIC))
        return FEDGE_ERR_INVALID_ARG;
    double best = INFINITY, best_a = orders[0];
    double log_delta = log(delta);
    for (size_t k = 0; k < n_orders; k++) {
        double a = orders[k];
        if (!(a > 1.0))
            return FEDGE_ERR_INVALID_ARG;
        if (isnan(rdp[k]) || rdp[k] < 0.0)
            return FEDGE_ERR_INVALID_ARG;
        double e;
        if (conv == FEDGE_RDP_CONV_IMPROVED)
            e = rdp[k] - (log_delta + log(a)) / (a - 1.0) + log((a - 1.0) / a);
        else
            e = rdp[k] - log_delta / (a - 1.0);
        if (e < best) {
            best = e;
            best_a = a;
        }
    }
    *eps = best < 0.0 ? 0.0 : best;
    if (best_order)
        *best_order = best_a;
    return FEDGE_OK;
}

int fedge_rdp_epsilon(double q, double sigma, long steps, double delta, double *eps,
                      double *best_order)
{
    double rdp[FEDGE_RDP_N_DEFAULT_ORDERS], orders[FEDGE_RDP_N_DEFAULT_ORDERS];
    fedge_rdp_default_orders(orders);
    int ret = fedge_rdp_compute(q, sigma, steps, orders, FEDGE_RDP_N_DEFAULT_ORDERS, rdp);
    if (ret != FEDGE_OK)
        return ret;
    return fedge_rdp_to_epsilon(orders, rdp, FEDGE_RDP_N_DEFAULT_ORDERS, delta,
                                FEDGE_RDP_CONV_IMPROVED, eps, best_order);
}
