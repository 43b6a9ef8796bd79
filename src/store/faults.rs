//! Fault injection under the chunk store: a backend that fails its Nth write,
//! sync, seal, remove, punch or read (EIO or ENOSPC), or tears its Nth append
//! (part of the bytes reach the pack, then the call fails as a crash would
//! leave it), for N = 1, 2, 3, … over a whole upload and a whole GC pass with
//! compaction. After each fault:
//!
//! - the same store, with the fault gone, does the operation again (a server
//!   that stays up keeps working);
//! - reopened from disk (a restart), every index entry reads back and checks,
//!   and every upload that was acknowledged (returned `Ok`) reads back whole.
//!
//! What is not driven here: SQLite's and redb's own file I/O (their writes are
//! not behind the backend trait), and the S3 layer's multipart bookkeeping in
//! SQLite (its parts are uploads like any other).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::backend::{Backend, Frame, Location};
use super::pack::PackBackend;
use super::{ChunkId, ChunkStore, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Eio,
    NoSpace,
    /// Append part of the bytes, then fail (appends only; the store is then
    /// reopened, as after a crash).
    Torn,
}

#[derive(Default)]
struct Plan {
    calls: usize,
    fail_at: Option<(usize, Kind)>,
    fired: bool,
}

struct Faulty {
    inner: PackBackend,
    dir: PathBuf,
    plan: Mutex<Plan>,
}

impl Faulty {
    fn open(dir: &Path) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner: PackBackend::open(dir).unwrap(),
            dir: dir.to_path_buf(),
            plan: Mutex::new(Plan::default()),
        })
    }

    fn arm(&self, n: usize, kind: Kind) {
        *self.plan.lock().unwrap() = Plan {
            calls: 0,
            fail_at: Some((n, kind)),
            fired: false,
        };
    }

    /// Stop failing; whether the armed fault fired.
    fn disarm(&self) -> bool {
        let mut p = self.plan.lock().unwrap();
        p.fail_at = None;
        p.fired
    }

    /// Count a call; the fault to inject when this is the armed one.
    fn hit(&self, torn_possible: bool) -> Option<Kind> {
        let mut p = self.plan.lock().unwrap();
        p.calls += 1;
        match p.fail_at {
            Some((n, kind)) if n == p.calls && (kind != Kind::Torn || torn_possible) => {
                p.fired = true;
                Some(kind)
            }
            // A torn fault armed on a call that is not an append fails it as EIO.
            Some((n, Kind::Torn)) if n == p.calls => {
                p.fired = true;
                Some(Kind::Eio)
            }
            _ => None,
        }
    }

    fn error(&self, kind: Kind) -> StoreError {
        let source = match kind {
            Kind::NoSpace => std::io::Error::from_raw_os_error(libc::ENOSPC),
            Kind::Eio | Kind::Torn => std::io::Error::from_raw_os_error(libc::EIO),
        };
        StoreError::Io {
            path: self.dir.display().to_string(),
            source,
        }
    }
}

impl Backend for Faulty {
    fn append(&self, frames: &[Frame<'_>]) -> Result<Vec<Location>, StoreError> {
        match self.hit(true) {
            None => self.inner.append(frames),
            Some(Kind::Torn) => {
                // The bytes go in, then the tail of the last frame is cut off,
                // as a power cut in the middle of the write would leave it.
                let locs = self.inner.append(frames)?;
                if let Some(last) = locs.last() {
                    let path = self.dir.join(format!("{:08}.pack", last.segment));
                    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                    f.set_len(last.offset + u64::from(last.frame_len) / 2)
                        .unwrap();
                }
                Err(self.error(Kind::Torn))
            }
            Some(kind) => Err(self.error(kind)),
        }
    }

    fn sync(&self, segments: &[u32]) -> Result<(), StoreError> {
        match self.hit(false) {
            None => self.inner.sync(segments),
            Some(kind) => Err(self.error(kind)),
        }
    }

    fn read(&self, items: &[(ChunkId, Location)]) -> Result<Vec<bytes::Bytes>, StoreError> {
        match self.hit(false) {
            None => self.inner.read(items),
            Some(kind) => Err(self.error(kind)),
        }
    }

    fn check(&self, id: &ChunkId, loc: &Location) -> Result<(), StoreError> {
        self.inner.check(id, loc)
    }

    fn segments(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        self.inner.segments()
    }

    fn open_segment(&self) -> Option<u32> {
        self.inner.open_segment()
    }

    fn seal(&self) -> Result<(), StoreError> {
        match self.hit(false) {
            None => self.inner.seal(),
            Some(kind) => Err(self.error(kind)),
        }
    }

    fn remove(&self, segment: u32) -> Result<(), StoreError> {
        match self.hit(false) {
            None => self.inner.remove(segment),
            Some(kind) => Err(self.error(kind)),
        }
    }

    fn punch(&self, segment: u32, ranges: &[(u64, u64)]) -> Result<bool, StoreError> {
        match self.hit(false) {
            None => self.inner.punch(segment, ranges),
            Some(kind) => Err(self.error(kind)),
        }
    }
}

fn open(dir: &Path) -> (ChunkStore, Arc<Faulty>) {
    let backend = Faulty::open(&dir.join("packs"));
    let store = ChunkStore::with_backend(backend.clone(), &dir.join("index.redb"), 3).unwrap();
    (store, backend)
}

/// After a restart: every index entry reads back and checks out.
fn index_reads_back(store: &ChunkStore) -> usize {
    let mut entries = Vec::new();
    store
        .for_each_indexed(|id, loc| {
            entries.push((*id, loc));
            Ok(())
        })
        .unwrap();
    for e in &entries {
        store
            .backend
            .read(std::slice::from_ref(e))
            .unwrap_or_else(|err| panic!("index entry {} unreadable: {err}", hex::encode(e.0)));
    }
    entries.len()
}

/// Run `op` with its Nth backend call failed as `kind`, for N = 1, 2, … until
/// an N past the last call; `check` runs after each on the reopened store.
/// Returns the number of fault points that fired.
fn every_fault_point(
    kind: Kind,
    setup: impl Fn(&ChunkStore) -> Vec<(super::Manifest, Vec<u8>)>,
    op: impl Fn(
        &ChunkStore,
        &[(super::Manifest, Vec<u8>)],
    ) -> Result<Vec<(super::Manifest, Vec<u8>)>, StoreError>,
) -> usize {
    let mut fired = 0;
    for n in 1.. {
        let dir = tempfile::tempdir().unwrap();
        let (store, faulty) = open(dir.path());
        let mut acked = setup(&store);
        faulty.arm(n, kind);
        let first = op(&store, &acked);
        let hit = faulty.disarm();
        match first {
            Ok(more) => acked.extend(more),
            Err(e) if hit => {
                // The server stays up: the same operation succeeds once the
                // fault is gone (unless the fault stands for a crash).
                if kind != Kind::Torn {
                    let more = op(&store, &acked)
                        .unwrap_or_else(|e2| panic!("{kind:?} at call {n} ({e}), then: {e2}"));
                    acked.extend(more);
                }
            }
            Err(e) => panic!("failed without a fault at call {n}: {e}"),
        }
        drop(store);
        // Restart: every entry checks out, every acknowledged upload is whole.
        let (store, _) = open(dir.path());
        index_reads_back(&store);
        for (manifest, bytes) in &acked {
            let back = store
                .read_all(manifest)
                .unwrap_or_else(|e| panic!("{kind:?} at call {n}: acknowledged data lost: {e}"));
            assert!(
                back == *bytes,
                "{kind:?} at call {n}: acknowledged data differs"
            );
        }
        if !hit {
            break;
        }
        fired += 1;
    }
    fired
}

fn upload(
    store: &ChunkStore,
    seed: u64,
    len: usize,
) -> Result<(super::Manifest, Vec<u8>), StoreError> {
    let bytes = super::test_data(len, seed);
    let out = store.ingest(&bytes[..])?;
    Ok((out.manifest, bytes))
}

#[test]
fn every_io_call_of_an_upload_can_fail_and_nothing_acknowledged_is_lost() {
    let mut total = 0;
    for kind in [Kind::Eio, Kind::NoSpace, Kind::Torn] {
        let n = every_fault_point(
            kind,
            |store| vec![upload(store, 1, 700_000).unwrap()],
            |store, _| {
                // One upload of new chunks and some already stored.
                let mut bytes = super::test_data(700_000, 1);
                bytes.extend(super::test_data(12_000_000, 2));
                let out = store.ingest(&bytes[..])?;
                Ok(vec![(out.manifest, bytes)])
            },
        );
        assert!(n >= 2, "{kind:?}: only {n} fault points");
        eprintln!("upload, {kind:?}: {n} fault points");
        total += n;
    }
    eprintln!("upload: {total} fault points in all");
}

#[test]
fn every_io_call_of_a_gc_pass_can_fail_and_live_data_survives() {
    let mut total = 0;
    for kind in [Kind::Eio, Kind::NoSpace, Kind::Torn] {
        let n = every_fault_point(
            kind,
            |store| {
                // A kept upload and a dead one in one sealed pack, another dead
                // one in a second: the pass sweeps, compacts, removes, punches.
                let keep = upload(store, 3, 6_000_000).unwrap();
                let _dead = upload(store, 4, 6_000_000).unwrap();
                store.seal_open_pack().unwrap();
                let _dead2 = upload(store, 5, 3_000_000).unwrap();
                store.seal_open_pack().unwrap();
                vec![keep]
            },
            |store, acked| {
                let live: std::collections::HashSet<ChunkId> = acked
                    .iter()
                    .flat_map(|(m, _)| m.chunks.iter().map(|c| c.id))
                    .collect();
                let window = store.open_window()?;
                store.sweep(&window, |id| live.contains(id), false)?;
                let segments: Vec<u32> = store.backend.segments()?.iter().map(|s| s.0).collect();
                store.compact(&segments)?;
                drop(window);
                store.reap_retired()?;
                let left: Vec<u32> = store.backend.segments()?.iter().map(|s| s.0).collect();
                store.punch_dead(&left)?;
                Ok(Vec::new())
            },
        );
        assert!(n >= 2, "{kind:?}: only {n} fault points");
        eprintln!("GC pass, {kind:?}: {n} fault points");
        total += n;
    }
    eprintln!("GC pass: {total} fault points in all");
}
