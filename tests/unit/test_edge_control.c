/* The SCAFFOLD client control variate file: absent -> zeros, a committed
 * c_i read back bit for bit, a corrupt, truncated or foreign-spec file ->
 * zeros with its reason (never a refusal that would stop the edge), and a
 * commit that replaces the file atomically (no temporary left behind). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "control.h"
#include "fileio.h"
#include "modelfile.h"

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
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_NEW);
    assert_int_equal(why, FEDGE_OK);
    assert_zeros(&ci, &fx->spec);
    for (size_t i = 0; i < ci.n_params; i++)
        ci.params[i] = 0.25f * (float)i - 1.0f / 3.0f;
    assert_int_equal(fedge_edge_control_commit(fx->path, &ci), FEDGE_OK);
    assert_int_equal(dir_entries(fx->dir), 1); /* no temporary file left */
    struct stat sb;
    assert_int_equal(stat(fx->path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600); /* c_i tells about the local data */

    fedge_model again;
    memset(&again, 0, sizeof again);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, &again, &st, NULL), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_LOADED);
    assert_memory_equal(again.params, ci.params, ci.n_params * sizeof(float));
    /* Loading into a model that holds last round's c_i frees that one first
     * (ASan/valgrind see no leak) and gives the file's bits again. */
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, &again, &st, NULL), FEDGE_OK);
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
    assert_int_equal(fedge_edge_control_commit(fx->path, &ci), FEDGE_OK);

    uint8_t *body;
    size_t len;
    assert_int_equal(fedge_model_serialize(&ci, &body, &len, NULL), FEDGE_OK);
    fedge_control_status st;
    int why;

    /* one flipped parameter byte: checksum */
    body[len - 40] ^= 0x01;
    assert_int_equal(fedge_write_file_atomic(fx->path, body, len, 0644, 0), FEDGE_OK);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_CORRUPT);
    assert_int_equal(why, FEDGE_ERR_MODEL_FILE_CHECKSUM);
    assert_zeros(&ci, &fx->spec);
    body[len - 40] ^= 0x01;

    /* truncated */
    assert_int_equal(fedge_write_file_atomic(fx->path, body, len - 7, 0644, 0), FEDGE_OK);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_CORRUPT);
    assert_int_equal(why, FEDGE_ERR_MODEL_FILE_TRUNCATED);
    assert_zeros(&ci, &fx->spec);

    /* not a model file at all */
    assert_int_equal(fedge_write_file_atomic(fx->path, "12345\n", 6, 0644, 0), FEDGE_OK);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, &ci, &st, &why), FEDGE_OK);
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
    assert_int_equal(fedge_edge_control_commit(fx->path, &o), FEDGE_OK);
    fedge_model_free(&o);
    assert_int_equal(fedge_edge_control_load(fx->path, &fx->spec, &ci, &st, &why), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_OTHER_SPEC);
    assert_int_equal(why, FEDGE_OK);
    assert_zeros(&ci, &fx->spec);
    assert_int_equal(ci.spec.n_params, fx->spec.n_params);

    /* A non-finite c_i is refused by the commit and the file stays. */
    ci.params[1] = 1.0f / 0.0f;
    assert_int_equal(fedge_edge_control_commit(fx->path, &ci), FEDGE_ERR_MODEL_NONFINITE);
    assert_int_equal(fedge_edge_control_load(fx->path, &other, &ci, &st, NULL), FEDGE_OK);
    assert_int_equal(st, FEDGE_CONTROL_LOADED);
    assert_true(ci.params[0] == 5.0f);
    fedge_model_free(&ci);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_commit_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_and_foreign, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
