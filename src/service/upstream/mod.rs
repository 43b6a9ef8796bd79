//! The pull-through cache (`docs/design/upstreams.md`): a cache with upstreams
//! answers a narinfo it does not hold by asking them, one lookup per store path
//! however many clients ask, and accepts an answer only when one of its
//! signatures verifies against that upstream's keys. The NAR of an accepted path
//! is fetched once, when first asked for (`fetch.rs`), streamed to every client
//! that wants it, and committed as a stored path only when its NarHash and
//! NarSize match.

mod fetch;
mod settings;

pub use settings::{UpstreamFileConfig, UpstreamSettings};

use crate::metrics::upstream::Lookup as Answer;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::decode::{self, Compression};
use super::{Larder, ServiceError};
use crate::auth::{Caller, Permission};
use crate::meta::{CacheRow, ProxiedRow, Upstream};
use crate::nix::base32;
use crate::nix::narinfo::NarInfo;
use crate::nix::signing::{PublicKey, SecretKey};

/// The most upstreams one cache may have.
const MAX_UPSTREAMS: usize = 16;
/// Negative answers remembered at most; past it the map starts over.
const NEGATIVE_MAX: usize = 100_000;

/// Why an upstream request failed (the upstream layer's own error; it becomes a
/// 404 for a narinfo and an aborted or 502 answer for a NAR).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: no answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {message}")]
    Invalid { url: String, message: String },
}

impl UpstreamError {
    /// True when the upstream itself is unwell (not merely without the path).
    fn is_outage(&self) -> bool {
        match self {
            UpstreamError::Transport { .. } | UpstreamError::Timeout { .. } => true,
            UpstreamError::Status { status, .. } => *status >= 500,
            UpstreamError::Invalid { .. } => false,
        }
    }
}

impl From<UpstreamError> for ServiceError {
    fn from(e: UpstreamError) -> Self {
        ServiceError::Upstream(format!("upstream {e}"))
    }
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<HttpConnector>,
    http_body_util::Empty<Bytes>,
>;

/// One narinfo lookup shared by every client asking for the same path.
type Lookup = Arc<tokio::sync::OnceCell<Option<Bytes>>>;

/// The pull-through cache's state in a running server.
pub(crate) struct Upstreams {
    settings: UpstreamSettings,
    client: OnceLock<Result<HttpsClient, String>>,
    lookups: Mutex<HashMap<(i64, String), Lookup>>,
    /// (cache, path hash) -> when the "no upstream has it" answer expires.
    negative: Mutex<HashMap<(i64, String), Instant>>,
    /// Upstream URLs in an outage (logged once when it starts and once when it ends).
    failing: Mutex<HashSet<String>>,
    fetches: fetch::Fetches,
}

impl Upstreams {
    pub(crate) fn new(settings: UpstreamSettings, spool_dir: std::path::PathBuf) -> Self {
        let fetches = fetch::Fetches::new(spool_dir, settings.max_concurrent_fetches);
        Self {
            settings,
            client: OnceLock::new(),
            lookups: Mutex::new(HashMap::new()),
            negative: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashSet::new()),
            fetches,
        }
    }

    fn client(&self) -> Result<&HttpsClient, ServiceError> {
        self.client
            .get_or_init(build_client)
            .as_ref()
            .map_err(|e| ServiceError::Internal(format!("upstream HTTP client: {e}")))
    }

    /// GET `url`, the status line and headers within the timeout.
    async fn get(
        &self,
        url: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, UpstreamError> {
        let uri: hyper::Uri = url.parse().map_err(|e| UpstreamError::Invalid {
            url: url.to_owned(),
            message: format!("not a URL: {e}"),
        })?;
        let client = self.client().map_err(|e| UpstreamError::Transport {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
        let req = hyper::Request::get(uri)
            .header(
                hyper::header::USER_AGENT,
                concat!("larder/", env!("CARGO_PKG_VERSION")),
            )
            .body(http_body_util::Empty::new())
            .map_err(|e| UpstreamError::Invalid {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout {
                url: url.to_owned(),
                secs: timeout.as_secs(),
            }),
            Ok(Err(e)) => Err(UpstreamError::Transport {
                url: url.to_owned(),
                message: error_chain(&e),
            }),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Note how a request to `upstream` went, logging an outage's start and end.
    fn note(&self, upstream: &str, outcome: Result<(), &UpstreamError>) {
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        match outcome {
            Err(e) if e.is_outage() => {
                if failing.insert(upstream.to_owned()) {
                    tracing::warn!(upstream, error = %e, "upstream is failing; paths only it has are answered 404 until it recovers");
                }
            }
            Err(_) => {}
            Ok(()) => {
                if failing.remove(upstream) {
                    tracing::info!(upstream, "upstream recovered");
                }
            }
        }
    }

    fn negative_hit(&self, key: &(i64, String)) -> bool {
        let Ok(mut m) = self.negative.lock() else {
            return false;
        };
        match m.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                m.remove(key);
                false
            }
            None => false,
        }
    }

    fn remember_negative(&self, key: (i64, String)) {
        if self.settings.negative_ttl.is_zero() {
            return;
        }
        if let Ok(mut m) = self.negative.lock() {
            if m.len() >= NEGATIVE_MAX {
                m.clear();
            }
            m.insert(key, Instant::now() + self.settings.negative_ttl);
        }
    }

    /// Forget the negative answers of a cache (its upstreams changed).
    pub(crate) fn forget_cache(&self, cache_id: i64) {
        if let Ok(mut m) = self.negative.lock() {
            m.retain(|(c, _), _| *c != cache_id);
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn build_client() -> Result<HttpsClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https))
}

/// Check and normalise a cache's upstreams: absolute http(s) URLs without a
/// query, at least one valid public key each.
pub fn validate_upstreams(list: &[Upstream]) -> Result<Vec<Upstream>, ServiceError> {
    if list.len() > MAX_UPSTREAMS {
        return Err(ServiceError::BadRequest(format!(
            "{} upstreams: a cache may have at most {MAX_UPSTREAMS}",
            list.len()
        )));
    }
    let mut out = Vec::with_capacity(list.len());
    for u in list {
        let url = u.url.trim().trim_end_matches('/').to_owned();
        let parsed: Option<hyper::Uri> = url.parse().ok();
        let ok = parsed.as_ref().is_some_and(|p| {
            matches!(p.scheme_str(), Some("http") | Some("https"))
                && p.host().is_some_and(|h| !h.is_empty())
                && p.query().is_none()
        }) && !url.contains('#');
        if !ok {
            return Err(ServiceError::BadRequest(format!(
                "upstream url {:?}: use an http:// or https:// base URL without a query, e.g. https://cache.nixos.org",
                u.url
            )));
        }
        if u.public_keys.is_empty() {
            return Err(ServiceError::BadRequest(format!(
                "upstream {url}: public_keys is empty; give the key its paths are signed with (name:base64)"
            )));
        }
        let mut keys = Vec::with_capacity(u.public_keys.len());
        for k in &u.public_keys {
            let key = PublicKey::parse(k.trim()).map_err(|e| {
                ServiceError::BadRequest(format!("upstream {url}: public key {k:?}: {e}"))
            })?;
            keys.push(key.to_nix_string());
        }
        out.push(Upstream {
            url,
            public_keys: keys,
            priority: u.priority,
        });
    }
    Ok(out)
}

/// The upstreams of a cache in the order they are asked: by priority, then as
/// written.
fn ordered(row: &CacheRow) -> Vec<&Upstream> {
    let mut v: Vec<&Upstream> = row.upstreams.iter().collect();
    v.sort_by_key(|u| u.priority);
    v
}

/// `<nar hash nix32>.nar`: the name a proxied path's NAR is served under.
pub(crate) fn proxied_nar_name(nar_hash: &[u8; 32]) -> String {
    format!("{}.nar", base32::encode(nar_hash))
}

/// The NAR hash of a name in the shape of [`proxied_nar_name`].
pub fn parse_proxied_nar_name(name: &str) -> Option<[u8; 32]> {
    let h = name.strip_suffix(".nar")?;
    if h.len() != 52 {
        return None;
    }
    base32::decode(h).ok()?.try_into().ok()
}

/// An upstream narinfo's `URL`, made absolute against the upstream's base URL.
fn resolve_url(base: &str, url: &str) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_owned()
    } else {
        format!("{base}/{}", url.trim_start_matches('/'))
    }
}

/// The decoder for an upstream narinfo's `Compression` (a missing line is bzip2).
fn compression_of(name: &str) -> Option<Compression> {
    Some(match name {
        "none" | "" => Compression::None,
        "xz" => Compression::Xz,
        "zstd" => Compression::Zstd,
        "bzip2" => Compression::Bzip2,
        "br" => Compression::Brotli,
        "gzip" => Compression::Gzip,
        _ => return None,
    })
}

/// The narinfo served for a path of an upstream: the upstream's verified
/// signatures after the cache's own, and the NAR as larder serves it.
fn render_served(
    signing_key: &SecretKey,
    info: &NarInfo,
    upstream_sigs: &[String],
    stored_file_size: Option<u64>,
) -> Result<String, ServiceError> {
    let fingerprint = info.fingerprint()?;
    let mut sigs = vec![signing_key.sign(&fingerprint)];
    for s in upstream_sigs {
        if !sigs.contains(s) {
            sigs.push(s.clone());
        }
    }
    let (url, compression, file_size) = match stored_file_size {
        Some(size) => (
            format!("nar/{}", super::serve::served_nar_name(&info.nar_hash.0)),
            "zstd",
            size,
        ),
        None => (
            format!("nar/{}", proxied_nar_name(&info.nar_hash.0)),
            "none",
            info.nar_size,
        ),
    };
    let served = NarInfo {
        store_path: info.store_path.clone(),
        url,
        compression: Some(compression.into()),
        file_hash: None,
        file_size: Some(file_size),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        sigs,
        ca: info.ca.clone(),
        extra: Vec::new(),
    };
    Ok(served.render())
}

impl Larder {
    /// `GET <cache>/<hash>.narinfo` for any cache: what it holds, else (when it
    /// has upstreams) what an upstream has and signed.
    pub async fn get_narinfo_or_upstream(
        self: &Arc<Self>,
        caller: Caller,
        cache: String,
        path_hash: String,
    ) -> Result<Bytes, ServiceError> {
        let local = match self.get_narinfo_remembered(&caller, &cache, &path_hash) {
            Some(answer) => answer,
            None => {
                let me = self.clone();
                let (c, h) = (cache.clone(), path_hash.clone());
                let who = caller.clone();
                tokio::task::spawn_blocking(move || me.get_narinfo(&who, &c, &h))
                    .await
                    .map_err(|e| ServiceError::Internal(format!("task failed: {e}")))?
            }
        };
        let missing = match local {
            Err(ServiceError::NotFound(m)) => m,
            other => return other,
        };
        let row = match self.meta.cache_remembered(&cache) {
            Some(r) => r,
            None => self.authorize(&caller, &cache, Permission::Pull)?,
        };
        if row.upstreams.is_empty() {
            return Err(ServiceError::NotFound(missing));
        }
        match self.proxy_narinfo(row, &path_hash).await? {
            Some(text) => Ok(text),
            None => Err(ServiceError::NotFound(format!(
                "{missing}, and no upstream of it has a signed {path_hash}.narinfo"
            ))),
        }
    }

    /// The narinfo of a path the cache does not hold, from its upstreams: a
    /// fresh proxied row, else one shared lookup; `None` when none has it.
    async fn proxy_narinfo(
        self: &Arc<Self>,
        row: Arc<CacheRow>,
        path_hash: &str,
    ) -> Result<Option<Bytes>, ServiceError> {
        let ups = &self.upstreams;
        let key = (row.id, path_hash.to_owned());
        if ups.negative_hit(&key) {
            return Ok(None);
        }
        let max_age = i64::try_from(self.config.staged_ttl_secs).unwrap_or(i64::MAX);
        let known = {
            let me = self.clone();
            let (id, h) = (row.id, path_hash.to_owned());
            tokio::task::spawn_blocking(move || me.meta.proxied(id, &h))
                .await
                .map_err(|e| ServiceError::Internal(format!("task failed: {e}")))??
        };
        if let Some(p) = known {
            if crate::meta::now() - p.created_at <= max_age {
                return Ok(Some(Bytes::from(p.narinfo)));
            }
        }
        let cell = {
            let mut m = ups
                .lookups
                .lock()
                .map_err(|_| ServiceError::Internal("upstream lookups lock poisoned".into()))?;
            m.entry(key.clone()).or_default().clone()
        };
        let me = self.clone();
        let row2 = row.clone();
        let answer = cell
            .get_or_init(|| async move {
                let hash = key.1.clone();
                match me.lookup_upstreams(&row2, &hash).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(cache = %row2.name, path_hash = %hash, error = %e, "upstream lookup failed");
                        None
                    }
                }
            })
            .await
            .clone();
        if let Ok(mut m) = ups.lookups.lock() {
            let k = (row.id, path_hash.to_owned());
            if m.get(&k).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                m.remove(&k);
            }
        }
        Ok(answer)
    }

    /// Note how a request to `upstream` went: its `upstream_up` figure, and the
    /// outage log.
    fn note_upstream(&self, upstream: &str, outcome: Result<(), &UpstreamError>) {
        match outcome {
            Err(e) if e.is_outage() => self.metrics.upstream.set_up(upstream, false),
            Err(_) => {}
            Ok(()) => self.metrics.upstream.set_up(upstream, true),
        }
        self.upstreams.note(upstream, outcome);
    }

    /// Ask each upstream in turn; the first signed answer is recorded as a
    /// proxied path and returned as served. `None` (remembered for
    /// `negative_ttl`) when none has it.
    async fn lookup_upstreams(
        self: &Arc<Self>,
        row: &Arc<CacheRow>,
        path_hash: &str,
    ) -> Result<Option<Bytes>, ServiceError> {
        for up in ordered(row) {
            match self.ask_upstream(row, up, path_hash).await {
                Ok(Some(p)) => {
                    self.metrics.upstream.lookup(&up.url, Answer::found);
                    self.note_upstream(&up.url, Ok(()));
                    let text = Bytes::from(p.narinfo.clone());
                    let me = self.clone();
                    let id = row.id;
                    tokio::task::spawn_blocking(move || me.meta.put_proxied(id, &p))
                        .await
                        .map_err(|e| ServiceError::Internal(format!("task failed: {e}")))??;
                    return Ok(Some(text));
                }
                Ok(None) => {
                    self.metrics.upstream.lookup(&up.url, Answer::missing);
                    self.note_upstream(&up.url, Ok(()));
                }
                Err(e) => {
                    let result = if e.is_outage() {
                        Answer::error
                    } else {
                        Answer::refused
                    };
                    self.metrics.upstream.lookup(&up.url, result);
                    self.note_upstream(&up.url, Err(&e));
                    if !e.is_outage() {
                        tracing::warn!(cache = %row.name, path_hash, error = %e, "upstream answer refused");
                    }
                }
            }
        }
        self.upstreams
            .remember_negative((row.id, path_hash.to_owned()));
        Ok(None)
    }

    /// One upstream's answer for a path: `Ok(None)` when it does not have it.
    async fn ask_upstream(
        &self,
        row: &CacheRow,
        up: &Upstream,
        path_hash: &str,
    ) -> Result<Option<ProxiedRow>, UpstreamError> {
        let url = format!("{}/{path_hash}.narinfo", up.url);
        let invalid = |message: String| UpstreamError::Invalid {
            url: url.clone(),
            message,
        };
        let resp = self.upstreams.get(&url).await?;
        let status = resp.status().as_u16();
        if status == 404 || status == 403 {
            return Ok(None);
        }
        if status != 200 {
            return Err(UpstreamError::Status { url, status });
        }
        let encoding = resp
            .headers()
            .get(hyper::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limit = self.config.max_small_body;
        let timeout = self.upstreams.settings.timeout;
        let body = http_body_util::Limited::new(resp.into_body(), limit);
        let body = match tokio::time::timeout(timeout, body.collect()).await {
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    url,
                    secs: timeout.as_secs(),
                })
            }
            Ok(Err(e)) => {
                return Err(UpstreamError::Transport {
                    url: url.clone(),
                    message: e.to_string(),
                })
            }
            Ok(Ok(b)) => b.to_bytes().to_vec(),
        };
        let body = match encoding {
            Some(enc) => Compression::from_content_encoding(&enc)
                .and_then(|c| decode::decode_small(c, body, limit))
                .map_err(|e| invalid(e.to_string()))?,
            None => body,
        };
        let text = String::from_utf8(body).map_err(|_| invalid("narinfo is not UTF-8".into()))?;
        let info = NarInfo::parse(&text).map_err(|e| invalid(format!("narinfo: {e}")))?;
        let (store_dir, sp) = info
            .split_store_path()
            .map_err(|e| invalid(format!("narinfo: {e}")))?;
        if sp.hash.to_nix32() != path_hash {
            return Err(invalid(format!(
                "StorePath {} is not the path asked for",
                info.store_path
            )));
        }
        if store_dir != row.store_dir {
            return Err(invalid(format!(
                "StorePath {} is not in the cache's store dir {}",
                info.store_path, row.store_dir
            )));
        }
        if info.nar_size > self.config.max_nar_bytes {
            return Err(invalid(format!(
                "NarSize {} is over this server's max_nar_bytes ({})",
                info.nar_size, self.config.max_nar_bytes
            )));
        }
        let keys: Vec<PublicKey> = up
            .public_keys
            .iter()
            .filter_map(|k| PublicKey::parse(k).ok())
            .collect();
        let fingerprint = info
            .fingerprint()
            .map_err(|e| invalid(format!("narinfo: {e}")))?;
        let verified: Vec<String> = info
            .sigs
            .iter()
            .filter(|s| keys.iter().any(|k| k.verify(&fingerprint, s)))
            .cloned()
            .collect();
        if verified.is_empty() {
            return Err(invalid(format!(
                "no signature on {} verifies against the upstream's keys",
                info.store_path
            )));
        }
        let compression = info.compression.clone().unwrap_or_else(|| "bzip2".into());
        if compression_of(&compression).is_none() {
            return Err(invalid(format!(
                "NAR compression {compression:?} is not one larder decodes (none, xz, zstd, bzip2, br, gzip)"
            )));
        }
        let key = SecretKey::parse(&row.signing_key)
            .map_err(|e| invalid(format!("the cache's signing key: {e}")))?;
        let served =
            render_served(&key, &info, &verified, None).map_err(|e| invalid(e.to_string()))?;
        Ok(Some(ProxiedRow {
            path_hash: path_hash.to_owned(),
            store_path: info.store_path.clone(),
            nar_hash: info.nar_hash.0,
            nar_size: info.nar_size,
            upstream_url: up.url.clone(),
            nar_url: info.url.clone(),
            compression,
            narinfo: served,
            created_at: crate::meta::now(),
        }))
    }

    /// Forget what the pull-through cache remembers of a cache whose upstreams
    /// changed.
    pub(crate) fn upstreams_changed(&self, cache_id: i64) {
        self.upstreams.forget_cache(cache_id);
    }

    /// Drop proxied rows nobody fetched (older than the staged-upload TTL).
    pub fn expire_proxied(&self) -> Result<usize, ServiceError> {
        let ttl = i64::try_from(self.config.staged_ttl_secs).unwrap_or(i64::MAX);
        Ok(self.meta.expire_proxied(ttl)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(url: &str, keys: &[&str]) -> Upstream {
        Upstream {
            url: url.into(),
            public_keys: keys.iter().map(|s| s.to_string()).collect(),
            priority: 40,
        }
    }

    const KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

    #[test]
    fn upstreams_are_checked_and_normalised() {
        let v = validate_upstreams(&[up("https://cache.nixos.org/", &[KEY])]).unwrap();
        assert_eq!(v[0].url, "https://cache.nixos.org");
        for bad in ["cache.nixos.org", "ftp://x", "http://x/?a=b", "https://"] {
            let e = validate_upstreams(&[up(bad, &[KEY])]).unwrap_err();
            assert!(e.to_string().contains("upstream url"), "{bad}: {e}");
        }
        assert!(validate_upstreams(&[up("https://x", &[])])
            .unwrap_err()
            .to_string()
            .contains("public_keys is empty"));
        assert!(validate_upstreams(&[up("https://x", &["nope"])]).is_err());
    }

    #[test]
    fn names_and_urls() {
        let h = [9u8; 32];
        assert_eq!(parse_proxied_nar_name(&proxied_nar_name(&h)), Some(h));
        assert_eq!(parse_proxied_nar_name("x.nar.zst"), None);
        assert_eq!(
            resolve_url("http://u/c", "nar/a.nar.xz"),
            "http://u/c/nar/a.nar.xz"
        );
        assert_eq!(resolve_url("http://u", "https://o/a"), "https://o/a");
        assert_eq!(compression_of("xz"), Some(Compression::Xz));
        assert_eq!(compression_of("lz4"), None);
    }

    #[test]
    fn upstreams_are_asked_by_priority_then_as_written() {
        let mut a = up("http://a", &[KEY]);
        a.priority = 50;
        let b = up("http://b", &[KEY]);
        let c = up("http://c", &[KEY]);
        let row = CacheRow {
            id: 1,
            name: "n".into(),
            is_public: true,
            priority: 41,
            store_dir: "/nix/store".into(),
            signing_key: String::new(),
            upstream_cache_key_names: vec![],
            retention_period: None,
            upstreams: vec![a, b, c],
        };
        let order: Vec<&str> = ordered(&row).iter().map(|u| u.url.as_str()).collect();
        assert_eq!(order, ["http://b", "http://c", "http://a"]);
    }
}
