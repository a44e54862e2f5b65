#include "cluster_checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "common.h"
#include "fileio.h"

#define OPTIM_MAGIC "FOPT"
#define OPTIM_VERSION 1u
#define OPTIM_HEADER 40
#define STATE_MAX 65536

/* ---- small file helpers ------------------------------------------------- */

/* Checkpoint files are written in place: the folder holding them is what
 * is renamed into place (fedge_ckpt_commit). */
static int write_all_fsync(const char *path, const void *buf, size_t len)
{
    return fedge_write_file_inplace(path, buf, len, 0644, 0);
}

static int read_whole(const char *path, size_t max, uint8_t **out, size_t *len)
{
    int ret = FEDGE_OK;
    uint8_t *buf = NULL;
    struct stat sb;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? FEDGE_ERR_NOT_FOUND : FEDGE_ERR_IO;
    if (fstat(fd, &sb) != 0)
        FAIL(FEDGE_ERR_IO);
    if (sb.st_size < 0 || (uint64_t)sb.st_size > max)
        FAIL(FEDGE_ERR_CLUSTER_CHECKPOINT);
    buf = malloc((size_t)sb.st_size + 1);
    if (buf == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    size_t done = 0;
    while (done < (size_t)sb.st_size) {
        ssize_t k = read(fd, buf + done, (size_t)sb.st_size - done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            FAIL(FEDGE_ERR_IO);
        done += (size_t)k;
    }
    buf[done] = 0;
    *out = buf;
    *len = done;
    buf = NULL;
cleanup:
    free(buf);
    close(fd);
    return ret;
}

/* Removes a folder of plain files (checkpoint folders hold nothing else). */
static int remove_flat_dir(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return errno == ENOENT ? FEDGE_OK : FEDGE_ERR_IO;
    struct dirent *e;
    char p[FEDGE_CKPT_PATH_MAX];
    int ret = FEDGE_OK;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if ((size_t)snprintf(p, sizeof(p), "%s/%s", path, e->d_name) >= sizeof(p)
            || unlink(p) != 0)
            ret = FEDGE_ERR_IO;
    }
    closedir(d);
    if (rmdir(path) != 0)
        ret = FEDGE_ERR_IO;
    return ret;
}

static int join(char *out, size_t cap, const char *dir, const char *name)
{
    return (size_t)snprintf(out, cap, "%s/%s", dir, name) < cap ? FEDGE_OK
                                                                : FEDGE_ERR_BUFFER_TOO_SMALL;
}

/* ---- layout ------------------------------------------------------------- */

int fedge_ckpt_dir(const char *root, uint64_t step, int tmp, char *out, size_t cap)
{
    if (root == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    int k = snprintf(out, cap, "%s/step-%010" PRIu64 "%s", root, step, tmp ? ".tmp" : "");
    return (k < 0 || (size_t)k >= cap) ? FEDGE_ERR_BUFFER_TOO_SMALL : FEDGE_OK;
}

int fedge_ckpt_begin(const char *root, uint64_t step, char *tmpdir, size_t cap)
{
    int ret;
    if (mkdir(root, 0755) != 0 && errno != EEXIST)
        return FEDGE_ERR_IO;
    CHK(fedge_ckpt_dir(root, step, 1, tmpdir, cap));
    CHK(remove_flat_dir(tmpdir));
    if (mkdir(tmpdir, 0755) != 0)
        FAIL(FEDGE_ERR_IO);
cleanup:
    return ret;
}

/* ---- optimizer slices --------------------------------------------------- */

int fedge_ckpt_write_optim(const char *dir, int shard, int n_shards, uint64_t step,
                           size_t n_params, size_t off, size_t count, const float *v)
{
    int ret = FEDGE_OK;
    char path[FEDGE_CKPT_PATH_MAX], name[64];
    uint8_t *buf = NULL;
    if (dir == NULL || shard < 0 || shard >= n_shards || off > n_params
        || count > n_params - off || (count > 0 && v == NULL))
        return FEDGE_ERR_INVALID_ARG;
    snprintf(name, sizeof(name), "optim-rank-%d-of-%d.bin", shard, n_shards);
    CHK(join(path, sizeof(path), dir, name));
    size_t len = OPTIM_HEADER + count * sizeof(float) + FEDGE_HASH_LEN;
    buf = malloc(len);
    if (buf == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    memcpy(buf, OPTIM_MAGIC, 4);
    fedge_put_u32(buf + 4, OPTIM_VERSION);
    fedge_put_u64(buf + 8, step);
    fedge_put_u64(buf + 16, n_params);
    fedge_put_u64(buf + 24, off);
    fedge_put_u64(buf + 32, count);
    for (size_t i = 0; i < count; i++)
        fedge_put_f32(buf + OPTIM_HEADER + 4 * i, v[i]);
    CHK(fedge_sha256(buf, len - FEDGE_HASH_LEN, buf + len - FEDGE_HASH_LEN));
    CHK(write_all_fsync(path, buf, len));
cleanup:
    free(buf);
    return ret;
}

int fedge_ckpt_read_optim(const char *dir, int n_shards, size_t n_params, size_t off,
                          size_t count, float *out)
{
    int ret = FEDGE_OK;
    char path[FEDGE_CKPT_PATH_MAX], name[64];
    uint8_t *buf = NULL;
    size_t len = 0, covered = 0;
    if (dir == NULL || out == NULL || n_shards < 1)
        return FEDGE_ERR_INVALID_ARG;
    memset(out, 0, count * sizeof(float));
    size_t want_end = off + count < n_params ? off + count : n_params;
    size_t want = want_end > off ? want_end - off : 0;
    for (int s = 0; s < n_shards && covered < want; s++) {
        snprintf(name, sizeof(name), "optim-rank-%d-of-%d.bin", s, n_shards);
        CHK(join(path, sizeof(path), dir, name));
        CHK(read_whole(path, OPTIM_HEADER + n_params * sizeof(float) + FEDGE_HASH_LEN, &buf,
                       &len));
        if (len < OPTIM_HEADER + FEDGE_HASH_LEN || memcmp(buf, OPTIM_MAGIC, 4) != 0
            || fedge_get_u32(buf + 4) != OPTIM_VERSION)
            FAIL(FEDGE_ERR_CLUSTER_CHECKPOINT);
        uint64_t fn = fedge_get_u64(buf + 16), fo = fedge_get_u64(buf + 24),
                 fc = fedge_get_u64(buf + 32);
        if (fn != n_params || fo > fn || fc > fn - fo
            || len != OPTIM_HEADER + fc * sizeof(float) + FEDGE_HASH_LEN)
            FAIL(FEDGE_ERR_CLUSTER_CHECKPOINT);
        uint8_t h[FEDGE_HASH_LEN];
        CHK(fedge_sha256(buf, len - FEDGE_HASH_LEN, h));
        if (memcmp(h, buf + len - FEDGE_HASH_LEN, FEDGE_HASH_LEN) != 0)
            FAIL(FEDGE_ERR_CLUSTER_CHECKPOINT);
        size_t s0 = fo > off ? fo : off;
        size_t s1 = fo + fc < want_end ? fo + fc : want_end;
        for (size_t i = s0; i < s1; i++)
            out[i - off] = fedge_get_f32(buf + OPTIM_HEADER + 4 * (i - fo));
        if (s1 > s0)
            covered += s1 - s0;
        free(buf);
        buf = NULL;
    }
    if (covered != want)
        FAIL(FEDGE_ERR_CLUSTER_CHECKPOINT);
cleanup:
    free(buf);
    return ret;
}

/* ---- state.json --------------------------------------------------------- */

int fedge_ckpt_write_state(const char *dir, const fedge_ckpt_state *st)
{
    int ret;
    char path[FEDGE_CKPT_PATH_MAX], text[4096];
    CHK(join(path, sizeof(path), dir, "state.json"));
    int k = snprintf(text, sizeof(text),
                     "{\"format\": 1, \"step\": %" PRIu64 ", \"samples_seen\": %" PRIu64
                     ", \"world\": %d, \"optim_shards\": %d, \"zero\": %d, "
                     "\"global_batch\": %d, \"seed\": %" PRIu64 ", \"total_steps\": %" PRIu64
                     ", \"loss_scale\": %.17g, \"good_steps\": %" PRIu64
                     ", \"skipped_steps\": %" PRIu64 ", \"last_loss\": %.17g, "
                     "\"spec\": \"%s\", \"job\": \"%s\", \"params_sha256\": \"%s\"}\n",
                     st->step, st->step * (uint64_t)st->global_batch, st->world,
                     st->optim_shards, st->zero, st->global_batch, st->seed, st->total_steps,
                     st->loss_scale, st->good_steps, st->skipped_steps, st->last_loss, st->spec,
                     st->job, st->params_sha);
    if (k < 0 || (size_t)k >= sizeof(text))
        FAIL(FEDGE_ERR_BUFFER_TOO_SMALL);
    CHK(write_all_fsync(path, text, (size_t)k));
cleanup:
    return ret;
}

/* Finds "key": and returns the text after it (NULL if absent). */
static const char *json_value(const char *text, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(text, pat);
    if (p == NULL)
        return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    return p;
}

static int json_u64(const char *text, const char *key, uint64_t *out)
{
    const char *p = json_value(text, key);
    char *end;
    if (p == NULL || *p < '0' || *p > '9')
        return FEDGE_ERR_CLUSTER_CHECKPOINT;
    errno = 0;
    unsigned long long v = strtoull(p, &end, 10);
    if (errno != 0 || (*end != ',' && *end != '}'))
        return FEDGE_ERR_CLUSTER_CHECKPOINT;
    *out = v;
    return FEDGE_OK;
}

static int json_int(const char *text, const char *key, int lo, int hi, int *out)
{
    uint64_t v;
    int ret = json_u64(text, key, &v);
    if (ret == FEDGE_OK && (v < (uint64_t)lo || v > (uint64_t)hi))
        ret = FEDGE_ERR_CLUSTER_CHECKPOINT;
    if (ret == FEDGE_OK)
        *out = (int)v;
    return ret;
}

static int json_double(const char *text, const char *key, double *out)
{
    const char *p = json_value(text, key);
    char *end;
    if (p == NULL)
        return FEDGE_ERR_CLUSTER_CHECKPOINT;
    double v = strtod(p, &end);
    if (end == p || (*end != ',' && *end != '}'))
        return FEDGE_ERR_CLUSTER_CHECKPOINT;
    *out = v;
    return FEDGE_OK;
}

static int json_str(const char *text, const char *key, char *out, size_t cap)
{
    const char *p = json_value(text, key);
    if (p == NULL || *p != '"')
        return FEDGE_ERR_CLUSTER_CHECKPOINT;
    p++;
    const char *q = strchr(p, '"');
    if (q == NULL || (size_t)(q - p) >= cap)
        return FEDGE_ERR_CLUSTER_CHECKPOINT;
    memcpy(out, p, (size_t)(q - p));
    out[q - p] = 0;
    return FEDGE_OK;
}

int fedge_ckpt_read_state(const char *dir, fedge_ckpt_state *st)
{
    int ret;
    char path[FEDGE_CKPT_PATH_MAX];
    uint8_t *buf = NULL;
    size_t len;
    uint64_t fmt;
    memset(st, 0, sizeof(*st));
    CHK(join(path, sizeof(path), dir, "state.json"));
    CHK(read_whole(path, STATE_MAX, &buf, &len));
    const char *t = (const char *)buf;
    CHK(json_u64(t, "format", &fmt));
    if (fmt != 1)
        FAIL(FEDGE_ERR_CLUSTER_CHECKPOINT);
    CHK(json_u64(t, "step", &st->step));
    CHK(json_int(t, "world", 1, 1 << 20, &st->world));
    CHK(json_int(t, "optim_shards", 1, 1 << 20, &st->optim_shards));
    CHK(json_int(t, "zero", 0, 1, &st->zero));
    CHK(json_int(t, "global_batch", 1, 1 << 30, &st->global_batch));
    CHK(json_u64(t, "seed", &st->seed));
    CHK(json_u64(t, "total_steps", &st->total_steps));
    CHK(json_double(t, "loss_scale", &st->loss_scale));
    CHK(json_u64(t, "good_steps", &st->good_steps));
    CHK(json_u64(t, "skipped_steps", &st->skipped_steps));
    CHK(json_double(t, "last_loss", &st->last_loss));
    CHK(json_str(t, "spec", st->spec, sizeof(st->spec)));
    CHK(json_str(t, "job", st->job, sizeof(st->job)));
    CHK(json_str(t, "params_sha256", st->params_sha, sizeof(st->params_sha)));
    if (!(st->loss_scale > 0.0))
        FAIL(FEDGE_ERR_CLUSTER_CHECKPOINT);
cleanup:
    free(buf);
    return ret;
}

/* ---- commit, discovery, pruning ----------------------------------------- */

int fedge_ckpt_commit(const char *root, uint64_t step)
{
    int ret;
    char tmp[FEDGE_CKPT_PATH_MAX], fin[FEDGE_CKPT_PATH_MAX], done[FEDGE_CKPT_PATH_MAX];
    CHK(fedge_ckpt_dir(root, step, 1, tmp, sizeof(tmp)));
    CHK(fedge_ckpt_dir(root, step, 0, fin, sizeof(fin)));
    CHK(join(done, sizeof(done), tmp, "DONE"));
    CHK(write_all_fsync(done, "ok\n", 3));
    CHK(fedge_fsync_dir(tmp));
    CHK(remove_flat_dir(fin));
    if (rename(tmp, fin) != 0)
        FAIL(FEDGE_ERR_IO);
    CHK(fedge_fsync_dir(root));
cleanup:
    return ret;
}

/* step from "step-%010llu" (exactly: no suffix); 0 on a match. */
static int parse_step_name(const char *name, uint64_t *step)
{
    if (strncmp(name, "step-", 5) != 0 || strlen(name) != 15)
        return -1;
    uint64_t v = 0;
    for (const char *p = name + 5; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *step = v;
    return 0;
}

static int is_complete(const char *root, const char *name)
{
    char p[FEDGE_CKPT_PATH_MAX];
    struct stat sb;
    if ((size_t)snprintf(p, sizeof(p), "%s/%s/DONE", root, name) >= sizeof(p))
        return 0;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Complete checkpoints, sorted ascending; *steps malloc'd. */
static int list_complete(const char *root, uint64_t **steps, size_t *n)
{
    DIR *d = opendir(root);
    *steps = NULL;
    *n = 0;
    if (d == NULL)
        return errno == ENOENT ? FEDGE_OK : FEDGE_ERR_IO;
    size_t cap = 0;
    int ret = FEDGE_OK;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        uint64_t s;
        if (parse_step_name(e->d_name, &s) != 0 || !is_complete(root, e->d_name))
            continue;
        if (*n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            uint64_t *g = realloc(*steps, nc * sizeof(uint64_t));
            if (g == NULL) {
                ret = FEDGE_ERR_NOMEM;
                break;
            }
            *steps = g;
            cap = nc;
        }
        (*steps)[(*n)++] = s;
    }
    closedir(d);
    for (size_t i = 1; i < *n; i++) /* insertion sort: a handful of entries */
        for (size_t j = i; j > 0 && (*steps)[j - 1] > (*steps)[j]; j--) {
            uint64_t t = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = t;
        }
    return ret;
}

int fedge_ckpt_latest(const char *root, uint64_t *step, char *dir, size_t cap)
{
    uint64_t *steps = NULL;
    size_t n = 0;
    int ret;
    if (root == NULL || step == NULL || dir == NULL)
        return FEDGE_ERR_INVALID_ARG;
    CHK(list_complete(root, &steps, &n));
    if (n == 0)
        FAIL(FEDGE_ERR_NOT_FOUND);
    *step = steps[n - 1];
    CHK(fedge_ckpt_dir(root, *step, 0, dir, cap));
cleanup:
    free(steps);
    return ret;
}

int fedge_ckpt_prune(const char *root, int keep)
{
    uint64_t *steps = NULL;
    size_t n = 0;
    int ret;
    char p[FEDGE_CKPT_PATH_MAX];
    if (keep < 1)
        return FEDGE_ERR_INVALID_ARG;
    CHK(list_complete(root, &steps, &n));
    for (size_t i = 0; i + (size_t)keep < n; i++) {
        char done[FEDGE_CKPT_PATH_MAX];
        CHK(fedge_ckpt_dir(root, steps[i], 0, p, sizeof(p)));
        CHK(join(done, sizeof(done), p, "DONE"));
        if (unlink(done) != 0) /* incomplete from here on, whatever happens next */
            FAIL(FEDGE_ERR_IO);
        CHK(remove_flat_dir(p));
    }
cleanup:
    free(steps);
    return ret;
}
