/* fedge-sim — a whole federation in one process. See docs/SIM.md. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blas.h"
#include "common.h"
#include "crypto.h"
#include "config.h"
#include "instance_lock.h"
#include "keys.h"
#include "log.h"
#include "sim.h"
#include "text.h"
#include "version.h"

#define PROG "fedge-sim"

_Static_assert(FEDGE_KEYS_MAX_DEVICES == 100000, "--help and docs/SIM.md give --clients as 1..100000");

static void usage(FILE *out)
{
    fprintf(out,
            "usage: " PROG " [--config FILE] (--keys KEYS | --clients N) --shards DIR [options]\n"
            "                 [--KEY VALUE ...]\n"
            "       " PROG " --help | --version\n"
            "\n"
            "Runs a federation in one process: the aggregator's core (same configuration and\n"
            "policy files, same SQLite log, audit chain and model store as fedge-aggregator)\n"
            "on a virtual clock, and one virtual edge client per device of KEYS, training\n"
            "DIR/shard-NNN.bin (device i: shard i mod the number of shards) with the edge's\n"
            "trainer and sealing its updates with its device key. No network, no sleeping.\n"
            "\n"
            "  --keys FILE            device keys (the aggregator's keys_file)\n"
            "  --clients N            the population, 1..100000: with --keys (or the config's\n"
            "                         keys_file), the count it must list; without, N devices\n"
            "                         in <db>.keys (made once, then reused)\n"
            "  --shards DIR           client shards written by fedge-partition --out DIR\n"
            "  --threads T            clients trained in parallel, 1..256 (default: cores)\n"
            "  --seed S               one seed for everything: the aggregator's selection,\n"
            "                         the clients' shuffles, dropout, stragglers, attackers,\n"
            "                         DP noise (default 1)\n"
            "  --dropout P            a selected client never answers, with probability P\n"
            "  --stragglers FRAC      this fraction of the devices (fixed for the run) is slow:\n"
            "  --straggler-factor F   its training takes F times as long (default 10)\n"
            "  --straggler-delay S    plus S seconds (default 0)\n"
            "  --sample-cost S        virtual seconds per sample and epoch (default 0.0001);\n"
            "                         'measured': the measured training time (not reproducible)\n"
            "  --byzantine FRAC       this fraction of the devices (fixed for the run) attacks:\n"
            "  --attack signflip|noise  send -X * delta, or Gaussian noise of X times the\n"
            "                         standard deviation of its honest delta\n"
            "  --attack-scale X       (default 10)\n"
            "  --encoding E           delta encoding fp32 (default), fp16, bf16, int8\n"
            "  --json                 one JSON object per round and a summary object\n"
            "  --verbose              the aggregator's log at info level (default: warnings)\n"
            "  --KEY VALUE            any aggregator setting (fedge-aggregator --help-config)\n"
            "\n"
            "Resumes from an existing database and model store as the daemon does.\n"
            "Exit status: 0 when a round aggregated, 3 when none did, 1 on a runtime error,\n"
            "2 on a bad command line or configuration.\n");
}

static int parse_double(const char *text, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(v) || v < lo || v > hi)
        return FEDGE_ERR_CONFIG_VALUE;
    *out = v;
    return FEDGE_OK;
}

/* Sim options; *used = 0 for a key that is not one (an aggregator key). */
static int sim_option(fedge_sim_options *o, fedge_agg_config *cfg, const char *key, const char *value,
                      int *used, char *err, size_t errlen)
{
    double v;
    *used = 1;
    if (!strcmp(key, "keys")) {
        if (fedge_agg_config_set(cfg, "keys_file", value, err, errlen) != FEDGE_OK)
            goto bad;
        return FEDGE_OK;
    } else if (!strcmp(key, "shards")) {
        if (!value[0] || strlen(value) >= sizeof o->shards_dir)
            goto bad;
        memcpy(o->shards_dir, value, strlen(value) + 1);
    } else if (!strcmp(key, "clients")) {
        if (parse_double(value, 1, FEDGE_KEYS_MAX_DEVICES, &v) != FEDGE_OK || v != floor(v))
            goto bad;
        o->clients = (long)v;
    } else if (!strcmp(key, "threads")) {
        if (parse_double(value, 1, FEDGE_SIM_MAX_THREADS, &v) != FEDGE_OK || v != floor(v))
            goto bad;
        o->threads = (int)v;
    } else if (!strcmp(key, "seed")) {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(value, &end, 10);
        if (errno || end == value || *end || value[0] == '-')
            goto bad;
        o->seed = s;
        /* the aggregator's selection seed too, when its range allows */
        return fedge_agg_config_set(cfg, "seed", value, err, errlen);
    } else if (!strcmp(key, "dropout")) {
        if (parse_double(value, 0, 1, &o->dropout) != FEDGE_OK)
            goto bad;
    } else if (!strcmp(key, "stragglers")) {
        if (parse_double(value, 0, 1, &o->straggler_frac) != FEDGE_OK)
            goto bad;
    } else if (!strcmp(key, "straggler_factor")) {
        if (parse_double(value, 1, 1e6, &o->straggler_factor) != FEDGE_OK)
            goto bad;
    } else if (!strcmp(key, "straggler_delay")) {
        if (parse_double(value, 0, 1e7, &o->straggler_delay_s) != FEDGE_OK)
            goto bad;
    } else if (!strcmp(key, "sample_cost")) {
        if (!strcmp(value, "measured"))
            o->sample_cost_s = 0;
        else if (parse_double(value, 1e-12, 1e3, &o->sample_cost_s) != FEDGE_OK)
            goto bad;
    } else if (!strcmp(key, "byzantine")) {
        if (parse_double(value, 0, 1, &o->byzantine_frac) != FEDGE_OK)
            goto bad;
    } else if (!strcmp(key, "attack")) {
        if (!strcmp(value, "signflip"))
            o->attack = FEDGE_SIM_ATTACK_SIGNFLIP;
        else if (!strcmp(value, "noise"))
            o->attack = FEDGE_SIM_ATTACK_NOISE;
        else
            goto bad;
    } else if (!strcmp(key, "attack_scale")) {
        if (parse_double(value, 1e-6, 1e6, &o->attack_scale) != FEDGE_OK)
            goto bad;
    } else if (!strcmp(key, "encoding")) {
        if (fedge_encoding_parse(value, &o->encoding) != FEDGE_OK)
            goto bad;
    } else {
        *used = 0;
    }
    return FEDGE_OK;
bad:;
    /* the option as typed on the command line: --attack-scale, not attack_scale */
    char opt[64];
    snprintf(opt, sizeof opt, "%s", key);
    for (char *p = opt; *p; p++)
        if (*p == '_')
            *p = '-';
    snprintf(err, errlen, "--%s: bad value '%.80s' (see --help)", opt, value);
    return FEDGE_ERR_CONFIG_VALUE;
}

typedef struct {
    fedge_sim_options *opt;
    fedge_agg_config *cfg;
    int *verbose;
} sim_args;

static int sim_is_flag(void *ctx, const char *key)
{
    (void)ctx;
    return !strcmp(key, "json") || !strcmp(key, "verbose");
}

/* fedge_agg_config_from_args's hook: the sim's own options. */
static int sim_take(void *vctx, const char *key, const char *value, int *took, char *err, size_t errlen)
{
    sim_args *a = vctx;
    if (sim_is_flag(vctx, key)) {
        *(!strcmp(key, "json") ? &a->opt->json : a->verbose) = 1;
        *took = 1;
        return FEDGE_OK;
    }
    return sim_option(a->opt, a->cfg, key, value, took, err, errlen);
}

int main(int argc, char **argv)
{
    fedge_agg_config cfg;
    fedge_sim_options opt;
    fedge_instance_lock lock = {.fd = -1, .db_fd = -1};
    char err[512] = "";
    int verbose = 0, status = 0;
    pid_t owner = 0;
    FILE *logf = NULL;

    if (fedge_crypto_use_openssl() != FEDGE_OK) /* mbedTLS stays: the same bytes, slower */
        FEDGE_WARN("OpenSSL lacks SHA-256 or AES-GCM: crypto on mbedTLS");
    fedge_agg_config_defaults(&cfg);
    fedge_sim_options_defaults(&opt);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--version")) {
            printf(PROG " %s\n", FEDGE_VERSION);
            return 0;
        }
    }
    sim_args ctx = {.opt = &opt, .cfg = &cfg, .verbose = &verbose};
    fedge_agg_args_extra extra = {.is_flag = sim_is_flag, .take = sim_take, .ctx = &ctx};
    if (fedge_agg_config_from_args(&cfg, argc, argv, &extra, err, sizeof err) != FEDGE_OK) {
        fedge_text_eprintf(PROG, "%s", err);
        return 2;
    }
    if (!opt.shards_dir[0]) {
        fedge_text_eprintf(PROG, "--shards DIR is required (see --help)");
        return 2;
    }
    if (opt.clients > 0 && !cfg.keys_file[0]) {
        char path[FEDGE_PATH_MAX + 8];
        int n = snprintf(path, sizeof path, "%s" FEDGE_SIM_KEYS_SUFFIX, cfg.db);
        if (n < 0 || (size_t)n >= sizeof cfg.keys_file ||
            fedge_sim_write_keys(path, opt.clients, err, sizeof err) != FEDGE_OK ||
            fedge_agg_config_set(&cfg, "keys_file", path, err, sizeof err) != FEDGE_OK) {
            fedge_text_eprintf(PROG, "%s", err[0] ? err : "--clients: the keys file path is too long");
            return 2;
        }
    }
    if (cfg.keys_file[0] && access(cfg.keys_file, R_OK) != 0) {
        /* the daemon's message would name its --keys-file */
        fedge_text_eprintf(PROG, "--keys (or the configuration's keys_file) %s: %s", cfg.keys_file,
                           strerror(errno));
        return 2;
    }
    if (fedge_agg_config_validate(&cfg, err, sizeof err) != FEDGE_OK) {
        fedge_text_eprintf(PROG, "%s", err);
        return 2;
    }
    fedge_log_set_level(verbose ? FEDGE_LOG_INFO : FEDGE_LOG_WARN);
    fedge_log_set_tag("sim");
    if (cfg.log_file[0]) {
        logf = fopen(cfg.log_file, "a");
        if (!logf) {
            fedge_text_eprintf(PROG, "cannot open log file %s", cfg.log_file);
            return 2;
        }
        fedge_log_set_stream(logf);
    }
    /* the pool's threads are the parallelism: one BLAS thread each */
    if (fedge_blas_set_threads(1) != FEDGE_OK ||
        fedge_instance_lock_acquire(cfg.db, &lock, &owner, err, sizeof err) != FEDGE_OK) {
        fedge_text_eprintf(PROG, "%s", err[0] ? err : "cannot set the BLAS thread count");
        status = 2;
        goto out;
    }
    int exit_status = 1;
    int ret = fedge_sim_run(&cfg, &opt, &exit_status, err, sizeof err);
    if (ret != FEDGE_OK) {
        fedge_text_eprintf(PROG, "%s", err);
        status = ret == FEDGE_ERR_CONFIG_VALUE || ret == FEDGE_ERR_MODEL_SHAPE ? 2 : 1;
    } else {
        status = exit_status;
    }
out:
    fedge_instance_lock_release(&lock);
    if (logf) {
        fedge_log_set_stream(NULL);
        fclose(logf);
    }
    return status;
}
