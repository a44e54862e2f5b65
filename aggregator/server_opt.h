/* server_opt.h — the server optimiser: how a round's pseudo-gradient Δ (the
 * combined client deltas, combine.h) moves the global model w.
 *
 *   sgd       w += η·Δ                               (FedAvg, McMahan et al. 2017)
 *   momentum  m = β·m + Δ;  w += η·m                 (FedAvgM, Hsu et al. 2019)
 *   adam      m = β1·m + (1−β1)·Δ;  v = β2·v + (1−β2)·Δ²
 *   yogi      m as adam;  v −= (1−β2)·Δ²·sign(v − Δ²)
 *   adagrad   m as adam;  v += Δ²
 *             and for the three: w += η·m / (√v + τ)
 *             (Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
 *             Algorithm 2: no bias correction; v starts at τ², the least
 *             value the algorithm admits, v_{−1} ≥ τ²; m starts at 0)
 * Each family is one file under aggregator/server_opt/ and one row of the
 * table in server_opt.c. Arithmetic is per coordinate in double, stored as
 * float; sgd is exactly `w[i] += (float)η * Δ[i]`, the bits FedAvg always
 * gave.
 *
 * State: named float vectors of n_params each (m, v) and the count of steps
 * taken. fedge_server_opt_save/load write and read it as one blob that also
 * names the optimiser and its parameters (fedge_server_opt_describe), so a
 * state saved under other settings is told apart on load. */
#ifndef FEDGE_SERVER_OPT_H
#define FEDGE_SERVER_OPT_H

#include <stddef.h>
#include <stdint.h>

#define FEDGE_SERVER_OPT_MAX_VECTORS 2

typedef struct {
    char name[16];        /* sgd|momentum|adam|yogi|adagrad */
    double lr;            /* η > 0 */
    double momentum;      /* β of momentum, [0, 1) */
    double beta1, beta2;  /* adaptive: [0, 1) */
    double tau;           /* adaptive: > 0 */
} fedge_server_opt_params;

struct fedge_server_optimizer;

typedef struct {
    const struct fedge_server_optimizer *impl;
    fedge_server_opt_params p;
    size_t n;                                   /* parameters */
    float *vec[FEDGE_SERVER_OPT_MAX_VECTORS];   /* impl->n_vectors of n each */
    uint64_t steps;
} fedge_server_opt;

typedef struct fedge_server_optimizer {
    const char *name;
    size_t n_vectors;
    const char *const *vector_names;
    /* Initial state values (vectors are allocated and zeroed before). */
    void (*init)(fedge_server_opt *o);
    /* w[0..n) += the step for pseudo-gradient d; updates the state. */
    void (*step)(fedge_server_opt *o, float *w, const float *d);
    /* Canonical name with parameters, e.g. "fedadam(lr=0.01,beta1=0.9,...)". */
    int (*describe)(const fedge_server_opt_params *p, char *buf, size_t cap);
} fedge_server_optimizer;

/* NULL when name is not in the table. */
const fedge_server_optimizer *fedge_server_opt_find(const char *name);
/* The table's names separated by '|'. */
const char *fedge_server_opt_names(void);
/* Ranges of p; why gets the reason. */
int fedge_server_opt_check(const fedge_server_opt_params *p, char *why, size_t whylen);

/* Allocates the state for n parameters, fresh (steps 0). */
int fedge_server_opt_init(fedge_server_opt *o, const fedge_server_opt_params *p, size_t n);
void fedge_server_opt_free(fedge_server_opt *o);
/* dst = an independent copy of src (dst uninitialised or freed). */
int fedge_server_opt_copy(fedge_server_opt *dst, const fedge_server_opt *src);
/* One step: w += update(d); steps++. */
void fedge_server_opt_step(fedge_server_opt *o, float *w, const float *d);
/* "fedavg" for sgd at η = 1, else as the optimiser's describe. */
int fedge_server_opt_describe(const fedge_server_opt_params *p, char *buf, size_t cap);

/* The state blob: "FSOS", u32 format 1, u64 steps, u32 n_vectors, u64 n, a
 * 128-byte NUL-padded description, then per vector a 16-byte NUL-padded name
 * and n f32 (little-endian), then n_extra more named vectors given by the
 * caller (SCAFFOLD's server control variate). Sizes are exact. */
size_t fedge_server_opt_state_size(const fedge_server_opt *o, size_t n_extra);
int fedge_server_opt_save(const fedge_server_opt *o, const char *const *extra_names,
                          const float *const *extra, size_t n_extra, uint8_t *out, size_t cap,
                          size_t *len);
/* Restores o (initialised with the wanted parameters and n) from blob, and
 * the extra vectors into extra[i] (n floats each). FEDGE_ERR_STRATEGY_STATE
 * and why when the blob is malformed, or was saved for another optimiser,
 * parameters, n or set of extra vectors: o and extra are then unchanged. */
int fedge_server_opt_load(fedge_server_opt *o, const char *const *extra_names, float *const *extra,
                          size_t n_extra, const uint8_t *blob, size_t len, char *why, size_t whylen);

/* The modules (aggregator/server_opt/FAMILY.c). */
extern const fedge_server_optimizer fedge_server_opt_sgd;
extern const fedge_server_optimizer fedge_server_opt_momentum;
extern const fedge_server_optimizer fedge_server_opt_adam;
extern const fedge_server_optimizer fedge_server_opt_yogi;
extern const fedge_server_optimizer fedge_server_opt_adagrad;

#endif
