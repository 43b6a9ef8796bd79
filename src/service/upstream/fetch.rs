//! NARs of proxied paths: one upstream fetch per NAR, however many clients ask.
//!
//! The first request starts a task that belongs to no client: it GETs the
//! upstream's NAR, decodes it, and feeds it through the upload path (NAR check,
//! SHA-256, chunker) and into a spool file in `<data-dir>/proxy/`. Clients read
//! the spool as it grows, from byte 0, but never its last byte before the NarHash
//! and NarSize matched and the path was committed: a mismatch, a truncated body or
//! a stalled upstream ends every client's body with an error (an aborted
//! connection, never a 200 with a wrong body), and nothing is committed.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Semaphore};

use super::{compression_of, parse_proxied_nar_name, render_served, resolve_url, UpstreamError};
use crate::auth::{Caller, Permission};
use crate::meta::{CacheRow, ProxiedRow};
use crate::nix::narinfo::NarInfo;
use crate::nix::signing::SecretKey;
use crate::service::{Larder, NarBody, NarResponse, ServiceError};

/// The most a client reads from the spool at once.
const SPOOL_READ: u64 = 256 << 10;

/// Where a fetch is.
#[derive(Clone, Debug)]
enum State {
    /// This many decoded, checked-so-far bytes are in the spool.
    Running(u64),
    /// Hash and size matched and the path is committed.
    Done,
    /// Nothing was committed; why.
    Failed(Arc<str>),
}

struct Fetch {
    spool: PathBuf,
    state: watch::Receiver<State>,
}

type FetchKey = (i64, [u8; 32]);

/// The running fetches of a server.
pub(super) struct Fetches {
    spool_dir: PathBuf,
    slots: Arc<Semaphore>,
    running: Mutex<HashMap<FetchKey, Arc<Fetch>>>,
    seq: AtomicU64,
}

impl Fetches {
    pub(super) fn new(spool_dir: PathBuf, max: usize) -> Self {
        Self {
            spool_dir,
            slots: Arc::new(Semaphore::new(max)),
            running: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        }
    }

    /// Remove spool files a previous run left (called when the server opens the
    /// store, before any fetch).
    pub(super) fn clear_spool(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.spool_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// What a plain NAR request gets.
enum Join {
    Stored,
    Spool(Arc<Fetch>, std::fs::File),
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

impl Larder {
    /// Clear the spool of a previous run (the server, at start).
    pub(crate) fn clear_proxy_spool(&self) {
        self.upstreams.fetches.clear_spool();
    }

    /// `GET`/`HEAD <cache>/nar/<nar hash>.nar`: the uncompressed NAR of a path,
    /// from the store when it is stored, else from the one upstream fetch of it.
    pub async fn get_plain_nar(
        self: &Arc<Self>,
        caller: Caller,
        cache: String,
        file: String,
        head: bool,
    ) -> Result<NarResponse, ServiceError> {
        let not_found = || ServiceError::NotFound(format!("nar/{file} is not in cache {cache}"));
        let hash = parse_proxied_nar_name(&file).ok_or_else(not_found)?;
        let rt = tokio::runtime::Handle::current();
        let me = self.clone();
        let (c, f) = (cache.clone(), file.clone());
        let mut resp =
            tokio::task::spawn_blocking(move || me.plain_nar(&rt, &caller, &c, &f, &hash, head))
                .await
                .map_err(internal)??;
        // Wait for the first bytes (at most the upstream timeout) before the
        // status line, so an upstream that fails at once is a 502, not a 200
        // cut short.
        if let Some(mut body) = resp.body.take() {
            match body.next().await {
                Some(Err(e)) => return Err(ServiceError::Upstream(e.to_string())),
                Some(Ok(first)) => {
                    resp.body = Some(
                        futures::stream::once(async { Ok(first) })
                            .chain(body)
                            .boxed(),
                    );
                }
                None => resp.body = Some(futures::stream::empty().boxed()),
            }
        }
        Ok(resp)
    }

    fn plain_nar(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        caller: &Caller,
        cache: &str,
        file: &str,
        hash: &[u8; 32],
        head: bool,
    ) -> Result<NarResponse, ServiceError> {
        let row = self.authorize(caller, cache, Permission::Pull)?;
        if self.meta.nar_in_cache(row.id, hash)?.is_some() {
            return self.stored_plain_nar(caller, cache, hash, head);
        }
        let proxied = self
            .meta
            .proxied_by_nar(row.id, hash)?
            .into_iter()
            .next()
            .ok_or_else(|| ServiceError::NotFound(format!("nar/{file} is not in cache {cache}")))?;
        let nar_size = proxied.nar_size;
        if head {
            return Ok(NarResponse {
                total_len: nar_size,
                start: 0,
                end: nar_size,
                partial: false,
                body: None,
            });
        }
        match self.join_or_start(rt, &row, proxied)? {
            Join::Stored => self.stored_plain_nar(caller, cache, hash, head),
            Join::Spool(fetch, file) => Ok(NarResponse {
                total_len: nar_size,
                start: 0,
                end: nar_size,
                partial: false,
                body: Some(spool_body(file, fetch.state.clone(), nar_size)),
            }),
        }
    }

    /// A stored NAR, uncompressed: its zstd frames decoded one by one.
    fn stored_plain_nar(
        self: &Arc<Self>,
        caller: &Caller,
        cache: &str,
        hash: &[u8; 32],
        head: bool,
    ) -> Result<NarResponse, ServiceError> {
        let row = self.authorize(caller, cache, Permission::Pull)?;
        let nar_size = self
            .meta
            .nar_in_cache(row.id, hash)?
            .map(|n| n.nar_size)
            .ok_or_else(|| ServiceError::NotFound("the NAR is no longer stored".into()))?;
        let name = crate::service::serve::served_nar_name(hash);
        let resp = self.get_nar(caller, cache, &name, None, head)?;
        let body = resp.body.map(|b| {
            b.map(|frame| frame.and_then(|f| zstd::stream::decode_all(&f[..]).map(Bytes::from)))
                .boxed()
        });
        Ok(NarResponse {
            total_len: nar_size,
            start: 0,
            end: nar_size,
            partial: false,
            body,
        })
    }

    /// Join the running fetch of this NAR, or start one; `Stored` when it was
    /// committed meanwhile.
    fn join_or_start(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        row: &Arc<CacheRow>,
        proxied: ProxiedRow,
    ) -> Result<Join, ServiceError> {
        let fetches = &self.upstreams.fetches;
        let key = (row.id, proxied.nar_hash);
        let mut running = fetches
            .running
            .lock()
            .map_err(|_| internal("proxy fetches lock poisoned"))?;
        if let Some(f) = running.get(&key) {
            if let Ok(file) = std::fs::File::open(&f.spool) {
                return Ok(Join::Spool(f.clone(), file));
            }
        }
        // A fetch commits before it leaves this map, so under the lock either it
        // is here or its path is stored.
        if self.meta.nar_in_cache(row.id, &proxied.nar_hash)?.is_some() {
            return Ok(Join::Stored);
        }
        std::fs::create_dir_all(&fetches.spool_dir)
            .map_err(|e| internal(format!("creating {}: {e}", fetches.spool_dir.display())))?;
        let n = fetches.seq.fetch_add(1, Ordering::Relaxed);
        let spool = fetches.spool_dir.join(format!(
            "{}-{n}.nar",
            crate::nix::base32::encode(&proxied.nar_hash)
        ));
        let writer = std::fs::File::create(&spool)
            .map_err(|e| internal(format!("creating {}: {e}", spool.display())))?;
        let reader = std::fs::File::open(&spool)
            .map_err(|e| internal(format!("opening {}: {e}", spool.display())))?;
        let (tx, rx) = watch::channel(State::Running(0));
        let fetch = Arc::new(Fetch {
            spool: spool.clone(),
            state: rx,
        });
        running.insert(key, fetch.clone());
        drop(running);
        tracing::info!(cache = %row.name, store_path = %proxied.store_path, upstream = %proxied.upstream_url, "fetching NAR from upstream");
        rt.spawn(
            self.clone()
                .run_fetch(row.clone(), proxied, tx, writer, key, spool),
        );
        Ok(Join::Spool(fetch, reader))
    }

    /// The fetch task: fetch, check, commit; then tell the clients and clean up.
    async fn run_fetch(
        self: Arc<Self>,
        row: Arc<CacheRow>,
        proxied: ProxiedRow,
        tx: watch::Sender<State>,
        writer: std::fs::File,
        key: FetchKey,
        spool: PathBuf,
    ) {
        let state = match self.fetch_and_commit(&row, &proxied, &tx, writer).await {
            Ok(()) => State::Done,
            Err(e) => {
                tracing::warn!(cache = %row.name, store_path = %proxied.store_path, error = %e, "NAR from upstream not stored");
                State::Failed(Arc::from(e.to_string()))
            }
        };
        tx.send_replace(state);
        if let Ok(mut running) = self.upstreams.fetches.running.lock() {
            running.remove(&key);
        }
        let _ = std::fs::remove_file(&spool);
    }

    async fn fetch_and_commit(
        self: &Arc<Self>,
        row: &Arc<CacheRow>,
        p: &ProxiedRow,
        tx: &watch::Sender<State>,
        mut writer: std::fs::File,
    ) -> Result<(), ServiceError> {
        let _slot = self
            .upstreams
            .fetches
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(internal)?;
        let url = resolve_url(&p.upstream_url, &p.nar_url);
        let compression = compression_of(&p.compression).ok_or_else(|| {
            ServiceError::Upstream(format!(
                "NAR compression {:?} is not supported",
                p.compression
            ))
        })?;
        let resp = match self.upstreams.get(&url).await {
            Ok(r) => r,
            Err(e) => {
                self.upstreams.note(&p.upstream_url, Err(&e));
                return Err(e.into());
            }
        };
        let status = resp.status().as_u16();
        if status != 200 {
            let e = UpstreamError::Status {
                url: url.clone(),
                status,
            };
            self.upstreams.note(&p.upstream_url, Err(&e));
            return Err(e.into());
        }
        self.upstreams.note(&p.upstream_url, Ok(()));
        let (btx, brx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        let me = self.clone();
        let progress = tx.clone();
        let nar_size = p.nar_size;
        let ingest = tokio::task::spawn_blocking(move || {
            let mut written = 0u64;
            let mut spool = |d: &[u8]| -> std::io::Result<()> {
                writer.write_all(d)?;
                written += d.len() as u64;
                progress.send_replace(State::Running(written));
                Ok(())
            };
            me.ingest_nar_with(
                Some(compression),
                Bytes::new(),
                brx,
                nar_size,
                Some(&mut spool),
            )
        });
        let timeout = self.upstreams.settings.timeout;
        let mut body = resp.into_body();
        let pumped: Result<(), UpstreamError> = loop {
            match tokio::time::timeout(timeout, body.frame()).await {
                Err(_) => {
                    let _ = btx
                        .send(Err(std::io::Error::other("upstream stalled")))
                        .await;
                    break Err(UpstreamError::Timeout {
                        url: url.clone(),
                        secs: timeout.as_secs(),
                    });
                }
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => {
                    let _ = btx.send(Err(std::io::Error::other(e.to_string()))).await;
                    break Err(UpstreamError::Transport {
                        url: url.clone(),
                        message: super::error_chain(&e),
                    });
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if btx.send(Ok(data)).await.is_err() {
                            // The ingest stopped early; its error says why.
                            break Ok(());
                        }
                    }
                }
            }
        };
        drop(btx);
        let ingested = ingest.await.map_err(internal)?;
        if let Err(e) = pumped {
            self.upstreams.note(&p.upstream_url, Err(&e));
            return Err(e.into());
        }
        let nar = ingested.map_err(|e| match e {
            ServiceError::BadRequest(m) | ServiceError::TooLarge(m) => {
                ServiceError::Upstream(format!("upstream {url}: the NAR does not check out: {m}"))
            }
            other => other,
        })?;
        if nar.nar_hash.0 != p.nar_hash || nar.nar_size != p.nar_size {
            return Err(ServiceError::Upstream(format!(
                "upstream {url}: the NAR hashes to {} ({} bytes), not the signed NarHash {} ({} bytes)",
                nar.nar_hash.to_nix_string(),
                nar.nar_size,
                crate::nix::hash::Sha256(p.nar_hash).to_nix_string(),
                p.nar_size
            )));
        }
        let me = self.clone();
        let row2 = row.clone();
        let p2 = p.clone();
        tokio::task::spawn_blocking(move || me.commit_fetched(&row2, &p2, nar))
            .await
            .map_err(internal)?
    }

    /// Commit every proxied path of the cache that names this NAR.
    fn commit_fetched(
        &self,
        row: &CacheRow,
        p: &ProxiedRow,
        nar: crate::service::upload::StreamedNar,
    ) -> Result<(), ServiceError> {
        let staged = nar.staged();
        let key = SecretKey::parse(&row.signing_key)
            .map_err(|e| internal(format!("cache {} signing key: {e}", row.name)))?;
        let mut paths = self.meta.proxied_by_nar(row.id, &p.nar_hash)?;
        if !paths.iter().any(|q| q.path_hash == p.path_hash) {
            paths.push(p.clone());
        }
        for q in &paths {
            let info = NarInfo::parse(&q.narinfo)?;
            let served = render_served(&key, &info, &info.sigs, Some(staged.file_size))?;
            self.meta
                .commit_object(row.id, &staged, None, &q.path_hash, &q.store_path, &served)?;
            self.meta.drop_proxied(row.id, &q.path_hash)?;
            tracing::info!(cache = %row.name, store_path = %q.store_path, "stored path from upstream");
        }
        // The chunks are named by committed manifests now.
        drop(nar);
        self.after_push(row.id);
        Ok(())
    }
}

/// A client's body: the spool as it grows, its last byte only once the fetch is
/// done; an error (which aborts the connection) when the fetch fails.
fn spool_body(file: std::fs::File, rx: watch::Receiver<State>, nar_size: u64) -> NarBody {
    let file = tokio::fs::File::from_std(file);
    futures::stream::unfold(Some((file, rx, 0u64)), move |st| async move {
        let (mut file, mut rx, pos) = st?;
        if pos >= nar_size {
            return None;
        }
        loop {
            let state = rx.borrow_and_update().clone();
            let avail = match state {
                State::Running(n) => n.min(nar_size.saturating_sub(1)),
                State::Done => nar_size,
                State::Failed(why) => {
                    return Some((
                        Err(std::io::Error::other(format!(
                            "upstream fetch failed: {why}"
                        ))),
                        None,
                    ))
                }
            };
            if pos < avail {
                let want = (avail - pos).min(SPOOL_READ) as usize;
                let mut buf = vec![0u8; want];
                return match file.read(&mut buf).await {
                    Ok(0) => Some((Err(std::io::Error::other("the spool ended early")), None)),
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), Some((file, rx, pos + n as u64))))
                    }
                    Err(e) => Some((Err(e), None)),
                };
            }
            if rx.changed().await.is_err() && !matches!(*rx.borrow(), State::Done) {
                return Some((Err(std::io::Error::other("the upstream fetch ended")), None));
            }
        }
    })
    .boxed()
}
