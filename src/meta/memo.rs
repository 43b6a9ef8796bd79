//! An in-memory copy of the two reads every substituter request makes: the cache
//! row by name, and a path's served narinfo. A hit answers without SQLite and
//! without leaving the async worker.
//!
//! Consistency: every write in this process that can change either answer
//! (`commit_object`, `mark_damaged`, creating, configuring or destroying a cache)
//! calls [`Memo::invalidate`] after its transaction commits. A reader notes the
//! generation before it queries SQLite and stores its answer only if no
//! invalidation happened meanwhile, so a read that raced a commit is never kept.
//! Writes by other processes on the same data dir (the `larder` CLI) are noticed
//! through SQLite's `data_version` by [`super::Meta::poll_external_changes`], which
//! the server calls every 250 ms; until then a destroyed or reconfigured cache may
//! still be answered from memory. Only caches that exist are remembered, so a cache
//! created by the CLI is visible at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::CacheRow;

/// Narinfo text kept at most, in bytes (keys included, roughly). When a new entry
/// would pass it, the narinfo map starts over: cheap, and a busy cache refills it
/// with what is asked for now.
const NARINFO_BYTES_MAX: usize = 8 << 20;
/// Cache rows kept at most.
const CACHES_MAX: usize = 4096;

#[derive(Default)]
pub(super) struct Memo {
    generation: AtomicU64,
    maps: RwLock<Maps>,
}

#[derive(Default)]
struct Maps {
    caches: HashMap<String, Arc<CacheRow>>,
    /// `None`: the cache does not serve that path (absent, or its NAR is damaged).
    narinfos: HashMap<i64, HashMap<Box<str>, Option<Bytes>>>,
    narinfo_bytes: usize,
}

/// Proof of when a read began; see [`Memo::generation`].
#[derive(Clone, Copy)]
pub(super) struct Generation(u64);

impl Memo {
    pub(super) fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    /// Forget everything. Call after a write has committed.
    pub(super) fn invalidate(&self) {
        if let Ok(mut m) = self.maps.write() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            *m = Maps::default();
        }
    }

    pub(super) fn cache(&self, name: &str) -> Option<Arc<CacheRow>> {
        self.maps.read().ok()?.caches.get(name).cloned()
    }

    pub(super) fn put_cache(&self, at: Generation, row: Arc<CacheRow>) {
        let Ok(mut m) = self.maps.write() else {
            return;
        };
        if self.generation.load(Ordering::Acquire) != at.0 {
            return;
        }
        if m.caches.len() >= CACHES_MAX {
            m.caches.clear();
        }
        m.caches.insert(row.name.clone(), row);
    }

    /// `Some(answer)` when known; the answer itself may be "not served".
    pub(super) fn narinfo(&self, cache_id: i64, path_hash: &str) -> Option<Option<Bytes>> {
        let m = self.maps.read().ok()?;
        m.narinfos.get(&cache_id)?.get(path_hash).cloned()
    }

    pub(super) fn put_narinfo(
        &self,
        at: Generation,
        cache_id: i64,
        path_hash: &str,
        text: Option<Bytes>,
    ) {
        let Ok(mut m) = self.maps.write() else {
            return;
        };
        if self.generation.load(Ordering::Acquire) != at.0 {
            return;
        }
        let cost = path_hash.len() + 64 + text.as_ref().map_or(0, |t| t.len());
        if m.narinfo_bytes + cost > NARINFO_BYTES_MAX {
            m.narinfos.clear();
            m.narinfo_bytes = 0;
        }
        if m.narinfos
            .entry(cache_id)
            .or_default()
            .insert(path_hash.into(), text)
            .is_none()
        {
            m.narinfo_bytes += cost;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> Arc<CacheRow> {
        Arc::new(CacheRow {
            id: 1,
            name: name.into(),
            is_public: true,
            priority: 40,
            store_dir: "/nix/store".into(),
            signing_key: String::new(),
            upstream_cache_key_names: Vec::new(),
            retention_period: None,
            upstreams: Vec::new(),
        })
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let memo = Memo::default();
        let before = memo.generation();
        memo.invalidate();
        memo.put_cache(before, row("a"));
        memo.put_narinfo(before, 1, "h", Some(Bytes::from_static(b"old")));
        assert!(memo.cache("a").is_none());
        assert!(memo.narinfo(1, "h").is_none());

        let now = memo.generation();
        memo.put_cache(now, row("a"));
        memo.put_narinfo(now, 1, "h", None);
        assert_eq!(memo.cache("a").map(|r| r.name.clone()), Some("a".into()));
        assert_eq!(memo.narinfo(1, "h"), Some(None));
        memo.invalidate();
        assert!(memo.cache("a").is_none());
        assert!(memo.narinfo(1, "h").is_none());
    }

    #[test]
    fn the_narinfo_map_stays_bounded() {
        let memo = Memo::default();
        let text = Bytes::from("x".repeat(4096));
        for i in 0..10_000 {
            memo.put_narinfo(memo.generation(), 1, &format!("{i}"), Some(text.clone()));
        }
        let m = memo.maps.read().unwrap();
        assert!(m.narinfo_bytes <= NARINFO_BYTES_MAX);
        assert!(!m.narinfos.is_empty());
    }
}
