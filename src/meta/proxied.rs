//! The `proxied` table: narinfos accepted from an upstream (their signature
//! verified) whose NAR is not stored yet. A proxied row is not a stored path: it
//! names no chunks, counts in no quota, and is dropped once the path is committed
//! or when it is older than the caller's limit (`docs/design/upstreams.md`).

use rusqlite::{params, OptionalExtension};

use super::{now, Meta, MetaError};

/// A path known from an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedRow {
    pub path_hash: String,
    pub store_path: String,
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// The upstream's base URL.
    pub upstream_url: String,
    /// The upstream narinfo's `URL` (relative to `upstream_url`, or absolute).
    pub nar_url: String,
    /// The upstream narinfo's `Compression` (`bzip2` when it had none).
    pub compression: String,
    /// The narinfo larder serves for it while the NAR is not stored.
    pub narinfo: String,
    pub created_at: i64,
}

const COLUMNS: &str = "path_hash, store_path, nar_hash, nar_size, upstream_url, nar_url, \
                       compression, narinfo, created_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ProxiedRow, Vec<u8>)> {
    Ok((
        ProxiedRow {
            path_hash: r.get(0)?,
            store_path: r.get(1)?,
            nar_hash: [0; 32],
            nar_size: r.get::<_, i64>(3)? as u64,
            upstream_url: r.get(4)?,
            nar_url: r.get(5)?,
            compression: r.get(6)?,
            narinfo: r.get(7)?,
            created_at: r.get(8)?,
        },
        r.get(2)?,
    ))
}

fn finish(t: (ProxiedRow, Vec<u8>)) -> Result<ProxiedRow, MetaError> {
    let (mut row, hash) = t;
    row.nar_hash = hash
        .try_into()
        .map_err(|_| MetaError::Damaged("a proxied NAR hash is not 32 bytes".into()))?;
    Ok(row)
}

impl Meta {
    /// Record (replacing) a path accepted from an upstream.
    pub fn put_proxied(&self, cache_id: i64, p: &ProxiedRow) -> Result<(), MetaError> {
        let c = self.conn()?;
        c.execute(
            &format!("INSERT OR REPLACE INTO proxied (cache_id, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            params![
                cache_id,
                p.path_hash,
                p.store_path,
                &p.nar_hash[..],
                p.nar_size as i64,
                p.upstream_url,
                p.nar_url,
                p.compression,
                p.narinfo,
                now()
            ],
        )?;
        Ok(())
    }

    /// A proxied path by its store path hash.
    pub fn proxied(&self, cache_id: i64, path_hash: &str) -> Result<Option<ProxiedRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM proxied WHERE cache_id = ?1 AND path_hash = ?2"
        ))?;
        st.query_row(params![cache_id, path_hash], from_row)
            .optional()?
            .map(finish)
            .transpose()
    }

    /// The proxied paths of a cache whose NAR has this hash, newest first.
    pub fn proxied_by_nar(
        &self,
        cache_id: i64,
        nar_hash: &[u8; 32],
    ) -> Result<Vec<ProxiedRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM proxied WHERE cache_id = ?1 AND nar_hash = ?2 \
             ORDER BY created_at DESC"
        ))?;
        let rows = st.query_map(params![cache_id, &nar_hash[..]], from_row)?;
        rows.map(|r| finish(r?)).collect()
    }

    /// Forget a proxied path (it was committed, or is stale).
    pub fn drop_proxied(&self, cache_id: i64, path_hash: &str) -> Result<(), MetaError> {
        let c = self.conn()?;
        c.execute(
            "DELETE FROM proxied WHERE cache_id = ?1 AND path_hash = ?2",
            params![cache_id, path_hash],
        )?;
        Ok(())
    }

    /// Drop proxied rows older than `max_age_secs`; returns how many.
    pub fn expire_proxied(&self, max_age_secs: i64) -> Result<usize, MetaError> {
        let c = self.conn()?;
        Ok(c.execute(
            "DELETE FROM proxied WHERE created_at < ?1",
            [now() - max_age_secs],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::NewCache;

    #[test]
    fn proxied_rows_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        assert!(meta
            .create_cache(&NewCache {
                name: "c".into(),
                is_public: true,
                priority: 41,
                store_dir: "/nix/store".into(),
                signing_key: "k".into(),
                upstream_cache_key_names: vec![],
                retention_period: None,
                upstreams: vec![],
            })
            .unwrap());
        let id = meta.cache_by_name("c").unwrap().unwrap().id;
        let row = ProxiedRow {
            path_hash: "a".repeat(32),
            store_path: format!("/nix/store/{}-x", "a".repeat(32)),
            nar_hash: [7; 32],
            nar_size: 120,
            upstream_url: "http://u".into(),
            nar_url: "nar/x.nar.xz".into(),
            compression: "xz".into(),
            narinfo: "StorePath: …\n".into(),
            created_at: 0,
        };
        meta.put_proxied(id, &row).unwrap();
        let got = meta.proxied(id, &row.path_hash).unwrap().unwrap();
        assert_eq!(got.nar_url, row.nar_url);
        assert_eq!(got.nar_hash, row.nar_hash);
        assert_eq!(meta.proxied_by_nar(id, &[7; 32]).unwrap().len(), 1);
        assert!(meta.proxied_by_nar(id, &[8; 32]).unwrap().is_empty());
        meta.drop_proxied(id, &row.path_hash).unwrap();
        assert!(meta.proxied(id, &row.path_hash).unwrap().is_none());
    }
}
