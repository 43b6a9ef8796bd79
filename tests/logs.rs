//! Logs: `--log-format json` writes one JSON object per line, the access log has
//! one line per request (as many as `/metrics` counted), each naming its request
//! id, cache, class, status, bytes and the token's subject, and no line anywhere
//! holds a token's text. Text logs under systemd's journal carry no timestamp.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Value};

use crate::support::http::{self, Auth};
use crate::support::server::{larder, Launch};
use crate::support::{Nix, Server};
use crate::tokens::mint;

/// The JSON lines larder wrote to stderr (harness markers and the first start's
/// admin-token notice, which goes to stdout, aside). Every line must parse.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.starts_with("=== larder test harness"))
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l:?}"))
        })
        .collect()
}

/// The sum of `larder_http_requests_total` over all its labels (the metrics
/// tests check the text itself with a real Prometheus parser).
fn requests_counted(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("larder_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().expect("a counter value"))
        .sum()
}

#[test]
fn json_logs_have_one_line_per_request_and_no_token_text() {
    let mut server = Server::start_with_extra(Launch::Flags, &["--log-format", "json"], &[]);
    let cache = server.create_cache("team-logs", false);
    let pusher = mint(
        &server,
        "ci-pusher",
        3600,
        json!({"team-logs": ["pull", "push"]}),
    );
    let reader = mint(&server, "laptop", 3600, json!({"team-logs": ["pull"]}));

    // A real push with the scoped token, and a real substitution with another.
    let nix = Nix::new("logs");
    let c = nix.closure("src", 256 * 1024);
    let to = format!("{}?compression=zstd", cache.url);
    nix.copy_to(&c.store, &to, &[&c.top], Some(&nix.netrc(&pusher)))
        .ok();
    let dst = nix.store("dst");
    nix.substitute(
        &dst,
        &c.top,
        &cache.url,
        &cache.public_key,
        Some(&nix.netrc(&reader)),
    )
    .ok();
    // Refusals: a wrong token and a token without rights.
    let bad = http::get(
        &format!("{}/nix-cache-info", cache.url),
        Auth::Bearer("not-a-token"),
    );
    assert_eq!(bad.status, 401);
    let other = mint(&server, "nobody", 3600, json!({"elsewhere": ["pull"]}));
    let refused = http::get(
        &format!("{}/nix-cache-info", cache.url),
        Auth::Bearer(&other),
    );
    assert!(
        matches!(refused.status, 401 | 403 | 404),
        "{}",
        refused.status
    );
    let id = refused
        .header("x-request-id")
        .expect("every answer names its request id")
        .to_owned();

    // The last request: what /metrics counted before it.
    let scrape = http::get(&format!("{}/metrics", server.url()), server.auth());
    assert_eq!(scrape.status, 200);
    let counted = requests_counted(&scrape.text());
    server.stop();

    let log = server.log();
    for (name, token) in [
        ("admin", server.token()),
        ("pusher", pusher.as_str()),
        ("reader", reader.as_str()),
        ("other", other.as_str()),
    ] {
        assert!(
            !log.contains(token),
            "the {name} token's text is in the log"
        );
    }
    let lines = json_lines(&log);
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "larder::access")
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "larder started"),
        "the start is logged as JSON too"
    );
    // Every request /metrics counted, plus the scrape itself.
    assert_eq!(
        access.len() as f64,
        counted + 1.0,
        "access lines vs requests counted"
    );
    let ids: HashSet<&str> = access
        .iter()
        .map(|l| l["request_id"].as_str().expect("request_id"))
        .collect();
    assert_eq!(ids.len(), access.len(), "request ids are unique");
    for l in &access {
        for field in [
            "remote",
            "method",
            "path",
            "cache",
            "class",
            "status",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "subject",
            "outcome",
            "timestamp",
        ] {
            assert!(l.get(field).is_some(), "{field} missing in {l}");
        }
    }

    // Who did what, by subject: the pusher's uploads, the reader's downloads.
    let mut by_subject: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for l in &access {
        let key = (
            l["subject"].as_str().unwrap_or("?"),
            l["class"].as_str().unwrap_or("?"),
        );
        *by_subject.entry(key).or_default() += 1;
    }
    let n = c.paths.len() as u64;
    assert!(
        by_subject
            .get(&("ci-pusher", "upload"))
            .copied()
            .unwrap_or(0)
            >= 2 * n,
        "a NAR and a narinfo PUT per path by ci-pusher: {by_subject:?}"
    );
    assert!(
        by_subject.get(&("laptop", "nar")).copied().unwrap_or(0) >= n,
        "a NAR GET per path by laptop: {by_subject:?}"
    );
    let nar_gets: Vec<&&Value> = access
        .iter()
        .filter(|l| l["class"] == "nar" && l["status"] == 200)
        .collect();
    assert!(nar_gets
        .iter()
        .all(|l| l["cache"] == "team-logs" && l["outcome"] == "complete"));
    assert!(
        nar_gets
            .iter()
            .map(|l| l["bytes_out"].as_u64().unwrap_or(0))
            .sum::<u64>()
            > 0,
        "NAR bytes sent are counted"
    );
    let uploaded: u64 = access
        .iter()
        .filter(|l| l["class"] == "upload")
        .map(|l| l["bytes_in"].as_u64().unwrap_or(0))
        .sum();
    assert!(uploaded >= 256 * 1024, "upload bytes counted: {uploaded}");
    // The refusals: anonymous subject for the bad token, the subject for the other.
    assert!(access
        .iter()
        .any(|l| l["status"] == 401 && l["subject"] == "-" && l["cache"] == "team-logs"));
    let line = access
        .iter()
        .find(|l| l["request_id"] == id.as_str())
        .expect("the refused request's id is in the log");
    assert_eq!(line["subject"], "nobody");
    assert_eq!(line["status"], refused.status);
    // The refusal's own log line names the same request id.
    assert!(
        lines
            .iter()
            .any(|l| l["target"] != "larder::access" && l["request_id"] == id.as_str()),
        "the refusal's own log line is tied to its request id"
    );
}

#[test]
fn text_logs_under_the_journal_carry_no_timestamp_and_a_bad_format_is_refused() {
    let mut server = Server::start_with_extra(Launch::Flags, &[], &[("JOURNAL_STREAM", "8:1234")]);
    let r = http::get(&format!("{}/_api/v1/caches", server.url()), server.auth());
    assert_eq!(r.status, 200);
    server.stop();
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("larder::access") && l.contains("path=/_api/v1/caches"))
        .unwrap_or_else(|| panic!("no access line in\n{log}"));
    assert!(
        line.starts_with(" INFO") || line.starts_with("INFO"),
        "a journal line starts with its level, not a time: {line:?}"
    );
    assert!(line.contains("subject=admin") && line.contains("status=200"));
    assert!(!line.contains('\u{1b}'), "no colour codes for the journal");

    let out = larder(&["serve", "--log-format", "xml"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("xml"), "{}", out.stderr);
    let out = larder(&["serve"], &[("LARDER_LOG_FORMAT", "yaml")]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("yaml"), "{}", out.stderr);

    let config = server.work().join("log.toml");
    std::fs::write(&config, "[log]\nformat = \"json\"\naccess = false\n").unwrap();
    larder(&["check-config", config.to_str().unwrap()], &[]).ok();
    std::fs::write(&config, "[log]\nformat = \"logfmt\"\n").unwrap();
    let out = larder(&["check-config", config.to_str().unwrap()], &[]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("logfmt"), "{}", out.stderr);
}
