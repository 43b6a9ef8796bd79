//! The error type of the service layer, which decides what a client may learn.

use crate::meta::MetaError;
use crate::store::StoreError;

/// A failed request. Client faults carry a one-line reason meant for the client;
/// server faults keep their detail for the log.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("no such cache: {0}")]
    NoSuchCache(String),
    #[error("{0}")]
    NotFound(String),
    #[error("cache {0} already exists")]
    CacheAlreadyExists(String),
    #[error("{0}")]
    TooLarge(String),
    /// The store (or a cache's quota) cannot hold this, even after eviction.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The request body has a content type this route does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A Range outside the body; carries the body's length.
    #[error("range not satisfiable: the file has {0} bytes")]
    RangeNotSatisfiable(u64),
    /// Stored data is damaged; the client cannot fix it, the operator can.
    #[error("{0}")]
    Damaged(String),
    /// An upstream of a pull-through cache failed (down, slow, or its answer did
    /// not check out); nothing of it was stored.
    #[error("{0}")]
    Upstream(String),
    #[error("metadata: {0}")]
    Meta(MetaError),
    #[error("chunk store: {0}")]
    Store(StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

/// The answer when the data dir's filesystem has no room left: a 507 the client
/// can act on (retry later, or ask the operator), not an internal error.
fn disk_full(what: &str) -> ServiceError {
    ServiceError::InsufficientStorage(format!(
        "the server's disk is full ({what} could not be written); the operator must free space (larder path delete, larder gc)"
    ))
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            tracing::error!(error = %e, "the data dir's disk is full");
            return disk_full("chunk data");
        }
        ServiceError::Store(e)
    }
}

impl From<MetaError> for ServiceError {
    fn from(e: MetaError) -> Self {
        if e.is_disk_full() {
            tracing::error!(error = %e, "the data dir's disk is full");
            return disk_full("metadata");
        }
        ServiceError::Meta(e)
    }
}

impl From<crate::nix::Error> for ServiceError {
    fn from(e: crate::nix::Error) -> Self {
        ServiceError::BadRequest(e.to_string())
    }
}

impl ServiceError {
    /// True when the client caused it (answered with a 4xx).
    pub fn is_client_fault(&self) -> bool {
        !matches!(
            self,
            ServiceError::InsufficientStorage(_)
                | ServiceError::Upstream(_)
                | ServiceError::Damaged(_)
                | ServiceError::Meta(_)
                | ServiceError::Store(_)
                | ServiceError::Internal(_)
        )
    }
}
