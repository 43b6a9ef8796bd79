//! `larder gc`, `larder pin …` and `larder path delete …`: the storage lifecycle
//! (`docs/design/gc.md`), over `--server` or on a data dir like every other
//! management command.

use std::path::Path;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand};

use larder::auth::Caller;
use larder::http::lifecycle::PathsResponse;
use larder::meta::PinRow;
use larder::service::gc::{CacheUsage, GcOptions, GcReport};

use super::{svc, Session, Target};

#[derive(ClapArgs, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    target: Target,
    /// Plan and count only: evict, sweep and compact nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PinCommand {
    /// Pin store paths: never evicted by retention, quotas or the size budget.
    Add {
        cache: String,
        /// Store paths, their basenames, or links to them (`./result`).
        #[arg(required = true)]
        paths: Vec<String>,
        /// Pin every path of their closures stored in the cache too.
        #[arg(long)]
        closure: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List a cache's pins.
    List {
        cache: String,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Unpin store paths.
    Remove {
        cache: String,
        #[arg(required = true)]
        paths: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
pub enum PathCommand {
    /// Delete store paths from a cache now; the next GC pass reclaims their bytes.
    Delete {
        cache: String,
        #[arg(required = true)]
        paths: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
}

/// A store path as given: a link such as `./result` is followed to the store.
fn store_path_arg(p: &str) -> String {
    let path = Path::new(p);
    if !p.starts_with("/nix/store/") && path.exists() {
        if let Ok(real) = std::fs::canonicalize(path) {
            return real.display().to_string();
        }
    }
    p.to_owned()
}

fn paths_body(paths: &[String], closure: bool) -> serde_json::Value {
    serde_json::json!({
        "paths": paths.iter().map(|p| store_path_arg(p)).collect::<Vec<_>>(),
        "closure": closure,
    })
}

/// Bytes for people: 1.5 GiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn gc(a: GcArgs) -> anyhow::Result<ExitCode> {
    let opts = GcOptions { dry_run: a.dry_run };
    let report: GcReport = match a.target.session(true)? {
        Session::Remote(c) => c.call("POST", "/_api/v1/gc", Some(serde_json::to_value(opts)?))?,
        Session::Local(l) => svc(l.gc(&Caller::Admin, opts))?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if report.dry_run {
        "would evict"
    } else {
        "evicted"
    };
    println!(
        "{verb} {} paths ({} for retention, {} over a quota, {} over the size budget)",
        report.paths_evicted,
        report.evicted_for_retention,
        report.evicted_for_quota,
        report.evicted_for_budget
    );
    for e in report.evictions.iter().take(20) {
        println!("  {} {} ({:?})", e.cache, e.store_path, e.reason);
    }
    if report.evictions.len() > 20 {
        println!(
            "  … and {} more (--json lists them)",
            report.evictions.len() - 20
        );
    }
    let verb = if report.dry_run {
        "would reclaim"
    } else {
        "reclaimed"
    };
    println!(
        "{verb} {} chunks ({}); {} packs {}",
        report.chunks_reclaimed,
        human_bytes(report.bytes_reclaimed),
        report.packs_compacted,
        if report.dry_run {
            "to compact"
        } else {
            "compacted"
        }
    );
    if report.packs_punched > 0 {
        println!(
            "{} packs {} in place (the disk had no room to rewrite them)",
            report.packs_punched,
            if report.dry_run {
                "to punch"
            } else {
                "punched"
            }
        );
    }
    println!(
        "stored on disk: {} before, {} after; live: {}{}",
        human_bytes(report.stored_bytes_before),
        human_bytes(report.stored_bytes_after),
        human_bytes(report.live_bytes),
        report
            .max_bytes
            .map(|m| format!("; budget {}", human_bytes(m)))
            .unwrap_or_default()
    );
    println!("took {} ms", report.duration_ms);
    Ok(ExitCode::SUCCESS)
}

pub fn pin(cmd: PinCommand) -> anyhow::Result<ExitCode> {
    let admin = Caller::Admin;
    match cmd {
        PinCommand::Add {
            cache,
            paths,
            closure,
            target,
        } => {
            let (target, cache) = target.resolve_cache(&cache)?;
            let pinned: Vec<String> = match target.session(false)? {
                Session::Remote(c) => {
                    let r: PathsResponse = c.call(
                        "POST",
                        &format!("/_api/v1/cache/{cache}/pins"),
                        Some(paths_body(&paths, closure)),
                    )?;
                    r.paths
                }
                Session::Local(l) => {
                    let ps: Vec<String> = paths.iter().map(|p| store_path_arg(p)).collect();
                    svc(l.pin(&admin, &cache, &ps, closure))?
                }
            };
            println!("pinned {} paths in {cache}", pinned.len());
            for p in pinned {
                println!("  {p}");
            }
        }
        PinCommand::List {
            cache,
            target,
            json,
        } => {
            let (target, cache) = target.resolve_cache(&cache)?;
            let pins: Vec<PinRow> = match target.session(false)? {
                Session::Remote(c) => {
                    c.call("GET", &format!("/_api/v1/cache/{cache}/pins"), None)?
                }
                Session::Local(l) => svc(l.pins(&admin, &cache))?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&pins)?);
            } else if pins.is_empty() {
                println!("no pins in {cache}");
            } else {
                for p in pins {
                    println!("{}", p.store_path);
                }
            }
        }
        PinCommand::Remove {
            cache,
            paths,
            target,
        } => {
            let (target, cache) = target.resolve_cache(&cache)?;
            let n = match target.session(false)? {
                Session::Remote(c) => {
                    let r: PathsResponse = c.call(
                        "POST",
                        &format!("/_api/v1/cache/{cache}/pins/remove"),
                        Some(paths_body(&paths, false)),
                    )?;
                    r.count
                }
                Session::Local(l) => {
                    let ps: Vec<String> = paths.iter().map(|p| store_path_arg(p)).collect();
                    svc(l.unpin(&admin, &cache, &ps))?
                }
            };
            println!("unpinned {n} paths in {cache}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn path(cmd: PathCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PathCommand::Delete {
            cache,
            paths,
            target,
        } => {
            let (target, cache) = target.resolve_cache(&cache)?;
            let deleted: Vec<String> = match target.session(false)? {
                Session::Remote(c) => {
                    let r: PathsResponse = c.call(
                        "POST",
                        &format!("/_api/v1/cache/{cache}/delete-paths"),
                        Some(paths_body(&paths, false)),
                    )?;
                    r.paths
                }
                Session::Local(l) => {
                    let ps: Vec<String> = paths.iter().map(|p| store_path_arg(p)).collect();
                    svc(l.delete_paths(&Caller::Admin, &cache, &ps))?
                }
            };
            println!(
                "deleted {} paths from {cache}; the next `larder gc` reclaims their bytes",
                deleted.len()
            );
            for p in deleted {
                println!("  {p}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A cache's usage, for `cache info` (`None` when the server does not say).
pub fn usage(session: &Session, cache: &str) -> anyhow::Result<Option<CacheUsage>> {
    Ok(match session {
        Session::Remote(c) => c
            .call("GET", &format!("/_api/v1/cache/{cache}/usage"), None)
            .ok(),
        Session::Local(l) => Some(svc(l.cache_usage(&Caller::Admin, cache))?),
    })
}

/// Set or clear a cache's quota.
pub fn set_quota(session: &Session, cache: &str, quota: &str) -> anyhow::Result<()> {
    let bytes = match quota.trim() {
        "none" | "off" | "" => None,
        q => Some(
            larder::service::gc::settings::parse_bytes("--quota", q)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
    };
    match session {
        Session::Remote(c) => {
            let _: CacheUsage = c.call(
                "PUT",
                &format!("/_api/v1/cache/{cache}/quota"),
                Some(serde_json::json!({ "quota_bytes": bytes })),
            )?;
        }
        Session::Local(l) => svc(l.set_quota(&Caller::Admin, cache, bytes))?,
    }
    Ok(())
}

/// Print a cache's usage under its settings.
pub fn print_usage(u: &CacheUsage) {
    println!("               Paths: {}", u.paths);
    println!(
        "        Stored Bytes: {} (NARs: {})",
        human_bytes(u.stored_bytes),
        human_bytes(u.logical_bytes)
    );
    println!(
        "               Quota: {}",
        u.quota_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "none".into())
    );
    println!("                Pins: {}", u.pins);
}

/// How often fetches noted for access times are written.
const ACCESS_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The server's lifecycle tasks: access times written every 30 s, and a GC pass
/// every `[gc] interval` or at once when a push leaves the store over a budget.
pub fn spawn_background(larder: std::sync::Arc<larder::service::Larder>) {
    let flusher = larder.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ACCESS_FLUSH_EVERY);
        loop {
            tick.tick().await;
            let l = flusher.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || l.flush_access()).await {
                tracing::warn!(error = %e, "writing access times failed");
            }
        }
    });
    tokio::spawn(async move {
        let interval = larder.config.gc.interval;
        loop {
            let wait = async {
                match interval {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = larder.gc_woken() => {}
            }
            if let Err(e) = larder
                .gc_in_background(Caller::Admin, GcOptions::default())
                .await
            {
                tracing::error!(error = %e, "GC pass failed");
            }
        }
    });
}

/// Record where this server answers, so the CLI on its data dir can act
/// through it (`server.url`, 0600).
pub fn write_server_url(data_dir: &Path, addr: std::net::SocketAddr) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    let tmp = data_dir.join("server.url.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "http://{host}:{}", addr.port())?;
    std::fs::rename(&tmp, data_dir.join("server.url"))
}
