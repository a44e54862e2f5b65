#!/usr/bin/env bash
# Idempotent dependency set-up for fedge.
#
#   tools/deps.sh [BUILD_DIR] [CROSS]
#   tools/deps.sh [BUILD_DIR] mcu    (make mcu: the native set-up, plus the
#       bare-metal toolchain and QEMU, and Debian's mbedTLS source for mcu/mcu.mk)
#   tools/deps.sh [BUILD_DIR] edge   (make EDGE_TRIM=1 edge: the trimmed
#       mbedTLS and client-only libcoap of step 3 for this machine's own
#       triplet, into BUILD_DIR/deps/<triplet>-edge)
#
# 1. Installs the Debian packages fedge needs when any is missing (apt-get).
# 2. Native: builds libcoap 4.3.1 from Debian's libcoap3 source package
#    into BUILD_DIR/deps/<triplet>, once, with
#    tools/deps/libcoap-4.3.1-bert-block1-per-block.patch (BERT Block1 blocks
#    reach the aggregator's handler one by one, so upload.c bounds them;
#    on mbedTLS a TLS message longer than one record is written whole) and
#    tools/deps/libcoap-4.3.1-session-walk.patch (the I/O loop walks its
#    server sessions at most every 50 ms while none comes or goes) and
#    tools/deps/libcoap-4.3.1-endpoint-drain.patch (a wake reads up to 32
#    datagrams from a UDP/DTLS server endpoint, not one),
#    twice: against Debian's full mbedTLS (libcoap-3-mbedtls.a: the native
#    edge, fedge-edgesim, the device-side benchmarks) and against Debian's
#    OpenSSL (libcoap-3-openssl.a: fedge-aggregator, whose TLS records are
#    then opened with AES-NI; the PSK suites it accepts are
#    COAP_OSSL_PSK_CIPHERS below). The installed headers are the same.
# 3. CROSS=aarch64-linux-gnu or arm-linux-gnueabihf (the edge client only):
#    installs the cross compiler and qemu-user (no Debian multiarch package,
#    no dpkg foreign architecture), and builds for the target from Debian's
#    source packages: mbedTLS 2.28.3 with edge/mbedtls_config_edge.h (PSK-only
#    DTLS 1.2 client) and a client-only, UDP-only libcoap 4.3.1 linked to it
#    (tools/deps/libcoap-4.3.1-mbedtls-psk-only.patch leaves its X.509 code
#    out), both -Os with section GC and LTO, into BUILD_DIR/deps/<triplet>.
# Later runs find the stamp file and do nothing; the stamp holds a
# fingerprint of the versions, flags, configuration and patch, so changing
# any of them rebuilds.
#
# A failed step leaves no stamp and the package system as it was
# (tests/integration/deps_failure.sh). FEDGE_DEPS_FAIL=STEP makes a step fail
# on purpose for that test: apt-update, apt-install, mbedtls.
set -euo pipefail

BUILD_DIR=${1:-build}
CROSS=${2:-}
MCU=0
[ "$CROSS" != mcu ] || { MCU=1; CROSS=; }
TRIM=0 # the trimmed edge deps: every CROSS target, and `edge` for this machine
[ "$CROSS" != edge ] || { TRIM=1; CROSS=; }
[ -z "$CROSS" ] || TRIM=1
LIBCOAP_VERSION=4.3.1
MBEDTLS_VERSION=2.28.3
MBEDTLS_DEBIAN_VERSION=2.28.3-1
HERE=$(cd "$(dirname "$0")/.." && pwd)
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$HERE/$BUILD_DIR" ;; esac
EDGE_CONFIG="$HERE/edge/mbedtls_config_edge.h"
COAP_PATCH="$HERE/tools/deps/libcoap-$LIBCOAP_VERSION-mbedtls-psk-only.patch"
COAP_BERT_PATCH="$HERE/tools/deps/libcoap-$LIBCOAP_VERSION-bert-block1-per-block.patch"
COAP_WALK_PATCH="$HERE/tools/deps/libcoap-$LIBCOAP_VERSION-session-walk.patch"
COAP_DRAIN_PATCH="$HERE/tools/deps/libcoap-$LIBCOAP_VERSION-endpoint-drain.patch"
# fat LTO objects: the LTO link uses the IR, tools/bench/edge_size.sh's
# per-library split links the same archives without LTO
EDGE_DEPS_CFLAGS="-Os -ffunction-sections -fdata-sections -flto -ffat-lto-objects"
APT_OPTS=(-o DPkg::Lock::Timeout=120 -qq)
# The aggregator's libcoap on OpenSSL accepts these TLS/DTLS 1.2 PSK suites
# (libcoap 4.3.1's compile-time COAP_OPENSSL_CIPHERS, its TLS server's list,
# and COAP_OPENSSL_PSK_CIPHERS; its defaults, "TLSv1.2:!NULL" and
# "PSK:!NULL", give a client listing ChaCha20 or ECDHE-PSK first those):
# AES-GCM (AES-NI) for TLS, and the edges' one DTLS suite, RFC 7252's
# TLS_PSK_WITH_AES_128_CCM_8. The client's order picks among them.
COAP_OSSL_PSK_CIPHERS="PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-CCM8"

log() { printf 'deps: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

fail_point() {
    [ "${FEDGE_DEPS_FAIL:-}" = "$1" ] || return 0
    log "injected failure at step '$1' (FEDGE_DEPS_FAIL)"
    return 1
}

PACKAGES=(build-essential pkg-config autoconf automake libtool dpkg-dev patch
          libopenblas-dev
          libmbedtls-dev libssl-dev libsqlite3-dev sqlite3 zlib1g-dev libcmocka-dev
          libyaml-dev dataset-fashion-mnist libopenmpi-dev openmpi-bin
          libcoap3-bin time python3 bc libfaketime clang libclang-rt-14-dev
          libprotobuf-c-dev protobuf-c-compiler python3-cryptography)
PACKAGES+=(valgrind) # massif: the heap peak of an edge round (tests/integration/edge_memory.sh)
PACKAGES+=(chromium) # headless rendering of the HTML audit report (tests/integration/audit_html.sh)
[ $MCU -eq 0 ] || PACKAGES+=(gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm) # make mcu: the Cortex-M4F core and its QEMU test (mcu/)
PACKAGES+=(libmicrohttpd-dev) # aggregator/metrics_http.c: Prometheus metrics and /healthz
PACKAGES+=(openssl) # openssl s_client: the TLS-PSK peer of tests/integration/tcp_transport.sh
if [ -n "$CROSS" ]; then
    case "$CROSS" in
        aarch64-linux-gnu) arch=arm64 ;;
        arm-linux-gnueabihf) arch=armhf ;;
        *) log "unsupported CROSS=$CROSS (aarch64-linux-gnu, arm-linux-gnueabihf)"; exit 1 ;;
    esac
    PACKAGES+=("gcc-$CROSS" "libc6-dev-$arch-cross" qemu-user)
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

triplet=${CROSS:-$(gcc -dumpmachine)}
PREFIX="$BUILD_DIR/deps/$triplet"
[ -n "$CROSS" ] || [ $TRIM -eq 0 ] || PREFIX+=-edge
SRC="$BUILD_DIR/deps/src"
TOOL=${CROSS:+$CROSS-} # the (cross) compiler's prefix
if [ $TRIM -eq 1 ]; then
    STAMP="$PREFIX/.edge-deps"
    fingerprint="mbedtls=$MBEDTLS_DEBIAN_VERSION libcoap=$LIBCOAP_VERSION cflags=$EDGE_DEPS_CFLAGS"
    fingerprint+=" config=$(sha256sum "$EDGE_CONFIG" | cut -c1-16) patch=$(sha256sum "$COAP_PATCH" | cut -c1-16)"
    need_src=1
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$fingerprint" ] && need_src=0
else
    STAMP="$PREFIX/.libcoap-$LIBCOAP_VERSION-mbedtls"
    fingerprint="libcoap=$LIBCOAP_VERSION patch=$(sha256sum "$COAP_BERT_PATCH" | cut -c1-16)"
    fingerprint+=" walk-patch=$(sha256sum "$COAP_WALK_PATCH" | cut -c1-16)"
    fingerprint+=" drain-patch=$(sha256sum "$COAP_DRAIN_PATCH" | cut -c1-16)"
    fingerprint+=" backends=mbedtls,openssl openssl-ciphers=$COAP_OSSL_PSK_CIPHERS"
    need_src=1
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$fingerprint" ] && need_src=0
fi
need_mcu_src=0
[ $MCU -eq 0 ] || [ -d "$SRC/mbedtls-$MBEDTLS_VERSION" ] || need_mcu_src=1

# An older deps.sh registered the CROSS target as a dpkg foreign architecture
# and installed libmbedtls-dev/zlib1g-dev/libopenblas-dev for it. When that
# architecture now breaks `apt-get update` (an inconsistent index) and every
# package of it is ours (one of those three, or pulled in automatically), it
# is purged and the architecture removed. Anything else is left alone.
drop_stale_foreign_arch() {
    local a=$1 m pkgs
    for m in $(apt-mark showmanual | grep ":$a\$" || true); do
        case "$m" in
            "libmbedtls-dev:$a"|"zlib1g-dev:$a"|"libopenblas-dev:$a") ;;
            *) log "foreign architecture $a breaks apt-get update but $m is not ours: left as is"; return 0 ;;
        esac
    done
    pkgs=$(dpkg-query -W -f='${Package}:${Architecture} ${db:Status-Abbrev}\n' |
           awk -v a=":$a" 'substr($1, length($1) - length(a) + 1) == a && $2 ~ /^.i/ {print $1}')
    log "removing the foreign architecture $a an older deps.sh registered (it breaks apt-get update)"
    if [ -n "$pkgs" ]; then
        # libc6:$a counts as essential to apt; removing it is safe only when
        # nothing outside the architecture goes with it: simulate first
        # shellcheck disable=SC2086
        if apt-get -s purge $pkgs 2>/dev/null | awk '/^(Purg|Remv) /' | grep -v "^[A-Za-z]* [^ ]*:$a " | grep -q .; then
            log "purging the $a packages would remove others: left as is"
            return 0
        fi
        # shellcheck disable=SC2086
        as_root env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" purge -y \
            --allow-remove-essential $pkgs >/dev/null
    fi
    as_root dpkg --remove-architecture "$a"
}

apt_update() {
    local out a again=0
    log "apt-get update"
    out=$(as_root apt-get "${APT_OPTS[@]}" update 2>&1) || true
    for a in arm64 armhf; do
        if dpkg --print-foreign-architectures | grep -qx "$a" &&
           grep -q "binary-$a/" <<<"$out"; then
            drop_stale_foreign_arch "$a"
            again=1
        fi
    done
    [ $again -eq 0 ] || out=$(as_root apt-get "${APT_OPTS[@]}" update 2>&1) || true
    if grep -q '^E:' <<<"$out"; then
        printf '%s\n' "$out" >&2
        log "apt-get update reported errors (above)"
    fi
    fail_point apt-update
}

# apt-get install fetches everything before dpkg runs; should dpkg itself
# fail half-way, finish what it configured so the package system is not left
# with half-installed packages.
apt_install() {
    log "installing: $*"
    local inject=()
    [ "${FEDGE_DEPS_FAIL:-}" != apt-install ] || inject=(-o 'DPkg::Pre-Invoke::=false')
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" "${inject[@]}" install -y \
            --no-install-recommends "$@" >/dev/null; then
        log "apt-get install failed; dpkg --configure -a"
        as_root env DEBIAN_FRONTEND=noninteractive dpkg --configure -a || true
        return 1
    fi
}

if [ ${#missing[@]} -gt 0 ] || [ $need_src -eq 1 ] || [ $need_mcu_src -eq 1 ] ||
   [ "${FEDGE_DEPS_FAIL:-}" = apt-install ]; then
    srcfile=/etc/apt/sources.list.d/fedge-deb-src.sources
    added_src=0
    if { [ $need_src -eq 1 ] || [ $need_mcu_src -eq 1 ]; } && ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        log "adding a deb-src entry ($srcfile) for apt-get source"
        as_root tee "$srcfile" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        added_src=1
    fi
    stale_arch=0
    if [ -n "$CROSS" ] && [ $need_src -eq 1 ] && dpkg --print-foreign-architectures | grep -qx "$arch"; then
        stale_arch=1 # registered by an older deps.sh: apt_update checks it
    fi
    if [ ${#missing[@]} -gt 0 ] || [ $added_src -eq 1 ] || [ $stale_arch -eq 1 ] ||
       [ "${FEDGE_DEPS_FAIL:-}" = apt-update ]; then
        apt_update
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
    elif [ "${FEDGE_DEPS_FAIL:-}" = apt-install ]; then
        apt_install --reinstall pkg-config
    fi
fi

fetch_source() { # PACKAGE DEBIAN_VERSION DIR
    [ -d "$SRC/$3" ] && return 0
    mkdir -p "$SRC"
    log "fetching Debian source package $1 ($2)"
    (cd "$SRC" && { apt-get source -qq "$1=$2" >/dev/null 2>&1 || apt-get source -qq "$1" >/dev/null; })
    [ -d "$SRC/$3" ] || { log "apt-get source $1 gave no $SRC/$3"; return 1; }
}

build_libcoap() { # SRCDIR BUILDDIR CFLAGS [configure args...]
    local srcdir=$1 bdir=$2 cflags=$3 tls=--with-mbedtls
    shift 3
    case "${1:-}" in --with-*) tls=$1; shift ;; esac
    local hostflag=()
    [ -z "$CROSS" ] || hostflag=(--host="$CROSS")
    [ $TRIM -eq 0 ] || hostflag+=(AR="${TOOL}gcc-ar" RANLIB="${TOOL}gcc-ranlib")
    log "building libcoap $LIBCOAP_VERSION ($tls) for $triplet"
    (cd "$srcdir" && { [ -x configure ] || ./autogen.sh >/dev/null 2>&1; })
    mkdir -p "$bdir"
    (cd "$bdir" && "$srcdir/configure" "${hostflag[@]}" --prefix="$PREFIX" \
        "$tls" --disable-shared --enable-static --disable-doxygen \
        --disable-manpages --disable-examples --disable-tests --enable-dtls "$@" \
        CFLAGS="$cflags" >"$bdir/configure.log" 2>&1 && \
        make -j"$(nproc)" >"$bdir/make.log" 2>&1 && make install >"$bdir/install.log" 2>&1) || {
        log "libcoap build failed; see $bdir/*.log"; return 1; }
}

if [ $need_src -eq 1 ]; then
    mkdir -p "$SRC" "$PREFIX"
    fetch_source libcoap3 "$LIBCOAP_VERSION-1" "libcoap3-$LIBCOAP_VERSION"
    coapsrc="$SRC/libcoap3-$LIBCOAP_VERSION"
    bdir="$BUILD_DIR/deps/build-$(basename "$PREFIX")"
    rm -rf "$bdir"; mkdir -p "$bdir"
    if [ $TRIM -eq 0 ]; then
        rm -f "$STAMP"
        cp -a "$coapsrc" "$bdir/libcoap-src"
        patch -s -d "$bdir/libcoap-src" -p1 <"$COAP_BERT_PATCH"
        patch -s -d "$bdir/libcoap-src" -p1 <"$COAP_WALK_PATCH"
        patch -s -d "$bdir/libcoap-src" -p1 <"$COAP_DRAIN_PATCH"
        build_libcoap "$bdir/libcoap-src" "$bdir/libcoap" "-O2 -g -fPIC"
        cp -a "$PREFIX/include/coap3" "$bdir/coap3-mbedtls"
        q="\\\"$COAP_OSSL_PSK_CIPHERS\\\""
        build_libcoap "$bdir/libcoap-src" "$bdir/libcoap-openssl" \
            "-O2 -g -fPIC -DCOAP_OPENSSL_CIPHERS=$q -DCOAP_OPENSSL_PSK_CIPHERS=$q" --with-openssl
        diff -r "$bdir/coap3-mbedtls" "$PREFIX/include/coap3" >/dev/null || {
            log "libcoap's headers differ between its mbedTLS and OpenSSL builds"; exit 1; }
    else
        rm -f "$STAMP"
        fetch_source mbedtls "$MBEDTLS_DEBIAN_VERSION" "mbedtls-$MBEDTLS_VERSION"
        log "building mbedTLS $MBEDTLS_VERSION (edge/mbedtls_config_edge.h) for $triplet"
        cp -a "$SRC/mbedtls-$MBEDTLS_VERSION" "$bdir/mbedtls"
        cp "$EDGE_CONFIG" "$bdir/mbedtls/include/mbedtls/config.h"
        fail_point mbedtls
        make -C "$bdir/mbedtls/library" -j"$(nproc)" CC="${TOOL}gcc" AR="${TOOL}gcc-ar" \
            CFLAGS="$EDGE_DEPS_CFLAGS" static >"$bdir/mbedtls.log" 2>&1 || {
            log "mbedTLS build failed; see $bdir/mbedtls.log"; exit 1; }
        rm -rf "${PREFIX:?}/include/mbedtls" "${PREFIX:?}/include/psa" "${PREFIX:?}/include/coap3" "${PREFIX:?}/lib"
        mkdir -p "$PREFIX/include" "$PREFIX/lib"
        cp -a "$bdir/mbedtls/include/mbedtls" "$bdir/mbedtls/include/psa" "$PREFIX/include/"
        cp "$bdir/mbedtls/library/"libmbed{crypto,x509,tls}.a "$PREFIX/lib/"
        cp -a "$coapsrc" "$bdir/libcoap-src"
        patch -s -d "$bdir/libcoap-src" -p1 <"$COAP_PATCH"
        build_libcoap "$bdir/libcoap-src" "$bdir/libcoap" "$EDGE_DEPS_CFLAGS" \
            --disable-server-mode --disable-tcp --disable-async \
            CPPFLAGS="-I$PREFIX/include" LDFLAGS="-L$PREFIX/lib"
        printf '%s\n' "$fingerprint" >"$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
        log "mbedTLS and libcoap (edge) installed in $PREFIX"
        exit 0
    fi
    printf '%s\n' "$fingerprint" >"$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
    log "libcoap installed in $PREFIX"
fi

if [ $need_mcu_src -eq 1 ]; then
    fetch_source mbedtls "$MBEDTLS_DEBIAN_VERSION" "mbedtls-$MBEDTLS_VERSION"
    log "mbedTLS $MBEDTLS_VERSION source in $SRC for make mcu"
fi
