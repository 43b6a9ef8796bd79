//! Built-in HTTPS (issue #5): certificates from a real ACME CA (Pebble) over HTTP-01
//! and TLS-ALPN-01, restarts that order nothing, renewal while clients stay
//! connected, a CA that is down at start, operator certificate files swapped on
//! disk, Host checking, and the real Nix 2.8 substituting over HTTPS.
//!
//! Every test runs its own Pebble on free ports, with Pebble's HTTP-01 and
//! TLS-ALPN-01 ports pointed at the listeners that test's larder opens.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::http::{self, RawOutcome};
use crate::support::nix::s;
use crate::support::pebble::Pebble;
use crate::support::process;
use crate::support::server::{larder, Launch};
use crate::support::tls::{
    free_port, free_ports, replace_file, roots, ConnectProxy, HttpsConn, TestCa,
};
use crate::support::workdir::Workdir;
use crate::support::{hash_part, Nix, Server};

const CACHE_HOST: &str = "cache.example.test";
const S3_HOST: &str = "s3.example.test";
/// How long a fresh larder may take to get its first certificate from Pebble.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];

/// A larder in ACME mode against its own Pebble.
struct AcmeSetup {
    pebble: Pebble,
    server: Server,
    http_port: u16,
    tls_port: u16,
    config: PathBuf,
    _config_dir: Workdir,
}

impl AcmeSetup {
    /// Writes the config and prepares both processes; starts neither.
    /// `extra_top` goes before `[tls]`, `extra_tls` into it.
    fn new(
        challenge: &str,
        validity_secs: Option<u64>,
        extra_top: &str,
        extra_tls: &str,
    ) -> AcmeSetup {
        let [http_port, tls_port] = free_ports::<2>();
        let pebble = Pebble::new(http_port, tls_port, validity_secs);
        let config_dir = Workdir::new("tls-config");
        let config = config_dir.join("larder.toml");
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:{http_port}"
{extra_top}

[tls]
listen = "127.0.0.1:{tls_port}"
redirect_exempt_paths = ["/_api/"]
{extra_tls}

[tls.acme]
domains = ["{CACHE_HOST}", "{S3_HOST}"]
directory = "{directory}"
directory_ca_file = "{ca}"
challenge = "{challenge}"
contact = "mailto:ops@example.test"
retry_initial_secs = 1
retry_max_secs = 2
"#,
                directory = pebble.directory(),
                ca = pebble.directory_ca_file.display(),
            ),
        )
        .unwrap();
        // The plain listener must be the port Pebble validates HTTP-01 on.
        let server = Server::new_stopped_with_extra(
            Launch::Env,
            &["--config", s(&config)],
            &[("LARDER_LISTEN", &format!("127.0.0.1:{http_port}"))],
        );
        AcmeSetup {
            pebble,
            server,
            http_port,
            tls_port,
            config,
            _config_dir: config_dir,
        }
    }

    fn tls_addr(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }

    /// Connects as `name`, trusting Pebble's root.
    fn connect(&self, name: &str, alpn: &[&[u8]]) -> Result<HttpsConn, String> {
        HttpsConn::connect(&self.tls_addr(), name, self.pebble.roots(), alpn)
    }

    /// Waits until HTTPS serves a certificate that verifies for `name`.
    fn wait_for_certificate(&self, name: &str) -> HttpsConn {
        let roots = self.pebble.roots();
        let deadline = Instant::now() + ISSUE_TIMEOUT;
        loop {
            match HttpsConn::connect(&self.tls_addr(), name, roots.clone(), H1) {
                Ok(c) => return c,
                Err(e) if Instant::now() >= deadline => panic!(
                    "no verifiable certificate for {name} within {ISSUE_TIMEOUT:?}: {e}\nlarder log:\n{}",
                    self.server.log()
                ),
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn tls_status(&self) -> String {
        let data = self.server.data_dir().to_str().unwrap().to_string();
        self.server
            .cli(&[
                "tls",
                "status",
                "--config",
                s(&self.config),
                "--data-dir",
                &data,
            ])
            .ok()
            .stdout
    }

    fn tls_status_json(&self) -> serde_json::Value {
        let data = self.server.data_dir().to_str().unwrap().to_string();
        let out = self
            .server
            .cli(&[
                "tls",
                "status",
                "--json",
                "--config",
                s(&self.config),
                "--data-dir",
                &data,
            ])
            .ok();
        serde_json::from_str(out.stdout.trim()).unwrap()
    }
}

/// A raw plain-HTTP GET with an explicit Host header.
fn plain_get(port: u16, path: &str, host: &str) -> http::RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    match http::raw(
        &format!("127.0.0.1:{port}"),
        req.as_bytes(),
        false,
        Duration::from_secs(10),
    ) {
        RawOutcome::Response(r) => r,
        RawOutcome::NoResponse(why) => panic!("GET {path} on :{port}: no response: {why}"),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o777
}

/// `curl --http2` over HTTPS as `name`; returns (HTTP version, status, body).
fn curl_https(root: &Path, name: &str, port: u16, path: &str) -> (String, String) {
    let out = process::run(
        Command::new("curl")
            .args(["-sS", "--http2", "--cacert", s(root)])
            .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_version} %{http_code}"])
            .arg(format!("https://{name}:{port}{path}")),
        Duration::from_secs(30),
    )
    .ok();
    let (body, tail) = out.stdout.rsplit_once('\n').unwrap();
    (tail.to_string(), body.to_string())
}

#[test]
fn tls_acme_http01_two_names_then_restart_orders_nothing() {
    let mut t = AcmeSetup::new("http-01", None, "", "");
    t.pebble.start();
    t.server.start_again();
    let stdout = t.server.wait_stdout(Duration::from_secs(5), |l| {
        l.starts_with("larder tls listening on https://")
    });
    assert_eq!(
        stdout.as_deref(),
        Some(format!("larder tls listening on https://{}", t.tls_addr()).as_str())
    );

    // One certificate, both names, from Pebble, over HTTP-01.
    let first = t.wait_for_certificate(CACHE_HOST);
    let fingerprint = first.leaf_sha256();
    let s3 = t.connect(S3_HOST, H1).unwrap();
    assert_eq!(
        s3.leaf_sha256(),
        fingerprint,
        "one certificate serves both names"
    );
    assert!(t.server.log().contains("answered an HTTP-01 validation"));
    assert_eq!(t.pebble.orders(), 1, "{}", t.pebble.log());

    // ALPN: HTTP/2 when offered, HTTP/1.1 otherwise.
    assert_eq!(
        t.connect(CACHE_HOST, H2_AND_H1).unwrap().alpn().as_deref(),
        Some("h2")
    );
    let mut h1 = t.connect(CACHE_HOST, H1).unwrap();
    assert_eq!(h1.alpn().as_deref(), Some("http/1.1"));

    // The cache API over HTTPS, and its public endpoint is the HTTPS one.
    t.server.create_cache("demo", true);
    let info = t.server.cache_info("demo");
    assert_eq!(
        info["substituter_endpoint"],
        format!("https://{CACHE_HOST}:{}/demo", t.tls_port),
        "{info}"
    );
    // `larder use` (talking to the API over the exempted plain path) prints it too.
    let printed = t.server.remote(&["use", "demo"]).ok().stdout;
    assert!(
        printed.contains(&format!(
            "extra-substituters = https://{CACHE_HOST}:{}/demo",
            t.tls_port
        )),
        "{printed}"
    );
    let (status, body) = h1.get("/demo/nix-cache-info", None).unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("StoreDir: /nix/store"));
    let root = t.pebble.root_file();
    let (version, body) = curl_https(&root, CACHE_HOST, t.tls_port, "/demo/nix-cache-info");
    assert_eq!(version, "2 200", "curl over HTTP/2: {body}");
    assert!(body.contains("StoreDir: /nix/store"));

    // The plain listener redirects to HTTPS, except exempted paths and /_health.
    let r = plain_get(t.http_port, "/demo/nix-cache-info?x=1", CACHE_HOST);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(
            format!(
                "https://{CACHE_HOST}:{}/demo/nix-cache-info?x=1",
                t.tls_port
            )
            .as_str()
        )
    );
    assert_eq!(plain_get(t.http_port, "/_health", CACHE_HOST).status, 200);
    assert_eq!(
        plain_get(t.http_port, "/_api/v1/caches", CACHE_HOST).status,
        200
    );
    assert_eq!(
        plain_get(t.http_port, "/.well-known/acme-challenge/nope", CACHE_HOST).status,
        404
    );

    // `larder tls status`: each name, issuer, expiry, next renewal.
    let status = t.tls_status();
    for needle in [
        CACHE_HOST,
        S3_HOST,
        "issuer:       Pebble",
        "expires:",
        "next renewal:",
        "orders placed: 1",
    ] {
        assert!(
            status.contains(needle),
            "{needle:?} missing from:\n{status}"
        );
    }
    let json = t.tls_status_json();
    assert_eq!(json["certificate"]["sha256"], fingerprint.as_str());
    let names = json["names"].as_array().unwrap();
    assert_eq!(names.len(), 2);
    for n in names {
        assert_eq!(n["covered"], true, "{json}");
        assert!(n["next_renewal"].as_i64().unwrap() < n["not_after"].as_i64().unwrap());
    }

    // Persisted with private permissions.
    let acme = t.server.data_dir().join("acme");
    assert_eq!(mode(&acme), 0o700);
    for f in ["account.json", "certificate.json", "state.json"] {
        assert_eq!(mode(&acme.join(f)), 0o600, "{f}");
    }

    // Restart: the stored certificate serves at once and no order is placed.
    drop(first);
    drop(s3);
    drop(h1);
    t.server.restart();
    let again = t
        .connect(CACHE_HOST, H1)
        .expect("HTTPS right after the restart");
    assert_eq!(again.leaf_sha256(), fingerprint);
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        t.pebble.orders(),
        1,
        "a restart placed an order:\n{}",
        t.pebble.log()
    );
    assert_eq!(t.tls_status_json()["orders_placed"], 1);
    assert!(t.server.log().contains("serving the stored certificate"));
}

#[test]
fn tls_acme_tls_alpn01_fresh_instance() {
    let mut t = AcmeSetup::new("tls-alpn-01", None, &format!("s3_host = \"{S3_HOST}\""), "");
    t.pebble.start();
    t.server.start_again();
    let conn = t.wait_for_certificate(CACHE_HOST);
    let mut s3 = t.connect(S3_HOST, H1).unwrap();
    assert_eq!(conn.leaf_sha256(), s3.leaf_sha256());
    let log = t.server.log();
    assert!(log.contains("answered a TLS-ALPN-01 validation"), "{log}");
    assert!(!log.contains("answered an HTTP-01 validation"), "{log}");
    assert_eq!(t.pebble.orders(), 1);
    let mut cache = conn;
    let (status, body) = cache.get("/_health", None).unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));

    // One HTTPS listener, two services by Host: `s3_host` requests go to the S3 API.
    let (status, body) = s3.get("/", None).unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("<Error>") || body.contains("ListAllMyBucketsResult"),
        "S3 over HTTPS answered {status}: {body}"
    );
}

#[test]
fn tls_nix_substitutes_over_https_with_ssl_cert_file() {
    let mut t = AcmeSetup::new("http-01", None, "", "");
    t.pebble.start();
    t.server.start_again();
    drop(t.wait_for_certificate(CACHE_HOST));
    let cache = t.server.create_cache("main", false);
    let root = t.pebble.root_file();
    // Nix resolves names itself; a CONNECT proxy stands in for DNS, and TLS still
    // runs end to end with SNI cache.example.test, verified against Pebble's root.
    let proxy = ConnectProxy::start(&t.tls_addr());
    let nix = Nix::new("tls-nix");
    let netrc = nix.dir().join("netrc-https");
    std::fs::write(
        &netrc,
        format!("machine {CACHE_HOST} password {}\n", t.server.token()),
    )
    .unwrap();
    let c = nix.closure("src", 200 * 1024);
    let base = format!("https://{CACHE_HOST}:{}/main", t.tls_port);
    let nix_cmd = |program: &str| {
        let mut cmd = nix.cmd(program);
        for v in [
            "http_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "all_proxy",
            "no_proxy",
            "NO_PROXY",
        ] {
            cmd.env_remove(v);
        }
        // Nix 2.8 takes its CA file from NIX_SSL_CERT_FILE (later versions also
        // have the `ssl-cert-file` setting, which 2.8 calls unknown).
        cmd.env("https_proxy", proxy.url())
            .env("NIX_SSL_CERT_FILE", &root)
            .args(["--option", "netrc-file", s(&netrc)]);
        cmd
    };

    let push = process::run(
        nix_cmd("nix").args([
            "copy",
            "--from",
            s(&c.store),
            "--to",
            &format!("{base}?compression=zstd"),
            &c.top,
        ]),
        Duration::from_secs(180),
    );
    assert!(
        push.success(),
        "nix copy over HTTPS: {}\n{}",
        push.describe(),
        t.server.log()
    );

    let dst = nix.store("dst");
    let pull = process::run(
        nix_cmd("nix-store").args([
            "--store",
            s(&dst),
            "-r",
            &c.top,
            "--option",
            "substituters",
            &base,
            "--option",
            "trusted-public-keys",
            &cache.public_key,
        ]),
        Duration::from_secs(180),
    );
    assert!(
        pull.success(),
        "nix-store -r over HTTPS: {}",
        pull.describe()
    );
    for p in &c.paths {
        assert!(nix.is_valid(&dst, p), "{p} was not substituted");
    }

    // Trusting another CA instead, Nix refuses the certificate: the trust is real.
    let other = nix.dir().join("other-ca.pem");
    std::fs::write(&other, TestCa::new("unrelated CA").pem()).unwrap();
    let mut untrusted = nix_cmd("nix");
    untrusted.env("NIX_SSL_CERT_FILE", &other);
    let refused = process::run(
        untrusted.args([
            "path-info",
            "--store",
            &base,
            &format!("/nix/store/{}-x", hash_part(&c.top)),
        ]),
        Duration::from_secs(60),
    );
    assert!(!refused.success(), "{}", refused.describe());
    assert!(
        refused.stderr.contains("SSL peer certificate"),
        "{}",
        refused.describe()
    );
}

#[test]
fn tls_acme_renews_while_serving_and_a_connected_client_sees_no_error() {
    // Pebble issues 15 s certificates: renewal is due 10 s after issuance.
    let mut t = AcmeSetup::new("http-01", Some(15), "", "");
    t.pebble.start();
    t.server.start_again();
    let mut kept = t.wait_for_certificate(CACHE_HOST);
    let first = kept.leaf_sha256();
    let roots = t.pebble.roots();
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut requests = 0;
    let renewed = loop {
        let (status, _) = kept
            .get("/_health", None)
            .unwrap_or_else(|e| panic!("the connected client saw an error: {e}"));
        assert_eq!(status, 200);
        requests += 1;
        let fresh = HttpsConn::connect(&t.tls_addr(), CACHE_HOST, roots.clone(), H1)
            .unwrap_or_else(|e| panic!("a new client could not connect during renewal: {e}"));
        if fresh.leaf_sha256() != first {
            break fresh.leaf_sha256();
        }
        assert!(
            Instant::now() < deadline,
            "no renewal within 45 s:\n{}",
            t.server.log()
        );
        thread::sleep(Duration::from_millis(200));
    };
    // The old connection goes on working after the swap.
    for _ in 0..5 {
        let (status, _) = kept
            .get("/_health", None)
            .expect("the old connection after renewal");
        assert_eq!(status, 200);
    }
    assert_eq!(
        kept.leaf_sha256(),
        first,
        "an established connection keeps its certificate"
    );
    assert_ne!(renewed, first);
    assert!(requests > 5, "only {requests} requests before the renewal");
    assert!(t.pebble.orders() >= 2, "{}", t.pebble.log());
    let log = t.server.log();
    assert!(
        log.matches("ACME: certificate installed").count() >= 2,
        "{log}"
    );
}

#[test]
fn tls_acme_ca_unreachable_at_start_serves_plain_http_and_retries() {
    let mut t = AcmeSetup::new(
        "http-01",
        None,
        "",
        r#"redirect_exempt_cidrs = ["127.0.0.0/8"]"#,
    );
    // Pebble is configured but not running: its directory refuses connections.
    t.server.start_again();
    let cache = t.server.create_cache("lan", true);
    let r = http::get(&cache.at("nix-cache-info"), http::Auth::None);
    assert_eq!(
        r.status, 200,
        "plain HTTP serves exempted clients while the CA is down"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    while t
        .server
        .log()
        .matches("ACME: could not obtain a certificate")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no retry logged:\n{}",
            t.server.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let log = t.server.log();
    assert!(
        log.to_lowercase().contains("connection refused"),
        "the log gives the reason:\n{log}"
    );
    // Nothing to serve yet: the handshake is refused by the server itself.
    let refused = HttpsConn::connect(
        &t.tls_addr(),
        CACHE_HOST,
        roots(&TestCa::new("any").pem()),
        H1,
    )
    .err()
    .expect("no certificate to serve yet");
    assert!(refused.contains("alert"), "{refused}");
    let status = t.tls_status();
    assert!(status.contains("last failure"), "{status}");
    assert!(status.contains("certificate:  none yet"), "{status}");

    // The CA comes up: the next retry gets the certificate.
    t.pebble.start();
    let mut conn = t.wait_for_certificate(CACHE_HOST);
    let (status, _) = conn.get("/lan/nix-cache-info", None).unwrap();
    assert_eq!(status, 200);
    assert!(!t.tls_status().contains("last failure"));
}

/// A larder in static mode serving `cert.pem`/`key.pem`.
struct StaticSetup {
    server: Server,
    cert: PathBuf,
    key: PathBuf,
    tls_port: u16,
    config: PathBuf,
    dir: Workdir,
}

fn static_server(ca: &TestCa, names: &[&str], top: &str) -> StaticSetup {
    let tls_port = free_port();
    let dir = Workdir::new("tls-static");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let leaf = ca.issue(names);
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let config = dir.join("larder.toml");
    std::fs::write(
        &config,
        format!(
            "{top}\n[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nredirect_exempt_cidrs = [\"127.0.0.1/32\"]\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let server = Server::start_with_extra(Launch::Flags, &["--config", s(&config)], &[]);
    StaticSetup {
        server,
        cert,
        key,
        tls_port,
        config,
        dir,
    }
}

#[test]
fn tls_cert_files_replaced_swap_the_served_certificate() {
    let ca = TestCa::new("larder test CA");
    let roots = roots(&ca.pem());
    let StaticSetup {
        server,
        cert,
        key,
        tls_port: port,
        config,
        dir,
    } = static_server(&ca, &[CACHE_HOST, "127.0.0.1"], "");
    let addr = format!("127.0.0.1:{port}");
    let first_pem = std::fs::read_to_string(&cert).unwrap();
    let first = crate::support::tls::Issued {
        cert_pem: first_pem,
        key_pem: String::new(),
    }
    .sha256();
    let mut kept = HttpsConn::connect(&addr, CACHE_HOST, roots.clone(), H1).unwrap();
    assert_eq!(kept.leaf_sha256(), first);

    // larder's own CLI speaks HTTPS, trusting a private CA through SSL_CERT_FILE.
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let https = format!("https://{addr}");
    let ok = larder(
        &[
            "stats",
            "--json",
            "--server",
            &https,
            "--token",
            server.token(),
        ],
        &[("SSL_CERT_FILE", s(&ca_file))],
    );
    assert!(ok.success(), "{}", ok.describe());
    assert!(ok.stdout.contains("\"chunks\""), "{}", ok.describe());
    let other = dir.join("other.pem");
    std::fs::write(&other, TestCa::new("unrelated CA").pem()).unwrap();
    let refused = larder(
        &[
            "stats",
            "--json",
            "--server",
            &https,
            "--token",
            server.token(),
        ],
        &[("SSL_CERT_FILE", s(&other))],
    );
    assert!(!refused.success(), "{}", refused.describe());

    // Replace the key, then the certificate: in between the pair does not match and
    // the old certificate must keep serving.
    let next = ca.issue(&[CACHE_HOST]);
    replace_file(&key, &next.key_pem);
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        HttpsConn::connect(&addr, CACHE_HOST, roots.clone(), H1)
            .unwrap()
            .leaf_sha256(),
        first,
        "a mismatched pair must not be served"
    );
    replace_file(&cert, &next.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fp = HttpsConn::connect(&addr, CACHE_HOST, roots.clone(), H1)
            .unwrap()
            .leaf_sha256();
        if fp == next.sha256() {
            break;
        }
        assert_eq!(fp, first);
        assert!(
            Instant::now() < deadline,
            "the new files were not picked up:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    // The connection made before the swap is still open and still served.
    let (status, _) = kept
        .get("/_health", None)
        .expect("the old connection after the swap");
    assert_eq!(status, 200);
    assert_eq!(kept.leaf_sha256(), first);

    // SIGHUP reloads too.
    let pid = server.pid().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("SIGHUP received") || !server.log().contains("reason=\"SIGHUP\"") {
        assert!(
            Instant::now() < deadline,
            "no reload on SIGHUP:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = kept
        .get("/_health", None)
        .expect("the old connection after SIGHUP");
    assert_eq!(status, 200);

    // `larder tls status` in file mode.
    let data = server.data_dir().to_str().unwrap().to_string();
    let out = server
        .cli(&["tls", "status", "--config", s(&config), "--data-dir", &data])
        .ok()
        .stdout;
    assert!(
        out.contains("mode: files") && out.contains(CACHE_HOST),
        "{out}"
    );
    assert!(out.contains("larder test CA"), "{out}");
    assert!(out.contains(&next.sha256()), "{out}");
}

#[test]
fn tls_allowed_hosts_refuses_unknown_host_with_400() {
    let ca = TestCa::new("larder test CA");
    let roots: Arc<rustls::RootCertStore> = roots(&ca.pem());
    let top = format!("allowed_hosts = [\"{CACHE_HOST}\", \"{S3_HOST}\"]");
    let setup = static_server(&ca, &[CACHE_HOST, S3_HOST], &top);
    let (server, port) = (&setup.server, setup.tls_port);
    let plain_port: u16 = server.addr().rsplit(':').next().unwrap().parse().unwrap();

    // Plain HTTP (the test client is in the exempted network, so no redirect).
    assert_eq!(
        plain_get(plain_port, "/_api/v1/caches", "evil.example.test").status,
        400
    );
    assert_eq!(
        plain_get(plain_port, "/_api/v1/caches", "127.0.0.1").status,
        400
    );
    assert_eq!(
        plain_get(plain_port, "/_api/v1/caches", CACHE_HOST).status,
        200
    );
    assert_eq!(
        plain_get(plain_port, "/_api/v1/caches", &format!("{S3_HOST}:80")).status,
        200
    );
    assert_eq!(
        plain_get(plain_port, "/_health", "evil.example.test").status,
        200
    );
    let body = plain_get(plain_port, "/x/nix-cache-info", "evil.example.test").body;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], 400);

    // HTTPS, HTTP/1.1: the Host header decides, not the SNI name.
    let addr = format!("127.0.0.1:{port}");
    let mut c = HttpsConn::connect(&addr, CACHE_HOST, roots.clone(), H1).unwrap();
    assert_eq!(
        c.get("/_api/v1/caches", Some("evil.example.test"))
            .unwrap()
            .0,
        400
    );
    assert_eq!(c.get("/_api/v1/caches", None).unwrap().0, 200);

    // HTTPS, HTTP/2 (curl sends :authority).
    let root = setup.dir.join("ca.pem");
    std::fs::write(&root, ca.pem()).unwrap();
    let (v, _) = curl_https(&root, CACHE_HOST, port, "/_api/v1/caches");
    assert_eq!(v, "2 200");
    let out = process::run(
        Command::new("curl")
            .args(["-sS", "--http2", "--cacert", s(&root)])
            .args(["--resolve", &format!("{CACHE_HOST}:{port}:127.0.0.1")])
            .args([
                "-H",
                "Host: evil.example.test",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("https://{CACHE_HOST}:{port}/_api/v1/caches")),
        Duration::from_secs(30),
    )
    .ok();
    assert_eq!(out.stdout.trim(), "400");
}

/// `larder_tls_certificate_expiry_seconds` follows the served certificate, per
/// name, through a swap of the files.
#[test]
fn tls_certificate_expiry_is_a_metric_per_name() {
    let ca = TestCa::new("larder test CA");
    let StaticSetup {
        server,
        cert,
        key,
        dir: _dir,
        ..
    } = static_server(&ca, &[CACHE_HOST, "127.0.0.1"], "");
    let expiry = |name: &str| -> f64 {
        let r = http::get(&format!("{}/metrics", server.url()), server.auth());
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        let prefix = format!("larder_tls_certificate_expiry_seconds{{name=\"{name}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no expiry for {name} in\n{text}"))
            .trim()
            .parse()
            .expect("a number")
    };
    // rcgen's default leaf lives until the year 4096.
    assert!(expiry(CACHE_HOST) > 1e10);

    let now = time::OffsetDateTime::now_utc();
    let leaf = ca.issue_until(&[CACHE_HOST], Some(now + time::Duration::days(10)));
    crate::support::tls::replace_file(&key, &leaf.key_pem);
    crate::support::tls::replace_file(&cert, &leaf.cert_pem);
    let ten_days = 10.0 * 86400.0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = expiry(CACHE_HOST);
        if (ten_days - 120.0..=ten_days).contains(&left) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gauge still says {left} s after the swap"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
