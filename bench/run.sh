#!/usr/bin/env bash
# larder benchmarks: larder against nginx and `nix copy --to file://`, on this
# machine, over 127.0.0.1 only. Installs what it needs (Debian/Ubuntu, apt), builds
# larder in release mode, builds its corpus under bench/.work, measures, prints a
# table of medians and ratios against the goals, and cleans up.
#
#   bash bench/run.sh            # full run (about 10-20 min on 2 cores)
#   bash bench/run.sh --quick    # smaller corpus, fewer repetitions
#   bash bench/run.sh --profile  # also record perf profiles of larder
#   bash bench/run.sh --no-build # use the existing target/release/larder
#   bash bench/run.sh --rev=HEAD # build that commit (git archive, own target dir)
#                                # instead of the working tree
#
# Results: bench/.work/run/results/<timestamp>/ (results.json, summary.txt, raw
# hyperfine/wrk output, server logs). See docs/benchmarks.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=1
rev=""
args=()
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        --rev=*) rev=${a#--rev=} ;;
        *) args+=("$a") ;;
    esac
done

packages=(nginx-light wrk hyperfine nix-bin curl zstd time python3 procps util-linux)
if [[ " ${args[*]-} " == *" --profile "* ]]; then
    packages+=(linux-perf)
    # perf's call graphs want line tables, which the release profile leaves out.
    export CARGO_PROFILE_RELEASE_DEBUG=limited CARGO_PROFILE_RELEASE_STRIP=none
fi

# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_packages "${packages[@]}"
# Installing nginx may start the packaged service; the benchmark runs its own.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${sudo_cmd[@]}" systemctl stop nginx 2>/dev/null || true
fi
export PATH="$PATH:/usr/sbin:/sbin"

if [ -n "$rev" ]; then
    # Build a committed revision in its own tree, leaving the working tree and
    # target/ alone; keep only the binary.
    sha=$(git rev-parse --short=12 "$rev^{commit}")
    bin="$PWD/bench/.work/build/larder-$sha"
    if [ ! -x "$bin" ]; then
        tree=$(mktemp -d "${TMPDIR:-/tmp}/larder-bench-build.XXXXXX")
        git archive "$sha" | tar -x -C "$tree"
        (cd "$tree" && cargo build --release --locked)
        mkdir -p "$(dirname "$bin")"
        cp "$tree/target/release/larder" "$bin"
        rm -rf "$tree"
    fi
    args+=(--larder "$bin" --rev-label "$sha")
elif [ "$build" = 1 ]; then
    cargo build --release --locked
    args+=(--rev-label "$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo +dirty)")
fi

# Nix reads its configuration from NIX_CONFIG set by the harness; a daemon socket
# from the environment would bypass the private stores.
unset NIX_REMOTE

# Hard stop: the harness has its own timeouts, this is the backstop.
exec timeout --signal=TERM --kill-after=60 45m python3 bench/bench.py "${args[@]}"
