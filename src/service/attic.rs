//! Attic's `upload-path`: one request carries a path's metadata (in the
//! `X-Attic-Nar-Info` header, or as a JSON preamble of the body) and its raw NAR.
//! The NAR is hashed while it streams into the chunk store; a NarHash or NarSize
//! mismatch stores nothing visible. Uploads here and `nix copy` PUTs land in the
//! same store and deduplicate with each other.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::decode::Compression;
use super::upload::BodyRx;
use super::{Larder, ServiceError};
use crate::auth::{Caller, Permission};
use crate::meta::StagedNar;
use crate::nix::hash::Sha256;
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::{StorePath, StorePathHash};

/// Largest accepted metadata preamble.
pub const MAX_PREAMBLE_BYTES: usize = 1 << 20;

/// The metadata of one upload, as the `attic` client sends it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct UploadPathNarInfo {
    pub cache: String,
    pub store_path_hash: String,
    pub store_path: String,
    #[serde(default)]
    pub references: Vec<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub deriver: Option<String>,
    #[serde(default)]
    pub sigs: Vec<String>,
    #[serde(default)]
    pub ca: Option<String>,
    pub nar_hash: String,
    pub nar_size: u64,
}

/// The answer to `upload-path`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum UploadPathResult {
    Uploaded {
        file_size: u64,
        frac_deduplicated: f64,
    },
    Deduplicated {
        frac_deduplicated: Option<f64>,
    },
}

/// Where the metadata is.
pub enum NarInfoSource {
    Header(String),
    Preamble(usize),
}

/// Read exactly `n` bytes from the front of a body; returns them and what was
/// left over of the last piece.
fn read_prefix(rx: &mut BodyRx, n: usize) -> Result<(Vec<u8>, Bytes), ServiceError> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match rx.blocking_recv() {
            Some(Ok(mut b)) => {
                let take = (n - out.len()).min(b.len());
                out.extend_from_slice(&b.split_to(take));
                if out.len() == n {
                    return Ok((out, b));
                }
            }
            Some(Err(e)) => return Err(ServiceError::BadRequest(format!("reading upload: {e}"))),
            None => {
                return Err(ServiceError::BadRequest(
                    "body ended inside the metadata preamble".into(),
                ))
            }
        }
    }
    Ok((out, Bytes::new()))
}

impl Larder {
    /// `PUT /_api/v1/upload-path`. Call from a blocking thread.
    pub fn upload_path(
        &self,
        caller: &Caller,
        source: NarInfoSource,
        content_encoding: Option<&str>,
        mut body: BodyRx,
    ) -> Result<UploadPathResult, ServiceError> {
        let (json, leftover) = match source {
            NarInfoSource::Header(h) => (h.into_bytes(), Bytes::new()),
            NarInfoSource::Preamble(n) => {
                if n > MAX_PREAMBLE_BYTES {
                    return Err(ServiceError::BadRequest(format!(
                        "metadata preamble of {n} bytes is over the {MAX_PREAMBLE_BYTES}-byte limit"
                    )));
                }
                read_prefix(&mut body, n)?
            }
        };
        let meta: UploadPathNarInfo = serde_json::from_slice(&json)
            .map_err(|e| ServiceError::BadRequest(format!("malformed upload metadata: {e}")))?;
        let row = self.authorize(caller, &meta.cache, Permission::Push)?;
        let info = self.narinfo_from_upload(&row.store_dir, &meta)?;
        let compression = match content_encoding {
            None => Compression::None,
            Some(e) => Compression::from_content_encoding(e)?,
        };

        if let Some(existing) = self.meta.nar_by_hash(&info.nar_hash.0)? {
            // Held so GC cannot take its chunks before the commit; a NAR GC has
            // already taken is uploaded again below.
            let hold = self.hold_stored_nar(&existing.manifest)?;
            if !existing.damaged && existing.nar_size == info.nar_size && hold.is_some() {
                let served = self.served_narinfo(&row.signing_key, &info, existing.file_size)?;
                let staged = StagedNar {
                    nar_hash: existing.nar_hash,
                    nar_size: existing.nar_size,
                    file_size: existing.file_size,
                    chunk_count: 0,
                    manifest: existing.manifest,
                };
                self.meta.commit_object(
                    row.id,
                    &staged,
                    None,
                    &meta.store_path_hash,
                    &info.store_path,
                    &served,
                )?;
                self.metrics.pushed(&meta.cache);
                tracing::info!(cache = %meta.cache, store_path = %info.store_path, "deduplicated path");
                return Ok(UploadPathResult::Deduplicated {
                    frac_deduplicated: None,
                });
            }
        }

        let nar = self.ingest_nar_from(Some(compression), leftover, body)?;
        self.check_fits(row.id, &meta.cache, nar.outcome.manifest.frames_len())?;
        if nar.nar_hash != info.nar_hash {
            return Err(ServiceError::BadRequest(format!(
                "NarHash mismatch: metadata says {}, the uploaded NAR hashes to {}",
                info.nar_hash.to_nix_string(),
                nar.nar_hash.to_nix_string()
            )));
        }
        if nar.nar_size != info.nar_size {
            return Err(ServiceError::BadRequest(format!(
                "NarSize mismatch: metadata says {}, the uploaded NAR has {} bytes",
                info.nar_size, nar.nar_size
            )));
        }
        let staged = nar.staged();
        let served = self.served_narinfo(&row.signing_key, &info, staged.file_size)?;
        self.meta.commit_object(
            row.id,
            &staged,
            None,
            &meta.store_path_hash,
            &info.store_path,
            &served,
        )?;
        self.metrics.pushed(&meta.cache);
        let file_size = staged.file_size;
        let frac = if file_size == 0 {
            1.0
        } else {
            1.0 - (nar.outcome.new_frame_bytes as f64 / file_size as f64).min(1.0)
        };
        tracing::info!(cache = %meta.cache, store_path = %info.store_path, "uploaded path");
        self.after_push(row.id);
        Ok(UploadPathResult::Uploaded {
            file_size,
            frac_deduplicated: frac,
        })
    }

    fn narinfo_from_upload(
        &self,
        store_dir: &str,
        m: &UploadPathNarInfo,
    ) -> Result<NarInfo, ServiceError> {
        let sp = StorePath::from_full_path(store_dir, &m.store_path)?;
        let hash = StorePathHash::parse(&m.store_path_hash)?;
        if sp.hash != hash {
            return Err(ServiceError::BadRequest(format!(
                "store_path_hash {} does not match store_path {}",
                m.store_path_hash, m.store_path
            )));
        }
        for r in &m.references {
            StorePath::from_basename(r)?;
        }
        let deriver = match m.deriver.as_deref() {
            None | Some("") | Some("unknown-deriver") => None,
            Some(d) => {
                let base = d.rsplit('/').next().unwrap_or(d);
                StorePath::from_basename(base)?;
                Some(base.to_owned())
            }
        };
        if m.nar_size == 0 {
            return Err(ServiceError::BadRequest("nar_size must be positive".into()));
        }
        Ok(NarInfo {
            store_path: m.store_path.clone(),
            url: String::new(),
            compression: None,
            file_hash: None,
            file_size: None,
            nar_hash: Sha256::parse(&m.nar_hash)?,
            nar_size: m.nar_size,
            references: m.references.clone(),
            deriver,
            sigs: m.sigs.clone(),
            ca: m.ca.clone().filter(|c| !c.is_empty()),
            extra: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_shapes_match_attic() {
        let up = serde_json::to_value(UploadPathResult::Uploaded {
            file_size: 10,
            frac_deduplicated: 0.5,
        })
        .unwrap();
        assert_eq!(
            up,
            serde_json::json!({"kind":"Uploaded","file_size":10,"frac_deduplicated":0.5})
        );
        let dd = serde_json::to_value(UploadPathResult::Deduplicated {
            frac_deduplicated: None,
        })
        .unwrap();
        assert_eq!(
            dd,
            serde_json::json!({"kind":"Deduplicated","frac_deduplicated":null})
        );
    }
}
