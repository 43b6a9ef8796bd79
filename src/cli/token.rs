//! `larder token create|list|revoke|inspect`: scoped tokens, minted on the data
//! dir (operator) or over the API (operator, or delegation from a token).

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clap::Subcommand;

use larder::auth::{Caller, Grants, PermSet, Permission};
use larder::meta::TokenRow;
use larder::service::{Inspected, MintRequest, Minted, RevokeRequest};

use super::{svc, Session, Target};

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Mint a token (flags as in `atticadm make-token`; each can repeat).
    Create {
        #[command(flatten)]
        target: Target,
        /// Subject: who or what holds the token.
        #[arg(long)]
        sub: String,
        /// How long it is valid: e.g. 1y, 30d, 12h, 90m, 3600s.
        #[arg(long)]
        validity: String,
        /// Not valid until this far in the future (same units).
        #[arg(long)]
        not_before: Option<String>,
        #[arg(long = "pull", value_name = "PATTERN")]
        pull: Vec<String>,
        #[arg(long = "push", value_name = "PATTERN")]
        push: Vec<String>,
        #[arg(long = "delete", value_name = "PATTERN")]
        delete: Vec<String>,
        #[arg(long = "create-cache", value_name = "PATTERN")]
        create_cache: Vec<String>,
        #[arg(long = "configure-cache", value_name = "PATTERN")]
        configure_cache: Vec<String>,
        #[arg(long = "configure-cache-retention", value_name = "PATTERN")]
        configure_cache_retention: Vec<String>,
        #[arg(long = "destroy-cache", value_name = "PATTERN")]
        destroy_cache: Vec<String>,
        /// May read `/metrics` (granted on the pattern `*`: the figures cover every
        /// cache).
        #[arg(long)]
        metrics: bool,
        /// Print `{"token": …, "claims": …}`.
        #[arg(long)]
        json: bool,
    },
    /// List issued tokens (never their secrets).
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (and every token it delegated), or all of a subject's.
    Revoke {
        #[command(flatten)]
        target: Target,
        /// Token id (jti).
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        sub: Option<String>,
    },
    /// Show what a token grants.
    Inspect {
        #[command(flatten)]
        target: Target,
        /// The token to read.
        #[arg(value_name = "TOKEN")]
        secret: String,
        #[arg(long)]
        json: bool,
    },
}

/// `1y`, `30d`, `12h`, `90m`, `3600s` (or bare seconds).
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("duration {s:?}: expected a number then y, w, d, h, m or s"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        other => bail!("duration {s:?}: unknown unit {other:?} (use y, w, d, h, m or s)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("duration {s:?} is too long"))
}

fn describe_grants(g: &serde_json::Value) -> String {
    match serde_json::from_value::<Grants>(g.clone()) {
        Ok(grants) => grants
            .0
            .iter()
            .map(|(p, set)| {
                let names: Vec<&str> = set.iter().map(Permission::name).collect();
                format!("{p}:{}", names.join(","))
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => g.to_string(),
    }
}

fn when(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    let admin = Caller::Admin;
    match cmd {
        TokenCommand::Create {
            target,
            sub,
            validity,
            not_before,
            pull,
            push,
            delete,
            create_cache,
            configure_cache,
            configure_cache_retention,
            destroy_cache,
            metrics,
            json,
        } => {
            let mut caches: BTreeMap<String, PermSet> = BTreeMap::new();
            for (perm, patterns) in [
                (Permission::Pull, pull),
                (Permission::Push, push),
                (Permission::Delete, delete),
                (Permission::CreateCache, create_cache),
                (Permission::ConfigureCache, configure_cache),
                (
                    Permission::ConfigureCacheRetention,
                    configure_cache_retention,
                ),
                (Permission::DestroyCache, destroy_cache),
            ] {
                for p in patterns {
                    caches.entry(p).or_default().insert(perm);
                }
            }
            if metrics {
                caches
                    .entry(larder::auth::grants::METRICS_PATTERN.to_owned())
                    .or_default()
                    .insert(Permission::Metrics);
            }
            let req = MintRequest {
                sub,
                validity_secs: parse_duration(&validity)?,
                not_before_secs: not_before
                    .as_deref()
                    .map(parse_duration)
                    .transpose()?
                    .unwrap_or(0),
                caches: Grants(caches),
            };
            let minted: Minted = match target.session(false)? {
                Session::Remote(c) => {
                    c.call("POST", "/_api/v1/tokens", Some(serde_json::to_value(&req)?))?
                }
                Session::Local(l) => svc(l.mint_token(&admin, &req))?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&minted)?);
            } else {
                println!("{}", minted.token);
            }
        }
        TokenCommand::List { target, json } => {
            let rows: Vec<TokenRow> = match target.session(false)? {
                Session::Remote(c) => c.call("GET", "/_api/v1/tokens", None)?,
                Session::Local(l) => svc(l.list_tokens(&admin))?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                eprintln!("no tokens (the admin token is not listed; mint one with `larder token create`)");
            } else {
                for r in &rows {
                    let state = match r.revoked_at {
                        Some(t) => format!("revoked {}", when(t)),
                        None => format!("expires {}", when(r.expires_at)),
                    };
                    println!(
                        "{}\t{}\t{}\t{}",
                        r.jti,
                        r.sub,
                        describe_grants(&r.caches),
                        state
                    );
                }
            }
        }
        TokenCommand::Revoke { target, id, sub } => {
            let req = RevokeRequest { jti: id, sub };
            if req.jti.is_none() && req.sub.is_none() {
                bail!("name a token id, or --sub SUBJECT");
            }
            let n: usize = match target.session(false)? {
                Session::Remote(c) => {
                    let v: serde_json::Value = c.call(
                        "POST",
                        "/_api/v1/tokens/revoke",
                        Some(serde_json::to_value(&req)?),
                    )?;
                    v.get("revoked").and_then(|n| n.as_u64()).unwrap_or(0) as usize
                }
                Session::Local(l) => svc(l.revoke_tokens(&admin, &req))?,
            };
            println!("revoked {n} token(s)");
        }
        TokenCommand::Inspect {
            target,
            secret,
            json,
        } => {
            let session = target.session(false)?;
            if !secret.trim().starts_with("v4.local.") {
                return inspect_admin(&session, secret.trim(), json);
            }
            let got: Inspected = match session {
                Session::Remote(c) => c.call(
                    "POST",
                    "/_api/v1/tokens/inspect",
                    Some(serde_json::json!({ "token": secret })),
                )?,
                Session::Local(l) => svc(l.inspect_token(&admin, &secret))?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&got)?);
            } else {
                let c = &got.claims;
                println!("id:         {}", c.jti);
                println!("subject:    {}", c.sub);
                println!("issued:     {}", when(c.iat));
                println!("not before: {}", when(c.nbf));
                println!("expires:    {}", when(c.exp));
                println!(
                    "caches:     {}",
                    describe_grants(&serde_json::to_value(&c.caches)?)
                );
                if !c.chain.is_empty() {
                    println!("delegated:  via {}", c.chain.join(" -> "));
                }
                println!("revoked:    {}", got.revoked);
            }
        }
    }
    Ok(())
}

/// `token inspect` of something that is not a PASETO token: the admin token (64
/// hex characters in `admin.token`, or `admin_token_file`) is a shared secret, not
/// a token with claims. Say whether it is this server's, and what it may do.
fn inspect_admin(session: &Session, secret: &str, json: bool) -> anyhow::Result<()> {
    let is_admin = match session {
        // Only the admin token may list tokens.
        Session::Remote(c) => c
            .with_token(Some(secret.to_owned()))
            .call::<serde_json::Value>("GET", "/_api/v1/tokens", None)
            .is_ok(),
        Session::Local(l) => {
            let expected = match larder::bootstrap::admin_token(&l.config)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                Some(t) => t,
                None => {
                    let path = l.config.data_dir.join("admin.token");
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?
                }
            };
            let expected = expected.trim().as_bytes();
            subtle::ConstantTimeEq::ct_eq(expected, secret.as_bytes()).into()
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "kind": if is_admin { "admin" } else { "unknown" },
                "admin": is_admin,
            }))?
        );
    } else if is_admin {
        println!("this is the server's admin token: a shared secret, not a scoped (PASETO) token.");
        println!("It may do everything, never expires and cannot be revoked; replace it by");
        println!("deleting <data-dir>/admin.token (or changing admin_token_file) and restarting.");
        println!(
            "Hand out scoped tokens instead: `larder token create --sub NAME --validity 90d ...`."
        );
    } else {
        bail!(
            "not a larder token: scoped tokens start with \"v4.local.\", and this is not \
             the server's admin token either"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1y").unwrap(), 365 * 86_400);
        assert_eq!(parse_duration("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_duration("90m").unwrap(), 5400);
        assert_eq!(parse_duration("15").unwrap(), 15);
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("y").is_err());
    }
}
