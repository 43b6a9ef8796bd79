//! Storing things once: concurrent pushes of one closure, and the same closure in two
//! caches, as `larder stats` counts them.

use std::time::Duration;

use crate::substitution::check_substituted;
use crate::support::{Nix, Server};

#[test]
fn concurrent_pushes_of_one_closure_store_it_once() {
    let server = Server::start();
    let first = server.create_cache("first", false);
    let second = server.create_cache("second", false);
    let nix = Nix::new("dedup");
    // A second client environment (its own Nix caches), pushing the same store.
    let other = Nix::new("dedup-other");
    let c = nix.closure("src", 6 * 1024 * 1024);
    let empty = server.stats();
    assert_eq!(
        (empty.nars, empty.store_paths, empty.chunks),
        (0, 0, 0),
        "{empty:?}"
    );

    // Both pushers keep Nix's default negative narinfo TTL, as a user's Nix does. With
    // a TTL of 0, Nix 2.8 re-asks for each narinfo just before uploading that path;
    // when the other pusher has committed it meanwhile, `BinaryCacheStore::addToStore`
    // drains the whole multi-path stream instead of one NAR and fails with "coroutine
    // has finished". That is a client bug no server answer can avoid.
    let to = format!("{}?compression=zstd", first.url);
    let ttl = [("narinfo-cache-negative-ttl", "3600")];
    let a = nix.spawn_copy_to_with(
        &c.store,
        &to,
        &[&c.top],
        Some(&nix.netrc(server.token())),
        &ttl,
    );
    let b = other.spawn_copy_to_with(
        &c.store,
        &to,
        &[&c.top],
        Some(&other.netrc(server.token())),
        &ttl,
    );
    let (a, b) = (
        a.wait(Duration::from_secs(300)),
        b.wait(Duration::from_secs(300)),
    );
    a.ok();
    b.ok();

    let once = server.stats();
    assert_eq!(
        once.nars,
        c.paths.len() as u64,
        "NARs after two concurrent pushes: {once:?}"
    );
    assert_eq!(once.store_paths, c.paths.len() as u64, "{once:?}");
    let nar_bytes: u64 = c
        .paths
        .iter()
        .map(|p| nix.dump(&c.store, p).len() as u64)
        .sum();
    assert!(
        once.chunk_bytes_uncompressed <= nar_bytes,
        "chunks hold {} uncompressed bytes, more than the {} NAR bytes: stored twice? {once:?}",
        once.chunk_bytes_uncompressed,
        nar_bytes
    );
    assert!(
        once.chunk_bytes_uncompressed >= 6 * 1024 * 1024,
        "the random blob is not all there: {once:?}"
    );
    assert!(once.chunks > 1 && once.chunk_bytes > 0, "{once:?}");

    // The same closure in another cache costs no chunk bytes.
    let to2 = format!("{}?compression=zstd", second.url);
    nix.copy_to(&c.store, &to2, &[&c.top], Some(&nix.netrc(server.token())))
        .ok();
    let twice = server.stats();
    assert_eq!(twice.chunk_bytes, once.chunk_bytes, "{once:?} -> {twice:?}");
    assert_eq!(twice.chunks, once.chunks, "{once:?} -> {twice:?}");
    assert_eq!(twice.nars, once.nars, "{once:?} -> {twice:?}");

    // And both caches serve it, each under its own key.
    assert_ne!(first.public_key, second.public_key);
    for (i, cache) in [&first, &second].into_iter().enumerate() {
        let dst = nix.store(&format!("dst{i}"));
        nix.substitute(
            &dst,
            &c.top,
            &cache.url,
            &cache.public_key,
            Some(&nix.netrc(server.token())),
        )
        .ok();
        check_substituted(&nix, &c, &dst);
    }
}

#[test]
fn repeated_content_inside_a_nar_is_stored_once() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("dedup-yes");
    let src = nix.store("src");
    // 64 MiB of `yes`: the same bytes over and over, so a handful of distinct chunks.
    let path = nix.add_big_file(&src, 0, 64);
    let to = format!("{}?compression=zstd", cache.url);
    nix.copy_to(&src, &to, &[&path], Some(&nix.netrc(server.token())))
        .ok();
    let st = server.stats();
    assert_eq!(st.nars, 1, "{st:?}");
    assert!(
        st.chunk_bytes_uncompressed < 8 * 1024 * 1024,
        "64 MiB of repeated data took {} uncompressed chunk bytes: {st:?}",
        st.chunk_bytes_uncompressed
    );
    let dst = nix.store("dst");
    nix.substitute(
        &dst,
        &path,
        &cache.url,
        &cache.public_key,
        Some(&nix.netrc(server.token())),
    )
    .ok();
    assert!(
        std::fs::read(crate::support::in_store(&src, &path)).ok()
            == std::fs::read(crate::support::in_store(&dst, &path)).ok()
    );
}
