#!/usr/bin/env bash
# The edges' training metrics, end to end: a real federation (aggregator + 3
# edges over CoAP/DTLS, softmax:784-10, 2 rounds). Each edge's round line
# carries its loss, accuracy, epochs and training time; the same numbers
# reach its updates row (train_loss, train_accuracy, train_epochs,
# train_ms: sealed in the update's authenticated metadata); round_training
# holds the n_samples-weighted mean of each round's reports, computed here
# again from the rows; `fedge-audit report --format json` shows it; and the
# audit chain, which covers the new columns, verifies.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 3
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 30 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 2 \
    --clients-per-round 3 --round-timeout-s 60 --start-delay-s 0.5 --local-epochs 1 \
    --lr 0.05 --linger-s 1
for i in 0 1 2; do
    fed_start_edge "dev-00$((i + 1))" "$FED_DIR/shards/shard-00$i.bin" --seed "$i"
done
fed_wait_run 90 || fed_fail "the run did not finish"

for i in 1 2 3; do
    grep -Eq "round [0-9]+: samples=[0-9]+ loss=[0-9.]+ accuracy=0\.[0-9]{4} epochs=1 train_ms=[0-9]+ .*outcome=accepted" \
        "$FED_DIR/edge-dev-00$i.log" || fed_fail "dev-00$i's round line lacks its training metrics"
done
[ "$(fed_sql "SELECT count(*) FROM updates WHERE decision='accepted' AND train_loss > 0 AND train_accuracy
    BETWEEN 0 AND 1 AND train_epochs = 1 AND train_ms >= 0")" = 6 ] || fed_fail "updates rows lack metrics"
# each edge's logged loss is its row's (4 decimals in the log)
for i in 1 2 3; do
    for r in 1 2; do
        logged=$(grep -Eo "round $r: samples=[0-9]+ loss=[0-9.]+ accuracy=[0-9.]+" "$FED_DIR/edge-dev-00$i.log" |
            tail -1)
        row=$(fed_sql "SELECT printf('round %d: samples=%d loss=%.4f accuracy=%.4f', round, n_samples,
            train_loss, train_accuracy) FROM updates WHERE device='dev-00$i' AND round=$r")
        [ "$logged" = "$row" ] || fed_fail "dev-00$i round $r: log '$logged', row '$row'"
    done
done
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
    fed_fail "audit verify"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" report --format json >"$FED_DIR/report.json" ||
    fed_fail "fedge-audit report"
python3 - "$FED_DIR/fedge.db" "$FED_DIR/report.json" <<'PY' || fed_fail "round_training against the rows"
import json, math, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rep = json.load(open(sys.argv[2]))["training"]
assert len(rep) == 2, rep
for r in rep:
    rows = db.execute("SELECT n_samples, train_loss, train_accuracy FROM updates WHERE round=? AND"
                      " decision<>'rejected'", (r["round"],)).fetchall()
    w = sum(n for n, _, _ in rows)
    loss = sum(n * l for n, l, _ in rows) / w
    acc = sum(n * a for n, _, a in rows) / w
    sd = math.sqrt(max(0.0, sum(n * l * l for n, l, _ in rows) / w - loss * loss))
    assert r["reports"] == 3 and r["samples"] == w, r
    assert abs(r["train_loss"] - loss) < 1e-9 and abs(r["train_accuracy"] - acc) < 1e-9, (r, loss, acc)
    assert abs(r["train_loss_sd"] - sd) < 1e-9, (r, sd)
    assert r["status"] == "closed" and r["test_accuracy"] is not None, r
PY
echo ok
