#!/usr/bin/env bash
# Installs what larder's tests need (Debian/Ubuntu, apt) and runs every check:
# formatting, clippy, the unit tests in src/ and the integration tests in tests/.
# Safe to run again: it installs only what is missing.
#
#   bash tests/run.sh                 # everything
#   bash tests/run.sh -- NAME         # only integration tests whose name contains NAME
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Every stage says what it does, how long it usually takes on 2 cores, and how
# long the run has taken so far, so a long silent step is never a mystery.
run_started=$(date +%s)
stage() {
    echo "== $1 (usually $2; $(( $(date +%s) - run_started )) s so far)"
}

# Debian packages the tests use: Nix 2.8 as the real client, curl for poking at a
# server by hand, shellcheck for the scripts; debootstrap, systemd-nspawn and ip
# for the appliance's real-boot test (tests/appliance.rs); pebble (with
# pebble-challtestsrv) as a real ACME CA for the TLS tests (tests/tls.rs);
# chromium and chromium-driver as the real browser the dashboard test drives
# (tests/dashboard.rs).
packages=(nix-bin curl ca-certificates shellcheck awscli rclone s3cmd python3-venv
    debootstrap systemd-container iproute2 pebble chromium chromium-driver)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    stage "installing Debian packages: ${missing[*]}" "1-3 min, once"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -q
    "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# rustfmt and clippy ship as rustup components; add them when absent.
for component in rustfmt clippy; do
    tool="cargo-fmt"
    [ "$component" = clippy ] && tool="cargo-clippy"
    if ! command -v "$tool" >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

# The S3 tests drive the aws cli, rclone and s3cmd (apt, above) and boto3, which
# comes from pip into a venv of its own, made once; the metrics test parses
# /metrics with prometheus_client's parser from the same venv, and the dashboard
# test drives chromium with Selenium from it.
venv=target/test-venv
if ! "$venv/bin/python3" -c 'import boto3, prometheus_client, selenium' >/dev/null 2>&1; then
    stage "installing boto3, prometheus_client and selenium into $venv" "under a minute, once"
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install --quiet boto3 prometheus-client selenium
fi

# Slow-to-make test assets, kept between runs on one machine: the appliance
# test's debootstrapped Debian root, and deadnix and nixpkgs-fmt for the Nix file
# checks (tests/nix_files.rs), built once from crates.io.
if [ -z "${LARDER_TEST_CACHE_DIR:-}" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        LARDER_TEST_CACHE_DIR=/var/cache/larder-test
    else
        LARDER_TEST_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/larder-test"
    fi
fi
export LARDER_TEST_CACHE_DIR
mkdir -p "$LARDER_TEST_CACHE_DIR"
for tool in deadnix@1.3.1 nixpkgs-fmt@1.3.0; do
    name="${tool%@*}"
    version="${tool#*@}"
    # Not `| grep -q`: with pipefail, grep's early exit can fail the pipeline.
    have=$("$LARDER_TEST_CACHE_DIR/tools/bin/$name" --version 2>/dev/null || true)
    if [[ "$have" != *"$version"* ]]; then
        stage "building $name $version from crates.io into $LARDER_TEST_CACHE_DIR/tools" "2-5 min, once"
        cargo install --quiet --locked --root "$LARDER_TEST_CACHE_DIR/tools" "$name" --version "$version"
    fi
done
export PATH="$LARDER_TEST_CACHE_DIR/tools/bin:$PATH"
# Nix 2.26 (Debian trixie's, unpacked into the cache) evaluates the flake against
# ../shared/nixpkgs in tests/nix_eval.rs; Debian 12's 2.8 is too old for nixpkgs.
LARDER_EVAL_NIX=$(bash tests/setup-eval-nix.sh)
export LARDER_EVAL_NIX

nix --version
cargo --version

# The tests set their own Nix configuration per command (NIX_CONFIG, private
# stores); a daemon socket from the environment would bypass it.
unset NIX_REMOTE

if [ "${1:-}" = "--" ]; then
    shift
    stage "cargo test --test tests -- $*" "a few seconds to a few minutes, plus building larder"
    exec cargo test --test tests -- "$@"
fi

stage "shellcheck" "seconds"
shellcheck -x tests/run.sh .ci/run appliance/install.sh bench/*.sh

stage "cargo fmt --check" "seconds"
cargo fmt --all -- --check

stage "cargo clippy" "1-3 min; 10-30 min when nothing is built yet"
cargo clippy --all-targets --locked -- -D warnings

stage "cargo test (unit and integration tests)" "4 min on 2 cores once built, plus building the tests the first time"
start=$(date +%s)
cargo test --all-targets --locked
echo "== tests took $(( $(date +%s) - start )) s; everything took $(( $(date +%s) - run_started )) s"
