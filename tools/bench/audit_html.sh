#!/usr/bin/env bash
# tools/bench/audit_html.sh [BUILD] — the cost of `fedge-audit report
# --format html` on a large log, against the JSON report of the same log
# (the baseline, measured in the same run: the html format does the JSON
# report's gathering and then its own queries and drawing).
#
# The log: the test_audit fixture plus ROUNDS closed rounds (2000) of
# PER_ROUND accepted updates (50) from DEVICES devices (500) in 3 regions,
# every round charged in the privacy ledger with the fixture's own ledger
# row (RDP vector stored at the policy's orders, as the aggregator stores
# it). Prints CPU seconds (user + sys, best of REPS = 3) of each, the
# ratio, the page's size and the load average.
set -euo pipefail
BUILD=${1:-build/native}
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-2000} PER_ROUND=${PER_ROUND:-50} DEVICES=${DEVICES:-500} REPS=${REPS:-3}
AUDIT=$BUILD/bin/fedge-audit
T=$(mktemp -d /tmp/fedge-bench-html.XXXXXX)
trap 'rm -rf "$T"' EXIT
"$BUILD/tests/test_audit" --make-fixture "$T/fx" >/dev/null
DB=$T/fx/fedge.db
last=$((ROUNDS + 3))
sqlite3 "$DB" "
WITH RECURSIVE r(i) AS (SELECT 4 UNION ALL SELECT i + 1 FROM r WHERE i < $last)
INSERT INTO rounds(id, opened_at, deadline, closed_at, status, base_version, strategy, n_selected,
                   n_accepted, accuracy)
SELECT i, i, i + 1, i + 0.5, 'closed', 'x', 'fedavg', $PER_ROUND, $PER_ROUND, 0.5 + i * 1e-4 FROM r;
WITH RECURSIVE d(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM d WHERE j < $DEVICES - 1)
INSERT INTO devices(id, region)
SELECT printf('big-%05d', j), CASE j % 3 WHEN 0 THEN 'eu' WHEN 1 THEN 'us' ELSE 'ap' END FROM d;
WITH RECURSIVE r(i) AS (SELECT 4 UNION ALL SELECT i + 1 FROM r WHERE i < $last),
               k(m) AS (SELECT 0 UNION ALL SELECT m + 1 FROM k WHERE m < $PER_ROUND - 1)
INSERT INTO updates(round, device, received_at, n_samples, encoding, bytes, counter, decision, rule, reason)
SELECT i, printf('big-%05d', (i * 7 + m * 10) % $DEVICES), i, 100 + m, 'fp32', 1000, i * 1000 + m,
       'accepted', 'all', 'ok' FROM r, k;
INSERT INTO dp_ledger(round, q, sigma, clip, orders, rdp)
SELECT r.id, l.q, l.sigma, l.clip, l.orders, l.rdp FROM rounds r,
       (SELECT * FROM dp_ledger ORDER BY round LIMIT 1) l WHERE r.id >= 4;"

cpu() { # best user+sys seconds of REPS runs of the command
    local best="" s
    for ((i = 0; i < REPS; i++)); do
        /usr/bin/time -o "$T/time" -f '%U %S' "$@" >/dev/null
        s=$(awk '{ print $1 + $2 }' "$T/time")
        best=$(awk -v a="$s" -v b="${best:-$s}" 'BEGIN { print (a < b ? a : b) }')
    done
    echo "$best"
}
json=$(cpu "$AUDIT" --db "$DB" report --format json)
html=$(cpu "$AUDIT" --db "$DB" report --format html --out "$T/r.html")
"$AUDIT" --db "$DB" report --format json >"$T/r.json"
printf 'log: %d rounds, %d devices, %d updates, %d ledger rows\n' "$((ROUNDS + 3))" "$((DEVICES + 5))" \
    "$(sqlite3 "$DB" 'SELECT count(*) FROM updates')" "$(sqlite3 "$DB" 'SELECT count(*) FROM dp_ledger')"
printf '%-22s %8s %10s\n' format cpu_s bytes
printf '%-22s %8.2f %10d\n' "report --format json" "$json" "$(stat -c %s "$T/r.json")"
printf '%-22s %8.2f %10d\n' "report --format html" "$html" "$(stat -c %s "$T/r.html")"
awk -v a="$html" -v b="$json" 'BEGIN { printf "html / json cpu: %.2f\n", (b > 0 ? a / b : 0) }'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
