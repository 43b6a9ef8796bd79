//! Built-in HTTPS: rustls listeners, the certificate they serve, and where that
//! certificate comes from: operator files (reloaded on change or SIGHUP) or ACME
//! (RFC 8555, obtained and renewed by larder; see `docs/design/tls.md`).
//!
//! - `config.rs`: the `[tls]` and `[tls.acme]` tables, validated.
//! - `certs.rs`: PEM to a servable key, certificate summaries, the renewal rule.
//! - `resolver.rs`: the swappable served certificate and the TLS-ALPN-01 answers.
//! - `listener.rs`: the accept loop (TCP_NODELAY, handshakes off the accept path).
//! - `reload.rs`: static mode's file watcher.
//! - `acme.rs`: the ACME client loop; `challenge.rs`: HTTP-01 tokens and
//!   TLS-ALPN-01 certificates; `store.rs`: `<data-dir>/acme/`, 0600 files.
//!
//! This module knows nothing of HTTP routing or the cache: it hands established
//! TLS streams to `http` (which serves the same router on them) and HTTP-01 tokens
//! to the plain listener's edge. Only `http` imports axum.

mod acme;
pub mod certs;
mod challenge;
pub mod config;
mod listener;
mod reload;
mod resolver;
pub mod store;

pub use acme::AcmeError;
pub use certs::{CertInfo, LoadedCert};
pub use challenge::{Http01Tokens, HTTP01_PREFIX};
pub use config::{AcmeSettings, CertSource, ChallengeKind, Cidr, TlsSettings};
pub use listener::TlsIncoming;
pub use resolver::CertResolver;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use store::AcmeStore;

/// Errors of the TLS layer: files, certificates, keys, listeners, ACME state.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A certificate file or the CA's answer is not a usable certificate chain.
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    /// A private key is unreadable, unsupported, or not the certificate's.
    #[error("bad private key: {0}")]
    BadKey(String),
    /// The `acme/` state directory holds something unreadable.
    #[error("ACME state: {0}")]
    Store(String),
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A failure of larder's own making (key generation and the like).
    #[error("{0}")]
    Internal(String),
}

/// The HTTPS side of a running server, between binding and serving.
pub struct Tls {
    settings: TlsSettings,
    data_dir: PathBuf,
    listeners: Vec<TcpListener>,
    resolver: Arc<CertResolver>,
    tokens: Arc<Http01Tokens>,
    /// Static mode: the stamps of the files loaded at bind time.
    loaded_stamps: (Option<reload::Stamp>, Option<reload::Stamp>),
    /// ACME mode: the directory of the certificate loaded from the store.
    served_from: Option<String>,
}

impl Tls {
    /// Bind the HTTPS listeners and load what can be served at once: the files in
    /// static mode (an error if they are unusable), the stored certificate in ACME
    /// mode (none yet is fine: it is ordered once serving starts).
    pub async fn bind(settings: &TlsSettings, data_dir: &Path) -> Result<Tls, TlsError> {
        let resolver = Arc::new(CertResolver::default());
        let mut loaded_stamps = (None, None);
        let mut served_from = None;
        match &settings.source {
            CertSource::Files { cert, key } => {
                let stamps = (reload::stamp(cert), reload::stamp(key));
                let loaded = certs::load_files(cert, key)?;
                tracing::info!(
                    cert = %cert.display(),
                    names = ?loaded.info.names,
                    not_after = %certs::format_unix(loaded.info.not_after),
                    "TLS certificate loaded"
                );
                resolver.install(loaded);
                loaded_stamps = stamps;
            }
            CertSource::Acme(acme) => {
                let store = AcmeStore::new(data_dir);
                store.ensure_dir()?;
                if let Some(stored) = store.load_certificate()? {
                    match certs::from_pem(stored.chain_pem.as_bytes(), stored.key_pem.as_bytes()) {
                        Ok(loaded) => {
                            let fits = stored.directory == acme.directory
                                && loaded.info.covers_exactly(&acme.domains);
                            tracing::info!(
                                names = ?loaded.info.names,
                                not_after = %certs::format_unix(loaded.info.not_after),
                                renew_at = %certs::format_unix(loaded.info.renew_at()),
                                matches_config = fits,
                                "ACME: serving the stored certificate"
                            );
                            resolver.install(loaded);
                            served_from = Some(stored.directory);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ACME: the stored certificate is unusable; ordering a new one")
                        }
                    }
                }
            }
        }
        let mut listeners = Vec::new();
        for addr in &settings.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| TlsError::Bind {
                    addr: *addr,
                    source,
                })?;
            listeners.push(l);
        }
        Ok(Tls {
            settings: settings.clone(),
            data_dir: data_dir.to_owned(),
            listeners,
            resolver,
            tokens: Arc::new(Http01Tokens::default()),
            loaded_stamps,
            served_from,
        })
    }

    /// The addresses the HTTPS listeners are bound to.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The base URL clients use when no `public_url` is set (see
    /// [`TlsSettings::default_base_url`]), with the port actually bound.
    pub fn base_url(&self) -> String {
        let port = self.local_addrs().first().map(|a| a.port());
        self.settings.default_base_url(port)
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The HTTP-01 answers the plain listener must serve.
    pub fn http01(&self) -> Arc<Http01Tokens> {
        self.tokens.clone()
    }

    /// The served certificate, for tests and status.
    pub fn resolver(&self) -> Arc<CertResolver> {
        self.resolver.clone()
    }

    /// Start serving TLS: the accept loops, the certificate's keeper (file watcher
    /// or ACME loop), and SIGHUP. Must run inside the tokio runtime.
    pub fn start(self) -> Result<Vec<TlsIncoming>, TlsError> {
        let config = self.resolver.server_config()?;
        let wake = Arc::new(Notify::new());
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).map_err(|source| TlsError::Io {
                path: "SIGHUP handler".into(),
                source,
            })?;
            let wake = wake.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP received");
                    wake.notify_one();
                }
            });
        }
        match &self.settings.source {
            CertSource::Files { cert, key } => {
                let watcher = reload::FileWatcher {
                    cert: cert.clone(),
                    key: key.clone(),
                    resolver: self.resolver.clone(),
                    wake,
                    loaded: self.loaded_stamps.clone(),
                };
                tokio::spawn(watcher.run());
            }
            CertSource::Acme(acme) => {
                let manager = acme::AcmeManager::new(
                    acme.clone(),
                    AcmeStore::new(&self.data_dir),
                    self.resolver.clone(),
                    self.tokens.clone(),
                    wake,
                    self.served_from.clone(),
                );
                tokio::spawn(manager.run());
            }
        }
        let mut incoming = Vec::new();
        for l in self.listeners {
            let addr = l.local_addr().ok();
            incoming.push(listener::accept_loop(l, config.clone()).map_err(|source| {
                TlsError::Io {
                    path: format!("HTTPS listener {addr:?}"),
                    source,
                }
            })?);
        }
        Ok(incoming)
    }
}

/// The TLS client configuration larder's own CLI uses to reach an HTTPS server:
/// rustls with ring, trusting the system's roots. `SSL_CERT_FILE` (or
/// `SSL_CERT_DIR`) points it at a private CA instead, as for most TLS clients.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        // ring supports the default versions; this arm only satisfies the types.
        Err(_) => rustls::ClientConfig::builder_with_protocol_versions(rustls::DEFAULT_VERSIONS),
    };
    Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
}

/// One name in `larder tls status`.
#[derive(Debug, Clone, Serialize)]
pub struct NameStatus {
    pub name: String,
    /// Whether the served certificate covers this name.
    pub covered: bool,
    pub issuer: Option<String>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    /// When renewal is next due or retried (Unix seconds); `None` in static mode.
    pub next_renewal: Option<i64>,
}

/// What `larder tls status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct TlsStatus {
    /// `acme`, `files`, or `off` (no `[tls]` in the config).
    pub mode: &'static str,
    pub directory: Option<String>,
    pub names: Vec<NameStatus>,
    pub certificate: Option<CertInfo>,
    pub orders_placed: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
}

/// Read the TLS state of a data dir (and the configured files) without a server.
/// With no `[tls]` configured, whatever `<data-dir>/acme/` holds is reported.
pub fn status(settings: Option<&TlsSettings>, data_dir: &Path) -> Result<TlsStatus, TlsError> {
    if let Some(CertSource::Files { cert, key }) = settings.map(|s| &s.source) {
        let loaded = certs::load_files(cert, key)?;
        let info = loaded.info;
        return Ok(TlsStatus {
            mode: "files",
            directory: None,
            names: info
                .names
                .iter()
                .map(|n| NameStatus {
                    name: n.clone(),
                    covered: true,
                    issuer: Some(info.issuer.clone()),
                    not_after: Some(info.not_after),
                    next_renewal: None,
                })
                .collect(),
            certificate: Some(info),
            orders_placed: None,
            last_error: None,
            last_error_at: None,
        });
    }
    let acme = settings.and_then(TlsSettings::acme);
    let store = AcmeStore::new(data_dir);
    let stored = store.load_certificate()?;
    let state = store.load_state()?;
    let info = match &stored {
        Some(s) => Some(certs::from_pem(s.chain_pem.as_bytes(), s.key_pem.as_bytes())?.info),
        None => None,
    };
    let names: Vec<String> = match (acme, &info) {
        (Some(a), _) => a.domains.clone(),
        (None, Some(i)) => i.names.clone(),
        (None, None) => Vec::new(),
    };
    let fits = match (acme, &stored, &info) {
        (Some(a), Some(s), Some(i)) => s.directory == a.directory && i.covers_exactly(&a.domains),
        (None, Some(_), Some(_)) => true,
        _ => false,
    };
    let planned = info.as_ref().filter(|_| fits).map(CertInfo::renew_at);
    let next = match (state.next_attempt_at, planned) {
        (Some(retry), _) if state.last_error.is_some() => Some(retry),
        (_, Some(p)) => Some(p),
        _ => None,
    };
    Ok(TlsStatus {
        mode: if settings.is_some() || stored.is_some() {
            "acme"
        } else {
            "off"
        },
        directory: acme
            .map(|a| a.directory.clone())
            .or_else(|| stored.as_ref().map(|s| s.directory.clone())),
        names: names
            .iter()
            .map(|n| {
                let covered = info.as_ref().is_some_and(|i| i.names.contains(n));
                NameStatus {
                    name: n.clone(),
                    covered,
                    issuer: info.as_ref().filter(|_| covered).map(|i| i.issuer.clone()),
                    not_after: info.as_ref().filter(|_| covered).map(|i| i.not_after),
                    next_renewal: next,
                }
            })
            .collect(),
        certificate: info,
        orders_placed: Some(state.orders_placed),
        last_error: state.last_error,
        last_error_at: state.last_error_at,
    })
}
