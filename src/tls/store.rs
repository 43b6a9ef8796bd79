//! What ACME mode keeps in `<data-dir>/acme/` (a 0700 directory, every file 0600,
//! each written whole to a temporary file, synced, then renamed into place):
//!
//! - `account.json`: the directory URL and the account credentials (key and URL).
//!   An account belongs to one directory; another directory gets a new account.
//! - `certificate.json`: the directory, the names, the PEM chain and the PEM key of
//!   the certificate being served. Chain and key live in one file so a crash can
//!   never pair a new certificate with an old key.
//! - `state.json`: what `larder tls status` reports besides the certificate: when
//!   the last order was placed, the last failure and when the next attempt is due.
//!
//! A restart loads `certificate.json` and serves it at once; it orders nothing
//! while that certificate covers the configured names and is not yet due.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::TlsError;

/// The ACME state directory of a data dir.
pub fn acme_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("acme")
}

/// `account.json`
#[derive(Serialize, Deserialize)]
pub struct StoredAccount {
    pub directory: String,
    pub credentials: instant_acme::AccountCredentials,
}

/// `certificate.json`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCert {
    pub directory: String,
    pub domains: Vec<String>,
    /// Unix seconds.
    pub obtained_at: i64,
    pub chain_pem: String,
    pub key_pem: String,
}

/// `state.json`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AcmeState {
    /// Orders placed with the CA by this data dir, ever.
    #[serde(default)]
    pub orders_placed: u64,
    /// Unix seconds of the last order.
    #[serde(default)]
    pub last_order_at: Option<i64>,
    /// Why the last attempt failed, as the CA (or the network) said; cleared on success.
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_at: Option<i64>,
    /// When the next attempt after a failure is due (Unix seconds).
    #[serde(default)]
    pub next_attempt_at: Option<i64>,
}

/// The files of one data dir's ACME state.
#[derive(Debug, Clone)]
pub struct AcmeStore {
    dir: PathBuf,
}

impl AcmeStore {
    pub fn new(data_dir: &Path) -> AcmeStore {
        AcmeStore {
            dir: acme_dir(data_dir),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Create the directory (0700) if it is missing.
    pub fn ensure_dir(&self) -> Result<(), TlsError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| self.io(&self.dir, source))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| self.io(&self.dir, source))
    }

    fn io(&self, path: &Path, source: std::io::Error) -> TlsError {
        TlsError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, TlsError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                TlsError::Store(format!(
                    "{} is damaged ({e}); move it away to start afresh",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(self.io(&path, source)),
        }
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), TlsError> {
        self.ensure_dir()?;
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| TlsError::Store(format!("encoding {name}: {e}")))?;
        write_private(&self.dir.join(name), &bytes)
    }

    /// The account for `directory`, if one was made before.
    pub fn load_account(
        &self,
        directory: &str,
    ) -> Result<Option<instant_acme::AccountCredentials>, TlsError> {
        Ok(self
            .read_json::<StoredAccount>("account.json")?
            .filter(|a| a.directory == directory)
            .map(|a| a.credentials))
    }

    pub fn save_account(&self, account: &StoredAccount) -> Result<(), TlsError> {
        self.write_json("account.json", account)
    }

    /// Forget the account (the CA no longer knows it).
    pub fn drop_account(&self) -> Result<(), TlsError> {
        let path = self.dir.join("account.json");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io(&path, e)),
            _ => Ok(()),
        }
    }

    pub fn load_certificate(&self) -> Result<Option<StoredCert>, TlsError> {
        self.read_json("certificate.json")
    }

    pub fn save_certificate(&self, cert: &StoredCert) -> Result<(), TlsError> {
        self.write_json("certificate.json", cert)
    }

    pub fn load_state(&self) -> Result<AcmeState, TlsError> {
        Ok(self.read_json("state.json")?.unwrap_or_default())
    }

    pub fn save_state(&self, state: &AcmeState) -> Result<(), TlsError> {
        self.write_json("state.json", state)
    }
}

/// Write `bytes` to `path` with mode 0600: temporary file, sync, rename, sync dir.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let io = |p: &Path, source| TlsError::Io {
        path: p.display().to_string(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    // A file left by an older run may have looser bits: mode() applies only on create.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_are_private_and_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = AcmeStore::new(d.path());
        assert!(s.load_certificate().unwrap().is_none());
        let c = StoredCert {
            directory: "https://ca.test/dir".into(),
            domains: vec!["a.test".into()],
            obtained_at: 5,
            chain_pem: "chain".into(),
            key_pem: "key".into(),
        };
        s.save_certificate(&c).unwrap();
        let back = s.load_certificate().unwrap().unwrap();
        assert_eq!(back.domains, c.domains);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&d.path().join("acme/certificate.json")), 0o600);
        assert_eq!(mode(&d.path().join("acme")), 0o700);
        let mut st = s.load_state().unwrap();
        st.orders_placed = 3;
        s.save_state(&st).unwrap();
        assert_eq!(s.load_state().unwrap().orders_placed, 3);
        assert_eq!(mode(&d.path().join("acme/state.json")), 0o600);
    }

    #[test]
    fn a_damaged_file_is_an_error_that_names_it() {
        let d = tempfile::tempdir().unwrap();
        let s = AcmeStore::new(d.path());
        s.ensure_dir().unwrap();
        std::fs::write(d.path().join("acme/state.json"), b"{nope").unwrap();
        let e = s.load_state().unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
    }
}
