//! Cache-name patterns and the permissions a token grants on them.
//!
//! The matching rule, for one cache name:
//! 1. a pattern equal to the name (no wildcard) wins;
//! 2. otherwise the most specific matching pattern wins: the one with the most
//!    literal (non-`*`) characters; on a tie, the one with fewer `*`; on a further
//!    tie, the one that sorts first;
//! 3. permissions are never merged across patterns: the winner's set is the answer.
//!
//! `*` matches any run of characters (including none).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Permission;

/// A set of [`Permission`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PermSet(u8);

impl PermSet {
    pub const ALL: PermSet = PermSet(0xff);

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }
    pub fn insert(&mut self, p: Permission) {
        self.0 |= p.bit();
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn is_subset(self, other: PermSet) -> bool {
        self.0 & !other.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }
}

impl Serialize for PermSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names: Vec<&str> = self.iter().map(Permission::name).collect();
        names.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PermSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut set = PermSet::default();
        for n in names {
            let p = Permission::from_name(&n)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown permission {n:?}")))?;
            set.insert(p);
        }
        Ok(set)
    }
}

/// The pattern `metrics` is granted on: it is server-wide, so only `*` counts.
pub const METRICS_PATTERN: &str = "*";

/// Patterns and their permissions, as carried in a token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Grants(pub BTreeMap<String, PermSet>);

/// Check a pattern: a cache name in which `*` may stand anywhere.
pub fn validate_pattern(p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_+*".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid cache pattern {p:?}: use cache-name characters and *"
        ))
    }
}

/// Whether `name` matches glob `pattern`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
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

/// Whether every name matching `inner` also matches `outer`.
pub fn glob_covers(outer: &str, inner: &str) -> bool {
    // A `*` of `inner` can only be matched by a `*` of `outer`.
    fn go(o: &[u8], i: &[u8], memo: &mut Vec<Vec<Option<bool>>>, oi: usize, ii: usize) -> bool {
        if let Some(v) = memo[oi][ii] {
            return v;
        }
        let v = if oi == o.len() {
            ii == i.len()
        } else if o[oi] == b'*' {
            go(o, i, memo, oi + 1, ii) || (ii < i.len() && go(o, i, memo, oi, ii + 1))
        } else {
            ii < i.len() && i[ii] != b'*' && i[ii] == o[oi] && go(o, i, memo, oi + 1, ii + 1)
        };
        memo[oi][ii] = Some(v);
        v
    }
    let (o, i) = (outer.as_bytes(), inner.as_bytes());
    let mut memo = vec![vec![None; i.len() + 1]; o.len() + 1];
    go(o, i, &mut memo, 0, 0)
}

/// Whether some name matches both patterns.
pub fn glob_intersects(a: &str, b: &str) -> bool {
    fn go(a: &[u8], b: &[u8], memo: &mut Vec<Vec<Option<bool>>>, ai: usize, bi: usize) -> bool {
        if let Some(v) = memo[ai][bi] {
            return v;
        }
        let v = if ai == a.len() && bi == b.len() {
            true
        } else if ai < a.len() && a[ai] == b'*' {
            go(a, b, memo, ai + 1, bi) || (bi < b.len() && go(a, b, memo, ai, bi + 1))
        } else if bi < b.len() && b[bi] == b'*' {
            go(a, b, memo, ai, bi + 1) || (ai < a.len() && go(a, b, memo, ai + 1, bi))
        } else {
            ai < a.len() && bi < b.len() && a[ai] == b[bi] && go(a, b, memo, ai + 1, bi + 1)
        };
        memo[ai][bi] = Some(v);
        v
    }
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let mut memo = vec![vec![None; y.len() + 1]; x.len() + 1];
    go(x, y, &mut memo, 0, 0)
}

fn specificity(p: &str) -> (usize, std::cmp::Reverse<usize>) {
    let stars = p.bytes().filter(|&b| b == b'*').count();
    (p.len() - stars, std::cmp::Reverse(stars))
}

impl Grants {
    /// The permissions on `cache` under the matching rule.
    pub fn for_cache(&self, cache: &str) -> PermSet {
        if let Some(set) = self.0.get(cache) {
            return *set;
        }
        let mut best: Option<(&String, &PermSet)> = None;
        for (p, set) in &self.0 {
            if !glob_match(p, cache) {
                continue;
            }
            best = match best {
                None => Some((p, set)),
                Some((bp, _)) if specificity(p) > specificity(bp) => Some((p, set)),
                keep => keep,
            };
        }
        best.map(|(_, s)| *s).unwrap_or_default()
    }

    /// Whether a holder of `self` may hand out `wanted`: every name a wanted
    /// pattern matches must be covered by one of ours, and every one of our
    /// patterns that could govern such a name must grant at least the wanted set.
    pub fn allows_delegating(&self, wanted: &Grants) -> Result<(), String> {
        for (wp, wset) in &wanted.0 {
            if wset.is_empty() {
                continue;
            }
            if !self.0.keys().any(|p| glob_covers(p, wp)) {
                return Err(format!("pattern {wp:?} is wider than the caller's"));
            }
            for (p, set) in &self.0 {
                if glob_intersects(p, wp) && !wset.is_subset(*set) {
                    return Err(format!(
                        "pattern {wp:?} asks for more than the caller holds on {p:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(ps: &[Permission]) -> PermSet {
        let mut s = PermSet::default();
        for p in ps {
            s.insert(*p);
        }
        s
    }

    fn grants(items: &[(&str, &[Permission])]) -> Grants {
        Grants(items.iter().map(|(p, s)| (p.to_string(), set(s))).collect())
    }

    #[test]
    fn matching() {
        assert!(glob_match("team-*", "team-a"));
        assert!(glob_match("team-*", "team-"));
        assert!(!glob_match("team-*", "teamx"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "aXXbYc"));
        assert!(!glob_match("a*b*c", "aXXbY"));
    }

    #[test]
    fn exact_beats_wildcards_and_nothing_merges() {
        use Permission::*;
        let g = grants(&[
            ("*", &[Pull]),
            ("team-*", &[Pull, Push]),
            ("team-prod", &[Pull]),
            ("team-prod-*", &[Push]),
        ]);
        assert_eq!(g.for_cache("team-prod"), set(&[Pull]));
        assert_eq!(g.for_cache("team-dev"), set(&[Pull, Push]));
        assert_eq!(g.for_cache("team-prod-x"), set(&[Push]));
        assert_eq!(g.for_cache("other"), set(&[Pull]));
        assert!(grants(&[("team-*", &[Pull])]).for_cache("x").is_empty());
    }

    #[test]
    fn delegation() {
        use Permission::*;
        let parent = grants(&[("team-*", &[Pull, Push]), ("team-prod", &[Pull])]);
        assert!(parent
            .allows_delegating(&grants(&[("team-repo-*", &[Push])]))
            .is_ok());
        // Wider pattern.
        assert!(parent
            .allows_delegating(&grants(&[("*", &[Pull])]))
            .is_err());
        // More permissions.
        assert!(parent
            .allows_delegating(&grants(&[("team-a", &[Delete])]))
            .is_err());
        // team-* push would reach team-prod, where the parent only pulls.
        assert!(parent
            .allows_delegating(&grants(&[("team-*", &[Push])]))
            .is_err());
        assert!(parent
            .allows_delegating(&grants(&[("team-*", &[Pull])]))
            .is_ok());
    }

    proptest! {
        #[test]
        fn covers_and_intersects_agree_with_matching(
            a in "[ab*]{0,5}", b in "[ab*]{0,5}", name in "[ab]{0,6}"
        ) {
            if glob_match(&b, &name) && glob_covers(&a, &b) {
                prop_assert!(glob_match(&a, &name));
            }
            if glob_match(&a, &name) && glob_match(&b, &name) {
                prop_assert!(glob_intersects(&a, &b));
            }
            // A pattern with no `*` is one name.
            if !b.contains('*') {
                prop_assert_eq!(glob_covers(&a, &b), glob_match(&a, &b));
            }
        }
    }
}
