/* args.h — fedge-edge command line, parsed into a config.
 *
 * Flags take their value as the next argument or after '=' (--id=dev-1).
 * Required: --id, --keys, --shard (unless --help or --version). The port defaults to 5684
 * (DTLS), or 5683 with --insecure, whatever the flag order. Strings in the
 * config point into argv (not owned, nothing to free). On error the config
 * is unspecified and err gets one line naming the flag. Pure logic. */
#ifndef FEDGE_EDGE_ARGS_H
#define FEDGE_EDGE_ARGS_H

#include <stdint.h>
#include <stdio.h>

#include "delta.h"
#include "log.h"

#define FEDGE_EDGE_PORT_DTLS 5684
#define FEDGE_EDGE_PORT_PLAIN 5683
#define FEDGE_EDGE_HOST_MAX 255
#define FEDGE_EDGE_MAX_MEMORY_MB_DEFAULT 256

typedef struct {
    char host[FEDGE_EDGE_HOST_MAX + 1]; /* name or address, IPv6 without brackets */
    uint16_t port;
    const char *id;
    const char *keys_path;
    const char *shard_path;
    const char *state_dir;              /* NULL: counter from the clock */
    fedge_encoding encoding;
    int stochastic;                     /* int8 stochastic rounding */
    uint64_t seed;
    uint32_t poll_ms;
    uint32_t timeout_ms;
    int max_retries;                    /* -1: retry forever */
    int insecure;
    fedge_log_level log_level;
    int exit_when_finished;
    uint32_t max_rounds;                /* 0: no limit */
    int print_memory;
    uint32_t max_memory_mb;             /* ceiling on the planned buffers of a round, MiB */
    uint32_t act_budget_kb;             /* --act-budget-kb: activations per pass (0: the build's) */
    int help;
    int version;                        /* --version: print it and exit */
    int no_observe;                     /* poll /round; no CoAP Observe */
    /* --bundle FILE (fedge-admin device add): the device's credential
     * bundle; fedge_edge_args_apply_bundle fills id, keys_path and, unless
     * --server was given, host and port from it */
    const char *bundle_path;
    int server_given;
    char bundle_id[64 + 1];
    int tcp;                            /* --transport tcp: CoAP over TLS/TCP (RFC 8323) */
    int base_in_ram;                    /* --base-in-ram: no DIR/DEVICE.base */
} fedge_edge_config;

void fedge_edge_config_defaults(fedge_edge_config *cfg);
/* argv[0] is the program name. FEDGE_ERR_EDGE_USAGE on any bad flag. */
int fedge_edge_args_parse(int argc, char *const argv[], fedge_edge_config *cfg, char *err,
                          size_t errlen);
/* Reads cfg->bundle_path (keys.h's bundle: one device line and its
 * server) into cfg: keys_path is the bundle; id is its device (an --id given
 * too must be the same); host and port come from it unless --server was
 * given. Nothing to do without --bundle. FEDGE_ERR_EDGE_USAGE with err
 * naming why. The one part of this module that reads a file. */
int fedge_edge_args_apply_bundle(fedge_edge_config *cfg, char *err, size_t errlen);
/* "HOST", "HOST:PORT", "[V6]" or "[V6]:PORT"; *port left as is when absent. */
int fedge_edge_parse_server(const char *text, char *host, size_t host_cap, uint16_t *port,
                            int *has_port);
void fedge_edge_usage(FILE *f, const char *prog);

#endif
