/* test_server_opt.c — each server optimiser against hand-computed steps
 * (values chosen so every square root is exact), its initial state, its
 * canonical name, and the state blob's round trip and refusals. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "server_opt.h"

static fedge_server_opt_params params(const char *name, double lr)
{
    fedge_server_opt_params p = {.lr = lr, .momentum = 0.5, .beta1 = 0.5, .beta2 = 0.5, .tau = 1.0};
    snprintf(p.name, sizeof p.name, "%s", name);
    return p;
}

/* Steps o through d[s] (2 coordinates) and checks w after each against want[s]. */
static void run_steps(fedge_server_opt_params p, float w0[2], const float d[][2], const float want[][2],
                      size_t steps)
{
    fedge_server_opt o;
    float w[2] = {w0[0], w0[1]};
    assert_int_equal(fedge_server_opt_init(&o, &p, 2), FEDGE_OK);
    for (size_t s = 0; s < steps; s++) {
        fedge_server_opt_step(&o, w, d[s]);
        for (int i = 0; i < 2; i++)
            if (fabsf(w[i] - want[s][i]) > 1e-6f)
                fail_msg("%s step %zu coordinate %d: w = %.9g, want %.9g", p.name, s + 1, i, w[i], want[s][i]);
    }
    assert_int_equal(o.steps, steps);
    fedge_server_opt_free(&o);
}

static void test_sgd(void **state)
{
    (void)state;
    float w0[2] = {1, -2};
    const float d[][2] = {{0.5f, 1}, {-1, 0.25f}};
    const float want[][2] = {{1.25f, -1.5f}, {0.75f, -1.375f}};
    run_steps(params("sgd", 0.5), w0, d, want, 2);
}

/* m = 0.5 m + d; w += m. */
static void test_momentum(void **state)
{
    (void)state;
    float w0[2] = {0, 0};
    const float d[][2] = {{1, -2}, {1, 2}, {0, 0}};
    const float want[][2] = {{1, -2}, {2.5f, -1}, {3.25f, -0.5f}};
    run_steps(params("momentum", 1), w0, d, want, 3);
}

/* τ = 1 so v starts at 1; β1 = β2 = 0.5.
 * x: d=1: m=.5, v=.5+.5=1, w=.5/2=.25; d=7: m=.25+3.5=3.75, v=.5+24.5=25, w=.25+3.75/6=.875
 * y: d=-1: m=-.5, v=1, w=-.25; d=1: m=.25, v=1, w=-.25+.25/2=-.125 */
static void test_adam(void **state)
{
    (void)state;
    float w0[2] = {0, 0};
    const float d[][2] = {{1, -1}, {7, 1}};
    const float want[][2] = {{0.25f, -0.25f}, {0.875f, -0.125f}};
    run_steps(params("adam", 1), w0, d, want, 2);
}

/* Yogi, τ = 1, β1 = β2 = 0.5, η = 1: v moves by (1-β2)·d² toward d².
 * d=1: v = 1 = d², sign 0: v stays 1; m = .5; w = .5/2 = .25
 * d=4: v = 1 < 16: v = 1 + 8 = 9; m = 2.25; w = .25 + 2.25/4 = .8125
 * d=4: v = 9 < 16: v = 17; m = 3.125; w = .8125 + 3.125/(√17 + 1)
 * d=2: v = 17 > 4: v = 17 - 2 = 15 (Adam would give 10.5) */
static void test_yogi(void **state)
{
    (void)state;
    fedge_server_opt o;
    fedge_server_opt_params p = params("yogi", 1);
    float w[1] = {0};
    assert_int_equal(fedge_server_opt_init(&o, &p, 1), FEDGE_OK);
    const float d[] = {1, 4, 4};
    const double want_v[] = {1, 9, 17};
    const double want_m[] = {0.5, 2.25, 3.125};
    double want_w = 0;
    for (int s = 0; s < 3; s++) {
        fedge_server_opt_step(&o, w, &d[s]);
        want_w += want_m[s] / (sqrt(want_v[s]) + 1.0);
        assert_float_equal(o.vec[1][0], want_v[s], 1e-6);
        assert_float_equal(o.vec[0][0], want_m[s], 1e-6);
        assert_float_equal(w[0], want_w, 1e-6);
    }
    assert_float_equal(w[0], 0.8125 + 3.125 / (sqrt(17.0) + 1.0), 1e-6);
    const float two = 2;
    fedge_server_opt_step(&o, w, &two);
    assert_float_equal(o.vec[1][0], 15.0, 1e-6);
    fedge_server_opt_free(&o);
}

/* Adagrad, τ = 0.75 (v0 = 0.5625), β1 = 0.5, η = 1.
 * d=1: v=1.5625 (1.25²), m=.5, w=.5/2=.25; d=3: v=10.5625 (3.25²), m=1.75, w=.25+1.75/4=.6875 */
static void test_adagrad(void **state)
{
    (void)state;
    fedge_server_opt_params p = params("adagrad", 1);
    p.tau = 0.75;
    float w0[2] = {0, 0};
    const float d[][2] = {{1, 0}, {3, 0}};
    const float want[][2] = {{0.25f, 0}, {0.6875f, 0}};
    run_steps(p, w0, d, want, 2);
}

/* v starts at τ² (Algorithm 2: v_{-1} ≥ τ²), m at 0. */
static void test_initial_state(void **state)
{
    (void)state;
    const char *names[] = {"adam", "yogi", "adagrad"};
    for (int k = 0; k < 3; k++) {
        fedge_server_opt o;
        fedge_server_opt_params p = params(names[k], 0.1);
        p.tau = 0.5;
        assert_int_equal(fedge_server_opt_init(&o, &p, 3), FEDGE_OK);
        for (int i = 0; i < 3; i++) {
            assert_true(o.vec[0][i] == 0.0f);
            assert_true(o.vec[1][i] == 0.25f);
        }
        fedge_server_opt_free(&o);
    }
}

static void test_describe_and_check(void **state)
{
    (void)state;
    char buf[160], why[160];
    fedge_server_opt_params p = params("sgd", 1);
    assert_int_equal(fedge_server_opt_describe(&p, buf, sizeof buf), FEDGE_OK);
    assert_string_equal(buf, "fedavg");
    p.lr = 0.5;
    assert_int_equal(fedge_server_opt_describe(&p, buf, sizeof buf), FEDGE_OK);
    assert_string_equal(buf, "fedavg(lr=0.5)");
    p = params("momentum", 1);
    p.momentum = 0.9;
    assert_int_equal(fedge_server_opt_describe(&p, buf, sizeof buf), FEDGE_OK);
    assert_string_equal(buf, "fedavgm(lr=1,momentum=0.9)");
    p = params("adam", 0.01);
    p.beta1 = 0.9;
    p.beta2 = 0.99;
    p.tau = 1e-3;
    assert_int_equal(fedge_server_opt_describe(&p, buf, sizeof buf), FEDGE_OK);
    assert_string_equal(buf, "fedadam(lr=0.01,beta1=0.9,beta2=0.99,tau=0.001)");
    snprintf(p.name, sizeof p.name, "yogi");
    assert_int_equal(fedge_server_opt_describe(&p, buf, sizeof buf), FEDGE_OK);
    assert_string_equal(buf, "fedyogi(lr=0.01,beta1=0.9,beta2=0.99,tau=0.001)");
    snprintf(p.name, sizeof p.name, "adagrad");
    assert_int_equal(fedge_server_opt_describe(&p, buf, sizeof buf), FEDGE_OK);
    assert_string_equal(buf, "fedadagrad(lr=0.01,beta1=0.9,tau=0.001)");

    assert_int_equal(fedge_server_opt_check(&p, why, sizeof why), FEDGE_OK);
    snprintf(p.name, sizeof p.name, "lamb");
    assert_int_equal(fedge_server_opt_check(&p, why, sizeof why), FEDGE_ERR_INVALID_ARG);
    assert_non_null(strstr(why, "sgd|momentum|adam|yogi|adagrad"));
    p = params("adam", 1);
    p.beta2 = 1;
    assert_int_equal(fedge_server_opt_check(&p, why, sizeof why), FEDGE_ERR_INVALID_ARG);
    p = params("adam", 1);
    p.tau = 0;
    assert_int_equal(fedge_server_opt_check(&p, why, sizeof why), FEDGE_ERR_INVALID_ARG);
}

/* Save after two steps, load into a fresh state, step both: same bits. */
static void test_state_round_trip(void **state)
{
    (void)state;
    fedge_server_opt a, b;
    fedge_server_opt_params p = params("adam", 0.1);
    float wa[3] = {0.1f, 0.2f, 0.3f}, wb[3], c[3] = {1, 2, 3}, c2[3] = {0};
    const float d1[3] = {0.5f, -0.25f, 1}, d2[3] = {-0.125f, 0.75f, 0.0625f};
    const char *extra_names[] = {"control"};
    const float *extra[] = {c};
    float *extra_out[] = {c2};
    char why[200];
    assert_int_equal(fedge_server_opt_init(&a, &p, 3), FEDGE_OK);
    fedge_server_opt_step(&a, wa, d1);
    fedge_server_opt_step(&a, wa, d2);
    size_t cap = fedge_server_opt_state_size(&a, 1), len = 0;
    uint8_t *blob = malloc(cap);
    assert_non_null(blob);
    assert_int_equal(fedge_server_opt_save(&a, extra_names, extra, 1, blob, cap, &len), FEDGE_OK);
    assert_int_equal(len, cap);
    assert_int_equal(fedge_server_opt_save(&a, extra_names, extra, 1, blob, cap - 1, &len),
                     FEDGE_ERR_BUFFER_TOO_SMALL);

    assert_int_equal(fedge_server_opt_init(&b, &p, 3), FEDGE_OK);
    assert_int_equal(fedge_server_opt_load(&b, extra_names, extra_out, 1, blob, cap, why, sizeof why), FEDGE_OK);
    assert_int_equal(b.steps, 2);
    assert_memory_equal(c, c2, sizeof c);
    memcpy(wb, wa, sizeof wa);
    fedge_server_opt_step(&a, wa, d1);
    fedge_server_opt_step(&b, wb, d1);
    assert_memory_equal(wa, wb, sizeof wa);
    fedge_server_opt_free(&b);

    /* Another optimiser, other parameters, another size, no extra vector,
     * a flipped byte in the magic: refused, state untouched. */
    fedge_server_opt_params q = p;
    q.beta1 = 0.9;
    assert_int_equal(fedge_server_opt_init(&b, &q, 3), FEDGE_OK);
    assert_int_equal(fedge_server_opt_load(&b, extra_names, extra_out, 1, blob, cap, why, sizeof why),
                     FEDGE_ERR_STRATEGY_STATE);
    assert_non_null(strstr(why, "beta1=0.9"));
    assert_true(b.vec[1][0] == 1.0f && b.steps == 0);
    fedge_server_opt_free(&b);
    q = params("yogi", 0.1);
    assert_int_equal(fedge_server_opt_init(&b, &q, 3), FEDGE_OK);
    assert_int_equal(fedge_server_opt_load(&b, extra_names, extra_out, 1, blob, cap, why, sizeof why),
                     FEDGE_ERR_STRATEGY_STATE);
    fedge_server_opt_free(&b);
    assert_int_equal(fedge_server_opt_init(&b, &p, 2), FEDGE_OK);
    assert_int_equal(fedge_server_opt_load(&b, extra_names, extra_out, 1, blob, cap, why, sizeof why),
                     FEDGE_ERR_STRATEGY_STATE);
    fedge_server_opt_free(&b);
    assert_int_equal(fedge_server_opt_init(&b, &p, 3), FEDGE_OK);
    assert_int_equal(fedge_server_opt_load(&b, NULL, NULL, 0, blob, cap, why, sizeof why), FEDGE_ERR_STRATEGY_STATE);
    blob[0] ^= 1;
    assert_int_equal(fedge_server_opt_load(&b, extra_names, extra_out, 1, blob, cap, why, sizeof why),
                     FEDGE_ERR_STRATEGY_STATE);
    fedge_server_opt_free(&b);
    fedge_server_opt_free(&a);
    free(blob);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sgd),
        cmocka_unit_test(test_momentum),
        cmocka_unit_test(test_adam),
        cmocka_unit_test(test_yogi),
        cmocka_unit_test(test_adagrad),
        cmocka_unit_test(test_initial_state),
        cmocka_unit_test(test_describe_and_check),
        cmocka_unit_test(test_state_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
