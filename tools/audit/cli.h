/* cli.h — fedge-audit's commands. Each reads the database (opened
 * read-only by main.c), prints for people (aligned tables) or machines
 * (--json), and returns the process exit code:
 *   0  done; for verify, everything holds
 *   1  verification failed (verify, or report with --pubkey)
 *   2  usage, I/O or database error; the one-line reason is on stderr */
#ifndef FEDGE_AUDIT_CLI_H
#define FEDGE_AUDIT_CLI_H

#include <sqlite3.h>
#include <stdint.h>

enum { EXIT_OK = 0, EXIT_VERIFY_FAILED = 1, EXIT_USAGE = 2 };

typedef struct {
    const char *db_path;
    const char *pubkey;   /* --pubkey: the aggregator's public key PEM */
    const char *models;   /* --models: base of relative model paths */
    int json;             /* --json (replay: also --format json) */
    const char *policy;   /* replay --policy: the policy to re-run the log under */
    int have_round;
    int64_t round;        /* --round */
    const char *device;   /* --device */
    int rejected;         /* --rejected */
    const char *format;   /* --format md|json|csv|html (report) */
    const char *version;  /* lineage VERSION */
    /* lineage across tiers (tiers.h): relays' databases and public keys, in pairs */
    const char *relay_db[16], *relay_pubkey[16];
    size_t n_relay_db, n_relay_pubkey;
    const char *out;      /* --out FILE (report --format html) */
} cli_opts;

int cmd_verify(sqlite3 *db, const cli_opts *o);
int cmd_lineage(sqlite3 *db, const cli_opts *o);
/* replay --policy FILE [--format md|json]: the recorded updates and rounds
 * re-decided under FILE's policy with the daemon's rule code (replay.c). */
int cmd_replay(sqlite3 *db, const cli_opts *o);
int cmd_privacy(sqlite3 *db, const cli_opts *o);
int cmd_decisions(sqlite3 *db, const cli_opts *o);
int cmd_report(sqlite3 *db, const cli_opts *o);

/* "fedge-audit: " + message on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
