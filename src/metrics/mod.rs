//! What the server has done and holds, for Prometheus: `/metrics`.
//!
//! Counters and histograms live here and are bumped where things happen (the HTTP
//! edge, narinfo lookups, commits, GC passes); the store's figures are read at
//! scrape time from the existing APIs ([`Larder::stats`](crate::service::Larder)).
//! The text is the Prometheus text format (0.0.4) as the `prometheus-client`
//! crate encodes it; nothing here formats metrics by hand.
//!
//! Hot paths only touch atomics: the per-class families are created up front,
//! label sets are `Copy` (no allocation per request), and per-cache counters are
//! looked up by `&str` in a read-locked map once a cache has been seen.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

mod requests;
pub(crate) mod upstream;
use requests::{BytesView, LatencyView, RequestStats, RequestsView};

/// The content type of the text [`Metrics::render`] returns: the Prometheus text
/// format 0.0.4, which every Prometheus (and its client libraries' parsers) read.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a request was for, as far as the edge can tell from its method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Class {
    narinfo,
    nar,
    upload,
    api,
    s3,
    other,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::narinfo,
        Class::nar,
        Class::upload,
        Class::api,
        Class::s3,
        Class::other,
    ];

    /// The class's name, as its label value and access-log field read.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::narinfo => "narinfo",
            Class::nar => "nar",
            Class::upload => "upload",
            Class::api => "api",
            Class::s3 => "s3",
            Class::other => "other",
        }
    }

    /// The class of a request on the main router (S3 requests by Host are told
    /// apart by the caller).
    pub fn of(method: &hyper::Method, path: &str) -> Class {
        let write = matches!(*method, hyper::Method::PUT | hyper::Method::POST);
        if let Some(api) = path.strip_prefix("/_api/") {
            return if api.starts_with("v1/upload-path") {
                Class::upload
            } else {
                Class::api
            };
        }
        if path.ends_with(".narinfo") {
            return if write { Class::upload } else { Class::narinfo };
        }
        if path.contains("/nar/") {
            return if write { Class::upload } else { Class::nar };
        }
        Class::other
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabel {
    class: Class,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    class: Class,
    code: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabel {
    cache: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

/// Counters of one cache, shared with the families that encode them.
#[derive(Clone, Debug)]
struct CacheCounters {
    hits: Counter,
    misses: Counter,
    pushes: Counter,
}

/// One cache's counters, read for the dashboard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheCounts {
    pub narinfo_hits: u64,
    pub narinfo_misses: u64,
    pub pushes: u64,
}

/// Store figures read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct StoreFigures {
    pub chunks: u64,
    pub stored_bytes: u64,
    pub indexed_bytes: u64,
    pub logical_nar_bytes: u64,
    pub packs: u64,
    pub store_paths: u64,
    pub nars: u64,
    pub max_bytes: Option<u64>,
    pub last_gc: Option<crate::service::gc::GcReport>,
}

/// Every metric larder exports.
pub struct Metrics {
    registry: Registry,
    requests: Arc<RequestStats>,
    refused: [Counter; 2],
    narinfo_hits: Family<CacheLabel, Counter>,
    narinfo_misses: Family<CacheLabel, Counter>,
    pushes: Family<CacheLabel, Counter>,
    caches: RwLock<HashMap<String, CacheCounters>>,
    gc_passes: Counter,
    gc_failures: Counter,
    connections: Gauge,
    chunks: Gauge,
    stored_bytes: Gauge,
    indexed_bytes: Gauge,
    logical_bytes: Gauge,
    dedup_ratio: Gauge<f64, AtomicU64>,
    budget_bytes: Gauge,
    packs: Gauge,
    store_paths: Gauge,
    nars: Gauge,
    gc_last_unix: Gauge,
    gc_last_duration: Gauge<f64, AtomicU64>,
    gc_last_chunks: Gauge,
    gc_last_bytes: Gauge,
    gc_last_paths: Gauge,
    tls_expiry: Family<NameLabel, Gauge>,
    /// The pull-through cache's figures.
    pub(crate) upstream: upstream::UpstreamMetrics,
    rss_bytes: Gauge,
    open_fds: Gauge,
    /// The served certificate, when TLS is on (set once the listeners are bound).
    tls: OnceLock<Arc<crate::tls::CertResolver>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("larder");
        let requests = RequestStats::new();
        r.register(
            "http_requests",
            "HTTP requests answered, by endpoint class and status code",
            RequestsView(requests.clone()),
        );
        // 100 µs to ~100 s: a narinfo from memory to a large NAR upload.
        r.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response's head, by endpoint class",
            Unit::Seconds,
            LatencyView(requests.clone()),
        );
        r.register_with_unit(
            "http_response_body",
            "Response body bytes sent (their Content-Length; HEAD sends none), by endpoint class",
            Unit::Bytes,
            BytesView {
                stats: requests.clone(),
                sent: true,
            },
        );
        r.register_with_unit(
            "http_request_body",
            "Request body bytes received (their Content-Length), by endpoint class",
            Unit::Bytes,
            BytesView {
                stats: requests.clone(),
                sent: false,
            },
        );
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
        #[allow(non_camel_case_types)]
        enum Why {
            unauthenticated,
            forbidden,
        }
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct WhyLabel {
            reason: Why,
        }
        let refused_family = Family::<WhyLabel, Counter>::default();
        r.register(
            "auth_refused",
            "Requests refused for their credentials: 401 (no or a bad token) and 403 (a token without the permission)",
            refused_family.clone(),
        );
        let refused = [Why::unauthenticated, Why::forbidden]
            .map(|reason| refused_family.get_or_create_owned(&WhyLabel { reason }));

        let narinfo_hits = Family::<CacheLabel, Counter>::default();
        r.register(
            "narinfo_hits",
            "narinfo lookups answered with a narinfo, by cache",
            narinfo_hits.clone(),
        );
        let narinfo_misses = Family::<CacheLabel, Counter>::default();
        r.register(
            "narinfo_misses",
            "narinfo lookups of a path the cache does not hold, by cache",
            narinfo_misses.clone(),
        );
        let pushes = Family::<CacheLabel, Counter>::default();
        r.register(
            "pushes",
            "Store paths committed (a narinfo stored), by cache",
            pushes.clone(),
        );
        let gc_passes = Counter::default();
        r.register(
            "gc_passes",
            "GC passes that finished (not dry runs)",
            gc_passes.clone(),
        );
        let gc_failures = Counter::default();
        r.register("gc_failures", "GC passes that failed", gc_failures.clone());
        let connections = Gauge::default();
        r.register(
            "http_open_connections",
            "HTTP connections open (main, TLS and S3 listeners)",
            connections.clone(),
        );

        let mut gauge = |name: &str, help: &str, unit: Option<Unit>| {
            let g = Gauge::default();
            match unit {
                Some(u) => r.register_with_unit(name, help, u, g.clone()),
                None => r.register(name, help, g.clone()),
            }
            g
        };
        let chunks = gauge("store_chunks", "Chunks the index holds", None);
        let stored_bytes = gauge(
            "store_stored",
            "Pack bytes on disk (what the data dir's chunks take)",
            Some(Unit::Bytes),
        );
        let indexed_bytes = gauge(
            "store_indexed",
            "Record bytes the index names plus pack headers (live compressed chunks)",
            Some(Unit::Bytes),
        );
        let logical_bytes = gauge(
            "store_logical_nar",
            "Uncompressed NAR bytes of every stored NAR",
            Some(Unit::Bytes),
        );
        let budget_bytes = gauge(
            "store_budget",
            "The [gc] max_size budget in bytes (0 when none is set)",
            Some(Unit::Bytes),
        );
        let packs = gauge("store_packs", "Pack files on disk", None);
        let store_paths = gauge("store_paths", "Store paths held, over every cache", None);
        let nars = gauge("store_nars", "Distinct NARs stored", None);
        let gc_last_unix = gauge(
            "gc_last_pass_timestamp",
            "When the last GC pass started (0: none yet)",
            Some(Unit::Seconds),
        );
        let gc_last_chunks = gauge(
            "gc_last_pass_chunks_reclaimed",
            "Chunks the last GC pass dropped",
            None,
        );
        let gc_last_bytes = gauge(
            "gc_last_pass_reclaimed",
            "Record bytes the last GC pass dropped from the index",
            Some(Unit::Bytes),
        );
        let gc_last_paths = gauge(
            "gc_last_pass_paths_evicted",
            "Store paths the last GC pass evicted",
            None,
        );
        let rss_bytes = gauge(
            "process_resident_memory",
            "Resident set size of the larder process",
            Some(Unit::Bytes),
        );
        let open_fds = gauge(
            "process_open_fds",
            "File descriptors the larder process holds open",
            None,
        );
        let dedup_ratio = Gauge::<f64, AtomicU64>::default();
        r.register(
            "store_dedup_ratio",
            "Logical NAR bytes over indexed bytes (0 when empty): what chunking and compression save",
            dedup_ratio.clone(),
        );
        let gc_last_duration = Gauge::<f64, AtomicU64>::default();
        r.register_with_unit(
            "gc_last_pass_duration",
            "How long the last GC pass took",
            Unit::Seconds,
            gc_last_duration.clone(),
        );
        let tls_expiry = Family::<NameLabel, Gauge>::default();
        r.register_with_unit(
            "tls_certificate_expiry",
            "Seconds until the served certificate expires, by name it covers (negative: expired)",
            Unit::Seconds,
            tls_expiry.clone(),
        );
        let upstream = upstream::UpstreamMetrics::register(r);
        Metrics {
            registry: root,
            requests,
            refused,
            narinfo_hits,
            narinfo_misses,
            pushes,
            caches: RwLock::new(HashMap::new()),
            gc_passes,
            gc_failures,
            connections,
            chunks,
            stored_bytes,
            indexed_bytes,
            logical_bytes,
            dedup_ratio,
            budget_bytes,
            packs,
            store_paths,
            nars,
            gc_last_unix,
            gc_last_duration,
            gc_last_chunks,
            gc_last_bytes,
            gc_last_paths,
            tls_expiry,
            upstream,
            rss_bytes,
            open_fds,
            tls: OnceLock::new(),
        }
    }

    /// One answered request.
    pub fn request(&self, class: Class, code: u16, took: Duration, received: u64, sent: u64) {
        self.requests.record(class, code, took, received, sent);
        match code {
            401 => {
                self.refused[0].inc();
            }
            403 => {
                self.refused[1].inc();
            }
            _ => {}
        }
    }

    /// Apply `f` to `name`'s counters, creating them on first sight. A seen cache
    /// costs one read lock and no clone (an `Arc` clone would be one more write to
    /// a line every core shares).
    fn with_cache(&self, name: &str, f: impl Fn(&CacheCounters)) {
        if let Ok(map) = self.caches.read() {
            if let Some(c) = map.get(name) {
                f(c);
                return;
            }
        }
        let label = CacheLabel {
            cache: name.to_owned(),
        };
        let c = CacheCounters {
            hits: self.narinfo_hits.get_or_create_owned(&label),
            misses: self.narinfo_misses.get_or_create_owned(&label),
            pushes: self.pushes.get_or_create_owned(&label),
        };
        f(&c);
        if let Ok(mut map) = self.caches.write() {
            map.entry(name.to_owned()).or_insert(c);
        }
    }

    /// A narinfo lookup in `cache` (one that exists and the caller may pull from).
    pub fn narinfo(&self, cache: &str, hit: bool) {
        self.with_cache(cache, |c| {
            if hit {
                c.hits.inc();
            } else {
                c.misses.inc();
            }
        });
    }

    /// `cache`'s narinfo hits, misses and pushes since the server started (zeros
    /// for a cache not seen yet). Creates nothing.
    pub fn cache_counts(&self, cache: &str) -> CacheCounts {
        let Ok(map) = self.caches.read() else {
            return CacheCounts::default();
        };
        map.get(cache)
            .map(|c| CacheCounts {
                narinfo_hits: c.hits.get(),
                narinfo_misses: c.misses.get(),
                pushes: c.pushes.get(),
            })
            .unwrap_or_default()
    }

    /// A store path committed to `cache`.
    pub fn pushed(&self, cache: &str) {
        self.with_cache(cache, |c| {
            c.pushes.inc();
        });
    }

    /// A GC pass ended.
    pub fn gc_pass(&self, ok: bool) {
        if ok {
            self.gc_passes.inc();
        } else {
            self.gc_failures.inc();
        }
    }

    /// A connection opened; it counts until the guard drops.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard(self.clone())
    }

    /// Report the expiry of the certificate `resolver` serves.
    pub fn watch_tls(&self, resolver: Arc<crate::tls::CertResolver>) {
        let _ = self.tls.set(resolver);
    }

    /// The text for a scrape, with the store figures `store` read just now.
    pub fn render(&self, store: &StoreFigures) -> Result<String, std::fmt::Error> {
        self.chunks.set(i64_of(store.chunks));
        self.stored_bytes.set(i64_of(store.stored_bytes));
        self.indexed_bytes.set(i64_of(store.indexed_bytes));
        self.logical_bytes.set(i64_of(store.logical_nar_bytes));
        self.budget_bytes.set(i64_of(store.max_bytes.unwrap_or(0)));
        self.dedup_ratio.set(if store.indexed_bytes == 0 {
            0.0
        } else {
            store.logical_nar_bytes as f64 / store.indexed_bytes as f64
        });
        self.packs.set(i64_of(store.packs));
        self.store_paths.set(i64_of(store.store_paths));
        self.nars.set(i64_of(store.nars));
        if let Some(gc) = &store.last_gc {
            self.gc_last_unix.set(gc.started_at);
            self.gc_last_duration.set(gc.duration_ms as f64 / 1000.0);
            self.gc_last_chunks.set(i64_of(gc.chunks_reclaimed));
            self.gc_last_bytes.set(i64_of(gc.bytes_reclaimed));
            self.gc_last_paths.set(i64_of(gc.paths_evicted));
        }
        if let Some(info) = self.tls.get().and_then(|r| r.info()) {
            let left = info.not_after - crate::tls::certs::unix_now();
            self.tls_expiry.clear();
            for name in &info.names {
                self.tls_expiry
                    .get_or_create(&NameLabel { name: name.clone() })
                    .set(left);
            }
        }
        let (rss, fds) = process_figures();
        self.rss_bytes.set(i64_of(rss));
        self.open_fds.set(i64_of(fds));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Counts one open connection while it lives.
pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// Resident bytes (`VmRSS` of /proc/self/status) and open descriptors (entries of
/// /proc/self/fd); zero where /proc cannot be read.
fn process_figures() -> (u64, u64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    // The directory handle itself is one of the entries while it is read.
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1) as u64)
        .unwrap_or(0);
    (rss, fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        use hyper::Method;
        let cases = [
            (Method::GET, "/main/abc.narinfo", Class::narinfo),
            (Method::HEAD, "/main/abc.narinfo", Class::narinfo),
            (Method::PUT, "/main/abc.narinfo", Class::upload),
            (Method::GET, "/main/nar/x.nar.zst", Class::nar),
            (Method::PUT, "/main/nar/x.nar.zst", Class::upload),
            (Method::PUT, "/_api/v1/upload-path", Class::upload),
            (Method::GET, "/_api/v1/caches", Class::api),
            (Method::GET, "/main/nix-cache-info", Class::other),
            (Method::GET, "/metrics", Class::other),
        ];
        for (m, p, want) in cases {
            assert_eq!(Class::of(&m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn render_counts_what_happened() {
        let m = Arc::new(Metrics::new());
        m.request(Class::narinfo, 200, Duration::from_millis(1), 0, 300);
        m.request(Class::api, 403, Duration::from_millis(1), 10, 0);
        m.narinfo("main", true);
        m.narinfo("main", false);
        m.pushed("main");
        let conn = m.connection();
        let text = m
            .render(&StoreFigures {
                indexed_bytes: 100,
                logical_nar_bytes: 250,
                ..Default::default()
            })
            .unwrap();
        drop(conn);
        for want in [
            "larder_http_requests_total{class=\"narinfo\",code=\"200\"} 1",
            "larder_http_response_body_bytes_total{class=\"narinfo\"} 300",
            "larder_auth_refused_total{reason=\"forbidden\"} 1",
            "larder_narinfo_hits_total{cache=\"main\"} 1",
            "larder_narinfo_misses_total{cache=\"main\"} 1",
            "larder_pushes_total{cache=\"main\"} 1",
            "larder_store_dedup_ratio 2.5",
            "larder_http_open_connections 1",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert!(
            text.contains("# TYPE larder_pushes_total counter"),
            "{text}"
        );
    }
}
