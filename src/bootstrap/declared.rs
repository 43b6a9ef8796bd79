//! The declared state of the config file (`[[caches]]`, `[[tokens]]`, `[[s3_keys]]`,
//! `[[s3_buckets]]`) as the operator writes it, and its validated form.
//!
//! ```toml
//! [[caches]]
//! name = "default"
//! public = false                 # optional, like every setting below but name
//! priority = 41
//! store_dir = "/nix/store"
//! upstream_cache_key_names = ["cache.nixos.org-1"]
//! retention_period = "global"    # or seconds
//! signing_key_file = "default-signing-key"   # a credential name or absolute path
//! # a pull-through cache: what it lacks is fetched from these (docs/design/upstreams.md)
//! upstreams = [{ url = "https://cache.nixos.org", public_keys = ["cache.nixos.org-1:6NCH…"], priority = 40 }]
//!
//! [[tokens]]
//! sub = "ci"
//! validity = "1y"                # y w d h m s
//! file = "tokens/ci.token"       # relative to data_dir, or absolute
//! pull = ["default"]
//! push = ["default"]             # also delete, create_cache, configure_cache,
//!                                # configure_cache_retention, destroy_cache
//! metrics = true                 # may read /metrics
//!
//! [[s3_buckets]]
//! name = "backups"
//!
//! [[s3_keys]]
//! name = "restic"
//! access_key_id_file = "restic-key-id"
//! secret_access_key_file = "/run/secrets/restic-secret"
//! buckets = [{ pattern = "backups", read = true, write = true }]
//! ```
//!
//! Validation ([`Declared::resolve`]) does no I/O: it is what `larder check-config`
//! runs. What the settings mean at start-up is in [`crate::bootstrap`].

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::secret::SecretFile;
use crate::auth::{Grants, PermSet, Permission};
use crate::config::ConfigError;
use crate::meta::S3Grant;
use crate::service::RetentionPeriod;

/// `[[caches]]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDecl {
    pub name: String,
    pub public: Option<bool>,
    pub priority: Option<i32>,
    pub store_dir: Option<String>,
    pub upstream_cache_key_names: Option<Vec<String>>,
    pub retention_period: Option<RetentionDecl>,
    /// The cache's Nix signing key (`name:base64`, as `nix-store
    /// --generate-binary-cache-key` writes it). Without it a key is generated once,
    /// when the cache is created, and kept.
    pub signing_key_file: Option<String>,
    /// Binary caches asked for what this one does not hold; `[]` for none.
    pub upstreams: Option<Vec<crate::meta::Upstream>>,
}

/// `retention_period = "global"` or a number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RetentionDecl {
    Seconds(u32),
    Word(String),
}

/// `[[tokens]]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenDecl {
    pub sub: String,
    pub validity: String,
    pub file: PathBuf,
    #[serde(default)]
    pub pull: Vec<String>,
    #[serde(default)]
    pub push: Vec<String>,
    #[serde(default)]
    pub delete: Vec<String>,
    #[serde(default)]
    pub create_cache: Vec<String>,
    #[serde(default)]
    pub configure_cache: Vec<String>,
    #[serde(default)]
    pub configure_cache_retention: Vec<String>,
    #[serde(default)]
    pub destroy_cache: Vec<String>,
    /// May read `/metrics` (granted on the pattern `*`).
    #[serde(default)]
    pub metrics: bool,
}

/// `[[s3_keys]]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3KeyDecl {
    pub name: String,
    pub access_key_id_file: String,
    pub secret_access_key_file: String,
    #[serde(default)]
    pub buckets: Vec<S3GrantDecl>,
}

/// One entry of an S3 key's `buckets`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3GrantDecl {
    /// A bucket name, or a pattern with `*`.
    pub pattern: String,
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub owner: bool,
}

/// `[[s3_buckets]]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3BucketDecl {
    pub name: String,
}

/// A declared cache, validated. `None` settings are left as they are (a new cache
/// gets the defaults of `larder cache create`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredCache {
    pub name: String,
    pub is_public: Option<bool>,
    pub priority: Option<i32>,
    pub store_dir: Option<String>,
    pub upstream_cache_key_names: Option<Vec<String>>,
    pub retention_period: Option<RetentionPeriod>,
    pub signing_key: Option<SecretFile>,
    pub upstreams: Option<Vec<crate::meta::Upstream>>,
}

/// A declared token, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredToken {
    pub sub: String,
    pub validity_secs: u64,
    /// Absolute: a relative `file` is taken under the data dir.
    pub file: PathBuf,
    pub grants: Grants,
}

/// A declared S3 key, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredS3Key {
    pub name: String,
    pub access_key_id: SecretFile,
    pub secret_access_key: SecretFile,
    /// Exactly the grants the key has after start-up.
    pub grants: Vec<S3Grant>,
}

/// Everything the config declares, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    pub caches: Vec<DeclaredCache>,
    pub tokens: Vec<DeclaredToken>,
    pub s3_keys: Vec<DeclaredS3Key>,
    pub s3_buckets: Vec<String>,
}

impl Declared {
    pub fn is_empty(&self) -> bool {
        self.caches.is_empty()
            && self.tokens.is_empty()
            && self.s3_keys.is_empty()
            && self.s3_buckets.is_empty()
    }

    /// Validate the file's tables; `data_dir` anchors relative token files.
    pub fn resolve(
        caches: Vec<CacheDecl>,
        tokens: Vec<TokenDecl>,
        s3_keys: Vec<S3KeyDecl>,
        s3_buckets: Vec<S3BucketDecl>,
        data_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let mut names = HashSet::new();
        let caches = caches
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let c = resolve_cache(i, c)?;
                if !names.insert(c.name.clone()) {
                    return Err(ConfigError::Invalid(format!(
                        "caches: {:?} is declared twice",
                        c.name
                    )));
                }
                Ok(c)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut files = HashSet::new();
        let tokens = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let t = resolve_token(i, t, data_dir)?;
                if !files.insert(t.file.clone()) {
                    return Err(ConfigError::Invalid(format!(
                        "tokens: two tokens are written to {}",
                        t.file.display()
                    )));
                }
                Ok(t)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut key_names = HashSet::new();
        let s3_keys = s3_keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                let k = resolve_s3_key(i, k)?;
                if !key_names.insert(k.name.clone()) {
                    return Err(ConfigError::Invalid(format!(
                        "s3_keys: {:?} is declared twice",
                        k.name
                    )));
                }
                Ok(k)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut buckets: Vec<String> = Vec::new();
        for (i, b) in s3_buckets.into_iter().enumerate() {
            let name = b.name.trim().to_owned();
            if !s3s::path::check_bucket_name(&name) {
                return Err(ConfigError::Invalid(format!(
                    "s3_buckets[{i}].name = {name:?}: use 3-63 of a-z 0-9 . -, starting and ending with a letter or digit"
                )));
            }
            if buckets.contains(&name) {
                return Err(ConfigError::Invalid(format!(
                    "s3_buckets: {name:?} is declared twice"
                )));
            }
            buckets.push(name);
        }
        Ok(Declared {
            caches,
            tokens,
            s3_keys,
            s3_buckets: buckets,
        })
    }
}

fn resolve_cache(i: usize, c: CacheDecl) -> Result<DeclaredCache, ConfigError> {
    let at = |field: &str| format!("caches[{i}].{field}");
    crate::service::validate_cache_name(&c.name)
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", at("name"))))?;
    if let Some(d) = &c.store_dir {
        crate::nix::store_path::validate_store_dir(d)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", at("store_dir"))))?;
    }
    if let Some(keys) = &c.upstream_cache_key_names {
        if keys.iter().any(|k| k.trim().is_empty() || k.contains(':')) {
            return Err(ConfigError::Invalid(format!(
                "{}: key names, like \"cache.nixos.org-1\" (without the \":key\" part)",
                at("upstream_cache_key_names")
            )));
        }
    }
    let retention_period = match c.retention_period {
        None => None,
        Some(RetentionDecl::Seconds(n)) => Some(RetentionPeriod::Period(n)),
        Some(RetentionDecl::Word(w)) if w.eq_ignore_ascii_case("global") => {
            Some(RetentionPeriod::Global)
        }
        Some(RetentionDecl::Word(w)) => {
            return Err(ConfigError::Invalid(format!(
                "{} = {w:?}: a number of seconds, or \"global\"",
                at("retention_period")
            )))
        }
    };
    let upstreams = c
        .upstreams
        .as_deref()
        .map(crate::service::validate_upstreams)
        .transpose()
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", at("upstreams"))))?;
    let signing_key = c
        .signing_key_file
        .as_deref()
        .map(|v| SecretFile::parse(&at("signing_key_file"), v))
        .transpose()?;
    Ok(DeclaredCache {
        name: c.name,
        is_public: c.public,
        priority: c.priority,
        store_dir: c.store_dir,
        upstream_cache_key_names: c.upstream_cache_key_names,
        retention_period,
        signing_key,
        upstreams,
    })
}

fn resolve_token(i: usize, t: TokenDecl, data_dir: &Path) -> Result<DeclaredToken, ConfigError> {
    let at = |field: &str| format!("tokens[{i}].{field}");
    let sub = t.sub.trim().to_owned();
    if sub.is_empty() || sub.len() > 256 {
        return Err(ConfigError::Invalid(format!(
            "{}: 1-256 characters naming who holds the token",
            at("sub")
        )));
    }
    let validity_secs = parse_duration(&t.validity)
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", at("validity"))))?;
    if validity_secs == 0 || validity_secs > MAX_VALIDITY_SECS {
        return Err(ConfigError::Invalid(format!(
            "{}: between 1 s and 100 years",
            at("validity")
        )));
    }
    if t.file.as_os_str().is_empty() || t.file.file_name().is_none() {
        return Err(ConfigError::Invalid(format!(
            "{}: name the file the token is written to",
            at("file")
        )));
    }
    let file = if t.file.is_absolute() {
        t.file
    } else {
        data_dir.join(t.file)
    };
    let mut caches: BTreeMap<String, PermSet> = BTreeMap::new();
    for (perm, patterns) in [
        (Permission::Pull, t.pull),
        (Permission::Push, t.push),
        (Permission::Delete, t.delete),
        (Permission::CreateCache, t.create_cache),
        (Permission::ConfigureCache, t.configure_cache),
        (
            Permission::ConfigureCacheRetention,
            t.configure_cache_retention,
        ),
        (Permission::DestroyCache, t.destroy_cache),
    ] {
        for p in patterns {
            crate::auth::grants::validate_pattern(&p).map_err(|e| {
                ConfigError::Invalid(format!("{}: {e}", at(&perm.name().replace('-', "_"))))
            })?;
            caches.entry(p).or_default().insert(perm);
        }
    }
    if t.metrics {
        caches
            .entry(crate::auth::grants::METRICS_PATTERN.to_owned())
            .or_default()
            .insert(Permission::Metrics);
    }
    if caches.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "tokens[{i}] ({sub}) grants nothing: give pull, push, delete, create_cache, configure_cache, configure_cache_retention or destroy_cache patterns"
        )));
    }
    Ok(DeclaredToken {
        sub,
        validity_secs,
        file,
        grants: Grants(caches),
    })
}

fn resolve_s3_key(i: usize, k: S3KeyDecl) -> Result<DeclaredS3Key, ConfigError> {
    let at = |field: &str| format!("s3_keys[{i}].{field}");
    crate::s3::keys::validate_key_name(&k.name)
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", at("name"))))?;
    let access_key_id = SecretFile::parse(&at("access_key_id_file"), &k.access_key_id_file)?;
    let secret_access_key =
        SecretFile::parse(&at("secret_access_key_file"), &k.secret_access_key_file)?;
    let mut grants: Vec<S3Grant> = Vec::new();
    for (j, g) in k.buckets.into_iter().enumerate() {
        let field = format!("buckets[{j}]");
        crate::s3::keys::validate_pattern(&g.pattern)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", at(&field))))?;
        if !(g.read || g.write || g.owner) {
            return Err(ConfigError::Invalid(format!(
                "{} ({}) grants nothing: set read, write and/or owner",
                at(&field),
                g.pattern
            )));
        }
        if let Some(prev) = grants.iter_mut().find(|p| p.pattern == g.pattern) {
            prev.read |= g.read;
            prev.write |= g.write;
            prev.owner |= g.owner;
        } else {
            grants.push(S3Grant {
                pattern: g.pattern,
                read: g.read,
                write: g.write,
                owner: g.owner,
            });
        }
    }
    Ok(DeclaredS3Key {
        name: k.name,
        access_key_id,
        secret_access_key,
        grants,
    })
}

/// The longest validity a token may ask for: 100 years (as `larder token create`).
const MAX_VALIDITY_SECS: u64 = 100 * 365 * 24 * 3600;

/// `1y`, `30d`, `12h`, `90m`, `3600s` (or bare seconds).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?}: expected a number then y, w, d, h, m or s"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        other => {
            return Err(format!(
                "duration {s:?}: unknown unit {other:?} (use y, w, d, h, m or s)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("duration {s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(file: &str) -> TokenDecl {
        TokenDecl {
            sub: "ci".into(),
            validity: "30d".into(),
            file: file.into(),
            push: vec!["default".into()],
            pull: vec!["default".into(), "team-*".into()],
            ..Default::default()
        }
    }

    #[test]
    fn tokens_resolve_under_the_data_dir() {
        let d = Declared::resolve(
            vec![],
            vec![token("tokens/ci.token"), token("/etc/larder/x.token")],
            vec![],
            vec![],
            Path::new("/var/lib/larder"),
        )
        .unwrap();
        assert_eq!(
            d.tokens[0].file,
            PathBuf::from("/var/lib/larder/tokens/ci.token")
        );
        assert_eq!(d.tokens[1].file, PathBuf::from("/etc/larder/x.token"));
        assert_eq!(d.tokens[0].validity_secs, 30 * 86_400);
        let g = &d.tokens[0].grants;
        assert!(g.for_cache("default").contains(Permission::Push));
        assert!(g.for_cache("default").contains(Permission::Pull));
        assert!(!g.for_cache("team-a").contains(Permission::Push));
    }

    #[test]
    fn declared_upstreams_are_checked_and_normalised() {
        let dd = Path::new("/d");
        let toml_text = r#"
            name = "nixos"
            upstreams = [{ url = "https://cache.nixos.org/", public_keys = ["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="], priority = 40 }]
        "#;
        let c: CacheDecl = toml::from_str(toml_text).unwrap();
        let d = Declared::resolve(vec![c], vec![], vec![], vec![], dd).unwrap();
        let u = d.caches[0].upstreams.as_ref().unwrap();
        assert_eq!(u[0].url, "https://cache.nixos.org");
        assert_eq!(u[0].priority, 40);
        let bad: CacheDecl = toml::from_str(
            r#"
            name = "nixos"
            upstreams = [{ url = "cache.nixos.org", public_keys = ["k:AAAA"] }]
        "#,
        )
        .unwrap();
        let e = Declared::resolve(vec![bad], vec![], vec![], vec![], dd).unwrap_err();
        assert!(e.to_string().contains("caches[0].upstreams"), "{e}");
        // An unknown key in an upstream is refused when the file is read.
        assert!(toml::from_str::<CacheDecl>(
            r#"
            name = "nixos"
            upstreams = [{ url = "https://x", public_keys = [], prio = 1 }]
        "#
        )
        .is_err());
    }

    #[test]
    fn a_declared_token_may_read_metrics() {
        let mut t = token("m");
        t.pull.clear();
        t.push.clear();
        t.metrics = true;
        let d = Declared::resolve(vec![], vec![t], vec![], vec![], Path::new("/d")).unwrap();
        let claims = crate::auth::TokenClaims {
            jti: "j".into(),
            sub: "s".into(),
            iat: 0,
            nbf: 0,
            exp: 1,
            caches: d.tokens[0].grants.clone(),
            chain: vec![],
        };
        assert!(crate::auth::Caller::Token(std::sync::Arc::new(claims)).can_read_metrics());
        assert!(!d.tokens[0]
            .grants
            .for_cache("default")
            .contains(Permission::Pull));
    }

    #[test]
    fn refuses_what_cannot_work() {
        let dd = Path::new("/d");
        let mut t = token("a");
        t.validity = "1x".into();
        assert!(Declared::resolve(vec![], vec![t], vec![], vec![], dd).is_err());
        let mut t = token("a");
        t.pull.clear();
        t.push.clear();
        assert!(Declared::resolve(vec![], vec![t], vec![], vec![], dd).is_err());
        assert!(
            Declared::resolve(vec![], vec![token("a"), token("a")], vec![], vec![], dd).is_err()
        );
        let c = CacheDecl {
            name: "bad name".into(),
            ..Default::default()
        };
        assert!(Declared::resolve(vec![c], vec![], vec![], vec![], dd).is_err());
        let c = CacheDecl {
            name: "ok".into(),
            retention_period: Some(RetentionDecl::Word("forever".into())),
            ..Default::default()
        };
        assert!(Declared::resolve(vec![c], vec![], vec![], vec![], dd).is_err());
        let b = S3BucketDecl {
            name: "UPPER".into(),
        };
        assert!(Declared::resolve(vec![], vec![], vec![], vec![b], dd).is_err());
        let k = S3KeyDecl {
            name: "k".into(),
            access_key_id_file: "relative/id".into(),
            secret_access_key_file: "secret".into(),
            buckets: vec![],
        };
        assert!(Declared::resolve(vec![], vec![], vec![k], vec![], dd).is_err());
    }

    #[test]
    fn s3_grants_merge_per_pattern() {
        let k = S3KeyDecl {
            name: "restic".into(),
            access_key_id_file: "id".into(),
            secret_access_key_file: "/run/secrets/s".into(),
            buckets: vec![
                S3GrantDecl {
                    pattern: "backups".into(),
                    read: true,
                    ..Default::default()
                },
                S3GrantDecl {
                    pattern: "backups".into(),
                    write: true,
                    ..Default::default()
                },
            ],
        };
        let d = Declared::resolve(vec![], vec![], vec![k], vec![], Path::new("/d")).unwrap();
        assert_eq!(
            d.s3_keys[0].grants,
            vec![S3Grant {
                pattern: "backups".into(),
                read: true,
                write: true,
                owner: false
            }]
        );
        assert_eq!(
            d.s3_keys[0].access_key_id,
            SecretFile::Credential("id".into())
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1y").unwrap(), 365 * 86_400);
        assert_eq!(parse_duration("90m").unwrap(), 5400);
        assert_eq!(parse_duration("15").unwrap(), 15);
        assert!(parse_duration("y").is_err());
    }
}
