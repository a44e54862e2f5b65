/* check.h — fedge-aggregator --check: everything a start would check,
 * without starting.
 *
 * Reads the configuration (defaults, --config FILE, --key value options, as
 * a start does), then checks in turn, one output line each ("NAME: ok ..."
 * or "NAME: error: REASON", with FILE:LINE where the parser knows it):
 *   config       every key, its type and range, the paths that must exist
 *   keys         the keys file (syntax, duplicates, secret lengths, modes)
 *   policy       the policy file (or the default) as the daemon loads it, and
 *                that its settings fit the configuration and the devices
 *   signing_key  loads, and signed the database's last signed head if any
 *   database     opened read-only: a fedge log of this schema, the audit
 *                chain head present, the run's state (rounds, current model)
 * The database is opened read-only and the instance lock is not taken: a
 * running daemon's log can be checked, and nothing is written anywhere.
 * Returns the exit status: 0 all ok, 1 a check failed, 2 usage (a bad
 * command-line option). */
#ifndef FEDGE_AGG_CHECK_H
#define FEDGE_AGG_CHECK_H

#include <stdio.h>

/* argv as main got it; "--check" is skipped wherever it is. */
int fedge_agg_check(int argc, char **argv, FILE *out);

#endif
