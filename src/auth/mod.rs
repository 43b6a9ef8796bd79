//! Who is calling, and what they may do.
//!
//! The HTTP edge extracts a token (Bearer in any case, or the Basic password with
//! any user, which is what a Nix netrc sends) and asks an [`Authenticator`] for a
//! [`Caller`]. Services then ask the caller about one cache and one
//! [`Permission`]. The bootstrap admin token is one authenticator; scoped tokens
//! plug in as another without changing callers.

pub mod grants;
pub mod paseto;

use std::sync::Arc;

pub use grants::{Grants, PermSet};
pub use paseto::{TokenAuthority, TokenClaims};

/// The seven permissions of Attic, and `metrics` (read `/metrics`: server-wide, so
/// it counts only when granted on the pattern `*`; see [`Caller::can_read_metrics`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    Pull,
    Push,
    Delete,
    CreateCache,
    ConfigureCache,
    ConfigureCacheRetention,
    DestroyCache,
    Metrics,
}

impl Permission {
    pub const ALL: [Permission; 8] = [
        Permission::Pull,
        Permission::Push,
        Permission::Delete,
        Permission::CreateCache,
        Permission::ConfigureCache,
        Permission::ConfigureCacheRetention,
        Permission::DestroyCache,
        Permission::Metrics,
    ];

    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Permission::Pull => "pull",
            Permission::Push => "push",
            Permission::Delete => "delete",
            Permission::CreateCache => "create-cache",
            Permission::ConfigureCache => "configure-cache",
            Permission::ConfigureCacheRetention => "configure-cache-retention",
            Permission::DestroyCache => "destroy-cache",
            Permission::Metrics => "metrics",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub enum Caller {
    /// No token was sent.
    Anonymous,
    /// The bootstrap admin token: every permission on every cache, and server
    /// administration (stats, verify, tokens).
    Admin,
    /// A scoped token.
    Token(Arc<TokenClaims>),
}

impl Caller {
    /// Whether the caller holds `perm` on the cache named `cache`.
    pub fn can(&self, cache: &str, perm: Permission) -> bool {
        match self {
            Caller::Anonymous => false,
            Caller::Admin => true,
            Caller::Token(c) => c.caches.for_cache(cache).contains(perm),
        }
    }

    /// Whether the caller holds any permission at all on `cache` (used so that a
    /// caller with none cannot tell a private cache from a missing one).
    pub fn has_any(&self, cache: &str) -> bool {
        match self {
            Caller::Anonymous => false,
            Caller::Admin => true,
            Caller::Token(c) => !c.caches.for_cache(cache).is_empty(),
        }
    }

    /// Whether the caller may read `/metrics`: the admin token, or a token granted
    /// `metrics` on the pattern `*` (the figures cover every cache).
    pub fn can_read_metrics(&self) -> bool {
        match self {
            Caller::Anonymous => false,
            Caller::Admin => true,
            Caller::Token(c) => c
                .caches
                .0
                .get(grants::METRICS_PATTERN)
                .is_some_and(|s| s.contains(Permission::Metrics)),
        }
    }

    /// Who, for logs.
    pub fn describe(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".into(),
            Caller::Admin => "admin".into(),
            Caller::Token(c) => format!("token {} ({})", c.jti, c.sub),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin)
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self, Caller::Anonymous)
    }
}

/// Why a presented token was refused. Never downgraded to anonymous.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token revoked")]
    Revoked,
    /// The token key could not be read or written: the operator's to fix.
    #[error("token key: {0}")]
    Key(String),
}

/// Turns a presented token into a caller.
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, token: Option<&str>) -> Result<Caller, AuthError>;
}

/// Extract a token from an `Authorization` header value: `Bearer <t>` (any case)
/// or `Basic base64(user:t)` with any user. `Ok(None)` when there is no header;
/// an unreadable header is an error rather than anonymous.
pub fn token_from_header(value: Option<&[u8]>) -> Result<Option<String>, AuthError> {
    use base64::Engine;
    let Some(raw) = value else {
        return Ok(None);
    };
    let s = std::str::from_utf8(raw)
        .map_err(|_| AuthError::Invalid)?
        .trim();
    let (scheme, rest) = s.split_once(' ').ok_or(AuthError::Invalid)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(AuthError::Invalid);
        }
        return Ok(Some(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| AuthError::Invalid)?;
        let text = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
        let (_, password) = text.split_once(':').ok_or(AuthError::Invalid)?;
        if password.is_empty() {
            return Ok(None);
        }
        return Ok(Some(password.to_owned()));
    }
    Err(AuthError::Invalid)
}

/// A fresh random token: 32 bytes as hex (never starts with `-`, so it is safe as
/// a command-line argument).
pub fn generate_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn header_forms() {
        assert_eq!(token_from_header(None), Ok(None));
        assert_eq!(
            token_from_header(Some(b"bearer abc")),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            token_from_header(Some(b"BEARER abc")),
            Ok(Some("abc".into()))
        );
        let basic = base64::engine::general_purpose::STANDARD.encode(":tok");
        assert_eq!(
            token_from_header(Some(format!("Basic {basic}").as_bytes())),
            Ok(Some("tok".into()))
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:tok");
        assert_eq!(
            token_from_header(Some(format!("basic {basic}").as_bytes())),
            Ok(Some("tok".into()))
        );
        assert_eq!(
            token_from_header(Some(b"Digest x")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            token_from_header(Some(b"Basic !!!")),
            Err(AuthError::Invalid)
        );
    }
}
