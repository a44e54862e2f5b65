#!/usr/bin/env bash
# tools/bench/federation.sh BUILD — what an update costs on the wire, and the
# edge client's memory.
#  1. For each encoding: one aggregator, one edge (mlp:784-200-10, 2 rounds)
#     talking through a counting UDP relay (udp_relay.py). Reports the sealed
#     update size against raw fp32 (n_params * 4), and the DTLS+CoAP overhead:
#     UDP payload bytes client->server over the sealed bytes it carried
#     (includes the /round polls and /model requests of the round).
#  2. Edge peak RSS (/usr/bin/time -v) training on a 1,000-row shard and on
#     the full 60,000-row training set, against the size of those shards.
set -uo pipefail
BUILD=${1:-build/native}
cd "$(dirname "$0")/../.."
export FEDGE_BUILD=$BUILD
. tests/lib/fed.sh
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (Debian package time)"; exit 1; }

fed_setup 1
"$BIN/fedge-partition" --data fashion-mnist --clients 60 --kind iid --seed 1 \
    --out "$FED_DIR/small" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail partition
"$BIN/fedge-partition" --data fashion-mnist --clients 1 --kind iid --seed 1 --out "$FED_DIR/full" >/dev/null ||
    fed_fail partition
params=159010
raw=$((params * 4))

one_run() { # encoding shard -> sets SEALED UP DOWN UPD RSS
    local enc=$1 shard=$2 relay_port stats
    FED_PORT=$(fed_free_port)
    relay_port=$(fed_free_port)
    stats="$FED_DIR/relay-$enc.json"
    rm -rf "$FED_DIR/fedge.db"* "$FED_DIR/models"
    python3 tools/bench/udp_relay.py "$relay_port" "$FED_PORT" "$stats" &
    local relay=$!
    FED_PIDS+=("$relay")
    fed_start_aggregator --model-spec mlp:784-200-10 --test-data "$FED_DIR/test.bin" --rounds 2 \
        --start-delay-s 0.3 --linger-s 1 --log-level warn
    /usr/bin/time -v "$BIN/fedge-edge" --server "127.0.0.1:$relay_port" --id dev-001 --keys "$(fed_edge_keys dev-001)" \
        --shard "$shard" --encoding "$enc" --poll-ms 200 >"$FED_DIR/edge.log" 2>&1 || fed_fail "edge ($enc)"
    fed_wait_pid "$FED_AGG_PID" 60
    kill -TERM "$relay"
    wait "$relay"
    SEALED=$(fed_sql "SELECT sum(bytes) FROM updates")
    UPD=$(fed_sql "SELECT count(*) FROM updates")
    UP=$(python3 -c "import json; print(sum(c['up_bytes'] for c in json.load(open('$stats'))['clients'].values()))")
    DOWN=$(python3 -c "import json; print(sum(c['down_bytes'] for c in json.load(open('$stats'))['clients'].values()))")
    RSS=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$FED_DIR/edge.log")
}

echo "mlp:784-200-10: $params parameters, raw fp32 delta $raw bytes; 2 rounds, 1 edge, through a counting relay"
printf '%-6s %14s %10s %16s %14s %12s %14s\n' enc sealed/update vs_fp32 udp_up/update overhead_pct udp_down kib_peak_rss
for enc in fp32 fp16 bf16 int8; do
    one_run "$enc" "$FED_DIR/small/shard-000.bin"
    awk -v e="$enc" -v s="$SEALED" -v n="$UPD" -v up="$UP" -v down="$DOWN" -v raw="$raw" -v rss="$RSS" 'BEGIN {
        printf "%-6s %14d %10.3f %16d %13.1f%% %12d %14d\n", e, s / n, s / n / raw, up / n, 100 * (up - s) / s, down, rss }'
done
echo "udp_down: both rounds (two model downloads, Block2) plus /round answers"
echo
small_rows=$(( $(stat -c %s "$FED_DIR/small/shard-000.bin") / 785 ))
echo "edge peak RSS against shard size (fp32, 2 rounds, 1 local epoch over the whole shard):"
printf '%-12s %14s %14s\n' shard shard_bytes kib_peak_rss
for s in small/shard-000.bin full/shard-000.bin; do
    one_run fp32 "$FED_DIR/$s"
    printf '%-12s %14d %14d\n' "${s%%/*}" "$(stat -c %s "$FED_DIR/$s")" "$RSS"
done
grep -m1 -i "memory" "$FED_DIR/edge.log" || true
