/* observe.c — see observe.h. */
#include "observe.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "fileio.h"
#include "hash.h"

int fedge_observe_value(const uint8_t *bytes, size_t len, uint32_t *out)
{
    if (!out || (len && !bytes) || len > FEDGE_OBSERVE_SEQ_BITS / 8)
        return FEDGE_ERR_INVALID_ARG;
    uint32_t v = 0;
    for (size_t i = 0; i < len; i++)
        v = v << 8 | bytes[i];
    *out = v;
    return FEDGE_OK;
}

int fedge_observe_is_fresher(uint32_t v1, uint64_t t1_ms, uint32_t v2, uint64_t t2_ms)
{
    const uint32_t half = 1u << (FEDGE_OBSERVE_SEQ_BITS - 1);
    v1 &= (1u << FEDGE_OBSERVE_SEQ_BITS) - 1;
    v2 &= (1u << FEDGE_OBSERVE_SEQ_BITS) - 1;
    return (v1 < v2 && v2 - v1 < half) || (v1 > v2 && v1 - v2 > half) ||
           t2_ms > t1_ms + FEDGE_OBSERVE_FRESH_MS;
}

int fedge_finished_marker_path(const char *state_dir, const char *id, char **out)
{
    if (!state_dir || !id || !out)
        return FEDGE_ERR_INVALID_ARG;
    size_t n = strlen(state_dir) + 1 + strlen(id) + sizeof ".finished";
    *out = malloc(n);
    if (!*out)
        return FEDGE_ERR_NOMEM;
    snprintf(*out, n, "%s/%s.finished", state_dir, id);
    return FEDGE_OK;
}

int fedge_finished_marker_parse(const char *text, size_t len, uint8_t run_id[FEDGE_RUN_ID_LEN])
{
    char hex[2 * FEDGE_RUN_ID_LEN + 1];
    if (!text || !run_id)
        return FEDGE_ERR_INVALID_ARG;
    if (len && text[len - 1] == '\n')
        len--;
    if (len != 4 + 2 * FEDGE_RUN_ID_LEN || memcmp(text, "run=", 4) != 0)
        return FEDGE_ERR_PROTO;
    memcpy(hex, text + 4, 2 * FEDGE_RUN_ID_LEN);
    hex[2 * FEDGE_RUN_ID_LEN] = '\0';
    return fedge_hex_decode(hex, run_id, FEDGE_RUN_ID_LEN) == FEDGE_OK ? FEDGE_OK : FEDGE_ERR_PROTO;
}

int fedge_finished_marker_read(const char *path, uint8_t run_id[FEDGE_RUN_ID_LEN], int *present)
{
    char buf[FEDGE_FINISHED_MARKER_MAX];
    if (!path || !run_id || !present)
        return FEDGE_ERR_INVALID_ARG;
    *present = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? FEDGE_OK : FEDGE_ERR_IO;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof buf - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            close(fd);
            return FEDGE_ERR_IO;
        }
        if (r == 0 || (n += (size_t)r) == sizeof buf)
            break;
    }
    close(fd);
    int ret = fedge_finished_marker_parse(buf, n, run_id);
    if (ret == FEDGE_OK)
        *present = 1;
    return ret;
}

int fedge_finished_marker_write(const char *path, const uint8_t run_id[FEDGE_RUN_ID_LEN])
{
    char line[4 + 2 * FEDGE_RUN_ID_LEN + 2];
    if (!path || !run_id)
        return FEDGE_ERR_INVALID_ARG;
    memcpy(line, "run=", 4);
    fedge_hex_encode(run_id, FEDGE_RUN_ID_LEN, line + 4);
    line[4 + 2 * FEDGE_RUN_ID_LEN] = '\n';
    return fedge_write_file_atomic(path, line, sizeof line - 1, 0600, FEDGE_FILE_FIXED_TMP);
}

int fedge_finished_marker_clear(const char *path)
{
    if (!path)
        return FEDGE_ERR_INVALID_ARG;
    if (unlink(path) != 0 && errno != ENOENT)
        return FEDGE_ERR_IO;
    return FEDGE_OK;
}
