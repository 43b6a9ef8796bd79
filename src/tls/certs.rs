//! Certificates and keys: PEM in, a rustls [`CertifiedKey`] and a readable summary
//! ([`CertInfo`]) out. Also the one clock rule of renewal: a certificate is due
//! when two thirds of its lifetime has passed.
//!
//! Nothing here touches the network or decides when to load: callers read the
//! files (or the ACME store) and hand the bytes over.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::TlsError;

/// A certificate ready to serve, with what an operator wants to know about it.
#[derive(Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// The leaf certificate, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// DNS names and addresses from subjectAltName (lowercase, in certificate order).
    pub names: Vec<String>,
    /// The issuer's common name, else its whole distinguished name.
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the leaf's DER, lowercase hex: what `openssl x509 -fingerprint
    /// -sha256` prints, without colons.
    pub sha256: String,
}

impl CertInfo {
    /// When renewal is due: two thirds of the way from notBefore to notAfter.
    pub fn renew_at(&self) -> i64 {
        let life = (self.not_after - self.not_before).max(0);
        self.not_before + life * 2 / 3
    }

    /// Whether the certificate names exactly these DNS names (in any order).
    pub fn covers_exactly(&self, domains: &[String]) -> bool {
        let mut have: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let mut want: Vec<&str> = domains.iter().map(String::as_str).collect();
        have.sort_unstable();
        have.dedup();
        want.sort_unstable();
        want.dedup();
        have == want
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2026-05-01 12:00:00 UTC` for Unix seconds.
pub fn format_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (the proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Summarise a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::BadCertificate(format!("not an X.509 certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.push(d.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        names.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| cert.issuer().to_string());
    Ok(CertInfo {
        names,
        issuer,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        sha256: hex::encode(Sha256::digest(der)),
    })
}

/// Parse a PEM chain (leaf first) and a PEM private key into a servable
/// certificate, refusing a key that does not belong to the leaf.
pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<LoadedCert, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertificate(format!("reading PEM certificates: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::BadCertificate(
            "no CERTIFICATE block in the PEM".into(),
        ));
    };
    let info = cert_info(leaf)?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::BadKey(format!("reading the PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| TlsError::BadKey(format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        TlsError::BadKey(format!(
            "the private key does not belong to the certificate: {e}"
        ))
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        info,
    })
}

/// Read and parse a certificate file and a key file.
pub fn load_files(cert: &Path, key: &Path) -> Result<LoadedCert, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let chain = read(cert)?;
    let k = read(key)?;
    from_pem(&chain, &k).map_err(|e| match e {
        TlsError::BadCertificate(m) => TlsError::BadCertificate(format!("{}: {m}", cert.display())),
        TlsError::BadKey(m) => TlsError::BadKey(format!("{}: {m}", key.display())),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_a_matching_pair_and_summarises_it() {
        let (cert, key) = self_signed(&["a.example.test", "b.example.test"]);
        let l = from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(l.info.names, ["a.example.test", "b.example.test"]);
        assert_eq!(l.info.sha256.len(), 64);
        assert!(l.info.not_after > l.info.not_before);
        assert!(l
            .info
            .covers_exactly(&["b.example.test".into(), "a.example.test".into()]));
        assert!(!l.info.covers_exactly(&["a.example.test".into()]));
    }

    #[test]
    fn refuses_a_key_of_another_certificate() {
        let (cert, _) = self_signed(&["a.example.test"]);
        let (_, other_key) = self_signed(&["a.example.test"]);
        let e = from_pem(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(matches!(e, TlsError::BadKey(_)), "{e}");
    }

    #[test]
    fn refuses_garbage() {
        assert!(from_pem(b"nothing here", b"nor here").is_err());
    }

    #[test]
    fn renewal_is_due_at_two_thirds() {
        let i = CertInfo {
            names: vec![],
            issuer: String::new(),
            not_before: 1000,
            not_after: 1900,
            sha256: String::new(),
        };
        assert_eq!(i.renew_at(), 1600);
    }

    #[test]
    fn formats_dates() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix(1_767_225_599), "2025-12-31 23:59:59 UTC");
    }
}
