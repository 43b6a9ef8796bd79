//! The `larder` command line: serving, the admin token, cache management (locally on
//! a data dir and remotely with a token), stats and their environment variables.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::http::{self, Auth};
use crate::support::server::{larder, parse_json, Launch};
use crate::support::{Nix, Server};

/// Every string value anywhere in a JSON document.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out)
        }),
        _ => {}
    }
}

fn listed(json: &serde_json::Value) -> Vec<String> {
    let mut v = Vec::new();
    strings(json, &mut v);
    v
}

#[track_caller]
fn assert_cache_config(info: &serde_json::Value, name: &str, public: bool, priority: u64) {
    for key in [
        "substituter_endpoint",
        "api_endpoint",
        "public_key",
        "is_public",
        "store_dir",
        "priority",
        "upstream_cache_key_names",
        "retention_period",
    ] {
        assert!(info.get(key).is_some(), "cache info lacks {key}: {info}");
    }
    assert_eq!(
        info["is_public"],
        serde_json::Value::Bool(public),
        "{name}: {info}"
    );
    assert_eq!(info["priority"].as_u64(), Some(priority), "{name}: {info}");
    assert_eq!(info["store_dir"].as_str(), Some("/nix/store"), "{info}");
    let key = info["public_key"].as_str().unwrap_or("");
    let (key_name, b64) = key.split_once(':').unwrap_or(("", ""));
    assert!(!key_name.is_empty(), "public_key has no name: {key:?}");
    assert!(
        b64.len() == 44 && b64.ends_with('=') && !b64.contains(char::is_whitespace),
        "public_key is not name:base64(32 bytes): {key:?}"
    );
}

#[test]
fn first_start_writes_and_prints_the_admin_token_once() {
    let mut server = Server::start();
    let file = server.data_dir().join("admin.token");
    let mode = std::fs::metadata(&file)
        .expect("admin.token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token mode {:o}", mode & 0o777);
    let token = server.token().to_string();
    assert!(token.len() >= 20, "a short admin token: {token:?}");
    // The token line may come before or after the listening line.
    server.wait_stdout(Duration::from_secs(5), |l| l.contains("admin token"));
    let printed: Vec<String> = server
        .stdout_lines()
        .iter()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("admin token:")
                .map(|t| t.trim().to_string())
        })
        .collect();
    assert_eq!(
        printed,
        vec![token.clone()],
        "stdout: {:?}",
        server.stdout_lines()
    );
    assert!(
        !server.log().contains(&token),
        "the admin token appears in the log (stderr)"
    );

    server.restart();
    assert_eq!(server.token(), token, "admin.token changed on restart");
    std::thread::sleep(Duration::from_millis(500));
    let again = server.stdout_lines();
    assert!(
        !again.iter().any(|l| l.contains(&token)),
        "a second start printed the token again: {again:?}"
    );
    server.remote(&["cache", "list"]).ok();
}

#[test]
fn serve_takes_its_settings_from_the_environment() {
    let server = Server::start_with(Launch::Env);
    assert!(server.data_dir().join("admin.token").is_file());
    assert!(
        server.data_dir().join("larder.db").is_file(),
        "no larder.db in LARDER_DATA_DIR"
    );
    let out = larder(
        &["cache", "create", "fromenv"],
        &[
            ("LARDER_SERVER", server.url()),
            ("LARDER_TOKEN", server.token()),
        ],
    );
    out.ok();
    let out = larder(
        &["cache", "list", "--json"],
        &[
            ("LARDER_SERVER", server.url()),
            ("LARDER_TOKEN", server.token()),
        ],
    )
    .ok();
    assert!(
        listed(&parse_json(&out)).contains(&"fromenv".to_string()),
        "{}",
        out.stdout
    );
    // A wrong token from the environment is refused.
    larder(
        &["cache", "list"],
        &[("LARDER_SERVER", server.url()), ("LARDER_TOKEN", "wrong")],
    )
    .fails();
}

#[test]
fn cache_lifecycle_remote() {
    let server = Server::start();
    server
        .remote(&["cache", "create", "alpha", "--priority", "30"])
        .ok();
    server.remote(&["cache", "create", "beta", "--public"]).ok();
    // Creating an existing cache is an error, and changes nothing.
    server
        .remote(&["cache", "create", "alpha", "--public"])
        .fails();

    let alpha = server.cache_info("alpha");
    assert_cache_config(&alpha, "alpha", false, 30);
    assert_eq!(
        alpha["substituter_endpoint"].as_str(),
        Some(format!("{}/alpha", server.url()).as_str()),
        "{alpha}"
    );
    assert!(
        alpha["api_endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with(server.url())),
        "{alpha}"
    );
    let beta = server.cache_info("beta");
    assert_eq!(beta["is_public"], serde_json::Value::Bool(true), "{beta}");
    assert_ne!(
        alpha["public_key"], beta["public_key"],
        "two caches share a key"
    );

    let list = server.remote(&["cache", "list"]).ok();
    assert!(
        list.stdout.contains("alpha") && list.stdout.contains("beta"),
        "{}",
        list.stdout
    );
    let json = parse_json(&server.remote(&["cache", "list", "--json"]).ok());
    let names = listed(&json);
    assert!(
        names.contains(&"alpha".into()) && names.contains(&"beta".into()),
        "{json}"
    );

    // nix-cache-info carries the priority Nix should use.
    let r = http::get(
        &format!("{}/alpha/nix-cache-info", server.url()),
        server.auth(),
    );
    assert!(
        r.text().lines().any(|l| l.trim() == "Priority: 30"),
        "{}",
        r.text()
    );

    server
        .remote(&[
            "cache",
            "configure",
            "alpha",
            "--public",
            "--priority",
            "50",
        ])
        .ok();
    let alpha2 = server.cache_info("alpha");
    assert_cache_config(&alpha2, "alpha", true, 50);
    assert_eq!(
        alpha2["public_key"], alpha["public_key"],
        "configure changed the key"
    );
    assert_eq!(
        http::get(
            &format!("{}/alpha/nix-cache-info", server.url()),
            Auth::None
        )
        .status,
        200
    );
    server
        .remote(&["cache", "configure", "alpha", "--private"])
        .ok();
    assert_eq!(
        server.cache_info("alpha")["is_public"],
        serde_json::Value::Bool(false)
    );
    assert_eq!(
        http::get(
            &format!("{}/alpha/nix-cache-info", server.url()),
            Auth::None
        )
        .status,
        401
    );

    server.remote(&["cache", "destroy", "beta"]).ok();
    server.remote(&["cache", "info", "beta", "--json"]).fails();
    let names = listed(&parse_json(
        &server.remote(&["cache", "list", "--json"]).ok(),
    ));
    assert!(
        !names.contains(&"beta".into()) && names.contains(&"alpha".into()),
        "{names:?}"
    );
    assert_eq!(
        http::get(
            &format!("{}/beta/nix-cache-info", server.url()),
            server.auth()
        )
        .status,
        404
    );
    server.remote(&["cache", "destroy", "beta"]).fails();
    server
        .remote(&["cache", "configure", "beta", "--public"])
        .fails();

    // Without the token, nothing.
    larder(&["cache", "create", "gamma", "--server", server.url()], &[]).fails();
    larder(
        &[
            "cache",
            "create",
            "gamma",
            "--server",
            server.url(),
            "--token",
            "wrong",
        ],
        &[],
    )
    .fails();
    server.remote(&["cache", "info", "gamma", "--json"]).fails();
}

#[test]
fn cache_lifecycle_local() {
    // A data dir the server has initialised, then stopped: the operator's offline path.
    let mut server = Server::start();
    server.stop();
    server
        .local(&["cache", "create", "alpha", "--priority", "45"])
        .ok();
    server.local(&["cache", "create", "beta", "--public"]).ok();
    server.local(&["cache", "create", "alpha"]).fails();

    let alpha = parse_json(&server.local(&["cache", "info", "alpha", "--json"]).ok());
    assert_cache_config(&alpha, "alpha", false, 45);
    let names = listed(&parse_json(
        &server.local(&["cache", "list", "--json"]).ok(),
    ));
    assert!(
        names.contains(&"alpha".into()) && names.contains(&"beta".into()),
        "{names:?}"
    );

    server
        .local(&["cache", "configure", "alpha", "--priority", "20"])
        .ok();
    server
        .local(&["cache", "configure", "beta", "--private"])
        .ok();
    let beta = parse_json(&server.local(&["cache", "info", "beta", "--json"]).ok());
    assert_eq!(beta["is_public"], serde_json::Value::Bool(false), "{beta}");
    server
        .local(&["cache", "configure", "beta", "--public"])
        .ok();
    server.local(&["cache", "create", "gamma"]).ok();
    server.local(&["cache", "destroy", "gamma"]).ok();
    server.local(&["cache", "info", "gamma", "--json"]).fails();

    // The running server sees what was done offline, keys included.
    server.start_again();
    let remote = server.cache_info("alpha");
    assert_cache_config(&remote, "alpha", false, 20);
    assert_eq!(remote["public_key"], alpha["public_key"]);
    let base = server.url().to_string();
    assert_eq!(
        http::get(&format!("{base}/alpha/nix-cache-info"), Auth::None).status,
        401
    );
    assert_eq!(
        http::get(&format!("{base}/beta/nix-cache-info"), Auth::None).status,
        200
    );
    assert_eq!(
        http::get(&format!("{base}/gamma/nix-cache-info"), server.auth()).status,
        404
    );
    let names = listed(&parse_json(
        &server.remote(&["cache", "list", "--json"]).ok(),
    ));
    assert!(!names.contains(&"gamma".into()), "{names:?}");
}

#[test]
fn bad_cache_names_are_refused() {
    let mut server = Server::start();
    let too_long = "a".repeat(51);
    let bad = [
        "-leading-dash",
        "_leading-underscore",
        "+plus",
        "has space",
        "has/slash",
        "..",
        "dot.ted",
        "ümlaut",
        "semi;colon",
        too_long.as_str(),
    ];
    for name in bad {
        server.remote(&["cache", "create", name]).fails();
    }
    // The empty name cannot be passed through some shells; here it can.
    server.remote(&["cache", "create", ""]).fails();
    let fifty = "b".repeat(50);
    for good in ["a", "A-z_0+9", fifty.as_str()] {
        server.remote(&["cache", "create", good]).ok();
        assert_eq!(
            http::get(
                &format!("{}/{good}/nix-cache-info", server.url()),
                server.auth()
            )
            .status,
            200,
            "{good}"
        );
    }
    let names = listed(&parse_json(
        &server.remote(&["cache", "list", "--json"]).ok(),
    ));
    for name in bad {
        assert!(
            !names.contains(&name.to_string()),
            "{name:?} was created: {names:?}"
        );
    }

    server.stop();
    for name in bad {
        server.local(&["cache", "create", name]).fails();
    }
    let names = listed(&parse_json(
        &server.local(&["cache", "list", "--json"]).ok(),
    ));
    for name in bad {
        assert!(
            !names.contains(&name.to_string()),
            "{name:?} was created locally"
        );
    }
}

#[test]
fn stats_agree_online_and_offline() {
    let mut server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("stats");
    let c = nix.closure("src", 1024 * 1024);
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd", cache.url),
        &[&c.top],
        Some(&nix.netrc(server.token())),
    )
    .ok();
    let online = server.stats();
    assert_eq!(online.nars, 3, "{online:?}");
    assert_eq!(online.store_paths, 3, "{online:?}");
    assert!(online.chunk_bytes > 0 && online.chunks > 0, "{online:?}");
    assert!(
        online.chunk_bytes_uncompressed >= 1024 * 1024,
        "the 1 MiB blob is missing from the chunk bytes: {online:?}"
    );
    // The packs on disk hold at least the compressed chunk bytes.
    let on_disk: u64 = server
        .pack_files()
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        on_disk >= online.chunk_bytes,
        "packs {on_disk} < chunk_bytes {online:?}"
    );
    server.stop();
    assert_eq!(server.stats_local(), online);
}

#[test]
fn verify_on_a_healthy_store_is_clean() {
    let mut server = Server::start();
    let cache = server.create_cache("main", false);
    let nix = Nix::new("verify-clean");
    let c = nix.closure("src", 512 * 1024);
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd", cache.url),
        &[&c.top],
        Some(&nix.netrc(server.token())),
    )
    .ok();
    server.remote(&["verify"]).ok();
    larder(
        &["verify", "--server", server.url(), "--token", "wrong"],
        &[],
    )
    .fails();
    server.stop();
    server.local(&["verify"]).ok();
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `larder completions bash | head -1`: the reader goes away after one line.
    let mut child = std::process::Command::new(crate::support::server::LARDER)
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting larder");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("waiting for larder");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "larder panicked: {stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}
