//! Who may read and write: the admin token (as Bearer or as a netrc Basic password),
//! private and public caches, and the signature Nix checks on the way down.

use crate::support::http::{self, Auth};
use crate::support::{fetch_narinfo, hash_part, Nix, Server};

#[test]
fn wrong_trusted_key_is_rejected_by_nix() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("wrong-key");
    let netrc = nix.netrc(server.token());
    let c = nix.closure("src", 0);
    let to = format!("{}?compression=zstd", cache.url);
    nix.copy_to(&c.store, &to, &[&c.top], Some(&netrc)).ok();

    // Same key name, different key: only the signature itself can tell them apart.
    let (_, other_key) = nix.generate_key(cache.key_name());
    assert_ne!(other_key, cache.public_key);
    let dst = nix.store("dst");
    let out = nix.substitute(&dst, &c.top, &cache.url, &other_key, Some(&netrc));
    out.fails();
    for p in &c.paths {
        assert!(!nix.is_valid(&dst, p), "{p} was accepted under a wrong key");
    }

    // A key under another name: no signature matches at all.
    let (_, stranger) = nix.generate_key("somebody-else-1");
    nix.substitute(&dst, &c.top, &cache.url, &stranger, Some(&netrc))
        .fails();
    assert!(!nix.is_valid(&dst, &c.top));

    // The cache's own key works in the very same store.
    nix.substitute(&dst, &c.top, &cache.url, &cache.public_key, Some(&netrc))
        .ok();
    assert!(nix.is_valid(&dst, &c.top));
}

#[test]
fn push_without_a_token_is_refused_and_logged() {
    let server = Server::start();
    let cache = server.create_cache("main", true);
    let nix = Nix::new("no-token");
    let c = nix.closure("src", 0);
    let to = format!("{}?compression=zstd", cache.url);
    let out = nix.copy_to(&c.store, &to, &[&c.top], None);
    out.fails();
    assert!(
        server.log().contains("missing token"),
        "server log does not say `missing token`:\n{}",
        server.log()
    );
    for p in &c.paths {
        assert!(
            fetch_narinfo(&cache, p, server.auth()).is_none(),
            "{p} was stored without a token"
        );
    }
}

#[test]
fn push_with_a_wrong_token_is_refused_and_logged() {
    let server = Server::start();
    let cache = server.create_cache("main", true);
    let nix = Nix::new("bad-token");
    let wrong = format!("{}x", server.token());
    let netrc = nix.netrc(&wrong);
    let c = nix.closure("src", 0);
    let to = format!("{}?compression=zstd", cache.url);
    nix.copy_to(&c.store, &to, &[&c.top], Some(&netrc)).fails();
    assert!(
        server.log().contains("invalid token"),
        "server log does not say `invalid token`:\n{}",
        server.log()
    );
    for p in &c.paths {
        assert!(
            fetch_narinfo(&cache, p, server.auth()).is_none(),
            "{p} was stored with a wrong token"
        );
    }
}

#[test]
fn raw_writes_need_the_admin_token() {
    let server = Server::start();
    let cache = server.create_cache("open", true);
    let nix = Nix::new("raw-auth");
    let c = nix.closure("src", 0);
    let nar = nix.dump(&c.store, &c.leaf);
    let nar_url = cache.at(&format!("nar/{}.nar", hash_part(&c.leaf)));

    for (auth, why) in [
        (Auth::None, "missing token"),
        (Auth::Bearer("not-the-token"), "invalid token"),
        (Auth::Basic("anyone", "not-the-token"), "invalid token"),
    ] {
        let r = http::put(&nar_url, auth, "application/x-nix-nar", &nar);
        assert_eq!(r.status, 401, "PUT nar with {auth:?}: {}", r.text());
        let r = http::put(
            &cache.at("log/00000000000000000000000000000000-x.drv"),
            auth,
            "text/plain",
            b"log",
        );
        assert_eq!(r.status, 401, "PUT log with {auth:?}");
        assert!(
            server.log().contains(why),
            "server log lacks {why:?} after {auth:?}:\n{}",
            server.log()
        );
    }
    // Any user name works with the token as the Basic password, and so does Bearer.
    let ok = http::put(
        &nar_url,
        Auth::Basic("whoever", server.token()),
        "application/x-nix-nar",
        &nar,
    );
    assert!(
        ok.is_success(),
        "PUT nar with Basic token: {} {}",
        ok.status,
        ok.text()
    );
    let ok = http::put(&nar_url, server.auth(), "application/x-nix-nar", &nar);
    assert!(
        ok.is_success(),
        "PUT nar with Bearer token: {} {}",
        ok.status,
        ok.text()
    );
}

#[test]
fn private_cache_reads_need_the_token() {
    let server = Server::start();
    let cache = server.create_cache("secret", false);
    let nix = Nix::new("private-read");
    let netrc = nix.netrc(server.token());
    let c = nix.closure("src", 0);
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd", cache.url),
        &[&c.top],
        Some(&netrc),
    )
    .ok();
    let narinfo = cache.at(&format!("{}.narinfo", hash_part(&c.top)));

    for url in [cache.at("nix-cache-info"), narinfo.clone()] {
        let r = http::get(&url, Auth::None);
        assert_eq!(r.status, 401, "anonymous GET {url}");
        let r = http::head(&url, Auth::None);
        assert_eq!(r.status, 401, "anonymous HEAD {url}");
        let r = http::get(&url, Auth::Bearer("nope"));
        assert_eq!(r.status, 401, "GET {url} with a wrong token");
        assert_eq!(http::get(&url, server.auth()).status, 200, "GET {url}");
        let r = http::get(&url, Auth::Basic("", server.token()));
        assert_eq!(r.status, 200, "GET {url} with the token as Basic password");
    }
    let info = fetch_narinfo(&cache, &c.top, server.auth()).expect("narinfo");
    let r = http::get(&cache.at(info.require("URL")), Auth::None);
    assert_eq!(r.status, 401, "anonymous NAR download from a private cache");
    assert!(server.log().contains("missing token"));
    assert!(server.log().contains("invalid token"));

    // Nix without the netrc cannot substitute; with it, it can.
    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, &cache.url, &cache.public_key, None)
        .fails();
    assert!(!nix.is_valid(&dst, &c.top));
    nix.substitute(&dst, &c.top, &cache.url, &cache.public_key, Some(&netrc))
        .ok();
}

#[test]
fn public_cache_reads_need_no_token() {
    let server = Server::start();
    let cache = server.create_cache("open", true);
    let nix = Nix::new("public-read");
    let netrc = nix.netrc(server.token());
    let c = nix.closure("src", 100 * 1024);
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd", cache.url),
        &[&c.top],
        Some(&netrc),
    )
    .ok();
    assert_eq!(
        http::get(&cache.at("nix-cache-info"), Auth::None).status,
        200
    );

    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, &cache.url, &cache.public_key, None)
        .ok();
    crate::substitution::check_substituted(&nix, &c, &dst);

    // Public means readable, not writable.
    let r = http::put(
        &cache.at(&format!("{}.narinfo", hash_part(&c.top))),
        Auth::None,
        "text/x-nix-narinfo",
        b"StorePath: /nix/store/x\n",
    );
    assert_eq!(r.status, 401, "anonymous narinfo PUT to a public cache");
}
