//! A real full disk: larder's data dir on a 96 MiB tmpfs the test mounts. Pushes
//! past the end get 507 with a one-line reason and leave nothing visible, reads
//! and substitution keep working, the server stays up, and once space is freed
//! (path delete + GC) the same push succeeds.
//!
//! Mounting needs root (CI runs as root); elsewhere the test says so and passes
//! nothing off as checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::support::server::{parse_json, Launch};
use crate::support::{Nix, Server};

/// A tmpfs mounted for the test, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("running mount");
        assert!(st.success(), "mounting a tmpfs at {}", at.display());
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    // The effective user, as `id -u` tells it.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn a_full_disk_refuses_pushes_with_507_keeps_serving_and_recovers_after_gc() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a tmpfs needs root; this test checked nothing");
        return;
    }
    let mut server = Server::new_stopped_with_extra(Launch::Flags, &[], &[]);
    let _fs = Tmpfs::mount(server.data_dir(), "96m");
    server.start_again();
    let cache = server.create_cache("full", false);
    let to = format!("{}?compression=zstd", cache.url);

    // Three closures of ~30 MiB random bytes fit; a fourth does not.
    let envs: Vec<Nix> = (0..4).map(|i| Nix::new(&format!("full{i}"))).collect();
    let closures: Vec<_> = envs
        .iter()
        .map(|n| n.closure("src", 30 * 1024 * 1024))
        .collect();
    for (n, c) in envs.iter().zip(&closures).take(3) {
        n.copy_to(&c.store, &to, &[&c.top], Some(&n.netrc(server.token())))
            .ok();
    }
    let (n4, c4) = (&envs[3], &closures[3]);
    let netrc4 = n4.netrc(server.token());
    let refused = n4.copy_to(&c4.store, &to, &[&c4.top], Some(&netrc4));
    assert!(
        !refused.timed_out,
        "the push past the end hung: {}",
        refused.describe()
    );
    assert_ne!(refused.code, Some(0), "{}", refused.describe());
    assert!(
        refused.stderr.contains("507") && refused.stderr.contains("disk"),
        "Nix shows the 507 and its reason: {}",
        refused.describe()
    );
    assert!(server.is_running(), "the server stays up");
    // Access lines reach the log within 50 ms.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = server.log();
    assert!(
        !log.contains("status=500"),
        "no request was answered 500 on the full disk:\n{log}"
    );

    // Nothing of the refused closure's blob is visible; the rest substitutes.
    let mid4 = crate::support::hash_part(&c4.mid);
    let r = crate::support::http::get(&format!("{}/{mid4}.narinfo", cache.url), server.auth());
    assert_eq!(r.status, 404, "a refused path is not visible");
    let dst = envs[0].store("dst-while-full");
    envs[0]
        .substitute(
            &dst,
            &closures[0].top,
            &cache.url,
            &cache.public_key,
            Some(&envs[0].netrc(server.token())),
        )
        .ok();
    let v = parse_json(&server.remote(&["verify", "--json"]).ok());
    assert_eq!(v["nars_damaged"], json!(0), "{v}");

    // Free space: delete two closures, GC; then the same push succeeds.
    for c in &closures[..2] {
        server
            .remote(&["path", "delete", "full", &c.top, &c.mid, &c.leaf])
            .ok();
    }
    let report = parse_json(&server.remote(&["gc", "--json"]).ok());
    // The disk had no room to rewrite the pack: its dead ranges were punched.
    assert!(
        report["packs_punched"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    let (before, after) = (
        report["stored_bytes_before"].as_u64().unwrap(),
        report["stored_bytes_after"].as_u64().unwrap(),
    );
    assert!(
        after + (50 << 20) < before,
        "two 30 MiB closures were given back: {before} -> {after}"
    );
    n4.copy_to(&c4.store, &to, &[&c4.top], Some(&netrc4)).ok();
    let dst = n4.store("dst-after-gc");
    n4.substitute(&dst, &c4.top, &cache.url, &cache.public_key, Some(&netrc4))
        .ok();
    let v = parse_json(&server.remote(&["verify", "--json"]).ok());
    assert_eq!(v["nars_damaged"], json!(0), "{v}");
    server.stop();
}
