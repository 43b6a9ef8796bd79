#!/usr/bin/env bash
# The GC crash loop at length: kill -9 at random instants of GC passes under
# concurrent `nix copy` pushes, then restart, `verify` and substitute every live
# path (tests/gc.rs, kill9_at_random_points_of_gc_under_pushes_loses_no_live_path).
# The suite runs 3 rounds; this runs as many as asked and stops by itself.
#
#   bash bench/gc-crash.sh          # 50 rounds (about 6 min)
#   bash bench/gc-crash.sh 200      # 200 rounds
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-50}
case "$rounds" in
    '' | *[!0-9]*) echo "usage: bash bench/gc-crash.sh [ROUNDS]" >&2; exit 2 ;;
esac
export LARDER_GC_CRASH_ROUNDS="$rounds"
exec timeout 3600 bash tests/run.sh -- gc::kill9_at_random_points --nocapture
