#!/usr/bin/env bash
# tools/bench/burst.sh [BUILD] [N] [AGGREGATOR ARGS...]
# A reconnect storm: an aggregator with N devices in its keys file, then
# bench-dtls_burst opens N DTLS sessions at once (one GET /round each) while
# the aggregator is held stopped, as if it were restarting, then lets it run,
# and reports answers, times and the kernel's receive drops on the server's
# socket. Extra arguments go to the aggregator, e.g. --udp-rcvbuf-bytes 212992
# for the kernel's default buffer. docs/BENCHMARKS.md records the figures.
set -euo pipefail
BUILD=${1:-build/native}
N=${2:-1000}
shift $(($# < 2 ? $# : 2))
cd "$(dirname "$0")/../.."
BIN=$BUILD/bin
dir=$(mktemp -d /tmp/fedge-burst.XXXXXX)
agg=""
cleanup() {
    [ -n "$agg" ] && kill "$agg" 2>/dev/null && wait "$agg" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
"$BIN/fedge-keygen" devices --count "$N" --prefix dev- --regions eu --out "$dir/keys" >/dev/null
"$BIN/fedge-partition" --data fashion-mnist --clients 1 --kind iid --seed 1 \
    --out "$dir/shards" --test-out "$dir/test.bin" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/fedge-aggregator" --keys-file "$dir/keys" --db "$dir/fedge.db" --model-dir "$dir/models" \
    --listen "127.0.0.1:$port" --model-spec softmax:784-10 --test-data "$dir/test.bin" \
    --round-timeout-s 3600 "$@" >"$dir/agg.log" 2>&1 &
agg=$!
for _ in $(seq 300); do grep -qs 'round 1 open' "$dir/agg.log" && break; sleep 0.1; done
grep -q 'round 1 open' "$dir/agg.log" || { cat "$dir/agg.log"; exit 1; }
grep -o 'UDP receive buffer.*' "$dir/agg.log" || echo "UDP receive buffer: (not logged by this build)"
status=0
[ -n "${KEEPLOG:-}" ] && trap "cp $dir/agg.log $KEEPLOG; cleanup" EXIT
"$BIN/bench-dtls_burst" --server "127.0.0.1:$port" --keys "$dir/keys" --n "$N" --timeout-s 180 --pause-pid "$agg" || status=$?
echo "aggregator peak RSS: $(awk '$1 == "VmHWM:" { print $2, $3 }' /proc/$agg/status)"
exit $status
