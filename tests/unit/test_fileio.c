/* test_fileio.c — bytes.h packing and fileio.h durable writes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bytes.h"
#include "error.h"
#include "fileio.h"

typedef struct {
    char dir[64];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/fedge-fileio-XXXXXX");
    if (!f || !mkdtemp(f->dir))
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    DIR *d = opendir(f->dir);
    struct dirent *e;
    char p[512];
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "%s/%s", f->dir, e->d_name);
        if (unlink(p) != 0)
            rmdir(p);
    }
    if (d)
        closedir(d);
    rmdir(f->dir);
    free(f);
    return 0;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    if (d)
        closedir(d);
    return n;
}

static size_t slurp(const char *path, char *buf, size_t cap)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t n = fread(buf, 1, cap, fp);
    fclose(fp);
    return n;
}

static void test_bytes_layout(void **state)
{
    (void)state;
    uint8_t b[3 + 8];
    uint8_t *p = b + 3; /* deliberately unaligned */
    fedge_put_u16(p, 0x1234);
    assert_int_equal(p[0], 0x34);
    assert_int_equal(p[1], 0x12);
    assert_int_equal(fedge_get_u16(p), 0x1234);
    fedge_put_u32(p, 0x89abcdefu);
    static const uint8_t w32[4] = {0xef, 0xcd, 0xab, 0x89};
    assert_memory_equal(p, w32, 4);
    assert_int_equal(fedge_get_u32(p), 0x89abcdefu);
    fedge_put_u64(p, 0x0102030405060708ull);
    static const uint8_t w64[8] = {8, 7, 6, 5, 4, 3, 2, 1};
    assert_memory_equal(p, w64, 8);
    assert_true(fedge_get_u64(p) == 0x0102030405060708ull);
    fedge_put_f32(p, 1.0f);
    static const uint8_t one[4] = {0x00, 0x00, 0x80, 0x3f};
    assert_memory_equal(p, one, 4);
    assert_true(fedge_get_f32(p) == 1.0f);
    static const uint8_t nan_payload[4] = {0x01, 0x00, 0xc0, 0x7f};
    float v = fedge_get_f32(nan_payload);
    assert_true(isnan(v));
    fedge_put_f32(p, v);
    assert_memory_equal(p, nan_payload, 4);
}

static void test_atomic_write_replace(void **state)
{
    fixture *f = *state;
    char path[128], buf[64];
    snprintf(path, sizeof path, "%s/a.txt", f->dir);
    assert_int_equal(fedge_write_file_atomic(path, "old\n", 4, 0640, 0), FEDGE_OK);
    assert_int_equal(fedge_write_file_atomic(path, "newer\n", 6, 0640, 0), FEDGE_OK);
    assert_int_equal(slurp(path, buf, sizeof buf), 6);
    assert_memory_equal(buf, "newer\n", 6);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    assert_int_equal(count_entries(f->dir), 1);

    /* fixed temporary name, and a stale one is reused */
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    fputs("stale garbage that is longer", fp);
    fclose(fp);
    chmod(tmp, 0666);
    assert_int_equal(fedge_write_file_atomic(path, "x", 1, 0600, FEDGE_FILE_FIXED_TMP), FEDGE_OK);
    assert_int_equal(slurp(path, buf, sizeof buf), 1);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(count_entries(f->dir), 1);

    /* a failure before the rename: old content kept, no temp file, errno kept */
    assert_int_equal(mkdir(tmp, 0700), 0);
    errno = 0;
    assert_int_equal(fedge_write_file_atomic(path, "yy", 2, 0600, FEDGE_FILE_FIXED_TMP),
                     FEDGE_ERR_IO);
    assert_int_equal(errno, EISDIR);
    assert_int_equal(rmdir(tmp), 0);
    assert_int_equal(slurp(path, buf, sizeof buf), 1);
    /* rename onto a directory */
    char sub[128];
    snprintf(sub, sizeof sub, "%s/sub", f->dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_int_equal(fedge_write_file_atomic(sub, "z", 1, 0644, 0), FEDGE_ERR_IO);
    assert_int_equal(count_entries(f->dir), 2);
    assert_int_equal(rmdir(sub), 0);
    /* a missing directory: IO with errno ENOENT */
    snprintf(sub, sizeof sub, "%s/no/such/file", f->dir);
    errno = 0;
    assert_int_equal(fedge_write_file_atomic(sub, "z", 1, 0644, 0), FEDGE_ERR_IO);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(fedge_write_file_atomic("", "z", 1, 0644, 0), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_write_file_atomic(path, "z", 1, 0644, 4), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(count_entries(f->dir), 1);
}

/* Only a regular file is replaced: never a FIFO or a symbolic link (nor what
 * it points to), whether there at the open or only at the commit;
 * and the fixed temporary name is never a link or FIFO either. */
static void test_atomic_refuses_non_regular(void **state)
{
    fixture *f = *state;
    char path[128], target[128], tmp[160], buf[64];
    struct stat st;
    snprintf(path, sizeof path, "%s/out", f->dir);
    snprintf(target, sizeof target, "%s/target", f->dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    assert_int_equal(mkfifo(path, 0600), 0);
    for (int fl = 0; fl <= FEDGE_FILE_FIXED_TMP; fl += FEDGE_FILE_FIXED_TMP)
        assert_int_equal(fedge_write_file_atomic(path, "x", 1, 0644, fl), FEDGE_ERR_NOT_REGULAR);
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISFIFO(st.st_mode));
    assert_int_equal(count_entries(f->dir), 1);
    assert_int_equal(unlink(path), 0);

    assert_int_equal(fedge_write_file_atomic(target, "keep", 4, 0644, 0), FEDGE_OK);
    assert_int_equal(symlink("target", path), 0);
    assert_int_equal(fedge_write_file_atomic(path, "x", 1, 0644, 0), FEDGE_ERR_NOT_REGULAR);
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    assert_int_equal(slurp(target, buf, sizeof buf), 4);
    assert_int_equal(unlink(path), 0);

    /* appears between the open and the commit */
    fedge_atomic_file af;
    assert_int_equal(fedge_atomic_open(path, 0644, 0, &af), FEDGE_OK);
    assert_int_equal(fedge_write_all(af.fd, "x", 1), FEDGE_OK);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(fedge_atomic_commit(&af), FEDGE_ERR_NOT_REGULAR);
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISFIFO(st.st_mode));
    assert_int_equal(count_entries(f->dir), 2); /* target and the FIFO, no temporary file */
    assert_int_equal(unlink(path), 0);

    /* the fixed temporary name as a link or a FIFO */
    assert_int_equal(symlink("target", tmp), 0);
    assert_int_equal(fedge_write_file_atomic(path, "x", 1, 0644, FEDGE_FILE_FIXED_TMP),
                     FEDGE_ERR_NOT_REGULAR);
    assert_int_equal(slurp(target, buf, sizeof buf), 4);
    assert_int_equal(unlink(tmp), 0);
    assert_int_equal(mkfifo(tmp, 0600), 0);
    assert_int_equal(fedge_write_file_atomic(path, "x", 1, 0644, FEDGE_FILE_FIXED_TMP),
                     FEDGE_ERR_NOT_REGULAR);
    assert_int_equal(lstat(tmp, &st), 0);
    assert_true(S_ISFIFO(st.st_mode));
    assert_int_equal(unlink(tmp), 0);
    assert_int_equal(count_entries(f->dir), 1);
    /* a regular file is still replaced */
    assert_int_equal(fedge_write_file_atomic(target, "new", 3, 0644, FEDGE_FILE_FIXED_TMP), FEDGE_OK);
    assert_int_equal(slurp(target, buf, sizeof buf), 3);
}

/* fedge_open_regular: a FIFO (no writer: a blocking open would hang here), a
 * directory, and with FEDGE_FILE_NOFOLLOW a link, are refused at once; a
 * regular file opens blocking and close-on-exec. */
static void test_open_regular(void **state)
{
    fixture *f = *state;
    char path[128], fifo[128], link[128], dir[128];
    int fd = 7;
    struct stat st;
    FILE *fp = NULL;
    char *buf = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/file", f->dir);
    snprintf(fifo, sizeof fifo, "%s/fifo", f->dir);
    snprintf(link, sizeof link, "%s/link", f->dir);
    snprintf(dir, sizeof dir, "%s/dir", f->dir);
    assert_int_equal(fedge_write_file_atomic(path, "hello", 5, 0600, 0), FEDGE_OK);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(symlink("file", link), 0);
    assert_int_equal(mkdir(dir, 0700), 0);

    assert_int_equal(fedge_open_regular(fifo, 0, &fd, NULL), FEDGE_ERR_NOT_REGULAR);
    assert_int_equal(fd, -1);
    assert_int_equal(fedge_fopen_regular(fifo, 0, &fp, NULL), FEDGE_ERR_NOT_REGULAR);
    assert_null(fp);
    assert_int_equal(fedge_read_regular(fifo, 0, 100, &buf, &len), FEDGE_ERR_NOT_REGULAR);
    assert_null(buf);
    assert_int_equal(fedge_open_regular(dir, 0, &fd, NULL), FEDGE_ERR_NOT_REGULAR);
    assert_int_equal(fedge_open_regular(link, FEDGE_FILE_NOFOLLOW, &fd, NULL), FEDGE_ERR_NOT_REGULAR);
    errno = 0;
    assert_int_equal(fedge_open_regular("/nonexistent/x", 0, &fd, NULL), FEDGE_ERR_IO);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(fedge_open_regular(path, 7, &fd, NULL), FEDGE_ERR_INVALID_ARG);

    assert_int_equal(fedge_open_regular(link, 0, &fd, &st), FEDGE_OK); /* followed without the flag */
    assert_int_equal(st.st_size, 5);
    assert_int_equal(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
    assert_int_equal(fedge_fopen_regular(path, FEDGE_FILE_NOFOLLOW, &fp, NULL), FEDGE_OK);
    char line[16];
    assert_non_null(fgets(line, sizeof line, fp));
    assert_string_equal(line, "hello");
    fclose(fp);
    assert_int_equal(fedge_read_regular(path, 0, 4, &buf, &len), FEDGE_ERR_RANGE);
    assert_null(buf);
    assert_int_equal(fedge_read_regular(path, 0, 5, &buf, &len), FEDGE_OK);
    assert_int_equal(len, 5);
    assert_string_equal(buf, "hello");
    free(buf);
    rmdir(dir);
}

static void test_atomic_streaming(void **state)
{
    fixture *f = *state;
    char path[128], buf[64];
    snprintf(path, sizeof path, "%s/s.bin", f->dir);
    fedge_atomic_file a = {0};
    fedge_atomic_abort(&a); /* zero-initialised: nothing happens */
    assert_int_equal(fedge_atomic_open(path, 0644, 0, &a), FEDGE_OK);
    assert_int_equal(fedge_write_all(a.fd, "ab", 2), FEDGE_OK);
    assert_int_equal(fedge_write_all(a.fd, "cd", 2), FEDGE_OK);
    assert_int_not_equal(access(path, F_OK), 0); /* not there before the commit */
    assert_int_equal(count_entries(f->dir), 1);
    assert_int_equal(fedge_atomic_commit(&a), FEDGE_OK);
    assert_int_equal(a.fd, -1);
    assert_null(a.path);
    fedge_atomic_abort(&a); /* after commit: nothing happens */
    assert_int_equal(slurp(path, buf, sizeof buf), 4);
    assert_memory_equal(buf, "abcd", 4);

    assert_int_equal(fedge_atomic_open(path, 0644, 0, &a), FEDGE_OK);
    assert_int_equal(fedge_write_all(a.fd, "zz", 2), FEDGE_OK);
    errno = ERANGE;
    fedge_atomic_abort(&a);
    assert_int_equal(errno, ERANGE);
    fedge_atomic_abort(&a); /* twice */
    assert_int_equal(count_entries(f->dir), 1);
    assert_int_equal(slurp(path, buf, sizeof buf), 4);
    assert_memory_equal(buf, "abcd", 4);
}

static void test_inplace(void **state)
{
    fixture *f = *state;
    char path[128], buf[64];
    snprintf(path, sizeof path, "%s/k.pem", f->dir);
    assert_int_equal(fedge_write_file_inplace(path, "key", 3, 0600, FEDGE_FILE_EXCL), FEDGE_OK);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    errno = 0;
    assert_int_equal(fedge_write_file_inplace(path, "other", 5, 0600, FEDGE_FILE_EXCL),
                     FEDGE_ERR_DUPLICATE);
    assert_int_equal(errno, EEXIST);
    assert_int_equal(slurp(path, buf, sizeof buf), 3); /* untouched */
    assert_int_equal(fedge_write_file_inplace(path, "other", 5, 0644, 0), FEDGE_OK);
    assert_int_equal(slurp(path, buf, sizeof buf), 5);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(fedge_write_file_inplace(f->dir, "x", 1, 0644, 0), FEDGE_ERR_IO);
    assert_int_equal(fedge_write_file_inplace(path, "x", 1, 0644, FEDGE_FILE_FIXED_TMP),
                     FEDGE_ERR_INVALID_ARG);
}

/* fedge_read_upto: whole over short reads (a pipe a child writes twice, 50 ms
 * apart), stops at len and at the end, FEDGE_ERR_IO on a closed descriptor. */
static void test_read_upto(void **state)
{
    (void)state;
    int p[2], status = 0;
    char buf[16];
    size_t got = 99;
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        int ok = fedge_write_all(p[1], "abc", 3) == FEDGE_OK;
        usleep(50000);
        ok = ok && fedge_write_all(p[1], "defghij", 7) == FEDGE_OK;
        _exit(ok ? 0 : 1);
    }
    close(p[1]);
    assert_int_equal(fedge_read_upto(p[0], buf, 8, &got), FEDGE_OK);
    assert_int_equal(got, 8);
    assert_memory_equal(buf, "abcdefgh", 8);
    assert_int_equal(fedge_read_upto(p[0], buf, sizeof buf, &got), FEDGE_OK);
    assert_int_equal(got, 2);
    assert_memory_equal(buf, "ij", 2);
    assert_int_equal(fedge_read_upto(p[0], buf, sizeof buf, &got), FEDGE_OK);
    assert_int_equal(got, 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(p[0]);
    assert_int_equal(fedge_read_upto(p[0], buf, sizeof buf, &got), FEDGE_ERR_IO);
    assert_int_equal(errno, EBADF);
}

static void test_dirs_and_reads(void **state)
{
    fixture *f = *state;
    char path[128];
    snprintf(path, sizeof path, "%s/r.bin", f->dir);
    assert_int_equal(fedge_fsync_dir(f->dir), FEDGE_OK);
    assert_int_equal(fedge_fsync_dir_of(path), FEDGE_OK);
    assert_int_equal(fedge_fsync_dir_of("relative-name"), FEDGE_OK);
    assert_int_equal(fedge_fsync_dir_of("/top"), FEDGE_OK);
    assert_int_equal(fedge_fsync_dir("/no/such/dir"), FEDGE_ERR_IO);
    assert_int_equal(fedge_write_file_atomic(path, "0123456789", 10, 0644, 0), FEDGE_OK);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    char b[8];
    assert_int_equal(fedge_pread_all(fd, b, 4, 6, -999), FEDGE_OK);
    assert_memory_equal(b, "6789", 4);
    assert_int_equal(fedge_pread_all(fd, b, 5, 6, -999), -999);
    assert_int_equal(fedge_write_all(fd, "x", 1), FEDGE_ERR_IO); /* read-only fd */
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_layout),
        cmocka_unit_test_setup_teardown(test_atomic_write_replace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_atomic_streaming, setup, teardown),
        cmocka_unit_test_setup_teardown(test_atomic_refuses_non_regular, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inplace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_regular, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dirs_and_reads, setup, teardown),
        cmocka_unit_test(test_read_upto),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
