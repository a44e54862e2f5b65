#!/usr/bin/env bash
# tests/run.sh MODE BUILD [ASAN_BUILD [FUZZ_BUILD]]
#   MODE unit:        every cmocka binary in BUILD/tests
#   MODE integration: every tests/integration/*.sh with BUILD's programs
#   MODE fuzz:        every libFuzzer target BUILD/fuzz_* for FEDGE_FUZZ_TIME
#                     seconds (default 3) on its seeds (tests/fuzz/corpus/NAME,
#                     BUILD/seeds/NAME) and its growing corpus BUILD/corpus/NAME;
#                     a crash fails it, the input lands in BUILD/artifacts/
#   MODE all:         unit + integration on BUILD, then on ASAN_BUILD the unit
#                     tests (FEDGE_TEST_QUICK=1: shortened training schedules)
#                     and the network scripts in ASAN_INTEGRATION, then the
#                     fuzz targets in FUZZ_BUILD for a few seconds each
# Prints one line per test and closes with "N passed, N failed".
# FEDGE_TEST_JOBS: cmocka programs and fuzz targets run at once (default:
# the cores, at most 4). FEDGE_TEST_INTEGRATION_JOBS: integration scripts
# run at once (default 2; 1: one at a time). A script whose header has the
# line "# fedge-test: serial" (it measures time, or needs the whole machine)
# runs alone after the others; "# fedge-test: long" starts first, and so
# does a cmocka program whose source says "fedge-test: long" (test_train).
set -u
MODE=${1:-all}
BUILD=${2:-build/native}
ASAN_BUILD=${3:-}
FUZZ_BUILD=${4:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
LOGDIR="$BUILD/test-logs"
mkdir -p "$LOGDIR"
passed=0
failed=0
failures=()

report() { # name, log, exit status, seconds
    local name=$1 log=$2 rc=$3 secs=$4
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        if grep -q '^SKIP:' "$log"; then # passed without checking: say why
            printf '  SKIP  %-44s %4ds  %s\n' "$name" "$secs" "$(grep -m1 '^SKIP:' "$log" | cut -c7-120)"
            return
        fi
        printf '  PASS  %-44s %4ds\n' "$name" "$secs"
    else
        failed=$((failed + 1))
        failures+=("$name")
        printf '  FAIL  %-44s %4ds  (log: %s)\n' "$name" "$secs" "$log"
        tail -n 80 "$log" | sed 's/^/        | /'
    fi
}

run_one() { # name, log, command...
    local name=$1 log=$2 t0=$SECONDS rc=0
    shift 2
    "$@" >"$log" 2>&1 || rc=$?
    report "$name" "$log" "$rc" $((SECONDS - t0))
}

# Tests that share nothing and time nothing (cmocka programs, fuzz targets)
# run FEDGE_TEST_JOBS at once (default: the cores, at most 4); their lines
# come out in order once the batch is done. Integration scripts stay one at
# a time: several of them measure time.
JOBS=${FEDGE_TEST_JOBS:-$(nproc 2>/dev/null || echo 1)}
[ "$JOBS" -le 4 ] 2>/dev/null || JOBS=4
BATCH_NAMES=()
BATCH_LOGS=()
batch_add() { # name, log, command...
    local name=$1 log=$2
    shift 2
    while [ "$(jobs -rp | wc -l)" -ge "${BATCH_JOBS:-$JOBS}" ]; do wait -n 2>/dev/null || sleep 0.1; done
    rm -f "$log.rc"
    (
        t0=$SECONDS
        rc=0
        "$@" >"$log" 2>&1 || rc=$?
        echo "$rc $((SECONDS - t0))" >"$log.rc"
    ) &
    BATCH_NAMES+=("$name")
    BATCH_LOGS+=("$log")
}
batch_report() {
    wait
    local i
    for i in "${!BATCH_NAMES[@]}"; do
        local rc=1 secs=0
        [ -f "${BATCH_LOGS[$i]}.rc" ] && read -r rc secs <"${BATCH_LOGS[$i]}.rc"
        report "${BATCH_NAMES[$i]}" "${BATCH_LOGS[$i]}" "$rc" "$secs"
    done
    BATCH_NAMES=()
    BATCH_LOGS=()
}

run_unit() { # build dir, label[, defer: leave the batch open for more]; a program whose source says "fedge-test: long" starts first
    local b=$1 label=$2 t n long=() rest=()
    for t in "$b"/tests/test_*; do
        [ -x "$t" ] || continue
        n=$(basename "$t")
        if grep -q 'fedge-test: long' "tests/unit/$n.c" 2>/dev/null; then long+=("$t"); else rest+=("$t"); fi
    done
    for t in "${long[@]}" "${rest[@]}"; do
        n=$(basename "$t")
        batch_add "$label/$n" "$b/test-logs/$n.log" "$t"
    done
    [ "${3:-}" = defer ] || batch_report
}

ASAN_INTEGRATION="e2e_dtls crash_resume interop_coap_client upload_limits ingest_workers ingest_crash relay_tree observe_round"

run_integration() { # build dir, label, scripts (default: all)
    local b=$1 label=$2
    shift 2
    local list=("$@") long=() rest=() serial=() n
    if [ ${#list[@]} -eq 0 ]; then
        for s in tests/integration/*.sh; do list+=("$(basename "$s" .sh)"); done
    fi
    for n in "${list[@]}"; do
        [ -f "tests/integration/$n.sh" ] || continue
        if grep -q '^# fedge-test: serial' "tests/integration/$n.sh"; then
            serial+=("$n")
        elif grep -q '^# fedge-test: long' "tests/integration/$n.sh"; then
            long+=("$n")
        else
            rest+=("$n")
        fi
    done
    # Scripts take their own ports (fed_free_port) and temp dirs, so they
    # may overlap; most of their time is spent waiting on deadlines.
    BATCH_JOBS=${FEDGE_TEST_INTEGRATION_JOBS:-2}
    for n in "${long[@]}" "${rest[@]}"; do
        batch_add "$label/$n" "$b/test-logs/integration-$n.log" \
            env FEDGE_BUILD="$b" bash "tests/integration/$n.sh"
    done
    batch_report
    BATCH_JOBS=
    for n in "${serial[@]}"; do
        run_one "$label/$n" "$b/test-logs/integration-$n.log" \
            env FEDGE_BUILD="$b" bash "tests/integration/$n.sh"
    done
}

run_fuzz() { # fuzz build dir, seconds per target
    local b=$1 secs=$2 t n
    mkdir -p "$b/test-logs" "$b/artifacts"
    for t in "$b"/fuzz_*; do
        [ -x "$t" ] || continue
        n=${t##*/fuzz_}
        local dirs=("$b/corpus/$n")
        mkdir -p "$b/corpus/$n"
        [ -d "tests/fuzz/corpus/$n" ] && dirs+=("tests/fuzz/corpus/$n")
        [ -d "$b/seeds/$n" ] && dirs+=("$b/seeds/$n")
        batch_add "fuzz/$n" "$b/test-logs/fuzz-$n.log" \
            env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
            "$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -max_len=16384 \
            -artifact_prefix="$b/artifacts/$n-" -print_final_stats=1 "${dirs[@]}"
    done
    batch_report
}

case "$MODE" in
unit) run_unit "$BUILD" unit ;;
integration) run_integration "$BUILD" integration ;;
fuzz) run_fuzz "$BUILD" "${FEDGE_FUZZ_TIME:-3}" ;;
all)
    # the integration scripts take the slots the unit programs free while
    # test_train (~47 s) still runs; one report for both, units first
    run_unit "$BUILD" unit defer
    run_integration "$BUILD" integration
    if [ -n "$ASAN_BUILD" ]; then
        mkdir -p "$ASAN_BUILD/test-logs"
        export FEDGE_TEST_QUICK=1
        export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
        export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
        run_unit "$ASAN_BUILD" asan
        # shellcheck disable=SC2086
        run_integration "$ASAN_BUILD" asan $ASAN_INTEGRATION
    fi
    [ -z "$FUZZ_BUILD" ] || run_fuzz "$FUZZ_BUILD" "${FEDGE_FUZZ_TIME:-3}"
    ;;
*) echo "usage: $0 unit|integration|fuzz|all BUILD [ASAN_BUILD [FUZZ_BUILD]]" >&2; exit 2 ;;
esac

[ ${#failures[@]} -eq 0 ] || printf 'failed: %s\n' "${failures[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
