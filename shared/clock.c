/* clock.c — monotonic and step-free wall time (see clock.h). */
#include "clock.h"

#include <time.h>

double fedge_clock_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

double fedge_clock_wall(void)
{
    static double wall0, mono0;
    static int anchored;
    if (!anchored) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        wall0 = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
        mono0 = fedge_clock_mono();
        anchored = 1;
    }
    return wall0 + (fedge_clock_mono() - mono0);
}
