//! The harness shared by every integration test: a real `larder serve` in a temp dir
//! ([`server`]), a private Nix 2.8 client ([`nix`]), HTTP helpers ([`http`]), and a
//! few checks several test files need.

#![allow(dead_code)]

pub mod container;
pub mod http;
pub mod nix;
pub mod pebble;
pub mod process;
pub mod s3;
pub mod server;
pub mod tls;
pub mod workdir;

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

pub use http::Auth;
pub use nix::{assert_same_tree, basename, hash_part, in_store, Closure, Nix};
pub use server::{Cache, Server};

/// A narinfo's `Key: value` lines (later duplicates such as `Sig` are kept in order).
#[derive(Debug, Clone, Default)]
pub struct NarInfo {
    pub fields: Vec<(String, String)>,
}

impl NarInfo {
    pub fn parse(text: &str) -> NarInfo {
        let fields = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        NarInfo { fields }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn require(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("narinfo has no {key}: {:?}", self.fields))
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn references(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .get("References")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }
}

/// Fetches and parses `<hash>.narinfo` of `path` from `cache`; `None` on 404.
#[track_caller]
pub fn fetch_narinfo(cache: &Cache, path: &str, auth: Auth<'_>) -> Option<NarInfo> {
    let r = http::get(&cache.at(&format!("{}.narinfo", hash_part(path))), auth);
    match r.status {
        200 => Some(NarInfo::parse(&r.text())),
        404 => None,
        s => panic!("GET narinfo of {path}: unexpected status {s}: {}", r.text()),
    }
}

/// Undoes a narinfo `Compression` on a downloaded file.
pub fn decompress(compression: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    match compression {
        "none" => Ok(body.to_vec()),
        "zstd" => {
            let mut out = Vec::new();
            zstd::stream::read::Decoder::new(body)
                .and_then(|mut d| d.read_to_end(&mut out))
                .map_err(|e| format!("zstd: {e}"))?;
            Ok(out)
        }
        other => Err(format!("the test harness does not decode {other:?}")),
    }
}

/// How fetching one NAR from a (possibly damaged) cache went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarFetch {
    /// 200, every byte, and it decodes to exactly the expected NAR.
    Whole,
    /// The narinfo or the NAR answered this non-2xx status.
    Refused(u16),
    /// The transfer was cut short (fewer bytes than announced, or a broken
    /// connection): a client can tell something went wrong.
    Aborted(String),
    /// A complete-looking 2xx whose content is not the NAR: the failure a cache
    /// must never produce.
    WrongBody(String),
}

/// Fetches the NAR of `path` over a raw connection and classifies the outcome
/// against `expected` (the true NAR bytes).
pub fn fetch_nar(server: &Server, cache: &Cache, path: &str, expected: &[u8]) -> NarFetch {
    let auth = server.auth();
    let narinfo_url = cache.at(&format!("{}.narinfo", hash_part(path)));
    let r = match http::try_request("GET", &narinfo_url, auth, &[], None) {
        Ok(r) => r,
        Err(e) => return NarFetch::Aborted(format!("narinfo: {e}")),
    };
    if !r.is_success() {
        return NarFetch::Refused(r.status);
    }
    let info = NarInfo::parse(&r.text());
    let Some(url) = info.get("URL") else {
        return NarFetch::WrongBody(format!("narinfo without URL: {}", r.text()));
    };
    let compression = info.get("Compression").unwrap_or("bzip2").to_string();
    let target = format!("/{}/{}", cache.name, url);
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        server.addr(),
        server.token()
    );
    match http::raw(
        &server.addr(),
        req.as_bytes(),
        false,
        Duration::from_secs(60),
    ) {
        http::RawOutcome::NoResponse(why) => NarFetch::Aborted(why),
        http::RawOutcome::Response(resp) => {
            if !(200..300).contains(&resp.status) {
                return NarFetch::Refused(resp.status);
            }
            if !resp.complete {
                return NarFetch::Aborted(format!(
                    "body cut at {} of {:?} bytes",
                    resp.body.len(),
                    resp.content_length
                ));
            }
            match decompress(&compression, &resp.body) {
                Ok(nar) if nar == expected => NarFetch::Whole,
                Ok(nar) => NarFetch::WrongBody(format!(
                    "{} bytes decoded, expected {} (different content)",
                    nar.len(),
                    expected.len()
                )),
                Err(e) => NarFetch::WrongBody(format!(
                    "complete {} byte 200 that does not decode: {e}",
                    resp.body.len()
                )),
            }
        }
    }
}

/// Runs `larder verify` and returns (clean?, store paths it named).
pub fn verify_output(out: &process::Output, candidates: &[String]) -> (bool, Vec<String>) {
    assert!(
        !out.timed_out,
        "larder verify timed out: {}",
        out.describe()
    );
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let named = candidates
        .iter()
        .filter(|p| text.contains(p.as_str()))
        .cloned()
        .collect();
    (out.success(), named)
}

/// Counts how often each value occurs.
pub fn counts<T: Ord + Clone>(items: &[T]) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i.clone()).or_insert(0) += 1;
    }
    m
}
