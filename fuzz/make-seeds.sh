#!/usr/bin/env bash
# Write the fuzz seed corpora (fuzz/corpus/<target>/) from real Nix outputs: NARs
# from `nix-store --dump`, narinfos from `nix copy --to file://` (signed, with
# references and a deriver), store paths, hashes and keys Nix printed, cache URL
# paths built from them, the TOML blocks of larder's own docs, and S3 request
# pieces in the shapes AWS clients send. Run from anywhere; needs `nix` (Debian's
# 2.8 is enough). Rewrites fuzz/corpus from scratch; a seed is named by the SHA-1
# of its bytes, as libFuzzer names corpus files. The narinfo signatures come from
# a fresh key, so those seeds differ from run to run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
corpus="$root/fuzz/corpus"
work=$(mktemp -d)
rm -rf "$corpus"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

# A private store and configuration, as the integration tests use (TESTING.md).
export NIX_CONFIG="build-users-group =
sandbox = false
sandbox-paths = /bin /usr /lib /lib64
experimental-features = nix-command
substituters =
require-sigs = false"
export NIX_CONF_DIR="$work/etc-nix" NIX_USER_CONF_FILES="$work/none.conf"
export HOME="$work/home" XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config"
unset NIX_REMOTE NIX_PATH
store="$work/store"

seed() { # seed TARGET FILE: copy FILE into the target's corpus under its SHA-1
    local dir="$corpus/$1" sum
    mkdir -p "$dir"
    sum=$(sha1sum "$2" | cut -d' ' -f1)
    cp "$2" "$dir/$sum"
}
seed_text() { # seed_text TARGET TEXT (written without a trailing newline)
    printf '%s' "$2" >"$work/text"
    seed "$1" "$work/text"
}

echo "fuzz seeds: NARs from nix-store --dump"
tree="$work/tree"
mkdir -p "$tree/bin" "$tree/share/doc/empty" "$tree/lib"
printf '#!/bin/sh\necho hello\n' >"$tree/bin/hello"
chmod +x "$tree/bin/hello"
printf 'seven b' >"$tree/share/doc/README"
: >"$tree/share/empty-file"
ln -s ../bin/hello "$tree/lib/link"
ln -s /nix/store/0123456789abcdfghijklmnpqrsvwxyz-dangling "$tree/lib/abs-link"
head -c 1000 /dev/zero >"$tree/lib/zeros"
for p in "$tree" "$tree/bin/hello" "$tree/share/doc/README" "$tree/share/empty-file" \
    "$tree/lib/link" "$tree/share/doc/empty" "$tree/share"; do
    nix-store --dump "$p" >"$work/nar"
    seed nar "$work/nar"
done

echo "fuzz seeds: narinfos from nix copy --to file:// (signed, with references)"
nix key generate-secret --key-name fuzz-seed-1 >"$work/secret.key"
nix key convert-secret-to-public <"$work/secret.key" >"$work/public.key"
cat >"$work/paths.nix" <<'EOF'
let
  sh = "/bin/sh";
  leaf = derivation { name = "leaf"; system = builtins.currentSystem; builder = sh; args = [ "-c" "echo leaf > $out" ]; };
  top = derivation { name = "top-1.0"; system = builtins.currentSystem; builder = sh; args = [ "-c" "echo ${leaf} > $out" ]; };
  multi = derivation { name = "multi"; outputs = [ "out" "dev" ]; system = builtins.currentSystem; builder = sh; args = [ "-c" "echo ${top} > $out; echo dev > $dev" ]; };
in [ leaf top multi multi.dev ]
EOF
nix-build --store "$store" "$work/paths.nix" --no-out-link >"$work/built"
mapfile -t built <"$work/built"
added=$(nix-store --store "$store" --add "$tree")
nix store sign --store "$store" --key-file "$work/secret.key" "${built[@]}" "$added"
nix copy --store "$store" --to "file://$work/bincache" "${built[@]}" "$added"
for f in "$work/bincache"/*.narinfo; do
    seed narinfo "$f"
done
# A narinfo without a trailing signature or with an unknown deriver, as older Nix wrote.
narinfos=("$work/bincache"/*.narinfo)
f=${narinfos[0]}
grep -v '^Sig: ' "$f" | sed 's/^Deriver: .*/Deriver: unknown-deriver/' >"$work/old.narinfo"
seed narinfo "$work/old.narinfo"

echo "fuzz seeds: store paths, hashes, keys and cache URL paths"
for p in "${built[@]}" "$added"; do
    base=${p##*/}
    hash=${base%%-*}
    seed_text store_path "$base"
    seed_text store_path "$p"
    seed_text store_path "$hash"
    seed_text store_path "$(nix-store --store "$store" -q --hash "$p")"
    seed_text url_path "/c/$hash.narinfo"
    seed_text url_path "/c/$hash.ls"
    seed_text url_path "/my-cache/log/$base"
done
seed_text store_path "/nix/store"
seed_text store_path "$(cat "$work/public.key")"
seed_text store_path "$(cat "$work/secret.key")"
seed_text store_path "$(nix hash file --type sha256 --base32 "$tree/bin/hello")"
seed_text store_path "$(nix hash file --type sha256 --sri "$tree/bin/hello")"
for f in "$work/bincache"/nar/*; do
    seed_text url_path "/c/nar/${f##*/}"
done
drv=$(nix-instantiate --store "$store" "$work/paths.nix" | head -1)
seed_text url_path "/c/realisations/sha256:$(nix-store --store "$store" -q --hash "$drv" | cut -d: -f2)!out.doi"
seed_text url_path "/c/build-trace-v2/${drv##*/}/out.doi"
seed_text url_path "/c/nix-cache-info"
seed_text url_path "/c/attic-cache-info"

echo "fuzz seeds: Range headers"
for r in "bytes=0-99" "bytes=100-" "bytes=-500" "bytes=0-0" "bytes= 5 - 9 " \
    "bytes=0-1,5-9" "items=0-1" "bytes=18446744073709551615-"; do
    seed_text range "$r"
done

echo "fuzz seeds: Authorization headers"
fake=$(printf 'larder fuzz seed' | sha512sum | cut -d' ' -f1)
for t in "Bearer v4.local.$fake" "bearer   v4.local.$fake  " \
    "Basic $(printf 'nix:v4.local.%s' "$fake" | base64 -w0)" \
    "Basic $(printf 'user:' | base64 -w0)" "Bearer 0123456789abcdef0123456789abcdef"; do
    seed_text token "$t"
done

echo "fuzz seeds: S3 bodies and headers"
seed_text s3 '<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>"a54357aff0632cce46d942af68356b38"</ETag><PartNumber>1</PartNumber></Part><Part><ChecksumCRC32>DUoRhQ==</ChecksumCRC32><ETag>"0c78aef83f66abc1fa1e8477f296d394"</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>'
seed_text s3 '<?xml version="1.0" encoding="UTF-8"?>
<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>nar/a.nar.zst</Key></Object><Object><Key>b</Key><VersionId>null</VersionId></Object><Quiet>true</Quiet></Delete>'
for s in "bucket.s3.example.com:9000" "s3.example.com." "1B2M2Y8AsgTpgAmY7PhCfg==" \
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024" \
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20130524%2Fus-east-1%2Fs3%2Faws4_request" \
    "photos/2024/a.jpg" "W/\"0c78aef83f66abc1fa1e8477f296d394-2\"" "CRC64NVME" "bmFyL2EubmFyLnpzdA"; do
    seed_text s3 "$s"
done

echo "fuzz seeds: config files (the TOML blocks of larder's docs)"
n=0
for doc in "$root/README.md" "$root"/docs/*.md "$root"/docs/design/*.md; do
    awk -v out="$work/toml" '
        /^```toml/ { n++; f = out "." n; inblock = 1; next }
        /^```/ && inblock { inblock = 0; next }
        inblock { print > f }
    ' "$doc"
    for f in "$work"/toml.*; do
        [ -e "$f" ] || continue
        seed config "$f"
        rm "$f"
        n=$((n + 1))
    done
done
seed config "$root/appliance/config.toml"
echo "fuzz seeds: $n config blocks"

du -sh "$corpus"
for d in "$corpus"/*/; do
    echo "  $(basename "$d"): $(find "$d" -type f | wc -l) seeds"
done
