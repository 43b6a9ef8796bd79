#!/usr/bin/env bash
# What observability costs: two larder servers of one build, serving the same NAR,
# one with request metrics and the access log on (the defaults; log lines go to a
# file, as they would to the journal), one with `metrics = false` and
# `[log] access = false`. Rounds alternate between them, so load on the machine
# falls on both alike.
#
#   bash bench/observe.sh               # build release larder, 512 MiB NAR, 7 rounds
#   bash bench/observe.sh --no-build    # use target/release/larder (or $LARDER)
#   bash bench/observe.sh --size-mib=N --rounds=N --wrk-secs=N --format=json|text
#
# Measures, medians over the rounds:
#   NAR download, one stream: curl to /dev/null, MB/s
#   narinfo requests/s: wrk -t2 -c64 on one narinfo
# Goal: with metrics and access logs on, both >= 0.95x the same build with them off.
# Results go to stdout as a markdown table (docs/benchmarks.md, "Observability").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=1 size_mib=512 rounds=7 wrk_secs=5 format=json
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        --size-mib=*) size_mib=${a#--size-mib=} ;;
        --rounds=*) rounds=${a#--rounds=} ;;
        --wrk-secs=*) wrk_secs=${a#--wrk-secs=} ;;
        --format=*) format=${a#--format=} ;;
        *) echo "unknown argument $a" >&2; exit 2 ;;
    esac
done

# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_packages wrk nix-bin curl python3

larder=${LARDER:-$PWD/target/release/larder}
if [ "$build" = 1 ] && [ -z "${LARDER:-}" ]; then
    cargo build --release --locked >&2
fi
unset NIX_REMOTE

work=$(mktemp -d "${TMPDIR:-/tmp}/larder-bench-observe.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT


load_before=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A url
for side in on off; do
    port=$(free_port)
    if [ "$side" = on ]; then
        printf '[log]\nformat = "%s"\n' "$format" >"$work/$side.toml"
    else
        printf 'metrics = false\n[log]\nformat = "%s"\naccess = false\n' "$format" >"$work/$side.toml"
    fi
    "$larder" serve --config "$work/$side.toml" --data-dir "$work/data-$side" \
        --listen "127.0.0.1:$port" >"$work/$side.stdout" 2>"$work/$side.log" &
    pids+=("$!")
    for _ in $(seq 200); do
        grep -q "larder listening" "$work/$side.stdout" 2>/dev/null && break
        sleep 0.05
    done
    grep -q "larder listening" "$work/$side.stdout" || { cat "$work/$side.log" >&2; exit 1; }
    url[$side]="http://127.0.0.1:$port"
    token=$(cat "$work/data-$side/admin.token")
    curl -sS --fail -o /dev/null -X POST -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/json' \
        -d '{"keypair":"Generate","is_public":true,"store_dir":"/nix/store","priority":41,"upstream_cache_key_names":[]}' \
        "${url[$side]}/_api/v1/cache-config/bench"
done

# One NAR of size_mib: half random bytes, half text, pushed with Nix as zstd.
bench_nix_env "$work"
path=$(mixed_nar_path "$work" "$size_mib")
hash=$(basename "$path" | cut -c1-32)
narinfo="/bench/$hash.narinfo"
for side in on off; do
    # Both servers hold the admin token of their own data dir; netrc has both.
    token=$(cat "$work/data-$side/admin.token")
    echo "machine 127.0.0.1 password $token" >"$work/netrc-$side"
    nix copy --from "$work/store" --to "${url[$side]}/bench?compression=zstd" \
        --option netrc-file "$work/netrc-$side" "$path" >&2
done
nar="/bench/$(curl -sS --fail "${url[on]}$narinfo" | sed -n 's/^URL: //p')"
nar_bytes=$(curl -sS --fail -o /dev/null -w '%{size_download}' "${url[on]}$nar")
curl -sS --fail -o /dev/null "${url[off]}$nar" # warm both

download() { # url -> MB/s
    curl -sS --fail -o /dev/null -w '%{speed_download}\n' --http1.1 "$1" |
        awk '{printf "%.1f\n", $1 / 1e6}'
}
rps() { # url -> requests/s
    wrk -t2 -c64 -d"${wrk_secs}s" "$1" | awk '/^Requests\/sec/ {printf "%.0f\n", $2}'
}

declare -A dl rq
for side in on off; do dl[$side]="" rq[$side]=""; done
for r in $(seq "$rounds"); do
    # Alternate which side goes first.
    if [ $((r % 2)) = 1 ]; then order="on off"; else order="off on"; fi
    for side in $order; do
        dl[$side]+="$(download "${url[$side]}$nar") "
        rq[$side]+="$(rps "${url[$side]}$narinfo") "
    done
done
med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
m_dl_on=$(med "${dl[on]}")
m_dl_off=$(med "${dl[off]}")
m_rq_on=$(med "${rq[on]}")
m_rq_off=$(med "${rq[off]}")
access_lines=$(grep -c '"larder::access"\|larder::access' "$work/on.log" || true)
off_lines=$(grep -c 'larder::access' "$work/off.log" || true)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
echo
echo "NAR: $((nar_bytes / 1048576)) MiB zstd (${size_mib} MiB NAR); $rounds rounds alternating, medians; $(nproc) cores; log format $format"
echo
echo "| measurement | metrics + access log on | off | on/off |"
echo "|---|---|---|---|"
echo "| NAR download, 1 stream, HTTP/1.1 (MB/s) | $m_dl_on | $m_dl_off | $(ratio "$m_dl_on" "$m_dl_off") |"
echo "| narinfo, wrk -t2 -c64 ${wrk_secs}s (req/s) | $m_rq_on | $m_rq_off | $(ratio "$m_rq_on" "$m_rq_off") |"
echo
echo "raw MB/s: on ${dl[on]}; off ${dl[off]}"
echo "raw req/s: on ${rq[on]}; off ${rq[off]}"
echo "access-log lines written: on $access_lines, off $off_lines"
echo "load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg)"
verdict() { awk -v a="$1" -v b="$2" 'BEGIN {print (a >= 0.95 * b) ? "met" : "NOT met"}'; }
echo "goal (on >= 0.95x off): download $(verdict "$m_dl_on" "$m_dl_off"), narinfo $(verdict "$m_rq_on" "$m_rq_off")"
