/* test_round_config.c — the round-shaping configuration event
 * (round_config.h): format and parse agree, malformed details are refused
 * and leave the configuration as it was, and a start records an audited row
 * only when the configuration differs from the last recorded one. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "round_config.h"
#include "store.h"

static void round_trip(void **state)
{
    (void)state;
    fedge_agg_config c, back;
    char buf[256];
    fedge_agg_config_defaults(&c);
    assert_int_equal(fedge_round_config_format(&c, buf, sizeof buf), FEDGE_OK);
    assert_string_equal(buf, "round configuration: mode=sync min_updates=1 buffer_k=4 staleness=polynomial"
                             " staleness_a=0.5 staleness_b=4 aggregation=mean");
    snprintf(c.mode, sizeof c.mode, "async");
    c.min_updates = 7;
    c.async_buffer_k = 3;
    snprintf(c.async_staleness, sizeof c.async_staleness, "hinge");
    c.async_staleness_a = 0.1;
    c.async_staleness_b = 2.0 / 3.0;
    snprintf(c.aggregation, sizeof c.aggregation, "trimmed_mean");
    assert_int_equal(fedge_round_config_format(&c, buf, sizeof buf), FEDGE_OK);
    fedge_agg_config_defaults(&back);
    assert_int_equal(fedge_round_config_parse(buf, &back), FEDGE_OK);
    assert_string_equal(back.mode, "async");
    assert_int_equal(back.min_updates, 7);
    assert_int_equal(back.async_buffer_k, 3);
    assert_string_equal(back.async_staleness, "hinge");
    assert_true(back.async_staleness_a == 0.1 && back.async_staleness_b == 2.0 / 3.0); /* exact */
    assert_string_equal(back.aggregation, "trimmed_mean");
    assert_int_equal(fedge_round_config_format(&c, buf, 40), FEDGE_ERR_INVALID_ARG);
}

static void malformed_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "round configuration: ",
        "mode=sync min_updates=1 buffer_k=10 staleness=polynomial staleness_a=0.5 staleness_b=4 aggregation=mean",
        "round configuration: mode=sync min_updates=1 buffer_k=10 staleness=polynomial staleness_a=0.5 staleness_b=4",
        "round configuration: mode=sync min_updates=1 buffer_k=10 staleness=polynomial staleness_a=0.5 staleness_b=4"
        " aggregation=mean extra=1",
        "round configuration: mode=sync mode=sync min_updates=1 buffer_k=10 staleness=polynomial staleness_a=0.5"
        " staleness_b=4 aggregation=mean",
        "round configuration: mode=batch min_updates=1 buffer_k=10 staleness=polynomial staleness_a=0.5"
        " staleness_b=4 aggregation=mean",
        "round configuration: mode=sync min_updates=0 buffer_k=10 staleness=polynomial staleness_a=0.5"
        " staleness_b=4 aggregation=mean",
        "round configuration: mode=sync min_updates=1.5 buffer_k=10 staleness=polynomial staleness_a=0.5"
        " staleness_b=4 aggregation=mean",
        "round configuration: mode=sync min_updates=1 buffer_k=10 staleness=linear staleness_a=0.5"
        " staleness_b=4 aggregation=mean",
        "round configuration: mode=sync min_updates=1 buffer_k=10 staleness=polynomial staleness_a=nan"
        " staleness_b=4 aggregation=mean",
        "round configuration: mode=sync min_updates=1 buffer_k=10 staleness=polynomial staleness_a=101"
        " staleness_b=4 aggregation=mean",
        "round configuration: mode=sync min_updates=1 buffer_k=10 staleness=polynomial staleness_a=0.5"
        " staleness_b=4 aggregation=<b>",
        "round configuration: mode=sync min_updates=1 buffer_k=10 staleness=polynomial staleness_a=0.5"
        " staleness_b=4 aggregation=mean ",
        "round configuration: mode=sync  min_updates=1 buffer_k=10 staleness=polynomial staleness_a=0.5"
        " staleness_b=4 aggregation=mean",
        "round configuration: mode min_updates=1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        fedge_agg_config c, before;
        fedge_agg_config_defaults(&c);
        c.min_updates = 5;
        before = c;
        if (fedge_round_config_parse(bad[i], &c) != FEDGE_ERR_DATA_FORMAT)
            fail_msg("accepted: '%s'", bad[i]);
        assert_memory_equal(&c, &before, sizeof c);
    }
}

static int64_t count(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t n = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void recorded_when_changed(void **state)
{
    (void)state;
    char dir[] = "/tmp/fedge-roundcfg-XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/fedge.db", dir);
    sqlite3 *db = NULL;
    assert_int_equal(fedge_store_open_db(path, 0, &db), FEDGE_OK);
    fedge_agg_config c;
    fedge_agg_config_defaults(&c);
    int rec = -1;
    assert_int_equal(fedge_round_config_record(db, &c, 1.0, &rec), FEDGE_OK);
    assert_int_equal(rec, 1);
    assert_int_equal(fedge_round_config_record(db, &c, 2.0, &rec), FEDGE_OK); /* a restart, nothing changed */
    assert_int_equal(rec, 0);
    c.min_updates = 3;
    assert_int_equal(fedge_round_config_record(db, &c, 3.0, &rec), FEDGE_OK);
    assert_int_equal(rec, 1);
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE kind='config'"), 2);
    assert_int_equal(count(db, "SELECT count(*) FROM audit a JOIN events e ON a.tbl='events'"
                               " AND a.row_key=CAST(e.id AS TEXT) WHERE e.kind='config'"), 2);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT detail FROM events WHERE kind='config' ORDER BY id DESC", -1,
                                        &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    fedge_agg_config back;
    fedge_agg_config_defaults(&back);
    assert_int_equal(fedge_round_config_parse((const char *)sqlite3_column_text(st, 0), &back), FEDGE_OK);
    assert_int_equal(back.min_updates, 3);
    sqlite3_finalize(st);
    assert_int_equal(fedge_round_config_record(NULL, &c, 0, &rec), FEDGE_ERR_INVALID_ARG);
    sqlite3_close(db);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip),
        cmocka_unit_test(malformed_refused),
        cmocka_unit_test(recorded_when_changed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
