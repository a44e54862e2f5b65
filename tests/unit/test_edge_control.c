/* The SCAFFOLD client control variate file: absent -> zeros, a committed
 * c_i read back bit for bit, a corrupt, truncated or foreign-spec file ->
 * zeros with its reason (never a refusal that would stop the edge), and a
 * commit that replaces the file atomically (no temporary left behind).
 * The file is bound to its aggregator run (another run's, or an unbound
 * plain model file -> zeros), values beyond the plausibility bound -> zeros,
 * and c_i+ waits in <file>.pending until settled (commit or drop). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "control.h"
#include "fileio.h"
#include "modelfile.h"

static const uint8_t RUN[FEDGE_CONTROL_RUN_ID_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const uint8_t OTHER_RUN[FEDGE_CONTROL_RUN_ID_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17};

typedef struct {
    char dir[64];
    char *path;
    fedge_model_spec spec;
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/fedge-edge-control-XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    assert_int_equal(fedge_edge_control_path(fx->dir, "dev-7", &fx->path), FEDGE_OK);
    assert_int_equal(fedge_model_spec_parse("mlp:4-3-2", &fx->spec), FEDGE_OK);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx->path);
    free(fx);
    return 0;
}

static void assert_zeros(const fedge_model *m, const fedge_model_spec *spec)
{
    assert_int_equal(m->n_params, fedge_model_spec_param_count(spec));
    for (size_t i = 0; i < m->n_params; i++)
        assert_true(m->params[i] == 0.0f);
}

static size_t dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static void test_path(void **state)
{
    fixture *fx = *state;
    char want[128];
    snprintf(want, sizeof want, "%s/dev-7.control", fx->dir);
    assert_string_equal(fx->path, want);
    char *p = NULL;
    assert_int_equal(fedge_edge_control_path(NULL, "x", &p), FEDGE_ERR_INVALID_ARG);
}

/* First use: zeros; a commit; the next round reads the committed c_i. */
static void test_new_commit_load(void **state)
{
    fixture *fx = *state;
    fedge_model ci;
    memset(&ci, 0, sizeof ci);
    fedge_control_status st;
    int why = 1;
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_NEW);
    assert_int_equal(why, FEDGE_OK);
    assert_zeros(&ci, &fx->spec);
    for (size_t i = 0; i < ci.n_params; i++)
        ci.params[i] = 0.25f * (float)i - 1.0f / 3.0f;
    assert_int_equal(fedge_edge_control_commit(fx->path, RUN, &ci), FEDGE_OK);
    assert_int_equal(dir_entries(fx->dir), 1); /* no temporary file left */
    struct stat sb;
    assert_int_equal(stat(fx->path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600); /* c_i tells about the local data */

    fedge_model again;
    memset(&again, 0, sizeof again);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &again, &st, NULL), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_LOADED);
    assert_memory_equal(again.params, ci.params, ci.n_params * sizeof(float));
    /* Loading into a model that holds last round's c_i frees that one first
     * (ASan/valgrind see no leak) and gives the file's bits again. */
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &again, &st, NULL), FEDGE_OK);
    assert_memory_equal(again.params, ci.params, ci.n_params * sizeof(float));
    fedge_model_free(&again);
    fedge_model_free(&ci);
}

/* Any damage is a reset to zeros with its reason, not an error. */
static void test_corrupt_and_foreign(void **state)
{
    fixture *fx = *state;
    fedge_model ci;
    memset(&ci, 0, sizeof ci);
    assert_int_equal(fedge_model_init(&ci, &fx->spec), FEDGE_OK);
    for (size_t i = 0; i < ci.n_params; i++)
        ci.params[i] = 1.0f + (float)i;
    assert_int_equal(fedge_edge_control_commit(fx->path, RUN, &ci), FEDGE_OK);

    uint8_t *body;
    size_t len;
    assert_int_equal(fedge_model_serialize(&ci, &body, &len, NULL), FEDGE_OK);
    fedge_control_status st;
    int why;

    /* one flipped parameter byte: checksum */
    body[len - 40] ^= 0x01;
    assert_int_equal(fedge_write_file_atomic(fx->path, body, len, 0644, 0), FEDGE_OK);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_CORRUPT);
    assert_int_equal(why, FEDGE_ERR_MODEL_FILE_CHECKSUM);
    assert_zeros(&ci, &fx->spec);
    body[len - 40] ^= 0x01;

    /* truncated */
    assert_int_equal(fedge_write_file_atomic(fx->path, body, len - 7, 0644, 0), FEDGE_OK);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_CORRUPT);
    assert_int_equal(why, FEDGE_ERR_MODEL_FILE_TRUNCATED);
    assert_zeros(&ci, &fx->spec);

    /* not a model file at all */
    assert_int_equal(fedge_write_file_atomic(fx->path, "12345\n", 6, 0644, 0), FEDGE_OK);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_CORRUPT);
    assert_int_not_equal(why, FEDGE_OK);
    assert_zeros(&ci, &fx->spec);
    free(body);

    /* a valid c_i of another model (the run's spec changed) */
    fedge_model_spec other;
    fedge_model o;
    assert_int_equal(fedge_model_spec_parse("softmax:4-2", &other), FEDGE_OK);
    assert_int_equal(fedge_model_init(&o, &other), FEDGE_OK);
    o.params[0] = 5.0f;
    assert_int_equal(fedge_edge_control_commit(fx->path, RUN, &o), FEDGE_OK);
    fedge_model_free(&o);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_OTHER_SPEC);
    assert_int_equal(why, FEDGE_OK);
    assert_zeros(&ci, &fx->spec);
    assert_int_equal(ci.spec.n_params, fx->spec.n_params);

    /* A non-finite c_i is refused by the commit and the file stays. */
    ci.params[1] = 1.0f / 0.0f;
    assert_int_equal(fedge_edge_control_commit(fx->path, RUN, &ci), FEDGE_ERR_MODEL_NONFINITE);
    assert_int_equal(fedge_edge_control_load(fx->path, &other, RUN, 0.0f, &ci, &st, NULL), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_LOADED);
    assert_true(ci.params[0] == 5.0f);
    fedge_model_free(&ci);
}

/* A file of another run, or a plain model file bound to none, is not this
 * run's c_i; neither is one beyond the bound. */
static void test_run_binding_and_bound(void **state)
{
    fixture *fx = *state;
    fedge_model ci;
    memset(&ci, 0, sizeof ci);
    assert_int_equal(fedge_model_init(&ci, &fx->spec), FEDGE_OK);
    for (size_t i = 0; i < ci.n_params; i++)
        ci.params[i] = 2.0f;
    assert_int_equal(fedge_edge_control_commit(fx->path, OTHER_RUN, &ci), FEDGE_OK);
    fedge_control_status st;
    int why;
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_OTHER_RUN);
    assert_zeros(&ci, &fx->spec);

    for (size_t i = 0; i < ci.n_params; i++)
        ci.params[i] = 2.0f;
    assert_int_equal(fedge_model_save(&ci, fx->path, NULL), FEDGE_OK); /* no trailer: no run */
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_OTHER_RUN);
    assert_zeros(&ci, &fx->spec);

    /* 1e30 is finite and passes every file check, not the bound */
    ci.params[2] = 1e30f;
    assert_int_equal(fedge_edge_control_commit(fx->path, RUN, &ci), FEDGE_OK);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 100.0f, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_IMPLAUSIBLE);
    assert_zeros(&ci, &fx->spec);
    ci.params[2] = 99.0f;
    assert_int_equal(fedge_edge_control_commit(fx->path, RUN, &ci), FEDGE_OK);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 100.0f, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_LOADED);
    assert_true(ci.params[2] == 99.0f);
    fedge_model_free(&ci);

    /* the bound: 1000 x max(1, max|w|) / lr */
    fedge_model w;
    assert_int_equal(fedge_model_init(&w, &fx->spec), FEDGE_OK);
    assert_true(fedge_edge_control_bound(&w, 0.1f) == 10000.0f);
    w.params[0] = -4.0f;
    assert_true(fedge_edge_control_bound(&w, 0.1f) == 40000.0f);
    assert_true(fedge_edge_control_bound(&w, 0.0f) == 0.0f);
    fedge_model_free(&w);
    float v[3] = {1.0f, -5.0f, 2.0f}, m = 0;
    assert_int_equal(fedge_edge_control_check(v, 3, 5.0f, &m), FEDGE_OK);
    assert_true(m == 5.0f);
    assert_int_equal(fedge_edge_control_check(v, 3, 4.9f, &m), FEDGE_ERR_CONTROL_RANGE);
    v[0] = 0.0f / 0.0f;
    assert_int_equal(fedge_edge_control_check(v, 3, 3e38f, &m), FEDGE_ERR_CONTROL_RANGE);
    assert_true(isinf(m));
}

/* c_i+ pending: info gives its run and counter; settle(1) makes it the
 * committed c_i, settle(0) drops it and keeps c_i. */
static void test_pending_settle(void **state)
{
    fixture *fx = *state;
    fedge_model ci, got;
    memset(&got, 0, sizeof got);
    assert_int_equal(fedge_model_init(&ci, &fx->spec), FEDGE_OK);
    ci.params[0] = 1.5f;
    assert_int_equal(fedge_edge_control_commit(fx->path, RUN, &ci), FEDGE_OK);
    uint8_t run[FEDGE_CONTROL_RUN_ID_LEN];
    uint64_t counter = 0;
    assert_int_equal(fedge_edge_control_pending_info(fx->path, run, &counter), FEDGE_ERR_NOT_FOUND);
    assert_int_equal(fedge_edge_control_settle(fx->path, 1), FEDGE_OK); /* none: nothing */

    ci.params[0] = 2.5f;
    assert_int_equal(fedge_edge_control_write_pending(fx->path, RUN, 77, &ci), FEDGE_OK);
    assert_int_equal(fedge_edge_control_pending_info(fx->path, run, &counter), FEDGE_OK);
    assert_memory_equal(run, RUN, sizeof run);
    assert_int_equal(counter, 77);
    fedge_control_status st;
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &got, &st, NULL), FEDGE_OK);
    assert_true(got.params[0] == 1.5f); /* pending is not c_i */
    assert_int_equal(fedge_edge_control_settle(fx->path, 0), FEDGE_OK);
    assert_int_equal(dir_entries(fx->dir), 1);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &got, &st, NULL), FEDGE_OK);
    assert_true(got.params[0] == 1.5f);

    assert_int_equal(fedge_edge_control_write_pending(fx->path, RUN, 78, &ci), FEDGE_OK);
    assert_int_equal(fedge_edge_control_settle(fx->path, 1), FEDGE_OK);
    assert_int_equal(dir_entries(fx->dir), 1);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, RUN, 0.0f, &got, &st, NULL), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_LOADED);
    assert_true(got.params[0] == 2.5f);
    fedge_model_free(&got);
    fedge_model_free(&ci);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_commit_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_and_foreign, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_binding_and_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_settle, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
