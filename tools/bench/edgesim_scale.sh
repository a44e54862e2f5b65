#!/usr/bin/env bash
# tools/bench/edgesim_scale.sh [DURATION_S] — cross-device scale on one machine
# (not part of make test; docs/EDGESIM.md, figures in docs/BENCHMARKS.md).
#
# fedge-edgesim runs a population of P = 10,000 devices (Fashion-MNIST train
# split, Dirichlet(0.5) label-skewed slices, real SGD on each slice, int8
# updates) with S = 1,000 sessions at once over real DTLS against a real
# fedge-aggregator, first in sync mode, then in async (FedBuff) mode, each
# for DURATION_S seconds (default 300) on the same keys, data and seed.
# Devices stay S_SESSION seconds (default 30) then leave; another arrives at
# once (all-at-once arrivals keep S online out of P). Prints, per mode:
# accuracy against wall time (every closed round / step), updates accepted,
# the p50/p99 POST /update reply latency, the aggregator's peak RSS
# (VmHWM from /proc) and CPU time (user + system, /proc/PID/stat), the
# admission refusals (4.09) and slot timeouts in its log, and the load
# average; then the aggregator's peak RSS for a 100-device
# population under the same load shape, the baseline for the per-device cost.
# Env: P, S, S_SESSION, FEDGE_BUILD (build/native), KEEP=1 keeps the work dir,
# MODES (default "sync async async-p100": the runs to do; also async-p-s50:
# P devices in async-p100's shape, for the RSS against 100 devices), FEDGE_AGGREGATOR
# (default $FEDGE_BUILD/bin/fedge-aggregator: e.g. an older build's, to
# compare two aggregators under the same load shape).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${FEDGE_BUILD:-build/native}/bin
DUR=${1:-300}
P=${P:-10000}
S=${S:-1000}
S_SESSION=${S_SESSION:-30}
MODES=${MODES:-sync async async-p100}
AGG=${FEDGE_AGGREGATOR:-$BIN/fedge-aggregator}
W=$(mktemp -d /tmp/fedge-edgesim-bench.XXXXXX)
AGG_PID=""
cleanup() {
    [ -n "$AGG_PID" ] && kill "$AGG_PID" 2>/dev/null && wait "$AGG_PID" 2>/dev/null
    [ -n "${KEEP:-}" ] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
die() { echo "edgesim_scale: $*" >&2; exit 1; }
port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
hwm_kib() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

"$BIN/fedge-keygen" devices --count "$P" --prefix dev- --regions eu --out "$W/keys" >/dev/null || die keygen
"$BIN/fedge-keygen" devices --count 100 --prefix dev- --regions eu --out "$W/keys100" >/dev/null || die keygen
"$BIN/fedge-keygen" aggregator --out "$W" >/dev/null || die "keygen aggregator"
"$BIN/fedge-partition" --data fashion-mnist --clients 1 --kind iid --seed 1 --out "$W/all" \
    --test-out "$W/test.bin" >/dev/null || die partition
# stale updates (a device that trained on an older version) join, discounted
printf 'version: 1\nname: edgesim-scale\nupdate:\n  max_staleness: 4\n' >"$W/policy.yaml"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"

# run_one NAME KEYS POPULATION CONCURRENCY SECONDS AGGREGATOR_ARGS...
run_one() {
    local name=$1 keys=$2 pop=$3 conc=$4 secs=$5
    shift 5
    local port db="$W/$name.db" t0 hwm
    port=$(port)
    t0=$(date +%s.%N)
    "$AGG" --keys-file "$keys" --db "$db" --model-dir "$W/models-$name" \
        --signing-key "$W/aggregator.key" --listen "127.0.0.1:$port" --model-spec mlp:784-32-10 \
        --test-data "$W/test.bin" --local-epochs 1 --lr 0.05 --batch 32 --rounds 0 --policy-file "$W/policy.yaml" "$@" \
        >"$W/$name.agg.log" 2>&1 &
    AGG_PID=$!
    for _ in $(seq 100); do grep -q "listening on" "$W/$name.agg.log" 2>/dev/null && break; sleep 0.1; done
    echo "$name: aggregator up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s" \
        "with $(grep -vc '^#' "$keys") keys; RSS $(awk '/^VmRSS/ { print $2 }' /proc/$AGG_PID/status) KiB"
    "$BIN/fedge-edgesim" --server "127.0.0.1:$port" --keys "$keys" --population "$pop" \
        --concurrency "$conc" --arrival all --rounds 0 --session-s "$S_SESSION" --train sgd \
        --data "$W/all/shard-000.bin" --beta 0.5 --encoding int8 --poll-ms 1000 --timeout-ms 20000 \
        --seed 7 --duration-s "$secs" --tmp-dir /dev/shm --log-level error \
        --json "$W/$name.json" >"$W/$name.sim.log" 2>&1 || { tail -5 "$W/$name.sim.log"; die "$name: edgesim failed"; }
    hwm=$(hwm_kib "$AGG_PID")
    cpu=$(awk -v t="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / t }' "/proc/$AGG_PID/stat")
    kill "$AGG_PID"; wait "$AGG_PID" 2>/dev/null; AGG_PID=""
    echo "$name: aggregator peak RSS ${hwm} KiB; CPU ${cpu} s (user + system) over the run;" \
        "$(grep -c 'refused (trained' "$W/$name.agg.log") admission refusals (4.09) and" \
        "$(grep -c 'timed out' "$W/$name.agg.log") slot timeouts in its log;" \
        "load average $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 - "$W/$name.json" "$db" "$name" <<'EOF'
import json, sqlite3, sys
s = json.load(open(sys.argv[1])); db = sqlite3.connect(sys.argv[2]); name = sys.argv[3]
u = s["updates"]; lat = s["latency_ms"]
t0 = db.execute("SELECT min(opened_at) FROM rounds").fetchone()[0]
rows = db.execute("SELECT id, closed_at - ?, accuracy, n_accepted FROM rounds WHERE status='closed' ORDER BY id", (t0,)).fetchall()
print(f"{name}: {s['sessions']} sessions, {u['sent']} updates sent, {u['accepted']} accepted, "
      f"{u['refused_total']} refused {u['refused']}, {u['no_answer']} unanswered; "
      f"POST reply p50 {lat['post_p50']:.0f} ms p99 {lat['post_p99']:.0f} ms; "
      f"{s['handshakes']} handshakes; {len(rows)} aggregations")
print(f"{name}: accuracy vs wall time (s since the first round opened):")
step = max(1, len(rows) // 12)
for i, (rid, t, acc, n) in enumerate(rows):
    if i % step == 0 or i == len(rows) - 1:
        print(f"  {name} round {rid:4d}  t={t:7.1f}s  acc={acc if acc is not None else float('nan'):.4f}  n={n}")
EOF
}

want() { case " $MODES " in *" $1 "*) return 0 ;; esac; return 1; }
want sync && run_one sync "$W/keys" "$P" "$S" "$DUR" --clients-per-round 500 --round-timeout-s 15 --min-updates 20
want async && run_one async "$W/keys" "$P" "$S" "$DUR" --mode async --async-concurrency 200 \
    --async-buffer-k 50 --async-slot-timeout-s 30
# the per-device cost: the same shape with 100 devices (S scaled to 50)
want async-p100 && run_one async-p100 "$W/keys100" 100 50 $((DUR / 5 > 30 ? DUR / 5 : 30)) --mode async \
    --async-concurrency 20 --async-buffer-k 5 --async-slot-timeout-s 30
# the same small shape over the whole population: the per-device cost alone
# (RSS flat from 100 to P devices at the same sessions)
want async-p-s50 && run_one async-p-s50 "$W/keys" "$P" 50 $((DUR / 5 > 30 ? DUR / 5 : 30)) --mode async \
    --async-concurrency 20 --async-buffer-k 5 --async-slot-timeout-s 30
exit 0
