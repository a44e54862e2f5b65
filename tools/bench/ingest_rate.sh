#!/usr/bin/env bash
# tools/bench/ingest_rate.sh [BUILD] [N] [WORKERS...]
# Multi-core ingest (issue 9 §4): for each transport in TRANSPORTS (default
# "dtls tcp": CoAP over DTLS, and over TLS/TCP with BERT blocks, RFC 8323)
# and each WORKERS value (default "0 2": 0 is the inline path on the I/O
# thread), a fresh aggregator (mlp:784-200-10, one sync round selecting all
# N devices; listen_tcp set) takes one int8 update from each of N devices
# sent at once on loopback. The driver prints the
# sustained updates/s, p50/p99 reply latency, the raw AEAD and AEAD+decode
# rate measured in the same process, the ratio, and the aggregator's GET
# /status (its "ingest" part: the time breakdown per update); then
# bench-ingest_path, the same path in-process without the transport.
# DRIVER swaps the load generator: it is run as
#   $DRIVER --server 127.0.0.1:PORT --keys KEYS_FILE --n N --status 1 --agg-pid PID [--transport tcp]
# (default: $BUILD/bin/bench-ingest_rate; its "daemon" line is the
# aggregator's CPU per update over the POST phase alone, apart from the
# driver's, against the raw per-frame cost of the same run). AGG_ARGS adds aggregator options.
# PERF_DIR=DIR records each aggregator with `perf record -g` while the driver
# runs (its handshakes, then the POST phase) into DIR/agg-TRANSPORT-WORKERS.data;
# PERF_ARGS replaces `-g -F 999` (e.g. "-g -e page-faults": where pages are faulted in);
# the clock is CLOCK_MONOTONIC, so the driver's "phase POST A,B" line is
# `perf report --time A,B`: the POST phase alone.
# docs/BENCHMARKS.md records the figures.
set -euo pipefail
BUILD=${1:-build/native}
N=${2:-200}
shift $(($# < 2 ? $# : 2))
WORKERS=("$@")
[ ${#WORKERS[@]} -gt 0 ] || WORKERS=(0 2)
read -r -a TRANSPORTS <<<"${TRANSPORTS:-dtls tcp}"
cd "$(dirname "$0")/../.."
BIN=$BUILD/bin
DRIVER=${DRIVER:-$BIN/bench-ingest_rate}
dir=$(mktemp -d /tmp/fedge-ingest.XXXXXX)
agg=""
cleanup() {
    if [ -n "$agg" ]; then kill "$agg" 2>/dev/null || true; wait "$agg" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT
"$BIN/fedge-keygen" devices --count "$N" --prefix dev- --regions eu --out "$dir/keys" >/dev/null
"$BIN/fedge-partition" --data fashion-mnist --clients 1 --kind iid --seed 1 \
    --out "$dir/shards" --test-out "$dir/test.bin" >/dev/null
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; N=$N devices, one mlp:784-200-10 int8 update each"
status=0
for t in "${TRANSPORTS[@]}"; do
for w in "${WORKERS[@]}"; do
    rm -rf "$dir/run" && mkdir "$dir/run"
    port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    tport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    # shellcheck disable=SC2086
    "$BIN/fedge-aggregator" --keys-file "$dir/keys" --db "$dir/run/fedge.db" --model-dir "$dir/run/models" \
        --listen "127.0.0.1:$port" --listen-tcp "127.0.0.1:$tport" --model-spec mlp:784-200-10 \
        --test-data "$dir/test.bin" --round-timeout-s 3600 --rounds 1 --linger-s 60 --ingest-workers "$w" \
        --upload-max-partial-total "$((N > 256 ? N : 256))" ${AGG_ARGS:-} >"$dir/run/agg.log" 2>&1 &
    agg=$!
    for _ in $(seq 300); do grep -qs 'round 1 open' "$dir/run/agg.log" && break; sleep 0.1; done
    grep -q 'round 1 open' "$dir/run/agg.log" || { cat "$dir/run/agg.log"; exit 1; }
    echo "== $t, ingest_workers = $w (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    perf_pid=""
    if [ -n "${PERF_DIR:-}" ]; then
        perf record -q -k mono ${PERF_ARGS:--g -F 999} -p "$agg" -o "$PERF_DIR/agg-$t-$w.data" 2>/dev/null &
        perf_pid=$!
    fi
    if [ "$t" = tcp ]; then
        "$DRIVER" --server "127.0.0.1:$tport" --keys "$dir/keys" --n "$N" --status 1 --agg-pid "$agg" --transport tcp || status=$?
    else
        "$DRIVER" --server "127.0.0.1:$port" --keys "$dir/keys" --n "$N" --status 1 --agg-pid "$agg" || status=$?
    fi
    echo "aggregator cpu: $(awk '{ printf "user %.2f s, system %.2f s", $14 / 100, $15 / 100 }' /proc/$agg/stat); peak RSS $(awk '/^VmHWM/ { print $2, $3 }' /proc/$agg/status)"
    if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true; fi
    kill "$agg" 2>/dev/null || true
    wait "$agg" 2>/dev/null || true
    agg=""
done
done
# the same path without the transport: in-process, frames handed straight to it
echo "== without the transport (bench-ingest_path $N 2 32)"
"$BIN/bench-ingest_path" "$N" 2 32 || status=$?
exit $status
