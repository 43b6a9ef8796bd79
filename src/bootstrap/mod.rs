//! Declarative bootstrap: on every start, `larder serve` makes the caches, tokens,
//! S3 buckets and S3 keys declared in the config file so, before it serves a
//! request. Running it again with the same config changes nothing.
//!
//! - A **cache** is created when missing (with the declared signing key, or a
//!   generated one) and reconfigured when a declared setting differs. Settings the
//!   config leaves out are left as they are; caches the config does not name are
//!   never touched, let alone destroyed.
//! - A **token** is minted and its secret written (mode 0600) to its `file` when
//!   that file is missing, or when the token in it can no longer serve as the
//!   declared one: unreadable by this server, expired, revoked, or for another
//!   subject or other grants (the old token is then revoked). Rotating a declared
//!   token is therefore: revoke it (or delete its file) and restart.
//! - An **S3 bucket** is created when missing (never deleted).
//! - An **S3 key** is imported with the fixed credentials read from its files; new
//!   credentials under the same name replace the old key. Its grants are made
//!   exactly the declared ones.
//!
//! Secrets come from files or systemd credentials ([`secret`]); the validated
//! declarations from [`declared`]. This module sits beside the edges (`http`, `s3`):
//! it calls the service layer and `s3::keys` like the CLI does, as the operator
//! ([`Caller::Admin`]); nothing below calls into it.

pub mod declared;
pub mod secret;

pub use declared::{Declared, DeclaredCache, DeclaredS3Key, DeclaredToken};
pub use secret::{SecretError, SecretFile};

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::auth::Caller;
use crate::config::Config;
use crate::meta::MetaError;
use crate::nix::signing::SecretKey;
use crate::s3::keys::{self, KeyError};
use crate::service::{
    CacheConfigPatch, CacheCreate, KeypairSpec, Larder, MintRequest, RetentionPeriod,
    RevokeRequest, ServiceError,
};

/// The shortest admin token accepted from `admin_token_file`: 128 bits as hex.
const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// A declaration that could not be made so. Start-up stops with it.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cache {cache}: {source}")]
    Cache { cache: String, source: ServiceError },
    #[error("token {sub}: {source}")]
    Token { sub: String, source: ServiceError },
    #[error("token {sub}: writing {path}: {source}")]
    TokenFile {
        sub: String,
        path: String,
        source: std::io::Error,
    },
    #[error("S3 bucket {bucket}: {source}")]
    S3Bucket { bucket: String, source: MetaError },
    #[error("S3 key {key}: {source}")]
    S3Key { key: String, source: KeyError },
    #[error("admin_token_file: {0}")]
    AdminToken(String),
}

/// What one start changed, one line per change (empty when nothing did).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub changes: Vec<String>,
}

impl Report {
    fn note(&mut self, line: String) {
        tracing::info!("{line}");
        self.changes.push(line);
    }
}

/// The admin token from `admin_token_file`, when the config names one (otherwise
/// `larder serve` keeps its own in `<data_dir>/admin.token`).
pub fn admin_token(config: &Config) -> Result<Option<String>, BootstrapError> {
    let Some(src) = &config.admin_token_file else {
        return Ok(None);
    };
    let t = src.read("admin_token_file")?;
    if t.len() < MIN_ADMIN_TOKEN_CHARS || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BootstrapError::AdminToken(format!(
            "the admin token must be at least {MIN_ADMIN_TOKEN_CHARS} printable characters without spaces (e.g. `openssl rand -hex 32`)"
        )));
    }
    Ok(Some(t))
}

/// Make the declared state so. Call after [`Larder::open`], before serving.
pub fn apply(larder: &Larder, declared: &Declared) -> Result<Report, BootstrapError> {
    let mut report = Report::default();
    for c in &declared.caches {
        apply_cache(larder, c, &mut report)?;
    }
    for t in &declared.tokens {
        apply_token(larder, t, &mut report)?;
    }
    for b in &declared.s3_buckets {
        let now_ms = crate::meta::now().saturating_mul(1000);
        let created =
            larder
                .meta
                .s3_bucket_create(b, now_ms)
                .map_err(|source| BootstrapError::S3Bucket {
                    bucket: b.clone(),
                    source,
                })?;
        if created {
            report.note(format!("created S3 bucket {b}"));
        }
    }
    for k in &declared.s3_keys {
        apply_s3_key(larder, k, &mut report)?;
    }
    Ok(report)
}

fn retention_row(r: RetentionPeriod) -> Option<i64> {
    match r {
        RetentionPeriod::Global => None,
        RetentionPeriod::Period(n) => Some(i64::from(n)),
    }
}

fn apply_cache(
    larder: &Larder,
    c: &DeclaredCache,
    report: &mut Report,
) -> Result<(), BootstrapError> {
    let err = |source: ServiceError| BootstrapError::Cache {
        cache: c.name.clone(),
        source,
    };
    let setting = format!("caches[{}].signing_key_file", c.name);
    let key = match &c.signing_key {
        Some(s) => {
            let text = s.read(&setting)?;
            // Normalised, and refused here (not logged) when it is not a key.
            let k = SecretKey::parse(&text).map_err(|e| {
                err(ServiceError::BadRequest(format!(
                    "{setting}: not a Nix secret key: {e}"
                )))
            })?;
            Some(k.to_nix_string())
        }
        None => None,
    };
    let row = larder
        .meta
        .cache_by_name(&c.name)
        .map_err(|e| err(e.into()))?;
    let Some(row) = row else {
        let defaults = CacheCreate::default();
        let req = CacheCreate {
            keypair: key
                .clone()
                .map(KeypairSpec::Keypair)
                .unwrap_or(KeypairSpec::Generate),
            is_public: c.is_public.unwrap_or(defaults.is_public),
            store_dir: c.store_dir.clone().unwrap_or(defaults.store_dir),
            priority: c.priority.unwrap_or(defaults.priority),
            upstream_cache_key_names: c
                .upstream_cache_key_names
                .clone()
                .unwrap_or(defaults.upstream_cache_key_names),
            upstreams: c.upstreams.clone().unwrap_or_default(),
        };
        larder
            .create_cache(&Caller::Admin, &c.name, &req)
            .map_err(err)?;
        if let Some(rp) = c.retention_period.filter(|r| *r != RetentionPeriod::Global) {
            let patch = CacheConfigPatch {
                retention_period: Some(rp),
                ..Default::default()
            };
            larder
                .configure_cache(&Caller::Admin, &c.name, &patch)
                .map_err(err)?;
        }
        report.note(format!("created cache {}", c.name));
        return Ok(());
    };
    let mut patch = CacheConfigPatch::default();
    let mut changed: Vec<&str> = Vec::new();
    if let Some(p) = c.is_public.filter(|p| *p != row.is_public) {
        patch.is_public = Some(p);
        changed.push("public");
    }
    if let Some(p) = c.priority.filter(|p| *p != row.priority) {
        patch.priority = Some(p);
        changed.push("priority");
    }
    if let Some(d) = c.store_dir.as_ref().filter(|d| **d != row.store_dir) {
        patch.store_dir = Some(d.clone());
        changed.push("store_dir");
    }
    if let Some(u) = c
        .upstream_cache_key_names
        .as_ref()
        .filter(|u| **u != row.upstream_cache_key_names)
    {
        patch.upstream_cache_key_names = Some(u.clone());
        changed.push("upstream_cache_key_names");
    }
    if let Some(u) = c.upstreams.as_ref().filter(|u| **u != row.upstreams) {
        patch.upstreams = Some(u.clone());
        changed.push("upstreams");
    }
    if let Some(r) = c
        .retention_period
        .filter(|r| retention_row(*r) != row.retention_period)
    {
        patch.retention_period = Some(r);
        changed.push("retention_period");
    }
    if let Some(k) = key {
        let current = SecretKey::parse(&row.signing_key).map(|s| s.to_nix_string());
        if current.ok().as_deref() != Some(k.as_str()) {
            patch.keypair = Some(KeypairSpec::Keypair(k));
            changed.push("signing key");
        }
    }
    if !changed.is_empty() {
        larder
            .configure_cache(&Caller::Admin, &c.name, &patch)
            .map_err(err)?;
        report.note(format!("updated cache {}: {}", c.name, changed.join(", ")));
    }
    Ok(())
}

/// Why the token in a declared token's file will not do.
fn unfit(larder: &Larder, t: &DeclaredToken, secret: &str) -> Option<(String, Option<String>)> {
    let got = match larder.inspect_token(&Caller::Admin, secret) {
        Ok(got) => got,
        Err(_) => return Some(("it is not a token this server can read".into(), None)),
    };
    let c = &got.claims;
    let reason = if got.revoked {
        return Some(("it was revoked".into(), None));
    } else if c.exp <= crate::meta::now() {
        return Some(("it expired".into(), None));
    } else if c.sub != t.sub {
        format!("it is for subject {:?}", c.sub)
    } else if c.caches != t.grants {
        "its grants differ from the config".to_owned()
    } else {
        return None;
    };
    Some((reason, Some(c.jti.clone())))
}

fn apply_token(
    larder: &Larder,
    t: &DeclaredToken,
    report: &mut Report,
) -> Result<(), BootstrapError> {
    let file_err = |source: std::io::Error| BootstrapError::TokenFile {
        sub: t.sub.clone(),
        path: t.file.display().to_string(),
        source,
    };
    let why = match std::fs::read_to_string(&t.file) {
        Ok(s) if s.trim().is_empty() => "its file is empty".to_owned(),
        Ok(s) => match unfit(larder, t, s.trim()) {
            None => return Ok(()),
            Some((why, old)) => {
                if let Some(jti) = old {
                    let req = RevokeRequest {
                        jti: Some(jti),
                        sub: None,
                    };
                    larder
                        .revoke_tokens(&Caller::Admin, &req)
                        .map_err(|source| BootstrapError::Token {
                            sub: t.sub.clone(),
                            source,
                        })?;
                }
                why
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "its file is missing".to_owned(),
        Err(e) => return Err(file_err(e)),
    };
    let req = MintRequest {
        sub: t.sub.clone(),
        validity_secs: t.validity_secs,
        not_before_secs: 0,
        caches: t.grants.clone(),
    };
    let minted =
        larder
            .mint_token(&Caller::Admin, &req)
            .map_err(|source| BootstrapError::Token {
                sub: t.sub.clone(),
                source,
            })?;
    write_secret_file(&t.file, &minted.token).map_err(file_err)?;
    report.note(format!(
        "minted token {} ({}) into {}: {why}",
        t.sub,
        minted.claims.jti,
        t.file.display()
    ));
    Ok(())
}

/// Write `secret` to `path` (mode 0600) so that a crash leaves the old file or the
/// new one, never a torn one. Missing parent directories are made 0700.
fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{secret}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn apply_s3_key(
    larder: &Larder,
    k: &DeclaredS3Key,
    report: &mut Report,
) -> Result<(), BootstrapError> {
    let err = |source: KeyError| BootstrapError::S3Key {
        key: k.name.clone(),
        source,
    };
    let id = k
        .access_key_id
        .read(&format!("s3_keys[{}].access_key_id_file", k.name))?;
    let secret = k
        .secret_access_key
        .read(&format!("s3_keys[{}].secret_access_key_file", k.name))?;
    let meta = &larder.meta;
    let existing = meta
        .s3_key_by_name(&k.name)
        .map_err(|e| err(KeyError::Meta(e)))?;
    let key = match existing {
        Some(cur) if cur.id == id && cur.secret == secret => cur,
        Some(_) => {
            keys::delete(meta, &k.name).map_err(err)?;
            let key = keys::import(meta, &id, &secret, &k.name).map_err(err)?;
            report.note(format!("replaced the credentials of S3 key {}", k.name));
            key
        }
        None => {
            let key = keys::import(meta, &id, &secret, &k.name).map_err(err)?;
            report.note(format!("imported S3 key {} ({id})", k.name));
            key
        }
    };
    let mut grants_changed = false;
    for g in &key.grants {
        let want = k.grants.iter().find(|w| w.pattern == g.pattern);
        let (r, w, o) = match want {
            None => (g.read, g.write, g.owner),
            Some(d) => (g.read && !d.read, g.write && !d.write, g.owner && !d.owner),
        };
        if r || w || o {
            keys::deny(meta, &k.name, &g.pattern, r, w, o).map_err(err)?;
            grants_changed = true;
        }
    }
    for d in &k.grants {
        let have = key.grants.iter().find(|g| g.pattern == d.pattern);
        let missing = match have {
            None => true,
            Some(g) => (d.read && !g.read) || (d.write && !g.write) || (d.owner && !g.owner),
        };
        if missing {
            keys::allow(meta, &k.name, &d.pattern, d.read, d.write, d.owner).map_err(err)?;
            grants_changed = true;
        }
    }
    if grants_changed {
        report.note(format!("set the bucket grants of S3 key {}", k.name));
    }
    Ok(())
}
