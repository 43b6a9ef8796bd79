//! Security checks against a running server, each from the outside as an attacker
//! would send it: path traversal in every encoding on every listener (Nix, API,
//! dashboard, S3), oversized headers and bodies, slowloris on the main and S3
//! listeners, tampered, foreign, expired and unsigned tokens, a token for one cache
//! against every route of another, and no discovery of private cache names through
//! status codes or bodies. `docs/reliability.md` lists what each found.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use crate::support::http::{self, Auth, RawOutcome, Resp};
use crate::support::s3::{RawRequest, S3Larder};
use crate::support::server::Launch;
use crate::support::workdir::Workdir;
use crate::support::{hash_part, Nix, Server};
use crate::tokens::{error_body, mint};

/// The seven permissions: a token with all of them on one cache.
const ALL_PERMS: [&str; 7] = crate::tokens::PERMS;

/// What a probe's answer must be: a 4xx with a message, nothing from outside.
#[track_caller]
fn assert_refused(what: &str, o: &RawOutcome, secrets: &[&str]) {
    let r = match o {
        RawOutcome::Response(r) => r,
        RawOutcome::NoResponse(why) => panic!("{what}: no answer: {why}"),
    };
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        (400..500).contains(&r.status),
        "{what}: expected a 4xx, got {}: {body}",
        r.status
    );
    assert!(
        !body.trim().is_empty(),
        "{what}: a {} without a message",
        r.status
    );
    for s in secrets {
        assert!(
            !body.contains(s),
            "{what}: the answer holds {s:?}, a secret from outside: {body}"
        );
    }
}

/// `/_health` still answers 200 on a fresh connection.
#[track_caller]
fn assert_up(server: &mut Server) {
    assert!(server.is_running(), "the server exited:\n{}", server.log());
    let r = http::get(&format!("{}/_health", server.url()), Auth::None);
    assert_eq!(r.status, 200, "health after the probes: {}", r.text());
}

fn raw_get(addr: &str, method: &str, target: &str, extra: &str) -> RawOutcome {
    let req =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    http::raw(
        addr,
        req.as_bytes(),
        method == "HEAD",
        Duration::from_secs(30),
    )
}

/// Every spelling of `..` a decoder somewhere might turn into a parent directory.
const DOTDOTS: &[&str] = &[
    "..",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "%2e.",
    "%252e%252e",
    "%c0%ae%c0%ae",
    "%e0%80%ae%e0%80%ae",
    "..%00",
    "%2e%2e%00",
];

/// Every spelling of `/` (and `\`) between the steps up.
const SEPARATORS: &[&str] = &["/", "%2f", "%2F", "%252f", "\\", "%5c", "%5C", "%00/"];

/// `depth` steps up in one encoding, then `file`.
fn climb(dotdot: &str, sep: &str, depth: usize, file: &str) -> String {
    format!("{}{file}", format!("{dotdot}{sep}").repeat(depth))
}

#[test]
fn path_traversal_in_every_encoding_on_every_listener_is_refused() {
    let s3 = S3Larder::start();
    let server = &s3.server;
    let cache = server.create_cache("main", false);
    server.create_cache("pub", true);
    let bucket_out = s3.aws(&s3.admin, &["s3", "mb", "s3://bkt"]);
    assert!(bucket_out.success(), "{}", bucket_out.describe());
    let addr = server.addr();
    let token = server.token().to_string();
    let bearer = format!("Authorization: Bearer {token}\r\n");
    // What must never come back: the admin token, the signing key file's name and
    // contents, /etc/passwd, a SQLite or redb file.
    let key_file = std::fs::read_dir(server.data_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|x| x != "url"))
        .collect::<Vec<_>>();
    let mut secret_texts: Vec<String> = vec![token.clone(), "root:x:0:0".into()];
    for f in &key_file {
        if let Ok(text) = std::fs::read_to_string(f) {
            let t = text.trim();
            if t.len() >= 16 {
                secret_texts.push(t.to_string());
            }
        }
    }
    secret_texts.push("SQLite format 3".into());
    let secrets: Vec<&str> = secret_texts.iter().map(String::as_str).collect();

    // Prefixes on every route family of the main listener.
    let prefixes = [
        format!("/{}/", cache.name),
        "/pub/".to_string(),
        format!("/{}/nar/", cache.name),
        format!("/{}/log/", cache.name),
        format!("/{}/realisations/", cache.name),
        "/_api/v1/cache-config/".to_string(),
        format!("/_api/v1/cache/{}/", cache.name),
        "/_api/v1/".to_string(),
        "/_dashboard/".to_string(),
        "/".to_string(),
    ];
    let files = ["admin.token", "etc/passwd", "larder.db", "x.narinfo"];
    let mut probes = 0;
    for prefix in &prefixes {
        for dotdot in DOTDOTS {
            for sep in SEPARATORS {
                for file in files {
                    let target = format!("{prefix}{}", climb(dotdot, sep, 6, file));
                    for (method, auth) in [("GET", bearer.as_str()), ("HEAD", "")] {
                        let o = raw_get(&addr, method, &target, auth);
                        if method == "HEAD" {
                            // No body to carry a message; the status must still refuse.
                            let st = o.status().unwrap_or(0);
                            assert!(
                                (400..500).contains(&st),
                                "HEAD {target}: expected a 4xx, got {o:?}"
                            );
                        } else {
                            assert_refused(&format!("GET {target}"), &o, &secrets);
                        }
                        probes += 1;
                    }
                }
            }
        }
    }
    // A narinfo name that climbs, and uploads that climb: nothing is written
    // outside the cache (no file appears anywhere in the server's work dir).
    let before = walk(server.work().path());
    for dotdot in DOTDOTS {
        for sep in SEPARATORS {
            let name = climb(dotdot, sep, 4, "pwned");
            for target in [
                format!("/{}/nar/{name}.nar", cache.name),
                format!("/{}/{name}.narinfo", cache.name),
                format!("/{}/log/{name}", cache.name),
            ] {
                let req = format!(
                    "PUT {target} HTTP/1.1\r\nHost: {addr}\r\n{bearer}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
                );
                let o = http::raw(&addr, req.as_bytes(), false, Duration::from_secs(30));
                assert_refused(&format!("PUT {target}"), &o, &secrets);
                probes += 1;
            }
        }
    }
    let after = walk(server.work().path());
    let new: Vec<_> = after
        .iter()
        .filter(|p| !before.contains(p) && p.to_string_lossy().contains("pwned"))
        .collect();
    assert!(new.is_empty(), "an upload wrote outside: {new:?}");

    // The S3 listener: signed requests (so the signature check passes and the
    // path itself is what is judged). A key with `..` in it is a key like any
    // other (S3 keys are names, not paths): it must not exist, and nothing from
    // the disk may come back.
    let signer = s3.signer(&s3.admin);
    for dotdot in DOTDOTS {
        for sep in SEPARATORS {
            for file in ["admin.token", "etc/passwd", "larder.db"] {
                for target in [
                    format!("/bkt/{}", climb(dotdot, sep, 6, file)),
                    format!("/{}", climb(dotdot, sep, 6, file)),
                    format!("/bkt/{dotdot}{sep}bkt{sep}{file}"),
                ] {
                    let o = s3.raw(
                        &signer,
                        RawRequest {
                            method: "GET",
                            target: &target,
                            ..Default::default()
                        },
                    );
                    assert_refused(&format!("S3 GET {target}"), &o, &secrets);
                    probes += 1;
                }
            }
        }
    }
    // The S3 host's listing shows no object the probes could have made.
    let ls = s3.aws(&s3.admin, &["s3", "ls", "s3://bkt", "--recursive"]);
    assert!(ls.success(), "{}", ls.describe());
    assert!(ls.stdout.trim().is_empty(), "{}", ls.stdout);

    let mut server = s3.server;
    assert_up(&mut server);
    assert!(probes > 5000, "{probes} probes");
    assert!(
        !server.log().contains("panicked"),
        "a probe panicked the server:\n{}",
        server.log()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Sends `request` raw and expects one of `statuses`, within a minute.
#[track_caller]
fn expect_status(addr: &str, what: &str, request: &[u8], statuses: &[u16]) -> RawOutcome {
    let started = Instant::now();
    let o = http::raw(addr, request, false, Duration::from_secs(60));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{what}: no answer within a minute"
    );
    match o.status() {
        Some(s) if statuses.contains(&s) => {}
        _ => panic!("{what}: expected one of {statuses:?}, got {o:?}"),
    }
    o
}

#[test]
fn oversized_headers_and_bodies_get_4xx_and_the_server_stays_up() {
    let dir = Workdir::new("security-sizes");
    let cfg = dir.join("larder.toml");
    // A 1 MiB small-body limit, so a body over it is quick to send.
    std::fs::write(&cfg, "max_small_body = 1048576\n").unwrap();
    let cfg = cfg.display().to_string();
    let s3 = S3Larder::start_with(&["--config", &cfg], &[]);
    let mut server = s3.server;
    let cache = server.create_cache("main", true);
    let addr = server.addr();
    let s3_addr = crate::support::s3::s3_endpoint(&server)
        .trim_start_matches("http://")
        .to_string();
    let token = server.token().to_string();

    for (listener, a) in [("main", addr.as_str()), ("S3", s3_addr.as_str())] {
        // One header of 1 MiB: over hyper's read buffer, 431.
        let big = "a".repeat(1 << 20);
        let req = format!(
            "GET /_health HTTP/1.1\r\nHost: {a}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
        );
        expect_status(
            a,
            &format!("{listener}: a 1 MiB header"),
            req.as_bytes(),
            &[431, 400],
        );
        // 10 000 small headers: 431.
        let many: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
        let req = format!("GET /_health HTTP/1.1\r\nHost: {a}\r\n{many}Connection: close\r\n\r\n");
        expect_status(
            a,
            &format!("{listener}: 10k headers"),
            req.as_bytes(),
            &[431, 400],
        );
        // A 100 KiB header fits the read buffer: answered, and never with a 5xx.
        let mid = "b".repeat(100 << 10);
        let req = format!(
            "GET /_health HTTP/1.1\r\nHost: {a}\r\nX-Mid: {mid}\r\nConnection: close\r\n\r\n"
        );
        let o = http::raw(a, req.as_bytes(), false, Duration::from_secs(60));
        let st = o
            .status()
            .unwrap_or_else(|| panic!("{listener}: 100 KiB header: {o:?}"));
        assert!(st < 500, "{listener}: a 100 KiB header got {st}: {o:?}");
        // A request line of 1 MiB.
        let req = format!(
            "GET /{} HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n",
            "c".repeat(1 << 20)
        );
        expect_status(
            a,
            &format!("{listener}: a 1 MiB request line"),
            req.as_bytes(),
            &[414, 431, 400],
        );
    }

    let bearer = format!("Authorization: Bearer {token}\r\n");
    let over = vec![b'x'; (1 << 20) + 1];
    let put = |target: &str, ctype: &str, framing: &str, body: &[u8]| {
        let mut req = format!(
            "PUT {target} HTTP/1.1\r\nHost: {addr}\r\n{bearer}Content-Type: {ctype}\r\n{framing}Connection: close\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(body);
        req
    };
    let narinfo = format!("/{}/{}.narinfo", cache.name, "0".repeat(32));
    // A narinfo over the limit, declared and chunked (no length up front).
    let o = expect_status(
        &addr,
        "narinfo over the limit",
        &put(
            &narinfo,
            "text/x-nix-narinfo",
            &format!("Content-Length: {}\r\n", over.len()),
            &over,
        ),
        &[413],
    );
    assert_has_message("narinfo over the limit", &o);
    let mut chunked = format!("{:x}\r\n", over.len()).into_bytes();
    chunked.extend_from_slice(&over);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let o = expect_status(
        &addr,
        "chunked narinfo over the limit",
        &put(
            &narinfo,
            "text/x-nix-narinfo",
            "Transfer-Encoding: chunked\r\n",
            &chunked,
        ),
        &[413],
    );
    assert_has_message("chunked narinfo over the limit", &o);
    // An API JSON body over the limit, on a route with a JSON extractor and on
    // one that reads its body itself.
    let mut json_body = br#"{"cache":"main","store_path_hashes":[""#.to_vec();
    json_body.extend(std::iter::repeat_n(b'a', (1 << 20) + 10));
    json_body.extend_from_slice(br#""]}"#);
    for (method, target) in [
        ("POST", "/_api/v1/get-missing-paths"),
        ("POST", "/_api/v1/cache/main/pins"),
        ("PATCH", "/_api/v1/cache-config/main"),
        ("POST", "/_api/v1/tokens"),
    ] {
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{bearer}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            json_body.len()
        )
        .into_bytes();
        req.extend_from_slice(&json_body);
        let o = expect_status(
            &addr,
            &format!("{method} {target} over the limit"),
            &req,
            &[413],
        );
        assert_has_message(&format!("{method} {target}"), &o);
    }
    // A Content-Length no disk could hold: refused before any body, by the
    // server (a 1 PiB NAR) or by hyper (2^64-1 does not fit its length type: 431).
    let nar = format!("/{}/nar/{}.nar", cache.name, "1".repeat(32));
    let req = put(
        &nar,
        "application/x-nix-nar",
        "Content-Length: 1125899906842624\r\n",
        b"",
    );
    let o = expect_status(&addr, "NAR PUT of 1 PiB", &req, &[413, 507]);
    assert_has_message("NAR PUT of 1 PiB", &o);
    let req = put(
        &nar,
        "application/x-nix-nar",
        "Content-Length: 18446744073709551615\r\n",
        b"",
    );
    expect_status(
        &addr,
        "NAR PUT with a 2^64-1 length",
        &req,
        &[400, 413, 431],
    );
    assert_up(&mut server);
    assert!(
        !server.log().contains("panicked"),
        "the server panicked:\n{}",
        server.log()
    );
}

#[track_caller]
fn assert_has_message(what: &str, o: &RawOutcome) {
    if let RawOutcome::Response(r) = o {
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            body.contains("limit") || body.contains("large"),
            "{what}: the {} says nothing about the size: {body:?}",
            r.status
        );
    }
}

/// One slow client: a socket that has sent part of a request.
struct Slow {
    stream: TcpStream,
    sent: usize,
    closed_at: Option<Duration>,
}

/// Opens `n` connections to `addr` that each send `request` a byte at a time.
fn open_slow(addr: &str, n: usize) -> Vec<Slow> {
    (0..n)
        .map(|i| {
            let stream = TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("slow connection {i} to {addr}: {e}"));
            stream.set_nonblocking(true).unwrap();
            Slow {
                stream,
                sent: 0,
                closed_at: None,
            }
        })
        .collect()
}

/// Sends the next byte on every open slow connection (never the final blank
/// line; nothing when `request` is empty), and notes the ones the server has
/// closed.
fn dribble(slow: &mut [Slow], request: &[u8], started: Instant) {
    for s in slow.iter_mut().filter(|s| s.closed_at.is_none()) {
        let mut buf = [0u8; 4096];
        let closed = match s.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => true, // an answer (e.g. 408) before the request ended
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(_) => true,
        };
        let closed = closed
            || (!request.is_empty() && {
                let i = s.sent % request.len();
                match s.stream.write(&request[i..=i]) {
                    Ok(_) => {
                        s.sent += 1;
                        false
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                    Err(_) => true,
                }
            });
        if closed {
            s.closed_at = Some(started.elapsed());
        }
    }
}

#[test]
fn slow_clients_hold_no_worker_and_are_cut_off_after_the_header_timeout() {
    let s3 = S3Larder::start();
    let mut server = s3.server;
    let cache = server.create_cache("pub", true);
    let addr = server.addr();
    let s3_addr = crate::support::s3::s3_endpoint(&server)
        .trim_start_matches("http://")
        .to_string();
    // Never ends its headers: no blank line, and a header that goes on for ever.
    let main_req = format!(
        "GET /pub/nix-cache-info HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}",
        "s".repeat(10_000)
    )
    .into_bytes();
    let s3_req = format!(
        "GET /bkt/key HTTP/1.1\r\nHost: {s3_addr}\r\nX-Slow: {}",
        "s".repeat(10_000)
    )
    .into_bytes();
    let started = Instant::now();
    let mut main_slow = open_slow(&addr, 200);
    let mut s3_slow = open_slow(&s3_addr, 100);
    // Connections that send nothing at all, or the start of the HTTP/2 preface
    // and then nothing: still no request, so cut off after the same timeout.
    let mut silent = open_slow(&addr, 40);
    silent.extend(open_slow(&s3_addr, 20));
    for s in silent.iter_mut().step_by(2) {
        s.stream.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    }
    // While they dribble, normal clients get their answers.
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(8) {
        dribble(&mut main_slow, &main_req, started);
        dribble(&mut s3_slow, &s3_req, started);
        dribble(&mut silent, b"", started);
        let asked = Instant::now();
        let r = http::get(&cache.at("nix-cache-info"), Auth::None);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "a normal request took {:?} beside 300 slow clients",
            asked.elapsed()
        );
        let o = raw_get(&s3_addr, "GET", "/", "");
        let st = o.status().unwrap_or(0);
        assert!(
            (400..500).contains(&st),
            "the S3 listener beside slow clients: {o:?}"
        );
        answered += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(answered >= 5, "{answered}");
    let open = |v: &[Slow]| v.iter().filter(|s| s.closed_at.is_none()).count();
    assert_eq!(
        open(&main_slow) + open(&s3_slow) + open(&silent),
        360,
        "slow clients were cut off before the header timeout (they are within it)"
    );
    // Keep dribbling: the server must close them once its header read timeout
    // (30 s) has passed, though bytes keep arriving.
    let limit = Duration::from_secs(60);
    while started.elapsed() < limit && open(&main_slow) + open(&s3_slow) + open(&silent) > 0 {
        dribble(&mut main_slow, &main_req, started);
        dribble(&mut s3_slow, &s3_req, started);
        dribble(&mut silent, b"", started);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        open(&main_slow),
        0,
        "the main listener still holds {} of 200 connections that never finished their headers after {limit:?}",
        open(&main_slow)
    );
    assert_eq!(
        open(&s3_slow),
        0,
        "the S3 listener still holds {} of 100 connections that never finished their headers after {limit:?}",
        open(&s3_slow)
    );
    assert_eq!(
        open(&silent),
        0,
        "{} of 60 connections that sent nothing (or half an HTTP/2 preface) are still open after {limit:?}",
        open(&silent)
    );
    let first = main_slow
        .iter()
        .chain(s3_slow.iter())
        .chain(silent.iter())
        .filter_map(|s| s.closed_at)
        .min()
        .unwrap();
    assert!(
        first >= Duration::from_secs(25),
        "cut off after {first:?}, before the 30 s header timeout"
    );
    assert_up(&mut server);
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap_or_else(|e| panic!("{text:?} is not base64url: {e}"))
}

/// `token` with byte `at` of its decoded body XORed with 1.
fn flip(token: &str, at: impl Fn(usize) -> usize) -> String {
    let body = token.strip_prefix("v4.local.").expect("a v4.local token");
    let mut bytes = unb64(body);
    let i = at(bytes.len());
    bytes[i] ^= 1;
    format!("v4.local.{}", b64(&bytes))
}

#[test]
fn tampered_foreign_expired_and_unsigned_tokens_get_401() {
    let server = Server::start();
    server.create_cache("team-a", false);
    let other = Server::start();
    other.create_cache("team-a", false);
    let grants = json!({"team-a": ["pull", "push"]});
    let good = mint(&server, "alice", 3600, grants.clone());
    let foreign = mint(&other, "alice", 3600, grants);
    let expired = server
        .remote(&[
            "token",
            "create",
            "--sub",
            "brief",
            "--validity",
            "1s",
            "--pull",
            "team-a",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let narinfo = format!("{}/team-a/{}.narinfo", server.url(), "0".repeat(32));
    let config = format!("{}/_api/v1/cache-config/team-a", server.url());
    // The good token works: the refusals below are about the token alone.
    assert_eq!(http::get(&narinfo, Auth::Bearer(&good)).status, 404);
    assert_eq!(http::get(&config, Auth::Bearer(&good)).status, 200);
    std::thread::sleep(Duration::from_millis(2100));

    let body_len = unb64(good.strip_prefix("v4.local.").unwrap()).len();
    assert!(body_len > 64, "nonce, payload and tag: {body_len} bytes");
    let jwt_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(br#"{"sub":"admin","caches":{"*":["pull","push","delete","create-cache","configure-cache","configure-cache-retention","destroy-cache"]},"exp":"2999-01-01T00:00:00Z"}"#)
    );
    let plain_claims = format!(
        "v4.local.{}",
        b64(br#"{"sub":"admin","caches":{"*":["pull","push"]},"exp":"2999-01-01T00:00:00+00:00"}"#)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("tag (last byte)", flip(&good, |n| n - 1), "invalid"),
        ("tag (first byte)", flip(&good, |n| n - 32), "invalid"),
        ("payload", flip(&good, |_| 40), "invalid"),
        ("nonce", flip(&good, |_| 0), "invalid"),
        (
            "header v4.public",
            good.replacen("v4.local.", "v4.public.", 1),
            "invalid",
        ),
        (
            "header v3.local",
            good.replacen("v4.local.", "v3.local.", 1),
            "invalid",
        ),
        (
            "header upper case",
            good.replacen("v4.local.", "V4.LOCAL.", 1),
            "invalid",
        ),
        (
            "a footer added",
            format!("{good}.{}", b64(b"{\"kid\":\"x\"}")),
            "invalid",
        ),
        ("truncated", good[..good.len() - 10].to_string(), "invalid"),
        ("another server's key", foreign.clone(), "invalid"),
        ("expired", expired.clone(), "expired"),
        ("alg none JWT", jwt_none.clone(), "invalid"),
        ("unauthenticated claims", plain_claims.clone(), "invalid"),
        ("garbage", "not-a-token".to_string(), "invalid"),
        (
            "long garbage",
            "v4.local.".to_string() + &"A".repeat(20_000),
            "invalid",
        ),
    ];
    for (what, token, reason) in &cases {
        assert_ne!(token, &good, "{what}: the tampering changed nothing");
        for (auth, how) in [
            (Auth::Bearer(token), "Bearer"),
            (Auth::Basic("nix", token), "Basic"),
        ] {
            let r = http::get(&narinfo, auth);
            assert_eq!(r.status, 401, "{what} ({how}) on a narinfo: {}", r.text());
            assert!(
                r.text().contains(reason),
                "{what} ({how}) on a narinfo: the message does not say {reason:?}: {}",
                r.text()
            );
            let msg = error_body(&http::get(&config, auth), 401, "Unauthorized");
            assert!(msg.contains(reason), "{what} ({how}) on the API: {msg}");
        }
        // A write with it changes nothing either.
        let r = http::put(
            &format!("{}/team-a/nix-cache-info", server.url()),
            Auth::Bearer(token),
            "text/x-nix-cache-info",
            b"StoreDir: /nix/store\n",
        );
        assert_eq!(r.status, 401, "{what}: PUT: {}", r.text());
    }
    // The foreign token is good where it was minted: the key, not the claims, refused it.
    assert_eq!(
        http::get(
            &format!("{}/_api/v1/cache-config/team-a", other.url()),
            Auth::Bearer(&foreign)
        )
        .status,
        200
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
    // No token text reached the log.
    for (what, token, _) in &cases {
        if token.len() > 20 {
            assert!(
                !server.log().contains(token.as_str()),
                "{what}: the token was logged"
            );
        }
    }
}

/// Everything about a cache a foreign token must not be able to change.
fn snapshot(server: &Server, cache: &str, leaf_hash: &str) -> Vec<(String, u16, String)> {
    let api = format!("{}/_api/v1", server.url());
    let base = format!("{}/{cache}", server.url());
    [
        format!("{base}/{leaf_hash}.narinfo"),
        format!("{base}/nix-cache-info"),
        format!("{api}/cache-config/{cache}"),
        format!("{api}/cache/{cache}/pins"),
        format!("{api}/cache/{cache}/usage"),
        format!("{base}/log/00000000000000000000000000000000-x.drv"),
    ]
    .into_iter()
    .map(|url| {
        let r = http::get(&url, server.auth());
        (url, r.status, r.text())
    })
    .collect()
}

/// Sends one route's request as `auth` against `cache` (`None` token: anonymous).
fn cross_request(
    server: &Server,
    name: &str,
    cache: &str,
    auth: Auth<'_>,
    fx: &(String, Vec<u8>, String),
) -> Resp {
    let (leaf, nar, nar_hash) = fx;
    let base = format!("{}/{cache}", server.url());
    let api = format!("{}/_api/v1", server.url());
    let h = hash_part(leaf);
    let json_h = [("Content-Type", "application/json")];
    let paths = json!({"paths": [leaf]}).to_string();
    let req = |m: &str, url: String, headers: &[(&str, &str)], body: Option<&[u8]>| {
        http::request(m, &url, auth, headers, body)
    };
    match name {
        "GET nix-cache-info" => req("GET", format!("{base}/nix-cache-info"), &[], None),
        "GET narinfo" => req("GET", format!("{base}/{h}.narinfo"), &[], None),
        "HEAD narinfo" => req("HEAD", format!("{base}/{h}.narinfo"), &[], None),
        "GET nar" => req("GET", format!("{base}/nar/{h}.nar"), &[], None),
        "GET log" => req("GET", format!("{base}/log/00000000000000000000000000000000-x.drv"), &[], None),
        "PUT nar" => req("PUT", format!("{base}/nar/{h}.nar"), &[], Some(nar)),
        "PUT narinfo" => {
            let text = format!(
                "StorePath: {leaf}\nURL: nar/{h}.nar\nCompression: none\nNarHash: {nar_hash}\nNarSize: {}\nReferences: \n",
                nar.len()
            );
            req("PUT", format!("{base}/{h}.narinfo"), &[], Some(text.as_bytes()))
        }
        "PUT log" => req(
            "PUT",
            format!("{base}/log/00000000000000000000000000000000-x.drv"),
            &[],
            Some(b"overwritten"),
        ),
        "PUT nix-cache-info" => req(
            "PUT",
            format!("{base}/nix-cache-info"),
            &[],
            Some(b"StoreDir: /nix/store\nPriority: 1\n"),
        ),
        "GET attic-cache-info" => req("GET", format!("{base}/attic-cache-info"), &[], None),
        "GET cache-config" => req("GET", format!("{api}/cache-config/{cache}"), &[], None),
        "PATCH cache-config" => req(
            "PATCH",
            format!("{api}/cache-config/{cache}"),
            &json_h,
            Some(br#"{"priority":1,"is_public":true}"#),
        ),
        "POST cache-config" => req(
            "POST",
            format!("{api}/cache-config/{cache}"),
            &json_h,
            Some(br#"{"keypair":"Generate","is_public":true,"store_dir":"/nix/store","priority":1,"upstream_cache_key_names":[]}"#),
        ),
        "DELETE cache-config" => req("DELETE", format!("{api}/cache-config/{cache}"), &[], None),
        "POST get-missing-paths" => req(
            "POST",
            format!("{api}/get-missing-paths"),
            &json_h,
            Some(json!({"cache": cache, "store_path_hashes": [h]}).to_string().as_bytes()),
        ),
        "PUT upload-path" => {
            let info = json!({
                "cache": cache, "store_path_hash": h, "store_path": leaf,
                "references": [], "system": null, "deriver": null, "sigs": [], "ca": null,
                "nar_hash": nar_hash, "nar_size": nar.len(),
            })
            .to_string();
            req("PUT", format!("{api}/upload-path"), &[("X-Attic-Nar-Info", &info)], Some(nar))
        }
        "GET pins" => req("GET", format!("{api}/cache/{cache}/pins"), &[], None),
        "POST pins" => req("POST", format!("{api}/cache/{cache}/pins"), &json_h, Some(paths.as_bytes())),
        "POST pins/remove" => req(
            "POST",
            format!("{api}/cache/{cache}/pins/remove"),
            &json_h,
            Some(paths.as_bytes()),
        ),
        "POST delete-paths" => req(
            "POST",
            format!("{api}/cache/{cache}/delete-paths"),
            &json_h,
            Some(paths.as_bytes()),
        ),
        "GET usage" => req("GET", format!("{api}/cache/{cache}/usage"), &[], None),
        "GET summary" => req("GET", format!("{api}/cache/{cache}/summary"), &[], None),
        "PUT quota" => req(
            "PUT",
            format!("{api}/cache/{cache}/quota"),
            &json_h,
            Some(br#"{"quota_bytes":1}"#),
        ),
        other => panic!("unknown route {other}"),
    }
}

/// Every route that names a cache; the destructive ones last.
const CACHE_ROUTES: &[&str] = &[
    "GET nix-cache-info",
    "GET narinfo",
    "HEAD narinfo",
    "GET nar",
    "GET log",
    "GET attic-cache-info",
    "GET cache-config",
    "GET pins",
    "GET usage",
    "GET summary",
    "POST get-missing-paths",
    "PUT nar",
    "PUT narinfo",
    "PUT log",
    "PUT nix-cache-info",
    "PUT upload-path",
    "PATCH cache-config",
    "POST pins",
    "POST pins/remove",
    "POST delete-paths",
    "PUT quota",
    "POST cache-config",
    "DELETE cache-config",
];

/// A small store path pushed into `caches` (with a build log), for the
/// cross-cache checks: (store path, NAR, NarHash).
fn seed(server: &Server, caches: &[&str], test: &str) -> (String, Vec<u8>, String) {
    let nix = Nix::new(test);
    let store = nix.store("src");
    let built = nix.build(
        &store,
        "leaf.nix",
        &format!(
            r#"builtins.derivation {{ name = "leaf"; system = builtins.currentSystem;
               builder = "/bin/sh"; args = ["-c" "echo {} > $out"]; }}"#,
            nix.salt()
        ),
    );
    let leaf = built[0].clone();
    let netrc = nix.netrc(server.token());
    for c in caches {
        nix.copy_to(
            &store,
            &format!("{}/{c}?compression=zstd", server.url()),
            &[&leaf],
            Some(&netrc),
        )
        .ok();
        let r = http::put(
            &format!(
                "{}/{c}/log/00000000000000000000000000000000-x.drv",
                server.url()
            ),
            server.auth(),
            "text/plain",
            b"a build log",
        );
        assert!(r.is_success(), "PUT log: {} {}", r.status, r.text());
    }
    let nar = nix.dump(&store, &leaf);
    let hash = nix.nar_hash(&store, &leaf);
    (leaf, nar, hash)
}

#[test]
fn a_token_for_one_cache_changes_nothing_in_another() {
    let server = Server::start();
    server.create_cache("team-a", false);
    server.create_cache("team-b", false);
    let fx = seed(&server, &["team-a", "team-b"], "cross-cache");
    let token = mint(&server, "team-a-owner", 3600, json!({"team-a": ALL_PERMS}));
    // The token is good on its own cache.
    for name in [
        "GET narinfo",
        "GET cache-config",
        "GET usage",
        "GET summary",
    ] {
        let r = cross_request(&server, name, "team-a", Auth::Bearer(&token), &fx);
        assert_eq!(r.status, 200, "{name} on team-a: {}", r.text());
    }
    let before = snapshot(&server, "team-b", hash_part(&fx.0));
    assert!(before.iter().all(|(_, s, _)| *s == 200), "{before:?}");
    let mut failures = Vec::new();
    for name in CACHE_ROUTES {
        let r = cross_request(&server, name, "team-b", Auth::Bearer(&token), &fx);
        if !matches!(r.status, 401 | 403) {
            failures.push(format!("{name}: {} {}", r.status, r.text()));
        } else if !name.starts_with("HEAD") && r.text().trim().is_empty() {
            failures.push(format!("{name}: a {} without a message", r.status));
        }
    }
    assert!(
        failures.is_empty(),
        "team-a's token on team-b:\n{}",
        failures.join("\n")
    );
    let after = snapshot(&server, "team-b", hash_part(&fx.0));
    assert_eq!(before, after, "team-b changed under team-a's token");
    // And team-a's own cache still answers the token: nothing was revoked.
    let r = cross_request(
        &server,
        "GET cache-config",
        "team-a",
        Auth::Bearer(&token),
        &fx,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn no_cache_name_discovery_through_status_or_body() {
    let server = Server::start_with(Launch::Flags);
    server.create_cache("team-a", false);
    server.create_cache("secret-b", false);
    let fx = seed(&server, &["secret-b"], "discovery");
    let token = mint(&server, "team-a-owner", 3600, json!({"team-a": ALL_PERMS}));
    let mut failures = Vec::new();
    let mut compared = 0;
    for (who, auth) in [
        ("team-a's token", Auth::Bearer(&token)),
        ("no token", Auth::None),
    ] {
        for name in CACHE_ROUTES.iter().filter(|n| **n != "DELETE cache-config") {
            let answer = |cache: &str| {
                let r = cross_request(&server, name, cache, auth, &fx);
                (r.status, r.text().replace(cache, "<cache>"))
            };
            let exists = answer("secret-b");
            let missing = answer("secret-z");
            compared += 1;
            if exists != missing {
                failures.push(format!(
                    "{who}, {name}: existing {exists:?}, missing {missing:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} probes tell a private cache from a missing one:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The probes changed nothing: secret-b still has its path.
    let r = http::get(
        &format!("{}/secret-b/{}.narinfo", server.url(), hash_part(&fx.0)),
        server.auth(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Sends `head` and the start of a body, then stops; returns what came back and
/// when (status, body, seconds), or `None` when the connection just closed.
fn stall(addr: &str, head: String, partial: &[u8]) -> (Option<(u16, String)>, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(150))).unwrap();
    let started = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(partial).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        // Complete once the head and its Content-Length of body are in.
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((h, b)) = text.split_once("\r\n\r\n") {
            let len = h
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(usize::MAX);
            if b.len() >= len {
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&got).into_owned();
    let answer = text.split_once("\r\n\r\n").map(|(h, b)| {
        let status = h
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, b.to_string())
    });
    (answer, elapsed)
}

#[test]
fn a_request_body_that_stops_arriving_is_refused_after_the_idle_timeout() {
    let s3 = S3Larder::start();
    let bucket = s3.aws(&s3.admin, &["s3", "mb", "s3://bkt"]);
    assert!(bucket.success(), "{}", bucket.describe());
    let server = &s3.server;
    let addr = server.addr();
    server.create_cache("main", false);
    let token = server.token().to_string();
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let head = |method: &str, target: &str, ctype: &str, len: usize| {
        format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{bearer}Content-Type: {ctype}\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    let mut cases: Vec<(&str, String, String, Vec<u8>)> = vec![
        (
            "narinfo PUT",
            addr.clone(),
            head(
                "PUT",
                &format!("/main/{}.narinfo", "0".repeat(32)),
                "text/x-nix-narinfo",
                1000,
            ),
            b"StorePath: ".to_vec(),
        ),
        (
            "NAR PUT",
            addr.clone(),
            head(
                "PUT",
                &format!("/main/nar/{}.nar", "1".repeat(32)),
                "application/x-nix-nar",
                100_000,
            ),
            nar_prefix(),
        ),
        (
            "API JSON body",
            addr.clone(),
            head("POST", "/_api/v1/cache/main/pins", "application/json", 1000),
            br#"{"paths":["#.to_vec(),
        ),
    ];
    // A signed S3 PutObject that stops after 1000 of 100000 bytes.
    let s3_addr = s3.addr();
    let signer = s3.signer(&s3.admin);
    let signed = signer.sign(
        "PUT",
        &s3_addr,
        "/bkt/stalled",
        "",
        &[("content-length".to_string(), "100000".to_string())],
        "UNSIGNED-PAYLOAD",
        std::time::SystemTime::now(),
    );
    let mut s3_head = "PUT /bkt/stalled HTTP/1.1\r\ncontent-length: 100000\r\n".to_string();
    for (k, v) in signed {
        s3_head.push_str(&format!("{k}: {v}\r\n"));
    }
    s3_head.push_str("\r\n");
    cases.push(("S3 PutObject", s3_addr.clone(), s3_head, vec![b's'; 1000]));

    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(what, a, h, partial)| scope.spawn(move || (*what, stall(a, h.clone(), partial))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (what, (answer, elapsed)) in outcomes {
        assert!(
            elapsed >= Duration::from_secs(50) && elapsed < Duration::from_secs(120),
            "{what}: ended after {elapsed:?} ({answer:?}), not about the 60 s body idle timeout"
        );
        let (status, body) = answer.unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert!(
            (400..500).contains(&status),
            "{what}: expected a 4xx, got {status}: {body}"
        );
        assert!(
            body.contains("no bytes") || body.contains("stopped") || body.contains("timed out"),
            "{what}: the {status} does not say the body stalled: {body}"
        );
    }
    // Nothing half-received became visible.
    let ls = s3.aws(&s3.admin, &["s3", "ls", "s3://bkt"]);
    assert!(ls.stdout.trim().is_empty(), "{}", ls.stdout);
    let mut server = s3.server;
    assert_up(&mut server);
}

/// The start of a valid NAR: one regular file of 1 MB, of which 1000 bytes.
fn nar_prefix() -> Vec<u8> {
    let mut out = Vec::new();
    for word in ["nix-archive-1", "(", "type", "regular", "contents"] {
        out.extend_from_slice(&(word.len() as u64).to_le_bytes());
        out.extend_from_slice(word.as_bytes());
        out.resize(out.len().div_ceil(8) * 8, 0);
    }
    out.extend_from_slice(&1_000_000u64.to_le_bytes());
    out.extend_from_slice(&[b'n'; 1000]);
    out
}

#[test]
fn a_write_without_rights_is_refused_before_its_body_is_read() {
    let server = Server::start();
    server.create_cache("main", false);
    let reader = mint(&server, "reader", 3600, json!({"main": ["pull"]}));
    let addr = server.addr();
    let h = "0".repeat(32);
    let put = |target: &str, auth: &str, ctype: &str, expect: bool| {
        let expect = if expect {
            "Expect: 100-continue\r\n"
        } else {
            ""
        };
        format!(
            "PUT {target} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: {ctype}\r\n{expect}Content-Length: 60000000\r\n\r\n"
        )
    };
    // Heads that announce a body just under the limit and wait for `100 Continue`
    // (as curl, and so Nix, do): the refusal must come at once, without inviting
    // a body the caller may not send.
    for (who, auth, status) in [
        ("no token", String::new(), 401),
        (
            "a pull-only token",
            format!("Authorization: Bearer {reader}\r\n"),
            403,
        ),
    ] {
        for (what, target, ctype) in [
            (
                "narinfo",
                format!("/main/{h}.narinfo"),
                "text/x-nix-narinfo",
            ),
            (
                "narinfo of a missing cache",
                format!("/nosuch/{h}.narinfo"),
                "text/x-nix-narinfo",
            ),
            ("log", format!("/main/log/{h}-x.drv"), "text/plain"),
            ("NAR", format!("/main/nar/{h}.nar"), "application/x-nix-nar"),
        ] {
            let req = put(&target, &auth, ctype, true);
            let started = Instant::now();
            let o = http::raw(&addr, req.as_bytes(), false, Duration::from_secs(30));
            let want = if what.contains("missing") {
                401
            } else {
                status
            };
            let took = started.elapsed();
            match &o {
                RawOutcome::Response(r) if r.status == want && took < Duration::from_secs(5) => {}
                _ => panic!("{what} PUT as {who}: expected {want} before any body, got {o:?} after {took:?}"),
            }
        }
    }
    // Without `Expect`, the refusal waits for the body only as long as the bounded
    // drain (10 s), not for the body.
    let req = put(
        &format!("/main/{h}.narinfo"),
        "",
        "text/x-nix-narinfo",
        false,
    );
    let started = Instant::now();
    let o = http::raw(&addr, req.as_bytes(), false, Duration::from_secs(30));
    assert_eq!(o.status(), Some(401), "{o:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn connections_that_sent_nothing_do_not_delay_a_stop() {
    let mut server = Server::start();
    let addr = server.addr();
    // Held open, silent, across the stop.
    let _silent: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    server.stop();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopping took {:?} with silent connections open",
        started.elapsed()
    );
}
