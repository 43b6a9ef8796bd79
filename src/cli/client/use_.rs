//! `larder use CACHE`: the nix.conf lines and netrc entry that make a cache a
//! substituter, printed, or installed with `--write`.
//!
//! Installing edits two files in place and is idempotent:
//! - nix.conf: the URL is added to `extra-substituters` and the key to
//!   `extra-trusted-public-keys` (replacing an older key of the same name, so a
//!   rotated key does not pile up), and `netrc-file` points at the netrc;
//! - netrc (mode 0600): one `machine HOST password TOKEN` line, replacing any
//!   earlier line for that host. Nix sends it as HTTP Basic with an empty user,
//!   which larder accepts. A public cache used without a token needs no netrc.
//!
//! A pull-through cache (one with upstreams, `docs/design/upstreams.md`) is put
//! first instead: `substituters` gets its URL at the head, with
//! `?priority=` below cache.nixos.org's 40 (Nix asks substituters by priority,
//! then in the order listed), and keeps what it named before (Nix's default,
//! cache.nixos.org, when it named nothing) as the fallback behind it.
//!
//! Where: `--nix-conf PATH` / `--netrc PATH`, else `$NIX_CONF_DIR/nix.conf` when
//! `NIX_CONF_DIR` is set, else the user's `$XDG_CONFIG_HOME/nix/nix.conf`; the
//! netrc defaults to the `netrc-file` already named there, else `netrc` beside it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::config::{create_dir, write_private, xdg_config_home};

/// Mode of a netrc: it holds a token.
const NETRC_MODE: u32 = 0o600;
/// Mode of a newly written nix.conf.
const NIX_CONF_MODE: u32 = 0o644;

/// What `use` installs.
#[derive(Clone, Debug)]
pub struct UseLines {
    pub substituter: String,
    pub public_key: String,
    pub host: String,
    pub token: Option<String>,
    /// The cache proxies upstreams: put it before every other substituter, with
    /// this priority.
    pub first: Option<i32>,
}

/// Nix's `substituters` when nix.conf names none.
const NIX_DEFAULT_SUBSTITUTERS: &[&str] = &["https://cache.nixos.org/"];
/// cache.nixos.org's priority; a pull-through cache must answer before it.
const NIXOS_PRIORITY: i32 = 40;

/// The priority `use` gives a pull-through cache of this priority.
pub fn first_priority(cache_priority: i32) -> i32 {
    cache_priority.min(NIXOS_PRIORITY - 1)
}

/// The substituter URL written for these lines.
fn substituter_url(lines: &UseLines) -> String {
    match lines.first {
        Some(p) => format!("{}?priority={p}", lines.substituter),
        None => lines.substituter.clone(),
    }
}

/// Whether a nix.conf substituter entry is this cache (with or without a query).
fn is_this(entry: &str, url: &str) -> bool {
    entry.split('?').next() == Some(url)
}

/// The host part of a URL, without user info or port (what netrc matches).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// The nix.conf to edit when none is named.
pub fn default_nix_conf() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("NIX_CONF_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("nix.conf"));
    }
    Ok(xdg_config_home()?.join("nix").join("nix.conf"))
}

/// Split a nix.conf line into (key, values) when it is an assignment.
fn assignment(line: &str) -> Option<(&str, &str)> {
    let body = line.split('#').next().unwrap_or("");
    let (k, v) = body.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && !k.contains(char::is_whitespace)).then_some((k, v.trim()))
}

/// Set `key` in nix.conf text: `edit` turns the current values (if any) into
/// the new ones.
fn set_key(text: &str, key: &str, edit: impl Fn(Vec<String>) -> Vec<String>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut found = false;
    for line in text.lines() {
        match assignment(line) {
            Some((k, v)) if k == key && !found => {
                found = true;
                let values = edit(v.split_whitespace().map(str::to_owned).collect());
                out.push(format!("{key} = {}", values.join(" ")));
            }
            Some((k, _)) if k == key => {} // a later duplicate would override ours
            _ => out.push(line.to_owned()),
        }
    }
    if !found {
        out.push(format!("{key} = {}", edit(Vec::new()).join(" ")));
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// The value of `key` in nix.conf text.
pub fn get_key(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(assignment)
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

/// nix.conf text with the cache added.
pub fn edit_nix_conf(text: &str, lines: &UseLines, netrc: Option<&Path>) -> String {
    let url = lines.substituter.clone();
    let mut t = if lines.first.is_some() {
        let entry = substituter_url(lines);
        let had = get_key(text, "substituters").is_some();
        let t = set_key(text, "substituters", |v| {
            let rest: Vec<String> = if had {
                v
            } else {
                NIX_DEFAULT_SUBSTITUTERS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            };
            std::iter::once(entry.clone())
                .chain(rest.into_iter().filter(|e| !is_this(e, &url)))
                .collect()
        });
        // Listed once: an extra-substituters entry would come after the others.
        if get_key(&t, "extra-substituters").is_some() {
            set_key(&t, "extra-substituters", |v| {
                v.into_iter().filter(|e| !is_this(e, &url)).collect()
            })
        } else {
            t
        }
    } else {
        set_key(text, "extra-substituters", |mut v| {
            if !v.contains(&url) {
                v.push(url.clone());
            }
            v
        })
    };
    let key = lines.public_key.clone();
    let key_name = key.split(':').next().unwrap_or("").to_owned();
    t = set_key(&t, "extra-trusted-public-keys", |v| {
        let mut v: Vec<String> = v
            .into_iter()
            .filter(|k| k.split(':').next() != Some(key_name.as_str()))
            .collect();
        v.push(key.clone());
        v
    });
    if let Some(n) = netrc {
        let n = n.display().to_string();
        t = set_key(&t, "netrc-file", |_| vec![n.clone()]);
    }
    t
}

/// netrc text with one `machine HOST password TOKEN` line for the host.
pub fn edit_netrc(text: &str, host: &str, token: &str) -> String {
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            !(w.next() == Some("machine") && w.next() == Some(host))
        })
        .map(str::to_owned)
        .collect();
    out.push(format!("machine {host} password {token}"));
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn read_or_empty(p: &Path) -> anyhow::Result<String> {
    match fs::read_to_string(p) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Where the files go.
pub struct Destinations {
    pub nix_conf: PathBuf,
    pub netrc: PathBuf,
}

impl Destinations {
    pub fn resolve(nix_conf: Option<PathBuf>, netrc: Option<PathBuf>) -> anyhow::Result<Self> {
        let nix_conf = match nix_conf {
            Some(p) => p,
            None => default_nix_conf()?,
        };
        let netrc = match netrc {
            Some(p) => p,
            None => match get_key(&read_or_empty(&nix_conf)?, "netrc-file") {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => nix_conf
                    .parent()
                    .map(|d| d.join("netrc"))
                    .unwrap_or_else(|| PathBuf::from("netrc")),
            },
        };
        Ok(Self { nix_conf, netrc })
    }
}

/// The lines `use` prints.
pub fn render(lines: &UseLines, dest: &Destinations) -> String {
    let mut s = String::new();
    s.push_str(&format!("# {}\n", dest.nix_conf.display()));
    if lines.first.is_some() {
        let current = read_or_empty(&dest.nix_conf).unwrap_or_default();
        let edited = edit_nix_conf(&current, lines, None);
        let subs = get_key(&edited, "substituters").unwrap_or_default();
        s.push_str("# a pull-through cache: first, the others behind it\n");
        s.push_str(&format!("substituters = {subs}\n"));
    } else {
        s.push_str(&format!("extra-substituters = {}\n", lines.substituter));
    }
    s.push_str(&format!(
        "extra-trusted-public-keys = {}\n",
        lines.public_key
    ));
    if let Some(t) = &lines.token {
        s.push_str(&format!("netrc-file = {}\n", dest.netrc.display()));
        s.push_str(&format!("# {}\n", dest.netrc.display()));
        s.push_str(&format!("machine {} password {t}\n", lines.host));
    }
    s
}

/// With a multi-user Nix (a daemon) and a user's own nix.conf, the daemon uses
/// `extra-substituters` only from a user in its `trusted-users`: say so, and what
/// to do instead. `None` when that cannot matter (root, no daemon, /etc/nix).
pub fn daemon_trust_note(nix_conf: &Path) -> Option<String> {
    let daemon = Path::new("/nix/var/nix/daemon-socket/socket").exists();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    trust_note(nix_conf, daemon, root)
}

fn trust_note(nix_conf: &Path, daemon: bool, root: bool) -> Option<String> {
    if !daemon || root || nix_conf.starts_with("/etc") {
        return None;
    }
    Some(format!(
        "note: a Nix daemon runs here; it ignores extra-substituters from {} unless you \
         are in trusted-users in /etc/nix/nix.conf (then restart nix-daemon), or put these \
         lines in /etc/nix/nix.conf instead (`larder use … --nix-conf /etc/nix/nix.conf \
         --netrc /etc/nix/netrc --write` as root); `larder doctor CACHE` checks",
        nix_conf.display()
    ))
}

/// Install the lines into the destination files.
pub fn install(lines: &UseLines, dest: &Destinations) -> anyhow::Result<()> {
    let netrc = lines.token.as_ref().map(|_| dest.netrc.as_path());
    if let (Some(token), Some(path)) = (&lines.token, netrc) {
        if let Some(dir) = path.parent() {
            create_dir(dir, 0o755)?;
        }
        let text = edit_netrc(&read_or_empty(path)?, &lines.host, token);
        write_private(path, text.as_bytes(), NETRC_MODE)?;
    }
    let conf = &dest.nix_conf;
    if let Some(dir) = conf.parent() {
        create_dir(dir, 0o755)?;
    }
    let mode = fs::metadata(conf)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(NIX_CONF_MODE);
    let text = edit_nix_conf(&read_or_empty(conf)?, lines, netrc);
    write_private(conf, text.as_bytes(), mode)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(key: &str) -> UseLines {
        UseLines {
            substituter: "http://h:8080/team-dev".into(),
            public_key: key.into(),
            host: "h".into(),
            token: Some("tok".into()),
            first: None,
        }
    }

    #[test]
    fn a_pull_through_cache_goes_first() {
        let mut l = lines("team-dev:AAA=");
        l.first = Some(first_priority(41));
        // Nothing named: Nix's default stays, behind larder.
        let t = edit_nix_conf("sandbox = false\n", &l, None);
        assert!(
            t.contains(
                "substituters = http://h:8080/team-dev?priority=39 https://cache.nixos.org/\n"
            ),
            "{t}"
        );
        assert_eq!(edit_nix_conf(&t, &l, None), t, "idempotent");
        // Named before, and listed as an extra: moved to the head, once.
        let t = edit_nix_conf(
            "substituters = https://a https://cache.nixos.org\nextra-substituters = http://h:8080/team-dev\n",
            &l,
            None,
        );
        assert!(
            t.contains("substituters = http://h:8080/team-dev?priority=39 https://a https://cache.nixos.org\n"),
            "{t}"
        );
        assert!(!t.contains("extra-substituters = http"), "{t}");
        assert_eq!(first_priority(30), 30);
    }

    #[test]
    fn hosts() {
        assert_eq!(
            url_host("http://127.0.0.1:8080/c").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            url_host("https://u:p@cache.example/x").as_deref(),
            Some("cache.example")
        );
        assert_eq!(url_host("http://[::1]:80/c").as_deref(), Some("::1"));
        assert_eq!(url_host("http:///c"), None);
    }

    #[test]
    fn nix_conf_edits_are_idempotent_and_replace_rotated_keys() {
        let start = "# mine\nextra-substituters = https://other\nsandbox = false\n";
        let once = edit_nix_conf(start, &lines("team-dev:AAA="), Some(Path::new("/n")));
        let twice = edit_nix_conf(&once, &lines("team-dev:AAA="), Some(Path::new("/n")));
        assert_eq!(once, twice);
        assert!(once.contains("extra-substituters = https://other http://h:8080/team-dev\n"));
        assert!(once.contains("extra-trusted-public-keys = team-dev:AAA=\n"));
        assert!(once.contains("netrc-file = /n\n"));
        assert!(once.starts_with("# mine\n") && once.contains("sandbox = false\n"));
        let rotated = edit_nix_conf(&once, &lines("team-dev:BBB="), None);
        assert!(
            rotated.contains("extra-trusted-public-keys = team-dev:BBB=\n"),
            "{rotated}"
        );
        assert!(!rotated.contains("AAA"));
    }

    #[test]
    fn the_trusted_users_note_only_where_it_matters() {
        let user = Path::new("/home/u/.config/nix/nix.conf");
        let note = trust_note(user, true, false).expect("a note for a user behind a daemon");
        assert!(
            note.contains("trusted-users") && note.contains("/etc/nix/nix.conf"),
            "{note}"
        );
        assert!(note.contains("/home/u/.config/nix/nix.conf"), "{note}");
        assert_eq!(trust_note(user, false, false), None, "no daemon");
        assert_eq!(trust_note(user, true, true), None, "root is trusted");
        assert_eq!(
            trust_note(Path::new("/etc/nix/nix.conf"), true, false),
            None
        );
    }

    #[test]
    fn netrc_keeps_one_line_per_host() {
        let t = edit_netrc(
            "machine other password x\nmachine h password old\n",
            "h",
            "new",
        );
        assert_eq!(t, "machine other password x\nmachine h password new\n");
    }
}
