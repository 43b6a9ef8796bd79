//! A streaming validator for the NAR (Nix ARchive) format.
//!
//! Grammar (every string is a u64 little-endian length, the bytes, then zero
//! padding to a multiple of 8):
//! ```text
//! nar       = "nix-archive-1" node
//! node      = "(" "type" ( regular | symlink | directory ) ")"
//! regular   = "regular" [ "executable" "" ] "contents" <bytes>
//! symlink   = "symlink" "target" <string>
//! directory = "directory" { "entry" "(" "name" <name> "node" node ")" }
//! ```
//! Entry names are strictly ascending, non-empty, not `.` or `..`, and contain no
//! `/` or NUL. Padding bytes must be zero.

use super::Error;

/// Validates a NAR fed in pieces of any size. Memory is bounded by the nesting
/// depth and the longest name, never by file contents.
pub struct NarValidator {
    // implementation-defined state
}

impl NarValidator {
    pub fn new() -> Self {
        todo!()
    }
    /// Feed the next bytes. Fails as soon as the stream cannot be a NAR, including
    /// bytes after the end of the archive.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Error> {
        todo!("{data:?}")
    }
    /// The stream ended: fails when the archive is incomplete (cut short).
    pub fn finish(&self) -> Result<(), Error> {
        todo!()
    }
}

impl Default for NarValidator {
    fn default() -> Self {
        Self::new()
    }
}
