//! CopyObject, with the metadata directive, and the copy-source rules it shares
//! with UploadPartCopy.
//!
//! A copy never copies bytes: the new object names the source's chunk manifest.
//! The ETag and checksum go with the content; the metadata directive decides
//! whether headers and user metadata come from the source (`COPY`) or the request
//! (`REPLACE`).

use s3s::dto::{
    CopyObjectInput, CopyObjectOutput, CopyObjectResult, CopySource, MetadataDirective,
};
use s3s::{S3Request, S3Response};

use super::auth::S3Caller;
use super::bucket::bucket;
use super::dispatch::{caller, meta_blocking, LarderS3};
use super::error::{S3ApiError, S3ApiResult};
use super::keys::Right;
use super::object::{
    check_key, etag, http_date, now_ms, timestamp, user_metadata, ReadCondition, ReadConditions,
    StoredHeaders,
};
use super::put::checksum_fields;
use crate::meta::{NewObject, S3ObjectRow, WriteOutcome};

/// A readable copy source.
pub(crate) struct Source {
    pub bucket: String,
    pub key: String,
    pub row: S3ObjectRow,
    pub headers: StoredHeaders,
}

/// Find a copy source the caller may read and whose `x-amz-copy-source-if-*`
/// conditions hold (any failure is 412, as S3 answers copies).
pub(crate) fn source(
    s3: &LarderS3,
    c: &S3Caller,
    cs: &CopySource,
    conds: &ReadConditions,
) -> S3ApiResult<Source> {
    let (src_bucket, src_key) = match cs {
        CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => {
            if version_id.as_deref().is_some_and(|v| v != "null") {
                return Err(S3ApiError::InvalidArgument(
                    "versioning is not supported: a copy source version id must be \"null\"".into(),
                ));
            }
            (bucket.to_string(), key.to_string())
        }
        _ => {
            return Err(S3ApiError::NotImplemented(
                "access point copy sources are not supported".into(),
            ))
        }
    };
    check_key(&src_key)?;
    if !c.may(&src_bucket, Right::Read) {
        return Err(S3ApiError::AccessDenied(format!(
            "access denied: key {:?} has no read right on the source bucket {src_bucket:?}",
            c.key.name
        )));
    }
    let b = bucket(s3, &src_bucket)?;
    let row = s3
        .larder
        .meta
        .s3_object(b.id, src_key.as_bytes())?
        .ok_or(S3ApiError::NoSuchKey)?;
    if conds.evaluate(&row.etag, row.modified_ms) != ReadCondition::Proceed {
        return Err(S3ApiError::PreconditionFailed);
    }
    let headers = StoredHeaders::from_json(&row.headers)?;
    Ok(Source {
        bucket: src_bucket,
        key: src_key,
        row,
        headers,
    })
}

pub(crate) async fn copy_object(
    s3: &LarderS3,
    req: S3Request<CopyObjectInput>,
) -> S3ApiResult<S3Response<CopyObjectOutput>> {
    let c = caller(&req)?;
    let input = &req.input;
    let conds = ReadConditions {
        if_match: input.copy_source_if_match.clone(),
        if_none_match: input.copy_source_if_none_match.clone(),
        if_modified_since: input.copy_source_if_modified_since.clone(),
        if_unmodified_since: input.copy_source_if_unmodified_since.clone(),
    };
    let src = source(s3, c, &input.copy_source, &conds)?;
    let replace = match input.metadata_directive.as_ref().map(|d| d.as_str()) {
        None => false,
        Some(d) if d.eq_ignore_ascii_case(MetadataDirective::COPY) => false,
        Some(d) if d.eq_ignore_ascii_case(MetadataDirective::REPLACE) => true,
        Some(other) => {
            return Err(S3ApiError::InvalidArgument(format!(
                "unknown metadata directive {other:?}"
            )))
        }
    };
    if src.bucket == input.bucket && src.key == input.key && !replace {
        return Err(S3ApiError::InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
                .into(),
        ));
    }
    let headers = if replace {
        StoredHeaders {
            content_type: input.content_type.clone(),
            cache_control: input.cache_control.clone(),
            content_disposition: input.content_disposition.clone(),
            content_encoding: input.content_encoding.clone(),
            content_language: input.content_language.clone(),
            expires: input.expires.as_ref().and_then(http_date),
            meta: user_metadata(input.metadata.clone())?,
            checksum: src.headers.checksum.clone(),
            upload_checksum: None,
        }
    } else {
        src.headers.clone()
    };
    let modified = now_ms();
    let object = NewObject {
        size: src.row.size,
        etag: src.row.etag.clone(),
        modified_ms: modified,
        headers: headers.to_json()?,
        part_sizes: src.row.part_sizes.clone(),
        manifest: src.row.manifest.clone(),
    };
    let hold = super::body::hold_manifest(&s3.larder, &src.row.manifest)?;
    let dest_bucket = input.bucket.clone();
    let dest_key = input.key.clone();
    let written = meta_blocking(&s3.larder, move |m| {
        Ok(
            m.s3_object_put(&dest_bucket, dest_key.as_bytes(), &object, |_| {
                Ok::<(), S3ApiError>(())
            })?,
        )
    })
    .await?;
    drop(hold);
    match written {
        WriteOutcome::Stored => {}
        WriteOutcome::NoSuchBucket => return Err(S3ApiError::NoSuchBucket(input.bucket.clone())),
        WriteOutcome::Refused(e) => return Err(e),
        WriteOutcome::NoSuchUpload => {
            return Err(S3ApiError::Internal("unexpected outcome".into()))
        }
    }
    let [crc32, crc32c, crc64nvme, sha1, sha256] = checksum_fields(headers.checksum.as_ref());
    Ok(S3Response::new(CopyObjectOutput {
        copy_object_result: Some(CopyObjectResult {
            e_tag: Some(etag(&src.row.etag)),
            last_modified: Some(timestamp(modified)),
            checksum_crc32: crc32,
            checksum_crc32c: crc32c,
            checksum_crc64nvme: crc64nvme,
            checksum_sha1: sha1,
            checksum_sha256: sha256,
            ..Default::default()
        }),
        ..Default::default()
    }))
}
