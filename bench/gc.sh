#!/usr/bin/env bash
# The GC benchmark (docs/benchmarks.md): a synthetic store of a million chunks
# (bench/gc_synth.rs), 30 % of its paths deleted; a GC pass on a running server
# under narinfo load, against the same load without GC; then steady-state churn
# with real chunking (stored ÷ live bytes, compaction throughput).
#
#   bash bench/gc.sh              # 10^6 chunks (about 5 min after the build)
#   bash bench/gc.sh --quick      # 10^5 chunks, shorter load
#   bash bench/gc.sh --no-build   # use the existing release binaries
#
# Results: bench/.work/gc/ (gc.json, wrk-*.txt, churn.txt, summary.txt).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

chunks=1000000
per_nar=1000
secs=10
rounds=40
build=1
for a in "$@"; do
    case "$a" in
        --quick) chunks=100000; secs=4; rounds=12 ;;
        --no-build) build=0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_packages wrk curl python3 procps

if [ "$build" = 1 ]; then
    cargo build --release --locked --bin larder --example gc_synth
fi
bin=target/release/larder
synth=target/release/examples/gc_synth

work=bench/.work/gc
rm -rf "$work"
mkdir -p "$work"

echo "== a store of $chunks chunks in NARs of $per_nar, 30 % of the paths deleted"
/usr/bin/time -f "%e s, %M KiB peak" "$synth" fill "$work/data" "$chunks" "$per_nar" 30
sed 's|^|/bench/|; s|$|.narinfo|' "$work/data/paths.txt" >"$work/urls.txt"

"$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 100); do
    url=$(sed -n 's/^larder listening on //p' "$work/serve.out" | head -n 1)
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "$url" ] || { echo "larder did not start:" >&2; cat "$work/serve.err" >&2; exit 1; }
token=$(cat "$work/data/admin.token")
status() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; }

echo "== narinfo load without GC: wrk -t2 -c16 -d${secs}s"
wrk -t2 -c16 -d"${secs}s" --latency -s bench/narinfo.lua "$url" -- "$work/urls.txt" >"$work/wrk-idle.txt"

echo "== how long a pass takes (dry run)"
"$bin" gc --dry-run --json --server "$url" --token "$token" >"$work/gc-dry.json"
dry_ms=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["duration_ms"])' "$work/gc-dry.json")
load_secs=$(( dry_ms / 1000 + 3 ))

echo "== the pass under narinfo load: wrk -t2 -c16 -d${load_secs}s"
echo 5 >"/proc/$pid/clear_refs"
rss_before=$(status VmRSS)
wrk -t2 -c16 -d"${load_secs}s" --latency -s bench/narinfo.lua "$url" -- "$work/urls.txt" >"$work/wrk-gc.txt" &
wrk_pid=$!
sleep 1
"$bin" gc --json --server "$url" --token "$token" >"$work/gc.json"
wait "$wrk_pid"
hwm=$(status VmHWM)
kill "$pid"
wait "$pid" 2>/dev/null || true
trap - EXIT

echo "== steady-state churn: $rounds rounds of 8 NARs of 1 MiB in, 8 out, a pass each"
"$synth" churn "$work/churn" "$rounds" >"$work/churn.txt"

python3 - "$work" "$rss_before" "$hwm" <<'PY' | tee "$work/summary.txt"
import json, re, sys
work, rss_before, hwm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def p99(name):
    text = open(f"{work}/{name}").read()
    m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1, "s": 1000}[u]
def rps(name):
    return float(re.search(r"Requests/sec:\s+([\d.]+)", open(f"{work}/{name}").read()).group(1))
g = json.load(open(f"{work}/gc.json"))
churn = open(f"{work}/churn.txt").read().strip().splitlines()[-1]
print(f"chunks reclaimed:            {g['chunks_reclaimed']}")
print(f"mark + sweep:                {g['mark_sweep_ms'] / 1000:.2f} s (goal <= 60 s)")
print(f"whole pass:                  {g['duration_ms'] / 1000:.2f} s, {g['packs_compacted']} packs compacted")
print(f"extra peak RSS in the pass:  {(hwm - rss_before) / 1024:.1f} MiB (VmHWM {hwm / 1024:.1f} MiB, RSS before {rss_before / 1024:.1f} MiB; goal <= 128 MiB)")
idle, busy = p99("wrk-idle.txt"), p99("wrk-gc.txt")
print(f"narinfo p99 without GC:      {idle:.2f} ms ({rps('wrk-idle.txt'):.0f} req/s)")
print(f"narinfo p99 during GC:       {busy:.2f} ms ({rps('wrk-gc.txt'):.0f} req/s); ratio {busy / idle:.2f} (goal <= 2)")
print(f"churn: {churn}")
PY
