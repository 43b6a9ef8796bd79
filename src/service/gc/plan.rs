//! Which paths a GC pass evicts: retention, then quotas, then the global budget,
//! always from the top of a closure down, never a pinned path
//! (`docs/design/gc.md`). Pure: the pass feeds it a snapshot and a way to read
//! a NAR's manifest, and applies what it returns.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::meta::GcSnapshot;

/// Bytes a record takes in a pack besides its frame.
pub const RECORD_OVERHEAD: u64 = 56;

/// Why a path is evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Retention,
    Quota,
    Budget,
}

/// One path a pass removes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Eviction {
    pub cache: String,
    #[serde(skip)]
    pub cache_id: i64,
    #[serde(skip)]
    pub path_hash: String,
    pub store_path: String,
    pub reason: Reason,
}

/// How many live manifests name each chunk (by the first 8 bytes of its id), and
/// its record size: the mark.
#[derive(Default)]
pub struct ChunkCounts {
    counts: HashMap<u64, (u32, u32)>,
    live_bytes: u64,
}

fn prefix(id: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    p.copy_from_slice(&id[..8]);
    u64::from_le_bytes(p)
}

/// The (id, frame length) entries of an encoded manifest (40 bytes each).
fn entries(manifest: &[u8]) -> impl Iterator<Item = (&[u8], u32)> {
    manifest
        .chunks_exact(40)
        .map(|e| (&e[..32], u32::from_le_bytes([e[36], e[37], e[38], e[39]])))
}

impl ChunkCounts {
    pub fn add_manifest(&mut self, manifest: &[u8]) {
        for (id, frame_len) in entries(manifest) {
            let e = self.counts.entry(prefix(id)).or_insert((0, frame_len));
            if e.0 == 0 {
                self.live_bytes += RECORD_OVERHEAD + u64::from(frame_len);
            }
            e.0 = e.0.saturating_add(1);
        }
    }

    pub fn remove_manifest(&mut self, manifest: &[u8]) {
        for (id, _) in entries(manifest) {
            if let Some(e) = self.counts.get_mut(&prefix(id)) {
                if e.0 > 0 {
                    e.0 -= 1;
                    if e.0 == 0 {
                        self.live_bytes = self
                            .live_bytes
                            .saturating_sub(RECORD_OVERHEAD + u64::from(e.1));
                    }
                }
            }
        }
    }

    /// Whether a live manifest names this chunk (or one with the same prefix).
    pub fn is_live(&self, id: &[u8; 32]) -> bool {
        self.counts.get(&prefix(id)).is_some_and(|e| e.0 > 0)
    }

    /// Record bytes of the live chunks.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }
}

/// What the plan needs besides the snapshot.
pub struct Limits {
    pub now: i64,
    /// Retention of caches without their own, in seconds.
    pub default_retention: Option<i64>,
    /// Evict while live bytes exceed this ...
    pub max_bytes: Option<u64>,
    /// ... down to this.
    pub low_water_bytes: u64,
}

struct Graph<'s> {
    snap: &'s GcSnapshot,
    alive: Vec<bool>,
    referrers: Vec<u32>,
    /// Reference edges as object indices, per object.
    refs: Vec<Vec<usize>>,
    pinned: Vec<bool>,
    nar_users: HashMap<i64, u32>,
    cache_bytes: HashMap<i64, u64>,
}

impl<'s> Graph<'s> {
    fn new(snap: &'s GcSnapshot) -> Self {
        let n = snap.objects.len();
        let mut by_key: HashMap<(i64, &str), usize> = HashMap::with_capacity(n);
        for (i, o) in snap.objects.iter().enumerate() {
            by_key.insert((o.cache_id, o.path_hash.as_str()), i);
        }
        let mut refs = vec![Vec::new(); n];
        let mut referrers = vec![0u32; n];
        let mut nar_users: HashMap<i64, u32> = HashMap::new();
        let mut cache_bytes: HashMap<i64, u64> = HashMap::new();
        let mut pinned = vec![false; n];
        for (i, o) in snap.objects.iter().enumerate() {
            for r in &o.references {
                if let Some(&j) = by_key.get(&(o.cache_id, r.as_str())) {
                    if j != i {
                        refs[i].push(j);
                        referrers[j] += 1;
                    }
                }
            }
            *nar_users.entry(o.nar_id).or_insert(0) += 1;
            *cache_bytes.entry(o.cache_id).or_insert(0) +=
                snap.nar_file_size.get(&o.nar_id).copied().unwrap_or(0);
            pinned[i] = snap.pins.contains(&(o.cache_id, o.path_hash.clone()));
        }
        Graph {
            snap,
            alive: vec![true; n],
            referrers,
            refs,
            pinned,
            nar_users,
            cache_bytes,
        }
    }

    fn is_top(&self, i: usize) -> bool {
        self.alive[i] && self.referrers[i] == 0 && !self.pinned[i]
    }

    /// Remove object `i`; returns the references that became tops.
    fn evict(
        &mut self,
        i: usize,
        counts: &mut ChunkCounts,
        manifest: &mut dyn FnMut(i64) -> Option<Vec<u8>>,
    ) -> Vec<usize> {
        self.alive[i] = false;
        let o = &self.snap.objects[i];
        if let Some(b) = self.cache_bytes.get_mut(&o.cache_id) {
            *b = b.saturating_sub(self.snap.nar_file_size.get(&o.nar_id).copied().unwrap_or(0));
        }
        if let Some(u) = self.nar_users.get_mut(&o.nar_id) {
            *u -= 1;
            if *u == 0 {
                if let Some(m) = manifest(o.nar_id) {
                    counts.remove_manifest(&m);
                }
            }
        }
        let mut freed = Vec::new();
        for k in 0..self.refs[i].len() {
            let j = self.refs[i][k];
            self.referrers[j] -= 1;
            if self.is_top(j) {
                freed.push(j);
            }
        }
        freed
    }
}

/// Plan a pass: what goes, in order. `counts` is the mark and is updated to the
/// state after the evictions.
pub fn plan(
    snap: &GcSnapshot,
    limits: &Limits,
    counts: &mut ChunkCounts,
    manifest: &mut dyn FnMut(i64) -> Option<Vec<u8>>,
) -> Vec<Eviction> {
    let mut g = Graph::new(snap);
    let mut out: Vec<Eviction> = Vec::new();
    let names: HashMap<i64, &str> = snap
        .caches
        .iter()
        .map(|c| (c.id, c.name.as_str()))
        .collect();
    let record = |i: usize, reason: Reason, out: &mut Vec<Eviction>| {
        let o = &snap.objects[i];
        out.push(Eviction {
            cache: names.get(&o.cache_id).copied().unwrap_or("").to_owned(),
            cache_id: o.cache_id,
            path_hash: o.path_hash.clone(),
            store_path: o.store_path.clone(),
            reason,
        });
    };

    // 1. Retention: every top last used before the cutoff, repeatedly.
    let retention: HashMap<i64, i64> = snap
        .caches
        .iter()
        .filter_map(|c| {
            c.retention_period
                .or(limits.default_retention)
                .filter(|p| *p > 0)
                .map(|p| (c.id, limits.now.saturating_sub(p)))
        })
        .collect();
    if !retention.is_empty() {
        let expired = |i: usize| {
            let o = &snap.objects[i];
            retention
                .get(&o.cache_id)
                .is_some_and(|cutoff| o.last_used < *cutoff)
        };
        let mut work: Vec<usize> = (0..snap.objects.len())
            .filter(|&i| g.is_top(i) && expired(i))
            .collect();
        while let Some(i) = work.pop() {
            if !g.is_top(i) {
                continue;
            }
            record(i, Reason::Retention, &mut out);
            for j in g.evict(i, counts, manifest) {
                if expired(j) {
                    work.push(j);
                }
            }
        }
    }

    // 2. Quotas, least recently used first, per cache.
    for c in &snap.caches {
        let Some(quota) = c.quota_bytes else { continue };
        if g.cache_bytes.get(&c.id).copied().unwrap_or(0) <= quota {
            continue;
        }
        let mut heap: BinaryHeap<Reverse<(i64, usize)>> = (0..snap.objects.len())
            .filter(|&i| snap.objects[i].cache_id == c.id && g.is_top(i))
            .map(|i| Reverse((snap.objects[i].last_used, i)))
            .collect();
        while g.cache_bytes.get(&c.id).copied().unwrap_or(0) > quota {
            let Some(Reverse((_, i))) = heap.pop() else {
                break;
            };
            if !g.is_top(i) {
                continue;
            }
            record(i, Reason::Quota, &mut out);
            for j in g.evict(i, counts, manifest) {
                heap.push(Reverse((snap.objects[j].last_used, j)));
            }
        }
    }

    // 3. The global budget, least recently used first across caches.
    if let Some(max) = limits.max_bytes {
        if counts.live_bytes() > max {
            let mut heap: BinaryHeap<Reverse<(i64, usize)>> = (0..snap.objects.len())
                .filter(|&i| g.is_top(i))
                .map(|i| Reverse((snap.objects[i].last_used, i)))
                .collect();
            let mut seen: HashSet<usize> = HashSet::new();
            while counts.live_bytes() > limits.low_water_bytes {
                let Some(Reverse((_, i))) = heap.pop() else {
                    break;
                };
                if !g.is_top(i) || !seen.insert(i) {
                    continue;
                }
                record(i, Reason::Budget, &mut out);
                for j in g.evict(i, counts, manifest) {
                    heap.push(Reverse((snap.objects[j].last_used, j)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{CacheLifecycle, ObjectRef};

    fn manifest(ids: &[u8], frame: u32) -> Vec<u8> {
        let mut m = Vec::new();
        for &b in ids {
            let mut id = [0u8; 32];
            id[0] = b;
            m.extend_from_slice(&id);
            m.extend_from_slice(&100u32.to_le_bytes());
            m.extend_from_slice(&frame.to_le_bytes());
        }
        m
    }

    fn h(c: char) -> String {
        std::iter::repeat_n(c, 32).collect()
    }

    /// a -> b -> c in one cache; d alone. NAR i has chunk i, plus chunk 9 shared
    /// by a and d.
    fn snapshot() -> (GcSnapshot, HashMap<i64, Vec<u8>>) {
        let obj = |p: char, nar: i64, refs: &[char], used: i64| ObjectRef {
            cache_id: 1,
            path_hash: h(p),
            store_path: format!("/nix/store/{}-{p}", h(p)),
            nar_id: nar,
            references: refs.iter().map(|&r| h(r)).collect(),
            last_used: used,
        };
        let snap = GcSnapshot {
            objects: vec![
                obj('a', 1, &['b'], 100),
                obj('b', 2, &['c'], 50),
                obj('c', 3, &[], 10),
                obj('d', 4, &[], 200),
            ],
            caches: vec![CacheLifecycle {
                id: 1,
                name: "main".into(),
                retention_period: None,
                quota_bytes: None,
            }],
            pins: HashSet::new(),
            nar_file_size: [(1, 2000), (2, 1000), (3, 1000), (4, 2000)].into(),
        };
        let nars: HashMap<i64, Vec<u8>> = [
            (1, manifest(&[1, 9], 1000)),
            (2, manifest(&[2], 1000)),
            (3, manifest(&[3], 1000)),
            (4, manifest(&[4, 9], 1000)),
        ]
        .into();
        (snap, nars)
    }

    fn run(
        snap: &GcSnapshot,
        nars: &HashMap<i64, Vec<u8>>,
        limits: Limits,
    ) -> (Vec<String>, ChunkCounts) {
        let mut counts = ChunkCounts::default();
        for m in nars.values() {
            counts.add_manifest(m);
        }
        let ev = plan(snap, &limits, &mut counts, &mut |id| nars.get(&id).cloned());
        (
            ev.into_iter()
                .map(|e| e.store_path[44..].to_owned())
                .collect(),
            counts,
        )
    }

    fn limits(now: i64, retention: Option<i64>, max: Option<u64>, low: u64) -> Limits {
        Limits {
            now,
            default_retention: retention,
            max_bytes: max,
            low_water_bytes: low,
        }
    }

    #[test]
    fn retention_takes_closures_from_the_top_and_keeps_used_ones() {
        let (snap, nars) = snapshot();
        // Cutoff 60: a (100) is fresh, so b (50) and c (10) stay under it.
        let (ev, _) = run(&snap, &nars, limits(160, Some(100), None, 0));
        assert!(ev.is_empty(), "{ev:?}");
        // Cutoff 150: a goes, then b, then c; d (200) stays.
        let (ev, counts) = run(&snap, &nars, limits(250, Some(100), None, 0));
        assert_eq!(ev, ["a", "b", "c"]);
        // Chunk 9 is shared with d and stays live.
        let mut nine = [0u8; 32];
        nine[0] = 9;
        assert!(counts.is_live(&nine));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(!counts.is_live(&one));
    }

    #[test]
    fn budget_evicts_lru_tops_and_never_a_live_dependency() {
        let (snap, nars) = snapshot();
        // Five distinct chunks of 1056 bytes; budget 4000 down to 3000: a goes
        // first (LRU top: a=100 < d=200; b and c are not tops), freeing chunk 1
        // only; then b (top now, 50) frees chunk 2 ... until under 3000.
        let (ev, counts) = run(&snap, &nars, limits(0, None, Some(4000), 3000));
        assert_eq!(ev, ["a", "b", "c"]);
        assert!(counts.live_bytes() <= 3000);
    }

    #[test]
    fn pins_survive_any_budget() {
        let (mut snap, nars) = snapshot();
        snap.pins.insert((1, h('a')));
        let (ev, _) = run(&snap, &nars, limits(0, None, Some(1), 0));
        // a is pinned, so b and c (its references) stay too; only d goes.
        assert_eq!(ev, ["d"]);
    }

    #[test]
    fn quota_counts_the_caches_nars() {
        let (mut snap, nars) = snapshot();
        snap.caches[0].quota_bytes = Some(3000);
        // 6000 bytes of NARs; LRU tops: a (100) then b, then under 3000.
        let (ev, _) = run(&snap, &nars, limits(0, None, None, 0));
        assert_eq!(ev, ["a", "b"]);
    }
}
