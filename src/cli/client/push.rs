//! `larder push`: upload store paths (and by default their closures) to a cache
//! over the Attic API.
//!
//! 1. `GET cache-config` for the API endpoint and the upstream key names (a token
//!    that may push but not pull gets 403 there; the push goes on with defaults).
//! 2. `nix path-info --json --recursive` for the closure and its metadata.
//! 3. Drop paths signed by an upstream key (`cache.nixos.org-1` by default).
//! 4. `get-missing-paths`, so paths the cache has are not sent again.
//! 5. `-j N` workers, references first: each streams the NAR (serialised from the
//!    file system, or from `nix-store --dump` with `--nix-dump`) through zstd
//!    straight into a chunked `PUT upload-path` (`Content-Encoding: zstd`), so no
//!    NAR is ever held whole in memory or on disk.
//!
//! Progress bars (one per path, one for the total with rate and ETA) are drawn
//! only when stderr is a terminal. A summary follows either way.

use std::collections::{BTreeSet, VecDeque};
use std::io::{IsTerminal, Read};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use larder::nix::hash::Sha256;
use larder::service::{UploadPathNarInfo, UploadPathResult};

use super::api::Api;
use super::nix::{references_first, NixStore, PathInfo};

/// The upstream key a new cache filters by default (as `attic cache create`).
const DEFAULT_UPSTREAM_KEY: &str = "cache.nixos.org-1";

/// zstd level for NARs on the wire: fast, and the server recompresses anyway.
pub const DEFAULT_WIRE_ZSTD_LEVEL: i32 = 3;

/// How one push behaves.
#[derive(Clone, Debug)]
pub struct PushOptions {
    pub jobs: usize,
    pub closure: bool,
    pub upstream_filter: bool,
    pub zstd_level: i32,
    /// Draw progress bars (only ever on a terminal).
    pub progress: bool,
}

/// What a push did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    /// Paths uploaded with new NAR bytes.
    pub pushed: usize,
    /// Paths uploaded whose NAR the server already had (from any cache).
    pub deduplicated: usize,
    /// Paths the cache already had: not sent.
    pub already_cached: usize,
    /// Paths signed by an upstream cache key: not sent.
    pub skipped_upstream: usize,
    /// Bytes on the wire (zstd-compressed NARs plus metadata preambles).
    pub bytes_sent: u64,
    /// Uncompressed NAR bytes read from the store.
    pub nar_bytes: u64,
    /// Paths that failed, with why.
    pub failed: Vec<(String, String)>,
    pub seconds: f64,
}

impl Summary {
    pub fn line(&self) -> String {
        let sent = self.pushed + self.deduplicated;
        let mut s = format!("uploaded {sent} path{}", if sent == 1 { "" } else { "s" });
        if self.deduplicated > 0 {
            s.push_str(&format!(
                " ({} new, {} whose contents the server already stored, so it kept no second copy)",
                self.pushed, self.deduplicated
            ));
        }
        s.push_str(&format!(
            ": {} sent for {} of NARs, in {:.1} s",
            human_bytes(self.bytes_sent),
            human_bytes(self.nar_bytes),
            self.seconds
        ));
        let mut not_sent = Vec::new();
        if self.already_cached > 0 {
            not_sent.push(format!("{} already in the cache", self.already_cached));
        }
        if self.skipped_upstream > 0 {
            not_sent.push(format!(
                "{} signed by an upstream cache such as cache.nixos.org (--ignore-upstream-cache-filter sends them)",
                self.skipped_upstream
            ));
        }
        if !not_sent.is_empty() {
            s.push_str(&format!("; not sent: {}", not_sent.join(", ")));
        }
        if !self.failed.is_empty() {
            s.push_str(&format!("; {} FAILED", self.failed.len()));
        }
        s
    }
}

fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Whether progress bars can be drawn.
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// A reader that counts what passes through it.
struct Counting<R> {
    inner: R,
    counters: Vec<Arc<AtomicU64>>,
    bars: Vec<ProgressBar>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for c in &self.counters {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        for b in &self.bars {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

/// The server's upload metadata for one path.
pub fn upload_info(cache: &str, info: &PathInfo) -> anyhow::Result<UploadPathNarInfo> {
    let base = info.path.rsplit('/').next().unwrap_or(&info.path);
    let hash = base.get(..32).context("store path without a hash part")?;
    let nar_hash = info
        .nar_hash
        .as_deref()
        .with_context(|| format!("{} has no narHash", info.path))?;
    let nar_hash = Sha256::parse(nar_hash)
        .map_err(|e| anyhow::anyhow!("{}: {e}", info.path))?
        .to_nix_string();
    let basename = |p: &String| p.rsplit('/').next().unwrap_or(p).to_owned();
    Ok(UploadPathNarInfo {
        cache: cache.to_owned(),
        store_path_hash: hash.to_owned(),
        store_path: info.path.clone(),
        references: info.references.iter().map(basename).collect(),
        system: None,
        deriver: info.deriver.as_ref().map(basename),
        sigs: info.signatures.clone(),
        ca: info.ca.clone(),
        nar_hash,
        nar_size: info
            .nar_size
            .with_context(|| format!("{} has no narSize", info.path))?,
    })
}

/// Settings learned from the cache before pushing.
struct Target {
    api: Api,
    upstream: Vec<String>,
}

/// Whether the "may not read settings" note was printed (once per process: a
/// watcher pushes many times).
static NOTED_NO_PULL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn target(api: &Api, cache: &str) -> anyhow::Result<Target> {
    match api.cache_config(cache) {
        Ok(cfg) => Ok(Target {
            api: if cfg.api_endpoint.is_empty() {
                api.clone()
            } else {
                api.with_base(&cfg.api_endpoint)
            },
            upstream: cfg.upstream_cache_key_names,
        }),
        // May push but not pull: the config is not ours to read; go on with the
        // defaults a cache is created with.
        Err(e) if e.status() == Some(403) => {
            if !NOTED_NO_PULL.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "note: this token may not read {cache}'s settings; skipping paths signed by {DEFAULT_UPSTREAM_KEY}"
                );
            }
            Ok(Target {
                api: api.clone(),
                upstream: vec![DEFAULT_UPSTREAM_KEY.to_owned()],
            })
        }
        Err(e) => Err(e).with_context(|| format!("cache {cache}")),
    }
}

/// Push `roots` (store paths, or paths into the store) to `cache`.
pub fn push(
    api: &Api,
    cache: &str,
    store: &NixStore,
    roots: &[String],
    opts: &PushOptions,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut summary = Summary::default();
    for root in roots {
        store.check_root(root)?;
    }
    let tgt = target(api, cache)?;
    let infos = store.path_info(roots, opts.closure)?;
    let invalid: Vec<&str> = infos
        .iter()
        .filter(|i| !i.is_valid())
        .map(|i| i.path.as_str())
        .collect();
    if !invalid.is_empty() {
        bail!("not valid in the store: {}", invalid.join(", "));
    }
    let upstream: BTreeSet<&str> = tgt.upstream.iter().map(String::as_str).collect();
    let mut candidates = Vec::new();
    for info in infos {
        if opts.upstream_filter && info.signer_names().any(|n| upstream.contains(n)) {
            summary.skipped_upstream += 1;
        } else {
            candidates.push(info);
        }
    }
    let hashes: Vec<String> = candidates
        .iter()
        .filter_map(|i| i.path.rsplit('/').next().and_then(|b| b.get(..32)))
        .map(str::to_owned)
        .collect();
    let missing: BTreeSet<String> = tgt
        .api
        .missing_paths(cache, &hashes)
        .with_context(|| format!("asking {cache} which paths it lacks"))?
        .into_iter()
        .collect();
    let mut todo = Vec::new();
    for info in candidates {
        let hash = info.path.rsplit('/').next().and_then(|b| b.get(..32));
        if hash.is_some_and(|h| missing.contains(h)) {
            todo.push(info);
        } else {
            summary.already_cached += 1;
        }
    }
    let todo = references_first(todo);
    let results = upload_all(&tgt.api, cache, store, todo, opts);
    summary.pushed = results.pushed;
    summary.deduplicated = results.deduplicated;
    summary.bytes_sent = results.bytes_sent;
    summary.nar_bytes = results.nar_bytes;
    summary.failed = results.failed;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

struct Uploaded {
    pushed: usize,
    deduplicated: usize,
    bytes_sent: u64,
    nar_bytes: u64,
    failed: Vec<(String, String)>,
}

fn upload_all(
    api: &Api,
    cache: &str,
    store: &NixStore,
    todo: Vec<PathInfo>,
    opts: &PushOptions,
) -> Uploaded {
    let total_nar: u64 = todo.iter().filter_map(|i| i.nar_size).sum();
    let count = todo.len();
    let multi = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let total_bar = multi.add(ProgressBar::new(total_nar));
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    ) {
        total_bar.set_style(style.progress_chars("=> "));
    }
    total_bar.set_prefix(format!("0/{count} paths"));
    total_bar.enable_steady_tick(Duration::from_millis(200));
    let path_style = ProgressStyle::with_template("  {msg:50!} [{bar:20}] {bytes}/{total_bytes}")
        .map(|s| s.progress_chars("=> "))
        .ok();

    let queue = Mutex::new(todo.into_iter().collect::<VecDeque<_>>());
    let sent = Arc::new(AtomicU64::new(0));
    let read = Arc::new(AtomicU64::new(0));
    let pushed = AtomicUsize::new(0);
    let deduplicated = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    let jobs = opts.jobs.clamp(1, 64);

    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let next = match queue.lock() {
                    Ok(mut q) => q.pop_front(),
                    Err(_) => None,
                };
                let Some(info) = next else { break };
                let bar =
                    multi.insert_before(&total_bar, ProgressBar::new(info.nar_size.unwrap_or(0)));
                if let Some(st) = &path_style {
                    bar.set_style(st.clone());
                }
                bar.set_message(
                    info.path
                        .rsplit('/')
                        .next()
                        .and_then(|b| b.get(33..))
                        .unwrap_or(&info.path)
                        .to_owned(),
                );
                let r = upload_one(
                    api, cache, store, &info, opts, &sent, &read, &bar, &total_bar,
                );
                bar.finish_and_clear();
                multi.remove(&bar);
                match r {
                    Ok(UploadPathResult::Uploaded { .. }) => {
                        pushed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(UploadPathResult::Deduplicated { .. }) => {
                        deduplicated.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let _ = multi.println(format!("failed: {}: {e:#}", info.path));
                        if let Ok(mut f) = failed.lock() {
                            f.push((info.path.clone(), format!("{e:#}")));
                        }
                    }
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                total_bar.set_prefix(format!("{n}/{count} paths"));
            });
        }
    });
    total_bar.finish_and_clear();
    let mut failed = failed.into_inner().unwrap_or_default();
    failed.sort();
    Uploaded {
        pushed: pushed.into_inner(),
        deduplicated: deduplicated.into_inner(),
        bytes_sent: sent.load(Ordering::Relaxed),
        nar_bytes: read.load(Ordering::Relaxed),
        failed,
    }
}

#[allow(clippy::too_many_arguments)]
fn upload_one(
    api: &Api,
    cache: &str,
    store: &NixStore,
    info: &PathInfo,
    opts: &PushOptions,
    sent: &Arc<AtomicU64>,
    read: &Arc<AtomicU64>,
    bar: &ProgressBar,
    total: &ProgressBar,
) -> anyhow::Result<UploadPathResult> {
    let meta = upload_info(cache, info)?;
    let (reader, done) = store.open_nar(&info.path)?;
    let nar = Counting {
        inner: reader,
        counters: vec![read.clone()],
        bars: vec![bar.clone(), total.clone()],
    };
    let result = zstd::stream::read::Encoder::new(nar, opts.zstd_level)
        .context("starting zstd")
        .and_then(|enc| {
            let wire = Counting {
                inner: enc,
                counters: vec![sent.clone()],
                bars: Vec::new(),
            };
            api.upload_path(&meta, wire, true)
                .map_err(anyhow::Error::from)
        });
    done.finish(result.is_err())?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_says_what_was_sent_and_what_was_not() {
        let s = Summary {
            pushed: 2,
            deduplicated: 1,
            already_cached: 4,
            skipped_upstream: 5,
            bytes_sent: 2048,
            nar_bytes: 4096,
            seconds: 1.25,
            ..Summary::default()
        };
        let line = s.line();
        assert!(
            line.starts_with("uploaded 3 paths (2 new, 1 whose contents the server already stored"),
            "{line}"
        );
        assert!(
            line.contains("2.00 KiB sent for 4.00 KiB of NARs"),
            "{line}"
        );
        assert!(
            line.contains("not sent: 4 already in the cache, 5 signed by an upstream cache"),
            "{line}"
        );
        let nothing = Summary {
            already_cached: 1,
            ..Summary::default()
        }
        .line();
        assert!(nothing.starts_with("uploaded 0 paths: "), "{nothing}");
        assert!(!nothing.contains("new,"), "{nothing}");
        assert!(
            nothing.ends_with("not sent: 1 already in the cache"),
            "{nothing}"
        );
    }

    #[test]
    fn upload_metadata_from_path_info() {
        let info = PathInfo {
            path: "/nix/store/zixdx86z6w952jb1kcngp3k7hvqn8j0b-top".into(),
            nar_hash: Some("sha256-zGIwhxQHL7epORKiNQSb4UhG5i2zttAZmGGa3yPB4Rc=".into()),
            nar_size: Some(560),
            references: vec!["/nix/store/zrby4bjm7a0bjywam8dp7k5sxhnvbn31-dep".into()],
            deriver: Some("/nix/store/wq6q6dr8566s42cigy6s4i9xzc9ir340-top.drv".into()),
            signatures: vec![],
            ca: None,
            valid: None,
        };
        let m = upload_info("c", &info).unwrap();
        assert_eq!(m.store_path_hash, "zixdx86z6w952jb1kcngp3k7hvqn8j0b");
        assert_eq!(m.references, ["zrby4bjm7a0bjywam8dp7k5sxhnvbn31-dep"]);
        assert_eq!(
            m.deriver.as_deref(),
            Some("wq6q6dr8566s42cigy6s4i9xzc9ir340-top.drv")
        );
        assert!(m.nar_hash.starts_with("sha256:") && m.nar_hash.len() == 7 + 52);
        assert_eq!(m.nar_size, 560);
    }
}
