#!/usr/bin/env bash
# make demo's monitor must survive a busy database: while another process
# holds an exclusive lock on the run's database (every reader gets
# SQLITE_BUSY), demo_monitor_tick from tools/demo.sh, run under the demo's
# own `set -euo pipefail`, skips its ticks instead of killing the demo, and
# catches up once the lock is gone; demo_sql (the summary's path) waits the
# lock out and returns the right rows.
set -uo pipefail
cd "$(dirname "$0")/../.."
T=$(mktemp -d /tmp/fedge-demo-mon.XXXXXX)
holder=
cleanup() {
    [ -z "$holder" ] || kill "$holder" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

. tools/demo.sh
declare -F demo_monitor_tick >/dev/null || fail "tools/demo.sh defines no demo_monitor_tick"
DB=$T/fedge.db
# A WAL database like the demo's; a writer in exclusive locking mode makes
# every reader fail with SQLITE_BUSY for as long as the test wants.
sqlite3 "$DB" "PRAGMA journal_mode=WAL; CREATE TABLE rounds(id INTEGER PRIMARY KEY, status TEXT, n_accepted INTEGER, accuracy REAL,
                      bytes_received INTEGER, opened_at REAL, closed_at REAL);
  INSERT INTO rounds VALUES(1, 'closed', 2, 0.5, 1000, 10, 12.5);" >/dev/null || fail "fixture"

# hold_lock SECONDS: an exclusive writer that adds round 2 and commits at the end
hold_lock() {
    { echo ".timeout 10000"
      echo "PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE; INSERT INTO rounds VALUES(2, 'closed', 3, 0.625, 2000, 12.5, 20);"
      sleep "$1"
      echo "COMMIT;"; } | sqlite3 "$DB" >/dev/null &
    holder=$!
    local i
    for ((i = 0; i < 100; i++)); do
        sleep 0.05
        sqlite3 -batch "file:$DB?mode=ro" "SELECT count(*) FROM rounds" >/dev/null 2>&1 || return 0
    done
    fail "the lock holder did not make the database busy"
}

hold_lock 8
# the monitor's ticks under the demo's shell options, while every read is busy
(
    set -euo pipefail
    DEMO_SHOWN=0
    for i in 1 2 3; do demo_monitor_tick "$DB"; done
    echo "survived shown=$DEMO_SHOWN"
) >"$T/busy.out" 2>&1
rc=$?
[ "$rc" = 0 ] || { cat "$T/busy.out" >&2; fail "a monitor tick on a busy database exited $rc"; }
grep -qx "survived shown=0" "$T/busy.out" || { cat "$T/busy.out" >&2; fail "ticks on a busy database printed rows"; }
sqlite3 -batch "file:$DB?mode=ro" "SELECT count(*) FROM rounds" >/dev/null 2>&1 && fail "the lock was gone before the ticks ended (test too slow)"

# the summary's read waits the lock out (up to 10 tries of 2 s)
rows=$(demo_sql "$DB" "SELECT count(*), sum(n_accepted) FROM rounds WHERE status='closed'") ||
    fail "demo_sql gave up on a database locked for a few seconds"
[ "$rows" = "2 5" ] || fail "demo_sql read '$rows', want '2 5' (after the writer's commit)"
wait "$holder"
holder=

# and the monitor catches up: both rounds, in order, once each
(
    set -euo pipefail
    DEMO_SHOWN=0
    demo_monitor_tick "$DB"
    demo_monitor_tick "$DB"
    echo "shown=$DEMO_SHOWN"
) >"$T/free.out" 2>&1 || { cat "$T/free.out" >&2; fail "a monitor tick failed on a free database"; }
[ "$(grep -c '^ *[12] ' "$T/free.out")" = 2 ] || { cat "$T/free.out" >&2; fail "rounds 1 and 2 not shown once each"; }
grep -q '^ *2 *3 *0.6250 *2000 *7.50$' "$T/free.out" || { cat "$T/free.out" >&2; fail "round 2's row is wrong"; }
grep -qx "shown=2" "$T/free.out" || fail "DEMO_SHOWN did not reach 2"
echo ok
