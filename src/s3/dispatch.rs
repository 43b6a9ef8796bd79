//! The one dispatch: every S3 operation larder implements, each sent to its
//! handler in the file for its family (`bucket.rs`, `put.rs`, `get.rs`, `list.rs`,
//! `copy.rs`, `delete.rs`, `multipart.rs`). Operations not listed here keep s3s's
//! default answer, `NotImplemented`. Handler errors become S3 errors in
//! `error.rs`, the only place codes are chosen.

use std::sync::Arc;

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, S3};

use super::auth::S3Caller;
use super::error::{S3ApiError, S3ApiResult};
use super::{bucket, copy, delete, get, list, multipart, put};
use crate::meta::Meta;
use crate::service::Larder;

/// The S3 API over one larder.
pub struct LarderS3 {
    pub larder: Arc<Larder>,
    pub region: String,
}

/// The caller [`super::auth::Access`] authenticated.
pub(crate) fn caller<T>(req: &S3Request<T>) -> S3ApiResult<&S3Caller> {
    req.extensions
        .get::<S3Caller>()
        .ok_or_else(|| S3ApiError::AccessDenied("the request is not authenticated".into()))
}

/// Run a metadata write on the blocking pool (it may wait on SQLite's write lock).
pub(crate) async fn meta_blocking<T, F>(larder: &Arc<Larder>, f: F) -> S3ApiResult<T>
where
    F: FnOnce(&Meta) -> S3ApiResult<T> + Send + 'static,
    T: Send + 'static,
{
    let l = larder.clone();
    tokio::task::spawn_blocking(move || f(&l.meta))
        .await
        .map_err(|e| S3ApiError::Internal(format!("metadata task: {e}")))?
}

/// Run blocking work that needs the whole larder (chunk store and metadata).
pub(crate) async fn blocking<T, F>(larder: &Arc<Larder>, f: F) -> S3ApiResult<T>
where
    F: FnOnce(&Larder) -> S3ApiResult<T> + Send + 'static,
    T: Send + 'static,
{
    let l = larder.clone();
    tokio::task::spawn_blocking(move || f(&l))
        .await
        .map_err(|e| S3ApiError::Internal(format!("blocking task: {e}")))?
}

fn done<T>(r: S3ApiResult<S3Response<T>>) -> S3Result<S3Response<T>> {
    r.map_err(Into::into)
}

#[async_trait::async_trait]
impl S3 for LarderS3 {
    // ---- buckets (bucket.rs) ----
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        done(bucket::list_buckets(self, req).await)
    }
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        done(bucket::create_bucket(self, req).await)
    }
    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        done(bucket::head_bucket(self, req).await)
    }
    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        done(bucket::delete_bucket(self, req).await)
    }
    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        done(bucket::get_bucket_location(self, req).await)
    }
    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        done(bucket::get_bucket_versioning(self, req).await)
    }

    // ---- writing objects (put.rs) ----
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        done(put::put_object(self, req).await)
    }

    // ---- reading objects (get.rs) ----
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        done(get::get_object(self, req).await)
    }
    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        done(get::head_object(self, req).await)
    }

    // ---- listing (list.rs) ----
    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        done(list::list_objects(self, req).await)
    }
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        done(list::list_objects_v2(self, req).await)
    }

    // ---- copying (copy.rs) ----
    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        done(copy::copy_object(self, req).await)
    }

    // ---- deleting (delete.rs) ----
    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        done(delete::delete_object(self, req).await)
    }
    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        done(delete::delete_objects(self, req).await)
    }

    // ---- multipart uploads (multipart.rs) ----
    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        done(multipart::create_multipart_upload(self, req).await)
    }
    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        done(multipart::upload_part(self, req).await)
    }
    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        done(multipart::upload_part_copy(self, req).await)
    }
    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        done(multipart::complete_multipart_upload(self, req).await)
    }
    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        done(multipart::abort_multipart_upload(self, req).await)
    }
    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        done(multipart::list_parts(self, req).await)
    }
    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        done(multipart::list_multipart_uploads(self, req).await)
    }
}
