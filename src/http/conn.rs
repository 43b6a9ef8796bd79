//! Serving connections for every listener (plain, HTTPS, the token-free metrics
//! one and the S3 one): hyper's HTTP/1 and HTTP/2 with a header read timeout, so
//! a client that opens a connection and sends its request head slowly (or never
//! finishes it) is cut off instead of holding a socket and its buffer for ever,
//! and a request body that stops arriving ends in an error after
//! [`BODY_IDLE_TIMEOUT`] instead of holding its handler.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
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

/// How long a request body may go without a byte while the server waits for one.
/// The clock runs only while a handler is reading and nothing arrives: a handler
/// that is busy (writing to disk, say) and not reading stops it.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(|b| axum::body::Body::new(IdleTimeout::new(b)));
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

/// The error of a request body that stalled for [`BODY_IDLE_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped: no bytes arrived for {} s", BODY_IDLE_TIMEOUT.as_secs())]
pub struct BodyStalled;

/// A request body that fails with [`BodyStalled`] when a read waits longer than
/// [`BODY_IDLE_TIMEOUT`] for its next frame.
pub struct IdleTimeout {
    inner: Incoming,
    /// Armed when a read found nothing; disarmed by the next frame.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimeout {
    pub fn new(inner: Incoming) -> Self {
        Self {
            inner,
            deadline: None,
        }
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(BODY_IDLE_TIMEOUT)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.deadline = None;
                        Poll::Ready(Some(Err(BodyStalled.into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
