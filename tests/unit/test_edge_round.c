/* Parsing of the GET /round body: the protocol's example, forward-compatible
 * unknown keys, comments and CRLF, and every kind of malformed body (each
 * with its own code, a reason naming the key, and the output untouched). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "common.h"
#include "round_info.h"

#define MODEL_HEX "9f2c00112233445566778899aabbccddeeff00112233445566778899aabbcce1"

static const char OPEN_BODY[] = "state=open\n"
                                "round=5\n"
                                "selected=1\n"
                                "deadline_ms=29000\n"
                                "model=" MODEL_HEX "\n"
                                "run=00112233445566778899aabbccddeeff\n"
                                "spec=mlp:784-200-10\n"
                                "epochs=1\n"
                                "lr=0.05\n"
                                "batch=32\n"
                                "momentum=0.9\n";

static int parse(const char *body, fedge_round_info *ri, char *err, size_t errlen)
{
    return fedge_round_info_parse(body, strlen(body), ri, err, errlen);
}

static void test_protocol_example(void **state)
{
    (void)state;
    fedge_round_info ri;
    char err[128] = "";
    assert_int_equal(parse(OPEN_BODY, &ri, err, sizeof err), FEDGE_OK);
    assert_int_equal(ri.state, FEDGE_ROUND_OPEN);
    assert_true(ri.has_round);
    assert_int_equal(ri.round, 5);
    assert_int_equal(ri.selected, 1);
    assert_int_equal(ri.deadline_ms, 29000);
    assert_true(ri.has_model);
    assert_int_equal(ri.model[0], 0x9f);
    assert_int_equal(ri.model[1], 0x2c);
    assert_int_equal(ri.model[31], 0xe1);
    assert_true(ri.has_spec);
    assert_string_equal(ri.spec_text, "mlp:784-200-10");
    assert_int_equal(ri.spec.n_layers, 3); /* dense, relu, dense */
    assert_int_equal(ri.spec.input_dim, 784);
    assert_int_equal(ri.spec.layer[0].out, 200);
    assert_int_equal(ri.spec.classes, 10);
    assert_int_equal(ri.epochs, 1);
    assert_int_equal(ri.batch, 32);
    assert_float_equal(ri.lr, 0.05f, 1e-7);
    assert_float_equal(ri.momentum, 0.9f, 1e-7);
    assert_float_equal(ri.weight_decay, 0.0f, 0.0);
    assert_float_equal(ri.prox_mu, 0.0f, 0.0); /* absent: plain local SGD */
    assert_false(ri.has_control);              /* absent: not a SCAFFOLD round */
}

/* FedProx's mu and SCAFFOLD's control version: parsed, bounds inclusive. */
static void test_prox_and_control(void **state)
{
    (void)state;
    fedge_round_info ri;
    char body[2048], err[128] = "";
    static const char control[] = "0123456789abcdefFEDCBA98765432100011223344556677"
                                  "8899aabbccddeeff";
    snprintf(body, sizeof body, "%sprox_mu=0.01\ncontrol=%s   # SCAFFOLD\n", OPEN_BODY, control);
    assert_int_equal(parse(body, &ri, err, sizeof err), FEDGE_OK);
    assert_float_equal(ri.prox_mu, 0.01f, 0.0);
    assert_true(ri.has_control);
    assert_int_equal(ri.control[0], 0x01);
    assert_int_equal(ri.control[8], 0xfe);
    assert_int_equal(ri.control[31], 0xff);

    snprintf(body, sizeof body, "%sprox_mu=1000\n", OPEN_BODY);
    assert_int_equal(parse(body, &ri, err, sizeof err), FEDGE_OK);
    assert_float_equal(ri.prox_mu, 1000.0f, 0.0);
    assert_false(ri.has_control);
    snprintf(body, sizeof body, "%sprox_mu=0\n", OPEN_BODY);
    assert_int_equal(parse(body, &ri, err, sizeof err), FEDGE_OK);
    assert_float_equal(ri.prox_mu, 0.0f, 0.0);
    /* Waiting rounds may carry them too; nothing requires them. */
    assert_int_equal(parse("state=waiting\nprox_mu=0.5\n", &ri, err, sizeof err), FEDGE_OK);
    assert_float_equal(ri.prox_mu, 0.5f, 0.0);
}

/* The protocol document annotates its example with "# ..." comments and the
 * aggregator may send CRLF or new keys: all of that must still parse. */
/* A spec as long as the grammar allows (FEDGE_MODEL_SPEC_MAX - 1 bytes at
 * most) fits a /round line. */
static void test_longest_spec(void **state)
{
    (void)state;
    static const char spec[] = "cnn:1x28000x280-c1k1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-p1s65536-100";
    char body[1024], err[128] = "";
    fedge_round_info ri;
    snprintf(body, sizeof body, "state=open\nround=1\nselected=1\ndeadline_ms=1000\nmodel=" MODEL_HEX
             "\nrun=00112233445566778899aabbccddeeff\nspec=%s\nepochs=1\nlr=0.05\nbatch=32\n", spec);
    assert_int_equal(parse(body, &ri, err, sizeof err), FEDGE_OK);
    assert_string_equal(ri.spec_text, spec);
    assert_int_equal(strlen(spec), FEDGE_MODEL_SPEC_MAX - 1);
    assert_int_equal(ri.spec.classes, 100);
}

static void test_comments_crlf_unknown_keys(void **state)
{
    (void)state;
    fedge_round_info ri;
    char err[128] = "";
    const char *body = "# fedge round\r\n"
                       "state=open            # open | waiting | finished\r\n"
                       "round=7\r\n"
                       "\r\n"
                       "selected=0            # not this time\r\n"
                       "future_key=any value, even with blanks\r\n"
                       "model=" MODEL_HEX "\r\n"
                       "run=00112233445566778899AABBCCDDEEFF\r\n"
                       "spec=softmax:784-10\r\n"
                       "epochs=3\r\n"
                       "lr=1e-2\r\n"
                       "batch=64\r\n"
                       "weight_decay=0.0005\r\n";
    assert_int_equal(parse(body, &ri, err, sizeof err), FEDGE_OK);
    assert_int_equal(ri.state, FEDGE_ROUND_OPEN);
    assert_int_equal(ri.round, 7);
    assert_int_equal(ri.selected, 0);
    assert_int_equal(ri.deadline_ms, -1); /* absent */
    assert_int_equal(ri.spec.kind, FEDGE_MODEL_SOFTMAX);
    assert_int_equal(ri.epochs, 3);
    assert_int_equal(ri.batch, 64);
    assert_float_equal(ri.lr, 0.01f, 1e-8);
    assert_float_equal(ri.momentum, 0.0f, 0.0);
    assert_float_equal(ri.weight_decay, 0.0005f, 1e-9);
}

static void test_waiting_and_finished(void **state)
{
    (void)state;
    fedge_round_info ri;
    assert_int_equal(parse("state=waiting\nround=4\n", &ri, NULL, 0), FEDGE_OK);
    assert_int_equal(ri.state, FEDGE_ROUND_WAITING);
    assert_int_equal(ri.round, 4);
    assert_false(ri.has_model);
    assert_int_equal(parse("state=finished", &ri, NULL, 0), FEDGE_OK); /* no final newline */
    assert_int_equal(ri.state, FEDGE_ROUND_FINISHED);
    assert_false(ri.has_round);
    assert_string_equal(fedge_round_state_name(FEDGE_ROUND_FINISHED), "finished");
}

/* Replace the line starting with `key=` in OPEN_BODY by `line` (or drop it
 * when line is NULL). */
static void edit_body(const char *key, const char *line, char *out, size_t cap)
{
    char keyeq[32];
    snprintf(keyeq, sizeof keyeq, "%s=", key);
    const char *at = strstr(OPEN_BODY, keyeq);
    assert_non_null(at);
    const char *nl = strchr(at, '\n');
    assert_non_null(nl);
    snprintf(out, cap, "%.*s%s%s%s", (int)(at - OPEN_BODY), OPEN_BODY, line ? line : "",
             line ? "\n" : "", nl + 1);
}

typedef struct {
    const char *key;       /* line of OPEN_BODY to replace */
    const char *line;      /* replacement (NULL: drop the line) */
    int code;
    const char *in_reason; /* must appear in the error text */
} bad_case;

static void test_bad_bodies(void **state)
{
    (void)state;
    static const bad_case cases[] = {
        {"state", NULL, FEDGE_ERR_EDGE_ROUND_MISSING, "state"},
        {"state", "state=closed", FEDGE_ERR_EDGE_ROUND_VALUE, "state"},
        {"model", NULL, FEDGE_ERR_EDGE_ROUND_MISSING, "model"},
        {"spec", NULL, FEDGE_ERR_EDGE_ROUND_MISSING, "spec"},
        {"epochs", NULL, FEDGE_ERR_EDGE_ROUND_MISSING, "epochs"},
        {"lr", NULL, FEDGE_ERR_EDGE_ROUND_MISSING, "lr"},
        {"batch", NULL, FEDGE_ERR_EDGE_ROUND_MISSING, "batch"},
        {"round", NULL, FEDGE_ERR_EDGE_ROUND_MISSING, "round"},
        {"selected", NULL, FEDGE_ERR_EDGE_ROUND_MISSING, "selected"},
        {"round", "round=5\nround=6", FEDGE_ERR_EDGE_ROUND_DUPLICATE, "round"},
        {"round", "round 5", FEDGE_ERR_EDGE_ROUND_SYNTAX, "line 2"},
        {"round", "=5", FEDGE_ERR_EDGE_ROUND_SYNTAX, "line 2"},
        {"round", "ro*und=5", FEDGE_ERR_EDGE_ROUND_SYNTAX, "key"},
        {"round", "round=5 6", FEDGE_ERR_EDGE_ROUND_SYNTAX, "round"},
        {"round", "round=", FEDGE_ERR_EDGE_ROUND_VALUE, "round"},
        {"round", "round=-1", FEDGE_ERR_EDGE_ROUND_VALUE, "round"},
        {"round", "round=+5", FEDGE_ERR_EDGE_ROUND_VALUE, "round"},
        {"round", "round=4294967296", FEDGE_ERR_EDGE_ROUND_VALUE, "round"},
        {"round", "round=5x", FEDGE_ERR_EDGE_ROUND_VALUE, "round"},
        {"selected", "selected=2", FEDGE_ERR_EDGE_ROUND_VALUE, "selected"},
        {"deadline_ms", "deadline_ms=soon", FEDGE_ERR_EDGE_ROUND_VALUE, "deadline_ms"},
        {"model", "model=9f2c", FEDGE_ERR_EDGE_ROUND_VALUE, "model"},
        {"model", "model=zz2c00112233445566778899aabbccddeeff00112233445566778899aabbcce1",
         FEDGE_ERR_EDGE_ROUND_VALUE, "model"},
        {"spec", "spec=mlp:784", FEDGE_ERR_EDGE_ROUND_VALUE, "spec"},
        {"spec", "spec=cnn:784-10", FEDGE_ERR_EDGE_ROUND_VALUE, "spec"},
        {"epochs", "epochs=0", FEDGE_ERR_EDGE_ROUND_VALUE, "epochs"},
        {"epochs", "epochs=1001", FEDGE_ERR_EDGE_ROUND_VALUE, "epochs"},
        {"lr", "lr=0", FEDGE_ERR_EDGE_ROUND_VALUE, "lr"},
        {"lr", "lr=-0.1", FEDGE_ERR_EDGE_ROUND_VALUE, "lr"},
        {"lr", "lr=nan", FEDGE_ERR_EDGE_ROUND_VALUE, "lr"},
        {"lr", "lr=inf", FEDGE_ERR_EDGE_ROUND_VALUE, "lr"},
        {"lr", "lr=1e40", FEDGE_ERR_EDGE_ROUND_VALUE, "lr"},
        {"lr", "lr=0.05abc", FEDGE_ERR_EDGE_ROUND_VALUE, "lr"},
        {"batch", "batch=0", FEDGE_ERR_EDGE_ROUND_VALUE, "batch"},
        {"batch", "batch=65537", FEDGE_ERR_EDGE_ROUND_VALUE, "batch"},
        {"momentum", "momentum=1", FEDGE_ERR_EDGE_ROUND_VALUE, "momentum"},
        {"momentum", "momentum=-0.5", FEDGE_ERR_EDGE_ROUND_VALUE, "momentum"},
        {"momentum", "prox_mu=-0.1", FEDGE_ERR_EDGE_ROUND_VALUE, "prox_mu"},
        {"momentum", "prox_mu=1000.1", FEDGE_ERR_EDGE_ROUND_VALUE, "prox_mu"},
        {"momentum", "prox_mu=nan", FEDGE_ERR_EDGE_ROUND_VALUE, "prox_mu"},
        {"momentum", "prox_mu=inf", FEDGE_ERR_EDGE_ROUND_VALUE, "prox_mu"},
        {"momentum", "prox_mu=0.1x", FEDGE_ERR_EDGE_ROUND_VALUE, "prox_mu"},
        {"momentum", "prox_mu=", FEDGE_ERR_EDGE_ROUND_VALUE, "prox_mu"},
        {"momentum", "prox_mu=0.1\nprox_mu=0.1", FEDGE_ERR_EDGE_ROUND_DUPLICATE, "prox_mu"},
        {"momentum", "control=9f2c", FEDGE_ERR_EDGE_ROUND_VALUE, "control"},
        {"momentum", "control=" MODEL_HEX "00", FEDGE_ERR_EDGE_ROUND_VALUE, "control"},
        {"momentum", "control=zz2c00112233445566778899aabbccddeeff00112233445566778899aabbcce1",
         FEDGE_ERR_EDGE_ROUND_VALUE, "control"},
        {"momentum", "control=" MODEL_HEX "\ncontrol=" MODEL_HEX, FEDGE_ERR_EDGE_ROUND_DUPLICATE,
         "control"},
    };
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(cases); i++) {
        char body[2048], err[160] = "";
        fedge_round_info ri, sentinel;
        memset(&sentinel, 0xAB, sizeof sentinel);
        ri = sentinel;
        edit_body(cases[i].key, cases[i].line, body, sizeof body);
        int rc = parse(body, &ri, err, sizeof err);
        if (rc != cases[i].code || !strstr(err, cases[i].in_reason))
            fail_msg("case %zu (%s): got %d '%s', want %d mentioning '%s'", i,
                     cases[i].line ? cases[i].line : "(dropped)", rc, err, cases[i].code,
                     cases[i].in_reason);
        assert_memory_equal(&ri, &sentinel, sizeof ri); /* nothing written */
    }
}

static void test_bad_framing(void **state)
{
    (void)state;
    fedge_round_info ri, sentinel;
    char err[160];
    memset(&sentinel, 0x5A, sizeof sentinel);

    /* A NUL byte inside the body. */
    char with_nul[] = "state=open\nround=5\0\n";
    ri = sentinel;
    assert_int_equal(fedge_round_info_parse(with_nul, sizeof with_nul - 1, &ri, err, sizeof err),
                     FEDGE_ERR_EDGE_ROUND_SYNTAX);
    assert_non_null(strstr(err, "NUL"));
    assert_memory_equal(&ri, &sentinel, sizeof ri);

    /* One line longer than the limit. */
    char longline[FEDGE_ROUND_LINE_MAX + 64];
    memset(longline, 'a', sizeof longline - 1);
    longline[sizeof longline - 1] = '\0';
    memcpy(longline, "state=", 6);
    ri = sentinel;
    assert_int_equal(parse(longline, &ri, err, sizeof err), FEDGE_ERR_EDGE_ROUND_SYNTAX);
    assert_non_null(strstr(err, "longer"));
    assert_memory_equal(&ri, &sentinel, sizeof ri);

    /* A body over the size limit, even if every line is fine. */
    static char big[FEDGE_ROUND_BODY_MAX + 100];
    size_t n = 0;
    n += (size_t)snprintf(big, sizeof big, "state=waiting\n");
    while (n + 8 < sizeof big - 1)
        n += (size_t)snprintf(big + n, sizeof big - n, "# pad\n");
    ri = sentinel;
    assert_int_equal(parse(big, &ri, err, sizeof err), FEDGE_ERR_EDGE_ROUND_SYNTAX);
    assert_non_null(strstr(err, "limit"));
    assert_memory_equal(&ri, &sentinel, sizeof ri);

    /* Empty body: state missing. */
    ri = sentinel;
    assert_int_equal(fedge_round_info_parse("", 0, &ri, err, sizeof err),
                     FEDGE_ERR_EDGE_ROUND_MISSING);
    assert_memory_equal(&ri, &sentinel, sizeof ri);

    /* A NULL error buffer is allowed. */
    assert_int_equal(parse("state=maybe\n", &ri, NULL, 0), FEDGE_ERR_EDGE_ROUND_VALUE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_protocol_example),
        cmocka_unit_test(test_prox_and_control),
        cmocka_unit_test(test_longest_spec),
        cmocka_unit_test(test_comments_crlf_unknown_keys),
        cmocka_unit_test(test_waiting_and_finished),
        cmocka_unit_test(test_bad_bodies),
        cmocka_unit_test(test_bad_framing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
