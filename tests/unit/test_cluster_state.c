/* The MPI-free parts of the cluster trainer: how the parameter vector is cut
 * into rank slices and buckets, the global sample order, the loader's slices,
 * and checkpoint files (round trip with re-sharding, and every kind of
 * damaged checkpoint refused with its status, nothing changed on disk).
 *
 * Unit tests link without MPI or libfedge_cluster, so the MPI-free modules
 * are compiled into this test directly. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../cluster/cluster_checkpoint.c"
#include "../../cluster/cluster_layout.c"
#include "../../cluster/cluster_loader.c"
#include "../../cluster/cluster_synth.c"
#include "log.h"

static void test_layout_slices_and_buckets(void **state)
{
    (void)state;
    const size_t ns[] = {1, 63, 64, 1000, 50890};
    for (size_t a = 0; a < FEDGE_ARRAY_LEN(ns); a++)
        for (int world = 1; world <= 8; world++) {
            fedge_layout lo;
            assert_int_equal(fedge_layout_init(&lo, ns[a], world, world - 1), FEDGE_OK);
            assert_true(lo.n_pad >= lo.n);
            assert_int_equal(lo.n_pad, lo.shard * (size_t)world);
            assert_int_equal(lo.shard % FEDGE_LAYOUT_ALIGN, 0);
            assert_true(lo.n_pad - lo.n < (size_t)world * FEDGE_LAYOUT_ALIGN + FEDGE_LAYOUT_ALIGN);
            const size_t bfs[] = {64, 640, 1000 * 64, lo.n_pad};
            for (size_t b = 0; b < FEDGE_ARRAY_LEN(bfs); b++) {
                size_t nb = fedge_layout_bucket_count(&lo, bfs[b]), covered = 0, prev = lo.n_pad;
                for (size_t k = 0; k < nb; k++) {
                    size_t off, cnt, parts = 0;
                    fedge_layout_bucket(&lo, bfs[b], k, &off, &cnt);
                    assert_int_equal(off + cnt, prev); /* tiles from the end, no gap */
                    assert_true(cnt > 0 && cnt <= bfs[b]);
                    for (int r = 0; r < world; r++) {
                        size_t po, pc;
                        fedge_layout_intersect(&lo, r, off, cnt, &po, &pc);
                        if (pc > 0)
                            assert_true(po >= off && po + pc <= off + cnt);
                        parts += pc;
                    }
                    assert_int_equal(parts, cnt); /* the owners' parts tile the bucket */
                    covered += cnt;
                    prev = off;
                }
                assert_int_equal(covered, lo.n_pad);
            }
        }
    fedge_layout lo;
    assert_int_equal(fedge_layout_init(&lo, 0, 1, 0), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_layout_init(&lo, 10, 2, 2), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_layout_bucket_floats(0.0, 1000), 1000);
    assert_int_equal(fedge_layout_bucket_floats(25.0, 1000), 1000);
    assert_int_equal(fedge_layout_bucket_floats(1.0, 1u << 30), 262144);
}

static void test_memory_plan(void **state)
{
    (void)state;
    fedge_model_spec spec;
    assert_int_equal(fedge_model_spec_parse("mlp:784-64-10", &spec), FEDGE_OK);
    size_t n = fedge_model_spec_param_count(&spec);
    fedge_layout l1, l4;
    memset(&l1, 0, sizeof(l1));
    memset(&l4, 0, sizeof(l4));
    assert_int_equal(fedge_layout_init(&l1, n, 1, 0), FEDGE_OK);
    assert_int_equal(fedge_layout_init(&l4, n, 4, 3), FEDGE_OK);
    fedge_memory_plan u, z;
    fedge_memory_plan_make(&spec, &l4, 16, FEDGE_PREC_FP32, 0, 0, &u);
    fedge_memory_plan_make(&spec, &l4, 16, FEDGE_PREC_FP32, 1, 0, &z);
    assert_int_equal(u.optimizer, l4.n_pad * 4);
    assert_int_equal(z.optimizer, l4.shard * 4);
    assert_int_equal(u.total - z.total, u.optimizer - z.optimizer);
    fedge_memory_plan_make(&spec, &l1, 64, FEDGE_PREC_BF16, 0, 1, &u);
    assert_int_equal(u.compute_copy, l1.n_pad * 2);
    int p;
    assert_int_equal(fedge_precision_parse("bf16", &p), FEDGE_OK);
    assert_int_equal(p, FEDGE_PREC_BF16);
    assert_int_equal(fedge_precision_parse("fp8", &p), FEDGE_ERR_INVALID_ARG);
}

static void test_sample_order_is_a_permutation(void **state)
{
    (void)state;
    const uint64_t ns[] = {1, 2, 3, 5, 64, 1000, 4097};
    for (size_t a = 0; a < FEDGE_ARRAY_LEN(ns); a++) {
        uint64_t n = ns[a];
        uint8_t *seen = calloc(n, 1);
        assert_non_null(seen);
        for (uint64_t epoch = 0; epoch < 3; epoch++) {
            memset(seen, 0, n);
            for (uint64_t i = 0; i < n; i++) {
                uint64_t r = fedge_sample_row(n, 42, epoch * n + i);
                assert_true(r < n);
                assert_int_equal(seen[r], 0);
                seen[r] = 1;
            }
        }
        free(seen);
    }
    /* epochs and seeds give different orders */
    int same_epoch = 1, same_seed = 1;
    for (uint64_t i = 0; i < 100; i++) {
        same_epoch &= fedge_sample_row(1000, 1, i) == fedge_sample_row(1000, 1, 1000 + i);
        same_seed &= fedge_sample_row(1000, 1, i) == fedge_sample_row(1000, 2, i);
    }
    assert_false(same_epoch);
    assert_false(same_seed);
    /* rank slices tile the global batch */
    for (int world = 1; world <= 7; world++) {
        int next = 0;
        for (int r = 0; r < world; r++) {
            int lo, hi;
            fedge_batch_slice(61, world, r, &lo, &hi);
            assert_int_equal(lo, next);
            assert_true(hi - lo >= 61 / world && hi - lo <= 61 / world + 1);
            next = hi;
        }
        assert_int_equal(next, 61);
    }
}

typedef struct {
    char dir[64];
} tmp_fixture;

static int setup_tmp(void **state)
{
    tmp_fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/fedge-test-cluster-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    *state = f;
    return 0;
}

static int teardown_tmp(void **state)
{
    tmp_fixture *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

/* Ranks of two processes see the union of their slices and the loader
 * yields, for each rank, exactly its slice of the global order. */
static void test_loader_slices(void **state)
{
    tmp_fixture *f = *state;
    fedge_dataset ds;
    char path[128];
    size_t idx[300];
    snprintf(path, sizeof(path), "%s/d.shard", f->dir);
    assert_int_equal(fedge_synthetic_dataset(&ds, 300, 5, 3, 9), FEDGE_OK);
    for (size_t i = 0; i < 300; i++) {
        idx[i] = i;
        ds.x[i * 5] = (float)i / 300.0f; /* row id in feature 0 (u8: i*255/300 unique) */
    }
    assert_int_equal(fedge_shard_write(path, &ds, idx, 300, FEDGE_SHARD_F32), FEDGE_OK);
    fedge_loader whole, part[3];
    assert_int_equal(fedge_loader_open(&whole, path, 5, 48, 1, 0, 0), FEDGE_OK);
    for (int r = 0; r < 3; r++)
        assert_int_equal(fedge_loader_open(&part[r], path, 5, 48, 3, r, r != 1), FEDGE_OK);
    for (uint64_t step = 0; step < 20; step++) { /* 20 * 48 > 3 epochs */
        const float *x, *px;
        const uint8_t *y, *py;
        int rows, prows, at = 0;
        assert_int_equal(fedge_loader_get(&whole, step, &x, &y, &rows), FEDGE_OK);
        assert_int_equal(rows, 48);
        for (int r = 0; r < 3; r++) {
            assert_int_equal(fedge_loader_get(&part[r], step, &px, &py, &prows), FEDGE_OK);
            assert_int_equal(prows, 16);
            assert_memory_equal(px, x + (size_t)at * 5, (size_t)prows * 5 * sizeof(float));
            assert_memory_equal(py, y + at, (size_t)prows);
            at += prows;
        }
    }
    fedge_loader_close(&whole);
    for (int r = 0; r < 3; r++)
        fedge_loader_close(&part[r]);
    fedge_loader bad;
    assert_int_equal(fedge_loader_open(&bad, path, 5, 2, 3, 0, 0), FEDGE_ERR_INVALID_ARG);
    fedge_dataset_free(&ds);
}

static void make_state(fedge_ckpt_state *st, uint64_t step, int shards)
{
    memset(st, 0, sizeof(*st));
    st->step = step;
    st->world = shards;
    st->optim_shards = shards;
    st->zero = shards > 1;
    st->global_batch = 32;
    st->seed = 77;
    st->total_steps = 100;
    st->loss_scale = 1024.0;
    st->good_steps = 3;
    st->skipped_steps = 1;
    st->last_loss = 0.25;
    snprintf(st->spec, sizeof(st->spec), "mlp:4-3-2");
    memset(st->job, 'a', 64);
    memset(st->params_sha, 'b', 64);
}

/* Writes a checkpoint of n momentum values v[i] = i in `shards` slices. */
static void write_ckpt(const char *root, uint64_t step, int shards, size_t n, const float *v)
{
    char tmp[FEDGE_CKPT_PATH_MAX];
    fedge_ckpt_state st;
    assert_int_equal(fedge_ckpt_begin(root, step, tmp, sizeof(tmp)), FEDGE_OK);
    size_t per = (n + (size_t)shards - 1) / (size_t)shards;
    for (int s = 0; s < shards; s++) {
        size_t off = per * (size_t)s < n ? per * (size_t)s : n;
        size_t end = off + per < n ? off + per : n;
        assert_int_equal(fedge_ckpt_write_optim(tmp, s, shards, step, n, off, end - off, v + off),
                         FEDGE_OK);
    }
    make_state(&st, step, shards);
    assert_int_equal(fedge_ckpt_write_state(tmp, &st), FEDGE_OK);
}

static void test_checkpoint_round_trip_and_reshard(void **state)
{
    tmp_fixture *f = *state;
    char root[128], dir[FEDGE_CKPT_PATH_MAX];
    float v[1000], out[400];
    uint64_t step;
    snprintf(root, sizeof(root), "%s/ck", f->dir);
    for (int i = 0; i < 1000; i++)
        v[i] = (float)i * 0.5f;
    assert_int_equal(fedge_ckpt_latest(root, &step, dir, sizeof(dir)), FEDGE_ERR_NOT_FOUND);
    write_ckpt(root, 10, 2, 1000, v);
    /* not committed yet: invisible */
    assert_int_equal(fedge_ckpt_latest(root, &step, dir, sizeof(dir)), FEDGE_ERR_NOT_FOUND);
    assert_int_equal(fedge_ckpt_commit(root, 10), FEDGE_OK);
    assert_int_equal(fedge_ckpt_latest(root, &step, dir, sizeof(dir)), FEDGE_OK);
    assert_int_equal(step, 10);
    fedge_ckpt_state st, want;
    assert_int_equal(fedge_ckpt_read_state(dir, &st), FEDGE_OK);
    make_state(&want, 10, 2);
    assert_int_equal(st.step, 10);
    assert_int_equal(st.optim_shards, 2);
    assert_int_equal(st.global_batch, 32);
    assert_int_equal(st.seed, 77);
    assert_true(st.loss_scale == 1024.0 && st.last_loss == 0.25);
    assert_string_equal(st.spec, want.spec);
    assert_string_equal(st.job, want.job);
    /* re-shard: 3 ranks of 384 (padded past n) read their ranges */
    for (int r = 0; r < 3; r++) {
        assert_int_equal(fedge_ckpt_read_optim(dir, 2, 1000, (size_t)r * 384, 384, out), FEDGE_OK);
        for (int i = 0; i < 384; i++) {
            size_t g = (size_t)r * 384 + (size_t)i;
            assert_true(out[i] == (g < 1000 ? (float)g * 0.5f : 0.0f));
        }
    }
    /* newer ones win; pruning keeps the newest */
    write_ckpt(root, 20, 1, 1000, v);
    assert_int_equal(fedge_ckpt_commit(root, 20), FEDGE_OK);
    write_ckpt(root, 30, 3, 1000, v); /* torn: never committed */
    assert_int_equal(fedge_ckpt_latest(root, &step, dir, sizeof(dir)), FEDGE_OK);
    assert_int_equal(step, 20);
    assert_int_equal(fedge_ckpt_prune(root, 1), FEDGE_OK);
    struct stat sb;
    char p[FEDGE_CKPT_PATH_MAX];
    fedge_ckpt_dir(root, 10, 0, p, sizeof(p));
    assert_int_not_equal(stat(p, &sb), 0);
    fedge_ckpt_dir(root, 20, 0, p, sizeof(p));
    assert_int_equal(stat(p, &sb), 0);
}

/* Overwrites `len` bytes at `off` of a file. */
static void poke(const char *path, long off, const void *bytes, size_t len)
{
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, off, SEEK_SET), 0);
    assert_int_equal(fwrite(bytes, 1, len, fp), len);
    fclose(fp);
}

static void test_damaged_checkpoints_refused(void **state)
{
    tmp_fixture *f = *state;
    char root[128], dir[FEDGE_CKPT_PATH_MAX], path[FEDGE_CKPT_PATH_MAX + 64];
    float v[100], out[100];
    uint64_t step;
    for (int i = 0; i < 100; i++)
        v[i] = (float)i;
    snprintf(root, sizeof(root), "%s/ck2", f->dir);
    write_ckpt(root, 5, 2, 100, v);
    assert_int_equal(fedge_ckpt_commit(root, 5), FEDGE_OK);
    assert_int_equal(fedge_ckpt_latest(root, &step, dir, sizeof(dir)), FEDGE_OK);
    snprintf(path, sizeof(path), "%s/optim-rank-1-of-2.bin", dir);
    /* wrong n_params for the model */
    assert_int_equal(fedge_ckpt_read_optim(dir, 2, 99, 0, 99, out), FEDGE_ERR_CLUSTER_CHECKPOINT);
    /* a flipped data byte: checksum */
    uint8_t x = 0x7f;
    poke(path, 60, &x, 1);
    assert_int_equal(fedge_ckpt_read_optim(dir, 2, 100, 0, 100, out), FEDGE_ERR_CLUSTER_CHECKPOINT);
    /* the slice it does not need is not read: rank 0's range still loads */
    assert_int_equal(fedge_ckpt_read_optim(dir, 2, 100, 0, 50, out), FEDGE_OK);
    assert_true(out[49] == 49.0f);
    /* bad magic */
    poke(path, 0, "XOPT", 4);
    assert_int_equal(fedge_ckpt_read_optim(dir, 2, 100, 50, 50, out), FEDGE_ERR_CLUSTER_CHECKPOINT);
    /* truncated */
    assert_int_equal(truncate(path, 20), 0);
    assert_int_equal(fedge_ckpt_read_optim(dir, 2, 100, 50, 50, out), FEDGE_ERR_CLUSTER_CHECKPOINT);
    /* missing slice */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(fedge_ckpt_read_optim(dir, 2, 100, 50, 50, out), FEDGE_ERR_NOT_FOUND);
    /* state.json: a missing key, a bad number, a wrong format version */
    snprintf(path, sizeof(path), "%s/state.json", dir);
    FILE *fp = fopen(path, "w");
    fputs("{\"format\": 1, \"step\": 5}\n", fp);
    fclose(fp);
    fedge_ckpt_state st;
    assert_int_equal(fedge_ckpt_read_state(dir, &st), FEDGE_ERR_CLUSTER_CHECKPOINT);
    fp = fopen(path, "w");
    fputs("{\"format\": 2, \"step\": 5}\n", fp);
    fclose(fp);
    assert_int_equal(fedge_ckpt_read_state(dir, &st), FEDGE_ERR_CLUSTER_CHECKPOINT);
    unlink(path);
    assert_int_equal(fedge_ckpt_read_state(dir, &st), FEDGE_ERR_NOT_FOUND);
    /* bad writer arguments change nothing */
    assert_int_equal(fedge_ckpt_write_optim(dir, 2, 2, 5, 100, 0, 10, v), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_ckpt_write_optim(dir, 0, 2, 5, 100, 95, 10, v), FEDGE_ERR_INVALID_ARG);
    snprintf(path, sizeof(path), "%s/optim-rank-2-of-2.bin", dir);
    struct stat sb;
    assert_int_not_equal(stat(path, &sb), 0);
}

int main(void)
{
    fedge_log_set_level(FEDGE_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_slices_and_buckets),
        cmocka_unit_test(test_memory_plan),
        cmocka_unit_test(test_sample_order_is_a_permutation),
        cmocka_unit_test_setup_teardown(test_loader_slices, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(test_checkpoint_round_trip_and_reshard, setup_tmp,
                                        teardown_tmp),
        cmocka_unit_test_setup_teardown(test_damaged_checkpoints_refused, setup_tmp, teardown_tmp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
