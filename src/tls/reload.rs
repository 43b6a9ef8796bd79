//! Static mode: serve the operator's certificate and key files, and load them again
//! when they change on disk (their size or mtime, looked at every
//! [`POLL_EVERY`]) or when larder gets SIGHUP.
//!
//! A reload that fails (a half-written file, a key that does not match) keeps the
//! old certificate serving and is retried at the next look, so replacing the two
//! files one after the other is safe. Established connections are never touched.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use super::certs;
use super::resolver::CertResolver;

/// How often the files are looked at. A stat of two files costs nothing.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

pub(crate) fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: md.modified().ok(),
        len: md.len(),
        inode: md.ino(),
    })
}

pub(crate) struct FileWatcher {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub resolver: Arc<CertResolver>,
    pub wake: Arc<Notify>,
    /// The stamps of the files that are being served.
    pub loaded: (Option<Stamp>, Option<Stamp>),
}

impl FileWatcher {
    pub(crate) async fn run(mut self) {
        let mut last_error: Option<String> = None;
        loop {
            let forced = tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => false,
                _ = self.wake.notified() => true,
            };
            let now = (stamp(&self.cert), stamp(&self.key));
            if !forced && now == self.loaded {
                continue;
            }
            match certs::load_files(&self.cert, &self.key) {
                Ok(loaded) => {
                    tracing::info!(
                        cert = %self.cert.display(),
                        names = ?loaded.info.names,
                        issuer = %loaded.info.issuer,
                        not_after = %certs::format_unix(loaded.info.not_after),
                        sha256 = %loaded.info.sha256,
                        reason = if forced { "SIGHUP" } else { "files changed" },
                        "TLS certificate reloaded"
                    );
                    self.resolver.install(loaded);
                    self.loaded = now;
                    last_error = None;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(error = %msg, "TLS certificate reload failed; the previous certificate keeps serving");
                    }
                    last_error = Some(msg);
                }
            }
        }
    }
}
