//! The web dashboard at `/`, in a real headless Chromium driven by Selenium
//! (Debian's `chromium` and `chromium-driver`, Selenium from the test venv;
//! `tests/data/dashboard/drive.py` clicks, this file asserts). A real `nix copy`
//! push; the admin token sees the cache with the right counts, the store's
//! totals, and mints and revokes a token (checked through the API); a token with
//! rights on one cache sees that cache and no other cache's name or paths in the
//! page or in any response the page can trigger. Screenshots are saved under
//! `target/test-artifacts/dashboard/` for a person to look at.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::http::{self, Auth};
use crate::support::{basename, hash_part, Nix, Server};

/// The cache the narrow token may use, and two it may not.
const OWN: &str = "harbor";
const HIDDEN: [&str; 2] = ["zebra-vault", "quokka-den"];

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the browser script; what the page showed, as JSON.
fn drive(server: &Server, narrow: &str) -> Value {
    let cfg = json!({
        "url": server.url(),
        "admin_token": server.token(),
        "narrow_token": narrow,
        "own_cache": OWN,
        "out_dir": artifacts(),
        "mint_sub": "minted-in-the-browser",
        "delegate_sub": "delegated-in-the-browser",
    });
    let cfg_path = server.work().join("dashboard.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/dashboard/drive.py");
    let out = Command::new(crate::support::s3::python())
        .arg(&script)
        .arg(&cfg_path)
        .output()
        .expect("running the Selenium script");
    assert!(
        out.status.success(),
        "the browser script failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

fn card<'a>(cards: &'a Value, name: &str) -> &'a Value {
    cards
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no card for {name} in {cards}"))
}

fn field<'a>(card: &'a Value, name: &str) -> &'a Value {
    &card["fields"][name]
}

fn field_value(card: &Value, name: &str) -> u64 {
    field(card, name)["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} of {card} is not a number"))
}

/// The value of a `/metrics` sample line `NAME{LABELS} VALUE`.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics")) as u64
}

fn get_json(url: &str, auth: Auth<'_>) -> (u16, String) {
    let r = http::get(url, auth);
    (r.status, r.text())
}

#[test]
fn dashboard_in_a_real_browser() {
    let server = Server::start();
    let own = server.create_cache(OWN, false);
    for name in HIDDEN {
        server.create_cache(name, false);
    }

    // Real pushes: a closure to the narrow token's cache, another to a hidden one.
    let nix = Nix::new("dashboard");
    let netrc = nix.netrc(server.token());
    let c = nix.closure("src", 256 * 1024);
    let to = format!("{}?compression=zstd", own.url);
    nix.copy_to(&c.store, &to, &[&c.top], Some(&netrc)).ok();
    let other_nix = Nix::new("dashboard-hidden");
    let other_netrc = other_nix.netrc(server.token());
    let hidden = other_nix.closure("src", 64 * 1024);
    let hidden_url = format!("{}/{}?compression=zstd", server.url(), HIDDEN[0]);
    other_nix
        .copy_to(
            &hidden.store,
            &hidden_url,
            &[&hidden.top],
            Some(&other_netrc),
        )
        .ok();
    // A substitution (narinfo hits) and a lookup of a path the cache lacks (a miss).
    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, &own.url, &own.public_key, Some(&netrc))
        .ok();
    let r = http::get(
        &own.at("00000000000000000000000000000000.narinfo"),
        server.auth(),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // What the figures must be, from sources other than the page.
    let nar_bytes: u64 = c
        .paths
        .iter()
        .map(|p| nix.dump(&c.store, p).len() as u64)
        .sum();
    let metrics = http::get(&format!("{}/metrics", server.url()), server.auth()).text();
    let hits = metric(
        &metrics,
        &format!("larder_narinfo_hits_total{{cache=\"{OWN}\"}}"),
    );
    let misses = metric(
        &metrics,
        &format!("larder_narinfo_misses_total{{cache=\"{OWN}\"}}"),
    );
    assert!(
        hits >= c.paths.len() as u64 && misses >= 1,
        "{hits} {misses}"
    );
    let stats = server.stats();

    let narrow = crate::tokens::mint(
        &server,
        "narrow",
        24 * 3600,
        json!({ OWN: ["pull", "push"] }),
    );
    let seen = drive(&server, &narrow);

    // Signed out, the page holds no data at all.
    let signed_out = seen["signed_out_source"].as_str().unwrap();
    for name in [OWN, HIDDEN[0], HIDDEN[1]] {
        assert!(!signed_out.contains(name), "{name} before signing in");
    }

    // The admin token: every cache, with the figures larder's other views give.
    let admin = &seen["admin"];
    let cards = &admin["cards"];
    assert_eq!(cards.as_array().unwrap().len(), 3, "{cards}");
    let mine = card(cards, OWN);
    assert_eq!(mine["badge"], "private");
    assert_eq!(
        field_value(mine, "paths"),
        c.paths.len() as u64,
        "paths = the pushed closure"
    );
    assert_eq!(field_value(mine, "logical"), nar_bytes, "logical NAR bytes");
    let stored = field_value(mine, "stored");
    assert!(stored > 0 && stored < nar_bytes + 4096, "stored {stored}");
    assert_eq!(field_value(mine, "pushes"), c.paths.len() as u64);
    let rate = field(mine, "hit-rate");
    assert_eq!(rate["hits"].as_str(), Some(hits.to_string().as_str()));
    assert_eq!(rate["misses"].as_str(), Some(misses.to_string().as_str()));
    let pct = (100 * hits + (hits + misses) / 2) / (hits + misses);
    assert!(
        rate["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{pct}%")),
        "{rate}"
    );
    let mut recent: Vec<&str> = mine["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    recent.sort();
    let mut pushed: Vec<&str> = c.paths.iter().map(String::as_str).collect();
    pushed.sort();
    assert_eq!(recent, pushed, "recent pushes are the pushed closure");
    let conf = mine["nix_conf"].as_str().unwrap();
    assert!(
        conf.contains(&format!("extra-substituters = {}\n", own.url)),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("extra-trusted-public-keys = {}\n", own.public_key)),
        "{conf}"
    );
    assert!(
        !conf.contains(server.token()),
        "the token is never in the nix.conf lines"
    );
    let hidden_card = card(cards, HIDDEN[0]);
    assert_eq!(field_value(hidden_card, "paths"), hidden.paths.len() as u64);
    let store = &admin["store"];
    assert_eq!(store["chunks"], stats.chunks.to_string(), "{store}");
    assert_eq!(store["store-paths"], stats.store_paths.to_string());
    assert_eq!(store["nars"], stats.nars.to_string());
    // The narrow token is in the admin's list.
    let narrow_jti = crate::tokens::jti_of(&server, &narrow);
    assert!(
        admin["tokens_listed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["jti"] == narrow_jti.as_str() && t["state"] == "live"),
        "{}",
        admin["tokens_listed"]
    );
    // The token is kept in session storage only: no cookie, not in the URL.
    assert_eq!(admin["session_storage_keys"], json!(["larder.token"]));
    assert_eq!(admin["cookies"], json!([]));
    assert!(!admin["location"].as_str().unwrap().contains(server.token()));

    // Minted in the browser, revoked in the browser: really revoked.
    let minted = seen["minted"]["token"].as_str().unwrap();
    let minted_jti = seen["minted"]["jti"].as_str().unwrap();
    assert_eq!(crate::tokens::jti_of(&server, minted), minted_jti);
    let (status, body) = get_json(
        &format!("{}/_api/v1/caches", server.url()),
        Auth::Bearer(minted),
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    let r = http::request(
        "POST",
        &format!("{}/_api/v1/tokens/inspect", server.url()),
        server.auth(),
        &[("Content-Type", "application/json")],
        Some(json!({ "token": minted }).to_string().as_bytes()),
    );
    let inspected: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(inspected["revoked"], true, "{inspected}");
    assert_eq!(inspected["claims"]["sub"], "minted-in-the-browser");
    assert_eq!(inspected["claims"]["caches"], json!({ OWN: ["pull"] }));

    // Readable on a phone: nothing wider than a 390 px screen.
    assert!(
        seen["phone_overflow_px"].as_i64().unwrap() <= 0,
        "the page is {} px wider than a phone",
        seen["phone_overflow_px"]
    );

    // Signing out forgets the token and everything shown.
    assert_eq!(seen["after_sign_out_storage"], json!([]));
    let after = seen["after_sign_out_source"].as_str().unwrap();
    for name in [OWN, HIDDEN[0], HIDDEN[1]] {
        assert!(
            !after.contains(name),
            "{name} still on the page after sign-out"
        );
    }

    // The narrow token: its cache, and no trace of any other.
    let n = &seen["narrow"];
    let names: Vec<&str> = n["cards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec![OWN]);
    assert_eq!(
        field_value(card(&n["cards"], OWN), "paths"),
        c.paths.len() as u64
    );
    assert!(n["store"].is_null(), "no store totals: {}", n["store"]);
    assert!(
        n["refused_wider"]
            .as_str()
            .unwrap()
            .contains("cannot delegate"),
        "{}",
        n["refused_wider"]
    );
    assert!(
        n["refused_longer"].as_str().unwrap().contains("outlive"),
        "{}",
        n["refused_longer"]
    );
    let delegated = n["delegated"]["token"].as_str().unwrap();
    let r = http::request(
        "POST",
        &format!("{}/_api/v1/tokens/inspect", server.url()),
        server.auth(),
        &[("Content-Type", "application/json")],
        Some(json!({ "token": delegated }).to_string().as_bytes()),
    );
    let inspected: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(inspected["revoked"], true, "{inspected}");
    assert_eq!(inspected["claims"]["chain"], json!([narrow_jti]));

    let mut forbidden: Vec<String> = HIDDEN.iter().map(|s| s.to_string()).collect();
    for p in &hidden.paths {
        if !c.paths.contains(p) {
            forbidden.push(hash_part(p).to_owned());
            forbidden.push(basename(p).to_owned());
        }
    }
    let source = n["page_source"].as_str().unwrap();
    assert!(source.contains(OWN));
    for f in &forbidden {
        assert!(!source.contains(f.as_str()), "{f} in the narrow page");
    }
    let responses = n["responses"].as_array().unwrap();
    let summary_seen = responses.iter().any(|r| {
        r["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/cache/{OWN}/summary"))
            && r["body"]
                .as_str()
                .is_some_and(|b| b.contains(basename(&c.top)))
    });
    assert!(summary_seen, "the capture saw the summary: {responses:?}");
    for r in responses {
        let body = r["body"].as_str().unwrap_or_default();
        for f in &forbidden {
            assert!(
                !body.contains(f.as_str()),
                "{f} sent to the browser by {}",
                r["url"]
            );
        }
    }

    // The same through the API the page uses: a hidden cache's summary answers
    // exactly as a cache that does not exist.
    for name in HIDDEN.iter().chain(&["no-such-cache"]) {
        let (status, body) = get_json(
            &format!("{}/_api/v1/cache/{name}/summary", server.url()),
            Auth::Bearer(&narrow),
        );
        assert_eq!(status, 401, "{name}: {body}");
    }
    let (status, body) = get_json(
        &format!("{}/_api/v1/cache/{OWN}/summary", server.url()),
        Auth::None,
    );
    assert_eq!(status, 401, "no token: {body}");

    // Nothing the page ran broke the Content-Security-Policy.
    for line in seen["console"].as_array().unwrap() {
        let line = line.as_str().unwrap();
        assert!(
            !line.contains("Content Security Policy") && !line.contains("Refused to"),
            "{line}"
        );
    }
    for png in ["admin_png", "phone_png", "narrow_png"] {
        let path = seen[png].as_str().unwrap();
        let bytes = std::fs::read(path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{path} is a PNG");
        println!("screenshot: {path}");
    }
}

#[test]
fn dashboard_assets_have_types_csp_and_etags() {
    let server = Server::start();
    for (path, ctype) in [
        ("/", "text/html"),
        ("/_dashboard/app.js", "text/javascript"),
        ("/_dashboard/app.css", "text/css"),
    ] {
        let url = format!("{}{path}", server.url());
        let r = http::get(&url, Auth::None);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(ctype),
            "{path}: {:?}",
            r.header("content-type")
        );
        let csp = r.header("content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        let etag = r.header("etag").unwrap().to_owned();
        let again = http::request("GET", &url, Auth::None, &[("If-None-Match", &etag)], None);
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
    }
    // No inline script or style in the page: everything is a same-origin file.
    let page = http::get(&format!("{}/", server.url()), Auth::None).text();
    assert!(page.contains("<script src=\"/_dashboard/app.js\""));
    assert_eq!(page.matches("<script").count(), 1, "one external script");
    assert!(!page.contains("style="), "no inline style");
    assert!(page.contains("name=\"viewport\""), "a viewport for phones");
}
