//! The client's saved servers: `$XDG_CONFIG_HOME/larder/config.toml` (else
//! `~/.config/larder/config.toml`), written by `larder login`, mode 0600 in a 0700
//! directory because it holds tokens.
//!
//! ```toml
//! default-server = "work"
//!
//! [servers.work]
//! endpoint = "https://cache.example.com"
//! token = "v4.local.…"
//! ```
//!
//! A cache is named as Attic names it: `SERVER:CACHE`, or plain `CACHE` on the
//! default server. This module only reads and writes that file and resolves names;
//! it never talks to a server.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// File mode of the config file: it holds tokens.
const CONFIG_MODE: u32 = 0o600;
/// Mode of the directory that holds it.
const CONFIG_DIR_MODE: u32 = 0o700;

/// One saved server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerEntry {
    /// Base URL, without a trailing slash.
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The whole file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_server: Option<String>,
    #[serde(default)]
    pub servers: BTreeMap<String, ServerEntry>,
}

/// A server to talk to, with where it came from (for messages).
#[derive(Clone, Debug)]
pub struct Remote {
    /// The saved name, or the URL when given with `--server`.
    pub label: String,
    pub endpoint: String,
    pub token: Option<String>,
}

/// `$XDG_CONFIG_HOME`, else `$HOME/.config`.
pub fn xdg_config_home() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config")),
        None => bail!("neither XDG_CONFIG_HOME nor HOME is set: cannot find the client config"),
    }
}

/// Where the config file lives.
pub fn config_path() -> anyhow::Result<PathBuf> {
    Ok(xdg_config_home()?.join("larder").join("config.toml"))
}

/// Server names as Attic allows them: what `SERVER:CACHE` can carry.
fn validate_server_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_+.".contains(&b));
    if !ok {
        bail!("invalid server name {name:?}: use letters, digits and - _ + .");
    }
    Ok(())
}

/// Write `bytes` to `path` atomically with `mode` (temp file, fsync, rename).
pub fn write_private(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // The mode given to open() is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Create `dir` (and parents) with `mode` for the directories this creates.
pub fn create_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

impl ClientConfig {
    /// Read the config file; a missing file is an empty config.
    pub fn load() -> anyhow::Result<Self> {
        Self::load_from(&config_path()?)
    }

    pub fn load_from(path: &Path) -> anyhow::Result<Self> {
        match fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Write the config file (0600, in a 0700 directory).
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let path = config_path()?;
        if let Some(dir) = path.parent() {
            create_dir(dir, CONFIG_DIR_MODE)?;
        }
        let text = toml::to_string_pretty(self).context("serialising the client config")?;
        write_private(&path, text.as_bytes(), CONFIG_MODE)?;
        Ok(path)
    }

    /// Add or replace a server. The first server saved becomes the default.
    pub fn login(
        &mut self,
        name: &str,
        endpoint: &str,
        token: Option<String>,
        set_default: bool,
    ) -> anyhow::Result<()> {
        validate_server_name(name)?;
        let endpoint = endpoint.trim().trim_end_matches('/');
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!("server URL {endpoint:?} must start with http:// or https://");
        }
        self.servers.insert(
            name.to_owned(),
            ServerEntry {
                endpoint: endpoint.to_owned(),
                token: token.filter(|t| !t.trim().is_empty()),
            },
        );
        if set_default || self.default_server.is_none() {
            self.default_server = Some(name.to_owned());
        }
        Ok(())
    }

    fn named(&self, name: &str) -> anyhow::Result<Remote> {
        let entry = self.servers.get(name).with_context(|| {
            format!("no server named {name:?} (add it with `larder login {name} URL TOKEN`)")
        })?;
        Ok(Remote {
            label: name.to_owned(),
            endpoint: entry.endpoint.clone(),
            token: entry.token.clone(),
        })
    }

    /// The default server, if one is saved.
    pub fn default_remote(&self) -> anyhow::Result<Option<Remote>> {
        match &self.default_server {
            Some(name) => self.named(name).map(Some),
            None => Ok(None),
        }
    }

    /// Resolve `[SERVER:]CACHE` together with `--server`/`--token` flags.
    ///
    /// `SERVER:` picks a saved server (ignoring `--server`); otherwise
    /// `--server URL` wins, then the default saved server. `--token` overrides a
    /// saved token.
    pub fn resolve(
        &self,
        spec: &str,
        server_flag: Option<&str>,
        token_flag: Option<&str>,
    ) -> anyhow::Result<(Remote, String)> {
        let (remote, cache) = match spec.split_once(':') {
            // A saved server named in the spec wins over `--server` (which may
            // come from `LARDER_SERVER` in the environment).
            Some((server, cache)) => (self.named(server)?, cache.to_owned()),
            None => {
                let remote = match server_flag {
                    Some(url) => Remote {
                        label: url.to_owned(),
                        endpoint: url.trim_end_matches('/').to_owned(),
                        token: None,
                    },
                    None => self.default_remote()?.with_context(|| {
                        "no server: run `larder login NAME URL TOKEN`, or pass --server URL"
                    })?,
                };
                (remote, spec.to_owned())
            }
        };
        if cache.is_empty() {
            bail!("{spec:?} names no cache");
        }
        let token = token_flag.map(str::to_owned).or(remote.token);
        Ok((Remote { token, ..remote }, cache))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClientConfig {
        let mut c = ClientConfig::default();
        c.login("work", "https://w.example/", Some("tw".into()), false)
            .unwrap();
        c.login("home", "http://h.example:8080", Some("th".into()), false)
            .unwrap();
        c
    }

    #[test]
    fn first_login_is_the_default() {
        let c = sample();
        assert_eq!(c.default_server.as_deref(), Some("work"));
        assert_eq!(c.servers["work"].endpoint, "https://w.example");
    }

    #[test]
    fn names_resolve_like_attic() {
        let c = sample();
        let (r, cache) = c.resolve("team-dev", None, None).unwrap();
        assert_eq!((r.label.as_str(), cache.as_str()), ("work", "team-dev"));
        assert_eq!(r.token.as_deref(), Some("tw"));
        let (r, cache) = c.resolve("home:x", None, None).unwrap();
        assert_eq!(
            (r.endpoint.as_str(), cache.as_str()),
            ("http://h.example:8080", "x")
        );
        assert_eq!(r.token.as_deref(), Some("th"));
        let (r, _) = c.resolve("home:x", None, Some("over")).unwrap();
        assert_eq!(r.token.as_deref(), Some("over"));
        let (r, _) = c.resolve("x", Some("http://s:1/"), Some("t")).unwrap();
        assert_eq!(
            (r.endpoint.as_str(), r.token.as_deref()),
            ("http://s:1", Some("t"))
        );
        assert!(c.resolve("nope:x", None, None).is_err());
        let (r, _) = c.resolve("home:x", Some("http://s"), None).unwrap();
        assert_eq!(r.endpoint, "http://h.example:8080", "the named server wins");
        assert!(c.resolve("home:", None, None).is_err());
        assert!(ClientConfig::default().resolve("x", None, None).is_err());
    }

    #[test]
    fn bad_logins_are_refused() {
        let mut c = ClientConfig::default();
        assert!(c.login("a:b", "http://x", None, false).is_err());
        assert!(c.login("a", "ftp://x", None, false).is_err());
    }

    #[test]
    fn round_trips_through_toml() {
        let c = sample();
        let text = toml::to_string_pretty(&c).unwrap();
        assert!(text.contains("default-server = \"work\""), "{text}");
        let back: ClientConfig = toml::from_str(&text).unwrap();
        assert_eq!(back.servers, c.servers);
    }
}
