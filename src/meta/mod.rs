//! Relational metadata in SQLite: caches, NARs and their manifests, store paths,
//! staged uploads, logs, listings and realisations.
//!
//! Only this module imports rusqlite. The schema evolves by numbered migrations
//! (`schema.rs`); a shipped migration is never edited. The database runs in WAL
//! mode with `synchronous=FULL`, so a committed transaction survives power loss,
//! and other processes (the `larder` CLI on the same data dir) can read and write
//! while the server runs.

mod caches;
mod error;
mod gc;
mod memo;
mod objects;
mod proxied;
mod s3;
mod schema;
mod side;
mod tokens;

pub use caches::{CacheRow, NewCache, Upstream, DEFAULT_UPSTREAM_PRIORITY};
pub use error::MetaError;
pub use gc::{AccessKey, CacheLifecycle, GcSnapshot, ObjectRef, PinRow};
pub use objects::{NarRow, ObjectRow, RecentPath, StagedNar};
pub use proxied::ProxiedRow;
pub use s3::{
    BucketDelete, BucketRow, KeyInsert, KeyWindow, NewObject, ObjectSummary, PartRow, S3Grant,
    S3Key, S3ObjectRow, UploadRow, WriteOutcome,
};
pub use tokens::TokenRow;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::Connection;

/// Connections kept open for reuse.
const POOL_MAX: usize = 16;
/// How long a writer waits for another writer's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata database: a small pool of connections to one SQLite file.
pub struct Meta {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
    memo: memo::Memo,
    /// A connection of its own for [`Meta::poll_external_changes`], with the last
    /// `data_version` it saw.
    watch: Mutex<Option<(Connection, i64)>>,
}

/// A pooled connection, returned to the pool on drop.
pub struct Conn<'a> {
    meta: &'a Meta,
    conn: Option<Connection>,
}

impl Deref for Conn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // invariant: `conn` is only taken in `drop`.
        #[allow(clippy::unwrap_used)]
        self.conn.as_ref().unwrap()
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        // invariant: `conn` is only taken in `drop`.
        #[allow(clippy::unwrap_used)]
        self.conn.as_mut().unwrap()
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let (Some(c), Ok(mut pool)) = (self.conn.take(), self.meta.pool.lock()) {
            if pool.len() < POOL_MAX {
                pool.push(c);
            }
        }
    }
}

fn open_conn(path: &Path) -> Result<Connection, MetaError> {
    let c = Connection::open(path)?;
    c.busy_timeout(BUSY_TIMEOUT)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    Ok(c)
}

impl Meta {
    /// Open (creating and migrating when needed) `<dir>/larder.db`.
    pub fn open(dir: &Path) -> Result<Self, MetaError> {
        let path = dir.join("larder.db");
        let mut c = open_conn(&path)?;
        schema::migrate(&mut c)?;
        restrict_permissions(&path);
        Ok(Self {
            path,
            pool: Mutex::new(vec![c]),
            memo: memo::Memo::default(),
            watch: Mutex::new(None),
        })
    }

    /// Forget what memory holds when another connection (another process, such as
    /// the `larder` CLI, or this one) has committed since the last call. The server
    /// calls this every 250 ms.
    pub fn poll_external_changes(&self) -> Result<(), MetaError> {
        let mut watch = self
            .watch
            .lock()
            .map_err(|_| MetaError::Damaged("data_version watch lock poisoned".into()))?;
        if watch.is_none() {
            *watch = Some((open_conn(&self.path)?, -1));
        }
        if let Some((conn, seen)) = watch.as_mut() {
            let v: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
            if v != *seen {
                *seen = v;
                self.memo.invalidate();
            }
        }
        Ok(())
    }

    /// A connection from the pool (or a new one).
    pub fn conn(&self) -> Result<Conn<'_>, MetaError> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        let conn = match pooled {
            Some(c) => c,
            None => open_conn(&self.path)?,
        };
        Ok(Conn {
            meta: self,
            conn: Some(conn),
        })
    }
}

/// Make the database and its WAL files readable by their owner only: they hold
/// S3 secrets (which SigV4 needs in the clear) and signing keys. Best effort; the
/// data dir itself is 0700. SQLite gives files it creates later the database's
/// mode.
fn restrict_permissions(db: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
}

/// Seconds since the Unix epoch, as larder's clock reads them: the system clock,
/// plus the seconds in the file `LARDER_TEST_CLOCK_OFFSET_FILE` names when that is
/// set. Tests move time forward that way (retention) instead of sleeping.
pub fn now() -> i64 {
    let system = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    system.saturating_add(test_clock_offset())
}

fn test_clock_offset() -> i64 {
    static FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| std::env::var_os("LARDER_TEST_CLOCK_OFFSET_FILE").map(PathBuf::from))
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0)
}
