//! The error type of the chunk store layer.

use super::ChunkId;

/// What can go wrong in the chunk store. `Source` is the only variant caused by
/// the caller's input; everything else is the server's own fault or damage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading the input stream failed (the caller's body, decoder or validator).
    #[error("reading upload: {0}")]
    Source(#[source] std::io::Error),
    /// Disk I/O failed.
    #[error("chunk store I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Another process (a running server) holds the index.
    #[error("{0}")]
    InUse(String),
    /// The redb index failed.
    #[error("chunk index: {0}")]
    Index(String),
    /// The index could not be written: the filesystem is full.
    #[error("chunk index: the disk is full: {0}")]
    DiskFull(String),
    /// A chunk is absent from the index or its pack.
    #[error("chunk {} is missing", hex::encode(.0))]
    Missing(ChunkId),
    /// A chunk's bytes do not match their checksum or header.
    #[error("chunk {} is corrupt: {reason}", hex::encode(.id))]
    Corrupt { id: ChunkId, reason: String },
    /// Compression failed.
    #[error("compressing chunk: {0}")]
    Compress(std::io::Error),
}

impl StoreError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Whether the filesystem ran out of space (or quota) under this error.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => is_disk_full_io(source),
            StoreError::DiskFull(_) => true,
            _ => false,
        }
    }

    /// The chunk this error is about, when it is damage to one chunk.
    pub fn damaged_chunk(&self) -> Option<ChunkId> {
        match self {
            StoreError::Missing(id) | StoreError::Corrupt { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// ENOSPC or EDQUOT.
pub fn is_disk_full_io(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Whether a redb error is an I/O error that means "disk full" (redb's errors do
/// not expose their cause through `source()`, so each wrapper is unwrapped here).
trait RedbDiskFull {
    fn disk_full(&self) -> bool;
}

impl RedbDiskFull for redb::StorageError {
    fn disk_full(&self) -> bool {
        matches!(self, redb::StorageError::Io(e) if is_disk_full_io(e))
    }
}

macro_rules! redb_wrapper_disk_full {
    ($($t:ident),*) => {$(
        impl RedbDiskFull for redb::$t {
            fn disk_full(&self) -> bool {
                matches!(self, redb::$t::Storage(s) if s.disk_full())
            }
        }
    )*};
}
redb_wrapper_disk_full!(DatabaseError, TransactionError, TableError, CommitError);

impl RedbDiskFull for redb::Error {
    fn disk_full(&self) -> bool {
        matches!(self, redb::Error::Io(e) if is_disk_full_io(e))
    }
}

macro_rules! index_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                if e.disk_full() {
                    StoreError::DiskFull(e.to_string())
                } else {
                    StoreError::Index(e.to_string())
                }
            }
        }
    )*};
}

index_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
