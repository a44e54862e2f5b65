/* lean_steps/lean_steps.c — one-sample training passes of a model in the LEAN scratch
 * layout with the edge profile's sizes (tools/bench/lean_steps.sh builds it
 * against a tree's shared/model.c and shared/gemm.c): prints the scratch
 * size and the time per pass. Not part of any build: its own folder keeps it out of the Makefile's tools/bench/*.c. */
#include MODEL_C
#include <stdio.h>
#include <time.h>

static int sink_nop(void *a, size_t off, float *g, size_t n)
{
    (void)a;
    (void)off;
    (void)g;
    (void)n;
    return 0;
}

int main(int argc, char **argv)
{
    int passes = argc > 2 ? atoi(argv[2]) : 20;
    fedge_model_spec s;
    fedge_model m;
    fedge_rng r;
    if (argc < 2 || fedge_model_spec_parse(argv[1], &s) != FEDGE_OK || s.input_dim > 4096 ||
        passes < 1)
        return 2;
    if (fedge_model_init(&m, &s) != FEDGE_OK)
        return 1;
    fedge_rng_seed(&r, 1);
    fedge_model_randomize(&m, &r);
#ifdef LEAN_STEPS_MIN /* the least layout, as the edge profile takes it (LAYOUT=min) */
    size_t lean = fedge_model_scratch_floats_min(&s, 1);
#else
    size_t lean = fedge_model_scratch_floats_layout(&s, 1, FEDGE_SCRATCH_LEAN);
#endif
#ifdef LEAN_STEPS_CHUNK_FIT /* a tree with the patch layout: its slice for that scratch */
    size_t cf = fedge_model_grad_chunk_floats_fit(&s, 1, lean);
#else
    size_t cf = fedge_model_grad_chunk_floats(&s);
#endif
    float *scr = malloc(lean * sizeof(float));
    float *chunk = malloc(cf * sizeof(float));
    uint8_t *x = malloc((size_t)s.input_dim * 8), y[8];
    if (!scr || !chunk || !x)
        return 1;
    for (size_t i = 0; i < (size_t)s.input_dim * 8; i++)
        x[i] = (uint8_t)(fedge_rng_u64(&r) >> 56);
    for (int i = 0; i < 8; i++)
        y[i] = (uint8_t)(fedge_rng_u64(&r) % (uint64_t)s.classes);
    struct timespec t0, t1;
    float loss;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int k = 0; k < passes; k++)
        if (fedge_model_loss_grad_sliced_u8_n(&m, x + (size_t)s.input_dim * (k % 8), 1.0f / 255,
                                              y + k % 8, 1, 0, scr, lean, chunk, cf, sink_nop,
                                              NULL, &loss) != FEDGE_OK)
            return 1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%zu %.3f\n", lean * sizeof(float),
           ((double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6) /
               passes);
    return 0;
}
