#!/usr/bin/env bash
# A log with signed heads stays signed by its key. On such a database a start
# without --signing-key exits 2 (it would leave fedge-audit verify failing for
# good) and so does a start with another key, both without touching the
# database; the right key starts; --allow-unsigned starts and leaves an
# audited 'unsigned_start' event.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 1
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 1 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
mkdir "$FED_DIR/other"
"$BIN/fedge-keygen" aggregator --out "$FED_DIR/other" >/dev/null || fed_fail "keygen other"
base=(--keys-file "$FED_DIR/keys" --db "$FED_DIR/fedge.db" --model-dir "$FED_DIR/models"
      --listen "127.0.0.1:$FED_PORT" --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin")

# a signed log: a round nobody joins ends at its deadline with a signed head
"$BIN/fedge-aggregator" "${base[@]}" --signing-key "$FED_DIR/aggregator.key" --rounds 1 \
    --round-timeout-s 1 --linger-s 0 >"$FED_DIR/first.log" 2>&1 &
first=$!
FED_PIDS+=("$first")
fed_wait_for "[ \"\$(fed_sql 'SELECT count(*) FROM audit_heads' 2>/dev/null || echo 0)\" -ge 1 ]" 60
kill -TERM "$first" 2>/dev/null
fed_wait_pid "$first" 30
db_state() { cat "$FED_DIR"/fedge.db* 2>/dev/null | sha256sum; }
before=$(db_state)

refused() { # NAME NEEDLE ARGS...: the start must exit 2 with NEEDLE in its output
    local name=$1 needle=$2 rc
    shift 2
    timeout 60 "$BIN/fedge-aggregator" "${base[@]}" --start-delay-s 600 "$@" >"$FED_DIR/$name.log" 2>&1
    rc=$?
    [ "$rc" = 2 ] || { cat "$FED_DIR/$name.log" >&2; fed_fail "$name: exited $rc, want 2"; }
    grep -q -- "$needle" "$FED_DIR/$name.log" || { cat "$FED_DIR/$name.log" >&2; fed_fail "$name: no '$needle'"; }
    [ "$(db_state)" = "$before" ] || fed_fail "$name: the refused start changed the database"
}
refused no-key "no signing_key is given" 
grep -q -- "--allow-unsigned" "$FED_DIR/no-key.log" || fed_fail "the refusal does not name --allow-unsigned"
refused other-key "did not sign this log" --signing-key "$FED_DIR/other/aggregator.key"

runs() { # NAME ARGS...: the start must come up; then it is stopped
    local name=$1 pid
    shift
    "$BIN/fedge-aggregator" "${base[@]}" --start-delay-s 600 "$@" >"$FED_DIR/$name.log" 2>&1 &
    pid=$!
    FED_PIDS+=("$pid")
    fed_wait_for "grep -q 'listening on' '$FED_DIR/$name.log' 2>/dev/null" 60
    kill -TERM "$pid"
    fed_wait_pid "$pid" 30 || fed_fail "$name: did not stop cleanly"
}
runs right-key --signing-key "$FED_DIR/aggregator.key"
[ "$(fed_sql "SELECT count(*) FROM events WHERE kind='unsigned_start'")" = 0 ] || fed_fail "unexpected unsigned_start"
runs unsigned --allow-unsigned
[ "$(fed_sql "SELECT count(*) FROM events WHERE kind='unsigned_start' AND rule='operator'")" = 1 ] ||
    fed_fail "--allow-unsigned left no unsigned_start event"
seq=$(fed_sql "SELECT max(a.seq) FROM audit a JOIN events e ON a.tbl='events' AND a.row_key=CAST(e.id AS TEXT) WHERE e.kind='unsigned_start'")
[ -n "$seq" ] || fed_fail "the unsigned_start event is not in the audit chain"
echo ok
