/* shard.h — compact binary shard files that a client streams.
 *
 * File layout (little-endian):
 *   magic "FSHD" | u32 version (1) | u64 n | u32 dim | u32 n_classes |
 *   u32 feature_type (0 = u8 scaled by 1/255, 1 = f32) | u32 reserved |
 *   n records of [u8 label | dim features]
 *   | 32-byte SHA-256 of everything before it.
 *
 * The reader holds one minibatch at most: it visits records in a seeded
 * pseudo-random permutation computed on the fly (a keyed Feistel bijection
 * with cycle walking), reading each record with pread, so memory does not
 * grow with the shard size. */
#ifndef FEDGE_SHARD_H
#define FEDGE_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "dataset.h"

enum { FEDGE_SHARD_U8 = 0, FEDGE_SHARD_F32 = 1 };

/* Write rows idx[0..count) of ds. u8 features require x in [0, 1]. */
int fedge_shard_write(const char *path, const fedge_dataset *ds, const size_t *idx,
                      size_t count, int feature_type);

typedef struct {
    int fd;
    uint64_t n;
    int dim;
    int n_classes;
    int feature_type;
    size_t record_size;
    uint8_t *record;   /* owned, one record */
    uint64_t epoch_key;
    uint64_t pos;      /* records visited this epoch */
    int shuffle;
} fedge_shard_reader;

/* Opens and validates the header and length (not the trailing hash; use
 * fedge_shard_verify for that). */
int fedge_shard_open(fedge_shard_reader *r, const char *path);
void fedge_shard_close(fedge_shard_reader *r);
int fedge_shard_verify(const char *path);
/* Start an epoch: shuffle != 0 gives a permutation derived from seed. */
void fedge_shard_rewind(fedge_shard_reader *r, int shuffle, uint64_t seed);
/* Up to `batch` rows into x (batch x dim) and y; *got = 0 at epoch end. */
int fedge_shard_next_batch(fedge_shard_reader *r, int batch, float *x, uint8_t *y,
                           int *got);
/* Load the whole shard into memory (server-side evaluation, tests). */
int fedge_shard_load(const char *path, fedge_dataset *ds);

#endif
