/* test_modelfile.c — model files: round trip, version hash, atomic writes
 * and every kind of damaged file, each with its own code. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "hash.h"
#include "modelfile.h"

typedef struct {
    char dir[64];
} fixture;

static int setup(void **state)
{
    fixture *f = malloc(sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/fedge-modelfile-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    DIR *d = opendir(f->dir);
    if (d != NULL) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(p, sizeof p, "%s/%s", f->dir, e->d_name);
            if (unlink(p) != 0)
                rmdir(p); /* an (empty) directory a failed test left */
        }
        closedir(d);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static void path_in(const fixture *f, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", f->dir, name);
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static void write_file(const char *path, const uint8_t *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(buf, 1, len, fp), len);
    fclose(fp);
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static void make_model(fedge_model *m, const char *spec_text, uint64_t seed)
{
    fedge_model_spec spec;
    assert_int_equal(fedge_model_spec_parse(spec_text, &spec), FEDGE_OK);
    assert_int_equal(fedge_model_init(m, &spec), FEDGE_OK);
    fedge_rng r;
    fedge_rng_seed(&r, seed);
    assert_int_equal(fedge_model_randomize(m, &r), FEDGE_OK);
    for (size_t i = 0; i < m->n_params; i += 7) /* non-zero biases too */
        m->params[i] += 0.125f;
}

static void test_round_trip(void **state)
{
    fixture *f = *state;
    char path[256];
    path_in(f, "global.fmdl", path, sizeof path);
    fedge_model m, back;
    make_model(&m, "mlp:784-200-10", 1);
    assert_int_equal(m.n_params, 159010);
    uint8_t v_save[32], v_load[32], v_calc[32], v_body[32];
    assert_int_equal(fedge_model_save(&m, path, v_save), FEDGE_OK);
    assert_int_equal(count_entries(f->dir), 1); /* no temp file left behind */
    assert_int_equal(fedge_model_load(path, &back, v_load), FEDGE_OK);
    assert_int_equal(back.n_params, m.n_params);
    assert_int_equal(fedge_model_spec_id(&back.spec), fedge_model_spec_id(&m.spec));
    assert_int_equal(back.spec.n_layers, m.spec.n_layers);
    assert_int_equal(back.spec.layer[2].w_off, 784 * 200 + 200);
    assert_memory_equal(back.params, m.params, m.n_params * sizeof(float));
    assert_memory_equal(v_save, v_load, 32);
    assert_int_equal(fedge_model_version(&m, v_calc), FEDGE_OK);
    assert_memory_equal(v_save, v_calc, 32);

    /* version == SHA-256 of the body == the trailing checksum */
    size_t len;
    uint8_t *file = read_file(path, &len);
    assert_int_equal(len, 12 + strlen("mlp:784-200-10") + 8 + 4 * 159010 + 32);
    assert_int_equal(fedge_sha256(file, len - 32, v_body), FEDGE_OK);
    assert_memory_equal(v_body, v_save, 32);
    assert_memory_equal(file + len - 32, v_save, 32);

    /* in memory: identical bytes, same version */
    uint8_t *blob;
    size_t blob_len;
    uint8_t v_ser[32], v_des[32];
    assert_int_equal(fedge_model_serialize(&m, &blob, &blob_len, v_ser), FEDGE_OK);
    assert_int_equal(blob_len, len);
    assert_memory_equal(blob, file, len);
    assert_memory_equal(v_ser, v_save, 32);
    fedge_model m2;
    assert_int_equal(fedge_model_deserialize(blob, blob_len, &m2, v_des), FEDGE_OK);
    assert_memory_equal(v_des, v_save, 32);
    assert_memory_equal(m2.params, m.params, m.n_params * sizeof(float));

    /* one changed parameter: another version */
    m.params[12345] = nextafterf(m.params[12345], 1.0f);
    uint8_t v_changed[32];
    assert_int_equal(fedge_model_version(&m, v_changed), FEDGE_OK);
    assert_memory_not_equal(v_changed, v_save, 32);

    free(blob);
    free(file);
    fedge_model_free(&m);
    fedge_model_free(&back);
    fedge_model_free(&m2);
}

/* The format is pinned: a hand-built file body (computed outside this code
 * base) has this SHA-256, and saving twice gives the same bytes. */
static void test_version_stability(void **state)
{
    fixture *f = *state;
    fedge_model_spec spec;
    fedge_model m;
    assert_int_equal(fedge_model_spec_parse("softmax:2-2", &spec), FEDGE_OK);
    assert_int_equal(fedge_model_init(&m, &spec), FEDGE_OK);
    const float p[6] = {1, -2, 0.5f, 0.25f, 0, 3};
    memcpy(m.params, p, sizeof p);
    uint8_t v[32], v2[32];
    char hex[FEDGE_HASH_HEX_LEN];
    assert_int_equal(fedge_model_version(&m, v), FEDGE_OK);
    fedge_hash_to_hex(v, hex);
    assert_string_equal(hex, "cea8d820013a3d526a6b0a99afb22930a895d10da9df1819e42bec6fdf2dba91");

    char a[256], b[256];
    path_in(f, "a.fmdl", a, sizeof a);
    path_in(f, "b.fmdl", b, sizeof b);
    assert_int_equal(fedge_model_save(&m, a, v), FEDGE_OK);
    assert_int_equal(fedge_model_save(&m, b, v2), FEDGE_OK);
    assert_memory_equal(v, v2, 32);
    size_t la, lb;
    uint8_t *fa = read_file(a, &la), *fb = read_file(b, &lb);
    assert_int_equal(la, 55 + 32);
    assert_int_equal(la, lb);
    assert_memory_equal(fa, fb, la);
    assert_memory_equal(fa, "FMDL\x01\0\0\0\x0b\0\0\0softmax:2-2\x06\0\0\0\0\0\0\0", 31);
    /* load + save again: still the same version */
    fedge_model back;
    uint8_t v3[32];
    assert_int_equal(fedge_model_load(a, &back, NULL), FEDGE_OK);
    assert_int_equal(fedge_model_save(&back, a, v3), FEDGE_OK);
    assert_memory_equal(v3, v, 32);
    free(fa);
    free(fb);
    fedge_model_free(&m);
    fedge_model_free(&back);
}

/* Loading must fail with `want` and leave *m alone. */
static void expect_load(const char *path, int want)
{
    fedge_model m;
    uint8_t v[32];
    memset(&m, 0x6b, sizeof m);
    memset(v, 0x6b, sizeof v);
    int rc = fedge_model_load(path, &m, v);
    if (rc != want)
        fail_msg("load gave %d (%s), wanted %d (%s)", rc, fedge_strerror(rc), want,
                 fedge_strerror(want));
    for (size_t i = 0; i < sizeof m; i++)
        assert_int_equal(((uint8_t *)&m)[i], 0x6b);
    for (size_t i = 0; i < sizeof v; i++)
        assert_int_equal(v[i], 0x6b);
}

static void expect_deserialize(const uint8_t *buf, size_t len, int want)
{
    fedge_model m;
    memset(&m, 0x6b, sizeof m);
    int rc = fedge_model_deserialize(buf, len, &m, NULL);
    if (rc != want)
        fail_msg("deserialize gave %d (%s), wanted %d (%s)", rc, fedge_strerror(rc), want,
                 fedge_strerror(want));
    for (size_t i = 0; i < sizeof m; i++)
        assert_int_equal(((uint8_t *)&m)[i], 0x6b);
}

/* Recompute the trailing checksum after an edit (a well-formed file with
 * bad content). */
static void reseal(uint8_t *buf, size_t len)
{
    assert_int_equal(fedge_sha256(buf, len - 32, buf + len - 32), FEDGE_OK);
}

static void test_damaged_files(void **state)
{
    fixture *f = *state;
    char good[256], bad[256];
    path_in(f, "good.fmdl", good, sizeof good);
    path_in(f, "bad.fmdl", bad, sizeof bad);
    fedge_model m;
    make_model(&m, "mlp:5-4-3", 2); /* 39 parameters */
    assert_int_equal(fedge_model_save(&m, good, NULL), FEDGE_OK);
    size_t len;
    uint8_t *file = read_file(good, &len);
    const size_t spec_len = strlen("mlp:5-4-3"), params_at = 12 + spec_len + 8;
    assert_int_equal(len, params_at + 4 * 39 + 32);
    uint8_t *b = malloc(len + 8);

#define CASE(stmt, blen, code)                 \
    do {                                       \
        memcpy(b, file, len);                  \
        stmt;                                  \
        write_file(bad, b, blen);              \
        expect_load(bad, code);                \
        expect_deserialize(b, blen, code);     \
    } while (0)

    CASE((void)0, len - 1, FEDGE_ERR_MODEL_FILE_TRUNCATED);
    CASE((void)0, len - 32, FEDGE_ERR_MODEL_FILE_TRUNCATED);
    CASE((void)0, params_at, FEDGE_ERR_MODEL_FILE_TRUNCATED);
    CASE((void)0, 10, FEDGE_ERR_MODEL_FILE_TRUNCATED);
    CASE((void)0, 3, FEDGE_ERR_MODEL_FILE_TRUNCATED);
    CASE((void)0, 0, FEDGE_ERR_MODEL_FILE_TRUNCATED);
    CASE(b[len] = 0, len + 1, FEDGE_ERR_MODEL_FILE_TRUNCATED); /* trailing garbage */
    CASE(b[0] = 'G', len, FEDGE_ERR_MODEL_FILE_MAGIC);
    CASE(b[2] = 'd', 10, FEDGE_ERR_MODEL_FILE_MAGIC);
    CASE(b[4] = 2, len, FEDGE_ERR_MODEL_FILE_VERSION);
    CASE(b[7] = 1, len, FEDGE_ERR_MODEL_FILE_VERSION);
    CASE(b[params_at + 17] ^= 0x10, len, FEDGE_ERR_MODEL_FILE_CHECKSUM); /* a parameter */
    CASE(b[len - 1] ^= 0x01, len, FEDGE_ERR_MODEL_FILE_CHECKSUM);        /* the checksum */
    /* structure is checked before the checksum: "mlp:6-4-3" has 43 params */
    CASE(b[12 + 4] = '6', len, FEDGE_ERR_MODEL_SHAPE);
    /* well-formed files with bad content */
    CASE((b[12 + 4] = '6', b[12 + spec_len] = 43, reseal(b, len)), len,
         FEDGE_ERR_MODEL_FILE_TRUNCATED);
    CASE((b[12 + 3] = '!', reseal(b, len)), len, FEDGE_ERR_MODEL_SPEC);
    CASE((b[12 + 4] = '0', reseal(b, len)), len, FEDGE_ERR_MODEL_SPEC); /* "mlp:0-4-3" */
    CASE((b[8] = 0, b[9] = 1, reseal(b, len)), len, FEDGE_ERR_MODEL_SPEC); /* spec_len 256: too long */
    CASE((b[8] = 0, reseal(b, len)), len, FEDGE_ERR_MODEL_SPEC);
    CASE((b[12 + spec_len] = 40, reseal(b, len)), len, FEDGE_ERR_MODEL_SHAPE); /* n_params */
    CASE((b[12 + spec_len + 7] = 0x80, reseal(b, len)), len, FEDGE_ERR_MODEL_SHAPE);
    const uint32_t nonfinite[] = {0x7fc00000u, 0x7f800000u, 0xff800000u, 0xffffffffu};
    for (size_t k = 0; k < 4; k++) {
        for (size_t at = 0; at < 39; at += 38) {
            size_t off = params_at + 4 * at;
            CASE((b[off] = (uint8_t)nonfinite[k], b[off + 1] = (uint8_t)(nonfinite[k] >> 8),
                  b[off + 2] = (uint8_t)(nonfinite[k] >> 16),
                  b[off + 3] = (uint8_t)(nonfinite[k] >> 24), reseal(b, len)),
                 len, FEDGE_ERR_MODEL_NONFINITE);
        }
    }
#undef CASE

    char missing[256];
    path_in(f, "missing.fmdl", missing, sizeof missing);
    expect_load(missing, FEDGE_ERR_NOT_FOUND);
    expect_load(f->dir, FEDGE_ERR_IO); /* a directory */

    /* The intact file still loads after all that. */
    fedge_model ok;
    assert_int_equal(fedge_model_load(good, &ok, NULL), FEDGE_OK);
    fedge_model_free(&ok);
    free(b);
    free(file);
    fedge_model_free(&m);
}

static void test_atomic_save(void **state)
{
    fixture *f = *state;
    char path[256];
    path_in(f, "model.fmdl", path, sizeof path);
    fedge_model a, b;
    make_model(&a, "mlp:5-4-3", 3);
    make_model(&b, "softmax:4-3", 4);
    uint8_t va[32], vb[32], v[32];
    assert_int_equal(fedge_model_save(&a, path, va), FEDGE_OK);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);

    /* replacing: the new content, one entry, no temp file */
    assert_int_equal(fedge_model_save(&b, path, vb), FEDGE_OK);
    assert_int_equal(count_entries(f->dir), 1);
    fedge_model got;
    assert_int_equal(fedge_model_load(path, &got, v), FEDGE_OK);
    assert_memory_equal(v, vb, 32);
    assert_int_equal(got.spec.kind, FEDGE_MODEL_SOFTMAX);
    fedge_model_free(&got);

    /* a refused save (NaN parameter) leaves the previous file intact */
    a.params[3] = NAN;
    assert_int_equal(fedge_model_save(&a, path, v), FEDGE_ERR_MODEL_NONFINITE);
    assert_int_equal(count_entries(f->dir), 1);
    assert_int_equal(fedge_model_load(path, &got, v), FEDGE_OK);
    assert_memory_equal(v, vb, 32);
    fedge_model_free(&got);
    a.params[3] = INFINITY;
    uint8_t *blob = (uint8_t *)&a;
    size_t blob_len = 5;
    assert_int_equal(fedge_model_serialize(&a, &blob, &blob_len, NULL), FEDGE_ERR_MODEL_NONFINITE);
    assert_null(blob);
    a.params[3] = 0.5f;

    /* the rename fails (a directory is in the way): the temp file goes too */
    char blocked[256];
    path_in(f, "blocked.fmdl", blocked, sizeof blocked);
    assert_int_equal(mkdir(blocked, 0755), 0);
    assert_int_equal(fedge_model_save(&a, blocked, v), FEDGE_ERR_IO);
    assert_int_equal(count_entries(f->dir), 2);
    assert_int_equal(count_entries(blocked), 0);
    rmdir(blocked);

    /* a directory that does not exist: an error and nothing created */
    char nowhere[256];
    path_in(f, "no/such/dir/model.fmdl", nowhere, sizeof nowhere);
    assert_int_equal(fedge_model_save(&a, nowhere, v), FEDGE_ERR_IO);
    assert_int_equal(count_entries(f->dir), 1);
    /* a read-only directory (unless we are root, who may write anyway) */
    if (geteuid() != 0) {
        char ro[256], inside[300];
        path_in(f, "ro", ro, sizeof ro);
        assert_int_equal(mkdir(ro, 0555), 0);
        snprintf(inside, sizeof inside, "%s/model.fmdl", ro);
        assert_int_equal(fedge_model_save(&a, inside, v), FEDGE_ERR_IO);
        assert_int_equal(count_entries(ro), 0);
        rmdir(ro);
    }
    fedge_model_free(&a);
    fedge_model_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_version_stability, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_atomic_save, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
