//! The files next to narinfos and NARs: build logs, NAR listings (`.ls`) and
//! realisations, written by Nix or by hand and read back byte for byte.

use crate::support::http::{self, Auth};
use crate::support::{basename, hash_part, Nix, Server};

#[test]
fn build_logs_round_trip_through_nix() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("logs");
    let netrc = nix.netrc(server.token());
    let src = nix.store("src");
    let line = format!("log-line-{}", nix.salt());
    let (out, drv) = nix.logged_build(&src, &line);

    nix.copy_to(
        &src,
        &format!("{}?compression=zstd", cache.url),
        &[&out],
        Some(&netrc),
    )
    .ok();
    let mut cmd = nix.cmd("nix");
    cmd.args(["store", "copy-log", "--from", crate::support::nix::s(&src)])
        .args(["--to", &cache.url])
        .args(["--option", "netrc-file", crate::support::nix::s(&netrc)])
        .arg(&drv);
    crate::support::process::run(&mut cmd, crate::support::nix::NIX_TIMEOUT).ok();

    let url = cache.at(&format!("log/{}", basename(&drv)));
    let r = http::get(&url, server.auth());
    assert_eq!(r.status, 200, "GET {url}");
    assert!(r.text().contains(&line), "log is {:?}", r.text());
    assert_eq!(
        http::get(&url, Auth::None).status,
        401,
        "log of a private cache"
    );

    // `nix log` finds it through the output's Deriver.
    let mut cmd = nix.cmd("nix");
    cmd.args(["log", "--store", &cache.url])
        .args(["--option", "netrc-file", crate::support::nix::s(&netrc)])
        .arg(&out);
    let shown = crate::support::process::run(&mut cmd, crate::support::nix::NIX_TIMEOUT).ok();
    assert!(shown.stdout.contains(&line), "{}", shown.describe());
}

#[test]
fn raw_log_put_and_get() {
    let server = Server::start();
    let cache = server.create_cache("main", true);
    let name = "0123456789abcdfghijklmnpqrsvwxyz-thing.drv";
    let url = cache.at(&format!("log/{name}"));
    assert_eq!(http::get(&url, Auth::None).status, 404);
    let body = b"line one\nline two \xe2\x9c\x93\n".repeat(1000);
    let r = http::put(&url, server.auth(), "text/plain; charset=utf-8", &body);
    assert!(r.is_success(), "PUT log: {} {}", r.status, r.text());
    let got = http::get(&url, Auth::None);
    assert_eq!(got.status, 200);
    assert!(
        got.body == body,
        "log came back different ({} bytes)",
        got.body.len()
    );
}

#[test]
fn nar_listings_match_what_nix_writes() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("listing");
    let netrc = nix.netrc(server.token());
    let c = nix.closure("src", 100 * 1024);
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd&write-nar-listing=true", cache.url),
        &[&c.top],
        Some(&netrc),
    )
    .ok();
    // Nix writes the same listings into a plain directory cache: the reference.
    let reference = nix.dir().join("file-cache");
    nix.copy_to(
        &c.store,
        &format!(
            "file://{}?compression=zstd&write-nar-listing=true",
            reference.display()
        ),
        &[&c.top],
        None,
    )
    .ok();
    for path in &c.paths {
        let name = format!("{}.ls", hash_part(path));
        let expected: serde_json::Value = serde_json::from_slice(
            &std::fs::read(reference.join(&name)).expect("Nix wrote a listing"),
        )
        .expect("Nix's listing is JSON");
        let r = http::get(&cache.at(&name), server.auth());
        assert_eq!(r.status, 200, "GET {name}");
        let got: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{name} is not JSON ({e}): {}", r.text()));
        assert_eq!(got, expected, "listing of {path}");
    }
    let absent = cache.at("00000000000000000000000000000000.ls");
    assert_eq!(http::get(&absent, server.auth()).status, 404);
}

#[test]
fn realisations_round_trip() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let drv_hash = "sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0";
    let out_path = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-out";
    let doc = format!(
        r#"{{"dependentRealisations":{{}},"id":"{drv_hash}!out","outPath":"{}","signatures":[]}}"#,
        &out_path["/nix/store/".len()..]
    );
    let url = cache.at(&format!("realisations/{drv_hash}!out.doi"));
    assert_eq!(http::get(&url, server.auth()).status, 404);
    assert_eq!(
        http::put(&url, Auth::None, "application/json", doc.as_bytes()).status,
        401
    );
    let r = http::put(&url, server.auth(), "application/json", doc.as_bytes());
    assert!(r.is_success(), "PUT realisation: {} {}", r.status, r.text());
    let got = http::get(&url, server.auth());
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), doc);
    assert_eq!(http::get(&url, Auth::None).status, 401);

    let drv = "0123456789abcdfghijklmnpqrsvwxyz-thing.drv";
    let url2 = cache.at(&format!("build-trace-v2/{drv}/out.doi"));
    assert_eq!(http::get(&url2, server.auth()).status, 404);
    let doc2 = format!(r#"{{"outPath":"{}","signatures":[]}}"#, basename(out_path));
    let r = http::put(&url2, server.auth(), "application/json", doc2.as_bytes());
    assert!(r.is_success(), "PUT build trace: {} {}", r.status, r.text());
    let got = http::get(&url2, server.auth());
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), doc2);
    // Another output of the same derivation is a different document.
    assert_eq!(
        http::get(
            &cache.at(&format!("build-trace-v2/{drv}/dev.doi")),
            server.auth()
        )
        .status,
        404
    );
}
