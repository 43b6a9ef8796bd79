//! `larder check-config FILE`: validate a config file the way `larder serve` does,
//! without reading any secret, opening the data dir or touching the network.
//!
//! Meant for build-time checks (the NixOS module runs it on the generated file):
//! every key is known, every value well formed, secrets named in a form larder can
//! read. Whether the secret files exist is only known where the service runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use larder::bootstrap::SecretFile;
use larder::config::{default_data_dir, Config, FileConfig};

#[derive(Args, Debug)]
pub struct CheckConfigArgs {
    /// The TOML config file to check.
    file: PathBuf,
    /// Print nothing when the config is valid.
    #[arg(long, short)]
    quiet: bool,
}

/// Where the data dir is assumed to be when the file names none (relative token
/// files are shown under it); `larder serve` would use its user's default.
const PLACEHOLDER_DATA_DIR: &str = "/var/lib/larder";

fn secret(s: &SecretFile) -> String {
    match s {
        SecretFile::Path(p) => p.display().to_string(),
        SecretFile::Credential(n) => format!("credential {n} ($CREDENTIALS_DIRECTORY/{n})"),
    }
}

pub fn run(a: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let file = FileConfig::load(&a.file)?;
    let data_dir = file
        .data_dir
        .clone()
        .or_else(|| default_data_dir().ok())
        .unwrap_or_else(|| PathBuf::from(PLACEHOLDER_DATA_DIR));
    let config = Config::resolve(file, Some(data_dir), None)
        .and_then(|c| c.with_metrics_listen(None))
        .with_context(|| format!("{} is not a valid larder config", a.file.display()))?;
    if a.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let d = &config.declared;
    println!("{}: valid", a.file.display());
    println!("  listen:     {}", config.listen);
    println!("  data dir:   {}", config.data_dir.display());
    println!("  gc:         {}", gc_summary(&config.gc));
    if let Some(t) = &config.tls {
        let addrs: Vec<String> = t.listen.iter().map(|a| a.to_string()).collect();
        println!("  tls listen: {}", addrs.join(", "));
    }
    if config.s3.enabled() {
        println!("  s3 region:  {}", config.s3.region);
    }
    if let Some(m) = config.metrics_listen {
        println!("  metrics listen: {m} (/metrics without a token)");
    }
    if let Some(s) = &config.admin_token_file {
        println!("  admin token from {}", secret(s));
    }
    for c in &d.caches {
        match &c.signing_key {
            Some(k) => println!("  cache {} (signing key from {})", c.name, secret(k)),
            None => println!("  cache {}", c.name),
        }
        for u in c.upstreams.iter().flatten() {
            println!("    pull-through from {}", u.url);
        }
    }
    for t in &d.tokens {
        println!("  token {} -> {}", t.sub, t.file.display());
    }
    for b in &d.s3_buckets {
        println!("  s3 bucket {b}");
    }
    for k in &d.s3_keys {
        println!(
            "  s3 key {} (id from {}, secret from {})",
            k.name,
            secret(&k.access_key_id),
            secret(&k.secret_access_key)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `[gc]` in one line: schedule, budget, retention.
fn gc_summary(g: &larder::service::gc::GcSettings) -> String {
    use larder::service::gc::SizeBudget;
    let every = g
        .interval
        .map(|d| format!("every {}", humantime::format_duration(d)))
        .unwrap_or_else(|| "on demand only".into());
    let budget = match g.max_size {
        None => "no size budget".to_owned(),
        Some(SizeBudget::Bytes(b)) => format!("budget {b} bytes"),
        Some(SizeBudget::PercentOfDisk(p)) => format!("budget {:.0}% of the disk", p * 100.0),
    };
    let retention = g
        .default_retention
        .map(|d| format!("default retention {}", humantime::format_duration(d)))
        .unwrap_or_else(|| "kept until evicted".into());
    format!("{every}, {budget}, {retention}")
}
