/* The aggregator's configuration: defaults, a config file, overrides, and a
 * clear error naming file, line and key for every bad input. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "config.h"

static char g_path[64];

static void write_file(const char *text)
{
    FILE *f = fopen(g_path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_path, sizeof g_path, "/tmp/fedge-conf-XXXXXX");
    int fd = mkstemp(g_path);
    assert_true(fd >= 0);
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(g_path);
    return 0;
}

static void test_defaults_and_file(void **state)
{
    (void)state;
    fedge_agg_config c;
    char err[256] = "";
    fedge_agg_config_defaults(&c);
    assert_string_equal(c.listen, "127.0.0.1:5684");
    assert_int_equal(c.rounds, 0);
    assert_true(c.quorum == 1.0);
    assert_string_equal(c.model_spec, "mlp:784-200-10");
    write_file("# comment\n\n  rounds = 20\nlisten=0.0.0.0:6000\nquorum = 0.5 \ninsecure = yes\n"
               "keys_file = /etc/fedge/keys\n");
    assert_int_equal(fedge_agg_config_load_file(&c, g_path, err, sizeof err), FEDGE_OK);
    assert_int_equal(c.rounds, 20);
    assert_string_equal(c.listen, "0.0.0.0:6000");
    assert_true(c.quorum == 0.5);
    assert_int_equal(c.insecure, 1);
    /* the command line overrides the file */
    assert_int_equal(fedge_agg_config_set(&c, "rounds", "3", err, sizeof err), FEDGE_OK);
    assert_int_equal(c.rounds, 3);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_OK);
}

typedef struct {
    const char *text;
    int code;
    const char *needle;
} bad_case;

static void test_bad_files(void **state)
{
    (void)state;
    static const bad_case cases[] = {
        {"rounds = 20\nround = 3\n", FEDGE_ERR_CONFIG_UNKNOWN_KEY, ":2: unknown key 'round'"},
        {"rounds 20\n", FEDGE_ERR_CONFIG_SYNTAX, ":1: expected 'key = value'"},
        {"rounds = twenty\n", FEDGE_ERR_CONFIG_VALUE, ":1: rounds: expected an integer"},
        {"rounds = -1\n", FEDGE_ERR_CONFIG_VALUE, "rounds: expected an integer in [0,"},
        {"rounds = 2.5\n", FEDGE_ERR_CONFIG_VALUE, "rounds"},
        {"quorum = 0\n", FEDGE_ERR_CONFIG_VALUE, "quorum: expected a number in"},
        {"quorum = nan\n", FEDGE_ERR_CONFIG_VALUE, "quorum"},
        {"lr = 1e400\n", FEDGE_ERR_CONFIG_VALUE, "lr"},
        {"insecure = maybe\n", FEDGE_ERR_CONFIG_VALUE, "insecure: expected true or false"},
    };
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(cases); i++) {
        fedge_agg_config c, before;
        char err[256] = "";
        fedge_agg_config_defaults(&c);
        write_file(cases[i].text);
        int ret = fedge_agg_config_load_file(&c, g_path, err, sizeof err);
        if (ret != cases[i].code || !strstr(err, cases[i].needle) || !strstr(err, g_path))
            fail_msg("case %zu: got %d '%s'", i, ret, err);
        /* all or nothing: a bad file changes no setting, not even its good lines */
        fedge_agg_config_defaults(&before);
        assert_int_equal(c.rounds, before.rounds);
        assert_true(c.quorum == before.quorum);
    }
    char big[3000];
    memset(big, 'x', sizeof big - 2);
    big[sizeof big - 2] = '\n';
    big[sizeof big - 1] = '\0';
    write_file(big);
    fedge_agg_config c;
    char err[256] = "";
    fedge_agg_config_defaults(&c);
    assert_int_equal(fedge_agg_config_load_file(&c, g_path, err, sizeof err), FEDGE_ERR_CONFIG_SYNTAX);
    assert_non_null(strstr(err, "line too long"));
    assert_int_equal(fedge_agg_config_load_file(&c, "/nonexistent/fedge.conf", err, sizeof err), FEDGE_ERR_IO);
}

static void test_validate(void **state)
{
    (void)state;
    fedge_agg_config c;
    char err[256] = "";
    fedge_agg_config_defaults(&c);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "keys_file is required"));
    assert_int_equal(fedge_agg_config_set(&c, "keys_file", "k", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_set(&c, "model_spec", "mlp:784", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "model_spec"));
    assert_int_equal(fedge_agg_config_set(&c, "model_spec", "softmax:784-10", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_set(&c, "refine_every", "2", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "refine_command"));
    assert_int_equal(fedge_agg_config_set(&c, "refine_command", "true", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_set(&c, "listen", "localhost", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "HOST:PORT"));
    char longv[2000];
    memset(longv, 'a', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    assert_int_equal(fedge_agg_config_set(&c, "db", longv, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "longer than"));
    assert_true(fedge_agg_config_is_key("round_timeout_s"));
    assert_false(fedge_agg_config_is_key("round_timeout"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults_and_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_validate, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
