/* The update counter: strictly increasing within a process whatever the
 * clock does, persisted across restarts with --state-dir, and a corrupt
 * counter file refused (and left as it was) rather than silently reset. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "counter.h"

typedef struct {
    char dir[64];
    char state[96];
    char file[160];
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/fedge-edge-counter-XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->state, sizeof fx->state, "%s/state", fx->dir);
    snprintf(fx->file, sizeof fx->file, "%s/dev-1.counter", fx->state);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx);
    return 0;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void read_file(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

static void test_without_state_dir(void **state)
{
    (void)state;
    fedge_edge_counter c;
    uint64_t a, b, d;
    assert_int_equal(fedge_edge_counter_open(&c, NULL, "dev-1", NULL, 0), FEDGE_OK);
    assert_null(c.path);
    uint64_t now = fedge_edge_now_us();
    assert_true(now > 1600000000ull * 1000000ull); /* a plausible clock, in microseconds */
    assert_int_equal(fedge_edge_counter_next(&c, now, &a), FEDGE_OK);
    assert_true(a == now);
    /* The same instant again, and a clock set back: still strictly above. */
    assert_int_equal(fedge_edge_counter_next(&c, now, &b), FEDGE_OK);
    assert_true(b == a + 1);
    assert_int_equal(fedge_edge_counter_next(&c, now - 5000000, &d), FEDGE_OK);
    assert_true(d == b + 1);
    /* A later clock jumps ahead. */
    assert_int_equal(fedge_edge_counter_next(&c, now + 1000, &d), FEDGE_OK);
    assert_true(d == now + 1000);
    fedge_edge_counter_close(&c);
}

static void test_persisted_across_restarts(void **state)
{
    fixture *fx = *state;
    fedge_edge_counter c;
    char err[256] = "", buf[64];
    uint64_t a, b;
    /* The state directory is created, mode 0700. */
    assert_int_equal(fedge_edge_counter_open(&c, fx->state, "dev-1", err, sizeof err), FEDGE_OK);
    struct stat st;
    assert_int_equal(stat(fx->state, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(fedge_edge_counter_next(&c, 1000, &a), FEDGE_OK);
    assert_true(a == 1000);
    read_file(fx->file, buf, sizeof buf);
    assert_string_equal(buf, "1000\n"); /* on disk before it is handed out */
    fedge_edge_counter_close(&c);

    /* "Restart" with a clock that went back a long way. */
    assert_int_equal(fedge_edge_counter_open(&c, fx->state, "dev-1", err, sizeof err), FEDGE_OK);
    assert_true(c.last == 1000);
    assert_int_equal(fedge_edge_counter_next(&c, 5, &b), FEDGE_OK);
    assert_true(b == 1001);
    fedge_edge_counter_close(&c);
    read_file(fx->file, buf, sizeof buf);
    assert_string_equal(buf, "1001\n");
    /* No temporary file left behind. */
    char tmp[200];
    snprintf(tmp, sizeof tmp, "%s.tmp", fx->file);
    assert_int_not_equal(access(tmp, F_OK), 0);

    /* Another device in the same directory has its own counter. */
    assert_int_equal(fedge_edge_counter_open(&c, fx->state, "dev-2", err, sizeof err), FEDGE_OK);
    assert_true(c.last == 0);
    fedge_edge_counter_close(&c);
}

static void test_corrupt_file_refused(void **state)
{
    fixture *fx = *state;
    static const char *bad[] = {"", "\n", "12a\n", "-5\n", "1 2\n", "99999999999999999999\n",
                                "123456789012345678901\n", "0x10\n",
                                "1111111111111111111111111111111111111111\n"};
    assert_int_equal(mkdir(fx->state, 0700), 0);
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(bad); i++) {
        fedge_edge_counter c;
        char err[256] = "", buf[64];
        write_file(fx->file, bad[i]);
        int rc = fedge_edge_counter_open(&c, fx->state, "dev-1", err, sizeof err);
        if (rc != FEDGE_ERR_EDGE_COUNTER)
            fail_msg("content '%s' gave %d", bad[i], rc);
        assert_non_null(strstr(err, "dev-1.counter"));
        assert_null(c.path);
        read_file(fx->file, buf, sizeof buf);
        assert_string_equal(buf, bad[i]); /* left as it was */
    }
    /* The largest value is fine, and then the counter refuses to wrap. */
    fedge_edge_counter c;
    uint64_t v;
    write_file(fx->file, "18446744073709551615\n");
    assert_int_equal(fedge_edge_counter_open(&c, fx->state, "dev-1", NULL, 0), FEDGE_OK);
    assert_int_equal(fedge_edge_counter_next(&c, 1, &v), FEDGE_ERR_RANGE);
    fedge_edge_counter_close(&c);
}

static void test_unwritable_state(void **state)
{
    fixture *fx = *state;
    fedge_edge_counter c;
    char err[256] = "", tmp[200];
    uint64_t v = 77;
    assert_int_equal(fedge_edge_counter_open(&c, fx->state, "dev-1", err, sizeof err), FEDGE_OK);
    /* A directory where the temporary file must go: the write fails even as root. */
    snprintf(tmp, sizeof tmp, "%s.tmp", fx->file);
    assert_int_equal(mkdir(tmp, 0700), 0);
    assert_int_equal(fedge_edge_counter_next(&c, 10, &v), FEDGE_ERR_IO);
    assert_true(v == 77);     /* nothing handed out */
    assert_true(c.last == 0); /* and nothing consumed */
    assert_int_not_equal(access(fx->file, F_OK), 0);
    assert_int_equal(rmdir(tmp), 0);
    assert_int_equal(fedge_edge_counter_next(&c, 10, &v), FEDGE_OK);
    assert_true(v == 10);
    fedge_edge_counter_close(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_without_state_dir),
        cmocka_unit_test_setup_teardown(test_persisted_across_restarts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_file_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritable_state, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
