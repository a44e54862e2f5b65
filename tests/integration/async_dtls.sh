#!/usr/bin/env bash
# Async mode (FedBuff) end to end: the real aggregator with mode = async and
# 4 real edges over CoAP/DTLS-PSK, unchanged. 3 slots, a buffer of 2
# updates per step, 4 steps. Asserts that each closed step aggregated
# exactly 2 updates, that admissions are logged with their rank, that the
# steps' lineage chains, that accuracy rises and the audit chain verifies.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

fed_setup 4
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 4 --kind iid --seed 7 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
printf 'version: 1\nname: async\nupdate:\n  max_staleness: 3\n' >"$FED_DIR/policy.yaml"

fed_start_aggregator --mode async --async-concurrency 3 --async-buffer-k 2 --async-max-versions 3 \
    --policy-file "$FED_DIR/policy.yaml" --model-spec mlp:784-32-10 --test-data "$FED_DIR/test.bin" \
    --rounds 4 --local-epochs 1 --lr 0.05 --batch 32 --linger-s 2
for i in 0 1 2 3; do
    fed_start_edge "dev-00$((i + 1))" "$FED_DIR/shards/shard-00$i.bin" --encoding int8 --seed "$i" --poll-ms 200
done
fed_wait_run 120 || fed_fail "aggregator exited with an error"

[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed'")" = 4 ] || fed_fail "4 closed steps expected"
[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed' AND n_accepted=2")" = 4 ] ||
    fed_fail "each step aggregates exactly async_buffer_k = 2 updates"
[ "$(fed_sql "SELECT count(*) FROM updates u JOIN rounds r ON r.id=u.round WHERE r.status='closed'
              AND u.decision<>'rejected'")" = 8 ] || fed_fail "8 updates in the closed steps expected"
[ "$(fed_sql "SELECT count(*) FROM updates u LEFT JOIN round_participants p ON p.device=u.device
              AND p.round<=u.round WHERE p.device IS NULL")" = 0 ] || fed_fail "an update without an admission"
[ "$(fed_sql "SELECT count(*) FROM events WHERE kind='async_admitted' AND detail LIKE 'rank %'")" = \
  "$(fed_sql "SELECT count(*) FROM round_participants")" ] || fed_fail "each admission has its audited event"
[ "$(fed_sql "SELECT count(*) FROM rounds r JOIN rounds p ON p.id = r.id - 1 WHERE r.base_version <> p.new_version")" = 0 ] ||
    fed_fail "step lineage broken"
[ "$(fed_sql "SELECT count(*) FROM models WHERE kind='aggregate'")" = 4 ] || fed_fail "4 aggregate models expected"
acc0=$(fed_sql "SELECT accuracy FROM models WHERE kind='init'")
acc4=$(fed_sql "SELECT accuracy FROM rounds WHERE id=4")
awk -v a="$acc0" -v b="$acc4" 'BEGIN { exit !(b > a + 0.3) }' ||
    fed_fail "accuracy should rise well above the initial model: $acc0 -> $acc4"
echo "accuracy $acc0 -> $acc4; updates per step:" \
    "$(fed_sql "SELECT group_concat(n) FROM (SELECT count(*) AS n FROM updates GROUP BY round)")"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
    { "$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify | tail -5; fed_fail "audit verify"; }
echo ok
