//! The small trait the chunk store keeps its bytes behind.
//!
//! A backend appends frames, makes them durable, and reads them back verified.
//! The local [`super::PackBackend`] maps this onto append-only pack files; an
//! external S3 backend or a fault-injecting test backend can implement the same.

use bytes::Bytes;

use super::{ChunkId, StoreError};

/// Where one stored frame lives: a segment (pack) and the record's offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    pub offset: u64,
    pub frame_len: u32,
    pub raw_len: u32,
}

/// A compressed chunk on its way into a backend.
pub struct Frame<'a> {
    pub id: &'a ChunkId,
    pub raw_len: u32,
    pub bytes: &'a [u8],
}

pub trait Backend: Send + Sync {
    /// Append frames, in order. The bytes need not be durable until [`Backend::sync`].
    fn append(&self, frames: &[Frame<'_>]) -> Result<Vec<Location>, StoreError>;

    /// Make everything appended so far to these segments durable.
    fn sync(&self, segments: &[u32]) -> Result<(), StoreError>;

    /// Read frames back, each checked against its id and checksum. Adjacent
    /// locations should be read with one I/O.
    fn read(&self, items: &[(ChunkId, Location)]) -> Result<Vec<Bytes>, StoreError>;

    /// A cheap check that the location can be read (its segment exists and is long
    /// enough), without reading it.
    fn check(&self, id: &ChunkId, loc: &Location) -> Result<(), StoreError>;

    /// Every segment with the bytes it takes in storage (for a pack file: its
    /// allocated blocks, at most its length).
    fn segments(&self) -> Result<Vec<(u32, u64)>, StoreError>;

    /// The segment appends go to now, if one is open.
    fn open_segment(&self) -> Option<u32>;

    /// Close the open segment: the next append starts a new one.
    fn seal(&self) -> Result<(), StoreError>;

    /// Delete a segment no index entry names any more (durably).
    fn remove(&self, segment: u32) -> Result<(), StoreError>;

    /// Give back the storage of dead byte ranges (`(offset, len)`) of a sealed
    /// segment, leaving every other byte and the segment's length as they are.
    /// Ranges past the end are cut off. `Ok(false)` when the backend cannot.
    fn punch(&self, segment: u32, ranges: &[(u64, u64)]) -> Result<bool, StoreError>;
}
