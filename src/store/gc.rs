//! What the chunk store offers garbage collection (`docs/design/gc.md`): holds
//! that keep an upload's chunks from being swept before its manifest is
//! committed, the sweep itself, pack usage, compaction, and retiring packs only
//! once no download that resolved into them is still reading.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use super::backend::{Frame, Location};
use super::pack::{PACK_HEADER_BYTES, RECORD_HEADER_BYTES};
use super::{ChunkId, ChunkStore, StoreError};

/// Index entries removed per sweep transaction: short enough that an upload
/// waiting on the hold mutex waits milliseconds.
const SWEEP_BATCH: usize = 4096;
/// Frame bytes copied per compaction step (one read, one append).
const COMPACT_STEP_BYTES: u64 = 4 << 20;

#[derive(Default)]
struct HoldState {
    /// Chunks held by uploads in progress, with how many holders each.
    held: HashMap<ChunkId, u32>,
    /// While a GC window is open: every chunk held since it opened.
    touched: Option<HashSet<ChunkId>>,
}

/// The chunks uploads hold until their manifests are committed.
#[derive(Default)]
pub(crate) struct Holds {
    state: Mutex<HoldState>,
}

fn poisoned() -> StoreError {
    StoreError::Index("hold set poisoned by an earlier panic".into())
}

impl Holds {
    fn add(&self, ids: &[ChunkId]) -> Result<(), StoreError> {
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        for id in ids {
            *s.held.entry(*id).or_insert(0) += 1;
        }
        if let Some(t) = s.touched.as_mut() {
            t.extend(ids.iter().copied());
        }
        Ok(())
    }

    fn release(&self, ids: &[ChunkId]) {
        if let Ok(mut s) = self.state.lock() {
            for id in ids {
                if let Some(n) = s.held.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        s.held.remove(id);
                    }
                }
            }
        }
    }
}

/// Chunks held for one upload (or one copy) until it is dropped: after the
/// manifest naming them is committed, or when the upload fails.
#[derive(Clone, Default)]
pub struct Hold {
    inner: Option<Arc<HoldInner>>,
}

struct HoldInner {
    holds: Weak<Holds>,
    ids: Mutex<Vec<ChunkId>>,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

impl Hold {
    fn new(holds: &Arc<Holds>) -> Self {
        Hold {
            inner: Some(Arc::new(HoldInner {
                holds: Arc::downgrade(holds),
                ids: Mutex::new(Vec::new()),
            })),
        }
    }

    /// Hold more chunks (before looking them up in the index).
    pub(crate) fn extend(&self, ids: &[ChunkId]) -> Result<(), StoreError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let Some(holds) = inner.holds.upgrade() else {
            return Ok(());
        };
        holds.add(ids)?;
        inner
            .ids
            .lock()
            .map_err(|_| poisoned())?
            .extend_from_slice(ids);
        Ok(())
    }
}

impl Drop for HoldInner {
    fn drop(&mut self) {
        if let (Some(holds), Ok(ids)) = (self.holds.upgrade(), self.ids.lock()) {
            holds.release(&ids);
        }
    }
}

/// An open GC window: while it lives, every chunk held is recorded as touched.
pub struct Window {
    holds: Arc<Holds>,
}

impl Drop for Window {
    fn drop(&mut self) {
        if let Ok(mut s) = self.holds.state.lock() {
            s.touched = None;
        }
    }
}

/// What a sweep removed (or, dry, would remove).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SweepOutcome {
    pub chunks: u64,
    /// Record bytes (header + frame) no longer indexed.
    pub bytes: u64,
}

/// How much of one pack the index still names.
#[derive(Clone, Copy, Debug)]
pub struct PackUsage {
    pub segment: u32,
    pub file_bytes: u64,
    pub live_bytes: u64,
    /// The pack being appended to, or one an upload in progress has appended to.
    pub busy: bool,
}

/// What compacting one pack did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompactOutcome {
    pub records_moved: u64,
    pub bytes_moved: u64,
    pub bytes_freed: u64,
}

/// The read epoch a resolved manifest was resolved in. A retired pack is unlinked
/// only once no resolved manifest from before its retirement is alive.
#[derive(Debug, Default)]
pub struct ReadEpoch;

/// What waits for the readers of an epoch to finish.
enum Retired {
    /// A pack to unlink.
    Pack(u32),
    /// Dead ranges of a pack to punch out.
    Holes(u32, Vec<(u64, u64)>),
}

#[derive(Default)]
pub(crate) struct Epochs {
    current: Mutex<Arc<ReadEpoch>>,
    retired: Mutex<Vec<(Weak<ReadEpoch>, Retired)>>,
}

impl Epochs {
    pub(crate) fn current(&self) -> Option<Arc<ReadEpoch>> {
        self.current.lock().ok().map(|c| c.clone())
    }
}

fn record_bytes(loc: &Location) -> u64 {
    RECORD_HEADER_BYTES + u64::from(loc.frame_len)
}

impl ChunkStore {
    /// A hold for an upload or a copy.
    pub fn new_hold(&self) -> Hold {
        Hold::new(&self.holds)
    }

    /// Hold chunks that a manifest about to be committed names without uploading
    /// them (an S3 copy, a narinfo for an already stored NAR), then check that
    /// each is still indexed: `Missing` when GC already took one.
    pub fn hold_existing(&self, ids: &[ChunkId]) -> Result<Hold, StoreError> {
        let hold = self.new_hold();
        hold.extend(ids)?;
        for (id, loc) in ids.iter().zip(self.index.get_many(ids)?) {
            if loc.is_none() {
                return Err(StoreError::Missing(*id));
            }
        }
        Ok(hold)
    }

    /// Open the GC window (see `docs/design/gc.md`): chunks held now, and every
    /// chunk held until the window is dropped, are never swept by this pass.
    pub fn open_window(&self) -> Result<Window, StoreError> {
        let mut s = self.holds.state.lock().map_err(|_| poisoned())?;
        let held: HashSet<ChunkId> = s.held.keys().copied().collect();
        s.touched = Some(held);
        Ok(Window {
            holds: self.holds.clone(),
        })
    }

    /// Every index entry, in key order, to `f`.
    pub fn for_each_indexed(
        &self,
        f: impl FnMut(&ChunkId, Location) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.index.for_each(f)
    }

    /// Remove index entries `live` says are dead, unless held or touched since
    /// `window` opened. With `dry_run`, only count them.
    pub fn sweep(
        &self,
        _window: &Window,
        live: impl Fn(&ChunkId) -> bool,
        dry_run: bool,
    ) -> Result<SweepOutcome, StoreError> {
        // Dead entries are removed a batch at a time while the walk goes on (redb
        // lets a writer commit beside an open reader), so memory stays one batch.
        let mut out = SweepOutcome::default();
        let mut dead: Vec<(ChunkId, Location)> = Vec::with_capacity(SWEEP_BATCH);
        self.index.for_each(|id, loc| {
            if !live(id) {
                dead.push((*id, loc));
                if dead.len() == SWEEP_BATCH {
                    self.sweep_batch(&dead, dry_run, &mut out)?;
                    dead.clear();
                }
            }
            Ok(())
        })?;
        self.sweep_batch(&dead, dry_run, &mut out)?;
        Ok(out)
    }

    /// Remove one batch of dead entries, minus any held or touched chunk.
    fn sweep_batch(
        &self,
        batch: &[(ChunkId, Location)],
        dry_run: bool,
        out: &mut SweepOutcome,
    ) -> Result<(), StoreError> {
        {
            let s = self.holds.state.lock().map_err(|_| poisoned())?;
            let gone: Vec<(ChunkId, Location)> = batch
                .iter()
                .filter(|(id, _)| {
                    !s.held.contains_key(id) && !s.touched.as_ref().is_some_and(|t| t.contains(id))
                })
                .copied()
                .collect();
            if !dry_run {
                self.index.remove_exact(&gone)?;
            }
            drop(s);
            out.chunks += gone.len() as u64;
            out.bytes += gone.iter().map(|(_, l)| record_bytes(l)).sum::<u64>();
        }
        Ok(())
    }

    /// How much of each pack the index names (with `live`, only the entries it
    /// calls live: what a sweep would leave).
    pub fn pack_usage(
        &self,
        live_filter: Option<&dyn Fn(&ChunkId) -> bool>,
    ) -> Result<Vec<PackUsage>, StoreError> {
        let mut live: HashMap<u32, u64> = HashMap::new();
        self.index.for_each(|id, loc| {
            if live_filter.is_none_or(|f| f(id)) {
                *live.entry(loc.segment).or_insert(0) += record_bytes(&loc);
            }
            Ok(())
        })?;
        let open = self.backend.open_segment();
        let busy = self.inflight.segments()?;
        Ok(self
            .backend
            .segments()?
            .into_iter()
            .map(|(segment, file_bytes)| PackUsage {
                segment,
                file_bytes,
                live_bytes: live.get(&segment).copied().unwrap_or(0),
                busy: open == Some(segment) || busy.contains(&segment),
            })
            .collect())
    }

    /// The pack appends go to now.
    pub fn open_segment(&self) -> Option<u32> {
        self.backend.open_segment()
    }

    /// Close the open pack so the next append starts a new one (and the closed
    /// one can be compacted once no upload in progress has records in it).
    pub fn seal_open_pack(&self) -> Result<(), StoreError> {
        self.backend.seal()
    }

    /// Bytes of every pack on disk.
    pub fn stored_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.backend.segments()?.iter().map(|(_, b)| b).sum())
    }

    /// Pack files (segments) in the backend.
    pub fn pack_count(&self) -> Result<u64, StoreError> {
        Ok(self.backend.segments()?.len() as u64)
    }

    /// Move the indexed records of sealed packs into the open pack, repoint the
    /// index, and retire the old packs. One index scan finds the records of all
    /// of them; a pack that is open, or holds records of an upload in progress,
    /// is skipped (its outcome is all zero).
    pub fn compact(&self, segments: &[u32]) -> Result<Vec<(u32, CompactOutcome)>, StoreError> {
        let open = self.backend.open_segment();
        let busy = self.inflight.segments()?;
        let sizes: HashMap<u32, u64> = self.backend.segments()?.into_iter().collect();
        let wanted: HashSet<u32> = segments
            .iter()
            .copied()
            .filter(|s| Some(*s) != open && !busy.contains(s))
            .collect();
        let mut records: HashMap<u32, Vec<(ChunkId, Location)>> = HashMap::new();
        if !wanted.is_empty() {
            // Count first, so each list is allocated once at its size: a pack of
            // tiny chunks can hold a million records.
            let mut counts: HashMap<u32, usize> = HashMap::new();
            self.index.for_each(|_, loc| {
                if wanted.contains(&loc.segment) {
                    *counts.entry(loc.segment).or_insert(0) += 1;
                }
                Ok(())
            })?;
            for (s, n) in counts {
                records.insert(s, Vec::with_capacity(n));
            }
            self.index.for_each(|id, loc| {
                if wanted.contains(&loc.segment) {
                    records.entry(loc.segment).or_default().push((*id, loc));
                }
                Ok(())
            })?;
        }
        let mut out = Vec::with_capacity(segments.len());
        for &segment in segments {
            if !wanted.contains(&segment) {
                out.push((segment, CompactOutcome::default()));
                continue;
            }
            let mut recs = records.remove(&segment).unwrap_or_default();
            recs.sort_by_key(|(_, l)| l.offset);
            let mut done = self.move_records(&recs)?;
            self.retire(segment)?;
            done.bytes_freed = sizes.get(&segment).copied().unwrap_or(0);
            out.push((segment, done));
        }
        Ok(out)
    }

    /// Copy records (checked on the way) to the open pack, sync, and repoint
    /// each index entry that still names the old place, a step at a time.
    fn move_records(&self, records: &[(ChunkId, Location)]) -> Result<CompactOutcome, StoreError> {
        let mut out = CompactOutcome::default();
        let mut i = 0;
        while i < records.len() {
            let mut j = i;
            let mut step = 0u64;
            while j < records.len()
                && (j == i || step + record_bytes(&records[j].1) <= COMPACT_STEP_BYTES)
            {
                step += record_bytes(&records[j].1);
                j += 1;
            }
            let batch = &records[i..j];
            let frames = self.backend.read(batch)?;
            let refs: Vec<Frame<'_>> = batch
                .iter()
                .zip(&frames)
                .map(|((id, loc), f)| Frame {
                    id,
                    raw_len: loc.raw_len,
                    bytes: f,
                })
                .collect();
            let new = self.backend.append(&refs)?;
            let mut segs: Vec<u32> = new.iter().map(|l| l.segment).collect();
            segs.sort_unstable();
            segs.dedup();
            self.backend.sync(&segs)?;
            let moves: Vec<(ChunkId, Location, Location)> = batch
                .iter()
                .zip(new)
                .map(|((id, old), new)| (*id, *old, new))
                .collect();
            self.index.repoint(&moves)?;
            out.records_moved += batch.len() as u64;
            out.bytes_moved += step;
            i = j;
        }
        Ok(out)
    }

    /// Stop new reads from finding `segment`, and unlink it once no download that
    /// resolved into it before now is still reading.
    pub fn retire(&self, segment: u32) -> Result<(), StoreError> {
        self.after_readers(Retired::Pack(segment))
    }

    /// End the current read epoch, queue `what` for when no reader of it (or an
    /// earlier epoch) is left, and do what is ready.
    fn after_readers(&self, what: Retired) -> Result<(), StoreError> {
        let old = {
            let mut cur = self.epochs.current.lock().map_err(|_| poisoned())?;
            std::mem::replace(&mut *cur, Arc::new(ReadEpoch))
        };
        self.epochs
            .retired
            .lock()
            .map_err(|_| poisoned())?
            .push((Arc::downgrade(&old), what));
        drop(old);
        self.reap_retired()
    }

    /// Unlink retired packs (and punch queued holes) no reader can still need:
    /// what was queued when epoch k ended is done once no reader of epoch k or
    /// any earlier one is left (a reader of an earlier epoch may have resolved
    /// into it too).
    pub fn reap_retired(&self) -> Result<(), StoreError> {
        let ready: Vec<Retired> = {
            let mut r = self.epochs.retired.lock().map_err(|_| poisoned())?;
            let mut reader_left = false;
            let mut keep = Vec::new();
            let mut gone = Vec::new();
            for (w, what) in r.drain(..) {
                reader_left |= w.upgrade().is_some();
                if reader_left {
                    keep.push((w, what));
                } else {
                    gone.push(what);
                }
            }
            *r = keep;
            gone
        };
        for what in ready {
            match what {
                Retired::Pack(segment) => self.backend.remove(segment)?,
                Retired::Holes(segment, ranges) => {
                    if !self.backend.punch(segment, &ranges)? {
                        tracing::warn!(
                            segment,
                            "the filesystem cannot punch holes; a sparse pack stays as it is"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Give back the dead bytes of sealed packs without copying anything (for a
    /// disk too full to rewrite them): the gaps between indexed records and the
    /// tail are punched out once no reader can still need them. A pack that is
    /// open, or holds records of an upload in progress, is skipped. Returns the
    /// dead bytes queued per pack.
    pub fn punch_dead(&self, segments: &[u32]) -> Result<Vec<(u32, u64)>, StoreError> {
        let open = self.backend.open_segment();
        let busy = self.inflight.segments()?;
        let wanted: HashSet<u32> = segments
            .iter()
            .copied()
            .filter(|s| Some(*s) != open && !busy.contains(s))
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let sizes: HashMap<u32, u64> = self.backend.segments()?.into_iter().collect();
        let mut live: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
        self.index.for_each(|_, loc| {
            if wanted.contains(&loc.segment) {
                live.entry(loc.segment)
                    .or_default()
                    .push((loc.offset, record_bytes(&loc)));
            }
            Ok(())
        })?;
        let mut out = Vec::new();
        for segment in wanted {
            let mut recs = live.remove(&segment).unwrap_or_default();
            recs.sort_unstable();
            let live_bytes: u64 = recs.iter().map(|(_, n)| n).sum();
            let mut ranges = Vec::new();
            let mut at = PACK_HEADER_BYTES;
            for (offset, len) in recs {
                if offset > at {
                    ranges.push((at, offset - at));
                }
                at = at.max(offset + len);
            }
            // The tail, whatever its length (the backend cuts it at the end).
            ranges.push((at, u64::MAX - at));
            let dead = sizes
                .get(&segment)
                .copied()
                .unwrap_or(0)
                .saturating_sub(live_bytes + PACK_HEADER_BYTES);
            self.after_readers(Retired::Holes(segment, ranges))?;
            out.push((segment, dead));
        }
        Ok(out)
    }

    /// Retired packs still waiting for readers to finish.
    pub fn retired_waiting(&self) -> usize {
        self.epochs.retired.lock().map(|r| r.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::test_data as data;

    fn ids(m: &crate::store::Manifest) -> HashSet<ChunkId> {
        m.chunks.iter().map(|c| c.id).collect()
    }

    /// Every byte a download resolved earlier reads now.
    fn read_resolved(store: &ChunkStore, nar: &crate::store::ResolvedNar) -> Vec<u8> {
        let mut got = Vec::new();
        store
            .read_raw_range(nar, 0, u64::MAX, |b| {
                got.extend_from_slice(&b);
                true
            })
            .unwrap();
        got
    }

    fn pack_count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir.join("packs")).unwrap().count()
    }

    #[test]
    fn a_sweep_never_takes_a_held_or_touched_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open_local(dir.path(), 3).unwrap();
        let a = store.ingest(&data(1_000_000, 1)[..]).unwrap();
        let b = store.ingest(&data(1_000_000, 2)[..]).unwrap();
        let b_ids = ids(&b.manifest);
        drop(b);
        // `a` is still held (its manifest "not committed yet"); `b` is not.
        let window = store.open_window().unwrap();
        // An upload that starts during the window and finds `b`'s chunks (a
        // dedup hit) touches them.
        let again = store.ingest(&data(1_000_000, 2)[..]).unwrap();
        assert_eq!(again.new_chunks, 0);
        drop(again);
        let swept = store.sweep(&window, |_| false, false).unwrap();
        assert_eq!(swept.chunks, 0, "held or touched chunks were swept");
        drop(window);
        // A new pass with nothing held takes `b` but not `a`.
        let window = store.open_window().unwrap();
        let swept = store.sweep(&window, |_| false, false).unwrap();
        assert_eq!(swept.chunks as usize, b_ids.len());
        drop(window);
        assert_eq!(store.read_all(&a.manifest).unwrap(), data(1_000_000, 1));
        assert!(store
            .index
            .get_many(&b_ids.into_iter().collect::<Vec<_>>())
            .unwrap()
            .iter()
            .all(Option::is_none));
        // hold_existing refuses what is gone.
        let m = store.ingest(&data(10_000, 3)[..]).unwrap();
        let id = m.manifest.chunks[0].id;
        drop(m);
        let w = store.open_window().unwrap();
        store.sweep(&w, |_| false, false).unwrap();
        drop(w);
        assert!(matches!(
            store.hold_existing(&[id]),
            Err(StoreError::Missing(_))
        ));
    }

    #[test]
    fn compaction_moves_live_records_and_waits_for_readers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open_local(dir.path(), 3).unwrap();
        let keep_bytes = data(2_000_000, 5);
        let keep = store.ingest(&keep_bytes[..]).unwrap();
        let gone = store.ingest(&data(2_000_000, 6)[..]).unwrap();
        let live = ids(&keep.manifest);
        drop((gone, keep.hold.clone()));
        let manifest = keep.manifest.clone();
        drop(keep);
        // A download resolved before the compaction.
        let early = store.resolve(&manifest).unwrap();
        let w = store.open_window().unwrap();
        store.sweep(&w, |id| live.contains(id), false).unwrap();
        let usage = store.pack_usage(None).unwrap();
        assert_eq!(usage.len(), 1);
        let old = usage[0].segment;
        assert!(usage[0].busy, "the open pack is busy");
        store.seal_open_pack().unwrap();
        let done = store.compact(&[old]).unwrap();
        drop(w);
        assert!(done[0].1.records_moved as usize >= live.len());
        // The early reader still reads the old pack; it is only unlinked after.
        assert_eq!(pack_count(dir.path()), 2);
        assert!(read_resolved(&store, &early) == keep_bytes);
        drop(early);
        store.reap_retired().unwrap();
        assert_eq!(pack_count(dir.path()), 1);
        assert!(store.read_all(&manifest).unwrap() == keep_bytes);
        assert!(store.stored_bytes().unwrap() < 2_200_000);
    }

    #[test]
    fn a_pack_waits_for_readers_of_every_earlier_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open_local(dir.path(), 3).unwrap();
        let a = store.ingest(&data(300_000, 7)[..]).unwrap().manifest;
        store.seal_open_pack().unwrap();
        let b = store.ingest(&data(300_000, 8)[..]).unwrap().manifest;
        store.seal_open_pack().unwrap();
        // One reader resolved both packs before either moved.
        let both = [store.resolve(&a).unwrap(), store.resolve(&b).unwrap()];
        let segs: Vec<u32> = store
            .pack_usage(None)
            .unwrap()
            .iter()
            .map(|u| u.segment)
            .collect();
        assert_eq!(segs.len(), 2);
        store.compact(&segs[..1]).unwrap();
        store.compact(&segs[1..]).unwrap();
        store.reap_retired().unwrap();
        assert_eq!(
            store.retired_waiting(),
            2,
            "a pack went while an early reader lived"
        );
        drop(both);
        store.reap_retired().unwrap();
        assert_eq!(store.retired_waiting(), 0);
        assert_eq!(store.read_all(&a).unwrap(), data(300_000, 7));
        assert_eq!(store.read_all(&b).unwrap(), data(300_000, 8));
    }

    #[test]
    fn punching_gives_back_dead_ranges_in_place_after_readers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open_local(dir.path(), 3).unwrap();
        let keep_bytes = data(2_000_000, 9);
        let keep = store.ingest(&keep_bytes[..]).unwrap();
        let gone_bytes = data(2_000_000, 10);
        let gone = store.ingest(&gone_bytes[..]).unwrap();
        let live = ids(&keep.manifest);
        let (kept, dead) = (keep.manifest.clone(), gone.manifest.clone());
        drop((keep, gone));
        store.seal_open_pack().unwrap();
        let before = store.stored_bytes().unwrap();
        // A download of the dead NAR resolved before the sweep.
        let early = store.resolve(&dead).unwrap();
        let w = store.open_window().unwrap();
        store.sweep(&w, |id| live.contains(id), false).unwrap();
        drop(w);
        let seg = store.pack_usage(None).unwrap()[0].segment;
        let queued = store.punch_dead(&[seg]).unwrap();
        assert_eq!(queued.len(), 1);
        assert!(queued[0].1 > 1_500_000, "{queued:?}");
        assert_eq!(store.retired_waiting(), 1, "the punch waits for the reader");
        assert!(
            read_resolved(&store, &early) == gone_bytes,
            "the early reader reads whole bytes"
        );
        drop(early);
        store.reap_retired().unwrap();
        assert_eq!(store.retired_waiting(), 0);
        let after = store.stored_bytes().unwrap();
        assert!(
            after + 1_500_000 < before,
            "punching gave back too little: {before} -> {after}"
        );
        // One pack, same length, live records untouched.
        assert_eq!(pack_count(dir.path()), 1);
        assert!(store.read_all(&kept).unwrap() == keep_bytes);
    }
}
