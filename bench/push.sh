#!/usr/bin/env bash
# Client and auth benchmarks (issue #3), on this machine over 127.0.0.1 only:
#
# 1. `larder push -j 4` of a closure of several hundred paths, against
#    `nix copy --to http://larder/...?compression=zstd` of the same closure, each
#    into a fresh server (fresh data dir, so neither run benefits from dedup).
# 2. narinfo lookups per second with wrk (64 connections): anonymous reads of a
#    public cache, against a scoped token on every request (public and private
#    cache). Goal: verifying a token costs at most 10%. Also the server's CPU
#    time per request, and the token check alone (bench/token_cost.rs).
#
#   bash bench/push.sh               # full run (a few minutes on 2 cores)
#   bash bench/push.sh --quick       # fewer paths, shorter wrk runs
#   bash bench/push.sh --no-build    # use the existing target/release/larder
#
# Results: bench/.work/push/results/<timestamp>/summary.txt (plus raw logs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

paths=400
reps=3
wrk_reps=5
wrk_secs=8
build=1
for a in "$@"; do
    case "$a" in
        --quick) paths=150; reps=1; wrk_reps=1; wrk_secs=4 ;;
        --no-build) build=0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_packages nix-bin wrk curl python3

if [ "$build" = 1 ]; then
    cargo build --release --locked --bin larder --example token_cost
fi
larder=$PWD/target/release/larder

work=$PWD/bench/.work/push
results=$work/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$work" "$results"
unset NIX_REMOTE
export NIX_CONFIG='build-users-group =
sandbox = false
sandbox-paths = /bin /usr /lib /lib64
experimental-features = nix-command
substituters =
trusted-public-keys =
require-sigs = true
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0
max-jobs = 2'
export XDG_CACHE_HOME=$work/xdg-cache XDG_CONFIG_HOME=$work/xdg-config
export NIX_USER_CONF_FILES=$work/none.conf NIX_CONF_DIR=$work/etc-nix
mkdir -p "$XDG_CACHE_HOME" "$XDG_CONFIG_HOME" "$NIX_CONF_DIR"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# -- the closure: $paths leaves of 1-64 KiB pseudo-random data (plus a little
# text so they compress like real files), groups of 20 linking to them, one top.
store=$work/store-$paths
cat > "$work/closure.nix" <<'EOF'
{ n, salt }:
let
  mk = name: script: builtins.derivation {
    inherit name salt; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" script ]; PATH = "/usr/bin:/bin";
  };
  leaf = i: mk "leaf-${toString i}" ''
    head -c $(( (${toString i} * 7919 % 64 + 1) * 1024 )) /dev/urandom > $out.tmp
    seq 1 $(( ${toString i} * 13 % 2000 )) >> $out.tmp
    mv $out.tmp $out
  '';
  leaves = builtins.genList leaf n;
  group = g: mk "group-${toString g}" ("mkdir $out && cd $out && "
    + builtins.concatStringsSep " && " (builtins.genList
        (j: "ln -s ${builtins.elemAt leaves (g * 20 + j)} l${toString j}") 20));
  groups = builtins.genList group (n / 20);
in mk "top" ("mkdir $out && echo " + builtins.concatStringsSep " " (map toString groups) + " > $out/groups")
EOF
echo "== building a closure of $paths leaves into $store"
top=$(nix-build "$work/closure.nix" --store "$store" --arg n "$paths" --argstr salt "push-bench-$paths" --no-out-link 2>"$results/build.log" | tail -1)
count=$(nix-store --store "$store" -qR "$top" | wc -l)
nar_bytes=$(nix path-info --store "$store" --json --recursive "$top" | python3 -c 'import json,sys; print(sum(p["narSize"] for p in json.load(sys.stdin)))')
echo "   $count paths, $nar_bytes NAR bytes"

start_server() { # DIR -> sets url, token
    local dir=$1
    rm -rf "$dir"
    mkdir -p "$dir"
    "$larder" serve --data-dir "$dir/data" --listen 127.0.0.1:0 >"$dir/stdout" 2>"$dir/stderr" &
    pids+=($!)
    for _ in $(seq 100); do
        grep -q '^larder listening on' "$dir/stdout" 2>/dev/null && break
        sleep 0.1
    done
    url=$(sed -n 's/^larder listening on //p' "$dir/stdout")
    token=$(cat "$dir/data/admin.token")
}
stop_server() {
    local last=$(( ${#pids[@]} - 1 ))
    kill "${pids[$last]}" 2>/dev/null || true
    wait "${pids[$last]}" 2>/dev/null || true
    unset "pids[$last]"
}
now() { date +%s.%N; }

echo "== push: larder push -j 4 vs nix copy (zstd), $reps run(s) each, fresh server each"
for r in $(seq "$reps"); do
    start_server "$work/srv"
    LARDER_TOKEN=$token "$larder" cache create bench --server "$url" >/dev/null
    t0=$(now)
    LARDER_TOKEN=$token "$larder" push bench --server "$url" --store "$store" -j 4 "$top" --json \
        >"$results/larder-push-$r.json" 2>"$results/larder-push-$r.log"
    t1=$(now)
    echo "larder_push $(echo "$t1 - $t0" | bc)" | tee -a "$results/times.txt"
    stop_server

    start_server "$work/srv"
    LARDER_TOKEN=$token "$larder" cache create bench --server "$url" >/dev/null
    echo "machine 127.0.0.1 password $token" >"$work/netrc"
    t0=$(now)
    nix copy --from "$store" --to "$url/bench?compression=zstd" --option netrc-file "$work/netrc" "$top" \
        2>"$results/nix-copy-$r.log"
    t1=$(now)
    echo "nix_copy $(echo "$t1 - $t0" | bc)" | tee -a "$results/times.txt"
    stop_server
done

echo "== narinfo lookups: wrk -c64 -t2 -d${wrk_secs}s, anonymous vs a scoped token"
start_server "$work/srv"
LARDER_TOKEN=$token "$larder" cache create team-pub --public --server "$url" >/dev/null
LARDER_TOKEN=$token "$larder" cache create team-priv --server "$url" >/dev/null
for c in team-pub team-priv; do
    LARDER_TOKEN=$token "$larder" push "$c" --server "$url" --store "$store" -j 4 "$top" >/dev/null 2>&1
done
scoped=$("$larder" token create --server "$url" --token "$token" --sub bench --validity 1d \
    --pull 'team-*' --push 'team-ci-*' --pull 'other-*')
nix-store --store "$store" -qR "$top" | cut -c12-43 | sed 's/$/.narinfo/' >"$work/hashes.txt"
for c in team-pub team-priv; do
    sed "s|^|/$c/|" "$work/hashes.txt" >"$work/urls-$c.txt"
done
cat >"$work/narinfo.lua" <<'EOF'
local threads = 0
function setup(thread) threads = threads + 1; thread:set("no", threads) end
local urls, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do urls[#urls + 1] = line end
  i = ((no or 1) * 7919) % #urls
end
function request()
  i = i % #urls + 1
  return wrk.format("GET", urls[i])
end
function done(summary, latency, requests)
  io.write(string.format("non2xx=%d\n", summary.errors.status))
end
EOF
# Sanity: every URL answers 200 as each kind of caller.
curl -sf -o /dev/null "$url$(head -1 "$work/urls-team-pub.txt")"
curl -sf -o /dev/null -H "Authorization: Bearer $scoped" "$url$(head -1 "$work/urls-team-priv.txt")"
server_pid=${pids[$(( ${#pids[@]} - 1 ))]}
cpu_ticks() { # utime + stime of the server, in clock ticks
    awk '{print $14 + $15}' "/proc/$server_pid/stat"
}
# Throughput on a shared 2-core machine swings with whatever else runs; the
# server's CPU time per request (from /proc) is the steadier measure of cost.
run_wrk() { # NAME URLFILE [HEADER]
    local name=$1 file=$2
    shift 2
    local c0 c1
    c0=$(cpu_ticks)
    wrk -t2 -c64 -d"${wrk_secs}s" "$@" -s "$work/narinfo.lua" "$url" -- "$file" >"$results/wrk-$name.txt"
    c1=$(cpu_ticks)
    local rps non reqs
    rps=$(awk '/Requests\/sec/ {print $2}' "$results/wrk-$name.txt")
    reqs=$(awk '/requests in/ {print $1}' "$results/wrk-$name.txt")
    non=$(sed -n 's/^non2xx=//p' "$results/wrk-$name.txt")
    echo "$name $rps non2xx=$non cpu_ns=$(( (c1 - c0) * 1000000000 / $(getconf CLK_TCK) / reqs ))" | tee -a "$results/rps.txt"
}
for r in $(seq "$wrk_reps"); do
    run_wrk "anon-public-$r" "$work/urls-team-pub.txt"
    run_wrk "token-public-$r" "$work/urls-team-pub.txt" -H "Authorization: Bearer $scoped"
    run_wrk "token-private-$r" "$work/urls-team-priv.txt" -H "Authorization: Bearer $scoped"
done
stop_server

# The token check alone, in-process (bench/token_cost.rs).
if [ -x target/release/examples/token_cost ]; then
    target/release/examples/token_cost >"$results/token-cost.txt"
fi

python3 - "$results" "$count" "$nar_bytes" <<'EOF' | tee "$results/summary.txt"
import json, statistics, sys, pathlib
res, count, nar = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
times = {}
for line in (res / "times.txt").read_text().split("\n"):
    if line.strip():
        k, v = line.split()
        times.setdefault(k, []).append(float(v))
rps, cpu = {}, {}
for line in (res / "rps.txt").read_text().split("\n"):
    if line.strip():
        name, v, non, us = line.split()
        assert non == "non2xx=0", line
        rps.setdefault(name.rsplit("-", 1)[0], []).append(float(v))
        cpu.setdefault(name.rsplit("-", 1)[0], []).append(float(us.split("=")[1]) / 1000)
lp, nc = statistics.median(times["larder_push"]), statistics.median(times["nix_copy"])
print(f"closure: {count} paths, {nar/2**20:.1f} MiB of NARs")
print(f"larder push -j 4 : {lp:6.2f} s  ({nar/2**20/lp:6.1f} MiB/s)  runs {times['larder_push']}")
print(f"nix copy (zstd)  : {nc:6.2f} s  ({nar/2**20/nc:6.1f} MiB/s)  runs {times['nix_copy']}")
print(f"push speed-up    : {nc/lp:.2f}x")
a, ac = statistics.median(rps["anon-public"]), statistics.median(cpu["anon-public"])
print(f"narinfo/s anon-public   : {a:9.0f}  server CPU {ac:5.2f} us/request  runs {rps['anon-public']} {cpu['anon-public']}")
for k in ("token-public", "token-private"):
    t, tc = statistics.median(rps[k]), statistics.median(cpu[k])
    print(f"narinfo/s {k:14s}: {t:9.0f}  server CPU {tc:5.2f} us/request  runs {rps[k]} {cpu[k]}")
    print(f"   cost vs anonymous: throughput {100*(1-t/a):5.1f}%, server CPU per request {100*(tc/ac-1):5.1f}% (goal <= 10%)")
tc = res / "token-cost.txt"
if tc.exists():
    print("in-process token check (bench/token_cost.rs):")
    print("   " + tc.read_text().strip().replace("\n", "\n   "))
s = json.loads((res / "larder-push-1.json").read_text())
print(f"larder push summary (run 1): {s}")
EOF
