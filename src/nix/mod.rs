//! Nix's wire and on-disk formats, as pure code: no I/O, no clocks, no globals.
//!
//! Everything here takes bytes or strings and returns values or [`Error`]. The
//! service layer feeds these parsers; nothing here knows about HTTP, SQLite or
//! the chunk store.

pub mod base32;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod signing;
pub mod store_path;

mod error;
pub use error::Error;
