//! The chunk index: redb maps a chunk id to its [`Location`].
//!
//! Value encoding (20 bytes, LE): segment u32 | offset u64 | frame_len u32 |
//! raw_len u32. A `stats` table keeps running totals, updated in the same write
//! transaction as the entries, so it never drifts from them.

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::backend::Location;
use super::{ChunkId, StoreError};

const CHUNKS: TableDefinition<&[u8; 32], &[u8; 20]> = TableDefinition::new("chunks");
const STATS: TableDefinition<&str, u64> = TableDefinition::new("stats");

/// Totals over every indexed chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IndexStats {
    pub chunks: u64,
    /// Stored (compressed) frame bytes.
    pub frame_bytes: u64,
    /// Uncompressed bytes.
    pub raw_bytes: u64,
}

/// redb's own page cache (its default is 1 GiB). Lookups are a few pages per
/// NAR and the OS page cache holds the file, so a small cache costs little; a
/// GC pass walks the whole index and would otherwise fill the default one.
const INDEX_CACHE_BYTES: usize = 32 << 20;

pub(crate) struct Index {
    db: Database,
}

fn encode(loc: &Location) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[0..4].copy_from_slice(&loc.segment.to_le_bytes());
    v[4..12].copy_from_slice(&loc.offset.to_le_bytes());
    v[12..16].copy_from_slice(&loc.frame_len.to_le_bytes());
    v[16..20].copy_from_slice(&loc.raw_len.to_le_bytes());
    v
}

fn decode(v: &[u8; 20]) -> Location {
    let u32_at = |a: usize| u32::from_le_bytes([v[a], v[a + 1], v[a + 2], v[a + 3]]);
    let mut off = [0u8; 8];
    off.copy_from_slice(&v[4..12]);
    Location {
        segment: u32_at(0),
        offset: u64::from_le_bytes(off),
        frame_len: u32_at(12),
        raw_len: u32_at(16),
    }
}

impl Index {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(INDEX_CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(format!(
                    "{} is in use by another larder process (stop the server, or use --server)",
                    path.display()
                )),
                other => StoreError::from(other),
            })?;
        let tx = db.begin_write()?;
        tx.open_table(CHUNKS)?;
        tx.open_table(STATS)?;
        tx.commit()?;
        Ok(Self { db })
    }

    /// Look up many ids in one read transaction.
    pub(crate) fn get_many(&self, ids: &[ChunkId]) -> Result<Vec<Option<Location>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CHUNKS)?;
        ids.iter()
            .map(|id| Ok(table.get(id)?.map(|v| decode(v.value()))))
            .collect()
    }

    /// Record locations, durably, in one write transaction.
    pub(crate) fn insert(&self, entries: &[(ChunkId, Location)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(CHUNKS)?;
            let mut stats = tx.open_table(STATS)?;
            let (mut n, mut fb, mut rb) = (0u64, 0u64, 0u64);
            for (id, loc) in entries {
                let old = table.insert(id, &encode(loc))?.map(|v| decode(v.value()));
                if let Some(old) = old {
                    fb = fb.wrapping_sub(u64::from(old.frame_len));
                    rb = rb.wrapping_sub(u64::from(old.raw_len));
                } else {
                    n += 1;
                }
                fb = fb.wrapping_add(u64::from(loc.frame_len));
                rb = rb.wrapping_add(u64::from(loc.raw_len));
            }
            add_stat(&mut stats, "chunks", n)?;
            add_stat(&mut stats, "frame_bytes", fb)?;
            add_stat(&mut stats, "raw_bytes", rb)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn remove(&self, ids: &[ChunkId]) -> Result<(), StoreError> {
        self.remove_where(ids.iter().map(|id| (id, None)))
    }

    /// Every entry, in key order, from one read transaction.
    pub(crate) fn for_each(
        &self,
        mut f: impl FnMut(&ChunkId, Location) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CHUNKS)?;
        for entry in table.iter()? {
            let (k, v) = entry?;
            f(k.value(), decode(v.value()))?;
        }
        Ok(())
    }

    /// Remove entries that still name exactly these locations, durably.
    pub(crate) fn remove_exact(&self, entries: &[(ChunkId, Location)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.remove_where(entries.iter().map(|(id, loc)| (id, Some(*loc))))
    }

    /// Remove each id (only if it names the given location, when one is given) in
    /// one durable transaction, keeping the totals.
    fn remove_where<'a>(
        &self,
        entries: impl Iterator<Item = (&'a ChunkId, Option<Location>)>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(CHUNKS)?;
            let mut stats = tx.open_table(STATS)?;
            let (mut n, mut fb, mut rb) = (0u64, 0u64, 0u64);
            for (id, expected) in entries {
                if let Some(want) = expected {
                    if table.get(id)?.map(|v| decode(v.value())) != Some(want) {
                        continue;
                    }
                }
                if let Some(old) = table.remove(id)?.map(|v| decode(v.value())) {
                    n += 1;
                    fb += u64::from(old.frame_len);
                    rb += u64::from(old.raw_len);
                }
            }
            add_stat(&mut stats, "chunks", n.wrapping_neg())?;
            add_stat(&mut stats, "frame_bytes", fb.wrapping_neg())?;
            add_stat(&mut stats, "raw_bytes", rb.wrapping_neg())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Point entries at new locations, each only if it still names the old one,
    /// durably in one transaction.
    pub(crate) fn repoint(
        &self,
        moves: &[(ChunkId, Location, Location)],
    ) -> Result<(), StoreError> {
        if moves.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(CHUNKS)?;
            for (id, old, new) in moves {
                let current = table.get(id)?.map(|v| decode(v.value()));
                if current == Some(*old) {
                    table.insert(id, &encode(new))?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn stats(&self) -> Result<IndexStats, StoreError> {
        let tx = self.db.begin_read()?;
        let stats = tx.open_table(STATS)?;
        let get = |k: &str| -> Result<u64, StoreError> {
            Ok(stats.get(k)?.map(|v| v.value()).unwrap_or(0))
        };
        let chunks = tx.open_table(CHUNKS)?.len()?;
        Ok(IndexStats {
            chunks,
            frame_bytes: get("frame_bytes")?,
            raw_bytes: get("raw_bytes")?,
        })
    }
}

/// Add a (wrapping, so negative deltas work) delta to a running total.
fn add_stat(stats: &mut redb::Table<&str, u64>, key: &str, delta: u64) -> Result<(), StoreError> {
    let cur = stats.get(key)?.map(|v| v.value()).unwrap_or(0);
    stats.insert(key, cur.wrapping_add(delta))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove_and_stats() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i.redb")).unwrap();
        let loc = Location {
            segment: 3,
            offset: 99,
            frame_len: 10,
            raw_len: 20,
        };
        idx.insert(&[([1; 32], loc), ([1; 32], loc), ([2; 32], loc)])
            .unwrap();
        assert_eq!(
            idx.get_many(&[[1; 32], [3; 32]]).unwrap(),
            vec![Some(loc), None]
        );
        let s = idx.stats().unwrap();
        assert_eq!((s.chunks, s.frame_bytes, s.raw_bytes), (2, 20, 40));
        idx.remove(&[[1; 32]]).unwrap();
        let s = idx.stats().unwrap();
        assert_eq!((s.chunks, s.frame_bytes, s.raw_bytes), (1, 10, 20));
    }
}
