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

    /// The chunk this error is about, when it is damage to one chunk.
    pub fn damaged_chunk(&self) -> Option<ChunkId> {
        match self {
            StoreError::Missing(id) | StoreError::Corrupt { id, .. } => Some(*id),
            _ => None,
        }
    }
}

macro_rules! index_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Index(e.to_string())
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
