/* fedge-admin — operator actions on a running deployment's database.
 *
 *   fedge-admin --db PATH devices
 *   fedge-admin --db PATH device ID allow|suspend|revoke --reason TEXT
 *
 * Safe while the aggregator runs (SQLite WAL, one transaction each); the
 * aggregator reads device status at every update and selection. Every
 * change is an audited events row with the operator's reason, so
 * `fedge-audit decisions` and `lineage --device ID` show it.
 * A reason must be printable text: control characters (newlines, escape
 * sequences), C1 controls and invalid UTF-8 are refused, and everything read
 * back from the database is printed escaped (text.h).
 * Exit status: 0 done, 1 refused (unknown device, database error), 2 usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "crypto.h"
#include "governance.h"
#include "keys.h"
#include "store.h"
#include "text.h"
#include "version.h"

#define REASON_MAX 1000

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "fedge-admin: %s\n", why);
    fprintf(why ? stderr : stdout,
            "usage: fedge-admin --db PATH devices\n"
            "       fedge-admin --db PATH device ID allow|suspend|revoke --reason TEXT\n"
            "       fedge-admin --version\n"
            "TEXT: one line of printable UTF-8 (no control characters), at most %d bytes\n",
            REASON_MAX);
    return why ? 2 : 0;
}

static int list_devices(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT id, region, status, last_counter, printf('%.3f', epsilon_spent)"
                               " FROM devices ORDER BY id", -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "fedge-admin: %s\n", sqlite3_errmsg(db));
        return 1;
    }
    printf("%-20s %-8s %-10s %20s %10s\n", "device", "region", "status", "last_counter", "epsilon");
    int rc = 0;
    while (rc == 0 && sqlite3_step(st) == SQLITE_ROW) {
        char *col[4];
        static const int idx[4] = {0, 1, 2, 4};
        for (int i = 0; i < 4; i++) {
            const char *v = (const char *)sqlite3_column_text(st, idx[i]);
            col[i] = fedge_text_escape_dup(v ? v : "-");
            if (!col[i])
                rc = 1;
        }
        if (rc == 0)
            printf("%-20s %-8s %-10s %20lld %10s\n", col[0], col[1], col[2],
                   (long long)sqlite3_column_int64(st, 3), col[3]);
        else
            fprintf(stderr, "fedge-admin: out of memory\n");
        for (int i = 0; i < 4; i++)
            free(col[i]);
    }
    sqlite3_finalize(st);
    return rc;
}

int main(int argc, char **argv)
{
    const char *db_path = NULL, *reason = NULL, *args[3];
    int n_args = 0;
    if (fedge_crypto_use_openssl() != FEDGE_OK) /* mbedTLS stays: the same bytes, slower */
        fedge_text_eprintf("fedge-admin", "OpenSSL lacks SHA-256 or AES-GCM: crypto on mbedTLS");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(NULL);
        if (!strcmp(argv[i], "--version")) {
            printf("fedge-admin %s\n", FEDGE_VERSION);
            return 0;
        }
        if (!strcmp(argv[i], "--db") || !strcmp(argv[i], "--reason")) {
            if (i + 1 >= argc)
                return usage("option needs a value");
            if (argv[i][2] == 'd')
                db_path = argv[++i];
            else
                reason = argv[++i];
        } else if (argv[i][0] == '-') {
            return usage("unknown option");
        } else if (n_args < 3) {
            args[n_args++] = argv[i];
        } else {
            return usage("too many arguments");
        }
    }
    if (!db_path)
        return usage("--db is required");
    if (n_args == 0)
        return usage("give a command");
    const char *status = NULL;
    if (!strcmp(args[0], "devices")) {
        if (n_args != 1 || reason)
            return usage("devices takes no arguments");
    } else if (!strcmp(args[0], "device")) {
        if (n_args != 3)
            return usage("device needs ID and an action");
        status = !strcmp(args[2], "allow")     ? "allowed"
                 : !strcmp(args[2], "suspend") ? "suspended"
                 : !strcmp(args[2], "revoke")  ? "revoked"
                                               : NULL;
        if (!status)
            return usage("action must be allow, suspend or revoke");
        if (!reason || !reason[0])
            return usage("--reason TEXT is required (it goes into the audit log)");
        if (strlen(reason) > REASON_MAX)
            return usage("--reason is longer than 1000 bytes");
        if (!fedge_text_is_printable(reason, strlen(reason)))
            return usage("--reason must be one line of printable text: it holds a control "
                         "character (newline, tab, escape sequence) or invalid UTF-8");
        if (!fedge_device_id_valid(args[1], strlen(args[1])))
            return usage("device ID must be 1 to 64 characters of [A-Za-z0-9._-]");
    } else {
        return usage("unknown command");
    }

    char shown[1024]; /* the path as printed: escaped */
    fedge_text_escape(db_path, strlen(db_path), shown, sizeof shown);
    if (access(db_path, F_OK) != 0) { /* never create a database here */
        fprintf(stderr, "fedge-admin: %s: no such database\n", shown);
        return 1;
    }
    sqlite3 *db = NULL;
    int ret = fedge_store_open_db(db_path, !status, &db);
    if (ret != FEDGE_OK) {
        fprintf(stderr, "fedge-admin: %s: %s\n", shown, fedge_strerror(ret));
        return 1;
    }
    int rc = 0;
    if (!status) {
        rc = list_devices(db);
    } else {
        ret = fedge_device_set_status(db, args[1], status, reason);
        if (ret != FEDGE_OK) {
            fprintf(stderr, "fedge-admin: device %s: %s\n", args[1], fedge_strerror(ret));
            rc = 1;
        } else {
            printf("device %s is now %s\n", args[1], status);
        }
    }
    sqlite3_close_v2(db);
    return rc;
}
