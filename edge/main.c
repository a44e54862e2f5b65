/* fedge-edge — the federated edge client (docs/EDGE.md). */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "trainer.h"
#include "blas.h"
#include "client.h"
#include "common.h"
#include "log.h"
#include "version.h"
#include "text.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    FEDGE_UNUSED(sig);
    g_stop = 1;
}

static int install_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: blocking waits return early */
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0)
        return FEDGE_ERR_INTERNAL;
    return FEDGE_OK;
}

int main(int argc, char **argv)
{
    fedge_edge_config cfg;
    char err[256];
    const char *prog = argc > 0 && argv[0] ? argv[0] : "fedge-edge";
    if (fedge_blas_threads_from_env(1, NULL) != FEDGE_OK) { /* single-threaded unless asked */
        fedge_text_eprintf(prog, "FEDGE_BLAS_THREADS: want 1..%d", FEDGE_BLAS_MAX_THREADS);
        return 2;
    }
    if (fedge_edge_args_parse(argc, argv, &cfg, err, sizeof err) != FEDGE_OK) {
        fedge_text_eprintf(prog, "%s", err);
        return 2;
    }
    if (cfg.help) {
        fedge_edge_usage(stdout, prog);
        return 0;
    }
    if (cfg.version) {
        printf("fedge-edge %s\n", FEDGE_VERSION);
        return 0;
    }
    if (fedge_edge_args_apply_bundle(&cfg, err, sizeof err) != FEDGE_OK) {
        fedge_text_eprintf(prog, "%s", err);
        return 2;
    }
    fedge_edge_set_act_budget((size_t)cfg.act_budget_kb * 1024u);
    char tag[32];
    snprintf(tag, sizeof tag, "edge %s", cfg.id);
    fedge_log_set_tag(tag);
    fedge_log_set_level(cfg.log_level);
    if (install_handlers() != FEDGE_OK) {
        fprintf(stderr, "%s: cannot install signal handlers\n", prog);
        return 1;
    }
    return fedge_edge_run(&cfg, &g_stop) == FEDGE_OK ? 0 : 1;
}
