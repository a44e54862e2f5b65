/* fedge-admin — operator actions on a running deployment's database.
 *
 *   fedge-admin --db PATH devices
 *   fedge-admin --db PATH device ID allow|suspend|revoke --reason TEXT
 *
 * Safe while the aggregator runs (SQLite WAL, one transaction each); the
 * aggregator reads device status at every update and selection. Every
 * change is an audited events row with the operator's reason, so
 * `fedge-audit decisions` and `lineage --device ID` show it.
 * Exit status: 0 done, 1 refused (unknown device, database error), 2 usage. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "governance.h"
#include "store.h"

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "fedge-admin: %s\n", why);
    fprintf(why ? stderr : stdout,
            "usage: fedge-admin --db PATH devices\n"
            "       fedge-admin --db PATH device ID allow|suspend|revoke --reason TEXT\n");
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
    while (sqlite3_step(st) == SQLITE_ROW)
        printf("%-20s %-8s %-10s %20lld %10s\n", (const char *)sqlite3_column_text(st, 0),
               (const char *)sqlite3_column_text(st, 1), (const char *)sqlite3_column_text(st, 2),
               (long long)sqlite3_column_int64(st, 3), (const char *)sqlite3_column_text(st, 4));
    sqlite3_finalize(st);
    return 0;
}

int main(int argc, char **argv)
{
    const char *db_path = NULL, *reason = NULL, *args[3];
    int n_args = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(NULL);
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
    } else {
        return usage("unknown command");
    }

    if (access(db_path, F_OK) != 0) { /* never create a database here */
        fprintf(stderr, "fedge-admin: %s: no such database\n", db_path);
        return 1;
    }
    sqlite3 *db = NULL;
    int ret = fedge_store_open_db(db_path, !status, &db);
    if (ret != FEDGE_OK) {
        fprintf(stderr, "fedge-admin: %s: %s\n", db_path, fedge_strerror(ret));
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
