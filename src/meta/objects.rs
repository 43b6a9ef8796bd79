//! NARs, store paths (objects), staged uploads and the uploaded-name map.
//!
//! A NAR row is shared by every cache that holds a path with that content
//! (unique on NarHash). An object row makes a path visible in one cache; it is
//! only ever written together with the NAR row it names, in one transaction.

use bytes::Bytes;

use rusqlite::{params, OptionalExtension};

use super::{now, Meta, MetaError};

/// A stored NAR.
#[derive(Clone, Debug)]
pub struct NarRow {
    pub id: i64,
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    pub file_size: u64,
    pub manifest: Vec<u8>,
    pub damaged: bool,
}

/// A NAR uploaded to a cache whose narinfo has not arrived yet.
#[derive(Clone, Debug)]
pub struct StagedNar {
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    pub file_size: u64,
    pub chunk_count: u64,
    pub manifest: Vec<u8>,
}

/// A store path made visible in a cache.
#[derive(Clone, Debug)]
pub struct ObjectRow {
    pub path_hash: String,
    pub store_path: String,
    /// The narinfo exactly as served.
    pub narinfo: String,
}

/// A store path as the dashboard lists a cache's latest pushes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecentPath {
    pub store_path: String,
    /// Uncompressed NAR bytes.
    pub nar_size: u64,
    /// Stored (compressed) NAR bytes.
    pub file_size: u64,
    /// When the path was stored (Unix seconds).
    pub stored_at: i64,
}

fn hash_blob(v: Vec<u8>) -> Result<[u8; 32], MetaError> {
    v.try_into()
        .map_err(|_| MetaError::Damaged("a NAR hash is not 32 bytes".into()))
}

/// The columns of [`NAR_COLUMNS`], before their checks.
type RawNar = (i64, Vec<u8>, i64, i64, Vec<u8>, bool);

fn nar_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawNar> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn nar_finish(t: RawNar) -> Result<NarRow, MetaError> {
    Ok(NarRow {
        id: t.0,
        nar_hash: hash_blob(t.1)?,
        nar_size: t.2 as u64,
        file_size: t.3 as u64,
        manifest: t.4,
        damaged: t.5,
    })
}

const NAR_COLUMNS: &str = "id, nar_hash, nar_size, file_size, manifest, damaged";

impl Meta {
    /// Record (replacing) a staged NAR under the file name it was uploaded as.
    pub fn stage_nar(
        &self,
        cache_id: i64,
        file_name: &str,
        s: &StagedNar,
    ) -> Result<(), MetaError> {
        let c = self.conn()?;
        c.execute(
            "INSERT OR REPLACE INTO staged (cache_id, file_name, nar_hash, nar_size, manifest, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![cache_id, file_name, &s.nar_hash[..], s.nar_size as i64, s.manifest, now()],
        )?;
        Ok(())
    }

    pub fn staged_nar(
        &self,
        cache_id: i64,
        file_name: &str,
    ) -> Result<Option<StagedNar>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(
            "SELECT nar_hash, nar_size, manifest FROM staged WHERE cache_id = ?1 AND file_name = ?2",
        )?;
        let row = st
            .query_row(params![cache_id, file_name], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .optional()?;
        row.map(|(h, size, manifest)| {
            Ok(StagedNar {
                nar_hash: hash_blob(h)?,
                nar_size: size as u64,
                file_size: 0,
                chunk_count: 0,
                manifest,
            })
        })
        .transpose()
    }

    /// True when a NAR was staged or stored in this cache under `file_name`.
    pub fn nar_file_known(&self, cache_id: i64, file_name: &str) -> Result<bool, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM staged WHERE cache_id = ?1 AND file_name = ?2) \
             OR EXISTS (SELECT 1 FROM nar_files f JOIN nars n ON n.id = f.nar_id \
                        WHERE f.cache_id = ?1 AND f.file_name = ?2 AND n.damaged = 0)",
        )?;
        Ok(st.query_row(params![cache_id, file_name], |r| r.get(0))?)
    }

    /// The NAR stored in this cache under an uploaded file name.
    pub fn nar_by_file(&self, cache_id: i64, file_name: &str) -> Result<Option<NarRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(&format!(
            "SELECT {} FROM nar_files f JOIN nars n ON n.id = f.nar_id \
             WHERE f.cache_id = ?1 AND f.file_name = ?2",
            NAR_COLUMNS
                .split(", ")
                .map(|c| format!("n.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
        st.query_row(params![cache_id, file_name], nar_from_row)
            .optional()?
            .map(nar_finish)
            .transpose()
    }

    pub fn nar_by_hash(&self, nar_hash: &[u8; 32]) -> Result<Option<NarRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(&format!(
            "SELECT {NAR_COLUMNS} FROM nars WHERE nar_hash = ?1"
        ))?;
        st.query_row([&nar_hash[..]], nar_from_row)
            .optional()?
            .map(nar_finish)
            .transpose()
    }

    /// The NAR with this hash, when the cache holds a path that uses it.
    pub fn nar_in_cache(
        &self,
        cache_id: i64,
        nar_hash: &[u8; 32],
    ) -> Result<Option<NarRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(&format!(
            "SELECT {NAR_COLUMNS} FROM nars WHERE nar_hash = ?2 AND EXISTS \
             (SELECT 1 FROM objects o WHERE o.nar_id = nars.id AND o.cache_id = ?1)"
        ))?;
        st.query_row(params![cache_id, &nar_hash[..]], nar_from_row)
            .optional()?
            .map(nar_finish)
            .transpose()
    }

    /// Make a path visible: insert or reuse the NAR (repairing it when it was
    /// damaged), upsert the object, remember the uploaded file name, and drop the
    /// staged row, all in one transaction. Returns the NAR id.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_object(
        &self,
        cache_id: i64,
        nar: &StagedNar,
        uploaded_as: Option<&str>,
        path_hash: &str,
        store_path: &str,
        narinfo: &str,
    ) -> Result<i64, MetaError> {
        let mut c = self.conn()?;
        // IMMEDIATE: take the write lock up front, so a concurrent commit makes this
        // one wait (busy timeout) instead of failing on a stale read snapshot.
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let existing: Option<(i64, bool)> = tx
            .query_row(
                "SELECT id, damaged FROM nars WHERE nar_hash = ?1",
                [&nar.nar_hash[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let nar_id = match existing {
            Some((id, damaged)) => {
                if damaged {
                    tx.execute(
                        "UPDATE nars SET manifest = ?2, file_size = ?3, chunk_count = ?4, damaged = 0 \
                         WHERE id = ?1",
                        params![id, nar.manifest, nar.file_size as i64, nar.chunk_count as i64],
                    )?;
                }
                id
            }
            None => {
                tx.execute(
                    "INSERT INTO nars (nar_hash, nar_size, file_size, chunk_count, manifest, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        &nar.nar_hash[..],
                        nar.nar_size as i64,
                        nar.file_size as i64,
                        nar.chunk_count as i64,
                        nar.manifest,
                        now()
                    ],
                )?;
                tx.last_insert_rowid()
            }
        };
        tx.execute(
            "INSERT OR REPLACE INTO objects (cache_id, path_hash, store_path, nar_id, narinfo, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![cache_id, path_hash, store_path, nar_id, narinfo, now()],
        )?;
        if let Some(name) = uploaded_as {
            tx.execute(
                "INSERT OR REPLACE INTO nar_files (cache_id, file_name, nar_id) VALUES (?1, ?2, ?3)",
                params![cache_id, name, nar_id],
            )?;
            tx.execute(
                "DELETE FROM staged WHERE cache_id = ?1 AND file_name = ?2",
                params![cache_id, name],
            )?;
        }
        tx.commit()?;
        self.memo.invalidate();
        Ok(nar_id)
    }

    /// The served narinfo of a path, unless its NAR is known to be damaged.
    pub fn narinfo(&self, cache_id: i64, path_hash: &str) -> Result<Option<Bytes>, MetaError> {
        if let Some(known) = self.memo.narinfo(cache_id, path_hash) {
            return Ok(known);
        }
        let at = self.memo.generation();
        let c = self.conn()?;
        let mut st = c.prepare_cached(
            "SELECT o.narinfo FROM objects o JOIN nars n ON n.id = o.nar_id \
             WHERE o.cache_id = ?1 AND o.path_hash = ?2 AND n.damaged = 0",
        )?;
        let text: Option<Bytes> = st
            .query_row(params![cache_id, path_hash], |r| r.get::<_, String>(0))
            .optional()?
            .map(Bytes::from);
        self.memo.put_narinfo(at, cache_id, path_hash, text.clone());
        Ok(text)
    }

    /// The served narinfo of a path when memory knows the answer (see `memo.rs`):
    /// `None` means "ask [`Meta::narinfo`]".
    pub fn narinfo_remembered(&self, cache_id: i64, path_hash: &str) -> Option<Option<Bytes>> {
        self.memo.narinfo(cache_id, path_hash)
    }

    /// Which of these path hashes the cache does not hold (or holds damaged).
    pub fn missing_paths(
        &self,
        cache_id: i64,
        hashes: &[String],
    ) -> Result<Vec<String>, MetaError> {
        let mut out = Vec::new();
        for h in hashes {
            if self.narinfo(cache_id, h)?.is_none() {
                out.push(h.clone());
            }
        }
        Ok(out)
    }

    /// Mark NARs damaged: their paths disappear until a re-push repairs them.
    pub fn mark_damaged(&self, nar_ids: &[i64]) -> Result<(), MetaError> {
        let c = self.conn()?;
        for id in nar_ids {
            c.execute("UPDATE nars SET damaged = 1 WHERE id = ?1", [id])?;
        }
        self.memo.invalidate();
        Ok(())
    }

    /// Every NAR, for verify: (id, nar hash, nar size, manifest).
    pub fn all_nars(&self) -> Result<Vec<NarRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare(&format!("SELECT {NAR_COLUMNS} FROM nars ORDER BY id"))?;
        let rows = st.query_map([], nar_from_row)?;
        rows.map(|r| nar_finish(r?)).collect()
    }

    /// The full store paths (with their cache names) that use a NAR.
    pub fn paths_of_nar(&self, nar_id: i64) -> Result<Vec<(String, String)>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare(
            "SELECT c.name, o.store_path FROM objects o JOIN caches c ON c.id = o.cache_id \
             WHERE o.nar_id = ?1 ORDER BY c.name, o.store_path",
        )?;
        let rows = st.query_map([nar_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Drop staged NARs older than `max_age_secs`; returns how many.
    pub fn expire_staged(&self, max_age_secs: i64) -> Result<usize, MetaError> {
        let c = self.conn()?;
        Ok(c.execute(
            "DELETE FROM staged WHERE created_at < ?1",
            [now() - max_age_secs],
        )?)
    }

    /// The `limit` paths of a cache stored last, newest first.
    pub fn recent_paths(&self, cache_id: i64, limit: u32) -> Result<Vec<RecentPath>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(
            "SELECT o.store_path, n.nar_size, n.file_size, o.created_at \
             FROM objects o JOIN nars n ON n.id = o.nar_id WHERE o.cache_id = ?1 \
             ORDER BY o.created_at DESC, o.store_path LIMIT ?2",
        )?;
        let rows = st.query_map(params![cache_id, limit], |r| {
            Ok(RecentPath {
                store_path: r.get(0)?,
                nar_size: r.get::<_, i64>(1)? as u64,
                file_size: r.get::<_, i64>(2)? as u64,
                stored_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Counts for `larder stats`: (nars, store paths).
    pub fn counts(&self) -> Result<(u64, u64), MetaError> {
        let c = self.conn()?;
        let nars: i64 = c.query_row("SELECT COUNT(*) FROM nars", [], |r| r.get(0))?;
        let objects: i64 = c.query_row("SELECT COUNT(*) FROM objects", [], |r| r.get(0))?;
        Ok((nars as u64, objects as u64))
    }
}
