//! ListObjects (v1) and ListObjectsV2: prefix, delimiter and CommonPrefixes,
//! max-keys, marker / start-after / continuation tokens, and `encoding-type=url`.
//!
//! One scan serves both versions: walk keys in byte order from a resume point,
//! roll keys that have the delimiter after the prefix up into their common prefix
//! and jump past all of them in one index seek. A resume point ("after X") also
//! skips the keys of a common prefix that is not after X, which is how S3 treats
//! a marker that names a common prefix. A v2 continuation token is that resume
//! point, base64url-encoded.

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use s3s::dto::{
    CommonPrefix, EncodingType, ListObjectsInput, ListObjectsOutput, ListObjectsV2Input,
    ListObjectsV2Output, Object, ObjectStorageClass,
};
use s3s::{S3Request, S3Response};

use super::bucket::{bucket, owner};
use super::dispatch::{caller, LarderS3};
use super::error::{S3ApiError, S3ApiResult};
use super::object::{etag, timestamp};
use crate::meta::{KeyWindow, Meta, ObjectSummary};

/// Largest page, and the default.
pub const MAX_KEYS: usize = 1000;
/// Rows fetched per index query while scanning: a full page and one more, to
/// tell whether it is truncated.
const SCAN_BATCH: usize = MAX_KEYS + 1;

/// What `encoding-type=url` leaves alone: RFC 3986 unreserved characters and `/`.
const URL_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// The smallest byte string greater than every string that starts with `p`;
/// `None` when there is none (empty, or all `0xff`).
pub fn prefix_end(p: &[u8]) -> Option<Vec<u8>> {
    let mut v = p.to_vec();
    while let Some(last) = v.pop() {
        if last < 0xff {
            v.push(last + 1);
            return Some(v);
        }
    }
    None
}

/// One listing request, however it was spelled.
#[derive(Clone, Debug, Default)]
pub struct Scan<'a> {
    pub prefix: &'a [u8],
    /// Empty means none.
    pub delimiter: &'a [u8],
    /// List only what sorts after this (a marker, start-after or token).
    pub after: Option<&'a [u8]>,
    pub max: usize,
}

/// A page of results.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub objects: Vec<ObjectSummary>,
    pub prefixes: Vec<Vec<u8>>,
    pub truncated: bool,
    /// The last key or common prefix on the page.
    pub last: Option<Vec<u8>>,
}

/// Run a scan over one bucket.
pub fn scan(meta: &Meta, bucket_id: i64, q: &Scan<'_>) -> S3ApiResult<Page> {
    let mut page = Page::default();
    if q.max == 0 {
        return Ok(page);
    }
    let below = if q.prefix.is_empty() {
        None
    } else {
        prefix_end(q.prefix)
    };
    // The next key to consider: (bytes, inclusive).
    let mut cursor: Option<(Vec<u8>, bool)> = match q.after {
        Some(a) if a >= q.prefix => Some((a.to_vec(), false)),
        _ if !q.prefix.is_empty() => Some((q.prefix.to_vec(), true)),
        _ => None,
    };
    let count = |p: &Page| p.objects.len() + p.prefixes.len();
    'scan: loop {
        let window = KeyWindow {
            lower: cursor.as_ref().map(|(k, inc)| (k.as_slice(), *inc)),
            below: below.as_deref(),
        };
        // Enough rows to fill the page and see whether one more follows.
        let want = (q.max - count(&page) + 1).min(SCAN_BATCH);
        let batch = meta.s3_list_objects(bucket_id, window, want)?;
        let full = batch.len() == want;
        if batch.is_empty() {
            break;
        }
        for o in batch {
            if !o.key.starts_with(q.prefix) {
                // Past the prefix (only possible when it has no end).
                break 'scan;
            }
            let rest = &o.key[q.prefix.len()..];
            let rolled = if q.delimiter.is_empty() {
                None
            } else {
                find(rest, q.delimiter)
                    .map(|at| o.key[..q.prefix.len() + at + q.delimiter.len()].to_vec())
            };
            match rolled {
                Some(cp) => {
                    let skip = q.after.is_some_and(|a| cp.as_slice() <= a);
                    if !skip {
                        if count(&page) == q.max {
                            page.truncated = true;
                            break 'scan;
                        }
                        page.last = Some(cp.clone());
                        page.prefixes.push(cp.clone());
                    }
                    match prefix_end(&cp) {
                        Some(end) => cursor = Some((end, true)),
                        None => break 'scan,
                    }
                    continue 'scan;
                }
                None => {
                    if count(&page) == q.max {
                        page.truncated = true;
                        break 'scan;
                    }
                    cursor = Some((o.key.clone(), false));
                    page.last = Some(o.key.clone());
                    page.objects.push(o);
                }
            }
        }
        if !full {
            break;
        }
    }
    Ok(page)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `max-keys`: 0..=1000 (more is clamped, as S3 does), negative is refused.
pub fn max_keys(v: Option<i32>) -> S3ApiResult<usize> {
    match v {
        None => Ok(MAX_KEYS),
        Some(n) if n < 0 => Err(S3ApiError::InvalidArgument(
            "max-keys must be a non-negative integer".into(),
        )),
        Some(n) => Ok(usize::try_from(n).unwrap_or(MAX_KEYS).min(MAX_KEYS)),
    }
}

/// Whether `encoding-type` asks for URL encoding; anything else is refused.
pub fn url_encoding(e: Option<&EncodingType>) -> S3ApiResult<bool> {
    match e.map(|e| e.as_str()) {
        None => Ok(false),
        Some(s) if s.eq_ignore_ascii_case(EncodingType::URL) => Ok(true),
        Some(other) => Err(S3ApiError::InvalidArgument(format!(
            "invalid encoding type {other:?}: only \"url\" is supported"
        ))),
    }
}

/// A listing string for the response, URL-encoded when asked.
pub fn show(bytes: &[u8], encode: bool) -> String {
    let s = String::from_utf8_lossy(bytes);
    if encode {
        utf8_percent_encode(&s, URL_ENCODE).to_string()
    } else {
        s.into_owned()
    }
}

fn objects(page: &Page, encode: bool, with_owner: Option<&s3s::dto::Owner>) -> Vec<Object> {
    page.objects
        .iter()
        .map(|o| Object {
            key: Some(show(&o.key, encode)),
            size: i64::try_from(o.size).ok(),
            e_tag: Some(etag(&o.etag)),
            last_modified: Some(timestamp(o.modified_ms)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            owner: with_owner.cloned(),
            ..Default::default()
        })
        .collect()
}

fn prefixes(page: &Page, encode: bool) -> Vec<CommonPrefix> {
    page.prefixes
        .iter()
        .map(|p| CommonPrefix {
            prefix: Some(show(p, encode)),
        })
        .collect()
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

pub(crate) async fn list_objects(
    s3: &LarderS3,
    req: S3Request<ListObjectsInput>,
) -> S3ApiResult<S3Response<ListObjectsOutput>> {
    let c = caller(&req)?;
    let input = &req.input;
    let b = bucket(s3, &input.bucket)?;
    let encode = url_encoding(input.encoding_type.as_ref())?;
    let max = max_keys(input.max_keys)?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let delimiter = input.delimiter.clone().unwrap_or_default();
    let marker = non_empty(input.marker.clone());
    let page = scan(
        &s3.larder.meta,
        b.id,
        &Scan {
            prefix: prefix.as_bytes(),
            delimiter: delimiter.as_bytes(),
            after: marker.as_deref().map(str::as_bytes),
            max,
        },
    )?;
    // S3 gives NextMarker only with a delimiter; without one, clients use the
    // last key.
    let next_marker = (page.truncated && !delimiter.is_empty())
        .then(|| page.last.as_deref().map(|l| show(l, encode)))
        .flatten();
    let own = owner(c);
    Ok(S3Response::new(ListObjectsOutput {
        name: Some(b.name),
        prefix: Some(show(prefix.as_bytes(), encode)),
        marker: Some(
            marker
                .as_deref()
                .map(|m| show(m.as_bytes(), encode))
                .unwrap_or_default(),
        ),
        max_keys: i32::try_from(max).ok(),
        is_truncated: Some(page.truncated),
        contents: Some(objects(&page, encode, Some(&own))),
        common_prefixes: Some(prefixes(&page, encode)),
        delimiter: non_empty(Some(delimiter)).map(|d| show(d.as_bytes(), encode)),
        next_marker,
        encoding_type: input.encoding_type.clone(),
        ..Default::default()
    }))
}

pub(crate) fn decode_token(t: &str) -> S3ApiResult<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t.trim())
        .map_err(|_| {
            S3ApiError::InvalidArgument("the continuation token provided is incorrect".into())
        })
}

pub(crate) fn encode_token(after: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after)
}

pub(crate) async fn list_objects_v2(
    s3: &LarderS3,
    req: S3Request<ListObjectsV2Input>,
) -> S3ApiResult<S3Response<ListObjectsV2Output>> {
    let c = caller(&req)?;
    let input = &req.input;
    let b = bucket(s3, &input.bucket)?;
    let encode = url_encoding(input.encoding_type.as_ref())?;
    let max = max_keys(input.max_keys)?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let delimiter = input.delimiter.clone().unwrap_or_default();
    let start_after = non_empty(input.start_after.clone());
    let token = non_empty(input.continuation_token.clone());
    // A continuation token wins over start-after.
    let after: Option<Vec<u8>> = match &token {
        Some(t) => Some(decode_token(t)?),
        None => start_after.as_ref().map(|s| s.as_bytes().to_vec()),
    };
    let page = scan(
        &s3.larder.meta,
        b.id,
        &Scan {
            prefix: prefix.as_bytes(),
            delimiter: delimiter.as_bytes(),
            after: after.as_deref(),
            max,
        },
    )?;
    let next = page
        .truncated
        .then(|| page.last.as_deref().map(encode_token))
        .flatten();
    let fetch_owner = input.fetch_owner.unwrap_or(false);
    let own = owner(c);
    let key_count = page.objects.len() + page.prefixes.len();
    Ok(S3Response::new(ListObjectsV2Output {
        name: Some(b.name),
        prefix: Some(show(prefix.as_bytes(), encode)),
        max_keys: i32::try_from(max).ok(),
        key_count: i32::try_from(key_count).ok(),
        continuation_token: token,
        is_truncated: Some(page.truncated),
        next_continuation_token: next,
        contents: Some(objects(&page, encode, fetch_owner.then_some(&own))),
        common_prefixes: Some(prefixes(&page, encode)),
        delimiter: non_empty(Some(delimiter)).map(|d| show(d.as_bytes(), encode)),
        encoding_type: input.encoding_type.clone(),
        start_after: start_after.map(|s| show(s.as_bytes(), encode)),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::NewObject;

    fn setup(keys: &[&str]) -> (tempfile::TempDir, Meta, i64) {
        let d = tempfile::tempdir().unwrap();
        let m = Meta::open(d.path()).unwrap();
        m.s3_bucket_create("b", 0).unwrap();
        for k in keys {
            let o = NewObject {
                size: 1,
                etag: "e".into(),
                modified_ms: 0,
                headers: "{}".into(),
                part_sizes: None,
                manifest: vec![],
            };
            m.s3_object_put("b", k.as_bytes(), &o, |_| Ok::<(), ()>(()))
                .unwrap();
        }
        let id = m.s3_bucket("b").unwrap().unwrap().id;
        (d, m, id)
    }

    fn names(p: &Page) -> (Vec<String>, Vec<String>) {
        (
            p.objects
                .iter()
                .map(|o| String::from_utf8(o.key.clone()).unwrap())
                .collect(),
            p.prefixes
                .iter()
                .map(|o| String::from_utf8(o.clone()).unwrap())
                .collect(),
        )
    }

    fn run(m: &Meta, id: i64, prefix: &str, delim: &str, after: Option<&str>, max: usize) -> Page {
        scan(
            m,
            id,
            &Scan {
                prefix: prefix.as_bytes(),
                delimiter: delim.as_bytes(),
                after: after.map(str::as_bytes),
                max,
            },
        )
        .unwrap()
    }

    #[test]
    fn delimiter_and_markers_paginate_like_s3() {
        // The s3-tests `test_bucket_list_delimiter_prefix` walk.
        let (_d, m, id) = setup(&[
            "asdf",
            "boo/bar",
            "boo/baz/xyzzy",
            "cquux/thud",
            "cquux/bla",
        ]);
        let p = run(&m, id, "", "/", None, 1);
        assert_eq!(names(&p), (vec!["asdf".into()], vec![]));
        assert!(p.truncated);
        let p = run(&m, id, "", "/", Some("asdf"), 1);
        assert_eq!(names(&p), (vec![], vec!["boo/".into()]));
        assert!(p.truncated);
        let p = run(&m, id, "", "/", Some("boo/"), 1);
        assert_eq!(names(&p), (vec![], vec!["cquux/".into()]));
        assert!(!p.truncated);
        let p = run(&m, id, "boo/", "/", None, 1000);
        assert_eq!(names(&p), (vec!["boo/bar".into()], vec!["boo/baz/".into()]));
        let p = run(&m, id, "", "", None, 1000);
        assert_eq!(p.objects.len(), 5);
        assert!(!p.truncated);
        let p = run(&m, id, "", "", None, 0);
        assert!(p.objects.is_empty() && !p.truncated);
        let p = run(&m, id, "", "", None, 5);
        assert!(!p.truncated);
        let p = run(&m, id, "c", "", Some("cquux/bla"), 10);
        assert_eq!(names(&p).0, vec!["cquux/thud".to_string()]);
        // A marker before the prefix starts at the prefix.
        let p = run(&m, id, "cquux/", "", Some("a"), 10);
        assert_eq!(p.objects.len(), 2);
    }

    #[test]
    fn multi_character_delimiters_and_no_match() {
        let (_d, m, id) = setup(&["a--b", "a--c--d", "b"]);
        let p = run(&m, id, "", "--", None, 1000);
        assert_eq!(names(&p), (vec!["b".into()], vec!["a--".into()]));
        let p = run(&m, id, "zzz", "/", None, 1000);
        assert_eq!(p, Page::default());
    }

    #[test]
    fn helpers() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(show("a b+c/é".as_bytes(), true), "a%20b%2Bc/%C3%A9");
        assert_eq!(show(b"plain", false), "plain");
        assert!(max_keys(Some(-1)).is_err());
        assert_eq!(max_keys(Some(5000)).unwrap(), 1000);
        let t = encode_token(b"x/y");
        assert_eq!(decode_token(&t).unwrap(), b"x/y");
        assert!(decode_token("!!").is_err());
    }
}
