/* test_mcu_core.c — mcu/core.c, the bare-metal round, built for the host (the
 * Cortex-M4F build and its QEMU run: tests/integration/mcu_round.sh): the
 * plan's buffers, refusals of a short or misaligned block and of missing
 * hooks, and a round whose sealed frame fedge_update_open accepts with a
 * delta bit-identical to whole-gradient training (fedge_model_loss_grad +
 * fedge_sgd_step), with momentum 0 (the velocity one slice) and 0.9, and on
 * u8 features (fedge_core_step_u8) against training on their floats. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "error.h"
#include "hash.h"

static const uint8_t RUN_ID[FEDGE_RUN_ID_LEN] = "run-id-for-test";
static const uint8_t SECRET[32] = "0123456789abcdef0123456789abcdef";

static uint64_t fake_now(void *ctx)
{
    uint64_t *t = ctx;
    return *t += 5;
}

static int fake_random(void *ctx, uint8_t *out, size_t len)
{
    (void)ctx;
    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)(i * 37 + 11);
    return 0;
}

static int failing_random(void *ctx, uint8_t *out, size_t len)
{
    (void)ctx;
    (void)out;
    (void)len;
    return -1;
}

static void plan_and_refusals(void **state)
{
    (void)state;
    fedge_model_spec spec;
    assert_int_equal(fedge_model_spec_parse("softmax:784-10", &spec), FEDGE_OK);
    fedge_sgd_config sgd0 = {0.05f, 0.0f, 0.0f}, sgd9 = {0.05f, 0.9f, 0.0f};
    fedge_core_plan p0, p9;
    assert_int_equal(fedge_core_plan_bytes(&spec, 8, &sgd0, FEDGE_ENC_FP32, &p0), FEDGE_OK);
    assert_int_equal(fedge_core_plan_bytes(&spec, 8, &sgd9, FEDGE_ENC_FP32, &p9), FEDGE_OK);
    size_t chunk = fedge_model_grad_chunk_floats(&spec) * sizeof(float);
    assert_int_equal(p0.params, 7850 * sizeof(float));
    assert_int_equal(p0.velocity, chunk); /* momentum 0: one slice */
    assert_int_equal(p9.velocity, 7850 * sizeof(float));
    assert_int_equal(p0.chunk, chunk);
    assert_int_equal(p0.scratch, fedge_model_scratch_floats(&spec, 8) * sizeof(float));
    assert_true(p0.stream > 0 && p0.total >= p0.params + p0.velocity + p0.chunk + p0.scratch + p0.stream);
    assert_int_equal(fedge_core_plan_bytes(&spec, 0, &sgd0, FEDGE_ENC_FP32, &p0), FEDGE_ERR_INVALID_ARG);

    uint64_t t = 0;
    fedge_platform pf = {fake_random, fake_now, &t}, no_clock = {fake_random, NULL, &t};
    unsigned char *buf = aligned_alloc(alignof(max_align_t), (p9.total + 64 + 63) / 64 * 64);
    fedge_core c;
    assert_int_equal(fedge_core_init(&c, &spec, 8, &sgd9, FEDGE_ENC_FP32, &pf, buf, p9.total - 1),
                     FEDGE_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(fedge_core_init(&c, &spec, 8, &sgd9, FEDGE_ENC_FP32, &pf, buf + 4, p9.total),
                     FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_core_init(&c, &spec, 8, &sgd9, FEDGE_ENC_FP32, &no_clock, buf, p9.total),
                     FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_core_init(&c, &spec, 8, &sgd9, FEDGE_ENC_FP32, &pf, buf, p9.total), FEDGE_OK);
    float x[9 * 784] = {0};
    uint8_t y[9] = {0};
    float *global = calloc(7850, sizeof(float));
    /* lengths that do not match the spec or the rows: refused before reading */
    assert_int_equal(fedge_core_begin(&c, global, 7849), FEDGE_ERR_MODEL_SHAPE);
    assert_int_equal(fedge_core_begin(&c, global, 7851), FEDGE_ERR_MODEL_SHAPE);
    assert_int_equal(fedge_core_begin(&c, global, 7850), FEDGE_OK);
    assert_int_equal(fedge_core_step(&c, x, 9 * 784, y, 9, 9, NULL), FEDGE_ERR_INVALID_ARG); /* > batch */
    assert_int_equal(fedge_core_step(&c, x, 2 * 784 - 1, y, 9, 2, NULL), FEDGE_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(fedge_core_step(&c, x, 2 * 784, y, 1, 2, NULL), FEDGE_ERR_BUFFER_TOO_SMALL);
    uint8_t xu8[2 * 784] = {0};
    assert_int_equal(fedge_core_step_u8(&c, xu8, 784, 1.0f / 255.0f, y, 2, 2, NULL),
                     FEDGE_ERR_BUFFER_TOO_SMALL);
    y[0] = 10;
    assert_int_equal(fedge_core_step(&c, x, 784, y, 1, 1, NULL), FEDGE_ERR_DATA_LABEL);
    assert_int_equal(c.steps, 0);

    fedge_device_key k;
    assert_int_equal(fedge_envelope_derive_key(SECRET, sizeof SECRET, "mcu-0", &k), FEDGE_OK);
    uint8_t base[FEDGE_HASH_LEN] = {0};
    fedge_core_update u = {&k, 1, RUN_ID, 1, base};
    fedge_update_stream *s = NULL;
    c.platform.random = failing_random;
    assert_int_equal(fedge_core_seal(&c, global, 7849, &u, &s), FEDGE_ERR_MODEL_SHAPE);
    assert_int_equal(fedge_core_seal(&c, global, 7850, &u, &s), FEDGE_ERR_CRYPTO);
    assert_null(s);
    free(global);
    free(buf);
}

static void round_opens_and_matches(float momentum, int as_u8)
{
    fedge_model_spec spec;
    assert_int_equal(fedge_model_spec_parse("mlp:64-16-10", &spec), FEDGE_OK);
    const int B = 8, STEPS = 4;
    size_t n = spec.n_params, dim = (size_t)spec.input_dim;
    fedge_rng r;
    fedge_rng_seed(&r, 7);
    fedge_model global;
    assert_int_equal(fedge_model_init(&global, &spec), FEDGE_OK);
    assert_int_equal(fedge_model_randomize(&global, &r), FEDGE_OK);
    float *x = malloc((size_t)(B * STEPS) * dim * sizeof(float));
    uint8_t *xu8 = malloc((size_t)(B * STEPS) * dim);
    uint8_t *y = malloc((size_t)(B * STEPS));
    for (size_t i = 0; i < (size_t)(B * STEPS) * dim; i++) {
        xu8[i] = (uint8_t)fedge_rng_below(&r, 256);
        x[i] = as_u8 ? (float)xu8[i] * (1.0f / 255.0f) : fedge_rng_uniform(&r);
    }
    for (int i = 0; i < B * STEPS; i++)
        y[i] = (uint8_t)fedge_rng_below(&r, 10);

    fedge_sgd_config sgd = {0.1f, momentum, 5e-4f};
    fedge_core_plan p;
    assert_int_equal(fedge_core_plan_bytes(&spec, B, &sgd, FEDGE_ENC_FP32, &p), FEDGE_OK);
    unsigned char *buf = aligned_alloc(alignof(max_align_t), (p.total + 63) / 64 * 64);
    uint64_t t = 0;
    fedge_platform pf = {fake_random, fake_now, &t};
    fedge_core c;
    assert_int_equal(fedge_core_init(&c, &spec, B, &sgd, FEDGE_ENC_FP32, &pf, buf, p.total), FEDGE_OK);
    assert_int_equal(fedge_core_begin(&c, global.params, global.n_params), FEDGE_OK);
    for (int s = 0; s < STEPS; s++)
        assert_int_equal(as_u8 ? fedge_core_step_u8(&c, xu8 + (size_t)(s * B) * dim, (size_t)B * dim,
                                                    1.0f / 255.0f, y + s * B, B, B, NULL)
                               : fedge_core_step(&c, x + (size_t)(s * B) * dim, (size_t)B * dim,
                                                 y + s * B, B, B, NULL),
                         FEDGE_OK);
    assert_int_equal(c.steps, STEPS);
    assert_int_equal(c.samples, B * STEPS);
    assert_true(c.train_us > 0);

    fedge_device_key k;
    assert_int_equal(fedge_envelope_derive_key(SECRET, sizeof SECRET, "mcu-0", &k), FEDGE_OK);
    uint8_t base[FEDGE_HASH_LEN];
    memset(base, 0x3c, sizeof base);
    fedge_core_update u = {&k, 42, RUN_ID, 5, base};
    fedge_update_stream *s = NULL;
    assert_int_equal(fedge_core_seal(&c, global.params, global.n_params, &u, &s), FEDGE_OK);
    size_t len = fedge_update_stream_size(s);
    uint8_t *frame = malloc(len), *scratch = malloc(len);
    for (size_t off = 0; off < len; off += 500)
        assert_int_equal(fedge_update_stream_read(s, off, frame + off, len - off < 500 ? len - off : 500),
                         FEDGE_OK);
    fedge_update_stream_wipe(s);

    fedge_update_expect e = {.model_id = fedge_model_spec_id(&spec), .n_elems = (uint32_t)n,
                             .round = 5, .last_counter = 41, .run_id = RUN_ID};
    fedge_delta_header h;
    uint64_t counter = 0;
    float *delta = malloc(n * sizeof(float));
    assert_int_equal(fedge_update_open(&k, frame, len, &e, scratch, &h, &counter, delta), FEDGE_OK);
    assert_int_equal(counter, 42);
    assert_int_equal(h.n_samples, B * STEPS);
    assert_memory_equal(h.base_version, base, sizeof base);

    /* the host's whole-gradient training of the same rows and steps */
    fedge_model m;
    assert_int_equal(fedge_model_init(&m, &spec), FEDGE_OK);
    memcpy(m.params, global.params, n * sizeof(float));
    fedge_sgd opt;
    assert_int_equal(fedge_sgd_init(&opt, n, &sgd), FEDGE_OK);
    float *act = malloc(fedge_model_scratch_floats(&spec, B) * sizeof(float));
    float *grad = malloc(n * sizeof(float));
    for (int st = 0; st < STEPS; st++) {
        assert_int_equal(fedge_model_loss_grad(&m, x + (size_t)(st * B) * dim, y + st * B, B, 0, act,
                                               grad, NULL), FEDGE_OK);
        assert_int_equal(fedge_sgd_step(&opt, m.params, grad), FEDGE_OK);
    }
    int nonzero = 0;
    for (size_t i = 0; i < n; i++) {
        float d = m.params[i] - global.params[i];
        assert_memory_equal(&delta[i], &d, sizeof d);
        nonzero += d != 0.0f;
    }
    assert_true(nonzero > (int)n / 2);
    free(act);
    free(grad);
    fedge_sgd_free(&opt);
    fedge_model_free(&m);
    free(delta);
    free(frame);
    free(scratch);
    free(buf);
    free(x);
    free(xu8);
    free(y);
    fedge_model_free(&global);
}

static void round_momentum0(void **state)
{
    (void)state;
    round_opens_and_matches(0.0f, 0);
}

static void round_momentum9(void **state)
{
    (void)state;
    round_opens_and_matches(0.9f, 0);
}

static void round_u8(void **state)
{
    (void)state;
    round_opens_and_matches(0.9f, 1); /* u8 features as stored, the same bits as their floats */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plan_and_refusals),
        cmocka_unit_test(round_momentum0),
        cmocka_unit_test(round_momentum9),
        cmocka_unit_test(round_u8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
