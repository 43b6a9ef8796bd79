//! Scoped tokens against a running server: the full scope matrix (7 permissions ×
//! exact, wildcard or no pattern × public or private cache) over every route of the
//! Nix protocol, the Attic API and the `larder` client; no discovery of private
//! cache names; revocation within a second (CLI on the data dir, and the API);
//! expiry; `nbf`; delegation limits and cascading revocation; the matching rule.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::http::{self, Auth, Resp};
use crate::support::server::{larder, parse_json};
use crate::support::workdir::Workdir;
use crate::support::{hash_part, Nix, Server};

/// The seven permissions, by their flag names.
pub const PERMS: [&str; 7] = [
    "pull",
    "push",
    "delete",
    "create-cache",
    "configure-cache",
    "configure-cache-retention",
    "destroy-cache",
];

/// Mints a token over the API as `by`; returns the raw answer.
pub fn mint_as(server: &Server, by: Auth<'_>, body: serde_json::Value) -> Resp {
    http::request(
        "POST",
        &format!("{}/_api/v1/tokens", server.url()),
        by,
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

/// Mints a token as the admin with `grants` (pattern -> permission names).
pub fn mint(server: &Server, sub: &str, validity_secs: u64, grants: serde_json::Value) -> String {
    let r = mint_as(
        server,
        server.auth(),
        json!({"sub": sub, "validity_secs": validity_secs, "caches": grants}),
    );
    assert_eq!(r.status, 200, "minting {sub}: {}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("mint answer is JSON");
    v["token"].as_str().expect("token string").to_string()
}

/// The `jti` of a token, read back with `token inspect` on the server.
pub fn jti_of(server: &Server, token: &str) -> String {
    let out = server.remote(&["token", "inspect", token, "--json"]).ok();
    parse_json(&out)["claims"]["jti"]
        .as_str()
        .expect("jti in inspect output")
        .to_string()
}

/// Polls `url` with `auth` until it answers `status`; returns how long that took.
pub fn wait_for_status(url: &str, auth: Auth<'_>, status: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = http::get(url, auth);
        if r.status == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{url} still answers {} (not {status}) after {limit:?}: {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parses an Attic error body and checks its shape.
#[track_caller]
pub fn error_body(r: &Resp, code: u16, name: &str) -> String {
    assert_eq!(r.status, code, "status: {}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", r.text()));
    let obj = v.as_object().expect("error body is an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["code", "error", "message"], "{v}");
    assert_eq!(v["code"].as_u64(), Some(u64::from(code)), "{v}");
    assert_eq!(v["error"].as_str(), Some(name), "{v}");
    v["message"].as_str().expect("message string").to_string()
}

/// One request of the matrix: what it needs, and what an allowed caller gets.
struct Route {
    name: &'static str,
    needs: &'static [&'static str],
    /// Status when allowed.
    ok: u16,
}

/// Everything the matrix sends requests about.
struct Fixture {
    nix: Nix,
    store: std::path::PathBuf,
    leaf: String,
    leaf_nar: Vec<u8>,
    leaf_hash: String,
    drv_log: String,
    client_env: Workdir,
}

impl Fixture {
    fn narinfo_for_put(&self) -> String {
        format!(
            "StorePath: {}\nURL: nar/{}.nar\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: \n",
            self.leaf,
            hash_part(&self.leaf),
            self.leaf_hash,
            self.leaf_nar.len()
        )
    }

    fn upload_info(&self, cache: &str) -> String {
        json!({
            "cache": cache, "store_path_hash": hash_part(&self.leaf), "store_path": self.leaf,
            "references": [], "system": null, "deriver": null, "sigs": [], "ca": null,
            "nar_hash": self.leaf_hash, "nar_size": self.leaf_nar.len(),
        })
        .to_string()
    }
}

fn setup_cache(server: &Server, fx: &Fixture, name: &str, public: bool) {
    let c = server.create_cache(name, public);
    let netrc = fx.nix.netrc(server.token());
    fx.nix
        .copy_to(
            &fx.store,
            &format!("{}?compression=zstd", c.url),
            &[&fx.leaf],
            Some(&netrc),
        )
        .ok();
    let r = http::put(
        &c.at(&fx.drv_log),
        server.auth(),
        "text/plain",
        b"a build log",
    );
    assert!(r.is_success(), "PUT log: {} {}", r.status, r.text());
}

/// Sends one route's request as `auth` against `cache`; returns the status.
fn send(server: &Server, fx: &Fixture, route: &str, cache: &str, token: Option<&str>) -> u16 {
    let auth = match token {
        Some(t) => Auth::Bearer(t),
        None => Auth::None,
    };
    let base = format!("{}/{cache}", server.url());
    let api = format!("{}/_api/v1", server.url());
    let narinfo = format!("{base}/{}.narinfo", hash_part(&fx.leaf));
    let json_h = [("Content-Type", "application/json")];
    let r = match route {
        "GET nix-cache-info" => http::get(&format!("{base}/nix-cache-info"), auth),
        "HEAD nix-cache-info" => http::head(&format!("{base}/nix-cache-info"), auth),
        "GET narinfo" => http::get(&narinfo, auth),
        "HEAD narinfo" => http::head(&narinfo, auth),
        "GET nar" => {
            // The served NAR URL, read with the admin token.
            let info = http::get(&narinfo, server.auth()).text();
            let url = info
                .lines()
                .find_map(|l| l.strip_prefix("URL: "))
                .unwrap_or_else(|| panic!("no URL in {info}"))
                .to_string();
            http::get(&format!("{base}/{url}"), auth)
        }
        "GET log" => http::get(&format!("{base}/{}", fx.drv_log), auth),
        "PUT nix-cache-info" => http::put(
            &format!("{base}/nix-cache-info"),
            auth,
            "text/x-nix-cache-info",
            b"StoreDir: /nix/store\n",
        ),
        "PUT nar" => http::put(
            &format!("{base}/nar/{}.nar", hash_part(&fx.leaf)),
            auth,
            "application/x-nix-nar",
            &fx.leaf_nar,
        ),
        "PUT narinfo" => http::put(
            &narinfo,
            auth,
            "text/x-nix-narinfo",
            fx.narinfo_for_put().as_bytes(),
        ),
        "PUT log" => http::put(
            &format!("{base}/{}", fx.drv_log),
            auth,
            "text/plain",
            b"a build log",
        ),
        "GET attic-cache-info" => http::get(&format!("{base}/attic-cache-info"), auth),
        "GET cache-config" => http::get(&format!("{api}/cache-config/{cache}"), auth),
        "GET summary" => http::get(&format!("{api}/cache/{cache}/summary"), auth),
        "POST get-missing-paths" => http::request(
            "POST",
            &format!("{api}/get-missing-paths"),
            auth,
            &json_h,
            Some(
                json!({"cache": cache, "store_path_hashes": [hash_part(&fx.leaf)]})
                    .to_string()
                    .as_bytes(),
            ),
        ),
        "PUT upload-path" => http::request(
            "PUT",
            &format!("{api}/upload-path"),
            auth,
            &[("X-Attic-Nar-Info", &fx.upload_info(cache))],
            Some(&fx.leaf_nar),
        ),
        "PATCH cache-config" => http::request(
            "PATCH",
            &format!("{api}/cache-config/{cache}"),
            auth,
            &json_h,
            Some(br#"{"priority":41}"#),
        ),
        "PATCH retention" => http::request(
            "PATCH",
            &format!("{api}/cache-config/{cache}"),
            auth,
            &json_h,
            Some(br#"{"retention_period":{"Period":3600}}"#),
        ),
        "POST cache-config" => http::request(
            "POST",
            &format!("{api}/cache-config/{cache}"),
            auth,
            &json_h,
            Some(br#"{"keypair":"Generate","is_public":false,"store_dir":"/nix/store","priority":41,"upstream_cache_key_names":["cache.nixos.org-1"]}"#),
        ),
        "DELETE cache-config" => {
            http::request("DELETE", &format!("{api}/cache-config/{cache}"), auth, &[], None)
        }
        other => {
            // Client routes: the larder binary, exit status mapped to 200 / 400.
            let token = token.unwrap_or("");
            let cfg = fx.client_env.path().to_str().expect("UTF-8").to_string();
            let env = [("XDG_CONFIG_HOME", cfg.as_str()), ("NIX_CONFIG", crate::support::nix::NIX_CONF)];
            let store = fx.store.to_str().expect("UTF-8");
            let mut args: Vec<&str> = match other {
                "client push" => vec!["push", cache, "--no-closure", "--store", store, &fx.leaf],
                "client use" => vec!["use", cache],
                "client cache info" => vec!["cache", "info", cache],
                "client cache configure" => vec!["cache", "configure", cache, "--priority", "41"],
                _ => panic!("unknown route {other}"),
            };
            args.extend(["--server", server.url()]);
            if !token.is_empty() {
                args.extend(["--token", token]);
            }
            let out = larder(&args, &env);
            assert!(!out.timed_out, "{}", out.describe());
            return if out.success() { 200 } else { 400 };
        }
    };
    r.status
}

const ROUTES: &[Route] = &[
    Route {
        name: "GET nix-cache-info",
        needs: &["pull"],
        ok: 200,
    },
    Route {
        name: "HEAD nix-cache-info",
        needs: &["pull"],
        ok: 200,
    },
    Route {
        name: "GET narinfo",
        needs: &["pull"],
        ok: 200,
    },
    Route {
        name: "HEAD narinfo",
        needs: &["pull"],
        ok: 200,
    },
    Route {
        name: "GET nar",
        needs: &["pull"],
        ok: 200,
    },
    Route {
        name: "GET log",
        needs: &["pull"],
        ok: 200,
    },
    Route {
        name: "PUT nix-cache-info",
        needs: &["push"],
        ok: 200,
    },
    Route {
        name: "PUT nar",
        needs: &["push"],
        ok: 200,
    },
    Route {
        name: "PUT narinfo",
        needs: &["push"],
        ok: 200,
    },
    Route {
        name: "PUT log",
        needs: &["push"],
        ok: 200,
    },
    Route {
        name: "GET attic-cache-info",
        needs: &["pull"],
        ok: 200,
    },
    Route {
        name: "GET cache-config",
        needs: &["pull"],
        ok: 200,
    },
    Route {
        name: "GET summary",
        needs: &["pull"],
        ok: 200,
    },
    Route {
        name: "POST get-missing-paths",
        needs: &["push"],
        ok: 200,
    },
    Route {
        name: "PUT upload-path",
        needs: &["push"],
        ok: 200,
    },
    Route {
        name: "PATCH cache-config",
        needs: &["configure-cache"],
        ok: 200,
    },
    Route {
        name: "PATCH retention",
        needs: &["configure-cache", "configure-cache-retention"],
        ok: 200,
    },
    // Creating a cache that exists, when allowed to: Attic's 400.
    Route {
        name: "POST cache-config",
        needs: &["create-cache"],
        ok: 400,
    },
    // Client routes (200 = exit 0, 400 = any failure).
    Route {
        name: "client push",
        needs: &["push"],
        ok: 200,
    },
    Route {
        name: "client use",
        needs: &["pull"],
        ok: 200,
    },
    Route {
        name: "client cache info",
        needs: &["pull"],
        ok: 200,
    },
    Route {
        name: "client cache configure",
        needs: &["configure-cache"],
        ok: 200,
    },
    // Last: it destroys the cache (the matrix recreates it).
    Route {
        name: "DELETE cache-config",
        needs: &["destroy-cache"],
        ok: 200,
    },
];

fn expected(route: &Route, held: Option<&str>, public: bool) -> u16 {
    let allowed = route
        .needs
        .iter()
        .all(|n| held == Some(*n) || (*n == "pull" && public));
    let client = route.name.starts_with("client ");
    if allowed {
        route.ok
    } else if client {
        400
    } else if held.is_some() || public {
        403
    } else {
        401
    }
}

#[test]
fn scope_matrix_over_every_route() {
    let server = Server::start();
    let nix = Nix::new("matrix");
    let store = nix.store("src");
    let built = nix.build(
        &store,
        "leaf.nix",
        &format!(
            r#"builtins.derivation {{ name = "leaf"; system = builtins.currentSystem;
               builder = "/bin/sh"; args = ["-c" "echo {} > $out"]; }}"#,
            nix.salt()
        ),
    );
    let leaf = built[0].clone();
    let leaf_nar = nix.dump(&store, &leaf);
    let leaf_hash = nix.nar_hash(&store, &leaf);
    let fx = Fixture {
        client_env: Workdir::new("matrix-client"),
        nix,
        store,
        leaf,
        leaf_nar,
        leaf_hash,
        drv_log: "log/00000000000000000000000000000000-x.drv".to_string(),
    };
    let caches = [("mx-pub", true), ("mx-priv", false)];
    for (name, public) in caches {
        setup_cache(&server, &fx, name, public);
    }

    let mut failures = Vec::new();
    let mut checked = 0;
    for (cache, public) in caches {
        for perm in PERMS {
            for scope in ["exact", "wildcard", "none"] {
                let pattern = match scope {
                    "exact" => cache.to_string(),
                    "wildcard" => format!("{}*", &cache[..4]),
                    _ => "elsewhere-*".to_string(),
                };
                let token = mint(&server, "matrix", 3600, json!({ pattern.clone(): [perm] }));
                let held = (scope != "none").then_some(perm);
                for route in ROUTES {
                    let want = expected(route, held, public);
                    let got = send(&server, &fx, route.name, cache, Some(&token));
                    checked += 1;
                    if got != want {
                        failures.push(format!(
                            "{cache} ({}) {perm} on {pattern:?}: {} -> {got}, expected {want}",
                            if public { "public" } else { "private" },
                            route.name
                        ));
                    }
                    if route.name == "DELETE cache-config" && got == 200 {
                        setup_cache(&server, &fx, cache, public);
                    }
                }
            }
        }
        // And with no token at all.
        for route in ROUTES.iter().filter(|r| !r.name.starts_with("client ")) {
            let want = expected(route, None, public);
            let want = if want == 403 { 401 } else { want };
            let got = send(&server, &fx, route.name, cache, None);
            checked += 1;
            if got != want {
                failures.push(format!(
                    "{cache} anonymous: {} -> {got}, expected {want}",
                    route.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The matrix touched something real: 2 caches x 7 x 3 tokens x every route.
    assert_eq!(
        checked,
        2 * (7 * 3 * ROUTES.len()
            + ROUTES
                .iter()
                .filter(|r| !r.name.starts_with("client "))
                .count())
    );
}

#[test]
fn the_most_specific_pattern_wins_and_permissions_do_not_merge() {
    let server = Server::start();
    for name in ["team-dev", "team-ci-x", "team-ci-main", "teamz"] {
        server.create_cache(name, false);
    }
    let token = mint(
        &server,
        "rules",
        3600,
        json!({
            "team-*": ["pull"],
            "team-ci-*": ["push"],
            "team-ci-main": ["configure-cache"],
            "*": ["pull", "push"],
        }),
    );
    let info = |c: &str| {
        http::get(
            &format!("{}/{c}/nix-cache-info", server.url()),
            Auth::Bearer(&token),
        )
        .status
    };
    let missing = |c: &str| {
        http::request(
            "POST",
            &format!("{}/_api/v1/get-missing-paths", server.url()),
            Auth::Bearer(&token),
            &[("Content-Type", "application/json")],
            Some(
                json!({"cache": c, "store_path_hashes": []})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .status
    };
    // team-dev: `team-*` (5 literal chars) beats `*`: pull only.
    assert_eq!(info("team-dev"), 200);
    assert_eq!(missing("team-dev"), 403, "push must not merge in from `*`");
    // team-ci-x: `team-ci-*` beats `team-*`: push only, no pull.
    assert_eq!(missing("team-ci-x"), 200);
    assert_eq!(
        info("team-ci-x"),
        403,
        "pull must not merge in from `team-*`"
    );
    // team-ci-main: the exact name wins over every pattern.
    assert_eq!(info("team-ci-main"), 403);
    assert_eq!(missing("team-ci-main"), 403);
    let r = http::request(
        "PATCH",
        &format!("{}/_api/v1/cache-config/team-ci-main", server.url()),
        Auth::Bearer(&token),
        &[("Content-Type", "application/json")],
        Some(br#"{"priority":30}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // teamz: only `*` matches.
    assert_eq!(info("teamz"), 200);
    assert_eq!(missing("teamz"), 200);
}

#[test]
fn probing_without_permission_looks_the_same_whether_the_cache_exists_or_not() {
    let server = Server::start();
    server.create_cache("otherteam-secret", false);
    server.create_cache("team-dev", false);
    let token = mint(
        &server,
        "team",
        3600,
        json!({"team-*": ["pull", "push", "create-cache", "configure-cache", "destroy-cache"]}),
    );
    let api = format!("{}/_api/v1", server.url());
    let probes: Vec<(&str, String, Option<String>)> = vec![
        ("GET", "{u}/{c}/nix-cache-info".into(), None),
        ("HEAD", "{u}/{c}/nix-cache-info".into(), None),
        (
            "GET",
            format!("{{u}}/{{c}}/{}.narinfo", "0".repeat(32)),
            None,
        ),
        ("GET", "{u}/{c}/nar/abc.nar".into(), None),
        ("GET", "{u}/{c}/attic-cache-info".into(), None),
        ("GET", "{a}/cache-config/{c}".into(), None),
        (
            "PATCH",
            "{a}/cache-config/{c}".into(),
            Some(r#"{"priority":1}"#.into()),
        ),
        ("DELETE", "{a}/cache-config/{c}".into(), None),
        (
            "POST",
            "{a}/cache-config/{c}".into(),
            Some(r#"{"keypair":"Generate"}"#.into()),
        ),
        (
            "POST",
            "{a}/get-missing-paths".into(),
            Some(r#"{"cache":"{c}","store_path_hashes":[]}"#.into()),
        ),
        (
            "PUT",
            "{u}/{c}/nar/abc.nar".into(),
            Some("not a nar".into()),
        ),
    ];
    let mut compared = 0;
    for auth in [Auth::Bearer(&token), Auth::None] {
        for (method, url, body) in &probes {
            let answer = |cache: &str| {
                let url = url
                    .replace("{u}", server.url())
                    .replace("{a}", &api)
                    .replace("{c}", cache);
                let body = body.as_ref().map(|b| b.replace("{c}", cache));
                let r = http::request(method, &url, auth, &[], body.as_deref().map(str::as_bytes));
                (r.status, r.text().replace(cache, "<cache>"))
            };
            let exists = answer("otherteam-secret");
            let missing = answer("otherteam-nothing");
            assert_eq!(
                exists, missing,
                "{method} {url} as {auth:?}: an existing private cache answers differently"
            );
            assert_eq!(exists.0, 401, "{method} {url} as {auth:?}: {}", exists.1);
            compared += 1;
        }
    }
    assert_eq!(compared, 2 * probes.len());
    // The token's own caches: a missing one is a plain 404, not a 401.
    let r = http::get(
        &format!("{api}/cache-config/team-nothing"),
        Auth::Bearer(&token),
    );
    error_body(&r, 404, "NoSuchCache");
    // Listing shows only what the caller may see.
    let r = http::get(&format!("{api}/caches"), Auth::Bearer(&token));
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("team-dev") && !r.text().contains("otherteam"),
        "{}",
        r.text()
    );
}

fn cache_info_url(server: &Server, cache: &str) -> String {
    format!("{}/{cache}/nix-cache-info", server.url())
}

#[test]
fn revoking_by_id_on_the_data_dir_reaches_the_running_server_within_a_second() {
    let server = Server::start();
    server.create_cache("team-dev", false);
    let url = cache_info_url(&server, "team-dev");
    // Minted locally on the data dir, beside the running server.
    let token = server
        .local(&[
            "token",
            "create",
            "--sub",
            "ci",
            "--validity",
            "1d",
            "--pull",
            "team-*",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(http::get(&url, Auth::Bearer(&token)).status, 200);
    assert_eq!(http::get(&url, Auth::Basic("x", &token)).status, 200);
    let jti = jti_of(&server, &token);
    let list = server.local(&["token", "list"]).ok().stdout;
    assert!(list.contains(&jti) && list.contains("ci"), "{list}");

    server.local(&["token", "revoke", &jti]).ok();
    let took = wait_for_status(&url, Auth::Bearer(&token), 401, Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    let r = http::get(&url, Auth::Bearer(&token));
    let msg = error_body(&r, 401, "Unauthorized");
    assert!(msg.contains("revoked"), "{msg}");
    assert!(server.log().contains("token revoked"), "{}", server.log());
    let list = server.local(&["token", "list", "--json"]).ok();
    let rows = parse_json(&list);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["jti"] == json!(jti))
        .expect("revoked token still listed");
    assert!(row["revoked_at"].is_number(), "{row}");
}

#[test]
fn revoking_over_the_api_and_by_subject() {
    let server = Server::start();
    server.create_cache("team-dev", false);
    let url = cache_info_url(&server, "team-dev");
    let a = mint(&server, "alice", 3600, json!({"team-*": ["pull"]}));
    let b1 = mint(&server, "bob", 3600, json!({"team-*": ["pull"]}));
    let b2 = mint(&server, "bob", 3600, json!({"team-dev": ["pull"]}));
    let revoke = |body: serde_json::Value, auth: Auth<'_>| {
        http::request(
            "POST",
            &format!("{}/_api/v1/tokens/revoke", server.url()),
            auth,
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
    };
    // A token cannot revoke a stranger.
    let r = revoke(json!({"jti": jti_of(&server, &b1)}), Auth::Bearer(&a));
    error_body(&r, 403, "AccessError");
    assert_eq!(http::get(&url, Auth::Bearer(&b1)).status, 200);

    let r = revoke(json!({"jti": jti_of(&server, &a)}), server.auth());
    assert_eq!(r.status, 200, "{}", r.text());
    let took = wait_for_status(&url, Auth::Bearer(&a), 401, Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "{took:?}");

    server.remote(&["token", "revoke", "--sub", "bob"]).ok();
    for t in [&b1, &b2] {
        let took = wait_for_status(&url, Auth::Bearer(t), 401, Duration::from_secs(5));
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
}

#[test]
fn an_expired_token_is_refused_with_its_reason() {
    let server = Server::start();
    server.create_cache("team-pub", true);
    let url = cache_info_url(&server, "team-pub");
    let token = server
        .remote(&[
            "token",
            "create",
            "--sub",
            "short",
            "--validity",
            "2s",
            "--push",
            "team-*",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let missing = |t: &str| {
        http::request(
            "POST",
            &format!("{}/_api/v1/get-missing-paths", server.url()),
            Auth::Bearer(t),
            &[],
            Some(br#"{"cache":"team-pub","store_path_hashes":[]}"#),
        )
    };
    assert_eq!(missing(&token).status, 200);
    std::thread::sleep(Duration::from_millis(3100));
    let msg = error_body(&missing(&token), 401, "Unauthorized");
    assert!(msg.contains("expired"), "{msg}");
    // Even on a public cache, a bad token is an error, not anonymous.
    let msg = error_body(&http::get(&url, Auth::Bearer(&token)), 401, "Unauthorized");
    assert!(msg.contains("expired"), "{msg}");
    assert_eq!(http::get(&url, Auth::None).status, 200);
    assert!(server.log().contains("token expired"), "{}", server.log());
    // Inspect still reads it, and says when it expired.
    let out = server.remote(&["token", "inspect", &token]).ok();
    assert!(
        out.stdout.contains("short") && out.stdout.contains("expires"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_token_is_refused_before_its_not_before() {
    let server = Server::start();
    server.create_cache("team-dev", false);
    let url = cache_info_url(&server, "team-dev");
    let out = server
        .remote(&[
            "token",
            "create",
            "--sub",
            "later",
            "--validity",
            "1d",
            "--not-before",
            "1h",
            "--pull",
            "team-*",
            "--json",
        ])
        .ok();
    let v = parse_json(&out);
    let token = v["token"].as_str().unwrap().to_string();
    let (nbf, iat) = (
        v["claims"]["nbf"].as_i64().unwrap(),
        v["claims"]["iat"].as_i64().unwrap(),
    );
    assert!(nbf >= iat + 3600, "{v}");
    let msg = error_body(&http::get(&url, Auth::Bearer(&token)), 401, "Unauthorized");
    assert!(msg.contains("not yet valid"), "{msg}");
    assert!(server.log().contains("token not yet valid"));
    // An invalid token (a flipped character) says so too.
    let mut bad = token.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == 'A' { 'B' } else { 'A' });
    let msg = error_body(&http::get(&url, Auth::Bearer(&bad)), 401, "Unauthorized");
    assert!(msg.contains("invalid token"), "{msg}");
}

#[test]
fn delegation_cannot_widen_or_outlive_and_revoking_a_parent_revokes_its_children() {
    let server = Server::start();
    server.create_cache("team-repo-a", false);
    let parent = mint(
        &server,
        "team",
        7 * 86_400,
        json!({"team-*": ["pull", "push", "create-cache"]}),
    );
    let p = Auth::Bearer(&parent);
    let try_mint = |auth: Auth<'_>, validity: u64, grants: serde_json::Value| {
        mint_as(
            &server,
            auth,
            json!({"sub": "child", "validity_secs": validity, "caches": grants}),
        )
    };
    // Wider patterns, more permissions, a longer life: all refused.
    for (validity, grants, why) in [
        (3600, json!({"*": ["push"]}), "a wider pattern"),
        (3600, json!({"other-*": ["pull"]}), "a disjoint pattern"),
        (
            3600,
            json!({"team-*": ["destroy-cache"]}),
            "a permission the parent lacks",
        ),
        (
            3600,
            json!({"team-repo-*": ["push", "delete"]}),
            "a permission the parent lacks, narrower",
        ),
        (
            30 * 86_400,
            json!({"team-repo-*": ["push"]}),
            "a later expiry",
        ),
    ] {
        let r = try_mint(p, validity, grants);
        let msg = error_body(&r, 403, "AccessError");
        assert!(msg.contains("delegate"), "{why}: {msg}");
    }
    // A narrower token is fine, and may delegate further.
    let r = try_mint(p, 86_400, json!({"team-repo-*": ["push", "pull"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    let child = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = try_mint(Auth::Bearer(&child), 3600, json!({"team-repo-a": ["pull"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    let grandchild = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let out = server.remote(&["token", "inspect", &grandchild]).ok();
    assert!(out.stdout.contains("delegated"), "{}", out.stdout);

    let url = cache_info_url(&server, "team-repo-a");
    for t in [&parent, &child, &grandchild] {
        assert_eq!(http::get(&url, Auth::Bearer(t)).status, 200);
    }
    // A child cannot revoke its parent; the operator revokes the parent.
    let parent_jti = jti_of(&server, &parent);
    let r = http::request(
        "POST",
        &format!("{}/_api/v1/tokens/revoke", server.url()),
        Auth::Bearer(&child),
        &[],
        Some(json!({"jti": parent_jti}).to_string().as_bytes()),
    );
    error_body(&r, 403, "AccessError");
    server.local(&["token", "revoke", &parent_jti]).ok();
    for t in [&parent, &child, &grandchild] {
        let took = wait_for_status(&url, Auth::Bearer(t), 401, Duration::from_secs(5));
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    let out = server
        .remote(&["token", "inspect", &grandchild, "--json"])
        .ok();
    assert_eq!(parse_json(&out)["revoked"], json!(true));
}

#[test]
fn tokens_work_as_bearer_in_any_case_and_as_a_basic_password() {
    let server = Server::start();
    server.create_cache("team-dev", false);
    let url = cache_info_url(&server, "team-dev");
    let token = mint(&server, "t", 3600, json!({"team-*": ["pull"]}));
    for scheme in ["bearer", "Bearer", "BEARER"] {
        let r = http::request(
            "GET",
            &url,
            Auth::None,
            &[("Authorization", &format!("{scheme} {token}"))],
            None,
        );
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
    }
    for user in ["", "anyone"] {
        assert_eq!(http::get(&url, Auth::Basic(user, &token)).status, 200);
    }
    // Nix sends the netrc password; a real substitution as this token works.
    let nix = Nix::new("token-basic");
    let c = nix.closure("src", 0);
    let admin_netrc = nix.netrc(server.token());
    let cache = server.cache("team-dev");
    nix.copy_to(
        &c.store,
        &format!("{}?compression=zstd", cache.url),
        &[&c.top],
        Some(&admin_netrc),
    )
    .ok();
    let netrc = nix.netrc(&token);
    let dst = nix.store("dst");
    nix.substitute(&dst, &c.top, &cache.url, &cache.public_key, Some(&netrc))
        .ok();
    assert!(nix.is_valid(&dst, &c.top));
    // With a pull-only token, Nix cannot push (a fresh closure, not in the cache).
    let other = Nix::new("token-basic-push");
    let c2 = other.closure("src", 0);
    other
        .copy_to(
            &c2.store,
            &format!("{}?compression=zstd", cache.url),
            &[&c2.top],
            Some(&other.netrc(&token)),
        )
        .fails();
    assert!(crate::support::fetch_narinfo(&cache, &c2.top, server.auth()).is_none());
    assert!(
        server.log().contains("lacks the push permission"),
        "{}",
        server.log()
    );
}
