#!/usr/bin/env bash
# An aggregation tree over real DTLS on loopback: a root with 2 relays x 4
# edges against a flat federation of the same 8 edges (same shards, seeds,
# fp32, mean), run side by side for 2 rounds. Asserts that both roots end
# with the same model (1e-6 relative), that each relay's rounds follow the
# root's, that the cross-tier lineage names all 8 devices through the right
# relay and verifies both relays' signed heads, and that a tampered relay
# database fails it; then that a relay restarted with an unanswered partial
# in its log resends the same bytes and gets the root's stored decision,
# and that a relay with nothing by its deadline (before the root's) sends
# nothing.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 8
D=$FED_DIR
SPEC=mlp:784-16-10
"$BIN/fedge-partition" --data fashion-mnist --clients 8 --kind dirichlet --beta 1.0 --seed 5 \
    --out "$D/shards" --test-out "$D/test.bin" >/dev/null || fed_fail "partition"
"$BIN/fedge-keygen" devices --count 2 --prefix relay- --regions eu --out "$D/relays.keys" >/dev/null ||
    fed_fail "keygen relays"
for r in 1 2; do
    mkdir -p "$D/r$r"
    "$BIN/fedge-keygen" aggregator --out "$D/r$r" >/dev/null || fed_fail "keygen relay $r"
    "$BIN/fedge-keygen" export --keys "$D/relays.keys" --id "relay-00$r" --out "$D/r$r/upstream.keys" >/dev/null ||
        fed_fail "export relay $r"
    lo=$(((r - 1) * 4 + 1))
    (umask 077 && grep -E "^dev-00[$lo-$((lo + 3))] " "$D/keys" >"$D/r$r/edges.keys")
done
mkdir -p "$D/flat" "$D/root"

COMMON=(--model-spec "$SPEC" --test-data "$D/test.bin" --client-fraction 1 --quorum 1 --round-timeout-s 60
        --log-level info)
start() { # NAME ARGS...: an aggregator whose log is $D/NAME.log
    local name=$1
    shift
    "$BIN/fedge-aggregator" "${COMMON[@]}" "$@" >>"$D/$name.log" 2>&1 &
    FED_PIDS+=("$!")
    eval "PID_$name=$!"
}
edge() { # ID PORT
    local keys
    keys=$(fed_edge_keys "$1") || exit 1
    "$BIN/fedge-edge" --server "127.0.0.1:$2" --id "$1" --keys "$keys" --shard "$D/shards/shard-00$((10#${1#dev-} - 1)).bin" \
        --encoding fp32 --seed "$((10#${1#dev-} * 7))" --poll-ms 100 >>"$D/edge-$1-$2.log" 2>&1 &
    FED_PIDS+=("$!")
}

P_FLAT=$(fed_free_port)
P_ROOT=$(fed_free_port)
P_R1=$(fed_free_port)
P_R2=$(fed_free_port)
start flat --keys-file "$D/keys" --db "$D/flat/fedge.db" --model-dir "$D/flat/models" \
    --signing-key "$D/aggregator.key" --listen "127.0.0.1:$P_FLAT" --rounds 2 --linger-s 1 --start-delay-s 1
ROOT_ARGS=(--keys-file "$D/relays.keys" --db "$D/root/fedge.db" --model-dir "$D/root/models"
           --signing-key "$D/aggregator.key" --listen "127.0.0.1:$P_ROOT" --rounds 2 --start-delay-s 1
           --relays relay-001,relay-002)
relay_args() { # N: relay N's arguments
    RELAY_ARGS=(--keys-file "$D/r$1/edges.keys" --db "$D/r$1/fedge.db" --model-dir "$D/r$1/models"
                --signing-key "$D/r$1/aggregator.key" --listen "127.0.0.1:$(eval echo \$P_R$1)" --linger-s 1
                --upstream "127.0.0.1:$P_ROOT" --upstream-id "relay-00$1" --upstream-keys "$D/r$1/upstream.keys"
                --upstream-poll-s 0.1 --upstream-margin-s 2)
}
sql() { sqlite3 -batch -noheader "$D/$1/fedge.db" "$2"; }

# A relay whose edges send nothing before its deadline (upstream_margin_s
# before the root's), restarted inside its round, resumes it, then fails it
# and sends nothing; the root's round closes at its own deadline without it.
# It shares nothing with the tree below (its own root, ports and databases)
# and runs beside it, in the background.
edgeless_relay() {
    mkdir -p "$D/root3" "$D/r3"
    P_ROOT=$(fed_free_port)
    P_R3=$(fed_free_port)
    start root3 --keys-file "$D/relays.keys" --db "$D/root3/fedge.db" --model-dir "$D/root3/models" \
        --signing-key "$D/aggregator.key" --listen "127.0.0.1:$P_ROOT" --rounds 1 --round-timeout-s 4 --linger-s 1
    relay_args 2
    start r3 "${RELAY_ARGS[@]}" --db "$D/r3/fedge.db" --model-dir "$D/r3/models" --listen "127.0.0.1:$P_R3" \
        --linger-s 0.5
    # stopped and started again inside its round: it resumes it while the root is still in it
    fed_wait_for "grep -qs 'round 1 open' '$D/r3.log'" 10
    kill "$PID_r3"
    wait "$PID_r3"
    start r3 "${RELAY_ARGS[@]}" --db "$D/r3/fedge.db" --model-dir "$D/r3/models" --listen "127.0.0.1:$P_R3" \
        --linger-s 0.5
    for name in root3 r3; do
        pid=$(eval echo \$PID_$name)
        for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && fed_fail "$name did not finish within 15s"
        wait "$pid"
        rc=$?
        # the only round aggregated nothing, here or there: exit status 3, as documented
        [ $rc -eq 3 ] || { tail -n 20 "$D/$name.log" >&2; fed_fail "$name exited with status $rc, not 3"; }
    done
    [ "$(sql r3 "SELECT status FROM rounds WHERE id=1")" = failed ] || fed_fail "the edgeless relay's round should fail"
    awk -v l="$(sql r3 "SELECT deadline - opened_at FROM rounds WHERE id=1")" 'BEGIN { exit !(l > 0.8 && l < 2.5) }' ||
        fed_fail "the relay's round should end upstream_margin_s (2s) before the root's 4s deadline"
    grep -q "resuming open round 1" "$D/r3.log" && grep -q "resumed round 1 is still open at the parent" "$D/r3.log" ||
        fed_fail "the restarted relay should resume its open round while the root is in it"
    [ "$(sql r3 "SELECT count(*) FROM relay_sent")" = 0 ] || fed_fail "a relay without a partial sends nothing"
    [ "$(sql root3 "SELECT count(*) FROM updates")" = 0 ] || fed_fail "the root should have received nothing"
}
(
    FED_DIR="" FED_PIDS=() # its own processes; the directory stays the script's
    trap fed_cleanup EXIT
    trap 'exit 143' TERM
    edgeless_relay
    exit 0
) >"$D/edgeless.out" 2>&1 &
edgeless=$!
FED_PIDS+=("$edgeless")
start root "${ROOT_ARGS[@]}" --linger-s 1.5
for r in 1 2; do
    relay_args $r
    start "r$r" "${RELAY_ARGS[@]}"
done
for i in 1 2 3 4 5 6 7 8; do
    edge "dev-00$i" "$P_FLAT"
    if [ "$i" -le 4 ]; then edge "dev-00$i" "$P_R1"; else edge "dev-00$i" "$P_R2"; fi
done

show_logs() {
    for f in root r1 r2 flat; do echo "--- $f.log ---" >&2; tail -n 15 "$D/$f.log" >&2; done
}
for name in flat root r1 r2; do
    pid=$(eval echo \$PID_$name)
    for ((i = 0; i < 600; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { show_logs; fed_fail "$name did not finish within 60s"; }
    wait "$pid" || { show_logs; fed_fail "$name exited with an error"; }
done

for db in flat root; do
    [ "$(sql $db "SELECT count(*) FROM rounds WHERE status='closed'")" = 2 ] || { show_logs; fed_fail "$db: 2 closed rounds expected"; }
done
[ "$(sql root "SELECT count(*) FROM updates WHERE decision<>'rejected'")" = 4 ] ||
    fed_fail "the root should count 2 partial sums in each round"
for r in 1 2; do
    [ "$(sql r$r "SELECT group_concat(id || ':' || status) FROM rounds")" = "1:closed,2:closed" ] ||
        { show_logs; fed_fail "relay $r: rounds 1 and 2 closed expected (the root's ids)"; }
    [ "$(sql r$r "SELECT count(*) FROM updates WHERE decision<>'rejected'")" = 8 ] ||
        fed_fail "relay $r: 4 edges x 2 rounds expected"
    [ "$(sql r$r "SELECT group_concat(status || ':' || code) FROM relay_sent")" = "answered:204,answered:204" ] ||
        fed_fail "relay $r: both partials should have been accepted"
    # the relay served the root's models: its rounds' bases are the root's
    [ "$(sql r$r "SELECT group_concat(base_version) FROM rounds ORDER BY id")" = \
      "$(sql root "SELECT group_concat(base_version) FROM rounds ORDER BY id")" ] ||
        fed_fail "relay $r: its rounds should use the root's models"
    # the samples it reported are its edges' total
    [ "$(sql r$r "SELECT sum(n_samples) FROM relay_sent")" = "$(sql r$r "SELECT sum(n_samples) FROM updates WHERE decision<>'rejected'")" ] ||
        fed_fail "relay $r: the partials' sample counts should be the edges' total"
done

# The same model, within 1e-6 relative (max |a - b| / max |b|).
m_flat=$(sql flat "SELECT path FROM models WHERE round=2 AND kind='aggregate'")
m_root=$(sql root "SELECT path FROM models WHERE round=2 AND kind='aggregate'")
[ -n "$m_flat" ] && [ -n "$m_root" ] || fed_fail "no round-2 models"
python3 - "$D/flat/models/$(basename "$m_flat")" "$D/root/models/$(basename "$m_root")" <<'EOF' || fed_fail "tree and flat models differ"
import struct, sys
def params(path):
    b = open(path, 'rb').read()
    assert b[:4] == b'FMDL'
    (spec_len,) = struct.unpack_from('<I', b, 8)
    off = 12 + spec_len
    (n,) = struct.unpack_from('<Q', b, off)
    return struct.unpack_from('<%df' % n, b, off + 8)
a, b = params(sys.argv[1]), params(sys.argv[2])
assert len(a) == len(b)
diff = max(abs(x - y) for x, y in zip(a, b))
scale = max(abs(y) for y in b)
print("tree vs flat: max |diff| %.3g, max |param| %.3g, relative %.3g" % (diff, scale, diff / scale))
sys.exit(0 if diff <= 1e-6 * scale else 1)
EOF
[ "$m_flat" != "$(sql flat "SELECT path FROM models WHERE kind='init'")" ] || fed_fail "the model did not move"

# Cross-tier lineage: all 8 devices, each through its relay, heads verified.
V=$(sql root "SELECT version FROM models WHERE round=2 AND kind='aggregate'")
LIN=(--db "$D/root/fedge.db" --pubkey "$D/aggregator.pub" lineage
     --relay-db "$D/r1/fedge.db" --relay-pubkey "$D/r1/aggregator.pub"
     --relay-db "$D/r2/fedge.db" --relay-pubkey "$D/r2/aggregator.pub" "$V")
"$BIN/fedge-audit" --json "${LIN[@]}" >"$D/lineage.json" || { cat "$D/lineage.json"; fed_fail "cross-tier lineage"; }
python3 - "$D/lineage.json" <<'EOF' || fed_fail "cross-tier lineage content"
import json, sys
d = json.load(open(sys.argv[1]))
tiers = d["relays"]
got = {}
for t in tiers:
    assert t["verified"] is True, t
    for c in t["contributions"]:
        got.setdefault(c["device"], set()).add(t["relay"])
want = {"dev-00%d" % i: {"relay-001" if i <= 4 else "relay-002"} for i in range(1, 9)}
assert got == want, got
assert all(len(t["heads"]) == 2 and all(h["match"] for h in t["heads"]) for t in tiers), tiers
print("lineage: 8 devices through 2 relays, heads verified")
EOF
"$BIN/fedge-audit" "${LIN[@]}" | grep -q "relay-001" || fed_fail "lineage text should name the relays"

# Tampering with a relay's log (a device's stated samples) fails the check.
sqlite3 "$D/r2/fedge.db" "UPDATE updates SET n_samples = n_samples + 1 WHERE device='dev-006' AND round=1"
"$BIN/fedge-audit" "${LIN[@]}" >"$D/tampered.txt" 2>&1
[ $? -eq 1 ] || { cat "$D/tampered.txt"; fed_fail "a tampered relay database must fail the cross-tier lineage"; }
grep -q "relay-002" "$D/tampered.txt" || fed_fail "the failure should name the relay"
# A root record naming another head than the relay signed fails it too.
cp "$D/root/fedge.db" "$D/root-copy.db"
sqlite3 "$D/root-copy.db" "UPDATE events SET detail = substr(detail, 1, length(detail) - 4) || 'beef'
                            WHERE kind='relay_head' AND device='relay-001' AND round=1"
"$BIN/fedge-audit" --db "$D/root-copy.db" lineage --relay-db "$D/r1/fedge.db" --relay-pubkey "$D/r1/aggregator.pub" \
    "$V" >"$D/mismatch.txt" 2>&1
[ $? -eq 1 ] && grep -q "no signed head of the relay's log has it" "$D/mismatch.txt" ||
    { cat "$D/mismatch.txt"; fed_fail "a head the relay did not sign must fail the cross-tier lineage"; }

# A relay restarted with its partial logged but no answer recorded (a crash
# after sealing) sends the very same bytes again: the root, restarted too
# (its run already finished), answers with its stored decision and counts
# nothing twice.
sqlite3 "$D/r1/fedge.db" "UPDATE relay_sent SET status='sealed', code=NULL, reply=NULL WHERE round=2"
n_updates=$(sql root "SELECT count(*) FROM updates")
P_ROOT=$(fed_free_port) # a fresh port: a released one may have gone to a script running beside this one
ROOT_ARGS+=(--listen "127.0.0.1:$P_ROOT")
start root_again "${ROOT_ARGS[@]}" --linger-s 2.5
relay_args 1
start r1_again "${RELAY_ARGS[@]}" --linger-s 0.5
for name in r1_again root_again; do
    pid=$(eval echo \$PID_$name)
    for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && fed_fail "$name did not finish within 15s"
    wait "$pid" || { tail -n 20 "$D/$name.log" >&2; fed_fail "$name exited with an error"; }
done
grep -q "sending the logged partial for the parent's round 2 again" "$D/r1_again.log" ||
    fed_fail "the restarted relay should resend its logged partial"
[ "$(sql r1 "SELECT status || ':' || code FROM relay_sent WHERE round=2")" = "answered:204" ] ||
    fed_fail "the resent partial should get the root's stored decision"
sql r1 "SELECT reply FROM relay_sent WHERE round=2" | grep -q "duplicate of the update for round 2" ||
    fed_fail "the root should answer the resend as a duplicate"
[ "$(sql root "SELECT count(*) FROM updates")" = "$n_updates" ] || fed_fail "the resend must not be counted again"
"$BIN/fedge-audit" --db "$D/r1/fedge.db" --pubkey "$D/r1/aggregator.pub" verify >/dev/null ||
    fed_fail "relay 1's log should verify after the resend"

wait "$edgeless" || { cat "$D/edgeless.out" >&2; fed_fail "the edgeless relay (above)"; }
echo ok
