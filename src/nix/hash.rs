//! SHA-256 hashes as Nix writes them (`NarHash`, `FileHash`).

use super::Error;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Parse `sha256:<nix32 (52)|hex (64)|base64 (44)>` or SRI `sha256-<base64>`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        todo!("{s}")
    }
    /// `sha256:<nix32>`, the form Nix writes in narinfos and signs in fingerprints.
    pub fn to_nix_string(&self) -> String {
        todo!()
    }
    /// The 52-character nix32 digest alone (no `sha256:` prefix).
    pub fn to_nix32(&self) -> String {
        todo!()
    }
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        todo!()
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}
