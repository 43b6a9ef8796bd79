//! The `.narinfo` text format: `Key: value` lines.
//!
//! Parsing keeps unknown fields so `parse -> render` round-trips a narinfo written
//! by Nix byte for byte.

use super::hash::Sha256;
use super::Error;

/// A parsed narinfo. References and Deriver are basenames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    /// Full store path.
    pub store_path: String,
    pub url: String,
    /// `None` when the line is absent (Nix then means bzip2).
    pub compression: Option<String>,
    pub file_hash: Option<Sha256>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256,
    pub nar_size: u64,
    /// Basenames, in the order given.
    pub references: Vec<String>,
    pub deriver: Option<String>,
    /// Raw `name:base64` strings.
    pub sigs: Vec<String>,
    pub ca: Option<String>,
    /// Unknown `(key, value)` lines, kept in order after the known ones.
    pub extra: Vec<(String, String)>,
}

impl NarInfo {
    /// Parse narinfo text. Required: StorePath, URL, NarHash, NarSize. Rejects
    /// lines without `: `, duplicate single-valued keys, bad hashes and sizes,
    /// and References/Deriver entries that are not store path basenames.
    pub fn parse(text: &str) -> Result<Self, Error> {
        todo!("{text}")
    }
    /// Render in Nix's order: StorePath, URL, Compression, FileHash, FileSize,
    /// NarHash, NarSize, References, Deriver, Sig..., CA, then extras. Hashes are
    /// written as `sha256:<nix32>`. `References:` is always written, possibly empty.
    pub fn render(&self) -> String {
        todo!()
    }
}
