//! The `larder` binary: parse arguments, run one command, map errors to an exit
//! code. This is the only place that uses `anyhow`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// glibc malloc arenas the process may use. By default glibc gives up to 8 per core
/// to threads that contend, and each keeps the buffers freed into it: with 16
/// downloads and an upload running, that alone held 40-60 MiB of resident memory
/// (docs/benchmarks.md). Two arenas cost no measurable speed here.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

fn main() -> ExitCode {
    // Before any other thread exists. An explicit MALLOC_ARENA_MAX still wins.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a malloc tunable; it is called once, before
        // the process starts any thread, with a valid parameter and value.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
    let args = cli::Args::parse();
    if !args.is_serve() {
        // A command whose output goes to a closed pipe (`larder … | head`) ends
        // quietly, as other command-line tools do, instead of panicking in
        // `println!`. The server keeps Rust's default (SIGPIPE ignored): a client
        // that goes away must never stop it.
        // SAFETY: restoring a signal's default disposition before any other
        // thread exists touches no memory.
        #[cfg(unix)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 2 is clap's code for a usage error; a command that ran and failed
            // exits 1 (documented in `larder --help`).
            ExitCode::FAILURE
        }
    }
}
