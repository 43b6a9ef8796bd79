//! Answers to ACME challenges while an order is open.
//!
//! HTTP-01 (RFC 8555 §8.3): the plain listener serves
//! `/.well-known/acme-challenge/<token>` from [`Http01Tokens`]. TLS-ALPN-01
//! (RFC 8737): a self-signed certificate for the name, carrying the critical
//! `id-pe-acmeIdentifier` extension with the SHA-256 of the key authorization,
//! handed to the [`CertResolver`](super::resolver::CertResolver).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::TlsError;

/// The path prefix HTTP-01 validators ask for.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending HTTP-01 tokens and their key authorizations.
#[derive(Debug, Default)]
pub struct Http01Tokens {
    map: RwLock<HashMap<String, String>>,
}

impl Http01Tokens {
    /// The key authorization to answer for `token`, while its order is open.
    pub fn get(&self, token: &str) -> Option<String> {
        self.map.read().ok()?.get(token).cloned()
    }

    pub(crate) fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.map.write() {
            m.insert(token.to_owned(), key_authorization.to_owned());
        }
    }

    pub(crate) fn remove(&self, token: &str) {
        if let Ok(mut m) = self.map.write() {
            m.remove(token);
        }
    }
}

/// The TLS-ALPN-01 certificate for `domain`: self-signed, subjectAltName the
/// name, and the acmeIdentifier extension holding `digest` (the SHA-256 of the
/// key authorization).
pub fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let err = |e: rcgen::Error| TlsError::Internal(format!("TLS-ALPN-01 certificate: {e}"));
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(err)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| TlsError::Internal(format!("TLS-ALPN-01 key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let ck = alpn_certificate("cache.example.test", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&ck.cert[0]).unwrap();
        let oid = x509_parser::der_parser::oid!(1.3.6 .1 .5 .5 .7 .1 .31);
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of 32 bytes: tag 0x04, length 0x20, then the digest.
        assert_eq!(ext.value, [&[0x04, 0x20][..], &digest[..]].concat());
        let crate::tls::certs::CertInfo { names, .. } =
            crate::tls::certs::cert_info(&ck.cert[0]).unwrap();
        assert_eq!(names, ["cache.example.test"]);
    }

    #[test]
    fn tokens_come_and_go() {
        let t = Http01Tokens::default();
        t.insert("tok", "tok.thumb");
        assert_eq!(t.get("tok").as_deref(), Some("tok.thumb"));
        t.remove("tok");
        assert_eq!(t.get("tok"), None);
    }
}
