//! SHA-256 hashes as Nix writes them (`NarHash`, `FileHash`).
//!
//! Nix accepts a SHA-256 digest in four spellings; this module parses all of them
//! and always writes the one Nix writes in narinfos and signs in fingerprints,
//! `sha256:<52 nix32 chars>`:
//!
//! | form | example length of the digest part |
//! |---|---|
//! | `sha256:<nix32>` | 52 |
//! | `sha256:<hex>` (either case) | 64 |
//! | `sha256:<base64, standard alphabet, padded>` | 44 |
//! | SRI `sha256-<base64>` | 44 |
//!
//! Other algorithms (`sha1:`, `sha512:`) and bare digests without a prefix are
//! rejected: larder stores and serves SHA-256 only.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use sha2::Digest as _;

use super::{base32, Error};

/// Digest size in bytes.
const SHA256_BYTES: usize = 32;
/// Length of a SHA-256 digest in nix32.
const NIX32_LEN: usize = 52;
/// Length of a SHA-256 digest in hex.
const HEX_LEN: usize = 64;
/// Length of a SHA-256 digest in padded base64.
const BASE64_LEN: usize = 44;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Parse `sha256:<nix32 (52)|hex (64)|base64 (44)>` or SRI `sha256-<base64>`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if let Some(digest) = s.strip_prefix("sha256:") {
            let bytes = match digest.len() {
                NIX32_LEN => base32::decode(digest).ok(),
                HEX_LEN => hex::decode(digest).ok(),
                BASE64_LEN => base64::engine::general_purpose::STANDARD
                    .decode(digest)
                    .ok(),
                _ => {
                    return Err(Error::Hash(format!(
                        "{s:?}: a sha256 digest has 52 (nix32), 64 (hex) or 44 (base64) \
                         characters, not {}",
                        digest.len()
                    )))
                }
            };
            return Self::from_digest_bytes(s, bytes);
        }
        if let Some(digest) = s.strip_prefix("sha256-") {
            let bytes = if digest.len() == BASE64_LEN {
                base64::engine::general_purpose::STANDARD
                    .decode(digest)
                    .ok()
            } else {
                None
            };
            return Self::from_digest_bytes(s, bytes);
        }
        Err(Error::Hash(format!(
            "{s:?}: expected `sha256:<digest>` or `sha256-<base64>`"
        )))
    }

    fn from_digest_bytes(s: &str, bytes: Option<Vec<u8>>) -> Result<Self, Error> {
        bytes
            .and_then(|b| <[u8; SHA256_BYTES]>::try_from(b).ok())
            .map(Sha256)
            .ok_or_else(|| Error::Hash(format!("{s:?}: the digest is not valid")))
    }

    /// Wrap 32 raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256(bytes)
    }

    /// The SHA-256 of `data`.
    pub fn digest(data: &[u8]) -> Self {
        Sha256(sha2::Sha256::digest(data).into())
    }

    /// `sha256:<nix32>`, the form Nix writes in narinfos and signs in fingerprints.
    pub fn to_nix_string(&self) -> String {
        format!("sha256:{}", self.to_nix32())
    }
    /// The 52-character nix32 digest alone (no `sha256:` prefix).
    pub fn to_nix32(&self) -> String {
        base32::encode(&self.0)
    }
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// SRI form, `sha256-<base64>`.
    pub fn to_sri(&self) -> String {
        format!(
            "sha256-{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

/// Displays as `sha256:<nix32>`, like [`Sha256::to_nix_string`].
impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix_string())
    }
}

/// Same as [`Sha256::parse`].
impl FromStr for Sha256 {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // sha256 of the empty string in every spelling, as printed by Nix 2.8
    // (`nix hash to-base32`, `nix hash to-sri`).
    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_SRI: &str = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    fn empty() -> Sha256 {
        Sha256::digest(b"")
    }

    #[test]
    fn digest_of_empty_string() {
        assert_eq!(empty().to_hex(), EMPTY_HEX);
        assert_eq!(empty().to_nix32(), EMPTY_NIX32);
        assert_eq!(empty().to_nix_string(), format!("sha256:{EMPTY_NIX32}"));
        assert_eq!(empty().to_sri(), EMPTY_SRI);
        assert_eq!(empty().to_string(), format!("sha256:{EMPTY_NIX32}"));
    }

    #[test]
    fn parses_every_spelling() {
        let b64 = EMPTY_SRI.trim_start_matches("sha256-");
        for s in [
            format!("sha256:{EMPTY_NIX32}"),
            format!("sha256:{EMPTY_HEX}"),
            format!("sha256:{}", EMPTY_HEX.to_uppercase()),
            format!("sha256:{b64}"),
            EMPTY_SRI.to_string(),
        ] {
            assert_eq!(Sha256::parse(&s).unwrap(), empty(), "{s}");
            assert_eq!(s.parse::<Sha256>().unwrap(), empty(), "{s}");
        }
    }

    #[test]
    fn abc_vector_from_nix() {
        // printf abc | nix hash file --type sha256 --base32
        let h = Sha256::digest(b"abc");
        assert_eq!(
            h.to_nix32(),
            "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
        );
        assert_eq!(
            h.to_sri(),
            "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
    }

    #[test]
    fn rejects_everything_else() {
        let b64 = EMPTY_SRI.trim_start_matches("sha256-");
        let bad = [
            String::new(),
            EMPTY_NIX32.to_string(),                         // no prefix
            EMPTY_HEX.to_string(),                           // no prefix
            format!("sha512:{EMPTY_NIX32}"),                 // other algorithm
            format!("SHA256:{EMPTY_NIX32}"),                 // prefix is case-sensitive
            format!("sha256:{}", &EMPTY_NIX32[1..]),         // short
            format!("sha256:{EMPTY_NIX32}0"),                // long
            format!("sha256:2{}", &EMPTY_NIX32[1..]),        // padding bits set
            format!("sha256:e{}", &EMPTY_NIX32[1..]),        // 'e' not in nix32
            format!("sha256:g{}", &EMPTY_HEX[1..]),          // not hex
            format!("sha256:{}", b64.trim_end_matches('=')), // unpadded base64
            format!("sha256:{}!", &b64[..43]),               // bad base64 char
            format!("sha256-{EMPTY_NIX32}"),                 // SRI needs base64
            format!("sha256-{EMPTY_HEX}"),                   // SRI needs base64
            format!(" sha256:{EMPTY_NIX32}"),                // whitespace
            format!("sha256:{EMPTY_NIX32}\n"),
            "sha256:".to_string(),
            "sha256-".to_string(),
        ];
        for s in bad {
            assert!(
                matches!(Sha256::parse(&s), Err(Error::Hash(_))),
                "{s:?} must be rejected"
            );
        }
    }

    #[test]
    fn rejects_base64_with_non_zero_trailing_bits() {
        // 32 bytes use 256 of the 258 bits of 43 base64 chars; the last char of
        // the real digest is 'U' (0b010100). 'J' (0b001001) sets a trailing bit.
        let b64 = EMPTY_SRI.trim_start_matches("sha256-");
        let tweaked = format!("{}J=", &b64[..42]);
        assert!(Sha256::parse(&format!("sha256-{tweaked}")).is_err());
    }

    proptest! {
        #[test]
        fn every_spelling_round_trips(bytes in any::<[u8; 32]>()) {
            let h = Sha256(bytes);
            prop_assert_eq!(Sha256::parse(&h.to_nix_string()).unwrap(), h);
            prop_assert_eq!(Sha256::parse(&format!("sha256:{}", h.to_hex())).unwrap(), h);
            prop_assert_eq!(Sha256::parse(&h.to_sri()).unwrap(), h);
            let b64 = h.to_sri().replacen("sha256-", "sha256:", 1);
            prop_assert_eq!(Sha256::parse(&b64).unwrap(), h);
        }

        #[test]
        fn parse_never_panics(s in "sha256[:-]\\PC{0,70}") {
            let _ = Sha256::parse(&s);
        }
    }
}
