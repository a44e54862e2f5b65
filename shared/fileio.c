/* fileio.c — durable file I/O (see fileio.h). */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

int fedge_write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return FEDGE_ERR_IO;
        if (n == 0) {
            errno = EIO;
            return FEDGE_ERR_IO;
        }
        p += n;
        len -= (size_t)n;
    }
    return FEDGE_OK;
}

int fedge_pread_all(int fd, void *buf, size_t len, uint64_t off, int short_code)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return FEDGE_ERR_IO;
        if (n == 0)
            return short_code;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return FEDGE_OK;
}

int fedge_read_upto(int fd, void *buf, size_t len, size_t *got)
{
    uint8_t *p = buf;
    *got = 0;
    while (*got < len) {
        ssize_t n = read(fd, p + *got, len - *got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return FEDGE_ERR_IO;
        if (n == 0)
            break;
        *got += (size_t)n;
    }
    return FEDGE_OK;
}

int fedge_fsync_dir(const char *dir)
{
    if (dir == NULL)
        return FEDGE_ERR_INVALID_ARG;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return FEDGE_ERR_IO;
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    if (rc == 0 || err == EINVAL)
        return FEDGE_OK;
    errno = err;
    return FEDGE_ERR_IO;
}

int fedge_fsync_dir_of(const char *path)
{
    if (path == NULL)
        return FEDGE_ERR_INVALID_ARG;
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return fedge_fsync_dir(".");
    if (slash == path)
        return fedge_fsync_dir("/");
    char *dir = strndup(path, (size_t)(slash - path));
    if (dir == NULL)
        return FEDGE_ERR_NOMEM;
    int ret = fedge_fsync_dir(dir);
    int err = errno;
    free(dir);
    errno = err;
    return ret;
}

/* ---- atomic replace --------------------------------------------------------- */

/* The target is absent or a regular file (not followed if a link). A
 * directory is left to rename(), which never replaces it (EISDIR). */
static int target_replaceable(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? FEDGE_OK : FEDGE_ERR_IO;
    return S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) ? FEDGE_OK : FEDGE_ERR_NOT_REGULAR;
}

int fedge_atomic_open(const char *path, mode_t mode, int flags, fedge_atomic_file *f)
{
    if (f == NULL)
        return FEDGE_ERR_INVALID_ARG;
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (path == NULL || path[0] == '\0' || (flags & ~FEDGE_FILE_FIXED_TMP) != 0)
        return FEDGE_ERR_INVALID_ARG;
    int ret = target_replaceable(path);
    if (ret != FEDGE_OK)
        return ret;
    const int fixed = (flags & FEDGE_FILE_FIXED_TMP) != 0;
    const char *suffix = fixed ? ".tmp" : ".tmp-XXXXXX";
    size_t n = strlen(path), sn = strlen(suffix);
    char *mem = malloc(2 * n + sn + 2);
    if (mem == NULL)
        return FEDGE_ERR_NOMEM;
    char *tmp = mem + n + 1;
    memcpy(mem, path, n + 1);
    memcpy(tmp, path, n);
    memcpy(tmp + n, suffix, sn + 1);

    /* A fixed temporary name is opened without following a link or
     * blocking on a FIFO, and must be a regular file too. */
    int fd = fixed ? open(tmp, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, mode)
                   : mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        free(mem);
        errno = err;
        return err == ELOOP || err == ENXIO ? FEDGE_ERR_NOT_REGULAR : FEDGE_ERR_IO;
    }
    f->fd = fd;
    f->path = mem;
    f->tmp_path = tmp;
    if (fixed) {
        struct stat st;
        if (fstat(fd, &st) != 0) {
            fedge_atomic_abort(f);
            return FEDGE_ERR_IO;
        }
        if (!S_ISREG(st.st_mode)) {
            f->tmp_path = NULL; /* not ours to remove */
            fedge_atomic_abort(f);
            return FEDGE_ERR_NOT_REGULAR;
        }
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0 || ftruncate(fd, 0) != 0) {
            fedge_atomic_abort(f);
            return FEDGE_ERR_IO;
        }
    }
    /* mkostemp gives 0600 and open() is cut by the umask; set it exactly,
     * before any byte is written. */
    if (fchmod(fd, mode) != 0) {
        fedge_atomic_abort(f);
        return FEDGE_ERR_IO;
    }
    return FEDGE_OK;
}

void fedge_atomic_abort(fedge_atomic_file *f)
{
    if (f == NULL || f->path == NULL)
        return;
    int err = errno;
    if (f->fd >= 0)
        close(f->fd);
    if (f->tmp_path != NULL)
        unlink(f->tmp_path);
    free(f->path);
    memset(f, 0, sizeof *f);
    f->fd = -1;
    errno = err;
}

int fedge_atomic_commit(fedge_atomic_file *f)
{
    if (f == NULL || f->path == NULL || f->fd < 0)
        return FEDGE_ERR_INVALID_ARG;
    int ret = FEDGE_OK;
    if (fsync(f->fd) != 0) {
        ret = FEDGE_ERR_IO;
    } else {
        int rc = close(f->fd);
        f->fd = -1;
        if (rc != 0)
            ret = FEDGE_ERR_IO;
        if (ret == FEDGE_OK) /* again: it may have appeared since the open */
            ret = target_replaceable(f->path);
        if (ret == FEDGE_OK && rename(f->tmp_path, f->path) != 0)
            ret = FEDGE_ERR_IO;
    }
    if (ret != FEDGE_OK) {
        fedge_atomic_abort(f);
        return ret;
    }
    f->tmp_path = NULL; /* renamed: nothing left to remove */
    ret = fedge_fsync_dir_of(f->path);
    fedge_atomic_abort(f); /* frees the names only */
    return ret;
}

int fedge_write_file_atomic(const char *path, const void *buf, size_t len, mode_t mode,
                            int flags)
{
    if (buf == NULL && len > 0)
        return FEDGE_ERR_INVALID_ARG;
    fedge_atomic_file f;
    int ret = fedge_atomic_open(path, mode, flags, &f);
    if (ret != FEDGE_OK)
        return ret;
    ret = fedge_write_all(f.fd, buf, len);
    if (ret != FEDGE_OK) {
        fedge_atomic_abort(&f);
        return ret;
    }
    return fedge_atomic_commit(&f);
}

/* ---- in place ----------------------------------------------------------------- */

int fedge_write_file_inplace(const char *path, const void *buf, size_t len, mode_t mode,
                             int flags)
{
    if (path == NULL || (buf == NULL && len > 0) || (flags & ~FEDGE_FILE_EXCL) != 0)
        return FEDGE_ERR_INVALID_ARG;
    const int excl = (flags & FEDGE_FILE_EXCL) != 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (excl ? O_EXCL : O_TRUNC), mode);
    if (fd < 0)
        return excl && errno == EEXIST ? FEDGE_ERR_DUPLICATE : FEDGE_ERR_IO;
    int ret = FEDGE_OK;
    if (fchmod(fd, mode) != 0) /* the umask may have cut bits from mode */
        ret = FEDGE_ERR_IO;
    if (ret == FEDGE_OK)
        ret = fedge_write_all(fd, buf, len);
    if (ret == FEDGE_OK && fsync(fd) != 0)
        ret = FEDGE_ERR_IO;
    int err = errno;
    if (close(fd) != 0 && ret == FEDGE_OK) {
        ret = FEDGE_ERR_IO;
        err = errno;
    }
    if (ret != FEDGE_OK) {
        unlink(path);
        errno = err;
    }
    return ret;
}

/* ---- reading operator-supplied files ------------------------------------------ */

int fedge_open_regular(const char *path, int flags, int *fd_out, struct stat *st)
{
    struct stat tmp;
    if (fd_out)
        *fd_out = -1;
    if (path == NULL || fd_out == NULL || (flags & ~FEDGE_FILE_NOFOLLOW) != 0)
        return FEDGE_ERR_INVALID_ARG;
    if (st == NULL)
        st = &tmp;
    int nofollow = (flags & FEDGE_FILE_NOFOLLOW) != 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | (nofollow ? O_NOFOLLOW : 0));
    if (fd < 0)
        return nofollow && errno == ELOOP ? FEDGE_ERR_NOT_REGULAR : FEDGE_ERR_IO;
    if (fstat(fd, st) != 0)
        goto io;
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        return FEDGE_ERR_NOT_REGULAR;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0)
        goto io;
    *fd_out = fd;
    return FEDGE_OK;
io:;
    int err = errno;
    close(fd);
    errno = err;
    return FEDGE_ERR_IO;
}

int fedge_fopen_regular(const char *path, int flags, FILE **out, struct stat *st)
{
    int fd = -1;
    if (out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    int ret = fedge_open_regular(path, flags, &fd, st);
    if (ret != FEDGE_OK)
        return ret;
    *out = fdopen(fd, "r");
    if (*out == NULL) {
        int err = errno;
        close(fd);
        errno = err;
        return err == ENOMEM ? FEDGE_ERR_NOMEM : FEDGE_ERR_IO;
    }
    return FEDGE_OK;
}

int fedge_read_regular(const char *path, int flags, size_t max, char **buf, size_t *len)
{
    int ret, fd = -1;
    struct stat st;
    char *data = NULL;
    if (buf == NULL || len == NULL)
        return FEDGE_ERR_INVALID_ARG;
    *buf = NULL;
    *len = 0;
    CHK(fedge_open_regular(path, flags, &fd, &st));
    if ((uint64_t)st.st_size > max)
        FAIL(FEDGE_ERR_RANGE);
    size_t cap = (size_t)st.st_size;
    data = malloc(cap + 1);
    if (data == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    size_t got;
    CHK(fedge_read_upto(fd, data, cap, &got)); /* a file that shrank while read ends early */
    data[got] = '\0';
    *buf = data;
    *len = got;
    data = NULL;
cleanup:
    free(data);
    if (fd >= 0) {
        int err = errno;
        close(fd);
        errno = err;
    }
    return ret;
}
