//! Serving connections for every listener (plain, HTTPS, the token-free metrics
//! one and the S3 one): hyper's HTTP/1 and HTTP/2 with a header read timeout, so
//! a client that opens a connection and sends its request head slowly (or never
//! finishes it) is cut off instead of holding a socket and its buffer for ever.

use std::future::Future;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tower::ServiceExt;

/// How long a client may take to send a whole request head (request line and
/// headers), from the moment the server starts reading it: for the first request
/// from the connection's start, for later ones from the end of the previous
/// response, so an idle keep-alive connection is closed after this long too.
/// hyper's own default; a Nix client sends its head in one packet.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The connection builder every listener uses.
pub fn builder() -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b.http2().timer(TokioTimer::new());
    b
}

/// Serve `router` on `listener` until `shutdown` resolves, then stop accepting and
/// let the connections in flight finish (what `axum::serve` does, with
/// [`builder`]'s limits). Each request carries `ConnectInfo` of its peer address.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    let graceful = GracefulShutdown::new();
    let builder = builder();
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(peer.clone()));
            router.clone().oneshot(req)
        });
        let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
