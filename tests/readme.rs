//! The README's "Try it in five minutes" demo, run exactly as written.
//!
//! The commands are read from README.md's `sh` blocks in that section at test
//! time (never copied here), so the README and this test cannot drift apart. They
//! run as a newcomer runs them: one shell for `larder serve`, another for the
//! rest, with the real Nix 2.8, a fresh `$HOME` with no `~/.config` and Nix's
//! default narinfo caching (what made the demo fail on the machine that pushed).
//!
//! The machine is made private with `unshare`: a network namespace of its own
//! (the README's fixed port 127.0.0.1:8080 cannot collide with anything) and a
//! tmpfs on `/tmp` (the README's `/tmp/hello.txt` and `/tmp/larder-demo`). Nix's
//! default store is a chroot store in that `/tmp` (`store = /tmp/user-store`), so
//! `/nix` is never touched. The one stand-in is `cargo`: `cargo run --release --
//! ARGS` runs the larder binary under test, already built.

use std::process::Command;
use std::time::Duration;

use crate::support::process;
use crate::support::server::LARDER;

/// The section of README.md the demo lives in.
const SECTION: &str = "## Try it in five minutes";

/// Nix's configuration on the pretend machine: Debian's Nix 2.8 as root in a
/// container (no build users; builds in the chroot store see the host's /bin), no
/// cache.nixos.org, and nothing else changed: narinfo caching keeps its defaults, `nix-command` stays off.
const NIX_CONF: &str = "\
build-users-group =
sandbox = false
sandbox-paths = /bin /usr /lib /lib64
substituters =
store = /tmp/user-store
connect-timeout = 5
";

/// The `sh` code blocks of the README's demo section, in order.
fn demo_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("reading README.md");
    let start = readme
        .find(SECTION)
        .unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "```sh" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(body.join("\n"));
        }
    }
    blocks
}

/// Runs the demo in a private namespace. `path_line` replaces the README's line
/// that picks a store path, when given. Returns the demo shell's output.
fn run_demo(path_line: Option<&str>) -> process::Output {
    let blocks = demo_blocks();
    assert_eq!(
        blocks.len(),
        3,
        "expected three sh blocks (serve, setup, demo) in {SECTION:?}: {blocks:#?}"
    );
    let serve = &blocks[0];
    assert!(
        serve.starts_with("cargo run --release -- serve"),
        "the first block should start the server: {serve}"
    );
    let mut demo = format!("{}\n{}", blocks[1], blocks[2]);
    if let Some(line) = path_line {
        let original = demo
            .lines()
            .find(|l| l.contains("path=$("))
            .unwrap_or_else(|| panic!("no `path=$(…)` line in the demo: {demo}"))
            .to_string();
        demo = demo.replace(&original, line);
    }
    let driver = format!(
        r#"set -eu
ip link set lo up
# Opened before the tmpfs hides /tmp: the checkout itself may live under /tmp.
exec 3<{larder}
mount -t tmpfs tmpfs /tmp
mkdir -p /tmp/home /tmp/checkout/target/release /tmp/bin /tmp/etc-nix
cat <&3 >/tmp/checkout/target/release/larder
exec 3<&-
chmod +x /tmp/checkout/target/release/larder
cat > /tmp/bin/cargo <<'EOF'
#!/bin/sh
# Stands in for `cargo run --release -- ARGS`: the binary is already built.
[ "$1 $2 $3" = "run --release --" ] || {{ echo "unexpected: cargo $*" >&2; exit 2; }}
shift 3
exec /tmp/checkout/target/release/larder "$@"
EOF
chmod +x /tmp/bin/cargo
export HOME=/tmp/home PATH=/tmp/bin:$PATH
cd /tmp/checkout
# The first shell: the README's serve block.
( {serve} ) >/tmp/serve.log 2>&1 &
for _ in $(seq 300); do grep -q 'larder listening on' /tmp/serve.log && break; sleep 0.1; done
grep -q 'larder listening on' /tmp/serve.log || {{ echo "larder serve did not start:"; cat /tmp/serve.log; exit 1; }}
# The second shell: the README's commands, as written.
set -x
{demo}
"#,
        larder = LARDER,
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--mount", "--propagation", "private", "--fork"])
        .args(["bash", "-c", &driver]);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("LARDER_") || k.starts_with("XDG_") || k.starts_with("NIX_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("NIX_CONFIG", NIX_CONF)
        .env("NIX_CONF_DIR", "/tmp/etc-nix")
        .env("USER", "root");
    process::run(&mut cmd, Duration::from_secs(300))
}

#[test]
fn the_readme_demo_works_as_pasted() {
    let out = run_demo(None).ok();
    assert!(
        out.stdout.lines().any(|l| l == "hello from larder"),
        "the demo's last command should print the substituted file: {}",
        out.describe()
    );
}

/// The same demo with an input-addressed path, as a newcomer with a package of
/// their own runs it: Nix insists on larder's signature then, and the machine
/// that pushed has `nix copy`'s unsigned narinfo in its lookup cache.
#[test]
fn the_readme_demo_works_for_a_built_package() {
    let build = r#"path=$(nix-build --no-out-link -E 'derivation { name = "hello"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo hello from larder > $out" ]; }')"#;
    let out = run_demo(Some(build)).ok();
    assert!(
        out.stdout.lines().any(|l| l == "hello from larder"),
        "the demo's last command should print the substituted file: {}",
        out.describe()
    );
    assert!(
        out.stderr.contains("copying path"),
        "nix-store -r should have substituted the path from larder: {}",
        out.describe()
    );
}
