//! Integration tests: drive the real `larder` binary and real clients (Nix 2.8, plain
//! HTTP, larder's own CLI), each test against its own server in its own temp dir.
//!
//! Run one with `cargo test --test tests -- NAME`; `tests/run.sh` installs what they
//! need and runs everything.

// A panic is how a test fails; the lint against unwrap/expect is for server code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod appliance;
mod attic_api;
mod auth;
mod bad_input;
mod bootstrap;
mod cli;
mod client;
mod dashboard;
mod dedup;
mod disk_full;
mod durability;
mod gc;
mod harness;
mod logs;
mod metrics;
mod newcomer;
mod nix_eval;
mod nix_files;
mod readme;
mod s3;
mod security;
mod side_files;
mod substitution;
mod tls;
mod tokens;
mod upstreams;
