//! Serving: nix-cache-info, narinfos, and NARs as their stored zstd frames.
//!
//! A NAR is answered with the concatenation of its chunks' stored frames (a
//! multi-frame zstd stream), never recompressed. Every chunk is looked up before
//! the status line goes out, so a missing chunk is an error status rather than a
//! short 200; a frame that fails its checksum while streaming ends the body with
//! an error, which aborts the connection.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{Larder, ServiceError};
use crate::auth::{Caller, Permission};
use crate::meta::AccessKey;
use crate::nix::base32;
use crate::store::{FrameSpan, Manifest, StoreError, READ_SPAN_BYTES};

/// A `Range: bytes=` request, before it is resolved against a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `a-b`, inclusive.
    FromTo(u64, u64),
    /// `a-`.
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parse one range; `None` for forms larder answers with the whole body:
    /// several ranges, other units, or a malformed range (RFC 9110 says to ignore
    /// an invalid Range header).
    pub fn parse(header: &str) -> Option<Self> {
        let spec = header.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.trim().split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        match (a.is_empty(), b.is_empty()) {
            (true, false) => Some(ByteRange::Suffix(b.parse().ok()?)),
            (false, true) => Some(ByteRange::From(a.parse().ok()?)),
            (false, false) => {
                let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                (a <= b).then_some(ByteRange::FromTo(a, b))
            }
            (true, true) => None,
        }
    }

    /// Resolve to `start..end` within `len`; `None` when unsatisfiable.
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        let (start, end) = match self {
            ByteRange::FromTo(a, b) => (a, b.saturating_add(1).min(len)),
            ByteRange::From(a) => (a, len),
            ByteRange::Suffix(n) => (len.saturating_sub(n), len),
        };
        if start >= len || start >= end {
            return None;
        }
        Some((start, end))
    }
}

/// A NAR body: frames as they are read, or an error that aborts the response.
pub type NarBody = futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

/// What a NAR request answers.
pub struct NarResponse {
    /// Length of the whole file (all frames).
    pub total_len: u64,
    /// The byte range answered (`0..total_len` without a Range).
    pub start: u64,
    pub end: u64,
    pub partial: bool,
    /// `None` for HEAD.
    pub body: Option<NarBody>,
}

/// The file name larder serves a NAR under: `<nar hash nix32>.nar.zst`.
pub fn served_nar_name(nar_hash: &[u8; 32]) -> String {
    format!("{}.nar.zst", base32::encode(nar_hash))
}

/// Whether `name` has the shape of a name larder serves NARs under.
pub fn is_served_nar_name(name: &str) -> bool {
    parse_served_nar_name(name).is_some()
}

fn parse_served_nar_name(name: &str) -> Option<[u8; 32]> {
    let h = name.strip_suffix(".nar.zst")?;
    if h.len() != 52 {
        return None;
    }
    base32::decode(h).ok()?.try_into().ok()
}

fn narinfo_not_found(cache: &str, path_hash: &str) -> ServiceError {
    ServiceError::NotFound(format!("{path_hash}.narinfo is not in cache {cache}"))
}

/// Frames per read: contiguous runs up to [`READ_SPAN_BYTES`], each with the byte
/// offset at which it begins in the served file (the first at `at0`).
fn groups(spans: &[FrameSpan], at0: u64) -> Vec<(std::ops::Range<usize>, u64)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut offset = at0;
    let mut bytes = 0u64;
    for (i, s) in spans.iter().enumerate() {
        if i > start && bytes + u64::from(s.chunk.frame_len) > READ_SPAN_BYTES {
            out.push((start..i, offset));
            start = i;
            offset += bytes;
            bytes = 0;
        }
        bytes += u64::from(s.chunk.frame_len);
    }
    if start < spans.len() {
        out.push((start..spans.len(), offset));
    }
    out
}

impl Larder {
    /// `GET <cache>/nix-cache-info`.
    pub fn nix_cache_info(&self, caller: &Caller, cache: &str) -> Result<String, ServiceError> {
        let row = self.authorize(caller, cache, Permission::Pull)?;
        Ok(format!(
            "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
            row.store_dir, row.priority
        ))
    }

    /// `GET <cache>/<hash>.narinfo`.
    pub fn get_narinfo(
        &self,
        caller: &Caller,
        cache: &str,
        path_hash: &str,
    ) -> Result<Bytes, ServiceError> {
        let row = self.authorize(caller, cache, Permission::Pull)?;
        let found = self.meta.narinfo(row.id, path_hash)?;
        self.metrics.narinfo(cache, found.is_some());
        let text = found.ok_or_else(|| narinfo_not_found(cache, path_hash))?;
        self.note_access(row.id, AccessKey::Path(path_hash.to_owned()));
        Ok(text)
    }

    /// [`Larder::get_narinfo`] answered from memory alone, without blocking: `None`
    /// when memory does not know the cache or the path (then call `get_narinfo`).
    pub fn get_narinfo_remembered(
        &self,
        caller: &Caller,
        cache: &str,
        path_hash: &str,
    ) -> Option<Result<Bytes, ServiceError>> {
        let row = self.meta.cache_remembered(cache)?;
        let row = match Self::authorize_row(caller, cache, Permission::Pull, Some(row)) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let known = self.meta.narinfo_remembered(row.id, path_hash)?;
        self.metrics.narinfo(cache, known.is_some());
        if known.is_some() {
            self.note_access(row.id, AccessKey::Path(path_hash.to_owned()));
        }
        Some(known.ok_or_else(|| narinfo_not_found(cache, path_hash)))
    }

    /// `HEAD <cache>/nar/<file>`: known when staged, stored under that uploaded
    /// name, or served under that name.
    pub fn nar_exists(
        &self,
        caller: &Caller,
        cache: &str,
        file_name: &str,
    ) -> Result<bool, ServiceError> {
        let row = self.authorize(caller, cache, Permission::Pull)?;
        if self.meta.nar_file_known(row.id, file_name)? {
            return Ok(true);
        }
        Ok(match parse_served_nar_name(file_name) {
            Some(h) => self
                .meta
                .nar_in_cache(row.id, &h)?
                .is_some_and(|n| !n.damaged),
            None => false,
        })
    }

    /// `GET`/`HEAD <cache>/nar/<hash>.nar.zst`, optionally one range. Call from a
    /// blocking thread; the body reads on the reader threads (`readers.rs`).
    pub fn get_nar(
        self: &Arc<Self>,
        caller: &Caller,
        cache: &str,
        file_name: &str,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<NarResponse, ServiceError> {
        let row = self.authorize(caller, cache, Permission::Pull)?;
        let not_found =
            || ServiceError::NotFound(format!("nar/{file_name} is not in cache {cache}"));
        let hash = parse_served_nar_name(file_name).ok_or_else(not_found)?;
        let nar = self
            .meta
            .nar_in_cache(row.id, &hash)?
            .ok_or_else(not_found)?;
        if nar.damaged {
            return Err(ServiceError::NotFound(format!(
                "nar/{file_name} is damaged; push the path again to repair it"
            )));
        }
        let manifest = Manifest::decode(&nar.manifest)
            .ok_or_else(|| ServiceError::Internal("stored manifest is damaged".into()))?;
        let resolved = match self.store()?.resolve(&manifest) {
            Ok(r) => r,
            Err(e) => return Err(self.damaged(nar.id, manifest, e)),
        };
        if !head {
            self.note_access(row.id, AccessKey::Nar(hash));
        }
        let total_len = resolved.frames_len();
        let (start, end, partial) = match range {
            None => (0, total_len, false),
            Some(r) => match r.resolve(total_len) {
                Some((s, e)) => (s, e, true),
                None => return Err(ServiceError::RangeNotSatisfiable(total_len)),
            },
        };
        if head {
            return Ok(NarResponse {
                total_len,
                start,
                end,
                partial,
                body: None,
            });
        }
        // Pick the frames that overlap start..end; `at0` is where the first begins.
        let mut spans = Vec::new();
        let mut at = 0u64;
        let mut at0 = 0u64;
        for s in resolved.spans {
            let len = u64::from(s.chunk.frame_len);
            if at + len > start && at < end {
                if spans.is_empty() {
                    at0 = at;
                }
                spans.push(s);
            }
            at += len;
        }
        // Read span by span on the reader threads, one span ahead of the client.
        // Each read answers with all its frames at once, trimmed to start..end.
        let reads = groups(&spans, at0);
        let spans = Arc::new(spans);
        let manifest = Arc::new(manifest);
        let me = self.clone();
        let readers = self.readers()?.clone();
        let nar_id = nar.id;
        let body = futures::stream::iter(reads)
            .map(move |(g, offset)| {
                let (me, spans, manifest) = (me.clone(), spans.clone(), manifest.clone());
                let answer = readers
                    .run(move || me.read_span(&spans[g], offset, start..end, nar_id, &manifest));
                async move {
                    match answer.await {
                        Ok(Ok(frames)) => Ok(futures::stream::iter(frames.into_iter().map(Ok))),
                        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
                        Err(e) => Err(std::io::Error::other(format!("NAR read failed: {e}"))),
                    }
                }
            })
            .buffered(2)
            .try_flatten()
            .boxed();
        Ok(NarResponse {
            total_len,
            start,
            end,
            partial,
            body: Some(body),
        })
    }

    /// Read the frames of `spans`, which begin at byte `offset` of the served file,
    /// keeping only what lies in `want`.
    fn read_span(
        self: &Arc<Self>,
        spans: &[FrameSpan],
        offset: u64,
        want: std::ops::Range<u64>,
        nar_id: i64,
        manifest: &Manifest,
    ) -> Result<Vec<Bytes>, ServiceError> {
        let frames = match self.store()?.read_frames(spans) {
            Ok(f) => f,
            Err(e) => return Err(self.damaged(nar_id, manifest.clone(), e)),
        };
        let mut out = Vec::with_capacity(frames.len());
        let mut at = offset;
        for f in frames {
            let len = f.len() as u64;
            let from = want.start.saturating_sub(at).min(len);
            let to = want.end.saturating_sub(at).min(len);
            at += len;
            if to > from {
                // Both fit in usize: they are at most the frame's length.
                out.push(f.slice(from as usize..to as usize));
            }
        }
        Ok(out)
    }

    /// A chunk of a NAR is missing or corrupt: hide the NAR's paths (so clients
    /// look elsewhere and a re-push repairs it), forget its bad chunks in the
    /// background, and describe the damage.
    fn damaged(self: &Arc<Self>, nar_id: i64, manifest: Manifest, e: StoreError) -> ServiceError {
        if e.damaged_chunk().is_none() {
            return e.into();
        }
        tracing::error!(nar_id, error = %e, "NAR is damaged; hiding its paths until re-pushed");
        if let Err(me) = self.meta.mark_damaged(&[nar_id]) {
            tracing::error!(error = %me, "could not mark NAR damaged");
        }
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("nar-check".into())
            .spawn(move || {
                if let Err(e) = me.forget_bad_chunks(&manifest) {
                    tracing::error!(error = %e, "checking damaged NAR failed");
                }
            });
        ServiceError::Damaged(format!("NAR is damaged ({e}); run larder verify"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(ByteRange::parse("bytes=0-9"), Some(ByteRange::FromTo(0, 9)));
        assert_eq!(ByteRange::parse("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(ByteRange::parse("bytes=-3"), Some(ByteRange::Suffix(3)));
        assert_eq!(ByteRange::parse("bytes=0-1,4-5"), None);
        assert_eq!(ByteRange::parse("items=0-1"), None);
        assert_eq!(ByteRange::parse("bytes=9-2"), None);
        assert_eq!(ByteRange::parse("bytes=x-2"), None);
        assert_eq!(ByteRange::FromTo(0, 9).resolve(5), Some((0, 5)));
        assert_eq!(ByteRange::From(5).resolve(5), None);
        assert_eq!(ByteRange::Suffix(3).resolve(10), Some((7, 10)));
        assert_eq!(ByteRange::Suffix(30).resolve(10), Some((0, 10)));
        assert_eq!(ByteRange::Suffix(0).resolve(10), None);
    }

    #[test]
    fn served_names_round_trip() {
        let h = [42u8; 32];
        assert_eq!(parse_served_nar_name(&served_nar_name(&h)), Some(h));
        assert_eq!(parse_served_nar_name("abc.nar.zst"), None);
    }
}
