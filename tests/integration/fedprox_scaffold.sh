#!/usr/bin/env bash
# FedProx and SCAFFOLD end to end: a real aggregator with fedprox_mu and
# scaffold on, three edges. Each round is logged with its strategy; the
# edges train with the proximal term and the control variates; each edge's
# c_i lands in <state_dir>/<id>.control after its first accepted round,
# survives a restart of the edge (read back, not started again from zeros)
# and changes with every later accepted round.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

fed_setup 3
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 3 --kind iid --seed 11 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
state=$FED_DIR/state
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 3 \
    --round-timeout-s 90 --start-delay-s 0.5 --linger-s 2 --fedprox-mu 0.01 --scaffold
fed_wait_for "grep -q 'round 1 open' '$FED_DIR/agg.log' || ! kill -0 $FED_AGG_PID" 30
kill -0 "$FED_AGG_PID" 2>/dev/null || fed_fail "the aggregator did not start"
edges=(dev-001 dev-002 dev-003)

# First life: round 1 only.
first=()
for i in 0 1 2; do
    fed_start_edge "${edges[$i]}" "$FED_DIR/shards/shard-00$i.bin" --state-dir "$state" \
        --max-rounds 1 --max-retries 1000
    first+=("${FED_PIDS[-1]}")
done
for i in 0 1 2; do
    fed_wait_pid "${first[$i]}" 150 || { tail -n 20 "$FED_DIR/edge-${edges[$i]}.log" >&2;
        fed_fail "${edges[$i]} (first life) failed"; }
done
declare -A h1
for id in "${edges[@]}"; do
    f=$state/$id.control
    [ -f "$f" ] || fed_fail "$id: no client control variate file after round 1"
    h1[$id]=$(sha256sum <"$f")
    log=$FED_DIR/edge-$id.log
    grep -q "round 1: training 1 epochs on [0-9]* samples (FedProx) (SCAFFOLD)" "$log" ||
        fed_fail "$id: round 1 was not FedProx + SCAFFOLD"
    grep -q "round 1: no client control variate yet" "$log" || fed_fail "$id: did not start from zeros"
    grep -q "round 1: .*outcome=accepted" "$log" || fed_fail "$id: round 1 not accepted"
done

# Second life: the rest of the run, c_i read back from the state files.
for i in 0 1 2; do
    fed_start_edge "${edges[$i]}" "$FED_DIR/shards/shard-00$i.bin" --state-dir "$state" \
        --max-retries 1000
done
fed_wait_run 200 || fed_fail "run failed"

for id in "${edges[@]}"; do
    log=$FED_DIR/edge-$id.log
    [ "$(grep -c 'no client control variate yet' "$log")" = 1 ] ||
        fed_fail "$id: the restarted edge did not read its c_i back"
    ! grep -q "unusable\|for another model" "$log" || fed_fail "$id: state file refused"
    [ "$(sha256sum <"$state/$id.control")" != "${h1[$id]}" ] ||
        fed_fail "$id: c_i did not change after rounds 2 and 3"
done
[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed'")" = 3 ] || fed_fail "3 closed rounds expected"
[ "$(fed_sql "SELECT sum(n_accepted) FROM rounds WHERE status='closed'")" = 9 ] || fed_fail "9 accepted updates expected"
[ "$(fed_sql "SELECT count(*) FROM rounds WHERE lower(strategy) LIKE '%scaffold%' AND lower(strategy) LIKE '%prox%'")" = 3 ] ||
    fed_fail "rounds not logged as FedProx + SCAFFOLD: $(fed_sql "SELECT group_concat(strategy, ' | ') FROM rounds")"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
    fed_fail "audit verify"
echo ok
