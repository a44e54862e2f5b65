/* The edge's Observe helpers (RFC 7641): option values of 0..3 bytes,
 * notification freshness with 24-bit wrap-around and the 128 s rule; and
 * the finished marker: strict parsing, atomic write, read back, clear. */
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
#include "observe.h"

static void test_observe_value(void **state)
{
    (void)state;
    uint32_t v = 99;
    assert_int_equal(fedge_observe_value(NULL, 0, &v), FEDGE_OK);
    assert_int_equal(v, 0);
    const uint8_t b[] = {0x12, 0x34, 0x56, 0x78};
    assert_int_equal(fedge_observe_value(b, 1, &v), FEDGE_OK);
    assert_int_equal(v, 0x12);
    assert_int_equal(fedge_observe_value(b, 3, &v), FEDGE_OK);
    assert_int_equal(v, 0x123456);
    v = 7;
    assert_int_equal(fedge_observe_value(b, 4, &v), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(v, 7);
    assert_int_equal(fedge_observe_value(NULL, 2, &v), FEDGE_ERR_INVALID_ARG);
}

static void test_freshness(void **state)
{
    (void)state;
    const uint32_t half = 1u << 23, max = (1u << 24) - 1;
    assert_true(fedge_observe_is_fresher(1, 1000, 2, 1000));
    assert_false(fedge_observe_is_fresher(2, 1000, 2, 1000));  /* a duplicate */
    assert_false(fedge_observe_is_fresher(5, 1000, 4, 1001));  /* reordered */
    assert_true(fedge_observe_is_fresher(max, 1000, 0, 1000)); /* wrapped */
    assert_true(fedge_observe_is_fresher(max - 3, 1000, 2, 1000));
    assert_false(fedge_observe_is_fresher(0, 1000, half, 1000)); /* exactly half: not newer */
    assert_true(fedge_observe_is_fresher(0, 1000, half - 1, 1000));
    assert_true(fedge_observe_is_fresher(half + 1, 1000, 0, 1000));
    /* after 128 s anything is newer */
    assert_false(fedge_observe_is_fresher(9, 1000, 3, 1000 + FEDGE_OBSERVE_FRESH_MS));
    assert_true(fedge_observe_is_fresher(9, 1000, 3, 1001 + FEDGE_OBSERVE_FRESH_MS));
}

static void test_marker_parse(void **state)
{
    (void)state;
    uint8_t run[FEDGE_RUN_ID_LEN];
    const char *ok = "run=00112233445566778899aabbccddeeff\n";
    assert_int_equal(fedge_finished_marker_parse(ok, strlen(ok), run), FEDGE_OK);
    assert_int_equal(run[0], 0x00);
    assert_int_equal(run[15], 0xff);
    assert_int_equal(fedge_finished_marker_parse(ok, strlen(ok) - 1, run), FEDGE_OK); /* no LF */
    const char *bad[] = {
        "",
        "run=",
        "run=00112233445566778899aabbccddeef\n",   /* 31 digits */
        "run=00112233445566778899aabbccddeeff0\n", /* 33 */
        "run=00112233445566778899aabbccddeefg\n",  /* not hex */
        "RUN=00112233445566778899aabbccddeeff\n",
        "run=00112233445566778899aabbccddeeff\n\n",
        "run=00112233445566778899aabbccddeeff\r\n",
        " run=00112233445566778899aabbccddeeff\n",
    };
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(bad); i++)
        assert_int_equal(fedge_finished_marker_parse(bad[i], strlen(bad[i]), run), FEDGE_ERR_PROTO);
}

static void test_marker_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/fedge-edge-observe-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = NULL;
    assert_int_equal(fedge_finished_marker_path(dir, "dev-7", &path), FEDGE_OK);
    char want[96];
    snprintf(want, sizeof want, "%s/dev-7.finished", dir);
    assert_string_equal(path, want);

    uint8_t run[FEDGE_RUN_ID_LEN], got[FEDGE_RUN_ID_LEN];
    int present = 1;
    assert_int_equal(fedge_finished_marker_read(path, got, &present), FEDGE_OK);
    assert_false(present);
    assert_int_equal(fedge_finished_marker_clear(path), FEDGE_OK); /* none: fine */
    for (int i = 0; i < FEDGE_RUN_ID_LEN; i++)
        run[i] = (uint8_t)(0xa0 + i);
    assert_int_equal(fedge_finished_marker_write(path, run), FEDGE_OK);
    assert_int_equal(fedge_finished_marker_read(path, got, &present), FEDGE_OK);
    assert_true(present);
    assert_memory_equal(got, run, sizeof run);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[64] = {0};
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    assert_string_equal(line, "run=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf\n");

    /* a damaged marker is refused and reads as absent */
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("run=zz\n", f);
    fclose(f);
    present = 1;
    assert_int_equal(fedge_finished_marker_read(path, got, &present), FEDGE_ERR_PROTO);
    assert_false(present);
    /* a long file is not read past FEDGE_FINISHED_MARKER_MAX */
    f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 1000; i++)
        fputs("run=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf\n", f);
    fclose(f);
    assert_int_equal(fedge_finished_marker_read(path, got, &present), FEDGE_ERR_PROTO);
    assert_false(present);

    assert_int_equal(fedge_finished_marker_clear(path), FEDGE_OK);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(fedge_finished_marker_read(path, got, &present), FEDGE_OK);
    assert_false(present);
    free(path);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_observe_value),
        cmocka_unit_test(test_freshness),
        cmocka_unit_test(test_marker_parse),
        cmocka_unit_test(test_marker_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
