#!/usr/bin/env bash
# A keys file edited by hand and the daemon sent SIGHUP: every device the
# reload adds, takes out or moves to another region is an audited event (as
# fedge-admin's 'enrolled' and 'device_status' are), and the log verifies. A
# device taken out while the sync round waits for it leaves the round's
# awaited set: round 1 (deadline 20 s) closes as soon as the one device left
# has reported, not at its deadline.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 2
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 2 --kind iid --seed 9 --out "$FED_DIR/shards" \
    --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail partition
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 3 \
    --round-timeout-s 20 --start-delay-s 0.2 --local-epochs 1 --linger-s 0
fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin" --poll-ms 100
fed_wait_for "grep -q 'round 1: dev-001 accepted' '$FED_DIR/agg.log'" 20
# by hand: dev-002 (selected, never reporting) out, dev-9001 in
"$BIN/fedge-keygen" devices --count 1 --prefix dev-9 --regions us --out "$FED_DIR/more" >/dev/null || fed_fail keygen
grep -v '^dev-002 ' "$FED_DIR/keys" >"$FED_DIR/keys.new"
grep '^dev-' "$FED_DIR/more" >>"$FED_DIR/keys.new"
chmod 600 "$FED_DIR/keys.new" && mv "$FED_DIR/keys.new" "$FED_DIR/keys"
before=$(fed_sql "SELECT count(*) FROM audit")
t0=$(date +%s.%N)
kill -HUP "$FED_AGG_PID"
fed_wait_for "grep -q 'keys reloaded from .*(1 added, 1 removed, 0 changed)' '$FED_DIR/agg.log'" 5
fed_wait_for "grep -q 'round 1 closed\|round 1 failed' '$FED_DIR/agg.log'" 10
dt=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
python3 -c "import sys; sys.exit(0 if $dt < 5 else 1)" ||
    fed_fail "round 1 ended $dt s after dev-002 was taken out: it waited for a removed device"
grep -q "round 1 deadline" "$FED_DIR/agg.log" && fed_fail "round 1 ran to its deadline"

audited() { # KIND DEVICE TEXT: audited events of KIND about DEVICE whose detail holds TEXT
    fed_sql "SELECT count(*) FROM events e JOIN audit a ON a.tbl='events' AND a.row_key=CAST(e.id AS TEXT)
             WHERE e.kind='$1' AND e.device='$2' AND e.detail LIKE '%$3%'"
}
[ "$(audited enrolled dev-9001 'enrolled in region us by a keys reload')" = 1 ] ||
    fed_fail "the device the reload added has no audited 'enrolled' event"
[ "$(audited device_status dev-002 'taken out of the keys file by a keys reload')" = 1 ] ||
    fed_fail "the device the reload took out has no audited 'device_status' event"
[ "$(fed_sql "SELECT count(*) FROM audit")" -gt "$before" ] || fed_fail "no audit rows added"

# a region changed by hand
sed -i 's/^\(dev-9001\) us /\1 eu /' "$FED_DIR/keys"
kill -HUP "$FED_AGG_PID"
fed_wait_for "grep -q 'keys reloaded from .*(0 added, 0 removed, 1 changed)' '$FED_DIR/agg.log'" 5
[ "$(fed_sql "SELECT region FROM devices WHERE id='dev-9001'")" = eu ] || fed_fail "the region change was not taken"
[ "$(audited enrolled dev-9001 'region us -> eu by a keys reload')" = 1 ] ||
    fed_fail "the region change has no audited event"
# fedge-admin's own enrolment is audited once, not again by its reload
"$BIN/fedge-admin" --db "$FED_DIR/fedge.db" device add dev-010 --region eu --keys "$FED_DIR/keys" --reload \
    >/dev/null 2>&1 || fed_fail "device add"
fed_wait_for "grep -q 'keys reloaded from .*(1 added, 0 removed, 0 changed)' '$FED_DIR/agg.log'" 5
[ "$(fed_sql "SELECT count(*) FROM events WHERE device='dev-010' AND kind='enrolled'")" = 1 ] ||
    fed_fail "dev-010's enrolment should be one event"
kill -TERM "$FED_AGG_PID"
fed_wait_pid "$FED_AGG_PID" 10
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >"$FED_DIR/verify.out" 2>&1 ||
    { cat "$FED_DIR/verify.out"; fed_fail "the log does not verify after the reloads"; }
echo "PASS: keys_reload_audit"
