//! The `tokens` table: every scoped token larder minted, for listing and
//! revocation. The token itself (its secret) is never stored.

use rusqlite::{params, OptionalExtension, Row};

use super::{now, Meta, MetaError};

/// An issued token, as listed.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TokenRow {
    pub jti: String,
    pub sub: String,
    pub parent: Option<String>,
    pub chain: Vec<String>,
    /// JSON of the token's `caches` claim.
    pub caches: serde_json::Value,
    pub issued_at: i64,
    pub not_before: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

const COLUMNS: &str =
    "jti, sub, parent, chain, caches, issued_at, not_before, expires_at, revoked_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(TokenRow, String, String)> {
    Ok((
        TokenRow {
            jti: r.get(0)?,
            sub: r.get(1)?,
            parent: r.get(2)?,
            chain: Vec::new(),
            caches: serde_json::Value::Null,
            issued_at: r.get(5)?,
            not_before: r.get(6)?,
            expires_at: r.get(7)?,
            revoked_at: r.get(8)?,
        },
        r.get(3)?,
        r.get(4)?,
    ))
}

fn finish(t: (TokenRow, String, String)) -> Result<TokenRow, MetaError> {
    let (mut row, chain, caches) = t;
    row.chain = serde_json::from_str(&chain)
        .map_err(|e| MetaError::Damaged(format!("token {} chain: {e}", row.jti)))?;
    row.caches = serde_json::from_str(&caches)
        .map_err(|e| MetaError::Damaged(format!("token {} caches: {e}", row.jti)))?;
    Ok(row)
}

impl Meta {
    pub fn insert_token(&self, t: &TokenRow) -> Result<(), MetaError> {
        let c = self.conn()?;
        let chain =
            serde_json::to_string(&t.chain).map_err(|e| MetaError::Damaged(e.to_string()))?;
        c.execute(
            &format!("INSERT INTO tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                t.jti,
                t.sub,
                t.parent,
                chain,
                t.caches.to_string(),
                t.issued_at,
                t.not_before,
                t.expires_at,
                t.revoked_at
            ],
        )?;
        Ok(())
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare(&format!(
            "SELECT {COLUMNS} FROM tokens ORDER BY issued_at, jti"
        ))?;
        let rows = st.query_map([], from_row)?;
        rows.map(|r| finish(r?)).collect()
    }

    pub fn token(&self, jti: &str) -> Result<Option<TokenRow>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached(&format!("SELECT {COLUMNS} FROM tokens WHERE jti = ?1"))?;
        st.query_row([jti], from_row)
            .optional()?
            .map(finish)
            .transpose()
    }

    /// Revoke by id; returns how many rows changed (0 when unknown or already revoked).
    pub fn revoke_token(&self, jti: &str) -> Result<usize, MetaError> {
        let c = self.conn()?;
        Ok(c.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE jti = ?1 AND revoked_at IS NULL",
            params![jti, now()],
        )?)
    }

    /// Revoke every token of a subject; returns how many.
    pub fn revoke_tokens_of(&self, sub: &str) -> Result<usize, MetaError> {
        let c = self.conn()?;
        Ok(c.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE sub = ?1 AND revoked_at IS NULL",
            params![sub, now()],
        )?)
    }

    /// Ids of every revoked token.
    pub fn revoked_token_ids(&self) -> Result<Vec<String>, MetaError> {
        let c = self.conn()?;
        let mut st = c.prepare_cached("SELECT jti FROM tokens WHERE revoked_at IS NOT NULL")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
