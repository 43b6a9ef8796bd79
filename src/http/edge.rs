//! The edges in front of the router: which Host names are served, the plain
//! listener's duties once HTTPS is on, and HTTPS itself.
//!
//! - Every listener refuses a Host not in `allowed_hosts` with 400 (as Attic does),
//!   except for `/_health` and ACME HTTP-01 requests.
//! - With `[tls]` set, the plain listener answers ACME HTTP-01 challenges at
//!   `/.well-known/acme-challenge/`, serves `/_health`, the exempted path prefixes
//!   and the exempted client networks (LAN substituters) as before, and redirects
//!   everything else to HTTPS with 308 (which keeps the method and body).
//! - HTTPS listeners serve the very same router over the TLS streams that
//!   `crate::tls` hands over; HTTP/1.1 or HTTP/2 follows from ALPN.
//!
//! Certificates, ACME and handshakes are `crate::tls`'s business, not this file's.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use tokio::net::{TcpListener, TcpStream};

use super::{router, ApiError};
use crate::service::Larder;
use crate::tls::config::host_without_port;
use crate::tls::{Cidr, Http01Tokens, Tls, TlsIncoming, HTTP01_PREFIX};

/// The liveness probe: answered on every listener whatever the Host or scheme.
const HEALTH_PATH: &str = "/_health";

/// The Host a request names: the HTTP/2 authority, else the `Host` header.
fn request_host(req: &Request) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_owned());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Whether `host` (as sent, port and all) is one of `allowed` (empty: all are).
fn host_allowed(allowed: &[String], host: Option<&str>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(host) = host else { return false };
    let with_port = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = host_without_port(host);
    allowed.iter().any(|a| *a == bare || *a == with_port)
}

/// Middleware on every listener: 400 for a Host not in `allowed_hosts`.
pub(crate) async fn check_host(
    State(larder): State<Arc<Larder>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if path == HEALTH_PATH || path.starts_with(HTTP01_PREFIX) {
        return next.run(req).await;
    }
    let host = request_host(&req);
    if host_allowed(&larder.config.allowed_hosts, host.as_deref()) {
        return next.run(req).await;
    }
    tracing::debug!(host = ?host, "refused a request for a host that is not served here");
    let shown = host.unwrap_or_else(|| "(none)".into());
    ApiError::bad_request(format!("host {shown:?} is not served here")).into_response()
}

/// What the plain listener does when HTTPS is on.
pub(crate) struct PlainEdge {
    tokens: Arc<Http01Tokens>,
    exempt_paths: Vec<String>,
    exempt_cidrs: Vec<Cidr>,
    allowed_hosts: Vec<String>,
    /// `public_url` when it is an https:// URL: redirects go there.
    public_https: Option<String>,
    /// The HTTPS port redirects name otherwise.
    https_port: u16,
}

impl PlainEdge {
    fn new(larder: &Larder, tls: &Tls) -> PlainEdge {
        let settings = tls.settings();
        let https_port = tls.local_addrs().first().map(|a| a.port()).unwrap_or(443);
        PlainEdge {
            tokens: tls.http01(),
            exempt_paths: settings.redirect_exempt_paths.clone(),
            exempt_cidrs: settings.redirect_exempt_cidrs.clone(),
            allowed_hosts: larder.config.allowed_hosts.clone(),
            public_https: larder
                .config
                .public_url
                .clone()
                .filter(|u| u.starts_with("https://")),
            https_port,
        }
    }

    /// `https://…` for this request, or `None` when there is no usable Host.
    fn https_location(&self, host: Option<&str>, path_and_query: &str) -> Option<String> {
        if let Some(base) = &self.public_https {
            // The scheme and authority of public_url; its path prefix is not repeated.
            let after = &base["https://".len()..];
            let authority = after.split('/').next().unwrap_or(after);
            return Some(format!("https://{authority}{path_and_query}"));
        }
        let host = host_without_port(host?);
        if host.is_empty() {
            return None;
        }
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Some(if self.https_port == 443 {
            format!("https://{host}{path_and_query}")
        } else {
            format!("https://{host}:{}{path_and_query}", self.https_port)
        })
    }
}

/// Middleware on the plain listener when HTTPS is on.
pub(crate) async fn plain_edge(
    State(edge): State<Arc<PlainEdge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    if let Some(token) = path.strip_prefix(HTTP01_PREFIX) {
        return match edge.tokens.get(token) {
            Some(key_authorization) => {
                tracing::info!(%peer, token, "answered an HTTP-01 validation");
                (
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    key_authorization,
                )
                    .into_response()
            }
            None => (StatusCode::NOT_FOUND, "no such ACME challenge\n").into_response(),
        };
    }
    let exempt = path == HEALTH_PATH
        || edge
            .exempt_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
        || edge.exempt_cidrs.iter().any(|c| c.contains(peer.ip()));
    if exempt {
        return next.run(req).await;
    }
    let host = request_host(&req);
    if !host_allowed(&edge.allowed_hosts, host.as_deref()) {
        // Never redirect to a name that is not ours.
        return next.run(req).await;
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    match edge
        .https_location(host.as_deref(), &pq)
        .and_then(|l| HeaderValue::from_str(&l).ok())
    {
        Some(location) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
            "use HTTPS\n",
        )
            .into_response(),
        None => ApiError::bad_request("no Host header to redirect to HTTPS with").into_response(),
    }
}

/// The peer of an HTTPS connection ([`TlsListener`]'s address type; `conn::serve`
/// puts it in each request's `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// [`TlsIncoming`] as an axum listener.
pub struct TlsListener(TlsIncoming);

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = ClientAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.next().await {
            Some((io, peer)) => (io, ClientAddr(peer)),
            // The accept loop is gone (the runtime is shutting down): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ClientAddr(self.0.local_addr()))
    }
}

/// Make `ConnectInfo<SocketAddr>` available on HTTPS requests too, so handlers
/// never care which listener a request came through.
async fn bridge_connect_info(mut req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(ClientAddr(peer))) =
        req.extensions().get::<ConnectInfo<ClientAddr>>().copied()
    {
        req.extensions_mut().insert(ConnectInfo(peer));
    }
    next.run(req).await
}

/// Serve the plain listener (HTTP-01, redirects, exemptions) and every HTTPS
/// listener of `tls` until `shutdown` resolves. Every socket gets TCP_NODELAY.
pub async fn serve_tls(
    plain: TcpListener,
    tls: Tls,
    larder: Arc<Larder>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let edge = Arc::new(PlainEdge::new(&larder, &tls));
    let incoming = tls.start().map_err(std::io::Error::other)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut servers = tokio::task::JoinSet::new();
    let plain = super::metrics::Counted::new(plain, larder.metrics.clone()).tap_io(
        |io: &mut super::metrics::CountedIo<TcpStream>| {
            if let Err(e) = io.get_mut().set_nodelay(true) {
                tracing::warn!(error = %e, "could not set TCP_NODELAY");
            }
        },
    );
    let plain_router =
        router(larder.clone()).layer(axum::middleware::from_fn_with_state(edge, plain_edge));
    servers.spawn(super::conn::serve(
        plain,
        plain_router,
        stopped(stop_rx.clone()),
    ));
    for listener in incoming {
        let r = router(larder.clone()).layer(axum::middleware::from_fn(bridge_connect_info));
        servers.spawn(super::conn::serve(
            super::metrics::Counted::new(TlsListener(listener), larder.metrics.clone()),
            r,
            stopped(stop_rx.clone()),
        ));
    }
    let mut result = Ok(());
    while let Some(joined) = servers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(std::io::Error::other(e)),
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_with_or_without_port() {
        let allowed = vec![
            "cache.example.test".to_string(),
            "127.0.0.1:8080".to_string(),
        ];
        assert!(host_allowed(&allowed, Some("Cache.Example.Test:8443")));
        assert!(host_allowed(&allowed, Some("cache.example.test")));
        assert!(host_allowed(&allowed, Some("127.0.0.1:8080")));
        assert!(!host_allowed(&allowed, Some("127.0.0.1:9090")));
        assert!(!host_allowed(&allowed, Some("evil.example.test")));
        assert!(!host_allowed(&allowed, None));
        assert!(host_allowed(&[], None));
    }

    fn edge(public_https: Option<&str>, port: u16) -> PlainEdge {
        PlainEdge {
            tokens: Arc::new(Http01Tokens::default()),
            exempt_paths: vec![],
            exempt_cidrs: vec![],
            allowed_hosts: vec![],
            public_https: public_https.map(str::to_owned),
            https_port: port,
        }
    }

    #[test]
    fn redirect_locations() {
        assert_eq!(
            edge(None, 8443)
                .https_location(Some("cache.example.test:8080"), "/c/nix-cache-info?x=1"),
            Some("https://cache.example.test:8443/c/nix-cache-info?x=1".into())
        );
        assert_eq!(
            edge(None, 443).https_location(Some("cache.example.test"), "/"),
            Some("https://cache.example.test/".into())
        );
        assert_eq!(
            edge(None, 443).https_location(Some("[::1]:80"), "/a"),
            Some("https://[::1]/a".into())
        );
        assert_eq!(
            edge(Some("https://cache.example.test:9443/prefix"), 443).https_location(None, "/a"),
            Some("https://cache.example.test:9443/a".into())
        );
        assert_eq!(edge(None, 443).https_location(None, "/a"), None);
    }
}
