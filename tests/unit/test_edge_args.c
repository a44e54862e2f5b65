/* fedge-edge's command line: defaults, every flag in both spellings, the
 * port default that follows --insecure in any order, server address forms,
 * and a clear, distinct error for each kind of bad flag. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "args.h"
#include "common.h"

#define BASE "--id", "dev-1", "--keys", "/k", "--shard", "/s"

static int parse_v(fedge_edge_config *cfg, char *err, size_t errlen, int argc, char **argv)
{
    memset(err, 0, errlen);
    return fedge_edge_args_parse(argc, argv, cfg, err, errlen);
}

/* parse_list(cfg, err, "--flag", "value", ..., NULL) */
static int parse_list(fedge_edge_config *cfg, char *err, ...)
{
    char *argv[40] = {"fedge-edge"};
    int argc = 1;
    va_list ap;
    va_start(ap, err);
    for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 40;)
        argv[argc++] = a;
    va_end(ap);
    return parse_v(cfg, err, 200, argc, argv);
}

#define PARSE(cfg, err, ...) parse_list(cfg, err, __VA_ARGS__, (char *)NULL)

static void test_defaults(void **state)
{
    (void)state;
    fedge_edge_config cfg;
    char err[200];
    assert_int_equal(PARSE(&cfg, err, BASE), FEDGE_OK);
    assert_string_equal(cfg.host, "127.0.0.1");
    assert_int_equal(cfg.port, 5684);
    assert_string_equal(cfg.id, "dev-1");
    assert_string_equal(cfg.keys_path, "/k");
    assert_string_equal(cfg.shard_path, "/s");
    assert_null(cfg.state_dir);
    assert_int_equal(cfg.encoding, FEDGE_ENC_FP32);
    assert_false(cfg.stochastic);
    assert_int_equal(cfg.poll_ms, 500);
    assert_int_equal(cfg.timeout_ms, 5000);
    assert_int_equal(cfg.max_retries, 8);
    assert_false(cfg.insecure);
    assert_int_equal(cfg.log_level, FEDGE_LOG_INFO);
    assert_true(cfg.exit_when_finished);
    assert_int_equal(cfg.max_rounds, 0);
    assert_false(cfg.print_memory);
    assert_int_equal(cfg.max_memory_mb, 256);
    assert_false(cfg.help);
    assert_false(cfg.no_observe);
}

static void test_every_flag(void **state)
{
    (void)state;
    fedge_edge_config cfg;
    char err[200];
    assert_int_equal(PARSE(&cfg, err, "--server", "agg.example:7000", "--id=gw-7.eu_1",
                           "--keys=/etc/fedge/keys", "--shard", "/data/shard.bin",
                           "--encoding", "int8", "--stochastic", "--seed",
                           "18446744073709551615", "--poll-ms=250", "--timeout-ms", "800",
                           "--max-retries", "-1", "--log-level", "debug", "--state-dir",
                           "/var/lib/fedge", "--no-exit-when-finished", "--max-rounds", "3",
                           "--print-memory", "--max-memory-mb=48", "--no-observe"),
                     FEDGE_OK);
    assert_string_equal(cfg.host, "agg.example");
    assert_int_equal(cfg.port, 7000);
    assert_string_equal(cfg.id, "gw-7.eu_1");
    assert_string_equal(cfg.keys_path, "/etc/fedge/keys");
    assert_string_equal(cfg.shard_path, "/data/shard.bin");
    assert_int_equal(cfg.encoding, FEDGE_ENC_INT8);
    assert_true(cfg.stochastic);
    assert_true(cfg.seed == UINT64_MAX);
    assert_int_equal(cfg.poll_ms, 250);
    assert_int_equal(cfg.timeout_ms, 800);
    assert_int_equal(cfg.max_retries, -1);
    assert_int_equal(cfg.log_level, FEDGE_LOG_DEBUG);
    assert_string_equal(cfg.state_dir, "/var/lib/fedge");
    assert_false(cfg.exit_when_finished);
    assert_int_equal(cfg.max_rounds, 3);
    assert_true(cfg.print_memory);
    assert_int_equal(cfg.max_memory_mb, 48);
    assert_true(cfg.no_observe);

    assert_int_equal(PARSE(&cfg, err, BASE, "--encoding", "bf16", "--exit-when-finished"),
                     FEDGE_OK);
    assert_int_equal(cfg.encoding, FEDGE_ENC_BF16);
    assert_true(cfg.exit_when_finished);
}

static void test_port_follows_insecure_in_any_order(void **state)
{
    (void)state;
    fedge_edge_config cfg;
    char err[200];
    assert_int_equal(PARSE(&cfg, err, "--insecure", "--server", "10.0.0.2", BASE), FEDGE_OK);
    assert_int_equal(cfg.port, 5683);
    assert_string_equal(cfg.host, "10.0.0.2");
    assert_int_equal(PARSE(&cfg, err, "--server", "10.0.0.2", BASE, "--insecure"), FEDGE_OK);
    assert_int_equal(cfg.port, 5683);
    /* An explicit port wins. */
    assert_int_equal(PARSE(&cfg, err, "--insecure", "--server", "10.0.0.2:9999", BASE),
                     FEDGE_OK);
    assert_int_equal(cfg.port, 9999);
}

static void test_server_forms(void **state)
{
    (void)state;
    char host[64];
    uint16_t port = 1;
    int has_port;
    assert_int_equal(fedge_edge_parse_server("[::1]:5684", host, sizeof host, &port, &has_port),
                     FEDGE_OK);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 5684);
    assert_true(has_port);
    port = 1;
    assert_int_equal(fedge_edge_parse_server("[fe80::2]", host, sizeof host, &port, &has_port),
                     FEDGE_OK);
    assert_string_equal(host, "fe80::2");
    assert_false(has_port);
    assert_int_equal(port, 1);
    assert_int_equal(fedge_edge_parse_server("localhost", host, sizeof host, &port, &has_port),
                     FEDGE_OK);
    assert_string_equal(host, "localhost");
    assert_false(has_port);

    static const char *bad[] = {"",        ":5684",      "host:",      "host:0",
                                "host:65536", "host:12ab", "::1",       "[::1",
                                "[]:5684", "[::1]x",     "[::1]:",     "a b:1",
                                "host:-1"};
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(bad); i++) {
        strcpy(host, "unchanged");
        if (fedge_edge_parse_server(bad[i], host, sizeof host, &port, &has_port) !=
            FEDGE_ERR_INVALID_ARG)
            fail_msg("server '%s' accepted", bad[i]);
        assert_string_equal(host, "unchanged");
    }
    char tiny[4];
    assert_int_equal(fedge_edge_parse_server("longhost", tiny, sizeof tiny, &port, &has_port),
                     FEDGE_ERR_INVALID_ARG);
}

static void test_transport(void **state)
{
    (void)state;
    fedge_edge_config cfg;
    char err[200];
    assert_int_equal(PARSE(&cfg, err, BASE), FEDGE_OK);
    assert_false(cfg.tcp);
    assert_int_equal(PARSE(&cfg, err, BASE, "--transport", "tcp", "--server", "h:5685"), FEDGE_OK);
    assert_true(cfg.tcp);
    assert_int_equal(cfg.port, 5685);
    assert_int_equal(PARSE(&cfg, err, BASE, "--transport=tcp", "--transport", "dtls"), FEDGE_OK);
    assert_false(cfg.tcp);
}

static void test_help(void **state)
{
    (void)state;
    fedge_edge_config cfg;
    char err[200];
    assert_int_equal(PARSE(&cfg, err, "--help"), FEDGE_OK);
    assert_true(cfg.help);
    assert_int_equal(PARSE(&cfg, err, "-h"), FEDGE_OK);
    assert_true(cfg.help);
    char buf[4096] = "";
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    assert_non_null(f);
    fedge_edge_usage(f, "fedge-edge");
    fclose(f);
    assert_non_null(strstr(buf, "--server HOST[:PORT]"));
    assert_non_null(strstr(buf, "--state-dir"));
    assert_non_null(strstr(buf, "--print-memory"));
}

typedef struct {
    const char *argv[6];
    const char *in_err;
} bad_flags;

static void test_bad_flags(void **state)
{
    (void)state;
    static const bad_flags cases[] = {
        {{"--bogus"}, "unknown flag '--bogus'"},
        {{"--server"}, "--server needs a value"},
        {{"--server", "a:b:c"}, "--server 'a:b:c'"},
        {{"--id", "bad id"}, "--id 'bad id'"},
        {{"--encoding", "fp8"}, "--encoding 'fp8'"},
        {{"--stochastic"}, "--stochastic applies to --encoding int8"},
        {{"--seed", "-3"}, "--seed '-3'"},
        {{"--seed", "12x"}, "--seed '12x'"},
        {{"--poll-ms", "0"}, "--poll-ms '0'"},
        {{"--timeout-ms", "10"}, "--timeout-ms '10'"},
        {{"--timeout-ms", "99999999999999999999999"}, "--timeout-ms"},
        {{"--max-retries", "-2"}, "--max-retries '-2'"},
        {{"--log-level", "loud"}, "--log-level 'loud'"},
        {{"--max-rounds", "0"}, "--max-rounds '0'"},
        {{"--max-memory-mb", "0"}, "--max-memory-mb '0'"},
        {{"--transport", "udp"}, "--transport 'udp': expected dtls or tcp"},
        {{"--max-memory-mb", "1048577"}, "--max-memory-mb '1048577'"},
        {{"--insecure=1"}, "--insecure takes no value"},
        {{"--state-dir="}, "--state-dir needs a non-empty path"},
        {{"positional"}, "unexpected argument 'positional'"},
        {{"-x"}, "unexpected argument '-x'"},
        {{"--"}, "unexpected argument '--'"},
    };
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(cases); i++) {
        char *argv[16] = {"fedge-edge", "--id", "dev-1", "--keys", "/k", "--shard", "/s"};
        int argc = 7;
        for (int j = 0; j < 6 && cases[i].argv[j]; j++)
            argv[argc++] = (char *)cases[i].argv[j];
        fedge_edge_config cfg;
        char err[200];
        int rc = parse_v(&cfg, err, sizeof err, argc, argv);
        if (rc != FEDGE_ERR_EDGE_USAGE || !strstr(err, cases[i].in_err))
            fail_msg("case %zu: got %d '%s', want usage error with '%s'", i, rc, err,
                     cases[i].in_err);
    }
}

static void test_required_flags(void **state)
{
    (void)state;
    fedge_edge_config cfg;
    char err[200];
    assert_int_equal(PARSE(&cfg, err, "--keys", "/k", "--shard", "/s"), FEDGE_ERR_EDGE_USAGE);
    assert_non_null(strstr(err, "--id DEVICE is required"));
    assert_int_equal(PARSE(&cfg, err, "--id", "d", "--shard", "/s"), FEDGE_ERR_EDGE_USAGE);
    assert_non_null(strstr(err, "--keys FILE is required"));
    assert_int_equal(PARSE(&cfg, err, "--id", "d", "--keys", "/k"), FEDGE_ERR_EDGE_USAGE);
    assert_non_null(strstr(err, "--shard FILE is required"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_flag),
        cmocka_unit_test(test_port_follows_insecure_in_any_order),
        cmocka_unit_test(test_server_forms),
        cmocka_unit_test(test_transport),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_required_flags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
