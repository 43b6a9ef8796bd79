//! `larder verify`: check every stored NAR against its NarHash.
//!
//! Every chunk is read, decompressed and checked against its BLAKE3 id, and the
//! whole NAR is hashed with SHA-256. A damaged NAR hides its paths and its bad
//! chunks are dropped from the index, so the next push of any path that carries
//! them stores them again: a re-push repairs it.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use super::{require_admin, Larder, ServiceError};
use crate::auth::Caller;
use crate::store::{ChunkId, Manifest, StoreError};

/// One damaged store path.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DamagedPath {
    pub cache: String,
    pub store_path: String,
    pub reason: String,
}

/// What verify found.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub nars_checked: u64,
    pub nars_damaged: u64,
    pub damaged: Vec<DamagedPath>,
}

impl Larder {
    /// Read every chunk of a manifest; forget the bad ones. Returns the first
    /// problem (if any) and the SHA-256 of the reassembled bytes.
    fn check_manifest(
        &self,
        manifest: &Manifest,
    ) -> Result<(Option<String>, [u8; 32]), ServiceError> {
        let store = self.store()?;
        let mut hasher = Sha256::new();
        let mut bad: Vec<ChunkId> = Vec::new();
        let mut first: Option<String> = None;
        let ids: Vec<ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
        // Resolve one chunk at a time so a missing chunk does not hide the rest.
        for (i, chunk) in manifest.chunks.iter().enumerate() {
            let one = Manifest {
                chunks: vec![*chunk],
            };
            let result = store.resolve(&one).and_then(|r| match r.spans.first() {
                Some(span) => store.read_chunk(span),
                None => Err(StoreError::Missing(ids[i])),
            });
            match result {
                Ok(data) => hasher.update(&data),
                Err(e) => {
                    if let Some(id) = e.damaged_chunk() {
                        bad.push(id);
                        first.get_or_insert_with(|| e.to_string());
                    } else {
                        return Err(e.into());
                    }
                }
            }
        }
        if !bad.is_empty() {
            let unique: HashSet<ChunkId> = bad.into_iter().collect();
            let list: Vec<ChunkId> = unique.into_iter().collect();
            store.forget(&list)?;
        }
        Ok((first, hasher.finalize().into()))
    }

    /// Forget the unreadable chunks of one manifest (after damage was seen while
    /// serving).
    pub(crate) fn forget_bad_chunks(&self, manifest: &Manifest) -> Result<(), ServiceError> {
        self.check_manifest(manifest).map(|_| ())
    }

    /// Check every NAR (admin only).
    pub fn verify(&self, caller: &Caller) -> Result<VerifyReport, ServiceError> {
        require_admin(caller)?;
        let mut report = VerifyReport::default();
        for nar in self.meta.all_nars()? {
            report.nars_checked += 1;
            let reason = match Manifest::decode(&nar.manifest) {
                None => Some("manifest does not decode".to_owned()),
                Some(m) => {
                    let (problem, digest) = self.check_manifest(&m)?;
                    match problem {
                        Some(p) => Some(p),
                        None if digest != nar.nar_hash || m.raw_len() != nar.nar_size => {
                            Some("NAR does not match its NarHash".to_owned())
                        }
                        None if nar.damaged => {
                            Some("NAR was found damaged earlier and not re-pushed".to_owned())
                        }
                        None => None,
                    }
                }
            };
            if let Some(reason) = reason {
                report.nars_damaged += 1;
                self.meta.mark_damaged(&[nar.id])?;
                for (cache, store_path) in self.meta.paths_of_nar(nar.id)? {
                    report.damaged.push(DamagedPath {
                        cache,
                        store_path,
                        reason: reason.clone(),
                    });
                }
            }
        }
        Ok(report)
    }
}
