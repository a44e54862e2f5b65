/* fedge-model — models leave fedge: inspect, export, import, predict.
 *
 *   fedge-model info MODEL [--db AGGREGATOR.db]
 *   fedge-model export MODEL --format safetensors|onnx|npz -o FILE [--force]
 *   fedge-model import FILE.safetensors --spec SPEC -o MODEL [--force]
 *   fedge-model predict MODEL INPUT [--probs] [--batch N]
 *
 * Exit status: 0 done, 1 failure (the reason on stderr), 2 bad command line.
 * Written files are replaced atomically: a failed export or import leaves
 * the output path as it was. An existing output is replaced only with
 * --force and only if it is a regular file (never a device, FIFO or link);
 * an output that is the input file itself (same device and inode, whatever
 * the name or link) is always refused. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "common.h"
#include "fileio.h"
#include "hash.h"
#include "input.h"
#include "layers.h"
#include "log.h"
#include "model.h"
#include "modelfile.h"
#include "npz.h"
#include "onnx_export.h"
#include "safetensors.h"
#include "store.h"
#include "text.h"
#include "version.h"

#define PROG "fedge-model"
#define PREDICT_BATCH_MAX 65536

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " info MODEL [--db AGGREGATOR.db]\n"
            "       " PROG " export MODEL --format safetensors|onnx|npz -o FILE [--force]\n"
            "       " PROG " import FILE.safetensors --spec SPEC -o MODEL [--force]\n"
            "       " PROG " predict MODEL INPUT [--probs] [--batch N]\n"
            "\n"
            "  info      spec, parameter count, version (SHA-256 id), layers and their\n"
            "            tensors, and the model's lineage: with --db the aggregator's\n"
            "            models table gives its parent version, kind and round\n"
            "  export    write the parameters as safetensors, ONNX (opset %d, IR %d) or\n"
            "            NumPy .npz; tensors are named layers.<i>.weight/.bias\n"
            "  import    read a safetensors file (F32 tensors named and shaped as export\n"
            "            writes them for SPEC) into a fedge model file\n"
            "  --force   replace an existing output file (a regular file only; never\n"
            "            the input itself)\n"
            "  predict   one label per input row, or with --probs the class\n"
            "            probabilities (comma-separated); INPUT is an IDX image file\n"
            "            (gzip or raw) or a CSV of feature rows without labels\n"
            "  --help, --version\n",
            MDL_ONNX_OPSET, MDL_ONNX_IR_VERSION);
}

/* One escaped line on stderr: "fedge-model: MESSAGE". */
__attribute__((format(printf, 1, 0))) static void vreport(const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    fedge_text_eprintf(PROG, "%s", msg);
}

__attribute__((format(printf, 1, 2))) static int bad_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    fprintf(stderr, "(run " PROG " --help for usage)\n");
    return EXIT_USAGE;
}

__attribute__((format(printf, 1, 2))) static int failure(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    return EXIT_FAIL;
}

static int load_model(const char *path, fedge_model *m, char hex[FEDGE_HASH_HEX_LEN])
{
    uint8_t version[FEDGE_HASH_LEN];
    int ret = fedge_model_load(path, m, version);
    if (ret != FEDGE_OK)
        return failure("%s: %s", path, fedge_strerror(ret));
    fedge_hash_to_hex(version, hex);
    return EXIT_OK;
}

static int write_out(const char *path, const uint8_t *buf, size_t len)
{
    int ret = fedge_write_file_atomic(path, buf, len, 0644, 0);
    if (ret != FEDGE_OK)
        return failure("%s: %s%s%s", path, fedge_strerror(ret), ret == FEDGE_ERR_IO ? ": " : "",
                       ret == FEDGE_ERR_IO ? strerror(errno) : "");
    return EXIT_OK;
}

/* The output may be written: it is not the input (same file, by device and
 * inode, so also through another name or a link) and, unless force, does not
 * exist. Whether an existing one is a regular file the atomic write checks. */
static int check_output(const char *in_path, const char *out_path, int force)
{
    struct stat in_st, out_st;
    if (stat(in_path, &in_st) != 0)
        return failure("%s: %s", in_path, strerror(errno));
    if (lstat(out_path, &out_st) != 0) {
        if (errno == ENOENT)
            return EXIT_OK;
        return failure("%s: %s", out_path, strerror(errno));
    }
    struct stat target = out_st;
    if (S_ISLNK(out_st.st_mode) && stat(out_path, &target) != 0)
        target = out_st;
    if (target.st_dev == in_st.st_dev && target.st_ino == in_st.st_ino)
        return failure("%s: is the input file %s itself; write to another path", out_path, in_path);
    if (!force)
        return failure("%s: exists; --force replaces it", out_path);
    return EXIT_OK;
}

/* ---- info ------------------------------------------------------------------ */

static void shape_of(const fedge_layer *l, char *buf, size_t cap)
{
    if (l->out_h == 1 && l->out_w == 1)
        snprintf(buf, cap, "%d", l->out_c);
    else
        snprintf(buf, cap, "%dx%dx%d", l->out_c, l->out_h, l->out_w);
}

static int lineage_from_db(const char *db_path, const char *hex)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = EXIT_OK;
    int ret = fedge_store_open_db(db_path, 1, &db);
    if (ret != FEDGE_OK)
        return failure("%s: %s", db_path, fedge_strerror(ret));
    if (sqlite3_prepare_v2(db,
                           "SELECT parent, kind, round, accuracy, path FROM models WHERE version = ?1",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC) != SQLITE_OK) {
        rc = failure("%s: %s", db_path, sqlite3_errmsg(db));
        goto cleanup;
    }
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE) {
        printf("lineage:    not in %s (no models row for this version)\n", db_path);
    } else if (step == SQLITE_ROW) {
        const char *parent = (const char *)sqlite3_column_text(st, 0);
        const char *kind = (const char *)sqlite3_column_text(st, 1);
        char *kind_e = fedge_text_escape_dup(kind ? kind : "?");
        char *parent_e = fedge_text_escape_dup(parent ? parent : "");
        printf("lineage:    %s model of round %lld in %s\n", kind_e ? kind_e : "?",
               (long long)sqlite3_column_int64(st, 2), db_path);
        if (parent != NULL && parent[0] != '\0')
            printf("parent:     %s\n", parent_e ? parent_e : "?");
        else
            printf("parent:     none (the run's initial model)\n");
        if (sqlite3_column_type(st, 3) != SQLITE_NULL)
            printf("accuracy:   %.4f (aggregator's test split)\n", sqlite3_column_double(st, 3));
        free(kind_e);
        free(parent_e);
    } else {
        rc = failure("%s: %s", db_path, sqlite3_errmsg(db));
    }
cleanup:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

static int cmd_info(const char *path, const char *db_path)
{
    fedge_model m;
    memset(&m, 0, sizeof m);
    char hex[FEDGE_HASH_HEX_LEN];
    mdl_view *v = NULL;
    int rc = load_model(path, &m, hex);
    if (rc != EXIT_OK)
        return rc;
    v = calloc(1, sizeof *v);
    int ret = v ? mdl_view_init(&m.spec, v) : FEDGE_ERR_NOMEM;
    if (ret != FEDGE_OK) {
        rc = failure("%s: %s", path, fedge_strerror(ret));
        goto cleanup;
    }
    char *path_e = fedge_text_escape_dup(path);
    printf("model:      %s\n", path_e ? path_e : "?");
    free(path_e);
    printf("spec:       %s\n", v->spec_text);
    printf("parameters: %zu (%zu bytes as float32)\n", v->n_params, v->n_params * 4);
    printf("version:    %s\n", hex);
    if (v->in_h == 1 && v->in_w == 1)
        printf("input:      %d features\n", v->input_dim);
    else
        printf("input:      %dx%dx%d (C x H x W)\n", v->in_c, v->in_h, v->in_w);
    printf("classes:    %d (softmax output)\n", v->classes);
    printf("layers:\n");
    for (int i = 0; i < v->n_layers; i++) {
        const fedge_layer *l = &v->layer[i];
        char out[48], detail[64] = "";
        shape_of(l, out, sizeof out);
        if (l->type == FEDGE_LAYER_CONV2D)
            snprintf(detail, sizeof detail, "k%d s%d p%d", l->k, l->stride, l->pad);
        else if (l->type == FEDGE_LAYER_MAXPOOL)
            snprintf(detail, sizeof detail, "k%d s%d", l->k, l->stride);
        else if (l->type == FEDGE_LAYER_DROPOUT)
            snprintf(detail, sizeof detail, "rate %d%% (identity at inference)", l->rate_pct);
        if (detail[0] != '\0')
            printf("  %2d %-8s -> %-12s %s\n", i, fedge_layer_name(l->type), out, detail);
        else
            printf("  %2d %-8s -> %s\n", i, fedge_layer_name(l->type), out);
        for (int t = 0; t < v->n_tensors; t++) {
            const mdl_tensor *mt = &v->tensor[t];
            if (mt->layer != i)
                continue;
            char shape[96];
            size_t n = (size_t)snprintf(shape, sizeof shape, "[");
            for (int d = 0; d < mt->rank; d++)
                n += (size_t)snprintf(shape + n, sizeof shape - n, "%s%lld", d ? ", " : "",
                                      (long long)mt->shape[d]);
            snprintf(shape + n, sizeof shape - n, "]");
            printf("       %-20s %-20s %zu\n", mt->name, shape, mt->count);
        }
    }
    /* A model file carries no lineage; the aggregator's log does. */
    if (db_path != NULL) {
        rc = lineage_from_db(db_path, hex);
    } else {
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        int store_name = strncmp(base, hex, 64) == 0 && strcmp(base + 64, ".fmdl") == 0;
        printf("lineage:    %s; the aggregator's database (--db) records its parent and round\n",
               store_name ? "the file is named by its version, as in an aggregator's model_dir"
                          : "not recorded in the model file");
    }
cleanup:
    free(v);
    fedge_model_free(&m);
    return rc;
}

/* ---- export ------------------------------------------------------------------ */

static int cmd_export(const char *path, const char *format, const char *out_path, int force)
{
    fedge_model m;
    memset(&m, 0, sizeof m);
    char hex[FEDGE_HASH_HEX_LEN];
    mdl_view *v = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = check_output(path, out_path, force);
    if (rc != EXIT_OK)
        return rc;
    rc = load_model(path, &m, hex);
    if (rc != EXIT_OK)
        return rc;
    v = calloc(1, sizeof *v);
    int ret = v ? mdl_view_init(&m.spec, v) : FEDGE_ERR_NOMEM;
    if (ret == FEDGE_OK) {
        if (strcmp(format, "safetensors") == 0)
            ret = mdl_st_encode(v, m.params, hex, &buf, &len);
        else if (strcmp(format, "onnx") == 0)
            ret = mdl_onnx_encode(v, m.params, hex, &buf, &len);
        else
            ret = mdl_npz_encode(v, m.params, hex, &buf, &len);
    }
    if (ret != FEDGE_OK) {
        rc = failure("export %s as %s: %s", path, format, fedge_strerror(ret));
        goto cleanup;
    }
    rc = write_out(out_path, buf, len);
    if (rc == EXIT_OK) {
        char *e = fedge_text_escape_dup(out_path);
        printf("%s: %s, %zu bytes, %s version %s\n", e ? e : "?", format, len, v->spec_text, hex);
        free(e);
    }
cleanup:
    free(buf);
    free(v);
    fedge_model_free(&m);
    return rc;
}

/* ---- import ------------------------------------------------------------------ */

static int read_bounded(const char *path, size_t max, uint8_t **out, size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return failure("%s: %s", path, strerror(errno));
    struct stat st;
    int rc = EXIT_OK;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = failure("%s: not a regular file", path);
        goto cleanup;
    }
    if ((uint64_t)st.st_size > max) {
        rc = failure("%s: %lld bytes, more than a safetensors file of this spec can hold (%zu)", path,
                     (long long)st.st_size, max);
        goto cleanup;
    }
    size_t len = (size_t)st.st_size;
    buf = malloc(len > 0 ? len : 1);
    if (buf == NULL) {
        rc = failure("%s: out of memory", path);
        goto cleanup;
    }
    int ret = fedge_pread_all(fd, buf, len, 0, FEDGE_ERR_IO);
    if (ret != FEDGE_OK) {
        rc = failure("%s: %s", path, fedge_strerror(ret));
        goto cleanup;
    }
    *out = buf;
    *out_len = len;
    buf = NULL;
cleanup:
    free(buf);
    close(fd);
    return rc;
}

static int cmd_import(const char *path, const char *spec_text, const char *out_path, int force)
{
    fedge_model_spec spec;
    fedge_model m;
    memset(&m, 0, sizeof m);
    mdl_view *v = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = EXIT_OK;
    int ret = fedge_model_spec_parse(spec_text, &spec);
    if (ret != FEDGE_OK)
        return bad_usage("--spec: '%s' is not a model spec", spec_text);
    v = calloc(1, sizeof *v);
    ret = v ? mdl_view_init(&spec, v) : FEDGE_ERR_NOMEM;
    if (ret != FEDGE_OK) {
        rc = failure("spec %s: %s", spec_text, fedge_strerror(ret));
        goto cleanup;
    }
    rc = check_output(path, out_path, force);
    if (rc != EXIT_OK)
        goto cleanup;
    rc = read_bounded(path, 8 + (size_t)MDL_ST_HEADER_MAX + v->n_params * 4, &buf, &len);
    if (rc != EXIT_OK)
        goto cleanup;
    ret = fedge_model_init(&m, &spec);
    if (ret != FEDGE_OK) {
        rc = failure("spec %s: %s", spec_text, fedge_strerror(ret));
        goto cleanup;
    }
    char err[512] = "";
    ret = mdl_st_decode(buf, len, v, m.params, err, sizeof err);
    if (ret != FEDGE_OK) {
        rc = failure("import %s: %s: %s", path, fedge_strerror(ret), err);
        goto cleanup;
    }
    uint8_t version[FEDGE_HASH_LEN];
    ret = fedge_model_save(&m, out_path, version);
    if (ret != FEDGE_OK) {
        rc = failure("%s: %s", out_path, fedge_strerror(ret));
        goto cleanup;
    }
    char hex[FEDGE_HASH_HEX_LEN];
    fedge_hash_to_hex(version, hex);
    char *e = fedge_text_escape_dup(out_path);
    printf("%s: %s version %s\n", e ? e : "?", v->spec_text, hex);
    free(e);
cleanup:
    free(buf);
    free(v);
    fedge_model_free(&m);
    return rc;
}

/* ---- predict ----------------------------------------------------------------- */

/* Rows are read, predicted and printed a batch at a time: memory is one
 * batch of rows and the decoder's buffer, whatever the input's size. A bad
 * row stops it (exit 1) after the predictions of the rows before its batch. */
static int cmd_predict(const char *model_path, const char *input_path, int probs, int batch)
{
    fedge_model m;
    memset(&m, 0, sizeof m);
    char hex[FEDGE_HASH_HEX_LEN];
    float *x = NULL, *scratch = NULL, *p = NULL;
    mdl_input *in = NULL;
    int rc = load_model(model_path, &m, hex);
    if (rc != EXIT_OK)
        return rc;
    int dim;
    mdl_view *v = calloc(1, sizeof *v);
    int ret = v ? mdl_view_init(&m.spec, v) : FEDGE_ERR_NOMEM;
    if (ret != FEDGE_OK) {
        rc = failure("%s: %s", model_path, fedge_strerror(ret));
        goto cleanup;
    }
    dim = v->input_dim;
    size_t scratch_n = fedge_model_scratch_floats(&m.spec, batch);
    if (scratch_n == 0) {
        int fits = fedge_model_max_batch(&m.spec, batch);
        if (fits > 0)
            rc = failure("%s: spec %s at --batch %d needs more working memory than fedge's per-call "
                         "limit; --batch %d or less fits",
                         model_path, v->spec_text, batch, fits);
        else
            rc = failure("%s: spec %s needs more working memory than fedge's per-call limit even "
                         "at --batch 1",
                         model_path, v->spec_text);
        goto cleanup;
    }
    scratch = malloc(scratch_n * sizeof *scratch);
    p = malloc((size_t)batch * (size_t)v->classes * sizeof *p);
    x = malloc((size_t)batch * (size_t)dim * sizeof *x);
    if (scratch == NULL || p == NULL || x == NULL) {
        rc = failure("out of memory");
        goto cleanup;
    }
    char err[512] = "";
    int image = v->in_h > 1 || v->in_w > 1;
    ret = mdl_input_open(input_path, dim, image ? v->in_c : 0, image ? v->in_h : 0, image ? v->in_w : 0,
                         &in, err, sizeof err);
    for (;;) {
        size_t got = 0;
        if (ret == FEDGE_OK)
            ret = mdl_input_read(in, x, (size_t)batch, &got, err, sizeof err);
        if (ret != FEDGE_OK) {
            fflush(stdout);
            rc = failure("%s (%s)", err[0] ? err : input_path, fedge_strerror(ret));
            goto cleanup;
        }
        if (got == 0)
            break;
        ret = fedge_model_forward(&m, x, (int)got, scratch, p);
        if (ret != FEDGE_OK) {
            rc = failure("forward: %s", fedge_strerror(ret));
            goto cleanup;
        }
        for (size_t r = 0; r < got; r++) {
            const float *row = p + r * (size_t)v->classes;
            if (probs) {
                for (int c = 0; c < v->classes; c++)
                    printf("%s%.9g", c ? "," : "", (double)row[c]);
                putchar('\n');
            } else {
                int best = 0;
                for (int c = 1; c < v->classes; c++)
                    if (row[c] > row[best])
                        best = c;
                printf("%d\n", best);
            }
        }
    }
    if (fflush(stdout) != 0 || ferror(stdout))
        rc = failure("writing the predictions: %s", strerror(errno));
cleanup:
    mdl_input_close(in);
    free(x);
    free(scratch);
    free(p);
    free(v);
    fedge_model_free(&m);
    return rc;
}

/* ---- command line -------------------------------------------------------------- */

int main(int argc, char **argv)
{
    fedge_log_set_level(FEDGE_LOG_OFF);
    if (argc < 2)
        return bad_usage("a command is needed: info, export, import or predict");
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf(PROG " %s\n", FEDGE_VERSION);
        return EXIT_OK;
    }
    enum { OPT_DB = 1, OPT_FORMAT, OPT_SPEC, OPT_PROBS, OPT_BATCH, OPT_HELP, OPT_FORCE };
    static const struct option opts[] = {
        {"db", required_argument, NULL, OPT_DB},       {"format", required_argument, NULL, OPT_FORMAT},
        {"spec", required_argument, NULL, OPT_SPEC},   {"probs", no_argument, NULL, OPT_PROBS},
        {"batch", required_argument, NULL, OPT_BATCH}, {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, OPT_HELP},         {"force", no_argument, NULL, OPT_FORCE},
        {NULL, 0, NULL, 0},
    };
    const char *db = NULL, *format = NULL, *spec = NULL, *out = NULL;
    int probs = 0, force = 0;
    long batch = 256;
    opterr = 0;
    optind = 1;
    int c;
    char **args = argv + 1;
    int nargs = argc - 1;
    while ((c = getopt_long(nargs, args, ":o:", opts, NULL)) != -1) {
        switch (c) {
        case OPT_DB: db = optarg; break;
        case OPT_FORMAT: format = optarg; break;
        case OPT_SPEC: spec = optarg; break;
        case OPT_PROBS: probs = 1; break;
        case OPT_FORCE: force = 1; break;
        case 'o': out = optarg; break;
        case OPT_BATCH: {
            char *end;
            errno = 0;
            batch = strtol(optarg, &end, 10);
            if (optarg[0] < '0' || optarg[0] > '9' || *end != '\0' || errno || batch < 1 ||
                batch > PREDICT_BATCH_MAX)
                return bad_usage("--batch: '%s' is not an integer in 1..%d", optarg, PREDICT_BATCH_MAX);
            break;
        }
        case OPT_HELP: usage(stdout); return EXIT_OK;
        case ':': return bad_usage("%s needs a value", args[optind - 1]);
        default: return bad_usage("unknown option '%s'", args[optind - 1]);
        }
    }
    char **pos = args + optind;
    int npos = nargs - optind;
    int want = strcmp(cmd, "predict") == 0 ? 2 : 1;
    if (strcmp(cmd, "info") && strcmp(cmd, "export") && strcmp(cmd, "import") && strcmp(cmd, "predict"))
        return bad_usage("unknown command '%s'", cmd);
    if (npos != want)
        return bad_usage("%s takes %s", cmd, want == 2 ? "MODEL INPUT" : strcmp(cmd, "import") == 0 ? "one FILE" : "one MODEL");
    int is_info = !strcmp(cmd, "info"), is_export = !strcmp(cmd, "export"),
        is_import = !strcmp(cmd, "import"), is_predict = !strcmp(cmd, "predict");
    if (db != NULL && !is_info)
        return bad_usage("--db is for info");
    if (format != NULL && !is_export)
        return bad_usage("--format is for export");
    if (spec != NULL && !is_import)
        return bad_usage("--spec is for import");
    if ((probs || batch != 256) && !is_predict)
        return bad_usage("--probs and --batch are for predict");
    if ((out != NULL || force) && !is_export && !is_import)
        return bad_usage("-o and --force are for export and import");
    if (is_info)
        return cmd_info(pos[0], db);
    if (is_export) {
        if (format == NULL || out == NULL)
            return bad_usage("export needs --format and -o");
        if (strcmp(format, "safetensors") && strcmp(format, "onnx") && strcmp(format, "npz"))
            return bad_usage("--format: '%s' is not safetensors, onnx or npz", format);
        return cmd_export(pos[0], format, out, force);
    }
    if (is_import) {
        if (spec == NULL || out == NULL)
            return bad_usage("import needs --spec and -o");
        return cmd_import(pos[0], spec, out, force);
    }
    return cmd_predict(pos[0], pos[1], probs, (int)batch);
}
