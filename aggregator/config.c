#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "delta.h"
#include "log.h"
#include "model.h"

typedef enum { T_STR, T_LONG, T_DOUBLE, T_BOOL } field_type;

typedef struct {
    const char *key;
    field_type type;
    size_t offset;
    size_t size; /* strings: buffer size */
    double min, max;
    const char *def;
    const char *help;
} field;

#define STR(k, d, h) {#k, T_STR, offsetof(fedge_agg_config, k), sizeof(((fedge_agg_config *)0)->k), 0, 0, d, h}
#define LNG(k, lo, hi, d, h) {#k, T_LONG, offsetof(fedge_agg_config, k), 0, lo, hi, d, h}
#define DBL(k, lo, hi, d, h) {#k, T_DOUBLE, offsetof(fedge_agg_config, k), 0, lo, hi, d, h}
#define BOOL(k, d, h) {#k, T_BOOL, offsetof(fedge_agg_config, k), 0, 0, 1, d, h}

static const field FIELDS[] = {
    STR(listen, "127.0.0.1:5684", "UDP address:port to serve CoAP/DTLS on (5683 is usual with insecure)"),
    BOOL(insecure, "0", "serve plain CoAP without DTLS (testing only; updates are still sealed)"),
    STR(keys_file, "", "device keys file: 'DEVICE_ID REGION SECRET_HEX' per line, mode 0600 (required)"),
    STR(db, "fedge.db", "SQLite round log"),
    STR(model_dir, "models", "model store folder (model files named by version)"),
    STR(model_spec, "mlp:784-200-10", "model architecture for a fresh start"),
    STR(init_model, "", "start from this model file instead of a seeded random one"),
    STR(test_data, "fashion-mnist", "held-out evaluation set: a shard file, or 'fashion-mnist' (test split)"),
    STR(policy_file, "", "governance policy (YAML, docs/POLICY.md); empty: the default policy"),
    STR(signing_key, "", "ECDSA P-256 private key (PEM) that signs the audit chain head; empty: no signatures"),
    STR(log_level, "info", "debug|info|warn|error"),
    STR(log_file, "", "log to this file instead of stderr"),
    LNG(seed, 0, 9.2e18, "1", "seed for the initial model and participant selection"),
    LNG(rounds, 0, 1e9, "0", "rounds to run, then stop (0: forever)"),
    LNG(clients_per_round, 0, 1e6, "0", "participants per round (0: use client_fraction)"),
    DBL(client_fraction, 0.0001, 1, "1", "fraction of allowed devices selected per round"),
    DBL(quorum, 0.0001, 1, "1", "fraction of the selected whose accepted updates close the round early"),
    LNG(min_updates, 1, 1e6, "1", "accepted updates needed to aggregate when the deadline passes"),
    DBL(round_timeout_s, 0.1, 86400, "60", "round deadline, seconds after it opens"),
    DBL(start_delay_s, 0, 3600, "0", "wait this long after start-up before opening the first round"),
    LNG(local_epochs, 1, 1000, "1", "local epochs each client trains per round"),
    DBL(lr, 1e-6, 10, "0.05", "client learning rate in round 1"),
    DBL(lr_decay, 0.01, 1, "1", "client learning rate of round r is lr * lr_decay^(r-1)"),
    DBL(momentum, 0, 0.999, "0.9", "client SGD momentum"),
    LNG(batch, 1, 65536, "32", "client minibatch size"),
    DBL(server_lr, 1e-6, 10, "1", "server step size applied to the weighted mean delta"),
    LNG(max_update_bytes, 0, 512.0 * 1024 * 1024, "0", "largest accepted POST /update body (0: fp32 size of the model + envelope)"),
    DBL(upload_idle_timeout_s, 0.5, 3600, "45", "a partial Block1 upload that receives nothing this long is freed (its next block gets 4.08); after 5 s when a new upload needs its room"),
    LNG(upload_max_partial_per_device, 1, 1000, "2", "partial Block1 uploads one device may have in progress (more get 5.03)"),
    LNG(upload_max_partial_total, 1, 65536, "256", "partial Block1 uploads in progress across all devices (more get 5.03)"),
    LNG(upload_memory_bytes, 0, 64.0 * 1024 * 1024 * 1024, "0", "memory reserved for partial uploads, by Size1 or max_update_bytes each (0: min(upload_max_partial_total x max_update_bytes, 256 MiB))"),
    LNG(udp_rcvbuf_bytes, 0, 1024.0 * 1024 * 1024, "0", "UDP socket receive buffer (0: 16 KiB per device in the keys file, within [kernel default, 64 MiB])"),
    DBL(linger_s, 0, 3600, "3", "after the last round keep answering (state=finished) this long"),
    LNG(refine_every, 0, 1e6, "0", "run cluster refinement after every k-th aggregated round (0: never)"),
    STR(refine_command, "", "refinement command; {in} {out} {round} are substituted (docs/CLUSTER.md)"),
    DBL(refine_timeout_s, 1, 86400, "600", "refinement gets killed after this long; the aggregate is kept"),
};

static int set_field(fedge_agg_config *c, const field *f, const char *value, char *err, size_t errlen)
{
    char *end = NULL;
    void *p = (char *)c + f->offset;
    switch (f->type) {
    case T_STR:
        if (strlen(value) >= f->size) {
            snprintf(err, errlen, "%s: value longer than %zu bytes", f->key, f->size - 1);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        memcpy(p, value, strlen(value) + 1);
        return FEDGE_OK;
    case T_BOOL:
        if (!strcmp(value, "1") || !strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "on")) {
            *(int *)p = 1;
        } else if (!strcmp(value, "0") || !strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "off")) {
            *(int *)p = 0;
        } else {
            snprintf(err, errlen, "%s: expected true or false, got '%s'", f->key, value);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        return FEDGE_OK;
    case T_LONG: {
        errno = 0;
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end != '\0' || v < f->min || v > f->max) {
            snprintf(err, errlen, "%s: expected an integer in [%.0f, %.0f], got '%s'", f->key,
                     f->min, f->max, value);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        *(long *)p = v;
        return FEDGE_OK;
    }
    case T_DOUBLE: {
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end != '\0' || !isfinite(v) || v < f->min || v > f->max) {
            snprintf(err, errlen, "%s: expected a number in [%g, %g], got '%s'", f->key, f->min,
                     f->max, value);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        *(double *)p = v;
        return FEDGE_OK;
    }
    }
    return FEDGE_ERR_INTERNAL;
}

static const field *find_field(const char *key)
{
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(FIELDS); i++)
        if (!strcmp(FIELDS[i].key, key))
            return &FIELDS[i];
    return NULL;
}

int fedge_agg_config_is_key(const char *key) { return find_field(key) != NULL; }

void fedge_agg_config_defaults(fedge_agg_config *c)
{
    char err[8];
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(FIELDS); i++)
        (void)set_field(c, &FIELDS[i], FIELDS[i].def, err, sizeof err);
}

int fedge_agg_config_set(fedge_agg_config *c, const char *key, const char *value, char *err,
                         size_t errlen)
{
    const field *f = find_field(key);
    if (!f) {
        snprintf(err, errlen, "unknown key '%s' (see --help-config)", key);
        return FEDGE_ERR_CONFIG_UNKNOWN_KEY;
    }
    return set_field(c, f, value, err, errlen);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
        *--e = '\0';
    return s;
}

int fedge_agg_config_load_file(fedge_agg_config *c, const char *path, char *err, size_t errlen)
{
    char line[2048], msg[256];
    size_t lineno = 0;
    int ret = FEDGE_OK;
    fedge_agg_config next = *c; /* all or nothing: c changes only if every line is good */
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return FEDGE_ERR_IO;
    }
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (strlen(line) == sizeof line - 1 && line[sizeof line - 2] != '\n') {
            snprintf(err, errlen, "%s:%zu: line too long", path, lineno);
            FAIL(FEDGE_ERR_CONFIG_SYNTAX);
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%zu: expected 'key = value'", path, lineno);
            FAIL(FEDGE_ERR_CONFIG_SYNTAX);
        }
        *eq = '\0';
        char *key = trim(s), *value = trim(eq + 1);
        ret = fedge_agg_config_set(&next, key, value, msg, sizeof msg);
        if (ret != FEDGE_OK) {
            snprintf(err, errlen, "%s:%zu: %s", path, lineno, msg);
            goto cleanup;
        }
    }
cleanup:
    fclose(f);
    if (ret == FEDGE_OK)
        *c = next;
    return ret;
}

int fedge_agg_config_validate(const fedge_agg_config *c, char *err, size_t errlen)
{
    fedge_model_spec spec;
    fedge_log_level lvl;
    if (c->keys_file[0] == '\0') {
        snprintf(err, errlen, "keys_file is required");
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (c->init_model[0] == '\0' && fedge_model_spec_parse(c->model_spec, &spec) != FEDGE_OK) {
        snprintf(err, errlen, "model_spec: cannot parse '%s' (e.g. mlp:784-200-10)", c->model_spec);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (fedge_log_parse_level(c->log_level, &lvl) != FEDGE_OK) {
        snprintf(err, errlen, "log_level: expected debug|info|warn|error, got '%s'", c->log_level);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (!strchr(c->listen, ':')) {
        snprintf(err, errlen, "listen: expected HOST:PORT, got '%s'", c->listen);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (c->refine_every > 0 && c->refine_command[0] == '\0') {
        snprintf(err, errlen, "refine_every is set but refine_command is empty");
        return FEDGE_ERR_CONFIG_VALUE;
    }
    return FEDGE_OK;
}

void fedge_agg_config_print_help(FILE *out)
{
    fprintf(out, "Config keys (file: 'key = value' lines, '#' comments; command line: --key value):\n");
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(FIELDS); i++)
        fprintf(out, "  %-18s %s (default: %s)\n", FIELDS[i].key, FIELDS[i].help,
                FIELDS[i].def[0] ? FIELDS[i].def : "none");
}
