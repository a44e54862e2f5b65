/* test_caller_buffers.c — the caller-buffer forms the freestanding core
 * (mcu/) uses: fedge_update_stream_init gives the frame fedge_update_seal
 * and fedge_update_stream_new give, byte for byte, refuses a short or
 * misaligned buffer, and wipes its key; fedge_model_bind and fedge_sgd_bind
 * train exactly as the heap forms do; the spec text (no snprintf) is
 * unchanged for every kind of layer. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "model.h"
#include "optim.h"
#include "update.h"

static const uint8_t RUN_ID[FEDGE_RUN_ID_LEN] = "run-id-for-test";
static const uint8_t SECRET[32] = "0123456789abcdef0123456789abcdef";

static fedge_delta_header header(fedge_encoding enc, uint32_t n)
{
    fedge_delta_header h;
    memset(&h, 0, sizeof h);
    h.encoding = (uint8_t)enc;
    h.model_id = 0x5eed0001u;
    h.round = 3;
    h.n_samples = 32;
    h.n_elems = n;
    h.block_size = enc == FEDGE_ENC_INT8 ? FEDGE_DELTA_DEFAULT_BLOCK : 0;
    memset(h.base_version, 0xb5, FEDGE_HASH_LEN);
    return h;
}

static void stream_init_same_frame(void **state)
{
    (void)state;
    fedge_device_key k;
    assert_int_equal(fedge_envelope_derive_key(SECRET, sizeof SECRET, "mcu-0", &k), FEDGE_OK);
    const uint32_t n = 7850;
    float *x = malloc(n * sizeof(float));
    fedge_rng r;
    fedge_rng_seed(&r, 5);
    for (uint32_t i = 0; i < n; i++)
        x[i] = (float)(fedge_rng_normal(&r) * 0.01);
    for (int enc = FEDGE_ENC_FP32; enc <= FEDGE_ENC_INT8; enc++) {
        fedge_delta_header h = header((fedge_encoding)enc, n);
        fedge_rng r1, r2, r3;
        fedge_rng_seed(&r1, 9);
        r2 = r1;
        r3 = r1;
        uint8_t *sealed = NULL;
        size_t sealed_len = 0;
        assert_int_equal(fedge_update_seal(&k, 42, RUN_ID, &h, x, &r1, &sealed, &sealed_len), FEDGE_OK);

        size_t bytes = fedge_update_stream_bytes(&h);
        assert_true(bytes > 0);
        unsigned char *mem = aligned_alloc(alignof(max_align_t), (bytes + 63) / 64 * 64 + 64);
        fedge_update_stream *s = NULL;
        /* short, misaligned: refused, nothing set */
        assert_int_equal(fedge_update_stream_init(mem, bytes - 1, &k, 42, RUN_ID, &h, x, &r2, &s),
                         FEDGE_ERR_BUFFER_TOO_SMALL);
        assert_int_equal(fedge_update_stream_init(mem + 1, bytes, &k, 42, RUN_ID, &h, x, &r2, &s),
                         FEDGE_ERR_INVALID_ARG);
        assert_null(s);
        assert_int_equal(fedge_update_stream_init(mem, bytes, &k, 42, RUN_ID, &h, x, &r2, &s),
                         FEDGE_OK);
        assert_int_equal(fedge_update_stream_size(s), sealed_len);
        assert_memory_equal(&r1, &r2, sizeof r1); /* the caller's rng left where seal leaves it */
        uint8_t *frame = malloc(sealed_len);
        for (size_t off = 0; off < sealed_len; off += 700) { /* read in pieces, in order */
            size_t m = sealed_len - off < 700 ? sealed_len - off : 700;
            assert_int_equal(fedge_update_stream_read(s, off, frame + off, m), FEDGE_OK);
        }
        assert_memory_equal(frame, sealed, sealed_len);
        /* a read behind the ring restarts from the same state: the same bytes */
        uint8_t head[100];
        assert_int_equal(fedge_update_stream_read(s, 0, head, sizeof head), FEDGE_OK);
        assert_memory_equal(head, sealed, sizeof head);

        /* the heap form gives the same frame */
        fedge_update_stream *hs = NULL;
        assert_int_equal(fedge_update_stream_new(&k, 42, RUN_ID, &h, x, &r3, &hs), FEDGE_OK);
        assert_int_equal(fedge_update_stream_read(hs, 0, frame, sealed_len), FEDGE_OK);
        assert_memory_equal(frame, sealed, sealed_len);
        fedge_update_stream_free(hs);

        /* wipe leaves no key behind in the caller's buffer */
        fedge_update_stream_wipe(s);
        for (size_t i = 0; i + FEDGE_KEY_LEN <= bytes; i++)
            assert_true(memcmp(mem + i, k.key, FEDGE_KEY_LEN) != 0);
        free(frame);
        free(mem);
        free(sealed);
    }
    free(x);
}

static void bind_trains_as_init(void **state)
{
    (void)state;
    fedge_model_spec spec;
    assert_int_equal(fedge_model_spec_parse("mlp:20-8-4", &spec), FEDGE_OK);
    fedge_model heap, bound;
    assert_int_equal(fedge_model_init(&heap, &spec), FEDGE_OK);
    fedge_rng r;
    fedge_rng_seed(&r, 3);
    assert_int_equal(fedge_model_randomize(&heap, &r), FEDGE_OK);
    float *params = malloc(spec.n_params * sizeof(float));
    memcpy(params, heap.params, spec.n_params * sizeof(float));
    assert_int_equal(fedge_model_bind(&bound, &spec, params), FEDGE_OK);
    assert_ptr_equal(bound.params, params);
    assert_int_equal(bound.n_params, spec.n_params);
    fedge_model_spec bad = spec;
    bad.n_params++;
    fedge_model junk;
    assert_int_equal(fedge_model_bind(&junk, &bad, params), FEDGE_ERR_MODEL_SPEC);
    assert_int_equal(fedge_model_bind(&junk, &spec, NULL), FEDGE_ERR_INVALID_ARG);

    fedge_sgd_config cfg = {0.1f, 0.9f, 1e-4f};
    fedge_sgd opt_heap, opt_bound;
    assert_int_equal(fedge_sgd_init(&opt_heap, spec.n_params, &cfg), FEDGE_OK);
    float *velocity = malloc(spec.n_params * sizeof(float));
    memset(velocity, 0xff, spec.n_params * sizeof(float)); /* NaN: bind must zero it */
    assert_int_equal(fedge_sgd_bind(&opt_bound, spec.n_params, &cfg, velocity), FEDGE_OK);
    assert_int_equal(fedge_sgd_bind(&opt_bound, spec.n_params, &cfg, NULL), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_sgd_bind(&opt_bound, spec.n_params, &cfg, velocity), FEDGE_OK);

    enum { B = 4 };
    float x[B * 20];
    uint8_t y[B];
    for (int i = 0; i < B * 20; i++)
        x[i] = fedge_rng_uniform(&r);
    for (int i = 0; i < B; i++)
        y[i] = (uint8_t)fedge_rng_below(&r, 4);
    float *scratch = malloc(fedge_model_scratch_floats(&spec, B) * sizeof(float));
    float *grad = malloc(spec.n_params * sizeof(float));
    for (int step = 0; step < 3; step++) {
        float l1, l2;
        assert_int_equal(fedge_model_loss_grad(&heap, x, y, B, 0, scratch, grad, &l1), FEDGE_OK);
        assert_int_equal(fedge_sgd_step(&opt_heap, heap.params, grad), FEDGE_OK);
        assert_int_equal(fedge_model_loss_grad(&bound, x, y, B, 0, scratch, grad, &l2), FEDGE_OK);
        assert_int_equal(fedge_sgd_step(&opt_bound, bound.params, grad), FEDGE_OK);
        assert_memory_equal(&l1, &l2, sizeof l1);
    }
    assert_memory_equal(heap.params, bound.params, spec.n_params * sizeof(float));
    assert_memory_equal(opt_heap.velocity, velocity, spec.n_params * sizeof(float));
    free(scratch);
    free(grad);
    free(velocity);
    free(params);
    fedge_sgd_free(&opt_heap);
    fedge_model_free(&heap);
}

static void spec_text_without_snprintf(void **state)
{
    (void)state;
    static const char *specs[] = {
        "softmax:784-10", "mlp:784-200-10", "mlp:1-2-3-4-5-6-7-8-9-10",
        "cnn:1x28x28-c32k5-p2-c64k5-p2-f512-10", "cnn:3x32x32-c16k3s2p1-p3s2-f128-d25-10",
        "mlp:65536-2-256", "cnn:1x28x28-c8k3-p2-10",
    };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        fedge_model_spec s;
        char buf[FEDGE_MODEL_SPEC_MAX];
        assert_int_equal(fedge_model_spec_parse(specs[i], &s), FEDGE_OK);
        assert_int_equal(fedge_model_spec_format(&s, buf, sizeof buf), FEDGE_OK);
        assert_string_equal(buf, specs[i]);
        size_t len = strlen(specs[i]);
        assert_int_equal(fedge_model_spec_format(&s, buf, len), FEDGE_ERR_BUFFER_TOO_SMALL);
        assert_int_equal(fedge_model_spec_format(&s, buf, len + 1), FEDGE_OK);
        assert_string_equal(buf, specs[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stream_init_same_frame),
        cmocka_unit_test(bind_trains_as_init),
        cmocka_unit_test(spec_text_without_snprintf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
