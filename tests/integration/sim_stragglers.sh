#!/usr/bin/env bash
# fedge-sim's dropout and stragglers on the virtual clock: rounds missing a
# client close at their deadline (virtual seconds, no real sleeping); a
# straggler's update arrives in a later round, where the policy's staleness
# window decides: accepted and logged with staleness 1 when max_staleness is
# 1, never counted when it is 0.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/sim.sh

sim_setup 10 10
printf 'version: 1\nupdate:\n  max_staleness: 1\n' >"$SIM_DIR/window.yaml"
args=(--model-spec softmax:784-10 --rounds 6 --round-timeout-s 3 --threads 2
      --dropout 0.2 --stragglers 0.3 --straggler-factor 10)

sim_run window "${args[@]}" --policy-file "$SIM_DIR/window.yaml" || sim_fail "run with a staleness window"
late=$(sim_summary window late)
[ "$late" -gt 0 ] || sim_fail "no straggler's update arrived late"
[ "$(sim_summary window dropped)" -gt 0 ] || sim_fail "no client dropped out"
logged=$(sim_sql window "SELECT count(*) FROM updates WHERE decision<>'rejected' AND reason LIKE '%staleness 1 <=%'")
[ "$logged" = "$late" ] || sim_fail "$late late updates reported, $logged logged with staleness 1"
# a round short of clients waits for its deadline: 3 virtual seconds
short=$(sim_sql window "SELECT count(*) FROM rounds WHERE n_accepted < n_selected")
[ "$short" -gt 0 ] || sim_fail "every round complete: dropout and stragglers had no effect"
bad=$(sim_sql window "SELECT count(*) FROM rounds WHERE n_accepted < n_selected AND abs(closed_at - opened_at - 3) > 0.01")
[ "$bad" = 0 ] || sim_fail "$bad short rounds did not close at their 3 s deadline"
gaps=$(sim_sql window "SELECT count(*) FROM rounds a JOIN rounds b ON b.id = a.id + 1 WHERE abs(b.opened_at - a.closed_at) > 0.001")
[ "$gaps" = 0 ] || sim_fail "$gaps rounds did not open at the instant the previous one closed"
virtual=$(sim_summary window virtual_s) wall=$(sim_summary window wall_s)
python3 -c "import sys; sys.exit(0 if $virtual >= 18 and $wall < $virtual / 2 else 1)" ||
    sim_fail "virtual time $virtual s, wall $wall s: the clock was not virtual"

sim_run nowindow "${args[@]}" || sim_fail "run without a staleness window"
[ "$(sim_summary nowindow late)" = 0 ] || sim_fail "late updates counted without a staleness window"
[ "$(sim_sql nowindow "SELECT count(*) FROM updates WHERE decision<>'rejected' AND reason NOT LIKE '%staleness 0 <=%'")" = 0 ] ||
    sim_fail "a stale update was counted without a staleness window"
[ "$(sim_summary nowindow rounds)" = 6 ] || sim_fail "the run without a window did not finish its 6 rounds"
echo "ok: $late late updates accepted with staleness 1, $short short rounds closed at the deadline," \
     "${virtual}s virtual in ${wall}s"
