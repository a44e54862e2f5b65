/* config.h — the aggregator's configuration: defaults, a `key = value`
 * config file, then command-line overrides (same keys as --key value).
 *
 * Every key is documented in one table (config.c), printed by
 * `fedge-aggregator --help-config` and in docs/AGGREGATOR.md. Each value is
 * checked when it is set (type, range, no trailing text, host:port with a
 * numeric host and a port in 1..65535, enumerations, no empty required
 * value); a key given twice in a file is an error. fedge_agg_config_validate
 * then checks what depends on several keys or on the file system (paths that
 * must exist). Every error names where the value came from: "FILE:LINE: key"
 * for the config file, "--key" for the command line. */
#ifndef FEDGE_AGG_CONFIG_H
#define FEDGE_AGG_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "keys.h"
#include "model.h"

#define FEDGE_PATH_MAX 1024
#define FEDGE_AGG_CONFIG_MAX_KEYS 128

typedef struct {
    char listen[128];           /* host:port */
    int insecure;               /* plain CoAP (no DTLS) */
    char keys_file[FEDGE_PATH_MAX];
    char db[FEDGE_PATH_MAX];
    char model_dir[FEDGE_PATH_MAX];
    char model_spec[FEDGE_MODEL_SPEC_MAX];
    char init_model[FEDGE_PATH_MAX]; /* optional starting model file */
    char test_data[FEDGE_PATH_MAX];  /* shard file, or "fashion-mnist" */
    char policy_file[FEDGE_PATH_MAX];
    char signing_key[FEDGE_PATH_MAX];
    char log_level[16];
    char log_file[FEDGE_PATH_MAX];
    long seed;
    long rounds;                /* 0: run forever */
    long clients_per_round;     /* 0: use client_fraction */
    double client_fraction;
    double quorum;              /* fraction of selected whose updates close a round early */
    long min_updates;           /* accepted updates needed to aggregate at the deadline */
    double round_timeout_s;
    double start_delay_s;       /* wait before opening the first round */
    long local_epochs;
    double lr;
    double lr_decay;            /* client lr of round r = lr * lr_decay^(r-1) */
    double momentum;
    long batch;
    double server_lr;
    long max_update_bytes;      /* 0: derived from the model size */
    double upload_idle_timeout_s;      /* a partial Block1 upload silent this long is freed */
    long upload_max_partial_per_device;
    long upload_max_partial_total;
    long upload_memory_bytes;          /* 0: derived from max_update_bytes */
    long udp_rcvbuf_bytes;             /* 0: sized for the number of devices */
    double linger_s;            /* keep answering after the last round */
    long refine_every;          /* 0: never */
    char refine_command[FEDGE_PATH_MAX];
    double refine_timeout_s;
    double db_busy_retry_s;     /* transient SQLITE_BUSY is retried this long */
    int allow_unsigned;         /* start without signing_key on a log with signed heads */
    long retain_deltas_rounds;  /* keep delta bodies of the last N rounds (0: all) */
    /* strategy (docs/STRATEGIES.md): combiner (combine.h), server optimiser
     * (server_opt.h), FedProx's μ for the edges, SCAFFOLD */
    char aggregation[24];
    double trim_beta;
    long byzantine_f;
    long multikrum_m;
    long aggregation_block;
    char server_optimizer[16];
    double server_momentum, server_beta1, server_beta2, server_tau;
    double fedprox_mu;
    int scaffold;
    /* run mode (scheduler.h): sync rounds or async FedBuff steps
     * (docs/AGGREGATOR.md "Async mode") */
    char mode[8];
    long async_concurrency;     /* devices in flight at once */
    long async_buffer_k;        /* accepted updates per aggregation step */
    long async_max_versions;    /* distinct base versions in flight */
    double async_slot_timeout_s; /* an admitted device silent this long frees its slot */
    char async_staleness[16];   /* constant|polynomial|hinge */
    double async_staleness_a, async_staleness_b;
    int no_observe;             /* GET /round not observable: edges poll */
    /* multi-core ingest (ingest_pool.h, docs/AGGREGATOR.md "Ingest") */
    long ingest_workers;        /* -1: one per online core; 0: inline on the I/O thread */
    long ingest_queue;          /* updates held by the pool at once (more get 5.03) */
    long commit_group;          /* opened updates committed per transaction, at most */
    double commit_wait_ms;      /* a short group waits this long for more */
    /* where each key (table order) was last set: 0 default, -1 command
     * line, N > 0 line N of config_file */
    int origin_line[FEDGE_AGG_CONFIG_MAX_KEYS];
    char config_file[FEDGE_PATH_MAX];
    /* relay mode (aggregator/relay.h): the parent this aggregator relays
     * its edges' rounds to; upstream empty: a root */
    char upstream[128];                 /* host:port */
    char upstream_id[FEDGE_DEVICE_ID_MAX + 1];
    char upstream_keys[FEDGE_PATH_MAX];
    double upstream_poll_s;             /* GET /round to the parent while waiting */
    double upstream_margin_s;           /* close this long before the parent's deadline */
    double upstream_timeout_s;          /* one request to the parent, at most */
    /* a root: the devices that are relays (may send a partial sum) */
    char relays[1024];                  /* comma-separated device ids; empty: none */
    long relay_max_samples;             /* the sample count one partial may state */
    /* Prometheus metrics and /healthz over HTTP (metrics_http.h) */
    char metrics_listen[128];           /* host:port; empty: off */
    /* CoAP over TLS/TCP (RFC 8323) beside DTLS (docs/PROTOCOL.md "Transports") */
    char listen_tcp[128];               /* host:port; empty: none */
    double tcp_handshake_timeout_s;     /* accepted to CSM done, at most */
    long tcp_max_connections;           /* 0: devices + 16 */
    long db_page_size;                  /* a new log's SQLite page size (0: SQLite's) */
    long tcp_max_preauth;               /* TCP connections before TLS + CSM, held at once */
} fedge_agg_config;

void fedge_agg_config_defaults(fedge_agg_config *c);
/* Applies `key = value` lines from path (one config file per config), all
 * or nothing (c is unchanged on error); err gets "path:line: key: reason". */
int fedge_agg_config_load_file(fedge_agg_config *c, const char *path, char *err, size_t errlen);
/* Sets one key from text (the command line); err gets "--key: reason". */
int fedge_agg_config_set(fedge_agg_config *c, const char *key, const char *value, char *err,
                         size_t errlen);
/* A program's own options beside the configuration keys (fedge-sim's):
 * is_flag(key) says one of them takes no value; take() is offered every
 * option first and sets *took when it is one of its own. key has '-'
 * replaced by '_'; value is NULL for an own flag. */
typedef struct {
    int (*is_flag)(void *ctx, const char *key);
    int (*take)(void *ctx, const char *key, const char *value, int *took, char *err, size_t errlen);
    void *ctx;
} fedge_agg_args_extra;
/* Applies a command line to c: `--config FILE` first (at most once), then
 * every `--key value`, `--key=value` or, for a boolean key, `--key` alone,
 * in order, so the command line overrides the file. An argument that is not
 * an option, an unknown key and a missing value are errors; err says which
 * (options named as typed). extra may be NULL. */
int fedge_agg_config_from_args(fedge_agg_config *c, int argc, char **argv, const fedge_agg_args_extra *extra,
                               char *err, size_t errlen);
/* Cross-field and file-system checks after everything is applied. */
int fedge_agg_config_validate(const fedge_agg_config *c, char *err, size_t errlen);
/* Participants a sync round selects among n_eligible devices:
 * clients_per_round, or ceil(client_fraction * n_eligible), within 1 ..
 * n_eligible (1 when n_eligible is 0). */
size_t fedge_agg_config_round_size(const fedge_agg_config *c, size_t n_eligible);
/* The fewest updates c's combiner can combine (the least count its check()
 * passes: 1 for mean, 2f + 3 for krum, max(2f + 3, m) for multikrum, 4f + 3
 * for bulyan); 0 when no count up to 2^24 would do. When n is below it, why
 * (may be NULL) gets the combiner's reason for n updates. */
size_t fedge_agg_config_combiner_min(const fedge_agg_config *c, size_t n, char *why, size_t whylen);
void fedge_agg_config_print_help(FILE *out);
int fedge_agg_config_is_key(const char *key);
/* A boolean key: on the command line "--key" alone means true. */
int fedge_agg_config_is_flag(const char *key);
/* "HOST:PORT" or "[V6]:PORT": numeric host, decimal port 1..65535.
 * FEDGE_ERR_CONFIG_VALUE with the reason in why. */
int fedge_agg_parse_listen(const char *listen, struct sockaddr_storage *addr, socklen_t *len,
                           char *why, size_t whylen);

#endif
