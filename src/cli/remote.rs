//! The management API client used by remote CLI commands.

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;

use larder::service::{CacheConfig, CacheConfigPatch, CacheCreate, Stats, VerifyReport};

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Self {
        Self {
            base: server.trim_end_matches('/').to_owned(),
            token,
            agent: ureq::AgentBuilder::new()
                .tls_config(larder::tls::client_config())
                .build(),
        }
    }

    /// The same server with another token.
    pub fn with_token(&self, token: Option<String>) -> Self {
        Self {
            base: self.base.clone(),
            token,
            agent: self.agent.clone(),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let req = self.request(method, path);
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) => {
                let text = resp.into_string().context("reading the server's answer")?;
                let text = if text.trim().is_empty() {
                    "null"
                } else {
                    &text
                };
                serde_json::from_str(text).with_context(|| format!("unexpected answer: {text}"))
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let msg = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                    .unwrap_or(text);
                Err(anyhow!("server answered {code}: {msg}"))
            }
            Err(e) => Err(anyhow!("could not reach {}: {e}", self.base)),
        }
    }

    pub fn create_cache(&self, name: &str, req: &CacheCreate) -> anyhow::Result<CacheConfig> {
        self.call(
            "POST",
            &format!("/_api/v1/cache-config/{name}"),
            Some(serde_json::to_value(req)?),
        )
    }

    pub fn cache_config(&self, name: &str) -> anyhow::Result<CacheConfig> {
        self.call("GET", &format!("/_api/v1/cache-config/{name}"), None)
    }

    pub fn configure_cache(
        &self,
        name: &str,
        patch: &CacheConfigPatch,
    ) -> anyhow::Result<CacheConfig> {
        self.call(
            "PATCH",
            &format!("/_api/v1/cache-config/{name}"),
            Some(serde_json::to_value(patch)?),
        )
    }

    pub fn destroy_cache(&self, name: &str) -> anyhow::Result<()> {
        let _: serde_json::Value =
            self.call("DELETE", &format!("/_api/v1/cache-config/{name}"), None)?;
        Ok(())
    }

    pub fn list_caches(&self) -> anyhow::Result<Vec<(String, CacheConfig)>> {
        let rows: Vec<serde_json::Value> = self.call("GET", "/_api/v1/caches", None)?;
        rows.into_iter()
            .map(|v| {
                let name = v
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| anyhow!("cache list entry without a name"))?
                    .to_owned();
                let cfg: CacheConfig = serde_json::from_value(v)?;
                Ok((name, cfg))
            })
            .collect()
    }

    pub fn stats(&self) -> anyhow::Result<Stats> {
        self.call("GET", "/_api/v1/stats", None)
    }

    pub fn verify(&self) -> anyhow::Result<VerifyReport> {
        self.call("POST", "/_api/v1/verify", None)
    }
}
