//! Store paths: `<store dir>/<32 nix32 chars>-<name>`.
//!
//! The hash part is 20 bytes in nix32 (32 characters). The name is 1 to 211
//! characters of `[A-Za-z0-9+\-._?=]` and does not start with `.` (the rule of
//! the Nix 2.8 this was checked against). Parsing a basename therefore also
//! rejects `/`, whitespace and anything outside ASCII, which makes a parsed
//! [`StorePath`] safe to put into a URL path, a narinfo line or a file name.
//!
//! Not here: computing store path hashes from contents or derivations, and
//! knowing which store dir a deployment uses (callers pass it in).

use std::fmt;

use super::{base32, Error};

/// Bytes in the hash part of a store path.
const HASH_BYTES: usize = 20;
/// Characters in the nix32 hash part of a store path.
const HASH_CHARS: usize = 32;
/// Longest name Nix allows (255 minus the hash part and its `-`, less slack).
const MAX_NAME_LEN: usize = 211;

/// The 32-character nix32 hash part of a store path (20 bytes), as found in
/// `<hash>.narinfo` URLs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StorePathHash(pub [u8; 20]);

impl StorePathHash {
    /// Parse exactly 32 nix32 characters.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.len() != HASH_CHARS {
            return Err(Error::StorePath(format!(
                "{s:?}: a store path hash has {HASH_CHARS} characters, not {}",
                s.len()
            )));
        }
        let bytes = base32::decode(s)
            .map_err(|e| Error::StorePath(format!("{s:?}: bad hash part ({e})")))?;
        <[u8; HASH_BYTES]>::try_from(bytes)
            .map(StorePathHash)
            .map_err(|_| Error::StorePath(format!("{s:?}: bad hash part")))
    }
    /// The 32-character nix32 form.
    pub fn to_nix32(&self) -> String {
        base32::encode(&self.0)
    }
}

/// Displays the 32-character nix32 form.
impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix32())
    }
}

/// A store path without its store dir: hash and name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StorePath {
    pub hash: StorePathHash,
    /// 1..=211 chars of `[A-Za-z0-9+\-._?=]`, not starting with `.`.
    pub name: String,
}

/// Check a store path name (the part after `<hash>-`).
pub fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::StorePath("the name is empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::StorePath(format!(
            "the name has {} characters, more than the {MAX_NAME_LEN} allowed",
            name.len()
        )));
    }
    if name.starts_with('.') {
        return Err(Error::StorePath(format!(
            "{name:?}: a name must not start with `.`"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c)))
    {
        return Err(Error::StorePath(format!(
            "{name:?}: character {c:?} is not allowed in a store path name"
        )));
    }
    Ok(())
}

impl StorePath {
    /// Parse a basename `<hash>-<name>`.
    pub fn from_basename(s: &str) -> Result<Self, Error> {
        let (hash, name) = match (s.get(..HASH_CHARS), s.get(HASH_CHARS..)) {
            (Some(hash), Some(rest)) => match rest.strip_prefix('-') {
                Some(name) => (hash, name),
                None => {
                    return Err(Error::StorePath(format!(
                        "{s:?}: expected `-` after the {HASH_CHARS}-character hash"
                    )))
                }
            },
            _ => {
                return Err(Error::StorePath(format!(
                    "{s:?}: expected `<{HASH_CHARS}-character hash>-<name>`"
                )))
            }
        };
        let hash = StorePathHash::parse(hash)?;
        validate_name(name).map_err(|e| match e {
            Error::StorePath(m) => Error::StorePath(format!("{s:?}: {m}")),
            other => other,
        })?;
        Ok(StorePath {
            hash,
            name: name.to_string(),
        })
    }
    /// Parse a full path `<store_dir>/<hash>-<name>`; `store_dir` has no trailing slash.
    ///
    /// `store_dir` itself is not validated here (see [`validate_store_dir`]); the
    /// path must start with it exactly, then `/`, and contain no further `/`.
    pub fn from_full_path(store_dir: &str, s: &str) -> Result<Self, Error> {
        let basename = s
            .strip_prefix(store_dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| {
                Error::StorePath(format!("{s:?} is not directly inside {store_dir:?}"))
            })?;
        if basename.contains('/') {
            return Err(Error::StorePath(format!(
                "{s:?} is not directly inside {store_dir:?}"
            )));
        }
        Self::from_basename(basename)
    }
    /// `<hash>-<name>`.
    pub fn basename(&self) -> String {
        format!("{}-{}", self.hash.to_nix32(), self.name)
    }
    /// `<store_dir>/<hash>-<name>`.
    pub fn to_full_path(&self, store_dir: &str) -> String {
        format!("{store_dir}/{}", self.basename())
    }
}

/// Displays the basename, `<hash>-<name>`.
impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash, self.name)
    }
}

/// Check a store dir: absolute, no trailing slash, no `.`/`..` components, no NUL.
///
/// Also rejects empty components (`//`) and control characters: the store dir is
/// written into line-based formats (`StorePath:` lines, `nix-cache-info`) where a
/// newline would split a line.
pub fn validate_store_dir(s: &str) -> Result<(), Error> {
    let Some(rest) = s.strip_prefix('/') else {
        return Err(Error::StorePath(format!(
            "store dir {s:?} is not an absolute path"
        )));
    };
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(Error::StorePath(format!(
            "store dir {s:?} contains the control character {c:?}"
        )));
    }
    for component in rest.split('/') {
        match component {
            "" => {
                return Err(Error::StorePath(format!(
                    "store dir {s:?} has an empty component or a trailing `/`"
                )))
            }
            "." | ".." => {
                return Err(Error::StorePath(format!(
                    "store dir {s:?} has a `{component}` component"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HASH: &str = "pd49igwa9j13b8svlsb0hpzygzsdml40";

    #[test]
    fn hash_has_no_padding_bits() {
        // 32 characters carry exactly 160 bits: every first character is valid.
        for c in "0123456789abcdfghijklmnpqrsvwxyz".chars() {
            let s = format!("{c}{}", &HASH[1..]);
            assert_eq!(StorePathHash::parse(&s).unwrap().to_nix32(), s);
        }
    }

    #[test]
    fn hash_round_trips() {
        let h = StorePathHash::parse(HASH).unwrap();
        assert_eq!(h.to_nix32(), HASH);
        assert_eq!(h.to_string(), HASH);
    }

    #[test]
    fn hash_rejects_bad_shapes() {
        for bad in [
            "",
            &HASH[1..],
            &format!("{HASH}0"),
            "pd49igwa9j13b8svlsb0hpzygzsdml4e", // 'e' not in nix32
            "PD49IGWA9J13B8SVLSB0HPZYGZSDML40", // upper case
            "pd49igwa9j13b8svlsb0hpzygzsdml4",  // 31 characters
        ] {
            assert!(
                matches!(StorePathHash::parse(bad), Err(Error::StorePath(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn basename_round_trips() {
        let s = format!("{HASH}-top");
        let p = StorePath::from_basename(&s).unwrap();
        assert_eq!(p.name, "top");
        assert_eq!(p.hash.to_nix32(), HASH);
        assert_eq!(p.basename(), s);
        assert_eq!(p.to_string(), s);
        assert_eq!(p.to_full_path("/nix/store"), format!("/nix/store/{s}"));
    }

    #[test]
    fn names_with_every_allowed_character() {
        for name in [
            "a",
            "A-Z_0.9+x?y=z",
            "hello-2.12.1",
            "x.drv",
            "-",
            "_",
            "a.",
            "=?",
        ] {
            let s = format!("{HASH}-{name}");
            assert_eq!(StorePath::from_basename(&s).unwrap().name, name, "{name}");
        }
        let longest = "a".repeat(MAX_NAME_LEN);
        assert!(StorePath::from_basename(&format!("{HASH}-{longest}")).is_ok());
    }

    #[test]
    fn bad_names_are_rejected() {
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        for name in [
            "", ".hidden", ".", "..", "a/b", "a b", "a\nb", "é", "a:b", "a@b", "a%20", &too_long,
        ] {
            let s = format!("{HASH}-{name}");
            assert!(
                matches!(StorePath::from_basename(&s), Err(Error::StorePath(_))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn bad_basenames_are_rejected() {
        for s in [
            "",
            HASH,                                // no name
            &format!("{HASH}top"),               // no dash
            &format!("{HASH}_top"),              // wrong separator
            &format!("é{HASH}-top"),             // non-ASCII in the hash slice
            &format!("a{}-top", "é".repeat(16)), // byte 32 is inside a char
            &format!("{}-top", &HASH[1..]),
        ] {
            assert!(StorePath::from_basename(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn full_paths() {
        let full = format!("/nix/store/{HASH}-top");
        let p = StorePath::from_full_path("/nix/store", &full).unwrap();
        assert_eq!(p.to_full_path("/nix/store"), full);
        // Other store dirs work when named.
        let other = format!("/var/lib/larder/store/{HASH}-top");
        assert_eq!(
            StorePath::from_full_path("/var/lib/larder/store", &other).unwrap(),
            p
        );
        for bad in [
            format!("/nix/store{HASH}-top"),         // no separator
            format!("/nix/store//{HASH}-top"),       // double slash
            format!("/nix/store/{HASH}-top/bin/sh"), // inside the path
            format!("/nix/store/{HASH}-top/"),       // trailing slash
            format!("/nix/stor/{HASH}-top"),         // other dir
            format!("/nix/store2/{HASH}-top"),       // prefix but not the dir
            format!("nix/store/{HASH}-top"),         // relative
            format!("{HASH}-top"),                   // basename only
            format!("/nix/store/x/{HASH}-top"),      // nested
        ] {
            assert!(
                StorePath::from_full_path("/nix/store", &bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn store_dirs() {
        for good in [
            "/nix/store",
            "/a",
            "/var/lib/larder/store",
            "/x/.y/z..",
            "/a b",
        ] {
            assert!(validate_store_dir(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "/",
            "nix/store",
            "/nix/store/",
            "/nix//store",
            "/nix/./store",
            "/nix/../store",
            "/nix/store/..",
            "/.",
            "/nix\0/store",
            "/nix/\nstore",
        ] {
            assert!(
                matches!(validate_store_dir(bad), Err(Error::StorePath(_))),
                "{bad:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn valid_basenames_round_trip(
            hash in any::<[u8; 20]>(),
            name in "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,210}",
        ) {
            let p = StorePath { hash: StorePathHash(hash), name };
            prop_assert_eq!(StorePath::from_basename(&p.basename()).unwrap(), p.clone());
            prop_assert_eq!(
                StorePath::from_full_path("/nix/store", &p.to_full_path("/nix/store")).unwrap(),
                p
            );
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let _ = StorePath::from_basename(&s);
            let _ = StorePath::from_full_path("/nix/store", &s);
            let _ = StorePathHash::parse(&s);
            let _ = validate_store_dir(&s);
        }
    }
}
