/* cluster_loader.h — the global sample order and each rank's slice of it, streamed
 * from a shard file (shared/shard.h) with pread.
 *
 * The training stream is a sequence of epochs; epoch e visits the n rows of
 * the file in the order of a keyed bijection on [0, n) (a Feistel network
 * with cycle walking, keyed by seed and e), so the order costs no memory
 * whatever n is. Global step s takes the B samples at stream positions
 * [s*B, (s+1)*B) (a batch may straddle two epochs); rank r of N takes
 * positions [s*B + r*B/N, s*B + (r+1)*B/N). The order, and so the training
 * result, is the same for every N, and the data position of a checkpoint is
 * just the step number.
 *
 * The loader holds two local batches: with prefetch on, a thread reads the
 * next step's rows while the caller trains on the current one. */
#ifndef FEDGE_CLUSTER_LOADER_H
#define FEDGE_CLUSTER_LOADER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "shard.h"

/* Row of the file at stream position g (epoch g / n). */
uint64_t fedge_sample_row(uint64_t n, uint64_t seed, uint64_t g);
/* Rank r's [lo, hi) within a global batch of B. */
void fedge_batch_slice(int global_batch, int world, int rank, int *lo, int *hi);

typedef struct {
    uint64_t step;  /* UINT64_MAX: empty */
    int rows;
    int status;
    float *x;       /* owned, local_max x dim */
    uint8_t *y;     /* owned, local_max */
    uint8_t *rec;   /* owned, one file record */
} fedge_loader_slot;

typedef struct {
    fedge_shard_reader reader;
    int open;
    uint64_t seed;
    int global_batch, world, rank, local_max;
    fedge_loader_slot slot[2];
    int cur;                    /* slot handed to the caller */
    /* prefetch thread */
    int prefetch;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t want;              /* step the thread should fill, UINT64_MAX: none */
    int fill;                   /* slot the thread fills */
    int busy;                   /* thread is filling slot[fill] */
    int quit;
    int thread_started;
    uint8_t *eval_rec;          /* owned, one record for read_rows */
} fedge_loader;

/* Opens `path` (header and length are validated). Caller closes. */
int fedge_loader_open(fedge_loader *ld, const char *path, uint64_t seed, int global_batch,
                      int world, int rank, int prefetch);
void fedge_loader_close(fedge_loader *ld);
/* The local batch of global step `step`; the buffers stay valid until the
 * next call. Starts prefetching step + 1. */
int fedge_loader_get(fedge_loader *ld, uint64_t step, const float **x, const uint8_t **y,
                     int *rows);
/* Reads rows [first, first + count) of the file in file order (evaluation). */
int fedge_loader_read_rows(fedge_loader *ld, uint64_t first, int count, float *x, uint8_t *y);

#endif
