/* shared/log.c from many threads at once (fedge-edgesim's sessions): every
 * call is one whole line, and a thread's own tag (fedge_log_set_thread_tag)
 * names that thread only, while the others keep the process tag. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

enum { THREADS = 8, LINES = 2000 };

static void *writer(void *arg)
{
    int t = (int)(intptr_t)arg;
    char tag[32];
    snprintf(tag, sizeof tag, "dev-%d", t);
    if (t) /* thread 0 keeps the process tag */
        fedge_log_set_thread_tag(tag);
    for (int i = 0; i < LINES; i++)
        FEDGE_INFO("thread %d line %d %s", t, i,
                   "padding padding padding padding padding padding padding padding");
    return NULL;
}

static void test_lines_whole_and_tagged(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    assert_non_null(f);
    fedge_log_set_stream(f);
    fedge_log_set_tag("proc");
    fedge_log_set_level(FEDGE_LOG_INFO);
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, writer, (void *)(intptr_t)t), 0);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    fedge_log_set_stream(NULL);

    rewind(f);
    char line[512];
    int count[THREADS] = {0}, next[THREADS] = {0}, total = 0;
    while (fgets(line, sizeof line, f)) {
        total++;
        char tag[32];
        int t, i;
        const char *p = strstr(line, " INFO  ");
        assert_non_null(p);
        assert_int_equal(sscanf(p + 7, "%31[^:]: thread %d line %d", tag, &t, &i), 3);
        assert_in_range(t, 0, THREADS - 1);
        assert_int_equal(i, next[t]); /* each thread's lines whole and in order */
        next[t]++;
        count[t]++;
        char want[32];
        snprintf(want, sizeof want, t ? "dev-%d" : "proc", t);
        assert_string_equal(tag, want);
        assert_non_null(strstr(line, "padding padding\n"));
    }
    assert_int_equal(total, THREADS * LINES);
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(count[t], LINES);
    fclose(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_whole_and_tagged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
