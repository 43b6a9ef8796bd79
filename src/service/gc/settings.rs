//! `[gc]` in the config file: when GC runs, the default retention, the size
//! budget and when a pack is compacted (`docs/design/gc.md`).

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// `[gc]` as written. Every key is optional.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct GcFileConfig {
    /// How often a GC pass runs: "1h", "30m"; "none" for on demand only.
    pub interval: Option<String>,
    /// Retention of caches without their own: "90d"; "none" keeps forever.
    pub default_retention: Option<String>,
    /// The budget for stored bytes: "200G" (binary units) or "80%" of the data
    /// dir's filesystem; "none" for no budget.
    pub max_size: Option<String>,
    /// Where eviction stops once over `max_size`, as a percentage of it.
    pub low_water: Option<String>,
    /// A sealed pack with less live data than this percentage is rewritten.
    pub compact_below: Option<String>,
}

/// The size budget: absolute, or a share of the data dir's filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeBudget {
    Bytes(u64),
    PercentOfDisk(f64),
}

/// Validated `[gc]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GcSettings {
    pub interval: Option<Duration>,
    pub default_retention: Option<Duration>,
    pub max_size: Option<SizeBudget>,
    /// Fraction of `max_size` eviction brings the store down to.
    pub low_water: f64,
    /// Live fraction under which a sealed pack is compacted.
    pub compact_below: f64,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_LOW_WATER: f64 = 0.9;
pub const DEFAULT_COMPACT_BELOW: f64 = 0.8;

impl Default for GcSettings {
    fn default() -> Self {
        Self {
            interval: Some(DEFAULT_INTERVAL),
            default_retention: None,
            max_size: None,
            low_water: DEFAULT_LOW_WATER,
            compact_below: DEFAULT_COMPACT_BELOW,
        }
    }
}

fn is_none(s: &str) -> bool {
    matches!(s.trim(), "none" | "never" | "off" | "")
}

/// A duration such as "90d", "12h", "1y 2d"; "none" for none.
pub fn parse_duration(key: &str, s: &str) -> Result<Option<Duration>, ConfigError> {
    if is_none(s) {
        return Ok(None);
    }
    humantime::parse_duration(s.trim()).map(Some).map_err(|e| {
        ConfigError::Invalid(format!(
            "{key} {s:?}: {e} (write e.g. \"90d\", \"12h\", or \"none\")"
        ))
    })
}

/// A size such as "200G", "1.5TiB", "500MB"; units K, M, G, T are binary.
pub fn parse_bytes(key: &str, s: &str) -> Result<u64, ConfigError> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|e| ConfigError::Invalid(format!("{key} {s:?}: {e} (write e.g. \"200G\")")))
}

fn parse_percent(key: &str, s: &str) -> Result<f64, ConfigError> {
    let bad = || ConfigError::Invalid(format!("{key} {s:?}: write a percentage such as \"90%\""));
    let n: f64 = s
        .trim()
        .strip_suffix('%')
        .ok_or_else(bad)?
        .trim()
        .parse()
        .map_err(|_| bad())?;
    if !(n > 0.0 && n <= 100.0) {
        return Err(ConfigError::Invalid(format!(
            "{key} {s:?}: must be above 0% and at most 100%"
        )));
    }
    Ok(n / 100.0)
}

impl GcSettings {
    pub fn resolve(file: Option<GcFileConfig>) -> Result<Self, ConfigError> {
        let f = file.unwrap_or_default();
        let mut out = GcSettings::default();
        if let Some(i) = &f.interval {
            out.interval = parse_duration("[gc] interval", i)?;
            if out.interval.is_some_and(|d| d < Duration::from_secs(1)) {
                return Err(ConfigError::Invalid(format!(
                    "[gc] interval {i:?}: at least one second"
                )));
            }
        }
        if let Some(r) = &f.default_retention {
            out.default_retention = parse_duration("[gc] default_retention", r)?;
        }
        if let Some(m) = &f.max_size {
            out.max_size = if is_none(m) {
                None
            } else if m.trim().ends_with('%') {
                Some(SizeBudget::PercentOfDisk(parse_percent(
                    "[gc] max_size",
                    m,
                )?))
            } else {
                let b = parse_bytes("[gc] max_size", m)?;
                if b == 0 {
                    return Err(ConfigError::Invalid(
                        "[gc] max_size is 0: say \"none\" for no budget".into(),
                    ));
                }
                Some(SizeBudget::Bytes(b))
            };
        }
        if let Some(l) = &f.low_water {
            out.low_water = parse_percent("[gc] low_water", l)?;
        }
        if let Some(c) = &f.compact_below {
            out.compact_below = parse_percent("[gc] compact_below", c)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_operators_write() {
        let s = GcSettings::resolve(Some(GcFileConfig {
            interval: Some("30m".into()),
            default_retention: Some("90d".into()),
            max_size: Some("200G".into()),
            low_water: Some("80%".into()),
            compact_below: None,
        }))
        .unwrap();
        assert_eq!(s.interval, Some(Duration::from_secs(1800)));
        assert_eq!(s.default_retention, Some(Duration::from_secs(90 * 86400)));
        assert_eq!(s.max_size, Some(SizeBudget::Bytes(200 << 30)));
        assert!((s.low_water - 0.8).abs() < 1e-9);
        let p = GcSettings::resolve(Some(GcFileConfig {
            max_size: Some("75%".into()),
            default_retention: Some("none".into()),
            interval: Some("none".into()),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(p.max_size, Some(SizeBudget::PercentOfDisk(0.75)));
        assert_eq!(p.default_retention, None);
        assert_eq!(p.interval, None);
        assert_eq!(GcSettings::resolve(None).unwrap(), GcSettings::default());
    }

    #[test]
    fn refuses_nonsense_with_the_key_named() {
        for (f, key) in [
            (
                GcFileConfig {
                    max_size: Some("lots".into()),
                    ..Default::default()
                },
                "max_size",
            ),
            (
                GcFileConfig {
                    max_size: Some("150%".into()),
                    ..Default::default()
                },
                "max_size",
            ),
            (
                GcFileConfig {
                    default_retention: Some("ninety days".into()),
                    ..Default::default()
                },
                "default_retention",
            ),
            (
                GcFileConfig {
                    low_water: Some("0.9".into()),
                    ..Default::default()
                },
                "low_water",
            ),
        ] {
            let e = GcSettings::resolve(Some(f)).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
