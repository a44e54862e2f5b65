/* blas.c — backend name and thread count of the BLAS behind fedge_sgemm. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "blas.h"
#include "common.h"
#include "text.h"

#if FEDGE_BLAS_OPENBLAS
#include <cblas.h>
#endif

static int portable_threads = 1;
static atomic_int threads_chosen; /* set once a count was chosen, by a call or by default */
static atomic_int malformed_warned;

const char *fedge_blas_name(void)
{
#if FEDGE_BLAS_OPENBLAS
    return "openblas";
#else
    return "portable";
#endif
}

const char *fedge_blas_config(void)
{
#if FEDGE_BLAS_OPENBLAS
    static _Thread_local char line[256];
    snprintf(line, sizeof line, "%s (%s)", openblas_get_config(), openblas_get_corename());
    return line;
#else
    return "fedge portable packed kernel (no BLAS)";
#endif
}

int fedge_blas_set_threads(int n)
{
    if (n < 1 || n > FEDGE_BLAS_MAX_THREADS)
        return FEDGE_ERR_INVALID_ARG;
#if FEDGE_BLAS_OPENBLAS
    openblas_set_num_threads(n);
#endif
    portable_threads = n;
    atomic_store_explicit(&threads_chosen, 1, memory_order_relaxed);
    return FEDGE_OK;
}

int fedge_blas_threads(void)
{
#if FEDGE_BLAS_OPENBLAS
    return openblas_get_num_threads();
#else
    return portable_threads;
#endif
}

int fedge_blas_threads_from_env(int fallback, int *used)
{
    int n = fallback;
    const char *s = getenv("FEDGE_BLAS_THREADS");
    if (s != NULL && *s != '\0') {
        if (*s < '0' || *s > '9') /* strtol would skip blanks and take a sign */
            return FEDGE_ERR_CONFIG_VALUE;
        char *end = NULL;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || v < 1 || v > FEDGE_BLAS_MAX_THREADS)
            return FEDGE_ERR_CONFIG_VALUE;
        n = (int)v;
    }
    int ret = fedge_blas_set_threads(n);
    if (ret == FEDGE_OK && used != NULL)
        *used = n;
    return ret;
}

void fedge_blas_default_threads(void)
{
    if (atomic_load_explicit(&threads_chosen, memory_order_relaxed))
        return;
    if (fedge_blas_threads_from_env(1, NULL) == FEDGE_OK)
        return;
    (void)fedge_blas_set_threads(1);
    if (atomic_exchange(&malformed_warned, 1) == 0) {
        char *v = fedge_text_escape_dup(getenv("FEDGE_BLAS_THREADS"));
        fprintf(stderr,
                "fedge: warning: FEDGE_BLAS_THREADS='%s' is not a thread count 1..%d; ignored, "
                "the BLAS runs 1 thread\n",
                v ? v : "?", FEDGE_BLAS_MAX_THREADS);
        free(v);
    }
}
