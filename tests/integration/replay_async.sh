#!/usr/bin/env bash
# fedge-audit replay on a real async run (FedBuff: 4 edges over CoAP/DTLS,
# 3 slots, a buffer of 2, 4 steps), where a step takes updates trained on an
# older model. The aggregator runs with the staleness discount
# (1 + s)^-1 (polynomial, a = 1, not the default 0.5), recorded in the log
# as its round configuration (a `config` event). Replayed under the run's own
# policy nothing changes, and each update's replayed weight is its sample
# count times (1 + s)^-1 — the recorded a, as the round close weighs it —
# with at least one stale update (s > 0) among them; on a copy without the
# config event (a log from before it) the weights are the plain sample
# counts and the assumptions say so.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 4
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 4 --kind iid --seed 7 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
printf 'version: 1\nname: async\nupdate:\n  max_staleness: 3\n' >"$FED_DIR/policy.yaml"

fed_start_aggregator --mode async --async-concurrency 3 --async-buffer-k 2 --async-max-versions 3 \
    --async-staleness polynomial --async-staleness-a 1 \
    --policy-file "$FED_DIR/policy.yaml" --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" \
    --rounds 4 --local-epochs 1 --lr 0.05 --batch 32 --linger-s 1
for i in 0 1 2 3; do
    fed_start_edge "dev-00$((i + 1))" "$FED_DIR/shards/shard-00$i.bin" --seed "$i" --poll-ms 200
done
fed_wait_run 60 || fed_fail "aggregator exited with an error"
[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed'")" = 4 ] || fed_fail "4 closed steps expected"
[ "$(fed_sql "SELECT detail FROM events WHERE kind='config'")" = "round configuration: mode=async min_updates=1 \
buffer_k=2 staleness=polynomial staleness_a=1 staleness_b=4 aggregation=mean" ] || fed_fail "the config event"

A=("$BIN/fedge-audit" --db "$FED_DIR/fedge.db")
"${A[@]}" replay --policy "$FED_DIR/policy.yaml" --format json >"$FED_DIR/same.json" || fed_fail "replay"
fed_sql "SELECT id, n_samples FROM updates" >"$FED_DIR/samples.txt"
python3 - "$FED_DIR/same.json" "$FED_DIR/samples.txt" <<'PY' || fed_fail "replay of the async run"
import json, sys
d = json.load(open(sys.argv[1]))
n = dict(map(int, l.strip().split("|")) for l in open(sys.argv[2]))
s = d["summary"]
assert s["rounds_changed"] == 0 and d["changes"] == [] and s["rounds_with_recorded_config"] == 4, s
w = d["weights"]
assert len(w) == 8, w
for x in w:
    want = n[x["update"]] / (1 + x["staleness"])
    assert abs(x["weight"] - want) <= 1e-12 * want, (x, want)
assert any(x["staleness"] > 0 for x in w), ("no stale update in the run", w)
PY
cp "$FED_DIR/fedge.db" "$FED_DIR/noconfig.db" && sqlite3 "$FED_DIR/noconfig.db" "DELETE FROM events WHERE kind='config'" ||
    fed_fail "sqlite3"
"$BIN/fedge-audit" --db "$FED_DIR/noconfig.db" replay --policy "$FED_DIR/policy.yaml" --format json \
    >"$FED_DIR/old.json" || fed_fail "replay of the copy"
python3 - "$FED_DIR/old.json" "$FED_DIR/samples.txt" <<'PY' || fed_fail "replay without a recorded configuration"
import json, sys
d = json.load(open(sys.argv[1]))
n = dict(map(int, l.strip().split("|")) for l in open(sys.argv[2]))
assert d["summary"]["rounds_with_recorded_config"] == 0, d["summary"]
assert all(x["weight"] == n[x["update"]] for x in d["weights"]) and len(d["weights"]) == 8, d["weights"]
assert any("without the staleness discount" in a for a in d["assumptions"]), d["assumptions"]
PY
echo "PASS replay_async"
