//! The client's side of the Attic API (`/_api/v1/…`), over blocking HTTP (ureq):
//! cache-config, get-missing-paths and upload-path. The wire types are the
//! server's own (`larder::service`), so the two cannot drift apart.
//!
//! A refusal keeps its status code ([`ApiFailure::Status`]) so callers can tell
//! "no pull permission" (403) from "no such cache" (404) or "bad token" (401).

use std::io::Read;
use std::time::Duration;

use larder::service::{CacheConfig, UploadPathNarInfo, UploadPathResult};
use serde::de::DeserializeOwned;

/// Metadata JSON at least this long goes in a body preamble instead of the
/// `X-Attic-Nar-Info` header (what the `attic` client does).
pub const PREAMBLE_THRESHOLD_BYTES: usize = 4 * 1024;
/// How many store path hashes one get-missing-paths request carries.
pub const MISSING_PATHS_BATCH: usize = 2000;
/// Connecting may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A server that says nothing for this long (not even while committing a large
/// upload) is considered gone.
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// The server answered with a non-2xx status; `message` is the `message` of
    /// its `{"code","error","message"}` body (or the raw body).
    #[error("server answered {code}: {message}")]
    Status { code: u16, message: String },
    /// The server could not be reached, or the connection broke.
    #[error("could not reach {url}: {why}")]
    Transport { url: String, why: String },
    /// A 2xx answer that is not what the API promises.
    #[error("unexpected answer from {url}: {why}")]
    Protocol { url: String, why: String },
}

impl ApiFailure {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiFailure::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A client for one server.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent: ureq::AgentBuilder::new()
                .tls_config(larder::tls::client_config())
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(READ_TIMEOUT)
                .user_agent(concat!("larder/", env!("CARGO_PKG_VERSION")))
                .build(),
        }
    }

    /// The same credentials against another base URL (a cache's `api_endpoint`).
    pub fn with_base(&self, base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: self.token.clone(),
            agent: self.agent.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &self.url(path));
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    fn answer<T: DeserializeOwned>(
        &self,
        path: &str,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<T, ApiFailure> {
        let url = self.url(path);
        match result {
            Ok(resp) => {
                let text = resp.into_string().map_err(|e| ApiFailure::Transport {
                    url: url.clone(),
                    why: e.to_string(),
                })?;
                serde_json::from_str(&text).map_err(|e| ApiFailure::Protocol {
                    url,
                    why: format!("{e}: {text}"),
                })
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                    .unwrap_or(text);
                Err(ApiFailure::Status { code, message })
            }
            Err(e) => Err(ApiFailure::Transport {
                url,
                why: e.to_string(),
            }),
        }
    }

    /// `GET /_api/v1/cache-config/{cache}` (needs pull, or a public cache).
    pub fn cache_config(&self, cache: &str) -> Result<CacheConfig, ApiFailure> {
        let path = format!("/_api/v1/cache-config/{cache}");
        self.answer(&path, self.request("GET", &path).call())
    }

    /// `POST /_api/v1/get-missing-paths`: which of these hashes the cache lacks.
    pub fn missing_paths(&self, cache: &str, hashes: &[String]) -> Result<Vec<String>, ApiFailure> {
        #[derive(serde::Deserialize)]
        struct Answer {
            missing_paths: Vec<String>,
        }
        let path = "/_api/v1/get-missing-paths";
        let mut missing = Vec::new();
        for batch in hashes.chunks(MISSING_PATHS_BATCH) {
            let body = serde_json::json!({ "cache": cache, "store_path_hashes": batch });
            let a: Answer = self.answer(path, self.request("POST", path).send_json(body))?;
            missing.extend(a.missing_paths);
        }
        Ok(missing)
    }

    /// `PUT /_api/v1/upload-path`: stream `nar` (already zstd-compressed when
    /// `zstd`) with its metadata, in the header when short, else as a preamble.
    /// The body is sent chunked, without Content-Length.
    pub fn upload_path(
        &self,
        info: &UploadPathNarInfo,
        nar: impl Read,
        zstd: bool,
    ) -> Result<UploadPathResult, ApiFailure> {
        let path = "/_api/v1/upload-path";
        let json = serde_json::to_string(info).map_err(|e| ApiFailure::Protocol {
            url: self.url(path),
            why: format!("cannot encode upload metadata: {e}"),
        })?;
        let mut req = self
            .request("PUT", path)
            .set("Content-Type", "application/x-nix-nar");
        if zstd {
            req = req.set("Content-Encoding", "zstd");
        }
        let result = if json.len() < PREAMBLE_THRESHOLD_BYTES && json.is_ascii() {
            req.set("X-Attic-Nar-Info", &json).send(nar)
        } else {
            req.set("X-Attic-Nar-Info-Preamble-Size", &json.len().to_string())
                .send(std::io::Cursor::new(json.into_bytes()).chain(nar))
        };
        self.answer(path, result)
    }
}
