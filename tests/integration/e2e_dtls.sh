#!/usr/bin/env bash
# A real federation on loopback: the aggregator and 3 edge processes over
# CoAP/DTLS-PSK, 3 rounds of mlp:784-64-10 on Fashion-MNIST shards. Asserts
# the SQLite log (rounds, updates, models whose sha256 matches the files),
# that accuracy rises, and that the audit chain verifies.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

fed_setup 3
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 3 --kind dirichlet --beta 1.0 --seed 7 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"

fed_start_aggregator --model-spec mlp:784-64-10 --test-data "$FED_DIR/test.bin" --rounds 3 \
    --round-timeout-s 120 --start-delay-s 0.5 --local-epochs 1 --lr 0.05 --batch 32 --linger-s 2
encs=(fp32 fp16 int8)
for i in 0 1 2; do
    fed_start_edge "dev-00$((i + 1))" "$FED_DIR/shards/shard-00$i.bin" --encoding "${encs[$i]}" --seed "$i"
done
fed_wait_run 240 || fed_fail "aggregator exited with an error"

[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed'")" = 3 ] || fed_fail "3 closed rounds expected"
[ "$(fed_sql "SELECT count(*) FROM updates WHERE decision='accepted'")" = 9 ] || fed_fail "9 accepted updates expected"
[ "$(fed_sql "SELECT count(DISTINCT device) FROM updates")" = 3 ] || fed_fail "3 devices expected"
[ "$(fed_sql "SELECT count(*) FROM models")" = 4 ] || fed_fail "init + 3 aggregate models expected"
[ "$(fed_sql "SELECT group_concat(encoding) FROM (SELECT DISTINCT encoding FROM updates ORDER BY 1)")" = "fp16,fp32,int8" ] ||
    fed_fail "each edge's encoding should be logged"
# every model file hashes to its row
while IFS='|' read -r path sha; do
    [ "$(sha256sum "$FED_DIR/models/$path" | cut -d' ' -f1)" = "$sha" ] || fed_fail "sha256 of $path differs from the log"
done < <(fed_sql "SELECT path, sha256 FROM models")
# rounds chain: each round's base is the previous round's new model
[ "$(fed_sql "SELECT count(*) FROM rounds r JOIN rounds p ON p.id = r.id - 1 WHERE r.base_version <> p.new_version")" = 0 ] ||
    fed_fail "round lineage broken"
acc0=$(fed_sql "SELECT accuracy FROM models WHERE kind='init'")
acc3=$(fed_sql "SELECT accuracy FROM rounds WHERE id=3")
awk -v a="$acc0" -v b="$acc3" 'BEGIN { exit !(b > a + 0.3 && b > 0.6) }' ||
    fed_fail "accuracy should rise well above the initial model: $acc0 -> $acc3"
echo "accuracy $acc0 -> $acc3"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
    fed_fail "audit verify"
grep -q "finished" "$FED_DIR/agg.log" || fed_fail "aggregator did not log the finish"

# Forget a device: the operator revokes it; the audit shows every model its
# updates influenced, and the log still verifies with the revocation in it.
"$BIN/fedge-admin" --db "$FED_DIR/fedge.db" device dev-002 revoke --reason "owner request" >/dev/null ||
    fed_fail "fedge-admin revoke"
[ "$(fed_sql "SELECT status FROM devices WHERE id='dev-002'")" = revoked ] || fed_fail "device not revoked"
"$BIN/fedge-admin" --db "$FED_DIR/fedge.db" device dev-002 obliterate --reason x 2>/dev/null
[ $? -eq 2 ] || fed_fail "a bad action must be a usage error"
"$BIN/fedge-admin" --db "$FED_DIR/nope.db" devices 2>/dev/null
[ $? -eq 1 ] && [ ! -e "$FED_DIR/nope.db" ] || fed_fail "a missing database must be refused, not created"
n=$("$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --json lineage --device dev-002 |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(len(d['influenced_models']))")
[ "$n" -ge 3 ] || fed_fail "lineage --device should list the 3 aggregates dev-002 influenced (got $n)"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
    fed_fail "audit verify after the revocation"
echo ok
