/* test_text.c — escaping untrusted strings for terminals and log lines. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "text.h"

static void expect_escape(const char *in, size_t len, const char *want)
{
    char out[256];
    size_t need = fedge_text_escape(in, len, out, sizeof out);
    assert_string_equal(out, want);
    assert_int_equal(need, strlen(want));
}

static void test_printable_kept(void **state)
{
    (void)state;
    expect_escape("dev-003 owner request", 21, "dev-003 owner request");
    expect_escape("Zürich — 東京 🙂", strlen("Zürich — 東京 🙂"), "Zürich — 東京 🙂");
    expect_escape("", 0, "");
    expect_escape("a\\b", 3, "a\\\\b"); /* a backslash is doubled, so \xNN is unambiguous */
    assert_true(fedge_text_is_printable("Zürich — 東京", strlen("Zürich — 東京")));
    assert_true(fedge_text_is_printable("a\\b", 3));
}

static void test_controls_escaped(void **state)
{
    (void)state;
    const char forged[] = "ok\n| forged | row\x1b[2J\r\t\x7f";
    expect_escape(forged, sizeof forged - 1, "ok\\x0a| forged | row\\x1b[2J\\x0d\\x09\\x7f");
    expect_escape("a\0b", 3, "a\\x00b");
    /* C1 controls: CSI (U+009B) and NEL (U+0085) as UTF-8 */
    expect_escape("x\xc2\x9b" "2Jy\xc2\x85", 8, "x\\xc2\\x9b2Jy\\xc2\\x85");
    /* bidi override and line separator */
    expect_escape("a\xe2\x80\xae" "b\xe2\x80\xa8", 8, "a\\xe2\\x80\\xaeb\\xe2\\x80\\xa8");
    assert_false(fedge_text_is_printable(forged, sizeof forged - 1));
    assert_false(fedge_text_is_printable("x\xc2\x9b", 3));
    assert_false(fedge_text_is_printable("tab\there", 8));
}

static void test_invalid_utf8_escaped(void **state)
{
    (void)state;
    expect_escape("\xff\xfe", 2, "\\xff\\xfe");
    expect_escape("\xc0\xaf", 2, "\\xc0\\xaf");                 /* overlong '/' */
    expect_escape("\xed\xa0\x80", 3, "\\xed\\xa0\\x80");        /* surrogate */
    expect_escape("\xf4\x90\x80\x80", 4, "\\xf4\\x90\\x80\\x80"); /* > U+10FFFF */
    expect_escape("ab\xe6\x9d", 4, "ab\\xe6\\x9d");              /* truncated */
    expect_escape("\x80z", 2, "\\x80z");                        /* stray continuation */
    assert_false(fedge_text_is_printable("\xc0\xaf", 2));
    assert_false(fedge_text_is_printable("ab\xe6\x9d", 4));
}

static void test_truncation_and_dup(void **state)
{
    (void)state;
    char out[8];
    /* "ab" fits, the 4-byte escape does not: no partial escape */
    size_t need = fedge_text_escape("ab\x1b" "cd", 5, out, sizeof out);
    assert_int_equal(need, 8);
    assert_string_equal(out, "ab\\x1bc");
    need = fedge_text_escape("abc\x1b", 4, out, 6);
    assert_string_equal(out, "abc");
    assert_int_equal(need, 7);
    assert_int_equal(fedge_text_escape("\x1b\x1b", 2, NULL, 0), 8);
    char *d = fedge_text_escape_dup("r\n\x1b[0m");
    assert_non_null(d);
    assert_string_equal(d, "r\\x0a\\x1b[0m");
    free(d);
    assert_null(fedge_text_escape_dup(NULL));
}

/* A log line stays one line, whatever a peer put in the message. */
static void test_log_line_is_one_line(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    fedge_log_set_stream(f);
    fedge_log_set_tag("edge\ndev\x1b");
    fedge_log(FEDGE_LOG_ERROR, "update from %s refused: %s", "dev-1\n2026-01-01T00:00:00Z INFO",
              "bad\x1b[2J");
    fedge_log_set_stream(NULL);
    fclose(f);
    assert_non_null(buf);
    assert_int_equal(strchr(buf, '\n') - buf, (long)len - 1); /* the only newline ends it */
    assert_null(strchr(buf, '\x1b'));
    assert_non_null(strstr(buf, "edge\\x0adev\\x1b: update from dev-1\\x0a2026"));
    assert_non_null(strstr(buf, "bad\\x1b[2J"));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_printable_kept),
        cmocka_unit_test(test_controls_escaped),
        cmocka_unit_test(test_invalid_utf8_escaped),
        cmocka_unit_test(test_truncation_and_dup),
        cmocka_unit_test(test_log_line_is_one_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
