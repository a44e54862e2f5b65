#!/usr/bin/env bash
# fedge-edgesim against the real aggregator (async mode) over DTLS: 240
# virtual devices in one process, 60 sessions at once, Poisson arrivals,
# one update per session (devices come and go, and come back), 20% of
# sessions vanishing in the middle of their upload. Asserts from the
# database and the summary JSON: the run finishes; no update is counted twice
# (one row per device and counter, one per device and step); every 2.04 the
# devices saw is a row, and every extra row belongs to an upload whose
# answer a device did not see (dropped or unanswered); no row of a dropped
# upload is half stored (every accepted row has the full sealed size and its
# delta); devices really churned (more sessions than slots, more devices
# than slots counted); the audit chain verifies.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 240
FED_PORT=$(fed_free_port)
fed_start_aggregator --mode async --async-concurrency 32 --async-buffer-k 8 \
    --async-slot-timeout-s 3 --rounds 8 --model-spec mlp:784-32-10 --linger-s 5
"$BIN/fedge-edgesim" --server "127.0.0.1:$FED_PORT" --keys "$FED_DIR/keys" --population 240 \
    --concurrency 60 --arrival poisson:60 --rounds 1 --session-s 10 --dropout 0.2 \
    --speed straggler:0.2:4 --compute-ms 20 --poll-ms 200 --seed 3 --log-level error \
    --json "$FED_DIR/summary.json" >"$FED_DIR/edgesim.log" 2>&1 &
SIM_PID=$!
FED_PIDS+=("$SIM_PID")
fed_wait_pid "$SIM_PID" 60 || { tail -5 "$FED_DIR/edgesim.log"; fed_fail "fedge-edgesim failed"; }
fed_wait_pid "$FED_AGG_PID" 20 || fed_fail "aggregator exited with an error"

j() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
    "$FED_DIR/summary.json" "$1"; }
[ "$(j 'd["finished"]')" = True ] || fed_fail "edgesim did not see the run finish"
[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed'")" = 8 ] || fed_fail "8 closed steps expected"
[ "$(j 'd["session_errors"]')" = 0 ] || fed_fail "sessions ended in errors: $(j 'd["errors"]')"

sessions=$(j 'd["sessions"]') accepted=$(j 'd["updates"]["accepted"]')
dup=$(j 'd["updates"]["accepted_duplicate"]') dropped=$(j 'd["updates"]["cut_mid_post"]')
unanswered=$(j 'd["updates"]["no_answer"]') sent=$(j 'd["updates"]["sent"]')
rows=$(fed_sql "SELECT count(*) FROM updates WHERE decision<>'rejected'")
echo "sessions $sessions sent $sent accepted $accepted (+$dup duplicate) cut $dropped" \
    "unanswered $unanswered; accepted rows $rows; refused $(j 'd["updates"]["refused"]')"
[ "$sessions" -gt 60 ] || fed_fail "no churn: $sessions sessions for 60 slots"
[ "$dropped" -gt 0 ] || fed_fail "no session dropped out during its upload"
[ "$(fed_sql "SELECT count(DISTINCT device) FROM updates")" -gt 60 ] ||
    fed_fail "no more devices than slots took part"

[ "$(fed_sql "SELECT count(*) FROM (SELECT 1 FROM updates GROUP BY device, counter HAVING count(*) > 1)")" = 0 ] ||
    fed_fail "an update (device, counter) stored twice"
[ "$(fed_sql "SELECT count(*) FROM (SELECT 1 FROM updates WHERE decision<>'rejected'
              GROUP BY device, round HAVING count(*) > 1)")" = 0 ] || fed_fail "a device counted twice in a step"
[ "$rows" -ge $((accepted + dup)) ] || fed_fail "$((accepted + dup)) updates answered 2.04 but only $rows rows"
[ "$rows" -le $((accepted + dup + dropped + unanswered)) ] ||
    fed_fail "$rows rows, more than the $((accepted + dup)) answered 2.04 and $((dropped + unanswered)) unanswered"
[ "$(fed_sql "SELECT sum(n_accepted) FROM rounds WHERE status='closed'")" -le "$rows" ] ||
    fed_fail "steps count more updates than stored"

[ "$(fed_sql "SELECT count(DISTINCT bytes) FROM updates")" = 1 ] || fed_fail "a stored update of another size"
[ "$(fed_sql "SELECT bytes FROM updates LIMIT 1")" -eq $(( $(j 'd["bytes"]["up"]') / sent )) ] ||
    fed_fail "a stored update is not the size the devices sealed"
[ "$(fed_sql "SELECT count(*) FROM updates WHERE decision<>'rejected' AND
              (delta IS NULL OR delta_sha256 IS NULL OR length(delta) = 0)")" = 0 ] ||
    fed_fail "an accepted row without its delta"
[ "$(j 'd["handshakes"]')" -ge "$sent" ] || fed_fail "fewer DTLS handshakes than uploads"

"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
    fed_fail "audit verify"
echo ok
