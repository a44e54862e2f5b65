/* fedge-admin — operator actions on a running deployment's database.
 *
 *   fedge-admin --db PATH devices
 *   fedge-admin --db PATH device ID allow|suspend|revoke --reason TEXT
 *   fedge-admin --db PATH device add ID --region R --keys FILE [--server HOST:PORT]
 *               [--bundle OUT] [--reload]
 *   fedge-admin --db PATH device remove ID --keys FILE --reason TEXT [--reload]
 *   fedge-admin --db PATH signing-key rotate --key OLD.key --new-key NEW.pub
 *
 * add: a fresh device secret (getrandom), its line appended to the keys file
 * (keys.h: atomic, 0600, a duplicate id refused), its credential bundle
 * written (mode 0600: its own key line and the server, for fedge-edge
 * --bundle) and an audited 'enrolled' event. remove: the device revoked (an
 * audited event, effective at once) and its line taken out of the keys file.
 * --reload sends SIGHUP to the aggregator holding PATH (the pid in its
 * <db>.lock), which reloads the keys without a restart.
 * signing-key rotate: an audited rotation record signed by the old key and
 * naming the new one (audit.h); refused while an aggregator holds PATH.
 *
 * Safe while the aggregator runs (SQLite WAL, one transaction each); the
 * aggregator reads device status at every update and selection. Every
 * change is an audited events row with the operator's reason, so
 * `fedge-audit decisions` and `lineage --device ID` show it.
 * A reason must be printable text: control characters (newlines, escape
 * sequences), C1 controls and invalid UTF-8 are refused, and everything read
 * back from the database is printed escaped (text.h).
 * Exit status: 0 done, 1 refused (unknown device, database error), 2 usage. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/platform_util.h>

#include "audit.h"
#include "common.h"
#include "crypto.h"
#include "governance.h"
#include "instance_lock.h"
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
            "       fedge-admin --db PATH device add ID --region R --keys FILE [--server HOST:PORT]\n"
            "                   [--bundle OUT] [--reload]\n"
            "       fedge-admin --db PATH device remove ID --keys FILE --reason TEXT [--reload]\n"
            "       fedge-admin --db PATH signing-key rotate --key OLD_PRIVATE.pem --new-key NEW_PUBLIC.pem\n"
            "       fedge-admin --version\n"
            "--reload: SIGHUP to the aggregator running on PATH (pid from PATH.lock): it reloads the keys\n"
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

/* SIGHUP to the aggregator holding db_path's instance lock. */
static int signal_daemon(const char *db_path)
{
    fedge_instance_lock lock = {.fd = -1, .db_fd = -1};
    pid_t owner = 0;
    char err[512];
    int ret = fedge_instance_lock_acquire(db_path, &lock, &owner, err, sizeof err);
    if (ret == FEDGE_OK) {
        fedge_instance_lock_release(&lock);
        printf("no aggregator runs on this database: the keys apply at its next start\n");
        return 0;
    }
    if (ret != FEDGE_ERR_INSTANCE_LOCKED || owner <= 0) {
        fprintf(stderr, "fedge-admin: cannot find the aggregator's pid: %s\n", err);
        return 1;
    }
    if (kill(owner, SIGHUP) != 0) {
        fprintf(stderr, "fedge-admin: SIGHUP to pid %ld: %s\n", (long)owner, strerror(errno));
        return 1;
    }
    printf("sent SIGHUP to the aggregator (pid %ld): it reloads the keys file\n", (long)owner);
    return 0;
}

static int device_add(sqlite3 *db, const char *id, const char *region, const char *keys, const char *server,
                      const char *bundle)
{
    fedge_device_entry e;
    char err[512] = "", detail[1024];
    int rc = 0;
    memset(&e, 0, sizeof e);
    snprintf(e.id, sizeof e.id, "%s", id);
    snprintf(e.region, sizeof e.region, "%s", region);
    if (getrandom(e.secret, sizeof e.secret, 0) != (ssize_t)sizeof e.secret) {
        fprintf(stderr, "fedge-admin: getrandom: %s\n", strerror(errno));
        return 1;
    }
    int ret = bundle ? fedge_keys_bundle_write(bundle, &e, server) : FEDGE_OK;
    if (ret != FEDGE_OK) {
        fedge_text_eprintf("fedge-admin", "bundle %s: %s", bundle,
                           ret == FEDGE_ERR_DUPLICATE ? "exists; nothing was changed"
                           : ret == FEDGE_ERR_IO  ? strerror(errno)
                                                  : fedge_strerror(ret));
        rc = 1;
        goto out;
    }
    ret = fedge_keys_file_add(keys, &e, err, sizeof err);
    if (ret != FEDGE_OK) {
        fedge_text_eprintf("fedge-admin", "device %s: %s", id, err[0] ? err : fedge_strerror(ret));
        rc = 1;
        goto undo_bundle;
    }
    snprintf(detail, sizeof detail, "device %s enrolled in region %s (keys file %.900s)", id, region, keys);
    ret = fedge_device_enrol(db, id, region, detail);
    if (ret != FEDGE_OK) {
        fprintf(stderr, "fedge-admin: device %s: %s\n", id,
                ret == FEDGE_ERR_DUPLICATE ? "the database has this id as revoked; enrol it under a new id"
                                           : fedge_strerror(ret));
        if (fedge_keys_file_remove(keys, id, NULL, err, sizeof err) != FEDGE_OK)
            fedge_text_eprintf("fedge-admin", "and its key line could not be taken back out: %s", err);
        rc = 1;
        goto undo_bundle;
    }
    printf("device %s enrolled (region %s): key line added to %s%s%s\n", id, region, keys,
           bundle ? ", bundle " : "", bundle ? bundle : "");
    goto out;
undo_bundle:
    if (bundle)
        unlink(bundle);
out:
    mbedtls_platform_zeroize(&e, sizeof e);
    return rc;
}

static int device_remove(sqlite3 *db, const char *id, const char *keys, const char *reason)
{
    char err[512] = "", why[REASON_MAX + 64];
    snprintf(why, sizeof why, "removed from the keys file: %s", reason);
    /* revoked first: the daemon refuses the device at once, reload or not */
    int ret = fedge_device_set_status(db, id, "revoked", why);
    if (ret != FEDGE_OK && ret != FEDGE_ERR_NOT_FOUND) {
        fprintf(stderr, "fedge-admin: device %s: %s\n", id, fedge_strerror(ret));
        return 1;
    }
    if (ret == FEDGE_ERR_NOT_FOUND)
        fprintf(stderr, "fedge-admin: device %s is not in the database (never loaded); removing its key line\n", id);
    ret = fedge_keys_file_remove(keys, id, NULL, err, sizeof err);
    if (ret != FEDGE_OK) {
        fedge_text_eprintf("fedge-admin", "device %s: %s", id, err[0] ? err : fedge_strerror(ret));
        return 1;
    }
    printf("device %s removed from %s and revoked\n", id, keys);
    return 0;
}

static int rotate_signing_key(sqlite3 *db, const char *db_path, const char *old_path, const char *new_path)
{
    static const char pers[] = "fedge-admin rotate";
    mbedtls_pk_context old, neu;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    fedge_instance_lock lock = {.fd = -1, .db_fd = -1};
    pid_t owner = 0;
    char err[512] = "", fp[FEDGE_HASH_HEX_LEN] = "";
    int rc = 1, ret;
    int64_t seq = 0;
    mbedtls_pk_init(&old);
    mbedtls_pk_init(&neu);
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    ret = fedge_instance_lock_acquire(db_path, &lock, &owner, err, sizeof err);
    if (ret != FEDGE_OK) {
        fprintf(stderr, "fedge-admin: %s; stop the aggregator before rotating its key (it would go on signing "
                        "with the old one)\n", err);
        goto out;
    }
    if ((ret = fedge_audit_load_private_key(old_path, &old)) != FEDGE_OK) {
        fedge_text_eprintf("fedge-admin", "--key %s: %s (the current EC P-256 private key PEM, mode 0600)", old_path,
                           fedge_strerror(ret));
        goto out;
    }
    if ((ret = fedge_audit_load_public_key(new_path, &neu)) == FEDGE_ERR_NOT_REGULAR) {
        fedge_text_eprintf("fedge-admin", "--new-key %s: not a regular file (a FIFO, device or directory)", new_path);
        goto out;
    }
    if (ret != FEDGE_OK &&
        (mbedtls_pk_free(&neu), mbedtls_pk_init(&neu), fedge_audit_load_private_key(new_path, &neu)) != FEDGE_OK) {
        fedge_text_eprintf("fedge-admin", "--new-key %s: not an EC P-256 public (or 0600 private) key PEM",
                           new_path);
        goto out;
    }
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, (const unsigned char *)pers,
                              sizeof pers - 1) != 0) {
        fprintf(stderr, "fedge-admin: cannot seed the random generator\n");
        goto out;
    }
    ret = fedge_audit_rotate_key(db, &old, &neu, &drbg, &seq, err, sizeof err);
    if (ret != FEDGE_OK) {
        fprintf(stderr, "fedge-admin: rotation refused: %s\n", err);
        goto out;
    }
    (void)fedge_audit_key_fingerprint(&neu, fp);
    printf("signing key rotated at audit seq %lld: new key sha256 %s; start the aggregator with its private key\n",
           (long long)seq, fp);
    rc = 0;
out:
    fedge_instance_lock_release(&lock);
    mbedtls_pk_free(&old);
    mbedtls_pk_free(&neu);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    return rc;
}

int main(int argc, char **argv)
{
    const char *db_path = NULL, *reason = NULL, *args[4];
    const char *region = NULL, *keys = NULL, *server = NULL, *bundle = NULL, *key = NULL, *new_key = NULL;
    int n_args = 0, reload = 0;
    if (fedge_crypto_use_openssl() != FEDGE_OK) /* mbedTLS stays: the same bytes, slower */
        fedge_text_eprintf("fedge-admin", "OpenSSL lacks SHA-256 or AES-GCM: crypto on mbedTLS");
    const struct {
        const char *name;
        const char **dst;
    } valued[] = {{"--db", &db_path},     {"--reason", &reason}, {"--region", &region}, {"--keys", &keys},
                  {"--server", &server},  {"--bundle", &bundle}, {"--key", &key},       {"--new-key", &new_key}};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(NULL);
        if (!strcmp(argv[i], "--version")) {
            printf("fedge-admin %s\n", FEDGE_VERSION);
            return 0;
        }
        if (!strcmp(argv[i], "--reload")) {
            reload = 1;
            continue;
        }
        size_t v = 0;
        while (v < FEDGE_ARRAY_LEN(valued) && strcmp(argv[i], valued[v].name) != 0)
            v++;
        if (v < FEDGE_ARRAY_LEN(valued)) {
            if (i + 1 >= argc)
                return usage("option needs a value");
            *valued[v].dst = argv[++i];
        } else if (argv[i][0] == '-') {
            return usage("unknown option");
        } else if (n_args < 4) {
            args[n_args++] = argv[i];
        } else {
            return usage("too many arguments");
        }
    }
    if (!db_path)
        return usage("--db is required");
    if (n_args == 0)
        return usage("give a command");
    enum { LIST, STATUS, ADD, REMOVE, ROTATE } cmd;
    const char *status = NULL;
    int enrol_opts = region || keys || server || bundle || reload, key_opts = key || new_key;
    if (!strcmp(args[0], "devices")) {
        if (n_args != 1 || reason || enrol_opts || key_opts)
            return usage("devices takes no arguments");
        cmd = LIST;
    } else if (!strcmp(args[0], "signing-key")) {
        if (n_args != 2 || strcmp(args[1], "rotate") != 0)
            return usage("signing-key takes one action: rotate");
        if (!key || !new_key)
            return usage("signing-key rotate needs --key OLD_PRIVATE.pem and --new-key NEW_PUBLIC.pem");
        if (reason || enrol_opts)
            return usage("signing-key rotate takes --key and --new-key only");
        cmd = ROTATE;
    } else if (!strcmp(args[0], "device") && n_args == 3 &&
               (!strcmp(args[1], "add") || !strcmp(args[1], "remove")) &&
               strcmp(args[2], "allow") && strcmp(args[2], "suspend") && strcmp(args[2], "revoke")) {
        cmd = args[1][0] == 'a' ? ADD : REMOVE;
        if (!fedge_device_id_valid(args[2], strlen(args[2])))
            return usage("device ID must be 1 to 64 characters of [A-Za-z0-9._-]");
        if (!keys)
            return usage("--keys FILE (the aggregator's keys_file) is required");
        if (key_opts)
            return usage("--key and --new-key apply to signing-key rotate");
        if (cmd == ADD) {
            if (reason)
                return usage("device add takes no --reason");
            if (!region || !fedge_device_id_valid(region, strlen(region)) || strlen(region) > FEDGE_REGION_MAX)
                return usage("device add needs --region R: 1 to 32 characters of [A-Za-z0-9._-]");
            if (!server)
                server = "127.0.0.1:5684";
            if (!bundle)
                fprintf(stderr, "fedge-admin: no --bundle: the new secret is only in the keys file "
                                "(fedge-keygen export --id %s gives the device its own)\n", args[2]);
        } else if (region || server || bundle) {
            return usage("device remove takes --keys, --reason and --reload only");
        }
    } else if (!strcmp(args[0], "device")) {
        if (n_args != 3)
            return usage("device needs ID and an action");
        if (enrol_opts || key_opts)
            return usage("allow, suspend and revoke take --reason only");
        status = !strcmp(args[2], "allow")     ? "allowed"
                 : !strcmp(args[2], "suspend") ? "suspended"
                 : !strcmp(args[2], "revoke")  ? "revoked"
                                               : NULL;
        if (!status)
            return usage("action must be allow, suspend or revoke");
        if (!fedge_device_id_valid(args[1], strlen(args[1])))
            return usage("device ID must be 1 to 64 characters of [A-Za-z0-9._-]");
        cmd = STATUS;
    } else {
        return usage("unknown command");
    }
    if (cmd == STATUS || cmd == REMOVE) {
        if (!reason || !reason[0])
            return usage("--reason TEXT is required (it goes into the audit log)");
        if (strlen(reason) > REASON_MAX)
            return usage("--reason is longer than 1000 bytes");
        if (!fedge_text_is_printable(reason, strlen(reason)))
            return usage("--reason must be one line of printable text: it holds a control "
                         "character (newline, tab, escape sequence) or invalid UTF-8");
    }

    char shown[1024]; /* the path as printed: escaped */
    fedge_text_escape(db_path, strlen(db_path), shown, sizeof shown);
    if (access(db_path, F_OK) != 0) { /* never create a database here */
        fprintf(stderr, "fedge-admin: %s: no such database\n", shown);
        return 1;
    }
    sqlite3 *db = NULL;
    int ret = fedge_store_open_db(db_path, cmd == LIST, &db);
    if (ret != FEDGE_OK) {
        fprintf(stderr, "fedge-admin: %s: %s\n", shown, fedge_strerror(ret));
        return 1;
    }
    int rc = 0;
    switch (cmd) {
    case LIST: rc = list_devices(db); break;
    case STATUS:
        ret = fedge_device_set_status(db, args[1], status, reason);
        if (ret != FEDGE_OK) {
            fprintf(stderr, "fedge-admin: device %s: %s\n", args[1], fedge_strerror(ret));
            rc = 1;
        } else {
            printf("device %s is now %s\n", args[1], status);
        }
        break;
    case ADD: rc = device_add(db, args[2], region, keys, server, bundle); break;
    case REMOVE: rc = device_remove(db, args[2], keys, reason); break;
    case ROTATE: rc = rotate_signing_key(db, db_path, key, new_key); break;
    }
    sqlite3_close_v2(db);
    if (rc == 0 && reload)
        rc = signal_daemon(db_path);
    return rc;
}
