/* clock.h — the two clocks a fedge process reads.
 *
 * fedge_clock_mono: CLOCK_MONOTONIC seconds, for every timer and deadline.
 * fedge_clock_wall: Unix seconds for logs and records: the wall clock read
 * at the first call, then advanced by the monotonic clock, so timestamps
 * never step within a process (a clock stepped back 600 s or forward two
 * hours moves no timestamp); a new process reads the wall clock again.
 * Both are safe to call from any thread once the first call has returned. */
#ifndef FEDGE_CLOCK_H
#define FEDGE_CLOCK_H

double fedge_clock_mono(void);
double fedge_clock_wall(void);

#endif
