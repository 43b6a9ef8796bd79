//! Cache management, in Attic's shapes (`CacheConfig`), shared by the HTTP API
//! and the local CLI.
//!
//! A configure request from the stock `attic` client always carries
//! `retention_period` ("Global" unless the user set one). Changing retention needs
//! the configure-cache-retention permission; sending the value the cache already
//! has is not a change and needs only configure-cache.

use serde::{Deserialize, Serialize};

use super::{validate_cache_name, Larder, ServiceError};
use crate::auth::{Caller, Permission};
use crate::meta::{CacheRow, NewCache, Upstream};
use crate::nix::signing::SecretKey;
use crate::nix::store_path::validate_store_dir;

/// Defaults for a new cache, as the `attic` client sends them.
pub const DEFAULT_PRIORITY: i32 = 41;
pub const DEFAULT_STORE_DIR: &str = "/nix/store";
pub const DEFAULT_UPSTREAM_KEY: &str = "cache.nixos.org-1";

/// `"Global"` or `{"Period": seconds}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetentionPeriod {
    Global,
    Period(u32),
}

impl RetentionPeriod {
    fn to_row(self) -> Option<i64> {
        match self {
            RetentionPeriod::Global => None,
            RetentionPeriod::Period(n) => Some(i64::from(n)),
        }
    }
    fn from_row(v: Option<i64>) -> Self {
        match v.and_then(|n| u32::try_from(n).ok()) {
            None => RetentionPeriod::Global,
            Some(n) => RetentionPeriod::Period(n),
        }
    }
}

/// `"Generate"` or `{"Keypair": "<nix secret key>"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeypairSpec {
    Generate,
    Keypair(String),
}

/// Attic's CacheConfig, as answered by `GET cache-config` and `cache info --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    pub substituter_endpoint: String,
    pub api_endpoint: String,
    pub public_key: String,
    pub is_public: bool,
    pub store_dir: String,
    pub priority: i32,
    pub upstream_cache_key_names: Vec<String>,
    pub retention_period: RetentionPeriod,
    /// Binary caches asked for what this one does not hold (larder's own field;
    /// absent when there are none, so Attic's clients see Attic's shape).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<Upstream>,
}

/// The body of a create request.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheCreate {
    pub keypair: KeypairSpec,
    #[serde(default)]
    pub is_public: bool,
    #[serde(default = "default_store_dir")]
    pub store_dir: String,
    #[serde(default = "default_priority")]
    pub priority: i32,
    #[serde(default = "default_upstream")]
    pub upstream_cache_key_names: Vec<String>,
    /// Upstreams of a pull-through cache (larder's own field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<Upstream>,
}

fn default_store_dir() -> String {
    DEFAULT_STORE_DIR.into()
}
fn default_priority() -> i32 {
    DEFAULT_PRIORITY
}
fn default_upstream() -> Vec<String> {
    vec![DEFAULT_UPSTREAM_KEY.into()]
}

impl Default for CacheCreate {
    fn default() -> Self {
        Self {
            keypair: KeypairSpec::Generate,
            is_public: false,
            store_dir: default_store_dir(),
            priority: DEFAULT_PRIORITY,
            upstream_cache_key_names: default_upstream(),
            upstreams: Vec::new(),
        }
    }
}

/// The body of a configure request: any subset of fields.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfigPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypair: Option<KeypairSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_public: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_cache_key_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_period: Option<RetentionPeriod>,
    /// Replaces the upstreams (`[]` makes the cache stop proxying).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<Upstream>>,
}

impl CacheConfigPatch {
    /// True when it asks for no change.
    pub fn is_empty(&self) -> bool {
        self.keypair.is_none()
            && self.is_public.is_none()
            && self.store_dir.is_none()
            && self.priority.is_none()
            && self.upstream_cache_key_names.is_none()
            && self.retention_period.is_none()
            && self.upstreams.is_none()
    }
}

fn key_from_spec(spec: &KeypairSpec, cache: &str) -> Result<String, ServiceError> {
    Ok(match spec {
        KeypairSpec::Generate => SecretKey::generate(cache)?.to_nix_string(),
        KeypairSpec::Keypair(s) => SecretKey::parse(s)?.to_nix_string(),
    })
}

impl Larder {
    /// The CacheConfig of a stored cache.
    pub fn config_of(&self, row: &CacheRow) -> Result<CacheConfig, ServiceError> {
        let key = SecretKey::parse(&row.signing_key)
            .map_err(|e| ServiceError::Internal(format!("cache {} signing key: {e}", row.name)))?;
        Ok(CacheConfig {
            substituter_endpoint: format!("{}/{}", self.base_url, row.name),
            api_endpoint: format!("{}/", self.base_url),
            public_key: key.public().to_nix_string(),
            is_public: row.is_public,
            store_dir: row.store_dir.clone(),
            priority: row.priority,
            upstream_cache_key_names: row.upstream_cache_key_names.clone(),
            retention_period: RetentionPeriod::from_row(row.retention_period),
            upstreams: row.upstreams.clone(),
        })
    }

    pub fn create_cache(
        &self,
        caller: &Caller,
        name: &str,
        req: &CacheCreate,
    ) -> Result<CacheConfig, ServiceError> {
        validate_cache_name(name)?;
        if !caller.can(name, Permission::CreateCache) {
            // Like `authorize`: a caller with no permission at all on the name gets
            // the 401 it would get for any other request about a private cache.
            let visible =
                caller.has_any(name) || self.meta.cache_by_name(name)?.is_some_and(|r| r.is_public);
            return Err(if caller.is_anonymous() {
                ServiceError::Unauthorized("missing token".into())
            } else if !visible {
                ServiceError::Unauthorized(format!("token has no permission on cache {name:?}"))
            } else {
                ServiceError::Forbidden(format!("token lacks create-cache on {name:?}"))
            });
        }
        validate_store_dir(&req.store_dir)?;
        let upstreams = super::upstream::validate_upstreams(&req.upstreams)?;
        let created = self.meta.create_cache(&NewCache {
            name: name.to_owned(),
            is_public: req.is_public,
            priority: req.priority,
            store_dir: req.store_dir.clone(),
            signing_key: key_from_spec(&req.keypair, name)?,
            upstream_cache_key_names: req.upstream_cache_key_names.clone(),
            retention_period: None,
            upstreams,
        })?;
        if !created {
            return Err(ServiceError::CacheAlreadyExists(name.to_owned()));
        }
        tracing::info!(cache = name, "created cache");
        let row = self
            .meta
            .cache_by_name(name)?
            .ok_or_else(|| ServiceError::NoSuchCache(name.to_owned()))?;
        self.config_of(&row)
    }

    pub fn cache_config(&self, caller: &Caller, name: &str) -> Result<CacheConfig, ServiceError> {
        let row = self.authorize(caller, name, Permission::Pull)?;
        self.config_of(&row)
    }

    pub fn configure_cache(
        &self,
        caller: &Caller,
        name: &str,
        patch: &CacheConfigPatch,
    ) -> Result<CacheConfig, ServiceError> {
        if patch.is_empty() {
            return Err(ServiceError::BadRequest(
                "empty configure request: nothing to change".into(),
            ));
        }
        let mut row = (*self.authorize(caller, name, Permission::ConfigureCache)?).clone();
        if let Some(rp) = patch.retention_period {
            if rp.to_row() != row.retention_period {
                self.authorize(caller, name, Permission::ConfigureCacheRetention)?;
                row.retention_period = rp.to_row();
            }
        }
        if let Some(k) = &patch.keypair {
            row.signing_key = key_from_spec(k, name)?;
        }
        if let Some(p) = patch.is_public {
            row.is_public = p;
        }
        if let Some(d) = &patch.store_dir {
            validate_store_dir(d)?;
            row.store_dir = d.clone();
        }
        if let Some(p) = patch.priority {
            row.priority = p;
        }
        if let Some(u) = &patch.upstream_cache_key_names {
            row.upstream_cache_key_names = u.clone();
        }
        if let Some(u) = &patch.upstreams {
            row.upstreams = super::upstream::validate_upstreams(u)?;
        }
        self.meta.update_cache(&row)?;
        if patch.upstreams.is_some() {
            self.upstreams_changed(row.id);
        }
        self.config_of(&row)
    }

    pub fn destroy_cache(&self, caller: &Caller, name: &str) -> Result<(), ServiceError> {
        self.authorize(caller, name, Permission::DestroyCache)?;
        if !self.meta.destroy_cache(name)? {
            return Err(ServiceError::NoSuchCache(name.to_owned()));
        }
        tracing::info!(cache = name, "destroyed cache");
        Ok(())
    }

    /// The caches the caller can see, with their configs.
    pub fn list_caches(&self, caller: &Caller) -> Result<Vec<(String, CacheConfig)>, ServiceError> {
        let mut out = Vec::new();
        for row in self.meta.list_caches()? {
            if row.is_public || caller.has_any(&row.name) {
                out.push((row.name.clone(), self.config_of(&row)?));
            }
        }
        Ok(out)
    }
}
