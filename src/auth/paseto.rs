//! Scoped tokens: PASETO v4.local (encrypted and authenticated with a key kept in
//! `<data-dir>/token.key`, 0600), so they are opaque to clients.
//!
//! Claims: `sub`, `jti`, `iat`, `nbf`, `exp` (RFC 3339, as PASETO registers them),
//! `caches` (pattern -> permission names) and `chain` (the jti of every ancestor,
//! root first, for delegated tokens). Revoking a token revokes every token whose
//! chain names it; the revoked set is held in memory and refreshed from the
//! metadata database by the server.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use pasetors::claims::{Claims, ClaimsValidationRules};
use pasetors::keys::SymmetricKey;
use pasetors::token::UntrustedToken;
use pasetors::version4::V4;
use pasetors::{local, Local};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::grants::Grants;
use super::{AuthError, Authenticator, Caller};

/// Every larder token starts with this.
pub const TOKEN_PREFIX: &str = "v4.local.";

/// What a token says about its holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub jti: String,
    pub sub: String,
    /// Unix seconds.
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub caches: Grants,
    /// Ancestors' jtis, root first; empty for a token minted by the operator.
    #[serde(default)]
    pub chain: Vec<String>,
}

fn rfc3339(t: i64) -> Result<String, AuthError> {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .ok_or_else(|| AuthError::Key(format!("time {t} cannot be written")))
}

fn unix(v: Option<&serde_json::Value>) -> Result<i64, AuthError> {
    v.and_then(|v| v.as_str())
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        .map(|d| d.unix_timestamp())
        .ok_or(AuthError::Invalid)
}

/// Mints and checks tokens; also accepts the bootstrap admin token.
pub struct TokenAuthority {
    key: SymmetricKey<V4>,
    admin: Option<String>,
    revoked: RwLock<Arc<HashSet<String>>>,
    /// Tokens already decrypted, so a client sending the same token on every
    /// request pays for the cryptography once. Times and revocation are still
    /// checked on every use.
    verified: Mutex<HashMap<String, Arc<TokenClaims>>>,
}

/// How many decrypted tokens are remembered before the memo is cleared.
const VERIFIED_MEMO_MAX: usize = 4096;

impl TokenAuthority {
    /// Load `<dir>/token.key`, creating it (0600) when absent.
    pub fn open(dir: &Path, admin: Option<String>) -> Result<Self, AuthError> {
        let path = dir.join("token.key");
        let hex_key = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
                let hex_key = hex::encode(bytes);
                let tmp = dir.join("token.key.tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| AuthError::Key(format!("creating {}: {e}", tmp.display())))?;
                f.write_all(hex_key.as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| AuthError::Key(format!("writing {}: {e}", tmp.display())))?;
                // Two processes may race to create it: the first rename wins, and
                // both then read what is on disk.
                if std::fs::hard_link(&tmp, &path).is_err() && !path.exists() {
                    return Err(AuthError::Key(format!("creating {}", path.display())));
                }
                let _ = std::fs::remove_file(&tmp);
                std::fs::read_to_string(&path)
                    .map_err(|e| AuthError::Key(format!("reading {}: {e}", path.display())))?
                    .trim()
                    .to_owned()
            }
            Err(e) => return Err(AuthError::Key(format!("reading {}: {e}", path.display()))),
        };
        let bytes = hex::decode(&hex_key)
            .map_err(|_| AuthError::Key(format!("{} is not hex", path.display())))?;
        let key = SymmetricKey::<V4>::from(&bytes)
            .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
        Ok(Self {
            key,
            admin,
            revoked: RwLock::new(Arc::new(HashSet::new())),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Encrypt claims into a token.
    pub fn mint(&self, c: &TokenClaims) -> Result<String, AuthError> {
        let err = |e: pasetors::errors::Error| AuthError::Key(format!("minting token: {e}"));
        let mut claims = Claims::new().map_err(err)?;
        claims.token_identifier(&c.jti).map_err(err)?;
        claims.subject(&c.sub).map_err(err)?;
        claims.issued_at(&rfc3339(c.iat)?).map_err(err)?;
        claims.not_before(&rfc3339(c.nbf)?).map_err(err)?;
        claims.expiration(&rfc3339(c.exp)?).map_err(err)?;
        let caches = serde_json::to_value(&c.caches).map_err(|e| AuthError::Key(e.to_string()))?;
        claims.add_additional("caches", caches).map_err(err)?;
        claims
            .add_additional("chain", serde_json::json!(c.chain))
            .map_err(err)?;
        local::encrypt(&self.key, &claims, None, None).map_err(err)
    }

    /// Decrypt and check a token's time window (not revocation).
    pub fn decode(&self, token: &str) -> Result<TokenClaims, AuthError> {
        self.open_token(token, true)
    }

    /// Decrypt without checking times (for `token inspect`).
    pub fn decode_ignoring_time(&self, token: &str) -> Result<TokenClaims, AuthError> {
        self.open_token(token, false)
    }

    fn open_token(&self, token: &str, check_time: bool) -> Result<TokenClaims, AuthError> {
        use pasetors::errors::{ClaimValidationError as C, Error as E};
        let untrusted =
            UntrustedToken::<Local, V4>::try_from(token).map_err(|_| AuthError::Invalid)?;
        let trusted = pasetors::version4::LocalToken::decrypt(&self.key, &untrusted, None, None)
            .map_err(|_| AuthError::Invalid)?;
        let claims = Claims::from_string(trusted.payload()).map_err(|_| AuthError::Invalid)?;
        if check_time {
            ClaimsValidationRules::new()
                .validate_claims(&claims)
                .map_err(|e| match e {
                    E::ClaimValidation(C::Exp) => AuthError::Expired,
                    E::ClaimValidation(C::Nbf) | E::ClaimValidation(C::Iat) => {
                        AuthError::NotYetValid
                    }
                    _ => AuthError::Invalid,
                })?;
        }
        let get_str = |k: &str| {
            claims
                .get_claim(k)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or(AuthError::Invalid)
        };
        let caches: Grants = claims
            .get_claim("caches")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or(AuthError::Invalid)?;
        let chain: Vec<String> = claims
            .get_claim("chain")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        Ok(TokenClaims {
            jti: get_str("jti")?,
            sub: get_str("sub")?,
            iat: unix(claims.get_claim("iat"))?,
            nbf: unix(claims.get_claim("nbf"))?,
            exp: unix(claims.get_claim("exp"))?,
            caches,
            chain,
        })
    }

    /// Replace the set of revoked token ids.
    pub fn set_revoked(&self, ids: HashSet<String>) {
        if let Ok(mut r) = self.revoked.write() {
            *r = Arc::new(ids);
        }
    }

    fn is_revoked(&self, c: &TokenClaims) -> bool {
        let set = match self.revoked.read() {
            Ok(r) => r.clone(),
            // A poisoned lock must not let revoked tokens through.
            Err(_) => return true,
        };
        set.contains(&c.jti) || c.chain.iter().any(|j| set.contains(j))
    }
}

impl Authenticator for TokenAuthority {
    fn authenticate(&self, token: Option<&str>) -> Result<Caller, AuthError> {
        let Some(t) = token else {
            return Ok(Caller::Anonymous);
        };
        if let Some(admin) = &self.admin {
            if bool::from(t.as_bytes().ct_eq(admin.as_bytes())) {
                return Ok(Caller::Admin);
            }
        }
        if !t.starts_with(TOKEN_PREFIX) {
            return Err(AuthError::Invalid);
        }
        let memo = self.verified.lock().ok().and_then(|m| m.get(t).cloned());
        let claims = match memo {
            Some(c) => {
                let now = OffsetDateTime::now_utc().unix_timestamp();
                if now > c.exp {
                    return Err(AuthError::Expired);
                }
                if now < c.nbf || now < c.iat {
                    return Err(AuthError::NotYetValid);
                }
                c
            }
            None => {
                let c = Arc::new(self.decode(t)?);
                if let Ok(mut m) = self.verified.lock() {
                    if m.len() >= VERIFIED_MEMO_MAX {
                        m.clear();
                    }
                    m.insert(t.to_owned(), c.clone());
                }
                c
            }
        };
        if self.is_revoked(&claims) {
            return Err(AuthError::Revoked);
        }
        Ok(Caller::Token(claims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::grants::PermSet;
    use crate::auth::Permission;

    fn claims(nbf_delta: i64, exp_delta: i64) -> TokenClaims {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut set = PermSet::default();
        set.insert(Permission::Pull);
        TokenClaims {
            jti: "id-1".into(),
            sub: "alice".into(),
            iat: now,
            nbf: now + nbf_delta,
            exp: now + exp_delta,
            caches: Grants([("team-*".to_string(), set)].into_iter().collect()),
            chain: vec!["root".into()],
        }
    }

    #[test]
    fn mint_decode_expire_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let a = TokenAuthority::open(dir.path(), Some("adm".into())).unwrap();
        let c = claims(0, 3600);
        let t = a.mint(&c).unwrap();
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(a.decode(&t).unwrap(), c);
        match a.authenticate(Some(&t)).unwrap() {
            Caller::Token(got) => {
                assert!(got.caches.for_cache("team-x").contains(Permission::Pull))
            }
            other => panic!("{other:?}"),
        }
        assert!(a.authenticate(Some("adm")).unwrap().is_admin());
        let expired = a.mint(&claims(-7200, -3600)).unwrap();
        assert_eq!(
            a.authenticate(Some(&expired)).unwrap_err(),
            AuthError::Expired
        );
        let early = a.mint(&claims(3600, 7200)).unwrap();
        assert_eq!(
            a.authenticate(Some(&early)).unwrap_err(),
            AuthError::NotYetValid
        );
        a.set_revoked(["root".to_string()].into_iter().collect());
        assert_eq!(a.authenticate(Some(&t)).unwrap_err(), AuthError::Revoked);
        // Another data dir's key cannot read it.
        let other = tempfile::tempdir().unwrap();
        let b = TokenAuthority::open(other.path(), None).unwrap();
        assert_eq!(b.authenticate(Some(&t)).unwrap_err(), AuthError::Invalid);
        // The key persists.
        let again = TokenAuthority::open(dir.path(), None).unwrap();
        assert_eq!(again.decode(&t).unwrap(), c);
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let dir = tempfile::tempdir().unwrap();
        let a = TokenAuthority::open(dir.path(), None).unwrap();
        let t = a.mint(&claims(0, 1)).unwrap();
        assert!(matches!(a.authenticate(Some(&t)), Ok(Caller::Token(_))));
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(a.authenticate(Some(&t)).unwrap_err(), AuthError::Expired);
    }
}
