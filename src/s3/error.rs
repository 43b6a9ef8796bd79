//! The S3 edge's error type, and the one place it becomes an S3 error code.
//!
//! Handlers return [`S3ApiError`]; [`S3ApiError::aws_code`] names the AWS code
//! (which also fixes the HTTP status, through s3s), and the conversion into
//! [`s3s::S3Error`] decides what the client may read: a client fault carries its
//! one-line reason, a server fault is logged here and answered with a bare
//! `InternalError`. Errors s3s raises itself (signatures, XML, bucket names) never
//! pass through here.

use s3s::{S3Error, S3ErrorCode};

use crate::meta::MetaError;
use crate::store::StoreError;

/// A failed S3 request.
#[derive(Debug, thiserror::Error)]
pub enum S3ApiError {
    #[error("the bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("the key does not exist")]
    NoSuchKey,
    #[error("the multipart upload does not exist; it may have been completed or aborted")]
    NoSuchUpload,
    #[error("the bucket {0:?} is not empty")]
    BucketNotEmpty(String),
    #[error("you already own the bucket {0:?}")]
    BucketAlreadyOwnedByYou(String),
    #[error("the bucket {0:?} already exists")]
    BucketAlreadyExists(String),
    #[error("{0}")]
    AccessDenied(String),
    /// The credential scope names another region.
    #[error("{0}")]
    AuthorizationHeaderMalformed(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidDigest(String),
    #[error("{0}")]
    BadDigest(String),
    /// A chunk signature of an aws-chunked body did not verify.
    #[error("{0}")]
    SignatureDoesNotMatch(String),
    #[error("at least one of the preconditions you specified did not hold")]
    PreconditionFailed,
    /// A conditional GET or HEAD whose object did not change: 304, no body.
    #[error("not modified")]
    NotModified { etag: String, modified_ms: i64 },
    #[error("the requested range is not satisfiable")]
    InvalidRange,
    #[error("{0}")]
    InvalidPart(String),
    #[error("the list of parts was not in ascending order")]
    InvalidPartOrder,
    #[error("{0}")]
    EntityTooSmall(String),
    #[error("{0}")]
    EntityTooLarge(String),
    #[error("{0}")]
    IncompleteBody(String),
    #[error("{0}")]
    MalformedXML(String),
    #[error("your metadata headers exceed the maximum allowed metadata size ({0} bytes)")]
    MetadataTooLarge(usize),
    #[error("{0}")]
    InvalidLocationConstraint(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("chunk store: {0}")]
    Store(StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<StoreError> for S3ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // Reading the request body failed: the client's doing (a cut connection,
            // a bad aws-chunked frame), unless a reader upstream said otherwise.
            StoreError::Source(io) => body_error(&io),
            other => S3ApiError::Store(other),
        }
    }
}

/// What a failed read of a request body means for the client.
pub(crate) fn body_error(e: &std::io::Error) -> S3ApiError {
    let text = e.to_string();
    if text.contains("SignatureMismatch") {
        S3ApiError::SignatureDoesNotMatch(
            "a chunk signature of the aws-chunked body does not match".into(),
        )
    } else if text.contains("Sha256Mismatch") {
        S3ApiError::BadDigest("the body does not match x-amz-content-sha256".into())
    } else {
        S3ApiError::IncompleteBody(format!("reading the request body: {text}"))
    }
}

impl S3ApiError {
    /// The AWS error code (and through it, the HTTP status).
    pub fn aws_code(&self) -> S3ErrorCode {
        use S3ApiError as E;
        match self {
            E::NoSuchBucket(_) => S3ErrorCode::NoSuchBucket,
            E::NoSuchKey => S3ErrorCode::NoSuchKey,
            E::NoSuchUpload => S3ErrorCode::NoSuchUpload,
            E::BucketNotEmpty(_) => S3ErrorCode::BucketNotEmpty,
            E::BucketAlreadyOwnedByYou(_) => S3ErrorCode::BucketAlreadyOwnedByYou,
            E::BucketAlreadyExists(_) => S3ErrorCode::BucketAlreadyExists,
            E::AccessDenied(_) => S3ErrorCode::AccessDenied,
            E::AuthorizationHeaderMalformed(_) => S3ErrorCode::AuthorizationHeaderMalformed,
            E::InvalidArgument(_) => S3ErrorCode::InvalidArgument,
            E::InvalidRequest(_) => S3ErrorCode::InvalidRequest,
            E::InvalidDigest(_) => S3ErrorCode::InvalidDigest,
            E::BadDigest(_) => S3ErrorCode::BadDigest,
            E::SignatureDoesNotMatch(_) => S3ErrorCode::SignatureDoesNotMatch,
            E::PreconditionFailed => S3ErrorCode::PreconditionFailed,
            E::NotModified { .. } => S3ErrorCode::NotModified,
            E::InvalidRange => S3ErrorCode::InvalidRange,
            E::InvalidPart(_) => S3ErrorCode::InvalidPart,
            E::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
            E::EntityTooSmall(_) => S3ErrorCode::EntityTooSmall,
            E::EntityTooLarge(_) => S3ErrorCode::EntityTooLarge,
            E::IncompleteBody(_) => S3ErrorCode::IncompleteBody,
            E::MalformedXML(_) => S3ErrorCode::MalformedXML,
            E::MetadataTooLarge(_) => S3ErrorCode::MetadataTooLarge,
            E::InvalidLocationConstraint(_) => S3ErrorCode::InvalidLocationConstraint,
            E::NotImplemented(_) => S3ErrorCode::NotImplemented,
            E::Meta(_) | E::Store(_) | E::Internal(_) => S3ErrorCode::InternalError,
        }
    }

    /// True when the client caused it.
    pub fn is_client_fault(&self) -> bool {
        !matches!(
            self,
            S3ApiError::Meta(_) | S3ApiError::Store(_) | S3ApiError::Internal(_)
        )
    }
}

impl From<S3ApiError> for S3Error {
    fn from(e: S3ApiError) -> Self {
        let code = e.aws_code();
        if let S3ApiError::NotModified { etag, modified_ms } = &e {
            // A 304 carries the validators and no body.
            let mut err = S3Error::new(code);
            let mut h = hyper::HeaderMap::new();
            if let Ok(v) = format!("\"{etag}\"").parse() {
                h.insert(hyper::header::ETAG, v);
            }
            if let Some(v) = super::object::http_date(&super::object::timestamp(*modified_ms))
                .and_then(|d| d.parse().ok())
            {
                h.insert(hyper::header::LAST_MODIFIED, v);
            }
            err.set_headers(h);
            return err;
        }
        if e.is_client_fault() {
            S3Error::with_message(code, e.to_string())
        } else {
            tracing::error!(error = %e, "S3 request failed");
            S3Error::with_message(code, "We encountered an internal error. Please try again.")
        }
    }
}

/// Results of S3 handlers.
pub type S3ApiResult<T> = Result<T, S3ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let cases: Vec<(S3ApiError, &str, u16)> = vec![
            (S3ApiError::NoSuchBucket("b".into()), "NoSuchBucket", 404),
            (S3ApiError::NoSuchKey, "NoSuchKey", 404),
            (
                S3ApiError::BucketNotEmpty("b".into()),
                "BucketNotEmpty",
                409,
            ),
            (S3ApiError::PreconditionFailed, "PreconditionFailed", 412),
            (S3ApiError::InvalidRange, "InvalidRange", 416),
            (S3ApiError::BadDigest("x".into()), "BadDigest", 400),
            (S3ApiError::AccessDenied("x".into()), "AccessDenied", 403),
            (S3ApiError::MetadataTooLarge(2048), "MetadataTooLarge", 400),
            (
                S3ApiError::NotImplemented("x".into()),
                "NotImplemented",
                501,
            ),
            (S3ApiError::Internal("disk".into()), "InternalError", 500),
        ];
        for (e, code, status) in cases {
            let c = e.aws_code();
            assert_eq!(c.as_str(), code);
            assert_eq!(c.status_code().map(|s| s.as_u16()), Some(status), "{code}");
        }
    }

    #[test]
    fn server_faults_hide_their_detail() {
        let e: S3Error = S3ApiError::Internal("/var/lib/larder/packs: EIO".into()).into();
        assert!(!e.message().unwrap_or("").contains("packs"));
        let e: S3Error = S3ApiError::NoSuchBucket("photos".into()).into();
        assert!(e.message().unwrap_or("").contains("photos"));
    }

    #[test]
    fn body_errors_keep_their_meaning() {
        let e = body_error(&std::io::Error::other(
            "AwsChunkedStreamError: SignatureMismatch",
        ));
        assert_eq!(e.aws_code(), S3ErrorCode::SignatureDoesNotMatch);
        let e = body_error(&std::io::Error::other("connection reset"));
        assert_eq!(e.aws_code(), S3ErrorCode::IncompleteBody);
    }
}
