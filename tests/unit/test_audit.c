/* test_audit.c — the audit chain on a real database (fedge_store_open_db),
 * real model files, a generated ECDSA key: an untouched log verifies, and
 * each tamper (a changed row, a deleted row, a swapped model file, a deleted
 * audit entry, a truncated tail, a rewritten chain, a forged signature, ...)
 * fails and is named. Every case builds its own fresh database.
 *
 * `test_audit --make-fixture DIR [--mixed]` writes the same database, key
 * pair and model files into DIR and exits (tests/integration/audit_cli.sh
 * uses it); --mixed: up to round 1 in canon format FCN1, then FCN2. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>

#include "audit.h"
#include "audit_impl.h" /* audit_test_write_format: a log as an older fedge wrote it */
#include "common.h"
#include "delta.h"
#include "hash.h"
#include "model.h"
#include "modelfile.h"
#include "policy.h"
#include "rng.h"
#include "store.h"

#define T0 1764000000.0 /* fixed clock for the fixture's rows */

typedef struct {
    char dir[64];
    char db_path[128], priv[128], pub[128], models[128];
    char v[4][FEDGE_HASH_HEX_LEN]; /* init, round 1, round 2, refine */
    sqlite3 *db;
    mbedtls_pk_context key;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    fedge_policy *policy;
    fedge_model_spec spec;
} fixture;

/* ---- building the fixture --------------------------------------------------- */

#define OK(expr)                                                                  \
    do {                                                                          \
        int rc_ = (expr);                                                         \
        if (rc_ != FEDGE_OK) {                                                    \
            fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #expr,       \
                    fedge_strerror(rc_));                                         \
            return rc_;                                                           \
        }                                                                         \
    } while (0)

/* sqlite3_mprintf formats (%Q, %q), so no printf format checking. */
static int sql(sqlite3 *db, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *q = sqlite3_vmprintf(fmt, ap);
    va_end(ap);
    char *msg = NULL;
    int rc = sqlite3_exec(db, q, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fprintf(stderr, "sql: %s: %s\n", q, msg ? msg : "?");
    sqlite3_free(msg);
    sqlite3_free(q);
    return rc == SQLITE_OK ? FEDGE_OK : FEDGE_ERR_SQL;
}

static int add_model(fixture *fx, int idx, uint64_t seed, const char *parent, const char *kind,
                     int round, const char *info)
{
    fedge_model m;
    fedge_rng rng;
    uint8_t version[FEDGE_HASH_LEN], sha[FEDGE_HASH_LEN];
    char file[160], sha_hex[FEDGE_HASH_HEX_LEN];
    OK(fedge_model_init(&m, &fx->spec));
    fedge_rng_seed(&rng, seed);
    int rc = fedge_model_randomize(&m, &rng);
    if (rc == FEDGE_OK) {
        OK(fedge_model_version(&m, version));
        fedge_hash_to_hex(version, fx->v[idx]);
        snprintf(file, sizeof file, "%s/%s.fmdl", fx->models, fx->v[idx]);
        rc = fedge_model_save(&m, file, NULL);
    }
    fedge_model_free(&m);
    OK(rc);
    OK(fedge_sha256_file(file, sha));
    fedge_hash_to_hex(sha, sha_hex);
    /* Relative to the fixture directory, as the aggregator writes them
     * relative to its working directory. */
    OK(sql(fx->db,
           "INSERT INTO models(version, parent, kind, round, path, sha256, accuracy, created_at, "
           "info) VALUES(%Q, %Q, %Q, %d, 'models/%q.fmdl', %Q, %.3f, %.1f, %Q)",
           fx->v[idx], parent, kind, round, fx->v[idx], sha_hex, 0.5 + 0.1 * idx,
           round ? T0 + 100 * round + 65 + idx : T0,
           info));
    return fedge_audit_append(fx->db, "models", fx->v[idx]);
}

static int add_update(fixture *fx, int round, const char *device, int n_samples, double norm,
                      const char *decision, const char *rule, const char *reason, uint64_t seed)
{
    sqlite3_stmt *st = NULL;
    uint8_t blob[FEDGE_DELTA_HEADER_LEN + 4 * 64];
    size_t blob_len = 0;
    size_t n = fedge_model_spec_param_count(&fx->spec);
    float delta[64];
    fedge_rng rng;
    fedge_rng_seed(&rng, seed);
    for (size_t i = 0; i < n; i++)
        delta[i] = (float)(0.01 * fedge_rng_normal(&rng));
    fedge_delta_header h = {.encoding = FEDGE_ENC_FP32,
                            .model_id = fedge_model_spec_id(&fx->spec),
                            .round = (uint32_t)round,
                            .n_samples = (uint32_t)n_samples,
                            .n_elems = (uint32_t)n};
    OK(fedge_delta_encode(&h, delta, NULL, blob, sizeof blob, &blob_len));
    /* the hash of the sealed frame as received (aggregator/ingest.h) */
    uint8_t sealed[FEDGE_HASH_LEN];
    OK(fedge_sha256(&seed, sizeof seed, sealed));
    if (sqlite3_prepare_v2(fx->db,
                           "INSERT INTO updates(round, device, received_at, n_samples, encoding, "
                           "bytes, counter, norm, decision, rule, reason, delta, sealed_sha256) "
                           "VALUES(?1, ?2, ?3, ?4, 'fp32', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                           -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    sqlite3_bind_int(st, 1, round);
    sqlite3_bind_text(st, 2, device, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 3, T0 + 100 * round + seed);
    sqlite3_bind_int(st, 4, n_samples);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)blob_len + 60);
    sqlite3_bind_int64(st, 6, round);
    sqlite3_bind_double(st, 7, norm);
    sqlite3_bind_text(st, 8, decision, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, rule, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, reason, -1, SQLITE_STATIC);
    if (strcmp(decision, "rejected") != 0)
        sqlite3_bind_blob(st, 11, blob, (int)blob_len, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 12, sealed, FEDGE_HASH_LEN, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return FEDGE_ERR_SQL;
    return fedge_audit_append_id(fx->db, "updates", sqlite3_last_insert_rowid(fx->db));
}

static int add_event(fixture *fx, int round, const char *device, const char *kind,
                     const char *rule, const char *detail)
{
    OK(sql(fx->db,
           "INSERT INTO events(at, round, device, kind, rule, detail) "
           "VALUES(%.1f, %d, %Q, %Q, %Q, %Q)",
           T0 + 100 * round + 50, round, device, kind, rule, detail));
    return fedge_audit_append_id(fx->db, "events", sqlite3_last_insert_rowid(fx->db));
}

static int open_round(fixture *fx, int round, const char *base, int n_selected)
{
    OK(sql(fx->db,
           "INSERT INTO rounds(id, opened_at, deadline, status, base_version, strategy, "
           "n_selected) VALUES(%d, %.1f, %.1f, 'open', %Q, 'dp-fedavg', %d)",
           round, T0 + 100 * round, T0 + 100 * round + 60, base, n_selected));
    return fedge_audit_append_id(fx->db, "rounds", round);
}

/* Every fixture round samples 3 of 5 devices at the fixture policy's z. */
#define FIXTURE_Q (3.0 / 5.0)

static int close_round(fixture *fx, int round, const char *new_version, int n_acc, int n_rej,
                       double eps)
{
    double rdp[FEDGE_DP_N_ORDERS];
    OK(fedge_policy_dp_round_rdp(fx->policy, FIXTURE_Q, rdp));
    OK(fedge_dp_ledger_append(fx->db, (uint32_t)round, FIXTURE_Q,
                              fedge_policy_dp_noise_multiplier(fx->policy),
                              fedge_policy_dp_clip_norm(fx->policy), rdp));
    OK(sql(fx->db,
           "UPDATE rounds SET closed_at = %.1f, status = 'closed', new_version = %Q, "
           "n_accepted = %d, n_rejected = %d, bytes_received = %d, accuracy = 0.6, "
           "epsilon = %.17g WHERE id = %d",
           T0 + 100 * round + 70, new_version, n_acc, n_rej, 1000 * (n_acc + n_rej), eps, round));
    return fedge_audit_append_id(fx->db, "rounds", round);
}

static int device_eps(fixture *fx, const char *device)
{
    double eps;
    fedge_dp_spent spent;
    OK(fedge_dp_ledger_spent(fx->db, device, &spent));
    OK(fedge_policy_dp_epsilon(fx->policy, spent.rdp, &eps));
    return sql(fx->db, "UPDATE devices SET epsilon_spent = %.17g WHERE id = %Q", eps, device);
}

static void fixture_free(fixture *fx)
{
    if (fx->db)
        sqlite3_close_v2(fx->db);
    fx->db = NULL;
    fedge_policy_free(fx->policy);
    fx->policy = NULL;
    mbedtls_pk_free(&fx->key);
    mbedtls_ctr_drbg_free(&fx->drbg);
    mbedtls_entropy_free(&fx->entropy);
}

static const char FIXTURE_POLICY[] =
    "name: fixture\n"
    "update:\n  max_norm: 5\n  allowed_regions: [eu]\n"
    "privacy:\n  enabled: true\n  clip_norm: 5\n  noise_multiplier: 1.1\n"
    "  epsilon_budget: 6\n  delta: 1e-5\n  device_epsilon_budget: 30\n";

/* Three rounds: 1 and 2 closed (2 with a refinement), 3 refused by the
 * privacy budget; dev-3 contributes in round 1, is revoked, and is refused
 * in round 2; dev-2's round-2 update is excluded as anomalous at close.
 * mixed: written up to round 1's signature in canon format FCN1, as a
 * fedge upgraded after round 1 would have. */
static int build_fixture(fixture *fx, const char *dir, int mixed)
{
    if (mixed)
        audit_test_write_format(FEDGE_AUDIT_FCN1);
    static const char pers[] = "fedge test_audit";
    memset(fx, 0, sizeof *fx);
    mbedtls_pk_init(&fx->key);
    mbedtls_entropy_init(&fx->entropy);
    mbedtls_ctr_drbg_init(&fx->drbg);
    snprintf(fx->dir, sizeof fx->dir, "%s", dir);
    snprintf(fx->db_path, sizeof fx->db_path, "%s/fedge.db", dir);
    snprintf(fx->priv, sizeof fx->priv, "%s/keys/aggregator.key", dir);
    snprintf(fx->pub, sizeof fx->pub, "%s/keys/aggregator.pub", dir);
    snprintf(fx->models, sizeof fx->models, "%s/models", dir);
    char keys_dir[128];
    snprintf(keys_dir, sizeof keys_dir, "%s/keys", dir);
    if (mkdir(keys_dir, 0700) != 0 || mkdir(fx->models, 0755) != 0)
        return FEDGE_ERR_IO;
    if (mbedtls_ctr_drbg_seed(&fx->drbg, mbedtls_entropy_func, &fx->entropy,
                              (const unsigned char *)pers, sizeof pers - 1) != 0)
        return FEDGE_ERR_CRYPTO;
    OK(fedge_audit_generate_keypair(fx->priv, fx->pub, &fx->drbg));
    OK(fedge_audit_load_private_key(fx->priv, &fx->key));
    OK(fedge_model_spec_parse("softmax:4-3", &fx->spec));
    char err[256];
    OK(fedge_policy_load_buffer(FIXTURE_POLICY, sizeof FIXTURE_POLICY - 1, "fixture.yaml",
                                &fx->policy, err, sizeof err));
    OK(fedge_store_open_db(fx->db_path, 0, &fx->db));

    OK(fedge_store_begin(fx->db));
    OK(sql(fx->db, "INSERT INTO meta(key, value) VALUES('model_spec', 'softmax:4-3')"));
    OK(sql(fx->db, "INSERT INTO devices(id, region, first_seen) VALUES ('dev-1', 'eu', %.1f),"
                   " ('dev-2', 'eu', %.1f), ('dev-3', 'eu', %.1f), ('dev-4', 'us', %.1f),"
                   " ('dev-5', 'eu', %.1f)", T0, T0, T0, T0, T0));
    OK(fedge_policy_record(fx->db, fx->policy));
    OK(add_model(fx, 0, 1, NULL, "init", 0, NULL));
    OK(fedge_store_commit(fx->db));

    /* Round 1. */
    double eps1, eps2, eps3;
    fedge_policy_decision d;
    fedge_dp_spent spent;
    OK(fedge_dp_ledger_spent(fx->db, NULL, &spent));
    OK(fedge_policy_budget_check(fx->policy, spent.rdp, FIXTURE_Q, &eps1, &d));
    if (d.decision != FEDGE_DECISION_ACCEPT)
        return FEDGE_ERR_INTERNAL;
    OK(fedge_store_begin(fx->db));
    OK(open_round(fx, 1, fx->v[0], 4));
    OK(add_update(fx, 1, "dev-1", 600, 1.25, "accepted", "all", "passed: L2 norm 1.25 <= 5", 11));
    OK(add_update(fx, 1, "dev-2", 450, 7.5, "clipped", "max_norm",
                  "L2 norm 7.5 exceeds max 5; clipped to 5", 12));
    OK(add_update(fx, 1, "dev-3", 300, 2.0, "accepted", "all", "passed: L2 norm 2 <= 5", 13));
    OK(add_update(fx, 1, "dev-4", 500, 1.0, "rejected", "region",
                  "device dev-4 region 'us' is not in the allowed regions [eu]", 14));
    OK(add_model(fx, 1, 2, fx->v[0], "aggregate", 1, NULL));
    OK(close_round(fx, 1, fx->v[1], 3, 1, eps1));
    OK(device_eps(fx, "dev-1"));
    OK(device_eps(fx, "dev-2"));
    OK(device_eps(fx, "dev-3"));
    OK(fedge_audit_sign_head(fx->db, 1, &fx->key, &fx->drbg));
    OK(fedge_store_commit(fx->db));
    if (mixed)
        audit_test_write_format(0);

    /* dev-3 is revoked ("forget this device"). */
    OK(fedge_store_begin(fx->db));
    OK(sql(fx->db, "UPDATE devices SET status = 'revoked' WHERE id = 'dev-3'"));
    OK(add_event(fx, 1, "dev-3", "device_status", NULL, "dev-3: allowed -> revoked (operator)"));
    OK(fedge_store_commit(fx->db));

    /* Round 2, then a refinement. */
    OK(fedge_dp_ledger_spent(fx->db, NULL, &spent));
    OK(fedge_policy_budget_check(fx->policy, spent.rdp, FIXTURE_Q, &eps2, &d));
    if (d.decision != FEDGE_DECISION_ACCEPT)
        return FEDGE_ERR_INTERNAL;
    OK(fedge_store_begin(fx->db));
    OK(open_round(fx, 2, fx->v[1], 4));
    OK(add_update(fx, 2, "dev-1", 610, 1.5, "accepted", "all", "passed: L2 norm 1.5 <= 5", 21));
    OK(add_update(fx, 2, "dev-2", 440, 4.9, "accepted", "all", "passed: L2 norm 4.9 <= 5", 22));
    OK(add_update(fx, 2, "dev-3", 310, 1.1, "rejected", "device_status",
                  "device dev-3 was revoked; its updates are refused", 23));
    OK(add_update(fx, 2, "dev-5", 520, 1.4, "accepted", "all", "passed: L2 norm 1.4 <= 5", 24));
    /* At close dev-2's update is excluded (a second, permitted entry). */
    OK(sql(fx->db, "UPDATE updates SET decision = 'rejected', rule = 'anomaly', reason = "
                   "'cosine -0.62 to the mean of the other 2 updates is below 0' "
                   "WHERE round = 2 AND device = 'dev-2'"));
    OK(fedge_audit_append_id(fx->db, "updates", 6));
    OK(add_model(fx, 2, 3, fx->v[1], "aggregate", 2, NULL));
    OK(close_round(fx, 2, fx->v[2], 2, 2, eps2));
    OK(device_eps(fx, "dev-1"));
    OK(device_eps(fx, "dev-5"));
    OK(add_model(fx, 3, 4, fx->v[2], "refine", 2,
                 "{\"command\": \"fedge-cluster refine\", \"epochs\": 1}"));
    OK(add_event(fx, 2, NULL, "refine", "refine_every", "refined round 2 model on 2 ranks"));
    OK(fedge_audit_sign_head(fx->db, 2, &fx->key, &fx->drbg));
    OK(fedge_store_commit(fx->db));

    /* Round 3 would exceed the budget: refused, logged, signed. */
    OK(fedge_dp_ledger_spent(fx->db, NULL, &spent));
    OK(fedge_policy_budget_check(fx->policy, spent.rdp, FIXTURE_Q, &eps3, &d));
    if (d.decision != FEDGE_DECISION_REJECT)
        return FEDGE_ERR_INTERNAL;
    OK(fedge_store_begin(fx->db));
    OK(sql(fx->db,
           "INSERT INTO rounds(id, opened_at, deadline, closed_at, status, base_version, "
           "strategy, n_selected, reason) VALUES(3, %.1f, %.1f, %.1f, 'refused', %Q, "
           "'dp-fedavg', 0, %Q)",
           T0 + 300, T0 + 300, T0 + 300, fx->v[3], d.reason));
    OK(fedge_audit_append_id(fx->db, "rounds", 3));
    OK(add_event(fx, 3, NULL, "round_refused", "privacy_budget", d.reason));
    OK(fedge_audit_sign_head(fx->db, 3, &fx->key, &fx->drbg));
    OK(fedge_store_commit(fx->db));
    return FEDGE_OK;
}

/* ---- cmocka plumbing ---------------------------------------------------------- */

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/fedge-test-audit-XXXXXX");
    if (!fx || !mkdtemp(dir)) {
        free(fx);
        return -1;
    }
    if (build_fixture(fx, dir, 0) != FEDGE_OK) {
        fixture_free(fx);
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

/* The fixture as fedge wrote it before FCN2: every entry FCN1. */
static int setup_fcn1(void **state)
{
    audit_test_write_format(FEDGE_AUDIT_FCN1);
    int rc = setup(state);
    audit_test_write_format(0);
    return rc;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    audit_test_write_format(0);
    char cmd[128];
    fixture_free(fx);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    int rc = system(cmd);
    free(fx);
    return rc == 0 ? 0 : -1;
}

static int verify(fixture *fx, fedge_audit_report *rep)
{
    return fedge_audit_verify(fx->db, fx->pub, fx->dir, rep);
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle)) {
        print_error("'%s' does not contain '%s'\n", haystack, needle);
        fail();
    }
}

/* The first failure is of `kind` on tbl/key and its message says `text`. */
static void expect_first(const fedge_audit_report *rep, fedge_audit_fail_kind kind,
                         const char *tbl, const char *key, const char *text)
{
    assert_false(rep->ok);
    assert_true(rep->n_failures >= 1);
    const fedge_audit_failure *f = &rep->failures[0];
    if (f->kind != kind) {
        print_error("first failure is %s (%s), want %s\n", fedge_audit_fail_name(f->kind),
                    f->message, fedge_audit_fail_name(kind));
        fail();
    }
    if (tbl)
        assert_string_equal(f->table, tbl);
    if (key)
        assert_string_equal(f->row_key, key);
    assert_contains(f->message, text);
}

static int64_t scalar(sqlite3 *db, const char *q)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, q, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_untouched_database_verifies(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    assert_int_equal(verify(fx, &rep), FEDGE_OK);
    assert_true(rep.ok);
    assert_int_equal(rep.n_failures, 0);
    /* 2 policy/revoke events + 2 more events, 9 update entries (8 + 1 exclusion),
     * 4 models, 5 round entries, 2 privacy ledger rows. */
    assert_int_equal(rep.n_entries, scalar(fx->db, "SELECT count(*) FROM audit"));
    assert_int_equal(rep.n_entries, 4 + 9 + 4 + 5 + 2);
    assert_int_equal(rep.n_heads, 3);
    assert_int_equal(rep.n_files, 4);
    assert_int_equal(rep.last_head_round, 3);
    assert_int_equal(rep.last_head_seq, rep.last_seq);
    assert_int_equal(rep.unsigned_tail, 0);
    /* Reopening read-only, as fedge-audit does, gives the same answer; the
     * model folder itself also works as the root of relative paths. */
    sqlite3 *ro = NULL;
    assert_int_equal(fedge_store_open_db(fx->db_path, 1, &ro), FEDGE_OK);
    assert_int_equal(fedge_audit_verify(ro, fx->pub, fx->models, &rep), FEDGE_OK);
    assert_int_equal(rep.n_files, 4);
    sqlite3_close_v2(ro);
    /* From elsewhere, with no root, the relative paths do not resolve. */
    assert_int_equal(fedge_audit_verify(fx->db, fx->pub, "/nonexistent", &rep),
                     FEDGE_ERR_AUDIT_FILE);
    assert_int_equal(rep.n_failures, 4);
    assert_int_equal(rep.failures[0].kind, FEDGE_AUDIT_FAIL_FILE_MISSING);
}

static void test_canonical_bytes_layout(void **state)
{
    fixture *fx = *state;
    uint8_t *canon = NULL;
    size_t len = 0;
    assert_int_equal(sql(fx->db, "INSERT INTO events(id, at, round, device, kind, rule, detail) "
                                 "VALUES(77, 1.5, NULL, 'd', 'k', NULL, 'hi')"),
                     FEDGE_OK);
    assert_int_equal(fedge_audit_canon_format(fx->db, "events", "77", FEDGE_AUDIT_FCN1, &canon, &len), FEDGE_OK);
    static const uint8_t want[] = {
        'F', 'C', 'N', '1', 6, 'e', 'v', 'e', 'n', 't', 's', 2, 0, '7', '7', 7, 0,
        2, 'i', 'd', 1, 77, 0, 0, 0, 0, 0, 0, 0,
        2, 'a', 't', 2, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f, /* 1.5 */
        5, 'r', 'o', 'u', 'n', 'd', 0,
        6, 'd', 'e', 'v', 'i', 'c', 'e', 3, 1, 0, 0, 0, 'd',
        4, 'k', 'i', 'n', 'd', 3, 1, 0, 0, 0, 'k',
        4, 'r', 'u', 'l', 'e', 0,
        6, 'd', 'e', 't', 'a', 'i', 'l', 3, 2, 0, 0, 0, 'h', 'i'};
    assert_int_equal(len, sizeof want);
    assert_memory_equal(canon, want, sizeof want);
    free(canon);
    /* FCN2: the same bytes for a table it adds nothing to, but the mark */
    assert_int_equal(fedge_audit_canon(fx->db, "events", "77", &canon, &len), FEDGE_OK);
    assert_int_equal(len, sizeof want);
    assert_memory_equal(canon, "FCN2", 4);
    assert_memory_equal(canon + 4, want + 4, sizeof want - 4);
    free(canon);

    /* The delta BLOB enters as its SHA-256 (tag 5); in FCN2 the hash of the
     * sealed frame follows it (tag 4, 32 bytes). */
    assert_int_equal(fedge_audit_canon_format(fx->db, "updates", "1", FEDGE_AUDIT_FCN1, &canon, &len), FEDGE_OK);
    assert_int_equal(canon[len - 32 - 1], 5);
    assert_memory_equal(canon + len - 32 - 1 - 5 - 1, "\5delta", 6);
    free(canon);
    assert_int_equal(fedge_audit_canon(fx->db, "updates", "1", &canon, &len), FEDGE_OK);
    assert_memory_equal(canon + len - 32 - 4 - 1 - 13 - 1, "\15sealed_sha256\4\40\0\0\0", 19);
    assert_memory_equal(canon + len - 32 - 4 - 1 - 13 - 1 - 32 - 1 - 5 - 1, "\5delta\5", 7);
    free(canon);

    /* An updates row, exact, in both formats: FCN2 enters sealed_sha256
     * always (NULL too), the training metrics only when not NULL. */
#define UPD_HEAD(mark, n) 'F', 'C', 'N', mark, 7, 'u', 'p', 'd', 'a', 't', 'e', 's', 2, 0, '7', '8', n, 0
#define UPD_BASE                                                                                            \
    2, 'i', 'd', 1, 78, 0, 0, 0, 0, 0, 0, 0,                                                                \
    5, 'r', 'o', 'u', 'n', 'd', 1, 1, 0, 0, 0, 0, 0, 0, 0,                                                  \
    6, 'd', 'e', 'v', 'i', 'c', 'e', 3, 1, 0, 0, 0, 'd',                                                    \
    11, 'r', 'e', 'c', 'e', 'i', 'v', 'e', 'd', '_', 'a', 't', 2, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f,             \
    9, 'n', '_', 's', 'a', 'm', 'p', 'l', 'e', 's', 1, 3, 0, 0, 0, 0, 0, 0, 0,                              \
    8, 'e', 'n', 'c', 'o', 'd', 'i', 'n', 'g', 3, 4, 0, 0, 0, 'f', 'p', '3', '2',                           \
    5, 'b', 'y', 't', 'e', 's', 1, 10, 0, 0, 0, 0, 0, 0, 0,                                                 \
    7, 'c', 'o', 'u', 'n', 't', 'e', 'r', 1, 4, 0, 0, 0, 0, 0, 0, 0,                                        \
    4, 'n', 'o', 'r', 'm', 0,                                                                               \
    8, 'd', 'e', 'c', 'i', 's', 'i', 'o', 'n', 3, 8, 0, 0, 0, 'r', 'e', 'j', 'e', 'c', 't', 'e', 'd',       \
    4, 'r', 'u', 'l', 'e', 3, 1, 0, 0, 0, 'r',                                                              \
    6, 'r', 'e', 'a', 's', 'o', 'n', 3, 1, 0, 0, 0, 'x',                                                    \
    5, 'd', 'e', 'l', 't', 'a', 0
#define UPD_SEALED 13, 's', 'e', 'a', 'l', 'e', 'd', '_', 's', 'h', 'a', '2', '5', '6'
#define UPD_TRAIN 10, 't', 'r', 'a', 'i', 'n', '_', 'l', 'o', 's', 's', 2, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f /* 0.5 */
    static const uint8_t upd1[] = {UPD_HEAD('1', 14), UPD_BASE, UPD_TRAIN};
    static const uint8_t upd2[] = {UPD_HEAD('2', 15), UPD_BASE, UPD_SEALED, 4, 32, 0, 0, 0,
                                   0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                   16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, UPD_TRAIN};
    static const uint8_t upd2_null[] = {UPD_HEAD('2', 15), UPD_BASE, UPD_SEALED, 0, UPD_TRAIN};
    assert_int_equal(sql(fx->db, "INSERT INTO updates(id, round, device, received_at, n_samples, encoding, bytes,"
                                 " counter, norm, decision, rule, reason, delta, sealed_sha256, train_loss)"
                                 " VALUES(78, 1, 'd', 1.5, 3, 'fp32', 10, 4, NULL, 'rejected', 'r', 'x', NULL,"
                                 " X'000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 0.5)"),
                     FEDGE_OK);
    assert_int_equal(fedge_audit_canon_format(fx->db, "updates", "78", FEDGE_AUDIT_FCN1, &canon, &len), FEDGE_OK);
    assert_int_equal(len, sizeof upd1);
    assert_memory_equal(canon, upd1, sizeof upd1);
    free(canon);
    assert_int_equal(fedge_audit_canon(fx->db, "updates", "78", &canon, &len), FEDGE_OK);
    assert_int_equal(len, sizeof upd2);
    assert_memory_equal(canon, upd2, sizeof upd2);
    free(canon);
    assert_int_equal(sql(fx->db, "UPDATE updates SET sealed_sha256 = NULL WHERE id = 78"), FEDGE_OK);
    assert_int_equal(fedge_audit_canon_format(fx->db, "updates", "78", FEDGE_AUDIT_FCN2, &canon, &len), FEDGE_OK);
    assert_int_equal(len, sizeof upd2_null);
    assert_memory_equal(canon, upd2_null, sizeof upd2_null);
    free(canon);

    assert_int_equal(fedge_audit_canon(fx->db, "events", "999", &canon, &len),
                     FEDGE_ERR_NOT_FOUND);
    assert_int_equal(fedge_audit_canon(fx->db, "devices", "dev-1", &canon, &len),
                     FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_audit_canon(fx->db, "events", "07", &canon, &len),
                     FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_audit_canon(fx->db, "events", "7x", &canon, &len),
                     FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_audit_canon_format(fx->db, "events", "77", 0, &canon, &len), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_audit_canon_format(fx->db, "events", "77", FEDGE_AUDIT_FCN_LATEST + 1, &canon, &len),
                     FEDGE_ERR_INVALID_ARG);
}

static void test_bad_appends_change_nothing(void **state)
{
    fixture *fx = *state;
    int64_t before = scalar(fx->db, "SELECT count(*) FROM audit");
    assert_int_equal(fedge_audit_append(fx->db, "devices", "dev-1"), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_audit_append(fx->db, "updates", "abc"), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_audit_append(fx->db, "updates", "4242"), FEDGE_ERR_NOT_FOUND);
    assert_int_equal(fedge_audit_append(fx->db, "models", ""), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(scalar(fx->db, "SELECT count(*) FROM audit"), before);
    /* The head is already signed: signing again without a new entry is refused. */
    assert_int_equal(fedge_audit_sign_head(fx->db, 3, &fx->key, &fx->drbg), FEDGE_ERR_DUPLICATE);
    assert_int_equal(scalar(fx->db, "SELECT count(*) FROM audit_heads"), 3);
    fedge_audit_report rep;
    assert_int_equal(verify(fx, &rep), FEDGE_OK);
}

/* An updates row written with its body's SHA-256 (as the aggregator's
 * ingest does) and appended with fedge_audit_append_body: the entry is the
 * one fedge_audit_append gives (the body read back and hashed); a hash that
 * is not the row's is refused and appends nothing. */
static int64_t insert_update_body(fixture *fx, const uint8_t *body, size_t len, const uint8_t *sha)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(fx->db,
                           "INSERT INTO updates(round, device, received_at, n_samples, encoding, bytes,"
                           " counter, norm, decision, rule, reason, delta, delta_sha256)"
                           " VALUES(2, 'dev-9', 1.0, 5, 'fp32', 100, 9, 0.5, ?1, 'r', 'x', ?2, ?3)",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, body ? "accepted" : "rejected", -1, SQLITE_STATIC);
    if (body) {
        sqlite3_bind_blob(st, 2, body, (int)len, SQLITE_STATIC);
        sqlite3_bind_blob(st, 3, sha, FEDGE_HASH_LEN, SQLITE_STATIC);
    }
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? sqlite3_last_insert_rowid(fx->db) : -1;
}

static void expect_last_entry_is_canon(fixture *fx, const char *key)
{
    uint8_t *canon = NULL;
    size_t len = 0;
    sqlite3_stmt *st = NULL;
    assert_int_equal(fedge_audit_canon(fx->db, "updates", key, &canon, &len), FEDGE_OK);
    assert_int_equal(sqlite3_prepare_v2(fx->db, "SELECT row_key, canon FROM audit ORDER BY seq DESC LIMIT 1", -1,
                                        &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), key);
    assert_int_equal(sqlite3_column_bytes(st, 1), (int)len);
    assert_memory_equal(sqlite3_column_blob(st, 1), canon, len);
    sqlite3_finalize(st);
    free(canon);
}

static void test_append_body_vouched(void **state)
{
    fixture *fx = *state;
    uint8_t body[3000], sha[FEDGE_HASH_LEN], other[FEDGE_HASH_LEN];
    char key[24];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (uint8_t)(i * 7 + 1);
    assert_int_equal(fedge_sha256(body, sizeof body, sha), FEDGE_OK);
    memcpy(other, sha, sizeof other);
    other[0] ^= 1;

    int64_t id = insert_update_body(fx, body, sizeof body, sha);
    assert_true(id > 0);
    snprintf(key, sizeof key, "%" PRId64, id);
    int64_t before = scalar(fx->db, "SELECT count(*) FROM audit");
    assert_int_equal(fedge_audit_append_body(fx->db, "updates", key, other), FEDGE_ERR_AUDIT_CHAIN);
    assert_int_equal(scalar(fx->db, "SELECT count(*) FROM audit"), before);
    assert_int_equal(fedge_audit_append_body(fx->db, "updates", key, sha), FEDGE_OK);
    assert_int_equal(scalar(fx->db, "SELECT count(*) FROM audit"), before + 1);
    expect_last_entry_is_canon(fx, key);

    /* a refused update: no body, the NULL enters as with fedge_audit_append */
    id = insert_update_body(fx, NULL, 0, NULL);
    assert_true(id > 0);
    snprintf(key, sizeof key, "%" PRId64, id);
    assert_int_equal(fedge_audit_append_body(fx->db, "updates", key, sha), FEDGE_OK);
    expect_last_entry_is_canon(fx, key);

    assert_int_equal(fedge_audit_append_body(fx->db, "events", "1", sha), FEDGE_ERR_INVALID_ARG);
    assert_int_equal(fedge_audit_append_body(fx->db, "updates", key, NULL), FEDGE_ERR_INVALID_ARG);
}

static void test_tamper_update_row(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    assert_int_equal(sql(fx->db, "UPDATE updates SET n_samples = 9999 WHERE id = 2"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    expect_first(&rep, FEDGE_AUDIT_FAIL_ROW_MODIFIED, "updates", "2",
                 "column n_samples is 9999 in the table but 450 in the audit log");
    assert_int_equal(rep.n_failures, 1);
}

/* The hash of the sealed frame, with which the daemon tells an honest
 * resend from a replay, is in the chain (FCN2): changed or cleared, the row
 * fails as modified, named. */
static void test_tamper_sealed_sha256(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    assert_int_equal(sql(fx->db, "UPDATE updates SET sealed_sha256 = zeroblob(32) WHERE id = 2"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    expect_first(&rep, FEDGE_AUDIT_FAIL_ROW_MODIFIED, "updates", "2",
                 "updates row 2 was modified after audit entry 5: column sealed_sha256 is <32 bytes 0000000000000000...>");
    assert_int_equal(rep.n_failures, 1);
    assert_int_equal(sql(fx->db, "UPDATE updates SET sealed_sha256 = NULL WHERE id = 2"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    expect_first(&rep, FEDGE_AUDIT_FAIL_ROW_MODIFIED, "updates", "2", "column sealed_sha256 is NULL in the table");
    assert_int_equal(rep.n_failures, 1);
}

#define N_FCN1 "SELECT count(*) FROM audit WHERE substr(canon, 1, 4) = X'46434E31'"
#define N_FCN2 "SELECT count(*) FROM audit WHERE substr(canon, 1, 4) = X'46434E32'"

/* A log written before FCN2 verifies as logged, and a change to what its
 * entries cover is still caught; its rows' sealed_sha256 stays outside
 * (docs/AUDIT.md "Canon versions"). */
static void test_fcn1_log_verifies(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    assert_int_equal(scalar(fx->db, N_FCN1), scalar(fx->db, "SELECT count(*) FROM audit"));
    assert_int_equal(verify(fx, &rep), FEDGE_OK);
    assert_int_equal(rep.n_entries, 4 + 9 + 4 + 5 + 2);
    assert_int_equal(sql(fx->db, "UPDATE updates SET sealed_sha256 = zeroblob(32) WHERE id = 2"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_OK);
    assert_int_equal(sql(fx->db, "UPDATE updates SET n_samples = 9999 WHERE id = 2"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    expect_first(&rep, FEDGE_AUDIT_FAIL_ROW_MODIFIED, "updates", "2",
                 "column n_samples is 9999 in the table but 450 in the audit log");
    assert_int_equal(rep.n_failures, 1);
}

/* An FCN1 log the upgraded daemon goes on writing: round 4 opens and takes
 * two updates before the upgrade, and after it refuses one of them at
 * close (a row logged in FCN1, then FCN2), takes another and closes. The
 * mixed log verifies; the sealed_sha256 of every row whose latest entry is
 * FCN2 is covered. */
static void test_mixed_log(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    audit_test_write_format(FEDGE_AUDIT_FCN1);
    assert_int_equal(open_round(fx, 4, fx->v[3], 3), FEDGE_OK);
    assert_int_equal(add_update(fx, 4, "dev-1", 600, 1.0, "accepted", "all", "passed", 41), FEDGE_OK);
    assert_int_equal(add_update(fx, 4, "dev-5", 500, 1.2, "accepted", "all", "passed", 42), FEDGE_OK);
    int64_t fcn1_entries = scalar(fx->db, N_FCN1);
    audit_test_write_format(0);
    assert_int_equal(add_update(fx, 4, "dev-2", 400, 1.1, "accepted", "all", "passed", 43), FEDGE_OK);
    assert_int_equal(sql(fx->db, "UPDATE updates SET decision = 'rejected', rule = 'anomaly', reason = 'far'"
                                 " WHERE round = 4 AND device = 'dev-5'"), FEDGE_OK);
    int64_t relogged = scalar(fx->db, "SELECT id FROM updates WHERE round = 4 AND device = 'dev-5'");
    assert_int_equal(fedge_audit_append_id(fx->db, "updates", relogged), FEDGE_OK);
    assert_int_equal(close_round(fx, 4, fx->v[3], 2, 1, 5.0), FEDGE_OK);
    assert_int_equal(fedge_audit_sign_head(fx->db, 4, &fx->key, &fx->drbg), FEDGE_OK);
    assert_int_equal(scalar(fx->db, N_FCN1), fcn1_entries);
    assert_int_equal(scalar(fx->db, N_FCN2), 4); /* dev-2, dev-5 again, the ledger row, the round closed */
    assert_int_equal(verify(fx, &rep), FEDGE_OK);

    /* what every command reads from such a log: see audit_cli.sh (fixture) */
    int64_t fresh = scalar(fx->db, "SELECT id FROM updates WHERE round = 4 AND device = 'dev-2'");
    int64_t old = scalar(fx->db, "SELECT id FROM updates WHERE round = 4 AND device = 'dev-1'");
    char q[160], k1[24], k2[24];
    snprintf(q, sizeof q, "UPDATE updates SET sealed_sha256 = NULL WHERE id IN (%" PRId64 ", %" PRId64 ", %" PRId64 ")",
             fresh, relogged, old);
    assert_int_equal(sql(fx->db, "%s", q), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    assert_int_equal(rep.n_failures, 2); /* the FCN1 row (dev-1) is not covered */
    snprintf(k1, sizeof k1, "%" PRId64, relogged);
    snprintf(k2, sizeof k2, "%" PRId64, fresh);
    expect_first(&rep, FEDGE_AUDIT_FAIL_ROW_MODIFIED, "updates", k2, "column sealed_sha256 is NULL in the table");
    assert_int_equal(rep.failures[1].kind, FEDGE_AUDIT_FAIL_ROW_MODIFIED);
    assert_string_equal(rep.failures[1].row_key, k1);
    assert_contains(rep.failures[1].message, "column sealed_sha256 is NULL in the table");
}

/* Once the chain holds an FCN2 entry, an FCN1 entry after it (appended by
 * someone with write access, to leave a row's sealed_sha256 outside the
 * chain) is a downgraded entry, named; so is an FCN2 row logged again in
 * FCN1. */
static void test_downgraded_entry(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    int64_t seq = scalar(fx->db, "SELECT max(seq) FROM audit") + 1;
    audit_test_write_format(FEDGE_AUDIT_FCN1);
    assert_int_equal(add_update(fx, 3, "dev-1", 100, 1.0, "rejected", "round", "late", 31), FEDGE_OK);
    assert_int_equal(sql(fx->db, "UPDATE updates SET sealed_sha256 = zeroblob(32) WHERE id = (SELECT max(id) FROM updates)"),
                     FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    char text[256];
    snprintf(text, sizeof text, "audit entry %" PRId64 " (updates 9) is in canon format FCN1 after entry 1, the chain's"
             " first FCN2 entry: every entry from there on is FCN2 (a downgraded entry)", seq);
    expect_first(&rep, FEDGE_AUDIT_FAIL_CANON, "updates", "9", text);
    assert_int_equal(rep.failures[0].seq, seq);
    assert_int_equal(rep.n_failures, 1);

    assert_int_equal(fedge_audit_append(fx->db, "updates", "2"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    assert_int_equal(rep.n_failures, 3);
    assert_int_equal(rep.failures[1].kind, FEDGE_AUDIT_FAIL_CANON);
    assert_string_equal(rep.failures[1].row_key, "2");
    assert_int_equal(rep.failures[2].kind, FEDGE_AUDIT_FAIL_REWRITE);
    assert_contains(rep.failures[2].message, "the later entry is in canon format FCN1, the earlier in FCN2");
}

static void test_tamper_update_delta_blob(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    assert_int_equal(sql(fx->db, "UPDATE updates SET delta = zeroblob(124) WHERE id = 1"),
                     FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    expect_first(&rep, FEDGE_AUDIT_FAIL_ROW_MODIFIED, "updates", "1", "column delta");
}

static void test_tamper_delete_row(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    assert_int_equal(sql(fx->db, "DELETE FROM updates WHERE id = 4"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    expect_first(&rep, FEDGE_AUDIT_FAIL_ROW_DELETED, "updates", "4", "updates row 4 was deleted");
    assert_int_equal(rep.n_failures, 1);
}

static void test_tamper_swap_model_file(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    char a[256], b[256], cmd[600];
    snprintf(a, sizeof a, "%s/%s.fmdl", fx->models, fx->v[1]);
    snprintf(b, sizeof b, "%s/%s.fmdl", fx->models, fx->v[2]);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", a, b);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_FILE);
    expect_first(&rep, FEDGE_AUDIT_FAIL_FILE_MISMATCH, "models", fx->v[2], "the log says");
    assert_string_equal(rep.failures[0].path, b);
    assert_int_equal(rep.n_failures, 1);

    assert_int_equal(unlink(a), 0);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_FILE);
    expect_first(&rep, FEDGE_AUDIT_FAIL_FILE_MISSING, "models", fx->v[1], "cannot be read");
    assert_int_equal(rep.n_failures, 2);
}

static void test_tamper_delete_audit_entry(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    assert_int_equal(sql(fx->db, "DELETE FROM audit WHERE seq = 5"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    expect_first(&rep, FEDGE_AUDIT_FAIL_CHAIN_LINK, NULL, NULL,
                 "audit entry 6 follows entry 4: entries between them were deleted");
    assert_int_equal(rep.failures[0].seq, 6);
}

static void test_tamper_truncate_tail(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    assert_int_equal(sql(fx->db, "DELETE FROM audit WHERE seq > (SELECT max(seq) - 2 FROM audit)"),
                     FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_SIGNATURE);
    expect_first(&rep, FEDGE_AUDIT_FAIL_HEAD, "audit_heads", "3",
                 "which is missing (the chain ends at 22): the chain was truncated");
    /* The rows whose entries went with the tail are named too. */
    int saw_unaudited = 0;
    for (size_t i = 1; i < rep.n_failures && i < FEDGE_AUDIT_MAX_FAILURES; i++)
        saw_unaudited |= rep.failures[i].kind == FEDGE_AUDIT_FAIL_ROW_UNAUDITED &&
                         strcmp(rep.failures[i].table, "rounds") == 0 &&
                         strcmp(rep.failures[i].row_key, "3") == 0;
    assert_true(saw_unaudited);
}

static void test_tamper_rewrite_and_reaudit(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    /* Change a row, then append a fresh entry for it as if the aggregator had. */
    assert_int_equal(sql(fx->db, "UPDATE updates SET norm = 0.1 WHERE id = 2"), FEDGE_OK);
    assert_int_equal(fedge_audit_append(fx->db, "updates", "2"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    expect_first(&rep, FEDGE_AUDIT_FAIL_REWRITE, "updates", "2",
                 "column norm changed from 7.5 to 0.10000000000000001");
    assert_int_equal(rep.unsigned_tail, 1);
}

static void test_tamper_rebuilt_chain(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    /* Rebuild the whole chain around a changed row: every hash is right, the
     * signed heads are not. */
    assert_int_equal(sql(fx->db, "UPDATE updates SET device = 'dev-9' WHERE id = 3"), FEDGE_OK);
    assert_int_equal(sql(fx->db, "CREATE TEMP TABLE old AS SELECT seq, tbl, row_key FROM audit"),
                     FEDGE_OK);
    assert_int_equal(sql(fx->db, "DELETE FROM audit"), FEDGE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(fx->db, "SELECT tbl, row_key FROM old ORDER BY seq", -1,
                                        &st, NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        char tbl[16], key[80];
        snprintf(tbl, sizeof tbl, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(key, sizeof key, "%s", (const char *)sqlite3_column_text(st, 1));
        assert_int_equal(fedge_audit_append(fx->db, tbl, key), FEDGE_OK);
    }
    sqlite3_finalize(st);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_SIGNATURE);
    expect_first(&rep, FEDGE_AUDIT_FAIL_HEAD, "audit_heads", "1", "the chain was rewritten");
}

static void test_tamper_signatures(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    /* A changed signature byte (always a change, whatever the byte was). */
    assert_int_equal(sql(fx->db, "UPDATE audit_heads SET signature = substr(signature, 1, 20) || "
                                 "CASE WHEN substr(signature, 21, 1) = X'00' THEN X'01' "
                                 "ELSE X'00' END || substr(signature, 22) WHERE round = 2"),
                     FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_SIGNATURE);
    expect_first(&rep, FEDGE_AUDIT_FAIL_SIGNATURE, "audit_heads", "2",
                 "does not verify with the public key");

    /* Another key's public half rejects every head. */
    char other_priv[160], other_pub[160];
    snprintf(other_priv, sizeof other_priv, "%s/keys/other.key", fx->dir);
    snprintf(other_pub, sizeof other_pub, "%s/keys/other.pub", fx->dir);
    assert_int_equal(fedge_audit_generate_keypair(other_priv, other_pub, &fx->drbg), FEDGE_OK);
    assert_int_equal(fedge_audit_verify(fx->db, other_pub, fx->models, &rep),
                     FEDGE_ERR_AUDIT_SIGNATURE);
    assert_int_equal(rep.n_failures, 3);

    /* A deleted head leaves its round unsigned. */
    assert_int_equal(sql(fx->db, "DELETE FROM audit_heads WHERE round = 2"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    expect_first(&rep, FEDGE_AUDIT_FAIL_UNSIGNED_ROUND, "rounds", "2",
                 "round 2 is closed but no signed head covers it");
}

static void test_tamper_insert_behind_back(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    assert_int_equal(sql(fx->db, "INSERT INTO events(at, kind, detail) VALUES(1, 'x', 'forged')"),
                     FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    expect_first(&rep, FEDGE_AUDIT_FAIL_ROW_UNAUDITED, "events", "5",
                 "events row 5 has no audit entry");
    /* An entry rewritten in place breaks its own hash. */
    assert_int_equal(sql(fx->db, "DELETE FROM events WHERE id = 5"), FEDGE_OK);
    assert_int_equal(sql(fx->db, "UPDATE audit SET canon = canon || X'00' WHERE seq = 3"),
                     FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    expect_first(&rep, FEDGE_AUDIT_FAIL_ROW_HASH, NULL, NULL,
                 "audit entry 3 (rounds 1): row_hash is not SHA-256(prev_hash || canon)");
}

static void test_key_files(void **state)
{
    fixture *fx = *state;
    mbedtls_pk_context pk;
    /* Overwriting is refused; a readable private key is refused. */
    assert_int_equal(fedge_audit_generate_keypair(fx->priv, fx->pub, &fx->drbg),
                     FEDGE_ERR_DUPLICATE);
    struct stat st;
    assert_int_equal(stat(fx->priv, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(chmod(fx->priv, 0644), 0);
    mbedtls_pk_init(&pk);
    assert_int_equal(fedge_audit_load_private_key(fx->priv, &pk), FEDGE_ERR_CONFIG_PERMS);
    mbedtls_pk_free(&pk);
    mbedtls_pk_init(&pk);
    assert_int_equal(fedge_audit_load_public_key(fx->db_path, &pk), FEDGE_ERR_CRYPTO);
    mbedtls_pk_free(&pk);
    mbedtls_pk_init(&pk);
    assert_int_equal(fedge_audit_load_public_key(fx->pub, &pk), FEDGE_OK);
    mbedtls_pk_free(&pk);
    char missing[160];
    snprintf(missing, sizeof missing, "%s/nope.pub", fx->dir);
    fedge_audit_report rep;
    assert_int_equal(fedge_audit_verify(fx->db, missing, fx->models, &rep), FEDGE_ERR_NOT_FOUND);
    assert_int_equal(fedge_audit_verify(fx->db, fx->db_path, fx->models, &rep), FEDGE_ERR_CRYPTO);
}

/* ---- signing-key rotation ---- */

static void any_failure_contains(const fedge_audit_report *rep, const char *text)
{
    for (size_t i = 0; i < rep->n_failures && i < FEDGE_AUDIT_MAX_FAILURES; i++)
        if (strstr(rep->failures[i].message, text))
            return;
    print_error("no failure says '%s'; the first: %s\n", text, rep->n_failures ? rep->failures[0].message : "-");
    fail();
}

/* keys/NAME.key and .pub, the private key loaded into pk */
static void new_key(fixture *fx, const char *name, mbedtls_pk_context *pk, char *pub, size_t cap)
{
    char priv[200];
    snprintf(priv, sizeof priv, "%s/keys/%s.key", fx->dir, name);
    snprintf(pub, cap, "%s/keys/%s.pub", fx->dir, name);
    assert_int_equal(fedge_audit_generate_keypair(priv, pub, &fx->drbg), FEDGE_OK);
    mbedtls_pk_init(pk);
    assert_int_equal(fedge_audit_load_private_key(priv, pk), FEDGE_OK);
}

/* an audited event and a head signed by key */
static void signed_round(fixture *fx, mbedtls_pk_context *key)
{
    assert_int_equal(add_event(fx, 3, NULL, "note", "operator", "after the rotation"), FEDGE_OK);
    assert_int_equal(fedge_audit_sign_head(fx->db, 3, key, &fx->drbg), FEDGE_OK);
}

static void test_rotation_verifies(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    mbedtls_pk_context neu;
    char new_pub[200], err[512] = "", fp[FEDGE_HASH_HEX_LEN];
    int64_t seq = 0;
    new_key(fx, "new", &neu, new_pub, sizeof new_pub);
    assert_int_equal(fedge_audit_rotate_key(fx->db, &fx->key, &neu, &fx->drbg, &seq, err, sizeof err), FEDGE_OK);
    assert_int_equal(seq, scalar(fx->db, "SELECT max(seq) FROM audit"));
    assert_int_equal(scalar(fx->db, "SELECT count(*) FROM audit_heads WHERE seq = (SELECT max(seq) FROM audit)"), 1);
    signed_round(fx, &neu);
    assert_int_equal(verify(fx, &rep), FEDGE_OK);
    assert_int_equal(rep.n_rotations, 1);
    assert_int_equal(fedge_audit_key_fingerprint(&neu, fp), FEDGE_OK);
    assert_string_equal(rep.key_in_force, fp);
    /* the old key is retired: it cannot rotate again, the new one can */
    assert_int_equal(fedge_audit_rotate_key(fx->db, &fx->key, &neu, &fx->drbg, NULL, err, sizeof err),
                     FEDGE_ERR_SIGNING_KEY);
    assert_contains(err, "is not the key in force");
    /* the new key alone is no trust anchor for the history before it */
    assert_int_equal(fedge_audit_verify(fx->db, new_pub, fx->dir, &rep), FEDGE_ERR_AUDIT_SIGNATURE);
    any_failure_contains(&rep, "give the first key");
    mbedtls_pk_free(&neu);
}

static void test_rotation_forged(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    mbedtls_pk_context other, neu;
    char other_pub[200], new_pub[200], err[512] = "";
    new_key(fx, "other", &other, other_pub, sizeof other_pub);
    new_key(fx, "new", &neu, new_pub, sizeof new_pub);
    /* a rotation signed by a key that was never in force, slipped past the
     * writer's own check by hiding the signed heads while it is written */
    assert_int_equal(sql(fx->db, "CREATE TEMP TABLE saved AS SELECT * FROM audit_heads"), FEDGE_OK);
    assert_int_equal(sql(fx->db, "DELETE FROM audit_heads"), FEDGE_OK);
    assert_int_equal(fedge_audit_rotate_key(fx->db, &other, &neu, &fx->drbg, NULL, err, sizeof err), FEDGE_OK);
    assert_int_equal(sql(fx->db, "INSERT INTO audit_heads SELECT * FROM saved"), FEDGE_OK);
    signed_round(fx, &neu);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_SIGNATURE);
    any_failure_contains(&rep, "a forged rotation");
    any_failure_contains(&rep, "has no head signed by the key it replaces");
    mbedtls_pk_free(&other);
    mbedtls_pk_free(&neu);
}

static void test_rotation_deleted(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    mbedtls_pk_context neu;
    char new_pub[200], err[512] = "";
    new_key(fx, "new", &neu, new_pub, sizeof new_pub);
    assert_int_equal(fedge_audit_rotate_key(fx->db, &fx->key, &neu, &fx->drbg, NULL, err, sizeof err), FEDGE_OK);
    signed_round(fx, &neu);
    assert_int_equal(verify(fx, &rep), FEDGE_OK);
    assert_int_equal(sql(fx->db, "DELETE FROM events WHERE kind = '" FEDGE_AUDIT_ROTATION_EVENT "'"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_SIGNATURE);
    any_failure_contains(&rep, "a rotation record is missing");
    /* its audit entry gone too: the chain breaks as well */
    assert_int_equal(sql(fx->db, "DELETE FROM audit WHERE seq = (SELECT max(seq) - 1 FROM audit)"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    any_failure_contains(&rep, "a rotation record is missing");
    mbedtls_pk_free(&neu);
}

static void test_rotation_new_key_signed_before(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    mbedtls_pk_context neu;
    char new_pub[200], err[512] = "";
    new_key(fx, "new", &neu, new_pub, sizeof new_pub);
    signed_round(fx, &neu); /* the new key signs before any rotation names it */
    assert_int_equal(fedge_audit_rotate_key(fx->db, &fx->key, &neu, &fx->drbg, NULL, err, sizeof err),
                     FEDGE_ERR_SIGNING_KEY); /* the writer refuses: the last head is not the old key's */
    assert_int_equal(sql(fx->db, "CREATE TEMP TABLE early AS SELECT * FROM audit_heads WHERE seq = "
                                 "(SELECT max(seq) FROM audit_heads)"), FEDGE_OK);
    assert_int_equal(sql(fx->db, "DELETE FROM audit_heads WHERE seq IN (SELECT seq FROM early)"), FEDGE_OK);
    assert_int_equal(fedge_audit_rotate_key(fx->db, &fx->key, &neu, &fx->drbg, NULL, err, sizeof err), FEDGE_OK);
    assert_int_equal(sql(fx->db, "INSERT INTO audit_heads SELECT * FROM early"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_SIGNATURE);
    expect_first(&rep, FEDGE_AUDIT_FAIL_SIGNATURE, "audit_heads", "3", "a head signed by a new key before its rotation");
    mbedtls_pk_free(&neu);
}

static void test_rotation_back_to_retired_key(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    mbedtls_pk_context neu;
    char new_pub[200], err[512] = "";
    new_key(fx, "new", &neu, new_pub, sizeof new_pub);
    assert_int_equal(fedge_audit_rotate_key(fx->db, &fx->key, &neu, &fx->drbg, NULL, err, sizeof err), FEDGE_OK);
    signed_round(fx, &neu);
    int64_t rows = scalar(fx->db, "SELECT count(*) FROM audit");
    /* A -> B -> A: refused, nothing written */
    assert_int_equal(fedge_audit_rotate_key(fx->db, &neu, &fx->key, &fx->drbg, NULL, err, sizeof err),
                     FEDGE_ERR_SIGNING_KEY);
    assert_contains(err, "already signed this log");
    assert_int_equal(scalar(fx->db, "SELECT count(*) FROM audit"), rows);
    assert_int_equal(verify(fx, &rep), FEDGE_OK);
    /* such a log written behind the check (the first rotation hidden while
     * the second is written) is reported clearly, not as the wrong key given */
    assert_int_equal(sql(fx->db, "UPDATE events SET kind = 'hidden' WHERE kind = '" FEDGE_AUDIT_ROTATION_EVENT "'"),
                     FEDGE_OK);
    assert_int_equal(fedge_audit_rotate_key(fx->db, &neu, &fx->key, &fx->drbg, NULL, err, sizeof err), FEDGE_OK);
    assert_int_equal(sql(fx->db, "UPDATE events SET kind = '" FEDGE_AUDIT_ROTATION_EVENT "' WHERE kind = 'hidden'"),
                     FEDGE_OK);
    signed_round(fx, &fx->key);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_SIGNATURE);
    any_failure_contains(&rep, "brings back key sha256");
    any_failure_contains(&rep, "which already signed this log (the trust anchor)");
    for (size_t i = 0; i < rep.n_failures && i < FEDGE_AUDIT_MAX_FAILURES; i++)
        assert_null(strstr(rep.failures[i].message, "give the first key"));
    mbedtls_pk_free(&neu);
}

/* ---- the keys ledger ---- */

#define KID_A "16b1e45933a5c87d"
#define KID_B "ed36a76e861bb1f7"

static void test_keys_event_text(void **state)
{
    (void)state;
    fedge_keys_event ev = {.change = FEDGE_KEYS_REKEYED, .region = "eu", .key_id = KID_B, .was_region = "us",
                           .was_key_id = KID_A, .source = "startup"}, back;
    char d[256];
    assert_int_equal(fedge_audit_keys_event_format(&ev, "/srv/keys (old); x", d, sizeof d), FEDGE_OK);
    assert_string_equal(d, "rekeyed region eu key id " KID_B ", was region us key id " KID_A
                           " (startup; keys file /srv/keys (old); x)");
    assert_int_equal(fedge_audit_keys_event_parse(d, &back), FEDGE_OK);
    assert_memory_equal(&back, &ev, sizeof ev);
    assert_int_equal(fedge_audit_keys_event_format(&ev, "k", d, 20), FEDGE_ERR_BUFFER_TOO_SMALL);
    /* what the form does not allow is refused both ways */
    static const char *const bad[] = {
        "",
        "added region eu key id " KID_A,
        "added region eu key id " KID_A " (startup; keys file )",
        "added region eu key id " KID_A " (startup; keys file k",
        "added region eu key id 16B1E45933A5C87D (startup; keys file k)",
        "added region eu key id 16b1e45933a5c87 (startup; keys file k)",
        "added region eu key id " KID_A ", was region eu key id " KID_B " (startup; keys file k)",
        "rekeyed region eu key id " KID_A " (startup; keys file k)",
        "rekeyed region eu key id " KID_A ", was region us key id " KID_A " (startup; keys file k)",
        "moved region eu key id " KID_A ", was region eu key id " KID_A " (startup; keys file k)",
        "moved region eu key id " KID_A ", was region us key id " KID_B " (startup; keys file k)",
        "enrolled region eu key id " KID_A " (startup; keys file k)",
        "added region  key id " KID_A " (startup; keys file k)",
        "added region eu key id " KID_A " (Startup; keys file k)",
        "added region eu key id " KID_A " (; keys file k)",
        "added region eu key id " KID_A "  (startup; keys file k)",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (fedge_audit_keys_event_parse(bad[i], &back) != FEDGE_ERR_AUDIT_CHAIN) {
            print_error("accepted: '%s'\n", bad[i]);
            fail();
        }
    ev.change = FEDGE_KEYS_MOVED; /* a new key id is not a move */
    assert_int_equal(fedge_audit_keys_event_format(&ev, "k", d, sizeof d), FEDGE_ERR_INVALID_ARG);
}

static int add_keys_event(fixture *fx, const char *device, const char *detail)
{
    return add_event(fx, 3, device, FEDGE_AUDIT_KEYS_EVENT, NULL, detail);
}

/* A ledger that follows each device's state verifies; chained entries that
 * do not (appended as the daemon would, so the chain itself holds) fail as
 * keys_ledger, each named. */
static void test_keys_ledger_replay(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    assert_int_equal(add_keys_event(fx, "dev-a", "added region eu key id " KID_A " (startup; keys file k)"), FEDGE_OK);
    assert_int_equal(add_keys_event(fx, "dev-b", "added region eu key id " KID_B " (startup; keys file k)"), FEDGE_OK);
    assert_int_equal(add_keys_event(fx, "dev-a", "rekeyed region eu key id " KID_B ", was region eu key id " KID_A
                                                 " (reload; keys file k)"), FEDGE_OK);
    assert_int_equal(add_keys_event(fx, "dev-a", "moved region us key id " KID_B ", was region eu key id " KID_B
                                                 " (startup; keys file k)"), FEDGE_OK);
    assert_int_equal(add_keys_event(fx, "dev-b", "removed region eu key id " KID_B " (startup; keys file k)"),
                     FEDGE_OK);
    assert_int_equal(add_keys_event(fx, "dev-b", "added region us key id " KID_A " (startup; keys file k)"), FEDGE_OK);
    assert_int_equal(fedge_audit_sign_head(fx->db, 3, &fx->key, &fx->drbg), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_OK);
    assert_true(rep.ok);

    int64_t first = scalar(fx->db, "SELECT max(id) FROM events") + 1;
    char key[24];
    /* removed from a state it was not in */
    assert_int_equal(add_keys_event(fx, "dev-a", "removed region eu key id " KID_B " (startup; keys file k)"),
                     FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    snprintf(key, sizeof key, "%" PRId64, first);
    expect_first(&rep, FEDGE_AUDIT_FAIL_KEYS_LEDGER, "events", key,
                 "dev-a removed from region eu key id " KID_B ", but events row");
    assert_contains(rep.failures[0].message, "left it at region us key id " KID_B);
    /* a device never added, one added twice, a malformed entry */
    assert_int_equal(add_keys_event(fx, "dev-c", "rekeyed region eu key id " KID_B ", was region eu key id " KID_A
                                                 " (startup; keys file k)"), FEDGE_OK);
    assert_int_equal(add_keys_event(fx, "dev-b", "added region us key id " KID_A " (reload; keys file k)"), FEDGE_OK);
    assert_int_equal(add_keys_event(fx, "dev-d", "added dev-d"), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    assert_int_equal(rep.n_failures, 4);
    any_failure_contains(&rep, "dev-c rekeyed but not listed");
    any_failure_contains(&rep, "dev-b added while listed since events row");
    any_failure_contains(&rep, "not a keys ledger entry");
    for (size_t i = 0; i < rep.n_failures; i++)
        assert_int_equal(rep.failures[i].kind, FEDGE_AUDIT_FAIL_KEYS_LEDGER);
    assert_string_equal(fedge_audit_fail_name(FEDGE_AUDIT_FAIL_KEYS_LEDGER), "keys_ledger");
}

/* After the ledger's first entry, an accepted or clipped update must come
 * from a device the ledger lists at that point of the chain: one never
 * admitted, or removed before it arrived, fails as not_admitted; a rejected
 * one, and the fixture's updates from before the ledger, are not checked. */
static void test_keys_ledger_admission(void **state)
{
    fixture *fx = *state;
    fedge_audit_report rep;
    assert_int_equal(add_keys_event(fx, "dev-1", "added region eu key id " KID_A " (startup; keys file k)"), FEDGE_OK);
    assert_int_equal(add_update(fx, 3, "dev-1", 100, 1.0, "accepted", "all", "passed", 31), FEDGE_OK);
    assert_int_equal(add_update(fx, 3, "dev-9", 100, 9.0, "rejected", "region", "not listed", 32), FEDGE_OK);
    assert_int_equal(fedge_audit_sign_head(fx->db, 3, &fx->key, &fx->drbg), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_OK);
    assert_true(rep.ok);

    int64_t removal = scalar(fx->db, "SELECT max(id) FROM events") + 1;
    assert_int_equal(add_update(fx, 4, "dev-9", 100, 1.0, "accepted", "all", "passed", 41), FEDGE_OK);
    int64_t never = scalar(fx->db, "SELECT max(id) FROM updates");
    assert_int_equal(add_keys_event(fx, "dev-1", "removed region eu key id " KID_A " (reload; keys file k)"), FEDGE_OK);
    assert_int_equal(add_update(fx, 4, "dev-1", 100, 9.0, "clipped", "max_norm", "clipped", 42), FEDGE_OK);
    int64_t gone = scalar(fx->db, "SELECT max(id) FROM updates");
    assert_int_equal(fedge_audit_sign_head(fx->db, 4, &fx->key, &fx->drbg), FEDGE_OK);
    assert_int_equal(verify(fx, &rep), FEDGE_ERR_AUDIT_CHAIN);
    assert_int_equal(rep.n_failures, 2);
    char key[24], text[96];
    snprintf(key, sizeof key, "%" PRId64, never);
    expect_first(&rep, FEDGE_AUDIT_FAIL_NOT_ADMITTED, "updates", key, "is accepted from dev-9, which the keys "
                 "ledger had not admitted");
    assert_int_equal(rep.failures[1].kind, FEDGE_AUDIT_FAIL_NOT_ADMITTED);
    snprintf(key, sizeof key, "%" PRId64, gone);
    assert_string_equal(rep.failures[1].row_key, key);
    snprintf(text, sizeof text, "dev-1, which the keys ledger removed at events row %" PRId64, removal);
    assert_contains(rep.failures[1].message, text);
    assert_string_equal(fedge_audit_fail_name(FEDGE_AUDIT_FAIL_NOT_ADMITTED), "not_admitted");
}

int main(int argc, char **argv)
{
    if ((argc == 3 || (argc == 4 && strcmp(argv[3], "--mixed") == 0)) && strcmp(argv[1], "--make-fixture") == 0) {
        fixture fx;
        if (mkdir(argv[2], 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "fixture: cannot create %s\n", argv[2]);
            return 1;
        }
        int rc = build_fixture(&fx, argv[2], argc == 4);
        fixture_free(&fx);
        if (rc != FEDGE_OK) {
            fprintf(stderr, "fixture: %s\n", fedge_strerror(rc));
            return 1;
        }
        printf("db %s\npubkey %s\nmodels %s\nmodel_init %s\nmodel_round1 %s\n"
               "model_round2 %s\nmodel_refine %s\n",
               fx.db_path, fx.pub, fx.models, fx.v[0], fx.v[1], fx.v[2], fx.v[3]);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_untouched_database_verifies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_canonical_bytes_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_appends_change_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_body_vouched, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_update_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_sealed_sha256, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fcn1_log_verifies, setup_fcn1, teardown),
        cmocka_unit_test_setup_teardown(test_mixed_log, setup_fcn1, teardown),
        cmocka_unit_test_setup_teardown(test_downgraded_entry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_update_delta_blob, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_delete_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_swap_model_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_delete_audit_entry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_truncate_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_rewrite_and_reaudit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_rebuilt_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_signatures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_insert_behind_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_verifies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_forged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_deleted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_new_key_signed_before, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_back_to_retired_key, setup, teardown),
        cmocka_unit_test(test_keys_event_text),
        cmocka_unit_test_setup_teardown(test_keys_ledger_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keys_ledger_admission, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
