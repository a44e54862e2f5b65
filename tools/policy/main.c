/* fedge-policy — checks a governance policy file without an aggregator.
 *
 *   fedge-policy validate FILE
 *       loads FILE with fedge_policy_load, the daemon's own loader (the same
 *       syntax, keys, ranges and messages), and prints "FILE: ok NAME@SHA12"
 *       then the normalised policy (every key, defaults filled in), or the
 *       error "FILE:LINE: KEY: what is wrong" on stderr.
 *   fedge-policy show FILE
 *       the normalised policy alone, then its one-line summary as a comment.
 * What depends on the aggregator's configuration (min_clients against the
 * devices, DP with a robust combiner) is checked by fedge-aggregator --check.
 * Exit status: 0 valid, 1 invalid, 2 usage. */
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "log.h"
#include "policy.h"
#include "version.h"

static const char USAGE[] =
    "usage: fedge-policy validate FILE    check FILE as the aggregator loads it; print it normalised\n"
    "       fedge-policy show FILE        print FILE normalised (every key, defaults filled in)\n"
    "       fedge-policy --help | --version\n"
    "\n"
    "The keys are in docs/POLICY.md. Settings that depend on the aggregator's\n"
    "configuration are checked by fedge-aggregator --check.\n"
    "exit status: 0 valid, 1 invalid, 2 usage\n";

int main(int argc, char **argv)
{
    fedge_policy *p = NULL;
    char err[1024] = "";
    fedge_log_set_level(FEDGE_LOG_OFF); /* the loader's reason is printed below */
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "--version")) {
        printf("fedge-policy %s\n", FEDGE_VERSION);
        return 0;
    }
    if (argc != 3 || (strcmp(argv[1], "validate") != 0 && strcmp(argv[1], "show") != 0)) {
        fputs(USAGE, stderr);
        return 2;
    }
    int show = !strcmp(argv[1], "show");
    const char *path = argv[2];
    int ret = fedge_policy_load(path, &p, err, sizeof err);
    if (ret != FEDGE_OK) {
        /* the loader's message is escaped already (policy.h): escaping it again would double every \ */
        fprintf(stderr, "fedge-policy: %s\n", err[0] ? err : fedge_strerror(ret));
        return 1;
    }
    char summary[1024] = "";
    (void)fedge_policy_summary(p, summary, sizeof summary);
    if (!show)
        printf("# %s: ok %s\n", path, fedge_policy_name(p));
    ret = fedge_policy_write_yaml(p, stdout);
    if (show)
        printf("# %s: %s\n", fedge_policy_name(p), summary);
    fedge_policy_free(p);
    if (ret != FEDGE_OK || fflush(stdout) != 0) {
        fprintf(stderr, "fedge-policy: cannot write the output\n");
        return 2;
    }
    return 0;
}
