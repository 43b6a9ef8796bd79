//! The storage lifecycle (`docs/design/gc.md`): a GC pass (evict, sweep,
//! compact), pins, deleting paths, budgets and what `stats` shows of them.

mod access;
mod plan;
pub mod settings;

pub use access::AccessLog;
pub use plan::{Eviction, Reason};
pub use settings::{GcFileConfig, GcSettings, SizeBudget};

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::{require_admin, Larder, ServiceError};
use crate::auth::{Caller, Permission};
use crate::meta::{now, PinRow};
use crate::nix::store_path::StorePath;
use plan::{ChunkCounts, Limits};

/// Evictions listed in a report, at most (the counts are always complete).
const REPORT_EVICTIONS_MAX: usize = 1000;
/// The nice value of the GC thread: it yields the cores to requests.
const GC_NICE: i32 = 10;
/// A pack whose live fraction is at least this is never worth rewriting.
const COMPACT_NEVER_ABOVE: f64 = 0.95;

/// What `larder gc` asks for.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct GcOptions {
    /// Plan and count, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What one pass did (or, dry, would do).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct GcReport {
    pub dry_run: bool,
    /// Unix seconds.
    pub started_at: i64,
    pub duration_ms: u64,
    pub paths_evicted: u64,
    pub evicted_for_retention: u64,
    pub evicted_for_quota: u64,
    pub evicted_for_budget: u64,
    /// The first evictions, in order.
    pub evictions: Vec<Eviction>,
    pub nars_removed: u64,
    pub staged_expired: u64,
    pub chunks_reclaimed: u64,
    /// Record bytes no longer indexed.
    pub bytes_reclaimed: u64,
    pub packs_compacted: u64,
    pub bytes_moved: u64,
    /// Packs whose dead ranges were punched out in place, because the disk had
    /// no room to rewrite them (`docs/design/gc.md`).
    #[serde(default)]
    pub packs_punched: u64,
    /// Pack bytes on disk before and after.
    /// Time spent marking (the SQLite snapshot) and sweeping the index.
    #[serde(default)]
    pub mark_sweep_ms: u64,
    /// Time spent rewriting packs.
    #[serde(default)]
    pub compact_ms: u64,
    pub stored_bytes_before: u64,
    pub stored_bytes_after: u64,
    /// Record bytes of the chunks still live after the pass.
    pub live_bytes: u64,
    /// The budget the pass worked to, when one is set.
    pub max_bytes: Option<u64>,
}

/// Lifecycle figures for `larder stats`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LifecycleStats {
    /// Pack bytes on disk.
    pub stored_bytes: u64,
    /// Record bytes the index names, plus the pack headers: what the packs would
    /// take with every unindexed byte given back.
    pub indexed_bytes: u64,
    /// Uncompressed NAR bytes of every stored NAR.
    pub logical_nar_bytes: u64,
    /// Stored bytes a GC pass would give back (unindexed pack space), at least.
    pub reclaimable_bytes: u64,
    pub max_bytes: Option<u64>,
    pub last_gc: Option<GcReport>,
}

/// A cache's usage, for `cache info`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CacheUsage {
    pub paths: u64,
    /// Stored (compressed) bytes of its NARs, before dedup with other caches.
    pub stored_bytes: u64,
    /// Uncompressed NAR bytes.
    pub logical_bytes: u64,
    pub quota_bytes: Option<u64>,
    pub retention_period: Option<i64>,
    pub pins: u64,
}

/// The store path hash of a full store path, or of a bare `hash-name`.
fn path_hash_of(store_dir: &str, path: &str) -> Result<String, ServiceError> {
    let full = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{store_dir}/{path}")
    };
    let sp = StorePath::from_full_path(store_dir, &full).map_err(|e| {
        ServiceError::BadRequest(format!("{path:?} is not a store path of this cache: {e}"))
    })?;
    Ok(sp.hash.to_nix32())
}

impl Larder {
    /// The size budget in bytes, with a percentage resolved against the data
    /// dir's filesystem.
    pub fn budget_bytes(&self) -> Result<Option<u64>, ServiceError> {
        Ok(match self.config.gc.max_size {
            None => None,
            Some(SizeBudget::Bytes(b)) => Some(b),
            Some(SizeBudget::PercentOfDisk(p)) => {
                let st = rustix::fs::statvfs(&self.config.data_dir).map_err(|e| {
                    ServiceError::Internal(format!(
                        "statvfs {}: {e}",
                        self.config.data_dir.display()
                    ))
                })?;
                let total = st.f_blocks.saturating_mul(st.f_frsize);
                Some((total as f64 * p) as u64)
            }
        })
    }

    /// One GC pass (admin only). Only one runs at a time; another caller waits.
    pub fn gc(&self, caller: &Caller, opts: GcOptions) -> Result<GcReport, ServiceError> {
        require_admin(caller)?;
        let dry = opts.dry_run;
        let result = self.gc_pass(opts);
        if !dry {
            self.metrics.gc_pass(result.is_ok());
        }
        result
    }

    fn gc_pass(&self, opts: GcOptions) -> Result<GcReport, ServiceError> {
        let _one = self
            .gc_lock
            .lock()
            .map_err(|_| ServiceError::Internal("GC lock poisoned".into()))?;
        let started = Instant::now();
        let dry = opts.dry_run;
        let mut report = GcReport {
            dry_run: dry,
            started_at: now(),
            ..Default::default()
        };
        self.access.flush(&self.meta)?;
        if !dry {
            report.staged_expired = self.expire_staged()? as u64;
        }
        let store = self.store()?;
        store.reap_retired()?;
        report.stored_bytes_before = store.stored_bytes()?;
        let max_bytes = self.budget_bytes()?;
        report.max_bytes = max_bytes;

        // Mark (inside the hold window), then plan evictions on the counts.
        let mark_started = Instant::now();
        let window = store.open_window()?;
        let mut counts = ChunkCounts::default();
        let snap = self.meta.gc_snapshot(|m| counts.add_manifest(m))?;
        let limits = Limits {
            now: now(),
            default_retention: self
                .config
                .gc
                .default_retention
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            max_bytes,
            low_water_bytes: max_bytes
                .map(|m| (m as f64 * self.config.gc.low_water) as u64)
                .unwrap_or(0),
        };
        let mut manifest_err: Option<ServiceError> = None;
        let evictions = plan::plan(&snap, &limits, &mut counts, &mut |nar_id| match self
            .meta
            .nar_manifest(nar_id)
        {
            Ok(m) => m,
            Err(e) => {
                manifest_err.get_or_insert(e.into());
                None
            }
        });
        if let Some(e) = manifest_err {
            return Err(e);
        }
        for e in &evictions {
            match e.reason {
                Reason::Retention => report.evicted_for_retention += 1,
                Reason::Quota => report.evicted_for_quota += 1,
                Reason::Budget => report.evicted_for_budget += 1,
            }
        }
        report.paths_evicted = evictions.len() as u64;
        if !dry && !evictions.is_empty() {
            let keys: Vec<(i64, String)> = evictions
                .iter()
                .map(|e| (e.cache_id, e.path_hash.clone()))
                .collect();
            let (_, nars) = self.meta.remove_objects(&keys)?;
            report.nars_removed = nars;
            for e in evictions.iter().take(20) {
                tracing::info!(cache = %e.cache, store_path = %e.store_path, reason = ?e.reason, "evicted");
            }
        }
        report.evictions = evictions.into_iter().take(REPORT_EVICTIONS_MAX).collect();
        report.live_bytes = counts.live_bytes();

        // Sweep what no manifest names.
        let swept = store.sweep(&window, |id| counts.is_live(id), dry)?;
        report.chunks_reclaimed = swept.chunks;
        report.bytes_reclaimed = swept.bytes;
        report.mark_sweep_ms = mark_started.elapsed().as_millis() as u64;
        let compact_started = Instant::now();

        // Compact sparse packs (dry: count the ones that would be).
        let usage = if dry {
            let is_live = |id: &[u8; 32]| counts.is_live(id);
            store.pack_usage(Some(&is_live))?
        } else {
            store.pack_usage(None)?
        };
        // The mark is not needed past here; compaction has its own memory.
        drop(counts);
        let open = store.open_segment();
        let mut candidates: Vec<(f64, u32, u64)> = usage
            .iter()
            .filter(|u| !u.busy || (Some(u.segment) == open && !dry))
            .map(|u| {
                let frac = if u.file_bytes <= 16 {
                    1.0
                } else {
                    u.live_bytes as f64 / u.file_bytes as f64
                };
                (frac, u.segment, u.file_bytes)
            })
            .filter(|(frac, _, _)| *frac < COMPACT_NEVER_ABOVE)
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut stored = report.stored_bytes_before;
        let target = max_bytes.map(|m| (m as f64 * self.config.gc.low_water) as u64);
        let mut chosen: Vec<u32> = Vec::new();
        for (frac, segment, file_bytes) in candidates {
            let over_budget = target.is_some_and(|t| stored > t);
            if frac >= self.config.gc.compact_below && !over_budget {
                continue;
            }
            chosen.push(segment);
            // What rewriting it gives back, about.
            stored = stored.saturating_sub((file_bytes as f64 * (1.0 - frac)) as u64);
        }
        // Rewrite a pack only while its live records fit in the free space left
        // beside the reserve; punch the dead ranges of the others in place.
        let live_of: HashMap<u32, u64> = usage.iter().map(|u| (u.segment, u.live_bytes)).collect();
        let mut room = disk_space(&self.config.data_dir)
            .map(|(free, total)| free.saturating_sub(disk_reserve(total)))
            .unwrap_or(u64::MAX);
        let (mut rewrite, mut punch) = (Vec::new(), Vec::new());
        for segment in chosen {
            let live = live_of.get(&segment).copied().unwrap_or(0);
            if live <= room {
                room -= live;
                rewrite.push(segment);
            } else {
                punch.push(segment);
            }
        }
        if dry {
            report.packs_compacted = rewrite.len() as u64;
            report.packs_punched = punch.len() as u64;
        } else if !rewrite.is_empty() || !punch.is_empty() {
            if open.is_some_and(|o| rewrite.contains(&o) || punch.contains(&o)) {
                // The pack being appended to: seal it so it can be rewritten.
                store.seal_open_pack()?;
            }
            for (_, done) in store.compact(&rewrite)? {
                if done.bytes_freed > 0 || done.records_moved > 0 {
                    report.packs_compacted += 1;
                    report.bytes_moved += done.bytes_moved;
                }
            }
            if !punch.is_empty() {
                let punched = store.punch_dead(&punch)?;
                report.packs_punched = punched.len() as u64;
                tracing::warn!(
                    packs = punched.len(),
                    dead_bytes = punched.iter().map(|(_, b)| b).sum::<u64>(),
                    "the disk has no room to rewrite sparse packs; their dead ranges are punched out in place"
                );
            }
        }
        report.compact_ms = compact_started.elapsed().as_millis() as u64;
        drop(window);
        report.stored_bytes_after = store.stored_bytes()?;
        report.duration_ms = started.elapsed().as_millis() as u64;
        if !dry {
            let text = serde_json::to_string(&report)
                .map_err(|e| ServiceError::Internal(format!("GC report: {e}")))?;
            self.meta.record_gc(report.started_at, &text)?;
            tracing::info!(
                paths_evicted = report.paths_evicted,
                chunks_reclaimed = report.chunks_reclaimed,
                packs_compacted = report.packs_compacted,
                stored_before = report.stored_bytes_before,
                stored_after = report.stored_bytes_after,
                duration_ms = report.duration_ms,
                "GC pass"
            );
        }
        Ok(report)
    }

    /// Run a pass on a thread of its own at a lower CPU priority (nice 10), so
    /// requests keep the cores they need while it runs; resolves with its report.
    pub async fn gc_in_background(
        self: &std::sync::Arc<Self>,
        caller: Caller,
        opts: GcOptions,
    ) -> Result<GcReport, ServiceError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let l = self.clone();
        std::thread::Builder::new()
            .name("larder-gc".into())
            .spawn(move || {
                // A thread's own nice value (Linux); failing to lower it is harmless.
                // SAFETY: setpriority with PRIO_PROCESS and who = 0 changes only the
                // calling thread's priority and touches no memory.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, GC_NICE);
                }
                let _ = tx.send(l.gc(&caller, opts));
            })
            .map_err(|e| ServiceError::Internal(format!("starting the GC thread: {e}")))?;
        rx.await
            .map_err(|_| ServiceError::Internal("the GC thread ended without a report".into()))?
    }

    /// Whether the store or a cache is over its budget (after a push): the
    /// server then starts a pass at once.
    pub fn over_budget(&self, cache_id: Option<i64>) -> Result<bool, ServiceError> {
        if let Some(max) = self.budget_bytes()? {
            if self.store()?.stored_bytes()? > max {
                return Ok(true);
            }
        }
        if let Some(id) = cache_id {
            if let Some(q) = self.meta.quota(id)? {
                let (_, stored, _) = self.meta.cache_usage(id)?;
                return Ok(stored > q);
            }
        }
        Ok(false)
    }

    /// Refuse, before reading it, an upload of `len` bytes (its Content-Length)
    /// that the data dir's filesystem has no room for, keeping
    /// [`disk_reserve`] free for GC, compaction and the metadata. A retry of the
    /// same upload is then refused at once too, rather than read to the point
    /// where the disk fills again.
    pub(crate) fn check_disk_room(&self, len: u64) -> Result<(), ServiceError> {
        let Some((free, total)) = disk_space(&self.config.data_dir) else {
            return Ok(());
        };
        let reserve = disk_reserve(total);
        if len.saturating_add(reserve) > free {
            return Err(ServiceError::InsufficientStorage(format!(
                "the server's disk has {} free (it keeps {} for GC and metadata), too little for this upload of {}; the operator must free space (larder path delete, larder gc)",
                human_bytes(free),
                human_bytes(reserve),
                human_bytes(len)
            )));
        }
        Ok(())
    }

    /// Refuse a NAR that can never fit: larger than the budget or the quota.
    pub(crate) fn check_fits(
        &self,
        cache_id: i64,
        cache: &str,
        stored: u64,
    ) -> Result<(), ServiceError> {
        if let Some(max) = self.budget_bytes()? {
            if stored > max {
                return Err(ServiceError::InsufficientStorage(format!(
                    "this NAR needs {stored} bytes stored, more than the server's whole budget of {max} bytes ([gc] max_size)"
                )));
            }
        }
        if let Some(q) = self.meta.quota(cache_id)? {
            if stored > q {
                return Err(ServiceError::InsufficientStorage(format!(
                    "this NAR needs {stored} bytes stored, more than cache {cache}'s quota of {q} bytes"
                )));
            }
        }
        Ok(())
    }

    /// Hold the chunks of a stored NAR a commit is about to name again; `None`
    /// when GC already took one of them (the NAR must then be uploaded again).
    pub(crate) fn hold_stored_nar(
        &self,
        manifest: &[u8],
    ) -> Result<Option<crate::store::Hold>, ServiceError> {
        let m = crate::store::Manifest::decode(manifest)
            .ok_or_else(|| ServiceError::Internal("a NAR manifest does not decode".into()))?;
        let ids: Vec<crate::store::ChunkId> = m.chunks.iter().map(|c| c.id).collect();
        match self.store()?.hold_existing(&ids) {
            Ok(h) => Ok(Some(h)),
            Err(crate::store::StoreError::Missing(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// After a path is committed: start a pass if a budget is exceeded.
    pub(crate) fn after_push(&self, cache_id: i64) {
        match self.over_budget(Some(cache_id)) {
            Ok(true) => self.wake_gc(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "checking the storage budget failed"),
        }
    }

    /// Start a GC pass soon (the server's lifecycle task waits on this).
    pub fn wake_gc(&self) {
        self.gc_wake.notify_one();
    }

    /// Resolves when a push asked for a pass ([`Larder::wake_gc`]).
    pub async fn gc_woken(&self) {
        self.gc_wake.notified().await
    }

    /// Note a fetch (narinfo or NAR GET) for access-time tracking.
    pub fn note_access(&self, cache_id: i64, key: crate::meta::AccessKey) {
        self.access.note(cache_id, key, now());
    }

    /// Write batched access times.
    pub fn flush_access(&self) -> Result<usize, ServiceError> {
        Ok(self.access.flush(&self.meta)?)
    }

    /// Pin paths (with `closure`, each path of their closures in this cache).
    /// Needs `configure-cache`. Returns the store paths pinned.
    pub fn pin(
        &self,
        caller: &Caller,
        cache: &str,
        paths: &[String],
        closure: bool,
    ) -> Result<Vec<String>, ServiceError> {
        let row = self.authorize(caller, cache, Permission::ConfigureCache)?;
        let mut todo: Vec<String> = Vec::new();
        for p in paths {
            todo.push(path_hash_of(&row.store_dir, p)?);
        }
        let mut seen: HashSet<String> = HashSet::new();
        let mut pins: Vec<(String, String)> = Vec::new();
        let mut first = true;
        while let Some(h) = todo.pop() {
            if !seen.insert(h.clone()) {
                continue;
            }
            match self.meta.object_refs(row.id, &h)? {
                Some((store_path, refs)) => {
                    pins.push((h, store_path));
                    if closure {
                        todo.extend(refs);
                    }
                }
                None if first || !closure => {
                    return Err(ServiceError::NotFound(format!(
                        "cache {cache} has no store path with hash {h}"
                    )))
                }
                // A reference the cache does not hold: nothing to pin.
                None => {}
            }
            if todo.is_empty() {
                first = false;
            }
        }
        self.meta.pin(row.id, &pins)?;
        let mut out: Vec<String> = pins.into_iter().map(|(_, sp)| sp).collect();
        out.sort();
        Ok(out)
    }

    /// Unpin paths; returns how many were pinned.
    pub fn unpin(
        &self,
        caller: &Caller,
        cache: &str,
        paths: &[String],
    ) -> Result<u64, ServiceError> {
        let row = self.authorize(caller, cache, Permission::ConfigureCache)?;
        let hashes = paths
            .iter()
            .map(|p| path_hash_of(&row.store_dir, p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.meta.unpin(row.id, &hashes)?)
    }

    /// The pins of a cache (needs `pull`).
    pub fn pins(&self, caller: &Caller, cache: &str) -> Result<Vec<PinRow>, ServiceError> {
        let row = self.authorize(caller, cache, Permission::Pull)?;
        Ok(self.meta.pins(row.id)?)
    }

    /// Delete paths from a cache at once (needs `delete`); their bytes go at the
    /// next GC pass. Returns the store paths deleted.
    pub fn delete_paths(
        &self,
        caller: &Caller,
        cache: &str,
        paths: &[String],
    ) -> Result<Vec<String>, ServiceError> {
        let row = self.authorize(caller, cache, Permission::Delete)?;
        let mut keys = Vec::new();
        let mut deleted = Vec::new();
        for p in paths {
            let h = path_hash_of(&row.store_dir, p)?;
            match self.meta.object_refs(row.id, &h)? {
                Some((store_path, _)) => {
                    deleted.push(store_path);
                    keys.push((row.id, h));
                }
                None => {
                    return Err(ServiceError::NotFound(format!(
                        "cache {cache} has no store path {p}"
                    )))
                }
            }
        }
        self.meta.remove_objects(&keys)?;
        tracing::info!(cache, n = deleted.len(), "deleted paths");
        Ok(deleted)
    }

    /// A cache's usage and lifecycle settings (needs `pull`).
    pub fn cache_usage(&self, caller: &Caller, cache: &str) -> Result<CacheUsage, ServiceError> {
        let row = self.authorize(caller, cache, Permission::Pull)?;
        self.usage_of(&row)
    }

    /// A cache's usage, for a caller already authorized.
    pub(crate) fn usage_of(&self, row: &crate::meta::CacheRow) -> Result<CacheUsage, ServiceError> {
        let (paths, stored_bytes, logical_bytes) = self.meta.cache_usage(row.id)?;
        Ok(CacheUsage {
            paths,
            stored_bytes,
            logical_bytes,
            quota_bytes: self.meta.quota(row.id)?,
            retention_period: row.retention_period,
            pins: self.meta.pins(row.id)?.len() as u64,
        })
    }

    /// Set or clear a cache's quota (needs `configure-cache`).
    pub fn set_quota(
        &self,
        caller: &Caller,
        cache: &str,
        bytes: Option<u64>,
    ) -> Result<(), ServiceError> {
        let row = self.authorize(caller, cache, Permission::ConfigureCache)?;
        self.meta.set_quota(row.id, bytes)?;
        Ok(())
    }

    /// Lifecycle figures for `larder stats`.
    pub fn lifecycle_stats(&self) -> Result<LifecycleStats, ServiceError> {
        let store = self.store()?;
        let stored_bytes = store.stored_bytes()?;
        let idx = store.stats()?;
        // Pack headers are part of every pack, not something a pass gives back.
        let indexed_bytes = idx.frame_bytes
            + idx.chunks * plan::RECORD_OVERHEAD
            + store.pack_count()? * crate::store::PACK_HEADER_BYTES;
        let (_, logical_nar_bytes) = self.meta.nar_totals()?;
        let last_gc = match self.meta.last_gc()? {
            Some((_, text)) => serde_json::from_str(&text).ok(),
            None => None,
        };
        Ok(LifecycleStats {
            stored_bytes,
            indexed_bytes,
            logical_nar_bytes,
            reclaimable_bytes: stored_bytes.saturating_sub(indexed_bytes),
            max_bytes: self.budget_bytes()?,
            last_gc,
        })
    }
}

/// Bytes free to an unprivileged writer and the size of the filesystem that
/// holds `dir`; `None` when it cannot be asked.
fn disk_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(dir).ok()?;
    let block = st.f_frsize.max(1);
    Some((
        st.f_bavail.saturating_mul(block),
        st.f_blocks.saturating_mul(block),
    ))
}

/// The free space uploads leave alone on a filesystem of `total` bytes: 2 %, at
/// most 64 MiB. GC's sweep and eviction, SQLite and the redb index write into it.
pub fn disk_reserve(total: u64) -> u64 {
    (total / 50).min(64 << 20)
}

fn human_bytes(n: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    format!("{:.1} MiB", n as f64 / MIB)
}
