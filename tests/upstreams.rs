//! The pull-through cache: a larder cache with upstreams substitutes what it does
//! not hold from them. The upstream is a real binary cache written by
//! `nix copy --to file://…?compression=xz` and signed with a test key, served by
//! a small static server (`tests/data/upstream_server.py`) that logs every request
//! and can fail on purpose; and a second larder.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::http::{self, Auth};
use crate::support::nix::s;
use crate::support::server::Launch;
use crate::support::workdir::Workdir;
use crate::support::{hash_part, Cache, Closure, NarInfo, Nix, Server};

/// A `file://` binary cache behind the static test server.
struct StaticCache {
    work: Workdir,
    dir: PathBuf,
    log: PathBuf,
    control: PathBuf,
    child: Option<Child>,
    url: String,
}

impl StaticCache {
    /// `nix copy` the closure of `top` into a fresh xz cache signed with `sk`,
    /// and serve it.
    fn new(nix: &Nix, store: &Path, top: &str, sk: &Path) -> StaticCache {
        let work = Workdir::new("upstream");
        let dir = work.join("cache");
        let to = format!("file://{}?compression=xz&secret-key={}", s(&dir), s(sk));
        nix.copy_to(store, &to, &[top], None).ok();
        let mut c = StaticCache {
            log: work.join("requests.log"),
            control: work.join("control"),
            dir,
            work,
            child: None,
            url: String::new(),
        };
        c.start();
        c
    }

    fn start(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/upstream_server.py");
        let mut child = Command::new("python3")
            .args([script, s(&self.dir), s(&self.log), s(&self.control)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting python3 upstream_server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("upstream server said {line:?}"));
        self.url = format!("http://127.0.0.1:{port}");
        self.child = Some(child);
    }

    /// The outage: the server is gone.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Misbehave from now on (see the script); "" to behave.
    fn control(&self, rules: &str) {
        std::fs::write(&self.control, rules).unwrap();
    }

    /// GET requests whose path contains `needle`.
    fn gets(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("GET ") && l.contains(needle))
            .count()
    }

    fn narinfo(&self, path: &str) -> NarInfo {
        let f = self.dir.join(format!("{}.narinfo", hash_part(path)));
        NarInfo::parse(&std::fs::read_to_string(f).unwrap())
    }

    fn narinfo_file(&self, path: &str) -> PathBuf {
        self.dir.join(format!("{}.narinfo", hash_part(path)))
    }
}

impl Drop for StaticCache {
    fn drop(&mut self) {
        self.stop();
        let _ = &self.work;
    }
}

/// A larder whose `[upstreams]` times out after 2 s and remembers no misses.
fn proxy_server() -> (Server, Workdir) {
    let w = Workdir::new("proxy-config");
    let cfg = w.join("larder.toml");
    std::fs::write(
        &cfg,
        "[upstreams]\ntimeout = \"2s\"\nnegative_ttl = \"0s\"\n",
    )
    .unwrap();
    let server = Server::start_with_extra(Launch::Flags, &["--config", s(&cfg)], &[]);
    (server, w)
}

/// A public cache of `server` with one upstream, made by `larder cache create`.
fn proxy_cache(server: &Server, name: &str, url: &str, key: &str) -> Cache {
    server
        .remote(&[
            "cache",
            "create",
            name,
            "--public",
            "--upstream",
            &format!("{url},{key}"),
        ])
        .ok();
    server.cache(name)
}

/// Waits until the server holds `n` stored paths: a fetched NAR is committed
/// just after its clients got it (once checked), when the ingest has caught up.
#[track_caller]
fn wait_stored(server: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = server.stats().store_paths;
        if got == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} stored paths, expected {n}: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn narinfo_url(cache: &Cache, path: &str) -> String {
    cache.at(&format!("{}.narinfo", hash_part(path)))
}

/// The narinfo larder serves for `path` (must be 200).
fn served(cache: &Cache, path: &str) -> NarInfo {
    let r = http::get(&narinfo_url(cache, path), Auth::None);
    assert_eq!(r.status, 200, "GET narinfo of {path}: {}", r.text());
    NarInfo::parse(&r.text())
}

fn key_names(info: &NarInfo) -> Vec<String> {
    info.all("Sig")
        .iter()
        .filter_map(|s| s.split_once(':').map(|(n, _)| n.to_string()))
        .collect()
}

fn setup(test: &str, blob: usize) -> (Nix, Closure, String, StaticCache) {
    let nix = Nix::new(test);
    let c = nix.closure("src", blob);
    let (sk, pk) = nix.generate_key(&format!("upstream-{test}"));
    let up = StaticCache::new(&nix, &c.store, &c.top, &sk);
    (nix, c, pk, up)
}

#[test]
fn upstream_closure_substitutes_through_larder_then_from_larder_alone() {
    let (nix, c, upstream_pk, mut up) = setup("upstream-closure", 512 * 1024);
    let (server, _cfg) = proxy_server();
    let cache = proxy_cache(&server, "nixos", &up.url, &upstream_pk);
    assert_eq!(server.cache_info("nixos")["upstreams"][0]["url"], up.url);

    // Before the NAR is fetched: the upstream's signature passed through, the
    // cache's own added, the NAR uncompressed.
    let first = served(&cache, &c.leaf);
    let names = key_names(&first);
    assert!(names.contains(&cache.key_name().to_string()), "{names:?}");
    let up_name = upstream_pk.split_once(':').unwrap().0.to_string();
    assert!(names.contains(&up_name), "{names:?}");
    assert_eq!(first.require("Compression"), "none");
    assert_eq!(
        first.require("NarHash"),
        up.narinfo(&c.leaf).require("NarHash")
    );

    // A machine that trusts only the upstream's key substitutes through larder.
    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, &cache.url, &upstream_pk, None)
        .ok();
    crate::substitution::check_substituted(&nix, &c, &dst);
    for p in &c.paths {
        let hp = hash_part(p);
        assert_eq!(
            up.gets(&format!("/{hp}.narinfo")),
            1,
            "narinfo of {p} asked once"
        );
        let nar = up.narinfo(p).require("URL").to_string();
        assert_eq!(up.gets(&nar), 1, "NAR of {p} fetched once");
    }

    // The upstream figures: a found lookup and a checked fetch per path, the
    // bytes the upstream sent (its FileSizes), the upstream up.
    let m = crate::metrics::scrape(&format!("{}/metrics", server.url()), server.auth());
    let by = |name: &str, result: &str| {
        m.sum(name, &[("upstream", up.url.as_str()), ("result", result)])
    };
    let n = c.paths.len() as f64;
    assert_eq!(by("larder_upstream_narinfo_lookups_total", "found"), n);
    assert_eq!(by("larder_upstream_nar_fetches_total", "checked"), n);
    assert_eq!(by("larder_upstream_nar_fetches_total", "failed"), 0.0);
    let file_sizes: f64 = c
        .paths
        .iter()
        .map(|p| up.narinfo(p).require("FileSize").parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        m.sum(
            "larder_upstream_fetched_bytes_total",
            &[("upstream", up.url.as_str())]
        ),
        file_sizes
    );
    assert_eq!(
        m.sum("larder_upstream_up", &[("upstream", up.url.as_str())]),
        1.0
    );

    // Now stored like a pushed path: zstd, counted in stats.
    wait_stored(&server, 3);
    let stored = served(&cache, &c.mid);
    assert_eq!(stored.require("Compression"), "zstd");
    assert!(key_names(&stored).contains(&up_name));

    // The upstream goes away; a fresh store trusting only larder's key gets the
    // whole closure from larder.
    up.stop();
    let dst2 = nix.store("dst2");
    nix.substitute(&dst2, &c.top, &cache.url, &cache.public_key, None)
        .ok();
    crate::substitution::check_substituted(&nix, &c, &dst2);

    // A path no upstream can confirm while it is down: 404, so Nix moves on.
    let absent = format!("{}.narinfo", "0".repeat(32));
    assert_eq!(http::get(&cache.at(&absent), Auth::None).status, 404);
    let m = crate::metrics::scrape(&format!("{}/metrics", server.url()), server.auth());
    assert_eq!(
        m.sum("larder_upstream_up", &[("upstream", up.url.as_str())]),
        0.0,
        "an upstream that stopped answering is down"
    );
    assert!(
        m.sum(
            "larder_upstream_narinfo_lookups_total",
            &[("upstream", up.url.as_str()), ("result", "error")]
        ) >= 1.0
    );
    assert_eq!(m.value("larder_upstream_nar_fetches_running"), 0.0);
    let log = server.log();
    assert_eq!(
        log.matches("upstream is failing").count(),
        1,
        "one outage, logged once: {log}"
    );
}

#[test]
fn a_second_larder_as_upstream() {
    let nix = Nix::new("upstream-larder");
    let c = nix.closure("src", 256 * 1024);
    let origin = Server::start();
    let o = origin.create_cache("origin", true);
    let netrc = nix.netrc(origin.token());
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd", o.url),
        &[&c.top],
        Some(&netrc),
    )
    .ok();

    let (lan, cfg) = proxy_server();
    let cache = proxy_cache(&lan, "lan", &o.url, &o.public_key);

    // `larder use` on a LAN machine puts the pull-through cache first, ahead of
    // cache.nixos.org (Nix's default, kept behind it).
    let nix_conf = cfg.join("nix.conf");
    let netrc = cfg.join("netrc");
    lan.remote(&[
        "use",
        "lan",
        "--write",
        "--nix-conf",
        s(&nix_conf),
        "--netrc",
        s(&netrc),
    ])
    .ok();
    let conf = std::fs::read_to_string(&nix_conf).unwrap();
    let subs = conf
        .lines()
        .find_map(|l| l.strip_prefix("substituters = "))
        .unwrap_or_else(|| panic!("no substituters line: {conf}"));
    let entries: Vec<&str> = subs.split_whitespace().collect();
    assert_eq!(
        entries,
        [
            format!("{}?priority=39", cache.url).as_str(),
            "https://cache.nixos.org/"
        ],
        "{conf}"
    );
    assert!(conf.contains(&cache.public_key), "{conf}");

    // Nix substitutes through that entry, trusting only the origin's key.
    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, entries[0], &o.public_key, None)
        .ok();
    crate::substitution::check_substituted(&nix, &c, &dst);
    wait_stored(&lan, 3);
}

#[test]
fn unverifiable_narinfos_are_404_and_nothing_is_stored() {
    let (nix, c, _upstream_pk, up) = setup("upstream-badsig", 0);
    let (server, _cfg) = proxy_server();
    // The upstream signs with a key this cache was not told to trust.
    let (_, other_pk) = nix.generate_key("not-the-upstream");
    let wrong = proxy_cache(&server, "wrongkey", &up.url, &other_pk);
    let r = http::get(&narinfo_url(&wrong, &c.leaf), Auth::None);
    assert_eq!(r.status, 404, "{}", r.text());

    // The right key, but a narinfo changed after signing.
    let right = proxy_cache(&server, "tampered", &up.url, &_upstream_pk);
    let f = up.narinfo_file(&c.mid);
    let text = std::fs::read_to_string(&f).unwrap();
    let size: u64 = NarInfo::parse(&text).require("NarSize").parse().unwrap();
    let tampered = text.replace(
        &format!("NarSize: {size}"),
        &format!("NarSize: {}", size + 8),
    );
    assert_ne!(tampered, text);
    std::fs::write(&f, tampered).unwrap();
    let r = http::get(&narinfo_url(&right, &c.mid), Auth::None);
    assert_eq!(r.status, 404, "{}", r.text());

    // Nix gets a clean failure. Larder may keep the untouched leaf (its narinfo
    // verifies), but never the tampered path, nor the top that needs it.
    let dst = nix.store("dst");
    let out = nix.substitute(&dst, &c.top, &right.url, &right.public_key, None);
    assert!(!out.success(), "substituting a tampered closure succeeded");
    assert_eq!(
        http::get(&narinfo_url(&right, &c.mid), Auth::None).status,
        404
    );
    assert_eq!(served(&right, &c.top).require("Compression"), "none");
    assert!(server.stats().store_paths <= 1, "{:?}", server.stats());
    assert!(server.log().contains("upstream answer refused"));
}

/// GET a proxied NAR through larder: how it ended, and how long it took.
fn fetch_through(cache: &Cache, path: &str) -> (Result<http::Resp, String>, Duration, u64) {
    let info = served(cache, path);
    let size: u64 = info.require("NarSize").parse().unwrap();
    let t = Instant::now();
    let r = http::try_request("GET", &cache.at(info.require("URL")), Auth::None, &[], None);
    (r, t.elapsed(), size)
}

#[track_caller]
fn assert_no_good_body(r: &Result<http::Resp, String>, size: u64, what: &str) {
    match r {
        Err(_) => {}
        Ok(resp) => assert!(
            resp.status != 200 && resp.status >= 500,
            "{what}: a {} with {} of {size} bytes",
            resp.status,
            resp.body.len()
        ),
    }
}

#[test]
fn upstream_failures_fail_cleanly_and_store_nothing() {
    let (nix, c, pk, up) = setup("upstream-failures", 2 * 1024 * 1024);
    let (server, _cfg) = proxy_server();

    // Upstream 500 on everything: a 404, logged once as an outage; its recovery
    // is logged too.
    let cache = proxy_cache(&server, "c500", &up.url, &pk);
    up.control("* status 500\n");
    for _ in 0..2 {
        assert_eq!(
            http::get(&narinfo_url(&cache, &c.leaf), Auth::None).status,
            404
        );
    }
    up.control("");
    assert_eq!(served(&cache, &c.leaf).require("StorePath"), c.leaf);
    let log = server.log();
    assert_eq!(log.matches("upstream is failing").count(), 1, "{log}");
    assert_eq!(log.matches("upstream recovered").count(), 1, "{log}");

    // 500 on the NAR only: larder waits for the first bytes before its status
    // line, so the client gets a 502 (never a 200) and nothing is stored.
    up.control("/nar/ status 500\n");
    let (r, _, size) = fetch_through(&cache, &c.mid);
    assert_no_good_body(&r, size, "upstream NAR 500");
    assert_eq!(r.as_ref().map(|x| x.status).ok(), Some(502), "{r:?}");

    // Truncated NAR (after more than a client's first piece): the client's
    // connection is cut short.
    up.control("/nar/ truncate\n");
    let (r, _, _) = fetch_through(&cache, &c.mid);
    assert!(
        r.is_err(),
        "truncated upstream NAR: {:?}",
        r.map(|x| x.status)
    );

    // Slow upstream: stalls mid-NAR; the client is cut off after the timeout (2 s).
    up.control("/nar/ stall\n");
    let (r, took, _) = fetch_through(&cache, &c.mid);
    assert!(
        r.is_err(),
        "stalled upstream NAR: {:?}",
        r.map(|x| x.status)
    );
    assert!(
        took < Duration::from_secs(30),
        "stalled client waited {took:?}"
    );
    // And slow narinfos: a 404 within the timeout, not a hang.
    up.control(".narinfo delay 6\n");
    let t = Instant::now();
    assert_eq!(
        http::get(&narinfo_url(&cache, &c.top), Auth::None).status,
        404
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    up.control("");

    // A NAR that decodes but is not the signed one (same size, one byte changed).
    let nar_file = up.dir.join(up.narinfo(&c.mid).require("URL"));
    let original = std::fs::read(&nar_file).unwrap();
    let mut nar = nix.dump(&c.store, &c.mid);
    let at = nar
        .windows(5)
        .position(|w| w == b"hello")
        .expect("mid's NAR has its script");
    nar[at] = b'j';
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
    enc.write_all(&nar).unwrap();
    std::fs::write(&nar_file, enc.finish().unwrap()).unwrap();
    let (r, _, _) = fetch_through(&cache, &c.mid);
    assert!(r.is_err(), "wrong NarHash: {:?}", r.map(|x| x.status));
    assert!(
        server.log().contains("not the signed NarHash"),
        "{}",
        server.log()
    );

    // None of that stored anything; the spool is empty again.
    assert_eq!(server.stats().store_paths, 0, "a failed fetch was stored");
    assert_eq!(served(&cache, &c.mid).require("Compression"), "none");
    // (A fetch removes its spool file just after telling its clients.)
    let spool = server.data_dir().join("proxy");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = std::fs::read_dir(&spool)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "spool files left: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Four fetches failed (NAR 500, truncated, stalled, wrong hash); none
    // checked out; the 500s and the slow narinfo counted as errors.
    let m = crate::metrics::scrape(&format!("{}/metrics", server.url()), server.auth());
    let by = |name: &str, result: &str| {
        m.sum(name, &[("upstream", up.url.as_str()), ("result", result)])
    };
    assert_eq!(by("larder_upstream_nar_fetches_total", "failed"), 4.0);
    assert_eq!(by("larder_upstream_nar_fetches_total", "checked"), 0.0);
    assert!(by("larder_upstream_narinfo_lookups_total", "error") >= 2.0);

    // With the upstream healthy again the same path comes through and is stored.
    std::fs::write(&nar_file, original).unwrap();
    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, &cache.url, &cache.public_key, None)
        .ok();
    crate::substitution::check_substituted(&nix, &c, &dst);
    wait_stored(&server, 3);
}

#[test]
fn sixteen_clients_share_one_upstream_fetch() {
    let (nix, c, pk, up) = setup("upstream-16", 2 * 1024 * 1024);
    let (server, _cfg) = proxy_server();
    let cache = proxy_cache(&server, "shared", &up.url, &pk);

    // 16 narinfo lookups of one path at once: one upstream request.
    up.control(".narinfo delay 1\n");
    let url = narinfo_url(&cache, &c.mid);
    let answers: Vec<http::Resp> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|_| sc.spawn(|| http::get(&url, Auth::None)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|r| r.status == 200));
    assert_eq!(up.gets(&format!("/{}.narinfo", hash_part(&c.mid))), 1);

    // 16 clients of one uncached NAR at once: one upstream fetch, 16 whole bodies.
    up.control("/nar/ delay 1\n");
    let info = served(&cache, &c.mid);
    let nar_url = cache.at(info.require("URL"));
    let expected = nix.dump(&c.store, &c.mid);
    let bodies: Vec<http::Resp> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|_| sc.spawn(|| http::get(&nar_url, Auth::None)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for b in &bodies {
        assert_eq!(b.status, 200);
        assert!(b.body == expected, "a client got a different NAR");
    }
    let upstream_nar = up.narinfo(&c.mid).require("URL").to_string();
    assert_eq!(
        up.gets(&upstream_nar),
        1,
        "the NAR was fetched more than once"
    );
    wait_stored(&server, 1);
}

#[test]
fn upstreams_are_set_through_the_api_and_cli_and_bad_ones_refused() {
    let server = Server::start();
    let api = format!("{}/_api/v1/cache-config", server.url());
    let key = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
    let post = |name: &str, body: serde_json::Value| {
        http::request(
            "POST",
            &format!("{api}/{name}"),
            server.auth(),
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
    };

    // Refused with a 400 that says what is wrong.
    for (upstream, says) in [
        (
            serde_json::json!({ "url": "cache.nixos.org", "public_keys": [key] }),
            "http:// or https://",
        ),
        (
            serde_json::json!({ "url": "https://cache.nixos.org", "public_keys": [] }),
            "public_keys is empty",
        ),
        (
            serde_json::json!({ "url": "https://cache.nixos.org", "public_keys": ["nope"] }),
            "public key",
        ),
    ] {
        let r = post(
            "bad",
            serde_json::json!({ "keypair": "Generate", "upstreams": [upstream] }),
        );
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(says), "{}", r.text());
    }

    // Made, shown, replaced and cleared.
    let r = post(
        "nixos",
        serde_json::json!({ "keypair": "Generate", "is_public": true,
            "upstreams": [{ "url": "https://cache.nixos.org/", "public_keys": [key] }] }),
    );
    assert!(r.is_success(), "{}", r.text());
    let info = server.cache_info("nixos");
    assert_eq!(info["upstreams"][0]["url"], "https://cache.nixos.org");
    assert_eq!(info["upstreams"][0]["priority"], 50);
    server
        .remote(&[
            "cache",
            "configure",
            "nixos",
            "--upstream",
            "cache.nixos.org",
            "--upstream",
            &format!("http://127.0.0.1:9,{key},priority=10"),
        ])
        .ok();
    let info = server.cache_info("nixos");
    assert_eq!(info["upstreams"][0]["priority"], 40);
    assert_eq!(info["upstreams"][1]["url"], "http://127.0.0.1:9");
    assert_eq!(info["upstreams"][1]["priority"], 10);
    let out = server
        .remote(&["cache", "configure", "nixos", "--upstream", "ftp://x,k"])
        .fails();
    assert!(out.stderr.contains("--upstream"), "{}", out.describe());
    server
        .remote(&["cache", "configure", "nixos", "--no-upstreams"])
        .ok();
    assert!(server.cache_info("nixos").get("upstreams").is_none());
    // A cache without upstreams answers a miss with a plain 404.
    let r = http::get(
        &format!("{}/nixos/{}.narinfo", server.url(), "0".repeat(32)),
        Auth::None,
    );
    assert_eq!(r.status, 404);
}
