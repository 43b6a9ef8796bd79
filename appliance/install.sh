#!/usr/bin/env bash
# Install, upgrade or remove larder as a hardened systemd service on any systemd
# Linux (Debian, Ubuntu, Fedora, Arch...; NixOS has its own module).
#
#   sudo appliance/install.sh                 # install or upgrade, start, print
#                                             # what a client needs
#   sudo appliance/install.sh --uninstall     # remove the service; keep the data
#   sudo appliance/install.sh --purge         # remove the service and the data
#   appliance/install.sh --root DIR           # install into a directory tree
#                                             # (packaging, tests); nothing starts
#
# Options: --binary PATH (the larder binary; default: next to this script, else
# target/release of the checkout, built when missing), --port N (first install
# only; default 8080), --domain NAME [--email ADDR] (first install only: HTTPS
# on 443 with a Let's Encrypt certificate, plain HTTP on 80), --nixos-proxy
# (first install only: a public cache "nixos" that proxies cache.nixos.org, so
# the LAN's machines download each path from the internet once), --no-start.
#
# It creates the system user `larder`, /etc/larder/config.toml (LAN defaults,
# kept on re-runs), /etc/larder/admin.token (root only, handed to the service
# through LoadCredential), /var/lib/larder, /usr/local/bin/larder and
# /etc/systemd/system/larder.service (plus a drop-in allowing ports below 1024
# when the config listens on one). Re-running it keeps the data, the tokens and
# the signing keys.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

root=""
binary=""
port=8080
domain=""
email=""
mode=install
purge=0
start=1
nixos_proxy=0
# How long to wait for the service to answer after (re)starting it.
ready_timeout_secs=60

die() {
    echo "install.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) root="${2:?--root needs a directory}"; shift 2 ;;
        --root=*) root="${1#--root=}"; shift ;;
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --binary=*) binary="${1#--binary=}"; shift ;;
        --port) port="${2:?--port needs a number}"; shift 2 ;;
        --port=*) port="${1#--port=}"; shift ;;
        --domain) domain="${2:?--domain needs a name}"; shift 2 ;;
        --domain=*) domain="${1#--domain=}"; shift ;;
        --email) email="${2:?--email needs an address}"; shift 2 ;;
        --email=*) email="${1#--email=}"; shift ;;
        --uninstall) mode=uninstall; shift ;;
        --purge) mode=uninstall; purge=1; shift ;;
        --no-start) start=0; shift ;;
        --nixos-proxy) nixos_proxy=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

case "$port" in
    '' | *[!0-9]*) die "--port must be a number" ;;
esac
case "$domain" in
    *[!A-Za-z0-9.-]*) die "--domain must be a DNS name, e.g. cache.example.com" ;;
esac
case "$email" in
    *[!A-Za-z0-9@.+_-]*) die "--email must be a plain address" ;;
esac
if [ -n "$email" ] && [ -z "$domain" ]; then
    die "--email goes with --domain"
fi
if [ -n "$domain" ]; then
    # ACME's HTTP-01 challenge comes to port 80.
    port=80
fi
if [ -n "$root" ]; then
    mkdir -p "$root"
    root="$(cd "$root" && pwd)"
    start=0
elif [ "$(id -u)" -ne 0 ]; then
    die "run it as root (sudo), or with --root DIR"
fi

bin_dst="$root/usr/local/bin/larder"
unit_dst="$root/etc/systemd/system/larder.service"
dropin_dst="$root/etc/systemd/system/larder.service.d/50-low-ports.conf"
sysusers_dst="$root/etc/sysusers.d/larder.conf"
conf_dir="$root/etc/larder"
config="$conf_dir/config.toml"
admin_token="$conf_dir/admin.token"
push_token="$conf_dir/push.token"
data_dir="$root/var/lib/larder"

systemctl_() {
    if [ -n "$root" ]; then
        systemctl --root="$root" "$@"
    else
        systemctl "$@"
    fi
}

uninstall() {
    if [ -z "$root" ] && command -v systemctl >/dev/null; then
        systemctl disable --now larder.service 2>/dev/null || true
    elif [ -n "$root" ]; then
        systemctl_ disable larder.service 2>/dev/null || true
    fi
    rm -f "$unit_dst" "$bin_dst" "$dropin_dst"
    rmdir "$(dirname "$dropin_dst")" 2>/dev/null || true
    if [ -z "$root" ]; then
        systemctl daemon-reload
    fi
    if [ "$purge" -eq 1 ]; then
        rm -rf "$data_dir" "$conf_dir" "$sysusers_dst"
        if [ -z "$root" ] && getent passwd larder >/dev/null; then
            userdel larder 2>/dev/null || true
        fi
        echo "larder removed, with its data and configuration."
    else
        echo "larder removed. Kept: $conf_dir, $data_dir and the user larder"
        echo "(install again to use them, or remove them with --purge)."
    fi
}

if [ "$mode" = uninstall ]; then
    uninstall
    exit 0
fi

# The binary: --binary, one copied next to this script, or the checkout's build.
if [ -z "$binary" ]; then
    if [ -x "$here/larder" ]; then
        binary="$here/larder"
    elif [ -f "$here/../Cargo.toml" ]; then
        binary="$here/../target/release/larder"
        if [ ! -x "$binary" ]; then
            cargo_bin="$(command -v cargo || true)"
            if [ -z "$cargo_bin" ] && [ -n "${SUDO_USER:-}" ]; then
                user_home="$(getent passwd "$SUDO_USER" | cut -d: -f6)"
                [ -x "$user_home/.cargo/bin/cargo" ] && cargo_bin="$user_home/.cargo/bin/cargo"
            fi
            [ -n "$cargo_bin" ] || die "no larder binary: build it (cargo build --release) or pass --binary PATH"
            echo "building larder (cargo build --release --locked)..."
            if [ -n "${SUDO_USER:-}" ] && [ "$(id -u)" -eq 0 ]; then
                (cd "$here/.." && runuser -u "$SUDO_USER" -- "$cargo_bin" build --release --locked)
            else
                (cd "$here/.." && "$cargo_bin" build --release --locked)
            fi
        fi
    fi
fi
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
    die "no larder binary found: pass --binary PATH"
fi
for f in larder.service low-ports.conf config.toml larder.sysusers; do
    [ -f "$here/$f" ] || die "$here/$f is missing: keep install.sh beside its files"
done

# 1. The binary, replaced in one rename so a running service never sees half of it.
install -d -m 0755 "$(dirname "$bin_dst")"
install -m 0755 "$binary" "$bin_dst.new"
mv -f "$bin_dst.new" "$bin_dst"
"$bin_dst" --version >/dev/null || die "$bin_dst does not run on this system"

# 2. The system user.
install -d -m 0755 "$(dirname "$sysusers_dst")"
install -m 0644 "$here/larder.sysusers" "$sysusers_dst"
if command -v systemd-sysusers >/dev/null; then
    if [ -n "$root" ]; then
        systemd-sysusers --root="$root" "$sysusers_dst"
    else
        systemd-sysusers "$sysusers_dst"
    fi
elif ! getent passwd larder >/dev/null; then
    useradd --system --home-dir /var/lib/larder --shell /usr/sbin/nologin \
        --comment "larder Nix binary cache" --user-group larder
fi

# 3. Configuration and the admin token: written once, kept on every re-run.
install -d -m 0755 "$conf_dir"
if [ ! -e "$config" ]; then
    https=()
    if [ -n "$domain" ]; then
        https=(
            -e "s|^# public_url = .*|public_url = \"https://$domain\"|"
            -e 's/^# \[tls\]$/[tls]/'
            -e 's/^# \(listen = "0.0.0.0:443"\)$/\1/'
            -e 's/^# \(redirect_exempt_cidrs = .*\)$/\1/'
            -e 's/^# \[tls.acme\]$/[tls.acme]/'
            -e "s/^# domains = .*/domains = [\"$domain\"]/"
        )
        if [ -n "$email" ]; then
            https+=(-e "s/^# contact = .*/contact = \"$email\"/")
        fi
    fi
    if [ "$nixos_proxy" -eq 1 ]; then
        # Uncomment the block between the two marker lines (not the markers).
        https+=(-e '/^# --- nixos proxy/,/^# --- end of nixos proxy/{/^# ---/!s/^# //}')
    fi
    sed -e "s/@PORT@/$port/g" "${https[@]}" "$here/config.toml" >"$config.new"
    chmod 0644 "$config.new"
    mv "$config.new" "$config"
    echo "wrote $config"
fi
"$bin_dst" check-config --quiet "$config" || die "$config is not valid (see above)"
if [ ! -s "$admin_token" ]; then
    (
        umask 077
        od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$admin_token.new"
        mv "$admin_token.new" "$admin_token"
    )
fi
chmod 0600 "$admin_token"

# 4. The state directory, owned by the service user (systemd keeps it so, too).
uid_gid="$(awk -F: '$1 == "larder" { print $3 ":" $4 }' "$root/etc/passwd")"
[ -n "$uid_gid" ] || die "the user larder was not created"
install -d -m 0755 "$root/var/lib"
install -d -m 0700 "$data_dir"
chown "$uid_gid" "$data_dir"

# 5. The unit, always replaced (upgrades bring hardening changes).
install -d -m 0755 "$(dirname "$unit_dst")"
install -m 0644 "$here/larder.service" "$unit_dst.new"
mv -f "$unit_dst.new" "$unit_dst"
# Ports below 1024 (80 and 443 for ACME) need one capability, which the unit
# does not have; a drop-in gives it while the config listens on such a port.
low_port=0
for p in $(grep -E '^[[:space:]]*(s3_)?listen[[:space:]]*=' "$config" | grep -Eo ':[0-9]+"' | tr -d ':"'); do
    if [ "$p" -lt 1024 ]; then
        low_port=1
    fi
done
if [ "$low_port" -eq 1 ]; then
    install -d -m 0755 "$(dirname "$dropin_dst")"
    install -m 0644 "$here/low-ports.conf" "$dropin_dst"
else
    rm -f "$dropin_dst"
    rmdir "$(dirname "$dropin_dst")" 2>/dev/null || true
fi
systemctl_ enable --quiet larder.service

if [ "$start" -eq 0 ]; then
    echo "larder installed into ${root:-/} (enabled, not started)."
    exit 0
fi

# 6. (Re)start and wait until it answers.
systemctl daemon-reload
systemctl restart larder.service
listen="$(sed -n 's/^listen *= *"\(.*\)".*/\1/p' "$config" | head -n1)"
listen_port="${listen##*:}"
[ -n "$listen_port" ] || listen_port="$port"
server="http://127.0.0.1:$listen_port"
export LARDER_SERVER="$server"
LARDER_TOKEN="$(cat "$admin_token")"
export LARDER_TOKEN
deadline=$(($(date +%s) + ready_timeout_secs))
until "$bin_dst" cache list >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ] || systemctl is-failed --quiet larder.service; then
        systemctl --no-pager status larder.service >&2 || true
        journalctl --no-pager -n 30 -u larder.service >&2 || true
        die "larder did not answer on $server within ${ready_timeout_secs}s"
    fi
    sleep 0.5
done

# 7. The push token, copied where only root can read it.
minted="$data_dir/tokens/push.token"
if [ -s "$minted" ]; then
    if ! cmp -s "$minted" "$push_token"; then
        install -m 0600 -o root -g root "$minted" "$push_token.new"
        mv -f "$push_token.new" "$push_token"
    fi
fi

# 8. What a client needs.
base="$(sed -n 's/^public_url *= *"\(.*\)".*/\1/p' "$config" | head -n1)"
if [ -z "$base" ]; then
    addr="$(hostname -I 2>/dev/null | awk '{ print $1 }')"
    [ -n "$addr" ] || addr="$(hostname)"
    base="http://$addr:$listen_port"
fi
info="$("$bin_dst" cache info default --json 2>/dev/null || true)"
public_key="$(printf '%s\n' "$info" | sed -n 's/.*"public_key": *"\([^"]*\)".*/\1/p')"

echo
echo "larder is running ($(systemctl is-enabled larder.service), $(systemctl is-active larder.service))."
if [ -n "$public_key" ]; then
    echo "  substituter URL: $base/default"
    echo "  public key:      $public_key"
else
    echo "  (no cache named default in $config)"
fi
if [ -s "$push_token" ]; then
    echo "  push token:      $push_token (readable by root only)"
fi
echo "  admin token:     $admin_token (readable by root only)"
if grep -q '^name = "nixos"' "$config"; then
    echo "  cache.nixos.org proxy: $base/nixos (on each machine: larder use nixos --server $base --write)"
fi
if [ -n "$public_key" ]; then
    host="${base#*://}"
    host="${host%%[:/]*}"
    cat <<EOF

On a client, in nix.conf:
  extra-substituters = $base/default
  extra-trusted-public-keys = $public_key
To push, with the token in a netrc file ("machine $host password <token>"):
  nix copy --to '$base/default?compression=zstd' --option netrc-file /path/to/netrc PATHS
EOF
fi
