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
    /// Public keys (`name:base64`) whose signatures on uploads are kept.
    pub trusted_upload_keys: Option<Vec<String>>,
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
        let listen_s = listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_s
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::Invalid(format!("listen address {listen_s:?}: {e}")))?;
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
        Ok(Self {
            listen,
            data_dir,
            public_url,
            zstd_level,
            max_nar_bytes: file.max_nar_bytes.unwrap_or(DEFAULT_MAX_NAR_BYTES),
            max_small_body: file.max_small_body.unwrap_or(DEFAULT_MAX_SMALL_BODY),
            staged_ttl_secs: file.staged_ttl_secs.unwrap_or(DEFAULT_STAGED_TTL_SECS),
            trusted_upload_keys,
        })
    }

    /// The base URL clients use: `public_url`, else `http://<listen>`.
    pub fn base_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }
}
