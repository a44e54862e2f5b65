/* fedge-partition — split a dataset into per-client shard files.
 *
 *   fedge-partition --data fashion-mnist --clients 10 --kind dirichlet --beta 0.5 \
 *                   --out shards/ --test-out shards/test.bin
 *   fedge-partition --data fashion-mnist --clients 10 --kind labels --classes-per-client 2 \
 *                   --out shards/
 *
 * Writes DIR/shard-000.bin ... (one per client) and prints each client's size
 * and label histogram. Exit status: 0 ok, 1 failure, 2 bad command line. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dataset.h"
#include "error.h"
#include "partition.h"
#include "shard.h"
#include "version.h"
#include "text.h"

#define PROG "fedge-partition"
#define MAX_CLIENTS 100000
#define MAX_BETA 1e6
#define MAX_NOISE_SIGMA 1e6

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " --data fashion-mnist|PATH.csv --clients N\n"
            "                       --kind iid|dirichlet|quantity|labels|noise --out DIR [options]\n"
            "\n"
            "Splits a labelled dataset into N client shards DIR/shard-000.bin ... and prints\n"
            "each client's size and label histogram.\n"
            "\n"
            "  --data SRC        fashion-mnist (its train split from " FEDGE_FASHION_MNIST_DIR ")\n"
            "                    or a CSV file: label first, then the features\n"
            "  --clients N       number of clients, 1.." "100000" "\n"
            "  --kind K          iid        a seeded shuffle dealt round-robin\n"
            "                    dirichlet  label skew: per class, proportions ~ Dir(beta)\n"
            "                    quantity   size skew: client sizes ~ Dir(beta), labels IID\n"
            "                    labels     label-quantity skew #C=k (NIID-Bench): client i holds\n"
            "                               label i %% C plus k-1 other random labels; each\n"
            "                               label's rows are split evenly among its holders\n"
            "                               (every label held when N*k >= C; rows of a label\n"
            "                               nobody holds are left out)\n"
            "                    noise      feature-noise skew (NIID-Bench): the IID split, then\n"
            "                               client i's features get Gaussian noise of std\n"
            "                               sigma*i/N (client 0 clean; u8 shards: rounded to\n"
            "                               k/255 and clipped to [0, 1])\n"
            "  --beta B          Dirichlet concentration, 1e-300..1e6 (default 0.5; small =\n"
            "                    skewed; 1e-5 gives each client about one class)\n"
"  --classes-per-client K  labels: distinct labels per client, 1..C (C = classes)\n"
            "  --noise-sigma S   noise: client i's noise std is S*i/N, S in 0..1e6 (features\n"
            "                    are in [0, 1])\n"
            "  --seed S          unsigned 64-bit seed (default 1); same seed, same shards\n"
            "  --min-size M      every client gets at least M rows (default 10)\n"
            "  --format F        auto|u8|f32 feature storage (default auto: u8 when every\n"
            "                    feature is k/255, as Fashion-MNIST's are; else f32)\n"
            "  --out DIR         output directory (created if missing)\n"
            "  --test-out FILE   also write the test split as one shard (Fashion-MNIST's\n"
            "                    t10k split, or --test-data for a CSV)\n"
            "  --test-data PATH  CSV test split for --test-out\n"
            "  --help            this text\n"
            "  --version         print the fedge version\n");
}

__attribute__((format(printf, 1, 2))) static int bad_usage(const char *fmt, ...)
{
    va_list ap;
    char msg[512];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fedge_text_eprintf(PROG, "%s", msg);
    fprintf(stderr, "(run " PROG " --help for usage)\n");
    return 2;
}

static int parse_long(const char *flag, const char *text, long long lo, long long hi,
                      long long *out)
{
    char *end;
    errno = 0;
    if (!((text[0] >= '0' && text[0] <= '9') || (text[0] == '-' && text[1] >= '0' && text[1] <= '9')))
        return bad_usage("%s: '%s' is not an integer", flag, text);
    long long v = strtoll(text, &end, 10);
    if (*end != '\0')
        return bad_usage("%s: '%s' is not an integer", flag, text);
    if (errno == ERANGE || v < lo || v > hi) {
        return bad_usage("%s: %s is out of range (%lld..%lld)", flag, text, lo, hi);
    }
    *out = v;
    return 0;
}

static int parse_u64(const char *flag, const char *text, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!(text[0] >= '0' && text[0] <= '9'))
        return bad_usage("%s: '%s' is not an unsigned integer", flag, text);
    unsigned long long v = strtoull(text, &end, 10);
    if (*end != '\0')
        return bad_usage("%s: '%s' is not an unsigned integer", flag, text);
    if (errno == ERANGE)
        return bad_usage("%s: %s does not fit in 64 bits", flag, text);
    *out = (uint64_t)v;
    return 0;
}

static int parse_double(const char *flag, const char *text, double lo, double hi,
                        const char *range, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || text[0] == ' ' || text[0] == '\t')
        return bad_usage("%s: '%s' is not a number", flag, text);
    if (!isfinite(v) || !(v >= lo) || v > hi)
        return bad_usage("%s: %s is out of range (%s)", flag, text, range);
    *out = v;
    return 0;
}

/* u8 only when it loses nothing beyond float rounding: every feature is
 * k / 255 (a CSV's decimal k / 255 may differ from the loader's float by an
 * ulp or two). */
static int pick_format(const fedge_dataset *ds)
{
    for (size_t i = 0; i < ds->n * (size_t)ds->dim; i++) {
        float v = ds->x[i];
        if (!(v >= 0.0f && v <= 1.0f) ||
            fabsf((float)lrintf(v * 255.0f) * FEDGE_SHARD_U8_SCALE - v) > 1e-6f)
            return FEDGE_SHARD_F32;
    }
    return FEDGE_SHARD_U8;
}

/* mkdir -p */
static int ensure_dir(const char *dir)
{
    struct stat st;
    char *p = strdup(dir);
    if (!p) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char saved = *s;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, PROG ": cannot create %s: %s\n", p, strerror(errno));
            free(p);
            return 1;
        }
        *s = saved;
        if (saved == '\0')
            break;
    }
    free(p);
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, PROG ": %s is not a directory\n", dir);
        return 1;
    }
    return 0;
}

static void print_table(const fedge_partition *p, const fedge_dataset *ds, const size_t *hist)
{
    const int K = ds->n_classes;
    printf("%6s %8s ", "client", "rows");
    for (int k = 0; k < K; k++)
        printf(" %6d", k);
    printf("\n");
    for (int j = 0; j < p->n_clients; j++) {
        printf("%6d %8zu ", j, p->sizes[j]);
        for (int k = 0; k < K; k++)
            printf(" %6zu", hist[(size_t)j * (size_t)K + (size_t)k]);
        printf("\n");
    }
    size_t rows = 0;
    for (int j = 0; j < p->n_clients; j++)
        rows += p->sizes[j];
    printf("%6s %8zu ", "total", rows);
    for (int k = 0; k < K; k++) {
        size_t s = 0;
        for (int j = 0; j < p->n_clients; j++)
            s += hist[(size_t)j * (size_t)K + (size_t)k];
        printf(" %6zu", s);
    }
    printf("\n");
}

enum { OPT_DATA = 1, OPT_CLIENTS, OPT_KIND, OPT_BETA, OPT_SEED, OPT_MIN, OPT_FORMAT, OPT_OUT,
       OPT_TEST_OUT, OPT_TEST_DATA, OPT_HELP, OPT_VERSION, OPT_CLASSES, OPT_SIGMA };

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, OPT_DATA},
        {"clients", required_argument, NULL, OPT_CLIENTS},
        {"kind", required_argument, NULL, OPT_KIND},
        {"beta", required_argument, NULL, OPT_BETA},
        {"seed", required_argument, NULL, OPT_SEED},
        {"min-size", required_argument, NULL, OPT_MIN},
        {"format", required_argument, NULL, OPT_FORMAT},
        {"out", required_argument, NULL, OPT_OUT},
        {"test-out", required_argument, NULL, OPT_TEST_OUT},
        {"test-data", required_argument, NULL, OPT_TEST_DATA},
        {"classes-per-client", required_argument, NULL, OPT_CLASSES},
        {"noise-sigma", required_argument, NULL, OPT_SIGMA},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    const char *data = NULL, *kind_text = NULL, *out_dir = NULL, *test_out = NULL,
               *test_data = NULL, *format = "auto";
    fedge_partition_config cfg = {.kind = FEDGE_PARTITION_IID, .n_clients = 0, .beta = 0.5,
                                  .min_size = 10, .seed = 1};
    int have_clients = 0, have_beta = 0, have_classes = 0, have_sigma = 0, rc;
    long long v;

    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (c) {
        case OPT_DATA: data = optarg; break;
        case OPT_CLIENTS:
            if ((rc = parse_long("--clients", optarg, 1, MAX_CLIENTS, &v)) != 0)
                return rc;
            cfg.n_clients = (int)v;
            have_clients = 1;
            break;
        case OPT_KIND:
            kind_text = optarg;
            if (fedge_partition_parse_kind(optarg, &cfg.kind) != FEDGE_OK)
                return bad_usage("--kind: '%s' is not one of iid, dirichlet, quantity, labels, "
                                 "noise", optarg);
            break;
        case OPT_BETA:
            if ((rc = parse_double("--beta", optarg, FEDGE_PARTITION_MIN_BETA, MAX_BETA,
                                   "must be >= 1e-300 and <= 1e6", &cfg.beta)) != 0)
                return rc;
            have_beta = 1;
            break;
        case OPT_CLASSES:
            if ((rc = parse_long("--classes-per-client", optarg, 1, 256, &v)) != 0)
                return rc;
            cfg.classes_per_client = (int)v;
            have_classes = 1;
            break;
        case OPT_SIGMA:
            if ((rc = parse_double("--noise-sigma", optarg, 0.0, MAX_NOISE_SIGMA,
                                   "must be >= 0 and <= 1e6", &cfg.noise_sigma)) != 0)
                return rc;
            have_sigma = 1;
            break;
        case OPT_SEED:
            if ((rc = parse_u64("--seed", optarg, &cfg.seed)) != 0)
                return rc;
            break;
        case OPT_MIN:
            if ((rc = parse_long("--min-size", optarg, 0, FEDGE_DATASET_MAX_ROWS, &v)) != 0)
                return rc;
            cfg.min_size = (size_t)v;
            break;
        case OPT_FORMAT:
            if (strcmp(optarg, "auto") != 0 && strcmp(optarg, "u8") != 0 &&
                strcmp(optarg, "f32") != 0)
                return bad_usage("--format: '%s' is not one of auto, u8, f32", optarg);
            format = optarg;
            break;
        case OPT_OUT: out_dir = optarg; break;
        case OPT_TEST_OUT: test_out = optarg; break;
        case OPT_TEST_DATA: test_data = optarg; break;
        case OPT_HELP: usage(stdout); return 0;
        case OPT_VERSION: printf(PROG " %s\n", FEDGE_VERSION); return 0;
        case ':': return bad_usage("%s needs a value", argv[optind - 1]);
        default: return bad_usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return bad_usage("unexpected argument '%s'", argv[optind]);
    if (!data)
        return bad_usage("missing --data (fashion-mnist or a CSV path)");
    if (!have_clients)
        return bad_usage("missing --clients N");
    if (!kind_text)
        return bad_usage("missing --kind (iid, dirichlet, quantity, labels or noise)");
    if (!out_dir)
        return bad_usage("missing --out DIR");
    const int uses_beta = cfg.kind == FEDGE_PARTITION_DIRICHLET || cfg.kind == FEDGE_PARTITION_QUANTITY;
    if (have_beta && !uses_beta)
        fprintf(stderr, PROG ": note: --beta is ignored for --kind %s\n", kind_text);
    if (cfg.kind == FEDGE_PARTITION_LABELS && !have_classes)
        return bad_usage("--kind labels needs --classes-per-client K");
    if (cfg.kind != FEDGE_PARTITION_LABELS && have_classes)
        return bad_usage("--classes-per-client is for --kind labels");
    if (cfg.kind == FEDGE_PARTITION_NOISE && !have_sigma)
        return bad_usage("--kind noise needs --noise-sigma S");
    if (cfg.kind != FEDGE_PARTITION_NOISE && have_sigma)
        return bad_usage("--noise-sigma is for --kind noise");
    const int is_fmnist = strcmp(data, "fashion-mnist") == 0;
    if (test_data && !test_out)
        return bad_usage("--test-data needs --test-out FILE");
    if (test_out && !is_fmnist && !test_data)
        return bad_usage("--test-out with a CSV needs --test-data PATH.csv");
    if (test_data && is_fmnist)
        return bad_usage("--test-data is for CSV input; fashion-mnist has its own test "
                         "split");

    int status = 1;
    fedge_dataset ds = {0}, test = {0};
    fedge_partition part = {0};
    size_t *hist = NULL;
    char *path = NULL;
    int ret = is_fmnist ? fedge_dataset_load_fashion_mnist(&ds, NULL, 1)
                        : fedge_dataset_load_csv(&ds, data);
    if (ret != FEDGE_OK) {
        fprintf(stderr, PROG ": cannot load %s: %s\n", is_fmnist ? FEDGE_FASHION_MNIST_DIR : data,
                fedge_strerror(ret));
        goto cleanup;
    }
    if ((cfg.min_size ? cfg.min_size : 1) > ds.n / (size_t)cfg.n_clients) {
        fprintf(stderr, PROG ": %zu rows cannot give %d clients %zu rows each (lower --clients "
                "or --min-size)\n", ds.n, cfg.n_clients, cfg.min_size ? cfg.min_size : 1);
        goto cleanup;
    }
    if (cfg.kind == FEDGE_PARTITION_LABELS && cfg.classes_per_client > ds.n_classes) {
        fprintf(stderr, PROG ": --classes-per-client %d is out of range: %s has %d classes "
                "(1..%d)\n", cfg.classes_per_client, data, ds.n_classes, ds.n_classes);
        goto cleanup;
    }
    int ftype = strcmp(format, "u8") == 0    ? FEDGE_SHARD_U8
                : strcmp(format, "f32") == 0 ? FEDGE_SHARD_F32
                                             : pick_format(&ds);
    if ((ret = fedge_partition_make(&ds, &cfg, &part)) != FEDGE_OK) {
        fprintf(stderr, PROG ": partition failed: %s\n", fedge_strerror(ret));
        if (ret == FEDGE_ERR_RANGE && cfg.kind == FEDGE_PARTITION_LABELS)
            fprintf(stderr, PROG ": a label has too few rows to give each of its clients "
                    "%zu rows (lower --clients or --min-size, or raise "
                    "--classes-per-client)\n", cfg.min_size ? cfg.min_size : 1);
        goto cleanup;
    }
    if (ensure_dir(out_dir) != 0)
        goto cleanup;

    size_t cap = strlen(out_dir) + 32;
    path = malloc(cap);
    hist = malloc((size_t)cfg.n_clients * (size_t)ds.n_classes * sizeof *hist);
    if (!path || !hist) {
        fprintf(stderr, PROG ": out of memory\n");
        goto cleanup;
    }
    for (int j = 0; j < cfg.n_clients; j++) {
        snprintf(path, cap, "%s/shard-%03d.bin", out_dir, j);
        if (cfg.kind == FEDGE_PARTITION_NOISE) {
            fedge_dataset noisy = {0};
            ret = fedge_partition_client_data(&ds, &part, &cfg, j, ftype == FEDGE_SHARD_U8, &noisy);
            if (ret == FEDGE_OK) {
                size_t *all = malloc(noisy.n * sizeof *all);
                if (!all) {
                    ret = FEDGE_ERR_NOMEM;
                } else {
                    for (size_t i = 0; i < noisy.n; i++)
                        all[i] = i;
                    ret = fedge_shard_write(path, &noisy, all, noisy.n, ftype);
                    free(all);
                }
            }
            fedge_dataset_free(&noisy);
        } else {
            ret = fedge_shard_write(path, &ds, part.indices[j], part.sizes[j], ftype);
        }
        if (ret != FEDGE_OK) {
            fprintf(stderr, PROG ": writing %s: %s\n", path, fedge_strerror(ret));
            if (ret == FEDGE_ERR_RANGE && ftype == FEDGE_SHARD_U8)
                fprintf(stderr, PROG ": features outside [0, 1] need --format f32\n");
            goto cleanup;
        }
    }
    snprintf(path, cap, "%s/shard-%03d.bin", out_dir, cfg.n_clients);
    struct stat st;
    if (stat(path, &st) == 0)
        fprintf(stderr, PROG ": warning: %s is left from an earlier run with more clients\n",
                path);

    fedge_partition_label_histogram(&part, &ds, hist);
    printf("%s: %zu rows, %d features, %d classes -> %d clients, kind %s", data, ds.n, ds.dim,
           ds.n_classes, cfg.n_clients, kind_text);
    if (uses_beta)
        printf(" beta %g", cfg.beta);
    if (cfg.kind == FEDGE_PARTITION_LABELS)
        printf(" classes per client %d", cfg.classes_per_client);
    if (cfg.kind == FEDGE_PARTITION_NOISE)
        printf(" noise sigma %g (client i: %g * i / %d)", cfg.noise_sigma, cfg.noise_sigma,
               cfg.n_clients);
    printf(", seed %llu, min size %zu, %s features\n", (unsigned long long)cfg.seed, cfg.min_size,
           ftype == FEDGE_SHARD_U8 ? "u8" : "f32");
    print_table(&part, &ds, hist);
    double tv;
    if (fedge_partition_label_tv(&part, &ds, &tv) == FEDGE_OK)
        printf("mean total-variation distance of client label mixes from the global one: %.4f\n",
               tv);
    if (cfg.kind == FEDGE_PARTITION_LABELS) {
        size_t kept = 0;
        for (int j = 0; j < cfg.n_clients; j++)
            kept += part.sizes[j];
        if (kept < ds.n)
            printf("%zu rows of labels no client holds were left out (%d clients x %d "
                   "labels < %d classes)\n", ds.n - kept, cfg.n_clients,
                   cfg.classes_per_client, ds.n_classes);
    }
    printf("wrote %s/shard-000.bin .. shard-%03d.bin\n", out_dir, cfg.n_clients - 1);

    if (test_out) {
        ret = is_fmnist ? fedge_dataset_load_fashion_mnist(&test, NULL, 0)
                        : fedge_dataset_load_csv(&test, test_data);
        if (ret != FEDGE_OK) {
            fprintf(stderr, PROG ": cannot load the test split %s: %s\n",
                    is_fmnist ? FEDGE_FASHION_MNIST_DIR : test_data, fedge_strerror(ret));
            goto cleanup;
        }
        if (test.dim != ds.dim) {
            fprintf(stderr, PROG ": test split has %d features, training data %d\n", test.dim,
                    ds.dim);
            goto cleanup;
        }
        size_t *all = malloc(test.n * sizeof *all);
        if (!all) {
            fprintf(stderr, PROG ": out of memory\n");
            goto cleanup;
        }
        for (size_t i = 0; i < test.n; i++)
            all[i] = i;
        int test_type = strcmp(format, "auto") == 0 ? pick_format(&test) : ftype;
        ret = fedge_shard_write(test_out, &test, all, test.n, test_type);
        free(all);
        if (ret != FEDGE_OK) {
            fprintf(stderr, PROG ": writing %s: %s\n", test_out, fedge_strerror(ret));
            goto cleanup;
        }
        printf("wrote test split: %zu rows -> %s\n", test.n, test_out);
    }
    status = 0;

cleanup:
    free(path);
    free(hist);
    fedge_partition_free(&part);
    fedge_dataset_free(&ds);
    fedge_dataset_free(&test);
    return status;
}
