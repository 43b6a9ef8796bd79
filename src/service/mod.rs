//! Cache logic: what a request means, independent of how it arrived.
//!
//! The HTTP edge and the local CLI both call in here with a [`Caller`]. Services
//! check permissions, drive the Nix format parsers, and use the chunk store and
//! the metadata database. Nothing here imports axum or rusqlite.

mod attic;
mod caches;
mod dashboard;
mod decode;
mod error;
pub mod gc;
mod readers;
mod s3_keys;
mod serve;
mod side;
mod tokens;
mod upload;
mod upstream;
mod verify;

pub use attic::{NarInfoSource, UploadPathNarInfo, UploadPathResult};
pub use caches::{CacheConfig, CacheConfigPatch, CacheCreate, KeypairSpec, RetentionPeriod};
pub use dashboard::CacheSummary;
pub use error::ServiceError;
pub use s3_keys::{S3GrantRequest, S3GrantView, S3KeyImport, S3KeySecret, S3KeyView};
pub use serve::{is_served_nar_name, ByteRange, NarBody, NarResponse};
pub use side::SideKind;
pub use tokens::{Inspected, MintRequest, Minted, RevokeRequest};
pub use upload::BodyRx;
pub use upstream::{
    parse_proxied_nar_name, validate_upstreams, UpstreamFileConfig, UpstreamSettings,
};
pub use verify::{DamagedPath, VerifyReport};

use std::sync::Arc;

use crate::auth::{Caller, Permission, TokenAuthority};
use crate::config::Config;
use crate::meta::{CacheRow, Meta};
use crate::store::ChunkStore;

/// Threads reading NAR frames for downloads: enough to overlap a few reads that
/// miss the page cache, few enough to keep read buffers in few malloc arenas.
const READER_THREADS: usize = 4;

/// The running cache server's state, shared by every request.
pub struct Larder {
    pub config: Config,
    /// Base URL for substituter and API endpoints.
    pub base_url: String,
    pub meta: Meta,
    /// `None` when opened for metadata only (the CLI beside a running server).
    store: Option<ChunkStore>,
    /// The threads that read NAR frames for downloads; `None` with the store.
    readers: Option<Arc<readers::Readers>>,
    /// Checks presented tokens (the admin token and scoped tokens) and mints new ones.
    pub tokens: Arc<TokenAuthority>,
    /// Fetches noted for access times, written in batches.
    access: gc::AccessLog,
    /// One GC pass at a time.
    gc_lock: std::sync::Mutex<()>,
    /// Wakes the server's lifecycle task for a pass now (a push went over budget).
    gc_wake: tokio::sync::Notify,
    /// Counters for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The pull-through cache: lookups, negative answers, NAR fetches.
    upstreams: upstream::Upstreams,
}

/// Totals for `larder stats`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Stats {
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub chunk_bytes_uncompressed: u64,
    pub nars: u64,
    pub store_paths: u64,
    /// Stored vs live bytes, the budget and the last GC pass.
    #[serde(default)]
    pub lifecycle: gc::LifecycleStats,
}

/// Cache names: `^[A-Za-z0-9][A-Za-z0-9-_+]{0,49}$`.
pub fn validate_cache_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'+');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::BadRequest(format!(
            "invalid cache name {name:?}: use 1-50 of A-Z a-z 0-9 - _ +, starting with a letter or digit"
        )))
    }
}

impl Larder {
    /// Open the data dir's store and metadata.
    pub fn open(
        config: Config,
        base_url: String,
        admin_token: Option<String>,
    ) -> Result<Self, ServiceError> {
        let meta = Meta::open(&config.data_dir)?;
        let store = Some(ChunkStore::open_local(&config.data_dir, config.zstd_level)?);
        let tokens = Arc::new(
            TokenAuthority::open(&config.data_dir, admin_token)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
        );
        let readers = readers::Readers::start(READER_THREADS)
            .map_err(|e| ServiceError::Internal(format!("starting NAR readers: {e}")))?;
        let upstreams = upstream::Upstreams::new(config.upstreams.clone(), proxy_dir(&config));
        let larder = Self {
            config,
            base_url,
            meta,
            store,
            readers: Some(Arc::new(readers)),
            tokens,
            access: gc::AccessLog::default(),
            gc_lock: std::sync::Mutex::new(()),
            gc_wake: tokio::sync::Notify::new(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            upstreams,
        };
        larder.clear_proxy_spool();
        larder.refresh_revoked()?;
        Ok(larder)
    }

    /// Open only the metadata: enough to manage caches while a server holds the
    /// chunk index.
    pub fn open_meta_only(config: Config, base_url: String) -> Result<Self, ServiceError> {
        let meta = Meta::open(&config.data_dir)?;
        let tokens = Arc::new(
            TokenAuthority::open(&config.data_dir, None)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
        );
        let upstreams = upstream::Upstreams::new(config.upstreams.clone(), proxy_dir(&config));
        Ok(Self {
            config,
            base_url,
            meta,
            store: None,
            readers: None,
            tokens,
            access: gc::AccessLog::default(),
            gc_lock: std::sync::Mutex::new(()),
            gc_wake: tokio::sync::Notify::new(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            upstreams,
        })
    }

    /// The chunk store, when open.
    pub fn store(&self) -> Result<&ChunkStore, ServiceError> {
        self.store
            .as_ref()
            .ok_or_else(|| ServiceError::Internal("the chunk store is not open".into()))
    }

    /// The NAR reader threads, when the store is open.
    fn readers(&self) -> Result<&Arc<readers::Readers>, ServiceError> {
        self.readers
            .as_ref()
            .ok_or_else(|| ServiceError::Internal("the chunk store is not open".into()))
    }

    /// Find a cache the caller is about to use with `perm`, answering exactly as
    /// if it did not exist when the caller may not learn that it does.
    pub fn authorize(
        &self,
        caller: &Caller,
        name: &str,
        perm: Permission,
    ) -> Result<Arc<CacheRow>, ServiceError> {
        validate_cache_name(name)?;
        let row = self.meta.cache_by_name(name)?;
        Self::authorize_row(caller, name, perm, row)
    }

    /// [`Larder::authorize`] once the cache row (or its absence) is known.
    fn authorize_row(
        caller: &Caller,
        name: &str,
        perm: Permission,
        row: Option<Arc<CacheRow>>,
    ) -> Result<Arc<CacheRow>, ServiceError> {
        let public_pull = perm == Permission::Pull && row.as_ref().is_some_and(|r| r.is_public);
        if public_pull || caller.can(name, perm) {
            return row.ok_or_else(|| ServiceError::NoSuchCache(name.to_owned()));
        }
        if caller.is_anonymous() {
            return Err(ServiceError::Unauthorized("missing token".into()));
        }
        let visible = row.as_ref().is_some_and(|r| r.is_public) || caller.has_any(name);
        if !visible {
            return Err(ServiceError::Unauthorized(format!(
                "token has no permission on cache {name:?}"
            )));
        }
        Err(ServiceError::Forbidden(format!(
            "token lacks the {} permission on cache {name:?}",
            perm.name()
        )))
    }

    /// Server-wide totals (admin only).
    pub fn stats(&self, caller: &Caller) -> Result<Stats, ServiceError> {
        require_admin(caller)?;
        let s = self.store()?.stats()?;
        let (nars, store_paths) = self.meta.counts()?;
        Ok(Stats {
            chunks: s.chunks,
            chunk_bytes: s.frame_bytes,
            chunk_bytes_uncompressed: s.raw_bytes,
            nars,
            store_paths,
            lifecycle: self.lifecycle_stats()?,
        })
    }

    /// Whether `caller` may read `/metrics` (the admin token, or `metrics` on `*`).
    pub fn authorize_metrics(&self, caller: &Caller) -> Result<(), ServiceError> {
        match caller {
            _ if caller.can_read_metrics() => Ok(()),
            Caller::Anonymous => Err(ServiceError::Unauthorized(
                "missing token: /metrics needs a token with the metrics permission".into(),
            )),
            _ => Err(ServiceError::Forbidden(
                "token lacks the metrics permission (granted on the pattern \"*\")".into(),
            )),
        }
    }

    /// The `/metrics` text, with the store's figures read now. Call from a
    /// blocking thread; the caller is checked by [`Larder::authorize_metrics`] (or
    /// not at all, on `metrics_listen`).
    pub fn render_metrics(&self) -> Result<String, ServiceError> {
        let store = self.store()?;
        let idx = store.stats()?;
        let packs = store.pack_count()?;
        let (nars, store_paths) = self.meta.counts()?;
        let lc = self.lifecycle_stats()?;
        let figures = crate::metrics::StoreFigures {
            chunks: idx.chunks,
            stored_bytes: lc.stored_bytes,
            indexed_bytes: lc.indexed_bytes,
            logical_nar_bytes: lc.logical_nar_bytes,
            packs,
            store_paths,
            nars,
            max_bytes: lc.max_bytes,
            last_gc: lc.last_gc.filter(|r| !r.dry_run),
        };
        self.metrics
            .render(&figures)
            .map_err(|e| ServiceError::Internal(format!("encoding metrics: {e}")))
    }

    /// Drop staged NARs that never got a narinfo.
    pub fn expire_staged(&self) -> Result<usize, ServiceError> {
        let ttl = i64::try_from(self.config.staged_ttl_secs).unwrap_or(i64::MAX);
        Ok(self.meta.expire_staged(ttl)?)
    }
}

/// Where NARs fetched from upstreams are spooled while clients read them.
fn proxy_dir(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("proxy")
}

pub(crate) fn require_admin(caller: &Caller) -> Result<(), ServiceError> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Anonymous => Err(ServiceError::Unauthorized("missing token".into())),
        Caller::Token(_) => Err(ServiceError::Forbidden("this needs the admin token".into())),
    }
}
