//! The `caches` table.

use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Row};

use super::{now, Meta, MetaError};

/// One cache, as stored.
#[derive(Clone, Debug)]
pub struct CacheRow {
    pub id: i64,
    pub name: String,
    pub is_public: bool,
    pub priority: i32,
    pub store_dir: String,
    /// Nix's secret key format.
    pub signing_key: String,
    pub upstream_cache_key_names: Vec<String>,
    /// `None` means the global retention policy.
    pub retention_period: Option<i64>,
    /// Binary caches asked for what this one does not hold, in the order tried.
    pub upstreams: Vec<Upstream>,
}

/// An upstream binary cache of a cache (`docs/design/upstreams.md`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Base URL, without a trailing slash (`https://cache.nixos.org`).
    pub url: String,
    /// `name:base64` keys; an answer counts only when one of them signed it.
    pub public_keys: Vec<String>,
    /// Lower is tried first (as in Nix); equal priorities keep the written order.
    #[serde(default = "default_upstream_priority")]
    pub priority: i32,
}

/// The priority of an upstream that names none.
pub const DEFAULT_UPSTREAM_PRIORITY: i32 = 50;

fn default_upstream_priority() -> i32 {
    DEFAULT_UPSTREAM_PRIORITY
}

/// The settings of a cache to create.
#[derive(Clone, Debug)]
pub struct NewCache {
    pub name: String,
    pub is_public: bool,
    pub priority: i32,
    pub store_dir: String,
    pub signing_key: String,
    pub upstream_cache_key_names: Vec<String>,
    pub retention_period: Option<i64>,
    pub upstreams: Vec<Upstream>,
}

const COLUMNS: &str = "id, name, is_public, priority, store_dir, signing_key, \
                       upstream_cache_key_names, retention_period, upstreams";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(CacheRow, String, String)> {
    Ok((
        CacheRow {
            id: r.get(0)?,
            name: r.get(1)?,
            is_public: r.get(2)?,
            priority: r.get(3)?,
            store_dir: r.get(4)?,
            signing_key: r.get(5)?,
            upstream_cache_key_names: Vec::new(),
            retention_period: r.get(7)?,
            upstreams: Vec::new(),
        },
        r.get(6)?,
        r.get(8)?,
    ))
}

fn finish(t: (CacheRow, String, String)) -> Result<CacheRow, MetaError> {
    let (mut row, names, upstreams) = t;
    row.upstream_cache_key_names = serde_json::from_str(&names)
        .map_err(|e| MetaError::Damaged(format!("cache {}: upstream key names: {e}", row.name)))?;
    row.upstreams = serde_json::from_str(&upstreams)
        .map_err(|e| MetaError::Damaged(format!("cache {}: upstreams: {e}", row.name)))?;
    Ok(row)
}

fn upstreams_json(u: &[Upstream]) -> Result<String, MetaError> {
    serde_json::to_string(u).map_err(|e| MetaError::Damaged(e.to_string()))
}

impl Meta {
    /// A cache by name when memory holds it; `None` means "ask `cache_by_name`".
    pub fn cache_remembered(&self, name: &str) -> Option<Arc<CacheRow>> {
        self.memo.cache(name)
    }

    /// A cache by name, from memory when it was read before (see `memo.rs`).
    pub fn cache_by_name(&self, name: &str) -> Result<Option<Arc<CacheRow>>, MetaError> {
        if let Some(row) = self.memo.cache(name) {
            return Ok(Some(row));
        }
        let at = self.memo.generation();
        let c = self.conn()?;
        let mut st = c.prepare_cached(&format!("SELECT {COLUMNS} FROM caches WHERE name = ?1"))?;
        let row = st
            .query_row([name], from_row)
            .optional()?
            .map(finish)
            .transpose()?
            .map(Arc::new);
        if let Some(r) = &row {
            self.memo.put_cache(at, r.clone());
        }
        Ok(row)
    }

    pub fn list_caches(&self) -> Result<Vec<CacheRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(&format!("SELECT {COLUMNS} FROM caches ORDER BY name"))?;
        let rows = st.query_map([], from_row)?;
        rows.map(|r| finish(r?)).collect()
    }

    /// Insert a cache; `Ok(false)` when the name is taken.
    pub fn create_cache(&self, new: &NewCache) -> Result<bool, MetaError> {
        let c = self.conn()?;
        let names = serde_json::to_string(&new.upstream_cache_key_names)
            .map_err(|e| MetaError::Damaged(e.to_string()))?;
        let n = c.execute(
            "INSERT INTO caches (name, is_public, priority, store_dir, signing_key, \
             upstream_cache_key_names, retention_period, created_at, upstreams) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT(name) DO NOTHING",
            params![
                new.name,
                new.is_public,
                new.priority,
                new.store_dir,
                new.signing_key,
                names,
                new.retention_period,
                now(),
                upstreams_json(&new.upstreams)?
            ],
        )?;
        self.memo.invalidate();
        Ok(n == 1)
    }

    /// Write back every setting of an existing cache.
    pub fn update_cache(&self, row: &CacheRow) -> Result<(), MetaError> {
        let c = self.conn()?;
        let names = serde_json::to_string(&row.upstream_cache_key_names)
            .map_err(|e| MetaError::Damaged(e.to_string()))?;
        c.execute(
            "UPDATE caches SET is_public = ?2, priority = ?3, store_dir = ?4, \
             signing_key = ?5, upstream_cache_key_names = ?6, retention_period = ?7, \
             upstreams = ?8 WHERE id = ?1",
            params![
                row.id,
                row.is_public,
                row.priority,
                row.store_dir,
                row.signing_key,
                names,
                row.retention_period,
                upstreams_json(&row.upstreams)?
            ],
        )?;
        self.memo.invalidate();
        Ok(())
    }

    /// Delete a cache and everything in it (its chunks stay for GC); `Ok(false)`
    /// when there was no such cache.
    pub fn destroy_cache(&self, name: &str) -> Result<bool, MetaError> {
        let c = self.conn()?;
        let n = c.execute("DELETE FROM caches WHERE name = ?1", [name])?;
        self.memo.invalidate();
        Ok(n == 1)
    }
}
