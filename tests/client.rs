//! The `larder` client against a real server and the real Nix 2.8: `login`,
//! `use --write`, `push` (closures, upstream filter, `--stdin`, `--no-closure`),
//! `watch-store` (store scanning and the post-build-hook spool), `cache …` on saved
//! servers, and the seed's operating model end to end.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::nix::{s, NIX_CONF};
use crate::support::process::{self, Output};
use crate::support::server::{parse_json, LARDER};
use crate::support::workdir::Workdir;
use crate::support::{fetch_narinfo, Cache, Nix, Server};
use crate::tokens::mint;

/// A client machine: its own XDG config dir (saved servers) and Nix environment.
struct Client {
    home: Workdir,
    nix: Nix,
}

impl Client {
    fn new(test: &str) -> Client {
        Client {
            home: Workdir::new(&format!("client-{test}")),
            nix: Nix::new(test),
        }
    }

    fn xdg(&self) -> PathBuf {
        self.home.join("xdg")
    }

    /// Runs `larder ARGS` as this client (stdin from `stdin` when given).
    fn larder_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.nix.cmd(LARDER);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LARDER_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args).env("XDG_CONFIG_HOME", self.xdg());
        match stdin {
            None => process::run(&mut cmd, Duration::from_secs(120)),
            Some(text) => {
                let file = self.home.join("stdin.txt");
                std::fs::write(&file, text).unwrap();
                let mut sh = self.nix.cmd("sh");
                sh.args(["-c", "exec \"$0\" \"$@\" < \"$STDIN_FILE\"", LARDER])
                    .args(args)
                    .env("XDG_CONFIG_HOME", self.xdg())
                    .env("STDIN_FILE", &file);
                process::run(&mut sh, Duration::from_secs(120))
            }
        }
    }

    fn larder(&self, args: &[&str]) -> Output {
        self.larder_with_stdin(args, None)
    }

    /// `larder push … --json`, parsed.
    fn push(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["push"];
        all.extend_from_slice(args);
        all.push("--json");
        parse_json(&self.larder(&all).ok())
    }
}

#[track_caller]
fn counts(summary: &serde_json::Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| {
        summary[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {summary}"))
    };
    (
        n("pushed"),
        n("deduplicated"),
        n("already_cached"),
        n("skipped_upstream"),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// NIX_CONF without its empty `substituters`/`trusted-public-keys`, so a nix.conf
/// in NIX_CONF_DIR decides them.
fn nix_config_from_files() -> String {
    NIX_CONF
        .lines()
        .filter(|l| !l.starts_with("substituters") && !l.starts_with("trusted-public-keys"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn present(server: &Server, cache: &Cache, path: &str) -> bool {
    fetch_narinfo(cache, path, server.auth()).is_some()
}

#[test]
fn push_a_closure_as_a_team_token_then_substitute_with_what_use_wrote() {
    let server = Server::start();
    let team = mint(
        &server,
        "team",
        86_400,
        json!({"team-*": ["pull", "push", "create-cache", "configure-cache"]}),
    );
    let client = Client::new("client-e2e");
    client.larder(&["login", "main", server.url(), &team]).ok();
    let cfg = client.xdg().join("larder/config.toml");
    assert_eq!(mode(&cfg), 0o600, "config.toml holds a token");
    assert!(std::fs::read_to_string(&cfg).unwrap().contains(&team));

    client.larder(&["cache", "create", "team-dev"]).ok();
    let cache = server.cache("team-dev");
    let c = client.nix.closure("src", 256 * 1024);
    let store = s(&c.store);

    let summary = client.push(&["team-dev", "--store", store, &c.top]);
    assert_eq!(counts(&summary), (3, 0, 0, 0), "{summary}");
    let nar_total: usize = c
        .paths
        .iter()
        .map(|p| client.nix.dump(&c.store, p).len())
        .sum();
    assert_eq!(
        summary["nar_bytes"].as_u64(),
        Some(nar_total as u64),
        "{summary}"
    );
    let sent = summary["bytes_sent"].as_u64().unwrap();
    assert!(
        sent > 256 * 1024 && sent < nar_total as u64 + 4096,
        "{summary}"
    );
    for p in &c.paths {
        assert!(present(&server, &cache, p), "{p} not pushed");
    }
    // Again: nothing is sent.
    let again = client.push(&["team-dev", "--store", store, &c.top]);
    assert_eq!(counts(&again), (0, 0, 3, 0), "{again}");
    assert_eq!(again["bytes_sent"].as_u64(), Some(0));

    // `use` prints the lines; `use --write` installs them.
    let printed = client.larder(&["use", "team-dev"]).ok().stdout;
    assert!(
        printed.contains(&format!("extra-substituters = {}", cache.url)),
        "{printed}"
    );
    assert!(printed.contains(&format!("extra-trusted-public-keys = {}", cache.public_key)));
    assert!(printed.contains(&format!("machine 127.0.0.1 password {team}")));
    let etc = client.home.join("etc-nix");
    std::fs::create_dir_all(&etc).unwrap();
    // A nix.conf that already has settings of its own, which must survive.
    std::fs::write(
        etc.join("nix.conf"),
        "# site settings\nsubstituters =\nconnect-timeout = 5\n",
    )
    .unwrap();
    let netrc = etc.join("netrc");
    client
        .larder(&[
            "use",
            "team-dev",
            "--write",
            "--nix-conf",
            s(&etc.join("nix.conf")),
            "--netrc",
            s(&netrc),
        ])
        .ok();
    client
        .larder(&[
            "use",
            "team-dev",
            "--write",
            "--nix-conf",
            s(&etc.join("nix.conf")),
            "--netrc",
            s(&netrc),
        ])
        .ok();
    let conf = std::fs::read_to_string(etc.join("nix.conf")).unwrap();
    assert!(
        conf.starts_with("# site settings\nsubstituters =\nconnect-timeout = 5\n"),
        "{conf}"
    );
    assert_eq!(
        conf.matches(&cache.url).count(),
        1,
        "written twice:\n{conf}"
    );
    assert!(
        conf.contains(&format!("netrc-file = {}", netrc.display())),
        "{conf}"
    );
    assert_eq!(mode(&netrc), 0o600);
    assert_eq!(
        std::fs::read_to_string(&netrc).unwrap(),
        format!("machine 127.0.0.1 password {team}\n")
    );

    // Real Nix with only that nix.conf and netrc: substitute into a fresh store.
    let dst = client.nix.store("fresh");
    let mut cmd = client.nix.cmd("nix-store");
    cmd.env("NIX_CONF_DIR", &etc)
        .env("NIX_CONFIG", nix_config_from_files())
        .args(["--store", s(&dst), "-r", &c.top]);
    process::run(&mut cmd, Duration::from_secs(180)).ok();
    crate::substitution::check_substituted(&client.nix, &c, &dst);

    // The same token cannot push to another team's cache, whether it exists or not.
    server.create_cache("otherteam-x", false);
    let other = server.cache("otherteam-x");
    let out = client
        .larder(&["push", "otherteam-x", "--store", store, &c.top])
        .fails();
    assert!(out.stderr.contains("401"), "{}", out.describe());
    assert!(server
        .log()
        .contains("token has no permission on cache \"otherteam-x\""));
    for p in &c.paths {
        assert!(!present(&server, &other, p), "{p} reached otherteam-x");
    }
    let out = client.larder(&["cache", "create", "otherteam-y"]).fails();
    assert!(
        out.stderr.contains("401") || out.stderr.contains("403"),
        "{}",
        out.describe()
    );
}

#[test]
fn the_operating_model_end_to_end() {
    let server = Server::start();
    let admin = Client::new("op-admin");
    // 1. The bootstrap admin token mints a team token for `teamname-*`.
    let team = admin
        .larder(&[
            "token",
            "create",
            "--server",
            server.url(),
            "--token",
            server.token(),
            "--sub",
            "teamname",
            "--validity",
            "30d",
            "--pull",
            "teamname-*",
            "--push",
            "teamname-*",
            "--create-cache",
            "teamname-*",
            "--configure-cache",
            "teamname-*",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();

    // 2. The team creates its caches with its own token; nothing else.
    let lead = Client::new("op-lead");
    lead.larder(&["login", "work", server.url(), &team]).ok();
    lead.larder(&["cache", "create", "work:teamname-dev"]).ok();
    lead.larder(&["cache", "create", "teamname-prod", "--public"])
        .ok();
    lead.larder(&["cache", "create", "otherteam-dev"]).fails();
    let listed = lead.larder(&["cache", "list"]).ok().stdout;
    assert!(
        listed.contains("teamname-dev") && listed.contains("teamname-prod"),
        "{listed}"
    );

    // 3. The team hands CI a push-only token for prod, without the operator.
    let ci = lead
        .larder(&[
            "token",
            "create",
            "--sub",
            "ci",
            "--validity",
            "7d",
            "--push",
            "teamname-prod",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let reader = lead
        .larder(&[
            "token",
            "create",
            "--sub",
            "laptop",
            "--validity",
            "7d",
            "--pull",
            "teamname-*",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    // Delegation may not widen: the team cannot mint for another team.
    lead.larder(&[
        "token",
        "create",
        "--sub",
        "x",
        "--validity",
        "1d",
        "--push",
        "otherteam-*",
    ])
    .fails();

    // 4. CI pushes with its push-only token (it may not even read the config).
    let ci_box = Client::new("op-ci");
    ci_box.larder(&["login", "ci", server.url(), &ci]).ok();
    let c = ci_box.nix.closure("src", 64 * 1024);
    let out = ci_box
        .larder(&[
            "push",
            "teamname-prod",
            "--store",
            s(&c.store),
            &c.top,
            "--json",
        ])
        .ok();
    assert_eq!(
        counts(&parse_json(&out)),
        (3, 0, 0, 0),
        "{}",
        out.describe()
    );
    // Not to dev, which it holds nothing on.
    ci_box
        .larder(&["push", "teamname-dev", "--store", s(&c.store), &c.top])
        .fails();
    // Nix can push with it too (netrc password).
    let prod = server.cache("teamname-prod");
    let ci_nix_paths = Nix::new("op-ci-nix");
    let c2 = ci_nix_paths.closure("src", 0);
    ci_nix_paths
        .copy_to(
            &c2.store,
            &format!("{}?compression=zstd", prod.url),
            &[&c2.top],
            Some(&ci_nix_paths.netrc(&ci)),
        )
        .ok();
    assert!(present(&server, &prod, &c2.top));

    // 5. A pull-only token cannot push, by larder or by Nix, but can substitute.
    let laptop = Client::new("op-laptop");
    laptop
        .larder(&["login", "work", server.url(), &reader])
        .ok();
    let c3 = laptop.nix.closure("src", 0);
    let out = laptop
        .larder(&["push", "teamname-dev", "--store", s(&c3.store), &c3.top])
        .fails();
    assert!(out.stderr.contains("403"), "{}", out.describe());
    laptop
        .nix
        .copy_to(
            &c3.store,
            &format!("{}?compression=zstd", server.cache("teamname-dev").url),
            &[&c3.top],
            Some(&laptop.nix.netrc(&reader)),
        )
        .fails();
    assert!(!present(&server, &server.cache("teamname-dev"), &c3.top));
    let dst = laptop.nix.store("dst");
    laptop
        .nix
        .substitute(
            &dst,
            &c.top,
            &prod.url,
            &prod.public_key,
            Some(&laptop.nix.netrc(&reader)),
        )
        .ok();
    assert!(laptop.nix.is_valid(&dst, &c.top));
    // Revoking the team token cuts CI and the laptop too (they descend from it).
    let out = admin
        .larder(&[
            "token",
            "inspect",
            "--server",
            server.url(),
            "--token",
            server.token(),
            &team,
            "--json",
        ])
        .ok();
    let jti = parse_json(&out)["claims"]["jti"]
        .as_str()
        .unwrap()
        .to_string();
    admin
        .larder(&[
            "token",
            "revoke",
            "--server",
            server.url(),
            "--token",
            server.token(),
            &jti,
        ])
        .ok();
    std::thread::sleep(Duration::from_millis(300));
    ci_box
        .larder(&["push", "teamname-prod", "--store", s(&c2.store), &c2.top])
        .fails();
    assert!(server.log().contains("token revoked"));
}

/// Signs `path` in `store` with a key called `name` (as if an upstream cache had).
fn sign(nix: &Nix, store: &Path, path: &str, name: &str) {
    let (sk, _) = nix.generate_key(name);
    nix.run(
        "nix",
        &[
            "store",
            "sign",
            "--store",
            s(store),
            "--key-file",
            s(&sk),
            path,
        ],
    )
    .ok();
}

#[test]
fn push_skips_upstream_paths_and_takes_stdin_and_no_closure() {
    let server = Server::start();
    let cache = server.create_cache("team-dev", false);
    let client = Client::new("client-filter");
    client
        .larder(&["login", "main", server.url(), server.token()])
        .ok();
    let c = client.nix.closure("src", 0);
    let store = s(&c.store);
    sign(&client.nix, &c.store, &c.leaf, "cache.nixos.org-1");

    // --no-closure: only the named path.
    let one = client.push(&["team-dev", "--store", store, "--no-closure", &c.mid]);
    assert_eq!(counts(&one), (1, 0, 0, 0), "{one}");
    assert!(present(&server, &cache, &c.mid) && !present(&server, &cache, &c.top));

    // --stdin with the closure: the upstream-signed leaf is skipped.
    let out = client
        .larder_with_stdin(
            &["push", "team-dev", "--store", store, "--stdin", "--json"],
            Some(&format!("{}\n", c.top)),
        )
        .ok();
    let summary = parse_json(&out);
    assert_eq!(counts(&summary), (1, 0, 1, 1), "{summary}");
    assert!(
        !present(&server, &cache, &c.leaf),
        "an upstream-signed path was pushed"
    );
    assert!(present(&server, &cache, &c.top));

    // Unless asked not to filter.
    let all = client.push(&[
        "team-dev",
        "--store",
        store,
        "--ignore-upstream-cache-filter",
        &c.top,
    ]);
    assert_eq!(counts(&all), (1, 0, 2, 0), "{all}");
    assert!(present(&server, &cache, &c.leaf));
    // The cache's own upstream list decides: with none, nothing is filtered.
    server
        .remote(&[
            "cache",
            "configure",
            "team-dev",
            "--upstream-cache-key-name",
            "someone-else-1",
        ])
        .ok();
    let cache2 = server.create_cache("team-two", false);
    server
        .remote(&[
            "cache",
            "configure",
            "team-two",
            "--upstream-cache-key-name",
            "someone-else-1",
        ])
        .ok();
    // Nix's own dump gives the same NARs as larder's in-process one.
    let two = client.push(&[
        "team-two",
        "--store",
        store,
        &c.top,
        "-j",
        "1",
        "--nix-dump",
    ]);
    assert_eq!(counts(&two), (0, 3, 0, 0), "stored NARs, new cache: {two}");
    assert!(present(&server, &cache2, &c.leaf));
    // No paths at all is an error, not a silent success.
    client.larder(&["push", "team-dev"]).fails();
}

#[test]
fn watch_store_pushes_new_paths_and_drains_the_post_build_hook_spool() {
    let server = Server::start();
    let cache = server.create_cache("team-dev", false);
    let client = Client::new("client-watch");
    client
        .larder(&["login", "main", server.url(), server.token()])
        .ok();
    let c = client.nix.closure("src", 0);
    let spool = client.home.join("spool");

    // --enqueue returns at once, even with no server to talk to.
    let started = Instant::now();
    client
        .larder(&["watch-store", "--enqueue", "--spool", s(&spool), &c.mid])
        .ok();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // $OUT_PATHS, as a post-build hook gets it.
    let mut cmd = client.nix.cmd(LARDER);
    cmd.args(["watch-store", "--enqueue", "--spool", s(&spool)])
        .env("OUT_PATHS", format!("{} {}", c.leaf, c.leaf));
    process::run(&mut cmd, Duration::from_secs(30)).ok();
    let queued = std::fs::read_dir(&spool).unwrap().count();
    assert_eq!(queued, 2, "one spool file per enqueue");

    // A watcher (spool only) pushes them and empties the spool.
    let mut w = client.nix.cmd(LARDER);
    w.args([
        "watch-store",
        "team-dev",
        "--no-scan",
        "--spool",
        s(&spool),
        "--store",
        s(&c.store),
        "--interval-ms",
        "100",
    ])
    .env("XDG_CONFIG_HOME", client.xdg());
    let watcher = process::spawn(&mut w);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(present(&server, &cache, &c.mid) && std::fs::read_dir(&spool).unwrap().count() == 0) {
        assert!(Instant::now() < deadline, "spool not drained");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(present(&server, &cache, &c.leaf));
    assert!(!present(&server, &cache, &c.top), "top was never queued");
    drop(watcher);

    // A scanning watcher pushes what gets built after it started, not what was there.
    let mut w = client.nix.cmd(LARDER);
    w.args([
        "watch-store",
        "team-dev",
        "--spool",
        s(&spool),
        "--store",
        s(&c.store),
        "--interval-ms",
        "100",
    ])
    .env("XDG_CONFIG_HOME", client.xdg());
    let watcher = process::spawn(&mut w);
    std::thread::sleep(Duration::from_millis(500));
    let built = client.nix.build(
        &c.store,
        "later.nix",
        &format!(
            r#"builtins.derivation {{ name = "later"; system = builtins.currentSystem;
               builder = "/bin/sh"; args = ["-c" "echo {} > $out"]; PATH = "/usr/bin:/bin"; }}"#,
            client.nix.salt()
        ),
    );
    let later = built[0].clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !present(&server, &cache, &later) {
        assert!(
            Instant::now() < deadline,
            "{later} was not pushed by the watcher"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !present(&server, &cache, &c.top),
        "a path older than the watcher was pushed"
    );
    let out = watcher.wait(Duration::from_millis(10));
    assert!(out.stderr.contains("new path"), "{}", out.describe());
}

#[test]
fn cache_commands_use_saved_servers_and_attic_flags() {
    let a = Server::start();
    let b = Server::start();
    let client = Client::new("client-cache");
    client.larder(&["login", "a", a.url(), a.token()]).ok();
    client.larder(&["login", "b", b.url(), b.token()]).ok();
    let text = std::fs::read_to_string(client.xdg().join("larder/config.toml")).unwrap();
    assert!(text.contains("default-server = \"a\""), "{text}");
    assert_eq!(mode(&client.xdg().join("larder")), 0o700);

    client
        .larder(&["cache", "create", "team-x", "--public", "--priority", "42"])
        .ok();
    client
        .larder(&[
            "cache",
            "create",
            "b:team-y",
            "--upstream-cache-key-name",
            "up-1",
            "--upstream-cache-key-name",
            "up-2",
        ])
        .ok();
    assert_eq!(a.cache_info("team-x")["priority"], json!(42));
    assert_eq!(
        b.cache_info("team-y")["upstream_cache_key_names"],
        json!(["up-1", "up-2"])
    );
    a.remote(&["cache", "info", "team-y"]).fails();

    client
        .larder(&[
            "cache",
            "configure",
            "b:team-y",
            "--retention-period",
            "30d",
            "--private",
        ])
        .ok();
    assert_eq!(
        b.cache_info("team-y")["retention_period"],
        json!({"Period": 30 * 86_400})
    );
    client
        .larder(&["cache", "configure", "b:team-y", "--reset-retention-period"])
        .ok();
    assert_eq!(b.cache_info("team-y")["retention_period"], json!("Global"));
    let info = parse_json(&client.larder(&["cache", "info", "b:team-y", "--json"]).ok());
    assert_eq!(info["is_public"], json!(false));

    // --set-default moves the default; `cache list` follows it.
    client
        .larder(&["login", "b", b.url(), b.token(), "--set-default"])
        .ok();
    let listed = client.larder(&["cache", "list"]).ok().stdout;
    assert!(
        listed.contains("team-y") && !listed.contains("team-x"),
        "{listed}"
    );
    client
        .larder(&["cache", "destroy", "team-y", "--no-confirm"])
        .ok();
    b.remote(&["cache", "info", "team-y"]).fails();
    // An unknown saved server is an error naming it.
    let out = client.larder(&["cache", "info", "nope:team-x"]).fails();
    assert!(out.stderr.contains("nope"), "{}", out.describe());
}

#[test]
fn push_sends_large_metadata_as_a_preamble() {
    let server = Server::start();
    let cache = server.create_cache("team-dev", false);
    let client = Client::new("client-preamble");
    client
        .larder(&["login", "main", server.url(), server.token()])
        .ok();
    // 120 references: the upload metadata is well over the 4 KiB header limit.
    let store = client.nix.store("src");
    let built = client.nix.build(
        &store,
        "wide.nix",
        &format!(
            r#"let mk = name: script: builtins.derivation {{
                 inherit name; system = builtins.currentSystem; builder = "/bin/sh";
                 args = [ "-c" script ]; PATH = "/usr/bin:/bin"; salt = "{}"; }};
               deps = builtins.genList (i: mk "dep-${{toString i}}" "echo ${{toString i}} > $out") 120;
           in mk "wide" ("mkdir $out; echo " + builtins.concatStringsSep " " (map toString deps) + " > $out/refs")"#,
            client.nix.salt()
        ),
    );
    let wide = built[0].clone();
    let refs = client.nix.references(&store, &wide);
    assert_eq!(refs.len(), 120);
    let json_refs: usize = refs.iter().map(|r| r.len() - "/nix/store/".len() + 3).sum();
    assert!(json_refs > 4096, "metadata would fit a header: {json_refs}");
    let summary = client.push(&["team-dev", "--store", s(&store), &wide]);
    assert_eq!(counts(&summary), (121, 0, 0, 0), "{summary}");
    let info = fetch_narinfo(&cache, &wide, server.auth()).expect("wide narinfo");
    assert_eq!(info.references().len(), 120);
    assert_eq!(info.require("NarHash"), client.nix.nar_hash(&store, &wide));
}
