#!/usr/bin/env bash
# Training metrics and the Prometheus endpoint, end to end: a real
# federation (aggregator + 3 edges over CoAP/DTLS, softmax:784-10, 2 rounds)
# with metrics_listen on. dev-003's shard has 3000 rows and the policy's
# update.max_samples is 2500, so its updates are refused (rule
# sample_count) while dev-001's and dev-002's (2000 rows) are accepted; a
# refused update does not end a round early, so rounds last 3 s (their deadline).
#
# Checks: each edge's round line carries its loss, accuracy, epochs and
# training time, and the same numbers are in its updates row (sealed in the
# update's authenticated metadata); round_training holds the n_samples-
# weighted mean and spread of each round's counted reports, recomputed here
# from the rows, and `fedge-audit report --format json` shows it; the audit
# chain, which covers the new columns, verifies. While the run goes on, a
# 64 KiB request header and 40 idle connections (past the 8 per address)
# hit the metrics port; the run still finishes, and a POST gets 405. /metrics, parsed by prometheus_client's own parser
# (PyPI, in a test venv; without PyPI a stdlib check of the same values runs
# and the parser check is said to be SKIPped), equals the database: rounds by
# status, updates by decision and rule, bytes, the last accuracy, the last
# round's train loss, devices by status, and the latency histogram counts
# every update; /healthz is 200.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

VENV=${FEDGE_METRICS_VENV:-build/venv-metrics}
REQS="prometheus_client==0.21.1"
PY=python3
if [ "$(cat "$VENV/.fedge-reqs" 2>/dev/null)" != "$REQS" ]; then
    if timeout 20 python3 -c "import urllib.request as u; u.urlopen('https://pypi.org/simple/pip/', timeout=15)" \
        2>/dev/null; then
        rm -rf "$VENV"
        python3 -m venv "$VENV" && timeout 300 "$VENV/bin/pip" install -q --disable-pip-version-check $REQS &&
            echo "$REQS" >"$VENV/.fedge-reqs" || { echo "FAIL: venv with $REQS" >&2; exit 1; }
    fi
fi
[ "$(cat "$VENV/.fedge-reqs" 2>/dev/null)" = "$REQS" ] && PY=$VENV/bin/python ||
    echo "SKIP: no PyPI and no $VENV: /metrics is checked without prometheus_client's parser"

fed_setup 3
FED_PORT=$(fed_free_port)
MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/fedge-partition" --data fashion-mnist --clients 30 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
"$BIN/fedge-partition" --data fashion-mnist --clients 20 --kind iid --seed 4 \
    --out "$FED_DIR/big" >/dev/null || fed_fail "partition (big)"
cat >"$FED_DIR/policy.yaml" <<'YAML'
version: 1
name: metrics
update:
  max_samples: 2500
round:
  min_clients: 2
YAML
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 2 \
    --clients-per-round 3 --round-timeout-s 3 --start-delay-s 0.5 --local-epochs 1 --lr 0.05 \
    --linger-s 30 --policy-file "$FED_DIR/policy.yaml" --metrics-listen "127.0.0.1:$MPORT"
fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin" --seed 0
fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin" --seed 1
fed_start_edge dev-003 "$FED_DIR/big/shard-000.bin" --seed 2

scrape() { python3 -c 'import sys, urllib.request as u
r = u.urlopen("http://127.0.0.1:%s%s" % (sys.argv[1], sys.argv[2]), timeout=5)
sys.stdout.write(r.read().decode())' "$MPORT" "$1"; }
fed_wait_for 'scrape /metrics 2>/dev/null | grep -q "^fedge_round "' 30

# hostile HTTP while the rounds run: idle connections past the limits, a huge header
python3 - "$MPORT" <<'PY' || fed_fail "hostile HTTP"
import socket, sys, time
port = int(sys.argv[1])
def conn():
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None  # refused past the limits: as good
s = conn()
assert s is not None
try:
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
    got = s.recv(64)
    assert not got.startswith(b"HTTP/1.1 200"), got
except OSError:
    pass  # closed on us: as good
s.close()
idle = [c for c in (conn() for _ in range(40)) if c is not None]
time.sleep(0.5)
for c in idle:
    c.close()
time.sleep(0.3)
PY

# until /metrics says the run finished (it refreshes every second)
fed_wait_for 'scrape /metrics 2>/dev/null | grep -q "^fedge_run_finished 1"' 60
scrape /metrics >"$FED_DIR/metrics.txt" || fed_fail "GET /metrics"
scrape /healthz >"$FED_DIR/healthz.txt" || fed_fail "GET /healthz is not 200: $(cat "$FED_DIR/healthz.txt")"
grep -q "^ok: finished" "$FED_DIR/healthz.txt" || fed_fail "healthz: $(cat "$FED_DIR/healthz.txt")"
code=$(python3 -c 'import sys, urllib.request as u, urllib.error as e
try: u.urlopen(u.Request("http://127.0.0.1:%s/metrics" % sys.argv[1], data=b"x"), timeout=5); print(200)
except e.HTTPError as x: print(x.code)' "$MPORT")
[ "$code" = 405 ] || fed_fail "POST /metrics gave $code, want 405"

for i in 1 2 3; do
    grep -Eq "round [0-9]+: samples=[0-9]+ loss=[0-9.]+ accuracy=0\.[0-9]{4} epochs=1 train_ms=[0-9]+ " \
        "$FED_DIR/edge-dev-00$i.log" || fed_fail "dev-00$i's round line lacks its training metrics"
done
[ "$(fed_sql "SELECT count(*) FROM updates WHERE train_loss > 0 AND train_accuracy BETWEEN 0 AND 1
    AND train_epochs = 1 AND train_ms >= 0")" = 6 ] || fed_fail "updates rows lack metrics"
[ "$(fed_sql "SELECT count(*) FROM updates WHERE decision='rejected' AND rule='sample_count'")" = 2 ] ||
    fed_fail "dev-003's two updates should be refused by sample_count"
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

"$PY" - "$FED_DIR/fedge.db" "$FED_DIR/report.json" "$FED_DIR/metrics.txt" <<'PY' || fed_fail "values against the database"
import json, math, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
q = lambda sql, *a: db.execute(sql, a).fetchall()
rep = json.load(open(sys.argv[2]))["training"]
assert len(rep) == 2, rep
for r in rep:
    rows = q("SELECT n_samples, train_loss, train_accuracy FROM updates WHERE round=? AND decision<>'rejected'",
             r["round"])
    w = sum(n for n, _, _ in rows)
    loss = sum(n * l for n, l, _ in rows) / w
    acc = sum(n * a for n, _, a in rows) / w
    sd = math.sqrt(max(0.0, sum(n * l * l for n, l, _ in rows) / w - loss * loss))
    assert r["reports"] == 2 and r["samples"] == w == 4000, r
    assert abs(r["train_loss"] - loss) < 1e-9 and abs(r["train_accuracy"] - acc) < 1e-9, (r, loss, acc)
    assert abs(r["train_loss_sd"] - sd) < 1e-9, (r, sd)
    assert r["status"] == "closed" and r["test_accuracy"] is not None, r

text = open(sys.argv[3]).read()
samples = {}
try:
    from prometheus_client.parser import text_string_to_metric_families
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for f in fams.values():
        for s in f.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert fams["fedge_rounds"].type == "counter" and fams["fedge_update_received_bytes"].type == "counter"
    assert fams["fedge_ingest_latency_seconds"].type == "histogram"
    assert fams["fedge_train_loss"].type == "gauge"
except ImportError:
    import re
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r'([a-z_]+)(?:\{(.*)\})? (\S+)$', line)
        assert m, line
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
        samples[(m.group(1), labels)] = float(m.group(3))
def val(name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]
for st in ("closed", "failed", "refused"):
    assert val("fedge_rounds_total", status=st) == q("SELECT count(*) FROM rounds WHERE status=?", st)[0][0], st
assert val("fedge_rounds_total", status="closed") == 2
got = {(k[1][0][1], k[1][1][1]): v for k, v in samples.items() if k[0] == "fedge_updates_total"}
want = {(d, r): n for d, r, n in q("SELECT decision, rule, count(*) FROM updates GROUP BY 1, 2")}
assert got == want and sum(want.values()) == 6, (got, want)
assert ("rejected", "sample_count") in want
assert val("fedge_update_received_bytes_total") == q("SELECT sum(bytes) FROM updates")[0][0]
assert val("fedge_model_accuracy") == q("SELECT accuracy FROM rounds WHERE status='closed' ORDER BY id DESC")[0][0]
assert val("fedge_train_loss") == rep[-1]["train_loss"]
assert val("fedge_train_accuracy") == rep[-1]["train_accuracy"]
assert val("fedge_devices", status="allowed") == 3 and val("fedge_devices", status="revoked") == 0
assert val("fedge_ingest_latency_seconds_count") >= 6, val("fedge_ingest_latency_seconds_count")
assert val("fedge_ingest_latency_seconds_bucket", le="+Inf") == val("fedge_ingest_latency_seconds_count")
assert val("fedge_run_finished") == 1 and val("fedge_round") == 2
PY
kill "$FED_AGG_PID" 2>/dev/null
fed_wait_run 30 || fed_fail "the aggregator did not stop"
echo ok
