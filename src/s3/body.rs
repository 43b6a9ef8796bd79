//! Object bodies between the network and the chunk store, streamed both ways.
//!
//! In: a task forwards the request body (already de-chunked and signature-checked
//! by s3s for aws-chunked uploads) through a small bounded channel to a blocking
//! thread, where [`BodyReader`] counts, MD5-hashes and checksums it on its way into
//! `ChunkStore::ingest`. Memory per upload is the channel plus the ingest pipeline,
//! whatever the object's size.
//!
//! Out: [`object_body`] resolves nothing itself; given a resolved manifest and a
//! byte range it streams the decompressed bytes chunk by chunk from a blocking
//! thread, or reads them inline when they are small.

use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use s3s::dto::StreamingBlob;

use super::error::{body_error, S3ApiError, S3ApiResult};
use super::object::{ChecksumAlgo, ChecksumHasher, Md5};
use crate::service::Larder;
use crate::store::{IngestOutcome, ResolvedNar};

/// Body pieces queued between the network task and the ingesting thread.
const BODY_PIECES_QUEUED: usize = 8;
/// Decompressed pieces queued between the reading thread and the response.
const OUT_PIECES_QUEUED: usize = 4;
/// A range needing at most this many stored frame bytes is read inline on the
/// async worker (one `pread` from the page cache) instead of a blocking thread.
const INLINE_READ_FRAME_BYTES: u64 = 256 * 1024;

type Piece = Result<Bytes, std::io::Error>;

/// Why reading a body failed, recorded where it happened: an `io::Error` passing
/// through the chunker loses its meaning.
type FailSlot = Arc<Mutex<Option<S3ApiError>>>;

/// Forward `body` into a channel from a task; the receiver reads it on a blocking
/// thread.
pub fn pump(body: Option<StreamingBlob>) -> tokio::sync::mpsc::Receiver<Piece> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(BODY_PIECES_QUEUED);
    if let Some(mut body) = body {
        tokio::spawn(async move {
            while let Some(item) = body.next().await {
                let item = item.map_err(|e| std::io::Error::other(e.to_string()));
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
    }
    rx
}

/// What a body turned out to be, once read to its end.
#[derive(Debug, Clone)]
pub struct BodyDigest {
    pub len: u64,
    pub md5: [u8; 16],
    /// The checksum computed with the requested algorithm, base64.
    pub checksum: Option<(ChecksumAlgo, String)>,
}

/// The MD5 and the requested checksum of a body, computed where it is read or,
/// for large bodies, on a thread of their own so that hashing overlaps chunking.
enum Hashing {
    /// Boxed: the hasher states are large, and most bodies take the other arm.
    Inline(Box<Hashers>),
    Thread {
        tx: Option<crossbeam_channel::Sender<Bytes>>,
        handle: std::thread::JoinHandle<Digests>,
    },
}

/// MD5 and the requested checksum of one body.
struct Hashers {
    md5: Md5,
    sum: Option<(ChecksumAlgo, ChecksumHasher)>,
}

impl Hashers {
    fn new(checksum: Option<ChecksumAlgo>) -> Self {
        Hashers {
            md5: Md5::new(),
            sum: checksum.map(|a| (a, a.hasher())),
        }
    }

    fn update(&mut self, piece: &[u8]) {
        self.md5.update(piece);
        if let Some((_, h)) = &mut self.sum {
            h.update(piece);
        }
    }

    fn finish(self) -> Digests {
        (self.md5.finish(), self.sum.map(|(a, h)| (a, h.finish())))
    }
}

/// A body's MD5 and its requested checksum (base64), when finished.
type Digests = ([u8; 16], Option<(ChecksumAlgo, String)>);

/// Bodies at least this long (or of unknown length) are hashed on their own
/// thread: MD5 alone runs at a few hundred MB/s, as slow as the rest of ingest.
const HASH_THREAD_MIN_BYTES: u64 = 1 << 20;
/// Pieces queued for the hashing thread.
const HASH_PIECES_QUEUED: usize = 16;

impl Hashing {
    fn new(checksum: Option<ChecksumAlgo>, expected_len: Option<u64>) -> Self {
        let inline = expected_len.is_some_and(|n| n < HASH_THREAD_MIN_BYTES);
        let spawned = if inline {
            None
        } else {
            let (tx, rx) = crossbeam_channel::bounded::<Bytes>(HASH_PIECES_QUEUED);
            std::thread::Builder::new()
                .name("s3-hash".into())
                .spawn(move || {
                    let mut hashers = Hashers::new(checksum);
                    for piece in rx {
                        hashers.update(&piece);
                    }
                    hashers.finish()
                })
                .ok()
                .map(|handle| Hashing::Thread {
                    tx: Some(tx),
                    handle,
                })
        };
        spawned.unwrap_or_else(|| Hashing::Inline(Box::new(Hashers::new(checksum))))
    }

    fn update(&mut self, piece: &Bytes) {
        match self {
            Hashing::Inline(h) => h.update(piece),
            Hashing::Thread { tx, .. } => {
                if let Some(t) = tx {
                    // A clone of `Bytes` shares the buffer: no copy.
                    let _ = t.send(piece.clone());
                }
            }
        }
    }

    fn finish(self) -> S3ApiResult<Digests> {
        match self {
            Hashing::Inline(h) => Ok(h.finish()),
            Hashing::Thread { tx, handle } => {
                drop(tx);
                handle
                    .join()
                    .map_err(|_| S3ApiError::Internal("the hashing thread panicked".into()))
            }
        }
    }
}

/// A request body as a `Read`, hashing as it goes.
pub struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Piece>,
    current: Bytes,
    len: u64,
    limit: u64,
    hashing: Hashing,
    fail: FailSlot,
}

impl BodyReader {
    pub fn new(
        rx: tokio::sync::mpsc::Receiver<Piece>,
        limit: u64,
        checksum: Option<ChecksumAlgo>,
        expected_len: Option<u64>,
    ) -> Self {
        BodyReader {
            rx,
            current: Bytes::new(),
            len: 0,
            limit,
            hashing: Hashing::new(checksum, expected_len),
            fail: Arc::new(Mutex::new(None)),
        }
    }

    fn failed(&self, e: S3ApiError) -> std::io::Error {
        let msg = e.to_string();
        if let Ok(mut slot) = self.fail.lock() {
            slot.get_or_insert(e);
        }
        std::io::Error::other(msg)
    }

    /// The recorded reason the body could not be read, if any.
    pub fn failure(&self) -> Option<S3ApiError> {
        self.fail.lock().ok().and_then(|mut s| s.take())
    }

    pub fn finish(self) -> S3ApiResult<BodyDigest> {
        let (md5, checksum) = self.hashing.finish()?;
        Ok(BodyDigest {
            len: self.len,
            md5,
            checksum,
        })
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => {
                    self.len += b.len() as u64;
                    if self.len > self.limit {
                        return Err(self.failed(S3ApiError::EntityTooLarge(format!(
                            "your proposed upload exceeds the maximum allowed size of {} bytes",
                            self.limit
                        ))));
                    }
                    self.hashing.update(&b);
                    self.current = b;
                }
                Some(Err(e)) => return Err(self.failed(body_error(&e))),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Ingest a request body into the chunk store on a blocking thread. Returns once
/// every chunk is durable and indexed.
pub async fn ingest(
    larder: &Arc<Larder>,
    body: Option<StreamingBlob>,
    limit: u64,
    checksum: Option<ChecksumAlgo>,
    expected_len: Option<u64>,
) -> S3ApiResult<(IngestOutcome, BodyDigest)> {
    let rx = pump(body);
    let l = larder.clone();
    tokio::task::spawn_blocking(move || {
        let mut reader = BodyReader::new(rx, limit, checksum, expected_len);
        let store = l.store().map_err(|e| S3ApiError::Internal(e.to_string()))?;
        let outcome = store.ingest(&mut reader);
        if let Some(why) = reader.failure() {
            return Err(why);
        }
        let outcome = outcome?;
        Ok((outcome, reader.finish()?))
    })
    .await
    .map_err(|e| S3ApiError::Internal(format!("ingest task: {e}")))?
}

/// Ingest bytes that come from larder itself (a ranged copy), hashing them.
pub fn ingest_reader<R: Read>(
    larder: &Larder,
    source: R,
) -> S3ApiResult<(IngestOutcome, BodyDigest)> {
    struct Tee<R> {
        inner: R,
        md5: Md5,
        len: u64,
    }
    impl<R: Read> Read for Tee<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.md5.update(&buf[..n]);
            self.len += n as u64;
            Ok(n)
        }
    }
    let store = larder
        .store()
        .map_err(|e| S3ApiError::Internal(e.to_string()))?;
    let mut tee = Tee {
        inner: source,
        md5: Md5::new(),
        len: 0,
    };
    let outcome = store.ingest(&mut tee).map_err(|e| match e {
        crate::store::StoreError::Source(io) => S3ApiError::Internal(format!("copy source: {io}")),
        other => S3ApiError::Store(other),
    })?;
    let md5 = tee.md5.finish();
    Ok((
        outcome,
        BodyDigest {
            len: tee.len,
            md5,
            checksum: None,
        },
    ))
}

/// A blocking `Read` over decompressed bytes `start..end` of a resolved manifest
/// (for ranged copies), reading chunk by chunk.
pub struct RangeReader<'a> {
    larder: &'a Larder,
    resolved: &'a ResolvedNar,
    pos: u64,
    end: u64,
    current: Bytes,
}

impl<'a> RangeReader<'a> {
    pub fn new(larder: &'a Larder, resolved: &'a ResolvedNar, start: u64, end: u64) -> Self {
        RangeReader {
            larder,
            resolved,
            pos: start,
            end,
            current: Bytes::new(),
        }
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.current.is_empty() {
            if self.pos >= self.end {
                return Ok(0);
            }
            let store = self
                .larder
                .store()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            // One chunk at a time: the chunk holding `pos`.
            let (i, off) = crate::store::raw_position(&self.resolved.spans, self.pos);
            let Some(span) = self.resolved.spans.get(i) else {
                return Ok(0);
            };
            let chunk_end = self.pos - off + u64::from(span.chunk.raw_len);
            let until = chunk_end.min(self.end);
            let mut got = Bytes::new();
            store
                .read_raw_range(self.resolved, self.pos, until, |b| {
                    got = b;
                    false
                })
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if got.is_empty() {
                return Ok(0);
            }
            self.pos += got.len() as u64;
            self.current = got;
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// The response body for bytes `start..end` of a resolved object.
pub fn object_body(
    larder: &Arc<Larder>,
    resolved: ResolvedNar,
    start: u64,
    end: u64,
) -> S3ApiResult<StreamingBlob> {
    if start >= end {
        return Ok(StreamingBlob::new(s3s::Body::from(Bytes::new())));
    }
    let (first, _) = crate::store::raw_position(&resolved.spans, start);
    let (last, last_off) = crate::store::raw_position(&resolved.spans, end);
    let last = if last_off == 0 { last } else { last + 1 };
    let frames: u64 = resolved.spans[first..last.min(resolved.spans.len())]
        .iter()
        .map(|s| u64::from(s.chunk.frame_len))
        .sum();
    let store = larder
        .store()
        .map_err(|e| S3ApiError::Internal(e.to_string()))?;
    if frames <= INLINE_READ_FRAME_BYTES {
        let mut out: Vec<Bytes> = Vec::new();
        store.read_raw_range(&resolved, start, end, |b| {
            out.push(b);
            true
        })?;
        let body = if out.len() == 1 {
            out.pop().unwrap_or_default()
        } else {
            Bytes::from(out.concat())
        };
        return Ok(StreamingBlob::new(s3s::Body::from(body)));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(OUT_PIECES_QUEUED);
    let l = larder.clone();
    tokio::task::spawn_blocking(move || {
        let Ok(store) = l.store() else {
            let _ = tx.blocking_send(Err(std::io::Error::other("the chunk store is not open")));
            return;
        };
        let result =
            store.read_raw_range(&resolved, start, end, |b| tx.blocking_send(Ok(b)).is_ok());
        if let Err(e) = result {
            tracing::error!(error = %e, "reading an S3 object failed mid-body; aborting the response");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(StreamingBlob::wrap(stream))
}

/// Hold the chunks of a stored manifest that a new object or part will name by
/// reference (a copy), and check GC has not taken one: keep the hold until the
/// new row is committed (`docs/design/gc.md`).
pub fn hold_manifest(larder: &Larder, manifest: &[u8]) -> S3ApiResult<crate::store::Hold> {
    let m = crate::store::Manifest::decode(manifest)
        .ok_or_else(|| S3ApiError::Internal("an object manifest does not decode".into()))?;
    let ids: Vec<crate::store::ChunkId> = m.chunks.iter().map(|c| c.id).collect();
    let store = larder
        .store()
        .map_err(|e| S3ApiError::Internal(e.to_string()))?;
    store.hold_existing(&ids).map_err(|e| match e {
        crate::store::StoreError::Missing(_) => S3ApiError::NoSuchKey,
        other => S3ApiError::Store(other),
    })
}
