/* partition.h — split a dataset into N client shards.
 *
 *   IID:       a seeded shuffle dealt round-robin (sizes differ by <= 1).
 *   DIRICHLET: per class, proportions ~ Dir(beta) over clients (label skew;
 *              small beta = strong skew), every client gets >= min_size rows.
 *   QUANTITY:  client sizes ~ Dir(beta) over clients, labels IID within.
 *   LABELS:    label-quantity skew "#C = k" (NIID-Bench, Li et al. 2022):
 *              client i holds label i % n_classes plus k - 1 other distinct
 *              labels drawn at random (with fewer clients than labels, the
 *              labels no client got that way are dealt first, so every label
 *              is held when n_clients * k >= n_classes); each label's
 *              shuffled rows are dealt evenly (sizes within 1) to the clients
 *              holding it. Rows of a label no client holds are left out.
 *              FEDGE_ERR_RANGE if a client ends up below min_size.
 *   NOISE:     feature-noise skew (NIID-Bench): the IID split; client i's
 *              features then get N(0, (sigma * i / n_clients)^2) noise, drawn
 *              by fedge_partition_client_data (client 0 stays clean).
 *
 * The result is, for each client, a list of row indices into the dataset.
 * Same seed, same dataset, same parameters => same shards. */
#ifndef FEDGE_PARTITION_H
#define FEDGE_PARTITION_H

#include <stddef.h>
#include <stdint.h>

#include "dataset.h"

/* The smallest beta accepted. Proportions are drawn in log space, so any
 * beta down to here gives the skew it asks for (beta 1e-5: each class goes
 * to one client); below it log(U) / beta would overflow a double. */
#define FEDGE_PARTITION_MIN_BETA 1e-300

typedef enum {
    FEDGE_PARTITION_IID = 0,
    FEDGE_PARTITION_DIRICHLET = 1,
    FEDGE_PARTITION_QUANTITY = 2,
    FEDGE_PARTITION_LABELS = 3,
    FEDGE_PARTITION_NOISE = 4,
} fedge_partition_kind;

typedef struct {
    fedge_partition_kind kind;
    int n_clients;
    double beta;        /* Dirichlet concentration, >= FEDGE_PARTITION_MIN_BETA (unused for IID) */
    size_t min_size;    /* each client at least this many rows (default 10; 0 acts as 1) */
    uint64_t seed;
    int classes_per_client; /* LABELS: k, 1..n_classes */
    double noise_sigma;     /* NOISE: finite, >= 0 */
} fedge_partition_config;

typedef struct {
    int n_clients;
    size_t *sizes;      /* owned, n_clients */
    size_t **indices;   /* owned, n_clients arrays of sizes[i] row indices */
} fedge_partition;

/* iid|dirichlet|quantity|labels|noise */
int fedge_partition_parse_kind(const char *text, fedge_partition_kind *out);
int fedge_partition_make(const fedge_dataset *ds, const fedge_partition_config *cfg,
                         fedge_partition *out);
/* Client `client`'s rows of p as a new dataset (*out owned by the caller,
 * fedge_dataset_free). For NOISE it adds the client's seeded Gaussian noise
 * (cfg->seed, cfg->noise_sigma; the same draws for the same arguments); with
 * clip_u8 the noisy features are rounded to k/255 and clipped to [0, 1] so
 * they still fit a u8 shard. Other kinds: a plain copy. */
int fedge_partition_client_data(const fedge_dataset *ds, const fedge_partition *p,
                                const fedge_partition_config *cfg, int client, int clip_u8,
                                fedge_dataset *out);
/* hist is n_clients x ds->n_classes, caller-allocated. */
void fedge_partition_label_histogram(const fedge_partition *p, const fedge_dataset *ds,
                                     size_t *hist);
/* Label skew: the mean over clients of the total-variation distance between
 * a client's label distribution and the whole partition's (0 = identical,
 * 1 = disjoint). */
int fedge_partition_label_tv(const fedge_partition *p, const fedge_dataset *ds, double *tv);
void fedge_partition_free(fedge_partition *p);

#endif
