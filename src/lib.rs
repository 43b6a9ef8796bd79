//! larder: a complete private Nix binary cache in one binary.
//!
//! Layers, in the one direction data flows (see `ARCHITECTURE.md`):
//! `http` (the edge) -> `service` (cache logic) -> `store` (chunk bytes) and
//! `meta` (SQLite rows). `nix` holds the Nix formats as pure code with no I/O.

pub mod auth;
pub mod bootstrap;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod meta;
pub mod metrics;
pub mod nix;
pub mod s3;
pub mod service;
pub mod store;
pub mod tls;
