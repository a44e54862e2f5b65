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
/* every device has its own secret (the loader refuses a shared one) */
static const char S_B[] = "1111111111111111111111111111111111111111111111111111111111111111";
static const char S_C[] = "2222222222222222222222222222222222222222222222222222222222222222";
static const char S_D[] = "3333333333333333333333333333333333333333333333333333333333333333";
static const char S_A2[] = "ff44444444444444444444444444444444444444444444444444444444444444";

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

/* A keys-file entry: id, region, every secret byte fill. */
static fedge_device_entry entry(const char *id, const char *region, uint8_t fill)
{
    fedge_device_entry e;
    memset(&e, 0, sizeof e);
    snprintf(e.id, sizeof e.id, "%s", id);
    snprintf(e.region, sizeof e.region, "%s", region);
    memset(e.secret, fill, sizeof e.secret);
    return e;
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

/* ids differing only in case, or two devices with one secret, are refused
 * by the loader and by fedge_keys_file_add (fedge-admin device add) */
static void test_lookalike_ids_and_shared_secrets(void **state)
{
    (void)state;
    char text[1024], path[128], err[256] = "";
    fedge_keys k;
    snprintf(text, sizeof text, "dev-a eu %s\nDEV-A eu %s\n", SECRET, S_B);
    write_keys("case", text, path, sizeof path);
    assert_int_equal(fedge_keys_load(path, &k, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, ":2: device DEV-A differs only in case from dev-a (line 1)"));
    snprintf(text, sizeof text, "dev-a eu %s\ndev-b eu %s\ndev-c eu %s\n", SECRET, S_B, SECRET);
    write_keys("shared", text, path, sizeof path);
    assert_int_equal(fedge_keys_load(path, &k, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, ":3: device dev-c has the same secret as dev-a (line 1)"));
    assert_null(k.devices);

    snprintf(text, sizeof text, "dev-a eu %s\n", SECRET);
    write_keys("add", text, path, sizeof path);
    fedge_device_entry e = entry("Dev-A", "eu", 0x77);
    assert_int_equal(fedge_keys_file_add(path, &e, err, sizeof err), FEDGE_ERR_DUPLICATE);
    assert_non_null(strstr(err, "already lists device dev-a, which differs from Dev-A only in case"));
    snprintf(e.id, sizeof e.id, "dev-b");
    memset(e.secret, 0, sizeof e.secret);
    for (int i = 0; i < FEDGE_SECRET_LEN; i++)
        e.secret[i] = (uint8_t)(i % 16 * 0x11 & 0xff);
    assert_int_equal(fedge_keys_file_add(path, &e, err, sizeof err), FEDGE_ERR_DUPLICATE);
    assert_non_null(strstr(err, "device dev-a already has this secret"));
    assert_int_equal(fedge_keys_load(path, &k, err, sizeof err), FEDGE_OK);
    assert_int_equal(k.n, 1); /* unchanged */
    fedge_keys_free(&k);
}

static void test_find_keeps_file_order(void **state)
{
    (void)state;
    char text[1024], path[128], err[256] = "";
    snprintf(text, sizeof text, "dev-b eu %s\ndev-a us %s\ndev-c eu %s\n", S_B, SECRET, S_C);
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
        fprintf(f, "dev-%06d eu 00112233445566778899aabbccddeeff0011223344556677%016x\n",
                (i * 7919) % FEDGE_KEYS_MAX_DEVICES + 1, (unsigned)i);
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

static const char SECRET2[] = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

static void load_text(const char *name, const char *text, fedge_keys *k)
{
    char path[128], err[256] = "";
    write_keys(name, text, path, sizeof path);
    assert_int_equal(fedge_keys_load(path, k, err, sizeof err), FEDGE_OK);
}

/* A reload keeps every index: the removed device is a tombstone no lookup
 * finds, a changed one takes its new secret in place, a new one is
 * appended; a tombstone whose id comes back is live again. */
static void test_merge_keeps_indices(void **state)
{
    (void)state;
    char text[1024];
    fedge_keys cur, fresh, out, again, back;
    fedge_keys_diff d;
    snprintf(text, sizeof text, "dev-b eu %s\ndev-a us %s\ndev-c eu %s\n", S_B, SECRET, S_C);
    load_text("m1", text, &cur);
    snprintf(text, sizeof text, "dev-d us %s\ndev-c eu %s\ndev-b eu %s\n", S_D, SECRET2, S_B);
    load_text("m2", text, &fresh);
    assert_int_equal(fedge_keys_merge(&cur, &fresh, &out, &d), FEDGE_OK);
    assert_int_equal(out.n, 4);
    assert_int_equal(d.added, 1);
    assert_int_equal(d.removed, 1);
    assert_int_equal(d.changed, 1);
    assert_int_equal(d.live, 3);
    assert_ptr_equal(fedge_keys_find(&out, "dev-b", 5), &out.devices[0]);
    assert_null(fedge_keys_find(&out, "dev-a", 5));
    assert_true(out.devices[1].removed);
    assert_string_equal(out.devices[1].id, "dev-a");
    uint8_t zero[FEDGE_SECRET_LEN] = {0};
    assert_memory_equal(out.devices[1].secret, zero, FEDGE_SECRET_LEN); /* wiped */
    assert_ptr_equal(fedge_keys_find(&out, "dev-c", 5), &out.devices[2]);
    assert_int_equal(out.devices[2].secret[0], 0xff);
    assert_ptr_equal(fedge_keys_find(&out, "dev-d", 5), &out.devices[3]);
    assert_false(cur.devices[1].removed); /* the inputs are untouched */

    /* dev-a comes back into its old slot */
    snprintf(text, sizeof text, "dev-a us %s\ndev-b eu %s\ndev-c eu %s\ndev-d us %s\n", S_A2, S_B, SECRET2,
             S_D);
    load_text("m3", text, &again);
    assert_int_equal(fedge_keys_merge(&out, &again, &back, &d), FEDGE_OK);
    assert_int_equal(back.n, 4);
    assert_int_equal(d.added, 1);
    assert_int_equal(d.removed, 0);
    assert_ptr_equal(fedge_keys_find(&back, "dev-a", 5), &back.devices[1]);
    assert_int_equal(back.devices[1].secret[0], 0xff);
    fedge_keys_free(&cur);
    fedge_keys_free(&fresh);
    fedge_keys_free(&out);
    fedge_keys_free(&again);
    fedge_keys_free(&back);
}

static void test_file_add_remove(void **state)
{
    (void)state;
    char text[1024], path[128], err[256] = "", region[FEDGE_REGION_MAX + 1] = "";
    snprintf(text, sizeof text, "# site keys\ndev-b eu %s\n\n  dev-a us %s\n", S_B, SECRET);
    write_keys("edit", text, path, sizeof path);
    fedge_device_entry e = entry("dev-c", "ap", 0xab);
    assert_int_equal(fedge_keys_file_add(path, &e, err, sizeof err), FEDGE_OK);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    fedge_keys k;
    assert_int_equal(fedge_keys_load(path, &k, err, sizeof err), FEDGE_OK);
    assert_int_equal(k.n, 3);
    assert_string_equal(k.devices[2].id, "dev-c");
    assert_int_equal(k.devices[2].secret[5], 0xab);
    fedge_keys_free(&k);
    FILE *f = fopen(path, "r");
    char all[2048] = "";
    size_t n = fread(all, 1, sizeof all - 1, f);
    fclose(f);
    all[n] = '\0';
    assert_memory_equal(all, text, strlen(text)); /* comments and spacing kept */

    /* a duplicate id, and a file that does not load, change nothing */
    assert_int_equal(fedge_keys_file_add(path, &e, err, sizeof err), FEDGE_ERR_DUPLICATE);
    assert_non_null(strstr(err, "already lists device dev-c"));
    char bad[128];
    write_keys("bad", "dev-x eu 12\n", bad, sizeof bad);
    assert_int_equal(fedge_keys_file_add(bad, &e, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    f = fopen(bad, "r");
    n = fread(all, 1, sizeof all - 1, f);
    fclose(f);
    assert_int_equal(n, strlen("dev-x eu 12\n"));

    assert_int_equal(fedge_keys_file_remove(path, "dev-a", region, err, sizeof err), FEDGE_OK);
    assert_string_equal(region, "us");
    assert_int_equal(fedge_keys_file_remove(path, "dev-a", NULL, err, sizeof err), FEDGE_ERR_NOT_FOUND);
    assert_int_equal(fedge_keys_load(path, &k, err, sizeof err), FEDGE_OK);
    assert_int_equal(k.n, 2);
    assert_null(fedge_keys_find(&k, "dev-a", 5));
    assert_non_null(fedge_keys_find(&k, "dev-b", 5));
    assert_non_null(fedge_keys_find(&k, "dev-c", 5));
    fedge_keys_free(&k);
    /* a new file */
    char fresh[160];
    snprintf(fresh, sizeof fresh, "%s/new-keys", g_dir);
    assert_int_equal(fedge_keys_file_add(fresh, &e, err, sizeof err), FEDGE_OK);
    assert_int_equal(fedge_keys_load(fresh, &k, err, sizeof err), FEDGE_OK);
    assert_int_equal(k.n, 1);
    fedge_keys_free(&k);
}

static void test_bundle(void **state)
{
    (void)state;
    char path[160], server[FEDGE_BUNDLE_SERVER_MAX + 1], err[256] = "";
    fedge_device_entry e = entry("gw-17", "eu", 0x5a);
    snprintf(path, sizeof path, "%s/gw-17.bundle", g_dir);
    assert_int_equal(fedge_keys_bundle_write(path, &e, "[::1]:5684"), FEDGE_OK);
    assert_int_equal(fedge_keys_bundle_write(path, &e, "[::1]:5684"), FEDGE_ERR_DUPLICATE); /* never over a file */
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    fedge_keys k;
    assert_int_equal(fedge_keys_bundle_read(path, &k, server, err, sizeof err), FEDGE_OK);
    assert_string_equal(server, "[::1]:5684");
    assert_int_equal(k.n, 1);
    assert_string_equal(k.devices[0].id, "gw-17");
    assert_int_equal(k.devices[0].secret[31], 0x5a);
    fedge_keys_free(&k);
    assert_int_equal(fedge_keys_load(path, &k, err, sizeof err), FEDGE_OK); /* a keys file too */
    fedge_keys_free(&k);
    assert_int_equal(fedge_keys_bundle_write(path, &e, "host name"), FEDGE_ERR_INVALID_ARG);

    char two[128], text[512];
    snprintf(text, sizeof text, "dev-a eu %s\ndev-b eu %s\n", SECRET, S_B);
    write_keys("two", text, two, sizeof two);
    assert_int_equal(fedge_keys_bundle_read(two, &k, server, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_non_null(strstr(err, "a bundle holds one device"));
    assert_null(k.devices);
    snprintf(text, sizeof text, "# fedge-bundle server a b\ndev-a eu %s\n", SECRET);
    write_keys("badserver", text, two, sizeof two);
    assert_int_equal(fedge_keys_bundle_read(two, &k, server, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_string_equal(server, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duplicate_id_names_both_lines),
        cmocka_unit_test(test_find_keeps_file_order),
        cmocka_unit_test(test_lookalike_ids_and_shared_secrets),
        cmocka_unit_test(test_max_devices_load_fast),
        cmocka_unit_test(test_merge_keeps_indices),
        cmocka_unit_test(test_file_add_remove),
        cmocka_unit_test(test_bundle),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
