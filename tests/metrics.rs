//! `/metrics`: read by a real Prometheus text parser (`prometheus_client` from the
//! test venv), counters that move with a real `nix copy` push and a real
//! substitution, the `metrics` permission, and `metrics_listen`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::http::{self, Auth};
use crate::support::server::Launch;
use crate::support::{Nix, Server};

/// One sample: its name, labels and value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The families `prometheus_client.parser.text_string_to_metric_families` read.
#[derive(Debug)]
pub(crate) struct Scrape {
    /// family name -> type
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parse with the Python client's parser; a text it refuses fails the test.
    fn parse(text: &str) -> Scrape {
        let mut child = Command::new(crate::support::s3::python())
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/data/metrics/parse.py"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running the prometheus_client parser");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(text.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "prometheus_client refused the text: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for f in v.as_array().unwrap() {
            types.insert(
                f["name"].as_str().unwrap().to_owned(),
                f["type"].as_str().unwrap().to_owned(),
            );
            for s in f["samples"].as_array().unwrap() {
                samples.push(Sample {
                    name: s["name"].as_str().unwrap().to_owned(),
                    labels: s["labels"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                        .collect(),
                    value: s["value"].as_f64().unwrap_or(f64::NAN),
                });
            }
        }
        Scrape { types, samples }
    }

    /// The sum of the samples named `name` whose labels include `labels`.
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The one sample named `name` with exactly no labels.
    pub(crate) fn value(&self, name: &str) -> f64 {
        let found: Vec<&Sample> = self.samples.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "samples named {name}: {found:?}");
        found[0].value
    }
}

pub(crate) fn scrape(url: &str, auth: Auth<'_>) -> Scrape {
    let r = http::get(url, auth);
    assert_eq!(r.status, 200, "GET {url}: {}", r.text());
    let ct = r.header("content-type").unwrap_or_default().to_owned();
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "Content-Type {ct:?}"
    );
    Scrape::parse(&r.text())
}

/// Every family larder documents, with its type as the Python parser names it
/// (counters without `_total`).
const FAMILIES: &[(&str, &str)] = &[
    ("larder_http_requests", "counter"),
    ("larder_http_request_duration_seconds", "histogram"),
    ("larder_http_response_body_bytes", "counter"),
    ("larder_http_request_body_bytes", "counter"),
    ("larder_auth_refused", "counter"),
    ("larder_narinfo_hits", "counter"),
    ("larder_narinfo_misses", "counter"),
    ("larder_pushes", "counter"),
    ("larder_gc_passes", "counter"),
    ("larder_gc_failures", "counter"),
    ("larder_http_open_connections", "gauge"),
    ("larder_store_chunks", "gauge"),
    ("larder_store_stored_bytes", "gauge"),
    ("larder_store_indexed_bytes", "gauge"),
    ("larder_store_logical_nar_bytes", "gauge"),
    ("larder_store_budget_bytes", "gauge"),
    ("larder_store_dedup_ratio", "gauge"),
    ("larder_store_packs", "gauge"),
    ("larder_store_paths", "gauge"),
    ("larder_store_nars", "gauge"),
    ("larder_gc_last_pass_timestamp_seconds", "gauge"),
    ("larder_gc_last_pass_duration_seconds", "gauge"),
    ("larder_gc_last_pass_chunks_reclaimed", "gauge"),
    ("larder_gc_last_pass_reclaimed_bytes", "gauge"),
    ("larder_gc_last_pass_paths_evicted", "gauge"),
    ("larder_process_resident_memory_bytes", "gauge"),
    ("larder_process_open_fds", "gauge"),
    ("larder_upstream_nar_fetches_running", "gauge"),
];

/// The pull-through families: samples only once a cache has upstreams (the
/// pull-through tests in upstreams.rs read them).
const UPSTREAM_FAMILIES: &[(&str, &str)] = &[
    ("larder_upstream_narinfo_lookups", "counter"),
    ("larder_upstream_nar_fetches", "counter"),
    ("larder_upstream_fetched_bytes", "counter"),
    ("larder_upstream_up", "gauge"),
];

#[test]
fn metrics_move_with_a_push_a_substitution_and_a_gc_pass() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("metrics");
    let netrc = nix.netrc(server.token());
    let c = nix.closure("src", 2 * 1024 * 1024);
    let url = format!("{}/metrics", server.url());

    let before = scrape(&url, server.auth());
    for (name, typ) in FAMILIES {
        // Label-less families and pre-created per-class ones are there from the start;
        // per-cache ones appear with their first cache event.
        if [
            "larder_narinfo_hits",
            "larder_narinfo_misses",
            "larder_pushes",
        ]
        .contains(name)
        {
            continue;
        }
        assert_eq!(
            before.types.get(*name).map(String::as_str),
            Some(*typ),
            "family {name} in {:?}",
            before.types
        );
    }
    assert_eq!(before.value("larder_store_paths"), 0.0);
    assert_eq!(before.value("larder_store_chunks"), 0.0);
    assert!(before.value("larder_process_resident_memory_bytes") > 1e6);
    assert!(before.value("larder_process_open_fds") > 3.0);
    // This scrape's own connection is open while it is answered.
    assert!(before.value("larder_http_open_connections") >= 1.0);

    // A real push.
    let to = format!("{}?compression=zstd", cache.url);
    nix.copy_to(&c.store, &to, &[&c.top], Some(&netrc)).ok();
    let pushed = scrape(&url, server.auth());
    let n = c.paths.len() as f64;
    for (name, typ) in FAMILIES {
        assert_eq!(
            pushed.types.get(*name).map(String::as_str),
            Some(*typ),
            "family {name} after a push"
        );
    }
    assert_eq!(
        pushed.sum("larder_pushes_total", &[("cache", "main")]),
        n,
        "one push per path of the closure"
    );
    assert!(
        pushed.sum(
            "larder_http_requests_total",
            &[("class", "upload"), ("code", "200")]
        ) >= 2.0 * n,
        "a NAR and a narinfo PUT per path"
    );
    let nar_bytes: u64 = c
        .paths
        .iter()
        .map(|p| nix.dump(&c.store, p).len() as u64)
        .sum();
    assert!(
        pushed.sum(
            "larder_http_request_body_bytes_total",
            &[("class", "upload")]
        ) >= 2.0 * 1024.0 * 1024.0,
        "the random blob was uploaded"
    );
    assert_eq!(pushed.value("larder_store_paths"), n);
    assert_eq!(pushed.value("larder_store_nars"), n);
    assert_eq!(
        pushed.value("larder_store_logical_nar_bytes"),
        nar_bytes as f64
    );
    assert!(pushed.value("larder_store_chunks") > 0.0);
    assert!(pushed.value("larder_store_packs") >= 1.0);
    let indexed = pushed.value("larder_store_indexed_bytes");
    assert!(indexed > 0.0 && pushed.value("larder_store_stored_bytes") >= indexed);
    let ratio = pushed.value("larder_store_dedup_ratio");
    assert!(
        (ratio - nar_bytes as f64 / indexed).abs() < 1e-9,
        "dedup ratio {ratio} vs {nar_bytes}/{indexed}"
    );

    // A real substitution: a narinfo hit and a NAR per path.
    let hits_before = pushed.sum("larder_narinfo_hits_total", &[("cache", "main")]);
    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, &cache.url, &cache.public_key, Some(&netrc))
        .ok();
    let fetched = scrape(&url, server.auth());
    assert!(
        fetched.sum("larder_narinfo_hits_total", &[("cache", "main")]) >= hits_before + n,
        "narinfo hits after substituting {n} paths"
    );
    assert!(
        fetched.sum(
            "larder_http_requests_total",
            &[("class", "nar"), ("code", "200")]
        ) >= n
    );
    assert!(
        fetched.sum("larder_http_response_body_bytes_total", &[("class", "nar")])
            >= 1024.0 * 1024.0,
        "the NARs' bytes count as served"
    );
    let narinfo_requests = fetched.sum("larder_http_requests_total", &[("class", "narinfo")]);
    assert_eq!(
        fetched.sum(
            "larder_http_request_duration_seconds_count",
            &[("class", "narinfo")]
        ),
        narinfo_requests,
        "one latency observation per narinfo request"
    );

    // A miss is counted for the cache it was asked of.
    let misses = fetched.sum("larder_narinfo_misses_total", &[("cache", "main")]);
    let r = http::get(
        &cache.at("00000000000000000000000000000000.narinfo"),
        server.auth(),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let missed = scrape(&url, server.auth());
    assert_eq!(
        missed.sum("larder_narinfo_misses_total", &[("cache", "main")]),
        misses + 1.0
    );

    // A GC pass: the counter moves and the last pass's figures are there.
    assert_eq!(missed.value("larder_gc_passes_total"), 0.0);
    assert_eq!(missed.value("larder_gc_last_pass_timestamp_seconds"), 0.0);
    server.remote(&["gc"]).ok();
    let collected = scrape(&url, server.auth());
    assert_eq!(collected.value("larder_gc_passes_total"), 1.0);
    assert_eq!(collected.value("larder_gc_failures_total"), 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let at = collected.value("larder_gc_last_pass_timestamp_seconds");
    assert!(at > now - 600.0 && at <= now + 1.0, "last pass at {at}");
    // Nothing was evictable: every path is live.
    assert_eq!(
        collected.value("larder_gc_last_pass_paths_evicted"),
        0.0,
        "nothing to evict"
    );
}

#[test]
fn metrics_need_a_token_with_the_metrics_permission() {
    let server = Server::start();
    server.create_cache("main", false);
    let url = format!("{}/metrics", server.url());

    let r = http::get(&url, Auth::None);
    assert_eq!(r.status, 401, "{}", r.text());
    let r = http::get(&url, Auth::Bearer("not-a-token"));
    assert_eq!(r.status, 401, "{}", r.text());

    let pull = crate::tokens::mint(&server, "puller", 3600, json!({"*": ["pull"]}));
    let r = http::get(&url, Auth::Bearer(&pull));
    assert_eq!(r.status, 403, "a pull-only token: {}", r.text());
    assert!(
        r.text().contains("metrics"),
        "says what is missing: {}",
        r.text()
    );

    // `metrics` on a narrower pattern than `*` is not enough: the figures cover
    // every cache.
    let narrow = crate::tokens::mint(&server, "narrow", 3600, json!({"main": ["metrics"]}));
    assert_eq!(http::get(&url, Auth::Bearer(&narrow)).status, 403);

    // `larder token create --metrics`, sent as Prometheus does (a bearer token).
    let out = server
        .remote(&[
            "token",
            "create",
            "--sub",
            "prometheus",
            "--validity",
            "1d",
            "--metrics",
        ])
        .ok();
    let token = out.stdout.trim().to_owned();
    let s = scrape(&url, Auth::Bearer(&token));
    assert!(
        s.sum(
            "larder_auth_refused_total",
            &[("reason", "unauthenticated")]
        ) >= 2.0
    );
    assert!(s.sum("larder_auth_refused_total", &[("reason", "forbidden")]) >= 2.0);
    assert!(
        s.sum(
            "larder_http_requests_total",
            &[("class", "other"), ("code", "403")]
        ) >= 2.0
    );

    // The metrics token may read metrics and nothing else.
    let r = http::get(
        &format!("{}/_api/v1/stats", server.url()),
        Auth::Bearer(&token),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = http::get(
        &format!("{}/main/nix-cache-info", server.url()),
        Auth::Bearer(&token),
    );
    assert!(r.status == 403 || r.status == 404, "{}", r.text());
}

#[test]
fn metrics_listen_serves_metrics_without_a_token() {
    let server = Server::start_with_extra(Launch::Flags, &["--metrics-listen", "127.0.0.1:0"], &[]);
    let line = server
        .wait_stdout(Duration::from_secs(10), |l| {
            l.starts_with("larder metrics listening on ")
        })
        .expect("a `larder metrics listening on` line");
    let url = line
        .trim()
        .strip_prefix("larder metrics listening on ")
        .unwrap()
        .to_owned();
    assert!(url.ends_with("/metrics"), "{url}");
    let s = scrape(&url, Auth::None);
    for (name, typ) in FAMILIES {
        if [
            "larder_narinfo_hits",
            "larder_narinfo_misses",
            "larder_pushes",
        ]
        .contains(name)
        {
            continue;
        }
        assert_eq!(s.types.get(*name).map(String::as_str), Some(*typ), "{name}");
    }
    // Only /metrics is there: the cache API is not reachable without a token here.
    let other = url.trim_end_matches("/metrics").to_owned() + "/_api/v1/caches";
    assert_eq!(http::get(&other, Auth::None).status, 404);
    // The main listener still wants a token.
    assert_eq!(
        http::get(&format!("{}/metrics", server.url()), Auth::None).status,
        401
    );
}

/// Every metric the Grafana dashboard and the alert rules in docs/operations.md
/// query is one larder exports: a family of [`FAMILIES`] (each checked against a
/// live scrape above), with its `_total`/`_bucket` sample suffix, or the TLS gauge
/// (checked in the TLS tests).
#[test]
fn the_grafana_dashboard_and_the_alerts_query_only_exported_metrics() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("docs/grafana/larder.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs: Vec<String> = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    let ops = std::fs::read_to_string(repo.join("docs/operations.md")).unwrap();
    exprs.extend(
        ops.lines()
            .filter_map(|l| l.trim().strip_prefix("expr: "))
            .map(str::to_owned),
    );
    let mut known: Vec<String> = vec!["larder_tls_certificate_expiry_seconds".into()];
    for (name, typ) in FAMILIES.iter().chain(UPSTREAM_FAMILIES) {
        match *typ {
            "counter" => known.push(format!("{name}_total")),
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    known.push(format!("{name}{s}"));
                }
            }
            _ => known.push(name.to_string()),
        }
    }
    let mut used = 0;
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("larder_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            assert!(
                known.iter().any(|k| k == name),
                "{name} (in `{e}`) is not a metric larder exports"
            );
            used += 1;
            rest = &tail[end..];
        }
    }
    assert!(used >= 20, "only {used} metric references found");
}
