/* fedge-aggregator — the federated round daemon. See docs/AGGREGATOR.md. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "agg.h"
#include "blas.h"
#include "check.h"
#include "common.h"
#include "crypto.h"
#include "config.h"
#include "instance_lock.h"
#include "keys_audit.h"
#include "log.h"
#include "refine.h"
#include "relay.h"
#include "server.h"
#include "version.h"
#include "text.h"

static volatile sig_atomic_t g_stop;
static volatile sig_atomic_t g_reload;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        g_reload = 1;
    else
        g_stop = 1;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: fedge-aggregator [--config FILE] [--KEY VALUE ...] [--insecure]\n"
            "       fedge-aggregator --check [--config FILE] [--KEY VALUE ...]\n"
            "       fedge-aggregator --help | --help-config | --version\n"
            "\n"
            "Runs federated rounds for edge clients over CoAP/DTLS (docs/PROTOCOL.md), logs\n"
            "every round, update and decision in SQLite, and keeps model files by version.\n"
            "Settings come from the defaults, then FILE ('key = value' lines), then the\n"
            "command line (--rounds 20 and --rounds=20 both work; '-' and '_' are the same;\n"
            "a true/false key alone, as in --insecure, means true). A key given twice in\n"
            "FILE is an error; on the command line the last one counts.\n"
            "\n"
            "One aggregator per database: <db>.lock holds the owner's pid, and a second\n"
            "start on the same database, or on a listen address in use, exits with status 2.\n"
            "\n"
            "Signals: SIGTERM/SIGINT stop after the current request (state is always\n"
            "committed); SIGHUP reloads the policy file and the keys file.\n"
            "Exit status: 0 after a clean stop, 1 on a runtime error, 2 on bad configuration,\n"
            "3 when the run finished without any round aggregating.\n"
            "--check validates the configuration, keys, policy, signing key and database\n"
            "(read-only, without the instance lock) and exits: 0 all ok, 1 a check failed,\n"
            "2 usage.\n");
}

int main(int argc, char **argv)
{
    fedge_agg_config cfg;
    fedge_aggregator agg;
    fedge_server *server = NULL;
    char err[512] = "";
    FILE *logf = NULL;
    int status = 0;
    fedge_instance_lock lock = {.fd = -1, .db_fd = -1};
    pid_t owner = 0;

    if (fedge_blas_threads_from_env(1, NULL) != FEDGE_OK) { /* single-threaded unless asked */
        fedge_text_eprintf("fedge-aggregator", "FEDGE_BLAS_THREADS: want 1..%d", FEDGE_BLAS_MAX_THREADS);
        return 2;
    }
    if (fedge_crypto_use_openssl() != FEDGE_OK) /* mbedTLS stays: the same bytes, slower */
        FEDGE_WARN("OpenSSL lacks SHA-256 or AES-GCM: crypto on mbedTLS");
    fedge_agg_config_defaults(&cfg);
    /* --help, --help-config and --version answer before anything is read. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--help-config")) {
            fedge_agg_config_print_help(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("fedge-aggregator %s\n", FEDGE_VERSION);
            return 0;
        }
    }
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--check"))
            return fedge_agg_check(argc, argv, stdout);
    if (fedge_agg_config_from_args(&cfg, argc, argv, NULL, err, sizeof err) != FEDGE_OK) {
        fedge_text_eprintf("fedge-aggregator", "%s", err);
        return 2;
    }
    if (fedge_agg_config_validate(&cfg, err, sizeof err) != FEDGE_OK) {
        fedge_text_eprintf("fedge-aggregator", "%s", err);
        return 2;
    }
    fedge_log_level level = FEDGE_LOG_INFO;
    (void)fedge_log_parse_level(cfg.log_level, &level);
    fedge_log_set_level(level);
    fedge_log_set_tag("aggregator");
    if (cfg.log_file[0]) {
        logf = fopen(cfg.log_file, "a");
        if (!logf) {
            fprintf(stderr, "fedge-aggregator: cannot open log file %s\n", cfg.log_file);
            return 2;
        }
        fedge_log_set_stream(logf);
    }
    if (cfg.insecure)
        FEDGE_WARN("--insecure: serving plain CoAP without DTLS");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    fedge_refine_set_stop(&g_stop);
    fedge_relay_set_stop(&g_stop);

    /* the lock before the database is opened, held until the process ends */
    if (fedge_instance_lock_acquire(cfg.db, &lock, &owner, err, sizeof err) != FEDGE_OK) {
        FEDGE_ERROR("%s", err);
        status = 2;
        goto out;
    }
    if (fedge_listen_probe(cfg.listen, &owner, err, sizeof err) != FEDGE_OK) {
        FEDGE_ERROR("%s", err);
        status = 2;
        goto out;
    }
    /* A database locked by another process (a backup, fedge-admin) is waited
     * out at start as at run time, up to db_busy_retry_s. */
    double busy_since = fedge_now();
    int init;
    while ((init = fedge_agg_init(&agg, &cfg, err, sizeof err)) == FEDGE_ERR_BUSY && !g_stop &&
           fedge_now() - busy_since < cfg.db_busy_retry_s) {
        FEDGE_WARN("start-up: the database is locked by another process; retrying in 1s");
        err[0] = '\0';
        sleep(1);
    }
    if (init != FEDGE_OK) {
        FEDGE_ERROR("start-up failed: %s", init == FEDGE_ERR_BUSY ? "the database stayed locked by another process"
                                                                   : err);
        status = init == FEDGE_ERR_BUSY ? 1 : 2; /* a runtime fault, not the configuration */
        goto out;
    }
    /* keys edited while the daemon was down: audited before anything is served */
    if (fedge_keys_audit_startup(&agg, err, sizeof err) != FEDGE_OK) {
        FEDGE_ERROR("start-up failed: keys ledger: %s", err);
        fedge_agg_free(&agg);
        status = 2;
        goto out;
    }
    if (fedge_relay_open(&agg, err, sizeof err) != FEDGE_OK) {
        FEDGE_ERROR("start-up failed: relay: %s", err);
        fedge_agg_free(&agg);
        status = 2;
        goto out;
    }
    /* again just before the bind: another daemon may have started meanwhile */
    if (fedge_listen_probe(cfg.listen, &owner, err, sizeof err) != FEDGE_OK) {
        FEDGE_ERROR("%s", err);
        fedge_relay_free(&agg);
        fedge_agg_free(&agg);
        status = 2;
        goto out;
    }
    if (fedge_server_start(&agg, &server, err, sizeof err) != FEDGE_OK) {
        FEDGE_ERROR("cannot serve: %s", err);
        fedge_relay_free(&agg);
        fedge_agg_free(&agg);
        status = 2;
        goto out;
    }
    fedge_metrics_http *metrics = NULL;
    if (cfg.metrics_listen[0] &&
        fedge_metrics_http_start(cfg.metrics_listen, cfg.db, &metrics, err, sizeof err) != FEDGE_OK) {
        FEDGE_ERROR("cannot serve metrics: %s", err);
        status = 2;
        g_stop = 1;
    } else if (metrics) {
        FEDGE_INFO("metrics: http://%s/metrics and /healthz", cfg.metrics_listen);
    }
    while (!g_stop) {
        if (metrics) { /* a copy for the metrics thread, which reads the log itself */
            fedge_metrics_state ms = {.have_server = 1};
            fedge_metrics_state_of(&agg, &ms);
            fedge_server_metrics(server, &ms.srv);
            fedge_metrics_http_set_state(metrics, &ms);
        }
        if (fedge_server_process(server, 100) != FEDGE_OK) {
            FEDGE_ERROR("network I/O failed");
            status = 1;
            break;
        }
        if (g_reload) {
            g_reload = 0;
            if (fedge_agg_reload_policy(&agg) != FEDGE_OK)
                FEDGE_WARN("policy reload failed; keeping the previous policy");
            if (fedge_server_reload_keys(server) != FEDGE_OK)
                FEDGE_WARN("keys reload failed; keeping the previous keys");
        }
        double now = fedge_now();
        int ret = fedge_agg_tick(&agg, now);
        if (ret != FEDGE_OK) {
            FEDGE_ERROR("round processing failed: %s", fedge_strerror(ret));
            status = 1;
            break;
        }
        if (agg.state == FEDGE_AGG_FINISHED && now >= agg.finished_at + cfg.linger_s)
            break;
    }
    fedge_metrics_http_stop(metrics);
    if (g_stop && status != 2)
        FEDGE_INFO("signal received; stopping");
    if (status == 0 && agg.state == FEDGE_AGG_FINISHED) {
        char outcome[256];
        status = fedge_agg_outcome(&agg, outcome, sizeof outcome); /* logged when the run finished */
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        FEDGE_INFO("cpu time: user %.3fs system %.3fs, peak RSS %ld KiB, over %ld rounds",
                   ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6,
                   ru.ru_maxrss, agg.rounds_done);
    fedge_relay_free(&agg); /* its libcoap context before the server's coap_cleanup */
    fedge_server_free(server);
    fedge_agg_free(&agg);
    FEDGE_INFO("stopped");
out:
    fedge_instance_lock_release(&lock);
    if (logf) {
        fedge_log_set_stream(NULL);
        fclose(logf);
    }
    return status;
}
