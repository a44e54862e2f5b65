/* args.c — fedge-edge command-line parsing (see args.h). */
#include "args.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "keys.h"

void fedge_edge_config_defaults(fedge_edge_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->host, sizeof cfg->host, "127.0.0.1");
    cfg->encoding = FEDGE_ENC_FP32;
    cfg->seed = 1;
    cfg->poll_ms = 500;
    cfg->timeout_ms = 5000;
    cfg->max_retries = 8;
    cfg->log_level = FEDGE_LOG_INFO;
    cfg->exit_when_finished = 1;
    cfg->max_memory_mb = FEDGE_EDGE_MAX_MEMORY_MB_DEFAULT;
}

static int usage_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int usage_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return FEDGE_ERR_EDGE_USAGE;
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int fedge_edge_parse_server(const char *text, char *host, size_t host_cap, uint16_t *port,
                            int *has_port)
{
    const char *h = text, *colon = NULL;
    size_t hlen;
    *has_port = 0;
    if (!text || !*text)
        return FEDGE_ERR_INVALID_ARG;
    if (*text == '[') {
        const char *close = strchr(text, ']');
        if (!close || close == text + 1)
            return FEDGE_ERR_INVALID_ARG;
        h = text + 1;
        hlen = (size_t)(close - h);
        if (close[1] == ':')
            colon = close + 1;
        else if (close[1] != '\0')
            return FEDGE_ERR_INVALID_ARG;
    } else {
        colon = strchr(text, ':');
        if (colon && strchr(colon + 1, ':'))
            return FEDGE_ERR_INVALID_ARG; /* a bare IPv6 address needs brackets */
        hlen = colon ? (size_t)(colon - text) : strlen(text);
    }
    if (hlen == 0 || hlen >= host_cap)
        return FEDGE_ERR_INVALID_ARG;
    for (size_t i = 0; i < hlen; i++)
        if (h[i] == ' ' || h[i] == '/' || h[i] == '[' || h[i] == ']')
            return FEDGE_ERR_INVALID_ARG;
    if (colon) {
        uint64_t p;
        if (parse_u64(colon + 1, 1, 65535, &p))
            return FEDGE_ERR_INVALID_ARG;
        *port = (uint16_t)p;
        *has_port = 1;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    return FEDGE_OK;
}

enum {
    OPT_SERVER,
    OPT_ID,
    OPT_KEYS,
    OPT_SHARD,
    OPT_ENCODING,
    OPT_STOCHASTIC,
    OPT_SEED,
    OPT_POLL,
    OPT_TIMEOUT,
    OPT_RETRIES,
    OPT_INSECURE,
    OPT_LOG_LEVEL,
    OPT_STATE_DIR,
    OPT_EXIT_FINISHED,
    OPT_NO_EXIT_FINISHED,
    OPT_MAX_ROUNDS,
    OPT_PRINT_MEMORY,
    OPT_MAX_MEMORY,
    OPT_ACT_BUDGET,
    OPT_HELP,
    OPT_VERSION,
    OPT_NO_OBSERVE,
    OPT_BUNDLE,
    OPT_TRANSPORT,
    OPT_BASE_IN_RAM,
};

static const struct {
    const char *name;
    int id;
    int takes_value;
} options[] = {
    {"server", OPT_SERVER, 1},
    {"id", OPT_ID, 1},
    {"keys", OPT_KEYS, 1},
    {"shard", OPT_SHARD, 1},
    {"encoding", OPT_ENCODING, 1},
    {"stochastic", OPT_STOCHASTIC, 0},
    {"seed", OPT_SEED, 1},
    {"poll-ms", OPT_POLL, 1},
    {"timeout-ms", OPT_TIMEOUT, 1},
    {"max-retries", OPT_RETRIES, 1},
    {"insecure", OPT_INSECURE, 0},
    {"log-level", OPT_LOG_LEVEL, 1},
    {"state-dir", OPT_STATE_DIR, 1},
    {"exit-when-finished", OPT_EXIT_FINISHED, 0},
    {"no-exit-when-finished", OPT_NO_EXIT_FINISHED, 0},
    {"max-rounds", OPT_MAX_ROUNDS, 1},
    {"print-memory", OPT_PRINT_MEMORY, 0},
    {"max-memory-mb", OPT_MAX_MEMORY, 1},
    {"act-budget-kb", OPT_ACT_BUDGET, 1},
    {"help", OPT_HELP, 0},
    {"version", OPT_VERSION, 0},
    {"no-observe", OPT_NO_OBSERVE, 0},
    {"bundle", OPT_BUNDLE, 1},
    {"transport", OPT_TRANSPORT, 1},
    {"base-in-ram", OPT_BASE_IN_RAM, 0},
};

int fedge_edge_args_parse(int argc, char *const argv[], fedge_edge_config *cfg, char *err,
                          size_t errlen)
{
    int port_given = 0;
    uint64_t u;
    fedge_edge_config_defaults(cfg);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            if (strcmp(arg, "-h") == 0) {
                cfg->help = 1;
                continue;
            }
            return usage_err(err, errlen, "unexpected argument '%s' (see --help)", arg);
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        int opt = -1, takes_value = 0;
        const char *optname = "";
        for (size_t k = 0; k < FEDGE_ARRAY_LEN(options); k++) {
            if (strlen(options[k].name) == nlen && strncmp(options[k].name, name, nlen) == 0) {
                opt = options[k].id;
                takes_value = options[k].takes_value;
                optname = options[k].name;
            }
        }
        if (opt < 0)
            return usage_err(err, errlen, "unknown flag '--%.*s' (see --help)", (int)nlen, name);
        const char *val = NULL;
        if (takes_value) {
            if (eq)
                val = eq + 1;
            else if (i + 1 < argc)
                val = argv[++i];
            else
                return usage_err(err, errlen, "--%s needs a value", optname);
        } else if (eq) {
            return usage_err(err, errlen, "--%s takes no value", optname);
        }

        switch (opt) {
        case OPT_SERVER: {
            uint16_t port = 0;
            if (fedge_edge_parse_server(val, cfg->host, sizeof cfg->host, &port, &port_given))
                return usage_err(err, errlen,
                                 "--server '%s': expected HOST, HOST:PORT or [IPV6]:PORT "
                                 "(port 1..65535)", val);
            if (port_given)
                cfg->port = port;
            cfg->server_given = 1;
            break;
        }
        case OPT_ID:
            if (!fedge_device_id_valid(val, strlen(val)))
                return usage_err(err, errlen, "--id '%s': 1-%d characters of [A-Za-z0-9._-]",
                                 val, FEDGE_DEVICE_ID_MAX);
            cfg->id = val;
            break;
        case OPT_KEYS:
        case OPT_SHARD:
        case OPT_STATE_DIR:
            if (!*val)
                return usage_err(err, errlen, "--%s needs a non-empty path", optname);
            if (opt == OPT_KEYS)
                cfg->keys_path = val;
            else if (opt == OPT_SHARD)
                cfg->shard_path = val;
            else
                cfg->state_dir = val;
            break;
        case OPT_ENCODING:
            if (fedge_encoding_parse(val, &cfg->encoding) != FEDGE_OK)
                return usage_err(err, errlen, "--encoding '%s': expected fp32|fp16|bf16|int8",
                                 val);
            break;
        case OPT_STOCHASTIC: cfg->stochastic = 1; break;
        case OPT_SEED:
            if (parse_u64(val, 0, UINT64_MAX, &u))
                return usage_err(err, errlen, "--seed '%s': expected an unsigned integer", val);
            cfg->seed = u;
            break;
        case OPT_POLL:
            if (parse_u64(val, 1, 3600000, &u))
                return usage_err(err, errlen, "--poll-ms '%s': expected 1..3600000", val);
            cfg->poll_ms = (uint32_t)u;
            break;
        case OPT_TIMEOUT:
            if (parse_u64(val, 50, 600000, &u))
                return usage_err(err, errlen, "--timeout-ms '%s': expected 50..600000", val);
            cfg->timeout_ms = (uint32_t)u;
            break;
        case OPT_RETRIES:
            if (strcmp(val, "-1") == 0) {
                cfg->max_retries = -1;
            } else {
                if (parse_u64(val, 0, 1000000, &u))
                    return usage_err(err, errlen,
                                     "--max-retries '%s': expected 0..1000000, or -1 (forever)",
                                     val);
                cfg->max_retries = (int)u;
            }
            break;
        case OPT_INSECURE: cfg->insecure = 1; break;
        case OPT_LOG_LEVEL:
            if (fedge_log_parse_level(val, &cfg->log_level) != FEDGE_OK)
                return usage_err(err, errlen,
                                 "--log-level '%s': expected debug|info|warn|error|off", val);
            break;
        case OPT_EXIT_FINISHED: cfg->exit_when_finished = 1; break;
        case OPT_NO_EXIT_FINISHED: cfg->exit_when_finished = 0; break;
        case OPT_MAX_ROUNDS:
            if (parse_u64(val, 1, UINT32_MAX, &u))
                return usage_err(err, errlen, "--max-rounds '%s': expected 1..4294967295", val);
            cfg->max_rounds = (uint32_t)u;
            break;
        case OPT_PRINT_MEMORY: cfg->print_memory = 1; break;
        case OPT_MAX_MEMORY:
            if (parse_u64(val, 1, 1u << 20, &u))
                return usage_err(err, errlen, "--max-memory-mb '%s': expected 1..1048576", val);
            cfg->max_memory_mb = (uint32_t)u;
            break;
        case OPT_ACT_BUDGET:
            if (parse_u64(val, 1, 1u << 20, &u))
                return usage_err(err, errlen, "--act-budget-kb '%s': expected 1..1048576", val);
            cfg->act_budget_kb = (uint32_t)u;
            break;
        case OPT_HELP: cfg->help = 1; break;
        case OPT_VERSION: cfg->version = 1; break;
        case OPT_NO_OBSERVE: cfg->no_observe = 1; break;
        case OPT_BUNDLE:
            if (!*val)
                return usage_err(err, errlen, "--bundle needs a non-empty path");
            cfg->bundle_path = val;
            break;
        case OPT_TRANSPORT:
            if (!strcmp(val, "tcp"))
                cfg->tcp = 1;
            else if (!strcmp(val, "dtls"))
                cfg->tcp = 0;
            else
                return usage_err(err, errlen, "--transport '%s': expected dtls or tcp", val);
            break;
        case OPT_BASE_IN_RAM: cfg->base_in_ram = 1; break;
        default: return usage_err(err, errlen, "internal: unhandled flag");
        }
    }
    if (cfg->help || cfg->version)
        return FEDGE_OK;
    if (cfg->bundle_path && cfg->keys_path)
        return usage_err(err, errlen, "--bundle holds the device's key: give --bundle or --keys, not both");
    if (!cfg->id && !cfg->bundle_path)
        return usage_err(err, errlen, "--id DEVICE is required (or --bundle FILE)");
    if (!cfg->keys_path && !cfg->bundle_path)
        return usage_err(err, errlen, "--keys FILE is required (or --bundle FILE)");
    if (!cfg->shard_path)
        return usage_err(err, errlen, "--shard FILE is required");
    if (cfg->stochastic && cfg->encoding != FEDGE_ENC_INT8)
        return usage_err(err, errlen, "--stochastic applies to --encoding int8 only");
    if (!port_given)
        cfg->port = cfg->insecure ? FEDGE_EDGE_PORT_PLAIN : FEDGE_EDGE_PORT_DTLS;
    return FEDGE_OK;
}

void fedge_edge_usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s --id DEVICE --keys FILE --shard FILE [options]\n"
            "\n"
            "Federated edge client: polls the aggregator's /round, trains on the local\n"
            "shard when selected, and posts a sealed weight delta to /update.\n"
            "\n"
            "  --server HOST[:PORT]   aggregator (default 127.0.0.1:5684; 5683 with --insecure;\n"
            "                         IPv6 as [ADDR]:PORT)\n"
            "  --id DEVICE            device id = DTLS PSK identity\n"
            "  --keys FILE            keys file (mode 0600); the line with DEVICE is used\n"
            "  --bundle FILE          credential bundle from fedge-admin device add: the device's\n"
            "                         key and server (in place of --id, --keys and --server)\n"
            "  --shard FILE           local training data (fedge shard file)\n"
            "  --encoding E           delta encoding: fp32 (default), fp16, bf16, int8\n"
            "  --stochastic           int8 with stochastic (unbiased) rounding\n"
            "  --seed N               shuffling / rounding seed (default 1)\n"
            "  --poll-ms N            /round poll interval (default 500); while the server\n"
            "                         pushes /round changes (CoAP Observe) the edge polls\n"
            "                         only every 10 x N as a fallback\n"
            "  --no-observe           poll /round, never register Observe on it\n"
            "  --transport dtls|tcp   CoAP over DTLS (default) or over TLS/TCP (RFC 8323,\n"
            "                         BERT blocks; the aggregator needs listen_tcp)\n"
            "  --timeout-ms N         per-request timeout, scaled up for large bodies\n"
            "                         (default 5000)\n"
            "  --max-retries N        retries per request before giving up (default 8;\n"
            "                         -1 = forever)\n"
            "  --insecure             plain CoAP without DTLS (the aggregator must allow it)\n"
            "  --log-level L          debug|info|warn|error|off (default info)\n"
            "  --state-dir DIR        persist the update counter in DIR/DEVICE.counter and\n"
            "                         SCAFFOLD's client control variate in DIR/DEVICE.control\n"
            "                         (SCAFFOLD rounds need it); DIR/DEVICE.finished marks\n"
            "                         a finished run: a restart exits 0 at once while the\n"
            "                         aggregator is unreachable or reports it finished;\n"
            "                         a momentum round keeps its base model in DIR/DEVICE.base\n"
            "                         while it trains (removed after the round)\n"
            "  --base-in-ram          keep that base model in RAM instead (a third model-sized\n"
            "                         buffer beside the local model and the velocity)\n"
            "  --exit-when-finished   exit 0 when the aggregator reports state=finished\n"
            "                         (default); --no-exit-when-finished keeps polling\n"
            "  --max-rounds N         exit after taking part in N rounds\n"
            "  --print-memory         log the planned buffer sizes when they are allocated\n"
            "  --max-memory-mb N      skip a round whose model needs more than N MiB of\n"
            "                         buffers at its batch size (default 256)\n"
            "  --act-budget-kb N      activations of one training pass: a minibatch that\n"
            "                         needs more runs as micro-batches (more RAM: faster;\n"
            "                         default: the build's, see docs/EDGE.md)\n"
            "  --help                 this text\n"
            "  --version              print the version and exit\n"
            "\n"
            "Exit status: 0 finished, max rounds reached or stopped by SIGINT/SIGTERM;\n"
            "1 error (including the aggregator unreachable after all retries); 2 bad usage.\n",
            prog);
}

int fedge_edge_args_apply_bundle(fedge_edge_config *cfg, char *err, size_t errlen)
{
    fedge_keys k;
    char server[FEDGE_BUNDLE_SERVER_MAX + 1], why[512] = "";
    if (!cfg->bundle_path)
        return FEDGE_OK;
    if (fedge_keys_bundle_read(cfg->bundle_path, &k, server, why, sizeof why) != FEDGE_OK)
        return usage_err(err, errlen, "--bundle: %s", why[0] ? why : "unreadable");
    int ok = !cfg->id || strcmp(cfg->id, k.devices[0].id) == 0;
    snprintf(cfg->bundle_id, sizeof cfg->bundle_id, "%s", k.devices[0].id);
    fedge_keys_free(&k);
    if (!ok)
        return usage_err(err, errlen, "--id %s: the bundle is device %s's", cfg->id, cfg->bundle_id);
    cfg->id = cfg->bundle_id;
    cfg->keys_path = cfg->bundle_path;
    if (!cfg->server_given && server[0]) {
        uint16_t port = 0;
        int has_port = 0;
        if (fedge_edge_parse_server(server, cfg->host, sizeof cfg->host, &port, &has_port))
            return usage_err(err, errlen, "--bundle: its server '%s' is not HOST[:PORT]", server);
        if (has_port)
            cfg->port = port;
    }
    return FEDGE_OK;
}
