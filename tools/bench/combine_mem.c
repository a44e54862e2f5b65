/* bench-combine_mem: the heap each combiner (aggregator/combine.h) needs,
 * and its time, against the n × n_params floats of holding every delta.
 *
 * The deltas come from a synthetic reader (generated on each read, nothing
 * stored): uniform in [−1, 1) per coordinate, the first fifth of the
 * clients sending the sign-flipped honest value ×10. The heap is counted by
 * malloc/calloc/realloc/free defined here over glibc's own (every
 * allocation of the process goes through them; not in a sanitizer build,
 * whose allocator is its own), and the peak of the bytes
 * in use during the combination is reported; the output buffer (n_params
 * floats, the caller's) is allocated before and not counted. Baseline, the
 * same run: n × n_params × 4 bytes, what a combiner holding all the
 * deltas would need.
 *
 *   bench-combine_mem [N [N_PARAMS [BLOCK ...]]]   (default 100 4194304 4096 65536) */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "combine.h"
#include "common.h"

static int counting;
static size_t in_use, peak;

/* A sanitizer build brings its own allocator: nothing is counted there. */
#ifdef __SANITIZE_ADDRESS__
#define HEAP_COUNTED 0
#else
#define HEAP_COUNTED 1
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void __libc_free(void *p);

static void *counted(void *p)
{
    if (p && counting) {
        in_use += malloc_usable_size(p);
        if (in_use > peak)
            peak = in_use;
    }
    return p;
}

static void uncount(void *p)
{
    if (p && counting) {
        size_t s = malloc_usable_size(p);
        in_use = in_use > s ? in_use - s : 0;
    }
}

void *malloc(size_t size)
{
    return counted(__libc_malloc(size));
}

void *calloc(size_t n, size_t size)
{
    return counted(__libc_calloc(n, size));
}

void *realloc(void *p, size_t size)
{
    uncount(p);
    return counted(__libc_realloc(p, size));
}

void free(void *p)
{
    uncount(p);
    __libc_free(p);
}
#endif

typedef struct {
    size_t attackers;
    size_t reads;
    size_t coords;
} synth;

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int synth_read(fedge_update_reader *r, size_t i, size_t k0, size_t k1, float *out)
{
    synth *s = r->ctx;
    float scale = i < s->attackers ? -10.0f : 1.0f;
    for (size_t k = k0; k < k1; k++)
        out[k - k0] = scale * ((float)(mix((uint64_t)i * r->n_params + k) >> 40) * (2.0f / 16777216.0f) - 1.0f);
    s->reads++;
    s->coords += k1 - k0;
    return FEDGE_OK;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 100;
    size_t n_params = argc > 2 ? strtoull(argv[2], NULL, 10) : 4194304;
    size_t default_blocks[] = {4096, 65536}, n_blocks = argc > 3 ? (size_t)argc - 3 : 2;
    static const char *rules[] = {"mean", "median", "trimmed_mean", "krum", "multikrum", "bulyan"};
    int status = 0;
    if (n < 7 || n_params < 1) {
        fprintf(stderr, "usage: bench-combine_mem [N >= 7 [N_PARAMS [BLOCK ...]]]\n");
        return 2;
    }
    float *out = malloc(n_params * sizeof *out);
    double *w = malloc(n * sizeof *w);
    uint8_t *used = malloc(n);
    if (!out || !w || !used) {
        fprintf(stderr, "bench-combine_mem: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        w[i] = 1;
    long f = (long)(n / 5); /* the attackers; Bulyan needs n >= 4f + 3 */
    double naive = (double)n * (double)n_params * 4;
    if (!HEAP_COUNTED)
        printf("sanitizer build: the heap is not counted\n");
    printf("n = %zu clients (%zu sign-flipped x10), %zu parameters; naive (all deltas held): %.1f MiB\n", n,
           (size_t)f, n_params, naive / 1048576);
    printf("%-13s %7s %4s %12s %10s %9s %9s %12s\n", "rule", "block", "f", "peak heap", "n*block*4", "naive/peak",
           "time s", "reads/delta");
    for (size_t b = 0; b < n_blocks; b++) {
        size_t block = argc > 3 ? strtoull(argv[3 + b], NULL, 10) : default_blocks[b];
        for (size_t r = 0; r < FEDGE_ARRAY_LEN(rules); r++) {
            fedge_combine_params p = {.trim_beta = 0.2, .f = f, .m = 0, .block = block};
            const fedge_combiner *c = fedge_combiner_find(rules[r]);
            char why[256];
            synth s = {.attackers = (size_t)f};
            fedge_update_reader rd = {.n = n, .n_params = n_params, .read = synth_read, .ctx = &s};
            snprintf(p.name, sizeof p.name, "%s", rules[r]);
            if (strcmp(rules[r], "bulyan") == 0 && (size_t)p.f > (n - 3) / 4)
                p.f = (long)((n - 3) / 4);
            if (c->check(&p, n, why, sizeof why) != FEDGE_OK) {
                printf("%-13s %7zu %4ld  refused: %s\n", rules[r], block, p.f, why);
                continue;
            }
            in_use = peak = 0;
            counting = 1;
            double t0 = now_s();
            int ret = c->combine(&p, &rd, w, out, used);
            double dt = now_s() - t0;
            counting = 0;
            if (ret != FEDGE_OK) {
                printf("%-13s %7zu  failed: %s\n", rules[r], block, fedge_strerror(ret));
                status = 1;
                continue;
            }
            size_t attackers_used = 0;
            for (size_t i = 0; i < (size_t)f; i++)
                attackers_used += used[i];
            printf("%-13s %7zu %4ld %8.2f MiB %6.2f MiB %9.0fx %9.2f %12.2f%s\n", rules[r], block, p.f,
                   (double)peak / 1048576, (double)n * (double)block * 4 / 1048576, peak ? naive / (double)peak : 0.0, dt,
                   (double)s.coords / (double)n_params / (double)n,
                   r >= 3 && attackers_used ? "  (an attacker chosen)" : "");
            fflush(stdout);
        }
    }
    free(out);
    free(w);
    free(used);
    return status;
}
