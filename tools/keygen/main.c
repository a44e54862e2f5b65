/* fedge-keygen — key provisioning.
 *
 *   fedge-keygen aggregator --out DIR [--force]
 *       DIR/aggregator.key: ECDSA P-256 private key PEM, mode 0600 (the
 *       aggregator signs the audit chain head with it);
 *       DIR/aggregator.pub: its public key PEM, for fedge-audit --pubkey.
 *   fedge-keygen devices --count N [--prefix dev-] [--regions eu,us]
 *                        --out KEYS_FILE [--force]
 *       KEYS_FILE, mode 0600: one line per device,
 *       "DEVICE_ID REGION SECRET_HEX" (32 random bytes as 64 hex digits),
 *       ids PREFIX001..PREFIXN (zero-padded to >= 3 digits), regions assigned round-robin from the list
 *       (default "eu"). The file is read back with fedge_keys_load before
 *       the command reports success.
 *   fedge-keygen export --keys KEYS_FILE --id DEVICE_ID --out FILE [--force]
 *       FILE, mode 0600: a keys file holding only that device's line, for
 *       provisioning one edge without handing it every device's secret.
 * Existing files are never overwritten without --force. Secrets come from
 * getrandom(2) and are wiped from memory after writing.
 * Exit status: 0 done, 2 usage or I/O error. */
#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/platform_util.h>

#include "audit.h"
#include "common.h"
#include "fileio.h"
#include "hash.h"
#include "keys.h"
#include "version.h"
#include "text.h"

#define MAX_REGIONS 64

static const char USAGE[] =
    "usage: fedge-keygen aggregator --out DIR [--force]\n"
    "       fedge-keygen devices --count N [--prefix dev-] [--regions eu,us] --out KEYS_FILE "
    "[--force]\n"
    "\n"
    "aggregator  write DIR/aggregator.key (ECDSA P-256 private key PEM, mode 0600) and\n"
    "            DIR/aggregator.pub (the public key for fedge-audit --pubkey)\n"
    "devices     write KEYS_FILE (mode 0600): lines 'DEVICE_ID REGION SECRET_HEX', ids\n"
    "            PREFIX001..PREFIXN, regions round-robin from --regions (default eu)\n"
    "       fedge-keygen psk --keys KEYS_FILE --id DEVICE_ID\n"
    "psk         print the device's DTLS pre-shared key (for third-party clients such as\n"
    "            coap-client -u DEVICE_ID -k PSK)\n"
    "       fedge-keygen export --keys KEYS_FILE --id DEVICE_ID --out FILE [--force]\n"
    "export      write FILE (mode 0600): a keys file holding only DEVICE_ID, for its edge\n"
    "--force     replace existing files\n"
    "--version   print the fedge version\n";

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    char msg[512];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fedge_text_eprintf("fedge-keygen", "%s", msg); /* it may echo what was typed */
    return 2;
}

static int region_valid(const char *r, size_t n)
{
    if (n == 0 || n > FEDGE_REGION_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = r[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Writes data to path with mode 0600: exclusively, or (force) through a
 * temporary file renamed over the old one. */
static int write_secret_file(const char *path, const char *data, size_t len, int force)
{
    int ret = force ? fedge_write_file_atomic(path, data, len, 0600, 0)
                    : fedge_write_file_inplace(path, data, len, 0600, FEDGE_FILE_EXCL);
    if (ret == FEDGE_ERR_DUPLICATE)
        return fail("%s exists; use --force to replace it", path);
    if (ret != FEDGE_OK)
        return fail("cannot write %s: %s", path,
                    ret == FEDGE_ERR_IO ? strerror(errno) : fedge_strerror(ret));
    return 0;
}

static int cmd_devices(long count, const char *prefix, const char *regions_arg, const char *out,
                       int force)
{
    char regions[MAX_REGIONS][FEDGE_REGION_MAX + 1];
    size_t n_regions = 0;
    const char *p = regions_arg;
    for (;;) {
        size_t n = strcspn(p, ",");
        if (!region_valid(p, n))
            return fail("--regions: '%.*s' is not a region (1 to %d of [A-Za-z0-9._-])", (int)n,
                        p, FEDGE_REGION_MAX);
        if (n_regions == MAX_REGIONS)
            return fail("--regions: more than %d regions", MAX_REGIONS);
        memcpy(regions[n_regions], p, n);
        regions[n_regions++][n] = '\0';
        if (p[n] == '\0')
            break;
        p += n + 1;
    }
    /* zero-padded to at least 3 digits so ids sort: dev-001 ... dev-128 */
    int width = snprintf(NULL, 0, "%ld", count);
    if (width < 3)
        width = 3;
    char last_id[FEDGE_DEVICE_ID_MAX + 32];
    int idn = snprintf(last_id, sizeof last_id, "%s%0*ld", prefix, width, count);
    if (idn < 0 || !fedge_device_id_valid(last_id, (size_t)idn))
        return fail("--prefix '%s': device ids such as '%s' must be 1 to %d characters of "
                    "[A-Za-z0-9._-]",
                    prefix, last_id, FEDGE_DEVICE_ID_MAX);

    size_t line_max = FEDGE_DEVICE_ID_MAX + 1 + FEDGE_REGION_MAX + 1 + 2 * FEDGE_SECRET_LEN + 1;
    size_t cap = (size_t)count * line_max + 1;
    char *buf = malloc(cap);
    if (!buf)
        return fail("out of memory");
    size_t used = 0;
    int rc = 0;
    uint8_t secret[FEDGE_SECRET_LEN];
    char hex[2 * FEDGE_SECRET_LEN + 1];
    static const char digits[] = "0123456789abcdef";
    for (long i = 1; i <= count && rc == 0; i++) {
        if (getrandom(secret, sizeof secret, 0) != (ssize_t)sizeof secret) {
            rc = fail("getrandom failed: %s", strerror(errno));
            break;
        }
        for (size_t k = 0; k < sizeof secret; k++) {
            hex[2 * k] = digits[secret[k] >> 4];
            hex[2 * k + 1] = digits[secret[k] & 15];
        }
        hex[2 * FEDGE_SECRET_LEN] = '\0';
        int n = snprintf(buf + used, cap - used, "%s%0*ld %s %s\n", prefix, width, i,
                         regions[(size_t)(i - 1) % n_regions], hex);
        if (n < 0 || (size_t)n >= cap - used)
            rc = fail("internal error: line too long");
        else
            used += (size_t)n;
    }
    mbedtls_platform_zeroize(secret, sizeof secret);
    mbedtls_platform_zeroize(hex, sizeof hex);
    if (rc == 0)
        rc = write_secret_file(out, buf, used, force);
    mbedtls_platform_zeroize(buf, cap);
    free(buf);
    if (rc != 0)
        return rc;

    /* Read it back the way the aggregator will. */
    fedge_keys keys;
    char err[256] = "";
    int lr = fedge_keys_load(out, &keys, err, sizeof err);
    if (lr != FEDGE_OK)
        return fail("%s was written but does not load: %s", out, err[0] ? err : fedge_strerror(lr));
    size_t loaded = keys.n;
    fedge_keys_free(&keys);
    if (loaded != (size_t)count)
        return fail("%s: wrote %ld devices but %zu load back", out, count, loaded);
    printf("wrote %ld device secret%s to %s (mode 0600): %s%0*d..%s%0*ld, regions %s\n", count,
           count == 1 ? "" : "s", out, prefix, width, 1, prefix, width, count, regions_arg);
    return 0;
}

static int cmd_aggregator(const char *dir, int force)
{
    static const char pers[] = "fedge-keygen aggregator";
    char priv[4096], pub[4096];
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT || mkdir(dir, 0700) != 0)
            return fail("cannot create directory %s: %s", dir, strerror(errno));
    } else if (!S_ISDIR(st.st_mode)) {
        return fail("%s is not a directory", dir);
    }
    if (snprintf(priv, sizeof priv, "%s/aggregator.key", dir) >= (int)sizeof priv ||
        snprintf(pub, sizeof pub, "%s/aggregator.pub", dir) >= (int)sizeof pub)
        return fail("%s: path too long", dir);
    if (!force && (access(priv, F_OK) == 0 || access(pub, F_OK) == 0))
        return fail("%s already holds an aggregator key; use --force to replace it (old "
                    "signatures then no longer verify with the new public key)",
                    dir);
    if (force) {
        unlink(priv);
        unlink(pub);
    }
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    int rc = 0;
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, (const unsigned char *)pers,
                              sizeof pers - 1) != 0) {
        rc = fail("cannot seed the random generator");
    } else {
        int r = fedge_audit_generate_keypair(priv, pub, &drbg);
        if (r != FEDGE_OK)
            rc = fail("cannot write the key pair in %s: %s", dir, fedge_strerror(r));
    }
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    if (rc != 0)
        return rc;
    uint8_t h[FEDGE_HASH_LEN];
    char hex[FEDGE_HASH_HEX_LEN];
    if (fedge_sha256_file(pub, h) != FEDGE_OK)
        return fail("cannot read back %s", pub);
    fedge_hash_to_hex(h, hex);
    printf("wrote %s (ECDSA P-256 private key, mode 0600)\n"
           "wrote %s (public key for fedge-audit --pubkey; sha256 %s)\n",
           priv, pub, hex);
    return 0;
}

static int cmd_psk(const char *keys_path, const char *id)
{
    fedge_keys keys;
    char err[256] = "", psk[FEDGE_PSK_LEN + 1];
    if (fedge_keys_load(keys_path, &keys, err, sizeof err) != FEDGE_OK)
        return fail("%s", err);
    const fedge_device_entry *e = fedge_keys_find(&keys, id, strlen(id));
    int rc = 0;
    if (!e)
        rc = fail("%s has no device '%s'", keys_path, id);
    else if (fedge_keys_dtls_psk(e->secret, e->id, psk) != FEDGE_OK)
        rc = fail("cannot derive the PSK");
    else
        printf("%s\n", psk);
    mbedtls_platform_zeroize(psk, sizeof psk);
    fedge_keys_free(&keys);
    return rc;
}

/* One device's keys file: an edge needs its own secret and nobody else's. */
static int cmd_export(const char *keys_path, const char *id, const char *out, int force)
{
    fedge_keys keys;
    char err[256] = "", line[FEDGE_KEYS_LINE_MAX];
    if (fedge_keys_load(keys_path, &keys, err, sizeof err) != FEDGE_OK)
        return fail("%s", err);
    const fedge_device_entry *e = fedge_keys_find(&keys, id, strlen(id));
    size_t n = e ? fedge_keys_format_line(e, line, sizeof line) : 0;
    int rc;
    if (!e)
        rc = fail("%s has no device '%s'", keys_path, id);
    else if (n == 0)
        rc = fail("internal error: line too long");
    else
        rc = write_secret_file(out, line, n, force);
    mbedtls_platform_zeroize(line, sizeof line);
    fedge_keys_free(&keys);
    if (rc == 0) {
        fedge_keys back;
        int lr = fedge_keys_load(out, &back, err, sizeof err);
        int ok = lr == FEDGE_OK && back.n == 1 && fedge_keys_find(&back, id, strlen(id));
        if (lr == FEDGE_OK)
            fedge_keys_free(&back);
        if (!ok)
            return fail("%s was written but does not load back as %s's keys", out, id);
        printf("wrote %s's secret to %s (mode 0600)\n", id, out);
    }
    return rc;
}

int main(int argc, char **argv)
{
    enum { OPT_OUT = 1000, OPT_COUNT, OPT_PREFIX, OPT_REGIONS, OPT_FORCE, OPT_HELP, OPT_KEYS, OPT_ID,
           OPT_VERSION };
    static const struct option longopts[] = {
        {"out", required_argument, NULL, OPT_OUT},
        {"count", required_argument, NULL, OPT_COUNT},
        {"prefix", required_argument, NULL, OPT_PREFIX},
        {"regions", required_argument, NULL, OPT_REGIONS},
        {"force", no_argument, NULL, OPT_FORCE},
        {"keys", required_argument, NULL, OPT_KEYS},
        {"id", required_argument, NULL, OPT_ID},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    const char *out = NULL, *prefix = "dev-", *regions = "eu", *count_arg = NULL;
    const char *keys_path = NULL, *id = NULL;
    int force = 0, c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_OUT: out = optarg; break;
        case OPT_COUNT: count_arg = optarg; break;
        case OPT_PREFIX: prefix = optarg; break;
        case OPT_REGIONS: regions = optarg; break;
        case OPT_FORCE: force = 1; break;
        case OPT_KEYS: keys_path = optarg; break;
        case OPT_ID: id = optarg; break;
        case 'h':
        case OPT_HELP: fputs(USAGE, stdout); return 0;
        case OPT_VERSION: printf("fedge-keygen %s\n", FEDGE_VERSION); return 0;
        case ':': return fail("%s needs a value", argv[optind - 1]);
        default: return fail("unknown option %s (fedge-keygen --help)", argv[optind - 1]);
        }
    }
    if (optind + 1 != argc)
        return fail("give one command: aggregator, devices, psk or export (fedge-keygen --help)");
    const char *cmd = argv[optind];
    if (id && !fedge_device_id_valid(id, strlen(id)))
        return fail("--id must be 1 to %d characters of [A-Za-z0-9._-]", FEDGE_DEVICE_ID_MAX);
    if (strcmp(cmd, "psk") == 0) {
        if (!keys_path || !id)
            return fail("psk needs --keys KEYS_FILE and --id DEVICE_ID");
        if (out)
            return fail("psk prints the key; --out applies to aggregator, devices and export");
        return cmd_psk(keys_path, id);
    }
    if (strcmp(cmd, "export") == 0) {
        if (!keys_path || !id || !out)
            return fail("export needs --keys KEYS_FILE, --id DEVICE_ID and --out FILE");
        if (count_arg || strcmp(prefix, "dev-") != 0 || strcmp(regions, "eu") != 0)
            return fail("--count, --prefix and --regions apply to devices only");
        return cmd_export(keys_path, id, out, force);
    }
    if (keys_path || id)
        return fail("--keys and --id apply to psk and export only");
    if (!out)
        return fail("--out is required");
    if (strcmp(cmd, "aggregator") == 0) {
        if (count_arg || strcmp(prefix, "dev-") != 0 || strcmp(regions, "eu") != 0)
            return fail("--count, --prefix and --regions apply to devices only");
        return cmd_aggregator(out, force);
    }
    if (strcmp(cmd, "devices") == 0) {
        if (!count_arg)
            return fail("devices needs --count N");
        char *end = NULL;
        errno = 0;
        long count = strtol(count_arg, &end, 10);
        if (errno || *end || count < 1 || count > FEDGE_KEYS_MAX_DEVICES)
            return fail("--count must be 1 to %d, not '%s'", FEDGE_KEYS_MAX_DEVICES, count_arg);
        return cmd_devices(count, prefix, regions, out, force);
    }
    return fail("unknown command '%s': aggregator, devices, psk or export", cmd);
}
