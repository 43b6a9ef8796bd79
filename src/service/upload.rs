//! Uploads over the Nix protocol: a NAR is staged, and its narinfo commits it.
//!
//! `PUT nar/<file>` streams the body through the decoder its name asks for, checks
//! it is a NAR while hashing it (NarHash, NarSize), cuts it into the chunk store,
//! and records it as staged under that file name. `PUT <hash>.narinfo` then makes
//! the path visible only if the staged NAR's hash and size match the narinfo.
//! Until then nothing of the upload can be read.

use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256 as Sha256Hasher};

use super::decode::{self, Compression};
use super::{Larder, ServiceError};
use crate::auth::{Caller, Permission};
use crate::meta::StagedNar;
use crate::nix::hash::Sha256;
use crate::nix::nar::NarValidator;
use crate::nix::narinfo::NarInfo;
use crate::nix::signing::{PublicKey, SecretKey};
use crate::store::{IngestOutcome, Manifest, StoreError};

/// The body of a streamed upload, as pieces from the HTTP edge.
pub type BodyRx = tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>;

/// Why a streamed upload was refused: recorded by the readers in the pipeline,
/// because an `io::Error` passing through the chunker loses its meaning.
#[derive(Debug, Clone)]
enum Reject {
    Nar(String),
    TooLarge(String),
    Body(String),
}

type RejectSlot = Arc<Mutex<Option<Reject>>>;

fn set_reject(slot: &RejectSlot, r: Reject) {
    if let Ok(mut s) = slot.lock() {
        s.get_or_insert(r);
    }
}

/// Reads the HTTP body pieces, blocking the (blocking-pool) thread between them.
struct ChannelReader {
    rx: BodyRx,
    current: Bytes,
    received: u64,
    limit: u64,
    reject: RejectSlot,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => {
                    self.received += b.len() as u64;
                    if self.received > self.limit {
                        let msg = format!("upload is over the {}-byte limit", self.limit);
                        set_reject(&self.reject, Reject::TooLarge(msg.clone()));
                        return Err(std::io::Error::other(msg));
                    }
                    self.current = b;
                }
                Some(Err(e)) => {
                    let msg = format!("upload body could not be read: {e}");
                    set_reject(&self.reject, Reject::Body(msg.clone()));
                    return Err(std::io::Error::other(msg));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Hashes, measures and validates the decoded NAR on its way to the chunker.
struct NarTee<R> {
    inner: R,
    hasher: Sha256Hasher,
    validator: NarValidator,
    size: u64,
    limit: u64,
    reject: RejectSlot,
}

impl<R: Read> Read for NarTee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = &buf[..n];
        self.size += n as u64;
        if self.size > self.limit {
            let msg = format!("NAR is over the {}-byte limit", self.limit);
            set_reject(&self.reject, Reject::TooLarge(msg.clone()));
            return Err(std::io::Error::other(msg));
        }
        if let Err(e) = self.validator.feed(data) {
            set_reject(&self.reject, Reject::Nar(e.to_string()));
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.to_string(),
            ));
        }
        self.hasher.update(data);
        Ok(n)
    }
}

/// A NAR that went through the chunker: its hash, size and chunks.
pub(crate) struct StreamedNar {
    pub nar_hash: Sha256,
    pub nar_size: u64,
    pub outcome: IngestOutcome,
}

impl StreamedNar {
    pub(crate) fn staged(&self) -> StagedNar {
        let m = &self.outcome.manifest;
        StagedNar {
            nar_hash: self.nar_hash.0,
            nar_size: self.nar_size,
            file_size: m.frames_len(),
            chunk_count: m.chunks.len() as u64,
            manifest: m.encode(),
        }
    }
}

impl Larder {
    /// Stream one NAR (in `compression`, or sniffed when `None`) into the chunk
    /// store, checking it is a whole NAR. Call from a blocking thread.
    pub(crate) fn ingest_nar(
        &self,
        compression: Option<Compression>,
        body: BodyRx,
    ) -> Result<StreamedNar, ServiceError> {
        self.ingest_nar_from(compression, Bytes::new(), body)
    }

    /// Like [`Larder::ingest_nar`], with `first` as the body's opening bytes.
    pub(crate) fn ingest_nar_from(
        &self,
        compression: Option<Compression>,
        first: Bytes,
        body: BodyRx,
    ) -> Result<StreamedNar, ServiceError> {
        let reject: RejectSlot = Arc::new(Mutex::new(None));
        let limit = self.config.max_nar_bytes;
        let raw = ChannelReader {
            rx: body,
            received: first.len() as u64,
            current: first,
            limit,
            reject: reject.clone(),
        };
        let body_err = |e: std::io::Error| ServiceError::BadRequest(format!("reading upload: {e}"));
        let (kind, reader) = match compression {
            Some(c) => (c, Box::new(raw) as Box<dyn Read + Send>),
            None => decode::sniff(raw).map_err(body_err)?,
        };
        let decoded = decode::decoder(kind, reader).map_err(body_err)?;
        let mut tee = NarTee {
            inner: decoded,
            hasher: Sha256Hasher::new(),
            validator: NarValidator::new(),
            size: 0,
            limit,
            reject: reject.clone(),
        };
        let result = self.store()?.ingest(&mut tee);
        let outcome = match result {
            Ok(o) => o,
            Err(StoreError::Source(e)) => {
                let why = reject.lock().ok().and_then(|s| s.clone());
                return Err(match why {
                    Some(Reject::Nar(m)) => ServiceError::BadRequest(m),
                    Some(Reject::TooLarge(m)) => ServiceError::TooLarge(m),
                    Some(Reject::Body(m)) => ServiceError::BadRequest(m),
                    None => {
                        ServiceError::BadRequest(format!("upload does not decode as {kind:?}: {e}"))
                    }
                });
            }
            Err(e) => return Err(e.into()),
        };
        tee.validator.finish()?;
        Ok(StreamedNar {
            nar_hash: Sha256(tee.hasher.finalize().into()),
            nar_size: tee.size,
            outcome,
        })
    }

    /// `PUT <cache>/nar/<file>`: stage a NAR. Call from a blocking thread.
    pub fn put_nar(
        &self,
        caller: &Caller,
        cache: &str,
        file_name: &str,
        body: BodyRx,
    ) -> Result<(), ServiceError> {
        let row = self.authorize(caller, cache, Permission::Push)?;
        let compression = Compression::from_file_name(file_name)?;
        let nar = self.ingest_nar(compression, body)?;
        self.check_fits(row.id, cache, nar.outcome.manifest.frames_len())?;
        self.meta.stage_nar(row.id, file_name, &nar.staged())?;
        tracing::info!(
            cache,
            file_name,
            nar_size = nar.nar_size,
            new_chunks = nar.outcome.new_chunks,
            "staged NAR"
        );
        Ok(())
    }

    /// `PUT <cache>/<hash>.narinfo`: commit a staged (or already stored) NAR as a
    /// visible path, signed with the cache's key.
    pub fn put_narinfo(
        &self,
        caller: &Caller,
        cache: &str,
        path_hash: &str,
        body: Vec<u8>,
        content_encoding: Option<&str>,
    ) -> Result<(), ServiceError> {
        let row = self.authorize(caller, cache, Permission::Push)?;
        let body = match content_encoding {
            Some(enc) => decode::decode_small(
                Compression::from_content_encoding(enc)?,
                body,
                self.config.max_small_body,
            )?,
            None => body,
        };
        let text = String::from_utf8(body)
            .map_err(|_| ServiceError::BadRequest("narinfo is not UTF-8".into()))?;
        let info = NarInfo::parse(&text)?;
        let (store_dir, sp) = info.split_store_path()?;
        if store_dir != row.store_dir {
            return Err(ServiceError::BadRequest(format!(
                "narinfo StorePath is not in cache store dir {}",
                row.store_dir
            )));
        }
        if sp.hash.to_nix32() != path_hash {
            return Err(ServiceError::BadRequest(format!(
                "narinfo StorePath {} does not match {path_hash}.narinfo",
                info.store_path
            )));
        }
        let file_name = info
            .url
            .strip_prefix("nar/")
            .filter(|f| !f.is_empty() && !f.contains('/'))
            .ok_or_else(|| {
                ServiceError::BadRequest(format!("narinfo URL {:?} is not nar/<file>", info.url))
            })?;
        let mut _hold = None;
        let staged = match self.meta.staged_nar(row.id, file_name)? {
            Some(mut s) => {
                let m = Manifest::decode(&s.manifest)
                    .ok_or_else(|| ServiceError::Internal("staged manifest is damaged".into()))?;
                s.file_size = m.frames_len();
                s.chunk_count = m.chunks.len() as u64;
                s
            }
            None => match self.meta.nar_by_file(row.id, file_name)? {
                Some(n) if !n.damaged && {
                    // Held so GC cannot take its chunks before the commit.
                    _hold = self.hold_stored_nar(&n.manifest)?;
                    _hold.is_some()
                } => StagedNar {
                    nar_hash: n.nar_hash,
                    nar_size: n.nar_size,
                    file_size: n.file_size,
                    chunk_count: 0,
                    manifest: n.manifest,
                },
                _ => {
                    return Err(ServiceError::BadRequest(format!(
                        "NAR nar/{file_name} was not uploaded to cache {cache}: PUT it before its narinfo"
                    )))
                }
            },
        };
        if staged.nar_hash != info.nar_hash.0 {
            return Err(ServiceError::BadRequest(format!(
                "NarHash mismatch: narinfo says {}, the uploaded NAR hashes to {}",
                info.nar_hash.to_nix_string(),
                Sha256(staged.nar_hash).to_nix_string()
            )));
        }
        if staged.nar_size != info.nar_size {
            return Err(ServiceError::BadRequest(format!(
                "NarSize mismatch: narinfo says {}, the uploaded NAR has {} bytes",
                info.nar_size, staged.nar_size
            )));
        }
        let served = self.served_narinfo(&row.signing_key, &info, staged.file_size)?;
        self.meta.commit_object(
            row.id,
            &staged,
            Some(file_name),
            path_hash,
            &info.store_path,
            &served,
        )?;
        self.metrics.pushed(cache);
        tracing::info!(cache, store_path = %info.store_path, "committed path");
        self.after_push(row.id);
        Ok(())
    }

    /// The narinfo larder serves for an uploaded one: its own URL and compression,
    /// the cache's signature first, then uploader signatures that verify against a
    /// trusted upload key.
    pub(crate) fn served_narinfo(
        &self,
        signing_key: &str,
        uploaded: &NarInfo,
        file_size: u64,
    ) -> Result<String, ServiceError> {
        let key = SecretKey::parse(signing_key)
            .map_err(|e| ServiceError::Internal(format!("cache signing key: {e}")))?;
        let fingerprint = uploaded.fingerprint()?;
        let trusted: Vec<PublicKey> = self
            .config
            .trusted_upload_keys
            .iter()
            .filter_map(|k| PublicKey::parse(k).ok())
            .filter(|k| k.name != key.name)
            .collect();
        let mut sigs = vec![key.sign(&fingerprint)];
        for s in &uploaded.sigs {
            if trusted.iter().any(|k| k.verify(&fingerprint, s)) && !sigs.contains(s) {
                sigs.push(s.clone());
            }
        }
        let served = NarInfo {
            store_path: uploaded.store_path.clone(),
            url: format!(
                "nar/{}",
                super::serve::served_nar_name(&uploaded.nar_hash.0)
            ),
            compression: Some("zstd".into()),
            file_hash: None,
            file_size: Some(file_size),
            nar_hash: uploaded.nar_hash,
            nar_size: uploaded.nar_size,
            references: uploaded.references.clone(),
            deriver: uploaded.deriver.clone(),
            sigs,
            ca: uploaded.ca.clone(),
            extra: Vec::new(),
        };
        Ok(served.render())
    }
}
