//! Driving the real Nix 2.8 as a larder user would: private stores, closures built from
//! plain derivations, `nix copy` up, `nix-store -r` down.
//!
//! Every Nix command runs with its own configuration (see [`NIX_CONF`]), its own
//! `XDG_CACHE_HOME` (Nix would otherwise remember narinfos and 404s between tests) and
//! its own `--store` directories, so tests run in parallel without touching `/nix`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::process::{self, Output, Running};
use super::workdir::Workdir;

/// Settings that make Nix 2.8 usable in tests (TESTING.md): no build users, no
/// sandbox, no default substituter, signatures required, and no narinfo caching.
pub const NIX_CONF: &str = "\
build-users-group =
sandbox = false
sandbox-paths = /bin /usr /lib /lib64
experimental-features = nix-command
substituters =
trusted-public-keys =
require-sigs = true
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0
connect-timeout = 5
download-attempts = 2
stalled-download-timeout = 30
";

/// Default deadline for one Nix command.
pub const NIX_TIMEOUT: Duration = Duration::from_secs(180);

/// A test's private Nix client environment.
pub struct Nix {
    work: Workdir,
    salt: String,
}

/// Paths built by [`Nix::closure`], all in one private store.
#[derive(Debug, Clone)]
pub struct Closure {
    pub store: PathBuf,
    /// The top of the closure.
    pub top: String,
    /// `mid`: a directory tree with an executable, an empty file, a self-reference,
    /// a reference to `leaf` and the random blob.
    pub mid: String,
    /// `leaf`: one small regular file, no references.
    pub leaf: String,
    /// Every path of the closure (`nix-store -qR top`), sorted.
    pub paths: Vec<String>,
}

impl Nix {
    /// A fresh client environment; `test` names the test in salts and temp dirs.
    pub fn new(test: &str) -> Nix {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let salt = format!("{test}-{}-{nanos}-{n}", std::process::id());
        let work = Workdir::new(&format!("nix-{test}"));
        for d in ["xdg-cache", "xdg-config", "etc-nix", "home"] {
            std::fs::create_dir_all(work.join(d)).expect("creating Nix dirs");
        }
        Nix { work, salt }
    }

    pub fn dir(&self) -> &Path {
        self.work.path()
    }

    pub fn salt(&self) -> &str {
        &self.salt
    }

    /// A private store root (`--store DIR`); Nix creates it on first use.
    pub fn store(&self, name: &str) -> PathBuf {
        self.work.join(format!("store-{name}"))
    }

    /// A Nix command with this environment's configuration.
    pub fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_remove("NIX_REMOTE")
            .env_remove("NIX_PATH")
            .env("NIX_CONFIG", NIX_CONF)
            .env("NIX_CONF_DIR", self.work.join("etc-nix"))
            .env("NIX_USER_CONF_FILES", self.work.join("etc-nix/none.conf"))
            .env("XDG_CACHE_HOME", self.work.join("xdg-cache"))
            .env("XDG_CONFIG_HOME", self.work.join("xdg-config"))
            .env("HOME", self.work.join("home"));
        cmd
    }

    /// Runs a Nix command to completion under [`NIX_TIMEOUT`].
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        process::run(self.cmd(program).args(args), NIX_TIMEOUT)
    }

    /// Builds `expr` (a Nix expression) into `store`; returns its output paths.
    pub fn build(&self, store: &Path, file_name: &str, expr: &str) -> Vec<String> {
        let file = self.work.join(file_name);
        std::fs::write(&file, expr).expect("writing a .nix file");
        let out = self
            .run(
                "nix-build",
                &["--store", s(store), s(&file), "--no-out-link"],
            )
            .ok();
        out.stdout
            .lines()
            .filter(|l| l.starts_with("/nix/store/"))
            .map(str::to_string)
            .collect()
    }

    /// Builds a three-path closure `top -> mid -> leaf` (plus `mid -> mid`).
    ///
    /// `mid` carries `blob_bytes` of random data so it spans many chunks; the rest is
    /// small. Everything is input-addressed, so Nix insists on valid signatures.
    pub fn closure(&self, store_name: &str, blob_bytes: usize) -> Closure {
        let store = self.store(store_name);
        let expr = format!(
            r#"
let mk = name: script: builtins.derivation {{
      inherit name; system = builtins.currentSystem; builder = "/bin/sh";
      args = [ "-c" script ]; PATH = "/usr/bin:/bin"; salt = "{salt}"; }};
    leaf = mk "leaf" "echo leaf-{salt} > $out";
    mid = mk "mid" ''
      mkdir -p $out/bin $out/share/deep/er
      echo ${{leaf}} > $out/share/ref
      printf '#!/bin/sh\necho hello\n' > $out/bin/hello
      chmod +x $out/bin/hello
      : > $out/share/empty
      echo $out > $out/share/self
      head -c {blob_bytes} /dev/urandom > $out/share/deep/er/blob
      ln -s ../share/ref $out/bin/relative-link
    '';
    top = mk "top" ''
      mkdir $out
      echo ${{mid}} > $out/ref
      ln -s ${{leaf}} $out/leaf-link
      ln -s does/not/exist $out/dangling
    '';
in top
"#,
            salt = self.salt,
        );
        let built = self.build(&store, "closure.nix", &expr);
        let top = built
            .first()
            .cloned()
            .unwrap_or_else(|| panic!("nix-build printed no path: {built:?}"));
        let paths = self.requisites(&store, &top);
        let find = |suffix: &str| {
            paths
                .iter()
                .find(|p| p.ends_with(suffix))
                .cloned()
                .unwrap_or_else(|| panic!("no *{suffix} in {paths:?}"))
        };
        let c = Closure {
            mid: find("-mid"),
            leaf: find("-leaf"),
            top,
            paths: paths.clone(),
            store,
        };
        assert_eq!(
            c.paths.len(),
            3,
            "closure should be leaf, mid, top: {paths:?}"
        );
        c
    }

    /// Builds a derivation whose builder prints `line` to its build log; returns
    /// (output path, .drv path).
    pub fn logged_build(&self, store: &Path, line: &str) -> (String, String) {
        let expr = format!(
            r#"
builtins.derivation {{
  name = "logged"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo {line}; echo built > $out" ]; PATH = "/usr/bin:/bin";
  salt = "{salt}";
}}
"#,
            salt = self.salt
        );
        let file = self.work.join("logged.nix");
        std::fs::write(&file, expr).expect("writing logged.nix");
        let drv = self
            .run("nix-instantiate", &["--store", s(store), s(&file)])
            .ok()
            .stdout
            .lines()
            .find(|l| l.ends_with(".drv"))
            .expect("nix-instantiate printed a .drv")
            .to_string();
        let out = self
            .run("nix-build", &["--store", s(store), &drv, "--no-out-link"])
            .ok()
            .stdout
            .lines()
            .find(|l| l.starts_with("/nix/store/"))
            .expect("nix-build printed a path")
            .to_string();
        (out, drv)
    }

    /// Adds a file of `random_mib` MiB from /dev/urandom followed by `yes_mib` MiB of
    /// `yes` output to `store` (content-addressed, flat). Returns the store path.
    pub fn add_big_file(&self, store: &Path, random_mib: usize, yes_mib: usize) -> String {
        let file = self.work.join(format!("big-{}", self.salt));
        let script = format!(
            "set -e; head -c {random_mib}M /dev/urandom > \"$1\"; yes | head -c {yes_mib}M >> \"$1\""
        );
        process::run(
            Command::new("sh").args(["-c", &script, "sh", s(&file)]),
            NIX_TIMEOUT,
        )
        .ok();
        let out = self
            .run("nix-store", &["--store", s(store), "--add", s(&file)])
            .ok();
        let _ = std::fs::remove_file(&file);
        out.stdout.trim().to_string()
    }

    /// Writes a netrc that sends `token` as the password for 127.0.0.1.
    pub fn netrc(&self, token: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = self
            .work
            .join(format!("netrc-{}", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, format!("machine 127.0.0.1 password {token}\n"))
            .expect("writing netrc");
        path
    }

    fn netrc_args(netrc: Option<&Path>) -> Vec<String> {
        match netrc {
            Some(p) => vec!["--option".into(), "netrc-file".into(), s(p).into()],
            None => vec![
                "--option".into(),
                "netrc-file".into(),
                "/nonexistent/netrc".into(),
            ],
        }
    }

    /// `nix copy --from STORE --to URL PATHS...`, not waiting for it.
    pub fn spawn_copy_to(
        &self,
        from: &Path,
        to_url: &str,
        paths: &[&str],
        netrc: Option<&Path>,
    ) -> Running {
        self.spawn_copy_to_with(from, to_url, paths, netrc, &[])
    }

    /// [`Nix::spawn_copy_to`] with extra `--option NAME VALUE` pairs.
    pub fn spawn_copy_to_with(
        &self,
        from: &Path,
        to_url: &str,
        paths: &[&str],
        netrc: Option<&Path>,
        options: &[(&str, &str)],
    ) -> Running {
        let mut cmd = self.cmd("nix");
        cmd.args(["copy", "--from", s(from), "--to", to_url])
            .args(Self::netrc_args(netrc));
        for (name, value) in options {
            cmd.args(["--option", name, value]);
        }
        cmd.args(paths);
        process::spawn(&mut cmd)
    }

    /// `nix copy --from STORE --to URL PATHS...`
    pub fn copy_to(
        &self,
        from: &Path,
        to_url: &str,
        paths: &[&str],
        netrc: Option<&Path>,
    ) -> Output {
        self.spawn_copy_to(from, to_url, paths, netrc)
            .wait(NIX_TIMEOUT)
    }

    /// `nix copy --from URL --to STORE PATH` with exactly one substituter key.
    pub fn copy_from(
        &self,
        url: &str,
        to: &Path,
        path: &str,
        key: &str,
        netrc: Option<&Path>,
    ) -> Output {
        let mut cmd = self.cmd("nix");
        cmd.args(["copy", "--from", url, "--to", s(to)])
            .args(["--option", "trusted-public-keys", key])
            .args(Self::netrc_args(netrc))
            .arg(path);
        process::run(&mut cmd, NIX_TIMEOUT)
    }

    /// `nix-store --store STORE -r PATH` substituting only from `url`, trusting `key`.
    pub fn substitute(
        &self,
        store: &Path,
        path: &str,
        url: &str,
        key: &str,
        netrc: Option<&Path>,
    ) -> Output {
        let mut cmd = self.cmd("nix-store");
        cmd.args(["--store", s(store), "-r", path])
            .args(["--option", "substituters", url])
            .args(["--option", "trusted-public-keys", key])
            .args(Self::netrc_args(netrc));
        process::run(&mut cmd, NIX_TIMEOUT)
    }

    /// `nix path-info --json` of one path in a store (a directory or a cache URL).
    /// Nix exits 0 for missing paths, so look at `"valid"`.
    pub fn path_info(&self, store: &str, path: &str, netrc: Option<&Path>) -> serde_json::Value {
        let mut cmd = self.cmd("nix");
        cmd.args(["path-info", "--json", "--store", store])
            .args(Self::netrc_args(netrc))
            .arg(path);
        let out = process::run(&mut cmd, NIX_TIMEOUT);
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("path-info output is not JSON ({e}): {}", out.describe()));
        v.as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or_else(|| panic!("path-info gave no entry: {}", out.describe()))
    }

    /// Whether a `nix path-info --json` entry describes a present path (Nix 2.8 adds
    /// `"valid": false` to missing ones and no `valid` key to present ones).
    pub fn info_valid(info: &serde_json::Value) -> bool {
        info.get("valid") != Some(&serde_json::Value::Bool(false)) && info.get("narHash").is_some()
    }

    /// Whether `path` is valid in the private store `store`.
    pub fn is_valid(&self, store: &Path, path: &str) -> bool {
        self.run(
            "nix-store",
            &["--store", s(store), "--check-validity", path],
        )
        .success()
    }

    /// The closure of `path` in `store`, sorted.
    pub fn requisites(&self, store: &Path, path: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .run("nix-store", &["--store", s(store), "-qR", path])
            .ok()
            .stdout
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    /// Direct references of `path` in `store`, as full paths.
    pub fn references(&self, store: &Path, path: &str) -> BTreeSet<String> {
        self.run(
            "nix-store",
            &["--store", s(store), "-q", "--references", path],
        )
        .ok()
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// `sha256:<nix32>` NarHash of `path` in `store`.
    pub fn nar_hash(&self, store: &Path, path: &str) -> String {
        self.run("nix-store", &["--store", s(store), "-q", "--hash", path])
            .ok()
            .stdout
            .trim()
            .to_string()
    }

    /// The NAR serialisation of `path` in `store`.
    pub fn dump(&self, store: &Path, path: &str) -> Vec<u8> {
        let out = self
            .cmd("nix")
            .args(["store", "dump-path", "--store", s(store), path])
            .output()
            .expect("running nix store dump-path");
        assert!(
            out.status.success(),
            "nix store dump-path {path} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Makes a signing key pair; returns (secret key file, public key line).
    pub fn generate_key(&self, name: &str) -> (PathBuf, String) {
        let dir = self.work.join(format!("keys-{name}"));
        std::fs::create_dir_all(&dir).expect("creating the key dir");
        let (sk, pk) = (dir.join("sk"), dir.join("pk"));
        self.run(
            "nix-store",
            &["--generate-binary-cache-key", name, s(&sk), s(&pk)],
        )
        .ok();
        let pk = std::fs::read_to_string(&pk).expect("reading the public key");
        (sk, pk.trim().to_string())
    }
}

/// A path as &str (temp paths are always UTF-8 here).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The 32-character hash part of a store path.
pub fn hash_part(path: &str) -> &str {
    let base = path.trim_start_matches("/nix/store/");
    &base[..32.min(base.len())]
}

/// The file name part of a store path.
pub fn basename(path: &str) -> &str {
    path.trim_start_matches("/nix/store/")
}

/// Asserts two directory trees (or files, or symlinks) are the same: types, contents,
/// executable bits and symlink targets.
#[track_caller]
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ma = a
        .symlink_metadata()
        .unwrap_or_else(|e| panic!("{}: {e}", a.display()));
    let mb = b
        .symlink_metadata()
        .unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    use std::os::unix::fs::PermissionsExt;
    if ma.file_type().is_symlink() {
        assert!(
            mb.file_type().is_symlink(),
            "{} is not a symlink",
            b.display()
        );
        assert_eq!(
            std::fs::read_link(a).ok(),
            std::fs::read_link(b).ok(),
            "symlink targets differ: {} vs {}",
            a.display(),
            b.display()
        );
    } else if ma.is_dir() {
        assert!(mb.is_dir(), "{} is not a directory", b.display());
        let names = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
                .map(|e| e.expect("dir entry").file_name())
                .collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        assert_eq!(na, nb, "entries differ: {} vs {}", a.display(), b.display());
        for n in na {
            assert_same_tree(&a.join(&n), &b.join(&n));
        }
    } else {
        assert!(mb.is_file(), "{} is not a regular file", b.display());
        assert_eq!(
            ma.permissions().mode() & 0o111 != 0,
            mb.permissions().mode() & 0o111 != 0,
            "executable bit differs: {}",
            b.display()
        );
        let (ca, cb) = (
            std::fs::read(a).expect("reading a file"),
            std::fs::read(b).expect("reading a file"),
        );
        assert!(
            ca == cb,
            "contents differ: {} vs {}",
            a.display(),
            b.display()
        );
    }
}

/// The on-disk location of store path `path` inside the private store `store`.
pub fn in_store(store: &Path, path: &str) -> PathBuf {
    store.join(path.trim_start_matches('/'))
}
