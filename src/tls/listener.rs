//! The HTTPS accept loop: TCP accept, TCP_NODELAY, the TLS handshake on its own
//! task (so a slow or silent client never holds up the next accept), then the
//! finished stream goes to whoever serves HTTP on it through [`TlsIncoming`].
//!
//! Handshakes that negotiated `acme-tls/1` are TLS-ALPN-01 validations: they
//! have seen the challenge certificate and are closed here, never served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::resolver::ACME_TLS_ALPN;

/// A client has this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Finished handshakes waiting for the HTTP server to pick them up.
const READY_QUEUE: usize = 256;

/// Established TLS connections of one listener, ready for HTTP.
pub struct TlsIncoming {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsIncoming {
    /// The next established connection; `None` once the accept loop has ended.
    pub async fn next(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.rx.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Start accepting on `listener`. The loop ends when the [`TlsIncoming`] is dropped.
pub fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> std::io::Result<TlsIncoming> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionRefused
                    ) {
                        // Out of file descriptors and the like: wait for some to free up.
                        tracing::error!(error = %e, %local, "accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "could not set TCP_NODELAY");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
                    tracing::info!(%peer, "answered a TLS-ALPN-01 validation");
                    return;
                }
                let _ = tx.send((stream, peer)).await;
            });
        }
    });
    Ok(TlsIncoming { rx, local })
}
