#!/usr/bin/env bash
# The crash loop at length: kill -9 at random instants of GC passes under
# concurrent `nix copy` pushes and S3 multipart uploads, then restart: every
# acknowledged path substitutes, every acknowledged object reads back whole, an
# unacknowledged one is whole or absent, `verify` is clean, and a last pass finds
# nothing left to reclaim (tests/gc.rs,
# kill9_at_random_points_of_gc_under_pushes_loses_no_live_path). The suite runs
# 3 rounds of 2 pushes and 2 uploads; this runs as many as asked and stops by
# itself.
#
#   bash bench/gc-crash.sh                # 20 rounds, 50 pushes, 4 uploads each
#   bash bench/gc-crash.sh 200 2 2        # ROUNDS PUSHES UPLOADS
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-20} pushes=${2:-50} uploads=${3:-4}
for n in "$rounds" "$pushes" "$uploads"; do
    case "$n" in
        '' | *[!0-9]*) echo "usage: bash bench/gc-crash.sh [ROUNDS [PUSHES [UPLOADS]]]" >&2; exit 2 ;;
    esac
done
export LARDER_GC_CRASH_ROUNDS="$rounds" LARDER_GC_CRASH_PUSHES="$pushes" \
    LARDER_GC_CRASH_UPLOADS="$uploads"
exec timeout 3600 bash tests/run.sh -- gc::kill9_at_random_points --nocapture
