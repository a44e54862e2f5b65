/* counter.c — persistent, strictly increasing update counter (see counter.h). */
#include "counter.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "fileio.h"

#define COUNTER_FILE_MAX 32 /* 20 digits + newline, with room to spare */

uint64_t fedge_edge_now_us(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || ts.tv_sec < 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int read_counter(const char *path, uint64_t *out, int *exists)
{
    char buf[COUNTER_FILE_MAX + 1];
    size_t got = 0;
    int ret = FEDGE_OK;
    *exists = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? FEDGE_OK : FEDGE_ERR_IO;
    *exists = 1;
    CHK(fedge_read_upto(fd, buf, sizeof buf, &got));
    if (got == sizeof buf)
        FAIL(FEDGE_ERR_EDGE_COUNTER);
    buf[got] = '\0';
    if (got > 0 && buf[got - 1] == '\n')
        buf[--got] = '\0';
    if (got == 0 || got > 20 || strspn(buf, "0123456789") != got)
        FAIL(FEDGE_ERR_EDGE_COUNTER);
    errno = 0;
    unsigned long long v = strtoull(buf, NULL, 10);
    if (errno)
        FAIL(FEDGE_ERR_EDGE_COUNTER);
    *out = v;
cleanup:
    close(fd);
    return ret;
}

/* A fixed temporary name (DEVICE.counter.tmp): the counter is rewritten
 * every round, and a crash must not leave temporary files piling up. */
static int write_counter(const char *path, uint64_t v)
{
    char buf[COUNTER_FILE_MAX];
    int len = snprintf(buf, sizeof buf, "%llu\n", (unsigned long long)v);
    return fedge_write_file_atomic(path, buf, (size_t)len, 0600, FEDGE_FILE_FIXED_TMP);
}

int fedge_edge_counter_open(fedge_edge_counter *c, const char *state_dir, const char *id,
                            char *err, size_t errlen)
{
    int ret = FEDGE_OK, exists = 0;
    char errbuf[1];
    if (!err) {
        err = errbuf;
        errlen = sizeof errbuf;
    }
    memset(c, 0, sizeof *c);
    if (!state_dir)
        return FEDGE_OK;
    if (!id || !*id || strchr(id, '/')) {
        snprintf(err, errlen, "bad device id for the counter file");
        return FEDGE_ERR_INVALID_ARG;
    }
    if (mkdir(state_dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", state_dir, strerror(errno));
        return FEDGE_ERR_IO;
    }
    size_t n = strlen(state_dir) + 1 + strlen(id) + sizeof ".counter";
    c->path = malloc(n);
    if (!c->path)
        return FEDGE_ERR_NOMEM;
    snprintf(c->path, n, "%s/%s.counter", state_dir, id);
    ret = read_counter(c->path, &c->last, &exists);
    if (ret == FEDGE_ERR_EDGE_COUNTER)
        snprintf(err, errlen, "%s: not one decimal number; remove it only if no update "
                 "with a counter from it can be replayed", c->path);
    else if (ret != FEDGE_OK)
        snprintf(err, errlen, "%s: %s", c->path, strerror(errno));
    if (ret != FEDGE_OK)
        fedge_edge_counter_close(c);
    return ret;
}

int fedge_edge_counter_next(fedge_edge_counter *c, uint64_t now_us, uint64_t *out)
{
    if (c->last == UINT64_MAX)
        return FEDGE_ERR_RANGE;
    uint64_t next = c->last + 1 > now_us ? c->last + 1 : now_us;
    if (c->path) {
        int ret = write_counter(c->path, next);
        if (ret != FEDGE_OK)
            return ret;
    }
    c->last = next;
    *out = next;
    return FEDGE_OK;
}

void fedge_edge_counter_close(fedge_edge_counter *c)
{
    if (!c)
        return;
    free(c->path);
    c->path = NULL;
}
