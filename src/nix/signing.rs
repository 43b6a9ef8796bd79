//! Nix binary-cache signing keys and narinfo signatures (ed25519).
//!
//! Secret key: `<name>:<base64 of 64 bytes: seed || public>`; public key:
//! `<name>:<base64 of 32 bytes>`; signature line: `<name>:<base64 of 64 bytes>`.
//!
//! What is signed is the [`fingerprint`] of a path:
//! `1;<store path>;<sha256:nix32 NAR hash>;<NAR size>;<references>`, where the
//! references are full store paths, sorted, de-duplicated and comma-joined (an
//! empty list leaves the last field empty). URL, Compression, FileHash, FileSize,
//! Deriver and CA are not covered. ed25519 is deterministic: the same key and
//! fingerprint always give the same signature, byte for byte what Nix writes.
//!
//! Key names must be non-empty and contain no `:`, whitespace or control
//! characters (they go into whitespace-separated `trusted-public-keys` lists).
//!
//! Not here: reading key files (callers pass the file's text; surrounding
//! whitespace such as a trailing newline is ignored) and deciding which keys
//! a cache trusts.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::Signer as _;

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

/// Check a key name.
fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::Key("the key name is empty".into()));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(Error::Key(format!(
            "key name {name:?} contains {c:?}; names cannot contain `:`, whitespace \
             or control characters"
        )));
    }
    Ok(())
}

/// Split `<name>:<base64>` and decode the base64 into exactly `N` bytes.
fn split_and_decode<const N: usize>(s: &str, what: &str) -> Result<(String, [u8; N]), Error> {
    let s = s.trim();
    let (name, b64) = s
        .split_once(':')
        .ok_or_else(|| Error::Key(format!("{what} is not `<name>:<base64>`")))?;
    validate_name(name)?;
    let bytes = BASE64
        .decode(b64)
        .map_err(|e| Error::Key(format!("{what} {name:?}: bad base64 ({e})")))?;
    let len = bytes.len();
    let bytes = <[u8; N]>::try_from(bytes).map_err(|_| {
        Error::Key(format!(
            "{what} {name:?}: expected {N} bytes of key material, found {len}"
        ))
    })?;
    Ok((name.to_string(), bytes))
}

impl SecretKey {
    /// A fresh random key named `name` (a name must be non-empty and contain no `:`).
    ///
    /// Randomness comes from the operating system.
    pub fn generate(name: &str) -> Result<Self, Error> {
        validate_name(name)?;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        Ok(SecretKey {
            name: name.to_string(),
            key,
        })
    }
    /// Parse Nix's secret key format.
    ///
    /// The public half stored in the key must match the seed.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (name, bytes) = split_and_decode::<64>(s, "secret key")?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes).map_err(|_| {
            Error::Key(format!(
                "secret key {name:?}: the public half does not match the seed"
            ))
        })?;
        Ok(SecretKey { name, key })
    }
    /// Nix's secret key format.
    pub fn to_nix_string(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(self.key.to_keypair_bytes())
        )
    }
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }
    /// `<name>:<base64 signature>` over `fingerprint`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, BASE64.encode(sig.to_bytes()))
    }
}

/// Shows the name and public key only, never the secret.
impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .field("public", &self.public().to_nix_string())
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Parse `<name>:<base64 of 32 bytes>`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (name, bytes) = split_and_decode::<32>(s, "public key")?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| {
            Error::Key(format!(
                "public key {name:?}: the bytes are not an ed25519 public key"
            ))
        })?;
        Ok(PublicKey { name, key })
    }
    /// `<name>:<base64>`, the line for `trusted-public-keys`.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
    /// True when `sig` (`<name>:<base64>`) has this key's name and verifies over
    /// `fingerprint`. A malformed signature is `false`, not an error.
    ///
    /// Verification is strict (rejects non-canonical and small-order encodings),
    /// as libsodium's is in Nix.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, b64)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Some(bytes) = BASE64
            .decode(b64)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
        else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&bytes);
        self.key.verify_strict(fingerprint.as_bytes(), &sig).is_ok()
    }
}

/// The string Nix signs: `1;<store path>;<sha256:nix32>;<nar size>;<refs>` where refs
/// are full store paths, sorted and comma-joined.
///
/// Duplicate references count once, as in Nix (which keeps them in a set).
/// Nothing is validated: callers pass values already parsed.
pub fn fingerprint(
    store_dir: &str,
    store_path: &str,
    nar_hash: &Sha256,
    nar_size: u64,
    reference_basenames: &[String],
) -> String {
    let mut refs: Vec<String> = reference_basenames
        .iter()
        .map(|b| format!("{store_dir}/{b}"))
        .collect();
    refs.sort();
    refs.dedup();
    format!(
        "1;{store_path};{};{nar_size};{}",
        nar_hash.to_nix_string(),
        refs.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::narinfo::NarInfo;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/narinfo");

    fn read(name: &str) -> String {
        std::fs::read_to_string(format!("{DATA}/{name}")).unwrap()
    }

    /// Key pairs made by `nix-store --generate-binary-cache-key`.
    fn nix_keys() -> Vec<(SecretKey, PublicKey)> {
        ["larder-test-1", "larder-test-2"]
            .iter()
            .map(|n| {
                (
                    SecretKey::parse(&read(&format!("{n}.sk"))).unwrap(),
                    PublicKey::parse(&read(&format!("{n}.pk"))).unwrap(),
                )
            })
            .collect()
    }

    fn corpus() -> Vec<(String, NarInfo)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(DATA).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "narinfo") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.display().to_string(), NarInfo::parse(&text).unwrap()));
            }
        }
        assert!(out.len() >= 6);
        out
    }

    #[test]
    fn nix_key_files_parse_and_match() {
        for (sk, pk) in nix_keys() {
            assert_eq!(sk.public(), pk);
            // Nix writes key files without a trailing newline; so do we.
            assert_eq!(sk.to_nix_string(), read(&format!("{}.sk", sk.name)));
            assert_eq!(pk.to_nix_string(), read(&format!("{}.pk", pk.name)));
        }
    }

    /// The signatures Nix wrote into the corpus are reproduced byte for byte, and
    /// every one of them verifies.
    #[test]
    fn signatures_are_byte_identical_to_nix() {
        let keys = nix_keys();
        let mut checked = 0;
        for (file, info) in corpus() {
            let fp = info.fingerprint().unwrap();
            for sig in &info.sigs {
                let (sk, pk) = keys
                    .iter()
                    .find(|(sk, _)| sig.starts_with(&format!("{}:", sk.name)))
                    .unwrap();
                assert_eq!(&sk.sign(&fp), sig, "{file}");
                assert!(pk.verify(&fp, sig), "{file}");
                checked += 1;
            }
        }
        assert!(checked >= 5, "only {checked} signatures in the corpus");
    }

    #[test]
    fn fingerprint_format() {
        let h = Sha256::digest(b"");
        let refs = vec![
            "pd49igwa9j13b8svlsb0hpzygzsdml40-top".to_string(),
            "5l5zgmafrv6c553zxqf397mb7pscgh75-mid".to_string(),
            "pd49igwa9j13b8svlsb0hpzygzsdml40-top".to_string(),
        ];
        assert_eq!(
            fingerprint(
                "/nix/store",
                "/nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep",
                &h,
                120,
                &refs
            ),
            "1;/nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep;\
             sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;120;\
             /nix/store/5l5zgmafrv6c553zxqf397mb7pscgh75-mid,\
             /nix/store/pd49igwa9j13b8svlsb0hpzygzsdml40-top"
        );
        assert_eq!(
            fingerprint(
                "/nix/store",
                "/nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep",
                &h,
                1,
                &[]
            ),
            "1;/nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep;\
             sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;1;"
        );
    }

    #[test]
    fn generated_keys_round_trip_and_sign() {
        let sk = SecretKey::generate("cache.example.org-1").unwrap();
        let again = SecretKey::parse(&sk.to_nix_string()).unwrap();
        assert_eq!(again.public(), sk.public());
        let pk = PublicKey::parse(&sk.public().to_nix_string()).unwrap();
        let sig = sk.sign("1;x;y;1;");
        assert!(sig.starts_with("cache.example.org-1:"));
        assert_eq!(sig, again.sign("1;x;y;1;"));
        assert!(pk.verify("1;x;y;1;", &sig));
        assert!(!pk.verify("1;x;y;2;", &sig));
    }

    #[test]
    fn bad_key_names() {
        for name in ["", "a:b", "a b", "a\nb", "a\tb"] {
            assert!(
                matches!(SecretKey::generate(name), Err(Error::Key(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn parse_ignores_surrounding_whitespace() {
        let text = read("larder-test-1.sk");
        let with_newline = format!("{text}\n");
        assert!(SecretKey::parse(&with_newline).is_ok());
        let pk = read("larder-test-1.pk");
        assert!(PublicKey::parse(&format!("  {pk}\r\n")).is_ok());
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let sk = read("larder-test-1.sk");
        let pk = read("larder-test-1.pk");
        let (_, sk_b64) = sk.split_once(':').unwrap();
        let (_, pk_b64) = pk.split_once(':').unwrap();
        let mut pair = BASE64.decode(sk_b64).unwrap();
        pair[40] ^= 1; // public half no longer matches the seed
        let mismatched = format!("x:{}", BASE64.encode(&pair));
        for bad in [
            String::new(),
            "no-colon".to_string(),
            format!(":{sk_b64}"),          // empty name
            format!("x:{pk_b64}"),         // 32 bytes where 64 are needed
            format!("x:{}", &sk_b64[4..]), // bad length
            "x:!!!!".to_string(),          // bad base64
            mismatched,
        ] {
            assert!(
                matches!(SecretKey::parse(&bad), Err(Error::Key(_))),
                "{bad:?}"
            );
        }
        for bad in [
            String::new(),
            format!(":{pk_b64}"),
            format!("x:{sk_b64}"), // 64 bytes where 32 are needed
            "x:AAAA".to_string(),
            "x y:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(),
        ] {
            assert!(
                matches!(PublicKey::parse(&bad), Err(Error::Key(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn malformed_or_foreign_signatures_are_false() {
        let keys = nix_keys();
        let (sk1, pk1) = &keys[0];
        let (sk2, _) = &keys[1];
        let fp = "1;/nix/store/gf4cdf8n2aldyynjq2yy6hvmvfnj5lkr-dep;sha256:00;1;";
        let good = sk1.sign(fp);
        assert!(pk1.verify(fp, &good));
        // Same key bytes under another name, and another key under our name.
        let (_, b64) = good.split_once(':').unwrap();
        assert!(!pk1.verify(fp, &format!("other:{b64}")));
        let (_, b64_2) = sk2
            .sign(fp)
            .split_once(':')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .unwrap();
        assert!(!pk1.verify(fp, &format!("{}:{b64_2}", pk1.name)));
        for bad in [
            "".to_string(),
            "larder-test-1".to_string(),
            "larder-test-1:".to_string(),
            "larder-test-1:!!".to_string(),
            format!("larder-test-1:{}", &b64[4..]),
            format!("{good}x"),
        ] {
            assert!(!pk1.verify(fp, &bad), "{bad:?}");
        }
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let keys = nix_keys();
        let shown = format!("{:?}", keys[0].0);
        let secret = read("larder-test-1.sk");
        let (_, b64) = secret.split_once(':').unwrap();
        assert!(!shown.contains(b64));
        assert!(!shown.contains(&b64[..20]));
    }
}
