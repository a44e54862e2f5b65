/* rdp.h — Rényi-DP accountant for the sampled Gaussian mechanism.
 *
 * One step of the mechanism: each client is included with probability q
 * (Poisson sampling), the clipped contributions are summed (sensitivity 1 in
 * units of the clipping norm) and N(0, sigma^2) noise is added. Its RDP at
 * order alpha follows Mironov, Talwar, Zhang (2019) "Rényi Differential
 * Privacy of the Sampled Gaussian Mechanism": RDP(alpha) = log(A_alpha) /
 * (alpha - 1), A_alpha = E_{z ~ N(0, sigma^2)}[(1 - q + q exp((2z-1) /
 * (2 sigma^2)))^alpha]. A_alpha - 1 is computed as a sum of positive terms so
 * nothing cancels: for integer alpha the binomial expansion without its
 * i = 0, 1 terms; for fractional alpha the expectation of (1+x)^alpha - 1 -
 * alpha x (>= 0, its linear term has mean 0) by the trapezoid rule in log
 * space, checked against the rule at twice the step. (The alternating
 * two-series form with log(erfc) used by TF Privacy and Opacus cancels badly
 * and gives negative values, e.g. at q 0.4, sigma 12, alpha 58.75.) Every
 * result is accurate to a relative 1e-10 or refused with FEDGE_ERR_RANGE;
 * RDP is >= 0 and nondecreasing in alpha. q = 1 gives the plain Gaussian,
 * alpha/(2 sigma^2).
 * Steps compose by adding RDP per order.
 *
 * Conversion to (epsilon, delta), minimised over the orders:
 *   FEDGE_RDP_CONV_IMPROVED  eps = rdp - (log delta + log a)/(a-1) + log((a-1)/a)
 *       (Balle et al. 2020, Thm 21; Opacus >= 1.2, Google dp_accounting).
 *   FEDGE_RDP_CONV_CLASSIC   eps = rdp - log(delta)/(a-1)
 *       (Mironov 2017, Prop 3; TF Privacy's get_privacy_spent before 2022).
 * Epsilon is clamped at 0. A mechanism without privacy (sigma = 0) gives
 * eps = INFINITY with status FEDGE_OK.
 *
 * All functions are pure and thread-safe; status FEDGE_ERR_INVALID_ARG for
 * q outside [0,1], sigma < 0, steps < 0, delta outside (0,1), an order <= 1,
 * and FEDGE_ERR_RANGE when a value cannot be computed to that accuracy or
 * within 2e5 quadrature points (a fractional order above about 2.5e4 sigma,
 * or sigma below about 0.025 at orders up to 63). */
#ifndef FEDGE_RDP_H
#define FEDGE_RDP_H

#include <stddef.h>

typedef enum {
    FEDGE_RDP_CONV_IMPROVED = 0,
    FEDGE_RDP_CONV_CLASSIC = 1,
} fedge_rdp_conversion;

/* Opacus' default orders: 1 + x/10 for x in 1..99, then 12..63 (151 orders). */
#define FEDGE_RDP_N_DEFAULT_ORDERS 151
void fedge_rdp_default_orders(double orders[FEDGE_RDP_N_DEFAULT_ORDERS]);

/* rdp[i] = RDP of `steps` compositions at orders[i] (may be INFINITY). */
int fedge_rdp_compute(double q, double sigma, long steps, const double *orders,
                      size_t n_orders, double *rdp);

/* Smallest epsilon over the orders; best_order may be NULL. */
int fedge_rdp_to_epsilon(const double *orders, const double *rdp, size_t n_orders,
                         double delta, fedge_rdp_conversion conv, double *eps,
                         double *best_order);

/* Default orders, improved conversion. best_order may be NULL. */
int fedge_rdp_epsilon(double q, double sigma, long steps, double delta, double *eps,
                      double *best_order);

/* RDP vectors (and their orders) as stored in a BLOB: n little-endian
 * IEEE-754 binary64 values, FEDGE_RDP_PACKED_SIZE(n) bytes. unpack refuses
 * (FEDGE_ERR_INVALID_ARG) a length other than 8 n and any value that is NaN
 * or negative: a stored RDP vector is >= 0 (INFINITY allowed). */
#define FEDGE_RDP_PACKED_SIZE(n) ((size_t)(n) * 8u)
void fedge_rdp_pack(const double *v, size_t n, unsigned char *out);
int fedge_rdp_unpack(const void *blob, size_t len, double *v, size_t n);

#endif
