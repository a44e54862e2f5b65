/* strategy.h — aggregation of client deltas.
 *
 * Weighted FedAvg: mean = sum_i w_i * delta_i / sum_i w_i (w_i = sample
 * counts), then params += server_lr * mean. Accumulates in double so the
 * result does not depend on the order of clients beyond rounding of the
 * final cast. */
#ifndef FEDGE_STRATEGY_H
#define FEDGE_STRATEGY_H

#include <stddef.h>

typedef struct {
    size_t n_params;
    double *sum;          /* owned, n_params */
    double total_weight;
    size_t n;
} fedge_fedavg;

int fedge_fedavg_init(fedge_fedavg *f, size_t n_params);
void fedge_fedavg_free(fedge_fedavg *f);
/* weight > 0 and finite. */
int fedge_fedavg_add(fedge_fedavg *f, const float *delta, double weight);
/* mean_out[n_params] = weighted mean; FEDGE_ERR_STATE when nothing was added. */
int fedge_fedavg_mean(const fedge_fedavg *f, float *mean_out);
/* params += server_lr * mean. */
void fedge_apply_delta(float *params, const float *mean, size_t n, float server_lr);
double fedge_l2_norm(const float *v, size_t n);

#endif
