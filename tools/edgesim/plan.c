/* plan.c — fedge-edgesim's pure parts (see plan.h). */
#include "plan.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "error.h"

void fedge_edgesim_defaults(fedge_edgesim_options *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->host, sizeof o->host, "127.0.0.1");
    o->port = FEDGE_EDGE_PORT_DTLS;
    o->model_spec = "mlp:784-32-10";
    o->tmp_dir = "/tmp";
    o->population = 100;
    o->concurrency = 10;
    o->arrival = EDGESIM_ARRIVAL_ALL;
    o->rounds = 1;
    o->slowdown = 1.0;
    o->samples = 100;
    o->seed = 1;
    o->poll_ms = 500;
    o->timeout_ms = 5000;
    o->max_retries = 8;
    o->encoding = FEDGE_ENC_FP32;
    o->log_level = FEDGE_LOG_WARN;
    o->stack_kib = 256;
}

void fedge_edgesim_usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s --server HOST[:PORT] --keys FILE [options]\n"
            "       %s --help | --version\n"
            "Runs many virtual devices over real DTLS/CoAP against a fedge-aggregator\n"
            "(the fedge-edge client, one thread per session).\n"
            "  --population P        devices: the first P of the keys file (100)\n"
            "  --concurrency S       sessions at once (10)\n"
            "  --arrival all|poisson:RATE   fill every free slot at once, or RATE sessions/s\n"
            "  --session-s T         a session's time budget: U(0.5, 1.5) x T s (0: none)\n"
            "  --rounds N            updates per session (1; 0: no limit)\n"
            "  --dropout p           probability that a session vanishes during its upload (0)\n"
            "  --speed same|lognormal:SIGMA|straggler:FRAC:SLOWDOWN   compute speeds\n"
            "  --compute-ms MS       --train none: training time at speed 1 (0)\n"
            "  --train none|sgd      none: a seeded random delta, sealed for real (none)\n"
            "  --data SHARD          one shard file sliced among the devices\n"
            "  --beta B              Dirichlet(B) label-skewed slices of --data (0: contiguous)\n"
            "  --samples N           rows per device without --data (100)\n"
            "  --model-spec SPEC     the aggregator's model (mlp:784-32-10)\n"
            "  --tmp-dir DIR         --train sgd: where a session's slice is written (/tmp)\n"
            "  --seed N  --duration-s T (0: until the run finishes)  --json OUT\n"
            "  --poll-ms MS (500)  --timeout-ms MS (5000)  --max-retries N (8)\n"
            "  --encoding fp32|fp16|bf16|int8  --log-level LEVEL (warn)  --stack-kib K (256)\n"
            "  --transport dtls|tcp  CoAP over DTLS (default) or TLS/TCP (RFC 8323; listen_tcp)\n",
            prog, prog);
}

static int num_u32(const char *v, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || x < lo || x > hi)
        return FEDGE_ERR_RANGE;
    *out = (uint32_t)x;
    return FEDGE_OK;
}

static int num_d(const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x) || x < lo || x > hi)
        return FEDGE_ERR_RANGE;
    *out = x;
    return FEDGE_OK;
}

/* "a:b" or "a:b:c" numbers after a word, e.g. "straggler:0.1:5". */
static int num_list(const char *v, double *a, double *b)
{
    char buf[64];
    if (strlen(v) >= sizeof buf)
        return FEDGE_ERR_RANGE;
    snprintf(buf, sizeof buf, "%s", v);
    char *colon = strchr(buf, ':');
    if (b && !colon)
        return FEDGE_ERR_RANGE;
    if (colon)
        *colon = '\0';
    if (!b && colon)
        return FEDGE_ERR_RANGE;
    int ret = num_d(buf, 0.0, 1e9, a);
    if (ret == FEDGE_OK && b)
        ret = num_d(colon + 1, 0.0, 1e9, b);
    return ret;
}

static int parse_one(const char *flag, const char *v, fedge_edgesim_options *o)
{
    uint32_t u;
    int has_port;
    if (!strcmp(flag, "--server"))
        return fedge_edge_parse_server(v, o->host, sizeof o->host, &o->port, &has_port);
    if (!strcmp(flag, "--keys"))
        return (o->keys_path = v), FEDGE_OK;
    if (!strcmp(flag, "--data"))
        return (o->data_path = v), FEDGE_OK;
    if (!strcmp(flag, "--json"))
        return (o->json_path = v), FEDGE_OK;
    if (!strcmp(flag, "--model-spec"))
        return (o->model_spec = v), FEDGE_OK;
    if (!strcmp(flag, "--tmp-dir"))
        return (o->tmp_dir = v), FEDGE_OK;
    if (!strcmp(flag, "--population"))
        return num_u32(v, 1, EDGESIM_POPULATION_MAX, &o->population);
    if (!strcmp(flag, "--concurrency"))
        return num_u32(v, 1, EDGESIM_CONCURRENCY_MAX, &o->concurrency);
    if (!strcmp(flag, "--arrival")) {
        if (!strcmp(v, "all")) {
            o->arrival = EDGESIM_ARRIVAL_ALL;
            return FEDGE_OK;
        }
        if (strncmp(v, "poisson:", 8))
            return FEDGE_ERR_RANGE;
        o->arrival = EDGESIM_ARRIVAL_POISSON;
        int ret = num_d(v + 8, 1e-6, 1e6, &o->rate);
        return ret;
    }
    if (!strcmp(flag, "--session-s"))
        return num_d(v, 0.0, 1e7, &o->session_s);
    if (!strcmp(flag, "--rounds"))
        return num_u32(v, 0, UINT32_MAX, &o->rounds);
    if (!strcmp(flag, "--dropout"))
        return num_d(v, 0.0, 1.0, &o->dropout);
    if (!strcmp(flag, "--speed")) {
        if (!strcmp(v, "same")) {
            o->speed = EDGESIM_SPEED_SAME;
            return FEDGE_OK;
        }
        if (!strncmp(v, "lognormal:", 10)) {
            o->speed = EDGESIM_SPEED_LOGNORMAL;
            return num_list(v + 10, &o->sigma, NULL);
        }
        if (!strncmp(v, "straggler:", 10)) {
            o->speed = EDGESIM_SPEED_STRAGGLER;
            int ret = num_list(v + 10, &o->straggler_frac, &o->slowdown);
            if (ret == FEDGE_OK && (o->straggler_frac > 1.0 || o->slowdown < 1.0))
                ret = FEDGE_ERR_RANGE;
            return ret;
        }
        return FEDGE_ERR_RANGE;
    }
    if (!strcmp(flag, "--compute-ms"))
        return num_d(v, 0.0, 3.6e6, &o->compute_ms);
    if (!strcmp(flag, "--train")) {
        if (!strcmp(v, "none"))
            o->train = EDGESIM_TRAIN_NONE;
        else if (!strcmp(v, "sgd"))
            o->train = EDGESIM_TRAIN_SGD;
        else
            return FEDGE_ERR_RANGE;
        return FEDGE_OK;
    }
    if (!strcmp(flag, "--beta"))
        return num_d(v, 0.0, 1e6, &o->beta);
    if (!strcmp(flag, "--samples"))
        return num_u32(v, 1, 1u << 24, &o->samples);
    if (!strcmp(flag, "--seed")) {
        char *end;
        errno = 0;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || end == v || *end || v[0] == '-')
            return FEDGE_ERR_RANGE;
        o->seed = x;
        return FEDGE_OK;
    }
    if (!strcmp(flag, "--duration-s"))
        return num_d(v, 0.0, 1e7, &o->duration_s);
    if (!strcmp(flag, "--poll-ms"))
        return num_u32(v, 10, 600000, &o->poll_ms);
    if (!strcmp(flag, "--timeout-ms"))
        return num_u32(v, 100, 600000, &o->timeout_ms);
    if (!strcmp(flag, "--max-retries")) {
        int ret = num_u32(v, 0, 1000, &u);
        if (ret == FEDGE_OK)
            o->max_retries = (int)u;
        return ret;
    }
    if (!strcmp(flag, "--encoding"))
        return fedge_encoding_parse(v, &o->encoding);
    if (!strcmp(flag, "--log-level"))
        return fedge_log_parse_level(v, &o->log_level);
    if (!strcmp(flag, "--stack-kib"))
        return num_u32(v, 64, 65536, &o->stack_kib);
    if (!strcmp(flag, "--transport")) {
        if (strcmp(v, "dtls") && strcmp(v, "tcp"))
            return FEDGE_ERR_RANGE;
        o->tcp = !strcmp(v, "tcp");
        return FEDGE_OK;
    }
    return FEDGE_ERR_NOT_FOUND;
}

int fedge_edgesim_parse(int argc, char *const argv[], fedge_edgesim_options *o, char *err,
                        size_t errlen)
{
    fedge_edgesim_defaults(o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            o->help = 1;
            return FEDGE_OK;
        }
        char flag[32];
        const char *v = NULL;
        const char *eq = strchr(a, '=');
        size_t flen = eq ? (size_t)(eq - a) : strlen(a);
        if (strncmp(a, "--", 2) || flen >= sizeof flag) {
            snprintf(err, errlen, "unknown argument: %.64s", a);
            return FEDGE_ERR_EDGE_USAGE;
        }
        memcpy(flag, a, flen);
        flag[flen] = '\0';
        if (eq)
            v = eq + 1;
        else if (i + 1 < argc)
            v = argv[++i];
        if (!v) {
            snprintf(err, errlen, "%s needs a value", flag);
            return FEDGE_ERR_EDGE_USAGE;
        }
        int ret = parse_one(flag, v, o);
        if (ret == FEDGE_ERR_NOT_FOUND) {
            snprintf(err, errlen, "unknown flag %s", flag);
            return FEDGE_ERR_EDGE_USAGE;
        }
        if (ret != FEDGE_OK) {
            snprintf(err, errlen, "%s: bad value '%.64s'", flag, v);
            return FEDGE_ERR_EDGE_USAGE;
        }
    }
    if (!o->keys_path) {
        snprintf(err, errlen, "--keys is required");
        return FEDGE_ERR_EDGE_USAGE;
    }
    if (o->concurrency > o->population) {
        snprintf(err, errlen, "--concurrency %u exceeds --population %u (a device is in one "
                 "session at a time)", o->concurrency, o->population);
        return FEDGE_ERR_EDGE_USAGE;
    }
    if (o->train == EDGESIM_TRAIN_SGD && !o->data_path) {
        snprintf(err, errlen, "--train sgd needs --data");
        return FEDGE_ERR_EDGE_USAGE;
    }
    if (o->session_s == 0.0 && o->rounds == 0 && o->duration_s == 0.0) {
        /* sessions would never end, and the run only when the aggregator's does */
        snprintf(err, errlen, "a session needs an end: --rounds, --session-s or --duration-s");
        return FEDGE_ERR_EDGE_USAGE;
    }
    return FEDGE_OK;
}

double fedge_edgesim_gap_s(const fedge_edgesim_options *o, fedge_rng *r)
{
    if (o->arrival == EDGESIM_ARRIVAL_ALL)
        return 0.0;
    double u = fedge_rng_uniform_d(r); /* [0, 1): 1 - u in (0, 1] */
    return -log(1.0 - u) / o->rate;
}

double fedge_edgesim_speed(const fedge_edgesim_options *o, uint32_t d)
{
    fedge_rng base, r;
    fedge_rng_seed(&base, o->seed ^ 0x5350454544ull);
    fedge_rng_split(&base, d, &r);
    switch (o->speed) {
    case EDGESIM_SPEED_LOGNORMAL:
        return exp(fabs(fedge_rng_normal(&r)) * o->sigma);
    case EDGESIM_SPEED_STRAGGLER:
        return fedge_rng_uniform_d(&r) < o->straggler_frac ? o->slowdown : 1.0;
    case EDGESIM_SPEED_SAME:
    default:
        return 1.0;
    }
}

void fedge_edgesim_slice(uint64_t n, uint32_t p, uint32_t d, uint64_t *first, uint64_t *count)
{
    if (p == 0 || d >= p) {
        *first = *count = 0;
        return;
    }
    uint64_t base = n / p, extra = n % p;
    *count = base + (d < extra ? 1 : 0);
    *first = base * d + (d < extra ? d : extra);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double fedge_edgesim_quantile(double *v, size_t n, double q)
{
    if (!n)
        return 0.0;
    qsort(v, n, sizeof *v, cmp_double);
    if (q <= 0.0)
        return v[0];
    size_t rank = (size_t)ceil(q * (double)n); /* nearest rank: 1..n */
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

int fedge_edgesim_pool_init(fedge_edgesim_pool *p, uint32_t population)
{
    memset(p, 0, sizeof *p);
    if (population == 0 || population > EDGESIM_POPULATION_MAX)
        return FEDGE_ERR_RANGE;
    p->ids = malloc(population * sizeof *p->ids);
    p->present = malloc(population);
    if (!p->ids || !p->present) {
        fedge_edgesim_pool_free(p);
        return FEDGE_ERR_NOMEM;
    }
    for (uint32_t i = 0; i < population; i++)
        p->ids[i] = i;
    memset(p->present, 1, population);
    p->n = p->population = population;
    return FEDGE_OK;
}

void fedge_edgesim_pool_free(fedge_edgesim_pool *p)
{
    free(p->ids);
    free(p->present);
    memset(p, 0, sizeof *p);
}

int fedge_edgesim_pool_take(fedge_edgesim_pool *p, fedge_rng *r, uint32_t *d)
{
    if (!p->n)
        return FEDGE_ERR_NOT_FOUND;
    uint32_t k = fedge_rng_below(r, p->n);
    *d = p->ids[k];
    p->ids[k] = p->ids[--p->n];
    p->present[*d] = 0;
    return FEDGE_OK;
}

int fedge_edgesim_pool_put(fedge_edgesim_pool *p, uint32_t d)
{
    if (d >= p->population)
        return FEDGE_ERR_RANGE;
    if (p->present[d])
        return FEDGE_ERR_STATE;
    p->present[d] = 1;
    p->ids[p->n++] = d;
    return FEDGE_OK;
}
