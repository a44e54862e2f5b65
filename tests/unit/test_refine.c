/* The refinement command's summary (aggregator/refine.h): the last
 * non-empty line of its output comes back whole, however much output came
 * before it; a line longer than the caller's buffer, or one whose start fell
 * out of the kept tail, is replaced by a note, never cut (fedge-cluster's
 * summary JSON outgrew a 1 KiB tail once and was recorded truncated). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "refine.h"

static char g_summary[FEDGE_REFINE_SUMMARY_MAX];

/* Runs `sh -c cmd`; returns the exit status, the summary in g_summary. */
static int run(const char *cmd, size_t cap)
{
    int status = -2;
    assert_int_equal(fedge_refine_command_run(cmd, "/dev/null", "/dev/null", 1, 30, &status, g_summary,
                                              cap),
                     FEDGE_OK);
    return status;
}

static void test_long_last_line_whole(void **state)
{
    (void)state;
    /* 20 KiB of progress, then a 3000-byte summary line and a blank line */
    assert_int_equal(run("head -c 20480 /dev/zero | tr '\\0' 'p'; echo; "
                         "printf '{\"k\":\"'; head -c 2990 /dev/zero | tr '\\0' 'x'; echo '\"}'; echo",
                         sizeof g_summary),
                     0);
    assert_int_equal(strlen(g_summary), 2998);
    assert_memory_equal(g_summary, "{\"k\":\"xxx", 9);
    assert_string_equal(g_summary + strlen(g_summary) - 3, "x\"}");
}

static void test_line_over_cap_is_a_note(void **state)
{
    (void)state;
    assert_int_equal(run("printf 'first\\n'; head -c 600 /dev/zero | tr '\\0' 'Q'; echo", 512), 0);
    assert_non_null(strstr(g_summary, "over 511 bytes, not recorded"));
    assert_null(strchr(g_summary, 'Q'));
}

static void test_line_over_window_is_a_note(void **state)
{
    (void)state;
    /* one line longer than the whole kept tail: its start is gone */
    assert_int_equal(run("head -c 40000 /dev/zero | tr '\\0' 'z'; echo", sizeof g_summary), 0);
    assert_non_null(strstr(g_summary, "not recorded"));
    assert_null(strchr(g_summary, 'z'));
}

static void test_short_output_and_status(void **state)
{
    (void)state;
    assert_int_equal(run("echo one; echo '{\"ok\":1}'; exit 3", sizeof g_summary), 3);
    assert_string_equal(g_summary, "{\"ok\":1}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_long_last_line_whole),
        cmocka_unit_test(test_line_over_cap_is_a_note),
        cmocka_unit_test(test_line_over_window_is_a_note),
        cmocka_unit_test(test_short_output_and_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
