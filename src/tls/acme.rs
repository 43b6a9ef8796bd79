//! The ACME client loop (RFC 8555): obtain a certificate for the configured names,
//! renew it when two thirds of its lifetime has passed, and keep trying with
//! exponential backoff while the CA is unreachable or refuses.
//!
//! The protocol itself is `instant-acme` (async, rustls, no OpenSSL); this module
//! decides when to order, answers the challenges through
//! [`Http01Tokens`](super::challenge::Http01Tokens) and the
//! [`CertResolver`](super::resolver::CertResolver), makes the key and CSR, and
//! persists everything through [`AcmeStore`](super::store::AcmeStore) before the new
//! certificate is installed. Until then the old certificate keeps serving.
//!
//! It does not serve HTTP and knows nothing of the cache.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, ExternalAccountKey, HttpClient,
    Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::Notify;

use super::certs::{self, unix_now, CertInfo};
use super::challenge::{alpn_certificate, Http01Tokens};
use super::config::{AcmeSettings, ChallengeKind, EabFiles};
use super::resolver::CertResolver;
use super::store::{AcmeState, AcmeStore, StoredAccount, StoredCert};
use super::TlsError;

/// One whole attempt (account, order, validation, issuance) may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the CA may take to validate the challenges.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the CA may take to issue after finalization.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(120);
/// TCP connect timeout towards the CA.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest single sleep: the loop wakes at least this often to look at the clock
/// again (a suspended machine's timers do not count the time it slept).
const MAX_SLEEP: Duration = Duration::from_secs(600);

/// Why an ACME attempt failed. The CA's own words are kept in the message.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA (or the way to it) failed: network errors, HTTP errors, and RFC 7807
    /// problem documents (`detail` and `type` are in the message).
    #[error("{0}")]
    Protocol(#[from] instant_acme::Error),
    /// The CA could not validate a name; the reasons are the CA's.
    #[error("the CA refused the order: {0}")]
    Rejected(String),
    /// The CA does not offer the configured challenge for a name.
    #[error("the CA offers no {kind} challenge for {name}")]
    NoChallenge { name: String, kind: &'static str },
    /// An authorization is in a state larder cannot complete.
    #[error("authorization for {name} is {status}")]
    Authorization { name: String, status: String },
    #[error("the attempt took longer than {} s", ATTEMPT_TIMEOUT.as_secs())]
    TimedOut,
    /// The directory CA bundle or the EAB files cannot be used.
    #[error("{0}")]
    Setup(String),
    /// Making the key or CSR, or reading what the CA sent, failed.
    #[error("{0}")]
    Local(#[from] TlsError),
}

/// Runs ACME for one set of names.
pub(crate) struct AcmeManager {
    settings: AcmeSettings,
    store: AcmeStore,
    resolver: Arc<CertResolver>,
    tokens: Arc<Http01Tokens>,
    wake: Arc<Notify>,
    account: Option<Account>,
    /// The directory the served certificate came from (None: nothing served yet).
    served_from: Option<String>,
}

impl AcmeManager {
    pub(crate) fn new(
        settings: AcmeSettings,
        store: AcmeStore,
        resolver: Arc<CertResolver>,
        tokens: Arc<Http01Tokens>,
        wake: Arc<Notify>,
        served_from: Option<String>,
    ) -> AcmeManager {
        AcmeManager {
            settings,
            store,
            resolver,
            tokens,
            wake,
            account: None,
            served_from,
        }
    }

    /// When the next order is due (Unix seconds): now when nothing suitable is
    /// served, else at two thirds of the served certificate's lifetime.
    fn due_at(&self) -> i64 {
        match (self.resolver.info(), &self.served_from) {
            (Some(info), Some(dir))
                if *dir == self.settings.directory
                    && info.covers_exactly(&self.settings.domains) =>
            {
                info.renew_at()
            }
            _ => 0,
        }
    }

    fn update_state(&self, f: impl FnOnce(&mut AcmeState)) {
        let mut state = match self.store.load_state() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "ACME: state.json unreadable; starting it afresh");
                AcmeState::default()
            }
        };
        f(&mut state);
        if let Err(e) = self.store.save_state(&state) {
            tracing::warn!(error = %e, "ACME: could not save state.json");
        }
    }

    /// The loop: never returns.
    pub(crate) async fn run(mut self) {
        let mut backoff = self.settings.retry_initial;
        let mut retry_at: Option<i64> = None;
        loop {
            let now = unix_now();
            let due = retry_at.unwrap_or_else(|| self.due_at());
            if due > now {
                let wait =
                    Duration::from_secs(u64::try_from(due - now).unwrap_or(0)).min(MAX_SLEEP);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.wake.notified() => {
                        // SIGHUP: a failing attempt is retried at once; a valid
                        // certificate still waits for its renewal time.
                        tracing::info!("ACME: SIGHUP; looking at the certificate again");
                        retry_at = None;
                    }
                }
                continue;
            }
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, self.obtain()).await;
            match attempt.unwrap_or(Err(AcmeError::TimedOut)) {
                Ok(info) => {
                    backoff = self.settings.retry_initial;
                    retry_at = None;
                    tracing::info!(
                        names = ?info.names,
                        issuer = %info.issuer,
                        not_after = %certs::format_unix(info.not_after),
                        renew_at = %certs::format_unix(info.renew_at()),
                        sha256 = %info.sha256,
                        "ACME: certificate installed"
                    );
                    self.update_state(|s| {
                        s.last_error = None;
                        s.last_error_at = None;
                        s.next_attempt_at = None;
                    });
                }
                Err(e) => {
                    // The account may be what is wrong (a CA that forgot it):
                    // start the next attempt from the stored credentials again.
                    self.account = None;
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.settings.retry_max);
                    let next = unix_now() + i64::try_from(wait.as_secs()).unwrap_or(i64::MAX);
                    retry_at = Some(next);
                    tracing::warn!(
                        error = %error_chain(&e),
                        directory = %self.settings.directory,
                        retry_in_secs = wait.as_secs(),
                        "ACME: could not obtain a certificate; the current one (if any) keeps serving"
                    );
                    let message = error_chain(&e);
                    self.update_state(|s| {
                        s.last_error = Some(message);
                        s.last_error_at = Some(unix_now());
                        s.next_attempt_at = Some(next);
                    });
                }
            }
        }
    }

    async fn account(&mut self) -> Result<Account, AcmeError> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let http = http_client(self.settings.directory_ca_file.as_deref())?;
        let account = match self.store.load_account(&self.settings.directory)? {
            Some(credentials) => {
                Account::builder_with_http(http)
                    .from_credentials(credentials)
                    .await?
            }
            None => {
                let eab = match &self.settings.eab {
                    Some(files) => Some(read_eab(files)?),
                    None => None,
                };
                let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
                tracing::info!(directory = %self.settings.directory, contact = ?contact, "ACME: creating an account");
                let (account, credentials) = Account::builder_with_http(http)
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        eab.as_ref(),
                    )
                    .await?;
                self.store.save_account(&StoredAccount {
                    directory: self.settings.directory.clone(),
                    credentials,
                })?;
                tracing::info!(account = %account.id(), "ACME: account created");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// One attempt: order, validate, finalize, persist, install.
    async fn obtain(&mut self) -> Result<CertInfo, AcmeError> {
        let identifiers: Vec<Identifier> = self
            .settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let account = self.account().await?;
        tracing::info!(
            domains = ?self.settings.domains,
            directory = %self.settings.directory,
            challenge = self.settings.challenge.as_str(),
            "ACME: placing an order"
        );
        let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
            Ok(o) => o,
            Err(instant_acme::Error::Api(p))
                if p.r#type.as_deref()
                    == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
            {
                tracing::warn!(problem = %p, "ACME: the CA no longer knows the account; making a new one");
                self.account = None;
                self.store.drop_account()?;
                let account = self.account().await?;
                account.new_order(&NewOrder::new(&identifiers)).await?
            }
            Err(e) => return Err(e.into()),
        };
        self.update_state(|s| {
            s.orders_placed += 1;
            s.last_order_at = Some(unix_now());
        });

        let mut guard = ChallengeGuard {
            tokens: self.tokens.clone(),
            resolver: self.resolver.clone(),
            http01: Vec::new(),
            alpn: Vec::new(),
        };
        let kind = self.settings.challenge;
        {
            let mut authorizations = order.authorizations();
            while let Some(next) = authorizations.next().await {
                let mut authz = next?;
                let name = authz.identifier().to_string();
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => {
                        tracing::info!(name, "ACME: authorization already valid");
                        continue;
                    }
                    other => {
                        return Err(AcmeError::Authorization {
                            name,
                            status: format!("{other:?}"),
                        })
                    }
                }
                let wanted = match kind {
                    ChallengeKind::Http01 => ChallengeType::Http01,
                    ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
                };
                let mut challenge =
                    authz
                        .challenge(wanted)
                        .ok_or_else(|| AcmeError::NoChallenge {
                            name: name.clone(),
                            kind: kind.as_str(),
                        })?;
                let key_authorization = challenge.key_authorization();
                match kind {
                    ChallengeKind::Http01 => {
                        guard.add_http01(&challenge.token, key_authorization.as_str())
                    }
                    ChallengeKind::TlsAlpn01 => guard.add_alpn(
                        &name,
                        alpn_certificate(&name, key_authorization.digest().as_ref())?,
                    ),
                }
                challenge.set_ready().await?;
                tracing::info!(
                    name,
                    challenge = kind.as_str(),
                    "ACME: challenge ready for validation"
                );
            }
        }
        let status = order
            .poll_ready(
                &RetryPolicy::new()
                    .initial_delay(Duration::from_millis(250))
                    .backoff(1.5)
                    .timeout(VALIDATION_TIMEOUT),
            )
            .await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Rejected(rejection_reasons(&mut order).await));
        }
        drop(guard);
        tracing::info!("ACME: names validated; finalizing");

        let key = rcgen::KeyPair::generate()
            .map_err(|e| TlsError::Internal(format!("generating a key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(self.settings.domains.clone())
            .map_err(|e| TlsError::Internal(format!("CSR parameters: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| TlsError::Internal(format!("making the CSR: {e}")))?;
        order.finalize_csr(csr.der()).await?;
        let chain_pem = order
            .poll_certificate(
                &RetryPolicy::new()
                    .initial_delay(Duration::from_millis(250))
                    .backoff(1.5)
                    .timeout(ISSUE_TIMEOUT),
            )
            .await?;
        let key_pem = key.serialize_pem();
        let loaded = certs::from_pem(chain_pem.as_bytes(), key_pem.as_bytes())?;
        let info = loaded.info.clone();
        self.store.save_certificate(&StoredCert {
            directory: self.settings.directory.clone(),
            domains: self.settings.domains.clone(),
            obtained_at: unix_now(),
            chain_pem,
            key_pem,
        })?;
        self.resolver.install(loaded);
        self.served_from = Some(self.settings.directory.clone());
        Ok(info)
    }
}

/// An error with its causes (`client error (Connect): tcp connect error:
/// Connection refused`): the HTTP client's own message alone hides the reason.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        if !text.contains(&m) {
            text.push_str(": ");
            text.push_str(&m);
        }
        cause = c.source();
    }
    text
}

/// What the CA said about each name of a refused order.
async fn rejection_reasons(order: &mut Order) -> String {
    let mut reasons = Vec::new();
    {
        let mut authorizations = order.authorizations();
        while let Some(next) = authorizations.next().await {
            let Ok(mut authz) = next else { continue };
            let _ = authz.refresh().await;
            let name = authz.identifier().to_string();
            let before = reasons.len();
            for c in &authz.challenges {
                if let Some(p) = &c.error {
                    reasons.push(format!("{name}: {p}"));
                }
            }
            if reasons.len() == before && authz.status != AuthorizationStatus::Valid {
                reasons.push(format!("{name}: authorization {:?}", authz.status));
            }
        }
    }
    if let Some(p) = &order.state().error {
        reasons.push(p.to_string());
    }
    if reasons.is_empty() {
        "the order became invalid and the CA gave no reason".into()
    } else {
        reasons.join("; ")
    }
}

/// Challenge answers published for one order, withdrawn when it is dropped.
struct ChallengeGuard {
    tokens: Arc<Http01Tokens>,
    resolver: Arc<CertResolver>,
    http01: Vec<String>,
    alpn: Vec<String>,
}

impl ChallengeGuard {
    fn add_http01(&mut self, token: &str, key_authorization: &str) {
        self.tokens.insert(token, key_authorization);
        self.http01.push(token.to_owned());
    }

    fn add_alpn(&mut self, name: &str, key: Arc<rustls::sign::CertifiedKey>) {
        self.resolver.add_alpn_challenge(name, key);
        self.alpn.push(name.to_owned());
    }
}

impl Drop for ChallengeGuard {
    fn drop(&mut self) {
        for t in &self.http01 {
            self.tokens.remove(t);
        }
        for n in &self.alpn {
            self.resolver.remove_alpn_challenge(n);
        }
    }
}

/// The HTTPS client instant-acme talks to the CA with: rustls (ring), trusting the
/// operator's bundle when one is configured, else the system's roots.
fn http_client(ca_file: Option<&Path>) -> Result<Box<dyn HttpClient>, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| {
                    AcmeError::Setup(format!("directory_ca_file {}: {e}", path.display()))
                })?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    AcmeError::Setup(format!("directory_ca_file {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err(AcmeError::Setup(
            "no trusted CA certificates for the ACME directory (install ca-certificates, or set directory_ca_file)".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Setup(format!("TLS client: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    tcp.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(tcp);
    let client: hyper_util::client::legacy::Client<_, BodyWrapper<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    Ok(Box::new(client))
}

/// The External Account Binding from its two files: the key id as text, the HMAC
/// key base64url (padded or not; standard base64 is accepted too).
fn read_eab(files: &EabFiles) -> Result<ExternalAccountKey, AcmeError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .map_err(|e| AcmeError::Setup(format!("reading {}: {e}", p.display())))
    };
    let kid = read(&files.kid_file)?;
    let hmac_text = read(&files.hmac_file)?;
    let hmac = decode_hmac(&hmac_text).ok_or_else(|| {
        AcmeError::Setup(format!(
            "{}: the EAB HMAC key is not base64url",
            files.hmac_file.display()
        ))
    })?;
    if kid.is_empty() || hmac.is_empty() {
        return Err(AcmeError::Setup(
            "the EAB key id or HMAC key is empty".into(),
        ));
    }
    Ok(ExternalAccountKey::new(kid, &hmac))
}

fn decode_hmac(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    let t = text.trim();
    URL_SAFE_NO_PAD
        .decode(t)
        .or_else(|_| URL_SAFE.decode(t))
        .or_else(|_| STANDARD.decode(t))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_keys_in_any_base64_spelling() {
        assert_eq!(decode_hmac("AAEC_-8").unwrap(), [0, 1, 2, 255, 239]);
        assert_eq!(decode_hmac("AAEC/+8=").unwrap(), [0, 1, 2, 255, 239]);
        assert!(decode_hmac("not base64!").is_none());
    }

    #[test]
    fn a_missing_ca_bundle_is_a_setup_error() {
        let e = http_client(Some(Path::new("/nonexistent/ca.pem")))
            .err()
            .unwrap();
        assert!(matches!(e, AcmeError::Setup(_)), "{e}");
    }
}
