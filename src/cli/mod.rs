//! Command-line interface: `serve`, cache management, `stats` and `verify`.
//!
//! Management commands run against a server (`--server URL --token TOKEN`, or
//! `LARDER_SERVER`/`LARDER_TOKEN`) or directly on a data dir (`--data-dir`), with
//! the same service code behind both.

mod access_lines;
mod check_config;
mod client;
mod completions;
mod lifecycle;
mod log_writer;
mod remote;
mod s3;
mod serve;
mod tls;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Parser, Subcommand};

use larder::auth::Caller;
use larder::config::{Config, FileConfig};
use larder::service::ServiceError;
use larder::service::{
    CacheConfig, CacheConfigPatch, CacheCreate, KeypairSpec, Larder, RetentionPeriod, Stats,
    VerifyReport,
};
use larder::store::StoreError;

/// The exit codes, for `larder --help`.
const EXIT_CODES: &str = "Exit codes: 0 success; 1 the command failed (a server or \
disk error, a refused request, damage found by `verify`, a failed push); 2 a usage \
error (an unknown flag, a missing argument).";

#[derive(Parser, Debug)]
#[command(
    name = "larder",
    version,
    about = "A private Nix binary cache in one binary",
    after_help = EXIT_CODES
)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve(serve::ServeArgs),
    /// Validate a config file: no secrets read, no network, no data dir.
    CheckConfig(check_config::CheckConfigArgs),
    /// Manage caches.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Mint, list, revoke and inspect scoped tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Show chunk store and metadata totals.
    Stats {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// HTTPS certificates: `larder tls status`.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// The S3 API: access keys (`larder s3 key ...`).
    #[command(subcommand)]
    S3(s3::S3Command),
    /// Save a server and its token for the client commands (`NAME:cache`).
    Login(client::LoginArgs),
    /// Print (or `--write`) the nix.conf and netrc lines that use a cache.
    Use(client::UseArgs),
    /// Push store paths and their closures to a cache.
    Push(client::PushArgs),
    /// Push new store paths as they appear (or `--enqueue` them from a hook).
    WatchStore(client::WatchArgs),
    /// Run a GC pass now: evict by retention, quota and size budget, sweep
    /// unreferenced chunks, compact sparse packs.
    Gc(lifecycle::GcArgs),
    /// Pin store paths so eviction never takes them (`larder pin add|list|remove`).
    #[command(subcommand)]
    Pin(lifecycle::PinCommand),
    /// Store paths in a cache (`larder path delete`).
    #[command(subcommand)]
    Path(lifecycle::PathCommand),
    /// Check every stored NAR against its NarHash; exits 1 when damage is found.
    Verify {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Check a server, a token, a cache and Nix's configuration; say what to fix.
    Doctor(client::doctor::DoctorArgs),
    /// Print shell completions: `larder completions bash|zsh|fish|elvish|powershell`.
    Completions(completions::CompletionsArgs),
    /// Print the man page (`larder man | man -l -`).
    Man,
}

/// Where a management command acts: a server, or a data dir.
#[derive(ClapArgs, Debug, Clone)]
pub struct Target {
    /// Server base URL (remote mode) [env: LARDER_SERVER]. A flag, --server or
    /// --data-dir, wins over both variables.
    #[arg(long, global = true, conflicts_with = "data_dir")]
    server: Option<String>,
    /// Token for the server.
    #[arg(long, env = "LARDER_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Data dir (local mode) [env: LARDER_DATA_DIR; default: $XDG_DATA_HOME/larder,
    /// else ~/.local/share/larder, when no server is given or saved].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Config file (local mode).
    #[arg(long, env = "LARDER_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Create a cache with a fresh signing key.
    Create {
        name: String,
        #[command(flatten)]
        target: Target,
        /// Anyone may pull without a token.
        #[arg(long)]
        public: bool,
        #[arg(long, default_value_t = 41)]
        priority: i32,
        #[arg(long, default_value = "/nix/store")]
        store_dir: String,
        /// Paths signed by these keys are not pushed (repeatable).
        #[arg(long = "upstream-cache-key-name", default_values_t = vec!["cache.nixos.org-1".to_string()])]
        upstream_cache_key_names: Vec<String>,
        /// Make it a pull-through cache of an upstream (repeatable, asked in
        /// order): "URL,KEY[,KEY…][,priority=N]", or "cache.nixos.org" for
        /// https://cache.nixos.org with its key.
        #[arg(long = "upstream", value_name = "URL,KEY")]
        upstreams: Vec<String>,
    },
    /// List caches.
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Show a cache's public key and substituter URL.
    Info {
        name: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Change a cache's settings.
    Configure {
        name: String,
        #[command(flatten)]
        target: Target,
        #[arg(long, conflicts_with = "private")]
        public: bool,
        #[arg(long)]
        private: bool,
        #[arg(long)]
        priority: Option<i32>,
        #[arg(long)]
        store_dir: Option<String>,
        #[arg(long = "upstream-cache-key-name")]
        upstream_cache_key_names: Vec<String>,
        /// Replace the upstreams (repeatable): "URL,KEY[,KEY…][,priority=N]", or
        /// "cache.nixos.org".
        #[arg(
            long = "upstream",
            value_name = "URL,KEY",
            conflicts_with = "no_upstreams"
        )]
        upstreams: Vec<String>,
        /// Stop fetching from upstreams (what is stored stays).
        #[arg(long)]
        no_upstreams: bool,
        /// "global", seconds, or a duration such as 30d, 1y, "3 months".
        #[arg(long, conflicts_with = "reset_retention_period")]
        retention_period: Option<String>,
        /// Back to the server's global retention.
        #[arg(long)]
        reset_retention_period: bool,
        #[arg(long)]
        regenerate_keypair: bool,
        /// The most the cache's NARs may take as stored ("10G"; "none" clears
        /// it): least recently used paths are evicted past it.
        #[arg(long)]
        quota: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a cache and its paths.
    Destroy {
        name: String,
        #[command(flatten)]
        target: Target,
        /// Accepted for `attic cache destroy` compatibility; larder never asks.
        #[arg(long)]
        no_confirm: bool,
    },
}

/// A management session: remote over HTTP, or local on a data dir.
enum Session {
    Remote(remote::Client),
    Local(Box<Larder>),
}

impl Target {
    fn session(&self, needs_store: bool) -> anyhow::Result<Session> {
        // Neither --server nor --data-dir: the default server saved by `larder login`.
        let saved = self.clone().resolve_default()?;
        if let Some(server) = &saved.server {
            return Ok(Session::Remote(remote::Client::new(
                server,
                saved.token.clone(),
            )));
        }
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let config = Config::resolve(file, saved.data_dir.clone(), None)?;
        if !config.data_dir.join("larder.db").exists() {
            bail!(
                "no larder data in {} (start `larder serve` once, or pass --server URL --token TOKEN)",
                config.data_dir.display()
            );
        }
        let base = config.base_url();
        let data_dir = config.data_dir.clone();
        let opened = if needs_store {
            Larder::open(config, base, None)
        } else {
            Larder::open_meta_only(config, base)
        };
        match opened {
            Ok(larder) => Ok(Session::Local(Box::new(larder))),
            // A running server holds the chunk index: act through it, as the
            // data dir's admin.
            Err(ServiceError::Store(StoreError::InUse(why))) => match running_server(&data_dir) {
                Some((url, token)) => Ok(Session::Remote(remote::Client::new(&url, Some(token)))),
                None => bail!("{why}"),
            },
            Err(e) => bail!("{e}"),
        }
    }
}

/// The server running on a data dir: the URL it wrote to `server.url` at start,
/// and the data dir's admin token.
fn running_server(data_dir: &std::path::Path) -> Option<(String, String)> {
    let url = std::fs::read_to_string(data_dir.join("server.url")).ok()?;
    let token = std::fs::read_to_string(data_dir.join("admin.token")).ok()?;
    let (url, token) = (url.trim().to_owned(), token.trim().to_owned());
    (!url.is_empty() && !token.is_empty()).then_some((url, token))
}

fn svc<T>(r: Result<T, larder::service::ServiceError>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

fn print_config(name: &str, c: &CacheConfig, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(c)?);
        return Ok(());
    }
    let retention = match c.retention_period {
        RetentionPeriod::Global => "Global".to_owned(),
        RetentionPeriod::Period(n) => format!("{n} seconds"),
    };
    println!("               Cache: {name}");
    println!("              Public: {}", c.is_public);
    println!("          Public Key: {}", c.public_key);
    println!("Binary Cache Endpoint: {}", c.substituter_endpoint);
    println!("        API Endpoint: {}", c.api_endpoint);
    println!("     Store Directory: {}", c.store_dir);
    println!("            Priority: {}", c.priority);
    println!(" Upstream Cache Keys: {:?}", c.upstream_cache_key_names);
    println!("    Retention Period: {retention}");
    for u in &c.upstreams {
        println!(
            "            Upstream: {} (priority {}; keys {})",
            u.url,
            u.priority,
            u.public_keys.join(" ")
        );
    }
    println!();
    println!("nix.conf lines for this cache:");
    println!("  extra-substituters = {}", c.substituter_endpoint);
    println!("  extra-trusted-public-keys = {}", c.public_key);
    Ok(())
}

/// The upstream cache.nixos.org, as `--upstream cache.nixos.org` names it.
pub const NIXOS_UPSTREAM_URL: &str = "https://cache.nixos.org";
pub const NIXOS_UPSTREAM_KEY: &str =
    "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// `--upstream` values: "cache.nixos.org", or "URL,KEY[,KEY…][,priority=N]".
fn parse_upstreams(specs: &[String]) -> anyhow::Result<Vec<larder::meta::Upstream>> {
    let mut out = Vec::new();
    for spec in specs {
        let spec = spec.trim();
        if spec == "cache.nixos.org" {
            out.push(larder::meta::Upstream {
                url: NIXOS_UPSTREAM_URL.into(),
                public_keys: vec![NIXOS_UPSTREAM_KEY.into()],
                priority: 40,
            });
            continue;
        }
        let mut parts = spec.split(',').map(str::trim).filter(|p| !p.is_empty());
        let url = parts.next().unwrap_or_default().to_owned();
        let mut up = larder::meta::Upstream {
            url,
            public_keys: Vec::new(),
            priority: larder::meta::DEFAULT_UPSTREAM_PRIORITY,
        };
        for p in parts {
            match p.strip_prefix("priority=") {
                Some(n) => {
                    up.priority = n
                        .parse()
                        .with_context(|| format!("--upstream {spec:?}: priority {n:?}"))?
                }
                None => up.public_keys.push(p.to_owned()),
            }
        }
        out.push(up);
    }
    // The server checks them too; checking here names the flag.
    larder::service::validate_upstreams(&out).map_err(|e| anyhow::anyhow!("--upstream: {e}"))
}

impl Args {
    /// Whether this runs the server (which must never die of a closed socket).
    pub fn is_serve(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let admin = Caller::Admin;
    match args.command {
        Command::Serve(a) => serve::run(a),
        Command::CheckConfig(a) => check_config::run(a),
        Command::S3(cmd) => s3::run(cmd),
        Command::Tls(cmd) => tls::run(cmd),
        Command::Login(a) => client::login(a),
        Command::Use(a) => client::use_cache(a),
        Command::Push(a) => client::push_paths(a),
        Command::WatchStore(a) => client::watch_store(a),
        Command::Gc(a) => lifecycle::gc(a),
        Command::Pin(cmd) => lifecycle::pin(cmd),
        Command::Path(cmd) => lifecycle::path(cmd),
        Command::Doctor(a) => client::doctor::doctor(a),
        Command::Completions(a) => completions::completions(a),
        Command::Man => completions::man(),
        Command::Token(cmd) => {
            token::run(cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache(cmd) => {
            match cmd {
                CacheCommand::Create {
                    name,
                    target,
                    public,
                    priority,
                    store_dir,
                    upstream_cache_key_names,
                    upstreams,
                } => {
                    let (target, name) = target.resolve_cache(&name)?;
                    let req = CacheCreate {
                        keypair: KeypairSpec::Generate,
                        is_public: public,
                        store_dir,
                        priority,
                        upstream_cache_key_names,
                        upstreams: parse_upstreams(&upstreams)?,
                    };
                    let cfg = match target.session(false)? {
                        Session::Remote(c) => c.create_cache(&name, &req)?,
                        Session::Local(l) => svc(l.create_cache(&admin, &name, &req))?,
                    };
                    println!("created cache {name}");
                    print_config(&name, &cfg, false)?;
                }
                CacheCommand::List { target, json } => {
                    let target = target.resolve_default()?;
                    let list: Vec<(String, CacheConfig)> = match target.session(false)? {
                        Session::Remote(c) => c.list_caches()?,
                        Session::Local(l) => svc(l.list_caches(&admin))?,
                    };
                    if json {
                        let v: Vec<serde_json::Value> = list
                            .iter()
                            .map(|(n, c)| {
                                let mut v = serde_json::to_value(c)?;
                                if let Some(o) = v.as_object_mut() {
                                    o.insert("name".into(), serde_json::Value::String(n.clone()));
                                }
                                Ok(v)
                            })
                            .collect::<Result<_, serde_json::Error>>()?;
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        for (n, c) in &list {
                            println!(
                                "{n}\t{}\t{}",
                                if c.is_public { "public" } else { "private" },
                                c.substituter_endpoint
                            );
                        }
                    }
                }
                CacheCommand::Info { name, target, json } => {
                    let (target, name) = target.resolve_cache(&name)?;
                    let session = target.session(false)?;
                    let cfg = match &session {
                        Session::Remote(c) => c.cache_config(&name)?,
                        Session::Local(l) => svc(l.cache_config(&admin, &name))?,
                    };
                    let usage = lifecycle::usage(&session, &name)?;
                    if json {
                        let mut v = serde_json::to_value(&cfg)?;
                        if let (Some(obj), Some(u)) = (v.as_object_mut(), &usage) {
                            obj.insert("usage".into(), serde_json::to_value(u)?);
                        }
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        print_config(&name, &cfg, false)?;
                        if let Some(u) = &usage {
                            println!();
                            lifecycle::print_usage(u);
                        }
                    }
                }
                CacheCommand::Configure {
                    name,
                    target,
                    public,
                    private,
                    priority,
                    store_dir,
                    upstream_cache_key_names,
                    upstreams,
                    no_upstreams,
                    retention_period,
                    reset_retention_period,
                    regenerate_keypair,
                    quota,
                    json,
                } => {
                    let (target, name) = target.resolve_cache(&name)?;
                    let retention_period = match retention_period.as_deref() {
                        None if reset_retention_period => Some(RetentionPeriod::Global),
                        None => None,
                        Some(s) => Some(
                            match client::parse_retention(s)
                                .with_context(|| format!("--retention-period {s:?}"))?
                            {
                                None => RetentionPeriod::Global,
                                Some(n) => RetentionPeriod::Period(n),
                            },
                        ),
                    };
                    let patch = CacheConfigPatch {
                        keypair: regenerate_keypair.then_some(KeypairSpec::Generate),
                        is_public: if public {
                            Some(true)
                        } else if private {
                            Some(false)
                        } else {
                            None
                        },
                        store_dir,
                        priority,
                        upstream_cache_key_names: (!upstream_cache_key_names.is_empty())
                            .then_some(upstream_cache_key_names),
                        retention_period,
                        upstreams: if no_upstreams {
                            Some(Vec::new())
                        } else if upstreams.is_empty() {
                            None
                        } else {
                            Some(parse_upstreams(&upstreams)?)
                        },
                    };
                    let session = target.session(false)?;
                    if let Some(q) = &quota {
                        lifecycle::set_quota(&session, &name, q)?;
                    }
                    let only_quota = quota.is_some() && patch.is_empty();
                    let cfg = match &session {
                        Session::Remote(c) if only_quota => c.cache_config(&name)?,
                        Session::Local(l) if only_quota => svc(l.cache_config(&admin, &name))?,
                        Session::Remote(c) => c.configure_cache(&name, &patch)?,
                        Session::Local(l) => svc(l.configure_cache(&admin, &name, &patch))?,
                    };
                    print_config(&name, &cfg, json)?;
                }
                CacheCommand::Destroy {
                    name,
                    target,
                    no_confirm: _,
                } => {
                    let (target, name) = target.resolve_cache(&name)?;
                    match target.session(false)? {
                        Session::Remote(c) => c.destroy_cache(&name)?,
                        Session::Local(l) => svc(l.destroy_cache(&admin, &name))?,
                    }
                    println!("destroyed cache {name}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { target, json } => {
            let stats: Stats = match target.session(true)? {
                Session::Remote(c) => c.stats()?,
                Session::Local(l) => svc(l.stats(&admin))?,
            };
            if json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                println!("chunks:                   {}", stats.chunks);
                println!("chunk bytes (stored):     {}", stats.chunk_bytes);
                println!(
                    "chunk bytes (raw):        {}",
                    stats.chunk_bytes_uncompressed
                );
                println!("NARs:                     {}", stats.nars);
                println!("store paths:              {}", stats.store_paths);
                let lc = &stats.lifecycle;
                let h = lifecycle::human_bytes;
                println!("NAR bytes (logical):      {}", h(lc.logical_nar_bytes));
                println!("stored on disk (packs):   {}", h(lc.stored_bytes));
                println!("reclaimable by GC:        {}", h(lc.reclaimable_bytes));
                println!(
                    "size budget:              {}",
                    lc.max_bytes.map(h).unwrap_or_else(|| "none".into())
                );
                match &lc.last_gc {
                    Some(g) => println!(
                        "last GC:                  {} s ago: {} paths evicted, {} reclaimed, {} packs compacted, {} ms",
                        larder::meta::now() - g.started_at,
                        g.paths_evicted,
                        h(g.bytes_reclaimed),
                        g.packs_compacted,
                        g.duration_ms
                    ),
                    None => println!("last GC:                  never"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { target, json } => {
            let report: VerifyReport = match target.session(true)? {
                Session::Remote(c) => c.verify()?,
                Session::Local(l) => svc(l.verify(&admin))?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for d in &report.damaged {
                    println!(
                        "damaged: {} (cache {}): {}",
                        d.store_path, d.cache, d.reason
                    );
                }
                println!(
                    "checked {} NARs: {} damaged",
                    report.nars_checked, report.nars_damaged
                );
            }
            Ok(if report.nars_damaged == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Args::command().debug_assert();
    }
}
