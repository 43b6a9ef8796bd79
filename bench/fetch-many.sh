#!/usr/bin/env bash
# Download URL with N concurrent curl streams to /dev/null; fails if any stream
# fails or comes back short (curl checks Content-Length).
#   bench/fetch-many.sh N URL
set -u
n=$1 url=$2
pids=()
for _ in $(seq "$n"); do
    curl -sS --fail -o /dev/null "$url" &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do
    wait "$p" || rc=1
done
exit "$rc"
