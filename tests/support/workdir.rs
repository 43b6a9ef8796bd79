//! Per-test scratch directories that clean up after Nix's read-only store trees.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A temporary directory, removed when dropped, unless the test is failing and
/// `LARDER_KEEP_TEST_DIRS` is set (then its path is printed for a post-mortem).
pub struct Workdir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Workdir {
    pub fn new(label: &str) -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("larder-test-{label}-"))
            .tempdir()
            .expect("creating a temporary directory");
        let path = dir.path().to_path_buf();
        Workdir {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("LARDER_KEEP_TEST_DIRS").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping {}", dir.keep().display());
            }
            return;
        }
        // Store paths are read-only directories; give ourselves write access back so
        // the removal works for non-root users too.
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(&self.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        drop(self.dir.take());
    }
}
