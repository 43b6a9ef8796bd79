//! Nix binary-cache signing keys and narinfo signatures (ed25519).
//!
//! Secret key: `<name>:<base64 of 64 bytes: seed || public>`; public key:
//! `<name>:<base64 of 32 bytes>`; signature line: `<name>:<base64 of 64 bytes>`.

use super::hash::Sha256;
use super::Error;

/// A secret signing key with its name.
pub struct SecretKey {
    pub name: String,
    key: ed25519_dalek::SigningKey,
}

/// A public key with its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl SecretKey {
    /// A fresh random key named `name` (a name must be non-empty and contain no `:`).
    pub fn generate(name: &str) -> Result<Self, Error> {
        todo!("{name}")
    }
    /// Parse Nix's secret key format.
    pub fn parse(s: &str) -> Result<Self, Error> {
        todo!("{s}")
    }
    /// Nix's secret key format.
    pub fn to_nix_string(&self) -> String {
        todo!()
    }
    pub fn public(&self) -> PublicKey {
        todo!()
    }
    /// `<name>:<base64 signature>` over `fingerprint`.
    pub fn sign(&self, fingerprint: &str) -> String {
        todo!("{fingerprint}")
    }
}

impl PublicKey {
    /// Parse `<name>:<base64 of 32 bytes>`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        todo!("{s}")
    }
    /// `<name>:<base64>`, the line for `trusted-public-keys`.
    pub fn to_nix_string(&self) -> String {
        todo!()
    }
    /// True when `sig` (`<name>:<base64>`) has this key's name and verifies over
    /// `fingerprint`. A malformed signature is `false`, not an error.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        todo!("{fingerprint}{sig}")
    }
}

/// The string Nix signs: `1;<store path>;<sha256:nix32>;<nar size>;<refs>` where refs
/// are full store paths, sorted and comma-joined.
pub fn fingerprint(
    store_dir: &str,
    store_path: &str,
    nar_hash: &Sha256,
    nar_size: u64,
    reference_basenames: &[String],
) -> String {
    todo!("{store_dir}{store_path}{nar_hash:?}{nar_size}{reference_basenames:?}")
}
