/* The MPI-free arithmetic of model parallelism (cluster_grid.c): the rank
 * grid, balanced pipeline stages, Megatron shards that tile every parameter
 * exactly once, the per-rank memory plan, the analytic communication volume,
 * and the linear lr scaling with warm-up. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../cluster/cluster_grid.c"
#include "../../cluster/cluster_layout.c"

static fedge_dense_shape shape_of(const char *spec_text)
{
    fedge_model_spec spec;
    fedge_dense_shape sh;
    assert_int_equal(fedge_model_spec_parse(spec_text, &spec), FEDGE_OK);
    assert_int_equal(fedge_dense_shape_of(&spec, &sh), FEDGE_OK);
    return sh;
}

static void test_grid_coords(void **state)
{
    (void)state;
    fedge_grid_dims g;
    assert_int_equal(fedge_grid_make(8, 2, 2, &g), FEDGE_OK);
    assert_int_equal(g.dp, 2);
    assert_int_equal(fedge_grid_make(6, 4, 1, &g), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_grid_make(4, 0, 1, &g), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_grid_make(12, 3, 2, &g), FEDGE_OK);
    for (int r = 0; r < 12; r++) {
        fedge_grid_coord c;
        fedge_grid_coord_of(&g, r, &c);
        assert_true(c.dp_i < 2 && c.tp_i < 3 && c.pp_i < 2);
        assert_int_equal(fedge_grid_rank_of(&g, c.dp_i, c.tp_i, c.pp_i), r);
    }
    fedge_grid_coord c;
    fedge_grid_coord_of(&g, 1, &c); /* TP neighbours are adjacent ranks */
    assert_int_equal(c.tp_i, 1);
    assert_int_equal(c.pp_i, 0);
}

static void test_stages_balanced(void **state)
{
    (void)state;
    int first[FEDGE_GRID_MAX_PP + 1];
    fedge_dense_shape sh = shape_of("mlp:100-100-100-100-100");
    assert_int_equal(fedge_pp_stages(&sh, 2, first), FEDGE_OK);
    assert_int_equal(first[0], 0);
    assert_int_equal(first[1], 2);
    assert_int_equal(first[2], 4);
    assert_int_equal(fedge_pp_stages(&sh, 4, first), FEDGE_OK);
    for (int s = 0; s <= 4; s++)
        assert_int_equal(first[s], s);
    assert_int_equal(fedge_pp_stages(&sh, 5, first), FEDGE_ERR_INVALID_ARG);
    /* one heavy layer gets a stage to itself */
    sh = shape_of("mlp:784-64-64-32-10");
    assert_int_equal(fedge_pp_stages(&sh, 2, first), FEDGE_OK);
    assert_int_equal(first[1], 1);
}

/* Every parameter is written by exactly one rank of a replica, and each rank
 * reads back what it owns. */
static void check_tiling(const char *spec_text, int tp, int pp)
{
    fedge_dense_shape sh = shape_of(spec_text);
    fedge_model_spec spec;
    assert_int_equal(fedge_model_spec_parse(spec_text, &spec), FEDGE_OK);
    size_t n = fedge_model_spec_param_count(&spec);
    float *full = malloc(n * sizeof(float)), *sum = calloc(n, sizeof(float));
    float *back = malloc(n * sizeof(float));
    assert_non_null(full);
    assert_non_null(sum);
    assert_non_null(back);
    for (size_t i = 0; i < n; i++)
        full[i] = (float)(i % 1000) + 1.0f;
    size_t local_total = 0;
    for (int s = 0; s < pp; s++)
        for (int t = 0; t < tp; t++) {
            fedge_shard_plan p;
            assert_int_equal(fedge_shard_plan_make(&sh, tp, t, pp, s, &p), FEDGE_OK);
            float *local = malloc((p.n_local ? p.n_local : 1) * sizeof(float));
            assert_non_null(local);
            fedge_shard_get(&p, full, local);
            memset(back, 0, n * sizeof(float));
            fedge_shard_put(&p, local, back);
            for (size_t i = 0; i < n; i++)
                sum[i] += back[i];
            local_total += p.n_local;
            free(local);
        }
    for (size_t i = 0; i < n; i++)
        assert_true(sum[i] == full[i]);
    assert_true(local_total >= n);
    free(full);
    free(sum);
    free(back);
}

static void test_shards_tile_the_model(void **state)
{
    (void)state;
    check_tiling("mlp:784-64-64-32-10", 1, 1);
    check_tiling("mlp:784-64-64-32-10", 2, 1);
    check_tiling("mlp:784-64-64-32-10", 3, 2); /* uneven splits, pairs across stages */
    check_tiling("mlp:784-64-64-32-10", 4, 4);
    check_tiling("mlp:784-200-10", 2, 2);
    check_tiling("mlp:20-7-5-9", 3, 1);       /* odd layer count: last column-split */
    check_tiling("softmax:20-9", 2, 1);
}

static void test_modes_and_refusals(void **state)
{
    (void)state;
    fedge_shard_plan p;
    fedge_dense_shape sh = shape_of("mlp:20-7-5-9");
    assert_int_equal(fedge_shard_plan_make(&sh, 2, 1, 1, 0, &p), FEDGE_OK);
    assert_int_equal(p.mode[0], FEDGE_TP_COL);
    assert_int_equal(p.mode[1], FEDGE_TP_ROW);
    assert_int_equal(p.mode[2], FEDGE_TP_COL); /* unpaired last layer: split softmax */
    assert_int_equal(p.out_lo[2], 4);
    assert_int_equal(p.out_n[2], 5);
    assert_int_equal(p.out_lo[0], 3);
    assert_int_equal(p.out_n[0], 4);
    assert_int_equal(p.in_n[1], 4);
    assert_int_equal(p.out_n[1], 5); /* the row-parallel layer's output is whole */
    /* a column-parallel layer narrower than tp is refused */
    assert_int_equal(fedge_shard_plan_make(&sh, 8, 0, 1, 0, &p), FEDGE_ERR_INVALID_ARG);
}

static void test_memory_plan_shrinks_with_tp(void **state)
{
    (void)state;
    fedge_dense_shape sh = shape_of("mlp:784-1024-1024-10");
    fedge_memory_plan one, two, four;
    assert_int_equal(fedge_mp_memory_max(&sh, 1, 1, 16, 1, &one), FEDGE_OK);
    assert_int_equal(fedge_mp_memory_max(&sh, 2, 1, 16, 1, &two), FEDGE_OK);
    assert_int_equal(fedge_mp_memory_max(&sh, 4, 1, 16, 1, &four), FEDGE_OK);
    /* params, grads and momentum: 3 x 4 bytes a parameter, 1/T of the split layers */
    size_t n = 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 10 * 1024 + 10;
    assert_int_equal(one.params + one.grads + one.optimizer, 12 * n);
    assert_true(two.params < one.params / 2 + 1024 * 4 + 10 * 1024 * 4);
    assert_true(four.params < two.params);
    /* 1f1b keeps min(M, P) micro-batches, gpipe M */
    assert_int_equal(fedge_pp_slots(FEDGE_PP_1F1B, 8, 2), 2);
    assert_int_equal(fedge_pp_slots(FEDGE_PP_GPIPE, 8, 2), 8);
    fedge_memory_plan g, f;
    assert_int_equal(fedge_mp_memory_max(&sh, 1, 2, 16, fedge_pp_slots(FEDGE_PP_GPIPE, 8, 2), &g),
                     FEDGE_OK);
    assert_int_equal(fedge_mp_memory_max(&sh, 1, 2, 16, fedge_pp_slots(FEDGE_PP_1F1B, 8, 2), &f),
                     FEDGE_OK);
    assert_true(f.activations < g.activations);
    assert_true(fedge_pp_bubble_theory(4, 4) > 0.42 && fedge_pp_bubble_theory(4, 4) < 0.43);
    /* eight equal layers, one a stage: stage 0 costs 2 units (no input
     * gradient), the others 3: the pipeline takes 23 + 7 * 3 = 44 units */
    double idle[FEDGE_GRID_MAX_PP];
    fedge_dense_shape eq = shape_of("mlp:64-64-64-64-64-64-64-64-64");
    assert_int_equal(fedge_pp_bubble_model(&eq, 8, 8, idle), FEDGE_OK);
    assert_true(fabs(idle[7] - (1.0 - 24.0 / 44.0)) < 1e-9);
    assert_true(fabs(idle[0] - (1.0 - 16.0 / 44.0)) < 1e-9);
    /* with equal stages it is the theory (P-1)/(M+P-1) */
    assert_true(fabs((1.0 - 24.0 / (21.0 + 21.0)) - fedge_pp_bubble_theory(7, 8)) < 1e-9);
    fedge_dense_shape uneq = shape_of("mlp:784-512-512-256-10");
    assert_int_equal(fedge_pp_bubble_model(&uneq, 2, 4, idle), FEDGE_OK);
    assert_true(idle[0] > 0.40 && idle[0] < 0.46);
    assert_true(idle[1] > 0.10 && idle[1] < 0.17);
}

static void test_comm_volume(void **state)
{
    (void)state;
    fedge_dense_shape sh = shape_of("mlp:784-64-64-32-10");
    fedge_shard_plan p;
    fedge_mp_comm c;
    /* tp 2: layer 1 (row) allreduces 64 outputs forward, layer 2 (column)
     * 64 inputs backward, layer 3 (row) 10 outputs; layer 0 has no input gradient */
    assert_int_equal(fedge_shard_plan_make(&sh, 2, 0, 1, 0, &p), FEDGE_OK);
    fedge_mp_comm_volume(&p, 1, 32, 2, &c);
    assert_true(c.tp_bytes == 32.0 * (64 + 64 + 10) * 4);
    assert_int_equal(c.tp_allreduces, 3 * 2);
    assert_true(c.dp_bytes == 0.0);
    /* an unpaired last layer: the split softmax's max and sum-exp allreduces */
    fedge_dense_shape odd = shape_of("mlp:784-64-32-10");
    assert_int_equal(fedge_shard_plan_make(&odd, 2, 0, 1, 0, &p), FEDGE_OK);
    fedge_mp_comm_volume(&p, 1, 32, 1, &c);
    assert_true(c.tp_bytes == 32.0 * 32 * 4 + 32.0 * 32 * 4 + 32.0 * 20);
    assert_int_equal(c.tp_allreduces, 4);
    /* pp 2, stage 0 = layer 0: sends 64 activations a row, nothing back */
    assert_int_equal(fedge_shard_plan_make(&sh, 1, 0, 2, 0, &p), FEDGE_OK);
    fedge_mp_comm_volume(&p, 2, 32, 4, &c);
    assert_true(c.pp_bytes == 32.0 * 64 * 4);
    assert_int_equal(c.pp_messages, 4);
    assert_true(c.dp_bytes == (double)p.n_local * 4);
}

static void test_lr_scaling(void **state)
{
    (void)state;
    assert_true(fedge_lr_at(0.1, FEDGE_LR_CONSTANT, 256, 32, 10, 0) == 0.1);
    assert_true(fedge_lr_at(0.1, FEDGE_LR_LINEAR, 256, 32, 10, 0) == 0.1);
    double mid = fedge_lr_at(0.1, FEDGE_LR_LINEAR, 256, 32, 10, 5);
    assert_true(mid > 0.449 && mid < 0.451);
    assert_true(fedge_lr_at(0.1, FEDGE_LR_LINEAR, 256, 32, 10, 10) > 0.799);
    assert_true(fedge_lr_at(0.1, FEDGE_LR_LINEAR, 256, 32, 0, 0) > 0.799);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid_coords),
        cmocka_unit_test(test_stages_balanced),
        cmocka_unit_test(test_shards_tile_the_model),
        cmocka_unit_test(test_modes_and_refusals),
        cmocka_unit_test(test_memory_plan_shrinks_with_tp),
        cmocka_unit_test(test_comm_volume),
        cmocka_unit_test(test_lr_scaling),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
