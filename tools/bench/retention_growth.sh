#!/usr/bin/env bash
# tools/bench/retention_growth.sh BUILD [ROUNDS] [EDGES] [RETAIN...] — how the
# aggregator's database grows with and without delta retention.
# One federation per RETAIN value (default: 0, then 2): EDGES edges over DTLS,
# mlp:784-200-10, fp32 deltas (636 KB each), ROUNDS rounds (default 20 x 8,
# the issue's case). Prints the database + WAL size on disk after every round
# (sampled when the aggregator opens the next round, i.e. after the round's
# commit and its retention drop; the last one after the aggregator stopped).
set -uo pipefail
BUILD=${1:-build/native}
ROUNDS=${2:-20}
EDGES=${3:-8}
shift $(($# < 3 ? $# : 3))
RETAIN=("$@")
[ ${#RETAIN[@]} -gt 0 ] || RETAIN=(0 2)
cd "$(dirname "$0")/../.."
export FEDGE_BUILD=$BUILD
. tests/lib/fed.sh

fed_setup "$EDGES"
"$BIN/fedge-partition" --data fashion-mnist --clients "$EDGES" --kind iid --seed 1 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail partition

db_bytes() {
    local n=0 f
    for f in "$FED_DIR/fedge.db" "$FED_DIR/fedge.db-wal"; do
        [ -e "$f" ] && n=$((n + $(stat -c %s "$f")))
    done
    echo "$n"
}

declare -A SIZE
for keep in "${RETAIN[@]}"; do
    rm -rf "$FED_DIR/fedge.db"* "$FED_DIR/models" "$FED_DIR/agg.log"
    FED_PORT=$(fed_free_port)
    fed_start_aggregator --model-spec mlp:784-200-10 --test-data "$FED_DIR/test.bin" \
        --rounds "$ROUNDS" --round-timeout-s 300 --start-delay-s 0.5 --linger-s 1 \
        --retain-deltas-rounds "$keep"
    for ((i = 1; i <= EDGES; i++)); do
        id=$(printf 'dev-%03d' "$i")
        fed_start_edge "$id" "$FED_DIR/shards/shard-$(printf %03d $((i - 1))).bin" --seed "$i" --poll-ms 100
    done
    t0=$(date +%s.%N)
    r=1
    while kill -0 "$FED_AGG_PID" 2>/dev/null; do
        if [ "$r" -lt "$ROUNDS" ] && grep -q "round $((r + 1)) open" "$FED_DIR/agg.log"; then
            SIZE[$keep,$r]=$(db_bytes)
            r=$((r + 1))
            continue
        fi
        sleep 0.05
    done
    fed_wait_run 600 || fed_fail "aggregator exited with an error (retain $keep)"
    SIZE[$keep,$ROUNDS]=$(db_bytes)
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
    kept=$(fed_sql "SELECT count(*) FROM updates WHERE delta IS NOT NULL")
    echo "retain_deltas_rounds = $keep: $ROUNDS rounds in ${secs} s, $kept bodies kept," \
        "final size $(db_bytes) bytes"
done
printf '%6s' round
for keep in "${RETAIN[@]}"; do printf ' %16s' "MB retain=$keep"; done
echo
for ((r = 1; r <= ROUNDS; r++)); do
    printf '%6d' "$r"
    for keep in "${RETAIN[@]}"; do
        awk -v b="${SIZE[$keep,$r]:-0}" 'BEGIN { printf " %16.2f", b / 1048576 }'
    done
    echo
done
