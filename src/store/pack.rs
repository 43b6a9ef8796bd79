//! The local backend: append-only pack files under `<data-dir>/packs/`.
//!
//! File layout (format version 1, all integers little-endian):
//! ```text
//! pack   = header record*
//! header = "LARDERPK" (8) | version u32 (=1) | pack id u32            -- 16 bytes
//! record = "LCHK" (4) | chunk id (32) | raw_len u32 | frame_len u32
//!          | crc32c(frame) u32 | crc32c(previous 48 bytes) u32        -- 56 bytes
//!          | frame (frame_len bytes: one zstd frame with content checksum)
//! ```
//! A pack is only ever appended to, by one writer, and a new pack is started on
//! every server start and whenever the current one passes [`PACK_TARGET_BYTES`], so
//! a torn tail from a crash is never appended after. Bytes past the last indexed
//! record are garbage that GC reclaims.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use super::backend::{Backend, Frame, Location};
use super::{ChunkId, StoreError};

/// A pack is closed once it passes this size: large enough that a NAR is a few
/// sequential reads, small enough that compaction can rewrite one cheaply.
pub const PACK_TARGET_BYTES: u64 = 1 << 30;

const PACK_MAGIC: &[u8; 8] = b"LARDERPK";
const PACK_VERSION: u32 = 1;
/// The header at the start of every pack.
pub const PACK_HEADER_BYTES: u64 = 16;
const RECORD_MAGIC: &[u8; 4] = b"LCHK";
/// Size of a record header in front of each frame.
pub const RECORD_HEADER_BYTES: u64 = 56;

struct Writer {
    id: u32,
    file: File,
    len: u64,
}

/// Append-only pack files in one directory.
pub struct PackBackend {
    dir: PathBuf,
    writer: Mutex<Option<Writer>>,
    next_id: Mutex<u32>,
    files: RwLock<HashMap<u32, Arc<File>>>,
}

fn pack_name(id: u32) -> String {
    format!("{id:08}.pack")
}

fn lock_poisoned() -> StoreError {
    StoreError::Index("pack lock poisoned by an earlier panic".into())
}

impl PackBackend {
    /// Open the pack directory, creating it when absent. The next pack written gets
    /// an id above every existing one.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let mut max = 0u32;
        for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(dir, e))?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pack"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                max = max.max(id);
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            writer: Mutex::new(None),
            next_id: Mutex::new(max.saturating_add(1)),
            files: RwLock::new(HashMap::new()),
        })
    }

    fn path(&self, id: u32) -> PathBuf {
        self.dir.join(pack_name(id))
    }

    fn start_pack(&self) -> Result<Writer, StoreError> {
        let id = {
            let mut next = self.next_id.lock().map_err(|_| lock_poisoned())?;
            let id = *next;
            *next = next.saturating_add(1);
            id
        };
        let path = self.path(id);
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let mut header = Vec::with_capacity(PACK_HEADER_BYTES as usize);
        header.extend_from_slice(PACK_MAGIC);
        header.extend_from_slice(&PACK_VERSION.to_le_bytes());
        header.extend_from_slice(&id.to_le_bytes());
        if let Err(e) = file.write_all(&header).and_then(|()| file.sync_all()) {
            // Nothing names this pack yet: on a full disk, leave no stub behind.
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::io(&path, e));
        }
        // The new directory entry must survive power loss before any record in the
        // pack is indexed.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(&self.dir, e))?;
        Ok(Writer {
            id,
            file,
            len: PACK_HEADER_BYTES,
        })
    }

    fn file(&self, id: u32) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self.files.read().map_err(|_| lock_poisoned())?.get(&id) {
            return Ok(f.clone());
        }
        let path = self.path(id);
        let file = match File::open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Io {
                    path: path.display().to_string(),
                    source: e,
                })
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        self.files
            .write()
            .map_err(|_| lock_poisoned())?
            .insert(id, file.clone());
        Ok(file)
    }

    /// Drop cached handles so a pack deleted or replaced on disk is seen as such.
    pub fn forget_handles(&self) {
        if let Ok(mut files) = self.files.write() {
            files.clear();
        }
    }
}

fn encode_record_header(id: &ChunkId, raw_len: u32, frame: &[u8]) -> [u8; 56] {
    let mut h = [0u8; 56];
    h[0..4].copy_from_slice(RECORD_MAGIC);
    h[4..36].copy_from_slice(id);
    h[36..40].copy_from_slice(&raw_len.to_le_bytes());
    h[40..44].copy_from_slice(&(frame.len() as u32).to_le_bytes());
    h[44..48].copy_from_slice(&crc32c::crc32c(frame).to_le_bytes());
    let hcrc = crc32c::crc32c(&h[0..48]);
    h[48..52].copy_from_slice(&hcrc.to_le_bytes());
    h
}

fn check_record(id: &ChunkId, loc: &Location, record: &[u8]) -> Result<(), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        id: *id,
        reason: reason.to_owned(),
    };
    let h = record
        .get(..RECORD_HEADER_BYTES as usize)
        .ok_or_else(|| corrupt("record cut short"))?;
    let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if &h[0..4] != RECORD_MAGIC {
        return Err(corrupt("bad record magic"));
    }
    if crc32c::crc32c(&h[0..48]) != word(48) {
        return Err(corrupt("record header checksum mismatch"));
    }
    if &h[4..36] != id || word(36) != loc.raw_len || word(40) != loc.frame_len {
        return Err(corrupt("record header does not match the index"));
    }
    let frame = &record[RECORD_HEADER_BYTES as usize..];
    if crc32c::crc32c(frame) != word(44) {
        return Err(corrupt("frame checksum mismatch"));
    }
    Ok(())
}

fn record_len(loc: &Location) -> u64 {
    RECORD_HEADER_BYTES + u64::from(loc.frame_len)
}

impl Backend for PackBackend {
    fn append(&self, frames: &[Frame<'_>]) -> Result<Vec<Location>, StoreError> {
        let mut guard = self.writer.lock().map_err(|_| lock_poisoned())?;
        let needs_new = match guard.as_ref() {
            None => true,
            Some(w) => w.len >= PACK_TARGET_BYTES,
        };
        if needs_new {
            *guard = Some(self.start_pack()?);
        }
        let w = guard
            .as_mut()
            .ok_or_else(|| StoreError::Index("no open pack".into()))?;
        let total: usize = frames
            .iter()
            .map(|f| RECORD_HEADER_BYTES as usize + f.bytes.len())
            .sum();
        let mut buf = Vec::with_capacity(total);
        let mut locs = Vec::with_capacity(frames.len());
        let mut offset = w.len;
        for f in frames {
            buf.extend_from_slice(&encode_record_header(f.id, f.raw_len, f.bytes));
            buf.extend_from_slice(f.bytes);
            let loc = Location {
                segment: w.id,
                offset,
                frame_len: f.bytes.len() as u32,
                raw_len: f.raw_len,
            };
            offset += record_len(&loc);
            locs.push(loc);
        }
        if let Err(e) = w.file.write_all(&buf) {
            // The tail may be torn. Cut it off (on a full disk this gives the space
            // back) and go on appending at the last whole record; when even that
            // fails, never append after it.
            let path = self.path(w.id);
            if w.file.set_len(w.len).is_err() {
                *guard = None;
            }
            return Err(StoreError::io(&path, e));
        }
        w.len = offset;
        Ok(locs)
    }

    fn sync(&self, segments: &[u32]) -> Result<(), StoreError> {
        for &id in segments {
            let f = self.file(id)?;
            f.sync_data()
                .map_err(|e| StoreError::io(&self.path(id), e))?;
        }
        Ok(())
    }

    fn read(&self, items: &[(ChunkId, Location)]) -> Result<Vec<Bytes>, StoreError> {
        let mut out = Vec::with_capacity(items.len());
        let mut i = 0;
        while i < items.len() {
            // Coalesce a run of records that sit back to back in one pack.
            let (_, first) = &items[i];
            let mut end = first.offset + record_len(first);
            let mut j = i + 1;
            while j < items.len() {
                let (_, l) = &items[j];
                if l.segment != first.segment || l.offset != end {
                    break;
                }
                end += record_len(l);
                j += 1;
            }
            let file = self
                .file(first.segment)
                .map_err(|_| StoreError::Missing(items[i].0))?;
            let len = usize::try_from(end - first.offset)
                .map_err(|_| StoreError::Index("span too large".into()))?;
            // Read into uninitialised capacity: zeroing 1 MiB per read first cost
            // a tenth of the CPU of serving a NAR.
            let mut buf = Vec::with_capacity(len);
            while buf.len() < len {
                let at = first.offset + buf.len() as u64;
                match rustix::io::pread(&*file, rustix::buffer::spare_capacity(&mut buf), at) {
                    Ok(0) => {
                        return Err(StoreError::Corrupt {
                            id: items[i].0,
                            reason: "pack is shorter than the index says".into(),
                        })
                    }
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        return Err(StoreError::io(&self.path(first.segment), e.into()));
                    }
                }
            }
            buf.truncate(len);
            let buf = Bytes::from(buf);
            let mut at = 0usize;
            for (id, loc) in &items[i..j] {
                let rlen = record_len(loc) as usize;
                let record = &buf[at..at + rlen];
                check_record(id, loc, record)?;
                out.push(buf.slice(at + RECORD_HEADER_BYTES as usize..at + rlen));
                at += rlen;
            }
            i = j;
        }
        Ok(out)
    }

    fn segments(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(&self.dir, e))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".pack"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            match entry.metadata() {
                // What the file takes on disk: a pack with punched holes takes
                // less than its length.
                Ok(m) => out.push((id, m.len().min(m.blocks().saturating_mul(512)))),
                // Removed between the listing and the stat.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&entry.path(), e)),
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn open_segment(&self) -> Option<u32> {
        self.writer.lock().ok()?.as_ref().map(|w| w.id)
    }

    fn seal(&self) -> Result<(), StoreError> {
        *self.writer.lock().map_err(|_| lock_poisoned())? = None;
        Ok(())
    }

    fn remove(&self, segment: u32) -> Result<(), StoreError> {
        if self.open_segment() == Some(segment) {
            return Err(StoreError::Index(format!(
                "pack {segment} is open for appends and cannot be removed"
            )));
        }
        if let Ok(mut files) = self.files.write() {
            files.remove(&segment);
        }
        let path = self.path(segment);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(&path, e)),
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(&self.dir, e))
    }

    fn punch(&self, segment: u32, ranges: &[(u64, u64)]) -> Result<bool, StoreError> {
        if self.open_segment() == Some(segment) {
            return Err(StoreError::Index(format!(
                "pack {segment} is open for appends and cannot be punched"
            )));
        }
        let path = self.path(segment);
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            // Compacted away meanwhile: nothing left to give back.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        for &(offset, n) in ranges {
            let n = n.min(len.saturating_sub(offset));
            if n == 0 {
                continue;
            }
            match rustix::fs::fallocate(&file, flags, offset, n) {
                Ok(()) => {}
                Err(rustix::io::Errno::OPNOTSUPP) => return Ok(false),
                Err(e) => return Err(StoreError::io(&path, e.into())),
            }
        }
        file.sync_all().map_err(|e| StoreError::io(&path, e))?;
        Ok(true)
    }

    fn check(&self, id: &ChunkId, loc: &Location) -> Result<(), StoreError> {
        let file = self
            .file(loc.segment)
            .map_err(|_| StoreError::Missing(*id))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io(&self.path(loc.segment), e))?
            .len();
        if len < loc.offset + record_len(loc) {
            return Err(StoreError::Missing(*id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let b = PackBackend::open(dir.path()).unwrap();
        let a = [1u8; 32];
        let c = [2u8; 32];
        let locs = b
            .append(&[
                Frame {
                    id: &a,
                    raw_len: 3,
                    bytes: b"abc",
                },
                Frame {
                    id: &c,
                    raw_len: 4,
                    bytes: b"defg",
                },
            ])
            .unwrap();
        b.sync(&[locs[0].segment]).unwrap();
        let got = b.read(&[(a, locs[0]), (c, locs[1])]).unwrap();
        assert_eq!(&got[0][..], b"abc");
        assert_eq!(&got[1][..], b"defg");
        // Wrong id for a location is caught.
        assert!(b.read(&[(c, locs[0])]).is_err());
        // Flip one byte of the second frame on disk.
        let path = dir.path().join(pack_name(locs[1].segment));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (locs[1].offset + RECORD_HEADER_BYTES) as usize;
        bytes[at] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        b.forget_handles();
        let err = b.read(&[(c, locs[1])]).unwrap_err();
        assert_eq!(err.damaged_chunk(), Some(c));
        assert!(b.read(&[(a, locs[0])]).is_ok());
    }

    #[test]
    fn new_pack_per_open() {
        let dir = tempfile::tempdir().unwrap();
        let a = [1u8; 32];
        let first = PackBackend::open(dir.path())
            .unwrap()
            .append(&[Frame {
                id: &a,
                raw_len: 1,
                bytes: b"x",
            }])
            .unwrap();
        let second = PackBackend::open(dir.path())
            .unwrap()
            .append(&[Frame {
                id: &a,
                raw_len: 1,
                bytes: b"x",
            }])
            .unwrap();
        assert!(second[0].segment > first[0].segment);
    }
}
