/* fedge-audit — the policy-audit CLI: who contributed what to which model,
 * under which policy, at what privacy cost; and proof that the log was not
 * altered. Reads the aggregator's database read-only. Exit codes in cli.h. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "fileio.h"
#include "crypto.h"
#include "log.h"
#include "store.h"
#include "version.h"
#include "text.h"

static const char USAGE[] =
    "usage: fedge-audit --db PATH [--pubkey PEM] [--models DIR] [--json] COMMAND\n"
    "\n"
    "commands:\n"
    "  verify                      walk the hash chain and its signed heads, compare every\n"
    "                              audited row with the log, re-hash the model files\n"
    "                              (needs --pubkey); names the first bad row or file\n"
    "  lineage VERSION             rounds, devices, sample counts and refinements that\n"
    "                              produced a model (VERSION: 4+ hex digits of it)\n"
    "  lineage --device D          every model version D's accepted updates influenced\n"
    "  lineage --relay-db DB --relay-pubkey PEM [...] VERSION\n"
    "                              across an aggregation tree: the devices behind each\n"
    "                              relay's partial sums, from the relay's own database,\n"
    "                              whose log must verify and hold the signed head the\n"
    "                              root logged with the partial (once per relay)\n"
    "  privacy                     epsilon spent, globally and per device, against budgets\n"
    "  decisions [--round N] [--device D] [--rejected]\n"
    "                              what was decided (refused) and why, with the rule\n"
    "  replay --policy NEW.yaml [--format md|json]\n"
    "                              what NEW's rules would have decided over the recorded\n"
    "                              updates and rounds: accepted <-> rejected with the rule,\n"
    "                              clipping, round outcomes, epsilon (docs/POLICY.md)\n"
    "  report [--format md|json|csv]\n"
    "                              all of the above in one document (verify when --pubkey)\n"
    "  report --format html [--out FILE]\n"
    "                              the same as one self-contained HTML page with charts\n"
    "\n"
    "options:\n"
    "  --db PATH       the aggregator's SQLite database (opened read-only)\n"
    "  --pubkey PEM    the aggregator's ECDSA public key (fedge-keygen aggregator)\n"
    "  --models DIR    the model store (the aggregator's model_dir) that model paths\n"
    "                  start from; default: DB_DIR/models if it exists, else DB_DIR\n"
    "  --json          machine-readable output\n"
    "  --version       print the fedge version\n"
    "\n"
    "exit status: 0 ok, 1 verification failed, 2 usage, I/O or database error\n";

enum { OPT_POLICY = 2000 }; /* replay --policy */

static int usage_error(const char *fmt, const char *arg)
{
    char *safe = fedge_text_escape_dup(arg);
    fputs("fedge-audit: ", stderr);
    fprintf(stderr, fmt, safe ? safe : "?");
    fputs("\n(fedge-audit --help shows the usage)\n", stderr);
    free(safe);
    return EXIT_USAGE;
}

/* A one-line reason why `path` could not be opened as a fedge database. */
static void explain_open_failure(const char *path, int rc)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        cli_error("cannot read database %s: %s", path, strerror(errno));
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        cli_error("%s is a directory, not a database", path);
        return;
    }
    if (access(path, R_OK) != 0) {
        cli_error("cannot read database %s: %s", path, strerror(errno));
        return;
    }
    if (rc == FEDGE_ERR_AUDIT_NOT_FEDGE_DB || rc == FEDGE_ERR_SQL) {
        char magic[16] = {0};
        int fd = -1;
        ssize_t n = fedge_open_regular(path, 0, &fd, NULL) == FEDGE_OK ? read(fd, magic, sizeof magic) : -1;
        if (fd >= 0)
            close(fd);
        if (n == 0)
            cli_error("%s is not a fedge database: the file is empty", path);
        else if (n != (ssize_t)sizeof magic || memcmp(magic, "SQLite format 3", 16) != 0)
            cli_error("%s is not a fedge database: not an SQLite file", path);
        else
            cli_error("%s is not a fedge database: an SQLite file without fedge's schema "
                      "marker (meta fedge_schema = " FEDGE_SCHEMA_VERSION ")",
                      path);
        return;
    }
    cli_error("cannot open database %s: %s", path, fedge_strerror(rc));
}

static int parse_round(const char *s, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    if (!s[0] || s[0] == '-' || s[0] == '+')
        return -1;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < 0 || v > UINT32_MAX)
        return -1;
    *out = v;
    return 0;
}

enum { OPT_DB = 1000, OPT_PUBKEY, OPT_MODELS, OPT_JSON, OPT_ROUND, OPT_DEVICE, OPT_REJECTED,
       OPT_FORMAT, OPT_HELP, OPT_VERSION, OPT_RELAY_DB, OPT_RELAY_PUBKEY, OPT_OUT };

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, OPT_DB},
        {"pubkey", required_argument, NULL, OPT_PUBKEY},
        {"models", required_argument, NULL, OPT_MODELS},
        {"json", no_argument, NULL, OPT_JSON},
        {"round", required_argument, NULL, OPT_ROUND},
        {"device", required_argument, NULL, OPT_DEVICE},
        {"rejected", no_argument, NULL, OPT_REJECTED},
        {"policy", required_argument, NULL, OPT_POLICY},
        {"format", required_argument, NULL, OPT_FORMAT},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {"relay-db", required_argument, NULL, OPT_RELAY_DB},
        {"relay-pubkey", required_argument, NULL, OPT_RELAY_PUBKEY},
        {"out", required_argument, NULL, OPT_OUT},
        {NULL, 0, NULL, 0},
    };
    cli_opts o;
    memset(&o, 0, sizeof o);
    fedge_log_set_level(FEDGE_LOG_OFF); /* errors are reported here, one line each */
    if (fedge_crypto_use_openssl() != FEDGE_OK) /* mbedTLS stays: the same bytes, slower */
        FEDGE_WARN("OpenSSL lacks SHA-256 or AES-GCM: crypto on mbedTLS");
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_DB: o.db_path = optarg; break;
        case OPT_PUBKEY: o.pubkey = optarg; break;
        case OPT_MODELS: o.models = optarg; break;
        case OPT_JSON: o.json = 1; break;
        case OPT_ROUND:
            if (parse_round(optarg, &o.round) != 0)
                return usage_error("--round needs a round number, not '%s'", optarg);
            o.have_round = 1;
            break;
        case OPT_DEVICE: o.device = optarg; break;
        case OPT_REJECTED: o.rejected = 1; break;
        case OPT_POLICY: o.policy = optarg; break;
        case OPT_FORMAT: o.format = optarg; break;
        case 'h':
        case OPT_HELP: fputs(USAGE, stdout); return EXIT_OK;
        case OPT_VERSION: printf("fedge-audit %s\n", FEDGE_VERSION); return EXIT_OK;
        case OPT_RELAY_DB:
            if (o.n_relay_db == FEDGE_ARRAY_LEN(o.relay_db))
                return usage_error("%s", "--relay-db: at most 16");
            o.relay_db[o.n_relay_db++] = optarg;
            break;
        case OPT_RELAY_PUBKEY:
            if (o.n_relay_pubkey == FEDGE_ARRAY_LEN(o.relay_pubkey))
                return usage_error("%s", "--relay-pubkey: at most 16");
            o.relay_pubkey[o.n_relay_pubkey++] = optarg;
            break;
        case OPT_OUT: o.out = optarg; break;
        case ':':
            return usage_error("%s needs a value", argv[optind - 1]);
        default:
            return usage_error("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return usage_error("%s", "no command given (verify, lineage, privacy, decisions, "
                                 "report)");
    const char *cmd = argv[optind++];
    int n_args = argc - optind;
    int (*run)(sqlite3 *, const cli_opts *) = NULL;
    if (strcmp(cmd, "verify") == 0) {
        run = cmd_verify;
    } else if (strcmp(cmd, "lineage") == 0) {
        run = cmd_lineage;
        if (n_args == 1 && !o.device)
            o.version = argv[optind++];
        else if (!(n_args == 0 && o.device))
            return usage_error("%s", "lineage needs a model VERSION or --device D (one of "
                                     "them)");
    } else if (strcmp(cmd, "replay") == 0) {
        run = cmd_replay;
        if (!o.policy)
            return usage_error("%s", "replay needs --policy NEW.yaml");
        /* replay's --format is md (the default) or json, the same as --json */
        if (o.format && strcmp(o.format, "md") != 0 && strcmp(o.format, "json") != 0)
            return usage_error("replay --format is md or json, not '%s'", o.format);
        o.json |= o.format && strcmp(o.format, "json") == 0;
        o.format = NULL;
    } else if (strcmp(cmd, "privacy") == 0) {
        run = cmd_privacy;
    } else if (strcmp(cmd, "decisions") == 0) {
        run = cmd_decisions;
    } else if (strcmp(cmd, "report") == 0) {
        run = cmd_report;
    } else {
        return usage_error("unknown command '%s'", cmd);
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (o.policy && run != cmd_replay)
        return usage_error("%s", "--policy applies to replay only");
    if ((o.have_round || o.rejected) && run != cmd_decisions)
        return usage_error("%s", "--round and --rejected apply to decisions only");
    if (o.device && run != cmd_decisions && run != cmd_lineage)
        return usage_error("%s", "--device applies to decisions and lineage only");
    if ((o.n_relay_db || o.n_relay_pubkey) && (run != cmd_lineage || o.device))
        return usage_error("%s", "--relay-db and --relay-pubkey apply to lineage VERSION only");
    if (o.n_relay_db != o.n_relay_pubkey)
        return usage_error("%s", "each --relay-db needs its --relay-pubkey (the relay's aggregator.pub), in order");
    if (o.format && run != cmd_report)
        return usage_error("%s", "--format applies to report only");
    if (o.out && (run != cmd_report || !o.format || strcmp(o.format, "html") != 0))
        return usage_error("%s", "--out applies to report --format html only");
    if (!o.db_path)
        return usage_error("%s", "--db PATH is required");

    /* Model paths are file names in the aggregator's model store: by default
     * the "models" folder beside the database (model_dir's default), else the
     * database's own directory. */
    char db_dir[4096], models_dir[4200];
    if (!o.models) {
        const char *slash = strrchr(o.db_path, '/');
        if (!slash)
            snprintf(db_dir, sizeof db_dir, ".");
        else if (slash == o.db_path)
            snprintf(db_dir, sizeof db_dir, "/");
        else
            snprintf(db_dir, sizeof db_dir, "%.*s", (int)(slash - o.db_path), o.db_path);
        snprintf(models_dir, sizeof models_dir, "%s/models", db_dir);
        struct stat ms;
        o.models = stat(models_dir, &ms) == 0 && S_ISDIR(ms.st_mode) ? models_dir : db_dir;
    }
    sqlite3 *db = NULL;
    int rc = fedge_store_open_db(o.db_path, 1, &db);
    if (rc != FEDGE_OK) {
        explain_open_failure(o.db_path, rc);
        return EXIT_USAGE;
    }
    int status = run(db, &o);
    if (fflush(stdout) != 0 && status == EXIT_OK) {
        cli_error("cannot write the output: %s", strerror(errno));
        status = EXIT_USAGE;
    }
    sqlite3_close_v2(db);
    return status;
}
