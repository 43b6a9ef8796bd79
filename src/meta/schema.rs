//! Numbered migrations. `user_version` holds the number applied last. Append new
//! migrations; never edit one that has shipped.

use rusqlite::Connection;

use super::MetaError;

const MIGRATIONS: &[&str] = &[
    // 1: caches, NARs, store paths, staged uploads, side files.
    r#"
    CREATE TABLE caches (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        is_public INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        store_dir TEXT NOT NULL,
        signing_key TEXT NOT NULL,
        upstream_cache_key_names TEXT NOT NULL,
        retention_period INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE nars (
        id INTEGER PRIMARY KEY,
        nar_hash BLOB NOT NULL UNIQUE,
        nar_size INTEGER NOT NULL,
        file_size INTEGER NOT NULL,
        chunk_count INTEGER NOT NULL,
        manifest BLOB NOT NULL,
        damaged INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE objects (
        cache_id INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        path_hash TEXT NOT NULL,
        store_path TEXT NOT NULL,
        nar_id INTEGER NOT NULL REFERENCES nars(id),
        narinfo TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (cache_id, path_hash)
    ) WITHOUT ROWID;
    CREATE INDEX objects_by_nar ON objects(nar_id, cache_id);
    CREATE TABLE staged (
        cache_id INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        file_name TEXT NOT NULL,
        nar_hash BLOB NOT NULL,
        nar_size INTEGER NOT NULL,
        manifest BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (cache_id, file_name)
    ) WITHOUT ROWID;
    CREATE TABLE nar_files (
        cache_id INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        file_name TEXT NOT NULL,
        nar_id INTEGER NOT NULL REFERENCES nars(id),
        PRIMARY KEY (cache_id, file_name)
    ) WITHOUT ROWID;
    CREATE TABLE side_files (
        cache_id INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        content BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (cache_id, kind, key)
    ) WITHOUT ROWID;
    "#,
    // 2: scoped tokens (issued, revoked).
    r#"
    CREATE TABLE tokens (
        jti TEXT PRIMARY KEY,
        sub TEXT NOT NULL,
        parent TEXT,
        chain TEXT NOT NULL,
        caches TEXT NOT NULL,
        issued_at INTEGER NOT NULL,
        not_before INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX tokens_by_sub ON tokens(sub);
    "#,
    // 3: S3 access keys and their grants, buckets, objects, multipart uploads and
    // parts (see `meta/s3.rs`). Object keys are BLOBs so they sort and compare as
    // bytes, which is S3's listing order.
    r#"
    CREATE TABLE s3_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        secret TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE s3_grants (
        key_id TEXT NOT NULL REFERENCES s3_keys(id) ON DELETE CASCADE,
        pattern TEXT NOT NULL,
        can_read INTEGER NOT NULL,
        can_write INTEGER NOT NULL,
        can_owner INTEGER NOT NULL,
        PRIMARY KEY (key_id, pattern)
    ) WITHOUT ROWID;
    CREATE TABLE s3_buckets (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE s3_objects (
        bucket_id INTEGER NOT NULL REFERENCES s3_buckets(id),
        key BLOB NOT NULL,
        size INTEGER NOT NULL,
        etag TEXT NOT NULL,
        modified_ms INTEGER NOT NULL,
        headers TEXT NOT NULL,
        part_sizes BLOB,
        manifest BLOB NOT NULL,
        PRIMARY KEY (bucket_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE s3_uploads (
        upload_id TEXT PRIMARY KEY,
        bucket_id INTEGER NOT NULL REFERENCES s3_buckets(id),
        key BLOB NOT NULL,
        headers TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE INDEX s3_uploads_by_key ON s3_uploads(bucket_id, key, upload_id);
    CREATE TABLE s3_parts (
        upload_id TEXT NOT NULL REFERENCES s3_uploads(upload_id) ON DELETE CASCADE,
        part_number INTEGER NOT NULL,
        size INTEGER NOT NULL,
        etag TEXT NOT NULL,
        checksum TEXT,
        modified_ms INTEGER NOT NULL,
        manifest BLOB NOT NULL,
        PRIMARY KEY (upload_id, part_number)
    ) WITHOUT ROWID;
    "#,
    // 4: the storage lifecycle (docs/design/gc.md): when each path was last
    // fetched, pins, per-cache quotas, and the record of GC passes.
    r#"
    ALTER TABLE objects ADD COLUMN last_access INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE pins (
        cache_id INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        path_hash TEXT NOT NULL,
        store_path TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (cache_id, path_hash)
    ) WITHOUT ROWID;
    CREATE TABLE cache_quotas (
        cache_id INTEGER PRIMARY KEY REFERENCES caches(id) ON DELETE CASCADE,
        quota_bytes INTEGER NOT NULL
    );
    CREATE TABLE gc_runs (
        id INTEGER PRIMARY KEY,
        started_at INTEGER NOT NULL,
        report TEXT NOT NULL
    );
    "#,
    // 5: the pull-through cache (docs/design/upstreams.md): each cache's upstreams
    // (JSON), and narinfos accepted from an upstream whose NAR is not stored yet.
    r#"
    ALTER TABLE caches ADD COLUMN upstreams TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE proxied (
        cache_id INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        path_hash TEXT NOT NULL,
        store_path TEXT NOT NULL,
        nar_hash BLOB NOT NULL,
        nar_size INTEGER NOT NULL,
        upstream_url TEXT NOT NULL,
        nar_url TEXT NOT NULL,
        compression TEXT NOT NULL,
        narinfo TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (cache_id, path_hash)
    ) WITHOUT ROWID;
    CREATE INDEX proxied_by_nar ON proxied(cache_id, nar_hash);
    "#,
];

/// Bring the schema up to date, one transaction per migration.
pub(super) fn migrate(c: &mut Connection) -> Result<(), MetaError> {
    let current: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(MetaError::TooNew {
            found: current,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = c.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
