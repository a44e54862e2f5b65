#!/usr/bin/env bash
# The edge's side of FedProx and SCAFFOLD against a scripted aggregator
# (edge_scaffold_fake.py, plain CoAP): prox_mu and control= in /round, GET
# /control with its version checked (a stale c is fetched again, never
# trained on) and its ETag cached, the update sealed as dy then dc (flag
# CONTROL, 2n elements), and c_i committed to <state_dir>/<id>.control only
# when the aggregator accepted (2.04): a refused update leaves it, a plain
# round does not touch it, a corrupt file at start is reset to zeros with a
# warning. A second edge without --state-dir skips SCAFFOLD rounds.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 2
"$BIN/fedge-partition" --data fashion-mnist --clients 2 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
state=$FED_DIR/state
mkdir -p "$state" && chmod 700 "$state"
printf 'not a model file\n' >"$state/dev-001.control"

FED_PORT=$(fed_free_port)
FAKE_TIMEOUT_S=150 python3 tests/integration/edge_scaffold_fake.py "$FED_PORT" \
    "$state/dev-001.control" "$FED_DIR/keys" dev-001 >"$FED_DIR/fake.log" 2>&1 &
fake=$!
FED_PIDS+=("$fake")
sleep 0.5
fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin" --insecure --state-dir "$state" \
    --poll-ms 100 --print-memory --timeout-ms 5000
edge=${FED_PIDS[-1]}
fed_wait_pid "$fake" 170 || { cat "$FED_DIR/fake.log" >&2; tail -n 30 "$FED_DIR/edge-dev-001.log" >&2;
    fed_fail "the edge did not do what the scripted aggregator checks"; }
fed_wait_pid "$edge" 30 || { tail -n 20 "$FED_DIR/edge-dev-001.log" >&2; fed_fail "edge exit status"; }
cat "$FED_DIR/fake.log"

log=$FED_DIR/edge-dev-001.log
grep -q "round 1: client control variate $state/dev-001.control unusable (.*); starting from zeros" "$log" ||
    fed_fail "no warning about the corrupt c_i file"
grep -q "round 1: training 1 epochs on [0-9]* samples (FedProx) (SCAFFOLD)" "$log" ||
    fed_fail "round 1 did not train with FedProx and SCAFFOLD"
grep -q "round 2: served control variate [0-9a-f]* is not the round's control=; polling again" "$log" ||
    fed_fail "round 2: the stale control variate was not refused"
grep -q "memory plan (softmax:784-10, batch 32, fp32, SCAFFOLD): .* control=31400 client_control=31400 control_delta=31400 peak=" "$log" ||
    fed_fail "the memory plan does not count the SCAFFOLD buffers"
grep -q "memory plan (softmax:784-10, batch 32, fp32): .* sealed=[0-9]* link=[0-9]* peak=" "$log" ||
    fed_fail "the plain round 4 did not go back to the plain memory plan"
grep -q "round 2: .*outcome=rejected 4.00" "$log" || fed_fail "round 2 was not refused"
grep -q "round 4: training 1 epochs on [0-9]* samples$" "$log" || fed_fail "round 4 was not plain"
grep -q "round 5: the served control variate is implausible (max |c| 1e+30, bound [0-9.e+]* = 1000 x max(1, max|w|) / lr); skipping the round" "$log" ||
    fed_fail "round 5: the implausible served c was not refused with its reason"

# Without a state directory there is nowhere to keep c_i: the edge skips the
# SCAFFOLD round (and says why) instead of sending a c_i that forgets itself.
FED_PORT=$(fed_free_port)
FAKE_TIMEOUT_S=6 python3 tests/integration/edge_scaffold_fake.py "$FED_PORT" \
    "$FED_DIR/none.control" "$FED_DIR/keys" dev-002 >"$FED_DIR/fake2.log" 2>&1 &
FED_PIDS+=("$!")
fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin" --insecure --poll-ms 100 --timeout-ms 5000
fed_wait_for "grep -q 'round 1: a SCAFFOLD round needs --state-dir' '$FED_DIR/edge-dev-002.log'" 30
echo ok
