/* The aggregator's configuration: defaults, a config file, overrides, and a
 * clear error naming where the value came from (file:line and key, or the
 * command-line option) for every kind of bad input: unknown key, duplicate
 * key, syntax, trailing garbage, out of range, overflow, empty, bad
 * host:port, bad enumeration, missing paths, inconsistent settings. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "combine.h"
#include "config.h"
#include "log.h"

static char g_dir[64];
static char g_path[128]; /* the config file */
static char g_keys[128]; /* an existing keys file */

static void write_to(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void write_file(const char *text) { write_to(g_path, text); }

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/fedge-conf-XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    snprintf(g_path, sizeof g_path, "%s/agg.conf", g_dir);
    snprintf(g_keys, sizeof g_keys, "%s/keys", g_dir);
    write_to(g_keys, "dev-1 eu 00\n");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static void test_defaults_and_file(void **state)
{
    (void)state;
    fedge_agg_config c;
    char err[512] = "", text[512];
    fedge_agg_config_defaults(&c);
    assert_string_equal(c.listen, "127.0.0.1:5684");
    assert_int_equal(c.rounds, 0);
    assert_true(c.quorum == 1.0);
    assert_int_equal(c.allow_unsigned, 0);
    assert_string_equal(c.model_spec, "mlp:784-200-10");
    snprintf(text, sizeof text,
             "# comment\n\n  rounds = 20\nlisten=0.0.0.0:6000\nquorum = 0.5 \ninsecure = yes\n"
             "keys_file = %s\ndb = %s/fedge.db\nlog_level = warn\nallow_unsigned = true\n",
             g_keys, g_dir);
    write_file(text);
    assert_int_equal(fedge_agg_config_load_file(&c, g_path, err, sizeof err), FEDGE_OK);
    assert_int_equal(c.rounds, 20);
    assert_string_equal(c.listen, "0.0.0.0:6000");
    assert_true(c.quorum == 0.5);
    assert_int_equal(c.insecure, 1);
    assert_int_equal(c.allow_unsigned, 1);
    /* the command line overrides the file */
    assert_int_equal(fedge_agg_config_set(&c, "rounds", "3", err, sizeof err), FEDGE_OK);
    assert_int_equal(c.rounds, 3);
    assert_int_equal(fedge_agg_config_set(&c, "listen", "[::1]:65535", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_OK);
    assert_true(fedge_agg_config_is_flag("insecure"));
    assert_true(fedge_agg_config_is_flag("allow_unsigned"));
    assert_false(fedge_agg_config_is_flag("rounds"));
}

typedef struct {
    const char *text;
    int code;
    const char *needle; /* must appear after "PATH" in the message */
} bad_case;

static void test_bad_files(void **state)
{
    (void)state;
    static const bad_case cases[] = {
        /* unknown key, syntax */
        {"rounds = 20\nround = 3\n", FEDGE_ERR_CONFIG_UNKNOWN_KEY, ":2: unknown key 'round'"},
        {"rounds 20\n", FEDGE_ERR_CONFIG_SYNTAX, ":1: expected 'key = value'"},
        /* duplicate key */
        {"rounds = 3\nquorum = 0.5\nrounds = 4\n", FEDGE_ERR_CONFIG_SYNTAX, ":3: rounds: given twice (first at line 1)"},
        {"listen = 127.0.0.1:6000\n\nlisten = 127.0.0.1:6000\n", FEDGE_ERR_CONFIG_SYNTAX, ":3: listen: given twice"},
        /* not a number, trailing garbage */
        {"rounds = twenty\n", FEDGE_ERR_CONFIG_VALUE, ":1: rounds: expected an integer"},
        {"rounds = 20 # twenty\n", FEDGE_ERR_CONFIG_VALUE, ":1: rounds: expected an integer"},
        {"\nround_timeout_s = 3s\n", FEDGE_ERR_CONFIG_VALUE, ":2: round_timeout_s: expected a number"},
        {"rounds = 2.5\n", FEDGE_ERR_CONFIG_VALUE, ":1: rounds: expected an integer"},
        {"lr = 0x1p-3\n", FEDGE_ERR_CONFIG_VALUE, ":1: lr: expected a number"},
        {"insecure = yes please\n", FEDGE_ERR_CONFIG_VALUE, ":1: insecure: expected true or false"},
        {"insecure = maybe\n", FEDGE_ERR_CONFIG_VALUE, ":1: insecure: expected true or false"},
        /* out of range */
        {"rounds = -1\n", FEDGE_ERR_CONFIG_VALUE, ":1: rounds: '-1' is out of range"},
        {"quorum = 0\n", FEDGE_ERR_CONFIG_VALUE, ":1: quorum: '0' is out of range"},
        {"quorum = 1.5\n", FEDGE_ERR_CONFIG_VALUE, ":1: quorum: '1.5' is out of range"},
        {"batch = 0\n", FEDGE_ERR_CONFIG_VALUE, ":1: batch: '0' is out of range"},
        {"quorum = nan\n", FEDGE_ERR_CONFIG_VALUE, ":1: quorum: expected a number"},
        {"lr = inf\n", FEDGE_ERR_CONFIG_VALUE, ":1: lr: expected a number"},
        /* overflow */
        {"rounds = 99999999999999999999\n", FEDGE_ERR_CONFIG_VALUE, ":1: rounds: '99999999999999999999' is out of range"},
        {"seed = 9223372036854775808\n", FEDGE_ERR_CONFIG_VALUE, ":1: seed: '9223372036854775808' is out of range"},
        {"lr = 1e400\n", FEDGE_ERR_CONFIG_VALUE, ":1: lr: '1e400' is out of range"},
        /* empty */
        {"rounds =\n", FEDGE_ERR_CONFIG_VALUE, ":1: rounds: empty value"},
        {"quorum = \n", FEDGE_ERR_CONFIG_VALUE, ":1: quorum: empty value"},
        {"db =\n", FEDGE_ERR_CONFIG_VALUE, ":1: db: must not be empty"},
        {"insecure =\n", FEDGE_ERR_CONFIG_VALUE, ":1: insecure: expected true or false"},
        {"listen =\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: expected HOST:PORT"},
        /* host:port */
        {"listen = 127.0.0.1:99999\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: port '99999' is not a number in 1..65535"},
        {"listen = 127.0.0.1:65536\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: port '65536'"},
        {"listen = 127.0.0.1:0\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: port '0'"},
        {"listen = 127.0.0.1:-5\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: port '-5'"},
        {"listen = 127.0.0.1:5684x\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: port '5684x'"},
        {"listen = 127.0.0.1:\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: port ''"},
        {"listen = 127.0.0.1\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: expected HOST:PORT"},
        {"listen = 256.0.0.1:5684\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: host '256.0.0.1'"},
        {"listen = localhost:5684\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: host 'localhost' is not a numeric"},
        {"listen = ::1:5684\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: an IPv6 host goes in brackets"},
        {"listen = [::1:5684\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: an IPv6 host goes in brackets"},
        {"listen = [127.0.0.1]:5684\n", FEDGE_ERR_CONFIG_VALUE, ":1: listen: host '127.0.0.1'"},
        /* enumerations and structured values */
        {"log_level = verbose\n", FEDGE_ERR_CONFIG_VALUE, ":1: log_level: expected debug|info|warn|error"},
        {"model_spec = mlp:784\n", FEDGE_ERR_CONFIG_VALUE, ":1: model_spec: cannot parse 'mlp:784'"},
        /* raw control bytes in a value */
        {"db = a\033[2Jb\n", FEDGE_ERR_CONFIG_VALUE, ":1: db: control character"},
    };
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(cases); i++) {
        fedge_agg_config c, before;
        char err[512] = "", want[256];
        fedge_agg_config_defaults(&c);
        write_file(cases[i].text);
        snprintf(want, sizeof want, "%s%s", g_path, cases[i].needle);
        int ret = fedge_agg_config_load_file(&c, g_path, err, sizeof err);
        if (ret != cases[i].code || !strstr(err, want))
            fail_msg("case %zu (%s): got %d '%s', want %d '%s'", i, cases[i].text, ret, err, cases[i].code, want);
        /* all or nothing: a bad file changes no setting, not even its good lines */
        fedge_agg_config_defaults(&before);
        assert_int_equal(c.rounds, before.rounds);
        assert_true(c.quorum == before.quorum);
        assert_string_equal(c.listen, before.listen);
        assert_string_equal(c.config_file, "");
    }
    /* the longest specs the grammar takes fit the config (and GET /round) */
    {
        static const char longest[] = "cnn:1x28000x280-c1k1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-100";
        char text[400];
        fedge_agg_config c;
        char err[512] = "";
        snprintf(text, sizeof text, "model_spec = %s\n", longest);
        write_file(text);
        fedge_agg_config_defaults(&c);
        assert_int_equal(fedge_agg_config_load_file(&c, g_path, err, sizeof err), FEDGE_OK);
        assert_string_equal(c.model_spec, longest);
    }
    char big[3000];
    memset(big, 'x', sizeof big - 2);
    big[sizeof big - 2] = '\n';
    big[sizeof big - 1] = '\0';
    write_file(big);
    fedge_agg_config c;
    char err[512] = "";
    fedge_agg_config_defaults(&c);
    assert_int_equal(fedge_agg_config_load_file(&c, g_path, err, sizeof err), FEDGE_ERR_CONFIG_SYNTAX);
    assert_non_null(strstr(err, ":1: line too long"));
    assert_int_equal(fedge_agg_config_load_file(&c, "/nonexistent/fedge.conf", err, sizeof err), FEDGE_ERR_IO);
    assert_non_null(strstr(err, "/nonexistent/fedge.conf"));
}

/* Command-line errors name the option as typed on the command line. */
static void test_command_line(void **state)
{
    (void)state;
    static const struct {
        const char *key, *value, *needle;
        int code;
    } cases[] = {
        {"listen", "127.0.0.1:99999", "--listen: port '99999'", FEDGE_ERR_CONFIG_VALUE},
        {"round_timeout_s", "3s", "--round-timeout-s: expected a number", FEDGE_ERR_CONFIG_VALUE},
        {"rounds", "", "--rounds: empty value", FEDGE_ERR_CONFIG_VALUE},
        {"min_updates", "0", "--min-updates: '0' is out of range", FEDGE_ERR_CONFIG_VALUE},
        {"clients_per_round", "18446744073709551616", "--clients-per-round: '18446744073709551616' is out of range", FEDGE_ERR_CONFIG_VALUE},
        {"log_level", "loud", "--log-level: expected debug|info|warn|error", FEDGE_ERR_CONFIG_VALUE},
        {"model_dir", "", "--model-dir: must not be empty", FEDGE_ERR_CONFIG_VALUE},
        {"no_such_key", "1", "unknown option '--no-such-key'", FEDGE_ERR_CONFIG_UNKNOWN_KEY},
    };
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(cases); i++) {
        fedge_agg_config c;
        char err[512] = "";
        fedge_agg_config_defaults(&c);
        int ret = fedge_agg_config_set(&c, cases[i].key, cases[i].value, err, sizeof err);
        if (ret != cases[i].code || !strstr(err, cases[i].needle))
            fail_msg("case %zu: got %d '%s', want '%s'", i, ret, err, cases[i].needle);
    }
    struct sockaddr_storage ss;
    socklen_t len;
    char why[160];
    assert_int_equal(fedge_agg_parse_listen("[::1]:5683", &ss, &len, why, sizeof why), FEDGE_OK);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 5683);
    assert_int_equal(fedge_agg_parse_listen("0.0.0.0:1", &ss, &len, why, sizeof why), FEDGE_OK);
    assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 1);
}

/* A program's own options for fedge_agg_config_from_args: --own VALUE and
 * the flag --quiet. */
typedef struct {
    char own[32];
    int quiet;
} own_opts;

static int own_is_flag(void *ctx, const char *key)
{
    (void)ctx;
    return !strcmp(key, "quiet");
}

static int own_take(void *ctx, const char *key, const char *value, int *took, char *err, size_t errlen)
{
    own_opts *o = ctx;
    *took = 1;
    if (!strcmp(key, "quiet"))
        o->quiet = 1;
    else if (!strcmp(key, "own") && strlen(value) < sizeof o->own)
        snprintf(o->own, sizeof o->own, "%s", value);
    else if (!strcmp(key, "own")) {
        snprintf(err, errlen, "--own: too long");
        return FEDGE_ERR_CONFIG_VALUE;
    } else
        *took = 0;
    return FEDGE_OK;
}

/* The command line: the config file first wherever --config stands, then
 * the overrides in order; flags, --key=value, and each kind of mistake. */
static void test_from_args(void **state)
{
    (void)state;
    write_file("rounds = 7\nlr = 0.5\nseed = 3\n");
    fedge_agg_config c;
    char err[512] = "";
    char *argv1[] = {"prog", "--rounds", "9", "--config", g_path, "--server-lr=0.25", "--scaffold",
                     "--no-observe", NULL};
    fedge_agg_config_defaults(&c);
    assert_false(c.no_observe);
    assert_int_equal(fedge_agg_config_from_args(&c, 8, argv1, NULL, err, sizeof err), FEDGE_OK);
    assert_int_equal(c.rounds, 9);    /* the command line overrides the file */
    assert_true(c.lr == 0.5 && c.seed == 3 && c.server_lr == 0.25 && c.scaffold == 1);
    assert_true(c.no_observe);

    own_opts o = {"", 0};
    fedge_agg_args_extra extra = {.is_flag = own_is_flag, .take = own_take, .ctx = &o};
    char *argv2[] = {"prog", "--own", "x-y", "--quiet", "--rounds", "4", NULL};
    fedge_agg_config_defaults(&c);
    assert_int_equal(fedge_agg_config_from_args(&c, 6, argv2, &extra, err, sizeof err), FEDGE_OK);
    assert_string_equal(o.own, "x-y");
    assert_true(o.quiet == 1 && c.rounds == 4);

    static const struct {
        int argc;
        const char *argv[5];
        int with_extra, code;
        const char *needle;
    } bad[] = {
        {2, {"prog", "positional"}, 0, FEDGE_ERR_CONFIG_UNKNOWN_KEY, "unexpected argument 'positional'"},
        {2, {"prog", "--no-such"}, 0, FEDGE_ERR_CONFIG_UNKNOWN_KEY, "unknown option '--no-such'"},
        {3, {"prog", "--no-such", "1"}, 1, FEDGE_ERR_CONFIG_UNKNOWN_KEY, "unknown option '--no-such'"},
        {2, {"prog", "--rounds"}, 0, FEDGE_ERR_CONFIG_VALUE, "--rounds needs a value"},
        {2, {"prog", "--quiet=1"}, 1, FEDGE_ERR_CONFIG_VALUE, "--quiet takes no value"},
        {2, {"prog", "--config"}, 0, FEDGE_ERR_CONFIG_VALUE, "--config: needs one file"},
        {3, {"prog", "--own", "0123456789012345678901234567890123"}, 1, FEDGE_ERR_CONFIG_VALUE, "--own: too long"},
        {2, {"prog", "--"}, 0, FEDGE_ERR_CONFIG_UNKNOWN_KEY, "unknown option '--'"},
    };
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(bad); i++) {
        fedge_agg_config_defaults(&c);
        err[0] = '\0';
        int ret = fedge_agg_config_from_args(&c, bad[i].argc, (char **)bad[i].argv, bad[i].with_extra ? &extra : NULL,
                                             err, sizeof err);
        if (ret != bad[i].code || !strstr(err, bad[i].needle))
            fail_msg("bad case %zu: got %d '%s', want '%s'", i, ret, err, bad[i].needle);
    }
    char *twice[] = {"prog", "--config", g_path, "--config", g_path, NULL};
    fedge_agg_config_defaults(&c);
    assert_int_equal(fedge_agg_config_from_args(&c, 5, twice, NULL, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "given once"));
}

/* validate(): file-system and cross-field checks, naming each value's origin. */
static void expect_invalid(const fedge_agg_config *c, const char *needle)
{
    char err[1024] = "";
    int ret = fedge_agg_config_validate(c, err, sizeof err);
    if (ret != FEDGE_ERR_CONFIG_VALUE || !strstr(err, needle))
        fail_msg("validate: got %d '%s', want '%s'", ret, err, needle);
}

static void test_validate(void **state)
{
    (void)state;
    fedge_agg_config c;
    char err[1024] = "", text[1024], want[256];
    fedge_agg_config_defaults(&c);
    expect_invalid(&c, "keys_file is required");

    /* a path that must exist, from the file: file:line and key */
    snprintf(text, sizeof text, "rounds = 2\nkeys_file = %s/no-keys\n", g_dir);
    write_file(text);
    assert_int_equal(fedge_agg_config_load_file(&c, g_path, err, sizeof err), FEDGE_OK);
    snprintf(want, sizeof want, "%s:2: keys_file: %s/no-keys: No such file", g_path, g_dir);
    expect_invalid(&c, want);
    /* the same from the command line names the option */
    assert_int_equal(fedge_agg_config_set(&c, "keys_file", "/nonexistent/keys", err, sizeof err), FEDGE_OK);
    expect_invalid(&c, "--keys-file: /nonexistent/keys: No such file");
    assert_int_equal(fedge_agg_config_set(&c, "keys_file", g_dir, err, sizeof err), FEDGE_OK);
    expect_invalid(&c, "is not a regular file");
    assert_int_equal(fedge_agg_config_set(&c, "keys_file", g_keys, err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_OK);

    /* the database's folder must exist; the database itself need not */
    assert_int_equal(fedge_agg_config_set(&c, "db", "/nonexistent/dir/fedge.db", err, sizeof err), FEDGE_OK);
    expect_invalid(&c, "--db: /nonexistent/dir: No such file");
    assert_int_equal(fedge_agg_config_set(&c, "db", g_dir, err, sizeof err), FEDGE_OK);
    expect_invalid(&c, "is a folder");
    snprintf(text, sizeof text, "%s/new.db", g_dir);
    assert_int_equal(fedge_agg_config_set(&c, "db", text, err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_OK);

    /* optional files, when given, must exist */
    static const char *const optional[] = {"init_model", "policy_file", "signing_key", "test_data"};
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(optional); i++) {
        fedge_agg_config d = c;
        char dashed[64];
        snprintf(dashed, sizeof dashed, "--%s: /nonexistent/x", optional[i]);
        for (char *p = dashed + 2; *p != ':'; p++)
            if (*p == '_')
                *p = '-';
        assert_int_equal(fedge_agg_config_set(&d, optional[i], "/nonexistent/x", err, sizeof err), FEDGE_OK);
        expect_invalid(&d, dashed);
    }
    {
        fedge_agg_config d = c;
        snprintf(text, sizeof text, "%s/no-such-dir/agg.log", g_dir);
        assert_int_equal(fedge_agg_config_set(&d, "log_file", text, err, sizeof err), FEDGE_OK);
        expect_invalid(&d, "--log-file:");
        d = c;
        assert_int_equal(fedge_agg_config_set(&d, "model_dir", g_keys, err, sizeof err), FEDGE_OK);
        expect_invalid(&d, "--model-dir: ");
        d = c;
        assert_int_equal(fedge_agg_config_set(&d, "model_dir", "/nonexistent/a/models", err, sizeof err), FEDGE_OK);
        expect_invalid(&d, "--model-dir: /nonexistent/a");
    }

    /* cross-field rules name both places */
    snprintf(text, sizeof text, "keys_file = %s\nrefine_every = 2\n", g_keys);
    write_file(text);
    fedge_agg_config_defaults(&c);
    assert_int_equal(fedge_agg_config_load_file(&c, g_path, err, sizeof err), FEDGE_OK);
    snprintf(want, sizeof want, "%s:2: refine_every = 2 needs refine_command", g_path);
    expect_invalid(&c, want);
    assert_int_equal(fedge_agg_config_set(&c, "refine_command", "true", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_set(&c, "clients_per_round", "2", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_set(&c, "min_updates", "3", err, sizeof err), FEDGE_OK);
    expect_invalid(&c, "--min-updates = 3 is more than --clients-per-round = 2");

    /* a value put straight into the struct is checked too */
    fedge_agg_config_defaults(&c);
    assert_int_equal(fedge_agg_config_set(&c, "keys_file", g_keys, err, sizeof err), FEDGE_OK);
    snprintf(c.listen, sizeof c.listen, "127.0.0.1:99999");
    expect_invalid(&c, "listen: port '99999'");

    char longv[2000];
    memset(longv, 'a', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    assert_int_equal(fedge_agg_config_set(&c, "db", longv, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "--db: value longer than"));
    assert_true(fedge_agg_config_is_key("round_timeout_s"));
    assert_false(fedge_agg_config_is_key("round_timeout"));
}

/* The strategy keys: defaults, a file setting every one, each range and
 * enumeration, and what needs several of them. */
static void test_strategy_keys(void **state)
{
    (void)state;
    fedge_agg_config c;
    char err[512];
    fedge_agg_config_defaults(&c);
    assert_string_equal(c.aggregation, "mean");
    assert_string_equal(c.server_optimizer, "sgd");
    assert_true(c.trim_beta == 0.1 && c.byzantine_f == 1 && c.multikrum_m == 0 && c.aggregation_block == 65536);
    assert_true(c.server_momentum == 0.9 && c.server_beta1 == 0.9 && c.server_beta2 == 0.99 && c.server_tau == 1e-3);
    assert_true(c.fedprox_mu == 0 && c.scaffold == 0);
    char text[1024];
    snprintf(text, sizeof text,
             "keys_file = %s\naggregation = mean\ntrim_beta = 0.2\nbyzantine_f = 2\nmultikrum_m = 3\n"
             "aggregation_block = 1000\nserver_optimizer = yogi\nserver_momentum = 0.5\nserver_beta1 = 0.8\n"
             "server_beta2 = 0.95\nserver_tau = 0.01\nfedprox_mu = 0.1\nscaffold = true\n", g_keys);
    write_file(text);
    assert_int_equal(fedge_agg_config_load_file(&c, g_path, err, sizeof err), FEDGE_OK);
    assert_string_equal(c.server_optimizer, "yogi");
    assert_true(c.trim_beta == 0.2 && c.byzantine_f == 2 && c.multikrum_m == 3 && c.aggregation_block == 1000);
    assert_true(c.server_momentum == 0.5 && c.server_beta1 == 0.8 && c.server_beta2 == 0.95 && c.server_tau == 0.01);
    assert_true(c.fedprox_mu == 0.1 && c.scaffold == 1);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_OK);
    assert_true(fedge_agg_config_is_flag("scaffold"));

    assert_int_equal(fedge_agg_config_set(&c, "aggregation", "average", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "--aggregation: expected one of mean"));
    assert_int_equal(fedge_agg_config_set(&c, "server_optimizer", "lamb", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "sgd|momentum|adam|yogi|adagrad"));
    assert_int_equal(fedge_agg_config_set(&c, "trim_beta", "0.6", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_int_equal(fedge_agg_config_set(&c, "byzantine_f", "-1", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_int_equal(fedge_agg_config_set(&c, "aggregation_block", "0", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_int_equal(fedge_agg_config_set(&c, "fedprox_mu", "-0.1", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    /* what the edge refuses (round_info.h) is refused at start */
    assert_int_equal(fedge_agg_config_set(&c, "fedprox_mu", "5000", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_int_equal(fedge_agg_config_set(&c, "fedprox_mu", "1000", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_set(&c, "fedprox_mu", "0.1", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_set(&c, "server_tau", "0", err, sizeof err), FEDGE_ERR_CONFIG_VALUE);

    /* the open ends of [0, 0.5) and [0, 1) */
    assert_int_equal(fedge_agg_config_set(&c, "trim_beta", "0.5", err, sizeof err), FEDGE_OK);
    expect_invalid(&c, "--trim-beta = 0.5: must be below 0.5");
    assert_int_equal(fedge_agg_config_set(&c, "trim_beta", "0.49", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_set(&c, "server_beta2", "1", err, sizeof err), FEDGE_OK);
    expect_invalid(&c, "--server-beta2: must be below 1");
    assert_int_equal(fedge_agg_config_set(&c, "server_beta2", "0.99", err, sizeof err), FEDGE_OK);
    /* SCAFFOLD corrects a mean */
    c.aggregation[0] = '\0';
    assert_int_equal(fedge_agg_config_set(&c, "aggregation", "mean", err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_agg_config_validate(&c, err, sizeof err), FEDGE_OK);
    snprintf(c.aggregation, sizeof c.aggregation, "median");
    int ret = fedge_agg_config_validate(&c, err, sizeof err);
    if (fedge_combiner_find("median")) {
        assert_int_equal(ret, FEDGE_ERR_CONFIG_VALUE);
        assert_non_null(strstr(err, "needs aggregation = mean"));
    } else { /* without robust's combiners the name itself is refused */
        assert_int_equal(ret, FEDGE_ERR_CONFIG_VALUE);
        assert_non_null(strstr(err, "aggregation"));
    }
}

/* Robust keys set for a rule that does not read them: one warning line
 * each, and the config still validates. */
static void test_unused_strategy_keys_warn(void **state)
{
    (void)state;
    fedge_agg_config c;
    char err[512], text[1024];
    fedge_agg_config_defaults(&c);
    snprintf(c.keys_file, sizeof c.keys_file, "%s", g_keys);
    c.byzantine_f = 2;
    c.multikrum_m = 3;
    c.trim_beta = 0.2;
    FILE *f = tmpfile();
    assert_non_null(f);
    fedge_log_set_level(FEDGE_LOG_WARN);
    fedge_log_set_stream(f);
    int ret = fedge_agg_config_validate(&c, err, sizeof err);
    fedge_log_set_stream(stderr);
    assert_int_equal(ret, FEDGE_OK);
    rewind(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    assert_non_null(strstr(text, "byzantine_f = 2 has no effect with aggregation = mean"));
    assert_non_null(strstr(text, "multikrum_m = 3 has no effect"));
    assert_non_null(strstr(text, "trim_beta = 0.2 has no effect"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults_and_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_from_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_validate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_strategy_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unused_strategy_keys_warn, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
