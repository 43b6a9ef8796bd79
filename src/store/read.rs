//! Reading manifests back: resolve every chunk first, then stream frames.

use std::collections::HashMap;

use bytes::Bytes;

use super::backend::Location;
use super::chunker::decompress;
use super::{ChunkRef, ChunkStore, Manifest, StoreError};

/// One chunk of a resolved manifest: what it is and where it lives.
#[derive(Clone, Copy, Debug)]
pub struct FrameSpan {
    pub chunk: ChunkRef,
    pub loc: Location,
}

/// A manifest whose every chunk was found in the index and in its segment.
#[derive(Clone, Debug)]
pub struct ResolvedNar {
    pub spans: Vec<FrameSpan>,
    /// Keeps the packs these spans point into until the download ends, even if
    /// compaction moves their records meanwhile.
    pub epoch: Option<std::sync::Arc<super::ReadEpoch>>,
}

impl ResolvedNar {
    /// Length of the concatenated frames.
    pub fn frames_len(&self) -> u64 {
        self.spans
            .iter()
            .map(|s| u64::from(s.chunk.frame_len))
            .sum()
    }
}

/// The chunk that holds uncompressed byte `offset`, and `offset`'s position in it
/// (`spans.len()` and 0 when `offset` is at or past the end).
pub fn raw_position(spans: &[FrameSpan], offset: u64) -> (usize, u64) {
    let mut at = 0u64;
    for (i, s) in spans.iter().enumerate() {
        let len = u64::from(s.chunk.raw_len);
        if offset < at + len {
            return (i, offset - at);
        }
        at += len;
    }
    (spans.len(), 0)
}

/// Read at most this many frame bytes per backend call while streaming: large
/// sequential reads, but bounded memory per download.
pub const READ_SPAN_BYTES: u64 = 256 << 10;

impl ChunkStore {
    /// Look up every chunk of `manifest` and check that its bytes exist. Fails
    /// before anything is sent when a chunk is missing, so a damaged NAR is never
    /// answered with a 200.
    pub fn resolve(&self, manifest: &Manifest) -> Result<ResolvedNar, StoreError> {
        // The epoch before the lookup: a pack compacted after it stays until this
        // resolution is dropped.
        let epoch = self.epochs.current();
        let ids: Vec<_> = manifest.chunks.iter().map(|c| c.id).collect();
        let locs = self.index.get_many(&ids)?;
        let mut spans = Vec::with_capacity(locs.len());
        // The record that reaches furthest into each segment: one check per segment.
        let mut furthest: HashMap<u32, FrameSpan> = HashMap::new();
        for (chunk, loc) in manifest.chunks.iter().zip(locs) {
            let loc = loc.ok_or(StoreError::Missing(chunk.id))?;
            if loc.frame_len != chunk.frame_len || loc.raw_len != chunk.raw_len {
                return Err(StoreError::Corrupt {
                    id: chunk.id,
                    reason: "index and manifest disagree on its length".into(),
                });
            }
            let span = FrameSpan { chunk: *chunk, loc };
            let end = |s: &FrameSpan| s.loc.offset + u64::from(s.loc.frame_len);
            furthest
                .entry(loc.segment)
                .and_modify(|f| {
                    if end(&span) > end(f) {
                        *f = span;
                    }
                })
                .or_insert(span);
            spans.push(span);
        }
        for f in furthest.values() {
            self.backend.check(&f.chunk.id, &f.loc)?;
        }
        Ok(ResolvedNar { spans, epoch })
    }

    /// Read the verified frames of `spans`, in order.
    pub fn read_frames(&self, spans: &[FrameSpan]) -> Result<Vec<Bytes>, StoreError> {
        let items: Vec<_> = spans.iter().map(|s| (s.chunk.id, s.loc)).collect();
        self.backend.read(&items)
    }

    /// Read one chunk and decompress it, checking it hashes to its id.
    pub fn read_chunk(&self, span: &FrameSpan) -> Result<Vec<u8>, StoreError> {
        let frames = self.read_frames(std::slice::from_ref(span))?;
        let frame = frames.first().ok_or(StoreError::Missing(span.chunk.id))?;
        let data = decompress(frame, span.chunk.raw_len).map_err(|e| StoreError::Corrupt {
            id: span.chunk.id,
            reason: format!("zstd frame does not decode: {e}"),
        })?;
        if blake3::hash(&data).as_bytes() != &span.chunk.id {
            return Err(StoreError::Corrupt {
                id: span.chunk.id,
                reason: "content does not hash to the chunk id".into(),
            });
        }
        Ok(data)
    }

    /// Stream the uncompressed bytes `start..end` of a resolved manifest to `emit`,
    /// one decompressed chunk (or the part of it inside the range) at a time, in
    /// order. Only the chunks that overlap the range are read, located by their
    /// `raw_len`s; frames are read in batches of up to [`READ_SPAN_BYTES`], so memory
    /// stays bounded whatever the length. Each frame's CRC32C is checked by the
    /// backend and its zstd content checksum by the decoder. `emit` returns false to
    /// stop early (the reader went away).
    pub fn read_raw_range(
        &self,
        resolved: &ResolvedNar,
        start: u64,
        end: u64,
        mut emit: impl FnMut(Bytes) -> bool,
    ) -> Result<(), StoreError> {
        let (first, mut skip) = raw_position(&resolved.spans, start);
        let mut pos = start;
        let mut i = first;
        while pos < end && i < resolved.spans.len() {
            // One batch: consecutive chunks up to READ_SPAN_BYTES of frames (at least
            // one), and no further than the range needs.
            let mut j = i;
            let mut frames = 0u64;
            let mut raw_end = pos - skip;
            while j < resolved.spans.len() && raw_end < end {
                let f = u64::from(resolved.spans[j].chunk.frame_len);
                if j > i && frames + f > READ_SPAN_BYTES {
                    break;
                }
                frames += f;
                raw_end += u64::from(resolved.spans[j].chunk.raw_len);
                j += 1;
            }
            let batch = &resolved.spans[i..j];
            let read = self.read_frames(batch)?;
            for (span, frame) in batch.iter().zip(read) {
                let data =
                    decompress(&frame, span.chunk.raw_len).map_err(|e| StoreError::Corrupt {
                        id: span.chunk.id,
                        reason: format!("zstd frame does not decode: {e}"),
                    })?;
                let from = usize::try_from(skip).unwrap_or(usize::MAX).min(data.len());
                let want = usize::try_from(end - pos).unwrap_or(usize::MAX);
                let to = from.saturating_add(want).min(data.len());
                skip = 0;
                if to > from {
                    let mut b = Bytes::from(data);
                    let piece = b.split_off(from).slice(..to - from);
                    pos += piece.len() as u64;
                    if !emit(piece) {
                        return Ok(());
                    }
                }
                if pos >= end {
                    break;
                }
            }
            i = j;
        }
        Ok(())
    }

    /// Reassemble a whole manifest in memory (tests and small objects only).
    pub fn read_all(&self, manifest: &Manifest) -> Result<Vec<u8>, StoreError> {
        let resolved = self.resolve(manifest)?;
        let mut out = Vec::new();
        for span in &resolved.spans {
            out.extend_from_slice(&self.read_chunk(span)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ranges_read_only_what_they_need() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open_local(dir.path(), 3).unwrap();
        let bytes = crate::store::test_data(3_000_000, 99);
        let m = store.ingest(&bytes[..]).unwrap().manifest;
        let resolved = store.resolve(&m).unwrap();
        assert!(resolved.spans.len() > 10);
        let len = bytes.len() as u64;
        let first = u64::from(resolved.spans[0].chunk.raw_len);
        for (a, b) in [
            (0, len),
            (0, 1),
            (first - 1, first + 1),
            (first, first),
            (12_345, 2_222_222),
            (len - 1, len),
            (len - 70_000, len + 10),
        ] {
            let mut out = Vec::new();
            let mut calls = 0;
            store
                .read_raw_range(&resolved, a, b, |piece| {
                    calls += 1;
                    out.extend_from_slice(&piece);
                    true
                })
                .unwrap();
            let want = &bytes[a as usize..(b.min(len)) as usize];
            assert_eq!(out.len(), want.len(), "{a}..{b}");
            assert!(out == want, "{a}..{b}");
            if b - a <= 1 {
                assert!(calls <= 1);
            }
        }
        assert_eq!(raw_position(&resolved.spans, first), (1, 0));
        assert_eq!(
            raw_position(&resolved.spans, len),
            (resolved.spans.len(), 0)
        );
        // Stopping early is honoured.
        let mut calls = 0;
        store
            .read_raw_range(&resolved, 0, len, |_| {
                calls += 1;
                false
            })
            .unwrap();
        assert_eq!(calls, 1);
    }
}
