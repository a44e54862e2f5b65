/* clock.c — monotonic and step-free wall time (see clock.h). */
#include "clock.h"

#include <time.h>

#include "common.h"

static int virtual_on;
static double virtual_t, virtual_wall0;

double fedge_clock_mono(void)
{
    if (virtual_on)
        return virtual_t;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

double fedge_clock_wall(void)
{
    static double wall0, mono0;
    static int anchored;
    if (virtual_on)
        return virtual_wall0 + virtual_t;
    if (!anchored) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        wall0 = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
        mono0 = fedge_clock_mono();
        anchored = 1;
    }
    return wall0 + (fedge_clock_mono() - mono0);
}

void fedge_clock_virtual(double wall0)
{
    virtual_on = 1;
    virtual_t = 0;
    virtual_wall0 = wall0;
}

int fedge_clock_virtual_set(double t)
{
    if (!virtual_on || !(t >= virtual_t))
        return FEDGE_ERR_INVALID_ARG;
    virtual_t = t;
    return FEDGE_OK;
}
