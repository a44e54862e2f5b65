/* test_keys.c — keys files: loading, duplicate ids, lookups, and loading
 * 100,000 devices in bounded time (the load was once quadratic). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "keys.h"

static const char SECRET[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

static char g_dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/fedge-keys-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void write_keys(const char *name, const char *text, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, 0600);
}

static void test_duplicate_id_names_both_lines(void **state)
{
    (void)state;
    char text[1024], path[128], err[256] = "";
    snprintf(text, sizeof text,
             "# comment\ndev-b eu %s\ndev-a us %s\n\ndev-c eu %s\ndev-a eu %s\n", SECRET,
             SECRET, SECRET, SECRET);
    write_keys("dup", text, path, sizeof path);
    fedge_keys k;
    assert_int_equal(fedge_keys_load(path, &k, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, ":6: device dev-a listed twice (first on line 3)"));
    assert_null(k.devices);
    assert_null(k.by_id);
}

static void test_find_keeps_file_order(void **state)
{
    (void)state;
    char text[1024], path[128], err[256] = "";
    snprintf(text, sizeof text, "dev-b eu %s\ndev-a us %s\ndev-c eu %s\n", SECRET, SECRET,
             SECRET);
    write_keys("ok", text, path, sizeof path);
    fedge_keys k;
    assert_int_equal(fedge_keys_load(path, &k, err, sizeof err), FEDGE_OK);
    assert_int_equal(k.n, 3);
    assert_string_equal(k.devices[0].id, "dev-b");
    assert_string_equal(k.devices[1].id, "dev-a");
    assert_ptr_equal(fedge_keys_find(&k, "dev-a", 5), &k.devices[1]);
    assert_ptr_equal(fedge_keys_find(&k, "dev-b", 5), &k.devices[0]);
    assert_ptr_equal(fedge_keys_find(&k, "dev-c", 5), &k.devices[2]);
    assert_ptr_equal(fedge_keys_find(&k, "dev-cx", 5), &k.devices[2]); /* length counts */
    assert_null(fedge_keys_find(&k, "dev-", 4));
    assert_null(fedge_keys_find(&k, "dev-aa", 6));
    assert_null(fedge_keys_find(&k, "dev-d", 5));
    assert_null(fedge_keys_find(&k, "", 0));
    assert_string_equal(k.devices[1].region, "us");

    char line[FEDGE_KEYS_LINE_MAX];
    size_t n = fedge_keys_format_line(&k.devices[1], line, sizeof line);
    char want[128];
    snprintf(want, sizeof want, "dev-a us %s\n", SECRET);
    assert_int_equal(n, strlen(want));
    assert_string_equal(line, want);
    assert_int_equal(fedge_keys_format_line(&k.devices[1], line, 10), 0);
    fedge_keys_free(&k);
    assert_null(fedge_keys_find(&k, "dev-a", 5));
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* 100,000 devices, the most a file may hold: the quadratic load took
 * ~40 s; a linear one takes well under a second, even under ASan. */
static void test_max_devices_load_fast(void **state)
{
    (void)state;
    char path[128], err[256] = "";
    snprintf(path, sizeof path, "%s/many", g_dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 1; i <= FEDGE_KEYS_MAX_DEVICES; i++)
        fprintf(f, "dev-%06d eu %s\n", (i * 7919) % FEDGE_KEYS_MAX_DEVICES + 1, SECRET);
    fclose(f);
    chmod(path, 0600);
    fedge_keys k;
    double t0 = now_s();
    assert_int_equal(fedge_keys_load(path, &k, err, sizeof err), FEDGE_OK);
    double load_s = now_s() - t0;
    assert_int_equal(k.n, FEDGE_KEYS_MAX_DEVICES);
    t0 = now_s();
    char id[32];
    for (int i = 1; i <= FEDGE_KEYS_MAX_DEVICES; i++) {
        int n = snprintf(id, sizeof id, "dev-%06d", i);
        const fedge_device_entry *e = fedge_keys_find(&k, id, (size_t)n);
        assert_non_null(e);
        assert_string_equal(e->id, id);
    }
    double find_s = now_s() - t0;
    fedge_keys_free(&k);
    print_message("load %.3f s, 100000 lookups %.3f s\n", load_s, find_s);
    assert_true(load_s < 5.0);
    assert_true(find_s < 5.0);

    /* one more line is refused */
    f = fopen(path, "a");
    assert_non_null(f);
    fprintf(f, "dev-x eu %s\n", SECRET);
    fclose(f);
    assert_int_equal(fedge_keys_load(path, &k, err, sizeof err), FEDGE_ERR_RANGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duplicate_id_names_both_lines),
        cmocka_unit_test(test_find_keeps_file_order),
        cmocka_unit_test(test_max_devices_load_fast),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
