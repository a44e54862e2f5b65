/* rdp.c — RDP of the sampled Gaussian mechanism (see rdp.h). */
#include "rdp.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

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

/* log(exp(t) - 1), t > 0 */
static double log_expm1(double t)
{
    return t > 40.0 ? t + log1p(-exp(-t)) : log(expm1(t));
}

static double log_lgamma(double x)
{
    int sign;
    return lgamma_r(x, &sign);
}

/* Integer alpha = n: A - 1 = sum_{i=2..n} binom(n,i) q^i (1-q)^(n-i)
 * (exp((i^2-i)/(2 sigma^2)) - 1), the binomial expansion of A with the
 * i = 0, 1 terms and sum_i binom(n,i) q^i (1-q)^(n-i) = 1 taken out. Every
 * term is positive, so nothing cancels. Returns log(A - 1). */
static double log_a_minus_1_int(double q, double sigma, long n)
{
    double acc = -INFINITY;
    double lq = log(q), l1q = log1p(-q);
    double lg_n1 = log_lgamma((double)n + 1.0);
    double s2 = 2.0 * sigma * sigma;
    for (long i = 2; i <= n; i++) {
        double di = (double)i;
        double log_binom = lg_n1 - log_lgamma(di + 1.0) - log_lgamma((double)(n - i) + 1.0);
        double s = log_binom + di * lq + (double)(n - i) * l1q + log_expm1((di * di - di) / s2);
        acc = log_add(acc, s);
    }
    return acc;
}

/* log((1+x)^alpha - 1 - alpha x) for x = q (e^t - 1) > -1, alpha > 1: the
 * integrand of A - 1 below, >= 0 by convexity. lx1 = log(1 + x). */
static double log_h(double alpha, double q, double t, double lx1)
{
    double x = q * expm1(t);
    if (fabs(x) * alpha <= 0.05) {
        /* binomial series sum_{k>=2} binom(alpha,k) x^k: terms shrink by at
         * least 0.05 / 3 each */
        double c = alpha * (alpha - 1.0) / 2.0, xk = x * x, sum = 0.0;
        for (int k = 2; k < 40; k++) {
            double term = c * xk;
            sum += term;
            if (fabs(term) <= 1e-18 * fabs(sum))
                break;
            c *= (alpha - (double)k) / (double)(k + 1);
            xk *= x;
        }
        return log(sum);
    }
    double l = alpha * lx1;
    if (l > 35.0) {
        /* (1+x)^alpha dominates: log h = l + log1p(-(1 + alpha x) e^-l) */
        double log_1ax = log_add(0.0, log(alpha) + log(q) + log_expm1(t));
        return l + log1p(-exp(log_1ax - l));
    }
    return log(expm1(l) - alpha * x);
}

/* Fractional alpha: A - 1 = E_{z ~ N(0, sigma^2)}[(1+x)^alpha - 1 - alpha x]
 * with x = q (exp((2z-1)/(2 sigma^2)) - 1) (E[x] = 0, so the linear term adds
 * nothing); the integrand is >= 0, so again nothing cancels. Trapezoid rule in
 * log space on [-12 sigma, alpha + 1 + 12 sigma] (outside it the integrand is
 * below e^-70 of its peak), step h = min(sigma/8, sigma^2/2): the integrand is
 * analytic in a strip of half-width pi sigma^2, so the error falls like
 * exp(-2 pi^2 sigma^2 / h). The rule with step 2h (the even points) must agree
 * to FRAC_REL_TOL, else FEDGE_ERR_RANGE: the result is accurate or refused. */
#define FRAC_REL_TOL 1e-10
#define FRAC_MAX_POINTS 200000L
#define FRAC_TAIL_MARGIN 60.0

typedef struct {
    double m, s; /* log(sum) = m + log(s) */
} lse_acc;

static void lse_add(lse_acc *a, double v)
{
    if (v == -INFINITY)
        return;
    if (v > a->m) {
        a->s = a->s * exp(a->m - v) + 1.0;
        a->m = v;
    } else {
        a->s += exp(v - a->m);
    }
}

static double lse_value(const lse_acc *a)
{
    return a->m == -INFINITY ? -INFINITY : a->m + log(a->s);
}

static int log_a_minus_1_frac(double q, double sigma, double alpha, double *out)
{
    double lq = log(q), l1q = log1p(-q);
    double s2 = 2.0 * sigma * sigma;
    double h = fmin(sigma / 8.0, sigma * sigma / 2.0);
    double lo = -12.0 * sigma, hi = alpha + 1.0 + 12.0 * sigma;
    double span = (hi - lo) / h;
    if (!(span < (double)FRAC_MAX_POINTS))
        return FEDGE_ERR_RANGE;
    long n = 2 * (long)ceil(span / 2.0); /* even: the coarse rule uses every other point */
    h = (hi - lo) / (double)n;
    double log_norm = -0.5 * log(2.0 * M_PI) - log(sigma);
    lse_acc even = {-INFINITY, 0.0}, odd = {-INFINITY, 0.0};
    double g_lo = -INFINITY, g_hi = -INFINITY;
    for (long i = 0; i <= n; i++) {
        double z = lo + h * (double)i;
        double t = (2.0 * z - 1.0) / s2;
        double lx1 = t < 30.0 ? log1p(q * expm1(t)) : log_add(l1q, lq + t);
        double g = log_norm - z * z / s2 + log_h(alpha, q, t, lx1);
        if (isnan(g) || g == INFINITY)
            return FEDGE_ERR_RANGE;
        if (i == 0 || i == n)
            g += log(0.5);
        if (i == 0)
            g_lo = g;
        if (i == n)
            g_hi = g;
        lse_add((i % 2 == 0) ? &even : &odd, g);
    }
    lse_acc all = even;
    lse_add(&all, lse_value(&odd));
    /* end points carry weight 1/2 in g: right for step h, and for step 2h
     * (weight 2h * 1/2 = h) as well */
    double fine = log(h) + lse_value(&all);
    double coarse = log(2.0 * h) + lse_value(&even);
    if (fmax(g_lo, g_hi) > all.m - FRAC_TAIL_MARGIN)
        return FEDGE_ERR_RANGE;
    /* d = |fine - coarse| is the relative error of I = A - 1; log A =
     * log1p(I) then has the relative error d I / ((1 + I) log1p(I)) <= d */
    double d = fabs(fine - coarse), log_a = log_add(0.0, fine);
    double rel = fine < -30.0 ? d : d * exp(fine - log_a) / log_a;
    if (!(rel <= FRAC_REL_TOL))
        return FEDGE_ERR_RANGE;
    *out = fine;
    return FEDGE_OK;
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
    double log_am1; /* log(A_alpha - 1) */
    if (alpha == floor(alpha) && alpha <= 1e6) {
        log_am1 = log_a_minus_1_int(q, sigma, (long)alpha);
    } else {
        int ret = log_a_minus_1_frac(q, sigma, alpha, &log_am1);
        if (ret != FEDGE_OK)
            return ret;
    }
    double log_a = log_add(0.0, log_am1);
    if (isnan(log_a) || log_a < 0.0)
        return FEDGE_ERR_RANGE;
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

void fedge_rdp_pack(const double *v, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, &v[i], sizeof bits);
        for (int b = 0; b < 8; b++)
            out[8 * i + (size_t)b] = (unsigned char)(bits >> (8 * b));
    }
}

int fedge_rdp_unpack(const void *blob, size_t len, double *v, size_t n)
{
    const unsigned char *p = blob;
    if ((!blob && len > 0) || !v || len != FEDGE_RDP_PACKED_SIZE(n))
        return FEDGE_ERR_INVALID_ARG;
    for (size_t i = 0; i < n; i++) {
        uint64_t bits = 0;
        for (int b = 7; b >= 0; b--)
            bits = (bits << 8) | p[8 * i + (size_t)b];
        double d;
        memcpy(&d, &bits, sizeof d);
        if (isnan(d) || d < 0.0)
            return FEDGE_ERR_INVALID_ARG;
        v[i] = d;
    }
    return FEDGE_OK;
}
