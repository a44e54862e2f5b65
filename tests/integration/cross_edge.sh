#!/usr/bin/env bash
# The edge client cross-compiled for ARM64 (make CROSS=aarch64-linux-gnu edge:
# Debian's cross toolchain, libmbedtls-dev:arm64, libcoap built for aarch64)
# runs under qemu-aarch64 against the native aggregator over DTLS and
# contributes an accepted update to a real round.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

make --no-print-directory CROSS=aarch64-linux-gnu edge >"${TMPDIR:-/tmp}/fedge-cross-build.log" 2>&1 || {
    tail -n 30 "${TMPDIR:-/tmp}/fedge-cross-build.log"
    fed_fail "cross build failed"
}
ARM=build/aarch64-linux-gnu/bin/fedge-edge
file "$ARM" 2>/dev/null | grep -q "ARM aarch64" || readelf -h "$ARM" | grep -q "AArch64" || fed_fail "$ARM is not an ARM64 binary"
command -v qemu-aarch64 >/dev/null || fed_fail "qemu-aarch64 (qemu-user) is not installed"
qemu-aarch64 "$ARM" --help >/dev/null || fed_fail "the ARM64 binary does not run under qemu"

fed_setup 2
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 40 --kind iid --seed 2 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
    --round-timeout-s 120 --start-delay-s 0.3 --linger-s 2
qemu-aarch64 "$ARM" --server "127.0.0.1:$FED_PORT" --id dev-001 --keys "$(fed_edge_keys dev-001)" \
    --shard "$FED_DIR/shards/shard-000.bin" --encoding int8 >"$FED_DIR/edge-dev-001.log" 2>&1 &
FED_PIDS+=("$!")
FED_EDGE_PIDS+=("$!:dev-001")
fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin"
fed_wait_run 180 || fed_fail "aggregator failed"
[ "$(fed_sql "SELECT count(*) FROM updates WHERE device='dev-001' AND decision='accepted' AND encoding='int8'")" = 1 ] ||
    fed_fail "the ARM64 edge's update was not accepted"
[ "$(fed_sql "SELECT status FROM rounds WHERE id=1")" = closed ] || fed_fail "round not closed"
echo ok
