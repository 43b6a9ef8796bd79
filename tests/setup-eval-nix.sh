#!/usr/bin/env bash
# Sets up the Nix that evaluates flake.nix, the NixOS module and the appliance
# against the nixpkgs snapshot in ../shared/nixpkgs (tests/nix_eval.rs).
#
# Debian 12's Nix (2.8) is too old for current nixpkgs; Debian 13 (trixie) packages
# Nix 2.26. Its .debs and their libraries are fetched with `apt-get download`
# through a private apt configuration (the system's apt sources and state are left
# alone), unpacked with `dpkg-deb -x` into a prefix under the test cache, and run
# with that prefix's own dynamic loader. Nothing is installed on the system.
#
#   bash tests/setup-eval-nix.sh      # prints the path of the `nix` wrapper
#
# Idempotent: a prefix that already runs is kept. Progress goes to stderr, the
# wrapper's path to stdout.
set -euo pipefail

cache="${LARDER_TEST_CACHE_DIR:?LARDER_TEST_CACHE_DIR must be set (tests/run.sh sets it)}"
version=2.26
prefix="$cache/eval-nix"
wrapper="$prefix/nix"

say() { echo "eval-nix: $*" >&2; }

# Which nixpkgs tests/nix_eval.rs will evaluate against; said once, here, so a run
# without one shows it even when the tests' output is captured.
snapshot="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/nixpkgs/nixpkgs-26.11pre-eval.tar.gz"
if [ -n "${LARDER_NIXPKGS:-}" ]; then
    say "nixpkgs for evaluation: $LARDER_NIXPKGS (LARDER_NIXPKGS)"
elif [ -e "$snapshot" ]; then
    say "nixpkgs for evaluation: $(realpath "$snapshot")"
else
    say "no nixpkgs snapshot at $snapshot and LARDER_NIXPKGS is unset:"
    say "the NixOS evaluation tests (nix_eval_*) will be SKIPPED"
fi

# One setup at a time per cache (several checkouts may share it).
mkdir -p "$cache"
exec 9>"$cache/eval-nix.lock"
flock 9

if [ -x "$wrapper" ] && "$wrapper" --version 2>/dev/null | grep -qF "nix (Nix) $version"; then
    echo "$wrapper"
    exit 0
fi

# The Debian mirror this machine already uses, from its own apt sources.
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    mirror=$(awk '
        /^URIs:/ { uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-(security|updates|backports)$/) main = 1 }
        /^$/ { if (main && uri ~ /\/debian\/?$/) { print uri; exit } uri = ""; main = 0 }
        END { if (main && uri ~ /\/debian\/?$/) print uri }' "$f" | head -n1)
    [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -e /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" {
        for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
        /etc/apt/sources.list | grep -E '/debian/?$' | head -n1 || true)
fi
if [ -z "$mirror" ]; then
    say "no Debian mirror in /etc/apt/sources.list*; cannot fetch Nix $version"
    exit 1
fi

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
work="$cache/eval-nix.work"
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/debs" \
    "$work/apt/sources.list.d" "$work/apt/preferences.d"
cat >"$work/apt/sources.list" <<EOF
deb [signed-by=$keyring] $mirror trixie main
EOF
cat >"$work/apt/apt.conf" <<EOF
Dir::State "$work/apt";
Dir::State::lists "$work/apt/lists";
Dir::State::status "$work/apt/status";
Dir::Cache "$work/apt/cache";
Dir::Etc::sourcelist "$work/apt/sources.list";
Dir::Etc::sourceparts "$work/apt/sources.list.d";
Dir::Etc::preferences "/dev/null";
Dir::Etc::preferencesparts "$work/apt/preferences.d";
APT::Sandbox::User "root";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Install-Recommends "false";
Acquire::Languages "none";
EOF
: >"$work/apt/status"
export APT_CONFIG="$work/apt/apt.conf"

say "reading the trixie package lists from $mirror (private apt state in $work)"
apt-get update -qq >&2

# nix-bin and everything it needs to run (Depends and Pre-Depends), libc included:
# the prefix must not mix its libraries with the system's older ones.
mapfile -t pkgs < <(apt-cache depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances \
    nix-bin | grep -E '^[a-z0-9]' | sort -u)
say "downloading ${#pkgs[@]} packages: ${pkgs[*]}"
(cd "$work/debs" && apt-get download -qq "${pkgs[@]}" >&2)

staging="$prefix.new"
rm -rf "$staging"
mkdir -p "$staging/root"
for deb in "$work/debs"/*.deb; do
    dpkg-deb -x "$deb" "$staging/root"
done

root="$prefix/root"
libs="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu"
cat >"$staging/nix" <<EOF
#!/bin/sh
# Nix $version from Debian trixie, unpacked by tests/setup-eval-nix.sh; runs with
# its own loader and libraries. Usage as \`nix\`, or \`nix-instantiate\` etc. via
# NIX_EVAL_PROGRAM.
exec "$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$libs" \\
    --argv0 "\${NIX_EVAL_PROGRAM:-nix}" "$root/usr/bin/nix" "\$@"
EOF
chmod +x "$staging/nix"
rm -rf "$prefix"
mv "$staging" "$prefix"
rm -rf "$work"

if ! "$wrapper" --version | grep -qF "nix (Nix) $version"; then
    say "the unpacked Nix does not run: $("$wrapper" --version 2>&1 || true)"
    exit 1
fi
say "ready: $("$wrapper" --version)"
echo "$wrapper"
