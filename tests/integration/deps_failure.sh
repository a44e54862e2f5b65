#!/usr/bin/env bash
# tools/deps.sh never leaves the package system broken when a step fails:
# each step made to fail on purpose (FEDGE_DEPS_FAIL) ends the script with an
# error, writes no stamp, registers no dpkg foreign architecture, and leaves
# `apt-get update`, `apt-get check` and `dpkg --audit` as clean as before.
# Needs root (it runs apt-get and dpkg for real); the armhf edge's set-up is
# the one exercised, in a scratch build directory.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: needs root (runs apt-get and dpkg through tools/deps.sh)"
    exit 0
fi
apt_errors() { apt-get -o DPkg::Lock::Timeout=120 -qq update 2>&1 | grep -E '^(E|W):' ; }
before=$(apt_errors)
if [ -n "$before" ]; then
    echo "SKIP: apt-get update already fails before the test: $(head -n1 <<<"$before")"
    exit 0
fi
arches_before=$(dpkg --print-foreign-architectures | sort | tr '\n' ' ')

FED_DIR=$(mktemp -d /tmp/fedge-test.XXXXXX)
trap 'rm -rf "$FED_DIR"' EXIT
mkdir -p "$FED_DIR/build/deps"
# the Debian sources already fetched by the real build: nothing to download
[ -d build/deps/src ] && ln -s "$PWD/build/deps/src" "$FED_DIR/build/deps/src"

for step in apt-update apt-install mbedtls; do
    log="$FED_DIR/deps-$step.log"
    if FEDGE_DEPS_FAIL=$step tools/deps.sh "$FED_DIR/build" arm-linux-gnueabihf >"$log" 2>&1; then
        cat "$log"
        fed_fail "deps.sh succeeded although step $step failed"
    fi
    grep -q "injected failure at step '$step'" "$log" || grep -q "apt-get install failed" "$log" || {
        cat "$log"
        fed_fail "deps.sh failed before reaching step $step"
    }
    [ ! -e "$FED_DIR/build/deps/arm-linux-gnueabihf/.edge-deps" ] || fed_fail "a stamp was written after $step failed"
    [ -z "$(dpkg --audit 2>&1)" ] || fed_fail "dpkg --audit after $step: $(dpkg --audit 2>&1 | head -n3)"
    apt-get -qq check >/dev/null 2>&1 || fed_fail "apt-get check fails after $step"
    [ "$(dpkg --print-foreign-architectures | sort | tr '\n' ' ')" = "$arches_before" ] ||
        fed_fail "foreign architectures changed after $step: $(dpkg --print-foreign-architectures | tr '\n' ' ')"
done
after=$(apt_errors)
[ -z "$after" ] || fed_fail "apt-get update fails after the injected failures: $after"
echo ok
