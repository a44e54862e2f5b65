/* common.h — small macros shared by every module. */
#ifndef FEDGE_COMMON_H
#define FEDGE_COMMON_H

#include "error.h"

/* CHK(expr): evaluate a status-returning call; on failure store it in `ret`
 * and jump to the function's `cleanup:` label. */
#define CHK(expr)                    \
    do {                             \
        ret = (expr);                \
        if (ret != FEDGE_OK)         \
            goto cleanup;            \
    } while (0)

/* FAIL(code): set `ret` and jump to cleanup. */
#define FAIL(code)        \
    do {                  \
        ret = (code);     \
        goto cleanup;     \
    } while (0)

#define FEDGE_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define FEDGE_UNUSED(x) ((void)(x))

#endif
