//! Minting, listing, revoking and inspecting scoped tokens.
//!
//! The operator (admin token, or the CLI on the data dir) mints any token. A
//! scoped token may mint a narrower one (delegation): a subset of its patterns and
//! permissions (see [`Grants::allows_delegating`]) and an expiry no later than its
//! own. The child's `chain` names its ancestors, so revoking a parent revokes it.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{require_admin, Larder, ServiceError};
use crate::auth::grants::validate_pattern;
use crate::auth::{Caller, Grants, TokenClaims};
use crate::meta::{now, TokenRow};

/// A request to mint a token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    pub sub: String,
    /// Seconds from now until expiry.
    pub validity_secs: u64,
    /// Seconds from now until the token is valid (default 0).
    #[serde(default)]
    pub not_before_secs: u64,
    pub caches: Grants,
}

/// A freshly minted token: the secret is shown once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Minted {
    pub token: String,
    pub claims: TokenClaims,
}

/// What `token inspect` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Inspected {
    pub claims: TokenClaims,
    pub revoked: bool,
}

/// Which tokens to revoke.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
}

/// The longest validity a token may ask for: 100 years.
const MAX_VALIDITY_SECS: u64 = 100 * 365 * 24 * 3600;

impl Larder {
    pub fn mint_token(&self, caller: &Caller, req: &MintRequest) -> Result<Minted, ServiceError> {
        if req.sub.trim().is_empty() || req.sub.len() > 256 {
            return Err(ServiceError::BadRequest(
                "token subject must be 1-256 characters".into(),
            ));
        }
        if req.caches.0.is_empty() {
            return Err(ServiceError::BadRequest(
                "a token needs at least one cache pattern".into(),
            ));
        }
        for p in req.caches.0.keys() {
            validate_pattern(p).map_err(ServiceError::BadRequest)?;
        }
        if req.validity_secs == 0 || req.validity_secs > MAX_VALIDITY_SECS {
            return Err(ServiceError::BadRequest(
                "validity must be between 1 s and 100 years".into(),
            ));
        }
        let now = now();
        let exp = now.saturating_add(req.validity_secs as i64);
        let nbf = now.saturating_add(req.not_before_secs.min(MAX_VALIDITY_SECS) as i64);
        let chain = match caller {
            Caller::Anonymous => return Err(ServiceError::Unauthorized("missing token".into())),
            Caller::Admin => Vec::new(),
            Caller::Token(parent) => {
                parent
                    .caches
                    .allows_delegating(&req.caches)
                    .map_err(|e| ServiceError::Forbidden(format!("cannot delegate: {e}")))?;
                if exp > parent.exp {
                    return Err(ServiceError::Forbidden(
                        "cannot delegate: the new token would outlive the caller's".into(),
                    ));
                }
                let mut chain = parent.chain.clone();
                chain.push(parent.jti.clone());
                chain
            }
        };
        let claims = TokenClaims {
            jti: crate::auth::generate_token()[..32].to_owned(),
            sub: req.sub.clone(),
            iat: now,
            nbf,
            exp,
            caches: req.caches.clone(),
            chain,
        };
        let token = self
            .tokens
            .mint(&claims)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        self.meta.insert_token(&TokenRow {
            jti: claims.jti.clone(),
            sub: claims.sub.clone(),
            parent: claims.chain.last().cloned(),
            chain: claims.chain.clone(),
            caches: serde_json::to_value(&claims.caches)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
            issued_at: claims.iat,
            not_before: claims.nbf,
            expires_at: claims.exp,
            revoked_at: None,
        })?;
        tracing::info!(jti = %claims.jti, sub = %claims.sub, by = %caller.describe(), "minted token");
        Ok(Minted { token, claims })
    }

    pub fn list_tokens(&self, caller: &Caller) -> Result<Vec<TokenRow>, ServiceError> {
        require_admin(caller)?;
        Ok(self.meta.list_tokens()?)
    }

    /// Revoke one token (and so its descendants) or every token of a subject.
    /// The operator may revoke anything; a token may revoke its own descendants.
    pub fn revoke_tokens(
        &self,
        caller: &Caller,
        req: &RevokeRequest,
    ) -> Result<usize, ServiceError> {
        let n = match (&req.jti, &req.sub) {
            (Some(jti), None) => {
                if !caller.is_admin() {
                    let Caller::Token(me) = caller else {
                        return Err(ServiceError::Unauthorized("missing token".into()));
                    };
                    let row = self.meta.token(jti)?;
                    if !row.is_some_and(|r| r.chain.contains(&me.jti)) {
                        return Err(ServiceError::Forbidden(
                            "a token may only revoke tokens it delegated".into(),
                        ));
                    }
                }
                let n = self.meta.revoke_token(jti)?;
                if n == 0 && self.meta.token(jti)?.is_none() {
                    return Err(ServiceError::NotFound(format!("no token {jti}")));
                }
                n
            }
            (None, Some(sub)) => {
                require_admin(caller)?;
                self.meta.revoke_tokens_of(sub)?
            }
            _ => {
                return Err(ServiceError::BadRequest(
                    "name exactly one of jti or sub".into(),
                ))
            }
        };
        self.refresh_revoked()?;
        tracing::info!(jti = ?req.jti, sub = ?req.sub, n, by = %caller.describe(), "revoked tokens");
        Ok(n)
    }

    pub fn inspect_token(&self, caller: &Caller, token: &str) -> Result<Inspected, ServiceError> {
        require_admin(caller)?;
        let claims = self
            .tokens
            .decode(token.trim())
            .or_else(|e| match e {
                // Inspecting an expired token is still useful.
                crate::auth::AuthError::Expired | crate::auth::AuthError::NotYetValid => {
                    self.tokens.decode_ignoring_time(token.trim())
                }
                other => Err(other),
            })
            .map_err(|e| ServiceError::BadRequest(format!("cannot read token: {e}")))?;
        let revoked: HashSet<String> = self.meta.revoked_token_ids()?.into_iter().collect();
        let is_revoked =
            revoked.contains(&claims.jti) || claims.chain.iter().any(|j| revoked.contains(j));
        Ok(Inspected {
            claims,
            revoked: is_revoked,
        })
    }

    /// Reload the revoked set from the database (the server does this often, so a
    /// revocation by another process takes effect within a second).
    pub fn refresh_revoked(&self) -> Result<(), ServiceError> {
        let ids = self.meta.revoked_token_ids()?;
        self.tokens.set_revoked(ids.into_iter().collect());
        Ok(())
    }
}
