/* cluster_checkpoint.h — training checkpoints on disk, written atomically.
 *
 *   ROOT/step-0000000040/model.bin               fp32 parameters (modelfile.h)
 *   ROOT/step-0000000040/optim-rank-R-of-S.bin   momentum slice R of S
 *   ROOT/step-0000000040/state.json              step, data position, RNG seed,
 *                                                 loss scale, job id, ...
 *   ROOT/step-0000000040/DONE                     written last
 *
 * Everything is written into ROOT/step-...tmp, fsync'd, DONE added, and the
 * folder renamed into place: a checkpoint exists completely or not at all,
 * and fedge_ckpt_latest ignores folders without DONE. Each optimizer file
 * carries its global offset, so a restart with another number of ranks (or
 * with/without ZeRO-1) reads whatever slice it now owns from whichever files
 * overlap it (elastic restart).
 *
 * Optimizer file (little-endian): "FOPT" | u32 version (1) | u64 step |
 * u64 n_params | u64 offset | u64 count | count f32 | SHA-256 of all before.
 *
 * No MPI here: the trainer decides which rank calls what. */
#ifndef FEDGE_CLUSTER_CHECKPOINT_H
#define FEDGE_CLUSTER_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "hash.h"
#include "model.h"

#define FEDGE_CKPT_PATH_MAX 4096

typedef struct {
    uint64_t step;           /* steps completed; data position = step * global_batch */
    int world;               /* ranks that wrote it */
    int optim_shards;        /* number of optim-rank-*-of-S files */
    int zero;
    int global_batch;
    uint64_t seed;           /* sample order key: the order is a pure function of it */
    uint64_t total_steps;
    double loss_scale;
    uint64_t good_steps;     /* since the last loss-scale change */
    uint64_t skipped_steps;
    double last_loss;
    char spec[FEDGE_MODEL_SPEC_MAX];
    char job[FEDGE_HASH_HEX_LEN];   /* identity of the input model, data and hyperparameters */
    char params_sha[FEDGE_HASH_HEX_LEN]; /* model version of model.bin */
} fedge_ckpt_state;

/* ROOT/step-%010llu (tmp != 0: with ".tmp"). */
int fedge_ckpt_dir(const char *root, uint64_t step, int tmp, char *out, size_t cap);
/* Creates ROOT if needed and an empty temporary folder for `step` (a stale
 * one from a crashed run is removed first); its path goes into tmpdir. */
int fedge_ckpt_begin(const char *root, uint64_t step, char *tmpdir, size_t cap);
int fedge_ckpt_write_optim(const char *dir, int shard, int n_shards, uint64_t step,
                           size_t n_params, size_t off, size_t count, const float *v);
int fedge_ckpt_write_state(const char *dir, const fedge_ckpt_state *st);
/* DONE, fsync, rename the temporary folder into place, fsync ROOT. */
int fedge_ckpt_commit(const char *root, uint64_t step);
/* Newest complete checkpoint: FEDGE_ERR_NOT_FOUND if there is none. */
int fedge_ckpt_latest(const char *root, uint64_t *step, char *dir, size_t cap);
int fedge_ckpt_read_state(const char *dir, fedge_ckpt_state *st);
/* Momentum for the global range [off, off + count) from the files that
 * overlap it; positions at or past n_params (padding) read as zero. */
int fedge_ckpt_read_optim(const char *dir, int n_shards, size_t n_params, size_t off,
                          size_t count, float *out);
/* Removes all but the newest `keep` complete checkpoints (keep >= 1). */
int fedge_ckpt_prune(const char *root, int keep);

#endif
