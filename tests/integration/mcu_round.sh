#!/usr/bin/env bash
# The bare-metal Cortex-M4F core (mcu/, `make mcu`): for softmax:784-10
# (momentum 0, fp32 update) and mlp:784-16-10 (momentum 0.9, int8 update with
# stochastic rounding) a firmware runs one local
# round (4 SGD steps of 8 real Fashion-MNIST rows, embedded at build time)
# and seals its update on QEMU's emulated mps2-an386 board, printing the
# sealed frame through semihosting. The host opens it with the device's key
# through fedge_update_open (the aggregator's path) and checks the delta
# against its own training of the same rows and steps (tests/tools/mcu_round.c).
# Also: a frame with one ciphertext byte changed is refused, the host's
# training with another momentum does not match, the firmware links no malloc, stdio or
# file call, and softmax's RAM (data + bss + the core's block + the measured
# stack) stays within the 64 KB goal, and the same firmware at momentum 0.9
# (a model-sized velocity: 85,848 B) is refused on that 64 KB device; round data whose spec or batch does
# not match its global model or rows is refused for that (the lengths the
# core is given), with a signed error code. Skipped (SKIP line) only when the
# toolchain cannot be installed (tools/deps.sh build mcu).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

TOOL="$FEDGE_BUILD/tests/tools/mcu_round"
MCU=build/cortex-m4
OUT=$(mktemp -d /tmp/fedge-test.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

rc=0
make --no-print-directory BUILD="$FEDGE_BUILD" mcu >"$OUT/make.log" 2>&1 || rc=$?
if ! command -v arm-none-eabi-gcc >/dev/null || ! command -v qemu-system-arm >/dev/null ||
   ! arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 \
       --specs=nano.specs -print-file-name=libc_nano.a | grep -q /; then
    tail -n 5 "$OUT/make.log"
    echo "SKIP: the Cortex-M toolchain could not be installed (tools/deps.sh build mcu: gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm)"
    exit 0
fi
[ $rc -eq 0 ] || { tail -n 30 "$OUT/make.log"; fed_fail "make mcu failed"; }

# NAME SPEC STEPS MOMENTUM ENCODING (batch 8), as mcu/mcu.mk builds them
for m in "softmax softmax:784-10 4 0 fp32" "mlp mlp:784-16-10 4 0.9 int8"; do
    read -r name spec steps mom enc <<<"$m"
    elf=$MCU/$name.elf
    [ -f "$elf" ] || fed_fail "$elf was not built"
    bad=$(arm-none-eabi-nm "$elf" | awk '$2 ~ /^[TtUW]$/ {print $3}' |
          grep -xE '_?(malloc|calloc|realloc|free|_malloc_r|_sbrk|printf|fprintf|snprintf|fopen|open|read|write|time|clock_gettime|pthread_create)' | tr '\n' ' ')
    [ -z "$bad" ] || fed_fail "$elf links $bad"
    out="$OUT/$name.out"
    timeout 60 qemu-system-arm -M mps2-an386 -nographic -monitor none -serial none \
        -semihosting -kernel "$elf" >"$out" 2>&1 || { cut -c1-200 "$out"; fed_fail "$name: the firmware failed under qemu"; }
    grep -qx 'mcu ok' "$out" || { cut -c1-200 "$out"; fed_fail "$name: no 'mcu ok'"; }
    grep '^mcu ' "$out"
    "$TOOL" check "$spec" 8 "$steps" "$mom" "$enc" "$out" || fed_fail "$name: the host does not accept the device's update"

    # one hex digit of the ciphertext changed: the GCM tag must refuse it
    awk '/^frame / { i = 6 + 2 * 200; c = substr($0, i, 1); $0 = substr($0, 1, i - 1) (c == "0" ? "1" : "0") substr($0, i + 1) } 1' \
        "$out" >"$OUT/$name.tampered"
    ! cmp -s "$out" "$OUT/$name.tampered" || fed_fail "$name: tampering changed nothing"
    "$TOOL" check "$spec" 8 "$steps" "$mom" "$enc" "$OUT/$name.tampered" >"$OUT/t.log" 2>&1 &&
        fed_fail "$name: a tampered frame was accepted"
    grep -q 'refused' "$OUT/t.log" || { cat "$OUT/t.log"; fed_fail "$name: tampered frame: wrong error"; }
    # the comparison is sharp: the host training with another momentum (the
    # frame's header is the same) does not match
    other=$([ "$mom" = 0 ] && echo 0.5 || echo 0)
    "$TOOL" check "$spec" 8 "$steps" "$other" "$enc" "$out" >"$OUT/s.log" 2>&1 &&
        fed_fail "$name: the host's round with momentum $other matched the device's ($mom)"
    grep -q 'does not match' "$OUT/s.log" || { cat "$OUT/s.log"; fed_fail "$name: momentum $other: wrong error"; }
done

ram=$(sed -n 's/^mcu ram .* total=\([0-9]*\).*/\1/p' "$OUT/softmax.out")
[ -n "$ram" ] && [ "$ram" -le 65536 ] || fed_fail "softmax:784-10 batch 8 uses ${ram:-?} bytes of RAM, over the 64 KB goal"

# the same softmax firmware at the aggregator's default momentum 0.9 on the
# 64 KB device (mcu.mk's MCU_RAM_softmax09): the velocity is one more model
# copy (31,400 B), over the device's RAM; refused before the round, with
# what it needs and what momentum 0 needs, and nothing sealed
out09="$OUT/softmax09.out"
timeout 60 qemu-system-arm -M mps2-an386 -nographic -monitor none -serial none \
    -semihosting -kernel "$MCU/softmax09.elf" >"$out09" 2>&1 && fed_fail "softmax09: the firmware over its RAM exited 0"
grep '^mcu refused' "$out09"
grep -q '^mcu refused: RAM needed [0-9]* B .*of which velocity 31400) > the device.s 65536 B; at momentum 0 it needs [0-9]* B$' "$out09" &&
    grep -qx 'mcu error -7 buffer too small' "$out09" || { cut -c1-200 "$out09"; fed_fail "softmax09: not refused for its RAM"; }
! grep -q '^frame ' "$out09" || fed_fail "softmax09: a frame was sealed over the RAM budget"

# round data that does not match its spec or batch (the softmax round's
# 7,850 floats and 32 rows): refused for the mismatch itself, before
# anything past mcu_global / mcu_x is read, with a signed error code
for v in "spec -21" "batch -7"; do
    read -r what code <<<"$v"
    B="$OUT/$what"
    mkdir -p "$B/softmax"
    cp -a "$MCU/obj" "$B/obj" # the compiled core and mbedTLS, timestamps kept
    case $what in
        spec) sed 's/^const char mcu_spec\[\] = "softmax:784-10";/const char mcu_spec[] = "mlp:784-16-10";/' ;;
        batch) sed 's/^const int mcu_batch = 8,/const int mcu_batch = 16,/' ;;
    esac <"$MCU/softmax/round_data.c" | # no RAM budget: the core's own check must refuse
        sed 's/^const size_t mcu_ram_bytes = .*/const size_t mcu_ram_bytes = 0;/' >"$B/softmax/round_data.c"
    ! cmp -s "$MCU/softmax/round_data.c" "$B/softmax/round_data.c" || fed_fail "$what: the edit did not apply"
    make --no-print-directory -s -f mcu/mcu.mk MCU_BUILD="$B" HOST_BUILD="$FEDGE_BUILD" "$B/softmax.elf" \
        >"$B/make.log" 2>&1 || { tail -5 "$B/make.log"; fed_fail "$what: firmware build failed"; }
    timeout 60 qemu-system-arm -M mps2-an386 -nographic -monitor none -serial none \
        -semihosting -kernel "$B/softmax.elf" >"$B/run.out" 2>&1
    err=$(grep -m1 '^mcu error' "$B/run.out")
    echo "$what mismatch: $err"
    [ "$err" = "mcu error $code $(if [ "$what" = spec ]; then echo model shape mismatch; else echo buffer too small; fi)" ] ||
        { cut -c1-200 "$B/run.out"; fed_fail "$what mismatch: expected mcu error $code, refused for the mismatch"; }
    ! grep -q '^frame ' "$B/run.out" || fed_fail "$what mismatch: a frame was sealed"
done
echo "mcu_round: both rounds opened and matched on the host; softmax RAM $ram bytes"
