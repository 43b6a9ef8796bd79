# shellcheck shell=bash
# Shared by the bench/ scripts: `source bench/lib.sh` from the repository root.

# How to run a command as root: nothing when already root, sudo otherwise.
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi

# ensure_packages PKG...: install with apt the Debian packages that are not
# installed yet; does nothing when all are.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        "${sudo_cmd[@]}" apt-get update -q
        "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# median: the median of the numbers on stdin, one a line.
median() {
    sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

# bench_nix_env WORK: set Nix up for a private store under WORK (single-user
# NIX_CONFIG, HOME and XDG_CACHE_HOME under WORK). Call it in the script itself,
# not in a subshell, so the settings stay.
bench_nix_env() {
    export NIX_CONFIG="build-users-group =
sandbox = false
experimental-features = nix-command
substituters =
require-sigs = false"
    export XDG_CACHE_HOME="$1/xdg-cache" HOME="$1/home"
    mkdir -p "$HOME"
}

# mixed_nar_path WORK SIZE_MIB: after bench_nix_env WORK, add a file of SIZE_MIB,
# half random bytes and half text, to WORK/store; print its path.
mixed_nar_path() {
    local work=$1 size_mib=$2 half
    half=$((size_mib / 2))
    { head -c "${half}M" /dev/urandom; head -c "$((size_mib - half))M" < <(yes larder); } >"$work/blob"
    nix-store --store "$work/store" --add "$work/blob"
    rm -f "$work/blob"
}
