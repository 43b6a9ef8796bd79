//! Pushing closures with `nix copy` and substituting them back with Nix, for every
//! compression Nix 2.8 can write.

use std::collections::BTreeSet;

use crate::support::http;
use crate::support::{
    assert_same_tree, basename, fetch_narinfo, hash_part, in_store, Cache, Closure, Nix, Server,
};

/// Random bytes in the middle path of the "big" closures: enough for many chunks.
const BLOB_BYTES: usize = 3 * 1024 * 1024;

/// Pushes a closure with `?compression=<compression>` and checks everything a user
/// relies on: the served narinfos, the NAR bytes, and a real substitution.
fn round_trip(test: &str, compression: &str, blob_bytes: usize) {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new(test);
    let netrc = nix.netrc(server.token());
    let c = nix.closure("src", blob_bytes);

    let to = format!("{}?compression={compression}", cache.url);
    nix.copy_to(&c.store, &to, &[&c.top], Some(&netrc)).ok();

    check_served_closure(&server, &cache, &nix, &c);

    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, &cache.url, &cache.public_key, Some(&netrc))
        .ok();
    check_substituted(&nix, &c, &dst);
}

/// Every narinfo of the closure is served as zstd, signed by the cache key, with the
/// right references, and its NAR decodes to exactly what Nix dumps locally.
pub fn check_served_closure(server: &Server, cache: &Cache, nix: &Nix, c: &Closure) {
    let auth = server.auth();
    for path in &c.paths {
        let info = fetch_narinfo(cache, path, auth)
            .unwrap_or_else(|| panic!("{path} was pushed but its narinfo is 404"));
        assert_eq!(info.require("StorePath"), path);
        assert_eq!(info.require("Compression"), "zstd", "served Compression");
        let url = info.require("URL");
        assert!(
            url.starts_with("nar/") && url.ends_with(".nar.zst") && !url[4..].contains('/'),
            "served URL should be nar/<name>.nar.zst, got {url:?}"
        );
        let expected_refs: BTreeSet<String> = nix
            .references(&c.store, path)
            .iter()
            .map(|r| basename(r).to_string())
            .collect();
        let served_refs: BTreeSet<String> = info.references().into_iter().collect();
        assert_eq!(served_refs, expected_refs, "References of {path}");
        assert_eq!(info.require("NarHash"), nix.nar_hash(&c.store, path));
        let nar = nix.dump(&c.store, path);
        assert_eq!(info.require("NarSize"), nar.len().to_string());
        let sigs = info.all("Sig");
        assert!(
            sigs.iter()
                .any(|s| s.starts_with(&format!("{}:", cache.key_name()))),
            "no Sig by {} on {path}: {sigs:?}",
            cache.key_name()
        );

        let r = http::get(&cache.at(url), auth);
        assert_eq!(r.status, 200, "GET {url}");
        let got = crate::support::decompress("zstd", &r.body)
            .unwrap_or_else(|e| panic!("NAR of {path} is not zstd: {e}"));
        assert!(got == nar, "NAR of {path} differs from nix store dump-path");

        // What Nix itself reads back from the cache.
        let netrc = nix.netrc(server.token());
        let pi = nix.path_info(&cache.url, path, Some(&netrc));
        assert!(
            Nix::info_valid(&pi),
            "nix path-info --store {}: {pi}",
            cache.url
        );
        let local = nix.path_info(crate::support::nix::s(&c.store), path, None);
        assert_eq!(pi["narHash"], local["narHash"], "narHash of {path}");
        assert_eq!(pi["narSize"], local["narSize"], "narSize of {path}");
        assert_eq!(
            pi["references"], local["references"],
            "references of {path}"
        );
        let sig_names: Vec<String> = pi["signatures"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str())
                    .filter_map(|s| s.split_once(':').map(|(n, _)| n.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            sig_names.iter().any(|n| n == cache.key_name()),
            "nix path-info shows no signature by {}: {pi}",
            cache.key_name()
        );
    }
}

/// Every path of the closure is valid in `dst` and identical to the source.
pub fn check_substituted(nix: &Nix, c: &Closure, dst: &std::path::Path) {
    for path in &c.paths {
        assert!(
            nix.is_valid(dst, path),
            "{path} not valid after substitution"
        );
        assert_same_tree(&in_store(&c.store, path), &in_store(dst, path));
        assert!(
            nix.dump(dst, path) == nix.dump(&c.store, path),
            "NAR of {path} differs after substitution"
        );
        assert_eq!(nix.references(dst, path), nix.references(&c.store, path));
    }
}

#[test]
fn zstd_closure_round_trip() {
    round_trip("zstd", "zstd", BLOB_BYTES);
}

#[test]
fn uncompressed_closure_round_trip() {
    round_trip("none", "none", BLOB_BYTES);
}

#[test]
fn xz_closure_round_trip() {
    // xz is Nix's default and very slow here: small paths only.
    round_trip("xz", "xz", 0);
}

#[test]
fn bzip2_closure_round_trip() {
    round_trip("bzip2", "bzip2", 64 * 1024);
}

#[test]
fn brotli_closure_round_trip() {
    round_trip("br", "br", 64 * 1024);
}

#[test]
fn gzip_closure_round_trip() {
    // Nix 2.8 PUTs gzip NARs as `nar/<hash>.nar` (no suffix, no Content-Encoding);
    // only the narinfo's `Compression: gzip` says what they are.
    round_trip("gzip", "gzip", 64 * 1024);
}

#[test]
fn nix_copy_from_the_cache_url() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("copy-from");
    let netrc = nix.netrc(server.token());
    let c = nix.closure("src", 256 * 1024);
    let to = format!("{}?compression=zstd", cache.url);
    nix.copy_to(&c.store, &to, &[&c.top], Some(&netrc)).ok();

    let dst = nix.store("dst");
    nix.copy_from(&cache.url, &dst, &c.top, &cache.public_key, Some(&netrc))
        .ok();
    check_substituted(&nix, &c, &dst);
}

#[test]
fn second_push_of_a_closure_uploads_nothing_new() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("repush");
    let netrc = nix.netrc(server.token());
    let c = nix.closure("src", 512 * 1024);
    let to = format!("{}?compression=zstd", cache.url);
    nix.copy_to(&c.store, &to, &[&c.top], Some(&netrc)).ok();
    let before = server.stats();
    nix.copy_to(&c.store, &to, &[&c.top], Some(&netrc)).ok();
    assert_eq!(
        server.stats(),
        before,
        "pushing the same closure again changed stats"
    );
}

#[test]
fn nix_cache_info_describes_the_store() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let r = http::get(&cache.at("nix-cache-info"), server.auth());
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        text.lines().any(|l| l.trim() == "StoreDir: /nix/store"),
        "nix-cache-info: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("Priority:") && l[9..].trim().parse::<u32>().is_ok()),
        "nix-cache-info has no numeric Priority: {text}"
    );
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/x-nix-cache-info"),
        "nix-cache-info content type {ct:?}"
    );

    // Nix PUTs nix-cache-info when it first writes to a store; that changes nothing.
    let put = http::put(
        &cache.at("nix-cache-info"),
        server.auth(),
        "text/x-nix-cache-info",
        b"StoreDir: /somewhere/else\n",
    );
    assert!(
        put.is_success(),
        "PUT nix-cache-info: {} {}",
        put.status,
        put.text()
    );
    let again = http::get(&cache.at("nix-cache-info"), server.auth());
    assert!(
        again.text().contains("StoreDir: /nix/store"),
        "PUT nix-cache-info changed it: {}",
        again.text()
    );
}

#[test]
fn nar_head_length_and_range() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("range");
    let netrc = nix.netrc(server.token());
    let c = nix.closure("src", 1024 * 1024);
    let to = format!("{}?compression=zstd", cache.url);
    nix.copy_to(&c.store, &to, &[&c.top], Some(&netrc)).ok();

    let auth = server.auth();
    let info = fetch_narinfo(&cache, &c.mid, auth).expect("mid narinfo");
    let url = cache.at(info.require("URL"));
    let full = http::get(&url, auth);
    assert_eq!(full.status, 200);
    assert_eq!(
        full.header("content-length").map(str::to_string),
        Some(full.body.len().to_string()),
        "GET Content-Length"
    );
    if let Some(size) = info.get("FileSize") {
        assert_eq!(size, full.body.len().to_string(), "narinfo FileSize");
    }

    let h = http::head(&url, auth);
    assert_eq!(h.status, 200, "HEAD nar");
    assert_eq!(
        h.header("content-length").map(str::to_string),
        Some(full.body.len().to_string()),
        "HEAD Content-Length"
    );
    assert!(h.body.is_empty());

    let n = full.body.len();
    for (a, b) in [(0, 9), (1, n / 2), (n / 3, n - 1), (n - 1, n - 1)] {
        let range = format!("bytes={a}-{b}");
        let r = http::request("GET", &url, auth, &[("Range", &range)], None);
        assert_eq!(r.status, 206, "Range {range} of {n}");
        assert!(
            r.body == full.body[a..=b],
            "Range {range}: wrong bytes ({} bytes back)",
            r.body.len()
        );
        let cr = r.header("content-range").unwrap_or("");
        assert_eq!(cr, format!("bytes {a}-{b}/{n}"), "Content-Range");
    }

    // HEAD and GET of narinfo agree too; a missing one is 404 for both.
    let ni = cache.at(&format!("{}.narinfo", hash_part(&c.mid)));
    assert_eq!(http::head(&ni, auth).status, 200);
    let missing = cache.at("00000000000000000000000000000000.narinfo");
    assert_eq!(http::head(&missing, auth).status, 404);
    assert_eq!(http::get(&missing, auth).status, 404);
}
