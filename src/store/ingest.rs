//! Writing a stream into the store.
//!
//! Pipeline for one upload: the calling thread cuts the stream with FastCDC and
//! hashes each chunk with BLAKE3; a writer thread takes batches, skips chunks the
//! index or another in-flight upload already has, compresses the new ones in
//! parallel (rayon), and appends them. At the end the touched packs are synced
//! once and the new locations committed to the index in one transaction — the
//! "sync per upload, not per chunk" rule. Nothing here is visible to readers
//! until the caller commits a manifest that names these chunks.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use rayon::prelude::*;

use super::backend::{Frame, Location};
use super::chunker::{compress, CHUNK_AVG_BYTES, CHUNK_MAX_BYTES, CHUNK_MIN_BYTES};
use super::{ChunkId, ChunkRef, ChunkStore, Manifest, StoreError};

/// Chunks handed to the writer at once: about 2 MiB at the average size, enough
/// for both cores to compress in parallel.
const BATCH_CHUNKS: usize = 32;
/// Batches queued between chunker and writer; bounds memory per upload.
const BATCHES_QUEUED: usize = 2;

/// What one upload added.
#[derive(Debug, Clone)]
pub struct IngestOutcome {
    pub manifest: Manifest,
    /// Chunks this upload stored that were not stored before.
    pub new_chunks: u64,
    /// Frame bytes this upload added to the store.
    pub new_frame_bytes: u64,
    /// Keeps every chunk of the manifest from being swept: drop it only after
    /// the manifest is committed (or abandoned).
    pub hold: super::Hold,
}

enum Slot {
    Claimed(u64),
    Appended(Location),
}

/// Chunks appended (or being appended) by uploads that have not yet committed
/// them to the index.
#[derive(Default)]
pub(crate) struct InFlight {
    slots: Mutex<HashMap<ChunkId, Slot>>,
    changed: Condvar,
    next_owner: AtomicU64,
}

enum Claim {
    Mine,
    Appended(Location),
    Other,
}

impl InFlight {
    fn owner(&self) -> u64 {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    fn claim(&self, id: &ChunkId, owner: u64) -> Result<Claim, StoreError> {
        let mut slots = self.slots.lock().map_err(|_| poisoned())?;
        Ok(match slots.get(id) {
            Some(Slot::Appended(l)) => Claim::Appended(*l),
            Some(Slot::Claimed(o)) if *o == owner => Claim::Mine,
            Some(Slot::Claimed(_)) => Claim::Other,
            None => {
                slots.insert(*id, Slot::Claimed(owner));
                Claim::Mine
            }
        })
    }

    fn appended(&self, done: &[(ChunkId, Location)]) -> Result<(), StoreError> {
        let mut slots = self.slots.lock().map_err(|_| poisoned())?;
        for (id, loc) in done {
            slots.insert(*id, Slot::Appended(*loc));
        }
        self.changed.notify_all();
        Ok(())
    }

    /// Wait until another upload's claim on `id` is appended (`Some`) or gone.
    fn wait(&self, id: &ChunkId) -> Result<Option<Location>, StoreError> {
        let mut slots = self.slots.lock().map_err(|_| poisoned())?;
        loop {
            match slots.get(id) {
                Some(Slot::Appended(l)) => return Ok(Some(*l)),
                Some(Slot::Claimed(_)) => {
                    slots = self.changed.wait(slots).map_err(|_| poisoned())?;
                }
                None => return Ok(None),
            }
        }
    }

    /// Segments that hold appended records not yet in the index.
    pub(crate) fn segments(&self) -> Result<HashSet<u32>, StoreError> {
        let slots = self.slots.lock().map_err(|_| poisoned())?;
        Ok(slots
            .values()
            .filter_map(|s| match s {
                Slot::Appended(l) => Some(l.segment),
                Slot::Claimed(_) => None,
            })
            .collect())
    }

    /// Drop every slot this upload claimed or appended.
    fn release(&self, ids: &HashSet<ChunkId>, owner: u64) {
        if let Ok(mut slots) = self.slots.lock() {
            for id in ids {
                let mine = match slots.get(id) {
                    Some(Slot::Claimed(o)) => *o == owner,
                    Some(Slot::Appended(_)) => true,
                    None => false,
                };
                if mine {
                    slots.remove(id);
                }
            }
            self.changed.notify_all();
        }
    }
}

fn poisoned() -> StoreError {
    StoreError::Index("in-flight set poisoned by an earlier panic".into())
}

struct RawChunk {
    id: ChunkId,
    data: Vec<u8>,
}

/// Per-upload state of the writer thread.
struct Upload<'s> {
    store: &'s ChunkStore,
    owner: u64,
    hold: super::Hold,
    /// Every chunk this upload resolved, to dedup within the upload.
    known: HashMap<ChunkId, Location>,
    /// Locations this upload must commit to the index (appended or adopted).
    to_index: HashMap<ChunkId, Location>,
    /// Chunks this upload claimed in the in-flight set.
    claimed: HashSet<ChunkId>,
    new_chunks: u64,
    new_frame_bytes: u64,
}

impl Upload<'_> {
    /// Release the in-flight claims and, when the writes went well, say what the
    /// upload stored.
    fn finish(
        self,
        result: Result<Vec<ChunkRef>, StoreError>,
    ) -> Result<IngestOutcome, StoreError> {
        self.store.inflight.release(&self.claimed, self.owner);
        let chunks = result?;
        Ok(IngestOutcome {
            manifest: Manifest { chunks },
            new_chunks: self.new_chunks,
            new_frame_bytes: self.new_frame_bytes,
            hold: self.hold,
        })
    }

    /// Resolve `batch` and add its chunks, in order, to `refs`.
    fn resolve_into(
        &mut self,
        batch: &[RawChunk],
        refs: &mut Vec<ChunkRef>,
    ) -> Result<(), StoreError> {
        let locs = self.resolve(batch)?;
        refs.extend(batch.iter().zip(locs).map(|(c, l)| ChunkRef {
            id: c.id,
            raw_len: l.raw_len,
            frame_len: l.frame_len,
        }));
        Ok(())
    }

    fn resolve(&mut self, batch: &[RawChunk]) -> Result<Vec<Location>, StoreError> {
        let mut out: Vec<Option<Location>> = batch
            .iter()
            .map(|c| self.known.get(&c.id).copied())
            .collect();
        loop {
            let open: Vec<usize> = (0..batch.len()).filter(|&i| out[i].is_none()).collect();
            if open.is_empty() {
                break;
            }
            let ids: Vec<ChunkId> = open.iter().map(|&i| batch[i].id).collect();
            // Held before the lookup, so GC cannot sweep what this finds.
            self.hold.extend(&ids)?;
            let indexed = self.store.index.get_many(&ids)?;
            let mut mine: Vec<usize> = Vec::new();
            let mut others: Vec<usize> = Vec::new();
            for (&i, found) in open.iter().zip(indexed) {
                // An indexed chunk whose pack is gone is stored again: that is how
                // a re-push repairs a damaged path.
                if let Some(loc) = found {
                    if self.store.backend.check(&batch[i].id, &loc).is_ok() {
                        out[i] = Some(loc);
                        continue;
                    }
                }
                if let Some(loc) = self.known.get(&batch[i].id) {
                    out[i] = Some(*loc);
                    continue;
                }
                match self.store.inflight.claim(&batch[i].id, self.owner)? {
                    Claim::Appended(loc) => {
                        self.to_index.insert(batch[i].id, loc);
                        self.known.insert(batch[i].id, loc);
                        out[i] = Some(loc);
                    }
                    Claim::Mine => {
                        self.claimed.insert(batch[i].id);
                        if !mine.iter().any(|&m| batch[m].id == batch[i].id) {
                            mine.push(i);
                        }
                    }
                    Claim::Other => others.push(i),
                }
            }
            // Append our own claims before waiting on anyone else's, so two
            // uploads never wait on each other.
            if !mine.is_empty() {
                let level = self.store.zstd_level;
                let frames: Vec<Vec<u8>> = mine
                    .par_iter()
                    .map(|&i| compress(&batch[i].data, level))
                    .collect::<Result<_, _>>()?;
                let refs: Vec<Frame<'_>> = mine
                    .iter()
                    .zip(&frames)
                    .map(|(&i, f)| Frame {
                        id: &batch[i].id,
                        raw_len: batch[i].data.len() as u32,
                        bytes: f,
                    })
                    .collect();
                let locs = self.store.backend.append(&refs)?;
                let done: Vec<(ChunkId, Location)> = mine
                    .iter()
                    .zip(&locs)
                    .map(|(&i, l)| (batch[i].id, *l))
                    .collect();
                self.store.inflight.appended(&done)?;
                for (id, loc) in done {
                    self.new_chunks += 1;
                    self.new_frame_bytes += u64::from(loc.frame_len);
                    self.to_index.insert(id, loc);
                    self.known.insert(id, loc);
                }
                for &i in &mine {
                    out[i] = self.known.get(&batch[i].id).copied();
                }
            }
            for &i in &others {
                if let Some(loc) = self.store.inflight.wait(&batch[i].id)? {
                    self.to_index.insert(batch[i].id, loc);
                    self.known.insert(batch[i].id, loc);
                    out[i] = Some(loc);
                }
                // Otherwise the other upload committed or gave up; the next pass
                // finds it in the index or claims it.
            }
            for i in 0..batch.len() {
                if out[i].is_none() {
                    out[i] = self.known.get(&batch[i].id).copied();
                }
            }
        }
        out.into_iter()
            .map(|l| l.ok_or_else(|| StoreError::Index("unresolved chunk".into())))
            .collect()
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let mut segments: Vec<u32> = self.to_index.values().map(|l| l.segment).collect();
        segments.sort_unstable();
        segments.dedup();
        self.store.backend.sync(&segments)?;
        let entries: Vec<(ChunkId, Location)> =
            self.to_index.iter().map(|(k, v)| (*k, *v)).collect();
        self.store.index.insert(&entries)
    }
}

impl ChunkStore {
    fn new_upload(&self) -> Upload<'_> {
        Upload {
            store: self,
            owner: self.inflight.owner(),
            hold: self.new_hold(),
            known: HashMap::new(),
            to_index: HashMap::new(),
            claimed: HashSet::new(),
            new_chunks: 0,
            new_frame_bytes: 0,
        }
    }

    /// Cut `source` into chunks and store the ones not yet stored. Returns once
    /// every chunk is durable and indexed.
    pub fn ingest<R: Read>(&self, source: R) -> Result<IngestOutcome, StoreError> {
        let mut upload = self.new_upload();
        let result = std::thread::scope(|scope| {
            let (tx, rx) = crossbeam_channel::bounded::<Vec<RawChunk>>(BATCHES_QUEUED);
            let writer = scope.spawn(|| -> Result<Vec<ChunkRef>, StoreError> {
                let mut refs = Vec::new();
                for batch in rx {
                    upload.resolve_into(&batch, &mut refs)?;
                }
                upload.commit()?;
                Ok(refs)
            });
            let read_result = chunk_stream(source, &tx);
            drop(tx);
            let written = writer
                .join()
                .map_err(|_| StoreError::Index("chunk writer panicked".into()))?;
            read_result?;
            written
        });
        upload.finish(result)
    }
}

impl ChunkStore {
    /// Store chunks already cut by the caller, through the same dedup, append,
    /// sync and index path as [`ChunkStore::ingest`]. For synthetic stores (the GC
    /// benchmark makes a million tiny chunks with it); uploads always go through
    /// FastCDC.
    #[doc(hidden)]
    pub fn ingest_chunks(&self, chunks: Vec<Vec<u8>>) -> Result<IngestOutcome, StoreError> {
        let mut upload = self.new_upload();
        let raw: Vec<RawChunk> = chunks
            .into_iter()
            .map(|data| RawChunk {
                id: *blake3::hash(&data).as_bytes(),
                data,
            })
            .collect();
        let result = (|| {
            let mut refs = Vec::with_capacity(raw.len());
            for batch in raw.chunks(BATCH_CHUNKS * 32) {
                upload.resolve_into(batch, &mut refs)?;
            }
            upload.commit()?;
            Ok::<_, StoreError>(refs)
        })();
        upload.finish(result)
    }
}

fn chunk_stream<R: Read>(
    source: R,
    tx: &crossbeam_channel::Sender<Vec<RawChunk>>,
) -> Result<(), StoreError> {
    let cdc =
        fastcdc::v2020::StreamCDC::new(source, CHUNK_MIN_BYTES, CHUNK_AVG_BYTES, CHUNK_MAX_BYTES);
    let mut batch = Vec::with_capacity(BATCH_CHUNKS);
    for chunk in cdc {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => StoreError::Source(io),
            other => StoreError::Source(std::io::Error::other(other.to_string())),
        })?;
        let id = *blake3::hash(&chunk.data).as_bytes();
        batch.push(RawChunk {
            id,
            data: chunk.data,
        });
        if batch.len() == BATCH_CHUNKS {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_CHUNKS));
            if tx.send(full).is_err() {
                // The writer stopped on an error; it reports it.
                return Ok(());
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::test_data as data;

    #[test]
    fn ingest_dedups_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open_local(dir.path(), 3).unwrap();
        let bytes = data(3_000_000, 7);
        let a = store.ingest(&bytes[..]).unwrap();
        assert_eq!(a.manifest.raw_len(), bytes.len() as u64);
        assert!(a.new_chunks > 10);
        let b = store.ingest(&bytes[..]).unwrap();
        assert_eq!(b.new_chunks, 0);
        assert_eq!(a.manifest, b.manifest);
        let out = store.read_all(&a.manifest).unwrap();
        assert_eq!(out, bytes);
        assert_eq!(store.stats().unwrap().chunks, a.new_chunks);
    }

    #[test]
    fn concurrent_uploads_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open_local(dir.path(), 3).unwrap();
        let bytes = data(4_000_000, 11);
        let outcomes: Vec<IngestOutcome> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| store.ingest(&bytes[..]).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let stored: u64 = outcomes.iter().map(|o| o.new_chunks).sum();
        assert_eq!(stored, store.stats().unwrap().chunks);
        assert_eq!(stored as usize, outcomes[0].manifest.chunks.len());
        for o in &outcomes {
            assert_eq!(store.read_all(&o.manifest).unwrap(), bytes);
        }
    }

    #[test]
    fn a_failing_source_stores_nothing_visible() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("client went away"));
                }
                let n = buf.len().min(self.0).min(100_000);
                buf[..n].fill(0x5a);
                self.0 -= n;
                Ok(n)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open_local(dir.path(), 3).unwrap();
        let err = store.ingest(Failing(1_000_000)).unwrap_err();
        assert!(matches!(err, StoreError::Source(_)));
        assert!(store.inflight.slots.lock().unwrap().is_empty());
    }
}
