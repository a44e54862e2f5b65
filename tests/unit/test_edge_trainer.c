/* The edge's local training on a real Fashion-MNIST shard: the memory plan's
 * exact byte counts, training that lowers the loss round after round, a
 * delta that is exactly w_local - w_global and reproducible for a seed, no
 * allocation while training (nothing grows with the shard), the sealed size
 * the plan predicts, and refusals (wrong shape, corrupt model body, stop
 * flag) that leave no half-set state behind. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "dataset.h"
#include "envelope.h"
#include "modelfile.h"
#include "trainer.h"
#include "update.h"

typedef struct {
    char dir[64];
    char shard_path[128];
    fedge_shard_reader shard;
    size_t rows;
} fixture;

static int quick(void) { return getenv("FEDGE_TEST_QUICK") != NULL; }

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/fedge-edge-trainer-XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->shard_path, sizeof fx->shard_path, "%s/shard.bin", fx->dir);
    fedge_dataset ds;
    assert_int_equal(fedge_dataset_load_fashion_mnist(&ds, NULL, 0), FEDGE_OK);
    fx->rows = quick() ? 600 : 3000;
    size_t *idx = malloc(fx->rows * sizeof *idx);
    assert_non_null(idx);
    for (size_t i = 0; i < fx->rows; i++)
        idx[i] = i;
    assert_int_equal(fedge_shard_write(fx->shard_path, &ds, idx, fx->rows, FEDGE_SHARD_U8),
                     FEDGE_OK);
    free(idx);
    fedge_dataset_free(&ds);
    assert_int_equal(fedge_shard_open(&fx->shard, fx->shard_path), FEDGE_OK);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    char cmd[128];
    fedge_shard_close(&fx->shard);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx);
    return 0;
}

static void spec_of(const char *text, fedge_model_spec *spec)
{
    assert_int_equal(fedge_model_spec_parse(text, spec), FEDGE_OK);
}

/* A serialized random model, as GET /model would deliver it. */
static void model_body(const char *spec_text, uint64_t seed, uint8_t **body, size_t *len,
                       uint8_t version[FEDGE_HASH_LEN])
{
    fedge_model_spec spec;
    fedge_model m;
    fedge_rng rng;
    spec_of(spec_text, &spec);
    assert_int_equal(fedge_model_init(&m, &spec), FEDGE_OK);
    fedge_rng_seed(&rng, seed);
    assert_int_equal(fedge_model_randomize(&m, &rng), FEDGE_OK);
    assert_int_equal(fedge_model_serialize(&m, body, len, version), FEDGE_OK);
    fedge_model_free(&m);
}

static void test_memory_plan(void **state)
{
    (void)state;
    fedge_model_spec spec;
    fedge_edge_memory m;
    spec_of("softmax:784-10", &spec);
    assert_int_equal(fedge_edge_memory_plan(&spec, 32, 785, FEDGE_ENC_FP32, &m), FEDGE_OK);
    const size_t n = 7850;
    assert_int_equal(m.local, 4 * n);
    assert_int_equal(m.global, 4 * n);
    assert_int_equal(m.grad, 4 * n);
    assert_int_equal(m.velocity, 4 * n);
    assert_int_equal(m.scratch, 4 * fedge_model_scratch_floats(&spec, 32));
    assert_int_equal(m.batch, 32 * 784 * 4 + 32);
    assert_int_equal(m.record, 785);
    assert_int_equal(m.model_body, 12 + strlen("softmax:784-10") + 8 + 4 * n + 32);
    assert_int_equal(m.sealed, FEDGE_ENV_OVERHEAD + FEDGE_UPDATE_AAD_LEN + 4 * n);
    size_t resident = 4 * 4 * n + m.scratch + m.batch + m.record;
    assert_int_equal(m.peak, resident + (m.model_body > m.sealed ? m.model_body : m.sealed));

    /* Smaller encodings shrink only the sealed update. */
    fedge_edge_memory h, q;
    assert_int_equal(fedge_edge_memory_plan(&spec, 32, 785, FEDGE_ENC_FP16, &h), FEDGE_OK);
    assert_int_equal(h.sealed, FEDGE_ENV_OVERHEAD + FEDGE_UPDATE_AAD_LEN + 2 * n);
    assert_int_equal(fedge_edge_memory_plan(&spec, 32, 785, FEDGE_ENC_INT8, &q), FEDGE_OK);
    size_t blocks = (n + FEDGE_DELTA_DEFAULT_BLOCK - 1) / FEDGE_DELTA_DEFAULT_BLOCK;
    assert_int_equal(q.sealed, FEDGE_ENV_OVERHEAD + FEDGE_UPDATE_AAD_LEN + n + 4 * blocks);
    assert_int_equal(q.local, m.local);

    /* The batch scales the minibatch buffers, not the model ones. */
    fedge_edge_memory big;
    assert_int_equal(fedge_edge_memory_plan(&spec, 256, 785, FEDGE_ENC_FP32, &big), FEDGE_OK);
    assert_int_equal(big.batch, 256 * 784 * 4 + 256);
    assert_int_equal(big.grad, m.grad);

    char line[512];
    fedge_edge_memory_format(&m, line, sizeof line);
    assert_non_null(strstr(line, "peak="));
    assert_int_equal(fedge_edge_memory_plan(&spec, 0, 785, FEDGE_ENC_FP32, &m),
                     FEDGE_ERR_INVALID_ARG);
}

/* A CNN with dropout: the plan holds its scratch, a round allocates nothing, the
 * round seed fixes the dropout masks (same seed, same delta) and changes them. */
static void test_cnn_round(void **state)
{
    fixture *fx = *state;
    const char *text = "cnn:1x28x28-c4k5-p2-f16-d20-10";
    fedge_model_spec spec;
    spec_of(text, &spec);
    fedge_edge_memory plan;
    assert_int_equal(fedge_edge_memory_plan(&spec, 16, 785, FEDGE_ENC_FP32, &plan), FEDGE_OK);
    size_t scratch = fedge_model_scratch_floats(&spec, 16);
    assert_true(scratch > 16 * (4 * 24 * 24 + 25 * 24 * 24)); /* conv output + im2col */
    assert_int_equal(plan.scratch, 4 * scratch);
    assert_int_equal(plan.batch, 16 * 784 * 4 + 16);
    assert_int_equal(plan.local, 4 * spec.n_params);

    fedge_edge_trainer t;
    fedge_edge_trainer_init(&t);
    assert_int_equal(fedge_edge_trainer_prepare(&t, &spec, 16, NULL), FEDGE_OK);
    uint8_t *body = NULL;
    size_t len;
    uint8_t version[FEDGE_HASH_LEN];
    model_body(text, 5, &body, &len, version);
    assert_int_equal(fedge_edge_trainer_set_global(&t, body, len), FEDGE_OK);
    free(body);
    size_t n = t.local.n_params;
    float *first = malloc(n * sizeof(float));
    assert_non_null(first);
    fedge_edge_train_params p = {1, 0.05f, 0.9f, 0.0f, 77};
    double loss, again;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
    size_t before = mallinfo2().uordblks;
#endif
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL, &loss), FEDGE_OK);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
    assert_int_equal(mallinfo2().uordblks, before);
#endif
    assert_true(isfinite(loss) && loss < logf(10.0f));
    memcpy(first, t.grad, n * sizeof(float));
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL, &again), FEDGE_OK);
    assert_memory_equal(first, t.grad, n * sizeof(float));
    p.seed = 78;
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL, &again), FEDGE_OK);
    assert_true(memcmp(first, t.grad, n * sizeof(float)) != 0);
    free(first);
    fedge_edge_trainer_free(&t);
}

static void test_training_rounds(void **state)
{
    fixture *fx = *state;
    fedge_model_spec spec;
    fedge_edge_trainer t;
    uint8_t *body = NULL;
    size_t len;
    uint8_t version[FEDGE_HASH_LEN];
    double loss1, loss2, loss3;
    spec_of("mlp:784-32-10", &spec);
    fedge_edge_trainer_init(&t);
    int resized = 0;
    assert_int_equal(fedge_edge_trainer_prepare(&t, &spec, 32, &resized), FEDGE_OK);
    assert_true(resized);
    model_body("mlp:784-32-10", 11, &body, &len, version);
    assert_int_equal(fedge_edge_trainer_set_global(&t, body, len), FEDGE_OK);
    assert_true(t.have_global);
    assert_memory_equal(t.global_version, version, FEDGE_HASH_LEN);
    free(body);

    size_t n = t.local.n_params;
    float *first = malloc(n * sizeof(float));
    assert_non_null(first);
    fedge_edge_train_params p = {1, 0.05f, 0.9f, 0.0f, 1000};

#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
    size_t before = mallinfo2().uordblks;
#endif
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL, &loss1), FEDGE_OK);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
    /* Training allocates nothing: memory does not follow the shard size. */
    assert_int_equal(mallinfo2().uordblks, before);
#endif
    assert_true(isfinite(loss1));
    assert_true(loss1 < logf(10.0f)); /* better than chance over the epoch */
    double dnorm = 0;
    for (size_t i = 0; i < n; i++) {
        assert_float_equal(t.grad[i], t.local.params[i] - t.global.params[i], 0.0);
        dnorm += (double)t.grad[i] * t.grad[i];
    }
    assert_true(dnorm > 0);
    memcpy(first, t.grad, n * sizeof(float));

    /* Same seed, fresh optimizer: the very same delta. */
    double again;
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL, &again), FEDGE_OK);
    assert_memory_equal(first, t.grad, n * sizeof(float));
    assert_float_equal(again, loss1, 0.0);
    /* Another seed (another round): another order, another delta. */
    p.seed = 1001;
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL, &again), FEDGE_OK);
    assert_true(memcmp(first, t.grad, n * sizeof(float)) != 0);

    /* Apply the delta as a one-client FedAvg would and train the next round:
     * the loss keeps going down. */
    for (int r = 0; r < 2; r++) {
        fedge_model next;
        assert_int_equal(fedge_model_init(&next, &spec), FEDGE_OK);
        for (size_t i = 0; i < n; i++)
            next.params[i] = t.global.params[i] + t.grad[i];
        assert_int_equal(fedge_model_serialize(&next, &body, &len, version), FEDGE_OK);
        fedge_model_free(&next);
        assert_int_equal(fedge_edge_trainer_set_global(&t, body, len), FEDGE_OK);
        free(body);
        p.seed = 2000 + (uint64_t)r;
        assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL,
                                                  r == 0 ? &loss2 : &loss3), FEDGE_OK);
    }
    assert_true(loss2 < loss1);
    assert_true(loss3 < loss2);

    /* Two epochs at once also work and go lower than one. */
    double two;
    p.epochs = 2;
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL, &two), FEDGE_OK);
    assert_true(two < loss3); /* the last epoch starts from a better model */

    free(first);
    fedge_edge_trainer_free(&t);
    fedge_edge_trainer_free(&t); /* twice is fine */
}

/* What the client sends is what the plan predicts, and opens back to the
 * exact delta. */
static void test_seal_matches_plan(void **state)
{
    fixture *fx = *state;
    fedge_model_spec spec;
    fedge_edge_trainer t;
    uint8_t *body, version[FEDGE_HASH_LEN], secret[32];
    size_t len;
    spec_of("softmax:784-10", &spec);
    fedge_edge_trainer_init(&t);
    assert_int_equal(fedge_edge_trainer_prepare(&t, &spec, 50, NULL), FEDGE_OK);
    model_body("softmax:784-10", 3, &body, &len, version);
    assert_int_equal(fedge_edge_trainer_set_global(&t, body, len), FEDGE_OK);
    free(body);
    fedge_edge_train_params p = {1, 0.1f, 0.0f, 0.0f, 9};
    double loss;
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL, &loss), FEDGE_OK);

    for (int i = 0; i < 32; i++)
        secret[i] = (uint8_t)(i * 7 + 1);
    fedge_device_key key;
    assert_int_equal(fedge_envelope_derive_key(secret, sizeof secret, "dev-1", &key), FEDGE_OK);
    static const fedge_encoding encs[] = {FEDGE_ENC_FP32, FEDGE_ENC_FP16, FEDGE_ENC_BF16,
                                          FEDGE_ENC_INT8};
    float *out = malloc(t.local.n_params * sizeof(float));
    assert_non_null(out);
    for (size_t e = 0; e < FEDGE_ARRAY_LEN(encs); e++) {
        fedge_delta_header h;
        memset(&h, 0, sizeof h);
        h.encoding = (uint8_t)encs[e];
        h.model_id = fedge_model_spec_id(&spec);
        h.round = 4;
        h.n_samples = (uint32_t)fx->rows;
        h.n_elems = (uint32_t)t.local.n_params;
        h.block_size = encs[e] == FEDGE_ENC_INT8 ? FEDGE_DELTA_DEFAULT_BLOCK : 0;
        memcpy(h.base_version, t.global_version, FEDGE_HASH_LEN);
        uint8_t *sealed;
        size_t sealed_len;
        static const uint8_t run[FEDGE_RUN_ID_LEN] = "edge trainer run";
        assert_int_equal(fedge_update_seal(&key, 100 + e, run, &h, t.grad, NULL, &sealed, &sealed_len),
                         FEDGE_OK);
        assert_int_equal(sealed_len, fedge_edge_sealed_size(&spec, encs[e]));
        fedge_update_expect exp = {.model_id = h.model_id, .n_elems = h.n_elems, .round = 4, .run_id = run};
        uint8_t *scratch = malloc(sealed_len);
        fedge_delta_header got;
        uint64_t counter;
        assert_non_null(scratch);
        assert_int_equal(fedge_update_open(&key, sealed, sealed_len, &exp, scratch, &got,
                                           &counter, out), FEDGE_OK);
        assert_true(counter == 100 + e);
        assert_int_equal(got.n_samples, fx->rows);
        assert_memory_equal(got.base_version, t.global_version, FEDGE_HASH_LEN);
        if (encs[e] == FEDGE_ENC_FP32)
            assert_memory_equal(out, t.grad, t.local.n_params * sizeof(float));
        free(scratch);
        free(sealed);
    }
    free(out);
    fedge_device_key_wipe(&key);
    fedge_edge_trainer_free(&t);
}

static void test_refusals(void **state)
{
    fixture *fx = *state;
    fedge_model_spec spec, other;
    fedge_edge_trainer t;
    uint8_t *body, version[FEDGE_HASH_LEN];
    size_t len;
    double loss = -1;
    spec_of("softmax:784-10", &spec);
    fedge_edge_trainer_init(&t);
    assert_int_equal(fedge_edge_trainer_prepare(&t, &spec, 16, NULL), FEDGE_OK);
    fedge_edge_train_params p = {1, 0.1f, 0.0f, 0.0f, 1};

    /* No global model yet. */
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL, &loss), FEDGE_ERR_STATE);

    /* A body for another shape is refused and nothing is cached. */
    model_body("mlp:784-16-10", 1, &body, &len, version);
    assert_int_equal(fedge_edge_trainer_set_global(&t, body, len), FEDGE_ERR_MODEL_SHAPE);
    assert_false(t.have_global);
    free(body);

    /* A corrupted body (one flipped parameter byte): checksum error. */
    model_body("softmax:784-10", 1, &body, &len, version);
    body[len / 2] ^= 0x40;
    assert_int_equal(fedge_edge_trainer_set_global(&t, body, len), FEDGE_ERR_MODEL_FILE_CHECKSUM);
    assert_false(t.have_global);
    /* A truncated one. */
    body[len / 2] ^= 0x40;
    assert_int_not_equal(fedge_edge_trainer_set_global(&t, body, len - 1), FEDGE_OK);
    assert_false(t.have_global);
    assert_int_equal(fedge_edge_trainer_set_global(&t, body, len), FEDGE_OK);
    assert_true(t.have_global);
    free(body);

    /* The stop flag ends training between minibatches. */
    volatile sig_atomic_t stop = 1;
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, &stop, &loss),
                     FEDGE_ERR_EDGE_STOPPED);
    assert_float_equal(loss, -1, 0.0);

    /* Same spec, another batch: buffers resized, the cached model kept. */
    int resized = 0;
    assert_int_equal(fedge_edge_trainer_prepare(&t, &spec, 64, &resized), FEDGE_OK);
    assert_true(resized);
    assert_true(t.have_global);
    assert_int_equal(fedge_edge_trainer_prepare(&t, &spec, 64, &resized), FEDGE_OK);
    assert_false(resized);

    /* A model whose input is not the shard's: refused before any step. */
    spec_of("softmax:16-10", &other);
    assert_int_equal(fedge_edge_trainer_prepare(&t, &other, 64, &resized), FEDGE_OK);
    assert_false(t.have_global); /* a new shape drops the cached model */
    model_body("softmax:16-10", 2, &body, &len, version);
    assert_int_equal(fedge_edge_trainer_set_global(&t, body, len), FEDGE_OK);
    free(body);
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL, &loss),
                     FEDGE_ERR_MODEL_SHAPE);
    /* Fewer classes than the shard's labels: refused as well. */
    spec_of("softmax:784-5", &other);
    assert_int_equal(fedge_edge_trainer_prepare(&t, &other, 64, NULL), FEDGE_OK);
    model_body("softmax:784-5", 2, &body, &len, version);
    assert_int_equal(fedge_edge_trainer_set_global(&t, body, len), FEDGE_OK);
    free(body);
    assert_int_equal(fedge_edge_trainer_train(&t, &fx->shard, &p, NULL, &loss),
                     FEDGE_ERR_MODEL_SHAPE);
    fedge_edge_trainer_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory_plan),
        cmocka_unit_test_setup_teardown(test_cnn_round, setup, teardown),
        cmocka_unit_test_setup_teardown(test_training_rounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_matches_plan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
