//! What larder keeps about an object besides its chunks, and the S3 rules over it:
//! stored headers and user metadata, checksums, ETags, keys, and the conditional
//! request headers. Pure code: no I/O, no s3s service machinery.

use std::collections::BTreeMap;

use base64::Engine as _;
use s3s::crypto::Checksum as _;
use s3s::dto::{ETag, ETagCondition, Timestamp};
use serde::{Deserialize, Serialize};

use super::error::{S3ApiError, S3ApiResult};

/// AWS's limit on user metadata: the `x-amz-meta-*` names and values together.
pub const MAX_USER_METADATA_BYTES: usize = 2 * 1024;
/// Largest single PUT (and part) AWS accepts.
pub const MAX_PUT_BYTES: u64 = 5 << 30;
/// Parts other than the last must be at least this long.
pub const MIN_PART_BYTES: u64 = 5 << 20;
/// Highest part number.
pub const MAX_PART_NUMBER: i32 = 10_000;

/// The checksum algorithms of `x-amz-checksum-*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChecksumAlgo {
    #[serde(rename = "CRC32")]
    Crc32,
    #[serde(rename = "CRC32C")]
    Crc32c,
    #[serde(rename = "CRC64NVME")]
    Crc64Nvme,
    #[serde(rename = "SHA1")]
    Sha1,
    #[serde(rename = "SHA256")]
    Sha256,
}

impl ChecksumAlgo {
    pub const ALL: [ChecksumAlgo; 5] = [
        ChecksumAlgo::Crc32,
        ChecksumAlgo::Crc32c,
        ChecksumAlgo::Crc64Nvme,
        ChecksumAlgo::Sha1,
        ChecksumAlgo::Sha256,
    ];

    /// `CRC32`, as in `x-amz-checksum-algorithm` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s.trim()))
    }

    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgo::Crc32 => "CRC32",
            ChecksumAlgo::Crc32c => "CRC32C",
            ChecksumAlgo::Crc64Nvme => "CRC64NVME",
            ChecksumAlgo::Sha1 => "SHA1",
            ChecksumAlgo::Sha256 => "SHA256",
        }
    }

    /// `x-amz-checksum-crc32`.
    pub fn header(self) -> &'static str {
        match self {
            ChecksumAlgo::Crc32 => "x-amz-checksum-crc32",
            ChecksumAlgo::Crc32c => "x-amz-checksum-crc32c",
            ChecksumAlgo::Crc64Nvme => "x-amz-checksum-crc64nvme",
            ChecksumAlgo::Sha1 => "x-amz-checksum-sha1",
            ChecksumAlgo::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// Digest length in bytes.
    pub fn len(self) -> usize {
        match self {
            ChecksumAlgo::Crc32 | ChecksumAlgo::Crc32c => 4,
            ChecksumAlgo::Crc64Nvme => 8,
            ChecksumAlgo::Sha1 => 20,
            ChecksumAlgo::Sha256 => 32,
        }
    }

    /// Check the shape of a base64 checksum value: `InvalidRequest` otherwise.
    pub fn check_value(self, value: &str) -> S3ApiResult<()> {
        match base64::engine::general_purpose::STANDARD.decode(value.trim()) {
            Ok(b) if b.len() == self.len() => Ok(()),
            _ => Err(S3ApiError::InvalidRequest(format!(
                "value for {} header is invalid",
                self.header()
            ))),
        }
    }

    pub fn hasher(self) -> ChecksumHasher {
        match self {
            ChecksumAlgo::Crc32 => ChecksumHasher::Crc32(s3s::crypto::Crc32::new()),
            ChecksumAlgo::Crc32c => ChecksumHasher::Crc32c(s3s::crypto::Crc32c::new()),
            ChecksumAlgo::Crc64Nvme => ChecksumHasher::Crc64Nvme(s3s::crypto::Crc64Nvme::new()),
            ChecksumAlgo::Sha1 => ChecksumHasher::Sha1(s3s::crypto::Sha1::new()),
            ChecksumAlgo::Sha256 => ChecksumHasher::Sha256(s3s::crypto::Sha256::new()),
        }
    }
}

/// A running checksum of one algorithm.
pub enum ChecksumHasher {
    Crc32(s3s::crypto::Crc32),
    Crc32c(s3s::crypto::Crc32c),
    Crc64Nvme(s3s::crypto::Crc64Nvme),
    Sha1(s3s::crypto::Sha1),
    Sha256(s3s::crypto::Sha256),
}

impl ChecksumHasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            ChecksumHasher::Crc32(h) => h.update(data),
            ChecksumHasher::Crc32c(h) => h.update(data),
            ChecksumHasher::Crc64Nvme(h) => h.update(data),
            ChecksumHasher::Sha1(h) => h.update(data),
            ChecksumHasher::Sha256(h) => h.update(data),
        }
    }

    /// The digest, base64 as in the headers.
    pub fn finish(self) -> String {
        let raw: Vec<u8> = match self {
            ChecksumHasher::Crc32(h) => h.finalize().to_vec(),
            ChecksumHasher::Crc32c(h) => h.finalize().to_vec(),
            ChecksumHasher::Crc64Nvme(h) => h.finalize().to_vec(),
            ChecksumHasher::Sha1(h) => h.finalize().as_ref().to_vec(),
            ChecksumHasher::Sha256(h) => h.finalize().as_ref().to_vec(),
        };
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

/// A stored object checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChecksum {
    pub algorithm: ChecksumAlgo,
    /// Base64; a composite multipart checksum ends in `-<parts>`.
    pub value: String,
    /// `FULL_OBJECT` or `COMPOSITE`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Everything an object answers with besides its body, as kept in the `headers`
/// column (JSON). For a multipart upload, what CreateMultipartUpload said.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// An HTTP date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// `x-amz-meta-*`, names lowercase without the prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<StoredChecksum>,
    /// Multipart uploads: the algorithm the parts are checksummed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_checksum: Option<ChecksumAlgo>,
}

impl StoredHeaders {
    pub fn to_json(&self) -> S3ApiResult<String> {
        serde_json::to_string(self).map_err(|e| S3ApiError::Internal(format!("headers: {e}")))
    }

    pub fn from_json(s: &str) -> S3ApiResult<Self> {
        serde_json::from_str(s).map_err(|e| S3ApiError::Internal(format!("stored headers: {e}")))
    }

    /// User metadata as s3s wants it (`None` when there is none).
    pub fn metadata(&self) -> Option<s3s::dto::Metadata> {
        (!self.meta.is_empty()).then(|| self.meta.clone().into_iter().collect())
    }

    /// The stored `Expires`, when it parses.
    pub fn expires_timestamp(&self) -> Option<Timestamp> {
        self.expires
            .as_deref()
            .and_then(|e| Timestamp::parse(s3s::dto::TimestampFormat::HttpDate, e).ok())
    }
}

/// Check and normalise user metadata: names lowercase, at most
/// [`MAX_USER_METADATA_BYTES`] of names and values together.
pub fn user_metadata(m: Option<s3s::dto::Metadata>) -> S3ApiResult<BTreeMap<String, String>> {
    let Some(m) = m else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    let mut total = 0usize;
    for (k, v) in m {
        total += k.len() + v.len();
        out.insert(k.to_ascii_lowercase(), v);
    }
    if total > MAX_USER_METADATA_BYTES {
        return Err(S3ApiError::MetadataTooLarge(MAX_USER_METADATA_BYTES));
    }
    Ok(out)
}

/// Format a timestamp as an HTTP date (for the stored `Expires`).
pub fn http_date(t: &Timestamp) -> Option<String> {
    let mut buf = Vec::new();
    t.format(s3s::dto::TimestampFormat::HttpDate, &mut buf)
        .ok()?;
    String::from_utf8(buf).ok()
}

/// Object keys larder refuses although they fit S3's length rule: a NUL byte, or a
/// `.`/`..` path segment. Such keys cannot round-trip through clients that
/// normalise URL paths, and a tool that mirrors a bucket to disk would write
/// outside its target with them.
pub fn check_key(key: &str) -> S3ApiResult<()> {
    if key.is_empty() {
        return Err(S3ApiError::InvalidArgument(
            "the object key is empty".into(),
        ));
    }
    if key.contains('\0') {
        return Err(S3ApiError::InvalidArgument(
            "object keys must not contain a NUL byte".into(),
        ));
    }
    if key.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(S3ApiError::InvalidArgument(
            "object keys must not contain a `.` or `..` path segment".into(),
        ));
    }
    Ok(())
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An epoch-millisecond time as an s3s timestamp.
pub fn timestamp(ms: i64) -> Timestamp {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    Timestamp::from(t)
}

/// A timestamp's seconds since the epoch.
pub fn timestamp_secs(t: &Timestamp) -> i64 {
    let mut buf = Vec::new();
    if t.format(s3s::dto::TimestampFormat::EpochSeconds, &mut buf)
        .is_err()
    {
        return 0;
    }
    let text = String::from_utf8_lossy(&buf);
    let whole = text.split('.').next().unwrap_or("0");
    whole.parse::<i64>().unwrap_or(0)
}

/// A strong ETag for the wire (`"…"` added by s3s).
pub fn etag(value: &str) -> ETag {
    ETag::Strong(value.to_owned())
}

/// A running MD5, for ETags (md-5 with its assembly; see Cargo.toml).
#[derive(Default)]
pub struct Md5(md5::Md5);

impl Md5 {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        md5::Digest::update(&mut self.0, data);
    }

    pub fn finish(self) -> [u8; 16] {
        md5::Digest::finalize(self.0).into()
    }

    /// The MD5 of `data`.
    #[cfg(test)]
    pub fn of(data: &[u8]) -> [u8; 16] {
        let mut h = Self::new();
        h.update(data);
        h.finish()
    }
}

/// The MD5 of bytes, as an ETag value.
pub fn md5_hex(digest: &[u8]) -> String {
    hex::encode(digest)
}

/// The multipart ETag: MD5 of the parts' binary MD5s, then `-<count>`. Parts whose
/// ETag is not a plain MD5 contribute their text.
pub fn multipart_etag(part_etags: &[String]) -> String {
    let mut h = Md5::new();
    for e in part_etags {
        match hex::decode(e) {
            Ok(b) if b.len() == 16 => h.update(&b),
            _ => h.update(e.as_bytes()),
        }
    }
    format!("{}-{}", hex::encode(h.finish()), part_etags.len())
}

/// Content-MD5 as sent: base64 of 16 bytes, or `InvalidDigest`.
pub fn parse_content_md5(v: &str) -> S3ApiResult<[u8; 16]> {
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| {
            S3ApiError::InvalidDigest("the Content-MD5 you specified is not valid".into())
        })
}

/// Strip quotes (and a `W/` prefix) off an ETag as a client sent it.
pub fn bare_etag(s: &str) -> &str {
    let s = s.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.trim_matches('"')
}

fn condition_matches(cond: &ETagCondition, etag: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => bare_etag(e.value()) == etag,
    }
}

/// The outcome of a read's conditional headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadCondition {
    Proceed,
    NotModified,
    PreconditionFailed,
}

/// The conditional headers of a GET or HEAD.
#[derive(Clone, Debug, Default)]
pub struct ReadConditions {
    pub if_match: Option<ETagCondition>,
    pub if_none_match: Option<ETagCondition>,
    pub if_modified_since: Option<Timestamp>,
    pub if_unmodified_since: Option<Timestamp>,
}

impl ReadConditions {
    /// RFC 9110 section 13.2.2 order, which is also what S3 documents: If-Match,
    /// else If-Unmodified-Since; then If-None-Match, else If-Modified-Since.
    /// Times compare at whole seconds, the precision of `Last-Modified`.
    pub fn evaluate(&self, etag: &str, modified_ms: i64) -> ReadCondition {
        let modified = modified_ms.div_euclid(1000);
        if let Some(c) = &self.if_match {
            if !condition_matches(c, etag) {
                return ReadCondition::PreconditionFailed;
            }
        } else if let Some(t) = &self.if_unmodified_since {
            if modified > timestamp_secs(t) {
                return ReadCondition::PreconditionFailed;
            }
        }
        if let Some(c) = &self.if_none_match {
            if condition_matches(c, etag) {
                return ReadCondition::NotModified;
            }
        } else if let Some(t) = &self.if_modified_since {
            if modified <= timestamp_secs(t) {
                return ReadCondition::NotModified;
            }
        }
        ReadCondition::Proceed
    }
}

/// The conditional headers of a write (PutObject, CompleteMultipartUpload).
#[derive(Clone, Debug, Default)]
pub struct WriteConditions {
    pub if_match: Option<ETagCondition>,
    pub if_none_match: Option<ETagCondition>,
}

impl WriteConditions {
    /// Refuse forms S3 does not take before any byte is stored: If-None-Match
    /// other than `*`.
    pub fn validate(&self) -> S3ApiResult<()> {
        match &self.if_none_match {
            Some(ETagCondition::ETag(_)) => Err(S3ApiError::NotImplemented(
                "If-None-Match on a write only takes *".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Check against the current object's ETag (`None`: no object).
    pub fn check(&self, current: Option<&str>) -> S3ApiResult<()> {
        if self.if_none_match.is_some() && current.is_some() {
            return Err(S3ApiError::PreconditionFailed);
        }
        if let Some(c) = &self.if_match {
            match current {
                None => return Err(S3ApiError::NoSuchKey),
                Some(e) if !condition_matches(c, e) => return Err(S3ApiError::PreconditionFailed),
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Part sizes of a multipart object, as stored (u64 LE each).
pub fn encode_part_sizes(sizes: &[u64]) -> Vec<u8> {
    sizes.iter().flat_map(|s| s.to_le_bytes()).collect()
}

pub fn decode_part_sizes(blob: &[u8]) -> Vec<u64> {
    blob.chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strong(s: &str) -> Option<ETagCondition> {
        Some(ETagCondition::ETag(ETag::Strong(s.into())))
    }

    fn ts(secs: i64) -> Option<Timestamp> {
        Some(timestamp(secs * 1000))
    }

    #[test]
    fn read_conditions_follow_rfc_order() {
        let e = "abc";
        let t = 1_700_000_000i64;
        let m = t * 1000 + 500;
        let ok = ReadConditions::default();
        assert_eq!(ok.evaluate(e, m), ReadCondition::Proceed);
        let c = ReadConditions {
            if_match: strong("zzz"),
            ..Default::default()
        };
        assert_eq!(c.evaluate(e, m), ReadCondition::PreconditionFailed);
        // If-Match true wins over a failing If-Unmodified-Since.
        let c = ReadConditions {
            if_match: strong("abc"),
            if_unmodified_since: ts(t - 10),
            ..Default::default()
        };
        assert_eq!(c.evaluate(e, m), ReadCondition::Proceed);
        let c = ReadConditions {
            if_unmodified_since: ts(t - 10),
            ..Default::default()
        };
        assert_eq!(c.evaluate(e, m), ReadCondition::PreconditionFailed);
        let c = ReadConditions {
            if_unmodified_since: ts(t),
            ..Default::default()
        };
        assert_eq!(c.evaluate(e, m), ReadCondition::Proceed);
        let c = ReadConditions {
            if_none_match: strong("abc"),
            ..Default::default()
        };
        assert_eq!(c.evaluate(e, m), ReadCondition::NotModified);
        let c = ReadConditions {
            if_none_match: Some(ETagCondition::Any),
            ..Default::default()
        };
        assert_eq!(c.evaluate(e, m), ReadCondition::NotModified);
        // If-None-Match false and If-Modified-Since true: 304 per S3's docs? No:
        // a non-matching If-None-Match means "modified", so If-Modified-Since is
        // not consulted.
        let c = ReadConditions {
            if_none_match: strong("zzz"),
            if_modified_since: ts(t + 10),
            ..Default::default()
        };
        assert_eq!(c.evaluate(e, m), ReadCondition::Proceed);
        let c = ReadConditions {
            if_modified_since: ts(t),
            ..Default::default()
        };
        assert_eq!(c.evaluate(e, m), ReadCondition::NotModified);
        let c = ReadConditions {
            if_modified_since: ts(t - 1),
            ..Default::default()
        };
        assert_eq!(c.evaluate(e, m), ReadCondition::Proceed);
    }

    #[test]
    fn write_conditions() {
        let c = WriteConditions {
            if_none_match: Some(ETagCondition::Any),
            ..Default::default()
        };
        assert!(c.validate().is_ok());
        assert!(c.check(None).is_ok());
        assert!(matches!(
            c.check(Some("e")),
            Err(S3ApiError::PreconditionFailed)
        ));
        let c = WriteConditions {
            if_match: strong("e"),
            ..Default::default()
        };
        assert!(matches!(c.check(None), Err(S3ApiError::NoSuchKey)));
        assert!(c.check(Some("e")).is_ok());
        assert!(matches!(
            c.check(Some("f")),
            Err(S3ApiError::PreconditionFailed)
        ));
        let c = WriteConditions {
            if_none_match: strong("e"),
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(S3ApiError::NotImplemented(_))));
    }

    #[test]
    fn keys() {
        assert!(check_key("a/b/c.txt").is_ok());
        assert!(check_key("a..b").is_ok());
        assert!(check_key("a/../b").is_err());
        assert!(check_key("..").is_err());
        assert!(check_key("./x").is_err());
        assert!(check_key("a\0b").is_err());
        assert!(check_key("").is_err());
    }

    #[test]
    fn etags_and_digests() {
        // Two parts whose MD5s are known: the multipart ETag is MD5(md5a || md5b)-2.
        let a = md5_hex(&Md5::of(b"a"));
        let b = md5_hex(&Md5::of(b"b"));
        assert_eq!(a, "0cc175b9c0f1b6a831c399e269772661");
        let mut joined = hex::decode(&a).unwrap();
        joined.extend(hex::decode(&b).unwrap());
        let want = format!("{}-2", md5_hex(&Md5::of(&joined)));
        assert_eq!(multipart_etag(&[a, b]), want);
        assert!(parse_content_md5("1B2M2Y8AsgTpgAmY7PhCfg==").is_ok());
        assert!(parse_content_md5("nope").is_err());
        assert_eq!(bare_etag("\"abc\""), "abc");
        assert_eq!(bare_etag("W/\"abc\""), "abc");
        let sizes = [5u64 << 20, 7];
        assert_eq!(decode_part_sizes(&encode_part_sizes(&sizes)), sizes);
    }

    #[test]
    fn checksums() {
        let mut h = ChecksumAlgo::Crc32.hasher();
        h.update(b"hello world");
        // CRC32 (IEEE) of "hello world" is 0x0d4a1185.
        assert_eq!(h.finish(), "DUoRhQ==");
        assert_eq!(ChecksumAlgo::parse("crc32c"), Some(ChecksumAlgo::Crc32c));
        assert!(ChecksumAlgo::Crc32.check_value("DUoRhQ==").is_ok());
        assert!(ChecksumAlgo::Crc32.check_value("DUoRhQDU").is_err());
        let m = user_metadata(Some(
            [("Color".to_string(), "blue".to_string())]
                .into_iter()
                .collect(),
        ))
        .unwrap();
        assert_eq!(m.get("color").map(String::as_str), Some("blue"));
        let big = user_metadata(Some(
            [("k".to_string(), "v".repeat(3000))].into_iter().collect(),
        ));
        assert!(matches!(big, Err(S3ApiError::MetadataTooLarge(_))));
    }
}
