//! Nix's base32 ("nix32"): alphabet `0123456789abcdfghijklmnpqrsvwxyz`, bytes read
//! from the end, as used in store path hashes and `sha256:` hashes.

use super::Error;

/// Encoded length of `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    todo!("{n}")
}

/// Encode bytes as nix32.
pub fn encode(bytes: &[u8]) -> String {
    todo!("{bytes:?}")
}

/// Decode nix32; the output has `s.len() * 5 / 8` bytes. Rejects characters outside
/// the alphabet and non-zero padding bits.
pub fn decode(s: &str) -> Result<Vec<u8>, Error> {
    todo!("{s}")
}
