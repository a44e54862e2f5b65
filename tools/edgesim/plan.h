/* plan.h — fedge-edgesim's pure parts: the command line, the arrival
 * process, the pool of absent devices, compute speeds, contiguous data
 * slices and percentiles. No I/O, no threads, no clock: everything random
 * comes from a seeded fedge_rng (rng.h), so a seed fixes the plan.
 *
 * Arrivals: all-at-once (every free session slot is filled at once) or a
 * Poisson process of `rate` sessions per second (exponential gaps). A
 * session takes a device uniformly from those not in a session
 * (fedge_edgesim_pool), which returns to the pool when it ends (churn).
 * Speeds: a device's factor (>= 1 = that many times slower) is fixed per
 * device: 1, lognormal exp(|N(0, sigma^2)|), or `slowdown` for a seeded
 * fraction of stragglers. */
#ifndef FEDGE_EDGESIM_PLAN_H
#define FEDGE_EDGESIM_PLAN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "delta.h"
#include "log.h"
#include "rng.h"

#define EDGESIM_HOST_MAX 255
#define EDGESIM_POPULATION_MAX 100000u /* FEDGE_KEYS_MAX_DEVICES */
#define EDGESIM_CONCURRENCY_MAX 4096u

typedef enum { EDGESIM_ARRIVAL_ALL = 0, EDGESIM_ARRIVAL_POISSON = 1 } fedge_edgesim_arrival;
typedef enum { EDGESIM_SPEED_SAME = 0, EDGESIM_SPEED_LOGNORMAL, EDGESIM_SPEED_STRAGGLER } fedge_edgesim_speed_kind;
typedef enum { EDGESIM_TRAIN_NONE = 0, EDGESIM_TRAIN_SGD = 1 } fedge_edgesim_train;

typedef struct {
    char host[EDGESIM_HOST_MAX + 1];
    uint16_t port;
    const char *keys_path;      /* all devices' keys, loaded once */
    const char *data_path;      /* one shard file sliced among the devices; NULL: synthetic rows */
    const char *json_path;      /* summary; NULL: none */
    const char *model_spec;     /* the aggregator's (rows of synthetic data fit it) */
    const char *tmp_dir;        /* --train sgd: a session's slice as a short-lived shard file */
    uint32_t population;        /* P: the first P devices of the keys file */
    uint32_t concurrency;       /* S: sessions at once (threads) */
    fedge_edgesim_arrival arrival;
    double rate;                /* Poisson: sessions per second */
    double session_s;           /* a session's time budget, U(0.5, 1.5) x this (0: none) */
    uint32_t rounds;            /* updates per session (0: no limit) */
    double dropout;             /* probability that a session vanishes during its POST /update */
    fedge_edgesim_speed_kind speed;
    double sigma;               /* lognormal */
    double straggler_frac, slowdown;
    double compute_ms;          /* --train none: simulated training time at speed 1 */
    fedge_edgesim_train train;
    double beta;                /* Dirichlet slices of --data (0: contiguous) */
    uint32_t samples;           /* rows per device without --data */
    uint64_t seed;
    double duration_s;          /* stop after this long (0: when the aggregator reports finished) */
    uint32_t poll_ms, timeout_ms;
    int max_retries;
    fedge_encoding encoding;
    fedge_log_level log_level;  /* the sessions' log (default warn) */
    uint32_t stack_kib;
    int help;
    int tcp;                    /* --transport tcp: CoAP over TLS/TCP (RFC 8323) */
} fedge_edgesim_options;

void fedge_edgesim_defaults(fedge_edgesim_options *o);
/* argv[0] is the program name; values as the next argument or after '='.
 * FEDGE_ERR_EDGE_USAGE with err naming the flag. Strings point into argv. */
int fedge_edgesim_parse(int argc, char *const argv[], fedge_edgesim_options *o, char *err,
                        size_t errlen);
void fedge_edgesim_usage(FILE *f, const char *prog);

/* Seconds from one arrival to the next: 0 for all-at-once, else Exp(rate). */
double fedge_edgesim_gap_s(const fedge_edgesim_options *o, fedge_rng *r);
/* Device d's compute-speed factor (>= 1), a pure function of (seed, d). */
double fedge_edgesim_speed(const fedge_edgesim_options *o, uint32_t d);
/* Rows [*first, *first + *count) of device d among p over n rows:
 * contiguous, in device order, sizes within 1 of each other. */
void fedge_edgesim_slice(uint64_t n, uint32_t p, uint32_t d, uint64_t *first, uint64_t *count);
/* The q-quantile (0..1, nearest rank) of v[0..n), sorted in place; 0 when n = 0. */
double fedge_edgesim_quantile(double *v, size_t n, double q);

/* Devices not in a session. A device is in the pool at most once. */
typedef struct {
    uint32_t *ids;     /* owned, the n absent devices */
    uint8_t *present;  /* owned, one flag per device */
    uint32_t n, population;
} fedge_edgesim_pool;

int fedge_edgesim_pool_init(fedge_edgesim_pool *p, uint32_t population); /* all present */
void fedge_edgesim_pool_free(fedge_edgesim_pool *p);
/* A device uniformly among the absent ones, removed: FEDGE_ERR_NOT_FOUND when none. */
int fedge_edgesim_pool_take(fedge_edgesim_pool *p, fedge_rng *r, uint32_t *d);
/* FEDGE_ERR_STATE when d is already in the pool, FEDGE_ERR_RANGE when d >= population. */
int fedge_edgesim_pool_put(fedge_edgesim_pool *p, uint32_t d);

#endif
