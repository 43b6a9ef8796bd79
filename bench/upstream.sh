#!/usr/bin/env bash
# The pull-through cache (docs/design/upstreams.md), on this machine over
# 127.0.0.1 only. One big path (half random bytes, half `yes`) is copied into a
# binary cache with `nix copy --to file://…?compression=$compression`, signed, and
# served by nginx (the upstream, as cache.nixos.org serves it). Then, each into a
# fresh client store with `nix-store -r`:
#
#   direct   from the upstream itself (Nix downloads and decompresses)
#   first    through larder, a fresh data dir each time (larder fetches,
#            decompresses, checks, chunks and stores while streaming to Nix)
#   repeat   through the same larder again (now served from its store)
#   local    from a plain larder cache the same path was pushed to
#
# Goals: first >= 0.9x direct (throughput); repeat about local.
#
#   bash bench/upstream.sh                    # 256 MiB path, xz, 3 rounds
#   bash bench/upstream.sh --quick            # 64 MiB path, 1 round
#   bash bench/upstream.sh --compression=zstd # what newer caches serve
#   bash bench/upstream.sh --no-build         # use the existing target/release/larder
#
# Results: bench/.work/upstream/results/<timestamp>/summary.txt (plus logs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

mib=256
reps=3
build=1
compression=xz
for a in "$@"; do
    case "$a" in
        --quick) mib=64; reps=1 ;;
        --no-build) build=0 ;;
        --compression=*) compression=${a#--compression=} ;;
        --mib=*) mib=${a#--mib=} ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_packages nix-bin nginx-light curl python3 time
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${sudo_cmd[@]}" systemctl stop nginx 2>/dev/null || true
fi
export PATH="$PATH:/usr/sbin:/sbin"

if [ "$build" = 1 ]; then
    cargo build --release --locked --bin larder
fi
larder=$PWD/target/release/larder

work=$PWD/bench/.work/upstream
results=$work/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$work" "$results"
unset NIX_REMOTE
export NIX_CONFIG='build-users-group =
sandbox = false
experimental-features = nix-command
substituters =
trusted-public-keys =
require-sigs = true
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0'
export XDG_CACHE_HOME=$work/xdg-cache XDG_CONFIG_HOME=$work/xdg-config
export NIX_USER_CONF_FILES=$work/none.conf NIX_CONF_DIR=$work/etc-nix
mkdir -p "$XDG_CACHE_HOME" "$XDG_CONFIG_HOME" "$NIX_CONF_DIR"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

now() { date +%s.%N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# -- the path and the upstream cache (kept between runs of the same size).
src=$work/src-$mib
up=$work/www-$mib-$compression
keys=$work/keys
mkdir -p "$keys"
[ -s "$keys/sk" ] || nix-store --generate-binary-cache-key upstream-bench-1 "$keys/sk" "$keys/pk"
upstream_pk=$(cat "$keys/pk")
if [ ! -s "$work/path-$mib" ]; then
    blob=$work/blob-$mib
    head -c $((mib * 1048576 / 2)) /dev/urandom >"$blob"
    (set +o pipefail; yes | head -c $((mib * 1048576 / 2)) >>"$blob")
    nix-store --store "$src" --add "$blob" >"$work/path-$mib"
    rm -f "$blob"
fi
path=$(cat "$work/path-$mib")
if [ ! -s "$up/nix-cache-info" ]; then
    echo "writing the upstream cache ($compression, $mib MiB; xz takes minutes)..." >&2
    t0=$(now)
    nix copy --from "$src" --to "file://$up?compression=$compression&secret-key=$keys/sk" "$path"
    echo "  $(python3 -c "print(f'{$(now) - $t0:.1f}')") s" >&2
fi
nar_size=$(nix path-info --store "$src" --json "$path" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["narSize"])')

# -- nginx serving it.
ngx=$work/nginx
mkdir -p "$ngx/tmp"
ngx_port=$(free_port)
user=""
[ "$(id -u)" -eq 0 ] && user="user root;"
cat >"$ngx/nginx.conf" <<EOF
daemon off;
$user
worker_processes auto;
pid $ngx/nginx.pid;
error_log $ngx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nodelay on;
    client_body_temp_path $ngx/tmp;
    types { text/x-nix-narinfo narinfo; text/x-nix-cache-info nix-cache-info; }
    default_type application/octet-stream;
    server { listen 127.0.0.1:$ngx_port; root $up; }
}
EOF
nginx -p "$ngx/" -c "$ngx/nginx.conf" -e "$ngx/error.log" &
pids+=($!)
upstream=http://127.0.0.1:$ngx_port
for _ in $(seq 100); do curl -sf "$upstream/nix-cache-info" >/dev/null && break; sleep 0.05; done

# -- larder helpers.
start_larder() { # NAME -> sets url, token, lpid
    local d=$work/larder-$1
    rm -rf "$d"
    mkdir -p "$d"
    local port
    port=$(free_port)
    "$larder" serve --data-dir "$d/data" --listen "127.0.0.1:$port" >"$d/stdout" 2>"$results/larder-$1.log" &
    lpid=$!
    pids+=("$lpid")
    url=http://127.0.0.1:$port
    for _ in $(seq 200); do curl -sf "$url/_health" >/dev/null && break; sleep 0.05; done
    token=$(cat "$d/data/admin.token")
}
stop_larder() { kill "$lpid"; wait "$lpid" 2>/dev/null || true; }
cache_key() { # URL TOKEN CACHE
    "$larder" cache info "$3" --json --server "$1" --token "$2" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key"])'
}

# CPU seconds (user + system) a process has used so far.
cpu_of() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }

# fetch LABEL URL KEY: time `nix-store -r` of the path into a fresh store; the
# client's CPU seconds go to $results/cpu-LABEL.
fetch() {
    local dst=$work/dst
    rm -rf "$dst"
    local t0 t1
    t0=$(now)
    /usr/bin/time -f '%U %S' -a -o "$results/cpu-$1" \
        nix-store --store "$dst" -r "$path" --option substituters "$2" \
        --option trusted-public-keys "$3" >/dev/null 2>>"$results/nix.log"
    t1=$(now)
    python3 -c "print(f'{$t1 - $t0:.3f}')"
}

declare -A times
for r in $(seq "$reps"); do
    times[direct]+="$(fetch direct "$upstream" "$upstream_pk") "

    start_larder "proxy-$r"
    "$larder" cache create nixos --public --upstream "$upstream,$upstream_pk" \
        --server "$url" --token "$token" >/dev/null
    c0=$(cpu_of "$lpid")
    times[first]+="$(fetch first "$url/nixos" "$upstream_pk") "
    echo "larder CPU during the first fetch: $(python3 -c "print(f'{$(cpu_of "$lpid") - $c0:.2f}')") s" >>"$results/larder-cpu"
    # The path is committed once the (low-priority) ingest caught up.
    for _ in $(seq 600); do
        curl -sf "$url/nixos/$(basename "$path" | cut -c1-32).narinfo" | grep -q '^Compression: zstd' && break
        sleep 0.1
    done
    echo "larder CPU once stored: $(python3 -c "print(f'{$(cpu_of "$lpid") - $c0:.2f}')") s" >>"$results/larder-cpu"
    key=$(cache_key "$url" "$token" nixos)
    times[repeat]+="$(fetch repeat "$url/nixos" "$key") "
    stop_larder

    start_larder "local-$r"
    "$larder" cache create local --public --server "$url" --token "$token" >/dev/null
    printf 'machine 127.0.0.1 password %s\n' "$token" >"$work/netrc"
    nix copy --from "$src" --to "$url/local?compression=zstd" --option netrc-file "$work/netrc" "$path"
    key=$(cache_key "$url" "$token" local)
    times[local]+="$(fetch local "$url/local" "$key") "
    stop_larder
done

python3 - "$nar_size" "$mib" "$compression" "$reps" "${times[direct]}" "${times[first]}" "${times[repeat]}" "${times[local]}" <<'EOF' | tee "$results/summary.txt"
import statistics, sys
size, mib, comp, reps = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
names = ["direct", "first", "repeat", "local"]
runs = {n: [float(x) for x in a.split()] for n, a in zip(names, sys.argv[5:9])}
med = {n: statistics.median(v) for n, v in runs.items()}
print(f"one path, NarSize {size} bytes ({mib} MiB: half random, half `yes`); upstream {comp} behind nginx; {reps} round(s)")
print(f"{'nix-store -r into a fresh store':44} {'median':>8} {'MiB/s':>7}  runs")
labels = {
    "direct": "direct from the upstream",
    "first": "first fetch through larder",
    "repeat": "repeat fetch through larder",
    "local": "from a larder cache it was pushed to",
}
for n in names:
    rate = size / 1048576 / med[n]
    print(f"{labels[n]:44} {med[n]:7.2f}s {rate:7.1f}  {', '.join(f'{x:.2f}' for x in runs[n])}")
print(f"first/direct throughput: {med['direct'] / med['first']:.2f}x (goal >= 0.9)")
print(f"repeat/local throughput: {med['local'] / med['repeat']:.2f}x (goal about 1)")
EOF
for f in direct first repeat local; do
    echo "nix-store CPU (user system), $f: $(tr '\n' ';' <"$results/cpu-$f")" | tee -a "$results/summary.txt"
done
tee -a "$results/summary.txt" <"$results/larder-cpu"
