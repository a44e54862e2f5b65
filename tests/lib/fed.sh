# tests/lib/fed.sh — helpers for scripts that run a real federation on
# loopback: provisioning, starting and stopping the aggregator and edges.
# Source it; set FEDGE_BUILD (default build/native). Every process started
# here is recorded and killed by fed_cleanup (installed as an EXIT trap).

FEDGE_BUILD=${FEDGE_BUILD:-build/native}
BIN="$FEDGE_BUILD/bin"
FED_PIDS=()
FED_DIR=""

# fed_sanitizer_reports: prints the ASan/LSan/UBSan reports the processes
# left in $FED_DIR's logs (their stderr) and fails when there is one: a
# report at shutdown, after the test's own checks, is still a failure.
fed_sanitizer_reports() {
    local f found=0 pat='ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|Leak|UndefinedBehavior)Sanitizer'
    for f in "${FED_DIR:-/nonexistent}"/*.log; do
        [ -f "$f" ] || continue
        if grep -qE "$pat" "$f"; then
            echo "FAIL: sanitizer report in ${f##*/}:" >&2
            grep -m 8 -E "$pat" "$f" >&2
            found=1
        fi
    done
    return $found
}

fed_cleanup() {
    local pid reports=0
    for pid in "${FED_PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${FED_PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    FED_PIDS=()
    fed_sanitizer_reports || reports=1
    if [ -n "$FED_DIR" ] && [ -z "${FEDGE_KEEP:-}" ]; then
        rm -rf "$FED_DIR"
    fi
    [ "$reports" -eq 0 ] || exit 1
}

fed_fail() {
    echo "FAIL: $*" >&2
    if [ -n "$FED_DIR" ] && [ -f "$FED_DIR/agg.log" ]; then
        echo "--- aggregator log (tail) ---" >&2
        tail -n 40 "$FED_DIR/agg.log" >&2
    fi
    local f
    for f in "${FED_DIR:-/nonexistent}"/edge-*.log; do
        [ -f "$f" ] || continue
        echo "--- ${f##*/} (tail, no DEBUG) ---" >&2
        grep -v ' DEBUG ' "$f" | tail -n 12 >&2
    done
    exit 1
}

# fed_setup N_DEVICES: temp dir, keys, signing key
fed_setup() {
    FED_DIR=$(mktemp -d /tmp/fedge-test.XXXXXX)
    trap fed_cleanup EXIT
    "$BIN/fedge-keygen" devices --count "$1" --prefix dev- --regions eu --out "$FED_DIR/keys" >/dev/null ||
        fed_fail "keygen devices"
    "$BIN/fedge-keygen" aggregator --out "$FED_DIR" >/dev/null || fed_fail "keygen aggregator"
}

# fed_free_port: a UDP port nobody listens on
fed_free_port() {
    python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# fed_start_aggregator ARGS...: starts it with the test dir's keys, db and models
fed_start_aggregator() {
    "$BIN/fedge-aggregator" --keys-file "$FED_DIR/keys" --db "$FED_DIR/fedge.db" \
        --model-dir "$FED_DIR/models" --signing-key "$FED_DIR/aggregator.key" \
        --listen "127.0.0.1:$FED_PORT" "$@" >>"$FED_DIR/agg.log" 2>&1 &
    FED_AGG_PID=$!
    FED_PIDS+=("$FED_AGG_PID")
}

# fed_edge_keys ID: the keys file holding only ID's secret (fedge-keygen
# export), as an edge is provisioned; prints its path.
fed_edge_keys() {
    local f="$FED_DIR/keys-$1"
    [ -f "$f" ] || "$BIN/fedge-keygen" export --keys "$FED_DIR/keys" --id "$1" --out "$f" >/dev/null ||
        fed_fail "keygen export $1"
    echo "$f"
}

# fed_start_edge ID SHARD ARGS...: the edge gets its own exported keys file;
# FED_EDGE_BIN names another fedge-edge (default $BIN/fedge-edge)
FED_EDGE_PIDS=()
fed_start_edge() {
    local id=$1 shard=$2 keys
    shift 2
    keys=$(fed_edge_keys "$id") || exit 1
    "${FED_EDGE_BIN:-$BIN/fedge-edge}" --server "127.0.0.1:$FED_PORT" --id "$id" --keys "$keys" \
        --shard "$shard" "$@" >>"$FED_DIR/edge-$id.log" 2>&1 &
    FED_PIDS+=("$!")
    FED_EDGE_PIDS+=("$!:$id")
}

# fed_wait_run SECONDS: wait for the aggregator to finish, then for every
# edge to exit by itself with status 0; fails early when an edge dies with
# an error first (its log tail is shown).
# FED_END_LINGER=1: once the aggregator has logged the run's end and every
# edge in FED_EDGE_PIDS has exited 0, the rest of --linger-s (there for the
# edges to hear "finished") is cut short with SIGTERM, after which the
# aggregator exits with the same status (the run's outcome) as at its end.
fed_wait_run() {
    local t=$1 i j e pid id agg_status termed=""
    local -A reaped=()
    for ((i = 0; i < t * 10; i++)); do
        if [ -n "${FED_END_LINGER:-}" ] && [ -z "$termed" ] && [ ${#FED_EDGE_PIDS[@]} -gt 0 ] &&
            [ ${#reaped[@]} = ${#FED_EDGE_PIDS[@]} ] &&
            grep -qE 'finished [0-9]+ rounds|run ended after|refused: .*; stopping' "$FED_DIR/agg.log"; then
            kill -TERM "$FED_AGG_PID" 2>/dev/null
            termed=1
        fi
        if ! kill -0 "$FED_AGG_PID" 2>/dev/null; then
            wait "$FED_AGG_PID"
            agg_status=$?
            for e in "${FED_EDGE_PIDS[@]}"; do
                pid=${e%%:*} id=${e#*:}
                [ -z "${reaped[$pid]:-}" ] || continue
                for ((j = 0; j < 300; j++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -0 "$pid" 2>/dev/null && fed_fail "edge $id still running 30s after the run finished"
                wait "$pid" || { tail -n 5 "$FED_DIR/edge-$id.log" >&2; fed_fail "edge $id exited with an error"; }
            done
            FED_EDGE_PIDS=()
            return $agg_status
        fi
        for e in "${FED_EDGE_PIDS[@]}"; do
            pid=${e%%:*} id=${e#*:}
            [ -z "${reaped[$pid]:-}" ] || continue
            kill -0 "$pid" 2>/dev/null && continue
            reaped[$pid]=1
            if ! wait "$pid"; then
                tail -n 5 "$FED_DIR/edge-$id.log" >&2
                fed_fail "edge $id exited with an error before the run finished"
            fi
        done
        sleep 0.1
    done
    fed_fail "the run did not finish within ${t}s"
}

# fed_wait_pid PID SECONDS: wait for a process to exit; fails on timeout
fed_wait_pid() {
    local pid=$1 t=$2 i
    for ((i = 0; i < t * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid"; return $?; }
        sleep 0.1
    done
    fed_fail "process $pid still running after ${t}s"
}

# fed_wait_for COND_CMD SECONDS
fed_wait_for() {
    local cmd=$1 t=$2 i
    for ((i = 0; i < t * 10; i++)); do
        eval "$cmd" && return 0
        sleep 0.1
    done
    fed_fail "timed out after ${t}s waiting for: $cmd"
}

# fed_parts FUNC...: runs the functions at once, each in the background in
# its own directory $FED_DIR/FUNC (what $FED_DIR holds linked in) with its
# own FED_PORT, processes and cleanup (fed_fail ends only that part); then
# prints their output in order and fails naming the parts that failed.
fed_parts() {
    local base=$FED_DIR p i e entries=() pids=() failed=() keep=("${FED_PIDS[@]}")
    for e in "$FED_DIR"/*; do # not a run's own files
        case ${e##*/} in agg.log | fedge.db* | models | edge-*.log) ;; *) entries+=("$e") ;; esac
    done
    for p in "$@"; do
        mkdir "$base/$p" && ln -s "${entries[@]}" "$base/$p/" || fed_fail "cannot set up $base/$p"
        (
            FED_DIR=$base/$p FED_PIDS=() FED_EDGE_PIDS=()
            trap fed_cleanup EXIT
            trap 'exit 143' TERM
            FED_PORT=$(fed_free_port)
            "$p"
            exit 0 # as in a script: a part fails by fed_fail (or exit), not by its last status
        ) >"$base/$p.out" 2>&1 &
        pids+=("$!")
        FED_PIDS+=("$!")
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || failed+=("${*:i+1:1}")
    done
    FED_PIDS=("${keep[@]}")
    for p in "$@"; do cat "$base/$p.out"; done
    [ ${#failed[@]} = 0 ] || fed_fail "failed: ${failed[*]}"
}

fed_sql() { sqlite3 -batch -noheader -cmd ".timeout 10000" "$FED_DIR/fedge.db" "$@"; } # waits out the daemon's write lock
