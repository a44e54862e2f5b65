/* log.h — leveled logging to stderr (or a file), one line per event:
 *   2026-11-25T19:40:01.123Z INFO  aggregator: round 3 closed (8 accepted)
 * The level, stream and tag are process-wide; set them once at start-up,
 * before other threads log. Any thread may log: each call writes its whole
 * line under the stream's lock. The formatted message is
 * escaped with fedge_text_escape (text.h): control characters, C1 controls
 * and invalid UTF-8 print as \xNN, so a log line is always one line. */
#ifndef FEDGE_LOG_H
#define FEDGE_LOG_H

#include <stdio.h>

typedef enum {
    FEDGE_LOG_DEBUG = 0,
    FEDGE_LOG_INFO = 1,
    FEDGE_LOG_WARN = 2,
    FEDGE_LOG_ERROR = 3,
    FEDGE_LOG_OFF = 4,
} fedge_log_level;

void fedge_log_set_level(fedge_log_level level);
fedge_log_level fedge_log_get_level(void);
int fedge_log_parse_level(const char *text, fedge_log_level *out); /* debug|info|warn|error|off */
/* NULL restores stderr. The stream is not closed by the logger. */
void fedge_log_set_stream(FILE *f);
void fedge_log_set_tag(const char *tag); /* e.g. "edge dev-3"; copied, truncated to 31 chars */
/* The calling thread's own tag, in place of the process's (NULL: back to it). */
void fedge_log_set_thread_tag(const char *tag);

void fedge_log(fedge_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define FEDGE_DEBUG(...) fedge_log(FEDGE_LOG_DEBUG, __VA_ARGS__)
#define FEDGE_INFO(...) fedge_log(FEDGE_LOG_INFO, __VA_ARGS__)
#define FEDGE_WARN(...) fedge_log(FEDGE_LOG_WARN, __VA_ARGS__)
#define FEDGE_ERROR(...) fedge_log(FEDGE_LOG_ERROR, __VA_ARGS__)

#endif
