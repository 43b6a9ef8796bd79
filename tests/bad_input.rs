//! Uploads and requests a cache must refuse: NARs that do not match their narinfo,
//! broken NARs, broken narinfos, path tricks and malformed HTTP. Each is a 4xx, never
//! a 5xx, leaves nothing visible, and the server keeps serving.

use std::time::Duration;

use crate::support::http::{self, Auth, RawOutcome};
use crate::support::{basename, hash_part, Cache, Closure, Nix, Server};

const NARINFO_TYPE: &str = "text/x-nix-narinfo";
const NAR_TYPE: &str = "application/x-nix-nar";

/// A correct narinfo for `path` pointing at `nar_name`, uncompressed.
fn narinfo_for(nix: &Nix, c: &Closure, path: &str, nar_name: &str) -> String {
    let refs: Vec<String> = nix
        .references(&c.store, path)
        .iter()
        .map(|r| basename(r).to_string())
        .collect();
    format!(
        "StorePath: {path}\nURL: nar/{nar_name}\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: {}\n",
        nix.nar_hash(&c.store, path),
        nix.dump(&c.store, path).len(),
        refs.join(" ")
    )
}

fn put_narinfo(server: &Server, cache: &Cache, path: &str, body: &[u8]) -> http::Resp {
    http::put(
        &cache.at(&format!("{}.narinfo", hash_part(path))),
        server.auth(),
        NARINFO_TYPE,
        body,
    )
}

#[track_caller]
fn assert_invisible(server: &Server, cache: &Cache, path: &str) {
    let url = cache.at(&format!("{}.narinfo", hash_part(path)));
    let r = http::get(&url, server.auth());
    assert_eq!(
        r.status,
        404,
        "{path} is visible after a refused upload: {}",
        r.text()
    );
    assert_eq!(http::head(&url, server.auth()).status, 404);
}

#[track_caller]
fn assert_400(r: &http::Resp, what: &str) {
    assert_eq!(
        r.status,
        400,
        "{what}: expected 400, got {} {}",
        r.status,
        r.text()
    );
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).expect("zstd compression")
}

fn setup(test: &str) -> (Server, Cache, Nix, Closure) {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new(test);
    let c = nix.closure("src", 200 * 1024);
    (server, cache, nix, c)
}

#[test]
fn narinfo_that_does_not_match_its_nar_is_refused() {
    let (server, cache, nix, c) = setup("mismatch");
    let auth = server.auth();
    let leaf_nar = nix.dump(&c.store, &c.leaf);
    let name = format!("{}.nar", hash_part(&c.leaf));
    let nar_url = cache.at(&format!("nar/{name}"));
    let good = narinfo_for(&nix, &c, &c.leaf, &name);

    // NarHash of another path, NarSize right.
    let wrong_hash = good.replace(
        &nix.nar_hash(&c.store, &c.leaf),
        &nix.nar_hash(&c.store, &c.top),
    );
    assert_ne!(wrong_hash, good);
    let staged = http::put(&nar_url, auth, NAR_TYPE, &leaf_nar);
    assert!(staged.is_success(), "staging the NAR: {}", staged.status);
    assert_400(
        &put_narinfo(&server, &cache, &c.leaf, wrong_hash.as_bytes()),
        "wrong NarHash",
    );
    assert_invisible(&server, &cache, &c.leaf);

    // NarHash right, NarSize off by one.
    let size = leaf_nar.len();
    let wrong_size = good.replace(
        &format!("NarSize: {size}\n"),
        &format!("NarSize: {}\n", size + 1),
    );
    assert_ne!(wrong_size, good);
    assert!(http::put(&nar_url, auth, NAR_TYPE, &leaf_nar).is_success());
    assert_400(
        &put_narinfo(&server, &cache, &c.leaf, wrong_size.as_bytes()),
        "wrong NarSize",
    );
    assert_invisible(&server, &cache, &c.leaf);

    // The same upload with the true values is accepted, so the refusals above were
    // about the mismatch and nothing else.
    assert!(http::put(&nar_url, auth, NAR_TYPE, &leaf_nar).is_success());
    let r = put_narinfo(&server, &cache, &c.leaf, good.as_bytes());
    assert!(
        r.is_success(),
        "correct narinfo refused: {} {}",
        r.status,
        r.text()
    );
    let info = crate::support::fetch_narinfo(&cache, &c.leaf, auth).expect("committed narinfo");
    assert_eq!(info.require("NarHash"), nix.nar_hash(&c.store, &c.leaf));
}

#[test]
fn broken_nar_bodies_are_refused() {
    let (server, cache, nix, c) = setup("broken-nar");
    let auth = server.auth();
    let nar = nix.dump(&c.store, &c.mid);
    let h = hash_part(&c.mid);
    let mut not_zstd = b"this is not zstd ".to_vec();
    not_zstd.extend_from_slice(&nar[..64]);
    let mut full_zst = zstd(&nar);
    let cut_zst = full_zst[..full_zst.len() / 2].to_vec();
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "truncated NAR",
            format!("{h}-cut.nar"),
            nar[..nar.len() / 2].to_vec(),
        ),
        (
            "NAR missing its last byte",
            format!("{h}-cut1.nar"),
            nar[..nar.len() - 1].to_vec(),
        ),
        (
            "text instead of a NAR",
            format!("{h}-text.nar"),
            b"hello, world\n".to_vec(),
        ),
        ("empty body", format!("{h}-empty.nar"), Vec::new()),
        ("NAR with trailing garbage", format!("{h}-tail.nar"), {
            let mut v = nar.clone();
            v.extend_from_slice(b"trailing garbage");
            v
        }),
        (
            "zstd stream cut in half",
            format!("{h}-cut.nar.zst"),
            cut_zst,
        ),
        (
            "complete zstd of a truncated NAR",
            format!("{h}-cutnar.nar.zst"),
            zstd(&nar[..nar.len() / 2]),
        ),
        ("not zstd at all", format!("{h}-junk.nar.zst"), not_zstd),
    ];
    for (what, name, body) in &cases {
        let r = http::put(&cache.at(&format!("nar/{name}")), auth, NAR_TYPE, body);
        assert_400(&r, what);
        // Even a correct narinfo for it must not commit anything.
        let info = narinfo_for(&nix, &c, &c.mid, name);
        let r = put_narinfo(&server, &cache, &c.mid, info.as_bytes());
        assert!(
            (400..500).contains(&r.status),
            "narinfo after a refused NAR ({what}): {} {}",
            r.status,
            r.text()
        );
        assert_invisible(&server, &cache, &c.mid);
    }

    // Control: the whole NAR, zstd-compressed, goes through.
    let name = format!("{h}.nar.zst");
    let r = http::put(&cache.at(&format!("nar/{name}")), auth, NAR_TYPE, &full_zst);
    assert!(
        r.is_success(),
        "valid zstd NAR refused: {} {}",
        r.status,
        r.text()
    );
    let info =
        narinfo_for(&nix, &c, &c.mid, &name).replace("Compression: none", "Compression: zstd");
    let r = put_narinfo(&server, &cache, &c.mid, info.as_bytes());
    assert!(
        r.is_success(),
        "narinfo for a valid NAR: {} {}",
        r.status,
        r.text()
    );
    full_zst.clear();
    assert!(crate::support::fetch_narinfo(&cache, &c.mid, auth).is_some());
}

#[test]
fn malformed_narinfos_are_refused() {
    let (server, cache, nix, c) = setup("bad-narinfo");
    let auth = server.auth();
    let nar = nix.dump(&c.store, &c.mid);
    let name = format!("{}.nar", hash_part(&c.mid));
    let nar_url = cache.at(&format!("nar/{name}"));
    let good = narinfo_for(&nix, &c, &c.mid, &name);
    let hash = nix.nar_hash(&c.store, &c.mid);
    let size = nar.len().to_string();
    let without = |key: &str| {
        good.lines()
            .filter(|l| !l.starts_with(&format!("{key}:")))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not a narinfo at all\n".to_vec()),
        ("empty", Vec::new()),
        ("no StorePath", without("StorePath").into_bytes()),
        ("no NarHash", without("NarHash").into_bytes()),
        ("no NarSize", without("NarSize").into_bytes()),
        ("no URL", without("URL").into_bytes()),
        (
            "StorePath of another path than the URL names",
            good.replace(
                &format!("StorePath: {}", c.mid),
                &format!("StorePath: {}", c.top),
            )
            .into_bytes(),
        ),
        (
            "StorePath outside /nix/store",
            good.replace("StorePath: /nix/store/", "StorePath: /gnu/store/")
                .into_bytes(),
        ),
        (
            "StorePath with a dot-dot name",
            good.replace(
                &format!("StorePath: {}", c.mid),
                &format!("StorePath: /nix/store/{}-..", hash_part(&c.mid)),
            )
            .into_bytes(),
        ),
        (
            "NarHash not a hash",
            good.replace(&hash, "sha256:not-a-hash").into_bytes(),
        ),
        (
            "NarHash of the wrong length",
            good.replace(&hash, &hash[..hash.len() - 3]).into_bytes(),
        ),
        (
            "NarHash with an unknown algorithm",
            good.replace(&hash, &hash.replace("sha256:", "md4:"))
                .into_bytes(),
        ),
        (
            "NarSize not a number",
            good.replace(&format!("NarSize: {size}"), "NarSize: lots")
                .into_bytes(),
        ),
        (
            "negative NarSize",
            good.replace(&format!("NarSize: {size}"), &format!("NarSize: -{size}"))
                .into_bytes(),
        ),
        (
            "reference that is not a store path name",
            good.replace("References: ", "References: ../../../etc/passwd ")
                .into_bytes(),
        ),
        ("invalid UTF-8", {
            let mut v = good.clone().into_bytes();
            v.extend_from_slice(b"Deriver: \xff\xfe\xfd\n");
            v
        }),
        (
            "NUL byte in StorePath",
            good.replace(
                &format!("StorePath: {}", c.mid),
                &format!("StorePath: {}\0", c.mid),
            )
            .into_bytes(),
        ),
    ];
    for (what, body) in &cases {
        let staged = http::put(&nar_url, auth, NAR_TYPE, &nar);
        assert!(
            staged.is_success(),
            "staging the NAR before {what}: {}",
            staged.status
        );
        let r = put_narinfo(&server, &cache, &c.mid, body);
        assert_400(&r, what);
        assert_invisible(&server, &cache, &c.mid);
    }

    // Wrong content type, otherwise perfect.
    assert!(http::put(&nar_url, auth, NAR_TYPE, &nar).is_success());
    let r = http::put(
        &cache.at(&format!("{}.narinfo", hash_part(&c.mid))),
        auth,
        "image/png",
        good.as_bytes(),
    );
    assert!(
        (400..500).contains(&r.status),
        "narinfo PUT as image/png: {} {}",
        r.status,
        r.text()
    );
    assert_invisible(&server, &cache, &c.mid);

    // Control: the untouched narinfo commits.
    assert!(http::put(&nar_url, auth, NAR_TYPE, &nar).is_success());
    let r = put_narinfo(&server, &cache, &c.mid, good.as_bytes());
    assert!(
        r.is_success(),
        "correct narinfo refused: {} {}",
        r.status,
        r.text()
    );
    assert!(crate::support::fetch_narinfo(&cache, &c.mid, auth).is_some());
}

/// One raw request of the corpus.
struct Probe {
    what: &'static str,
    request: Vec<u8>,
    head: bool,
}

fn probe(
    what: &'static str,
    method: &str,
    target: &str,
    extra: &str,
    body: &[u8],
    addr: &str,
) -> Probe {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n")
            .into_bytes();
    request.extend_from_slice(body);
    Probe {
        what,
        request,
        head: method == "HEAD",
    }
}

#[test]
fn path_tricks_and_malformed_requests_get_4xx() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let public = server.create_cache("pub", true);
    let nix = Nix::new("corpus");
    let netrc = nix.netrc(server.token());
    let c = nix.closure("src", 0);
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd", cache.url),
        &[&c.top],
        Some(&netrc),
    )
    .ok();
    let addr = server.addr();
    let token = server.token().to_string();
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let h = hash_part(&c.top).to_string();
    let m = &cache.name;
    let p = &public.name;

    let mut probes: Vec<Probe> = Vec::new();
    let gets: Vec<(&'static str, String)> = vec![
        ("dot-dot to the data dir", format!("/{m}/../admin.token")),
        (
            "dot-dot from a public cache",
            format!("/{p}/../admin.token"),
        ),
        ("encoded dot-dot", format!("/{p}/%2e%2e/admin.token")),
        (
            "upper-case encoded dot-dot",
            format!("/{p}/%2E%2E/%2E%2E/etc/passwd"),
        ),
        (
            "encoded slashes in a NAR name",
            format!("/{p}/nar/..%2f..%2fadmin.token"),
        ),
        (
            "encoded slashes and dots",
            format!("/{p}/nar/%2e%2e%2f%2e%2e%2flarder.db"),
        ),
        (
            "encoded absolute path in a NAR name",
            format!("/{p}/nar/%2Fetc%2Fpasswd"),
        ),
        ("absolute path after nar/", format!("/{p}/nar//etc/passwd")),
        (
            "dot-dot in a NAR name",
            format!("/{p}/nar/../../index.redb"),
        ),
        ("dot-dot in a log name", format!("/{p}/log/../../larder.db")),
        (
            "encoded dot-dot in a log name",
            format!("/{p}/log/..%2f..%2flarder.db"),
        ),
        (
            "dot-dot in realisations",
            format!("/{p}/realisations/../../admin.token"),
        ),
        (
            "dot-dot above the root",
            "/../../../../etc/passwd".to_string(),
        ),
        ("double slash root", "//etc/passwd".to_string()),
        (
            "dot-dot as the cache name",
            "/../nix-cache-info".to_string(),
        ),
        (
            "encoded dot-dot as the cache name",
            "/%2e%2e/nix-cache-info".to_string(),
        ),
        (
            "backslash traversal",
            format!("/{p}/nar/..\\..\\admin.token"),
        ),
        ("NUL in a NAR name", format!("/{p}/nar/abc%00.nar")),
        ("pack file by name", format!("/{p}/packs/0.pack")),
        ("data dir file as a cache", "/admin.token".to_string()),
        ("short hash", format!("/{p}/abc.narinfo")),
        ("long hash", format!("/{p}/{h}0.narinfo")),
        (
            "hash with letters Nix never uses",
            format!("/{p}/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo"),
        ),
        (
            "upper-case hash",
            format!("/{p}/{}.narinfo", h.to_uppercase()),
        ),
        ("narinfo with a path", format!("/{p}/{h}.narinfo/../x")),
        ("encoded dot-dot hash", format!("/{p}/%2e%2e.narinfo")),
        (
            "cache name with a leading dash",
            "/-bad/nix-cache-info".to_string(),
        ),
        (
            "cache name with a space",
            "/bad%20name/nix-cache-info".to_string(),
        ),
        (
            "cache name with a dot",
            "/bad.name/nix-cache-info".to_string(),
        ),
        (
            "cache name too long",
            format!("/{}/nix-cache-info", "a".repeat(51)),
        ),
        (
            "cache that does not exist",
            "/nosuchcache/nix-cache-info".to_string(),
        ),
    ];
    for (what, target) in gets {
        probes.push(probe(what, "GET", &target, &bearer, b"", &addr));
        probes.push(probe(what, "HEAD", &target, &bearer, b"", &addr));
    }
    probes.push(probe(
        "absolute-form target with dot-dot",
        "GET",
        &format!("http://{addr}/{p}/../admin.token"),
        "",
        b"",
        &addr,
    ));

    // Writes through the same tricks, with a valid token.
    let puts: Vec<(&'static str, String, &str)> = vec![
        (
            "PUT over the admin token",
            format!("/{m}/../admin.token"),
            "text/plain",
        ),
        (
            "PUT encoded dot-dot",
            format!("/{m}/nar/..%2f..%2fadmin.token"),
            NAR_TYPE,
        ),
        (
            "PUT encoded dot-dot to a log",
            format!("/{m}/log/..%2f..%2flarder.db"),
            "text/plain",
        ),
        (
            "PUT a NAR with a slash in its name",
            format!("/{m}/nar/a%2fb.nar"),
            NAR_TYPE,
        ),
        (
            "PUT a narinfo with a bad hash",
            format!("/{m}/eeee.narinfo"),
            NARINFO_TYPE,
        ),
        (
            "PUT into a cache that does not exist",
            "/nosuchcache/nar/x.nar".to_string(),
            NAR_TYPE,
        ),
        (
            "PUT into a bad cache name",
            "/-x/nar/x.nar".to_string(),
            NAR_TYPE,
        ),
        (
            "PUT a pack file",
            format!("/{m}/packs/0.pack"),
            "application/octet-stream",
        ),
    ];
    for (what, target, ct) in puts {
        let extra = format!("{bearer}Content-Type: {ct}\r\nContent-Length: 5\r\n");
        probes.push(probe(what, "PUT", &target, &extra, b"hello", &addr));
    }

    // Limits.
    let huge_header = format!("X-Filler: {}\r\n", "a".repeat(1024 * 1024));
    probes.push(probe(
        "a 1 MiB header",
        "GET",
        &format!("/{p}/nix-cache-info"),
        &huge_header,
        b"",
        &addr,
    ));
    let many_headers: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    probes.push(probe(
        "2000 headers",
        "GET",
        &format!("/{p}/nix-cache-info"),
        &many_headers,
        b"",
        &addr,
    ));
    probes.push(probe(
        "a 1 MiB request target",
        "GET",
        &format!("/{p}/{}", "a".repeat(1024 * 1024)),
        "",
        b"",
        &addr,
    ));
    probes.push(probe(
        "a petabyte NAR",
        "PUT",
        &format!("/{m}/nar/{h}.nar"),
        &format!("{bearer}Content-Type: {NAR_TYPE}\r\nContent-Length: 1125899906842624\r\nExpect: 100-continue\r\n"),
        b"",
        &addr,
    ));
    probes.push(probe(
        "a 1 GiB narinfo",
        "PUT",
        &format!("/{m}/{h}.narinfo"),
        &format!("{bearer}Content-Type: {NARINFO_TYPE}\r\nContent-Length: 1073741824\r\nExpect: 100-continue\r\n"),
        b"",
        &addr,
    ));
    probes.push(probe(
        "a 1 GiB log",
        "PUT",
        &format!("/{m}/log/{h}-x.drv"),
        &format!("{bearer}Content-Type: text/plain\r\nContent-Length: 1073741824\r\nExpect: 100-continue\r\n"),
        b"",
        &addr,
    ));
    probes.push(probe(
        "Content-Length that is not a number",
        "PUT",
        &format!("/{m}/nar/{h}.nar"),
        &format!("{bearer}Content-Type: {NAR_TYPE}\r\nContent-Length: lots\r\n"),
        b"",
        &addr,
    ));
    probes.push(probe(
        "unsupported method",
        "DELETE",
        &format!("/{m}/{h}.narinfo"),
        &bearer,
        b"",
        &addr,
    ));
    probes.push(probe(
        "unknown method",
        "BREW",
        &format!("/{m}/{h}.narinfo"),
        &bearer,
        b"",
        &addr,
    ));

    let mut failures = Vec::new();
    for pr in &probes {
        let started = std::time::Instant::now();
        let outcome = http::raw(&addr, &pr.request, pr.head, Duration::from_secs(20));
        eprintln!(
            "{:<45} -> {:?} in {:?}",
            pr.what,
            outcome.status(),
            started.elapsed()
        );
        let bad = match &outcome {
            RawOutcome::Response(r) => {
                let body = String::from_utf8_lossy(&r.body);
                if body.contains(&token)
                    || body.contains("SQLite format")
                    || body.contains("root:x:0:0")
                {
                    Some(format!("leaked a secret file: {body:.200}"))
                } else if !(400..500).contains(&r.status) {
                    Some(format!("status {}", r.status))
                } else {
                    None
                }
            }
            // The one case where TCP itself may eat the answer: the server refuses a
            // request it has not finished reading and closes, and the unread rest
            // turns into a reset. Refusing it is what matters there.
            RawOutcome::NoResponse(why) if pr.request.len() > 512 * 1024 => {
                eprintln!("{}: connection closed without an answer ({why})", pr.what);
                None
            }
            RawOutcome::NoResponse(why) => Some(format!("no answer: {why}")),
        };
        if let Some(why) = bad {
            let line = String::from_utf8_lossy(&pr.request[..pr.request.len().min(160)])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            failures.push(format!("{} ({line}): {why}", pr.what));
        }
    }

    // Still alive, still serving, nothing was written.
    assert_eq!(
        http::get(&format!("{}/_health", server.url()), Auth::None).status,
        200
    );
    assert_eq!(
        http::get(&cache.at("nix-cache-info"), server.auth()).status,
        200
    );
    let token_now = std::fs::read_to_string(server.data_dir().join("admin.token")).expect("token");
    assert_eq!(token_now.trim(), token, "admin.token changed");
    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, &cache.url, &cache.public_key, Some(&netrc))
        .ok();
    assert!(
        failures.is_empty(),
        "{} of {} probes misbehaved:\n  {}",
        failures.len(),
        probes.len(),
        failures.join("\n  ")
    );
    assert!(
        !server.log().contains("panicked"),
        "the server panicked:\n{}",
        server.log()
    );
}

#[test]
fn range_requests_outside_the_nar_are_not_5xx() {
    let (server, cache, nix, c) = setup("bad-range");
    let netrc = nix.netrc(server.token());
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd", cache.url),
        &[&c.top],
        Some(&netrc),
    )
    .ok();
    let auth = server.auth();
    let info = crate::support::fetch_narinfo(&cache, &c.mid, auth).expect("narinfo");
    let url = cache.at(info.require("URL"));
    let full = http::get(&url, auth).body;
    let n = full.len();
    for range in [
        format!("bytes={}-{}", n + 10, n + 20),
        format!("bytes={n}-"),
        "bytes=5-1".to_string(),
        "bytes=abc".to_string(),
        "pages=1-2".to_string(),
    ] {
        let r = http::request("GET", &url, auth, &[("Range", &range)], None);
        match r.status {
            416 => {}
            200 => assert!(r.body == full, "Range {range}: a 200 must be the whole NAR"),
            s => panic!("Range {range}: status {s}"),
        }
    }
}
