//! The error type of the Nix format layer.

/// Everything that can be wrong with Nix-format input. Each message is one line
/// that a client can act on; it is sent back as the body of a 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A nix-base32 string has a character outside the alphabet or a bad length.
    #[error("invalid nix-base32: {0}")]
    Base32(String),
    /// A hash string is not `sha256:<nix32|hex|base64>` or `sha256-<base64>`.
    #[error("invalid hash: {0}")]
    Hash(String),
    /// A store path or store path hash has the wrong shape.
    #[error("invalid store path: {0}")]
    StorePath(String),
    /// A narinfo is malformed.
    #[error("invalid narinfo: {0}")]
    NarInfo(String),
    /// A key or signature is malformed or does not verify.
    #[error("invalid key or signature: {0}")]
    Key(String),
    /// A NAR stream is not a valid NAR (or is cut short).
    #[error("invalid NAR: {0}")]
    Nar(String),
}
