//! Serving connections for every listener (plain, HTTPS, the token-free metrics
//! one and the S3 one): hyper's HTTP/1 and HTTP/2 with a header read timeout, so
//! a client that opens a connection and sends its request head slowly (or never
//! finishes it, or sends nothing at all) is cut off instead of holding a socket
//! and its buffer for ever, and a request body that stops arriving ends in an
//! error after [`BODY_IDLE_TIMEOUT`] instead of holding its handler.

use std::future::Future;
use std::io::IoSlice;
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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
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
    // Connections still in `sniff` (no request yet) end at once on shutdown.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let builder = builder();
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let sniffed = tokio::select! {
                sniffed = sniff(io) => sniffed,
                _ = stop.wait_for(|stopping| *stopping) => None,
            };
            let Some(io) = sniffed else {
                return;
            };
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(|b| axum::body::Body::new(IdleTimeout::new(b)));
                req.extensions_mut().insert(ConnectInfo(peer.clone()));
                router.clone().oneshot(req)
            });
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    graceful.shutdown().await;
    Ok(())
}

/// The first bytes of an HTTP/2 connection without TLS (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads a new connection's first bytes, until they tell HTTP/1 from HTTP/2 (what
/// hyper's protocol detection waits for, with no time limit of its own), within
/// [`HEADER_READ_TIMEOUT`]. `None` (the connection is dropped) when the client
/// sent too little in time or the read failed; otherwise the connection with
/// those bytes put back in front.
pub async fn sniff<I: AsyncRead + Unpin>(mut io: I) -> Option<Prefixed<I>> {
    let read = async {
        let mut seen = Vec::with_capacity(H2_PREFACE.len());
        let mut chunk = [0u8; H2_PREFACE.len()];
        loop {
            let n = io.read(&mut chunk[..H2_PREFACE.len() - seen.len()]).await?;
            seen.extend_from_slice(&chunk[..n]);
            if n == 0 || seen.len() == H2_PREFACE.len() || !H2_PREFACE.starts_with(&seen) {
                return Ok::<_, std::io::Error>(seen);
            }
        }
    };
    match tokio::time::timeout(HEADER_READ_TIMEOUT, read).await {
        Ok(Ok(seen)) => Some(Prefixed {
            prefix: seen,
            at: 0,
            inner: io,
        }),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection failed before its first request");
            None
        }
        Err(_) => {
            tracing::debug!("connection closed: no request within the header read timeout");
            None
        }
    }
}

/// A connection whose first bytes were read already ([`sniff`]) and are read again.
pub struct Prefixed<I> {
    prefix: Vec<u8>,
    at: usize,
    inner: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let rest = &this.prefix[this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
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
