/* The planner's MPI-free model (cluster_plan_model.c): log-log interpolation
 * of measured collective times, the event-by-event pipeline schedule, the
 * oversubscription terms, the round-robust probe statistic and the loader
 * threads' charge. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "../../cluster/cluster_grid.c"
#include "../../cluster/cluster_layout.c"
#include "../../cluster/cluster_plan_model.c"

static void test_loglog(void **state)
{
    (void)state;
    const double xs[3] = {100.0, 10000.0, 1000000.0};
    const double ys[3] = {1e-6, 1e-5, 1e-3};
    /* the measured points themselves */
    for (int i = 0; i < 3; i++)
        assert_true(fabs(fedge_plan_loglog(xs, ys, 3, xs[i]) - ys[i]) < 1e-15);
    /* halfway in log between 100 and 10000 is 1000: halfway in log of the times */
    assert_true(fabs(fedge_plan_loglog(xs, ys, 3, 1000.0) - sqrt(1e-6 * 1e-5)) < 1e-12);
    assert_true(fabs(fedge_plan_loglog(xs, ys, 3, 100000.0) - 1e-4) < 1e-12);
    /* a power law between two points is reproduced exactly */
    const double px[2] = {1e3, 1e6}, py[2] = {2e-6, 2e-6 * pow(1e3, 0.7)};
    assert_true(fabs(fedge_plan_loglog(px, py, 2, 3e4) / (2e-6 * pow(30.0, 0.7)) - 1.0) < 1e-12);
    /* below the smallest: the latency floor; above the largest: by bytes */
    assert_true(fedge_plan_loglog(xs, ys, 3, 4.0) == 1e-6);
    assert_true(fabs(fedge_plan_loglog(xs, ys, 3, 2e6) - 2e-3) < 1e-15);
    assert_true(fedge_plan_loglog(xs, ys, 1, 5e5) == 1e-6 * 5e5 / 100.0);
    assert_true(fedge_plan_loglog(xs, ys, 0, 5.0) < 0.0);
    assert_true(fedge_plan_loglog(xs, ys, 3, 0.0) < 0.0);
}

static void test_monotone(void **state)
{
    (void)state;
    double a[4] = {1.0, 3.0, 2.0, 4.0};
    fedge_plan_monotone(a, 4);
    assert_true(a[0] == 1.0 && a[1] == 2.5 && a[2] == 2.5 && a[3] == 4.0);
    double b[5] = {1.0, 2.0, 3.0, 4.0, 5.0};
    fedge_plan_monotone(b, 5);
    for (int i = 0; i < 5; i++)
        assert_true(b[i] == i + 1.0);
    /* an outlier early pools with everything after it that it exceeds */
    double c[4] = {9.0, 1.0, 2.0, 10.0};
    fedge_plan_monotone(c, 4);
    assert_true(c[0] == 4.0 && c[1] == 4.0 && c[2] == 4.0 && c[3] == 10.0);
    double d[2] = {5.0, 1.0};
    fedge_plan_monotone(d, 2);
    assert_true(d[0] == 3.0 && d[1] == 3.0);
    for (int i = 0; i < 3; i++)
        assert_true(c[i] <= c[i + 1]);
}

static fedge_pp_sim equal_stages(int schedule, int P, int M, double f, double b)
{
    fedge_pp_sim s;
    memset(&s, 0, sizeof(s));
    s.schedule = schedule;
    s.pp = P;
    s.micro = M;
    for (int i = 0; i < P; i++) {
        s.fwd[i] = f;
        s.bwd[i] = b;
    }
    return s;
}

static void test_median(void **state)
{
    (void)state;
    double odd[5] = {5, 1, 4, 2, 3}, even[4] = {9, 1, 3, 7}, one[1] = {2.5};
    assert_true(fedge_plan_median(odd, 5) == 3.0);
    assert_true(fedge_plan_median(even, 4) == 5.0);
    assert_true(fedge_plan_median(one, 1) == 2.5);
    assert_true(odd[0] == 1.0 && odd[4] == 5.0); /* sorted in place */
}

static void test_sim_equal_stages_theory(void **state)
{
    (void)state;
    const int sched[2] = {FEDGE_PP_GPIPE, FEDGE_PP_1F1B};
    for (int k = 0; k < 2; k++)
        for (int P = 1; P <= 8; P++)
            for (int M = 1; M <= 32; M *= 2) {
                fedge_pp_sim s = equal_stages(sched[k], P, M, 1.0, 2.0);
                double span = 0.0, busy[FEDGE_GRID_MAX_PP];
                assert_int_equal(fedge_pp_simulate(&s, &span, busy), FEDGE_OK);
                assert_true(fabs(span - (M + P - 1) * 3.0) < 1e-9);
                for (int i = 0; i < P; i++) {
                    assert_true(fabs(busy[i] - 3.0 * M) < 1e-12);
                    assert_true(fabs((1.0 - busy[i] / span) - fedge_pp_bubble_theory(P, M))
                                < 1e-12);
                }
            }
}

static void test_sim_messages_and_uneven(void **state)
{
    (void)state;
    /* one micro-batch: the chain F0, message, F1, B1, message, B0 */
    fedge_pp_sim s = equal_stages(FEDGE_PP_1F1B, 2, 1, 1.0, 2.0);
    s.fwd[1] = 3.0;
    s.bwd[1] = 4.0;
    s.send_fwd[0] = 0.5;
    s.send_bwd[0] = 0.25;
    double span = 0.0;
    assert_int_equal(fedge_pp_simulate(&s, &span, NULL), FEDGE_OK);
    assert_true(fabs(span - (1.0 + 0.5 + 3.0 + 4.0 + 0.25 + 2.0)) < 1e-12);
    /* a slow last stage sets the pace: stage 0's forwards run ahead, the
     * last stage works without a gap after its first forward arrives */
    fedge_pp_sim u = equal_stages(FEDGE_PP_1F1B, 2, 8, 1.0, 1.0);
    u.fwd[1] = 3.0;
    u.bwd[1] = 3.0;
    assert_int_equal(fedge_pp_simulate(&u, &span, NULL), FEDGE_OK);
    assert_true(fabs(span - (1.0 + 8 * 6.0 + 1.0)) < 1e-12);
    /* GPipe and 1F1B differ once stages are uneven: GPipe's backward of the
     * last micro-batch cannot start before all forwards are through */
    fedge_pp_sim g = u;
    g.schedule = FEDGE_PP_GPIPE;
    double gspan = 0.0;
    assert_int_equal(fedge_pp_simulate(&g, &gspan, NULL), FEDGE_OK);
    assert_true(fabs(gspan - (1.0 + 8 * 6.0 + 1.0)) < 1e-12);
    /* the old closed form sum + (M-1) max over-predicts when backward and
     * forward of a stage differ: here it gives (2 + 6) + 7 * 6 = 50 as well,
     * but with a heavy first stage's backward the simulation is shorter */
    fedge_pp_sim h = equal_stages(FEDGE_PP_1F1B, 2, 2, 1.0, 1.0);
    h.bwd[0] = 3.0;
    h.fwd[1] = 2.0;
    assert_int_equal(fedge_pp_simulate(&h, &span, NULL), FEDGE_OK);
    /* F0(0)=[0,1] F0(1)=[1,2] F1(0)=[1,3] B1(0)=[3,4] F1(1)=[4,6] B0(0)=[4,7]
     * B1(1)=[6,7] B0(1)=[7,10] */
    assert_true(fabs(span - 10.0) < 1e-12);
    assert_true(span < (4.0 + 3.0) + 1 * 4.0 + 1e-12); /* closed form: 11 */
}

/* progress_in_wait: a message moves once its sender blocks in MPI (the start
 * of its next operation that begins with a receive, or its end of step). */
static void test_sim_progress_in_wait(void **state)
{
    (void)state;
    double span = 0.0, busy[FEDGE_GRID_MAX_PP];
    /* 1F1B, P 2, M 2, f = b = 1: stage 0 runs F0 F1 before its first
     * receive, so F0 reaches stage 1 at 2; stage 1's B0 gradient moves when
     * it starts F1 (4), its B1 gradient at its end of step (6) */
    fedge_pp_sim s = equal_stages(FEDGE_PP_1F1B, 2, 2, 1.0, 1.0);
    s.progress_in_wait = 1;
    assert_int_equal(fedge_pp_simulate(&s, &span, busy), FEDGE_OK);
    assert_true(fabs(span - 7.0) < 1e-12);
    /* GPipe: all of stage 0's forwards, then all of stage 1's backwards go
     * out together */
    s.schedule = FEDGE_PP_GPIPE;
    assert_int_equal(fedge_pp_simulate(&s, &span, busy), FEDGE_OK);
    assert_true(fabs(span - 8.0) < 1e-12);
    /* a middle stage begins every operation with a receive: only the ends
     * are late. P 3, M 1: F0 on 0, 1, 2, then B0 on 2 (its only backward:
     * gradient at its end of step), 1, 0 */
    fedge_pp_sim t = equal_stages(FEDGE_PP_1F1B, 3, 1, 1.0, 1.0);
    t.progress_in_wait = 1;
    assert_int_equal(fedge_pp_simulate(&t, &span, busy), FEDGE_OK);
    assert_true(fabs(span - 6.0) < 1e-12);
    /* without it, the same as the theory */
    s.progress_in_wait = 0;
    assert_int_equal(fedge_pp_simulate(&s, &span, busy), FEDGE_OK);
    assert_true(fabs(span - 6.0) < 1e-12);
}

static void test_sim_rejects(void **state)
{
    (void)state;
    fedge_pp_sim s = equal_stages(FEDGE_PP_1F1B, 2, 2, 1.0, 1.0);
    double span;
    s.pp = 0;
    assert_int_equal(fedge_pp_simulate(&s, &span, NULL), FEDGE_ERR_INVALID_ARG);
    s.pp = FEDGE_GRID_MAX_PP + 1;
    assert_int_equal(fedge_pp_simulate(&s, &span, NULL), FEDGE_ERR_INVALID_ARG);
    s = equal_stages(FEDGE_PP_1F1B, 2, 0, 1.0, 1.0);
    assert_int_equal(fedge_pp_simulate(&s, &span, NULL), FEDGE_ERR_INVALID_ARG);
    s = equal_stages(7, 2, 2, 1.0, 1.0);
    assert_int_equal(fedge_pp_simulate(&s, &span, NULL), FEDGE_ERR_INVALID_ARG);
    s = equal_stages(FEDGE_PP_GPIPE, 2, 2, 1.0, -1.0);
    assert_int_equal(fedge_pp_simulate(&s, &span, NULL), FEDGE_ERR_INVALID_ARG);
    s = equal_stages(FEDGE_PP_GPIPE, 2, 2, 1.0, NAN);
    assert_int_equal(fedge_pp_simulate(&s, &span, NULL), FEDGE_ERR_INVALID_ARG);
}

static void test_share(void **state)
{
    (void)state;
    assert_int_equal(fedge_plan_share(2, 2), 1);
    assert_int_equal(fedge_plan_share(1, 2), 1);
    assert_int_equal(fedge_plan_share(4, 2), 2);
    assert_int_equal(fedge_plan_share(5, 2), 3); /* ceil: some core runs three */
    assert_int_equal(fedge_plan_share(8, 1), 8);
    assert_int_equal(fedge_plan_share(3, 4), 1);
    /* unknown counts: no oversubscription assumed */
    assert_int_equal(fedge_plan_share(4, 0), 1);
    assert_int_equal(fedge_plan_share(0, 2), 1);
    assert_int_equal(fedge_plan_share(-3, -1), 1);
}

static void test_oversub_time(void **state)
{
    (void)state;
    /* one rank per core (or share unknown): compute and communication as
     * measured */
    assert_true(fabs(fedge_plan_oversub_time(3e-3, 1e-3, 1) - 4e-3) < 1e-15);
    assert_true(fabs(fedge_plan_oversub_time(3e-3, 1e-3, 0) - 4e-3) < 1e-15);
    /* two ranks per core: their compute serialises, the collectives (timed
     * with every rank at once) are taken as measured */
    assert_true(fabs(fedge_plan_oversub_time(3e-3, 1e-3, 2) - 7e-3) < 1e-15);
    assert_true(fabs(fedge_plan_oversub_time(3e-3, 0.0, 3) - 9e-3) < 1e-15);
    assert_true(fabs(fedge_plan_oversub_time(0.0, 2e-5, 2) - 2e-5) < 1e-15);
}

static void test_sim_oversubscribed(void **state)
{
    (void)state;
    /* the oversubscribed stage costs go through the schedule like any other:
     * 2 stages, 2 micro-batches, 1 ms forward, 2 ms backward each alone,
     * share 2, 0.5 ms of TP allreduce each way */
    fedge_pp_sim a = equal_stages(FEDGE_PP_1F1B, 2, 2, 1e-3, 2e-3);
    fedge_pp_sim b = a;
    for (int s = 0; s < 2; s++) {
        b.fwd[s] = fedge_plan_oversub_time(1e-3, 5e-4, 2);
        b.bwd[s] = fedge_plan_oversub_time(2e-3, 5e-4, 2);
    }
    double span_a, span_b;
    assert_int_equal(fedge_pp_simulate(&a, &span_a, NULL), FEDGE_OK);
    assert_int_equal(fedge_pp_simulate(&b, &span_b, NULL), FEDGE_OK);
    /* equal stages: (M + P - 1)(f + b); 3 x 3 ms alone, 3 x 7 ms shared */
    assert_true(fabs(span_a - 9e-3) < 1e-12);
    assert_true(fabs(span_b - 21e-3) < 1e-12);
}

static void test_median_of_medians(void **state)
{
    (void)state;
    /* three rounds of three trials: round medians 1.2, 30, 1.1; the typical
     * round is 1.2 (the smallest would say 1.1, the mean 10.8) */
    double v[9] = {1.0, 9.0, 1.2, 30.0, 31.0, 29.0, 1.1, 1.05, 1.15};
    assert_true(fabs(fedge_plan_median_of_medians(v, 9, 3) - 1.2) < 1e-12);
    /* a trailing partial round is dropped: rounds 5, 4, 6 (0.1 dropped) */
    double t[10] = {5.0, 5.0, 5.0, 4.0, 4.0, 4.0, 6.0, 6.0, 6.0, 0.1};
    assert_true(fabs(fedge_plan_median_of_medians(t, 10, 3) - 5.0) < 1e-12);
    /* an even number of rounds: the mean of the middle two */
    double e[8] = {1.0, 1.0, 2.0, 2.0, 8.0, 8.0, 4.0, 4.0};
    assert_true(fabs(fedge_plan_median_of_medians(e, 8, 2) - 3.0) < 1e-12);
    /* group outside 1..n: one round of all; group 1: the plain median */
    double u[4] = {4.0, 1.0, 3.0, 2.0};
    assert_true(fabs(fedge_plan_median_of_medians(u, 4, 0) - 2.5) < 1e-12);
    double m[5] = {3.0, 0.5, 2.0, 9.0, 1.0};
    assert_true(fabs(fedge_plan_median_of_medians(m, 5, 1) - 2.0) < 1e-12);
    assert_true(fedge_plan_median_of_medians(m, 0, 1) < 0.0);
}

static void test_loader_time(void **state)
{
    (void)state;
    /* a core to spare for the loader threads: hidden */
    assert_true(fedge_plan_loader_time(1, 2, 256, 1e-6) == 0.0);
    assert_true(fedge_plan_loader_time(3, 4, 256, 1e-6) == 0.0);
    /* as many ranks as cores: each core runs one rank's thread beside it */
    assert_true(fabs(fedge_plan_loader_time(2, 2, 256, 1e-6) - 256e-6) < 1e-15);
    /* four ranks on two cores: two threads per core */
    assert_true(fabs(fedge_plan_loader_time(4, 2, 128, 1.5e-6) - 384e-6) < 1e-15);
    assert_true(fabs(fedge_plan_loader_time(5, 2, 10, 1e-6) - 30e-6) < 1e-15);
    /* unknown or empty */
    assert_true(fedge_plan_loader_time(2, 0, 256, 1e-6) == 0.0);
    assert_true(fedge_plan_loader_time(0, 2, 256, 1e-6) == 0.0);
    assert_true(fedge_plan_loader_time(2, 2, 0, 1e-6) == 0.0);
    assert_true(fedge_plan_loader_time(2, 2, 256, -1.0) == 0.0);
    assert_true(fedge_plan_loader_time(2, 2, 256, NAN) == 0.0);
}

/* A trial's figure is the mean of the steps after the first, hiccups
 * included: 20 later steps, 16 of 4 ms and 4 descheduled to 9 ms, after a
 * 30 ms first step. The median of them (4 ms) under-predicts the run's
 * mean step (5 ms); the first step's cold start is left out. */
static void test_trial_mean(void **state)
{
    (void)state;
    double later[20];
    for (int i = 0; i < 20; i++)
        later[i] = i % 5 == 4 ? 9.0 : 4.0;
    const double seconds = (30.0 + 16 * 4.0 + 4 * 9.0) / 1e3;
    const double mean = fedge_plan_trial_mean_ms(seconds, 30.0, 21);
    assert_true(fabs(mean - 5.0) < 1e-9);
    assert_true(fedge_plan_median(later, 20) < 0.85 * mean);
    /* two steps: the second alone */
    assert_true(fabs(fedge_plan_trial_mean_ms(0.010, 7.0, 2) - 3.0) < 1e-9);
    /* nothing to average, or a clock that went backwards */
    assert_true(fedge_plan_trial_mean_ms(0.010, 7.0, 1) < 0.0);
    assert_true(fedge_plan_trial_mean_ms(0.010, 10.0, 5) < 0.0);
    assert_true(fedge_plan_trial_mean_ms(0.010, 12.0, 5) < 0.0);
    assert_true(fedge_plan_trial_mean_ms(0.010, -1.0, 5) < 0.0);
    assert_true(fedge_plan_trial_mean_ms(NAN, 1.0, 5) < 0.0);
}

/* Trial length: the steps after the first span the target at the model's
 * step time, within the bounds. */
static void test_trial_steps(void **state)
{
    (void)state;
    assert_int_equal(fedge_plan_trial_steps(4.0, 0.2, 20, 120), 51);
    assert_int_equal(fedge_plan_trial_steps(20.0, 0.2, 20, 120), 20);
    assert_int_equal(fedge_plan_trial_steps(1.0, 0.2, 20, 120), 120);
    assert_int_equal(fedge_plan_trial_steps(0.0, 0.2, 20, 120), 120);
    assert_int_equal(fedge_plan_trial_steps(NAN, 0.2, 20, 120), 120);
    assert_int_equal(fedge_plan_trial_steps(4.0, 0.0, 20, 120), 120);
    assert_int_equal(fedge_plan_trial_steps(1e9, 0.2, 0, 1), 2); /* at least 2: one to average */
}

/* Yield when more ranks than cores share the node and the user set nothing. */
static void test_should_yield(void **state)
{
    (void)state;
    assert_int_equal(fedge_plan_should_yield("4", 0, 2), 1);
    assert_int_equal(fedge_plan_should_yield("3", 0, 2), 1);
    assert_int_equal(fedge_plan_should_yield("2", 0, 2), 0); /* a core each */
    assert_int_equal(fedge_plan_should_yield("1", 0, 2), 0);
    assert_int_equal(fedge_plan_should_yield("4", 1, 2), 0); /* the user's setting stands */
    assert_int_equal(fedge_plan_should_yield(NULL, 0, 2), 0); /* not under Open MPI's launcher */
    assert_int_equal(fedge_plan_should_yield("", 0, 2), 0);
    assert_int_equal(fedge_plan_should_yield("4x", 0, 2), 0);
    assert_int_equal(fedge_plan_should_yield("4", 0, -1), 0); /* cores unknown */
}

static void test_bind_cpu(void **state)
{
    (void)state;
    /* 4 ranks, 2 CPUs: {0,1} on the first, {2,3} on the second */
    assert_int_equal(fedge_plan_bind_cpu("0", "4", 2), 0);
    assert_int_equal(fedge_plan_bind_cpu("1", "4", 2), 0);
    assert_int_equal(fedge_plan_bind_cpu("2", "4", 2), 1);
    assert_int_equal(fedge_plan_bind_cpu("3", "4", 2), 1);
    assert_int_equal(fedge_plan_bind_cpu("2", "3", 2), 1); /* 3 ranks: {0,1}, {2} */
    assert_int_equal(fedge_plan_bind_cpu("0", "3", 2), 0);
    assert_int_equal(fedge_plan_bind_cpu("4", "8", 3), 1);
    assert_int_equal(fedge_plan_bind_cpu("7", "8", 3), 2);
    assert_int_equal(fedge_plan_bind_cpu("1", "2", 2), -1); /* a CPU each: the OS places them */
    assert_int_equal(fedge_plan_bind_cpu("0", "1", 2), -1);
    assert_int_equal(fedge_plan_bind_cpu("0", "4", 0), -1);
    assert_int_equal(fedge_plan_bind_cpu(NULL, "4", 2), -1); /* not under Open MPI's launcher */
    assert_int_equal(fedge_plan_bind_cpu("0", NULL, 2), -1);
    assert_int_equal(fedge_plan_bind_cpu("x", "4", 2), -1);
    assert_int_equal(fedge_plan_bind_cpu("4", "4", 2), -1); /* rank outside the node's */
    assert_int_equal(fedge_plan_bind_cpu("-1", "4", 2), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loglog),
        cmocka_unit_test(test_monotone),
        cmocka_unit_test(test_median),
        cmocka_unit_test(test_sim_equal_stages_theory),
        cmocka_unit_test(test_sim_messages_and_uneven),
        cmocka_unit_test(test_sim_progress_in_wait),
        cmocka_unit_test(test_sim_rejects),
        cmocka_unit_test(test_share),
        cmocka_unit_test(test_oversub_time),
        cmocka_unit_test(test_sim_oversubscribed),
        cmocka_unit_test(test_median_of_medians),
        cmocka_unit_test(test_loader_time),
        cmocka_unit_test(test_trial_mean),
        cmocka_unit_test(test_trial_steps),
        cmocka_unit_test(test_should_yield),
        cmocka_unit_test(test_bind_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
