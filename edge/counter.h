/* counter.h — the update counter: strictly increasing over the client's life.
 *
 * Each sealed update carries a counter; the aggregator refuses one that is
 * not above the last it accepted from the device (replay protection).
 * next = max(last + 1, now_us): the Unix time in microseconds keeps it
 * monotonic across restarts without any state; with a state directory the
 * last value is also persisted in DIR/DEVICE.counter (written atomically,
 * fsync'd, before the update leaves), so a clock set back cannot reuse a
 * counter either. */
#ifndef FEDGE_EDGE_COUNTER_H
#define FEDGE_EDGE_COUNTER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *path;     /* owned; NULL without a state directory */
    uint64_t last;  /* last counter handed out (or read from the file) */
} fedge_edge_counter;

/* state_dir may be NULL. Creates the directory (mode 0700) if missing.
 * FEDGE_ERR_EDGE_COUNTER (with err naming the file) when the file exists but
 * is not one decimal number; the file is then left as it is. */
int fedge_edge_counter_open(fedge_edge_counter *c, const char *state_dir, const char *id,
                            char *err, size_t errlen);
/* Hands out max(last + 1, now_us) and persists it first (when there is a
 * file); on a write error nothing is handed out and last is unchanged. */
int fedge_edge_counter_next(fedge_edge_counter *c, uint64_t now_us, uint64_t *out);
void fedge_edge_counter_close(fedge_edge_counter *c);
uint64_t fedge_edge_now_us(void);

#endif
