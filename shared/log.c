#include "log.h"

#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "clock.h"
#include "error.h"
#include "text.h"

static fedge_log_level g_level = FEDGE_LOG_INFO;
static FILE *g_stream;
static char g_tag[32] = "fedge";
static _Thread_local char t_tag[32]; /* this thread's tag; "" = g_tag */

void fedge_log_set_level(fedge_log_level level) { g_level = level; }
fedge_log_level fedge_log_get_level(void) { return g_level; }
void fedge_log_set_stream(FILE *f) { g_stream = f; }

void fedge_log_set_tag(const char *tag)
{
    if (!tag)
        tag = "fedge";
    fedge_text_escape(tag, strlen(tag), g_tag, sizeof g_tag);
}

void fedge_log_set_thread_tag(const char *tag)
{
    if (!tag)
        t_tag[0] = '\0';
    else
        fedge_text_escape(tag, strlen(tag), t_tag, sizeof t_tag);
}

int fedge_log_parse_level(const char *text, fedge_log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i < 5; i++) {
        if (text && strcasecmp(text, names[i]) == 0) {
            *out = (fedge_log_level)i;
            return FEDGE_OK;
        }
    }
    return FEDGE_ERR_INVALID_ARG;
}

void fedge_log(fedge_log_level level, const char *fmt, ...)
{
    static const char *names[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
    if (level < g_level || level >= FEDGE_LOG_OFF)
        return;
    FILE *out = g_stream ? g_stream : stderr;
    struct tm tm;
    char when[32];
    double now = fedge_clock_wall(); /* the clock the records use: never steps */
    time_t sec = (time_t)now;
    long ms = (long)((now - (double)sec) * 1000.0);
    gmtime_r(&sec, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);

    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* Messages carry peer-supplied strings (device ids, reasons): a log line
     * stays one line and holds no terminal escape. */
    char safe[4 * sizeof line];
    fedge_text_escape(line, strlen(line), safe, sizeof safe);
    flockfile(out); /* one whole line per call, whatever other threads write */
    fprintf(out, "%s.%03ldZ %s %s: %s\n", when, ms, names[level], t_tag[0] ? t_tag : g_tag,
            safe);
    fflush(out);
    funlockfile(out);
}
