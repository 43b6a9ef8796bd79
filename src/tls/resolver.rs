//! The certificate rustls serves, swappable while connections stay open.
//!
//! [`CertResolver`] holds the current certificate behind a lock that a handshake
//! only reads; installing a new one (a reloaded file, a renewed ACME certificate)
//! affects handshakes from then on and never touches established connections.
//! It also answers TLS-ALPN-01 validation handshakes (RFC 8737): a client that
//! offers only the `acme-tls/1` protocol gets the challenge certificate for the
//! name it asked for.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::certs::{CertInfo, LoadedCert};
use super::TlsError;

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Protocols offered to clients, in preference order.
const ALPN_HTTP: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The served certificate and any pending TLS-ALPN-01 challenge certificates.
#[derive(Default)]
pub struct CertResolver {
    current: RwLock<Option<LoadedCert>>,
    alpn_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("current", &self.info())
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    /// Serve `cert` to every handshake from now on.
    pub fn install(&self, cert: LoadedCert) {
        if let Ok(mut c) = self.current.write() {
            *c = Some(cert);
        }
    }

    /// What is served now, if anything.
    pub fn info(&self) -> Option<CertInfo> {
        self.current
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(|l| l.info.clone()))
    }

    pub(crate) fn add_alpn_challenge(&self, domain: &str, key: Arc<CertifiedKey>) {
        if let Ok(mut m) = self.alpn_challenges.write() {
            m.insert(domain.to_ascii_lowercase(), key);
        }
    }

    pub(crate) fn remove_alpn_challenge(&self, domain: &str) {
        if let Ok(mut m) = self.alpn_challenges.write() {
            m.remove(&domain.to_ascii_lowercase());
        }
    }

    /// A rustls server configuration that asks this resolver for every handshake
    /// and negotiates HTTP/2 or HTTP/1.1 (and `acme-tls/1` for validators).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN_HTTP
            .iter()
            .map(|p| p.to_vec())
            .chain(std::iter::once(ACME_TLS_ALPN.to_vec()))
            .collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validator = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validator {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.alpn_challenges.read().ok()?.get(&name).cloned();
        }
        self.current
            .read()
            .ok()?
            .as_ref()
            .map(|loaded| loaded.key.clone())
    }
}
