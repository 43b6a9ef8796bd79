#!/usr/bin/env bash
# What built-in TLS costs: one larder serving the same cache on its plain listener
# and on its HTTPS listener (static certificate, rustls), measured from 127.0.0.1.
#
#   bash bench/tls.sh               # build release larder, 512 MiB NAR, 5 rounds
#   bash bench/tls.sh --no-build    # use target/release/larder (or $LARDER)
#   bash bench/tls.sh --size-mib=N --rounds=N --wrk-secs=N
#
# Measures:
#   NAR download, one stream: curl to /dev/null, median MB/s over the rounds,
#     plain HTTP/1.1 vs HTTPS HTTP/1.1 vs HTTPS HTTP/2
#   narinfo requests/s: wrk -t2 -c64 on one narinfo, plain vs HTTPS (HTTP/1.1)
#   larder's CPU time per GiB sent, plain vs HTTPS (from /proc; unlike MB/s it
#     hardly depends on what else the machine is doing)
#   the same NAR bytes from nginx (OpenSSL, sendfile for plain) over plain HTTP and
#     HTTPS, as a reference for what TLS costs on this machine and client
# Goal (issue #5): TLS costs at most 30 % of the one-stream NAR throughput.
# Results go to stdout as a markdown table (docs/benchmarks.md, section "TLS").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=1 size_mib=512 rounds=5 wrk_secs=10
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        --size-mib=*) size_mib=${a#--size-mib=} ;;
        --rounds=*) rounds=${a#--rounds=} ;;
        --wrk-secs=*) wrk_secs=${a#--wrk-secs=} ;;
        *) echo "unknown argument $a" >&2; exit 2 ;;
    esac
done

# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_packages wrk nix-bin curl openssl python3 nginx-light

larder=${LARDER:-$PWD/target/release/larder}
if [ "$build" = 1 ] && [ -z "${LARDER:-}" ]; then
    cargo build --release --locked >&2
fi
unset NIX_REMOTE

work=$(mktemp -d "${TMPDIR:-/tmp}/larder-bench-tls.XXXXXX")
server_pid=""
cleanup() {
    if [ -f "$work/nginx.pid" ]; then
        kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    fi
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT


# A certificate for the benchmark only (the client is curl/wrk, not larder).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/key.pem" -out "$work/cert.pem" -days 2 -subj /CN=bench.example.test \
    -addext subjectAltName=DNS:bench.example.test,IP:127.0.0.1 2>/dev/null

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
plain_port=$(free_port)
tls_port=$(free_port)
cat >"$work/larder.toml" <<TOML
listen = "127.0.0.1:$plain_port"
[tls]
listen = "127.0.0.1:$tls_port"
cert_file = "$work/cert.pem"
key_file = "$work/key.pem"
redirect_exempt_cidrs = ["127.0.0.0/8"]
TOML
"$larder" serve --config "$work/larder.toml" --data-dir "$work/data" >"$work/stdout" 2>"$work/larder.log" &
server_pid=$!
for _ in $(seq 200); do
    grep -q "larder tls listening" "$work/stdout" 2>/dev/null && break
    sleep 0.05
done
grep -q "larder tls listening" "$work/stdout" || { cat "$work/larder.log" >&2; exit 1; }
plain="http://127.0.0.1:$plain_port"
tls="https://bench.example.test:$tls_port"
resolve=(--resolve "bench.example.test:$tls_port:127.0.0.1" --cacert "$work/cert.pem")
token=$(cat "$work/data/admin.token")

curl -sS --fail -o /dev/null -X POST -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' \
    -d '{"keypair":"Generate","is_public":true,"store_dir":"/nix/store","priority":41,"upstream_cache_key_names":[]}' \
    "$plain/_api/v1/cache-config/bench"

# One NAR of size_mib: half random bytes, half text, pushed with Nix as zstd.
bench_nix_env "$work"
path=$(mixed_nar_path "$work" "$size_mib")
echo "machine 127.0.0.1 password $token" >"$work/netrc"
nix copy --from "$work/store" --to "$plain/bench?compression=zstd" \
    --option netrc-file "$work/netrc" "$path" >&2
hash=$(basename "$path" | cut -c1-32)
narinfo="/bench/$hash.narinfo"
nar="/bench/$(curl -sS --fail "$plain$narinfo" | sed -n 's/^URL: //p')"
nar_bytes=$(curl -sS --fail -o /dev/null -w '%{size_download}' "$plain$nar")

download() { # url [curl args...] -> MB/s
    local url=$1
    shift
    curl -sS --fail -o /dev/null -w '%{speed_download}\n' "$@" "$url" |
        awk '{printf "%.1f\n", $1 / 1e6}'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
curl -sS --fail -o "$work/www/nar" --create-dirs "$plain$nar" # also warms the page cache
chmod 755 "$work" "$work/www" # nginx's workers run as an unprivileged user
chmod 644 "$work/www/nar"

# nginx serving the very same bytes, plain (sendfile) and TLS (OpenSSL).
ngx_plain=$(free_port)
ngx_tls=$(free_port)
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.error.log;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  tcp_nodelay on;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work;
  server { listen 127.0.0.1:$ngx_plain; root $work/www; }
  server { listen 127.0.0.1:$ngx_tls ssl; ssl_certificate $work/cert.pem;
           ssl_certificate_key $work/key.pem; root $work/www; }
}
NGINX
/usr/sbin/nginx -c "$work/nginx.conf"
ngx_resolve=(--resolve "bench.example.test:$ngx_tls:127.0.0.1" --cacert "$work/cert.pem")

dl_plain=() dl_tls1=() dl_tls2=() dl_ngx=() dl_ngx_tls=()
ticks_plain=0 ticks_tls=0
for _ in $(seq "$rounds"); do
    t0=$(cpu_ticks)
    dl_plain+=("$(download "$plain$nar" --http1.1)")
    t1=$(cpu_ticks)
    dl_tls1+=("$(download "$tls$nar" --http1.1 "${resolve[@]}")")
    t2=$(cpu_ticks)
    ticks_plain=$((ticks_plain + t1 - t0))
    ticks_tls=$((ticks_tls + t2 - t1))
    dl_tls2+=("$(download "$tls$nar" --http2 "${resolve[@]}")")
    dl_ngx+=("$(download "http://127.0.0.1:$ngx_plain/nar" --http1.1)")
    dl_ngx_tls+=("$(download "https://bench.example.test:$ngx_tls/nar" --http1.1 "${ngx_resolve[@]}")")
done
m_plain=$(printf '%s\n' "${dl_plain[@]}" | median)
m_tls1=$(printf '%s\n' "${dl_tls1[@]}" | median)
m_tls2=$(printf '%s\n' "${dl_tls2[@]}" | median)
m_ngx=$(printf '%s\n' "${dl_ngx[@]}" | median)
m_ngx_tls=$(printf '%s\n' "${dl_ngx_tls[@]}" | median)
hz=$(getconf CLK_TCK)
gib_sent=$(awk -v b="$nar_bytes" -v r="$rounds" 'BEGIN {print b * r / 1073741824}')
cpu_plain=$(awk -v t="$ticks_plain" -v hz="$hz" -v g="$gib_sent" 'BEGIN {printf "%.2f", t / hz / g}')
cpu_tls=$(awk -v t="$ticks_tls" -v hz="$hz" -v g="$gib_sent" 'BEGIN {printf "%.2f", t / hz / g}')

rps() { # url -> requests/s
    wrk -t2 -c64 -d"${wrk_secs}s" "$1" | awk '/^Requests\/sec/ {printf "%.0f\n", $2}'
}
r_plain=$(rps "$plain$narinfo")
r_tls=$(rps "https://127.0.0.1:$tls_port$narinfo")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
cost() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f %%", (1 - a / b) * 100}'; }
echo
echo "NAR: $((nar_bytes / 1048576)) MiB zstd (${size_mib} MiB NAR); $rounds rounds, medians; $(nproc) cores"
echo
echo "| measurement | plain HTTP | HTTPS | HTTPS/plain | TLS cost |"
echo "|---|---|---|---|---|"
echo "| NAR download, 1 stream, HTTP/1.1 (MB/s) | $m_plain | $m_tls1 | $(ratio "$m_tls1" "$m_plain") | $(cost "$m_tls1" "$m_plain") |"
echo "| NAR download, 1 stream, HTTPS HTTP/2 (MB/s) | $m_plain | $m_tls2 | $(ratio "$m_tls2" "$m_plain") | $(cost "$m_tls2" "$m_plain") |"
echo "| narinfo, wrk -t2 -c64 ${wrk_secs}s (req/s) | $r_plain | $r_tls | $(ratio "$r_tls" "$r_plain") | $(cost "$r_tls" "$r_plain") |"
echo "| larder CPU per GiB sent, HTTP/1.1 (s) | $cpu_plain | $cpu_tls | $(ratio "$cpu_tls" "$cpu_plain") | |"
echo "| reference: nginx, same bytes, 1 stream, HTTP/1.1 (MB/s) | $m_ngx | $m_ngx_tls | $(ratio "$m_ngx_tls" "$m_ngx") | $(cost "$m_ngx_tls" "$m_ngx") |"
echo
echo "raw MB/s: plain ${dl_plain[*]}; https/1.1 ${dl_tls1[*]}; https/2 ${dl_tls2[*]}"
echo "raw MB/s: nginx ${dl_ngx[*]}; nginx https ${dl_ngx_tls[*]}"
echo "load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg)"
verdict=$(awk -v a="$m_tls1" -v b="$m_plain" 'BEGIN {print (a >= 0.7 * b) ? "met" : "NOT met"}')
echo "goal (TLS costs <= 30 % of one-stream NAR throughput, HTTP/1.1): $verdict"
