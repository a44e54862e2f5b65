#!/usr/bin/env bash
# Multi-core ingest over real DTLS (docs/AGGREGATOR.md "Ingest"): 40 devices
# each send one sealed update at the same instant to an aggregator with 2
# ingest workers and room for only 2 updates in the pool, so that most are
# first answered 5.03 with Max-Age and come back. Then every device sends
# the same frame again. Asserts: every device was finally answered 2.04,
# each resend was answered as a duplicate, the log holds exactly one
# accepted row per device and nothing else, the pool did refuse (the
# bounded queue was exercised), and the audit chain verifies.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

N=40
fed_setup $N
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 1 --kind iid --seed 1 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
fed_start_aggregator --model-spec mlp:784-64-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
    --round-timeout-s 120 --linger-s 60 --ingest-workers 2 --ingest-queue 2 --commit-group 8
fed_wait_for "grep -qs 'round 1 open' $FED_DIR/agg.log" 30
DRIVER="$BIN/bench-ingest_rate"
[ -x "$DRIVER" ] || DRIVER=build/native/bin/bench-ingest_rate # an ASan build has no bench programs
[ -x "$DRIVER" ] || fed_fail "bench-ingest_rate is not built"
"$DRIVER" --server "127.0.0.1:$FED_PORT" --keys "$FED_DIR/keys" --n $N --resend 1 --status 1 \
    --timeout-s 60 >"$FED_DIR/driver.log" 2>&1 || { cat "$FED_DIR/driver.log" >&2; fed_fail "not every device got 2.04"; }
grep -E '^(ingest|resend|latency)' "$FED_DIR/driver.log"
grep -q "^resend   $N of $N answered 2.04 as duplicates" "$FED_DIR/driver.log" || fed_fail "resends not answered as duplicates"
refused=$(grep -o '"refused_full":[0-9]*' "$FED_DIR/driver.log" | cut -d: -f2)
[ "${refused:-0}" -gt 0 ] || fed_fail "the pool never refused: the bounded queue was not exercised"
[ "$(fed_sql "SELECT count(*) FROM updates")" = $N ] || fed_fail "one row per device expected, got $(fed_sql "SELECT count(*) FROM updates")"
[ "$(fed_sql "SELECT count(DISTINCT device) FROM updates WHERE decision='accepted'")" = $N ] || fed_fail "every device accepted once"
[ "$(fed_sql "SELECT count(*) FROM devices WHERE last_counter = 1")" = $N ] || fed_fail "every device's counter is its update's"
fed_wait_for "grep -qs 'round 1 closed: 40 accepted' $FED_DIR/agg.log" 30
kill "$FED_AGG_PID"; wait "$FED_AGG_PID" 2>/dev/null
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null || fed_fail "audit verify"
echo ok
