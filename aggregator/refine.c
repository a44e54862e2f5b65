#include "refine.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "log.h"

static int append(char *buf, size_t cap, size_t *len, const char *s, size_t n)
{
    if (*len + n >= cap)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    memcpy(buf + *len, s, n);
    *len += n;
    buf[*len] = '\0';
    return FEDGE_OK;
}

/* 'it'\''s' style single quoting */
static int append_quoted(char *buf, size_t cap, size_t *len, const char *s)
{
    int ret;
    CHK(append(buf, cap, len, "'", 1));
    for (; *s; s++) {
        if (*s == '\'')
            CHK(append(buf, cap, len, "'\\''", 4));
        else
            CHK(append(buf, cap, len, s, 1));
    }
    CHK(append(buf, cap, len, "'", 1));
cleanup:
    return ret;
}

int fedge_refine_expand(const char *tmpl, const char *in, const char *out, uint32_t round, char *buf,
                        size_t cap)
{
    size_t len = 0;
    int ret = FEDGE_OK;
    char num[16];
    snprintf(num, sizeof num, "%u", round);
    if (cap == 0)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    buf[0] = '\0';
    for (const char *p = tmpl; *p;) {
        if (!strncmp(p, "{in}", 4)) {
            CHK(append_quoted(buf, cap, &len, in));
            p += 4;
        } else if (!strncmp(p, "{out}", 5)) {
            CHK(append_quoted(buf, cap, &len, out));
            p += 5;
        } else if (!strncmp(p, "{round}", 7)) {
            CHK(append(buf, cap, &len, num, strlen(num)));
            p += 7;
        } else {
            CHK(append(buf, cap, &len, p, 1));
            p++;
        }
    }
cleanup:
    return ret;
}

/* Keeps the last cap-1 bytes of a stream in tail. */
static void keep_tail(char *tail, size_t cap, size_t *len, const char *data, size_t n)
{
    if (n > cap - 1) {
        data += n - (cap - 1);
        n = cap - 1;
    }
    if (*len + n > cap - 1) {
        size_t drop = *len + n - (cap - 1);
        memmove(tail, tail + drop, *len - drop);
        *len -= drop;
    }
    memcpy(tail + *len, data, n);
    *len += n;
    tail[*len] = '\0';
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const volatile sig_atomic_t *g_stop;

void fedge_refine_set_stop(const volatile sig_atomic_t *flag)
{
    g_stop = flag;
}

int fedge_refine_stop_requested(void)
{
    return g_stop && *g_stop;
}

int fedge_refine_command_run(const char *tmpl, const char *in, const char *out, uint32_t round,
                             double timeout_s, int *exit_status, char *summary, size_t cap)
{
    char cmd[4096];
    char chunk[512];
    char tail[2 * FEDGE_REFINE_SUMMARY_MAX] = "";
    size_t tail_len = 0, dropped = 0;
    int pipefd[2] = {-1, -1};
    int ret;
    pid_t pid = -1;
    *exit_status = -1;
    if (cap)
        summary[0] = '\0';
    CHK(fedge_refine_expand(tmpl, in, out, round, cmd, sizeof cmd));
    if (pipe2(pipefd, O_CLOEXEC) != 0)
        FAIL(FEDGE_ERR_IO);
    pid = fork();
    if (pid < 0)
        FAIL(FEDGE_ERR_IO);
    if (pid == 0) {
        setpgid(0, 0);
        dup2(pipefd[1], STDOUT_FILENO);
        /* nothing of the daemon's (its CoAP socket above all, which would
         * keep the port from a restart) goes to the command */
        close_range(3, ~0U, 0);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid);
    close(pipefd[1]);
    pipefd[1] = -1;
    FEDGE_INFO("refinement: %s", cmd);

    double deadline = mono_now() + timeout_s, killed_at = 0;
    int open_out = 1, wstatus = 0;
    for (;;) {
        double now = mono_now();
        if (!killed_at && now >= deadline) {
            FEDGE_WARN("refinement exceeded %.0fs; terminating it", timeout_s);
            kill(-pid, SIGTERM);
            killed_at = now;
        } else if (!killed_at && g_stop && *g_stop) {
            FEDGE_WARN("stop requested; terminating the refinement");
            kill(-pid, SIGTERM);
            killed_at = now;
        } else if (killed_at && now >= killed_at + 2.0) {
            kill(-pid, SIGKILL);
        }
        if (open_out) {
            struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
            if (poll(&pfd, 1, 100) > 0) {
                ssize_t n = read(pipefd[0], chunk, sizeof chunk);
                if (n <= 0)
                    open_out = 0;
                else {
                    size_t before = tail_len;
                    keep_tail(tail, sizeof tail, &tail_len, chunk, (size_t)n);
                    dropped += before + (size_t)n - tail_len;
                }
            }
            continue;
        }
        if (waitpid(pid, &wstatus, WNOHANG) == pid)
            break;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    pid = -1;
    if (WIFEXITED(wstatus) && !killed_at)
        *exit_status = WEXITSTATUS(wstatus);
    /* last non-empty line */
    while (tail_len && (tail[tail_len - 1] == '\n' || tail[tail_len - 1] == '\r'))
        tail[--tail_len] = '\0';
    char *last = strrchr(tail, '\n');
    const char *line = last ? last + 1 : tail;
    if (cap && (strlen(line) >= cap || (!last && dropped))) {
        /* its start fell out of the window, or the caller's buffer is short */
        FEDGE_WARN("refinement: its summary line is over %zu bytes; not recorded", cap - 1);
        snprintf(summary, cap, "(summary line over %zu bytes, not recorded)", cap - 1);
    } else if (cap) {
        memcpy(summary, line, strlen(line) + 1);
    }
    ret = FEDGE_OK;
cleanup:
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    if (pid > 0) {
        kill(-pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    return ret;
}
