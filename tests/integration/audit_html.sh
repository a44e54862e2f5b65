#!/usr/bin/env bash
# fedge-audit report --format html: a real federation (3 edges, 3 rounds over
# DTLS, softmax:784-10) under a DP policy, its report written as one HTML
# page and rendered by headless Chromium (Debian's `chromium`). Checks: the
# page fetches nothing (no script, no external URL); the screenshot is a
# real picture (the PNG decodes, many distinct colours); the numbers in the
# rendered DOM equal the JSON report's (accuracy per round, updates by
# decision and rejected ones by rule, contributions per device, epsilon of
# the run and per device, the lineage, the keys ledger); train loss is "not reported" without
# the updates.train_loss column and charted, as the sample-weighted mean
# per round, with it; and a device id, rule, reason and keys event holding
# markup render as text in a copy of the log.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "audit_html: chromium missing; installing Debian's chromium (tools/deps.sh lists it)"
    apt-get install -y -o DPkg::Lock::Timeout=300 chromium >/dev/null 2>&1 || true
    CHROMIUM=$(command -v chromium || true)
fi
if [ -z "$CHROMIUM" ]; then
    echo "SKIP audit_html: chromium is not installed and could not be installed (tools/deps.sh installs Debian's chromium)"
    exit 0
fi

fed_setup 3
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 30 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
cat >"$FED_DIR/policy.yaml" <<'YAML'
name: html-report
privacy:
  enabled: true
  clip_norm: 1.0
  noise_multiplier: 1.5
  epsilon_budget: 100
  delta: 1e-5
  device_epsilon_budget: 50
YAML
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 3 \
    --clients-per-round 3 --round-timeout-s 60 --start-delay-s 0.3 --local-epochs 1 --lr 0.05 \
    --linger-s 1 --policy-file "$FED_DIR/policy.yaml"
for i in 0 1 2; do
    fed_start_edge "dev-00$((i + 1))" "$FED_DIR/shards/shard-00$i.bin" --seed "$i"
done
fed_wait_run 120 || fed_fail "aggregator exited with an error"

AUDIT="$BIN/fedge-audit"
R=$FED_DIR/report
mkdir -p "$R"
"$AUDIT" --db "$FED_DIR/fedge.db" --json report >"$R/report.json" || fed_fail "report --json"
out=$("$AUDIT" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" report --format html \
    --out "$R/report.html" 2>&1) || fed_fail "report --format html: $out"
[ -s "$R/report.html" ] || fed_fail "no report.html written"
ls "$R"/report.html.* >/dev/null 2>&1 && fed_fail "a temporary file was left beside report.html"
grep -q 'class="ok">OK' "$R/report.html" || fed_fail "the verification result is missing"
# --out belongs to html; a bad --out leaves nothing behind
out=$("$AUDIT" --db "$FED_DIR/fedge.db" report --out "$R/x.html" 2>&1)
[ $? = 2 ] && echo "$out" | grep -q "out applies to report --format html" || fed_fail "--out without html: $out"
out=$("$AUDIT" --db "$FED_DIR/fedge.db" report --format html --out "$R/nodir/x.html" 2>&1)
[ $? = 2 ] && echo "$out" | grep -q "cannot write" || fed_fail "--out into a missing folder: $out"

render() { # HTML DOM [PNG]
    local prof
    prof=$(mktemp -d "$FED_DIR/chromium.XXXXXX")
    [ -z "${3:-}" ] ||
        timeout 60 "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --user-data-dir="$prof" \
            --screenshot="$3" --window-size=1000,2600 "file://$1" >/dev/null 2>&1 ||
        fed_fail "chromium --screenshot of $1"
    timeout 60 "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --user-data-dir="$prof" \
        --dump-dom "file://$1" >"$2" 2>/dev/null || fed_fail "chromium --dump-dom of $1"
}
render "$R/report.html" "$R/dom.html" "$R/shot.png"

# a copy with train metrics (the columns the edges' metrics fill), and round
# 3's aggregate made through a relay (its relay_head event)
cp "$FED_DIR/fedge.db" "$R/loss.db"
for c in "train_loss REAL" "train_accuracy REAL" "train_epochs INTEGER" "train_ms INTEGER"; do
    # an aggregator with the edges' metrics makes them itself
    sqlite3 "$R/loss.db" "SELECT ${c%% *} FROM updates LIMIT 0" >/dev/null 2>&1 ||
        sqlite3 "$R/loss.db" "ALTER TABLE updates ADD COLUMN $c" || fed_fail "sqlite3: add $c"
done
sqlite3 "$R/loss.db" "UPDATE updates SET train_loss = 2.5 / (round + 1) + id * 0.01, train_accuracy = 0.5 + round * 0.1,
                       train_epochs = 1, train_ms = 100;
    INSERT INTO events(at, round, device, kind, rule, detail)
    VALUES(0, 3, 'relay-a', 'relay_head', NULL, 'update 9: relay round 3 head 00');" ||
    fed_fail "sqlite3: add the train columns and a relay's head"
"$AUDIT" --db "$R/loss.db" report --format html --out "$R/loss.html" || fed_fail "report of loss.db"
render "$R/loss.html" "$R/loss-dom.html"

# a copy whose stored text (a device id, region, rule, reason, the initial
# model's version) holds markup, and whose round 3 went out without DP
# (no ledger row: its devices have no epsilon); the chain no longer verifies
cp "$FED_DIR/fedge.db" "$R/hostile.db"
sqlite3 "$R/hostile.db" "INSERT INTO devices(id, region) VALUES('<script>alert(1)</script>', '\"><img src=x onerror=alert(2)>');
    INSERT INTO updates(round, device, received_at, n_samples, encoding, bytes, counter, decision, rule, reason)
    VALUES(1, '<script>alert(1)</script>', 0, 5, 'fp32', 0, 1, 'accepted', 'all', 'passed'),
          (2, '<script>alert(1)</script>', 0, 5, 'fp32', 0, 2, 'rejected', '<b>rule</b>', '</table><script>alert(3)</script>');
    DELETE FROM dp_ledger WHERE round = 3;
    UPDATE models SET parent = '<i>init</i>' WHERE parent = (SELECT version FROM models WHERE kind = 'init');
    UPDATE models SET version = '<i>init</i>' WHERE kind = 'init';
    INSERT INTO events(at, round, device, kind, rule, detail)
    VALUES(1, NULL, '<script>alert(4)</script>', 'keys', NULL, '<b>ledger</b>');" ||
    fed_fail "sqlite3: hostile rows"
"$AUDIT" --db "$R/hostile.db" report --format html --out "$R/hostile.html" || fed_fail "report of hostile.db"
"$AUDIT" --db "$R/hostile.db" --json report >"$R/hostile.json" || fed_fail "json report of hostile.db"
grep -qiE '<(script|img|b|i)[ >]' "$R/hostile.html" && fed_fail "markup from the log reached the page raw"
render "$R/hostile.html" "$R/hostile-dom.html"

python3 tests/integration/audit_html_check.py "$R" "$FED_DIR/fedge.db" || fed_fail "the rendered report does not match"
echo "audit_html: all checks passed"
