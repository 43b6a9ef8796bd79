//! Manifests: the ordered chunk list that reassembles one stream.
//!
//! Encoded as 40 bytes per chunk: 32-byte BLAKE3 id, u32 LE uncompressed length,
//! u32 LE stored frame length. The frame lengths give Content-Length and Range
//! offsets without touching the index.

/// BLAKE3 of a chunk's uncompressed bytes.
pub type ChunkId = [u8; 32];

/// One chunk of a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub raw_len: u32,
    pub frame_len: u32,
}

const ENTRY_BYTES: usize = 40;

/// The chunks of one stream, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// Uncompressed length of the whole stream.
    pub fn raw_len(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.raw_len)).sum()
    }

    /// Length of the concatenated zstd frames, as served.
    pub fn frames_len(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.frame_len)).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.chunks.len() * ENTRY_BYTES);
        for c in &self.chunks {
            out.extend_from_slice(&c.id);
            out.extend_from_slice(&c.raw_len.to_le_bytes());
            out.extend_from_slice(&c.frame_len.to_le_bytes());
        }
        out
    }

    /// Decode; `None` when the blob is not a whole number of entries.
    pub fn decode(blob: &[u8]) -> Option<Self> {
        if !blob.len().is_multiple_of(ENTRY_BYTES) {
            return None;
        }
        let chunks = blob
            .chunks_exact(ENTRY_BYTES)
            .map(|e| {
                let mut id = [0u8; 32];
                id.copy_from_slice(&e[..32]);
                let raw_len = u32::from_le_bytes([e[32], e[33], e[34], e[35]]);
                let frame_len = u32::from_le_bytes([e[36], e[37], e[38], e[39]]);
                ChunkRef {
                    id,
                    raw_len,
                    frame_len,
                }
            })
            .collect();
        Some(Manifest { chunks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Manifest {
            chunks: vec![
                ChunkRef {
                    id: [7; 32],
                    raw_len: 65536,
                    frame_len: 1234,
                },
                ChunkRef {
                    id: [9; 32],
                    raw_len: 1,
                    frame_len: 14,
                },
            ],
        };
        assert_eq!(Manifest::decode(&m.encode()), Some(m.clone()));
        assert_eq!(m.raw_len(), 65537);
        assert_eq!(m.frames_len(), 1248);
        assert_eq!(Manifest::decode(&[0; 39]), None);
    }
}
