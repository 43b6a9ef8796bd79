//! GetObject and HeadObject: conditional headers, Range (including suffix and
//! open-ended ranges) and partNumber, served as decompressed bytes.
//!
//! Every chunk of the object is located before the status line goes out, so a
//! damaged object answers 500 rather than a short 200. A range maps to the chunks
//! that hold it through the manifest's uncompressed lengths; only those are read.

use s3s::dto::{
    ChecksumMode, ChecksumType, GetObjectInput, GetObjectOutput, HeadObjectInput, HeadObjectOutput,
    Range,
};
use s3s::{S3Request, S3Response};

use super::body::object_body;
use super::bucket::bucket;
use super::dispatch::{blocking, LarderS3};
use super::error::{S3ApiError, S3ApiResult};
use super::object::{
    decode_part_sizes, etag, timestamp, ReadCondition, ReadConditions, StoredHeaders,
};
use super::put::checksum_fields;
use crate::meta::S3ObjectRow;
use crate::store::{Manifest, ResolvedNar};

/// Manifests with more chunks than this are resolved on the blocking pool.
const INLINE_RESOLVE_CHUNKS: usize = 64;

/// What a GET or HEAD answers, before the body.
struct Read {
    row: S3ObjectRow,
    headers: StoredHeaders,
    start: u64,
    end: u64,
    partial: bool,
    parts_count: Option<i32>,
}

enum Prepared {
    Read(Box<Read>),
    NotModified(S3ObjectRow),
}

fn prepare(
    s3: &LarderS3,
    bucket_name: &str,
    key: &str,
    conds: &ReadConditions,
    range: Option<Range>,
    part_number: Option<i32>,
) -> S3ApiResult<Prepared> {
    let b = bucket(s3, bucket_name)?;
    let row = s3
        .larder
        .meta
        .s3_object(b.id, key.as_bytes())?
        .ok_or(S3ApiError::NoSuchKey)?;
    match conds.evaluate(&row.etag, row.modified_ms) {
        ReadCondition::Proceed => {}
        ReadCondition::NotModified => return Ok(Prepared::NotModified(row)),
        ReadCondition::PreconditionFailed => return Err(S3ApiError::PreconditionFailed),
    }
    let headers = StoredHeaders::from_json(&row.headers)?;
    let len = row.size;
    let parts = row.part_sizes.as_deref().map(decode_part_sizes);
    let parts_count = parts
        .as_ref()
        .map(|p| i32::try_from(p.len()).unwrap_or(i32::MAX));
    let (start, end, partial) = match (range, part_number) {
        (Some(_), Some(_)) => {
            return Err(S3ApiError::InvalidRequest(
                "cannot specify both Range header and partNumber query parameter".into(),
            ))
        }
        (Some(r), None) => {
            if len == 0 {
                return Err(S3ApiError::InvalidRange);
            }
            let r = r.check(len).map_err(|_| S3ApiError::InvalidRange)?;
            (r.start, r.end, true)
        }
        (None, Some(n)) => {
            if n < 1 {
                return Err(S3ApiError::InvalidArgument(
                    "part number must be an integer between 1 and 10000, inclusive".into(),
                ));
            }
            let sizes = parts.clone().unwrap_or_else(|| vec![len]);
            let i = usize::try_from(n - 1).unwrap_or(usize::MAX);
            if i >= sizes.len() {
                return Err(S3ApiError::InvalidRange);
            }
            let start: u64 = sizes[..i].iter().sum();
            (start, start + sizes[i], true)
        }
        (None, None) => (0, len, false),
    };
    Ok(Prepared::Read(Box::new(Read {
        row,
        headers,
        start,
        end,
        partial,
        parts_count,
    })))
}

async fn resolve(s3: &LarderS3, row: &S3ObjectRow) -> S3ApiResult<ResolvedNar> {
    let manifest = Manifest::decode(&row.manifest)
        .ok_or_else(|| S3ApiError::Internal("an object manifest does not decode".into()))?;
    if manifest.chunks.len() <= INLINE_RESOLVE_CHUNKS {
        let store = s3
            .larder
            .store()
            .map_err(|e| S3ApiError::Internal(e.to_string()))?;
        return Ok(store.resolve(&manifest)?);
    }
    blocking(&s3.larder, move |l| {
        let store = l.store().map_err(|e| S3ApiError::Internal(e.to_string()))?;
        Ok(store.resolve(&manifest)?)
    })
    .await
}

fn content_range(r: &Read) -> Option<String> {
    r.partial.then(|| {
        format!(
            "bytes {}-{}/{}",
            r.start,
            r.end.saturating_sub(1),
            r.row.size
        )
    })
}

fn wants_checksum(mode: Option<&ChecksumMode>, r: &Read) -> bool {
    mode.is_some_and(|m| m.as_str().eq_ignore_ascii_case(ChecksumMode::ENABLED)) && !r.partial
}

pub(crate) async fn get_object(
    s3: &LarderS3,
    req: S3Request<GetObjectInput>,
) -> S3ApiResult<S3Response<GetObjectOutput>> {
    let input = req.input;
    let conds = ReadConditions {
        if_match: input.if_match,
        if_none_match: input.if_none_match,
        if_modified_since: input.if_modified_since,
        if_unmodified_since: input.if_unmodified_since,
    };
    let prepared = prepare(
        s3,
        &input.bucket,
        &input.key,
        &conds,
        input.range,
        input.part_number,
    )?;
    let r = match prepared {
        Prepared::NotModified(row) => {
            return Err(S3ApiError::NotModified {
                etag: row.etag,
                modified_ms: row.modified_ms,
            })
        }
        Prepared::Read(r) => r,
    };
    let resolved = resolve(s3, &r.row).await?;
    let body = object_body(&s3.larder, resolved, r.start, r.end)?;
    let checksum = wants_checksum(input.checksum_mode.as_ref(), &r)
        .then_some(r.headers.checksum.as_ref())
        .flatten();
    let [crc32, crc32c, crc64nvme, sha1, sha256] = checksum_fields(checksum);
    let out = GetObjectOutput {
        body: Some(body),
        accept_ranges: Some("bytes".into()),
        content_length: i64::try_from(r.end - r.start).ok(),
        content_range: content_range(&r),
        e_tag: Some(etag(&r.row.etag)),
        last_modified: Some(timestamp(r.row.modified_ms)),
        content_type: r.headers.content_type.clone(),
        cache_control: r.headers.cache_control.clone(),
        content_disposition: r.headers.content_disposition.clone(),
        content_encoding: r.headers.content_encoding.clone(),
        content_language: r.headers.content_language.clone(),
        expires: r.headers.expires_timestamp(),
        metadata: r.headers.metadata(),
        parts_count: input.part_number.and(r.parts_count),
        checksum_crc32: crc32,
        checksum_crc32c: crc32c,
        checksum_crc64nvme: crc64nvme,
        checksum_sha1: sha1,
        checksum_sha256: sha256,
        checksum_type: checksum.map(|c| ChecksumType::from(c.kind.clone())),
        ..Default::default()
    };
    Ok(S3Response::new(out))
}

pub(crate) async fn head_object(
    s3: &LarderS3,
    req: S3Request<HeadObjectInput>,
) -> S3ApiResult<S3Response<HeadObjectOutput>> {
    let input = req.input;
    let conds = ReadConditions {
        if_match: input.if_match,
        if_none_match: input.if_none_match,
        if_modified_since: input.if_modified_since,
        if_unmodified_since: input.if_unmodified_since,
    };
    let prepared = prepare(
        s3,
        &input.bucket,
        &input.key,
        &conds,
        input.range,
        input.part_number,
    )?;
    let r = match prepared {
        Prepared::NotModified(row) => {
            return Err(S3ApiError::NotModified {
                etag: row.etag,
                modified_ms: row.modified_ms,
            })
        }
        Prepared::Read(r) => r,
    };
    let checksum = wants_checksum(input.checksum_mode.as_ref(), &r)
        .then_some(r.headers.checksum.as_ref())
        .flatten();
    let [crc32, crc32c, crc64nvme, sha1, sha256] = checksum_fields(checksum);
    let out = HeadObjectOutput {
        accept_ranges: Some("bytes".into()),
        content_length: i64::try_from(r.end - r.start).ok(),
        content_range: content_range(&r),
        e_tag: Some(etag(&r.row.etag)),
        last_modified: Some(timestamp(r.row.modified_ms)),
        content_type: r.headers.content_type.clone(),
        cache_control: r.headers.cache_control.clone(),
        content_disposition: r.headers.content_disposition.clone(),
        content_encoding: r.headers.content_encoding.clone(),
        content_language: r.headers.content_language.clone(),
        expires: r.headers.expires_timestamp(),
        metadata: r.headers.metadata(),
        parts_count: input.part_number.and(r.parts_count),
        checksum_crc32: crc32,
        checksum_crc32c: crc32c,
        checksum_crc64nvme: crc64nvme,
        checksum_sha1: sha1,
        checksum_sha256: sha256,
        checksum_type: checksum.map(|c| ChecksumType::from(c.kind.clone())),
        ..Default::default()
    };
    Ok(S3Response::new(out))
}
