//! PutObject, and the body checks every upload shares (Content-MD5 and the
//! `x-amz-checksum-*` family, in headers or in an aws-chunked trailer).
//!
//! The body streams into the chunk store first (durable and indexed when
//! `ingest` returns), is checked, and only then becomes visible, in one SQLite
//! transaction that also evaluates `If-None-Match: *` and `If-Match` against the
//! object it replaces. A refused or failed upload leaves only unreferenced chunks.

use hyper::HeaderMap;
use s3s::dto::{PutObjectInput, PutObjectOutput};
use s3s::{S3Request, S3Response, TrailingHeaders};

use super::body::{self, BodyDigest};
use super::bucket::bucket;
use super::dispatch::{meta_blocking, LarderS3};
use super::error::{S3ApiError, S3ApiResult};
use super::object::{
    etag, http_date, md5_hex, now_ms, parse_content_md5, user_metadata, ChecksumAlgo,
    StoredChecksum, StoredHeaders, WriteConditions, MAX_PUT_BYTES,
};
use crate::meta::{NewObject, WriteOutcome};

/// Where the expected checksum of a body comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// `x-amz-checksum-*` in the request headers.
    Header(String),
    /// Named by `x-amz-trailer`, sent after an aws-chunked body.
    Trailer,
    /// Only `x-amz-sdk-checksum-algorithm`: compute and keep it.
    Compute,
}

/// The checksum a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChecksumPlan {
    pub algo: ChecksumAlgo,
    pub expected: Expected,
}

/// Work out the checksum a request carries, refusing malformed values.
pub fn checksum_plan(
    headers: &HeaderMap,
    sdk_algorithm: Option<&str>,
) -> S3ApiResult<Option<ChecksumPlan>> {
    let mut found: Option<ChecksumPlan> = None;
    for algo in ChecksumAlgo::ALL {
        if let Some(v) = headers.get(algo.header()) {
            let v = v.to_str().map_err(|_| {
                S3ApiError::InvalidRequest(format!("{} is not ASCII", algo.header()))
            })?;
            algo.check_value(v)?;
            if found.is_some() {
                return Err(S3ApiError::InvalidRequest(
                    "expecting a single x-amz-checksum- header; multiple checksum types are not allowed"
                        .into(),
                ));
            }
            found = Some(ChecksumPlan {
                algo,
                expected: Expected::Header(v.trim().to_owned()),
            });
        }
    }
    if found.is_some() {
        return Ok(found);
    }
    if let Some(t) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
        for name in t.split(',').map(|n| n.trim().to_ascii_lowercase()) {
            if let Some(algo) = ChecksumAlgo::ALL.into_iter().find(|a| a.header() == name) {
                return Ok(Some(ChecksumPlan {
                    algo,
                    expected: Expected::Trailer,
                }));
            }
        }
    }
    match sdk_algorithm {
        Some(a) if !a.is_empty() => {
            let algo = ChecksumAlgo::parse(a).ok_or_else(|| {
                S3ApiError::InvalidRequest(format!("checksum algorithm {a:?} is not supported"))
            })?;
            Ok(Some(ChecksumPlan {
                algo,
                expected: Expected::Compute,
            }))
        }
        _ => Ok(None),
    }
}

/// Check a read body against its Content-Length, Content-MD5 and checksum; returns
/// the checksum to keep.
pub fn verify_body(
    digest: &BodyDigest,
    content_length: Option<i64>,
    content_md5: Option<[u8; 16]>,
    plan: Option<&ChecksumPlan>,
    trailers: Option<&TrailingHeaders>,
) -> S3ApiResult<Option<(ChecksumAlgo, String)>> {
    if let Some(n) = content_length {
        if u64::try_from(n).ok() != Some(digest.len) && n > 0 {
            return Err(S3ApiError::IncompleteBody(format!(
                "you did not provide the number of bytes specified by the Content-Length ({n}); {} arrived",
                digest.len
            )));
        }
    }
    if let Some(md5) = content_md5 {
        if md5 != digest.md5 {
            return Err(S3ApiError::BadDigest(
                "the Content-MD5 you specified did not match what we received".into(),
            ));
        }
    }
    let Some(plan) = plan else {
        return Ok(None);
    };
    let computed = match &digest.checksum {
        Some((a, v)) if *a == plan.algo => v.clone(),
        _ => return Err(S3ApiError::Internal("checksum was not computed".into())),
    };
    let expected = match &plan.expected {
        Expected::Header(v) => Some(v.clone()),
        Expected::Compute => None,
        Expected::Trailer => {
            let v = trailers
                .and_then(|t| t.read(|h| h.get(plan.algo.header()).cloned()))
                .flatten()
                .and_then(|v| v.to_str().ok().map(|s| s.trim().to_owned()));
            match v {
                Some(v) => {
                    plan.algo.check_value(&v)?;
                    Some(v)
                }
                None => {
                    return Err(S3ApiError::InvalidRequest(format!(
                        "the {} trailer announced by x-amz-trailer did not arrive",
                        plan.algo.header()
                    )))
                }
            }
        }
    };
    if let Some(e) = expected {
        if e != computed {
            return Err(S3ApiError::BadDigest(format!(
                "the {} you specified did not match the calculated checksum",
                plan.algo.name()
            )));
        }
    }
    Ok(Some((plan.algo, computed)))
}

/// The checksum response fields for one algorithm.
pub fn checksum_fields(c: Option<&StoredChecksum>) -> [Option<String>; 5] {
    let mut out: [Option<String>; 5] = Default::default();
    if let Some(c) = c {
        let i = ChecksumAlgo::ALL
            .iter()
            .position(|a| *a == c.algorithm)
            .unwrap_or(0);
        out[i] = Some(c.value.clone());
    }
    out
}

pub(crate) async fn put_object(
    s3: &LarderS3,
    req: S3Request<PutObjectInput>,
) -> S3ApiResult<S3Response<PutObjectOutput>> {
    let S3Request {
        input,
        headers,
        trailing_headers,
        ..
    } = req;
    let conds = WriteConditions {
        if_match: input.if_match,
        if_none_match: input.if_none_match,
    };
    conds.validate()?;
    let meta = user_metadata(input.metadata)?;
    let content_md5 = input
        .content_md5
        .as_deref()
        .map(parse_content_md5)
        .transpose()?;
    let plan = checksum_plan(
        &headers,
        input.checksum_algorithm.as_ref().map(|a| a.as_str()),
    )?;
    if let Some(n) = input.content_length {
        if u64::try_from(n).unwrap_or(0) > MAX_PUT_BYTES {
            return Err(S3ApiError::EntityTooLarge(format!(
                "your proposed upload exceeds the maximum allowed size of {MAX_PUT_BYTES} bytes"
            )));
        }
    }
    let b = bucket(s3, &input.bucket)?;
    // Fail fast on a precondition that already fails; it is checked again when
    // the object is committed.
    if conds.if_match.is_some() || conds.if_none_match.is_some() {
        let cur = s3.larder.meta.s3_object(b.id, input.key.as_bytes())?;
        conds.check(cur.as_ref().map(|c| c.etag.as_str()))?;
    }
    let (outcome, digest) = body::ingest(
        &s3.larder,
        input.body,
        MAX_PUT_BYTES,
        plan.as_ref().map(|p| p.algo),
        input.content_length.and_then(|n| u64::try_from(n).ok()),
    )
    .await?;
    let checksum = verify_body(
        &digest,
        input.content_length,
        content_md5,
        plan.as_ref(),
        trailing_headers.as_ref(),
    )?;
    let stored_checksum = checksum.map(|(algorithm, value)| StoredChecksum {
        algorithm,
        value,
        kind: "FULL_OBJECT".into(),
    });
    let stored = StoredHeaders {
        content_type: input.content_type.map(|c| c.to_string()),
        cache_control: input.cache_control,
        content_disposition: input.content_disposition,
        content_encoding: input.content_encoding,
        content_language: input.content_language,
        expires: input.expires.as_ref().and_then(http_date),
        meta,
        checksum: stored_checksum.clone(),
        upload_checksum: None,
    };
    let tag = md5_hex(&digest.md5);
    let object = NewObject {
        size: digest.len,
        etag: tag.clone(),
        modified_ms: now_ms(),
        headers: stored.to_json()?,
        part_sizes: None,
        manifest: outcome.manifest.encode(),
    };
    let bucket_name = input.bucket.clone();
    let key = input.key.clone();
    let written = meta_blocking(&s3.larder, move |m| {
        Ok(
            m.s3_object_put(&bucket_name, key.as_bytes(), &object, |cur| {
                conds.check(cur.map(|c| c.etag.as_str()))
            })?,
        )
    })
    .await?;
    match written {
        WriteOutcome::Stored => {}
        WriteOutcome::NoSuchBucket => return Err(S3ApiError::NoSuchBucket(input.bucket)),
        WriteOutcome::Refused(e) => return Err(e),
        WriteOutcome::NoSuchUpload => {
            return Err(S3ApiError::Internal("unexpected outcome".into()))
        }
    }
    let [crc32, crc32c, crc64nvme, sha1, sha256] = checksum_fields(stored_checksum.as_ref());
    Ok(S3Response::new(PutObjectOutput {
        e_tag: Some(etag(&tag)),
        checksum_crc32: crc32,
        checksum_crc32c: crc32c,
        checksum_crc64nvme: crc64nvme,
        checksum_sha1: sha1,
        checksum_sha256: sha256,
        checksum_type: stored_checksum
            .as_ref()
            .map(|c| s3s::dto::ChecksumType::from(c.kind.clone())),
        size: i64::try_from(digest.len).ok(),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn checksum_plans() {
        assert_eq!(checksum_plan(&headers(&[]), None).unwrap(), None);
        let p = checksum_plan(&headers(&[("x-amz-checksum-crc32", "DUoRhQ==")]), None)
            .unwrap()
            .unwrap();
        assert_eq!(p.algo, ChecksumAlgo::Crc32);
        assert_eq!(p.expected, Expected::Header("DUoRhQ==".into()));
        assert!(checksum_plan(&headers(&[("x-amz-checksum-crc32", "nope")]), None).is_err());
        assert!(checksum_plan(
            &headers(&[
                ("x-amz-checksum-crc32", "DUoRhQ=="),
                ("x-amz-checksum-crc32c", "DUoRhQ==")
            ]),
            None
        )
        .is_err());
        let p = checksum_plan(
            &headers(&[("x-amz-trailer", "x-amz-checksum-crc32c")]),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (p.algo, p.expected),
            (ChecksumAlgo::Crc32c, Expected::Trailer)
        );
        let p = checksum_plan(&headers(&[]), Some("SHA256"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.algo, p.expected),
            (ChecksumAlgo::Sha256, Expected::Compute)
        );
        assert!(checksum_plan(&headers(&[]), Some("MD4")).is_err());
    }

    #[test]
    fn bodies_are_checked() {
        let mut h = ChecksumAlgo::Crc32.hasher();
        h.update(b"hello world");
        let d = BodyDigest {
            len: 11,
            md5: [0; 16],
            checksum: Some((ChecksumAlgo::Crc32, h.finish())),
        };
        let plan = ChecksumPlan {
            algo: ChecksumAlgo::Crc32,
            expected: Expected::Header("DUoRhQ==".into()),
        };
        assert!(verify_body(&d, Some(11), None, Some(&plan), None).is_ok());
        assert!(matches!(
            verify_body(&d, Some(12), None, Some(&plan), None),
            Err(S3ApiError::IncompleteBody(_))
        ));
        assert!(matches!(
            verify_body(&d, None, Some([1; 16]), None, None),
            Err(S3ApiError::BadDigest(_))
        ));
        let wrong = ChecksumPlan {
            algo: ChecksumAlgo::Crc32,
            expected: Expected::Header("AAAAAA==".into()),
        };
        assert!(matches!(
            verify_body(&d, None, None, Some(&wrong), None),
            Err(S3ApiError::BadDigest(_))
        ));
        let trailer = ChecksumPlan {
            algo: ChecksumAlgo::Crc32,
            expected: Expected::Trailer,
        };
        assert!(matches!(
            verify_body(&d, None, None, Some(&trailer), None),
            Err(S3ApiError::InvalidRequest(_))
        ));
    }
}
