#!/usr/bin/env bash
# tools/demo.sh BUILD — the `make demo` run: a real federated training of
# mlp:784-200-10 on Fashion-MNIST, 8 edge processes and one aggregator over
# CoAP/DTLS-PSK on loopback, 20 rounds, logged in SQLite and verified by
# fedge-audit at the end, which also writes the HTML report (run/demo/
# report.html) and prints its path and the final model's. Everything lives
# in run/demo/ (replaced each run).
#
# Knobs (environment): DEMO_ROUNDS (20), DEMO_CLIENTS (8), DEMO_PER_ROUND
# (0: all), DEMO_SPEC (mlp:784-200-10; `make demo MODEL=SPEC` sets it, e.g.
# MODEL=cnn:1x28x28-c8k5-p2-c16k5-p2-f64-10), DEMO_KIND (dirichlet|iid|quantity),
# DEMO_BETA (0.5), DEMO_EPOCHS (2), DEMO_LR, DEMO_LR_DECAY, DEMO_MOMENTUM,
# DEMO_POLICY (a policy file, e.g. with DP), DEMO_PORT, DEMO_DIR (run/demo),
# DEMO_TARGET (0.85: the accuracy the run must reach; 0 to only report).
#
# Sourcing this file defines the database helpers below without running the
# demo (tests/integration/demo_monitor.sh tests them).

# demo_sql DB SQL [TRIES]: a read of the run's database that waits out a busy
# database (SQLite busy timeout, then TRIES attempts); prints the rows with
# space-separated columns. Status 1 only when every attempt failed.
demo_sql() {
    local db=$1 sql=$2 tries=${3:-10} i out
    for ((i = 0; i < tries; i++)); do
        if out=$(sqlite3 -batch -noheader -separator ' ' -cmd '.timeout 2000' "$db" "$sql" 2>/dev/null); then
            [ -z "$out" ] || printf '%s\n' "$out"
            return 0
        fi
        sleep 0.5
    done
    return 1
}

# demo_monitor_tick DB: prints the rounds closed since the last tick (round
# number in DEMO_SHOWN). Never fails: a read the running aggregator keeps
# busy, or any other failed read, skips this tick and the next tick catches
# up.
DEMO_SHOWN=0
demo_monitor_tick() {
    local db=$1 rows r n acc bytes secs
    [ -f "$db" ] || return 0
    rows=$(demo_sql "file:$db?mode=ro" \
        "SELECT id, n_accepted, printf('%.4f', accuracy), bytes_received, printf('%.2f', closed_at-opened_at)
         FROM rounds WHERE status<>'open' AND id>$DEMO_SHOWN ORDER BY id" 1) || return 0
    while read -r r n acc bytes secs; do
        [ -n "$r" ] || continue
        printf '%5s %8s %9s %14s %9s\n' "$r" "$n" "$acc" "$bytes" "$secs"
        DEMO_SHOWN=$r
    done <<<"$rows"
    return 0
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    return 0
fi

set -euo pipefail
BUILD=${1:-build/native}
cd "$(dirname "$0")/.."
ROUNDS=${DEMO_ROUNDS:-20}
CLIENTS=${DEMO_CLIENTS:-8}
BETA=${DEMO_BETA:-0.5}
KIND=${DEMO_KIND:-dirichlet}
SPEC=${DEMO_SPEC:-mlp:784-200-10}
PER_ROUND=${DEMO_PER_ROUND:-0}
TARGET=${DEMO_TARGET:-0.85}
EPOCHS=${DEMO_EPOCHS:-2}
PORT=${DEMO_PORT:-5684}
DIR=${DEMO_DIR:-run/demo}
BIN=$BUILD/bin
ENCODINGS=(fp32 fp16 bf16 int8)

rm -rf "$DIR"
mkdir -p "$DIR"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== partitioning Fashion-MNIST into $CLIENTS shards ($KIND, beta=$BETA)"
"$BIN/fedge-partition" --data fashion-mnist --clients "$CLIENTS" --kind "$KIND" --beta "$BETA" \
    --seed 1 --out "$DIR/shards" --test-out "$DIR/test.bin"
echo "== provisioning $CLIENTS device keys and the aggregator's signing key"
"$BIN/fedge-keygen" devices --count "$CLIENTS" --prefix dev- --regions eu --out "$DIR/keys"
"$BIN/fedge-keygen" aggregator --out "$DIR"

cat >"$DIR/aggregator.conf" <<CONF
# written by tools/demo.sh
listen = 127.0.0.1:$PORT
keys_file = $DIR/keys
db = $DIR/fedge.db
model_dir = $DIR/models
signing_key = $DIR/aggregator.key
model_spec = $SPEC
clients_per_round = $PER_ROUND
test_data = $DIR/test.bin
rounds = $ROUNDS
quorum = 1
round_timeout_s = 120
start_delay_s = 1
local_epochs = $EPOCHS
lr = ${DEMO_LR:-0.02}
lr_decay = ${DEMO_LR_DECAY:-0.95}
momentum = ${DEMO_MOMENTUM:-0.9}
batch = 32
linger_s = 3
CONF
if [ -n "${DEMO_POLICY:-}" ]; then
    echo "policy_file = $DEMO_POLICY" >>"$DIR/aggregator.conf"
fi

echo "== starting the aggregator (DTLS on 127.0.0.1:$PORT) and $CLIENTS edge clients ($SPEC)"
"$BIN/fedge-aggregator" --config "$DIR/aggregator.conf" >"$DIR/aggregator.log" 2>&1 &
agg=$!
pids+=("$agg")
for ((i = 0; i < CLIENTS; i++)); do
    id=$(printf 'dev-%03d' $((i + 1)))
    shard=$(printf '%s/shards/shard-%03d.bin' "$DIR" "$i")
    enc=${ENCODINGS[$((i % 4))]}
    # each edge is provisioned with its own secret only
    "$BIN/fedge-keygen" export --keys "$DIR/keys" --id "$id" --out "$DIR/keys-$id" --force >/dev/null
    "$BIN/fedge-edge" --server "127.0.0.1:$PORT" --id "$id" --keys "$DIR/keys-$id" --shard "$shard" \
        --encoding "$enc" --seed "$((i + 1))" >"$DIR/edge-$id.log" 2>&1 &
    pids+=("$!")
done

echo
printf '%5s %8s %9s %14s %9s\n' round accepted accuracy bytes_received time_s
t0=$(date +%s.%N)
while kill -0 "$agg" 2>/dev/null; do
    sleep 1
    demo_monitor_tick "$DIR/fedge.db"
done
wait "$agg" || { echo "aggregator failed; see $DIR/aggregator.log"; tail -n 20 "$DIR/aggregator.log"; exit 1; }
for p in "${pids[@]:1}"; do wait "$p" || true; done
t1=$(date +%s.%N)
demo_monitor_tick "$DIR/fedge.db"

# The summary reads the finished database with retries; if it still cannot,
# it says so and the audit below still runs.
echo
echo "== summary"
if summary=$(demo_sql "$DIR/fedge.db" \
    "SELECT count(*), coalesce(sum(n_accepted), 0), coalesce(sum(bytes_received), 0),
            (SELECT printf('%.4f', accuracy) FROM models ORDER BY rowid DESC LIMIT 1),
            (SELECT printf('%.4f', accuracy) FROM models WHERE kind='init')
     FROM rounds WHERE status='closed'"); then
    read -r nr nu bytes acc acc0 <<<"$summary" || true
    echo "rounds closed:        $nr"
    echo "updates aggregated:   $nu"
    echo "bytes received:       $bytes"
    echo "initial accuracy:     $acc0"
    echo "final test accuracy:  $acc"
else
    echo "summary unavailable: $DIR/fedge.db could not be read (see fedge-audit below)"
fi
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "wall time:            %.1fs\n", b - a }'
echo "per encoding (bytes per update, mean):"
demo_sql "$DIR/fedge.db" \
    "SELECT encoding, count(*), CAST(avg(bytes) AS INTEGER) FROM updates GROUP BY encoding ORDER BY 3 DESC" |
    while read -r e n b; do printf '  %-5s %4s updates  %9s bytes\n' "$e" "$n" "$b"; done || true
echo
echo "== audit: fedge-audit verify"
"$BIN/fedge-audit" --db "$DIR/fedge.db" --pubkey "$DIR/aggregator.pub" verify
echo
echo "== report: fedge-audit report --format html"
"$BIN/fedge-audit" --db "$DIR/fedge.db" --pubkey "$DIR/aggregator.pub" report --format html \
    --out "$DIR/report.html"
model=$(demo_sql "$DIR/fedge.db" "SELECT path FROM models ORDER BY created_at DESC, rowid DESC LIMIT 1") ||
    { echo "cannot read the final model's path from $DIR/fedge.db"; exit 1; }
[[ "$model" == /* ]] || model=$DIR/models/$model
echo "report (open in a browser): $(realpath "$DIR/report.html")"
echo "final model:                $(realpath "$model")"
final=$(demo_sql "$DIR/fedge.db" "SELECT accuracy FROM models ORDER BY rowid DESC LIMIT 1") ||
    { echo "cannot read the final accuracy from $DIR/fedge.db"; exit 1; }
awk -v a="$final" -v t="$TARGET" 'BEGIN { ok = (a >= t); printf "target >= %s: %s\n", t, (ok ? "met" : "NOT met"); exit !ok }'
