//! What the storage lifecycle reads and writes (`docs/design/gc.md`): the
//! snapshot a GC pass marks from, evictions and deletes, access times, pins,
//! quotas and the record of passes.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{now, Meta, MetaError};

/// One visible path, as eviction sees it.
#[derive(Clone, Debug)]
pub struct ObjectRef {
    pub cache_id: i64,
    pub path_hash: String,
    pub store_path: String,
    pub nar_id: i64,
    /// Path hashes of its references (itself excluded).
    pub references: Vec<String>,
    /// The later of its push and its last fetch.
    pub last_used: i64,
}

/// A cache's lifecycle settings.
#[derive(Clone, Debug)]
pub struct CacheLifecycle {
    pub id: i64,
    pub name: String,
    pub retention_period: Option<i64>,
    pub quota_bytes: Option<u64>,
}

/// Everything a GC pass plans from, read in one transaction.
#[derive(Debug, Default)]
pub struct GcSnapshot {
    pub objects: Vec<ObjectRef>,
    pub caches: Vec<CacheLifecycle>,
    /// (cache id, path hash) of every pinned path.
    pub pins: HashSet<(i64, String)>,
    /// NAR id -> stored frame bytes.
    pub nar_file_size: HashMap<i64, u64>,
}

/// A pinned path.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PinRow {
    pub store_path: String,
    pub created_at: i64,
}

/// What a fetch touched: a path by its hash, or every path of a NAR.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AccessKey {
    Path(String),
    Nar([u8; 32]),
}

/// The path hashes a narinfo's `References:` line names, `own` excluded.
fn references_of(narinfo: &str, own: &str) -> Vec<String> {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix("References:"))
        .map(|refs| {
            refs.split_whitespace()
                .filter_map(|r| r.get(..32))
                .filter(|h| *h != own)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl Meta {
    /// Read everything a GC pass needs in one read transaction, handing every
    /// manifest (of NARs, staged NARs, S3 objects and S3 parts) to `manifest`.
    pub fn gc_snapshot(&self, mut manifest: impl FnMut(&[u8])) -> Result<GcSnapshot, MetaError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let mut snap = GcSnapshot::default();
        {
            let mut st = tx.prepare(
                "SELECT cache_id, path_hash, store_path, nar_id, narinfo, \
                 MAX(created_at, last_access) FROM objects",
            )?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let path_hash: String = r.get(1)?;
                let narinfo: String = r.get(4)?;
                snap.objects.push(ObjectRef {
                    cache_id: r.get(0)?,
                    references: references_of(&narinfo, &path_hash),
                    path_hash,
                    store_path: r.get(2)?,
                    nar_id: r.get(3)?,
                    last_used: r.get(5)?,
                });
            }
        }
        {
            let mut st = tx.prepare(
                "SELECT c.id, c.name, c.retention_period, q.quota_bytes FROM caches c \
                 LEFT JOIN cache_quotas q ON q.cache_id = c.id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(CacheLifecycle {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    retention_period: r.get(2)?,
                    quota_bytes: r.get::<_, Option<i64>>(3)?.map(|q| q.max(0) as u64),
                })
            })?;
            snap.caches = rows.collect::<Result<_, _>>()?;
        }
        {
            let mut st = tx.prepare("SELECT cache_id, path_hash FROM pins")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            snap.pins = rows.collect::<Result<_, _>>()?;
        }
        {
            let mut st = tx.prepare("SELECT id, file_size, manifest FROM nars")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                snap.nar_file_size
                    .insert(r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64);
                manifest(r.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?);
            }
        }
        for sql in [
            "SELECT manifest FROM staged",
            "SELECT manifest FROM s3_objects",
            "SELECT manifest FROM s3_parts",
        ] {
            let mut st = tx.prepare(sql)?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                manifest(r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?);
            }
        }
        drop(tx);
        Ok(snap)
    }

    /// The manifest of a NAR row.
    pub fn nar_manifest(&self, nar_id: i64) -> Result<Option<Vec<u8>>, MetaError> {
        let c = self.conn()?;
        Ok(
            c.query_row("SELECT manifest FROM nars WHERE id = ?1", [nar_id], |r| {
                r.get(0)
            })
            .optional()?,
        )
    }

    /// Remove paths (eviction or delete) in one transaction, with their pins, and
    /// every NAR row no path names any more. Returns (paths removed, NARs removed).
    pub fn remove_objects(&self, paths: &[(i64, String)]) -> Result<(u64, u64), MetaError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut removed = 0u64;
        {
            let mut del =
                tx.prepare_cached("DELETE FROM objects WHERE cache_id = ?1 AND path_hash = ?2")?;
            let mut unpin =
                tx.prepare_cached("DELETE FROM pins WHERE cache_id = ?1 AND path_hash = ?2")?;
            for (cache_id, hash) in paths {
                removed += del.execute(params![cache_id, hash])? as u64;
                unpin.execute(params![cache_id, hash])?;
            }
        }
        let orphans = "SELECT id FROM nars WHERE NOT EXISTS \
                       (SELECT 1 FROM objects o WHERE o.nar_id = nars.id)";
        tx.execute(
            &format!("DELETE FROM nar_files WHERE nar_id IN ({orphans})"),
            [],
        )?;
        let nars = tx.execute(&format!("DELETE FROM nars WHERE id IN ({orphans})"), [])? as u64;
        tx.commit()?;
        self.memo.invalidate();
        Ok((removed, nars))
    }

    /// Write batched access times: each key's paths get `last_access = at`.
    pub fn record_access(&self, batch: &[(i64, AccessKey, i64)]) -> Result<(), MetaError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut by_path = tx.prepare_cached(
                "UPDATE objects SET last_access = MAX(last_access, ?3) \
                 WHERE cache_id = ?1 AND path_hash = ?2",
            )?;
            let mut by_nar = tx.prepare_cached(
                "UPDATE objects SET last_access = MAX(last_access, ?3) \
                 WHERE cache_id = ?1 AND nar_id = (SELECT id FROM nars WHERE nar_hash = ?2)",
            )?;
            for (cache_id, key, at) in batch {
                match key {
                    AccessKey::Path(h) => by_path.execute(params![cache_id, h, at])?,
                    AccessKey::Nar(n) => by_nar.execute(params![cache_id, &n[..], at])?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// One path of a cache: (store path, its references' hashes).
    pub fn object_refs(
        &self,
        cache_id: i64,
        path_hash: &str,
    ) -> Result<Option<(String, Vec<String>)>, MetaError> {
        let c = self.conn()?;
        let row: Option<(String, String)> = c
            .query_row(
                "SELECT store_path, narinfo FROM objects WHERE cache_id = ?1 AND path_hash = ?2",
                params![cache_id, path_hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.map(|(sp, info)| {
            let refs = references_of(&info, path_hash);
            (sp, refs)
        }))
    }

    /// Pin paths of a cache (idempotent).
    pub fn pin(&self, cache_id: i64, paths: &[(String, String)]) -> Result<(), MetaError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO pins (cache_id, path_hash, store_path, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (hash, store_path) in paths {
                st.execute(params![cache_id, hash, store_path, now()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Unpin paths; returns how many were pinned.
    pub fn unpin(&self, cache_id: i64, hashes: &[String]) -> Result<u64, MetaError> {
        let c = self.conn()?;
        let mut n = 0u64;
        for h in hashes {
            n += c.execute(
                "DELETE FROM pins WHERE cache_id = ?1 AND path_hash = ?2",
                params![cache_id, h],
            )? as u64;
        }
        Ok(n)
    }

    /// The pins of a cache, by store path.
    pub fn pins(&self, cache_id: i64) -> Result<Vec<PinRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare(
            "SELECT store_path, created_at FROM pins WHERE cache_id = ?1 ORDER BY store_path",
        )?;
        let rows = st.query_map([cache_id], |r| {
            Ok(PinRow {
                store_path: r.get(0)?,
                created_at: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Set (or with `None` clear) a cache's quota.
    pub fn set_quota(&self, cache_id: i64, bytes: Option<u64>) -> Result<(), MetaError> {
        let c = self.conn()?;
        match bytes {
            Some(b) => c.execute(
                "INSERT OR REPLACE INTO cache_quotas (cache_id, quota_bytes) VALUES (?1, ?2)",
                params![cache_id, i64::try_from(b).unwrap_or(i64::MAX)],
            )?,
            None => c.execute("DELETE FROM cache_quotas WHERE cache_id = ?1", [cache_id])?,
        };
        Ok(())
    }

    pub fn quota(&self, cache_id: i64) -> Result<Option<u64>, MetaError> {
        let c = self.conn()?;
        Ok(c.query_row(
            "SELECT quota_bytes FROM cache_quotas WHERE cache_id = ?1",
            [cache_id],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|q| q.max(0) as u64))
    }

    /// A cache's usage: (paths, stored frame bytes of its NARs, NAR bytes).
    pub fn cache_usage(&self, cache_id: i64) -> Result<(u64, u64, u64), MetaError> {
        let c = self.conn()?;
        let (paths, stored, logical): (i64, i64, i64) = c.query_row(
            "SELECT COUNT(*), COALESCE(SUM(n.file_size), 0), COALESCE(SUM(n.nar_size), 0) \
             FROM objects o JOIN nars n ON n.id = o.nar_id WHERE o.cache_id = ?1",
            [cache_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok((paths as u64, stored as u64, logical as u64))
    }

    /// Totals over every NAR row: (stored frame bytes, NAR bytes).
    pub fn nar_totals(&self) -> Result<(u64, u64), MetaError> {
        let c = self.conn()?;
        let (stored, logical): (i64, i64) = c.query_row(
            "SELECT COALESCE(SUM(file_size), 0), COALESCE(SUM(nar_size), 0) FROM nars",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((stored as u64, logical as u64))
    }

    /// Keep the report of a GC pass (the last 100 are kept).
    pub fn record_gc(&self, started_at: i64, report: &str) -> Result<(), MetaError> {
        let c = self.conn()?;
        c.execute(
            "INSERT INTO gc_runs (started_at, report) VALUES (?1, ?2)",
            params![started_at, report],
        )?;
        c.execute(
            "DELETE FROM gc_runs WHERE id <= (SELECT MAX(id) FROM gc_runs) - 100",
            [],
        )?;
        Ok(())
    }

    /// The last GC pass: (started at, report).
    pub fn last_gc(&self) -> Result<Option<(i64, String)>, MetaError> {
        let c = self.conn()?;
        Ok(c.query_row(
            "SELECT started_at, report FROM gc_runs ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::references_of;

    #[test]
    fn references_exclude_the_path_itself() {
        let info = "StorePath: /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x\n\
                    References: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-y\n";
        assert_eq!(
            references_of(info, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            vec!["bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".to_string()]
        );
        assert!(references_of("StorePath: x\n", "a").is_empty());
    }
}
