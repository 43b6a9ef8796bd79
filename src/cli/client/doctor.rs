//! `larder doctor [CACHE]`: the checks a newcomer would otherwise make by hand,
//! in one go, each with what to do when it fails. Nix's own messages ("does not
//! appear to be a binary cache", "not signed by any of the keys") hide which of
//! these is wrong.
//!
//! 1. the server answers (`/_health`);
//! 2. the token is accepted, and what it is (admin, or which caches it sees);
//! 3. the cache exists, may be read, and serves `nix-cache-info` to this token;
//! 4. Nix's effective configuration (`nix show-config --json`) lists the cache as
//!    a substituter, trusts its key, and has a netrc line for its host;
//! 5. with a Nix daemon, whether the daemon trusts this user (else it ignores
//!    `extra-substituters` from the user's nix.conf).

use std::process::{Command, ExitCode, Stdio};

use clap::Args as ClapArgs;

use super::api::Api;
use super::config::{ClientConfig, Remote};
use super::use_::url_host;
use super::ServerFlags;

#[derive(ClapArgs, Debug)]
pub struct DoctorArgs {
    /// `[SERVER:]CACHE` to check too (optional).
    cache: Option<String>,
    #[command(flatten)]
    server: ServerFlags,
}

/// The outcome of the checks so far.
#[derive(Default)]
struct Report {
    problems: usize,
}

impl Report {
    fn ok(&self, what: &str) {
        println!("ok       {what}");
    }

    fn problem(&mut self, what: &str, fix: &str) {
        self.problems += 1;
        println!("PROBLEM  {what}");
        println!("         -> {fix}");
    }

    fn note(&self, what: &str) {
        println!("note     {what}");
    }
}

pub fn doctor(a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut r = Report::default();
    let (remote, cache) = match &a.cache {
        Some(spec) => {
            let (remote, cache) = a.server.resolve(spec)?;
            (remote, Some(cache))
        }
        None => match (&a.server.server, ClientConfig::load()?.default_remote()?) {
            (Some(url), _) => (
                Remote {
                    label: url.clone(),
                    endpoint: url.trim_end_matches('/').to_owned(),
                    token: a.server.token.clone(),
                },
                None,
            ),
            (None, Some(saved)) => (
                Remote {
                    token: a.server.token.clone().or(saved.token.clone()),
                    ..saved
                },
                None,
            ),
            (None, None) => anyhow::bail!(
                "no server: pass --server URL (or set LARDER_SERVER, or `larder login` first)"
            ),
        },
    };
    let base = remote.endpoint.clone();

    // 1. The server.
    let plain = super::super::remote::Client::new(&base, None);
    match plain.call::<serde_json::Value>("GET", "/_health", None) {
        // `/_health` answers "ok", which is not JSON: a parse error means it answered.
        Ok(_) => r.ok(&format!("{base} answers")),
        Err(e) if e.to_string().starts_with("unexpected answer") => {
            r.ok(&format!("{base} answers"))
        }
        Err(e) => {
            r.problem(
                &format!("{base} does not answer: {e:#}"),
                "start `larder serve`, or check the URL (scheme, host, port)",
            );
            return Ok(finish(&r));
        }
    }

    // 2. The token.
    let client = super::super::remote::Client::new(&base, remote.token.clone());
    match &remote.token {
        None => r.note("no token: only public caches can be read, nothing can be pushed"),
        Some(_) => match client.call::<Vec<serde_json::Value>>("GET", "/_api/v1/caches", None) {
            Err(e) => r.problem(
                &format!("the token is refused: {e:#}"),
                "use a token from `larder token create` (or the admin token); `larder token inspect TOKEN` on the server says what it grants",
            ),
            Ok(list) => {
                let admin = client
                    .call::<serde_json::Value>("GET", "/_api/v1/tokens", None)
                    .is_ok();
                let names: Vec<&str> = list
                    .iter()
                    .filter_map(|c| c.get("name").and_then(|n| n.as_str()))
                    .collect();
                r.ok(&format!(
                    "the token is accepted ({}); it sees {} cache(s): {}",
                    if admin { "the admin token" } else { "a scoped token" },
                    names.len(),
                    names.join(", ")
                ));
            }
        },
    }

    // 3. The cache.
    let Some(cache) = cache else {
        r.note("name a cache (`larder doctor CACHE`) to check it and Nix's configuration for it");
        return Ok(finish(&r));
    };
    let api = Api::new(&base, remote.token.clone());
    let cfg = match api.cache_config(&cache) {
        Ok(c) => c,
        Err(e) => {
            let fix = match e.status() {
                Some(404) => {
                    "create it (`larder cache create NAME`), or check the name: `larder cache list`"
                }
                Some(401) | Some(403) => "this token may not read it: use a token with pull on it",
                _ => "see the server's log",
            };
            r.problem(&format!("cache {cache}: {e}"), fix);
            return Ok(finish(&r));
        }
    };
    r.ok(&format!(
        "cache {cache} exists ({}); substituter {}",
        if cfg.is_public { "public" } else { "private" },
        cfg.substituter_endpoint
    ));
    let info = super::super::remote::Client::new(&cfg.substituter_endpoint, remote.token.clone())
        .call::<serde_json::Value>("GET", "/nix-cache-info", None);
    match info {
        Err(e) if !e.to_string().starts_with("unexpected answer") => r.problem(
            &format!("{}/nix-cache-info: {e:#}", cfg.substituter_endpoint),
            "Nix would say \"does not appear to be a binary cache\": check the token's pull right",
        ),
        _ => r.ok(&format!(
            "{}/nix-cache-info is served",
            cfg.substituter_endpoint
        )),
    }

    // 4. Nix's effective configuration.
    match nix_config() {
        Err(e) => r.problem(
            &format!("cannot read Nix's configuration: {e:#}"),
            "install Nix 2.8 or later (`nix` on PATH)",
        ),
        Ok(conf) => {
            let list = |k: &str| -> Vec<String> {
                conf.get(k)
                    .and_then(|v| v.get("value"))
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let url = cfg.substituter_endpoint.trim_end_matches('/');
            if list("substituters")
                .iter()
                .any(|s| s.trim_end_matches('/') == url)
            {
                r.ok(&format!("nix.conf lists {url} as a substituter"));
            } else {
                r.problem(
                    &format!("nix.conf does not list {url} in substituters"),
                    &format!("`larder use {cache} --write` (or add `extra-substituters = {url}`)"),
                );
            }
            if list("trusted-public-keys").contains(&cfg.public_key) {
                r.ok("nix.conf trusts the cache's key");
            } else {
                r.problem(
                    "nix.conf does not trust the cache's signing key",
                    &format!(
                        "`larder use {cache} --write` (or add `extra-trusted-public-keys = {}`)",
                        cfg.public_key
                    ),
                );
            }
            if !cfg.is_public {
                let netrc = conf
                    .get("netrc-file")
                    .and_then(|v| v.get("value"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_owned();
                let host = url_host(url).unwrap_or_default();
                let has_line = std::fs::read_to_string(&netrc)
                    .map(|t| {
                        t.lines().any(|l| {
                            let mut w = l.split_whitespace();
                            w.next() == Some("machine") && w.next() == Some(host.as_str())
                        })
                    })
                    .unwrap_or(false);
                if has_line {
                    r.ok(&format!("netrc {netrc} has a line for {host}"));
                } else {
                    r.problem(
                        &format!("the cache is private and netrc-file ({netrc:?}) has no `machine {host}` line"),
                        &format!("`larder use {cache} --write` (the host must match the URL's exactly)"),
                    );
                }
            }
            // 5. The daemon's trust.
            let daemon = std::path::Path::new("/nix/var/nix/daemon-socket/socket").exists();
            // SAFETY: geteuid has no preconditions and cannot fail.
            let root = unsafe { libc::geteuid() } == 0;
            if daemon && !root {
                let user = std::env::var("USER").unwrap_or_default();
                let trusted = list("trusted-users");
                let groups = user_groups();
                let covers = |t: &String| {
                    t == "*"
                        || *t == user
                        || t.strip_prefix('@')
                            .is_some_and(|g| groups.iter().any(|m| m == g))
                };
                if trusted.iter().any(covers) {
                    r.ok(&format!("the Nix daemon trusts {user} (trusted-users)"));
                } else {
                    r.note(&format!(
                        "a Nix daemon runs and {user:?} is not in trusted-users ({}): it uses only the substituters in /etc/nix/nix.conf unless you add yourself to trusted-users there",
                        trusted.join(" ")
                    ));
                }
            }
        }
    }
    Ok(finish(&r))
}

/// The groups of this user (`id -Gn`), for `@group` entries of trusted-users.
fn user_groups() -> Vec<String> {
    Command::new("id")
        .arg("-Gn")
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn finish(r: &Report) -> ExitCode {
    if r.problems == 0 {
        println!("no problems found");
        ExitCode::SUCCESS
    } else {
        println!("{} problem(s) found", r.problems);
        ExitCode::FAILURE
    }
}

/// `nix show-config --json`: the configuration Nix will use here.
fn nix_config() -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let out = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "show-config",
            "--json",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if !out.status.success() {
        anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
