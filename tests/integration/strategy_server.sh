#!/usr/bin/env bash
# The aggregator's side of FedProx and SCAFFOLD over DTLS, read with a
# third-party CoAP client: GET /round carries prox_mu= and control=, GET
# /control serves SCAFFOLD's server variate c as a model file of the run's
# spec whose version is control= (answered 2.03 Valid for its ETag), the
# round row records the strategy; a plain run answers GET /control 4.04.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

c=coap-client-openssl
command -v "$c" >/dev/null || fed_fail "$c (libcoap3-bin) is not installed"
fed_setup 2
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 2 --kind iid --seed 5 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
    --round-timeout-s 600 --scaffold --fedprox-mu 0.01
fed_wait_for "grep -q 'round 1 open' '$FED_DIR/agg.log'" 30
psk=$("$BIN/fedge-keygen" psk --keys "$FED_DIR/keys" --id dev-001) || fed_fail "keygen psk"
url="coaps://127.0.0.1:$FED_PORT"

out=$(timeout 20 "$c" -B 10 -u dev-001 -k "$psk" "$url/round" 2>&1) || fed_fail "GET /round: $out"
echo "$out" | grep -q '^prox_mu=0.01$' || fed_fail "/round has no prox_mu=0.01: $out"
ctl=$(echo "$out" | sed -n 's/^control=\([0-9a-f]\{64\}\)$/\1/p')
[ -n "$ctl" ] || fed_fail "/round has no control=<64 hex>: $out"

timeout 30 "$c" -B 20 -u dev-001 -k "$psk" -o "$FED_DIR/control.fmdl" "$url/control" >/dev/null 2>&1 ||
    fed_fail "GET /control"
info=$("$BIN/fedge-model" info "$FED_DIR/control.fmdl" 2>&1) || fed_fail "/control is not a model file: $info"
echo "$info" | grep -q "^version: *$ctl$" || fed_fail "/control's version is not control=$ctl: $info"
echo "$info" | grep -q "^spec: *softmax:784-10$" || fed_fail "/control's spec: $info"
etag=${ctl:0:16}
out=$(timeout 20 "$c" -B 10 -u dev-001 -k "$psk" -O "4,0x$etag" -v 7 "$url/control" 2>&1)
echo "$out" | grep -q "c:2.03" || fed_fail "GET /control with its ETag should be 2.03 Valid: $out"

strategy=$(fed_sql "SELECT strategy FROM rounds WHERE id=1")
[ "$strategy" = "fedprox(mu=0.01)+scaffold" ] || fed_fail "rounds.strategy is '$strategy'"
kill -TERM "$FED_AGG_PID"
fed_wait_pid "$FED_AGG_PID" 10 || fed_fail "SIGTERM should stop the aggregator cleanly"

# a plain run: no prox_mu, no control, and no /control
rm -rf "$FED_DIR/fedge.db" "$FED_DIR/fedge.db-wal" "$FED_DIR/fedge.db-shm" "$FED_DIR/models"
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
    --round-timeout-s 600
fed_wait_for "grep -c 'round 1 open' '$FED_DIR/agg.log' | grep -q 2" 30
out=$(timeout 20 "$c" -B 10 -u dev-001 -k "$psk" "$url/round" 2>&1) || fed_fail "GET /round: $out"
echo "$out" | grep -Eq '^(prox_mu|control)=' && fed_fail "a plain run's /round names prox_mu or control: $out"
out=$(timeout 20 "$c" -B 10 -u dev-001 -k "$psk" -v 7 "$url/control" 2>&1)
echo "$out" | grep -q "c:4.04" || fed_fail "GET /control of a plain run should be 4.04: $out"
[ "$(fed_sql "SELECT strategy FROM rounds WHERE id=1")" = "fedavg" ] || fed_fail "plain run's strategy"
echo ok
