//! The error type of the metadata layer.

/// What can go wrong reading or writing metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// SQLite itself failed (I/O, lock timeout, constraint).
    #[error("metadata database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value does not decode (a manifest blob, a JSON column).
    #[error("metadata is damaged: {0}")]
    Damaged(String),
    /// The database was written by a newer larder.
    #[error("metadata schema version {found} is newer than this larder supports ({supported}); upgrade larder")]
    TooNew { found: i64, supported: i64 },
}

impl MetaError {
    /// Whether SQLite failed because the filesystem is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            MetaError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }
}
