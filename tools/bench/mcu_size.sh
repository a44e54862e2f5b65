#!/usr/bin/env bash
# Flash and RAM of the bare-metal Cortex-M4F core (mcu/, `make mcu`) for each
# firmware mcu/mcu.mk builds (softmax:784-10 momentum 0 fp32 update,
# mlp:784-16-10 momentum 0.9 int8 update; batch 8; softmax at momentum 0.9,
# which the 64 KB firmware refuses, measured without a budget), against the 64 KB RAM goal for softmax and the
# research anchor FedCoRE (75 KB RAM / 438 KB ROM).
#
#   tools/bench/mcu_size.sh [--no-build]
#
# flash   .text + .rodata + .data's load image, split by the linker map into
#         fedge (shared/ + mcu/), mbedTLS, newlib/libgcc, and the round's
#         embedded inputs (the global model as float32 and the 32 Fashion-MNIST
#         rows as u8 pixels: test data a device would not carry in flash)
# RAM     .data + .bss (mbedTLS's pool) + the core's caller
#         block (fedge_core_plan, printed by the firmware) + the stack's
#         high-water mark (painted at reset, read after the round), all
#         measured in the run under qemu-system-arm -M mps2-an386
set -euo pipefail
cd "$(dirname "$0")/../.."
MCU=build/cortex-m4
[ "${1:-}" = --no-build ] || make --no-print-directory mcu >/dev/null
RAM_GOAL=65536
printf 'load average: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-19s %8s %8s %8s %8s %8s | %7s %6s %7s %6s %7s %8s\n' model flash fedge mbedtls libc inputs \
    data bss block stack RAM 'RAM/64K'
# softmax at the aggregator's default momentum 0.9, measured on the board
# with no RAM budget: the 64 KB firmware (mcu.mk's softmax09) refuses it
make --no-print-directory -f mcu/mcu.mk HOST_BUILD="${FEDGE_BUILD:-build/native}" MCU_MODELS=softmax09free \
    MCU_ARGS_softmax09free="softmax:784-10 8 4 0.9 fp32" >/dev/null
for name in softmax mlp softmax09free; do
    elf=$MCU/$name.elf map=$MCU/$name.map
    out=$(timeout 60 qemu-system-arm -M mps2-an386 -nographic -monitor none -serial none \
              -semihosting -kernel "$elf" 2>&1 | grep '^mcu ')
    grep -qx 'mcu ok' <<<"$out" || { echo "$name: the firmware failed" >&2; exit 1; }
    spec=$(sed -n 's/^mcu spec=\([^ ]*\) .*/\1/p' <<<"$out")
    [ "$name" != softmax09free ] || spec+=" m0.9"
    field() { sed -n "s/^mcu ram.* $1=\([0-9]*\).*/\1/p" <<<"$out"; }
    # the map's input sections of the loaded output sections, by object
    read -r fedge mbed libc inputs < <(awk '
        function hex(s,   i, n) {
            n = 0
            for (i = 3; i <= length(s); i++)
                n = n * 16 + index("0123456789abcdef", tolower(substr(s, i, 1))) - 1
            return n
        }
        /^\.(text|data|ARM\.exidx)/ { loaded = 1; next }
        /^\.(bss|stack|arena)/ || /^\.(debug|comment|ARM\.attributes)/ { loaded = 0 }
        !loaded { next }
        /^ \.[A-Za-z_.0-9$]+ *$/ { pending = 1; next }
        {
            if (pending && NF == 3 && $1 ~ /^0x/) { size = $2; obj = $3 }
            else if ($1 ~ /^\./ && NF == 4 && $2 ~ /^0x/) { size = $3; obj = $4 }
            else { pending = 0; next }
            pending = 0
            n = hex(size)
            if (obj ~ /round_data\.o/) inputs += n
            else if (obj ~ /obj\/mbedtls\//) mbed += n
            else if (obj ~ /obj\/(shared|mcu)\//) fedge += n
            else libc += n
        }
        END { printf "%d %d %d %d\n", fedge, mbed, libc, inputs }' "$map")
    read -r text data _ < <(arm-none-eabi-size "$elf" | awk 'NR == 2 {print $1, $2}')
    flash=$((text + data))
    ram=$(field total)
    printf '%-19s %8d %8d %8d %8d %8d | %7d %6d %7d %6d %7d %7.2f\n' "$spec" "$flash" "$fedge" "$mbed" \
        "$libc" "$inputs" "$(field data)" "$(field bss)" "$(field block)" "$(field stack)" "$ram" \
        "$(echo "$ram / $RAM_GOAL" | bc -l)"
    sed -n 's/^mcu plan /    block: /p' <<<"$out"
    printf '    without the embedded inputs: flash %d bytes (%.2f of FedCoRE'"'"'s 438 KB ROM); RAM %.2f of FedCoRE'"'"'s 75 KB\n' \
        $((flash - inputs)) "$(echo "($flash - $inputs) / 438000" | bc -l)" "$(echo "$ram / 75000" | bc -l)"
done
