#!/usr/bin/env bash
# kill -9 the aggregator at seeded random moments of a federation (22 times),
# restarting it each time on the same database and model store, while three
# edges (softmax:784-10, 600-row shards, fp32/int8/fp16 deltas) keep retrying
# across the restarts. Halfway the edges freeze until a round fails for want
# of updates; a few stops outlast the round deadline. Then the run is let
# finish (the rounds run after the storm must all aggregate), and:
#   1. every update an edge was told was accepted (its log's outcome=accepted
#      or clipped) is an accepted/clipped updates row of that round, and that
#      round closed with a model;
#   2. nothing is counted twice: one accepted row per (round, device), one
#      aggregate per round, each closed round's n_accepted equal to its rows;
#   3. every aggregate model is recomputed from its parent and the logged
#      deltas (tests/tools/recompute.c) within float tolerance;
#   4. fedge-audit verify passes;
#   5. every answer was true: no update an edge was told was refused (its
#      final outcome=rejected ...) is an accepted row (issue 8, section 7: a
#      resend after a lost reply must hear "accepted (duplicate)").
# FEDGE_STORM_SEED picks the kill schedule; FEDGE_STORM_KILLS the count.
# fedge-test: long
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

SEED=${FEDGE_STORM_SEED:-8}
KILLS=${FEDGE_STORM_KILLS:-22}
RECOMPUTE="$FEDGE_BUILD/tests/tools/recompute"
[ -x "$RECOMPUTE" ] || { echo "FAIL: $RECOMPUTE not built (make)" >&2; exit 1; }

fed_setup 3
# Frozen edges must be woken for fed_cleanup's SIGTERM to reach them.
storm_cleanup() {
    local p
    for p in "${FED_PIDS[@]}"; do kill -CONT "$p" 2>/dev/null; done
    fed_cleanup
}
trap storm_cleanup EXIT
# The log is read while the aggregator writes it: wait out its locks.
q() { sqlite3 -batch -noheader -cmd '.timeout 10000' "$FED_DIR/fedge.db" "$@"; }
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 100 --kind iid --seed 5 \
    --out "$FED_DIR/shards" >/dev/null || fed_fail "partition"
mkdir -p "$FED_DIR/state"
args=(--model-spec softmax:784-10 --test-data "$FED_DIR/shards/shard-099.bin"
      --round-timeout-s 4 --seed 3 --linger-s 5)

# Drops a dead pid from fed.sh's list so its cleanup never signals a reused pid.
forget_pid() {
    local keep=() p
    for p in "${FED_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    FED_PIDS=("${keep[@]}")
}

encodings=(fp32 int8 fp16)
for i in 1 2 3; do
    fed_start_edge "dev-00$i" "$FED_DIR/shards/shard-00$i.bin" --encoding "${encodings[$((i - 1))]}" \
        --max-retries -1 --poll-ms 100 --timeout-ms 2000 --state-dir "$FED_DIR/state" --seed "$i"
done

RANDOM=$SEED
t0=$SECONDS
long_downs=0
for ((k = 1; k <= KILLS; k++)); do
    fed_start_aggregator "${args[@]}" --rounds 0
    if ((k == KILLS / 2)); then
        # a partition: the edges freeze, so a round expires with no update
        failed=$(q "SELECT count(*) FROM rounds WHERE status='failed'")
        [ -n "$failed" ] || fed_fail "cannot read the rounds"
        for e in "${FED_EDGE_PIDS[@]}"; do kill -STOP "${e%%:*}"; done
        fed_wait_for "[ \"\$(q \"SELECT count(*) FROM rounds WHERE status='failed'\" 2>/dev/null)\" -gt $failed ]" 30
        for e in "${FED_EDGE_PIDS[@]}"; do kill -CONT "${e%%:*}"; done
        echo "=== edges frozen until a round failed ===" >>"$FED_DIR/agg.log"
    fi
    # mostly short lives (start-up, a round's open or close), now and then a long one
    if ((RANDOM % 5 == 0)); then up=$((2000 + RANDOM % 2000)); else up=$((150 + RANDOM % 1600)); fi
    sleep "$(printf '%d.%03d' $((up / 1000)) $((up % 1000)))"
    kill -0 "$FED_AGG_PID" 2>/dev/null || { wait "$FED_AGG_PID"; fed_fail "aggregator exited by itself before kill $k (status $?)"; }
    kill -9 "$FED_AGG_PID"
    wait "$FED_AGG_PID" 2>/dev/null
    forget_pid "$FED_AGG_PID"
    echo "=== kill $k after ${up} ms ===" >>"$FED_DIR/agg.log"
    # now and then stay down past the round deadline (4 s), so a round
    # expires while nobody runs it
    if ((long_downs < 3 && RANDOM % 7 == 0)); then
        down=$((4500 + RANDOM % 1000))
        long_downs=$((long_downs + 1))
    else
        down=$((RANDOM % 300))
    fi
    sleep "$(printf '%d.%03d' $((down / 1000)) $((down % 1000)))"
done
closed=$(q "SELECT count(*) FROM rounds WHERE status='closed'" 2>/dev/null || echo 0)
last=$(q "SELECT coalesce(max(id), 0) FROM rounds")
echo "$KILLS kills ($long_downs long stops) in $((SECONDS - t0)) s; $closed rounds closed, last round $last"

# Let the run finish two rounds after the last one begun.
fed_start_aggregator "${args[@]}" --rounds $((last + 2))
fed_wait_run 90 || { FEDGE_KEEP=1; fed_fail "the final aggregator exited with an error"; }

fail=0
bad() { echo "FAIL: $*" >&2; fail=1; }

# 1. acknowledged updates are in the log and in an aggregate
acked=0
for i in 1 2 3; do
    dev="dev-00$i"
    while read -r round; do
        acked=$((acked + 1))
        n=$(q "SELECT count(*) FROM updates WHERE round=$round AND device='$dev'
                     AND decision IN ('accepted','clipped')")
        [ "$n" = 1 ] || bad "check 1: $dev was told round $round's update was accepted; $n accepted rows"
        st=$(q "SELECT r.status || ' ' || (m.version IS NOT NULL) FROM rounds r
                      LEFT JOIN models m ON m.version = r.new_version WHERE r.id=$round")
        [ "$st" = "closed 1" ] ||
            bad "check 1: $dev's accepted update of round $round is in no aggregate (round: '$st')"
    done < <(sed -n 's/.* round \([0-9][0-9]*\): samples=.* outcome=\(accepted\|clipped\).*/\1/p' \
        "$FED_DIR/edge-$dev.log")
done
[ "$acked" -ge 6 ] || bad "only $acked acknowledged updates: the storm left too little to check"

# 2. nothing counted twice
dups=$(q "SELECT round || ':' || device FROM updates WHERE decision<>'rejected'
                GROUP BY round, device HAVING count(*) > 1")
[ -z "$dups" ] || bad "check 2: more than one accepted update for (round:device) $dups"
dups=$(q "SELECT round FROM models WHERE kind='aggregate' GROUP BY round HAVING count(*) > 1")
[ -z "$dups" ] || bad "check 2: more than one aggregate model in round(s) $dups"
dups=$(q "SELECT r.id || ' says ' || coalesce(r.n_accepted, 'NULL') || ', rows ' || count(u.id)
                FROM rounds r LEFT JOIN updates u ON u.round = r.id AND u.decision IN ('accepted','clipped')
                WHERE r.status='closed' GROUP BY r.id HAVING coalesce(r.n_accepted, -1) <> count(u.id)")
[ -z "$dups" ] || bad "check 2: n_accepted disagrees with the accepted rows: round $dups"
open=$(q "SELECT group_concat(id) FROM rounds WHERE status='open'")
[ -z "$open" ] || bad "rounds still open after the run finished: $open"
closed=$(q "SELECT count(*) FROM rounds WHERE status='closed'")
[ "$closed" -ge 4 ] || bad "only $closed closed rounds"
# training goes on after the storm: the rounds run after it all aggregate
after=$(q "SELECT group_concat(id || ' ' || status || ' (' || coalesce(reason, '') || ')', '; ')
                 FROM rounds WHERE id > $last AND status <> 'closed'")
[ -z "$after" ] || bad "rounds after the storm did not aggregate: $after"

# 3. every aggregate recomputed from the logged updates
"$RECOMPUTE" --db "$FED_DIR/fedge.db" --models "$FED_DIR/models" >"$FED_DIR/recompute.log" 2>&1 ||
    { cat "$FED_DIR/recompute.log" >&2; bad "check 3: an aggregate does not recompute from its updates"; }

# 4. the audit chain
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify \
    >"$FED_DIR/verify.log" 2>&1 || { tail -n 20 "$FED_DIR/verify.log" >&2; bad "check 4: fedge-audit verify"; }

# 5. no false refusal
for i in 1 2 3; do
    dev="dev-00$i"
    while read -r round answer; do
        n=$(q "SELECT count(*) FROM updates WHERE round=$round AND device='$dev'
                     AND decision IN ('accepted','clipped')")
        [ "$n" = 0 ] || bad "check 5: $dev was told '$answer' for round $round, yet its update was accepted"
    done < <(sed -n 's/.* round \([0-9][0-9]*\): samples=.* outcome=\(rejected.*\)/\1 \2/p' \
        "$FED_DIR/edge-$dev.log")
done

q "SELECT sum(n) || ' rounds: ' || group_concat(n || ' ' || status, ', ')
         FROM (SELECT status, count(*) AS n FROM rounds GROUP BY status)"
echo "$acked acknowledged updates checked; $(tail -n 1 "$FED_DIR/recompute.log")"
if [ "$fail" != 0 ]; then
    FEDGE_KEEP=1
    echo "files kept in $FED_DIR" >&2
    fed_fail "kill storm: see the checks above"
fi
echo ok
