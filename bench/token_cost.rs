//! How much CPU checking a scoped token costs, in isolation from HTTP: the first
//! sight of a token (PASETO v4.local decryption and claim checks) and a repeat
//! (the server's memo of verified tokens), plus the permission lookup a request
//! makes. `bench/push.sh` runs it beside its wrk measurements, whose throughput on
//! a shared machine is too noisy to resolve a few percent.
//!
//!   cargo run --release --example token_cost

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use larder::auth::{Authenticator, Grants, PermSet, Permission, TokenAuthority, TokenClaims};

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let authority = TokenAuthority::open(dir.path(), None).expect("token key");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut caches = BTreeMap::new();
    for p in ["team-*", "team-ci-*", "other-*"] {
        let mut set = PermSet::default();
        set.insert(Permission::Pull);
        set.insert(Permission::Push);
        caches.insert(p.to_string(), set);
    }
    let mint = |i: usize| {
        authority
            .mint(&TokenClaims {
                jti: format!("{i:032}"),
                sub: "bench".into(),
                iat: now,
                nbf: now,
                exp: now + 3600,
                caches: Grants(caches.clone()),
                chain: vec!["0123456789abcdef0123456789abcdef".into()],
            })
            .expect("mint")
    };

    // First sight: every token is new, so each one is decrypted and checked.
    let fresh: Vec<String> = (0..20_000).map(mint).collect();
    let t = Instant::now();
    for tok in &fresh {
        authority.authenticate(Some(tok)).expect("valid");
    }
    let first = t.elapsed().as_nanos() as f64 / fresh.len() as f64;

    // Repeats: one token presented again and again, as a client does.
    let tok = mint(999_999);
    authority.authenticate(Some(&tok)).expect("valid");
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n {
        let c = authority.authenticate(Some(&tok)).expect("valid");
        assert!(c.can("team-dev", Permission::Pull));
    }
    let repeat = t.elapsed().as_nanos() as f64 / n as f64;

    let t = Instant::now();
    for _ in 0..n {
        assert!(matches!(
            authority.authenticate(None),
            Ok(larder::auth::Caller::Anonymous)
        ));
    }
    let anon = t.elapsed().as_nanos() as f64 / n as f64;

    println!(
        "token check, first sight (decrypt): {:8.2} us",
        first / 1000.0
    );
    println!(
        "token check, repeat (memo) + grant: {:8.2} us",
        repeat / 1000.0
    );
    println!(
        "no token (anonymous):               {:8.2} us",
        anon / 1000.0
    );
    println!("token length: {} bytes", tok.len());
}
