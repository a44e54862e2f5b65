/* refine.h — running the cluster refinement command.
 *
 * The configured command is a template: {in} (input model file), {out}
 * (output model file), {round} are substituted, each shell-quoted, and the
 * result runs under /bin/sh -c in its own process group. A command still
 * running after the timeout gets SIGTERM, then SIGKILL two seconds later.
 * The last non-empty line of its standard output (the JSON summary
 * fedge-cluster prints) is returned, whole: a last line longer than the
 * caller's buffer (at most FEDGE_REFINE_SUMMARY_MAX - 1 bytes are kept of
 * the output's tail) is replaced by a note saying so, never cut. A stop flag (the daemon's SIGTERM)
 * set while it runs ends it the same way at once. */
#ifndef FEDGE_REFINE_H
#define FEDGE_REFINE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* The longest summary line kept, with its NUL. */
#define FEDGE_REFINE_SUMMARY_MAX 8192

/* flag: when it turns non-zero, a running command is terminated (NULL: none). */
void fedge_refine_set_stop(const volatile sig_atomic_t *flag);
/* 1 once that flag is set: waits elsewhere give up too. */
int fedge_refine_stop_requested(void);

/* *exit_status: the command's exit code, or -1 (timed out / killed by a signal). */
int fedge_refine_command_run(const char *tmpl, const char *in, const char *out, uint32_t round,
                             double timeout_s, int *exit_status, char *summary, size_t cap);
/* Expands the template into buf (exposed for tests). */
int fedge_refine_expand(const char *tmpl, const char *in, const char *out, uint32_t round, char *buf,
                        size_t cap);

#endif
