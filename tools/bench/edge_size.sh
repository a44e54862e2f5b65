#!/usr/bin/env bash
# The size of the cross-built edge client, against the 400 KB goal and the
# previous build, for aarch64-linux-gnu and arm-linux-gnueabihf.
#
#   tools/bench/edge_size.sh [--no-build] [CROSS...]
#
# For each target, in one run:
#   edge      `make CROSS=... edge`: the shipped binary (trimmed mbedTLS,
#             client-only libcoap, -Os, section GC, LTO, stripped, glibc
#             dynamic). --no-build takes the binary already there.
#   split     the same objects and archives linked without LTO (EDGE_LTO=0,
#             the deps are fat LTO archives): the linker map attributes every
#             byte of the file's loaded sections to mbedTLS, libcoap, fedge or
#             the C runtime (crt files, libgcc, libc_nonshared); the rest is
#             ELF headers, linker-made tables (relocations, PLT/GOT, dynamic
#             symbols, unwind index) and segment alignment padding.
#   previous  the build before the trimming: mbedTLS from the same Debian
#             source package with Debian's full configuration and the full
#             libcoap (server, TCP, async), -O2, no section GC or LTO,
#             stripped, glibc dynamic (the way the issue measured 856 KB).
#             Its libraries are built once into build/bench/edge-size/; its
#             edge is compiled and linked from the current sources each run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
GOAL=400000
NOBUILD=0
[ "${1:-}" != --no-build ] || { NOBUILD=1; shift; }
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(aarch64-linux-gnu arm-linux-gnueabihf)
OUT=build/bench/edge-size
mkdir -p "$OUT"

log() { printf 'edge_size: %s\n' "$*" >&2; }

# split MAP BINARY READELF: "mbedtls libcoap fedge runtime other total" (bytes)
split() {
    local map=$1 bin=$2 readelf=$3 secs total
    secs=$("$readelf" -SW "$bin" | awk '$1 ~ /^\[/ { sub(/^ *\[ *[0-9]+\] */, ""); print }' |
           awk '$2 != "NOBITS" && $2 != "NULL" && $7 ~ /A/ { print $1 }' | tr '\n' ' ')
    total=$(stat -c %s "$bin")
    awk -v secs="$secs" -v total="$total" '
        function hex(h,   i, v) {
            v = 0; h = tolower(substr(h, 3))
            for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789abcdef", substr(h, i, 1)) - 1
            return v
        }
        BEGIN { n = split(secs, s, " "); for (i = 1; i <= n; i++) keep[s[i]] = 1 }
        /^Linker script and memory map/ { on = 1; next }
        !on { next }
        /^[^ ]/ { out = $1; next }                       # an output section
        !(out in keep) { next }
        # made by the linker (relocations, PLT/GOT, dynamic symbols, unwind
        # index): "ELF/dynamic tables", whichever input the map names
        out ~ /^\.(rela?\.|dyn|plt|got|gnu\.|eh_frame_hdr|interp|note|hash)/ { next }
        { line = $0 }
        # an input section: " .name 0xADDR 0xSIZE file" or its name alone on
        # the line before "  0xADDR 0xSIZE file"
        /^ [^ ]+$/ { pending = 1; next }
        {
            if (pending && $1 ~ /^0x/) { addr = $1; size = $2; file = $3 }
            else if ($2 ~ /^0x/ && $3 ~ /^0x/ && NF >= 4) { size = $3; file = $4 }
            else if ($1 == "*fill*") { size = $3; file = "*fill*" }
            else { pending = 0; next }
            pending = 0
            if (size !~ /^0x/) next
            b = hex(size)
            if (file ~ /libmbed(tls|x509|crypto)\.a/) mb += b
            else if (file ~ /libcoap/) co += b
            else if (file ~ /libfedge|\/obj\//) fe += b
            else if (file == "*fill*") {}
            else rt += b
        }
        END { printf "%d %d %d %d %d %d\n", mb, co, fe, rt, total - mb - co - fe - rt, total }
    ' "$map"
}

kb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1000 }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f%%", 100 * a / b }'; }

# the previous build's libraries: Debian's full mbedTLS config, full libcoap
build_previous_deps() {
    local c=$1
    local d="$ROOT/$OUT/previous-deps/$c" src="$ROOT/build/deps/src"
    [ -f "$d/.done" ] && return 0
    log "$c: building the previous build's mbedTLS (Debian's config) and libcoap (once)"
    rm -rf "$d"; mkdir -p "$d/include" "$d/lib"
    cp -a "$src/mbedtls-2.28.3" "$d/mbedtls"
    make -C "$d/mbedtls/library" -j"$(nproc)" CC="$c-gcc" AR="$c-ar" CFLAGS="-O2" static >"$d/mbedtls.log" 2>&1
    cp -a "$d/mbedtls/include/mbedtls" "$d/mbedtls/include/psa" "$d/include/"
    cp "$d/mbedtls/library/"libmbed{crypto,x509,tls}.a "$d/lib/"
    cp -a "$src/libcoap3-4.3.1" "$d/libcoap-src"
    mkdir -p "$d/libcoap"
    (cd "$d/libcoap" && "$d/libcoap-src/configure" --host="$c" --prefix="$d" --with-mbedtls \
        --disable-shared --enable-static --disable-doxygen --disable-manpages --disable-examples \
        --disable-tests --enable-dtls CPPFLAGS="-I$d/include" LDFLAGS="-L$d/lib" CFLAGS="-O2" \
        >configure.log 2>&1 && make -j"$(nproc)" >make.log 2>&1 && make install >install.log 2>&1)
    touch "$d/.done"
}

printf '| target | build | stripped bytes | vs 400 KB goal | mbedTLS | libcoap | fedge | C runtime | ELF/dynamic tables |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
for c in "${TARGETS[@]}"; do
    readelf=$c-readelf
    rm -f "$OUT/$c-nolto/bin/fedge-edge" "$OUT/$c-previous/bin/fedge-edge" # relinked in this run
    if [ $NOBUILD -eq 0 ]; then
        rm -f "build/$c/bin/fedge-edge"
        log "$c: make CROSS=$c edge"
        make --no-print-directory CROSS="$c" BUILD="build/$c" edge >"$OUT/$c-edge.log" 2>&1 ||
            { tail -n 20 "$OUT/$c-edge.log"; exit 1; }
    fi
    edge=build/$c/bin/fedge-edge
    [ -x "$edge" ] || { log "no $edge (run without --no-build)"; exit 1; }
    size=$(stat -c %s "$edge")

    log "$c: the same objects linked without LTO, for the split"
    make --no-print-directory CROSS="$c" BUILD="$OUT/$c-nolto" EDGE_LTO=0 \
        "$OUT/$c-nolto/bin/fedge-edge" >"$OUT/$c-nolto.log" 2>&1 ||
        { tail -n 20 "$OUT/$c-nolto.log"; exit 1; }
    read -r mb co fe rt ot tot < <(split "$OUT/$c-nolto/bin/fedge-edge.map" "$OUT/$c-nolto/bin/fedge-edge" "$readelf")

    build_previous_deps "$c"
    log "$c: the previous build's edge"
    pd="$OUT/previous-deps/$c"
    make --no-print-directory CROSS="$c" BUILD="$OUT/$c-previous" DEPS_DIR="$pd" OPT=-O2 \
        CROSS_CFLAGS= CROSS_LDFLAGS=-s "$OUT/$c-previous/bin/fedge-edge" >"$OUT/$c-previous.log" 2>&1 ||
        { tail -n 20 "$OUT/$c-previous.log"; exit 1; }
    read -r pmb pco pfe prt pot ptot < <(split "$OUT/$c-previous/bin/fedge-edge.map" "$OUT/$c-previous/bin/fedge-edge" "$readelf")

    verdict=$([ "$size" -le $GOAL ] && echo "met ($(pct "$size" $GOAL))" || echo "MISSED by $((size - GOAL)) B")
    row() { # label bytes verdict mb co fe rt ot total
        printf '| %s | %s | %s | %s | %s (%s) | %s (%s) | %s (%s) | %s (%s) | %s (%s) |\n' "$c" "$1" "$2" "$3" \
            "$(kb "$4")k" "$(pct "$4" "$9")" "$(kb "$5")k" "$(pct "$5" "$9")" "$(kb "$6")k" "$(pct "$6" "$9")" \
            "$(kb "$7")k" "$(pct "$7" "$9")" "$(kb "$8")k" "$(pct "$8" "$9")"
    }
    printf '| %s | edge (LTO, shipped) | %s | %s | | | | | |\n' "$c" "$size" "$verdict"
    row "edge without LTO (split)" "$tot" "" "$mb" "$co" "$fe" "$rt" "$ot" "$tot"
    row "previous (full mbedTLS, libcoap)" "$ptot" "edge is $(pct "$size" "$ptot") of it" \
        "$pmb" "$pco" "$pfe" "$prt" "$pot" "$ptot"
done
printf '\nload average: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
