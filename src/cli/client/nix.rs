//! The client's view of the local Nix store, through Nix's own commands (works
//! with Nix 2.8): `nix path-info --json [--recursive]` for closures and metadata,
//! and NARs either serialised in-process from the file system (`nar.rs`, for
//! paths on disk here) or from `nix-store --dump` (`nix store dump-path --store S`
//! for another store). Nothing here parses the Nix database itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use serde::Deserialize;

/// One entry of `nix path-info --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct PathInfo {
    pub path: String,
    #[serde(rename = "narHash", default)]
    pub nar_hash: Option<String>,
    #[serde(rename = "narSize", default)]
    pub nar_size: Option<u64>,
    #[serde(default)]
    pub references: Vec<String>,
    #[serde(default)]
    pub deriver: Option<String>,
    #[serde(default)]
    pub signatures: Vec<String>,
    #[serde(default)]
    pub ca: Option<String>,
    /// Nix 2.8 adds `"valid": false` for paths it does not have.
    #[serde(default)]
    pub valid: Option<bool>,
}

impl PathInfo {
    pub fn is_valid(&self) -> bool {
        self.valid != Some(false) && self.nar_hash.is_some() && self.nar_size.is_some()
    }

    /// Names of the keys that signed this path.
    pub fn signer_names(&self) -> impl Iterator<Item = &str> {
        self.signatures
            .iter()
            .filter_map(|s| s.split_once(':').map(|(name, _)| name))
    }
}

/// The store the client reads from: the default one, or `--store STORE`.
#[derive(Clone, Debug, Default)]
pub struct NixStore {
    pub store: Option<String>,
    /// Dump NARs with Nix (`nix-store --dump`) even when the path is on disk here.
    pub nix_dump: bool,
}

/// What produces a NAR being read: nothing to wait for, or a Nix dump process.
pub struct NarDone {
    child: Option<(Child, std::thread::JoinHandle<String>)>,
}

impl NarDone {
    /// After the upload (which consumed the reader): stop (on failure) or wait for
    /// a Nix dump process, and report its failure.
    pub fn finish(self, upload_failed: bool) -> anyhow::Result<()> {
        let Some((mut child, stderr)) = self.child else {
            return Ok(());
        };
        if upload_failed {
            let _ = child.kill();
        }
        let status = child.wait().context("waiting for the NAR dump")?;
        let err = stderr.join().unwrap_or_default();
        if !status.success() && !upload_failed {
            bail!("the NAR dump failed: {}", err.trim());
        }
        Ok(())
    }
}

impl NixStore {
    fn nix(&self) -> Command {
        let mut cmd = Command::new("nix");
        cmd.args(["--extra-experimental-features", "nix-command"]);
        if let Some(s) = &self.store {
            cmd.args(["--store", s]);
        }
        cmd
    }

    /// The directory holding this store's paths on disk, for watching.
    pub fn store_dir_on_disk(&self) -> PathBuf {
        match &self.store {
            // A chroot store (`--store /some/dir`) keeps paths in DIR/nix/store.
            Some(s) if s.starts_with('/') => PathBuf::from(s).join("nix/store"),
            _ => PathBuf::from("/nix/store"),
        }
    }

    /// Refuse, with a message that says what to push instead, a file or directory
    /// that exists here but is not in the store: Nix would read it as a flake and
    /// answer "does not contain a 'flake.nix'". Installables (`nixpkgs#hello`) and
    /// paths into the store (`./result`) pass.
    pub fn check_root(&self, root: &str) -> anyhow::Result<()> {
        let path = std::path::Path::new(root);
        if root.contains('#') || !path.exists() {
            return Ok(());
        }
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if real.starts_with(self.store_dir_on_disk()) || real.starts_with("/nix/store") {
            return Ok(());
        }
        bail!(
            "{root} is not a Nix store path ({} is not under {}): push a store path \
             (/nix/store/…), a link into the store such as ./result, or an installable \
             such as nixpkgs#hello",
            real.display(),
            self.store_dir_on_disk().display()
        )
    }

    /// `nix path-info --json [--recursive] PATHS…`, one entry per path.
    pub fn path_info(&self, paths: &[String], recursive: bool) -> anyhow::Result<Vec<PathInfo>> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = self.nix();
        cmd.args(["path-info", "--json"]);
        if recursive {
            cmd.arg("--recursive");
        }
        cmd.arg("--").args(paths);
        let out = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("running `nix path-info` (is Nix installed?)")?;
        if !out.status.success() {
            bail!(
                "nix path-info failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let infos: Vec<PathInfo> = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "reading `nix path-info --json` output: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        Ok(infos)
    }

    /// Where `path` is on this machine's file system, when it is.
    fn on_disk(&self, path: &str) -> Option<PathBuf> {
        let rel = path.strip_prefix("/nix/store/")?;
        if rel.is_empty() || rel.contains('/') {
            return None;
        }
        match &self.store {
            None => Some(PathBuf::from(path)),
            Some(s) if s.starts_with('/') => Some(self.store_dir_on_disk().join(rel)),
            Some(_) => None,
        }
    }

    /// Start reading `path` as a NAR: in-process from the file system when the
    /// path is on disk here, else from Nix.
    pub fn open_nar(&self, path: &str) -> anyhow::Result<(Box<dyn Read + Send>, NarDone)> {
        if !self.nix_dump {
            if let Some(p) = self.on_disk(path) {
                return Ok((Box::new(super::nar::dump(p)), NarDone { child: None }));
            }
        }
        let mut child = self.dump(path)?;
        let stdout = child
            .stdout
            .take()
            .context("the NAR dump has no output pipe")?;
        let mut stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut text);
            }
            text
        });
        Ok((
            Box::new(stdout),
            NarDone {
                child: Some((child, reader)),
            },
        ))
    }

    /// Start dumping `path` as a NAR on the child's stdout.
    fn dump(&self, path: &str) -> anyhow::Result<Child> {
        let mut cmd = match &self.store {
            None => {
                let mut c = Command::new("nix-store");
                c.args(["--dump", path]);
                c
            }
            Some(_) => {
                let mut c = self.nix();
                c.args(["store", "dump-path", "--", path]);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting a NAR dump of {path}"))
    }
}

/// Order `infos` so that every path comes after the paths it references (those
/// in the set), ties broken by path name for a stable order.
pub fn references_first(infos: Vec<PathInfo>) -> Vec<PathInfo> {
    let by_path: BTreeMap<String, PathInfo> =
        infos.into_iter().map(|i| (i.path.clone(), i)).collect();
    let mut remaining: HashMap<&str, usize> = HashMap::new();
    let mut users: HashMap<&str, Vec<&str>> = HashMap::new();
    for (p, info) in &by_path {
        let refs: BTreeSet<&str> = info
            .references
            .iter()
            .map(String::as_str)
            .filter(|r| *r != p && by_path.contains_key(*r))
            .collect();
        remaining.insert(p.as_str(), refs.len());
        for r in refs {
            users.entry(r).or_default().push(p.as_str());
        }
    }
    let mut ready: BTreeSet<&str> = remaining
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(p, _)| *p)
        .collect();
    let mut order: Vec<String> = Vec::with_capacity(by_path.len());
    while let Some(p) = ready.pop_first() {
        order.push(p.to_owned());
        for u in users.get(p).into_iter().flatten() {
            if let Some(n) = remaining.get_mut(u) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(u);
                }
            }
        }
    }
    // A reference cycle cannot happen in a store; keep anything left anyway.
    let placed: BTreeSet<String> = order.iter().cloned().collect();
    order.extend(by_path.keys().filter(|p| !placed.contains(*p)).cloned());
    let mut by_path = by_path;
    order
        .into_iter()
        .filter_map(|p| by_path.remove(&p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(path: &str, refs: &[&str]) -> PathInfo {
        PathInfo {
            path: path.into(),
            nar_hash: Some("sha256-x".into()),
            nar_size: Some(1),
            references: refs.iter().map(|s| s.to_string()).collect(),
            deriver: None,
            signatures: vec!["cache.nixos.org-1:abc".into(), "broken".into()],
            ca: None,
            valid: None,
        }
    }

    #[test]
    fn references_come_first() {
        let order = references_first(vec![
            info(
                "/nix/store/a-top",
                &["/nix/store/b-mid", "/nix/store/a-top"],
            ),
            info(
                "/nix/store/b-mid",
                &["/nix/store/c-leaf", "/nix/store/z-elsewhere"],
            ),
            info("/nix/store/c-leaf", &[]),
        ]);
        let names: Vec<&str> = order.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            names,
            ["/nix/store/c-leaf", "/nix/store/b-mid", "/nix/store/a-top"]
        );
    }

    #[test]
    fn parses_nix_2_8_output() {
        let text = r#"[{"path":"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x","valid":false},
          {"path":"/nix/store/zixdx86z6w952jb1kcngp3k7hvqn8j0b-top","narHash":"sha256-zGIwhxQHL7epORKiNQSb4UhG5i2zttAZmGGa3yPB4Rc=","narSize":560,"references":["/nix/store/zrby4bjm7a0bjywam8dp7k5sxhnvbn31-dep"],"deriver":"/nix/store/wq6q6dr8566s42cigy6s4i9xzc9ir340-top.drv","registrationTime":1795681660,"ultimate":true,"signatures":["k-1:AAAA"]}]"#;
        let v: Vec<PathInfo> = serde_json::from_str(text).unwrap();
        assert!(!v[0].is_valid());
        assert!(v[1].is_valid());
        assert_eq!(v[1].nar_size, Some(560));
        assert_eq!(v[1].signer_names().collect::<Vec<_>>(), ["k-1"]);
        assert_eq!(
            info("/x", &[]).signer_names().collect::<Vec<_>>(),
            ["cache.nixos.org-1"]
        );
    }
}
