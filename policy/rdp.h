/* rdp.h — Rényi-DP accountant for the sampled Gaussian mechanism.
 *
 * One step of the mechanism: each client is included with probability q
 * (Poisson sampling), the clipped contributions are summed (sensitivity 1 in
 * units of the clipping norm) and N(0, sigma^2) noise is added. Its RDP at
 * order alpha follows Mironov, Talwar, Zhang (2019) "Rényi Differential
 * Privacy of the Sampled Gaussian Mechanism", computed as Opacus'
 * analysis/rdp.py and TF Privacy's rdp_accountant.py do: integer alpha by the
 * binomial expansion in log space, fractional alpha by the two-series
 * computation with log(erfc). q = 1 gives the plain Gaussian, alpha/(2 sigma^2).
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
 * and FEDGE_ERR_RANGE if a series fails to converge (not seen in practice). */
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

#endif
