#!/usr/bin/env bash
# One aggregator per database and per listen address. A second start on a
# database in use exits 2 naming the owner's pid and leaves the database
# byte-for-byte unchanged; a second start on a listen address in use (another
# database) exits 2 too. After kill -9 of the owner the lock is gone with it:
# a new start on the same database and address runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 2
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 2 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
# a long start delay: the owner sits idle, so its database does not change
common=(--keys-file "$FED_DIR/keys" --model-dir "$FED_DIR/models" --model-spec softmax:784-10
        --test-data "$FED_DIR/test.bin" --start-delay-s 600)

start() { # LOG ARGS...: starts an aggregator in the background, pid in $started
    local log=$1
    shift
    "$BIN/fedge-aggregator" "${common[@]}" "$@" >"$FED_DIR/$log" 2>&1 &
    started=$!
    FED_PIDS+=("$started")
}
db_state() { cat "$FED_DIR"/fedge.db "$FED_DIR"/fedge.db-wal "$FED_DIR"/fedge.db-shm 2>/dev/null | sha256sum; }

start owner.log --db "$FED_DIR/fedge.db" --listen "127.0.0.1:$FED_PORT"
owner=$started
fed_wait_for "grep -q 'listening on' '$FED_DIR/owner.log' 2>/dev/null" 60
[ "$(tr -d '\n' <"$FED_DIR/fedge.db.lock")" = "$owner" ] || fed_fail "fedge.db.lock does not hold the owner's pid $owner"
before=$(db_state)

# the same database, another address
port2=$(fed_free_port)
start second.log --db "$FED_DIR/fedge.db" --listen "127.0.0.1:$port2"
fed_wait_pid "$started" 30
rc=$?
[ "$rc" = 2 ] || { cat "$FED_DIR/second.log" >&2; fed_fail "second start on the same database exited $rc, want 2"; }
grep -q "in use by pid $owner" "$FED_DIR/second.log" ||
    { cat "$FED_DIR/second.log" >&2; fed_fail "the refusal does not name the owner's pid $owner"; }
[ "$(db_state)" = "$before" ] || fed_fail "the refused start changed the database"
kill -0 "$owner" 2>/dev/null || fed_fail "the owner died"

# the same database through another path (a symlink) is the same database
ln -s "$FED_DIR/fedge.db" "$FED_DIR/alias.db"
start alias.log --db "$FED_DIR/alias.db" --listen "127.0.0.1:$port2"
fed_wait_pid "$started" 30
rc=$?
[ "$rc" = 2 ] && grep -q "in use by pid $owner" "$FED_DIR/alias.log" ||
    { cat "$FED_DIR/alias.log" >&2; fed_fail "a start through a symlink to the database was not refused (exit $rc)"; }

# the same file under another name: a hard link, and the sidecar deleted
ln "$FED_DIR/fedge.db" "$FED_DIR/hardlink.db"
start hardlink.log --db "$FED_DIR/hardlink.db" --listen "127.0.0.1:$port2"
fed_wait_pid "$started" 30
rc=$?
[ "$rc" = 2 ] && grep -q "in use by pid $owner" "$FED_DIR/hardlink.log" ||
    { cat "$FED_DIR/hardlink.log" >&2; fed_fail "a start on a hard link to the database was not refused (exit $rc)"; }
rm -f "$FED_DIR/hardlink.db" "$FED_DIR/hardlink.db.lock"
rm -f "$FED_DIR/fedge.db.lock"
start nolock.log --db "$FED_DIR/fedge.db" --listen "127.0.0.1:$port2"
fed_wait_pid "$started" 30
rc=$?
[ "$rc" = 2 ] && grep -q "in use by pid $owner" "$FED_DIR/nolock.log" ||
    { cat "$FED_DIR/nolock.log" >&2; fed_fail "a start after the lock file was deleted was not refused (exit $rc)"; }
[ "$(db_state)" = "$before" ] || fed_fail "the refused starts changed the database"

# the same address, another database
start port.log --db "$FED_DIR/other.db" --listen "127.0.0.1:$FED_PORT"
fed_wait_pid "$started" 30
rc=$?
[ "$rc" = 2 ] || { cat "$FED_DIR/port.log" >&2; fed_fail "second start on the same address exited $rc, want 2"; }
grep -q "127.0.0.1:$FED_PORT: address in use by pid $owner" "$FED_DIR/port.log" ||
    { ls -la "$FED_DIR" >&2; cat "$FED_DIR/port.log" >&2; fed_fail "the refusal does not name the address and the owner's pid"; }
[ "$(db_state)" = "$before" ] || fed_fail "the refused start changed the database"

# kill -9 leaves no stale lock
kill -9 "$owner"
wait "$owner" 2>/dev/null
start third.log --db "$FED_DIR/fedge.db" --listen "127.0.0.1:$FED_PORT"
third=$started
fed_wait_for "grep -q 'listening on' '$FED_DIR/third.log' 2>/dev/null" 60
[ "$(tr -d '\n' <"$FED_DIR/fedge.db.lock")" = "$third" ] || fed_fail "the lock file does not hold the new owner's pid"
kill -TERM "$third"
fed_wait_pid "$third" 30 || { cat "$FED_DIR/third.log" >&2; fed_fail "the new owner did not stop cleanly"; }
echo ok
