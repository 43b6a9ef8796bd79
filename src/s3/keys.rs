//! Access keys: minting and importing credentials, name and pattern rules, and
//! what a key's grants allow on a bucket.
//!
//! A key holds grants of read, write and owner rights on bucket-name patterns,
//! where `*` matches any run of characters (so `*` alone is every bucket). The
//! rights are additive across patterns. This file is shared by the server (which
//! checks a request's key) and the `larder s3 key` commands (which manage keys on
//! the data dir); it does no HTTP.

use rand::RngCore;

use crate::meta::{KeyInsert, Meta, MetaError, S3Grant, S3Key};

/// Access key ids larder mints: `LK` and 24 hex digits (12 random bytes).
const MINTED_ID_RANDOM_BYTES: usize = 12;
/// Secrets larder mints: 64 hex digits (32 random bytes).
const MINTED_SECRET_RANDOM_BYTES: usize = 32;

/// One right a request needs on a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    Read,
    Write,
    Owner,
}

impl Right {
    pub fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Owner => "owner",
        }
    }
}

/// Errors managing keys: each one the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("no S3 key named {0:?}")]
    NoSuchKey(String),
    #[error("an S3 key named {0:?} already exists")]
    NameTaken(String),
    #[error("access key id {0:?} already exists with another name or secret")]
    IdTaken(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Does `pattern` (with `*` wildcards) match all of `name`?
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    // Iterative glob with backtracking to the last star.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// May a key with `grants` use `right` on `bucket`?
pub fn allows(grants: &[S3Grant], bucket: &str, right: Right) -> bool {
    grants.iter().any(|g| {
        let has = match right {
            Right::Read => g.read,
            Right::Write => g.write,
            Right::Owner => g.owner,
        };
        has && pattern_matches(&g.pattern, bucket)
    })
}

/// Does a key with `grants` hold any right on `bucket` (to see it listed)?
pub fn sees(grants: &[S3Grant], bucket: &str) -> bool {
    grants
        .iter()
        .any(|g| (g.read || g.write || g.owner) && pattern_matches(&g.pattern, bucket))
}

/// Key names: 1-64 of `A-Z a-z 0-9 - _ .`, starting with a letter or digit.
pub fn validate_key_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::Invalid(format!(
            "invalid key name {name:?}: use 1-64 of A-Z a-z 0-9 - _ ., starting with a letter or digit"
        )))
    }
}

/// Bucket patterns: bucket-name characters (`a-z 0-9 . -`) and `*`, 1-63 long.
pub fn validate_pattern(pattern: &str) -> Result<(), KeyError> {
    let ok = !pattern.is_empty()
        && pattern.len() <= 63
        && pattern.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'*')
        });
    if ok {
        Ok(())
    } else {
        Err(KeyError::Invalid(format!(
            "invalid bucket pattern {pattern:?}: use bucket-name characters (a-z 0-9 . -) and * as a wildcard"
        )))
    }
}

/// Imported access key ids: 16-128 of `A-Z a-z 0-9`.
fn validate_id(id: &str) -> Result<(), KeyError> {
    if (16..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(KeyError::Invalid(format!(
            "invalid access key id {id:?}: use 16-128 letters and digits"
        )))
    }
}

/// Imported secrets: 16-128 printable ASCII characters without spaces.
fn validate_secret(secret: &str) -> Result<(), KeyError> {
    if (16..=128).contains(&secret.len()) && secret.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(KeyError::Invalid(
            "invalid secret: use 16-128 printable ASCII characters without spaces".into(),
        ))
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Mint a key named `name` with fresh credentials. The secret is returned once.
pub fn create(meta: &Meta, name: &str) -> Result<S3Key, KeyError> {
    validate_key_name(name)?;
    let id = format!(
        "LK{}",
        random_hex(MINTED_ID_RANDOM_BYTES).to_ascii_uppercase()
    );
    let secret = random_hex(MINTED_SECRET_RANDOM_BYTES);
    insert(meta, &id, name, &secret)
}

/// Record a key with fixed credentials. Importing the same id, name and secret
/// again succeeds and changes nothing.
pub fn import(meta: &Meta, id: &str, secret: &str, name: &str) -> Result<S3Key, KeyError> {
    validate_key_name(name)?;
    validate_id(id)?;
    validate_secret(secret)?;
    insert(meta, id, name, secret)
}

fn insert(meta: &Meta, id: &str, name: &str, secret: &str) -> Result<S3Key, KeyError> {
    match meta.s3_key_insert(id, name, secret, crate::meta::now())? {
        KeyInsert::Created | KeyInsert::AlreadyThere => {}
        KeyInsert::NameTaken => return Err(KeyError::NameTaken(name.into())),
        KeyInsert::IdTaken => return Err(KeyError::IdTaken(id.into())),
    }
    meta.s3_key_by_id(id)?
        .ok_or_else(|| KeyError::NoSuchKey(name.into()))
}

/// Grant rights on a pattern (adding to what the key has there).
pub fn allow(
    meta: &Meta,
    name: &str,
    pattern: &str,
    read: bool,
    write: bool,
    owner: bool,
) -> Result<S3Grant, KeyError> {
    validate_pattern(pattern)?;
    if !(read || write || owner) {
        return Err(KeyError::Invalid(
            "say which rights to grant: --read, --write and/or --owner".into(),
        ));
    }
    meta.s3_grant(name, pattern, read, write, owner)?
        .ok_or_else(|| KeyError::NoSuchKey(name.into()))
}

/// Take rights on a pattern away; with no right named, the whole grant goes.
/// Returns what remains of the grant.
pub fn deny(
    meta: &Meta,
    name: &str,
    pattern: &str,
    read: bool,
    write: bool,
    owner: bool,
) -> Result<Option<S3Grant>, KeyError> {
    validate_pattern(pattern)?;
    let all = !(read || write || owner);
    meta.s3_revoke(name, pattern, read || all, write || all, owner || all)?
        .ok_or_else(|| KeyError::NoSuchKey(name.into()))
}

/// Delete a key by name.
pub fn delete(meta: &Meta, name: &str) -> Result<(), KeyError> {
    if meta.s3_key_delete(name)? {
        Ok(())
    } else {
        Err(KeyError::NoSuchKey(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(pattern: &str, read: bool, write: bool, owner: bool) -> S3Grant {
        S3Grant {
            pattern: pattern.into(),
            read,
            write,
            owner,
        }
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("*", ""));
        assert!(pattern_matches("team-*", "team-a"));
        assert!(pattern_matches("team-*", "team-"));
        assert!(!pattern_matches("team-*", "team"));
        assert!(pattern_matches("*-logs", "web-logs"));
        assert!(pattern_matches("a*b*c", "axxbyyc"));
        assert!(!pattern_matches("a*b*c", "axxbyy"));
        assert!(pattern_matches("exact", "exact"));
        assert!(!pattern_matches("exact", "exact2"));
        assert!(pattern_matches("**x", "yyx"));
    }

    #[test]
    fn rights_add_up_over_patterns() {
        let grants = [g("*", true, false, false), g("mine-*", false, true, true)];
        assert!(allows(&grants, "other", Right::Read));
        assert!(!allows(&grants, "other", Right::Write));
        assert!(allows(&grants, "mine-1", Right::Write));
        assert!(allows(&grants, "mine-1", Right::Owner));
        assert!(sees(&grants, "other"));
        assert!(!sees(&[g("x", false, false, false)], "x"));
    }

    #[test]
    fn names_and_patterns_are_checked() {
        assert!(validate_key_name("ci-runner_1").is_ok());
        assert!(validate_key_name("-x").is_err());
        assert!(validate_key_name("a b").is_err());
        assert!(validate_pattern("*").is_ok());
        assert!(validate_pattern("Team").is_err());
        assert!(validate_pattern("a/b").is_err());
        assert!(validate_id("GK31c2f218a2e44f485b94239e").is_ok());
        assert!(validate_id("short").is_err());
        assert!(validate_secret(
            "b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835"
        )
        .is_ok());
        assert!(validate_secret("has space in it!!").is_err());
    }

    #[test]
    fn create_import_allow_deny() {
        let d = tempfile::tempdir().unwrap();
        let m = Meta::open(d.path()).unwrap();
        let k = create(&m, "ci").unwrap();
        assert!(k.id.starts_with("LK") && k.id.len() == 26);
        assert_eq!(k.secret.len(), 64);
        assert!(matches!(create(&m, "ci"), Err(KeyError::NameTaken(_))));
        let id = "GK31c2f218a2e44f485b94239e";
        let secret = "b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835";
        import(&m, id, secret, "boot").unwrap();
        import(&m, id, secret, "boot").unwrap();
        assert!(matches!(
            import(&m, id, "another-secret-value", "boot"),
            Err(KeyError::IdTaken(_))
        ));
        assert!(allow(&m, "boot", "*", false, false, false).is_err());
        allow(&m, "boot", "*", true, true, true).unwrap();
        let left = deny(&m, "boot", "*", false, false, true).unwrap().unwrap();
        assert!(left.read && left.write && !left.owner);
        assert_eq!(deny(&m, "boot", "*", false, false, false).unwrap(), None);
        assert!(matches!(
            allow(&m, "nobody", "*", true, false, false),
            Err(KeyError::NoSuchKey(_))
        ));
        delete(&m, "boot").unwrap();
        assert!(delete(&m, "boot").is_err());
    }
}
