#!/usr/bin/env bash
# Coverage-guided fuzzing of larder's parsers (fuzz/, docs/reliability.md).
#
#   bash tests/fuzz.sh [SECONDS] [TARGET...]
#
# Builds the fuzz targets with cargo-fuzz (libFuzzer) on the stable toolchain
# (RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z flags cargo-fuzz passes), runs
# each target for SECONDS (default 600) from the seeds in fuzz/corpus/<target>
# plus what earlier runs on this machine found (fuzz/target/corpus/<target>), and
# stops by itself. Prints executions per target and any crash; exits 1 on a crash.
# FUZZ_JOBS=N runs N targets at once (default 1). cargo-fuzz is installed once into
# $LARDER_TEST_CACHE_DIR/tools, as tests/run.sh installs its tools.
#
# A crash leaves its input in fuzz/artifacts/<target>/. Copy it into
# fuzz/regressions/<target>/ and fix the parser: `cargo test --lib fuzzing`
# replays every file there (and every seed) through the same checks.
set -euo pipefail

seconds=${1:-600}
shift || true
cd "$(dirname "$0")/.."
root=$(pwd)

stage() { echo "== fuzz: $*"; }

if [ -z "${LARDER_TEST_CACHE_DIR:-}" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        LARDER_TEST_CACHE_DIR=/var/cache/larder-test
    else
        LARDER_TEST_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/larder-test"
    fi
fi
mkdir -p "$LARDER_TEST_CACHE_DIR"
version=0.13.2
have=$("$LARDER_TEST_CACHE_DIR/tools/bin/cargo-fuzz" --version 2>/dev/null || true)
if [[ "$have" != *"$version"* ]]; then
    stage "building cargo-fuzz $version from crates.io into $LARDER_TEST_CACHE_DIR/tools (2-4 min, once)"
    cargo install --quiet --locked --root "$LARDER_TEST_CACHE_DIR/tools" cargo-fuzz --version "$version"
fi
export PATH="$LARDER_TEST_CACHE_DIR/tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1

# No sanitizer: larder's parsers are safe Rust (no `unsafe` in them), so
# AddressSanitizer would find nothing there and the C in the dependencies is not
# instrumented either way; debug assertions and overflow checks stay on.
flags=(--fuzz-dir "$root/fuzz" --sanitizer none --debug-assertions)
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in "$root"/fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

stage "building ${#targets[@]} targets (the first build takes several minutes)"
start=$(date +%s)
cargo fuzz build "${flags[@]}"
stage "built in $(($(date +%s) - start)) s"

logs="$root/fuzz/target/logs"
mkdir -p "$logs"
run_one() {
    local t=$1 work="$root/fuzz/target/corpus/$1" arts="$root/fuzz/artifacts/$1"
    mkdir -p "$work" "$arts"
    # -timeout: an input taking 10 s is a hang, reported as a crash.
    # -rss_limit_mb: a parser holding 2 GiB for one input is a finding too.
    if cargo fuzz run "${flags[@]}" "$t" "$work" "$root/fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$arts/" >"$logs/$t.log" 2>&1; then
        echo ok >"$logs/$t.status"
    else
        echo crash >"$logs/$t.status"
    fi
}

stage "running each target for $seconds s, ${FUZZ_JOBS:-1} at a time"
running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "${FUZZ_JOBS:-1}" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

failed=0
printf '%-12s %14s %10s %8s  %s\n' target executions exec/s corpus result
for t in "${targets[@]}"; do
    log="$logs/$t.log"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    units=$(find "$root/fuzz/target/corpus/$t" -type f | wc -l)
    result=$(cat "$logs/$t.status")
    printf '%-12s %14s %10s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$units" "$result"
    if [ "$result" != ok ]; then
        failed=1
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -20 || true
        echo "   (full log: $log)"
    fi
done
if [ "$failed" -ne 0 ]; then
    stage "crash found: inputs are in fuzz/artifacts/<target>/; copy them into fuzz/regressions/<target>/"
    exit 1
fi
stage "no crash"
