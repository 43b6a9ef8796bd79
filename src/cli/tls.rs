//! `larder tls status`: each name larder serves over HTTPS, who issued its
//! certificate, when it expires and when renewal is next due. It reads the config
//! file and `<data-dir>/acme/` directly, so it works whether or not a server runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use larder::config::{Config, FileConfig};
use larder::tls::certs::{format_unix, unix_now};

#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// Show each name, its issuer, its expiry and when renewal is next due.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The server's config file (names its [tls] table).
    #[arg(long, env = "LARDER_CONFIG")]
    config: Option<PathBuf>,
    /// The server's data dir [default: $XDG_DATA_HOME/larder, else ~/.local/share/larder].
    #[arg(long, env = "LARDER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// `in 3d 4h`, `5m ago`.
fn relative(at: i64, now: i64) -> String {
    let d = at - now;
    let a = d.unsigned_abs();
    let text = if a >= 86_400 {
        format!("{}d {}h", a / 86_400, (a % 86_400) / 3600)
    } else if a >= 3600 {
        format!("{}h {}m", a / 3600, (a % 3600) / 60)
    } else if a >= 60 {
        format!("{}m {}s", a / 60, a % 60)
    } else {
        format!("{a}s")
    };
    if d >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

pub fn run(cmd: TlsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TlsCommand::Status(a) => {
            let file = match &a.config {
                Some(p) => FileConfig::load(p)?,
                None => FileConfig::default(),
            };
            let config = Config::resolve(file, a.data_dir, None)?;
            let st = larder::tls::status(config.tls.as_ref(), &config.data_dir)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(ExitCode::SUCCESS);
            }
            let now = unix_now();
            println!("mode: {}", st.mode);
            if let Some(d) = &st.directory {
                println!("directory: {d}");
            }
            if st.names.is_empty() {
                println!("no certificate");
            }
            for n in &st.names {
                println!("{}", n.name);
                match (&n.issuer, n.not_after) {
                    (Some(issuer), Some(exp)) => {
                        println!("  issuer:       {issuer}");
                        println!(
                            "  expires:      {} ({})",
                            format_unix(exp),
                            relative(exp, now)
                        );
                    }
                    _ => println!("  certificate:  none yet"),
                }
                match n.next_renewal {
                    Some(r) => {
                        println!("  next renewal: {} ({})", format_unix(r), relative(r, now))
                    }
                    None if st.mode == "files" => {
                        println!("  next renewal: not managed by larder (certificate files)")
                    }
                    None => println!("  next renewal: as soon as the server runs"),
                }
            }
            if let Some(c) = &st.certificate {
                println!("certificate sha256: {}", c.sha256);
            }
            if let Some(n) = st.orders_placed {
                println!("orders placed: {n}");
            }
            if let Some(e) = &st.last_error {
                let when = st.last_error_at.map(format_unix).unwrap_or_default();
                println!("last failure ({when}): {e}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::relative;

    #[test]
    fn relative_times() {
        assert_eq!(relative(100, 100), "in 0s");
        assert_eq!(relative(100 + 90_000, 100), "in 1d 1h");
        assert_eq!(relative(0, 300), "5m 0s ago");
    }
}
