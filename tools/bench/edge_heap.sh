#!/usr/bin/env bash
# edge_heap.sh — the heap peak of one full edge round (valgrind massif: the
# GET /round, the model download, training, sealing and the upload, DTLS
# included) against the issue's plan (2 x params fp32 + one minibatch as
# stored + 64 KiB) and against the client's own --print-memory peak.
#
#   tools/bench/edge_heap.sh [SPEC ...]        (default: softmax:784-10 mlp:784-200-10)
#   BASE="build-main/native ..." tools/bench/edge_heap.sh   also measures those builds' edges (before)
#   KEEP_MASSIF=PREFIX MASSIF_OPTS=--threshold=0.1 ...    keep massif's files, finer allocation tree
#
# The edge measured is the shipped configuration built for this machine
# (`make EDGE_TRIM=1 edge`: trimmed mbedTLS, client-only libcoap, the
# portable GEMM, -Os), FEDGE_EDGE_BUILD (default build/edge-<arch>); the
# aggregator and the tools come from FEDGE_BUILD (build/native).
#
# One shard of 1000 Fashion-MNIST rows (CLIENTS=N: 60000/N rows), batch 32, momentum 0.9, fp32, one
# epoch, a --state-dir (where a momentum round keeps its base model); the
# edge runs under massif (heap; the stacks excluded), the aggregator
# natively. Prints one line per build and spec.
set -uo pipefail
cd "$(dirname "$0")/../.."
FEDGE_BUILD=${FEDGE_BUILD:-build/native}
. tests/lib/fed.sh
command -v valgrind >/dev/null || { echo "edge_heap: valgrind missing (tools/deps.sh)" >&2; exit 1; }
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=(softmax:784-10 mlp:784-200-10)
FEDGE_EDGE_BUILD=${FEDGE_EDGE_BUILD:-build/edge-$(uname -m)}
[ -x "$FEDGE_EDGE_BUILD/bin/fedge-edge" ] ||
    { echo "edge_heap: no $FEDGE_EDGE_BUILD/bin/fedge-edge (make EDGE_TRIM=1 edge)" >&2; exit 1; }
builds=("$FEDGE_EDGE_BUILD")
# shellcheck disable=SC2206 # BASE: one or more build dirs, space-separated
[ -n "${BASE:-}" ] && builds=($BASE "$FEDGE_EDGE_BUILD")

fed_setup 1
"$BIN/fedge-partition" --data fashion-mnist --clients "${CLIENTS:-60}" --kind iid --seed 7 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
shard="$FED_DIR/shards/shard-000.bin"
keys=$(fed_edge_keys dev-001) || exit 1
batch=${BATCH:-32}  # BATCH=8 tools/bench/edge_heap.sh SPEC: another batch
# train_ms: the round's training time under massif (the cost of smaller scratch)
printf '%-22s %-28s %10s %10s %10s %10s %8s %9s\n' spec build massif_peak plan print_mem issue_plan ok train_ms
for spec in "${specs[@]}"; do
    for b in "${builds[@]}"; do
        FED_PORT=$(fed_free_port)
        rm -rf "$FED_DIR/models" "$FED_DIR/fedge.db"*
        "$BIN/fedge-aggregator" --keys-file "$FED_DIR/keys" --db "$FED_DIR/fedge.db" \
            --model-dir "$FED_DIR/models" --signing-key "$FED_DIR/aggregator.key" \
            --listen "127.0.0.1:$FED_PORT" --model-spec "$spec" --rounds 1 --batch $batch \
            --round-timeout-s 300 --quorum 1 --start-delay-s 0.2 --linger-s 1 \
            >>"$FED_DIR/agg.log" 2>&1 &
        agg=$!
        FED_PIDS+=("$agg")
        out="$FED_DIR/massif.$$.out"
        log="$FED_DIR/edge.log"
        rm -rf "$FED_DIR/state"; mkdir -p "$FED_DIR/state"
        valgrind --tool=massif --massif-out-file="$out" --max-snapshots=200 ${MASSIF_OPTS:-} \
            "$b/bin/fedge-edge" --server "127.0.0.1:$FED_PORT" --id dev-001 --keys "$keys" \
            --state-dir "$FED_DIR/state" \
            --shard "$shard" --max-rounds 1 --print-memory --timeout-ms 60000 >"$log" 2>&1 ||
            { tail -n 20 "$log"; fed_fail "edge under massif ($b, $spec)"; }
        kill "$agg" 2>/dev/null; wait "$agg" 2>/dev/null
        [ -n "${KEEP_MASSIF:-}" ] && cp "$out" "$KEEP_MASSIF.$(echo "$spec" | tr -c "a-z0-9\n" _).$(basename "$(dirname "$b")")"
        peak=$(grep -E '^mem_heap_B=|^mem_heap_extra_B=' "$out" |
            awk -F= '/mem_heap_B/{h=$2} /extra/{print h+$2}' | sort -n | tail -1)
        plan=$(grep -o 'peak=[0-9]*' "$log" | tail -1 | cut -d= -f2)
        params=$(grep -o 'model=[0-9]*' "$log" | tail -1 | cut -d= -f2)
        record=$(grep -o ' record=[0-9]*' "$log" | tail -1 | cut -d= -f2)
        issue=$((2 * params + batch * record + 65536))  # a record: the label and dim u8 pixels
        ok=yes; [ "$peak" -le "$issue" ] || ok=no
        tms=$(grep -o 'train_ms=[0-9]*' "$log" | tail -1 | cut -d= -f2)
        printf '%-22s %-28s %10s %10s %10s %10s %8s %9s\n' "$spec" "$b" "$peak" "${plan:-?}" \
            "$( [ -n "$plan" ] && awk -v p="$peak" -v q="$plan" 'BEGIN{printf "%+.1f%%", 100*(q-p)/p}')" "$issue" "$ok" "${tms:-?}"
    done
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
