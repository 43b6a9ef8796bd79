//! The storage lifecycle with real Nix: delete and GC give the disk back,
//! retention (set with Attic's own request) and the test clock, quotas and the
//! size budget evict least recently used closures from the top, pins hold, a NAR
//! that can never fit gets 507, and chunks shared by a NAR and an S3 object
//! survive deleting either (`docs/design/gc.md`).

use std::path::Path;

use serde_json::json;

use crate::support::http;
use crate::support::s3::S3Larder;
use crate::support::server::{dir_bytes, parse_json, Cache, Launch};
use crate::support::{Closure, Nix, Server};

/// The hash part of a store path.
fn hash_of(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

fn narinfo_status(server: &Server, cache: &Cache, path: &str) -> u16 {
    http::get(
        &cache.at(&format!("{}.narinfo", hash_of(path))),
        server.auth(),
    )
    .status
}

fn push(nix: &Nix, server: &Server, cache: &Cache, c: &Closure) {
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd", cache.url),
        &[&c.top],
        Some(&nix.netrc(server.token())),
    )
    .ok();
}

/// Substitutes `path` (and its closure) from the cache into a fresh store.
fn substitutes(nix: &Nix, server: &Server, cache: &Cache, path: &str, store: &str) -> bool {
    let out = nix.substitute(
        &nix.store(store),
        path,
        &cache.url,
        &cache.public_key,
        Some(&nix.netrc(server.token())),
    );
    out.success()
}

/// Remove a client store (Nix leaves its directories read-only).
fn remove_store(dir: &Path) {
    fn writable(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                writable(&e.path());
            }
        }
    }
    writable(dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// A closure of its own (each `Nix` environment salts its derivations).
fn closure(test: &str, blob: usize) -> (Nix, Closure) {
    let nix = Nix::new(test);
    let c = nix.closure("src", blob);
    (nix, c)
}

fn gc(server: &Server) -> serde_json::Value {
    parse_json(&server.remote(&["gc", "--json"]).ok())
}

fn pack_bytes(server: &Server) -> u64 {
    dir_bytes(&server.data_dir().join("packs"))
}

fn config_file(dir: &Path, text: &str) -> String {
    let p = dir.join("larder.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn delete_then_gc_gives_the_bytes_back_and_keeps_the_rest() {
    let server = Server::start();
    let cache = server.create_cache("main", false);
    let (dn, doomed) = closure("gc-doomed", 8 << 20);
    let (nix, kept) = closure("gc-kept", 8 << 20);
    push(&dn, &server, &cache, &doomed);
    push(&nix, &server, &cache, &kept);
    let before = pack_bytes(&server);

    // Without the delete permission: refused, nothing gone.
    let pusher = server
        .remote(&[
            "token",
            "create",
            "--sub",
            "ci",
            "--validity",
            "1d",
            "--push",
            "main",
            "--pull",
            "main",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let out = crate::support::server::larder(
        &[
            "path",
            "delete",
            "main",
            &doomed.top,
            "--server",
            server.url(),
            "--token",
            &pusher,
        ],
        &[],
    );
    assert!(
        !out.success(),
        "a push token deleted a path: {}",
        out.describe()
    );
    assert!(out.stderr.contains("delete"), "{}", out.describe());
    assert_eq!(narinfo_status(&server, &cache, &doomed.top), 200);

    let out = server
        .remote(&[
            "path",
            "delete",
            "main",
            &doomed.top,
            &doomed.mid,
            &doomed.leaf,
        ])
        .ok();
    assert!(out.stdout.contains("deleted 3 paths"), "{}", out.describe());
    for p in &doomed.paths {
        assert_eq!(narinfo_status(&server, &cache, p), 404, "{p} still served");
    }
    // Gone from the narinfo view at once, bytes still on disk until GC.
    assert!(pack_bytes(&server) >= before);

    let dry = parse_json(&server.remote(&["gc", "--dry-run", "--json"]).ok());
    assert_eq!(dry["dry_run"], json!(true));
    assert!(dry["bytes_reclaimed"].as_u64().unwrap() > 7 << 20, "{dry}");
    assert!(pack_bytes(&server) >= before, "a dry run changed the disk");

    let report = gc(&server);
    assert!(
        report["bytes_reclaimed"].as_u64().unwrap() > 7 << 20,
        "{report}"
    );
    assert!(report["packs_compacted"].as_u64().unwrap() >= 1, "{report}");
    let after = pack_bytes(&server);
    assert!(
        after + (7 << 20) < before,
        "the packs did not shrink: {before} -> {after} bytes ({report})"
    );

    // The rest is whole: substitutes into a fresh store; verify is clean, run on
    // the data dir of the running server.
    assert!(substitutes(&nix, &server, &cache, &kept.top, "fresh"));
    let v = server.local(&["verify", "--json"]).ok();
    assert_eq!(parse_json(&v)["nars_damaged"], json!(0), "{}", v.describe());
    let stats = parse_json(&server.local(&["stats", "--json"]).ok());
    let lc = &stats["lifecycle"];
    assert_eq!(lc["last_gc"]["paths_evicted"], json!(0), "{stats}");
    assert!(lc["stored_bytes"].as_u64().unwrap() <= after, "{stats}");
    // Pushing the deleted closure again stores it again.
    push(&dn, &server, &cache, &doomed);
    assert!(substitutes(&dn, &server, &cache, &doomed.top, "again"));
}

#[test]
fn retention_set_by_attic_evicts_what_nobody_fetched() {
    let clock = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(clock.path(), "0").unwrap();
    let clock_path = clock.path().display().to_string();
    let server = Server::start_with_extra(
        Launch::Flags,
        &[],
        &[("LARDER_TEST_CLOCK_OFFSET_FILE", &clock_path)],
    );
    let cache = server.create_cache("short", false);
    let forever = server.create_cache("forever", false);
    let (on, old) = closure("gc-old", 1 << 20);
    let (nix, used) = closure("gc-used", 1 << 20);
    push(&on, &server, &cache, &old);
    push(&nix, &server, &cache, &used);
    push(&on, &server, &forever, &old);

    // The exact request `attic cache configure short --retention-period 1d` sends.
    let r = http::request(
        "PATCH",
        &format!("{}/_api/v1/cache-config/short", server.url()),
        server.auth(),
        &[("Content-Type", "application/json")],
        Some(
            json!({"retention_period": {"Period": 86400}})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Nothing is old yet.
    assert_eq!(gc(&server)["paths_evicted"], json!(0));
    // Two days later, `used`'s top is fetched; `old` is not.
    std::fs::write(clock.path(), "172800").unwrap();
    assert_eq!(narinfo_status(&server, &cache, &used.top), 200);
    let report = gc(&server);
    assert_eq!(report["evicted_for_retention"], json!(3), "{report}");
    for p in &old.paths {
        assert_eq!(narinfo_status(&server, &cache, p), 404, "{p} kept");
        // The cache without retention keeps its copy (and the shared NARs).
        assert_eq!(narinfo_status(&server, &forever, p), 200, "{p} lost");
    }
    // The fetched top keeps its references, pushed as long ago as `old`.
    for p in &used.paths {
        assert_eq!(narinfo_status(&server, &cache, p), 200, "{p} evicted");
    }
    assert!(substitutes(&nix, &server, &cache, &used.top, "used"));
    assert!(substitutes(&on, &server, &forever, &old.top, "old"));
}

#[test]
fn quota_and_budget_evict_lru_closures_from_the_top_and_pins_hold() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "[gc]\ninterval = \"none\"\nmax_size = \"14M\"\nlow_water = \"90%\"\n",
    );
    // Pushes within one second are equally recent: the test clock moves a minute
    // between them so "least recently used" has one answer.
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "0").unwrap();
    let tick = |minutes: u64| std::fs::write(&clock, (minutes * 60).to_string()).unwrap();
    let clock_env = clock.display().to_string();
    let server = Server::start_with_extra(
        Launch::Flags,
        &["--config", &cfg],
        &[("LARDER_TEST_CLOCK_OFFSET_FILE", &clock_env)],
    );
    let cache = server.create_cache("team", false);
    let (pn, pinned) = closure("gc-pinned", 4 << 20);
    let (an, a) = closure("gc-a", 4 << 20);
    let (bn, b) = closure("gc-b", 4 << 20);
    let nix = Nix::new("gc-quota");
    push(&pn, &server, &cache, &pinned);
    let out = server
        .remote(&["pin", "add", "team", &pinned.top, "--closure"])
        .ok();
    assert!(out.stdout.contains("pinned 3 paths"), "{}", out.describe());
    let listed = parse_json(&server.remote(&["pin", "list", "team", "--json"]).ok());
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    tick(1);
    push(&an, &server, &cache, &a);
    tick(2);
    push(&bn, &server, &cache, &b);
    // ~12 MiB stored, under the 14M budget: nothing goes.
    assert_eq!(gc(&server)["paths_evicted"], json!(0));

    // A quota of 9M on the cache: the least recently used unpinned closure (a)
    // goes from the top; b and the pinned closure stay whole.
    server
        .remote(&["cache", "configure", "team", "--quota", "9M"])
        .ok();
    let report = gc(&server);
    assert!(
        report["evicted_for_quota"].as_u64().unwrap() >= 2,
        "{report}"
    );
    assert_eq!(narinfo_status(&server, &cache, &a.top), 404, "{report}");
    assert_eq!(narinfo_status(&server, &cache, &a.mid), 404, "{report}");
    for c in [&pinned, &b] {
        for p in &c.paths {
            assert_eq!(narinfo_status(&server, &cache, p), 200, "{p}: {report}");
        }
    }
    let info = server.cache_info("team");
    assert_eq!(info["usage"]["quota_bytes"], json!(9 << 20), "{info}");

    // Past the global budget too (two more closures of 4 MiB, quota lifted): the
    // budget evicts b, the least recently used, never the pinned closure, and
    // never a reference of a surviving path. (A push over the budget may start a
    // pass by itself; the explicit one below finds the state either way.)
    server
        .remote(&["cache", "configure", "team", "--quota", "none"])
        .ok();
    let (cn, c) = closure("gc-c", 4 << 20);
    let (dn, d) = closure("gc-d", 4 << 20);
    tick(3);
    push(&cn, &server, &cache, &c);
    tick(4);
    push(&dn, &server, &cache, &d);
    let report = gc(&server);
    assert_eq!(narinfo_status(&server, &cache, &b.top), 404, "{report}");
    assert_eq!(narinfo_status(&server, &cache, &d.top), 200, "{report}");
    for p in &pinned.paths {
        assert_eq!(
            narinfo_status(&server, &cache, p),
            200,
            "pinned {p}: {report}"
        );
    }
    assert!(
        report["live_bytes"].as_u64().unwrap() <= 14 << 20,
        "{report}"
    );
    // Every surviving top substitutes with its whole closure.
    for (i, (n, top)) in [
        (&pn, &pinned.top),
        (&bn, &b.top),
        (&cn, &c.top),
        (&dn, &d.top),
    ]
    .into_iter()
    .enumerate()
    {
        if narinfo_status(&server, &cache, top) == 200 {
            assert!(
                substitutes(n, &server, &cache, top, &format!("s{i}")),
                "{top} is served but does not substitute"
            );
        }
    }

    // A NAR larger than the whole budget can never fit: 507 with the reason.
    let big = nix.add_big_file(&nix.store("big"), 20, 0);
    let out = nix.copy_to(
        &nix.store("big"),
        &format!("{}?compression=none", cache.url),
        &[&big],
        Some(&nix.netrc(server.token())),
    );
    assert!(!out.success(), "a 20 MiB NAR was taken into a 14M budget");
    let r = http::put(
        &cache.at("nar/toolarge.nar"),
        server.auth(),
        "application/x-nix-nar",
        &nix.dump(&nix.store("big"), &big),
    );
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(r.text().contains("budget"), "{}", r.text());
    // The pinned closure is still whole after all that.
    assert!(substitutes(&pn, &server, &cache, &pinned.top, "end"));
}

#[test]
fn a_chunk_shared_by_a_nar_and_an_s3_object_survives_deleting_either() {
    let s3 = S3Larder::start();
    let server = &s3.server;
    let cache = server.create_cache("shared", false);
    let nix = Nix::new("gc-s3");
    let c = nix.closure("src", 6 << 20);
    push(&nix, server, &cache, &c);
    // The same random blob as an S3 object: its chunks are the NAR's.
    let blob = c
        .store
        .join(c.mid.trim_start_matches('/'))
        .join("share/deep/er/blob");
    let bytes = std::fs::read(&blob).unwrap();
    s3.aws(&s3.admin, &["s3", "mb", "s3://bucket"]).ok();
    s3.aws(
        &s3.admin,
        &["s3", "cp", blob.to_str().unwrap(), "s3://bucket/blob"],
    )
    .ok();
    let before = server.stats();

    // Delete the Nix paths and collect: the object's chunks stay.
    server
        .remote(&["path", "delete", "shared", &c.top, &c.mid, &c.leaf])
        .ok();
    let report = gc(server);
    assert!(
        report["bytes_reclaimed"].as_u64().unwrap() < 1 << 20,
        "the object's chunks were counted dead: {report}"
    );
    let got = s3.work().join("got");
    s3.aws(
        &s3.admin,
        &["s3", "cp", "s3://bucket/blob", got.to_str().unwrap()],
    )
    .ok();
    assert!(std::fs::read(&got).unwrap() == bytes, "the object changed");

    // Push the closure again, delete the object and collect: the NAR stays whole.
    push(&nix, server, &cache, &c);
    s3.aws(&s3.admin, &["s3", "rm", "s3://bucket/blob"]).ok();
    gc(server);
    assert!(substitutes(&nix, server, &cache, &c.top, "after"));
    let v = server.remote(&["verify", "--json"]).ok();
    assert_eq!(parse_json(&v)["nars_damaged"], json!(0), "{}", v.describe());
    let after = server.stats();
    assert!(after.chunks <= before.chunks, "{before:?} -> {after:?}");
}

/// Rounds of the crash loop: `LARDER_GC_CRASH_ROUNDS` (bench/gc-crash.sh runs
/// many), 3 by default in the suite.
/// `LARDER_GC_CRASH_<NAME>` as a number, else `default` (bench/gc-crash.sh sets
/// them for the long run).
fn crash_setting(name: &str, default: usize) -> usize {
    std::env::var(format!("LARDER_GC_CRASH_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An S3 object's bytes through the aws cli, `None` when it is not there.
fn s3_object(aws: &dyn Fn() -> std::process::Command, key: &str, to: &Path) -> Option<Vec<u8>> {
    let _ = std::fs::remove_file(to);
    let mut cmd = aws();
    cmd.args([
        "s3",
        "cp",
        &format!("s3://crash/{key}"),
        &to.to_string_lossy(),
    ]);
    let out = crate::support::process::run(&mut cmd, std::time::Duration::from_secs(120));
    out.success().then(|| std::fs::read(to).unwrap())
}

#[test]
fn kill9_at_random_points_of_gc_under_pushes_loses_no_live_path() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("crash loop seed {seed}");
    let mut rng = seed;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let dir = tempfile::tempdir().unwrap();
    // Compact eagerly so passes rewrite packs often.
    let cfg = config_file(
        dir.path(),
        "[gc]\ninterval = \"none\"\ncompact_below = \"95%\"\n",
    );
    let mut server = Server::start_with_extra(
        Launch::Flags,
        &["--config", &cfg, "--s3-listen", "127.0.0.1:0"],
        &[],
    );
    server.create_cache("crash", false);
    let rounds = crash_setting("ROUNDS", 3);
    let late_pushes = crash_setting("PUSHES", 2);
    let uploads = crash_setting("UPLOADS", 2);
    eprintln!("{rounds} rounds, {late_pushes} pushes and {uploads} multipart uploads in each");
    let s3_key =
        crate::support::s3::create_key(&server, "crash", &[("*", "--read --write --owner")]);
    let s3_work = dir.path().join("s3");
    std::fs::create_dir_all(&s3_work).unwrap();
    {
        let endpoint = crate::support::s3::s3_endpoint(&server);
        let mut mb = crate::support::s3::aws_command(&endpoint, &s3_key, &s3_work);
        mb.args(["s3", "mb", "s3://crash"]);
        crate::support::process::run(&mut mb, std::time::Duration::from_secs(60)).ok();
    }
    // Objects whose upload was acknowledged, with their bytes.
    let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
    // Closures whose push was acknowledged and not deleted since.
    let mut live: Vec<(Nix, Closure)> = Vec::new();
    for round in 0..rounds {
        let cache = server.cache("crash");
        for k in 0..2 {
            let (n, c) = closure(&format!("crash-{round}-{k}"), 1 << 20);
            push(&n, &server, &cache, &c);
            live.push((n, c));
        }
        // Delete the oldest live closure so the pass has something to collect.
        let (_, gone) = live.remove(0);
        server
            .remote(&["path", "delete", "crash", &gone.top, &gone.mid, &gone.leaf])
            .ok();
        // Concurrent pushes and passes, then kill -9 at a random instant.
        let mut pushes: Vec<(Nix, Closure, crate::support::process::Running)> = Vec::new();
        // Every closure and file is made first, so that the clients all start
        // together and the kill falls among them.
        let closures: Vec<(Nix, Closure)> = (0..late_pushes)
            .map(|k| closure(&format!("crash-{round}-late{k}"), 1 << 20))
            .collect();
        let files: Vec<(String, std::path::PathBuf, Vec<u8>)> = (0..uploads)
            .map(|k| {
                let name = format!("r{round}-{k}");
                let file = s3_work.join(&name);
                let data = crate::support::s3::random_file(
                    &file,
                    (9 << 20) + (k << 16),
                    seed ^ ((round * 64 + k) as u64),
                );
                (name, file, data)
            })
            .collect();
        for (n, c) in closures {
            let netrc = n.netrc(server.token());
            let running = n.spawn_copy_to(
                &c.store,
                &format!("{}?compression=zstd", cache.url),
                &[&c.top],
                Some(&netrc),
            );
            pushes.push((n, c, running));
        }
        // And S3 multipart uploads (the aws cli splits anything over 8 MiB).
        let endpoint = crate::support::s3::s3_endpoint(&server);
        let mut puts = Vec::new();
        for (name, file, data) in files {
            let mut cmd = crate::support::s3::aws_command(&endpoint, &s3_key, &s3_work);
            cmd.args([
                "s3",
                "cp",
                &file.to_string_lossy(),
                &format!("s3://crash/{name}"),
            ]);
            puts.push((name, data, crate::support::process::spawn(&mut cmd)));
        }
        let url = server.url().to_string();
        let token = server.token().to_string();
        let passes = std::thread::spawn(move || {
            for _ in 0..5 {
                let out = crate::support::server::larder(
                    &["gc", "--server", &url, "--token", &token],
                    &[],
                );
                if !out.success() {
                    break;
                }
            }
        });
        // A random instant while they run (longer with more clients).
        let span = 1000 + 150 * (late_pushes + uploads) as u64;
        std::thread::sleep(std::time::Duration::from_millis(next(span)));
        // What finished before the kill was acknowledged; the rest may still be
        // running (and retry against the restarted server: fine, not required).
        let pushes: Vec<_> = pushes
            .into_iter()
            .map(|(n, c, mut running)| {
                let done = running.finished();
                (n, c, running, done)
            })
            .collect();
        let puts: Vec<_> = puts
            .into_iter()
            .map(|(name, data, mut running)| {
                let done = running.finished();
                (name, data, running, done)
            })
            .collect();
        server.kill9();
        let _ = passes.join();
        server.start_again();
        let mut acked = Vec::new();
        for (n, c, running, done) in pushes {
            let out = running.wait(std::time::Duration::from_secs(180));
            if done && out.success() {
                acked.push((n, c));
            }
        }
        let mut unacked = Vec::new();
        let acked_puts = objects.len();
        for (name, data, running, done) in puts {
            let out = running.wait(std::time::Duration::from_secs(180));
            if done && out.success() {
                objects.push((name, data));
            } else {
                unacked.push((name, data));
            }
        }
        eprintln!(
            "round {round}: {} of {late_pushes} pushes and {} of {uploads} uploads acknowledged before the kill",
            acked.len(),
            objects.len() - acked_puts
        );
        live.extend(acked);
        let cache = server.cache("crash");
        // Every acknowledged object whole; one not acknowledged whole or absent.
        let endpoint = crate::support::s3::s3_endpoint(&server);
        let aws = || crate::support::s3::aws_command(&endpoint, &s3_key, &s3_work);
        let got = s3_work.join("got");
        for (name, data) in &objects {
            let back = s3_object(&aws, name, &got);
            assert!(
                back.as_deref() == Some(data.as_slice()),
                "round {round} (seed {seed}): acknowledged object {name} is {}",
                back.map_or("missing".to_string(), |b| format!(
                    "{} bytes, not its own",
                    b.len()
                ))
            );
        }
        for (name, data) in &unacked {
            if let Some(back) = s3_object(&aws, name, &got) {
                assert!(
                    back == *data,
                    "round {round} (seed {seed}): unacknowledged object {name} is visible but not whole"
                );
            }
        }
        let v = server.local(&["verify", "--json"]).ok();
        assert_eq!(
            parse_json(&v)["nars_damaged"],
            json!(0),
            "round {round} (seed {seed}): {}",
            v.describe()
        );
        for (n, c) in &live {
            for p in &c.paths {
                assert_eq!(
                    narinfo_status(&server, &cache, p),
                    200,
                    "round {round} (seed {seed}): {p} lost"
                );
            }
            let store = n.store(&format!("r{round}"));
            let out = n.substitute(
                &store,
                &c.top,
                &cache.url,
                &cache.public_key,
                Some(&n.netrc(server.token())),
            );
            assert!(
                out.success(),
                "round {round} (seed {seed}): {} does not substitute: {}\nserver log tail:\n{}",
                c.top,
                out.describe(),
                server
                    .log()
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            // Every round substitutes every live closure again: keep the disk.
            remove_store(&store);
        }
    }
    // One more pass with no crash leaves nothing reclaimable behind.
    let report = gc(&server);
    let again = gc(&server);
    assert_eq!(again["chunks_reclaimed"], json!(0), "{report} then {again}");
}

#[test]
fn a_scheduled_pass_runs_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "[gc]\ninterval = \"1s\"\n");
    let server = Server::start_with_extra(Launch::Flags, &["--config", &cfg], &[]);
    let cache = server.create_cache("sched", false);
    let (nix, c) = closure("gc-sched", 2 << 20);
    push(&nix, &server, &cache, &c);
    server
        .remote(&["path", "delete", "sched", &c.top, &c.mid, &c.leaf])
        .ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stats = parse_json(&server.remote(&["stats", "--json"]).ok());
        let last = &stats["lifecycle"]["last_gc"];
        if last["chunks_reclaimed"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(stats["chunks"], json!(0), "{stats}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pass reclaimed the deleted closure within 30 s: {stats}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_chunk_shared_by_a_kept_nar_and_a_deleted_nar_survives() {
    let server = Server::start();
    let cache = server.create_cache("pair", false);
    let nix = Nix::new("gc-pair");
    let store = nix.store("src");
    // Two different files (so two different NARs) that share 4 MiB of content,
    // so most of their chunks are the same.
    let shared = crate::support::s3::random_bytes(4 << 20, 42);
    let one = nix.dir().join("one");
    let two = nix.dir().join("two");
    std::fs::write(&one, &shared).unwrap();
    let mut longer = shared.clone();
    longer.extend_from_slice(&crate::support::s3::random_bytes(1 << 20, 43));
    std::fs::write(&two, &longer).unwrap();
    let add = |f: &Path| {
        nix.run(
            "nix-store",
            &[
                "--store",
                store.to_str().unwrap(),
                "--add",
                f.to_str().unwrap(),
            ],
        )
        .ok()
        .stdout
        .trim()
        .to_string()
    };
    let (a, b) = (add(&one), add(&two));
    let to = format!("{}?compression=zstd", cache.url);
    nix.copy_to(&store, &to, &[&a, &b], Some(&nix.netrc(server.token())))
        .ok();
    let before = server.stats();
    server.remote(&["path", "delete", "pair", &a]).ok();
    let report = gc(&server);
    assert!(
        report["bytes_reclaimed"].as_u64().unwrap() < 1 << 20,
        "chunks of the kept NAR were counted dead: {report}"
    );
    assert!(
        server.stats().chunks < before.chunks,
        "nothing was swept: {report}"
    );
    assert_eq!(narinfo_status(&server, &cache, &a), 404);
    assert!(substitutes(&nix, &server, &cache, &b, "kept"));
    let v = server.remote(&["verify", "--json"]).ok();
    assert_eq!(parse_json(&v)["nars_damaged"], json!(0), "{}", v.describe());
}
