#!/usr/bin/env bash
# The edge client cross-compiled for ARM64 and for 32-bit ARM (make
# CROSS=aarch64-linux-gnu edge, make CROSS=arm-linux-gnueabihf edge: Debian's
# cross toolchains, mbedTLS and libcoap built from source by tools/deps.sh,
# linked against the target's glibc only) runs under qemu-user against the
# native aggregator over DTLS; both contribute an accepted update to one real
# round, next to a native edge. Each binary stays within the 400 KB goal
# and needs no shared library but glibc's libc and libm. They are UDP/DTLS
# only: --transport tcp stops at once saying it needs the native build.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

declare -A QEMU=([aarch64-linux-gnu]=qemu-aarch64 [arm-linux-gnueabihf]=qemu-arm)
declare -A MACHINE=([aarch64-linux-gnu]=AArch64 [arm-linux-gnueabihf]=ARM)
for cross in aarch64-linux-gnu arm-linux-gnueabihf; do
    log="${TMPDIR:-/tmp}/fedge-cross-build-$cross.$$.log"
    make --no-print-directory CROSS=$cross edge >"$log" 2>&1 || {
        tail -n 30 "$log"
        fed_fail "cross build for $cross failed"
    }
    rm -f "$log"
    bin=build/$cross/bin/fedge-edge
    readelf -h "$bin" | grep -q "Machine: *${MACHINE[$cross]}\$" || fed_fail "$bin is not a ${MACHINE[$cross]} binary"
    # linked against glibc only: no libcoap, mbedTLS or zlib shared library
    needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
    [ "$needed" = "libc.so.6 libm.so.6 " ] || fed_fail "$bin needs: $needed"
    ! grep -qa -- "-----BEGIN CERTIFICATE" "$bin" || fed_fail "$bin carries certificates (mbedTLS not trimmed)"
    size=$(stat -c %s "$bin")
    [ "$size" -le 400000 ] || fed_fail "$bin is $size bytes, over the 400 KB goal (tools/bench/edge_size.sh)"
    command -v "${QEMU[$cross]}" >/dev/null || fed_fail "${QEMU[$cross]} (qemu-user) is not installed"
    "${QEMU[$cross]}" -L "/usr/$cross" "$bin" --help >/dev/null || fed_fail "the $cross binary does not run under qemu"
done

fed_setup 3
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 40 --kind iid --seed 2 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
# the cross edges are UDP/DTLS only (libcoap --disable-tcp): --transport tcp
# stops at once, saying that it needs the native build
for cross in aarch64-linux-gnu arm-linux-gnueabihf; do
    out=$(timeout 30 "${QEMU[$cross]}" -L "/usr/$cross" "build/$cross/bin/fedge-edge" --server 127.0.0.1:9 \
        --transport tcp --id dev-001 --keys "$(fed_edge_keys dev-001)" \
        --shard "$FED_DIR/shards/shard-000.bin" --max-retries 0 2>&1) &&
        fed_fail "the $cross edge took --transport tcp"
    echo "$out" | grep -q "no TCP/TLS support: --transport tcp needs the native build" ||
        fed_fail "the $cross edge's --transport tcp error does not say why: $out"
done
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
    --round-timeout-s 120 --start-delay-s 0.3 --linger-s 2
n=0
for cross in aarch64-linux-gnu arm-linux-gnueabihf; do
    n=$((n + 1))
    id=dev-00$n
    "${QEMU[$cross]}" -L "/usr/$cross" "build/$cross/bin/fedge-edge" --server "127.0.0.1:$FED_PORT" \
        --id $id --keys "$(fed_edge_keys $id)" --shard "$FED_DIR/shards/shard-00$n.bin" \
        --encoding int8 >"$FED_DIR/edge-$id.log" 2>&1 &
    FED_PIDS+=("$!")
    FED_EDGE_PIDS+=("$!:$id")
done
fed_start_edge dev-003 "$FED_DIR/shards/shard-003.bin"
fed_wait_run 180 || fed_fail "aggregator failed"
[ "$(fed_sql "SELECT count(*) FROM updates WHERE device='dev-001' AND decision='accepted' AND encoding='int8'")" = 1 ] ||
    fed_fail "the ARM64 edge's update was not accepted"
[ "$(fed_sql "SELECT count(*) FROM updates WHERE device='dev-002' AND decision='accepted' AND encoding='int8'")" = 1 ] ||
    fed_fail "the armhf edge's update was not accepted"
[ "$(fed_sql "SELECT status FROM rounds WHERE id=1")" = closed ] || fed_fail "round not closed"
echo ok
