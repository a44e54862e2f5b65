#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "common.h"
#include "fileio.h"
#include "config.h"
#include "governance.h"
#include "keys.h"
#include "keys_audit.h"
#include "log.h"
#include "modelfile.h"
#include "modelstore.h"
#include "policy.h"
#include "store.h"

enum { CHECK_OK = 0, CHECK_FAILED = 1, CHECK_USAGE = 2 };

typedef struct {
    FILE *out;
    int failed;
} report;

static void line_ok(report *r, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void line_ok(report *r, const char *name, const char *fmt, ...)
{
    va_list ap;
    fprintf(r->out, "%s: ok", name);
    if (fmt && fmt[0]) {
        fputs(" (", r->out);
        va_start(ap, fmt);
        vfprintf(r->out, fmt, ap);
        va_end(ap);
        fputc(')', r->out);
    }
    fputc('\n', r->out);
}

static void line_error(report *r, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void line_error(report *r, const char *name, const char *fmt, ...)
{
    va_list ap;
    fprintf(r->out, "%s: error: ", name);
    va_start(ap, fmt);
    vfprintf(r->out, fmt, ap);
    va_end(ap);
    fputc('\n', r->out);
    r->failed = 1;
}

static void line_skipped(report *r, const char *name, const char *why)
{
    fprintf(r->out, "%s: skipped (%s)\n", name, why);
}

/* What the file at path is, when it is not a fedge log of this schema;
 * *state: 0 absent, 1 this schema, 2 an older schema a start migrates,
 * -1 unusable (msg says why). Reads only. */
static void probe_db(const char *path, int *state, char *msg, size_t cap)
{
    struct stat st;
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    char magic[16] = {0};
    *state = -1;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT) {
            *state = 0;
            return;
        }
        snprintf(msg, cap, "%s: %s", path, strerror(errno));
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(msg, cap, "%s is not a regular file", path);
        return;
    }
    int fd = -1, oret = fedge_open_regular(path, 0, &fd, NULL);
    if (oret != FEDGE_OK) {
        snprintf(msg, cap, oret == FEDGE_ERR_NOT_REGULAR ? "%s is not a regular file%s" : "cannot read %s: %s", path,
                 oret == FEDGE_ERR_NOT_REGULAR ? "" : strerror(errno));
        return;
    }
    ssize_t n = read(fd, magic, sizeof magic);
    close(fd);
    if (n == 0) {
        snprintf(msg, cap, "%s is not a fedge database: the file is empty", path);
        return;
    }
    if (n != (ssize_t)sizeof magic || memcmp(magic, "SQLite format 3", 16) != 0) {
        snprintf(msg, cap, "%s is not a fedge database: not an SQLite file", path);
        return;
    }
    if (fedge_store_open_ro(path, &db) != SQLITE_OK) {
        snprintf(msg, cap, "cannot open %s: %s", path, db ? sqlite3_errmsg(db) : "no memory");
        goto done;
    }
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key='fedge_schema'", -1, &q, NULL) != SQLITE_OK) {
        snprintf(msg, cap, "%s is not a fedge database: an SQLite file without fedge's meta table", path);
        goto done;
    }
    if (sqlite3_step(q) != SQLITE_ROW || sqlite3_column_type(q, 0) == SQLITE_NULL) {
        snprintf(msg, cap, "%s is not a fedge database: no schema marker (meta fedge_schema)", path);
        goto done;
    }
    const char *v = (const char *)sqlite3_column_text(q, 0);
    if (strcmp(v, FEDGE_SCHEMA_VERSION) == 0) {
        *state = 1;
    } else if (strcmp(v, "1") == 0) {
        *state = 2;
    } else if (strcmp(v, "2") == 0) {
        *state = 3;
    } else {
        char *end = NULL;
        long ver = strtol(v, &end, 10);
        if (end != v && !*end && ver > atol(FEDGE_SCHEMA_VERSION))
            snprintf(msg, cap, "%s has schema version %.16s, newer than this build reads (%s): use the "
                     "fedge-aggregator that wrote it or a later one", path, v, FEDGE_SCHEMA_VERSION);
        else
            snprintf(msg, cap, "%s has an unknown schema version '%.16s' (this build reads %s)", path, v,
                     FEDGE_SCHEMA_VERSION);
    }
done:
    sqlite3_finalize(q);
    sqlite3_close_v2(db);
}

/* The log's state: the audit chain head and the run so far. */
static int describe_db(sqlite3 *db, const fedge_agg_config *cfg, char *msg, size_t cap, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    int64_t n_audit = 0, n_rows = 0, rounds = 0, head_seq = 0;
    char last[96] = "no round yet", current[48] = "none";
    CHK(fedge_store_query_int64(db, &n_audit, NULL, "SELECT count(*) FROM audit", ""));
    CHK(fedge_store_query_int64(db, &n_rows, NULL,
                                "SELECT (SELECT count(*) FROM rounds) + (SELECT count(*) FROM updates)"
                                " + (SELECT count(*) FROM models)", ""));
    if (n_rows > 0 && n_audit == 0) {
        snprintf(err, errlen, "the log has %lld rounds/updates/models rows but no audit chain: its head is "
                 "missing (fedge-audit verify says more)", (long long)n_rows);
        FAIL(FEDGE_ERR_AUDIT_CHAIN);
    }
    if (n_audit > 0) {
        int found = 0;
        CHK(fedge_store_query_int64(db, &head_seq, &found,
                                    "SELECT seq FROM audit WHERE length(row_hash) = 32 ORDER BY seq DESC LIMIT 1", ""));
        int64_t max_seq = 0;
        CHK(fedge_store_query_int64(db, &max_seq, NULL, "SELECT max(seq) FROM audit", ""));
        if (!found || head_seq != max_seq) {
            snprintf(err, errlen, "the audit chain's head (seq %lld) has no 32-byte hash: run fedge-audit verify",
                     (long long)max_seq);
            FAIL(FEDGE_ERR_AUDIT_CHAIN);
        }
    }
    CHK(fedge_store_query_int64(db, &rounds, NULL, "SELECT count(*) FROM rounds", ""));
    CHK(fedge_store_prepare(db, "SELECT id, status FROM rounds ORDER BY id DESC LIMIT 1", &st));
    if (sqlite3_step(st) == SQLITE_ROW)
        snprintf(last, sizeof last, "last round %lld %.16s", (long long)sqlite3_column_int64(st, 0),
                 sqlite3_column_text(st, 1) ? (const char *)sqlite3_column_text(st, 1) : "?");
    sqlite3_finalize(st);
    st = NULL;
    /* the current model's file, as a start loads it (model_dir, its hash) */
    int found = 0;
    uint32_t model_round = 0;
    fedge_model m = {0};
    CHK(fedge_modelstore_check_current(db, cfg->model_dir, &found, &m, &model_round, err, errlen));
    if (found) {
        uint8_t v[FEDGE_HASH_LEN];
        char hex[FEDGE_HASH_HEX_LEN];
        ret = fedge_model_version(&m, v);
        fedge_model_free(&m);
        CHK(ret);
        fedge_hash_to_hex(v, hex);
        snprintf(current, sizeof current, "%.16s (round %u)", hex, model_round);
    }
    int64_t schema = 0;
    CHK(fedge_store_query_int64(db, &schema, NULL, "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'fedge_schema'",
                                ""));
    snprintf(msg, cap, "schema %lld, audit head seq %lld, %lld rounds, %s, current model %s", (long long)schema,
             (long long)head_seq, (long long)rounds, last, current);
cleanup:
    sqlite3_finalize(st);
    return ret;
}

int fedge_agg_check(int argc, char **argv, FILE *out)
{
    fedge_agg_config cfg;
    fedge_keys keys;
    fedge_policy *policy = NULL;
    sqlite3 *db = NULL;
    report r = {.out = out};
    char err[2048] = "", msg[2048] = "";
    int have_keys = 0, db_state = -1;
    char **args = calloc((size_t)argc + 1, sizeof *args);
    memset(&keys, 0, sizeof keys);
    if (!args) {
        fprintf(stderr, "fedge-aggregator: out of memory\n");
        return CHECK_FAILED;
    }
    int n = 0;
    for (int i = 0; i < argc; i++)
        if (i == 0 || strcmp(argv[i], "--check") != 0)
            args[n++] = argv[i];
    fedge_log_set_level(FEDGE_LOG_OFF); /* each problem is one line below */

    fedge_agg_config_defaults(&cfg);
    if (fedge_agg_config_from_args(&cfg, n, args, NULL, err, sizeof err) != FEDGE_OK) {
        /* an error in the file starts with its name; anything else is the command line's */
        const char *file = NULL;
        for (int i = 1; i < n; i++) {
            if (!strcmp(args[i], "--config") && i + 1 < n)
                file = args[i + 1];
            else if (!strncmp(args[i], "--config=", 9))
                file = args[i] + 9;
        }
        size_t cl = file ? strlen(file) : 0;
        if (!cl || strncmp(err, file, cl) != 0) {
            fprintf(stderr, "fedge-aggregator: %s\n", err);
            free(args);
            return CHECK_USAGE;
        }
        line_error(&r, "config", "%s", err);
        line_skipped(&r, "keys", "no configuration");
        line_skipped(&r, "policy", "no configuration");
        line_skipped(&r, "signing_key", "no configuration");
        line_skipped(&r, "database", "no configuration");
        goto done;
    }
    if (fedge_agg_config_validate(&cfg, err, sizeof err) != FEDGE_OK)
        line_error(&r, "config", "%s", err);
    else
        line_ok(&r, "config", "%s", cfg.config_file[0] ? cfg.config_file : "defaults and command line");

    /* keys */
    if (!cfg.keys_file[0]) {
        line_error(&r, "keys", "keys_file is not set");
    } else if (fedge_keys_load(cfg.keys_file, &keys, err, sizeof err) != FEDGE_OK) {
        line_error(&r, "keys", "%s", err);
    } else {
        have_keys = 1;
        line_ok(&r, "keys", "%s: %zu devices", cfg.keys_file, keys.n);
    }

    /* policy: loaded as the daemon loads it, then fitted to the configuration */
    err[0] = '\0';
    int ret = fedge_gov_load_policy(&cfg, &policy, err, sizeof err);
    if (ret != FEDGE_OK) {
        line_error(&r, "policy", "%s", err[0] ? err : fedge_strerror(ret));
    } else if (have_keys && fedge_gov_policy_fits(&cfg, keys.n, policy, err, sizeof err) != FEDGE_OK) {
        line_error(&r, "policy", "%s (%s): %s", cfg.policy_file[0] ? cfg.policy_file : "built-in default",
                   fedge_policy_name(policy), err);
    } else {
        line_ok(&r, "policy", "%s: %s%s", cfg.policy_file[0] ? cfg.policy_file : "built-in default",
                fedge_policy_name(policy), have_keys ? "" : "; not fitted to the devices (keys failed)");
    }

    /* the database, read-only: opened here so the signing key can be
     * matched against the log's signed heads */
    char db_msg[2048] = "";
    probe_db(cfg.db, &db_state, db_msg, sizeof db_msg);
    int schema2 = db_state == 3; /* read as it is; a start marks it 3 */
    if (schema2)
        db_state = 1;
    if (db_state == 1 && fedge_store_open_db(cfg.db, 1, &db) != FEDGE_OK) {
        snprintf(db_msg, sizeof db_msg, "%s cannot be opened read-only as a fedge database", cfg.db);
        db_state = -1;
    }

    long long n_heads = 0;
    err[0] = '\0';
    if (db_state < 0 && cfg.signing_key[0] == '\0') {
        line_skipped(&r, "signing_key", "none set, and the database is unreadable");
    } else if (fedge_gov_check_signing_key(db, &cfg, &n_heads, err, sizeof err) != FEDGE_OK) {
        line_error(&r, "signing_key", "%s", err);
    } else if (!cfg.signing_key[0]) {
        line_ok(&r, "signing_key", "none: audit heads will not be signed%s",
                n_heads ? " (allow_unsigned)" : "");
    } else if (db) {
        line_ok(&r, "signing_key", "%s%s", cfg.signing_key,
                n_heads ? ": signed the log's last signed head" : ": the log has no signed head yet");
    } else {
        line_ok(&r, "signing_key", "%s loads; no log to match it against", cfg.signing_key);
    }

    if (db_state == 0) {
        line_ok(&r, "database", "%s does not exist yet: a start creates it", cfg.db);
    } else if (db_state == 2) {
        line_ok(&r, "database", "%s has schema 1: a start migrates it to %s", cfg.db, FEDGE_SCHEMA_VERSION);
    } else if (db_state < 0) {
        line_error(&r, "database", "%s", db_msg);
    } else {
        err[0] = '\0';
        if (describe_db(db, &cfg, msg, sizeof msg, err, sizeof err) != FEDGE_OK)
            line_error(&r, "database", "%s: %s", cfg.db, err[0] ? err : "cannot read the log");
        else
            line_ok(&r, "database", "%s: %s%s", cfg.db, msg,
                    schema2 ? " (schema 2: a start marks it " FEDGE_SCHEMA_VERSION
                              ", after which fedge builds of schema 2 refuse it)" : "");
    }

    /* what a start would add to the keys ledger (keys_audit.h) */
    fedge_keys_audit_diff kd;
    err[0] = '\0';
    if (db_state == 1 && have_keys) {
        if (fedge_keys_audit_pending(db, &keys, &kd, err, sizeof err) != FEDGE_OK)
            line_error(&r, "keys_ledger", "%s", err[0] ? err : "cannot read the keys events");
        else if (kd.added + kd.removed + kd.rekeyed + kd.moved)
            line_ok(&r, "keys_ledger", "a start records %zu added, %zu removed, %zu rekeyed, %zu moved", kd.added,
                    kd.removed, kd.rekeyed, kd.moved);
        else
            line_ok(&r, "keys_ledger", "the keys file is the last audited keys state");
    } else if ((db_state == 0 || db_state == 2) && have_keys) {
        size_t live = 0; /* no keys events yet: the first start records every listed device */
        for (size_t i = 0; i < keys.n; i++)
            live += !keys.devices[i].removed;
        line_ok(&r, "keys_ledger", "a start records %zu added, 0 removed, 0 rekeyed, 0 moved (the initial set of %s)",
                live, db_state == 0 ? "a new log" : "a log from before the ledger");
    }

done:
    sqlite3_close_v2(db);
    fedge_policy_free(policy);
    if (have_keys)
        fedge_keys_free(&keys);
    free(args);
    if (fflush(out) != 0)
        return CHECK_FAILED;
    return r.failed ? CHECK_FAILED : CHECK_OK;
}
