//! NARs of proxied paths: one upstream fetch per NAR, however many clients ask.
//!
//! The first request starts a task that belongs to no client. It GETs the
//! upstream's NAR and runs two stages: a decoder that undoes the upstream's
//! compression, checks the bytes are a NAR no longer than the signed NarSize,
//! hashes them and appends them to a spool file in `<data-dir>/proxy/`; and,
//! behind it, the chunk store ingesting from that spool (the upload path's
//! chunker, with its hold on the chunks until the commit). Clients read the spool
//! as it grows, from byte 0, but never its last byte before NarHash and NarSize
//! matched: a mismatch, a truncated body or a stalled upstream ends every
//! client's body with an error (an aborted connection, never a 200 with a wrong
//! body), and nothing is committed. A checked NAR is committed once the ingest
//! has caught up, before the fetch leaves the map of running fetches.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256 as Sha256Hasher};
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Semaphore};

use super::{compression_of, parse_proxied_nar_name, render_served, resolve_url, UpstreamError};
use crate::auth::{Caller, Permission};
use crate::meta::{CacheRow, ProxiedRow};
use crate::metrics::upstream as metrics;
use crate::nix::nar::NarValidator;
use crate::nix::narinfo::NarInfo;
use crate::nix::signing::SecretKey;
use crate::service::{Larder, NarBody, NarResponse, ServiceError};

/// The most a client reads from the spool at once.
const SPOOL_READ: u64 = 1 << 20;
/// The least a client reads from the spool at once while the fetch runs.
const SPOOL_MIN: u64 = 256 << 10;
/// The nice value of the threads that store fetched NARs where the idle class
/// cannot be had: clients (and the decoder they wait for) come first; the
/// store catches up after.
const INGEST_NICE: i32 = 19;
/// Compression threads of those ingests.
const INGEST_THREADS: usize = 2;

/// Put the calling thread in Linux's idle scheduling class (`SCHED_IDLE`: it
/// runs only on a core nothing else wants), else at the lowest nice value.
/// Both are per thread on Linux, and threads it starts inherit them. A fetched
/// NAR is already safe in the spool, so storing it can wait for a quiet core;
/// clients, and the decoder they read behind, never wait for it. Failing to
/// lower the priority is harmless.
fn lower_priority() {
    let idle = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler and setpriority with pid/who 0 change only the
    // calling thread's scheduling; `idle` outlives the call.
    unsafe {
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, 0, INGEST_NICE);
        }
    }
}

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
    /// The low-priority compression threads of proxy ingests, made on first use.
    pool: std::sync::OnceLock<Arc<rayon::ThreadPool>>,
}

impl Fetches {
    pub(super) fn new(spool_dir: PathBuf, max: usize) -> Self {
        Self {
            spool_dir,
            slots: Arc::new(Semaphore::new(max)),
            running: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            pool: std::sync::OnceLock::new(),
        }
    }

    fn ingest_pool(&self) -> Result<Arc<rayon::ThreadPool>, ServiceError> {
        if let Some(p) = self.pool.get() {
            return Ok(p.clone());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(INGEST_THREADS)
            .thread_name(|i| format!("larder-proxy-zstd-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(|e| internal(format!("starting the proxy ingest threads: {e}")))?;
        Ok(self.pool.get_or_init(|| Arc::new(pool)).clone())
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
            // A fetch whose task is gone (it would have left the map) is not joined.
            let alive = f.state.has_changed().is_ok();
            if let (true, Ok(file)) = (alive, std::fs::File::open(&f.spool)) {
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
        let running = self.metrics.upstream.running();
        let state = match self
            .fetch_and_commit(&row, &proxied, &tx, writer, &spool)
            .await
        {
            Ok(()) => State::Done,
            Err(e) => {
                // Counted as checked already when its clients were given all of it.
                if !matches!(*tx.borrow(), State::Done) {
                    (self.metrics.upstream)
                        .fetch_ended(&proxied.upstream_url, metrics::Fetch::failed);
                }
                tracing::warn!(cache = %row.name, store_path = %proxied.store_path, error = %e, "NAR from upstream not stored");
                State::Failed(Arc::from(e.to_string()))
            }
        };
        drop(running);
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
        writer: std::fs::File,
        spool: &std::path::Path,
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
                self.note_upstream(&p.upstream_url, Err(&e));
                return Err(e.into());
            }
        };
        let status = resp.status().as_u16();
        if status != 200 {
            let e = UpstreamError::Status {
                url: url.clone(),
                status,
            };
            self.note_upstream(&p.upstream_url, Err(&e));
            return Err(e.into());
        }
        self.note_upstream(&p.upstream_url, Ok(()));

        // Two stages: the decoder checks and spools at the upstream's pace (the
        // clients follow it); the chunk store ingests from the spool behind it.
        let shared = Arc::new(Spooled::default());
        let (btx, brx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        let decode = {
            let (p, tx, shared, url) = (p.clone(), tx.clone(), shared.clone(), url.clone());
            tokio::task::spawn_blocking(move || {
                decode_to_spool(brx, compression, &p, writer, &tx, &shared, &url)
            })
        };
        let ingest = {
            let me = self.clone();
            let reader = SpoolReader {
                file: std::fs::File::open(spool)
                    .map_err(|e| internal(format!("opening {}: {e}", spool.display())))?,
                pos: 0,
                shared: shared.clone(),
            };
            let (itx, irx) = tokio::sync::oneshot::channel();
            let pool = self.upstreams.fetches.ingest_pool()?;
            std::thread::Builder::new()
                .name("larder-proxy-ingest".into())
                .spawn(move || {
                    lower_priority();
                    reader.shared.wait_end();
                    let r = pool
                        .install(|| -> Result<_, ServiceError> { Ok(me.store()?.ingest(reader)?) });
                    let _ = itx.send(r);
                })
                .map_err(|e| internal(format!("starting a proxy ingest thread: {e}")))?;
            irx
        };
        let timeout = self.upstreams.settings.timeout;
        let fetched = self.metrics.upstream.fetched(&p.upstream_url);
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
                        fetched.inc_by(data.len() as u64);
                        if btx.send(Ok(data)).await.is_err() {
                            // The decoder stopped early; its error says why.
                            break Ok(());
                        }
                    }
                }
            }
        };
        drop(btx);
        // Whatever happened, the ingest waiting on the spool is told below.
        let decoded = decode.await.map_err(internal).and_then(|r| r);
        let checked = match pumped {
            Err(e) => {
                self.note_upstream(&p.upstream_url, Err(&e));
                Err(ServiceError::from(e))
            }
            Ok(()) => decoded,
        };
        shared.finish(checked.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        if let Err(e) = checked {
            // The ingest ends at the spool's error; its chunks are garbage for GC.
            let _ = ingest.await;
            return Err(e);
        }
        // The body is the signed one: every client may have all of it now.
        (self.metrics.upstream).fetch_ended(&p.upstream_url, metrics::Fetch::checked);
        tx.send_replace(State::Done);
        let stored = match ingest.await.map_err(internal)? {
            Ok(outcome) => {
                let nar = crate::service::upload::StreamedNar {
                    nar_hash: crate::nix::hash::Sha256(p.nar_hash),
                    nar_size: p.nar_size,
                    outcome,
                };
                let me = self.clone();
                let (row2, p2) = (row.clone(), p.clone());
                tokio::task::spawn_blocking(move || me.commit_fetched(&row2, &p2, nar))
                    .await
                    .map_err(internal)?
            }
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            // The clients got their (checked) NAR; only the store missed it.
            tracing::error!(cache = %row.name, store_path = %p.store_path, error = %e, "storing a NAR fetched from upstream failed");
        }
        Ok(())
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

/// How far the decoder got, for the ingest reading the spool behind it.
#[derive(Default)]
struct Spooled {
    progress: Mutex<Progress>,
    more: Condvar,
}

#[derive(Default)]
struct Progress {
    len: u64,
    /// Set when the decoder is done: `Ok` once the NAR checked out.
    end: Option<Result<(), String>>,
}

impl Spooled {
    fn advance(&self, len: u64) {
        if let Ok(mut p) = self.progress.lock() {
            p.len = len;
        }
        self.more.notify_all();
    }

    /// Block until the decoder is done (whichever way).
    fn wait_end(&self) {
        let Ok(mut p) = self.progress.lock() else {
            return;
        };
        while p.end.is_none() {
            p = match self.more.wait(p) {
                Ok(p) => p,
                Err(_) => return,
            };
        }
    }

    fn finish(&self, end: Result<(), String>) {
        if let Ok(mut p) = self.progress.lock() {
            p.end.get_or_insert(end);
        }
        self.more.notify_all();
    }
}

/// Reads the spool as the decoder writes it; ends where the checked NAR ends,
/// fails when the decoder failed.
struct SpoolReader {
    file: std::fs::File,
    pos: u64,
    shared: Arc<Spooled>,
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let poisoned = || std::io::Error::other("spool progress lock poisoned");
        let mut p = self.shared.progress.lock().map_err(|_| poisoned())?;
        loop {
            if self.pos < p.len {
                let want = (p.len - self.pos).min(buf.len() as u64) as usize;
                drop(p);
                let n = self.file.read_at(&mut buf[..want], self.pos)?;
                self.pos += n as u64;
                return Ok(n);
            }
            match &p.end {
                Some(Ok(())) => return Ok(0),
                Some(Err(e)) => return Err(std::io::Error::other(e.clone())),
                None => p = self.shared.more.wait(p).map_err(|_| poisoned())?,
            }
        }
    }
}

/// Reads the upstream body pieces, blocking this (blocking-pool) thread.
struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Decode the upstream body, check it is the signed NAR (a NAR, NarSize, NarHash)
/// and append it to the spool, publishing each new length.
fn decode_to_spool(
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    compression: crate::service::decode::Compression,
    p: &ProxiedRow,
    mut writer: std::fs::File,
    tx: &watch::Sender<State>,
    shared: &Spooled,
    url: &str,
) -> Result<(), ServiceError> {
    let bad = |m: String| ServiceError::Upstream(format!("upstream {url}: {m}"));
    let reader = BodyReader {
        rx,
        current: Bytes::new(),
    };
    let mut decoder: Box<dyn Read + Send> = match compression {
        crate::service::decode::Compression::Xz => {
            // The NarHash checked below covers what xz's own CRC64 would (a
            // tenth of the decoding time here), so that check is skipped.
            let stream = liblzma::stream::Stream::new_stream_decoder(
                u64::MAX,
                liblzma::stream::IGNORE_CHECK | liblzma::stream::CONCATENATED,
            )
            .map_err(|e| internal(format!("xz decoder: {e}")))?;
            Box::new(liblzma::read::XzDecoder::new_stream(reader, stream))
        }
        other => crate::service::decode::decoder(other, Box::new(reader))
            .map_err(|e| bad(format!("the NAR does not decode as {other:?}: {e}")))?,
    };
    let mut hasher = Sha256Hasher::new();
    let mut validator = NarValidator::new();
    let mut size = 0u64;
    // Two threads: one decodes (xz alone takes most of a core), this one checks,
    // hashes and spools what it decoded, a piece behind. Pieces go back to the
    // decoder for reuse.
    let (pieces_tx, pieces) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(4);
    let (spent, spent_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| -> Result<(), ServiceError> {
        // Owned here, so that an early return drops it and a decoder blocked on
        // a full channel ends instead of holding the scope open.
        let pieces = pieces;
        scope.spawn(move || loop {
            let mut buf = spent_rx.try_recv().unwrap_or_default();
            buf.resize(SPOOL_MIN as usize, 0);
            // Whole pieces: a decoder answers a few KiB per read, and each piece
            // costs a spool write and wakes the clients and the ingest.
            let mut n = 0;
            let mut failed = None;
            while n < buf.len() {
                match decoder.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(got) => n += got,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            buf.truncate(n);
            let last = n == 0 || failed.is_some();
            if n > 0 && pieces_tx.send(Ok(buf)).is_err() {
                return;
            }
            if let Some(e) = failed {
                let _ = pieces_tx.send(Err(e));
            }
            if last {
                return;
            }
        });
        for piece in pieces.iter() {
            let data = piece
                .map_err(|e| bad(format!("the NAR does not decode as {compression:?}: {e}")))?;
            size += data.len() as u64;
            if size > p.nar_size {
                return Err(bad(format!(
                    "the NAR is longer than its signed NarSize ({} bytes)",
                    p.nar_size
                )));
            }
            validator
                .feed(&data)
                .map_err(|e| bad(format!("the NAR is not a NAR: {e}")))?;
            hasher.update(&data);
            writer
                .write_all(&data)
                .map_err(|e| internal(format!("writing the spool: {e}")))?;
            shared.advance(size);
            tx.send_replace(State::Running(size));
            let _ = spent.send(data);
        }
        Ok(())
    })?;
    validator
        .finish()
        .map_err(|e| bad(format!("the NAR is cut short: {e}")))?;
    let hash: [u8; 32] = hasher.finalize().into();
    if hash != p.nar_hash || size != p.nar_size {
        return Err(bad(format!(
            "the NAR hashes to {} ({size} bytes), not the signed NarHash {} ({} bytes)",
            crate::nix::hash::Sha256(hash).to_nix_string(),
            crate::nix::hash::Sha256(p.nar_hash).to_nix_string(),
            p.nar_size
        )));
    }
    Ok(())
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
            // While the fetch runs, wait for a worthwhile piece: fewer, larger
            // writes to the client (as a static file server sends).
            let enough = match state {
                State::Running(_) => {
                    avail
                        >= pos
                            .saturating_add(SPOOL_MIN)
                            .min(nar_size.saturating_sub(1))
                }
                _ => true,
            };
            if pos < avail && enough {
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
