#!/usr/bin/env bash
# Aggregator + cluster refinement: every round's aggregate is refined by
# `mpirun -np 2 fedge-cluster refine` (CPU backend, ZeRO-1) on server-side
# data; the refined model becomes the next global version (kind refine,
# parent = the aggregate). A failing and a timed-out refinement are logged
# and the aggregate is kept, with no round lost; SIGTERM during a refinement
# stops the daemon at once. The six cases run at once (fed_parts: each in its
# own directory with its own port).
# fedge-test: long
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

fed_setup 2
"$BIN/fedge-partition" --data fashion-mnist --clients 3 --kind iid --seed 11 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
server_data="$FED_DIR/shards/shard-002.bin" # the server's own rows; no edge trains on them

run_federation() { # name, refine command, extra aggregator args...
    local name=$1 cmd=$2
    shift 2
    FED_PORT=$(fed_free_port)
    rm -rf "$FED_DIR/fedge.db"* "$FED_DIR/models" "$FED_DIR/agg.log"
    FED_EDGE_PIDS=()
    fed_start_aggregator --model-spec mlp:784-32-10 --test-data "$FED_DIR/test.bin" --rounds 2 \
        --round-timeout-s 60 --start-delay-s 0.3 --linger-s 2 --refine-every 1 --refine-command "$cmd" "$@"
    fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin"
    fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin"
    fed_wait_run 180 || fed_fail "$name: aggregator failed"
    [ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed'")" = 2 ] || fed_fail "$name: 2 closed rounds expected"
    "$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
        fed_fail "$name: audit verify"
}

mpi="mpirun --allow-run-as-root --oversubscribe --mca btl self,vader -np 2"
refine_ok() {
    run_federation ok "$mpi $BIN/fedge-cluster refine --backend cpu --zero --model {in} --out {out} \
        --data $server_data --steps 40 --batch 64 --lr 0.05 --checkpoint-dir $FED_DIR/ckpt-{round} --checkpoint-every 10"
    [ "$(fed_sql "SELECT count(*) FROM models WHERE kind='refine'")" = 2 ] || fed_fail "2 refined models expected"
    # each refined model's parent is the aggregate of its round, and the next round starts from it
    [ "$(fed_sql "SELECT count(*) FROM models r JOIN models a ON a.version = r.parent
                  WHERE r.kind='refine' AND a.kind='aggregate' AND a.round = r.round")" = 2 ] ||
        fed_fail "refine parent should be the same round's aggregate"
    [ "$(fed_sql "SELECT base_version FROM rounds WHERE id=2")" = \
      "$(fed_sql "SELECT version FROM models WHERE kind='refine' AND round=1")" ] ||
        fed_fail "round 2 should start from round 1's refined model"
    fed_sql "SELECT info FROM models WHERE kind='refine' AND round=2" | grep -q '"status":"ok"' ||
        fed_fail "refine summary JSON not recorded"
    [ "$(fed_sql "SELECT count(*) FROM events WHERE kind='refine'")" = 2 ] || fed_fail "refine events expected"
    while IFS='|' read -r path sha; do
        [ "$(sha256sum "$FED_DIR/models/$path" | cut -d' ' -f1)" = "$sha" ] || fed_fail "sha256 of $path differs from the log"
    done < <(fed_sql "SELECT path, sha256 FROM models")
}

refine_failing() {
    run_federation failing "$BIN/fedge-cluster refine --backend cpu --model {in} --out {out} --data /nonexistent --steps 5"
    [ "$(fed_sql "SELECT count(*) FROM models WHERE kind='refine'")" = 0 ] || fed_fail "a failed refinement made a model"
    [ "$(fed_sql "SELECT count(*) FROM events WHERE kind='refine_failed'")" = 2 ] || fed_fail "refine_failed events expected"
    [ "$(fed_sql "SELECT base_version FROM rounds WHERE id=2")" = \
      "$(fed_sql "SELECT version FROM models WHERE kind='aggregate' AND round=1")" ] ||
        fed_fail "after a failed refinement the aggregate must stay"
}

refine_timeout() {
    marker0="fedge-refine-timeout-$$"
    run_federation timeout "sh -c 'sleep 30; : $marker0'" --refine-timeout-s 1
    fed_sql "SELECT detail FROM events WHERE kind='refine_failed'" | grep -q "timed out" ||
        fed_fail "a timed-out refinement should be logged as such"
    [ "$(fed_sql "SELECT count(*) FROM models WHERE kind='aggregate'")" = 2 ] || fed_fail "aggregates kept"
    pgrep -f "$marker0" >/dev/null && fed_fail "the timed-out command is still running"
}

# SIGTERM while a refinement runs: the daemon stops now, not when the
# command ends (systemd would SIGKILL it after TimeoutStopSec)
refine_sigterm() {
    marker="fedge-refine-stop-$$"
    fed_start_aggregator --model-spec mlp:784-32-10 --test-data "$FED_DIR/test.bin" --rounds 2 \
        --round-timeout-s 60 --start-delay-s 0.3 --linger-s 2 --refine-every 1 \
        --refine-command "sh -c 'sleep 40; : $marker'" --refine-timeout-s 600
    fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin"
    fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin"
    fed_wait_for "grep -q 'refinement: ' '$FED_DIR/agg.log'" 120
    t0=$SECONDS
    kill -TERM "$FED_AGG_PID"
    fed_wait_pid "$FED_AGG_PID" 20 || true
    [ $((SECONDS - t0)) -le 10 ] || fed_fail "SIGTERM during a refinement took $((SECONDS - t0))s to stop the daemon"
    pgrep -f "$marker" >/dev/null && fed_fail "the refinement command outlived the daemon"
    fed_sql "SELECT detail FROM events WHERE kind='refine_failed'" | grep -q "killed" ||
        fed_fail "the interrupted refinement should be logged"
}

# kill -9 while a refinement runs: the orphaned command holds none of the
# daemon's descriptors, so a restart on the same port comes up at once
refine_kill9() {
    marker2="fedge-refine-orphan-$$"
    refine_args=(--model-spec mlp:784-32-10 --test-data "$FED_DIR/test.bin" --rounds 2 --round-timeout-s 60
                 --start-delay-s 0.3 --linger-s 2 --refine-every 1 --refine-command "sh -c 'sleep 25; : $marker2'")
    fed_start_aggregator "${refine_args[@]}"
    fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin"
    fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin"
    fed_wait_for "grep -q 'refinement: ' '$FED_DIR/agg.log'" 120
    kill -9 "$FED_AGG_PID"
    wait "$FED_AGG_PID" 2>/dev/null
    : >"$FED_DIR/agg.log"
    fed_start_aggregator "${refine_args[@]}"
    fed_wait_for "grep -q 'listening on' '$FED_DIR/agg.log' || ! kill -0 $FED_AGG_PID 2>/dev/null" 20
    kill -0 "$FED_AGG_PID" 2>/dev/null ||
        { cat "$FED_DIR/agg.log" >&2; fed_fail "the restart after kill -9 during a refinement was refused"; }
    kill -TERM "$FED_AGG_PID"
    fed_wait_pid "$FED_AGG_PID" 20 || true
    pkill -f "$marker2"
}

# SIGTERM while the daemon waits for a locked database to log a refinement
refine_lock() {
    marker3="fedge-refine-lock-$$"
    cat >"$FED_DIR/lockref.sh" <<EOF
#!/bin/sh
# takes the database's write lock for 30 s in its own session, then refines by copying
setsid python3 -c "import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute('BEGIN IMMEDIATE')
open(sys.argv[2], 'w').close()
time.sleep(30)
db.execute('COMMIT')" "$FED_DIR/fedge.db" "$FED_DIR/locked-$marker3" </dev/null >/dev/null 2>&1 &
while [ ! -e "$FED_DIR/locked-$marker3" ]; do sleep 0.1; done
cp "\$1" "\$2"
EOF
    chmod +x "$FED_DIR/lockref.sh"
    fed_start_aggregator --model-spec mlp:784-32-10 --test-data "$FED_DIR/test.bin" --rounds 2 \
        --round-timeout-s 60 --start-delay-s 0.3 --linger-s 2 --refine-every 1 \
        --refine-command "$FED_DIR/lockref.sh {in} {out}"
    fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin"
    fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin"
    fed_wait_for "grep -q 'waiting to log the refinement' '$FED_DIR/agg.log'" 120
    t0=$SECONDS
    kill -TERM "$FED_AGG_PID"
    fed_wait_pid "$FED_AGG_PID" 25 || true
    took=$((SECONDS - t0))
    pkill -f "locked-$marker3"
    [ "$took" -le 10 ] || fed_fail "SIGTERM while waiting on a locked database took ${took}s to stop the daemon"
}

fed_parts refine_ok refine_failing refine_timeout refine_sigterm refine_kill9 refine_lock
echo ok
