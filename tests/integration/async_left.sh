#!/usr/bin/env bash
# Async mode over DTLS: a device that leaves (its session closes) frees its
# slot at once, not after async_slot_timeout_s. One slot, a 60 s slot
# timeout; fedge-edgesim runs 4 devices one session at a time, each session
# of U(1, 3) s with 10 s of "training", so every admitted device leaves
# before it can send. Asserts: within 12 s at least 2 devices were admitted
# in turn, each after the previous one's session ended (on main the first
# slot stays held for 60 s: one admission), and nothing was stored.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 4
FED_PORT=$(fed_free_port)
fed_start_aggregator --mode async --async-concurrency 1 --async-buffer-k 2 \
    --async-slot-timeout-s 60 --rounds 0 --model-spec mlp:784-32-10
"$BIN/fedge-edgesim" --server "127.0.0.1:$FED_PORT" --keys "$FED_DIR/keys" --population 4 \
    --concurrency 1 --arrival all --rounds 0 --session-s 2 --compute-ms 10000 --poll-ms 200 \
    --seed 5 --duration-s 12 --log-level error --json "$FED_DIR/summary.json" >"$FED_DIR/edgesim.log" 2>&1 &
SIM_PID=$!
FED_PIDS+=("$SIM_PID")
fed_wait_pid "$SIM_PID" 40 || { tail -5 "$FED_DIR/edgesim.log"; fed_fail "fedge-edgesim failed"; }

adm=$(fed_sql "SELECT count(*) FROM round_participants")
left=$(grep -c "left; its slot (step 1) is free" "$FED_DIR/agg.log")
echo "async_left: $adm admissions, $left slots freed as their device left, $(fed_sql "SELECT count(*) FROM updates") updates"
[ "$adm" -ge 2 ] || fed_fail "$adm admission(s) in 12 s: the slot of a device that left was not freed"
[ "$left" -ge 1 ] || fed_fail "no slot freed by a device leaving"
! grep -q "timed out" "$FED_DIR/agg.log" || fed_fail "a slot timed out"
[ "$(fed_sql "SELECT count(*) FROM updates")" = 0 ] || fed_fail "an update was stored"
echo ok
