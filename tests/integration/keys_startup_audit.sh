#!/usr/bin/env bash
# Keys changes made while the daemon was stopped are audited at the next
# start. The first start of a new log records the initial device set; a keys
# file edited by hand while the daemon is down (a device removed, one added,
# one re-keyed, one moved to another region) gives one audited 'keys' event
# per change (source startup, key ids only, never a secret) before the daemon
# serves; a start with nothing changed records nothing; a SIGHUP reload keeps
# the same ledger, so the start after it records nothing either. fedge-audit
# report shows the events and verify passes; a tampered keys event fails it;
# one that does not parse stops the next start, and so does one with no
# audit entry (written behind the daemon's back). --check predicts a new
# log's initial set; a reload's keys events are under a signed head at once.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 4
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 1 --kind iid --seed 5 --out "$FED_DIR/shards" \
    --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail partition
starts=0
start() { # the daemon idle before round 1; returns once it serves
    starts=$((starts + 1))
    fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
        --start-delay-s 600
    fed_wait_for "[ \$(cat '$FED_DIR/agg.log' 2>/dev/null | grep -c 'listening on') -ge $starts ]" 30
}
stop() {
    kill -TERM "$FED_AGG_PID"
    fed_wait_pid "$FED_AGG_PID" 10 || fed_fail "the daemon did not stop"
}
keys_events() { fed_sql "SELECT count(*) FROM events WHERE kind='keys'"; }
# KIND DEVICE TEXT: audited keys events about DEVICE whose detail holds TEXT
audited() {
    fed_sql "SELECT count(*) FROM events e JOIN audit a ON a.tbl='events' AND a.row_key=CAST(e.id AS TEXT)
             WHERE e.kind='keys' AND e.device='$2' AND e.detail LIKE '$1 %$3%'"
}
key_id() { fed_sql "SELECT substr(detail, instr(detail, 'key id ') + 7, 16) FROM events
                    WHERE kind='keys' AND device='$1' ORDER BY id DESC LIMIT 1"; }
signed_to_end() { [ "$(fed_sql "SELECT max(seq) FROM audit")" = "$(fed_sql "SELECT max(seq) FROM audit_heads")" ]; }

check() {
    "$BIN/fedge-aggregator" --check --keys-file "$FED_DIR/keys" --db "$FED_DIR/fedge.db" \
        --model-dir "$FED_DIR/models" --signing-key "$FED_DIR/aggregator.key" --model-spec softmax:784-10 \
        >"$FED_DIR/check.out" 2>&1
}
# refused ROW REASON: the daemon will not start on the log, naming events row
# ROW and REASON (exit 2), and --check refuses it the same way (exit 1)
refused() {
    local row=$1 reason=$2 rc
    fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 1 --start-delay-s 600
    fed_wait_pid "$FED_AGG_PID" 30
    rc=$?
    [ "$rc" = 2 ] || fed_fail "the daemon on events row $row ($reason) exited $rc, want 2"
    grep -q "start-up failed: keys ledger: events row $row: $reason" "$FED_DIR/agg.log" ||
        fed_fail "the start-up failure does not name events row $row ($reason)"
    check
    rc=$?
    [ "$rc" = 1 ] && grep -q "^keys_ledger: .*events row $row: $reason" "$FED_DIR/check.out" ||
        { cat "$FED_DIR/check.out"; fed_fail "--check (exit $rc) does not refuse events row $row ($reason)"; }
}
check
grep -q '^keys_ledger: ok (a start records 4 added, 0 removed, 0 rekeyed, 0 moved (the initial set of a new log))' \
    "$FED_DIR/check.out" || { cat "$FED_DIR/check.out"; fed_fail "--check on a new log does not predict its initial set"; }
[ -e "$FED_DIR/fedge.db" ] && fed_fail "--check created the log"
start
[ "$(keys_events)" = 4 ] || fed_fail "the first start recorded $(keys_events) keys events, want 4 (the initial set)"
for d in dev-001 dev-002 dev-003 dev-004; do
    [ "$(audited added "$d" '(startup;')" = 1 ] || fed_fail "$d: no audited 'added ... (startup' event"
done
signed_to_end || fed_fail "the start-up keys events are not under a signed head"
old_kid=$(key_id dev-001)
stop

# by hand, while the daemon is down
"$BIN/fedge-keygen" devices --count 2 --prefix dev-9 --regions us --out "$FED_DIR/more" >/dev/null || fed_fail keygen
new_secret=$(awk '$1 == "dev-9002" {print $3}' "$FED_DIR/more")
{
    grep -v '^dev-002 ' "$FED_DIR/keys" | sed -e "s/^\(dev-001 eu \).*/\1$new_secret/" -e 's/^\(dev-003\) eu /\1 us /'
    grep '^dev-9001 ' "$FED_DIR/more"
} >"$FED_DIR/keys.new"
chmod 600 "$FED_DIR/keys.new" && mv "$FED_DIR/keys.new" "$FED_DIR/keys"
"$BIN/fedge-aggregator" --check --keys-file "$FED_DIR/keys" --db "$FED_DIR/fedge.db" --model-dir "$FED_DIR/models" \
    --signing-key "$FED_DIR/aggregator.key" --model-spec softmax:784-10 >"$FED_DIR/check.out" 2>&1
grep -q '^keys_ledger: ok (a start records 1 added, 1 removed, 1 rekeyed, 1 moved)' "$FED_DIR/check.out" ||
    { cat "$FED_DIR/check.out"; fed_fail "--check does not say what the start will record"; }
[ "$(keys_events)" = 4 ] || fed_fail "--check wrote to the log"
start
[ "$(keys_events)" = 8 ] || fed_fail "$(($(keys_events) - 4)) keys events after the hand edit, want 4"
[ "$(audited removed dev-002 '(startup;')" = 1 ] || fed_fail "dev-002's removal is not audited"
[ "$(audited added dev-9001 'region us key id')" = 1 ] || fed_fail "dev-9001's admission is not audited"
[ "$(audited rekeyed dev-001 "was region eu key id $old_kid (startup;")" = 1 ] ||
    fed_fail "dev-001's new key is not audited"
[ "$(key_id dev-001)" != "$old_kid" ] || fed_fail "dev-001's key id did not change"
[ "$(audited moved dev-003 'region us key id')" = 1 ] || fed_fail "dev-003's region change is not audited"
[ "$(audited '%' dev-004 '')" = 1 ] || fed_fail "dev-004 did not change but has a new keys event"
[ "$(fed_sql "SELECT region FROM devices WHERE id='dev-003'")" = us ] || fed_fail "dev-003's region was not taken"
signed_to_end || fed_fail "the start-up keys events are not under a signed head"
grep -q 'keys file .* since the last audited keys state: 1 added, 1 removed, 1 rekeyed, 1 moved' "$FED_DIR/agg.log" ||
    fed_fail "the daemon log does not summarise the start-up keys changes"
for s in $(awk '/^dev-/ {print $3}' "$FED_DIR/keys" "$FED_DIR/more"); do
    fed_sql "SELECT count(*) FROM events WHERE instr(detail, '$s') > 0" | grep -qx 0 ||
        fed_fail "a device secret is in the log"
done

# a reload records its changes in the same ledger: the next start has nothing to add
grep -v '^dev-9001 ' "$FED_DIR/keys" >"$FED_DIR/keys.new"
chmod 600 "$FED_DIR/keys.new" && mv "$FED_DIR/keys.new" "$FED_DIR/keys"
kill -HUP "$FED_AGG_PID"
fed_wait_for "grep -q 'keys reloaded from .*(0 added, 1 removed, 0 changed)' '$FED_DIR/agg.log'" 5
[ "$(audited removed dev-9001 '(reload;')" = 1 ] || fed_fail "the reload's removal is not a keys event"
signed_to_end || fed_fail "the reload's keys events are not under a signed head (the unsigned tail can lose them)"
stop
n=$(keys_events)
start
[ "$(keys_events)" = "$n" ] || fed_fail "a start with the keys file unchanged recorded $(($(keys_events) - n)) keys events"
stop

"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >"$FED_DIR/verify.out" 2>&1 ||
    { cat "$FED_DIR/verify.out"; fed_fail "the log does not verify"; }
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" report --format md >"$FED_DIR/report.md" || fed_fail "report md"
grep -q '^## Keys file changes' "$FED_DIR/report.md" || fed_fail "report md has no keys section"
grep -q '| dev-9001 *| added *| us *|' "$FED_DIR/report.md" || fed_fail "report md does not show dev-9001's admission"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" report --format json >"$FED_DIR/report.json" || fed_fail "report json"
python3 - "$FED_DIR/report.json" <<'EOF' || fed_fail "report json: keys changes missing"
import json, sys
r = json.load(open(sys.argv[1]))
rows = r["keys_changes"]
assert len(rows) == 9, len(rows)
assert any(x["device"] == "dev-001" and x["change"] == "rekeyed" and x["source"] == "startup" for x in rows)
assert all(len(x["key_id"]) == 16 for x in rows)
EOF

# the keys ledger is audited: a rewritten key id fails verify
fed_sql "UPDATE events SET detail = replace(detail, 'key id $old_kid', 'key id 0000000000000000')
         WHERE kind='keys' AND device='dev-001' AND detail LIKE 'added %'"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >"$FED_DIR/verify2.out" 2>&1
rc=$?
[ "$rc" = 1 ] || { cat "$FED_DIR/verify2.out"; fed_fail "verify of a tampered keys event exited $rc, want 1"; }
grep -q row_modified "$FED_DIR/verify2.out" || { cat "$FED_DIR/verify2.out"; fed_fail "verify does not name the modified row"; }

# a keys row with no audit entry (forged behind the daemon's back, e.g. to
# hide an admission): the daemon refuses to start on it, --check names it
fed_sql "INSERT INTO events(at, device, kind, detail) VALUES(julianday('now'), 'dev-9002', 'keys',
         'added region us key id 0123456789abcdef (startup; keys file $FED_DIR/keys)')"
forged=$(fed_sql "SELECT max(id) FROM events")
refused "$forged" "a keys event with no audit entry"
fed_sql "DELETE FROM events WHERE id = $forged"

# a keys event that does not parse: the daemon refuses to start on it, and verify names it
bad=$(fed_sql "SELECT id FROM events WHERE kind='keys' AND device='dev-003' AND detail LIKE 'moved %'")
fed_sql "UPDATE events SET detail = 'moved dev-003' WHERE id = $bad"
refused "$bad" "a malformed keys event"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >"$FED_DIR/verify3.out" 2>&1
grep -q "keys_ledger .*events row $bad (keys): not a keys ledger entry" "$FED_DIR/verify3.out" ||
    { cat "$FED_DIR/verify3.out"; fed_fail "verify does not name the malformed keys event"; }
echo "PASS: keys_startup_audit"
