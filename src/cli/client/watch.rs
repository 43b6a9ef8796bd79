//! `larder watch-store CACHE`: push store paths as they appear, and
//! `larder watch-store --enqueue [PATH…]`, the post-build-hook side.
//!
//! The watcher does two things each round (every `--interval`):
//! 1. drains the spool directory: files `*.paths` with one store path per line,
//!    each written whole (temp file, then rename) by `--enqueue`, which returns at
//!    once so a build never waits on the network;
//! 2. unless `--no-scan`, lists the store directory and takes every entry it has
//!    not seen before (paths present at start are not pushed). An entry may show
//!    up before Nix registers it, so one that is not yet valid is retried on later
//!    rounds for [`PENDING_FOR`].
//!
//! What it finds is pushed like `larder push` (closures, upstream filter, missing
//! paths only). Spool files are deleted only after their paths were pushed; on a
//! failure they stay for the next round.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::api::Api;
use super::config::{create_dir, write_private};
use super::nix::NixStore;
use super::push::{push, PushOptions};

/// How long a store entry that is not (yet) a valid path is retried.
const PENDING_FOR: Duration = Duration::from_secs(600);
/// The suffix of a complete spool file.
const SPOOL_SUFFIX: &str = ".paths";

/// The spool directory when none is named: `$LARDER_SPOOL`, else
/// `$XDG_STATE_HOME/larder/spool`, else `~/.local/state/larder/spool`, else
/// `/var/spool/larder` (a post-build hook may run with no home).
pub fn default_spool() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("LARDER_SPOOL") {
        return d;
    }
    if let Some(d) = env("XDG_STATE_HOME") {
        return d.join("larder/spool");
    }
    if let Some(h) = env("HOME") {
        return h.join(".local/state/larder/spool");
    }
    PathBuf::from("/var/spool/larder")
}

/// Queue paths for the watcher. With no paths, takes `$OUT_PATHS` (what Nix
/// hands a post-build hook). Returns how many were queued.
pub fn enqueue(spool: &Path, paths: &[String]) -> anyhow::Result<usize> {
    let mut all: Vec<String> = paths.to_vec();
    if all.is_empty() {
        if let Ok(out) = std::env::var("OUT_PATHS") {
            all.extend(out.split_whitespace().map(str::to_owned));
        }
    }
    let all: Vec<String> = all
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    if all.is_empty() {
        return Ok(0);
    }
    create_dir(spool, 0o755)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "{nanos}-{}-{}{SPOOL_SUFFIX}",
        std::process::id(),
        &larder::auth::generate_token()[..8]
    );
    let mut text = all.join("\n");
    text.push('\n');
    write_private(&spool.join(name), text.as_bytes(), 0o644)?;
    Ok(all.len())
}

/// Complete spool files and the paths in them.
fn read_spool(spool: &Path) -> (Vec<PathBuf>, BTreeSet<String>) {
    let mut files = Vec::new();
    let mut paths = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(spool) else {
        return (files, paths);
    };
    for e in rd.flatten() {
        let p = e.path();
        let is_spool = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(SPOOL_SUFFIX) && !n.starts_with('.'));
        if !is_spool {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(&p) {
            paths.extend(text.split_whitespace().map(str::to_owned));
            files.push(p);
        }
    }
    (files, paths)
}

/// Names in the store directory worth looking at.
fn list_store(dir: &Path) -> HashSet<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return HashSet::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n.len() > 33
                && !n.starts_with('.')
                && !n.ends_with(".lock")
                && !n.ends_with(".drv")
                && !n.ends_with(".chroot")
                && !n.ends_with(".check")
        })
        .collect()
}

/// How the watcher runs.
pub struct WatchOptions {
    pub spool: PathBuf,
    pub scan: bool,
    pub interval: Duration,
    pub push: PushOptions,
}

/// Run until killed.
pub fn watch(api: &Api, cache: &str, store: &NixStore, opts: &WatchOptions) -> anyhow::Result<()> {
    let dir = store.store_dir_on_disk();
    let mut seen: HashSet<String> = if opts.scan {
        list_store(&dir)
    } else {
        HashSet::new()
    };
    let mut pending: HashMap<String, Instant> = HashMap::new();
    eprintln!(
        "watching {}{} for {cache}; spool {}",
        if opts.scan { "" } else { "(spool only, not) " },
        dir.display(),
        opts.spool.display()
    );
    create_dir(&opts.spool, 0o755).context("creating the spool directory")?;
    loop {
        let (files, mut batch) = read_spool(&opts.spool);
        if opts.scan {
            for name in list_store(&dir) {
                if seen.insert(name.clone()) {
                    pending.insert(format!("/nix/store/{name}"), Instant::now());
                }
            }
        }
        if !pending.is_empty() {
            let asked: Vec<String> = pending.keys().cloned().collect();
            match store.path_info(&asked, false) {
                Ok(infos) => {
                    for i in infos.into_iter().filter(|i| i.is_valid()) {
                        pending.remove(&i.path);
                        batch.insert(i.path);
                    }
                }
                Err(e) => eprintln!("warning: {e:#}"),
            }
            pending.retain(|_, since| since.elapsed() < PENDING_FOR);
        }
        if !batch.is_empty() {
            let roots: Vec<String> = batch.into_iter().collect();
            match push(api, cache, store, &roots, &opts.push) {
                Ok(s) if s.failed.is_empty() => {
                    eprintln!("{} new path(s): {}", roots.len(), s.line());
                    for f in &files {
                        let _ = std::fs::remove_file(f);
                    }
                }
                Ok(s) => eprintln!(
                    "{} new path(s): {}; will retry queued ones",
                    roots.len(),
                    s.line()
                ),
                Err(e) => eprintln!("push failed, will retry queued paths: {e:#}"),
            }
        }
        std::thread::sleep(opts.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueued_paths_are_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let n = enqueue(
            dir.path(),
            &["/nix/store/a-x".into(), " /nix/store/b-y ".into()],
        )
        .unwrap();
        assert_eq!(n, 2);
        // A temp file of an enqueue still being written is not read.
        std::fs::write(dir.path().join(".half.paths.tmp-1"), "/nix/store/c-z").unwrap();
        let (files, paths) = read_spool(dir.path());
        assert_eq!(files.len(), 1);
        assert_eq!(
            paths.into_iter().collect::<Vec<_>>(),
            ["/nix/store/a-x", "/nix/store/b-y"]
        );
    }
}
