#!/usr/bin/env bash
# tools/bench/ingest_syscalls.sh [BUILD] [N] [WORKERS]
# The aggregator's system calls per update over the POST phase of
# tools/bench/ingest_rate.sh (issue 9 §4): for each transport in TRANSPORTS
# (default "dtls tcp") the aggregator is recorded with perf on the
# syscalls:sys_enter_* tracepoints of its I/O loop (every call, not samples)
# and the calls between the driver's "phase POST A,B" times are counted and
# divided by N, with the aggregator's threads' context switches
# (sched:sched_switch: each sleep in poll or epoll_wait is one). The
# driver's own lines (updates/s, latency, the daemon's on-CPU us per update)
# are printed as they come. Needs perf and tracepoint
# access (root, or kernel.perf_event_paranoid <= -1).
set -euo pipefail
BUILD=${1:-build/native}
N=${2:-200}
W=${3:-2}
cd "$(dirname "$0")/../.."
read -r -a TRANSPORTS <<<"${TRANSPORTS:-dtls tcp}"
CALLS=(poll epoll_wait recvmsg sendmsg read write sendto recvfrom timerfd_settime)
pd=$(mktemp -d /tmp/fedge-syscalls.XXXXXX)
trap 'rm -rf "$pd"' EXIT
events=""
for c in "${CALLS[@]}"; do events+=" -e syscalls:sys_enter_$c"; done
events+=" -e sched:sched_switch"
TRANSPORTS="${TRANSPORTS[*]}" PERF_DIR="$pd" PERF_ARGS="$events" \
    bash tools/bench/ingest_rate.sh "$BUILD" "$N" "$W" | tee "$pd/out"
mapfile -t windows < <(awk '/^phase +POST/ { print $3 }' "$pd/out")
[ ${#windows[@]} -eq ${#TRANSPORTS[@]} ] || { echo "ingest_syscalls: expected ${#TRANSPORTS[@]} POST phases, got ${#windows[@]}" >&2; exit 1; }
for i in "${!TRANSPORTS[@]}"; do
    t=${TRANSPORTS[$i]}
    perf script -i "$pd/agg-$t-$W.data" --time "${windows[$i]}" -F event 2>/dev/null |
        awk -v n="$N" -v t="$t" '
            /sched_switch/ { sw++; next }
            { sub(/^syscalls:sys_enter_/, "", $1); sub(/:$/, "", $1); c[$1]++; all++ }
            END {
                printf "syscalls %s, POST phase, per update:", t
                for (k in c) printf " %s %.1f", k, c[k] / n
                printf "; all %.1f; context switches %.1f\n", all / n, sw / n
            }'
done
