//! `larder serve`: bootstrap the data dir and run the server.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use larder::auth::generate_token;
use larder::config::{Config, FileConfig};
use larder::service::Larder;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer, Registry};

use super::access_lines;

/// How often staged NARs without a narinfo are looked for.
const STAGED_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often the revoked-token set is reloaded: revocation takes effect within 1 s.
const REVOCATION_REFRESH_EVERY: Duration = Duration::from_millis(250);

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "LARDER_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: $XDG_DATA_HOME/larder, else ~/.local/share/larder].
    #[arg(long, env = "LARDER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Listen address, IP:PORT or HOST:PORT [default: 127.0.0.1:8080].
    #[arg(long, env = "LARDER_LISTEN")]
    listen: Option<String>,
    /// The S3 API's listen address; the S3 API is off without it (or `s3_listen`).
    #[arg(long, env = "LARDER_S3_LISTEN")]
    s3_listen: Option<String>,
    /// A listener that serves only `/metrics`, without a token (for a scraper on a
    /// private network); off without it (or `metrics_listen`).
    #[arg(long, env = "LARDER_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Log lines as `text` [default] or `json` (one object per line).
    #[arg(long, env = "LARDER_LOG_FORMAT", value_name = "text|json")]
    log_format: Option<larder::config::LogFormat>,
}

/// Start logging to stderr in `format`. `LARDER_LOG` filters (`info` when unset).
/// Under systemd's journal (`JOURNAL_STREAM` set) text lines carry no timestamp
/// and no colour: the journal adds its own.
///
/// Lines go through a buffer written out by a thread of its own
/// (`log_writer`), so a request never waits on a write to the journal or a
/// file. Keep the guard until the end: dropping it writes what is left.
fn init_logging(format: larder::config::LogFormat) -> super::log_writer::FlushGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LARDER_LOG")
        // s3s logs every refused S3 request at ERROR; larder logs its own
        // failures (`LARDER_LOG=info,s3s=debug` shows the protocol detail).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,s3s=off"));
    let (writer, guard) = super::log_writer::buffered_stderr();
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let not_access =
        tracing_subscriber::filter::filter_fn(|m| m.target() != access_lines::ACCESS_TARGET);
    let (lines, style): (Box<dyn Layer<Registry> + Send + Sync>, _) = match format {
        larder::config::LogFormat::Json => (
            tracing_subscriber::fmt::layer()
                .with_writer(writer.clone())
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_filter(not_access)
                .boxed(),
            access_lines::Style::Json,
        ),
        larder::config::LogFormat::Text if journal => (
            tracing_subscriber::fmt::layer()
                .with_writer(writer.clone())
                .without_time()
                .with_ansi(false)
                .with_filter(not_access)
                .boxed(),
            access_lines::Style::Text {
                time: false,
                ansi: false,
            },
        ),
        larder::config::LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            (
                tracing_subscriber::fmt::layer()
                    .with_writer(writer.clone())
                    .with_ansi(ansi)
                    .with_filter(not_access)
                    .boxed(),
                access_lines::Style::Text { time: true, ansi },
            )
        }
    };
    tracing_subscriber::registry()
        .with(lines)
        .with(access_lines::AccessLines::new(writer, style))
        .with(filter)
        .init();
    guard
}

/// Raise the soft limit on open files to the hard limit: every connection is a
/// file, and the soft limit systemd and most shells give (1024) is reached by a
/// thousand idle keep-alive clients. The hard limit is left as it is (systemd's
/// default is 524288; `LimitNOFILE=` sets it). Failing to raise it is logged.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed,
    // which lives for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let wanted = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            tracing::warn!(
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                "could not raise the open-files limit; connections beyond it are refused"
            );
        }
    }
}

/// Read the admin token, creating it (0600) on first start. Returns the token
/// and whether it was just created.
fn admin_token(dir: &Path) -> anyhow::Result<(String, bool)> {
    let path = dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_owned(), false)),
        Ok(_) => anyhow::bail!(
            "{} is empty; delete it to mint a new admin token",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = generate_token();
    let tmp = dir.join("admin.token.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok((token, true))
}

/// Create the data dir (0700), with errors that name the path and say what is
/// wrong: a file in the way, or a parent that cannot hold a directory.
fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    if let Ok(meta) = std::fs::metadata(dir) {
        if !meta.is_dir() {
            anyhow::bail!(
                "data dir {} is not a directory (a file is in the way); pass --data-dir DIR",
                dir.display()
            );
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "the data dir {} cannot be created; pass --data-dir DIR with a writable parent",
                dir.display()
            )
        })
}

pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let file = match &a.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let config = Config::resolve(file, a.data_dir, a.listen)?
        .with_s3_listen(a.s3_listen)?
        .with_metrics_listen(a.metrics_listen)?
        .with_log_format(a.log_format);
    let _log_writer = init_logging(config.log.format);
    raise_open_files_limit();
    create_data_dir(&config.data_dir)?;
    let _ = std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700));
    let declared_token = larder::bootstrap::admin_token(&config)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let s3_listener = match config.s3.listen {
            Some(at) => Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("listening for S3 on {at}"))?,
            ),
            None => None,
        };
        let metrics_listener = match config.metrics_listen {
            Some(at) => Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("listening for /metrics on {at}"))?,
            ),
            None => None,
        };
        let tls = match &config.tls {
            Some(t) => Some(larder::tls::Tls::bind(t, &config.data_dir).await?),
            None => None,
        };
        let base = config.public_url.clone().unwrap_or_else(|| match &tls {
            Some(t) => t.base_url(),
            None => format!("http://{addr}"),
        });
        let data_dir = config.data_dir.clone();
        // Minted only once the listeners are bound, so a start that fails (a busy
        // port) leaves no token behind that nobody was shown.
        let (token, fresh) = match declared_token {
            Some(t) => (t, None),
            None => {
                let (t, fresh) = admin_token(&data_dir)?;
                (t, Some(fresh))
            }
        };
        let larder = Arc::new(
            Larder::open(config, base, Some(token.clone()))
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", data_dir.display()))?,
        );
        // The declared caches, tokens and S3 keys, made so before any request.
        let declared = larder.config.declared.clone();
        let boot = larder.clone();
        let report =
            tokio::task::spawn_blocking(move || larder::bootstrap::apply(&boot, &declared))
                .await
                .context("bootstrap")?
                .context("bootstrapping the declared state")?;
        {
            let mut out = std::io::stdout().lock();
            for line in &report.changes {
                writeln!(out, "bootstrap: {line}")?;
            }
            let token_file = data_dir.join("admin.token");
            match fresh {
                Some(true) => {
                    writeln!(out, "admin token: {token}")?;
                    writeln!(
                        out,
                        "(saved to {}; later starts print only where it is)",
                        token_file.display()
                    )?;
                }
                Some(false) => writeln!(
                    out,
                    "the admin token is in {} (`cat` it; mint scoped tokens with `larder token create`)",
                    token_file.display()
                )?,
                None => {}
            }
            if let Some(l) = &s3_listener {
                writeln!(out, "larder S3 listening on http://{}", l.local_addr()?)?;
            }
            if let Some(l) = &metrics_listener {
                writeln!(
                    out,
                    "larder metrics listening on http://{}/metrics",
                    l.local_addr()?
                )?;
            }
            writeln!(out, "larder listening on http://{addr}")?;
            for a in tls.iter().flat_map(|t| t.local_addrs()) {
                writeln!(out, "larder tls listening on https://{a}")?;
            }
            out.flush()?;
        }
        tracing::info!(%addr, data_dir = %data_dir.display(), "larder started");
        if let Err(e) = super::lifecycle::write_server_url(&data_dir, addr) {
            tracing::warn!(error = %e, "writing server.url failed");
        }
        super::lifecycle::spawn_background(larder.clone());

        if let Some(t) = &tls {
            larder.metrics.watch_tls(t.resolver());
        }
        if let Some(l) = metrics_listener {
            let m = larder.clone();
            tokio::spawn(async move {
                if let Err(e) = larder::http::metrics::serve_open(l, m, std::future::pending()).await
                {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            });
        }
        if let Some(l) = s3_listener {
            let s3 = larder.clone();
            tokio::spawn(async move {
                if let Err(e) = larder::s3::serve(l, s3, std::future::pending()).await {
                    tracing::error!(error = %e, "the S3 listener failed");
                }
            });
        }
        let revocations = larder.clone();
        tokio::spawn(async move {
            // Revocations and cache changes written by another process (the CLI)
            // take effect here within this period.
            let mut tick = tokio::time::interval(REVOCATION_REFRESH_EVERY);
            loop {
                tick.tick().await;
                let l = revocations.clone();
                let polled = tokio::task::spawn_blocking(move || {
                    (l.refresh_revoked(), l.meta.poll_external_changes())
                })
                .await;
                if let Ok((revoked, changes)) = polled {
                    if let Err(e) = revoked {
                        tracing::warn!(error = %e, "refreshing revoked tokens failed");
                    }
                    if let Err(e) = changes {
                        tracing::warn!(error = %e, "checking for metadata changes failed");
                    }
                }
            }
        });
        let sweeper = larder.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STAGED_SWEEP_EVERY);
            loop {
                tick.tick().await;
                let l = sweeper.clone();
                let l2 = l.clone();
                match tokio::task::spawn_blocking(move || l.expire_staged()).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(n, "expired staged NARs"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "expiring staged NARs failed"),
                    _ => {}
                }
                match tokio::task::spawn_blocking(move || l2.expire_proxied()).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(n, "forgot unfetched upstream paths"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "expiring upstream paths failed"),
                    _ => {}
                }
            }
        });

        let last = larder.clone();
        match tls {
            Some(tls) => larder::http::serve_tls(listener, tls, larder, shutdown_signal()).await?,
            None => larder::http::serve(listener, larder, shutdown_signal()).await?,
        }
        if let Err(e) = last.flush_access() {
            tracing::warn!(error = %e, "writing access times failed");
        }
        tracing::info!("larder stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
