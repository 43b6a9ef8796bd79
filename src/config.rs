//! Server settings: defaults, the `--config` TOML file, environment and flags.
//!
//! Precedence, highest first: command-line flag, environment variable (clap reads
//! both), config file, built-in default. The result is one validated [`Config`];
//! nothing downstream re-validates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The listener when nothing else is said: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Largest NAR accepted, uncompressed.
pub const DEFAULT_MAX_NAR_BYTES: u64 = 64 << 30;
/// Largest narinfo, listing, log or realisation body.
pub const DEFAULT_MAX_SMALL_BODY: usize = 64 << 20;
/// A staged NAR with no narinfo after this long is dropped.
pub const DEFAULT_STAGED_TTL_SECS: u64 = 3600;
/// Signatures from these keys are kept on uploaded narinfos when they verify.
pub const DEFAULT_TRUSTED_UPLOAD_KEYS: &[&str] =
    &["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="];

/// The config file, as written by an operator. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// Base URL clients reach this server at (for substituter and API endpoints).
    pub public_url: Option<String>,
    pub zstd_level: Option<i32>,
    pub max_nar_bytes: Option<u64>,
    pub max_small_body: Option<usize>,
    pub staged_ttl_secs: Option<u64>,
    /// The S3 API's own listener; the S3 API is off when unset.
    pub s3_listen: Option<String>,
    /// A listener of its own that serves only `/metrics`, without a token (for a
    /// scraper on a private network); off when unset.
    pub metrics_listen: Option<String>,
    /// The region S3 clients must sign for.
    pub s3_region: Option<String>,
    /// A Host name (e.g. `s3.example.com`) whose requests on the main listener go to
    /// the S3 API, with `bucket.<s3_host>` as virtual-hosted-style addressing.
    pub s3_host: Option<String>,
    /// Public keys (`name:base64`) whose signatures on uploads are kept.
    pub trusted_upload_keys: Option<Vec<String>>,
    /// Host names served; any other Host gets 400. Empty or absent: any Host.
    #[serde(alias = "allowed-hosts")]
    pub allowed_hosts: Option<Vec<String>>,
    /// HTTPS (`[tls]`, `[tls.acme]`): see `crate::tls::config`.
    pub tls: Option<crate::tls::config::TlsFileConfig>,
    /// The admin token, from a file or a systemd credential (`crate::bootstrap::secret`);
    /// without it the token lives in `<data_dir>/admin.token`.
    pub admin_token_file: Option<String>,
    /// Declared state made so on every start (`crate::bootstrap`).
    #[serde(default)]
    pub caches: Vec<crate::bootstrap::declared::CacheDecl>,
    #[serde(default)]
    pub tokens: Vec<crate::bootstrap::declared::TokenDecl>,
    #[serde(default)]
    pub s3_keys: Vec<crate::bootstrap::declared::S3KeyDecl>,
    #[serde(default)]
    pub s3_buckets: Vec<crate::bootstrap::declared::S3BucketDecl>,
    /// The storage lifecycle (`[gc]`): see `crate::service::gc::settings`.
    pub gc: Option<crate::service::gc::GcFileConfig>,
    /// Logging (`[log]`): the format and the access log.
    pub log: Option<LogFileConfig>,
    /// Per-request metrics and `/metrics`; on unless `false`.
    pub metrics: Option<bool>,
    /// The pull-through cache (`[upstreams]`): see `crate::service::upstream`.
    pub upstreams: Option<crate::service::UpstreamFileConfig>,
}

/// The S3 region when the config names none.
pub const DEFAULT_S3_REGION: &str = "larder";

/// The S3 API's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The S3 listener; `None`: no listener of its own.
    pub listen: Option<SocketAddr>,
    pub region: String,
    /// Lowercase, without a port.
    pub host: Option<String>,
}

impl S3Config {
    /// Whether any S3 endpoint is served.
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || self.host.is_some()
    }

    /// Validate the file's S3 keys, with `listen_flag` (the `--s3-listen` flag or
    /// `LARDER_S3_LISTEN`) over the file's `s3_listen`.
    pub fn resolve(file: &FileConfig, listen_flag: Option<String>) -> Result<Self, ConfigError> {
        let listen = listen_flag
            .or_else(|| file.s3_listen.clone())
            .filter(|s| !s.trim().is_empty())
            .map(|s| listen_addr(&s, "s3_listen address"))
            .transpose()?;
        let region = file
            .s3_region
            .clone()
            .unwrap_or_else(|| DEFAULT_S3_REGION.to_owned());
        let region_ok = !region.is_empty()
            && region.len() <= 64
            && region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !region_ok {
            return Err(ConfigError::Invalid(format!(
                "s3_region {region:?}: use 1-64 of A-Z a-z 0-9 - _"
            )));
        }
        let host = file
            .s3_host
            .as_deref()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        if let Some(h) = &host {
            let ok = h.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "s3_host {h:?}: a DNS name without a port, e.g. s3.example.com"
                )));
            }
        }
        Ok(Self {
            listen,
            region,
            host,
        })
    }
}

/// Errors in settings: the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub public_url: Option<String>,
    pub zstd_level: i32,
    pub max_nar_bytes: u64,
    pub max_small_body: usize,
    pub staged_ttl_secs: u64,
    pub trusted_upload_keys: Vec<String>,
    /// Lowercase host names (an entry may carry a port); empty: any Host.
    pub allowed_hosts: Vec<String>,
    pub tls: Option<crate::tls::TlsSettings>,
    /// The S3 API (`s3_listen`, `s3_region`, `s3_host`).
    pub s3: S3Config,
    /// `metrics_listen`: `/metrics` without a token on a listener of its own.
    pub metrics_listen: Option<SocketAddr>,
    /// `admin_token_file`, when set.
    pub admin_token_file: Option<crate::bootstrap::SecretFile>,
    /// `[[caches]]`, `[[tokens]]`, `[[s3_keys]]`, `[[s3_buckets]]`.
    pub declared: crate::bootstrap::Declared,
    /// `[gc]`: retention default, size budget, schedule, compaction.
    pub gc: crate::service::gc::GcSettings,
    /// `[log]`: the log format and whether requests are logged.
    pub log: LogSettings,
    /// Whether requests are counted and `/metrics` is served.
    pub metrics: bool,
    /// `[upstreams]`: timeouts and limits of the pull-through cache.
    pub upstreams: crate::service::UpstreamSettings,
}

/// `[log]` as written in the config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFileConfig {
    /// `text` (the default) or `json`.
    pub format: Option<String>,
    /// One line per request (target `larder::access`); on unless `false`.
    pub access: Option<bool>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (without timestamps under systemd's journal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError::Invalid(format!(
                "log format {other:?} is not one of text, json"
            ))),
        }
    }
}

/// `[log]`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    pub access: bool,
}

impl LogSettings {
    fn resolve(file: Option<LogFileConfig>) -> Result<Self, ConfigError> {
        let file = file.unwrap_or_default();
        Ok(LogSettings {
            format: match file.format {
                Some(f) => f.parse()?,
                None => LogFormat::Text,
            },
            access: file.access.unwrap_or(true),
        })
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

/// A listen address: `IP:PORT`, or `HOST:PORT` with a host name that resolves
/// (`localhost:8081`; the first address it resolves to).
pub fn listen_addr(s: &str, what: &str) -> Result<SocketAddr, ConfigError> {
    let t = s.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad = |why: String| {
        ConfigError::Invalid(format!(
            "{what} {s:?}: {why}; expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:8080"
        ))
    };
    if t.rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(bad("no port".into()));
    }
    std::net::ToSocketAddrs::to_socket_addrs(t)
        .map_err(|e| bad(format!("cannot resolve it ({e})")))?
        .next()
        .ok_or_else(|| bad("it resolves to no address".into()))
}

/// `$XDG_DATA_HOME/larder`, falling back to `~/.local/share/larder`.
pub fn default_data_dir() -> Result<PathBuf, ConfigError> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("larder"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ConfigError::Invalid("no data dir: set --data-dir, LARDER_DATA_DIR or HOME".into())
        })?;
    Ok(PathBuf::from(home).join(".local/share/larder"))
}

impl Config {
    /// Merge flags (already merged with env by clap) over the file over defaults.
    pub fn resolve(
        file: FileConfig,
        data_dir: Option<PathBuf>,
        listen: Option<String>,
    ) -> Result<Self, ConfigError> {
        let s3 = S3Config::resolve(&file, None)?;
        let gc = crate::service::gc::GcSettings::resolve(file.gc.clone())?;
        let log = LogSettings::resolve(file.log.clone())?;
        let metrics = file.metrics.unwrap_or(true);
        let upstreams = crate::service::UpstreamSettings::resolve(file.upstreams.clone())?;
        let listen_s = listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_addr(&listen_s, "listen address")?;
        let data_dir = match data_dir.or(file.data_dir) {
            Some(d) => d,
            None => default_data_dir()?,
        };
        let zstd_level = file.zstd_level.unwrap_or(crate::store::DEFAULT_ZSTD_LEVEL);
        if !(1..=19).contains(&zstd_level) {
            return Err(ConfigError::Invalid(format!(
                "zstd_level {zstd_level} is outside 1..=19"
            )));
        }
        let trusted_upload_keys = file.trusted_upload_keys.unwrap_or_else(|| {
            DEFAULT_TRUSTED_UPLOAD_KEYS
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        for k in &trusted_upload_keys {
            crate::nix::signing::PublicKey::parse(k)
                .map_err(|e| ConfigError::Invalid(format!("trusted_upload_keys: {k:?}: {e}")))?;
        }
        let public_url = file.public_url.map(|u| u.trim_end_matches('/').to_owned());
        let tls = file
            .tls
            .map(crate::bootstrap::secret::tls_credentials)
            .map(crate::tls::TlsSettings::resolve)
            .transpose()?;
        let admin_token_file = file
            .admin_token_file
            .as_deref()
            .map(|v| crate::bootstrap::SecretFile::parse("admin_token_file", v))
            .transpose()?;
        let declared = crate::bootstrap::Declared::resolve(
            file.caches,
            file.tokens,
            file.s3_keys,
            file.s3_buckets,
            &data_dir,
        )?;
        if let Some(t) = &tls {
            if t.listen.contains(&listen) {
                return Err(ConfigError::Invalid(format!(
                    "listen {listen} is also a [tls] listen address"
                )));
            }
        }
        let metrics_listen = file
            .metrics_listen
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|s| listen_addr(s, "metrics_listen address"))
            .transpose()?;
        let allowed_hosts = file
            .allowed_hosts
            .unwrap_or_default()
            .iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Ok(Self {
            listen,
            data_dir,
            public_url,
            zstd_level,
            max_nar_bytes: file.max_nar_bytes.unwrap_or(DEFAULT_MAX_NAR_BYTES),
            max_small_body: file.max_small_body.unwrap_or(DEFAULT_MAX_SMALL_BODY),
            staged_ttl_secs: file.staged_ttl_secs.unwrap_or(DEFAULT_STAGED_TTL_SECS),
            trusted_upload_keys,
            allowed_hosts,
            tls,
            s3,
            metrics_listen,
            admin_token_file,
            declared,
            gc,
            log,
            metrics,
            upstreams,
        })
    }

    /// Apply `larder serve --log-format` (or `LARDER_LOG_FORMAT`) over the file.
    pub fn with_log_format(mut self, flag: Option<LogFormat>) -> Self {
        if let Some(f) = flag {
            self.log.format = f;
        }
        self
    }

    /// Apply `larder serve --s3-listen` (or `LARDER_S3_LISTEN`) over the file.
    pub fn with_s3_listen(mut self, flag: Option<String>) -> Result<Self, ConfigError> {
        if let Some(f) = flag.filter(|f| !f.trim().is_empty()) {
            let addr = listen_addr(&f, "--s3-listen address")?;
            if addr == self.listen && addr.port() != 0 {
                return Err(ConfigError::Invalid(format!(
                    "--s3-listen {addr} is also the main listen address"
                )));
            }
            self.s3.listen = Some(addr);
        }
        Ok(self)
    }

    /// Apply `larder serve --metrics-listen` (or `LARDER_METRICS_LISTEN`) over the
    /// file, and refuse an address another listener already has.
    pub fn with_metrics_listen(mut self, flag: Option<String>) -> Result<Self, ConfigError> {
        if let Some(f) = flag.filter(|f| !f.trim().is_empty()) {
            self.metrics_listen = Some(listen_addr(&f, "--metrics-listen address")?);
        }
        if self.metrics_listen.is_some() && !self.metrics {
            return Err(ConfigError::Invalid(
                "metrics_listen is set but metrics = false; drop one of them".into(),
            ));
        }
        if let Some(addr) = self.metrics_listen.filter(|a| a.port() != 0) {
            let taken = addr == self.listen
                || self.s3.listen == Some(addr)
                || self.tls.as_ref().is_some_and(|t| t.listen.contains(&addr));
            if taken {
                return Err(ConfigError::Invalid(format!(
                    "metrics_listen {addr} is also another listener's address"
                )));
            }
        }
        Ok(self)
    }

    /// The base URL clients use: `public_url`, else the HTTPS one when `[tls]` is
    /// set, else `http://<listen>`.
    pub fn base_url(&self) -> String {
        if let Some(u) = &self.public_url {
            return u.clone();
        }
        if let Some(t) = &self.tls {
            return t.default_base_url(None);
        }
        format!("http://{}", self.listen)
    }
}
