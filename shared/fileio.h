/* fileio.h — durable file I/O: whole reads and writes, directory fsync, and
 * atomic replacement of a file.
 *
 * Atomic replace (fedge_atomic_*, fedge_write_file_atomic): the bytes go to a
 * temporary file next to PATH (PATH.tmp-XXXXXX, unique; or PATH.tmp with
 * FEDGE_FILE_FIXED_TMP, for a file rewritten often so a crash cannot leave
 * temporary files piling up), which gets exactly `mode`, is written,
 * fsync'd, closed and renamed over PATH; then PATH's directory is fsync'd.
 * Any failure before the rename removes the temporary file and leaves an
 * existing PATH as it was: a reader sees the old bytes or the new, never a
 * mix. A failure of the final directory fsync is reported although PATH
 * already holds the new bytes.
 *
 * Only a regular file is replaced: a PATH that exists as anything else (a
 * device such as /dev/null, a FIFO, a socket, or a symbolic link, which is
 * not followed) is refused with FEDGE_ERR_NOT_REGULAR, checked at the open
 * and again just before the rename; a directory makes the rename fail
 * (FEDGE_ERR_IO, errno EISDIR). (Replacing a link would
 * leave the file it points to unchanged and the link gone; a caller that
 * wants the link's target resolves it first.) The fixed temporary name
 * PATH.tmp is likewise never a link, FIFO or device.
 *
 * Errors: FEDGE_ERR_INVALID_ARG (NULL argument, empty path to replace,
 * unknown flag), FEDGE_ERR_NOMEM, FEDGE_ERR_NOT_REGULAR (above), FEDGE_ERR_DUPLICATE (FEDGE_FILE_EXCL and
 * the file exists), FEDGE_ERR_IO for any failed system call. With FEDGE_ERR_IO and
 * FEDGE_ERR_DUPLICATE errno is left as the failing call set it (so a caller
 * can tell ENOENT, a missing directory, or print strerror). A directory
 * fsync the file system does not support (EINVAL) counts as done. */
#ifndef FEDGE_FILEIO_H
#define FEDGE_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>

enum {
    FEDGE_FILE_FIXED_TMP = 1, /* atomic: temporary file PATH.tmp (created or truncated) */
    FEDGE_FILE_EXCL = 2,      /* in place: the file must not exist yet */
    FEDGE_FILE_NOFOLLOW = 4,  /* reading: a symbolic link as the last component is refused */
};

/* Writes all len bytes, retrying on EINTR and short writes. */
int fedge_write_all(int fd, const void *buf, size_t len);
/* Reads exactly len bytes at offset off, retrying on EINTR and short reads;
 * returns short_code if the file ends first. */
int fedge_pread_all(int fd, void *buf, size_t len, uint64_t off, int short_code);
/* Reads from fd's offset until len bytes or the end of the file, retrying on
 * EINTR and short reads; *got the bytes read (fewer than len only at the end).
 * FEDGE_ERR_IO (errno set) on a read error. */
int fedge_read_upto(int fd, void *buf, size_t len, size_t *got);
/* fsync of a directory, named itself or as the parent of path ("." when
 * path has no slash). */
int fedge_fsync_dir(const char *dir);
int fedge_fsync_dir_of(const char *path);

/* A file being written for atomic replacement. A zero-initialised one is
 * closed: fedge_atomic_abort on it does nothing. */
typedef struct {
    int fd;         /* write the content here (fedge_write_all) */
    char *path;     /* owned, one allocation with tmp_path: the target */
    char *tmp_path; /* the temporary file */
} fedge_atomic_file;

/* Creates the temporary file for path (flags: 0 or FEDGE_FILE_FIXED_TMP).
 * On success the caller must end with commit or abort. */
int fedge_atomic_open(const char *path, mode_t mode, int flags, fedge_atomic_file *f);
/* fsync, close, rename over the target, fsync its directory. Success or
 * failure, *f is closed afterwards (and on failure before the rename the
 * temporary file is gone). */
int fedge_atomic_commit(fedge_atomic_file *f);
/* Closes and removes the temporary file; keeps errno. Safe to call twice. */
void fedge_atomic_abort(fedge_atomic_file *f);
/* The one-shot form: open, write buf, commit. */
int fedge_write_file_atomic(const char *path, const void *buf, size_t len, mode_t mode,
                            int flags);

/* Writes buf to path itself (no temporary file, no directory fsync), fsyncs
 * and closes it; the file ends with exactly `mode`. flags 0: create or
 * truncate; FEDGE_FILE_EXCL: create only, FEDGE_ERR_DUPLICATE if it exists.
 * On a failure after the open the file is removed, so no half-written file
 * is left. Not atomic: for a file nobody reads before it is complete (a new
 * key file; a file inside a checkpoint folder renamed into place later). */
int fedge_write_file_inplace(const char *path, const void *buf, size_t len, mode_t mode,
                             int flags);

/* Reading a file an operator names (keys, policy, bundle, signing keys,
 * config): only a regular file is read. The open never blocks (O_NONBLOCK,
 * so a FIFO with no writer cannot hang the caller; cleared again after the
 * check) and is O_CLOEXEC; with FEDGE_FILE_NOFOLLOW a symbolic link is
 * refused. A FIFO, device, socket, directory (or refused link) gives
 * FEDGE_ERR_NOT_REGULAR; any other failure FEDGE_ERR_IO with errno as the
 * failing call set it (ENOENT: no such file). st (may be NULL) receives the
 * file's fstat. flags: 0 or FEDGE_FILE_NOFOLLOW. */
int fedge_open_regular(const char *path, int flags, int *fd_out, struct stat *st);
/* The same as a stdio stream opened "r". */
int fedge_fopen_regular(const char *path, int flags, FILE **out, struct stat *st);
/* The whole file into a new buffer (*buf, caller frees; NUL-terminated,
 * *len bytes without the NUL); FEDGE_ERR_RANGE if it holds more than max
 * bytes, FEDGE_ERR_NOMEM. */
int fedge_read_regular(const char *path, int flags, size_t max, char **buf, size_t *len);

#endif
