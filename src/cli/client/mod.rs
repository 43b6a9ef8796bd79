//! The `larder` client, in the same binary as the server: `login`, `use`,
//! `push` and `watch-store`, and the saved-server resolution that `larder cache …`
//! shares (`SERVER:CACHE` as in Attic, else the default saved server).
//!
//! It speaks only the HTTP API (Attic's routes), so it works against any larder
//! and pushes with a token scoped to the caches it names. It reads the local store
//! through Nix's own commands; it never opens a data dir.

pub mod api;
pub mod config;
pub mod doctor;
pub mod nar;
pub mod nix;
pub mod push;
pub mod use_;
pub mod watch;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;

use self::api::Api;
use self::config::{ClientConfig, Remote};
use self::nix::NixStore;
use self::push::PushOptions;
use super::Target;

/// `--server URL --token TOKEN`, for commands that otherwise use a saved server.
#[derive(ClapArgs, Debug, Clone)]
pub struct ServerFlags {
    /// Server base URL (instead of a saved server).
    #[arg(long, env = "LARDER_SERVER")]
    server: Option<String>,
    /// Token (instead of the saved server's).
    #[arg(long, env = "LARDER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServerFlags {
    fn resolve(&self, spec: &str) -> anyhow::Result<(Remote, String)> {
        ClientConfig::load()?.resolve(spec, self.server.as_deref(), self.token.as_deref())
    }
}

#[derive(ClapArgs, Debug)]
pub struct LoginArgs {
    /// A short name for the server (used as `NAME:cache`).
    name: String,
    /// The server's base URL, e.g. https://cache.example.com
    endpoint: String,
    /// A token for it (omit for public caches only).
    token: Option<String>,
    /// Make it the default server (the first one saved always is).
    #[arg(long)]
    set_default: bool,
    /// Save without first checking the server and the token.
    #[arg(long)]
    no_verify: bool,
}

#[derive(ClapArgs, Debug)]
pub struct UseArgs {
    /// `[SERVER:]CACHE`
    cache: String,
    #[command(flatten)]
    server: ServerFlags,
    /// Install the lines instead of printing them.
    #[arg(long)]
    write: bool,
    /// nix.conf to edit (default: $NIX_CONF_DIR/nix.conf if set, else the user's).
    #[arg(long, value_name = "PATH")]
    nix_conf: Option<PathBuf>,
    /// netrc to edit (default: nix.conf's netrc-file, else `netrc` beside nix.conf).
    #[arg(long, value_name = "PATH")]
    netrc: Option<PathBuf>,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct PushFlags {
    /// Uploads in parallel.
    #[arg(short = 'j', long = "jobs", default_value_t = 4)]
    jobs: usize,
    /// Push only the named paths, not their closures.
    #[arg(long)]
    no_closure: bool,
    /// Also push paths signed by the cache's upstream keys (cache.nixos.org-1).
    #[arg(long)]
    ignore_upstream_cache_filter: bool,
    /// The Nix store to read from (default: the system store).
    #[arg(long, value_name = "STORE")]
    store: Option<String>,
    /// Read NARs with `nix-store --dump` instead of from the file system.
    #[arg(long)]
    nix_dump: bool,
    /// zstd level of NARs on the wire.
    #[arg(long, default_value_t = push::DEFAULT_WIRE_ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: i32,
}

impl PushFlags {
    fn options(&self) -> PushOptions {
        PushOptions {
            jobs: self.jobs.max(1),
            closure: !self.no_closure,
            upstream_filter: !self.ignore_upstream_cache_filter,
            zstd_level: self.zstd_level,
            progress: push::stderr_is_tty(),
        }
    }

    fn store(&self) -> NixStore {
        NixStore {
            store: self.store.clone(),
            nix_dump: self.nix_dump,
        }
    }
}

#[derive(ClapArgs, Debug)]
pub struct PushArgs {
    /// `[SERVER:]CACHE`
    cache: String,
    /// Store paths (or paths into the store, such as ./result).
    paths: Vec<String>,
    /// Also read paths from stdin, whitespace-separated.
    #[arg(long)]
    stdin: bool,
    #[command(flatten)]
    flags: PushFlags,
    #[command(flatten)]
    server: ServerFlags,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(ClapArgs, Debug)]
pub struct WatchArgs {
    /// `[SERVER:]CACHE` to push to; with --enqueue, the store paths to queue.
    args: Vec<String>,
    /// Queue paths (or $OUT_PATHS) for a running watcher and return at once: for
    /// a Nix post-build-hook.
    #[arg(long)]
    enqueue: bool,
    /// The queue directory shared by --enqueue and the watcher.
    #[arg(long, env = "LARDER_SPOOL", value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Only push queued paths; do not watch the store directory.
    #[arg(long)]
    no_scan: bool,
    /// How often to look, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    interval_ms: u64,
    #[command(flatten)]
    flags: PushFlags,
    #[command(flatten)]
    server: ServerFlags,
}

pub fn login(a: LoginArgs) -> anyhow::Result<ExitCode> {
    let what = if a.no_verify {
        None
    } else {
        Some(check_login(&a.endpoint, a.token.as_deref()).context(
            "not saved; check the URL and token (or pass --no-verify to save it anyway)",
        )?)
    };
    let mut cfg = ClientConfig::load()?;
    let new = !cfg.servers.contains_key(&a.name);
    cfg.login(&a.name, &a.endpoint, a.token, a.set_default)?;
    let path = cfg.save()?;
    eprintln!(
        "{} server {:?} ({}){} in {}",
        if new { "saved" } else { "updated" },
        a.name,
        a.endpoint.trim_end_matches('/'),
        if cfg.default_server.as_deref() == Some(a.name.as_str()) {
            ", the default"
        } else {
            ""
        },
        path.display()
    );
    if let Some(what) = what {
        eprintln!("{what}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Ask the server what `token` may do: the admin token may list tokens; any
/// other token sees the caches it may use (a bad one gets 401).
fn check_login(endpoint: &str, token: Option<&str>) -> anyhow::Result<String> {
    let client = super::remote::Client::new(endpoint, token.map(str::to_owned));
    let caches: Vec<serde_json::Value> = client.call("GET", "/_api/v1/caches", None)?;
    let names: Vec<&str> = caches
        .iter()
        .filter_map(|c| c.get("name").and_then(|n| n.as_str()))
        .collect();
    if token.is_some()
        && client
            .call::<serde_json::Value>("GET", "/_api/v1/tokens", None)
            .is_ok()
    {
        return Ok("the token is this server's admin token: it may do everything".to_owned());
    }
    let who = if token.is_some() {
        "the token is valid"
    } else {
        "no token: only public caches"
    };
    Ok(if names.is_empty() {
        format!("{who}; it sees no caches yet (a token may still create or push to caches its scopes name)")
    } else {
        format!(
            "{who}; it sees {} cache(s): {}",
            names.len(),
            names.join(", ")
        )
    })
}

pub fn use_cache(a: UseArgs) -> anyhow::Result<ExitCode> {
    let (remote, cache) = a.server.resolve(&a.cache)?;
    let api = Api::new(&remote.endpoint, remote.token.clone());
    let cfg = api
        .cache_config(&cache)
        .with_context(|| format!("reading {cache}'s settings from {}", remote.label))?;
    let host = use_::url_host(&cfg.substituter_endpoint)
        .with_context(|| format!("no host in {:?}", cfg.substituter_endpoint))?;
    let lines = use_::UseLines {
        substituter: cfg.substituter_endpoint,
        public_key: cfg.public_key,
        host,
        token: remote.token,
        first: (!cfg.upstreams.is_empty()).then(|| use_::first_priority(cfg.priority)),
    };
    let dest = use_::Destinations::resolve(a.nix_conf, a.netrc)?;
    if a.write {
        use_::install(&lines, &dest)?;
        eprintln!(
            "configured {} as a substituter in {}{}",
            lines.substituter,
            dest.nix_conf.display(),
            if lines.token.is_some() {
                format!(" (token in {})", dest.netrc.display())
            } else {
                String::new()
            }
        );
    } else {
        print!("{}", use_::render(&lines, &dest));
    }
    if let Some(note) = use_::daemon_trust_note(&dest.nix_conf) {
        eprintln!("{note}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn push_paths(a: PushArgs) -> anyhow::Result<ExitCode> {
    let (remote, cache) = a.server.resolve(&a.cache)?;
    let mut roots = a.paths.clone();
    if a.stdin {
        for line in std::io::stdin().lock().lines() {
            roots.extend(line?.split_whitespace().map(str::to_owned));
        }
    }
    if roots.is_empty() {
        bail!("no paths to push (name some, or pass --stdin)");
    }
    let api = Api::new(&remote.endpoint, remote.token.clone());
    let summary = push::push(&api, &cache, &a.flags.store(), &roots, &a.flags.options())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    eprintln!("{cache} on {}: {}", remote.label, summary.line());
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        for (p, why) in &summary.failed {
            eprintln!("failed: {p}: {why}");
        }
        ExitCode::from(1)
    })
}

pub fn watch_store(a: WatchArgs) -> anyhow::Result<ExitCode> {
    let spool = a.spool.clone().unwrap_or_else(watch::default_spool);
    if a.enqueue {
        let n = watch::enqueue(&spool, &a.args)?;
        if n > 0 && push::stderr_is_tty() {
            eprintln!("queued {n} path(s) in {}", spool.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let [spec] = a.args.as_slice() else {
        bail!("name one cache to push to (or pass --enqueue PATH…)");
    };
    let (remote, cache) = a.server.resolve(spec)?;
    let api = Api::new(&remote.endpoint, remote.token.clone());
    let opts = watch::WatchOptions {
        spool,
        scan: !a.no_scan,
        interval: Duration::from_millis(a.interval_ms.max(10)),
        push: a.flags.options(),
    };
    watch::watch(&api, &cache, &a.flags.store(), &opts)?;
    Ok(ExitCode::SUCCESS)
}

impl Target {
    /// Resolve a `larder cache …` target Attic's way: `SERVER:CACHE` picks a saved
    /// server (over any `--server`); with neither `--server` nor `--data-dir`, the
    /// default saved server is used when there is one (else the local data dir).
    pub(super) fn resolve_cache(self, spec: &str) -> anyhow::Result<(Target, String)> {
        if let Some((server, cache)) = spec.split_once(':') {
            // The named saved server wins over --server/--data-dir (which may come
            // from LARDER_SERVER/LARDER_DATA_DIR in the environment).
            let (remote, cache) = ClientConfig::load()?.resolve(
                &format!("{server}:{cache}"),
                None,
                self.token.as_deref(),
            )?;
            return Ok((self.remote(remote), cache));
        }
        Ok((self.resolve_default()?, spec.to_owned()))
    }

    /// Where to act, highest first: the `--server` or `--data-dir` flag, then
    /// `LARDER_SERVER`, then `LARDER_DATA_DIR`, then the default saved server, then
    /// the default data dir. A flag always wins over the environment.
    pub(super) fn resolve_default(mut self) -> anyhow::Result<Target> {
        if self.server.is_some() || self.data_dir.is_some() {
            return Ok(self);
        }
        if let Some(server) = env_var("LARDER_SERVER") {
            self.server = Some(server);
            return Ok(self);
        }
        if let Some(dir) = env_var("LARDER_DATA_DIR") {
            self.data_dir = Some(PathBuf::from(dir));
            return Ok(self);
        }
        match ClientConfig::load()?.default_remote()? {
            Some(remote) => Ok(self.remote(remote)),
            None => Ok(self),
        }
    }

    fn remote(self, remote: Remote) -> Target {
        Target {
            token: self.token.or(remote.token),
            server: Some(remote.endpoint),
            ..self
        }
    }
}

/// A non-empty environment variable.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `--retention-period`: "global", seconds, or a duration such as `30d`, `1y`,
/// `2 weeks`, `3 months` (a month is 30 days, a year 365).
pub fn parse_retention(s: &str) -> anyhow::Result<Option<u32>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("global") {
        return Ok(None);
    }
    let mut total: u64 = 0;
    let mut rest = t;
    if rest.is_empty() {
        bail!("empty retention period");
    }
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            bail!("retention period {s:?}: expected a number");
        }
        let n: u64 = rest[..digits].parse()?;
        rest = rest[digits..].trim_start();
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 7 * 86_400,
            "month" | "months" | "mon" => 30 * 86_400,
            "y" | "year" | "years" => 365 * 86_400,
            other => bail!("retention period {s:?}: unknown unit {other:?}"),
        };
        total = total.saturating_add(n.saturating_mul(mult));
    }
    u32::try_from(total)
        .map(Some)
        .map_err(|_| anyhow::anyhow!("retention period {s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_periods() {
        assert_eq!(parse_retention("global").unwrap(), None);
        assert_eq!(parse_retention("3600").unwrap(), Some(3600));
        assert_eq!(parse_retention("30d").unwrap(), Some(30 * 86_400));
        assert_eq!(parse_retention("2 weeks").unwrap(), Some(14 * 86_400));
        assert_eq!(parse_retention("1y 1d").unwrap(), Some(366 * 86_400));
        assert!(parse_retention("5 fortnights").is_err());
        assert!(parse_retention("").is_err());
        assert!(parse_retention("200y").is_err());
    }
}
