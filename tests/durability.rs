//! Crashes and damage: what a kill -9, a corrupted pack file or a lost pack file may
//! and may not do to a cache, what `larder verify` reports, and how a re-push heals.

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use crate::substitution::{check_served_closure, check_substituted};
use crate::support::process::Output;
use crate::support::{
    fetch_nar, fetch_narinfo, in_store, verify_output, Cache, Closure, NarFetch, Nix, Server,
};

/// Random bytes in `mid`, so the pack holds many chunks of it.
const BLOB_BYTES: usize = 4 * 1024 * 1024;

fn push(nix: &Nix, server: &Server, cache: &Cache, c: &Closure, paths: &[&str]) -> Output {
    let netrc = nix.netrc(server.token());
    let to = format!("{}?compression=zstd", cache.url);
    nix.copy_to(&c.store, &to, paths, Some(&netrc))
}

fn substitute_fresh(nix: &Nix, server: &Server, cache: &Cache, c: &Closure, store: &str) {
    let netrc = nix.netrc(server.token());
    let dst = nix.store(store);
    nix.substitute(&dst, &c.top, &cache.url, &cache.public_key, Some(&netrc))
        .ok();
    check_substituted(nix, c, &dst);
}

#[test]
fn committed_paths_survive_kill9() {
    let mut server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("kill9-idle");
    let c = nix.closure("src", BLOB_BYTES);
    push(&nix, &server, &cache, &c, &[&c.top]).ok();
    let stats = server.stats();

    // The 2xx for the last narinfo is the promise; a crash right after it must not
    // undo anything.
    server.kill9();
    server.start_again();
    let cache = server.cache(&cache.name);
    assert_eq!(server.stats(), stats, "stats changed across kill -9");
    check_served_closure(&server, &cache, &nix, &c);
    substitute_fresh(&nix, &server, &cache, &c, "dst");

    server.stop();
    let (clean, named) = verify_output(&server.local(&["verify"]), &c.paths);
    assert!(clean && named.is_empty(), "verify after kill -9: {named:?}");
}

#[test]
fn data_survives_a_graceful_restart() {
    let mut server = Server::start();
    let cache = server.create_cache("main", false);
    let public = server.create_cache("open", true);
    let nix = Nix::new("restart");
    let c = nix.closure("src", 512 * 1024);
    push(&nix, &server, &cache, &c, &[&c.top]).ok();
    let stats = server.stats();
    let key = cache.public_key.clone();
    let token = server.token().to_string();

    server.restart();
    assert_eq!(
        server.token(),
        token,
        "the admin token changed across a restart"
    );
    let cache = server.cache(&cache.name);
    assert_eq!(
        cache.public_key, key,
        "the cache key changed across a restart"
    );
    assert_eq!(server.stats(), stats);
    let open = server.cache_info(&public.name);
    assert_eq!(open["is_public"], serde_json::Value::Bool(true));
    substitute_fresh(&nix, &server, &cache, &c, "dst");
}

#[test]
fn kill9_during_a_large_upload_leaves_no_half_path() {
    let mut server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("kill9-upload");
    let src = nix.store("src");
    // 100 MiB of noise (one long run of unique chunks) and 100 MiB of `yes` (one
    // chunk over and over): about 100 MiB on the wire after zstd.
    let big = nix.add_big_file(&src, 100, 100);
    let netrc = nix.netrc(server.token());
    let to = format!("{}?compression=zstd", cache.url);

    let read_before = server.bytes_read();
    let disk_before = crate::support::server::dir_bytes(server.data_dir());
    let started = Instant::now();
    let mut copy = nix.spawn_copy_to(&src, &to, &[&big], Some(&netrc));
    // Kill once 40 MiB of the body have reached the server (or, failing a way to
    // tell, once the data dir grew that much, or after 20 s).
    let trigger = loop {
        if copy.finished() {
            break "nix copy finished first".to_string();
        }
        if let (Some(a), Some(b)) = (read_before, server.bytes_read()) {
            if b.saturating_sub(a) > 40 << 20 {
                break format!("server had read {} MiB", (b - a) >> 20);
            }
        }
        let disk = crate::support::server::dir_bytes(server.data_dir());
        if disk.saturating_sub(disk_before) > 40 << 20 {
            break format!("data dir grew {} MiB", (disk - disk_before) >> 20);
        }
        if started.elapsed() > Duration::from_secs(20) {
            break "20 s passed".to_string();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    server.kill9();
    eprintln!("killed after {:?}: {trigger}", started.elapsed());
    let copy = copy.wait(Duration::from_secs(120));
    assert!(!copy.timed_out, "nix copy hung after the server died");

    server.start_again();
    let cache = server.cache(&cache.name);
    let to = format!("{}?compression=zstd", cache.url);
    match fetch_narinfo(&cache, &big, server.auth()) {
        None => eprintln!("the interrupted path is absent, as it may be"),
        Some(_) => {
            // Present means whole: Nix checks the NAR hash on the way down.
            let dst = nix.store("dst-after-crash");
            nix.substitute(&dst, &big, &cache.url, &cache.public_key, Some(&netrc))
                .ok();
            let (a, b) = (in_store(&src, &big), in_store(&dst, &big));
            assert!(
                std::fs::read(a).ok() == std::fs::read(b).ok(),
                "substituted file differs"
            );
        }
    }

    // Nothing half-written may confuse what comes next: the same upload succeeds.
    nix.copy_to(&src, &to, &[&big], Some(&netrc)).ok();
    let dst = nix.store("dst-after-repush");
    nix.substitute(&dst, &big, &cache.url, &cache.public_key, Some(&netrc))
        .ok();
    assert!(
        std::fs::read(in_store(&src, &big)).ok() == std::fs::read(in_store(&dst, &big)).ok(),
        "re-pushed file differs"
    );

    server.stop();
    let out = server.local(&["verify"]);
    let (clean, named) = verify_output(&out, std::slice::from_ref(&big));
    assert!(clean, "verify after a crash mid-upload: {}", out.describe());
    assert!(named.is_empty());
}

/// Overwrites `len` bytes at each of the given fractions of `path`'s length.
fn corrupt(path: &std::path::Path, fractions: &[f64], len: usize) {
    let size = std::fs::metadata(path).expect("pack metadata").len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("opening a pack file");
    for (i, frac) in fractions.iter().enumerate() {
        let at = ((size as f64) * frac) as u64;
        let junk: Vec<u8> = (0..len).map(|j| (j * 131 + i * 7 + 0x5a) as u8).collect();
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.write_all(&junk).expect("write");
    }
    f.sync_all().expect("sync");
}

/// The pack file with the most bytes.
fn largest_pack(server: &Server) -> std::path::PathBuf {
    let packs = server.pack_files();
    assert!(
        !packs.is_empty(),
        "no *.pack files under {}",
        server.data_dir().join("packs").display()
    );
    packs
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack")
}

/// After damage: no NAR may come back as a good-looking 200 with wrong bytes, and
/// every path that cannot be fetched whole must be named by `verify`. Returns the
/// damaged paths.
fn check_damage(
    server: &Server,
    cache: &Cache,
    nix: &Nix,
    c: &Closure,
    verify: &Output,
) -> BTreeSet<String> {
    let mut damaged = BTreeSet::new();
    let mut wrong = Vec::new();
    for path in &c.paths {
        let expected = nix.dump(&c.store, path);
        match fetch_nar(server, cache, path, &expected) {
            NarFetch::Whole => {}
            NarFetch::WrongBody(why) => wrong.push(format!("{path}: {why}")),
            other => {
                eprintln!("{path}: {other:?}");
                damaged.insert(path.clone());
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "damaged NARs served as complete 200s:\n{}",
        wrong.join("\n")
    );
    let (clean, named) = verify_output(verify, &c.paths);
    assert!(
        !clean,
        "verify passed a damaged store: {}",
        verify.describe()
    );
    let named: BTreeSet<String> = named.into_iter().collect();
    assert!(
        !named.is_empty(),
        "verify failed but named no store path: {}",
        verify.describe()
    );
    assert!(
        damaged.is_subset(&named),
        "paths that cannot be fetched whole but verify did not name: {:?}\n{}",
        damaged.difference(&named).collect::<Vec<_>>(),
        verify.describe()
    );
    named
}

#[test]
fn corrupted_pack_is_never_served_and_a_repush_heals_it() {
    let mut server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("corrupt");
    let c = nix.closure("src", BLOB_BYTES);
    push(&nix, &server, &cache, &c, &[&c.top]).ok();

    server.stop();
    // Three 4 KiB smears across the largest pack: they land inside `mid`'s chunks.
    corrupt(&largest_pack(&server), &[0.3, 0.5, 0.7], 4096);
    let verify = server.local(&["verify"]);

    server.start_again();
    let cache = server.cache(&cache.name);
    let named = check_damage(&server, &cache, &nix, &c, &verify);
    assert!(
        named.contains(&c.mid),
        "verify did not name {}: {named:?}",
        c.mid
    );

    // Pushing the closure again repairs it.
    push(&nix, &server, &cache, &c, &[&c.top]).ok();
    substitute_fresh(&nix, &server, &cache, &c, "dst-healed");
    let out = server.remote(&["verify"]);
    assert!(
        out.success(),
        "verify after the re-push: {}",
        out.describe()
    );
    server.stop();
    let out = server.local(&["verify"]);
    assert!(
        out.success(),
        "offline verify after the re-push: {}",
        out.describe()
    );
}

#[test]
fn lost_pack_is_never_served_and_a_repush_heals_it() {
    let mut server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("lost-pack");
    let c = nix.closure("src", BLOB_BYTES);
    push(&nix, &server, &cache, &c, &[&c.top]).ok();

    server.stop();
    let pack = largest_pack(&server);
    std::fs::remove_file(&pack).expect("deleting a pack file");

    server.start_again();
    let cache = server.cache(&cache.name);
    let verify = server.remote(&["verify"]);
    let named = check_damage(&server, &cache, &nix, &c, &verify);
    assert!(
        named.contains(&c.mid),
        "verify did not name {}: {named:?}",
        c.mid
    );

    push(&nix, &server, &cache, &c, &[&c.top]).ok();
    substitute_fresh(&nix, &server, &cache, &c, "dst-healed");
    let out = server.remote(&["verify"]);
    assert!(
        out.success(),
        "verify after the re-push: {}",
        out.describe()
    );
    server.stop();
    let out = server.local(&["verify"]);
    assert!(
        out.success(),
        "offline verify after the re-push: {}",
        out.describe()
    );
}

#[test]
fn bit_rot_under_a_running_server_aborts_the_download() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("bit-rot");
    let c = nix.closure("src", BLOB_BYTES);
    push(&nix, &server, &cache, &c, &[&c.top]).ok();

    // The disk rots under the running server: nothing was restarted, so only the
    // serving path itself can notice.
    corrupt(&largest_pack(&server), &[0.3, 0.5, 0.7], 4096);
    let mid = nix.dump(&c.store, &c.mid);
    let first = fetch_nar(&server, &cache, &c.mid, &mid);
    assert!(
        matches!(first, NarFetch::Refused(_) | NarFetch::Aborted(_)),
        "GET of a rotten NAR: {first:?}"
    );
    let verify = server.remote(&["verify"]);
    let named = check_damage(&server, &cache, &nix, &c, &verify);
    assert!(
        named.contains(&c.mid),
        "verify did not name {}: {named:?}",
        c.mid
    );

    // Nix refuses to install from it rather than installing something wrong.
    let netrc = nix.netrc(server.token());
    let dst = nix.store("dst-rotten");
    nix.substitute(&dst, &c.top, &cache.url, &cache.public_key, Some(&netrc))
        .fails();
    assert!(!nix.is_valid(&dst, &c.mid));

    push(&nix, &server, &cache, &c, &[&c.top]).ok();
    substitute_fresh(&nix, &server, &cache, &c, "dst-healed");
    let out = server.remote(&["verify"]);
    assert!(
        out.success(),
        "verify after the re-push: {}",
        out.describe()
    );
}
