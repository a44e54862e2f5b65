/* observe.h — pure pieces of the edge's push path (RFC 7641, CoAP Observe)
 * and of the finished marker.
 *
 * Observe option values are 0..3 bytes, an unsigned big-endian sequence
 * number of 24 bits (RFC 7641 §2); a longer value is malformed.
 * Freshness (RFC 7641 §3.4): a notification (V2, received at T2 ms) is newer
 * than an earlier one (V1, T1) when V1 < V2 and V2 - V1 < 2^23, or V1 > V2
 * and V1 - V2 > 2^23, or more than 128 s have passed since T1.
 *
 * The finished marker: `<state_dir>/<id>.finished`, one line
 * "run=<32 hex digits>\n": the edge heard the aggregator report the run with
 * that id finished. Parsing is strict (the line exactly, an optional final
 * LF, nothing else); a malformed marker is FEDGE_ERR_PROTO and is treated
 * as absent by the client. Writes are atomic (fileio.h). Errors: shared
 * error codes; *_read's *present = 0 with FEDGE_OK when there is no file. */
#ifndef FEDGE_EDGE_OBSERVE_H
#define FEDGE_EDGE_OBSERVE_H

#include <stddef.h>
#include <stdint.h>

#include "update.h"

#define FEDGE_OBSERVE_SEQ_BITS 24
#define FEDGE_OBSERVE_FRESH_MS 128000u
#define FEDGE_FINISHED_MARKER_MAX 64 /* longest marker file read */

int fedge_observe_value(const uint8_t *bytes, size_t len, uint32_t *out);
int fedge_observe_is_fresher(uint32_t v1, uint64_t t1_ms, uint32_t v2, uint64_t t2_ms);

/* malloc'd "<state_dir>/<id>.finished". */
int fedge_finished_marker_path(const char *state_dir, const char *id, char **out);
int fedge_finished_marker_parse(const char *text, size_t len, uint8_t run_id[FEDGE_RUN_ID_LEN]);
int fedge_finished_marker_read(const char *path, uint8_t run_id[FEDGE_RUN_ID_LEN], int *present);
int fedge_finished_marker_write(const char *path, const uint8_t run_id[FEDGE_RUN_ID_LEN]);
/* Removes the marker; FEDGE_OK when there was none. */
int fedge_finished_marker_clear(const char *path);

#endif
