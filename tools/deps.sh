#!/usr/bin/env bash
# Idempotent dependency set-up for fedge.
#
#   tools/deps.sh [BUILD_DIR] [CROSS]
#
# 1. Installs the Debian packages fedge needs when any is missing (apt-get).
# 2. Builds libcoap 4.3.1 from Debian's own libcoap3 source package against
#    mbedTLS into BUILD_DIR/deps/<triplet>, once; later runs find the stamp
#    file and do nothing.
# With CROSS=aarch64-linux-gnu it also installs the cross toolchain and
# libmbedtls-dev:arm64 and libopenblas-dev:arm64 (Debian multiarch) and
# cross-builds libcoap for it (arm-linux-gnueabihf: the same for armhf).
set -euo pipefail

BUILD_DIR=${1:-build}
CROSS=${2:-}
LIBCOAP_VERSION=4.3.1
HERE=$(cd "$(dirname "$0")/.." && pwd)
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$HERE/$BUILD_DIR" ;; esac

log() { printf 'deps: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

PACKAGES=(build-essential pkg-config autoconf automake libtool dpkg-dev
          libopenblas-dev
          libmbedtls-dev libssl-dev libsqlite3-dev sqlite3 zlib1g-dev libcmocka-dev
          libyaml-dev dataset-fashion-mnist libopenmpi-dev openmpi-bin
          libcoap3-bin time python3 bc libfaketime clang libclang-rt-14-dev
          libprotobuf-c-dev protobuf-c-compiler python3-cryptography)
PACKAGES+=(valgrind) # massif: the heap peak of an edge round (tests/integration/edge_memory.sh)
if [ -n "$CROSS" ]; then
    arch=$(case "$CROSS" in aarch64-*) echo arm64 ;; arm-*hf) echo armhf ;; *) echo unknown ;; esac)
    [ "$arch" != unknown ] || { log "unsupported CROSS=$CROSS"; exit 1; }
    PACKAGES+=("gcc-$CROSS" "libmbedtls-dev:$arch" "zlib1g-dev:$arch" "libc6-dev-$arch-cross" qemu-user
               "libopenblas-dev:$arch")
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

need_src=0
triplet=${CROSS:-$(gcc -dumpmachine)}
PREFIX="$BUILD_DIR/deps/$triplet"
STAMP="$PREFIX/.libcoap-$LIBCOAP_VERSION-mbedtls"
[ -f "$STAMP" ] || need_src=1

if [ ${#missing[@]} -gt 0 ] || [ $need_src -eq 1 ]; then
    srcfile=/etc/apt/sources.list.d/fedge-deb-src.sources
    added_src=0
    if [ $need_src -eq 1 ] && ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        log "adding a deb-src entry ($srcfile) for apt-get source libcoap3"
        as_root tee "$srcfile" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        added_src=1
    fi
    if [ -n "$CROSS" ] && ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
        as_root dpkg --add-architecture "$arch"
    fi
    if [ ${#missing[@]} -gt 0 ] || [ $added_src -eq 1 ]; then
        log "apt-get update"
        as_root apt-get update -qq
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

if [ $need_src -eq 1 ]; then
    SRC="$BUILD_DIR/deps/src"
    mkdir -p "$SRC" "$PREFIX"
    if ! ls -d "$SRC"/libcoap3-$LIBCOAP_VERSION >/dev/null 2>&1; then
        log "fetching Debian source package libcoap3 ($LIBCOAP_VERSION)"
        (cd "$SRC" && apt-get source -qq "libcoap3=$LIBCOAP_VERSION-1" >/dev/null 2>&1 || \
                      apt-get source -qq libcoap3 >/dev/null)
    fi
    srcdir=$(ls -d "$SRC"/libcoap3-$LIBCOAP_VERSION | head -n1)
    bdir="$BUILD_DIR/deps/build-$triplet"
    rm -rf "$bdir"; mkdir -p "$bdir"
    log "building libcoap $LIBCOAP_VERSION against mbedTLS for $triplet"
    (cd "$srcdir" && { [ -x configure ] || ./autogen.sh >/dev/null 2>&1; })
    hostflag=()
    [ -n "$CROSS" ] && hostflag=(--host="$CROSS")
    (cd "$bdir" && "$srcdir/configure" "${hostflag[@]}" --prefix="$PREFIX" \
        --with-mbedtls --disable-shared --enable-static --disable-doxygen \
        --disable-manpages --disable-examples --disable-tests --enable-dtls \
        CFLAGS="-O2 -g -fPIC" >"$bdir/configure.log" 2>&1 && \
        make -j"$(nproc)" >"$bdir/make.log" 2>&1 && make install >"$bdir/install.log" 2>&1) || {
        log "libcoap build failed; see $bdir/*.log"; exit 1; }
    touch "$STAMP"
    log "libcoap installed in $PREFIX"
fi
