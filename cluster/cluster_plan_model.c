#include "cluster_plan_model.h"

#include <math.h>
#include <stdlib.h>

#include "error.h"

double fedge_plan_loglog(const double *xs, const double *ys, int n, double at)
{
    if (xs == NULL || ys == NULL || n < 1 || !(at > 0.0))
        return -1.0;
    if (at <= xs[0])
        return ys[0];
    if (at >= xs[n - 1])
        return ys[n - 1] * at / xs[n - 1];
    int i = 0;
    while (i + 1 < n && xs[i + 1] < at)
        i++;
    const double lx0 = log(xs[i]), lx1 = log(xs[i + 1]);
    if (!(lx1 > lx0))
        return ys[i];
    const double f = (log(at) - lx0) / (lx1 - lx0);
    return exp(log(ys[i]) + f * (log(ys[i + 1]) - log(ys[i])));
}

void fedge_plan_monotone(double *ys, int n)
{
    double val[FEDGE_PLAN_MONO_MAX];
    int cnt[FEDGE_PLAN_MONO_MAX], k = 0;
    if (ys == NULL || n < 2 || n > FEDGE_PLAN_MONO_MAX)
        return;
    for (int i = 0; i < n; i++) { /* pool adjacent violators, equal weights */
        val[k] = ys[i];
        cnt[k++] = 1;
        while (k > 1 && val[k - 2] > val[k - 1]) {
            val[k - 2] = (val[k - 2] * cnt[k - 2] + val[k - 1] * cnt[k - 1])
                         / (cnt[k - 2] + cnt[k - 1]);
            cnt[k - 2] += cnt[k - 1];
            k--;
        }
    }
    for (int b = 0, i = 0; b < k; b++)
        for (int j = 0; j < cnt[b]; j++)
            ys[i++] = val[b];
}

int fedge_plan_share(int ranks, int cores)
{
    if (ranks < 1 || cores < 1 || cores >= ranks)
        return 1;
    return (ranks + cores - 1) / cores;
}

double fedge_plan_oversub_time(double compute_s, double comm_s, int share)
{
    return (share > 1 ? share : 1) * compute_s + comm_s;
}

double fedge_plan_median(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double fedge_plan_median_of_medians(double *v, int n, int group)
{
    if (n < 1)
        return -1.0;
    if (group < 1 || group > n)
        group = n;
    const int rounds = n / group;
    for (int r = 0; r < rounds; r++) /* round r's median into v[r] */
        v[r] = fedge_plan_median(v + (size_t)r * (size_t)group, group);
    return fedge_plan_median(v, rounds);
}

double fedge_plan_loader_time(int ranks, int cores, int rows, double row_s)
{
    if (ranks < 1 || cores < 1 || rows < 1 || !(row_s >= 0.0) || ranks < cores)
        return 0.0;
    return fedge_plan_share(ranks, cores) * (double)rows * row_s;
}

double fedge_plan_trial_mean_ms(double seconds, double first_ms, int steps)
{
    const double rest = 1e3 * seconds - first_ms;
    if (steps < 2 || !(first_ms >= 0.0) || !(rest > 0.0))
        return -1.0;
    return rest / (double)(steps - 1);
}

int fedge_plan_trial_steps(double step_ms, double target_s, int lo, int hi)
{
    if (lo < 2)
        lo = 2;
    if (hi < lo)
        hi = lo;
    if (!(step_ms > 0.0) || !(target_s > 0.0))
        return hi;
    const double want = 1.0 + ceil(1e3 * target_s / step_ms);
    return want < (double)lo ? lo : want > (double)hi ? hi : (int)want;
}

/* A whole decimal string (an OMPI_COMM_WORLD_LOCAL_* variable) in *out; -1
 * for NULL, empty or trailing characters. */
static int parse_count(const char *s, long *out)
{
    char *end = NULL;
    if (s == NULL)
        return -1;
    *out = strtol(s, &end, 10);
    return end == s || *end != '\0' ? -1 : 0;
}

int fedge_plan_should_yield(const char *local_size, int yield_set, long cores)
{
    long n;
    if (yield_set || cores < 1 || parse_count(local_size, &n) != 0)
        return 0;
    return n > cores;
}

int fedge_plan_bind_cpu(const char *local_rank, const char *local_size, int n_cpus)
{
    long r, n;
    if (n_cpus < 1 || parse_count(local_rank, &r) != 0 || parse_count(local_size, &n) != 0)
        return -1;
    if (n <= n_cpus || r < 0 || r >= n)
        return -1;
    return (int)(r * n_cpus / n);
}

enum { OP_F = 0, OP_B = 1 };

/* The k-th operation of stage s: *kind OP_F or OP_B, *m the micro-batch. */
static void op_at(int schedule, int P, int M, int s, int k, int *kind, int *m)
{
    if (schedule == FEDGE_PP_GPIPE) {
        *kind = k < M ? OP_F : OP_B;
        *m = k < M ? k : 2 * M - 1 - k;
        return;
    }
    const int warm = P - s - 1 < M ? P - s - 1 : M;
    if (k < warm) {
        *kind = OP_F;
        *m = k;
    } else if (k < warm + 2 * (M - warm)) {
        const int j = k - warm;
        *kind = j % 2 == 0 ? OP_F : OP_B;
        *m = j % 2 == 0 ? warm + j / 2 : j / 2;
    } else {
        *kind = OP_B;
        *m = M - warm + (k - warm - 2 * (M - warm));
    }
}

static int begins_with_recv(int kind, int s, int P)
{
    return (kind == OP_F && s > 0) || (kind == OP_B && s < P - 1);
}

/* When the message sent at the end of op k of stage q has arrived, but for
 * its transfer time; < 0: not known yet. */
static double sent_at(const fedge_pp_sim *in, const double *op_end, int q, int k)
{
    const int P = in->pp, M = in->micro, n = 2 * M;
    if (op_end[q * n + k] < 0.0 || !in->progress_in_wait)
        return op_end[q * n + k];
    for (int j = k + 1; j < n; j++) {
        int kind, m;
        op_at(in->schedule, P, M, q, j, &kind, &m);
        if (begins_with_recv(kind, q, P))
            return op_end[q * n + j - 1]; /* the sender starts waiting */
    }
    return op_end[q * n + n - 1]; /* its end-of-step wait */
}

int fedge_pp_simulate(const fedge_pp_sim *in, double *makespan, double busy[FEDGE_GRID_MAX_PP])
{
    if (in == NULL || makespan == NULL || in->pp < 1 || in->pp > FEDGE_GRID_MAX_PP
        || in->micro < 1 || in->micro > FEDGE_PP_SIM_MAX_MICRO
        || (in->schedule != FEDGE_PP_GPIPE && in->schedule != FEDGE_PP_1F1B))
        return FEDGE_ERR_INVALID_ARG;
    const int P = in->pp, M = in->micro, n = 2 * M;
    for (int s = 0; s < P; s++)
        if (!(in->fwd[s] >= 0.0) || !(in->bwd[s] >= 0.0) || !(in->send_fwd[s] >= 0.0)
            || !(in->send_bwd[s] >= 0.0))
            return FEDGE_ERR_INVALID_ARG;
    /* op_end[s * 2M + k]: end of stage s's k-th operation, < 0 while not run;
     * f_op/b_op[s * M + m]: the index k of F(m) / B(m) on stage s */
    double *op_end = malloc((size_t)P * (size_t)n * sizeof(double));
    int *f_op = malloc(2 * (size_t)P * (size_t)M * sizeof(int));
    int ret = op_end != NULL && f_op != NULL ? FEDGE_OK : FEDGE_ERR_NOMEM;
    int *b_op = f_op + (size_t)P * (size_t)M;
    double free_at[FEDGE_GRID_MAX_PP];
    int next[FEDGE_GRID_MAX_PP];
    for (int s = 0; s < P && ret == FEDGE_OK; s++) {
        free_at[s] = 0.0;
        next[s] = 0;
        for (int k = 0; k < n; k++) {
            int kind, m;
            op_at(in->schedule, P, M, s, k, &kind, &m);
            op_end[s * n + k] = -1.0;
            if (kind == OP_F)
                f_op[s * M + m] = k;
            else
                b_op[s * M + m] = k;
        }
    }
    int left = n * P;
    while (left > 0 && ret == FEDGE_OK) {
        int progressed = 0;
        for (int s = 0; s < P; s++) {
            while (next[s] < n) {
                int kind, m;
                op_at(in->schedule, P, M, s, next[s], &kind, &m);
                double ready = free_at[s];
                if (kind == OP_F && s > 0) {
                    const double t = sent_at(in, op_end, s - 1, f_op[(s - 1) * M + m]);
                    if (t < 0.0)
                        break;
                    ready = fmax(ready, t + in->send_fwd[s - 1]);
                } else if (kind == OP_B && s < P - 1) {
                    const double t = sent_at(in, op_end, s + 1, b_op[(s + 1) * M + m]);
                    if (t < 0.0)
                        break;
                    ready = fmax(ready, t + in->send_bwd[s]);
                }
                free_at[s] = op_end[s * n + next[s]] =
                    ready + (kind == OP_F ? in->fwd[s] : in->bwd[s]);
                next[s]++;
                left--;
                progressed = 1;
            }
        }
        if (!progressed)
            ret = FEDGE_ERR_INTERNAL; /* a schedule that waits on itself */
    }
    free(op_end);
    free(f_op);
    if (ret != FEDGE_OK)
        return ret;
    double end = 0.0;
    for (int s = 0; s < P; s++) {
        end = fmax(end, free_at[s]);
        if (busy != NULL)
            busy[s] = M * (in->fwd[s] + in->bwd[s]);
    }
    *makespan = end;
    return FEDGE_OK;
}
