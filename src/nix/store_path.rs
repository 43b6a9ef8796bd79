//! Store paths: `<store dir>/<32 nix32 chars>-<name>`.

use super::Error;

/// The 32-character nix32 hash part of a store path (20 bytes), as found in
/// `<hash>.narinfo` URLs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StorePathHash(pub [u8; 20]);

impl StorePathHash {
    /// Parse exactly 32 nix32 characters.
    pub fn parse(s: &str) -> Result<Self, Error> {
        todo!("{s}")
    }
    /// The 32-character nix32 form.
    pub fn to_nix32(&self) -> String {
        todo!()
    }
}

/// A store path without its store dir: hash and name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StorePath {
    pub hash: StorePathHash,
    /// 1..=211 chars of `[A-Za-z0-9+\-._?=]`, not starting with `.`.
    pub name: String,
}

impl StorePath {
    /// Parse a basename `<hash>-<name>`.
    pub fn from_basename(s: &str) -> Result<Self, Error> {
        todo!("{s}")
    }
    /// Parse a full path `<store_dir>/<hash>-<name>`; `store_dir` has no trailing slash.
    pub fn from_full_path(store_dir: &str, s: &str) -> Result<Self, Error> {
        todo!("{store_dir}{s}")
    }
    /// `<hash>-<name>`.
    pub fn basename(&self) -> String {
        todo!()
    }
    /// `<store_dir>/<hash>-<name>`.
    pub fn to_full_path(&self, store_dir: &str) -> String {
        todo!("{store_dir}")
    }
}

/// Check a store dir: absolute, no trailing slash, no `.`/`..` components, no NUL.
pub fn validate_store_dir(s: &str) -> Result<(), Error> {
    todo!("{s}")
}
