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
/* A u8 feature b reads as b * FEDGE_SHARD_U8_SCALE, the same float the IDX
 * loader gives a pixel, so Fashion-MNIST round-trips bit for bit. */
#define FEDGE_SHARD_U8_SCALE (1.0f / 255.0f)

/* Write rows idx[0..count) of ds (count >= 1). u8 features require x in
 * [0, 1]. Every row is checked first (FEDGE_ERR_RANGE: an index or value
 * out of range; FEDGE_ERR_DATA_LABEL), then the file is written atomically:
 * a temp file in the same directory, fsync, rename. */
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
 * fedge_shard_verify for that): FEDGE_ERR_SHARD_MAGIC, _VERSION, _HEADER
 * (a field out of range), _TRUNCATED or _OVERSIZED (length != header +
 * n * record + 32). On failure *r is left closed. */
int fedge_shard_open(fedge_shard_reader *r, const char *path);
void fedge_shard_close(fedge_shard_reader *r);
/* The open checks, then the SHA-256 (FEDGE_ERR_SHARD_CHECKSUM); reads in
 * blocks of whole records, fedge_shard_verify_bytes(record size) bytes on
 * the heap (4 KiB, or one record when larger), the only allocation. */
int fedge_shard_verify(const char *path);
size_t fedge_shard_verify_bytes(size_t record_size); /* 0 for 0 */
/* Start an epoch: shuffle != 0 gives a permutation derived from seed. */
void fedge_shard_rewind(fedge_shard_reader *r, int shuffle, uint64_t seed);
/* Up to `batch` rows into x (batch x dim) and y; *got = 0 at epoch end.
 * A record with a label >= n_classes (FEDGE_ERR_DATA_LABEL) or a non-finite
 * f32 (FEDGE_ERR_DATA_FORMAT) stops the batch; *got counts the rows before it. */
int fedge_shard_next_batch(fedge_shard_reader *r, int batch, float *x, uint8_t *y,
                           int *got);
/* The same for a u8 shard (FEDGE_ERR_STATE otherwise), the features as
 * stored (x: batch x dim bytes; feature b is b * FEDGE_SHARD_U8_SCALE). */
int fedge_shard_next_batch_u8(fedge_shard_reader *r, int batch, uint8_t *x, uint8_t *y,
                              int *got);
/* Load the whole shard into memory (server-side evaluation, tests); checks
 * the SHA-256 too. The caller frees ds with fedge_dataset_free. */
int fedge_shard_load(const char *path, fedge_dataset *ds);

#endif
