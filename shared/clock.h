/* clock.h — the two clocks a fedge process reads.
 *
 * fedge_clock_mono: CLOCK_MONOTONIC seconds, for every timer and deadline.
 * fedge_clock_wall: Unix seconds for logs and records: the wall clock read
 * at the first call, then advanced by the monotonic clock, so timestamps
 * never step within a process (a clock stepped back 600 s or forward two
 * hours moves no timestamp); a new process reads the wall clock again.
 * Both are safe to call from any thread once the first call has returned.
 *
 * Simulation (fedge-sim): fedge_clock_virtual(wall0) switches the process to
 * a virtual clock: mono reads t (starting at 0) and wall reads wall0 + t,
 * and only fedge_clock_virtual_set moves t (never backwards: an earlier t
 * is FEDGE_ERR_INVALID_ARG). The driver sets it while no other thread reads
 * the clock. */
#ifndef FEDGE_CLOCK_H
#define FEDGE_CLOCK_H

double fedge_clock_mono(void);
double fedge_clock_wall(void);

void fedge_clock_virtual(double wall0);
int fedge_clock_virtual_set(double t);

#endif
