//! The `[tls]` and `[tls.acme]` tables of the config file, and their validated form.
//!
//! The file shapes ([`TlsFileConfig`], [`AcmeFileConfig`]) are what an operator
//! writes; [`TlsSettings::resolve`] turns them into settings nothing downstream has
//! to check again: listen addresses parsed, exactly one certificate source, domain
//! names well formed, exemption CIDRs parsed. It does no I/O: files named here are
//! read when the server starts, so a missing file is reported with its path then.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// The HTTPS listener when `[tls] listen` is not given: loopback only, like `listen`.
pub const DEFAULT_TLS_LISTEN: &str = "127.0.0.1:8443";
/// Let's Encrypt production: the directory when `[tls.acme] directory` is not given.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt staging (`directory = "letsencrypt-staging"`).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// First wait after a failed ACME attempt. Let's Encrypt allows five failed
/// validations per name per hour, so the default starts at a minute and doubles.
pub const DEFAULT_RETRY_INITIAL_SECS: u64 = 60;
/// Longest wait between ACME attempts while the CA keeps failing.
pub const DEFAULT_RETRY_MAX_SECS: u64 = 3600;

/// One value or a list of them (`listen = "a"` or `listen = ["a", "b"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `[tls]` as written in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFileConfig {
    /// HTTPS listen address, or several.
    pub listen: Option<OneOrMany>,
    /// Static mode: a PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// Static mode: the PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Path prefixes the plain listener serves instead of redirecting to HTTPS.
    pub redirect_exempt_paths: Option<Vec<String>>,
    /// Client networks (`192.168.0.0/16`, `10.0.0.7`) the plain listener serves
    /// instead of redirecting to HTTPS.
    pub redirect_exempt_cidrs: Option<Vec<String>>,
    /// ACME mode.
    pub acme: Option<AcmeFileConfig>,
}

/// `[tls.acme]` as written in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFileConfig {
    pub domains: Vec<String>,
    /// Directory URL, or `letsencrypt` / `letsencrypt-staging`.
    pub directory: Option<String>,
    /// PEM bundle trusted (besides the system roots) for the directory's own HTTPS.
    pub directory_ca_file: Option<PathBuf>,
    /// `http-01` (default) or `tls-alpn-01`.
    pub challenge: Option<String>,
    /// `mailto:` URI(s); a bare address gets `mailto:` prepended.
    pub contact: Option<OneOrMany>,
    /// External Account Binding: a file holding the key id.
    pub eab_kid_file: Option<PathBuf>,
    /// External Account Binding: a file holding the base64url HMAC key.
    pub eab_hmac_file: Option<PathBuf>,
    pub retry_initial_secs: Option<u64>,
    pub retry_max_secs: Option<u64>,
}

/// Validated `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    pub source: CertSource,
    pub redirect_exempt_paths: Vec<String>,
    pub redirect_exempt_cidrs: Vec<Cidr>,
}

/// Where the served certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// Operator-managed files, reloaded when they change or on SIGHUP.
    Files { cert: PathBuf, key: PathBuf },
    /// Obtained and renewed by larder itself.
    Acme(AcmeSettings),
}

/// Validated `[tls.acme]`.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// Lowercase DNS names, in the order given; the first one names the service.
    pub domains: Vec<String>,
    pub directory: String,
    pub directory_ca_file: Option<PathBuf>,
    pub challenge: ChallengeKind,
    pub contact: Vec<String>,
    pub eab: Option<EabFiles>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// The files of an External Account Binding.
#[derive(Debug, Clone)]
pub struct EabFiles {
    pub kid_file: PathBuf,
    pub hmac_file: PathBuf,
}

/// The challenge larder answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// RFC 8555 §8.3, on the plain listener.
    Http01,
    /// RFC 8737, on the HTTPS listener.
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a single host).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|e| format!("{s:?} is not an address or network: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside this network. An IPv4-mapped IPv6 client address
    /// (`::ffff:a.b.c.d`, from a dual-stack socket) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn invalid(msg: String) -> ConfigError {
    ConfigError::Invalid(msg)
}

/// A DNS name ACME can validate with HTTP-01 or TLS-ALPN-01: LDH labels, no
/// wildcard (that needs DNS-01), not an IP address.
pub fn check_domain(name: &str) -> Result<String, String> {
    let d = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.starts_with("*.") {
        return Err(format!(
            "{name:?}: wildcard names need DNS-01, which larder does not answer"
        ));
    }
    if d.parse::<IpAddr>().is_ok() {
        return Err(format!("{name:?}: give a DNS name, not an address"));
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if d.is_empty() || d.len() > 253 || !d.split('.').all(ok_label) {
        return Err(format!("{name:?} is not a valid DNS name"));
    }
    Ok(d)
}

impl TlsSettings {
    /// Validate `[tls]` (and `[tls.acme]`).
    pub fn resolve(file: TlsFileConfig) -> Result<TlsSettings, ConfigError> {
        let listen_s = file
            .listen
            .map(OneOrMany::into_vec)
            .unwrap_or_else(|| vec![DEFAULT_TLS_LISTEN.to_owned()]);
        if listen_s.is_empty() {
            return Err(invalid("[tls] listen: give at least one address".into()));
        }
        let listen = listen_s
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>()
                    .map_err(|e| invalid(format!("[tls] listen address {s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let source = match (file.cert_file, file.key_file, file.acme) {
            (Some(cert), Some(key), None) => CertSource::Files { cert, key },
            (None, None, Some(acme)) => CertSource::Acme(AcmeSettings::resolve(acme)?),
            (None, None, None) => {
                return Err(invalid(
                    "[tls] needs cert_file and key_file, or a [tls.acme] table".into(),
                ))
            }
            (_, _, Some(_)) => {
                return Err(invalid(
                    "[tls]: give cert_file/key_file or [tls.acme], not both".into(),
                ))
            }
            _ => return Err(invalid("[tls]: cert_file and key_file go together".into())),
        };
        let redirect_exempt_paths = file.redirect_exempt_paths.unwrap_or_default();
        for p in &redirect_exempt_paths {
            if !p.starts_with('/') {
                return Err(invalid(format!(
                    "[tls] redirect_exempt_paths: {p:?} must start with /"
                )));
            }
        }
        let redirect_exempt_cidrs = file
            .redirect_exempt_cidrs
            .unwrap_or_default()
            .iter()
            .map(|c| {
                Cidr::parse(c).map_err(|e| invalid(format!("[tls] redirect_exempt_cidrs: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TlsSettings {
            listen,
            source,
            redirect_exempt_paths,
            redirect_exempt_cidrs,
        })
    }

    /// The ACME settings, in ACME mode.
    pub fn acme(&self) -> Option<&AcmeSettings> {
        match &self.source {
            CertSource::Acme(a) => Some(a),
            CertSource::Files { .. } => None,
        }
    }

    /// The base URL clients use when no `public_url` is configured: the first
    /// ACME name, else the first HTTPS listen address; the port is left out when
    /// it is 443. `port` overrides the configured one (a listener bound to port 0).
    pub fn default_base_url(&self, port: Option<u16>) -> String {
        let first = self.listen.first().copied();
        let port = port.or(first.map(|a| a.port())).unwrap_or(443);
        let host = match (self.acme(), first) {
            (Some(a), _) if !a.domains.is_empty() => a.domains[0].clone(),
            (_, Some(SocketAddr::V6(v6))) => format!("[{}]", v6.ip()),
            (_, Some(SocketAddr::V4(v4))) => v4.ip().to_string(),
            _ => "localhost".to_owned(),
        };
        if port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{port}")
        }
    }
}

impl AcmeSettings {
    fn resolve(file: AcmeFileConfig) -> Result<AcmeSettings, ConfigError> {
        if file.domains.is_empty() {
            return Err(invalid("[tls.acme] domains: give at least one name".into()));
        }
        let mut domains = Vec::new();
        for d in &file.domains {
            let d = check_domain(d).map_err(|e| invalid(format!("[tls.acme] domains: {e}")))?;
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
        let directory = match file.directory.as_deref().map(str::trim) {
            None | Some("letsencrypt") => LETS_ENCRYPT_PRODUCTION.to_owned(),
            Some("letsencrypt-staging") => LETS_ENCRYPT_STAGING.to_owned(),
            Some(u) if u.starts_with("https://") => u.to_owned(),
            Some(u) => {
                return Err(invalid(format!(
                    "[tls.acme] directory {u:?}: an https:// URL, \"letsencrypt\" or \"letsencrypt-staging\""
                )))
            }
        };
        let challenge = match file.challenge.as_deref().map(str::trim) {
            None | Some("http-01") => ChallengeKind::Http01,
            Some("tls-alpn-01") => ChallengeKind::TlsAlpn01,
            Some(c) => {
                return Err(invalid(format!(
                    "[tls.acme] challenge {c:?}: \"http-01\" or \"tls-alpn-01\""
                )))
            }
        };
        let contact = file
            .contact
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let c = c.trim().to_owned();
                if c.contains(':') {
                    c
                } else {
                    format!("mailto:{c}")
                }
            })
            .collect();
        let eab = match (file.eab_kid_file, file.eab_hmac_file) {
            (Some(kid_file), Some(hmac_file)) => Some(EabFiles {
                kid_file,
                hmac_file,
            }),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "[tls.acme]: eab_kid_file and eab_hmac_file go together".into(),
                ))
            }
        };
        let retry_initial = file
            .retry_initial_secs
            .unwrap_or(DEFAULT_RETRY_INITIAL_SECS)
            .max(1);
        let retry_max = file
            .retry_max_secs
            .unwrap_or(DEFAULT_RETRY_MAX_SECS)
            .max(retry_initial);
        Ok(AcmeSettings {
            domains,
            directory,
            directory_ca_file: file.directory_ca_file,
            challenge,
            contact,
            eab,
            retry_initial: Duration::from_secs(retry_initial),
            retry_max: Duration::from_secs(retry_max),
        })
    }
}

/// A Host header (or HTTP/2 authority) without its port, lowercase.
pub fn host_without_port(host: &str) -> String {
    let h = host.trim();
    let bare = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => h,
        }
    };
    bare.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<TlsSettings, ConfigError> {
        let f: TlsFileConfig = toml::from_str(toml_text).map_err(|e| invalid(e.to_string()))?;
        TlsSettings::resolve(f)
    }

    #[test]
    fn static_mode_needs_both_files() {
        assert!(parse("cert_file = \"c\"\nkey_file = \"k\"").is_ok());
        assert!(parse("cert_file = \"c\"").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn acme_and_files_exclude_each_other() {
        let t = "cert_file = \"c\"\nkey_file = \"k\"\n[acme]\ndomains = [\"a.test\"]";
        assert!(parse(t).is_err());
    }

    #[test]
    fn acme_defaults() {
        let s = parse("[acme]\ndomains = [\"Cache.Example.Test\", \"s3.example.test\", \"cache.example.test\"]\ncontact = \"ops@example.test\"").unwrap();
        let a = s.acme().unwrap();
        assert_eq!(a.domains, ["cache.example.test", "s3.example.test"]);
        assert_eq!(a.directory, LETS_ENCRYPT_PRODUCTION);
        assert_eq!(a.challenge, ChallengeKind::Http01);
        assert_eq!(a.contact, ["mailto:ops@example.test"]);
        assert_eq!(s.listen, ["127.0.0.1:8443".parse::<SocketAddr>().unwrap()]);
        assert_eq!(s.default_base_url(None), "https://cache.example.test:8443");
        assert_eq!(s.default_base_url(Some(443)), "https://cache.example.test");
    }

    #[test]
    fn acme_rejects_bad_values() {
        assert!(parse("[acme]\ndomains = []").is_err());
        assert!(parse("[acme]\ndomains = [\"*.example.test\"]").is_err());
        assert!(parse("[acme]\ndomains = [\"a..b\"]").is_err());
        assert!(parse("[acme]\ndomains = [\"a.test\"]\nchallenge = \"dns-01\"").is_err());
        assert!(parse("[acme]\ndomains = [\"a.test\"]\ndirectory = \"http://x/dir\"").is_err());
        assert!(parse("[acme]\ndomains = [\"a.test\"]\neab_kid_file = \"k\"").is_err());
        assert!(parse("[acme]\ndomains = [\"a.test\"]\nbogus = 1").is_err());
        let s =
            parse("[acme]\ndomains = [\"a.test\"]\ndirectory = \"letsencrypt-staging\"").unwrap();
        assert_eq!(s.acme().unwrap().directory, LETS_ENCRYPT_STAGING);
    }

    #[test]
    fn several_listeners() {
        let s = parse(
            "listen = [\"127.0.0.1:443\", \"[::1]:443\"]\ncert_file = \"c\"\nkey_file = \"k\"",
        )
        .unwrap();
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.default_base_url(None), "https://127.0.0.1");
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("192.168.0.0/16").unwrap();
        assert!(c.contains("192.168.4.5".parse().unwrap()));
        assert!(c.contains("::ffff:192.168.4.5".parse().unwrap()));
        assert!(!c.contains("192.169.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one = Cidr::parse("10.1.2.3").unwrap();
        assert!(one.contains("10.1.2.3".parse().unwrap()));
        assert!(!one.contains("10.1.2.4".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(
            host_without_port("Cache.Example.Test:8443"),
            "cache.example.test"
        );
        assert_eq!(
            host_without_port("cache.example.test."),
            "cache.example.test"
        );
        assert_eq!(host_without_port("[::1]:8080"), "::1");
        assert_eq!(host_without_port("127.0.0.1"), "127.0.0.1");
    }
}
