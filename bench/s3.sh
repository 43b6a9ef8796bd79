#!/usr/bin/env bash
# larder's S3 API against Garage 2.5, side by side on this machine: single node,
# 127.0.0.1 only, same data, same clients (curl with presigned URLs for bodies,
# wrk for request rates, boto3 for listing walks).
#
#   bash bench/s3.sh                  # build larder (release), install what is missing, run
#   bash bench/s3.sh --no-build       # use target/release/larder as it is
#   bash bench/s3.sh --garage-fsync   # also run Garage with data_fsync and metadata_fsync on
#
# Measures: PUT and GET throughput of 64 MiB objects with 1 and 8 streams; 4 KiB
# GETs per second at 32 connections; ListObjectsV2 over 10k keys (pages per
# second for a 1000-key page, and a full walk). Every PUT carries content neither
# server has seen, so larder's dedup cannot help it. Results:
# bench/.work/s3/results-<timestamp>.json and a table on stdout; see the S3
# section of docs/benchmarks.md.
#
# Garage comes from `cargo install garage --locked --version 2.5.0` (10-25 min
# on 2 cores, once; set CARGO_TARGET_DIR to keep it out of target/).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

build=1
garage_fsync=0
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        --garage-fsync) garage_fsync=1 ;;
        *) echo "unknown argument $a" >&2; exit 2 ;;
    esac
done

# ---- tools ----
# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_packages wrk curl python3-venv procps
if ! command -v garage >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/garage" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! garage --version >/dev/null 2>&1; then
    cargo install garage --locked --version 2.5.0
fi
venv=target/test-venv
if ! "$venv/bin/python3" -c 'import boto3' >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet boto3
fi
py="$root/$venv/bin/python3"
if [ "$build" = 1 ]; then
    cargo build --release
fi
larder_bin="$root/target/release/larder"

work="$root/bench/.work/s3"
rm -rf "$work/run"
mkdir -p "$work/run" "$work/data"
run="$work/run"

# ---- fixed credentials, imported into both servers ----
key_id=GK31c2f218a2e44f485b94239e
secret=b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835
export AWS_ACCESS_KEY_ID=$key_id AWS_SECRET_ACCESS_KEY=$secret
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

# ---- data: distinct 64 MiB files, so no PUT repeats content ----
big_streams1=4
big_streams8=8
nfiles=$(( 2 * (big_streams1 + big_streams8) ))
for i in $(seq 1 "$nfiles"); do
    f="$work/data/obj$i.bin"
    [ -s "$f" ] || head -c 64M /dev/urandom > "$f"
done

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

declare -A EP REG CFG PID

start_larder() {
    local dir="$run/larder"
    mkdir -p "$dir"
    "$larder_bin" serve --data-dir "$dir/data" --listen 127.0.0.1:39110 \
        --s3-listen 127.0.0.1:39111 >"$dir/stdout" 2>"$dir/stderr" &
    pids+=($!)
    PID[larder]=$!
    for _ in $(seq 100); do
        grep -q "larder listening" "$dir/stdout" 2>/dev/null && break
        sleep 0.1
    done
    "$larder_bin" s3 key import "$key_id" "$secret" -n bench --data-dir "$dir/data" >/dev/null
    "$larder_bin" s3 key allow bench --bucket '*' --read --write --owner --data-dir "$dir/data" >/dev/null
    EP[larder]=http://127.0.0.1:39111 REG[larder]=larder CFG[larder]=""
}

start_garage() { # NAME FSYNC(true|false) PORT_BASE
    local name=$1 fs=$2 base=$3 dir="$run/$1"
    mkdir -p "$dir"
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
metadata_fsync = $fs
data_fsync = $fs
rpc_bind_addr = "127.0.0.1:$((base + 1))"
rpc_public_addr = "127.0.0.1:$((base + 1))"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$base"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((base + 3))"
admin_token = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
EOF
    local g=(garage -c "$dir/garage.toml")
    "${g[@]}" server >"$dir/stdout" 2>"$dir/stderr" &
    pids+=($!)
    PID[$name]=$!
    for _ in $(seq 150); do
        "${g[@]}" status >/dev/null 2>&1 && break
        sleep 0.2
    done
    local id
    id=$("${g[@]}" node id -q | cut -d@ -f1)
    "${g[@]}" layout assign -z dc1 -c 10G "$id" >/dev/null
    "${g[@]}" layout apply --version 1 >/dev/null
    "${g[@]}" key import "$key_id" "$secret" -n bench --yes >/dev/null
    EP[$name]=http://127.0.0.1:$base REG[$name]=garage CFG[$name]="$dir/garage.toml"
}

use() { endpoint=${EP[$1]} region=${REG[$1]} cfg=${CFG[$1]} pid=${PID[$1]}; }

now() { date +%s.%N; }

# A bucket: through the S3 API on larder; with Garage's CLI, which also allows
# the key on it.
mkbucket() {
    if [ "$region" = garage ]; then
        for _ in $(seq 50); do
            garage -c "$cfg" bucket create "$1" >/dev/null 2>&1 && break
            sleep 0.2
        done
        garage -c "$cfg" bucket allow --read --write --owner "$1" --key "$key_id" >/dev/null
    else
        "$py" bench/s3.py "$endpoint" "$region" mkbucket "$1"
    fi
}

presign() { # METHOD BUCKET FIRST N: presigned URLs for objects objFIRST.., one per line
    local keys=()
    for i in $(seq "$3" $(($3 + $4 - 1))); do keys+=("obj$i"); done
    "$py" bench/s3.py "$endpoint" "$region" presign "$1" "$2" "${keys[@]}"
}

# Move N 64 MiB objects, one after another (STREAMS=1) or all at once; URLs are
# presigned beforehand, so only the transfers are timed. Prints MB/s.
transfer() { # put|get BUCKET FIRST N STREAMS
    local op=$1 bucket=$2 first=$3 n=$4 streams=$5 urls=()
    mapfile -t urls < <(presign "$( [ "$op" = put ] && echo PUT || echo GET )" "$bucket" "$first" "$n")
    one() {
        if [ "$op" = put ]; then
            curl -sS --fail -o /dev/null -H 'Expect:' -X PUT \
                --upload-file "$work/data/obj$((first + $1)).bin" "${urls[$1]}"
        else
            curl -sS --fail -o /dev/null "${urls[$1]}"
        fi
    }
    local t0 t1 ps=()
    t0=$(now)
    for j in $(seq 0 $((n - 1))); do
        if [ "$streams" = 1 ]; then
            one "$j"
        else
            one "$j" &
            ps+=($!)
        fi
    done
    for p in "${ps[@]}"; do wait "$p"; done
    t1=$(now)
    python3 -c "print(round($n * 64 * 1.048576 / ($t1 - $t0), 1))"
}

wrk_rps() { # URLFILE CONNECTIONS SECONDS
    local first
    first=$(head -1 "$1")
    URLS=$1 wrk -t1 -c"$2" -d"$3"s --latency -s bench/s3_urls.lua "$first" >"$run/wrk.$$.out" 2>"$run/wrk.$$.err"
    if [ -s "$run/wrk.$$.err" ]; then
        echo "wrk saw errors: $(sort "$run/wrk.$$.err" | uniq -c | head -3)" >&2
    fi
    cp "$run/wrk.$$.out" "$run/wrk-$(basename "$1").out"
    awk '/Requests\/sec/ {print $2}' "$run/wrk.$$.out"
}

add() { eval "$1[\$2]+=\" \$3\""; } # add ARRAY NAME VALUE

declare -A P1 P8 G1 G8 RPS LPS WALK LOAD
names=(larder garage)
echo "== larder ($larder_bin) and $(garage --version | head -1)"
start_larder
start_garage garage false 39100
if [ "$garage_fsync" = 1 ]; then
    start_garage garage-fsync true 39130
    names+=(garage-fsync)
fi

# Every measurement runs against each server in turn, repetition by repetition,
# so that load from elsewhere on the machine falls on all of them alike.
for n in "${names[@]}"; do
    use "$n"
    mkbucket big
    mkbucket small
    mkbucket keys10k
    "$py" bench/s3.py "$endpoint" "$region" put-small small s/ 200 4096 16
    keys=()
    for i in $(seq 0 199); do keys+=("$(printf 's/%06d' "$i")"); done
    "$py" bench/s3.py "$endpoint" "$region" presign GET small "${keys[@]}" >"$run/$n-small.urls"
done
echo "== PUT and GET of 64 MiB objects"
for rep in 0 1; do
    base=$((1 + rep * (big_streams1 + big_streams8)))
    for n in "${names[@]}"; do
        use "$n"
        add P1 "$n" "$(transfer put big "$base" "$big_streams1" 1)"
        add P8 "$n" "$(transfer put big $((base + big_streams1)) "$big_streams8" 8)"
    done
done
for _ in 1 2 3; do
    for n in "${names[@]}"; do
        use "$n"
        add G1 "$n" "$(transfer get big 1 "$big_streams1" 1)"
        add G8 "$n" "$(transfer get big $((1 + big_streams1)) "$big_streams8" 8)"
    done
done
echo "== 4 KiB GETs at 32 connections"
for n in "${names[@]}"; do wrk_rps "$run/$n-small.urls" 32 3 >/dev/null; done
for _ in 1 2 3; do
    for n in "${names[@]}"; do add RPS "$n" "$(wrk_rps "$run/$n-small.urls" 32 10)"; done
done
echo "== ListObjectsV2 over 10k keys"
for n in "${names[@]}"; do
    use "$n"
    t0=$(now)
    "$py" bench/s3.py "$endpoint" "$region" put-small keys10k k/ 10000 16 16
    t1=$(now)
    add LOAD "$n" "$(python3 -c "print(round($t1 - $t0, 1))")"
    "$py" bench/s3.py "$endpoint" "$region" presign-list keys10k 1000 >"$run/$n-list.urls"
done
for _ in 1 2 3; do
    for n in "${names[@]}"; do
        use "$n"
        add LPS "$n" "$(wrk_rps "$run/$n-list.urls" 4 10)"
        add WALK "$n" "$("$py" bench/s3.py "$endpoint" "$region" list-walk keys10k 1 | cut -d' ' -f1)"
    done
done
for n in "${names[@]}"; do
    use "$n"
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    python3 - "$run/$n.json" <<EOF
import json, statistics, sys
m = lambda s: statistics.median(float(x) for x in s.split())
json.dump({
    "put_64mib_1_stream_mb_s": m("${P1[$n]}"),
    "put_64mib_8_streams_mb_s": m("${P8[$n]}"),
    "get_64mib_1_stream_mb_s": m("${G1[$n]}"),
    "get_64mib_8_streams_mb_s": m("${G8[$n]}"),
    "get_4kib_req_s_32_conns": m("${RPS[$n]}"),
    "list_v2_1000_key_pages_s": m("${LPS[$n]}"),
    "list_v2_walk_10k_keys_s": m("${WALK[$n]}"),
    "put_10k_small_keys_16_threads_s": m("${LOAD[$n]}"),
    "peak_rss_mib": round(int("$rss") / 1024),
    "raw": {"put1": "${P1[$n]}", "put8": "${P8[$n]}", "get1": "${G1[$n]}", "get8": "${G8[$n]}",
            "rps": "${RPS[$n]}", "lps": "${LPS[$n]}", "walk": "${WALK[$n]}"},
}, open(sys.argv[1], "w"), indent=1)
EOF
done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
python3 - "$run" "$work/results-$stamp.json" <<'EOF'
import json, os, sys
run, out = sys.argv[1:]
res = {n[:-5]: json.load(open(os.path.join(run, n))) for n in sorted(os.listdir(run)) if n.endswith(".json")}
json.dump(res, open(out, "w"), indent=1)
rows = [
    ("PUT 64 MiB, 1 stream (MB/s)", "put_64mib_1_stream_mb_s", True),
    ("PUT 64 MiB, 8 streams (MB/s)", "put_64mib_8_streams_mb_s", True),
    ("GET 64 MiB, 1 stream (MB/s)", "get_64mib_1_stream_mb_s", True),
    ("GET 64 MiB, 8 streams (MB/s)", "get_64mib_8_streams_mb_s", True),
    ("GET 4 KiB, 32 conns (req/s)", "get_4kib_req_s_32_conns", True),
    ("ListObjectsV2 1000-key page (pages/s)", "list_v2_1000_key_pages_s", True),
    ("ListObjectsV2 walk of 10k keys (s)", "list_v2_walk_10k_keys_s", False),
    ("PUT 10k 16-byte keys, 16 threads (s)", "put_10k_small_keys_16_threads_s", False),
    ("peak RSS (MiB)", "peak_rss_mib", False),
]
others = [n for n in res if n != "larder"]
print("\n%-40s %10s " % ("", "larder") + " ".join("%14s %7s" % (o, "ratio") for o in others))
for label, k, higher in rows:
    l = res["larder"][k]
    cells = []
    for o in others:
        g = res[o][k]
        ratio = (l / g if higher else g / l) if l and g else float("nan")
        cells.append("%14s %6.2fx" % (g, ratio))
    print("%-40s %10s " % (label, l) + " ".join(cells))
print("\nratio: larder relative to the other (above 1 means larder is better)")
print("results:", out)
EOF
