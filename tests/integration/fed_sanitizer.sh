#!/usr/bin/env bash
# fed_cleanup fails the script when a process it started left a sanitizer
# report in its log (stderr) — also one written at shutdown, after the
# script's own checks passed — and passes when the logs hold none.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

run_cleanup() { # LOG_TEXT: the exit status of a script whose agg.log holds it
    (
        FED_DIR=$(mktemp -d /tmp/fedge-test.XXXXXX)
        printf '%s\n' "$1" >"$FED_DIR/agg.log"
        sleep 30 &
        FED_PIDS=("$!")
        trap fed_cleanup EXIT
        exit 0
    ) 2>/dev/null
}

run_cleanup "round 1 open" || { echo "FAIL: fed_cleanup failed on a clean log"; exit 1; }
for report in "==4242==ERROR: AddressSanitizer: heap-use-after-free on address 0x6020" \
    "==4242==ERROR: LeakSanitizer: detected memory leaks" \
    "aggregator/upload.c:10:5: runtime error: signed integer overflow"; do
    if run_cleanup "$report"; then
        echo "FAIL: fed_cleanup passed a log holding: $report"
        exit 1
    fi
done
echo "PASS: fed_cleanup fails a script on a sanitizer report in its logs, passes a clean one"
