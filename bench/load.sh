#!/usr/bin/env bash
# Load: 256 concurrent clients against one larder for a while, mixing narinfo
# lookups (hits and misses), NAR downloads, `nix copy` pushes and S3 traffic;
# then many idle keep-alive connections held at once.
#
#   bash bench/load.sh                  # 60 s, 10 000 idle connections (release build)
#   bash bench/load.sh --secs=5 --idle=500 --no-build   # the smoke run CI makes
#
# Clients (256 in all): wrk with 176 connections on narinfo hits, 48 on misses,
# 24 on NAR downloads; 4 shells each pushing fresh paths with `nix copy` in a
# loop; 4 boto3 threads putting, reading back and listing objects.
# Goals: zero errors (every answer the status expected, every push and S3
# operation succeeding), narinfo p99 < 20 ms, peak RSS <= 256 MiB; every idle
# connection held and served again. Exits 1 when an error is seen (latency and
# RSS are reported, not enforced: they move with the machine).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=1 secs=60 idle=10000 hold=10
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        --secs=*) secs=${a#--secs=} ;;
        --idle=*) idle=${a#--idle=} ;;
        --hold=*) hold=${a#--hold=} ;;
        *) echo "unknown argument $a" >&2; exit 2 ;;
    esac
done

# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_packages wrk nix-bin curl python3-venv
venv=target/test-venv
if ! "$venv/bin/python3" -c 'import boto3' >/dev/null 2>&1; then
    echo "installing boto3 into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet boto3
fi
py=$PWD/$venv/bin/python3

larder=${LARDER:-$PWD/target/release/larder}
if [ "$build" = 1 ] && [ -z "${LARDER:-}" ]; then
    cargo build --release --locked >&2
fi
unset NIX_REMOTE

work=$(mktemp -d "${TMPDIR:-/tmp}/larder-bench-load.XXXXXX")
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

port=$(free_port)
s3port=$(free_port)
# Started with the soft open-files limit systemd gives a service (1024): larder
# raises it to the hard limit itself.
(
    ulimit -Sn 1024
    exec "$larder" serve --data-dir "$work/data" --listen "127.0.0.1:$port" \
        --s3-listen "127.0.0.1:$s3port" >"$work/stdout" 2>"$work/log"
) &
lpid=$!
pids+=("$lpid")
for _ in $(seq 200); do
    grep -q "larder listening" "$work/stdout" 2>/dev/null && break
    sleep 0.05
done
grep -q "larder listening" "$work/stdout" || { cat "$work/log" >&2; exit 1; }
url=http://127.0.0.1:$port
token=$(cat "$work/data/admin.token")
curl -sS --fail -o /dev/null -X POST -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' \
    -d '{"keypair":"Generate","is_public":true,"store_dir":"/nix/store","priority":41,"upstream_cache_key_names":[]}' \
    "$url/_api/v1/cache-config/load"
export AWS_ACCESS_KEY_ID=GKload0000000000000000000 AWS_SECRET_ACCESS_KEY=load-secret-0000000000000000000000000000
"$larder" s3 key import "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" -n load --data-dir "$work/data" >/dev/null
"$larder" s3 key allow load --bucket '*' --read --write --owner --data-dir "$work/data" >/dev/null

# What is there to read: 40 paths of 16 KiB to 1 MiB.
bench_nix_env "$work"
echo "machine 127.0.0.1 password $token" >"$work/netrc"
seeds=()
for i in $(seq 40); do
    head -c $(((i % 8 + 1) * 128 * 1024)) /dev/urandom >"$work/seed-$i"
    seeds+=("$(nix-store --store "$work/store" --add "$work/seed-$i")")
done
nix copy --from "$work/store" --to "$url/load?compression=zstd" \
    --option netrc-file "$work/netrc" "${seeds[@]}" 2>/dev/null
: >"$work/hits"
: >"$work/nars"
for p in "${seeds[@]}"; do
    h=$(basename "$p" | cut -c1-32)
    echo "/load/$h.narinfo" >>"$work/hits"
    echo "/load/$(curl -sS --fail "$url/load/$h.narinfo" | sed -n 's/^URL: //p')" >>"$work/nars"
done
python3 -c 'import random; a="0123456789abcdfghijklmnpqrsvwxyz"; [print("/load/" + "".join(random.choice(a) for _ in range(32)) + ".narinfo") for _ in range(200)]' >"$work/misses"

# Pushers: fresh paths, one `nix copy` after another, until the time is up.
pusher() { # N
    local n=$1 i=0 ok=0 failed=0 end=$((SECONDS + secs)) p
    while [ "$SECONDS" -lt "$end" ]; do
        i=$((i + 1))
        head -c 65536 /dev/urandom >"$work/push-$n-$i"
        p=$(nix-store --store "$work/pstore-$n" --add "$work/push-$n-$i")
        if nix copy --from "$work/pstore-$n" --to "$url/load?compression=zstd" \
            --option netrc-file "$work/netrc" "$p" 2>>"$work/push-errors"; then
            ok=$((ok + 1))
        else
            failed=$((failed + 1))
        fi
    done
    echo "$ok $failed" >"$work/pusher-$n"
}

echo "load: 256 clients for ${secs} s..." >&2
wrk_run() { # NAME CONNECTIONS STATUS FILE
    wrk -t1 -c"$2" -d"${secs}s" --timeout 10s -s bench/load.lua "$url" -- "$3" "$work/$4" \
        >"$work/wrk-$1" 2>&1
}
wrk_run hits 176 200 hits &
w1=$!
wrk_run misses 48 404 misses &
w2=$!
wrk_run nars 24 200 nars &
w3=$!
pushers=()
for n in 1 2 3 4; do
    pusher "$n" &
    pushers+=("$!")
done
"$py" bench/load_s3.py "http://127.0.0.1:$s3port" load "4" "$secs" >"$work/s3" 2>"$work/s3-errors" &
s3pid=$!
wait "$w1" "$w2" "$w3" "$s3pid" "${pushers[@]}"
rss_peak_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$lpid/status")

echo "idle: $idle keep-alive connections held ${hold} s..." >&2
"$py" bench/idle_conns.py 127.0.0.1 "$port" "$idle" "$hold" >"$work/idle"
fds_after=$(find "/proc/$lpid/fd" -mindepth 1 -maxdepth 1 | wc -l)
nofile=$(awk '/^Max open files/ {print $4}' "/proc/$lpid/limits")
kill -0 "$lpid"

val() { awk -v k="$2" '$1 == k {print $2}' "$work/$1"; }
errors=0
pushed=0
push_failed=0
for n in 1 2 3 4; do
    read -r ok failed <"$work/pusher-$n"
    pushed=$((pushed + ok))
    push_failed=$((push_failed + failed))
done
for f in hits misses nars; do
    errors=$((errors + $(val "wrk-$f" wrong_status) + $(val "wrk-$f" socket_errors)))
done
errors=$((errors + push_failed + $(val s3 failures)))
opened=$(val idle opened)
idle_missed=$(( (idle - opened) + (opened - $(val idle first_ok)) + (opened - $(val idle second_ok)) + (1 - $(val idle fresh_ok)) ))

cat <<OUT

| clients | what | answered | wrong or failed | p50 ms | p99 ms | max ms |
|---|---|---|---|---|---|---|
| 176 | narinfo hits (200) | $(val wrk-hits answered) | $(( $(val wrk-hits wrong_status) + $(val wrk-hits socket_errors) )) | $(val wrk-hits p50_ms) | $(val wrk-hits p99_ms) | $(val wrk-hits max_ms) |
| 48 | narinfo misses (404) | $(val wrk-misses answered) | $(( $(val wrk-misses wrong_status) + $(val wrk-misses socket_errors) )) | $(val wrk-misses p50_ms) | $(val wrk-misses p99_ms) | $(val wrk-misses max_ms) |
| 24 | NAR downloads (200) | $(val wrk-nars answered) | $(( $(val wrk-nars wrong_status) + $(val wrk-nars socket_errors) )) | $(val wrk-nars p50_ms) | $(val wrk-nars p99_ms) | $(val wrk-nars max_ms) |
| 4 | \`nix copy\` pushes | $pushed | $push_failed | | | |
| 4 | S3 put + get (checked) + list | $(val s3 operations) | $(val s3 failures) | | | |

${secs} s; peak RSS $((rss_peak_kib / 1024)) MiB (goal <= 256); errors $errors (goal 0).
Idle keep-alive connections: $(val idle opened) of $idle opened, $(val idle first_ok) answered, held ${hold} s, $(val idle second_ok) answered again, a fresh connection answered: $(val idle fresh_ok); open files of larder after: $fds_after (its soft limit: $nofile, started at 1024).
OUT
if [ "$errors" -ne 0 ] || [ "$idle_missed" -ne 0 ]; then
    echo "errors seen: see $work (kept)" >&2
    head -5 "$work/push-errors" "$work/s3-errors" >&2 || true
    trap - EXIT
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    exit 1
fi
