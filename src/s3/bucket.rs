//! Bucket operations: ListBuckets, CreateBucket, HeadBucket, DeleteBucket, and the
//! read-only GetBucketLocation and GetBucketVersioning that clients probe with.

use s3s::dto::{
    Bucket, BucketLocationConstraint, CreateBucketInput, CreateBucketOutput, DeleteBucketInput,
    DeleteBucketOutput, GetBucketLocationInput, GetBucketLocationOutput, GetBucketVersioningInput,
    GetBucketVersioningOutput, HeadBucketInput, HeadBucketOutput, ListBucketsInput,
    ListBucketsOutput, Owner,
};
use s3s::{S3Request, S3Response};

use super::auth::S3Caller;
use super::dispatch::{caller, meta_blocking, LarderS3};
use super::error::{S3ApiError, S3ApiResult};
use super::keys::Right;
use super::object::{now_ms, timestamp};
use crate::meta::{BucketDelete, BucketRow};

/// The bucket, or NoSuchBucket.
pub(crate) fn bucket(s3: &LarderS3, name: &str) -> S3ApiResult<BucketRow> {
    s3.larder
        .meta
        .s3_bucket(name)?
        .ok_or_else(|| S3ApiError::NoSuchBucket(name.to_owned()))
}

/// The owner shown in listings: the calling key.
pub(crate) fn owner(c: &S3Caller) -> Owner {
    Owner {
        display_name: Some(c.key.name.clone()),
        id: Some(c.key.id.clone()),
    }
}

pub(crate) async fn list_buckets(
    s3: &LarderS3,
    req: S3Request<ListBucketsInput>,
) -> S3ApiResult<S3Response<ListBucketsOutput>> {
    let c = caller(&req)?;
    let buckets: Vec<Bucket> = s3
        .larder
        .meta
        .s3_buckets()?
        .into_iter()
        .filter(|b| c.sees(&b.name))
        .map(|b| Bucket {
            bucket_region: Some(s3.region.clone()),
            creation_date: Some(timestamp(b.created_at_ms)),
            name: Some(b.name),
        })
        .collect();
    Ok(S3Response::new(ListBucketsOutput {
        buckets: Some(buckets),
        owner: Some(owner(c)),
        ..Default::default()
    }))
}

pub(crate) async fn create_bucket(
    s3: &LarderS3,
    req: S3Request<CreateBucketInput>,
) -> S3ApiResult<S3Response<CreateBucketOutput>> {
    let name = req.input.bucket.clone();
    let constraint = req
        .input
        .create_bucket_configuration
        .as_ref()
        .and_then(|c| c.location_constraint.as_ref())
        .map(|l| l.as_str().to_owned())
        .filter(|l| !l.is_empty());
    if let Some(l) = constraint {
        if l != s3.region {
            return Err(S3ApiError::InvalidLocationConstraint(format!(
                    "the specified location constraint {l:?} is not valid; this endpoint is region {:?}",
                    s3.region
                )));
        }
    }
    let n = name.clone();
    let created = meta_blocking(&s3.larder, move |m| Ok(m.s3_bucket_create(&n, now_ms())?)).await?;
    if !created {
        // Only a key that may own it learns it is "yours".
        return Err(if caller(&req)?.may(&name, Right::Owner) {
            S3ApiError::BucketAlreadyOwnedByYou(name)
        } else {
            S3ApiError::BucketAlreadyExists(name)
        });
    }
    Ok(S3Response::new(CreateBucketOutput {
        location: Some(format!("/{name}")),
    }))
}

pub(crate) async fn head_bucket(
    s3: &LarderS3,
    req: S3Request<HeadBucketInput>,
) -> S3ApiResult<S3Response<HeadBucketOutput>> {
    bucket(s3, &req.input.bucket)?;
    Ok(S3Response::new(HeadBucketOutput {
        bucket_region: Some(s3.region.clone()),
        ..Default::default()
    }))
}

pub(crate) async fn delete_bucket(
    s3: &LarderS3,
    req: S3Request<DeleteBucketInput>,
) -> S3ApiResult<S3Response<DeleteBucketOutput>> {
    let name = req.input.bucket.clone();
    let n = name.clone();
    match meta_blocking(&s3.larder, move |m| Ok(m.s3_bucket_delete(&n)?)).await? {
        BucketDelete::Deleted => Ok(S3Response::new(DeleteBucketOutput {})),
        BucketDelete::NotFound => Err(S3ApiError::NoSuchBucket(name)),
        BucketDelete::NotEmpty => Err(S3ApiError::BucketNotEmpty(name)),
    }
}

pub(crate) async fn get_bucket_location(
    s3: &LarderS3,
    req: S3Request<GetBucketLocationInput>,
) -> S3ApiResult<S3Response<GetBucketLocationOutput>> {
    bucket(s3, &req.input.bucket)?;
    Ok(S3Response::new(GetBucketLocationOutput {
        location_constraint: Some(BucketLocationConstraint::from(s3.region.clone())),
    }))
}

/// Versioning is never enabled: the answer for a bucket that never had it.
pub(crate) async fn get_bucket_versioning(
    s3: &LarderS3,
    req: S3Request<GetBucketVersioningInput>,
) -> S3ApiResult<S3Response<GetBucketVersioningOutput>> {
    bucket(s3, &req.input.bucket)?;
    Ok(S3Response::new(GetBucketVersioningOutput::default()))
}
