//! Secrets named in the config file: a path, or a systemd credential.
//!
//! Secrets are never written inline in the config. A `*_file` setting holds either
//! an absolute path (`/run/secrets/s3-secret`, as sops-nix and agenix write them)
//! or a bare credential name (`s3-secret`), which is read from
//! `$CREDENTIALS_DIRECTORY/<name>`: what systemd's `LoadCredential=` and
//! `LoadCredentialEncrypted=` (systemd-creds) provide, with the directory private
//! to the service. A relative path with a `/` is refused: it would depend on the
//! working directory.
//!
//! Parsing ([`SecretFile::parse`]) does no I/O, so `larder check-config` can check a
//! config without any secret present; [`SecretFile::read`] reads at start-up.

use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// The environment variable systemd sets for a service with credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Longest secret file read: far above any key or token, small enough that a
/// wrong path (a disk image, say) is refused instead of read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFile {
    /// An absolute path.
    Path(PathBuf),
    /// A systemd credential name, read from `$CREDENTIALS_DIRECTORY/<name>`.
    Credential(String),
}

/// A secret that could not be read: the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{setting} names the credential {name:?}, but $CREDENTIALS_DIRECTORY is not set: run larder under systemd with LoadCredential={name}:/path/to/file, or give an absolute path")]
    NoCredentialsDirectory { setting: String, name: String },
    #[error("{setting}: reading {path}: {source}")]
    Read {
        setting: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{setting}: {path} is empty")]
    Empty { setting: String, path: String },
    #[error("{setting}: {path} is larger than {MAX_SECRET_BYTES} bytes; is it the right file?")]
    TooLarge { setting: String, path: String },
}

impl SecretFile {
    /// Parse a `*_file` value; `setting` names it in errors (e.g. `s3_keys[0].secret_access_key_file`).
    pub fn parse(setting: &str, value: &str) -> Result<Self, ConfigError> {
        let v = value.trim();
        if v.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{setting} is empty: give an absolute path or a systemd credential name"
            )));
        }
        if v.contains('/') {
            let p = Path::new(v);
            if !p.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{setting} = {v:?}: use an absolute path, or a bare systemd credential name (no /)"
                )));
            }
            return Ok(SecretFile::Path(p.to_path_buf()));
        }
        if v == "." || v == ".." || v.chars().any(char::is_control) {
            return Err(ConfigError::Invalid(format!(
                "{setting} = {v:?} is not a valid credential name"
            )));
        }
        Ok(SecretFile::Credential(v.to_owned()))
    }

    /// The file to read, resolving a credential name against `credentials_dir`.
    pub fn path_in(
        &self,
        setting: &str,
        credentials_dir: Option<&Path>,
    ) -> Result<PathBuf, SecretError> {
        match self {
            SecretFile::Path(p) => Ok(p.clone()),
            SecretFile::Credential(name) => match credentials_dir {
                Some(d) => Ok(d.join(name)),
                None => Err(SecretError::NoCredentialsDirectory {
                    setting: setting.to_owned(),
                    name: name.clone(),
                }),
            },
        }
    }

    /// The file to read, with `$CREDENTIALS_DIRECTORY` from the environment.
    pub fn path(&self, setting: &str) -> Result<PathBuf, SecretError> {
        self.path_in(setting, credentials_dir().as_deref())
    }

    /// Read the secret, without surrounding whitespace (a trailing newline is
    /// what `echo` and most secret tools leave).
    pub fn read(&self, setting: &str) -> Result<String, SecretError> {
        let path = self.path(setting)?;
        read_secret(setting, &path)
    }
}

/// `$CREDENTIALS_DIRECTORY`, when set and not empty.
pub fn credentials_dir() -> Option<PathBuf> {
    std::env::var_os(CREDENTIALS_DIRECTORY)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Read a secret file (bounded, trimmed, not empty).
pub fn read_secret(setting: &str, path: &Path) -> Result<String, SecretError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let read_err = |source| SecretError::Read {
        setting: setting.to_owned(),
        path: shown.clone(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    f.take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_SECRET_BYTES {
        return Err(SecretError::TooLarge {
            setting: setting.to_owned(),
            path: shown,
        });
    }
    let t = text.trim();
    if t.is_empty() {
        return Err(SecretError::Empty {
            setting: setting.to_owned(),
            path: shown,
        });
    }
    Ok(t.to_owned())
}

/// For `*_file` settings that predate credentials and take any path (`[tls]`
/// certificate and key, ACME account binding): a bare name is a credential when
/// `$CREDENTIALS_DIRECTORY` is set, and otherwise stays the path it always was.
pub fn credential_or_path(p: PathBuf) -> PathBuf {
    let bare = p.components().count() == 1 && !p.is_absolute();
    match (bare, credentials_dir()) {
        (true, Some(dir)) => dir.join(p),
        _ => p,
    }
}

/// `[tls]` with [`credential_or_path`] applied to its certificate, key and ACME
/// account-binding files.
pub fn tls_credentials(
    mut t: crate::tls::config::TlsFileConfig,
) -> crate::tls::config::TlsFileConfig {
    t.cert_file = t.cert_file.map(credential_or_path);
    t.key_file = t.key_file.map(credential_or_path);
    if let Some(a) = t.acme.as_mut() {
        a.eab_kid_file = a.eab_kid_file.take().map(credential_or_path);
        a.eab_hmac_file = a.eab_hmac_file.take().map(credential_or_path);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_credential_names() {
        assert_eq!(
            SecretFile::parse("x", "/run/secrets/k").unwrap(),
            SecretFile::Path("/run/secrets/k".into())
        );
        assert_eq!(
            SecretFile::parse("x", " s3-secret\n").unwrap(),
            SecretFile::Credential("s3-secret".into())
        );
        assert!(SecretFile::parse("x", "secrets/k").is_err());
        assert!(SecretFile::parse("x", "").is_err());
        assert!(SecretFile::parse("x", "..").is_err());
    }

    #[test]
    fn credential_needs_the_directory() {
        let s = SecretFile::Credential("tok".into());
        assert!(matches!(
            s.path_in("admin_token_file", None),
            Err(SecretError::NoCredentialsDirectory { .. })
        ));
        assert_eq!(
            s.path_in(
                "admin_token_file",
                Some(Path::new("/run/credentials/larder.service"))
            )
            .unwrap(),
            PathBuf::from("/run/credentials/larder.service/tok")
        );
    }

    #[test]
    fn reads_trimmed_and_refuses_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "  hunter2hunter2\n").unwrap();
        assert_eq!(read_secret("x", &p).unwrap(), "hunter2hunter2");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            read_secret("x", &p),
            Err(SecretError::Empty { .. })
        ));
        assert!(matches!(
            read_secret("x", &dir.path().join("missing")),
            Err(SecretError::Read { .. })
        ));
    }
}
