//! S3 metadata: access keys and their bucket grants, buckets, objects, and
//! multipart uploads with their parts (schema migration 3).
//!
//! An object row names a chunk manifest whose every chunk is already durable and
//! indexed; it is written, replaced or deleted in one transaction, so a reader sees
//! the old object or the new one and never a mix. Conditional writes and multipart
//! completion run their checks inside that same transaction. What the S3 protocol
//! means (ETag matching, part rules, listings) is decided by the caller through
//! closures; this module only keeps the rows consistent.
//!
//! Object keys are stored as BLOBs: SQLite compares them with `memcmp`, which is
//! the UTF-8 byte order S3 lists keys in, and any byte string can bound a range.

use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};

use super::{Meta, MetaError};

/// An access key and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Key {
    pub id: String,
    pub name: String,
    /// The secret itself: SigV4 verification needs it (see `docs/design/s3.md`).
    pub secret: String,
    pub created_at: i64,
    pub grants: Vec<S3Grant>,
}

/// Rights on the buckets whose names match `pattern` (`*` matches any run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Grant {
    pub pattern: String,
    pub read: bool,
    pub write: bool,
    pub owner: bool,
}

/// What inserting a key did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyInsert {
    Created,
    /// The same id, name and secret were already there (an idempotent import).
    AlreadyThere,
    /// The name belongs to another key.
    NameTaken,
    /// The id exists with another name or secret.
    IdTaken,
}

/// A bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketRow {
    pub id: i64,
    pub name: String,
    pub created_at_ms: i64,
}

/// What deleting a bucket did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketDelete {
    Deleted,
    NotFound,
    NotEmpty,
}

/// An object as listed: no manifest, no headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSummary {
    pub key: Vec<u8>,
    pub size: u64,
    pub etag: String,
    pub modified_ms: i64,
}

/// A whole object row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3ObjectRow {
    pub key: Vec<u8>,
    pub size: u64,
    /// Without quotes: an MD5 in hex, or `<hex>-<parts>` for multipart objects.
    pub etag: String,
    pub modified_ms: i64,
    /// Content headers, user metadata and checksums, as the S3 layer encoded them.
    pub headers: String,
    /// Part sizes (u64 LE each) of a multipart object.
    pub part_sizes: Option<Vec<u8>>,
    pub manifest: Vec<u8>,
}

/// An object to store.
#[derive(Clone, Debug)]
pub struct NewObject {
    pub size: u64,
    pub etag: String,
    pub modified_ms: i64,
    pub headers: String,
    pub part_sizes: Option<Vec<u8>>,
    pub manifest: Vec<u8>,
}

/// What a write that runs its checks in the transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome<C> {
    Stored,
    NoSuchBucket,
    /// Multipart completion only: the upload is gone (completed or aborted).
    NoSuchUpload,
    /// The caller's check refused, with its reason.
    Refused(C),
}

/// A multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRow {
    pub upload_id: String,
    pub bucket_id: i64,
    pub key: Vec<u8>,
    pub headers: String,
    pub created_at_ms: i64,
}

/// One uploaded part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRow {
    pub part_number: u32,
    pub size: u64,
    pub etag: String,
    pub checksum: Option<String>,
    pub modified_ms: i64,
    pub manifest: Vec<u8>,
}

fn key_from_row(r: &Row<'_>) -> rusqlite::Result<S3Key> {
    Ok(S3Key {
        id: r.get(0)?,
        name: r.get(1)?,
        secret: r.get(2)?,
        created_at: r.get(3)?,
        grants: Vec::new(),
    })
}

fn object_from_row(r: &Row<'_>) -> rusqlite::Result<S3ObjectRow> {
    Ok(S3ObjectRow {
        key: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        etag: r.get(2)?,
        modified_ms: r.get(3)?,
        headers: r.get(4)?,
        part_sizes: r.get(5)?,
        manifest: r.get(6)?,
    })
}

const OBJECT_COLUMNS: &str = "key, size, etag, modified_ms, headers, part_sizes, manifest";

fn part_from_row(r: &Row<'_>) -> rusqlite::Result<PartRow> {
    Ok(PartRow {
        part_number: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        etag: r.get(2)?,
        checksum: r.get(3)?,
        modified_ms: r.get(4)?,
        manifest: r.get(5)?,
    })
}

fn upload_from_row(r: &Row<'_>) -> rusqlite::Result<UploadRow> {
    Ok(UploadRow {
        upload_id: r.get(0)?,
        bucket_id: r.get(1)?,
        key: r.get(2)?,
        headers: r.get(3)?,
        created_at_ms: r.get(4)?,
    })
}

fn len_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn grants_of(c: &rusqlite::Connection, key_id: &str) -> Result<Vec<S3Grant>, MetaError> {
    let mut st = c.prepare_cached(
        "SELECT pattern, can_read, can_write, can_owner FROM s3_grants \
         WHERE key_id = ?1 ORDER BY pattern",
    )?;
    let rows = st.query_map([key_id], |r| {
        Ok(S3Grant {
            pattern: r.get(0)?,
            read: r.get(1)?,
            write: r.get(2)?,
            owner: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// `(key > after or key >= from) and key < below`, as SQL over `key`, with the
/// parameters to bind after the leading ones.
struct KeyRange<'a> {
    lower: Option<(&'a [u8], bool)>,
    below: Option<&'a [u8]>,
}

impl KeyRange<'_> {
    fn sql(&self, first_param: usize) -> String {
        let mut s = String::new();
        let mut n = first_param;
        if let Some((_, inclusive)) = self.lower {
            s.push_str(if inclusive {
                " AND key >= ?"
            } else {
                " AND key > ?"
            });
            s.push_str(&n.to_string());
            n += 1;
        }
        if self.below.is_some() {
            s.push_str(" AND key < ?");
            s.push_str(&n.to_string());
        }
        s
    }

    fn params(&self) -> Vec<&[u8]> {
        let mut v = Vec::new();
        if let Some((k, _)) = self.lower {
            v.push(k);
        }
        if let Some(b) = self.below {
            v.push(b);
        }
        v
    }
}

/// The listing window: keys from `lower` (inclusive or not) to below `below`.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyWindow<'a> {
    /// The first key, and whether it is itself included.
    pub lower: Option<(&'a [u8], bool)>,
    /// Keys must sort before this (the end of a prefix).
    pub below: Option<&'a [u8]>,
}

impl Meta {
    // ---- access keys ----

    /// Insert a key. An identical existing key (same id, name and secret) is
    /// reported as [`KeyInsert::AlreadyThere`], so imports are idempotent.
    pub fn s3_key_insert(
        &self,
        id: &str,
        name: &str,
        secret: &str,
        now: i64,
    ) -> Result<KeyInsert, MetaError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let by_id: Option<(String, String)> = tx
            .query_row(
                "SELECT name, secret FROM s3_keys WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((n, s)) = by_id {
            return Ok(if n == name && s == secret {
                KeyInsert::AlreadyThere
            } else {
                KeyInsert::IdTaken
            });
        }
        let name_used: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM s3_keys WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )?;
        if name_used {
            return Ok(KeyInsert::NameTaken);
        }
        tx.execute(
            "INSERT INTO s3_keys (id, name, secret, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, secret, now],
        )?;
        tx.commit()?;
        Ok(KeyInsert::Created)
    }

    /// Every key with its grants, by name.
    pub fn s3_keys(&self) -> Result<Vec<S3Key>, MetaError> {
        let c = self.conn()?;
        let mut keys: Vec<S3Key> = {
            let mut st =
                c.prepare_cached("SELECT id, name, secret, created_at FROM s3_keys ORDER BY name")?;
            let rows = st.query_map([], key_from_row)?;
            rows.collect::<Result<_, _>>()?
        };
        for k in &mut keys {
            k.grants = grants_of(&c, &k.id)?;
        }
        Ok(keys)
    }

    /// A key by its access key id, with its grants: what every request looks up.
    pub fn s3_key_by_id(&self, id: &str) -> Result<Option<S3Key>, MetaError> {
        let c = self.conn()?;
        let key = c
            .prepare_cached("SELECT id, name, secret, created_at FROM s3_keys WHERE id = ?1")?
            .query_row([id], key_from_row)
            .optional()?;
        match key {
            Some(mut k) => {
                k.grants = grants_of(&c, &k.id)?;
                Ok(Some(k))
            }
            None => Ok(None),
        }
    }

    /// A key by its name, with its grants.
    pub fn s3_key_by_name(&self, name: &str) -> Result<Option<S3Key>, MetaError> {
        let c = self.conn()?;
        let key = c
            .prepare_cached("SELECT id, name, secret, created_at FROM s3_keys WHERE name = ?1")?
            .query_row([name], key_from_row)
            .optional()?;
        match key {
            Some(mut k) => {
                k.grants = grants_of(&c, &k.id)?;
                Ok(Some(k))
            }
            None => Ok(None),
        }
    }

    /// Delete a key and its grants; false when there was none by that name.
    pub fn s3_key_delete(&self, name: &str) -> Result<bool, MetaError> {
        let c = self.conn()?;
        Ok(c.execute("DELETE FROM s3_keys WHERE name = ?1", [name])? > 0)
    }

    /// Add rights on `pattern` to the key named `name` (keeping those it has).
    /// Returns the grant as it now stands, or `None` when there is no such key.
    pub fn s3_grant(
        &self,
        name: &str,
        pattern: &str,
        read: bool,
        write: bool,
        owner: bool,
    ) -> Result<Option<S3Grant>, MetaError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(id) = tx
            .query_row("SELECT id FROM s3_keys WHERE name = ?1", [name], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
        else {
            return Ok(None);
        };
        tx.execute(
            "INSERT INTO s3_grants (key_id, pattern, can_read, can_write, can_owner) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (key_id, pattern) DO UPDATE SET \
               can_read = can_read OR excluded.can_read, \
               can_write = can_write OR excluded.can_write, \
               can_owner = can_owner OR excluded.can_owner",
            params![id, pattern, read, write, owner],
        )?;
        let g = tx.query_row(
            "SELECT pattern, can_read, can_write, can_owner FROM s3_grants \
             WHERE key_id = ?1 AND pattern = ?2",
            params![id, pattern],
            |r| {
                Ok(S3Grant {
                    pattern: r.get(0)?,
                    read: r.get(1)?,
                    write: r.get(2)?,
                    owner: r.get(3)?,
                })
            },
        )?;
        tx.commit()?;
        Ok(Some(g))
    }

    /// Take rights on `pattern` away from the key named `name`; the grant goes when
    /// no right is left. `Ok(None)`: no such key. `Ok(Some(None))`: no grant remains.
    pub fn s3_revoke(
        &self,
        name: &str,
        pattern: &str,
        read: bool,
        write: bool,
        owner: bool,
    ) -> Result<Option<Option<S3Grant>>, MetaError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(id) = tx
            .query_row("SELECT id FROM s3_keys WHERE name = ?1", [name], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
        else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE s3_grants SET can_read = can_read AND NOT ?3, \
               can_write = can_write AND NOT ?4, can_owner = can_owner AND NOT ?5 \
             WHERE key_id = ?1 AND pattern = ?2",
            params![id, pattern, read, write, owner],
        )?;
        tx.execute(
            "DELETE FROM s3_grants WHERE key_id = ?1 AND pattern = ?2 \
             AND NOT can_read AND NOT can_write AND NOT can_owner",
            params![id, pattern],
        )?;
        let g = tx
            .query_row(
                "SELECT pattern, can_read, can_write, can_owner FROM s3_grants \
                 WHERE key_id = ?1 AND pattern = ?2",
                params![id, pattern],
                |r| {
                    Ok(S3Grant {
                        pattern: r.get(0)?,
                        read: r.get(1)?,
                        write: r.get(2)?,
                        owner: r.get(3)?,
                    })
                },
            )
            .optional()?;
        tx.commit()?;
        Ok(Some(g))
    }

    // ---- buckets ----

    /// Every bucket, by name.
    pub fn s3_buckets(&self) -> Result<Vec<BucketRow>, MetaError> {
        let c = self.conn()?;
        let mut st =
            c.prepare_cached("SELECT id, name, created_at_ms FROM s3_buckets ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok(BucketRow {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at_ms: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn s3_bucket(&self, name: &str) -> Result<Option<BucketRow>, MetaError> {
        let c = self.conn()?;
        let mut st =
            c.prepare_cached("SELECT id, name, created_at_ms FROM s3_buckets WHERE name = ?1")?;
        Ok(st
            .query_row([name], |r| {
                Ok(BucketRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at_ms: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Create a bucket; false when it already exists.
    pub fn s3_bucket_create(&self, name: &str, now_ms: i64) -> Result<bool, MetaError> {
        let c = self.conn()?;
        let n = c.execute(
            "INSERT INTO s3_buckets (name, created_at_ms) VALUES (?1, ?2) \
             ON CONFLICT (name) DO NOTHING",
            params![name, now_ms],
        )?;
        Ok(n > 0)
    }

    /// Delete an empty bucket, and any multipart uploads still open in it.
    pub fn s3_bucket_delete(&self, name: &str) -> Result<BucketDelete, MetaError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(id) = tx
            .query_row("SELECT id FROM s3_buckets WHERE name = ?1", [name], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
        else {
            return Ok(BucketDelete::NotFound);
        };
        let used: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM s3_objects WHERE bucket_id = ?1)",
            [id],
            |r| r.get(0),
        )?;
        if used {
            return Ok(BucketDelete::NotEmpty);
        }
        tx.execute("DELETE FROM s3_uploads WHERE bucket_id = ?1", [id])?;
        tx.execute("DELETE FROM s3_buckets WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(BucketDelete::Deleted)
    }

    // ---- objects ----

    pub fn s3_object(&self, bucket_id: i64, key: &[u8]) -> Result<Option<S3ObjectRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(&format!(
            "SELECT {OBJECT_COLUMNS} FROM s3_objects WHERE bucket_id = ?1 AND key = ?2"
        ))?;
        Ok(st
            .query_row(params![bucket_id, key], object_from_row)
            .optional()?)
    }

    /// Store `object` under `key` in the bucket named `bucket`, replacing what was
    /// there, in one transaction. `check` sees the current row first and may refuse
    /// (conditional writes).
    pub fn s3_object_put<C>(
        &self,
        bucket: &str,
        key: &[u8],
        object: &NewObject,
        check: impl FnOnce(Option<&S3ObjectRow>) -> Result<(), C>,
    ) -> Result<WriteOutcome<C>, MetaError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(bucket_id) = tx
            .query_row("SELECT id FROM s3_buckets WHERE name = ?1", [bucket], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
        else {
            return Ok(WriteOutcome::NoSuchBucket);
        };
        let current = tx
            .query_row(
                &format!(
                    "SELECT {OBJECT_COLUMNS} FROM s3_objects WHERE bucket_id = ?1 AND key = ?2"
                ),
                params![bucket_id, key],
                object_from_row,
            )
            .optional()?;
        if let Err(why) = check(current.as_ref()) {
            return Ok(WriteOutcome::Refused(why));
        }
        upsert_object(&tx, bucket_id, key, object)?;
        tx.commit()?;
        Ok(WriteOutcome::Stored)
    }

    /// Delete an object; false when there was none.
    pub fn s3_object_delete(&self, bucket_id: i64, key: &[u8]) -> Result<bool, MetaError> {
        let c = self.conn()?;
        Ok(c.execute(
            "DELETE FROM s3_objects WHERE bucket_id = ?1 AND key = ?2",
            params![bucket_id, key],
        )? > 0)
    }

    /// Delete an object after `check` accepted the current one (its ETag, `None`
    /// when absent), in one transaction. `Ok(Err(why))`: refused, nothing deleted.
    pub fn s3_object_delete_checked<C>(
        &self,
        bucket_id: i64,
        key: &[u8],
        check: impl FnOnce(Option<&str>) -> Result<(), C>,
    ) -> Result<Result<bool, C>, MetaError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let etag: Option<String> = tx
            .query_row(
                "SELECT etag FROM s3_objects WHERE bucket_id = ?1 AND key = ?2",
                params![bucket_id, key],
                |r| r.get(0),
            )
            .optional()?;
        if let Err(why) = check(etag.as_deref()) {
            return Ok(Err(why));
        }
        let n = tx.execute(
            "DELETE FROM s3_objects WHERE bucket_id = ?1 AND key = ?2",
            params![bucket_id, key],
        )?;
        tx.commit()?;
        Ok(Ok(n > 0))
    }

    /// Delete many objects in one transaction; whether each existed.
    pub fn s3_objects_delete(
        &self,
        bucket_id: i64,
        keys: &[Vec<u8>],
    ) -> Result<Vec<bool>, MetaError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(keys.len());
        {
            let mut st =
                tx.prepare_cached("DELETE FROM s3_objects WHERE bucket_id = ?1 AND key = ?2")?;
            for k in keys {
                out.push(st.execute(params![bucket_id, k])? > 0);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Up to `limit` objects in key order within `window`.
    pub fn s3_list_objects(
        &self,
        bucket_id: i64,
        window: KeyWindow<'_>,
        limit: usize,
    ) -> Result<Vec<ObjectSummary>, MetaError> {
        let c = self.conn()?;
        let range = KeyRange {
            lower: window.lower,
            below: window.below,
        };
        let ps = range.params();
        let sql = format!(
            "SELECT key, size, etag, modified_ms FROM s3_objects WHERE bucket_id = ?1{} \
             ORDER BY key LIMIT ?{}",
            range.sql(2),
            2 + ps.len()
        );
        let mut st = c.prepare_cached(&sql)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut bind: Vec<&dyn rusqlite::ToSql> = vec![&bucket_id];
        for p in &ps {
            bind.push(p);
        }
        bind.push(&limit);
        let rows = st.query_map(bind.as_slice(), |r| {
            Ok(ObjectSummary {
                key: r.get(0)?,
                size: r.get::<_, i64>(1)? as u64,
                etag: r.get(2)?,
                modified_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- multipart uploads ----

    /// Open a multipart upload; false when the bucket is gone.
    pub fn s3_upload_create(&self, bucket: &str, row: &UploadRow) -> Result<bool, MetaError> {
        let c = self.conn()?;
        let n = c.execute(
            "INSERT INTO s3_uploads (upload_id, bucket_id, key, headers, created_at_ms) \
             SELECT ?1, id, ?3, ?4, ?5 FROM s3_buckets WHERE name = ?2",
            params![
                row.upload_id,
                bucket,
                row.key,
                row.headers,
                row.created_at_ms
            ],
        )?;
        Ok(n > 0)
    }

    pub fn s3_upload(&self, upload_id: &str) -> Result<Option<UploadRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(
            "SELECT upload_id, bucket_id, key, headers, created_at_ms FROM s3_uploads \
             WHERE upload_id = ?1",
        )?;
        Ok(st.query_row([upload_id], upload_from_row).optional()?)
    }

    /// Record (replacing) a part; false when the upload is gone.
    pub fn s3_part_put(&self, upload_id: &str, part: &PartRow) -> Result<bool, MetaError> {
        let c = self.conn()?;
        let n = c.execute(
            "INSERT OR REPLACE INTO s3_parts \
               (upload_id, part_number, size, etag, checksum, modified_ms, manifest) \
             SELECT upload_id, ?2, ?3, ?4, ?5, ?6, ?7 FROM s3_uploads WHERE upload_id = ?1",
            params![
                upload_id,
                part.part_number,
                len_i64(part.size),
                part.etag,
                part.checksum,
                part.modified_ms,
                part.manifest
            ],
        )?;
        Ok(n > 0)
    }

    /// Up to `limit` parts numbered above `after`.
    pub fn s3_parts(
        &self,
        upload_id: &str,
        after: u32,
        limit: usize,
    ) -> Result<Vec<PartRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(
            "SELECT part_number, size, etag, checksum, modified_ms, manifest FROM s3_parts \
             WHERE upload_id = ?1 AND part_number > ?2 ORDER BY part_number LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![upload_id, after, i64::try_from(limit).unwrap_or(i64::MAX)],
            part_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Finish a multipart upload in one transaction: `build` turns the upload and
    /// all its parts into the object (or refuses), `check` sees the current object
    /// (conditional writes), then the object is stored and the upload dropped.
    pub fn s3_upload_complete<C>(
        &self,
        upload_id: &str,
        build: impl FnOnce(&UploadRow, &[PartRow]) -> Result<NewObject, C>,
        check: impl FnOnce(Option<&S3ObjectRow>) -> Result<(), C>,
    ) -> Result<WriteOutcome<C>, MetaError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(upload) = tx
            .query_row(
                "SELECT upload_id, bucket_id, key, headers, created_at_ms FROM s3_uploads \
                 WHERE upload_id = ?1",
                [upload_id],
                upload_from_row,
            )
            .optional()?
        else {
            return Ok(WriteOutcome::NoSuchUpload);
        };
        let parts: Vec<PartRow> = {
            let mut st = tx.prepare_cached(
                "SELECT part_number, size, etag, checksum, modified_ms, manifest FROM s3_parts \
                 WHERE upload_id = ?1 ORDER BY part_number",
            )?;
            let rows = st.query_map([upload_id], part_from_row)?;
            rows.collect::<Result<_, _>>()?
        };
        let object = match build(&upload, &parts) {
            Ok(o) => o,
            Err(why) => return Ok(WriteOutcome::Refused(why)),
        };
        let current = tx
            .query_row(
                &format!(
                    "SELECT {OBJECT_COLUMNS} FROM s3_objects WHERE bucket_id = ?1 AND key = ?2"
                ),
                params![upload.bucket_id, upload.key],
                object_from_row,
            )
            .optional()?;
        if let Err(why) = check(current.as_ref()) {
            return Ok(WriteOutcome::Refused(why));
        }
        upsert_object(&tx, upload.bucket_id, &upload.key, &object)?;
        tx.execute("DELETE FROM s3_uploads WHERE upload_id = ?1", [upload_id])?;
        tx.commit()?;
        Ok(WriteOutcome::Stored)
    }

    /// Drop an upload and its parts; false when there was none.
    pub fn s3_upload_abort(&self, upload_id: &str) -> Result<bool, MetaError> {
        let c = self.conn()?;
        Ok(c.execute("DELETE FROM s3_uploads WHERE upload_id = ?1", [upload_id])? > 0)
    }

    /// Up to `limit` uploads of a bucket in (key, upload id) order, within `window`
    /// on the key, after `(key, upload_id)` when given.
    pub fn s3_list_uploads(
        &self,
        bucket_id: i64,
        window: KeyWindow<'_>,
        after: Option<(&[u8], &str)>,
        limit: usize,
    ) -> Result<Vec<UploadRow>, MetaError> {
        let c = self.conn()?;
        let range = KeyRange {
            lower: window.lower,
            below: window.below,
        };
        let n = 2 + range.params().len();
        let after_sql = if after.is_some() {
            format!(
                " AND (key > ?{n} OR (key = ?{n} AND upload_id > ?{}))",
                n + 1
            )
        } else {
            String::new()
        };
        let limit_param = if after.is_some() { n + 2 } else { n };
        let sql = format!(
            "SELECT upload_id, bucket_id, key, headers, created_at_ms FROM s3_uploads \
             WHERE bucket_id = ?1{}{after_sql} ORDER BY key, upload_id LIMIT ?{limit_param}",
            range.sql(2)
        );
        let mut st = c.prepare_cached(&sql)?;
        let ps = range.params();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut bind: Vec<&dyn rusqlite::ToSql> = vec![&bucket_id];
        for p in &ps {
            bind.push(p);
        }
        let after_key;
        let after_id;
        if let Some((k, id)) = after {
            after_key = k;
            after_id = id;
            bind.push(&after_key);
            bind.push(&after_id);
        }
        bind.push(&limit);
        let rows = st.query_map(bind.as_slice(), upload_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Numbers of S3 buckets and objects (for stats and tests).
    pub fn s3_counts(&self) -> Result<(u64, u64), MetaError> {
        let c = self.conn()?;
        let b: i64 = c.query_row("SELECT COUNT(*) FROM s3_buckets", [], |r| r.get(0))?;
        let o: i64 = c.query_row("SELECT COUNT(*) FROM s3_objects", [], |r| r.get(0))?;
        Ok((b as u64, o as u64))
    }
}

fn upsert_object(
    tx: &rusqlite::Transaction<'_>,
    bucket_id: i64,
    key: &[u8],
    o: &NewObject,
) -> Result<(), MetaError> {
    tx.execute(
        "INSERT OR REPLACE INTO s3_objects \
           (bucket_id, key, size, etag, modified_ms, headers, part_sizes, manifest) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            bucket_id,
            key,
            len_i64(o.size),
            o.etag,
            o.modified_ms,
            o.headers,
            o.part_sizes,
            o.manifest
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> (tempfile::TempDir, Meta) {
        let d = tempfile::tempdir().unwrap();
        let m = Meta::open(d.path()).unwrap();
        (d, m)
    }

    fn obj(etag: &str) -> NewObject {
        NewObject {
            size: 3,
            etag: etag.into(),
            modified_ms: 1,
            headers: "{}".into(),
            part_sizes: None,
            manifest: vec![],
        }
    }

    #[test]
    fn keys_import_idempotently_and_grants_merge() {
        let (_d, m) = meta();
        assert_eq!(
            m.s3_key_insert("AK1", "ci", "s1", 0).unwrap(),
            KeyInsert::Created
        );
        assert_eq!(
            m.s3_key_insert("AK1", "ci", "s1", 0).unwrap(),
            KeyInsert::AlreadyThere
        );
        assert_eq!(
            m.s3_key_insert("AK1", "ci", "s2", 0).unwrap(),
            KeyInsert::IdTaken
        );
        assert_eq!(
            m.s3_key_insert("AK2", "ci", "s1", 0).unwrap(),
            KeyInsert::NameTaken
        );
        assert!(m
            .s3_grant("nobody", "*", true, false, false)
            .unwrap()
            .is_none());
        m.s3_grant("ci", "b-*", true, false, false).unwrap();
        let g = m
            .s3_grant("ci", "b-*", false, true, false)
            .unwrap()
            .unwrap();
        assert!(g.read && g.write && !g.owner);
        let g = m
            .s3_revoke("ci", "b-*", true, false, false)
            .unwrap()
            .unwrap();
        assert_eq!(g.map(|g| (g.read, g.write)), Some((false, true)));
        assert_eq!(
            m.s3_revoke("ci", "b-*", false, true, false).unwrap(),
            Some(None)
        );
        assert!(m.s3_key_by_id("AK1").unwrap().unwrap().grants.is_empty());
        assert!(m.s3_key_delete("ci").unwrap());
        assert!(m.s3_key_by_id("AK1").unwrap().is_none());
    }

    #[test]
    fn conditional_put_and_listing_windows() {
        let (_d, m) = meta();
        assert!(m.s3_bucket_create("b", 0).unwrap());
        assert!(!m.s3_bucket_create("b", 0).unwrap());
        let none = |_: Option<&S3ObjectRow>| Ok::<(), ()>(());
        assert_eq!(
            m.s3_object_put("nope", b"k", &obj("e"), none).unwrap(),
            WriteOutcome::NoSuchBucket
        );
        for k in ["a/1", "a/2", "b", "c\u{e9}"] {
            assert_eq!(
                m.s3_object_put("b", k.as_bytes(), &obj("e1"), none)
                    .unwrap(),
                WriteOutcome::Stored
            );
        }
        let absent = |cur: Option<&S3ObjectRow>| if cur.is_some() { Err("exists") } else { Ok(()) };
        assert_eq!(
            m.s3_object_put("b", b"b", &obj("e2"), absent).unwrap(),
            WriteOutcome::Refused("exists")
        );
        let id = m.s3_bucket("b").unwrap().unwrap().id;
        assert_eq!(m.s3_object(id, b"b").unwrap().unwrap().etag, "e1");
        let keys = |w: KeyWindow<'_>, n| -> Vec<Vec<u8>> {
            m.s3_list_objects(id, w, n)
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect()
        };
        assert_eq!(keys(KeyWindow::default(), 10).len(), 4);
        let w = KeyWindow {
            lower: Some((b"a/", true)),
            below: Some(b"a0"),
        };
        assert_eq!(keys(w, 10), vec![b"a/1".to_vec(), b"a/2".to_vec()]);
        let w = KeyWindow {
            lower: Some((b"a/1", false)),
            below: None,
        };
        assert_eq!(keys(w, 2), vec![b"a/2".to_vec(), b"b".to_vec()]);
        assert_eq!(m.s3_bucket_delete("b").unwrap(), BucketDelete::NotEmpty);
        for k in ["a/1", "a/2", "b", "c\u{e9}"] {
            assert!(m.s3_object_delete(id, k.as_bytes()).unwrap());
        }
        assert_eq!(m.s3_bucket_delete("b").unwrap(), BucketDelete::Deleted);
        assert_eq!(m.s3_bucket_delete("b").unwrap(), BucketDelete::NotFound);
    }

    #[test]
    fn multipart_completes_once() {
        let (_d, m) = meta();
        m.s3_bucket_create("b", 0).unwrap();
        let up = UploadRow {
            upload_id: "u1".into(),
            bucket_id: 0,
            key: b"k".to_vec(),
            headers: "{}".into(),
            created_at_ms: 5,
        };
        assert!(m.s3_upload_create("b", &up).unwrap());
        assert!(!m.s3_upload_create("zz", &up).unwrap());
        let part = |n| PartRow {
            part_number: n,
            size: 10,
            etag: format!("p{n}"),
            checksum: None,
            modified_ms: 1,
            manifest: vec![],
        };
        assert!(m.s3_part_put("u1", &part(2)).unwrap());
        assert!(m.s3_part_put("u1", &part(1)).unwrap());
        assert!(!m.s3_part_put("u2", &part(1)).unwrap());
        assert_eq!(m.s3_parts("u1", 1, 10).unwrap().len(), 1);
        let id = m.s3_bucket("b").unwrap().unwrap().id;
        assert_eq!(
            m.s3_list_uploads(id, KeyWindow::default(), None, 10)
                .unwrap()
                .len(),
            1
        );
        assert!(m
            .s3_list_uploads(id, KeyWindow::default(), Some((b"k", "u1")), 10)
            .unwrap()
            .is_empty());
        let out = m
            .s3_upload_complete(
                "u1",
                |_, parts| {
                    assert_eq!(parts.len(), 2);
                    Ok::<_, ()>(obj("x-2"))
                },
                |_| Ok(()),
            )
            .unwrap();
        assert_eq!(out, WriteOutcome::Stored);
        assert_eq!(m.s3_object(id, b"k").unwrap().unwrap().etag, "x-2");
        let again = m
            .s3_upload_complete("u1", |_, _| Ok::<_, ()>(obj("y")), |_| Ok(()))
            .unwrap();
        assert_eq!(again, WriteOutcome::NoSuchUpload);
        assert!(m.s3_parts("u1", 0, 10).unwrap().is_empty());
    }
}
