#!/usr/bin/env bash
# Live enrolment on a running federation: fedge-admin device add writes a new
# device's key line and bundle and signals the daemon (--reload: SIGHUP);
# the new edge, started from its bundle alone, gets an update accepted in a
# later round and the 'enrolled' event is in the audit chain. A malformed
# keys file on SIGHUP is refused with a logged error and the daemon goes on
# serving. device remove revokes dev-002 and takes its key out: the reload
# logs the removal, its DTLS handshakes are refused, no later update of it
# is accepted, and the log verifies. Then the signing key is rotated with
# fedge-admin signing-key rotate: the daemon restarts only with the new key
# and fedge-audit verify, given the first key, covers the whole history; the
# HTML report names the rotation; a rotation back to the first key is refused.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 2
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 3 --kind iid --seed 9 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 60 \
    --round-timeout-s 1.5 --start-delay-s 0.2 --local-epochs 1 --batch 64 --linger-s 0
fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin" --poll-ms 100
fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin" --poll-ms 100
closed() { fed_sql "SELECT count(*) FROM rounds WHERE status='closed'" 2>/dev/null || echo 0; }
fed_wait_for "[ \$(closed) -ge 1 ]" 20
admin() { "$BIN/fedge-admin" --db "$FED_DIR/fedge.db" "$@"; }

# a duplicate id is refused and changes nothing
before=$(sha256sum <"$FED_DIR/keys")
admin device add dev-001 --region eu --keys "$FED_DIR/keys" 2>/dev/null && fed_fail "a duplicate id was enrolled"
[ "$(sha256sum <"$FED_DIR/keys")" = "$before" ] || fed_fail "a refused enrolment changed the keys file"
# so is one whose bundle path exists (the bundle is never overwritten)
echo keep >"$FED_DIR/taken.bundle"
admin device add dev-009 --region eu --keys "$FED_DIR/keys" --bundle "$FED_DIR/taken.bundle" 2>/dev/null &&
    fed_fail "an enrolment over an existing bundle went ahead"
[ "$(sha256sum <"$FED_DIR/keys")" = "$before" ] && [ "$(cat "$FED_DIR/taken.bundle")" = keep ] &&
    [ "$(fed_sql "SELECT count(*) FROM devices WHERE id='dev-009'")" = 0 ] ||
    fed_fail "a refused enrolment changed the keys file, the bundle or the database"

admin device add dev-003 --region us --keys "$FED_DIR/keys" --server "127.0.0.1:$FED_PORT" \
    --bundle "$FED_DIR/dev-003.bundle" --reload >"$FED_DIR/add.out" 2>&1 || { cat "$FED_DIR/add.out"; fed_fail "device add"; }
grep -q "sent SIGHUP" "$FED_DIR/add.out" || fed_fail "device add --reload did not signal the daemon"
[ "$(stat -c %a "$FED_DIR/keys")" = 600 ] && [ "$(stat -c %a "$FED_DIR/dev-003.bundle")" = 600 ] ||
    fed_fail "keys file and bundle must be mode 0600"
[ "$(grep -c '^dev-' "$FED_DIR/keys")" = 3 ] || fed_fail "the keys file should list 3 devices"
fed_wait_for "grep -q 'keys reloaded from .*: 3 devices (1 added, 0 removed' '$FED_DIR/agg.log'" 10
r_add=$(fed_sql "SELECT max(id) FROM rounds")
"$BIN/fedge-edge" --bundle "$FED_DIR/dev-003.bundle" --shard "$FED_DIR/shards/shard-002.bin" --poll-ms 100 \
    >>"$FED_DIR/edge-dev-003.log" 2>&1 &
FED_PIDS+=("$!")
acc3() { fed_sql "SELECT count(*) FROM updates WHERE device='dev-003' AND decision='accepted' AND round > $r_add"; }
fed_wait_for "[ \$(acc3) -ge 1 ]" 15
[ "$(fed_sql "SELECT count(*) FROM events e JOIN audit a ON a.tbl='events' AND a.row_key=CAST(e.id AS TEXT)
             WHERE e.kind='enrolled' AND e.device='dev-003' AND e.rule='operator'")" = 1 ] ||
    fed_fail "no audited 'enrolled' event for dev-003"
[ "$(fed_sql "SELECT region||' '||status FROM devices WHERE id='dev-003'")" = "us allowed" ] || fed_fail "dev-003's row"

# a malformed keys file: the reload is refused, the daemon keeps its keys and serves
cp -p "$FED_DIR/keys" "$FED_DIR/keys.good"
echo "dev-004 eu not-a-secret" >>"$FED_DIR/keys"
kill -HUP "$FED_AGG_PID"
fed_wait_for "grep -q 'keys reload: .*secret must be 64 hex digits; keeping the previous keys' '$FED_DIR/agg.log'" 10
r_bad=$(fed_sql "SELECT max(id) FROM rounds")
fed_wait_for "[ \$(fed_sql \"SELECT count(DISTINCT device) FROM updates WHERE decision='accepted' AND round > $r_bad\") -ge 3 ]" 10
kill -0 "$FED_AGG_PID" || fed_fail "the daemon stopped after a malformed keys file"
mv "$FED_DIR/keys.good" "$FED_DIR/keys"

# remove dev-002 live
psk2=$("$BIN/fedge-keygen" psk --keys "$FED_DIR/keys" --id dev-002) || fed_fail "keygen psk"
if command -v coap-client-openssl >/dev/null; then # the control: before the removal its key is answered
    out=$(timeout 20 coap-client-openssl -B 5 -u dev-002 -k "$psk2" "coaps://127.0.0.1:$FED_PORT/status" 2>&1)
    echo "$out" | grep -q '"state"' || fed_fail "dev-002's key got no answer before the removal: $out"
fi
admin device remove dev-002 --keys "$FED_DIR/keys" --reason "device lost" --reload >/dev/null || fed_fail "device remove"
last_id=$(fed_sql "SELECT max(id) FROM updates")
grep -q '^dev-002 ' "$FED_DIR/keys" && fed_fail "dev-002's key line is still there"
[ "$(fed_sql "SELECT status FROM devices WHERE id='dev-002'")" = revoked ] || fed_fail "dev-002 not revoked"
fed_wait_for "grep -q 'keys reloaded from .*: 2 devices (0 added, 1 removed' '$FED_DIR/agg.log'" 10
r_rm=$(fed_sql "SELECT max(id) FROM rounds")
fed_wait_for "[ \$(fed_sql \"SELECT count(*) FROM rounds WHERE status='closed' AND id > $r_rm\") -ge 2 ]" 10
[ "$(fed_sql "SELECT count(*) FROM updates WHERE device='dev-002' AND decision='accepted' AND id > $last_id")" = 0 ] ||
    fed_fail "an update of the removed dev-002 was accepted"
[ "$(fed_sql "SELECT count(*) FROM updates WHERE device IN ('dev-001','dev-003') AND decision='accepted' AND round > $r_rm")" -ge 2 ] ||
    fed_fail "the other devices' updates stopped being accepted"
if command -v coap-client-openssl >/dev/null; then
    out=$(timeout 20 coap-client-openssl -B 3 -u dev-002 -k "$psk2" "coaps://127.0.0.1:$FED_PORT/status" 2>&1)
    echo "$out" | grep -q '"state"' && fed_fail "the removed dev-002 still gets answers over DTLS"
    grep -q "DTLS handshake refused: unknown identity 'dev-002'" "$FED_DIR/agg.log" ||
        fed_fail "the daemon did not refuse dev-002's handshake"
else
    echo "SKIP: handshake check (coap-client-openssl, libcoap3-bin, not installed)"
fi
kill -TERM "$FED_AGG_PID"
fed_wait_pid "$FED_AGG_PID" 20
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
    fed_fail "audit verify"

# signing-key rotation on the stopped daemon's log: the old key signs the
# record naming the new one; the daemon then starts only with the new key,
# and verify, given the first key, follows the rotation
mkdir "$FED_DIR/new"
"$BIN/fedge-keygen" aggregator --out "$FED_DIR/new" >/dev/null || fed_fail "keygen new"
admin signing-key rotate --key "$FED_DIR/new/aggregator.key" --new-key "$FED_DIR/aggregator.pub" 2>"$FED_DIR/rot.err" &&
    fed_fail "a rotation signed by a key not in force was written"
grep -q "did not sign this log's last head" "$FED_DIR/rot.err" || fed_fail "rotation refusal: $(cat "$FED_DIR/rot.err")"
admin signing-key rotate --key "$FED_DIR/aggregator.key" --new-key "$FED_DIR/new/aggregator.pub" >/dev/null ||
    fed_fail "signing-key rotate"
timeout 30 "$BIN/fedge-aggregator" --keys-file "$FED_DIR/keys" --db "$FED_DIR/fedge.db" --model-dir "$FED_DIR/models" \
    --signing-key "$FED_DIR/aggregator.key" --listen "127.0.0.1:$FED_PORT" --model-spec softmax:784-10 \
    --test-data "$FED_DIR/test.bin" --rounds 60 >"$FED_DIR/old-key.log" 2>&1
[ $? = 2 ] && grep -q "is not the log's signing key" "$FED_DIR/old-key.log" ||
    fed_fail "a start with the retired key must be refused: $(tail -n 3 "$FED_DIR/old-key.log")"
r_rot=$(fed_sql "SELECT max(id) FROM rounds")
FED_DIR_KEY=$FED_DIR/new/aggregator.key
"$BIN/fedge-aggregator" --keys-file "$FED_DIR/keys" --db "$FED_DIR/fedge.db" --model-dir "$FED_DIR/models" \
    --signing-key "$FED_DIR_KEY" --listen "127.0.0.1:$FED_PORT" --model-spec softmax:784-10 \
    --test-data "$FED_DIR/test.bin" --rounds 60 --round-timeout-s 1 --linger-s 0 >>"$FED_DIR/agg.log" 2>&1 &
FED_AGG_PID=$!
FED_PIDS+=("$FED_AGG_PID")
fed_wait_for "[ \$(fed_sql \"SELECT count(*) FROM audit_heads WHERE round > $r_rot\") -ge 1 ]" 10
kill -TERM "$FED_AGG_PID"
fed_wait_pid "$FED_AGG_PID" 20
out=$("$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify 2>&1) ||
    fed_fail "verify across the rotation: $out"
echo "$out" | grep -q "signing keys   1 rotation followed" || fed_fail "verify does not report the rotation: $out"
j=$("$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" --json verify) || fed_fail "verify --json"
echo "$j" | python3 -c "import json,sys; d=json.load(sys.stdin); assert d['key_rotations'] == 1 and len(d['key_in_force']) == 64 and d['key_in_force'] != d['key_anchor'], d" ||
    fed_fail "verify --json: key_rotations, key_anchor, key_in_force"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/new/aggregator.pub" verify >/dev/null 2>&1 &&
    fed_fail "the new key alone must not verify the history before the rotation"
# the HTML report's verification line names the rotation and the key in force
fp=$(echo "$j" | python3 -c "import json,sys; print(json.load(sys.stdin)['key_in_force'][:16])")
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" report --format html \
    --out "$FED_DIR/report.html" || fed_fail "report --format html"
grep -o '<p id="verify">.*</p>' "$FED_DIR/report.html" | grep -q "1 rotation followed.*heads now signed by sha256 $fp" ||
    fed_fail "the HTML report's verification line does not name the rotation and the key in force ($fp...)"
# rotating back to the retired first key is refused and writes nothing
n_audit=$(fed_sql "SELECT count(*) FROM audit")
"$BIN/fedge-admin" --db "$FED_DIR/fedge.db" signing-key rotate --key "$FED_DIR/new/aggregator.key" \
    --new-key "$FED_DIR/aggregator.pub" >"$FED_DIR/back.out" 2>&1 && fed_fail "a rotation back to the first key went ahead"
grep -q "already signed this log" "$FED_DIR/back.out" || fed_fail "rotation back: $(cat "$FED_DIR/back.out")"
[ "$(fed_sql "SELECT count(*) FROM audit")" = "$n_audit" ] || fed_fail "a refused rotation wrote to the log"
echo ok
