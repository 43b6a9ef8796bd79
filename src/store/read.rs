//! Reading manifests back: resolve every chunk first, then stream frames.

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

/// Read at most this many frame bytes per backend call while streaming: large
/// sequential reads, but bounded memory per download.
pub const READ_SPAN_BYTES: u64 = 1 << 20;

impl ChunkStore {
    /// Look up every chunk of `manifest` and check that its bytes exist. Fails
    /// before anything is sent when a chunk is missing, so a damaged NAR is never
    /// answered with a 200.
    pub fn resolve(&self, manifest: &Manifest) -> Result<ResolvedNar, StoreError> {
        let ids: Vec<_> = manifest.chunks.iter().map(|c| c.id).collect();
        let locs = self.index.get_many(&ids)?;
        let mut spans = Vec::with_capacity(locs.len());
        let mut last_checked: Option<(u32, u64)> = None;
        for (chunk, loc) in manifest.chunks.iter().zip(locs) {
            let loc = loc.ok_or(StoreError::Missing(chunk.id))?;
            if loc.frame_len != chunk.frame_len || loc.raw_len != chunk.raw_len {
                return Err(StoreError::Corrupt {
                    id: chunk.id,
                    reason: "index and manifest disagree on its length".into(),
                });
            }
            // One length check per segment, against the furthest record in it.
            let end = loc.offset + u64::from(loc.frame_len);
            match last_checked {
                Some((seg, upto)) if seg == loc.segment && upto >= end => {}
                _ => {
                    self.backend.check(&chunk.id, &loc)?;
                    last_checked = Some((loc.segment, end));
                }
            }
            spans.push(FrameSpan { chunk: *chunk, loc });
        }
        Ok(ResolvedNar { spans })
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
