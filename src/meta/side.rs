//! Side files of a cache: build logs, NAR listings and realisations, stored whole
//! (they are small) and keyed by kind and name.

use rusqlite::{params, OptionalExtension};

use super::{now, Meta, MetaError};

impl Meta {
    pub fn put_side_file(
        &self,
        cache_id: i64,
        kind: &str,
        key: &str,
        content: &[u8],
    ) -> Result<(), MetaError> {
        let c = self.conn()?;
        c.execute(
            "INSERT OR REPLACE INTO side_files (cache_id, kind, key, content, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![cache_id, kind, key, content, now()],
        )?;
        Ok(())
    }

    pub fn side_file(
        &self,
        cache_id: i64,
        kind: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(
            "SELECT content FROM side_files WHERE cache_id = ?1 AND kind = ?2 AND key = ?3",
        )?;
        Ok(st
            .query_row(params![cache_id, kind, key], |r| r.get(0))
            .optional()?)
    }
}
