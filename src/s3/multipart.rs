//! Multipart uploads: Create, UploadPart, UploadPartCopy, Complete, Abort,
//! ListParts and ListMultipartUploads.
//!
//! Each part is ingested into the chunk store on its own and recorded with its
//! manifest. Completing concatenates the listed parts' manifests into the
//! object's: the object is assembled by reference, no byte is read or copied.
//! The checks on the listed parts (order, ETags, sizes, checksums), the
//! conditional headers, storing the object and dropping the upload happen in one
//! SQLite transaction, so a completed upload is all there or not at all, and an
//! aborted one leaves nothing visible.

use base64::Engine as _;
use rand::RngCore;
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, ChecksumAlgorithm, ChecksumType,
    CommonPrefix, CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyPartResult,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, Initiator, ListMultipartUploadsInput,
    ListMultipartUploadsOutput, ListPartsInput, ListPartsOutput, MultipartUpload, Part,
    StorageClass, UploadPartCopyInput, UploadPartCopyOutput, UploadPartInput, UploadPartOutput,
};
use s3s::{S3Request, S3Response};

use super::body::{self, RangeReader};
use super::bucket::{bucket, owner};
use super::copy::source;
use super::dispatch::{blocking, caller, meta_blocking, LarderS3};
use super::error::{S3ApiError, S3ApiResult};
use super::list::{prefix_end, show, url_encoding};
use super::object::{
    bare_etag, encode_part_sizes, etag, http_date, md5_hex, multipart_etag, now_ms,
    parse_content_md5, timestamp, user_metadata, ChecksumAlgo, ReadConditions, StoredChecksum,
    StoredHeaders, WriteConditions, MAX_PART_NUMBER, MAX_PUT_BYTES, MIN_PART_BYTES,
};
use super::put::{checksum_fields, checksum_plan, verify_body, ChecksumPlan, Expected};
use crate::meta::{KeyWindow, NewObject, PartRow, UploadRow, WriteOutcome};
use crate::store::Manifest;

/// Default and largest page of ListParts and ListMultipartUploads.
const MAX_LISTED: usize = 1000;

/// A fresh upload id: 192 random bits in lowercase hex. Hex, not base64url,
/// because an id that began with `-` would be read as an option by
/// command-line clients (`aws s3api upload-part --upload-id -x…` fails).
fn new_upload_id() -> String {
    let mut b = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn part_number(n: i32) -> S3ApiResult<u32> {
    if (1..=MAX_PART_NUMBER).contains(&n) {
        Ok(u32::try_from(n).unwrap_or(1))
    } else {
        Err(S3ApiError::InvalidArgument(format!(
            "part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"
        )))
    }
}

/// The upload, checked to belong to this bucket and key.
fn upload(s3: &LarderS3, bucket_name: &str, key: &str, id: &str) -> S3ApiResult<UploadRow> {
    let b = bucket(s3, bucket_name)?;
    match s3.larder.meta.s3_upload(id)? {
        Some(u) if u.bucket_id == b.id && u.key == key.as_bytes() => Ok(u),
        _ => Err(S3ApiError::NoSuchUpload),
    }
}

pub(crate) async fn create_multipart_upload(
    s3: &LarderS3,
    req: S3Request<CreateMultipartUploadInput>,
) -> S3ApiResult<S3Response<CreateMultipartUploadOutput>> {
    let input = req.input;
    let algo = match input.checksum_algorithm.as_ref() {
        Some(a) => Some(ChecksumAlgo::parse(a.as_str()).ok_or_else(|| {
            S3ApiError::InvalidRequest(format!(
                "checksum algorithm {:?} is not supported",
                a.as_str()
            ))
        })?),
        None => None,
    };
    let headers = StoredHeaders {
        content_type: input.content_type.clone(),
        cache_control: input.cache_control.clone(),
        content_disposition: input.content_disposition.clone(),
        content_encoding: input.content_encoding.clone(),
        content_language: input.content_language.clone(),
        expires: input.expires.as_ref().and_then(http_date),
        meta: user_metadata(input.metadata.clone())?,
        checksum: None,
        upload_checksum: algo,
    };
    let row = UploadRow {
        upload_id: new_upload_id(),
        bucket_id: 0,
        key: input.key.as_bytes().to_vec(),
        headers: headers.to_json()?,
        created_at_ms: now_ms(),
    };
    let id = row.upload_id.clone();
    let bucket_name = input.bucket.clone();
    let created = meta_blocking(&s3.larder, move |m| {
        Ok(m.s3_upload_create(&bucket_name, &row)?)
    })
    .await?;
    if !created {
        return Err(S3ApiError::NoSuchBucket(input.bucket));
    }
    Ok(S3Response::new(CreateMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(id),
        checksum_algorithm: algo.map(|a| ChecksumAlgorithm::from(a.name().to_owned())),
        checksum_type: algo.map(|_| {
            input
                .checksum_type
                .clone()
                .unwrap_or_else(|| ChecksumType::from_static(ChecksumType::COMPOSITE))
        }),
        ..Default::default()
    }))
}

/// The checksum an UploadPart carries, held to the upload's algorithm.
fn part_plan(
    headers: &hyper::HeaderMap,
    sdk: Option<&str>,
    upload_algo: Option<ChecksumAlgo>,
) -> S3ApiResult<Option<ChecksumPlan>> {
    let plan = checksum_plan(headers, sdk)?;
    match (plan, upload_algo) {
        (Some(p), Some(a)) if p.algo != a => Err(S3ApiError::InvalidRequest(format!(
            "checksum type mismatch: the upload uses {}, this part sent {}",
            a.name(),
            p.algo.name()
        ))),
        (None, Some(a)) => Ok(Some(ChecksumPlan {
            algo: a,
            expected: Expected::Compute,
        })),
        (p, _) => Ok(p),
    }
}

pub(crate) async fn upload_part(
    s3: &LarderS3,
    req: S3Request<UploadPartInput>,
) -> S3ApiResult<S3Response<UploadPartOutput>> {
    let S3Request {
        input,
        headers,
        trailing_headers,
        ..
    } = req;
    let number = part_number(input.part_number)?;
    let up = upload(s3, &input.bucket, &input.key, &input.upload_id)?;
    let up_headers = StoredHeaders::from_json(&up.headers)?;
    let content_md5 = input
        .content_md5
        .as_deref()
        .map(parse_content_md5)
        .transpose()?;
    let plan = part_plan(
        &headers,
        input.checksum_algorithm.as_ref().map(|a| a.as_str()),
        up_headers.upload_checksum,
    )?;
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
    let tag = md5_hex(&digest.md5);
    let part = PartRow {
        part_number: number,
        size: digest.len,
        etag: tag.clone(),
        checksum: checksum.as_ref().map(|(_, v)| v.clone()),
        modified_ms: now_ms(),
        manifest: outcome.manifest.encode(),
    };
    let id = input.upload_id.clone();
    let recorded = meta_blocking(&s3.larder, move |m| Ok(m.s3_part_put(&id, &part)?)).await?;
    if !recorded {
        return Err(S3ApiError::NoSuchUpload);
    }
    let stored = checksum.map(|(algorithm, value)| StoredChecksum {
        algorithm,
        value,
        kind: "COMPOSITE".into(),
    });
    let [crc32, crc32c, crc64nvme, sha1, sha256] = checksum_fields(stored.as_ref());
    Ok(S3Response::new(UploadPartOutput {
        e_tag: Some(etag(&tag)),
        checksum_crc32: crc32,
        checksum_crc32c: crc32c,
        checksum_crc64nvme: crc64nvme,
        checksum_sha1: sha1,
        checksum_sha256: sha256,
        ..Default::default()
    }))
}

/// `bytes=first-last` of x-amz-copy-source-range, within an object of `len`.
pub(crate) fn copy_range(v: &str, len: u64) -> S3ApiResult<(u64, u64)> {
    let bad = || {
        S3ApiError::InvalidArgument(format!(
            "the x-amz-copy-source-range value must be of the form bytes=first-last within the source object of size {len}"
        ))
    };
    let spec = v.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if a > b || b >= len {
        return Err(bad());
    }
    Ok((a, b + 1))
}

pub(crate) async fn upload_part_copy(
    s3: &LarderS3,
    req: S3Request<UploadPartCopyInput>,
) -> S3ApiResult<S3Response<UploadPartCopyOutput>> {
    let c = caller(&req)?;
    let input = &req.input;
    let number = part_number(input.part_number)?;
    upload(s3, &input.bucket, &input.key, &input.upload_id)?;
    let conds = ReadConditions {
        if_match: input.copy_source_if_match.clone(),
        if_none_match: input.copy_source_if_none_match.clone(),
        if_modified_since: input.copy_source_if_modified_since.clone(),
        if_unmodified_since: input.copy_source_if_unmodified_since.clone(),
    };
    let src = source(s3, c, &input.copy_source, &conds)?;
    let len = src.row.size;
    let (start, end) = match input.copy_source_range.as_deref() {
        Some(r) => copy_range(r, len)?,
        None => (0, len),
    };
    if end - start > MAX_PUT_BYTES {
        return Err(S3ApiError::EntityTooLarge(format!(
            "a part may be at most {MAX_PUT_BYTES} bytes"
        )));
    }
    let whole = start == 0 && end == len;
    let plain_md5 = !src.row.etag.contains('-');
    let (part, hold) = if whole && plain_md5 {
        // The whole source, by reference: its ETag is already the MD5.
        let hold = super::body::hold_manifest(&s3.larder, &src.row.manifest)?;
        (
            PartRow {
                part_number: number,
                size: len,
                etag: src.row.etag.clone(),
                checksum: None,
                modified_ms: now_ms(),
                manifest: src.row.manifest.clone(),
            },
            hold,
        )
    } else {
        // A slice (or a multipart source, whose part ETag must be the MD5 of its
        // bytes): stream it back through the chunker. Chunks inside the range cut
        // the same way and are found in the index, so only the edges can be new.
        let manifest = Manifest::decode(&src.row.manifest)
            .ok_or_else(|| S3ApiError::Internal("an object manifest does not decode".into()))?;
        blocking(&s3.larder, move |l| {
            let store = l.store().map_err(|e| S3ApiError::Internal(e.to_string()))?;
            let resolved = store.resolve(&manifest)?;
            let reader = RangeReader::new(l, &resolved, start, end);
            let (outcome, digest) = body::ingest_reader(l, reader)?;
            Ok((
                PartRow {
                    part_number: number,
                    size: digest.len,
                    etag: md5_hex(&digest.md5),
                    checksum: None,
                    modified_ms: now_ms(),
                    manifest: outcome.manifest.encode(),
                },
                outcome.hold,
            ))
        })
        .await?
    };
    let tag = part.etag.clone();
    let modified = part.modified_ms;
    let id = input.upload_id.clone();
    let recorded = meta_blocking(&s3.larder, move |m| Ok(m.s3_part_put(&id, &part)?)).await?;
    drop(hold);
    if !recorded {
        return Err(S3ApiError::NoSuchUpload);
    }
    Ok(S3Response::new(UploadPartCopyOutput {
        copy_part_result: Some(CopyPartResult {
            e_tag: Some(etag(&tag)),
            last_modified: Some(timestamp(modified)),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

/// A part as CompleteMultipartUpload lists it.
#[derive(Clone, Debug)]
struct Listed {
    number: u32,
    etag: String,
    checksum: Option<String>,
}

/// Turn the upload and its stored parts into the object, checking the listed
/// parts the way S3 does.
fn assemble(
    upload_headers: &StoredHeaders,
    listed: &[Listed],
    stored: &[PartRow],
) -> S3ApiResult<NewObject> {
    let mut chunks = Vec::new();
    let mut etags = Vec::with_capacity(listed.len());
    let mut sizes = Vec::with_capacity(listed.len());
    let mut composite: Vec<u8> = Vec::new();
    let algo = upload_headers.upload_checksum;
    for (i, l) in listed.iter().enumerate() {
        let part = stored
            .binary_search_by_key(&l.number, |p| p.part_number)
            .ok()
            .map(|at| &stored[at])
            .ok_or_else(|| {
                S3ApiError::InvalidPart(format!(
                    "part {} was not uploaded, or its upload was replaced",
                    l.number
                ))
            })?;
        if bare_etag(&l.etag) != part.etag {
            return Err(S3ApiError::InvalidPart(format!(
                "the ETag given for part {} does not match the uploaded part",
                l.number
            )));
        }
        let last = i + 1 == listed.len();
        if !last && part.size < MIN_PART_BYTES {
            return Err(S3ApiError::EntityTooSmall(format!(
                "part {} is {} bytes; every part but the last must be at least {MIN_PART_BYTES} bytes",
                l.number, part.size
            )));
        }
        if let (Some(a), Some(given)) = (algo, &l.checksum) {
            if part.checksum.as_deref() != Some(given.trim()) {
                return Err(S3ApiError::InvalidPart(format!(
                    "the {} given for part {} does not match the uploaded part",
                    a.name(),
                    l.number
                )));
            }
        }
        if algo.is_some() {
            let raw = part
                .checksum
                .as_deref()
                .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                .unwrap_or_default();
            composite.extend_from_slice(&raw);
        }
        let m = Manifest::decode(&part.manifest)
            .ok_or_else(|| S3ApiError::Internal("a part manifest does not decode".into()))?;
        chunks.extend(m.chunks);
        etags.push(part.etag.clone());
        sizes.push(part.size);
    }
    let checksum = algo.map(|a| {
        let mut h = a.hasher();
        h.update(&composite);
        StoredChecksum {
            algorithm: a,
            value: format!("{}-{}", h.finish(), listed.len()),
            kind: "COMPOSITE".into(),
        }
    });
    let headers = StoredHeaders {
        checksum,
        upload_checksum: None,
        ..upload_headers.clone()
    };
    Ok(NewObject {
        size: sizes.iter().sum(),
        etag: multipart_etag(&etags),
        modified_ms: now_ms(),
        headers: headers.to_json()?,
        part_sizes: Some(encode_part_sizes(&sizes)),
        manifest: Manifest { chunks }.encode(),
    })
}

pub(crate) async fn complete_multipart_upload(
    s3: &LarderS3,
    req: S3Request<CompleteMultipartUploadInput>,
) -> S3ApiResult<S3Response<CompleteMultipartUploadOutput>> {
    let input = req.input;
    let conds = WriteConditions {
        if_match: input.if_match,
        if_none_match: input.if_none_match,
    };
    conds.validate()?;
    let up = upload(s3, &input.bucket, &input.key, &input.upload_id)?;
    let up_headers = StoredHeaders::from_json(&up.headers)?;
    let parts = input
        .multipart_upload
        .and_then(|m| m.parts)
        .unwrap_or_default();
    if parts.is_empty() {
        return Err(S3ApiError::MalformedXML(
            "the XML you provided did not list any part".into(),
        ));
    }
    let algo = up_headers.upload_checksum;
    let mut listed = Vec::with_capacity(parts.len());
    for p in parts {
        let number = part_number(p.part_number.unwrap_or(0))?;
        let etag = p
            .e_tag
            .as_ref()
            .map(|e| e.value().to_owned())
            .ok_or_else(|| S3ApiError::InvalidPart(format!("part {number} has no ETag")))?;
        let checksum = algo.and_then(|a| {
            let fields = [
                p.checksum_crc32.clone(),
                p.checksum_crc32c.clone(),
                p.checksum_crc64nvme.clone(),
                p.checksum_sha1.clone(),
                p.checksum_sha256.clone(),
            ];
            ChecksumAlgo::ALL
                .iter()
                .position(|x| *x == a)
                .and_then(|i| fields[i].clone())
        });
        listed.push(Listed {
            number,
            etag,
            checksum,
        });
    }
    if listed.windows(2).any(|w| w[0].number >= w[1].number) {
        return Err(S3ApiError::InvalidPartOrder);
    }
    let id = input.upload_id.clone();
    let result = meta_blocking(&s3.larder, move |m| {
        let mut made: Option<(String, Option<StoredChecksum>)> = None;
        let out = m.s3_upload_complete(
            &id,
            |_, stored| {
                let o = assemble(&up_headers, &listed, stored)?;
                let checksum = StoredHeaders::from_json(&o.headers)?.checksum;
                made = Some((o.etag.clone(), checksum));
                Ok(o)
            },
            |cur| conds.check(cur.map(|c| c.etag.as_str())),
        )?;
        Ok((out, made))
    })
    .await?;
    let (outcome, made) = result;
    match outcome {
        WriteOutcome::Stored => {}
        WriteOutcome::NoSuchUpload => return Err(S3ApiError::NoSuchUpload),
        WriteOutcome::NoSuchBucket => return Err(S3ApiError::NoSuchBucket(input.bucket)),
        WriteOutcome::Refused(e) => return Err(e),
    }
    let (tag, checksum) = made.ok_or_else(|| S3ApiError::Internal("no object made".into()))?;
    let [crc32, crc32c, crc64nvme, sha1, sha256] = checksum_fields(checksum.as_ref());
    Ok(S3Response::new(CompleteMultipartUploadOutput {
        bucket: Some(input.bucket.clone()),
        key: Some(input.key.clone()),
        location: Some(format!("/{}/{}", input.bucket, input.key)),
        e_tag: Some(etag(&tag)),
        checksum_crc32: crc32,
        checksum_crc32c: crc32c,
        checksum_crc64nvme: crc64nvme,
        checksum_sha1: sha1,
        checksum_sha256: sha256,
        checksum_type: checksum.map(|c| ChecksumType::from(c.kind)),
        ..Default::default()
    }))
}

pub(crate) async fn abort_multipart_upload(
    s3: &LarderS3,
    req: S3Request<AbortMultipartUploadInput>,
) -> S3ApiResult<S3Response<AbortMultipartUploadOutput>> {
    let input = req.input;
    upload(s3, &input.bucket, &input.key, &input.upload_id)?;
    let id = input.upload_id.clone();
    if !meta_blocking(&s3.larder, move |m| Ok(m.s3_upload_abort(&id)?)).await? {
        return Err(S3ApiError::NoSuchUpload);
    }
    Ok(S3Response::new(AbortMultipartUploadOutput::default()))
}

fn listed_max(v: Option<i32>, what: &str) -> S3ApiResult<usize> {
    match v {
        None => Ok(MAX_LISTED),
        Some(n) if n < 0 => Err(S3ApiError::InvalidArgument(format!(
            "{what} must be a non-negative integer"
        ))),
        Some(n) => Ok(usize::try_from(n).unwrap_or(MAX_LISTED).min(MAX_LISTED)),
    }
}

pub(crate) async fn list_parts(
    s3: &LarderS3,
    req: S3Request<ListPartsInput>,
) -> S3ApiResult<S3Response<ListPartsOutput>> {
    let c = caller(&req)?;
    let input = &req.input;
    let up = upload(s3, &input.bucket, &input.key, &input.upload_id)?;
    let up_headers = StoredHeaders::from_json(&up.headers)?;
    let max = listed_max(input.max_parts, "max-parts")?;
    let marker = u32::try_from(input.part_number_marker.unwrap_or(0).max(0)).unwrap_or(0);
    let mut rows = s3.larder.meta.s3_parts(&up.upload_id, marker, max + 1)?;
    let truncated = rows.len() > max;
    rows.truncate(max);
    let next = rows.last().map(|p| p.part_number);
    let algo = up_headers.upload_checksum;
    let parts: Vec<Part> = rows
        .iter()
        .map(|p| {
            let stored = algo.zip(p.checksum.clone()).map(|(a, v)| StoredChecksum {
                algorithm: a,
                value: v,
                kind: "COMPOSITE".into(),
            });
            let [crc32, crc32c, crc64nvme, sha1, sha256] = checksum_fields(stored.as_ref());
            Part {
                part_number: i32::try_from(p.part_number).ok(),
                size: i64::try_from(p.size).ok(),
                e_tag: Some(etag(&p.etag)),
                last_modified: Some(timestamp(p.modified_ms)),
                checksum_crc32: crc32,
                checksum_crc32c: crc32c,
                checksum_crc64nvme: crc64nvme,
                checksum_sha1: sha1,
                checksum_sha256: sha256,
            }
        })
        .collect();
    let who = owner(c);
    Ok(S3Response::new(ListPartsOutput {
        bucket: Some(input.bucket.clone()),
        key: Some(input.key.clone()),
        upload_id: Some(up.upload_id.clone()),
        max_parts: i32::try_from(max).ok(),
        part_number_marker: input.part_number_marker,
        next_part_number_marker: if truncated {
            next.and_then(|n| i32::try_from(n).ok())
        } else {
            None
        },
        is_truncated: Some(truncated),
        parts: Some(parts),
        checksum_algorithm: algo.map(|a| ChecksumAlgorithm::from(a.name().to_owned())),
        initiator: Some(Initiator {
            display_name: who.display_name.clone(),
            id: who.id.clone(),
        }),
        owner: Some(who),
        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
        ..Default::default()
    }))
}

pub(crate) async fn list_multipart_uploads(
    s3: &LarderS3,
    req: S3Request<ListMultipartUploadsInput>,
) -> S3ApiResult<S3Response<ListMultipartUploadsOutput>> {
    let c = caller(&req)?;
    let input = &req.input;
    let b = bucket(s3, &input.bucket)?;
    let encode = url_encoding(input.encoding_type.as_ref())?;
    let max = listed_max(input.max_uploads, "max-uploads")?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let delimiter = input.delimiter.clone().unwrap_or_default();
    let key_marker = input.key_marker.clone().filter(|k| !k.is_empty());
    // The upload-id marker only counts with a key marker.
    let id_marker = key_marker
        .as_ref()
        .and(input.upload_id_marker.clone())
        .filter(|m| !m.is_empty());
    let below = if prefix.is_empty() {
        None
    } else {
        prefix_end(prefix.as_bytes())
    };
    let window = KeyWindow {
        lower: Some((prefix.as_bytes(), true)).filter(|_| !prefix.is_empty()),
        below: below.as_deref(),
    };
    let mut uploads: Vec<UploadRow> = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut truncated = false;
    let mut after: Option<(Vec<u8>, String)> = key_marker.as_ref().map(|k| {
        (
            k.as_bytes().to_vec(),
            // Without an upload-id marker, everything under the key marker is skipped.
            id_marker.clone().unwrap_or_else(|| "\u{10ffff}".into()),
        )
    });
    let mut last: Option<(String, Option<String>)> = None;
    'scan: loop {
        let batch = s3.larder.meta.s3_list_uploads(
            b.id,
            window,
            after.as_ref().map(|(k, id)| (k.as_slice(), id.as_str())),
            MAX_LISTED,
        )?;
        let full = batch.len() == MAX_LISTED;
        if batch.is_empty() {
            break;
        }
        for u in batch {
            after = Some((u.key.clone(), u.upload_id.clone()));
            let key = String::from_utf8_lossy(&u.key).into_owned();
            let rest = &key[prefix.len().min(key.len())..];
            let rolled = (!delimiter.is_empty())
                .then(|| rest.find(&delimiter))
                .flatten()
                .map(|at| key[..prefix.len() + at + delimiter.len()].to_owned());
            if let Some(cp) = rolled {
                let skip = key_marker.as_deref().is_some_and(|m| cp.as_str() <= m)
                    || prefixes.last() == Some(&cp);
                if !skip {
                    if uploads.len() + prefixes.len() == max {
                        truncated = true;
                        break 'scan;
                    }
                    last = Some((cp.clone(), None));
                    prefixes.push(cp);
                }
                continue;
            }
            if uploads.len() + prefixes.len() == max {
                truncated = true;
                break 'scan;
            }
            last = Some((key, Some(u.upload_id.clone())));
            uploads.push(u);
        }
        if !full {
            break;
        }
    }
    let who = owner(c);
    let list: Vec<MultipartUpload> = uploads
        .iter()
        .map(|u| {
            let h = StoredHeaders::from_json(&u.headers).unwrap_or_default();
            MultipartUpload {
                key: Some(show(&u.key, encode)),
                upload_id: Some(u.upload_id.clone()),
                initiated: Some(timestamp(u.created_at_ms)),
                initiator: Some(Initiator {
                    display_name: who.display_name.clone(),
                    id: who.id.clone(),
                }),
                owner: Some(who.clone()),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                checksum_algorithm: h
                    .upload_checksum
                    .map(|a| ChecksumAlgorithm::from(a.name().to_owned())),
                ..Default::default()
            }
        })
        .collect();
    let (next_key, next_id) = match (truncated, last) {
        (true, Some((k, id))) => (Some(show(k.as_bytes(), encode)), id),
        _ => (None, None),
    };
    Ok(S3Response::new(ListMultipartUploadsOutput {
        bucket: Some(b.name),
        prefix: Some(show(prefix.as_bytes(), encode)),
        delimiter: Some(delimiter)
            .filter(|d| !d.is_empty())
            .map(|d| show(d.as_bytes(), encode)),
        key_marker: Some(
            key_marker
                .map(|k| show(k.as_bytes(), encode))
                .unwrap_or_default(),
        ),
        upload_id_marker: Some(id_marker.unwrap_or_default()),
        max_uploads: i32::try_from(max).ok(),
        is_truncated: Some(truncated),
        next_key_marker: next_key,
        next_upload_id_marker: next_id,
        uploads: Some(list),
        common_prefixes: Some(
            prefixes
                .into_iter()
                .map(|p| CommonPrefix {
                    prefix: Some(show(p.as_bytes(), encode)),
                })
                .collect(),
        ),
        encoding_type: input.encoding_type.clone(),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::super::object::decode_part_sizes;
    use super::*;

    #[test]
    fn upload_ids_are_hex_and_never_look_like_an_option() {
        for _ in 0..2000 {
            let id = new_upload_id();
            assert_eq!(id.len(), 48);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(!id.starts_with('-'));
        }
    }

    fn part(n: u32, size: u64, etag: &str) -> PartRow {
        PartRow {
            part_number: n,
            size,
            etag: etag.into(),
            checksum: None,
            modified_ms: 0,
            manifest: Manifest::default().encode(),
        }
    }

    fn listed(n: u32, etag: &str) -> Listed {
        Listed {
            number: n,
            etag: format!("\"{etag}\""),
            checksum: None,
        }
    }

    #[test]
    fn completion_checks_parts() {
        let h = StoredHeaders::default();
        let big = MIN_PART_BYTES;
        let stored = [part(1, big, "a"), part(2, 10, "b"), part(3, 10, "c")];
        let o = assemble(&h, &[listed(1, "a"), listed(3, "c")], &stored).unwrap();
        assert_eq!(o.size, big + 10);
        assert!(o.etag.ends_with("-2"));
        assert_eq!(
            decode_part_sizes(o.part_sizes.as_deref().unwrap()),
            vec![big, 10]
        );
        assert!(matches!(
            assemble(&h, &[listed(1, "x")], &stored),
            Err(S3ApiError::InvalidPart(_))
        ));
        assert!(matches!(
            assemble(&h, &[listed(4, "a")], &stored),
            Err(S3ApiError::InvalidPart(_))
        ));
        assert!(matches!(
            assemble(&h, &[listed(2, "b"), listed(3, "c")], &stored),
            Err(S3ApiError::EntityTooSmall(_))
        ));
    }

    #[test]
    fn copy_ranges() {
        assert_eq!(copy_range("bytes=0-9", 10).unwrap(), (0, 10));
        assert_eq!(copy_range("bytes=5-5", 10).unwrap(), (5, 6));
        assert!(copy_range("bytes=5-10", 10).is_err());
        assert!(copy_range("bytes=6-5", 10).is_err());
        assert!(copy_range("5-6", 10).is_err());
        assert!(part_number(0).is_err());
        assert!(part_number(10_001).is_err());
        assert_eq!(part_number(10_000).unwrap(), 10_000);
    }
}
