//! `[upstreams]` in the config file: how long larder waits for an upstream, how
//! long it remembers that no upstream has a path, and how many NARs it fetches
//! at once (`docs/design/upstreams.md`).

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// `[upstreams]` as written. Every key is optional.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFileConfig {
    /// Longest wait for an upstream's answer, and for each next piece of a NAR
    /// it sends: "10s".
    pub timeout: Option<String>,
    /// How long "no upstream has this path" is remembered: "60s"; "0s" for not.
    pub negative_ttl: Option<String>,
    /// NARs fetched from upstreams at once; more wait for a slot.
    pub max_concurrent_fetches: Option<usize>,
}

/// Validated `[upstreams]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub timeout: Duration,
    pub negative_ttl: Duration,
    pub max_concurrent_fetches: usize,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONCURRENT_FETCHES: usize = 16;

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            max_concurrent_fetches: DEFAULT_MAX_CONCURRENT_FETCHES,
        }
    }
}

fn duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        ConfigError::Invalid(format!(
            "upstreams.{key} {s:?}: {e} (write e.g. \"10s\" or \"2m\")"
        ))
    })
}

impl UpstreamSettings {
    pub fn resolve(file: Option<UpstreamFileConfig>) -> Result<Self, ConfigError> {
        let file = file.unwrap_or_default();
        let mut out = Self::default();
        if let Some(t) = &file.timeout {
            out.timeout = duration("timeout", t)?;
            if out.timeout.is_zero() {
                return Err(ConfigError::Invalid(
                    "upstreams.timeout must be more than 0s".into(),
                ));
            }
        }
        if let Some(t) = &file.negative_ttl {
            out.negative_ttl = duration("negative_ttl", t)?;
        }
        if let Some(n) = file.max_concurrent_fetches {
            if n == 0 {
                return Err(ConfigError::Invalid(
                    "upstreams.max_concurrent_fetches must be at least 1".into(),
                ));
            }
            out.max_concurrent_fetches = n;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(
            UpstreamSettings::resolve(None).unwrap(),
            UpstreamSettings::default()
        );
        let s = UpstreamSettings::resolve(Some(UpstreamFileConfig {
            timeout: Some("3s".into()),
            negative_ttl: Some("0s".into()),
            max_concurrent_fetches: Some(2),
        }))
        .unwrap();
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert!(s.negative_ttl.is_zero());
        assert_eq!(s.max_concurrent_fetches, 2);
        for bad in [
            UpstreamFileConfig {
                timeout: Some("soon".into()),
                ..Default::default()
            },
            UpstreamFileConfig {
                timeout: Some("0s".into()),
                ..Default::default()
            },
            UpstreamFileConfig {
                max_concurrent_fetches: Some(0),
                ..Default::default()
            },
        ] {
            assert!(UpstreamSettings::resolve(Some(bad)).is_err());
        }
    }
}
