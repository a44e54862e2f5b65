/* fuzz_util.h — shared by the libFuzzer targets in tests/fuzz/.
 *
 * FUZZ_CHECK(cond): an invariant the code under test must keep; a violation
 * aborts, so libFuzzer records the input as a crash.
 * fuzz_write_file(): loaders that only take a path get the input through one
 * temporary file per process (mode 0600, in $TMPDIR or /tmp), rewritten for
 * every input and removed at exit. */
#ifndef FEDGE_FUZZ_UTIL_H
#define FEDGE_FUZZ_UTIL_H

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hash.h"
#include "log.h"

#define FUZZ_CHECK(cond)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                     \
            abort();                                                            \
        }                                                                       \
    } while (0)

static inline char *fuzz_path_buf(void)
{
    static char path[256];
    return path;
}

static inline void fuzz_remove_file(void)
{
    if (fuzz_path_buf()[0] != '\0')
        unlink(fuzz_path_buf());
}

/* Writes data to the per-process temporary file; returns its path. */
static inline const char *fuzz_write_file(const uint8_t *data, size_t size)
{
    char *fuzz_path = fuzz_path_buf();
    if (fuzz_path[0] == '\0') {
        const char *dir = getenv("TMPDIR");
        snprintf(fuzz_path, 256, "%s/fedge-fuzz.XXXXXX",
                 dir != NULL && dir[0] != '\0' ? dir : "/tmp");
        int fd = mkstemp(fuzz_path);
        FUZZ_CHECK(fd >= 0);
        close(fd);
        atexit(fuzz_remove_file);
    }
    int fd = open(fuzz_path, O_WRONLY | O_TRUNC);
    FUZZ_CHECK(fd >= 0);
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        FUZZ_CHECK(w > 0);
        off += (size_t)w;
    }
    close(fd);
    return fuzz_path;
}

/* Copies data with its last 32 bytes replaced by the SHA-256 of the rest,
 * so inputs get past a file's trailing checksum; *out is malloc'd. Returns
 * 0 when the input is too short to have a trailer (nothing allocated). */
static inline int fuzz_fix_checksum(const uint8_t *data, size_t size, uint8_t **out)
{
    *out = NULL;
    if (size < FEDGE_HASH_LEN)
        return 0;
    uint8_t *b = malloc(size);
    FUZZ_CHECK(b != NULL);
    memcpy(b, data, size);
    FUZZ_CHECK(fedge_sha256(b, size - FEDGE_HASH_LEN, b + size - FEDGE_HASH_LEN) == 0);
    *out = b;
    return 1;
}

/* The library logs through fedge_log; a fuzzer run stays quiet. */
static inline void fuzz_quiet(void)
{
    static int done;
    if (!done) {
        fedge_log_set_level(FEDGE_LOG_OFF);
        done = 1;
    }
}

#endif
