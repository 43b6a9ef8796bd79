//! `/metrics` and the counting at the edge: one middleware sees every answered
//! request of the main router (its class, status, time to the response head and
//! body sizes), and [`Counted`] wraps a listener to count open connections.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::HttpBody as _;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{blocking, caller, ApiError};
use crate::metrics::{Class, ConnectionGuard, Metrics, CONTENT_TYPE};
use crate::service::Larder;

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The layer that counts every request of the main router and writes its
/// access-log line (outermost, so the S3 host's answers are counted too).
///
/// A `tower` layer rather than `axum::middleware::from_fn`: that one clones and
/// boxes the rest of the router for every request, which at narinfo rates is a
/// measurable share of the work.
#[derive(Clone)]
pub(crate) struct ObserveLayer {
    larder: Arc<Larder>,
}

impl ObserveLayer {
    pub(crate) fn new(larder: Arc<Larder>) -> ObserveLayer {
        ObserveLayer { larder }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            larder: self.larder.clone(),
        }
    }
}

/// [`ObserveLayer`]'s service around one route.
#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    larder: Arc<Larder>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Answer {
        let started = Instant::now();
        let larder = &self.larder;
        let head = req.method() == Method::HEAD;
        let received = content_length(req.headers()).unwrap_or(0);
        let class = if crate::s3::is_s3_request(larder, &req) {
            Class::s3
        } else {
            Class::of(req.method(), req.uri().path())
        };
        let metrics = larder.config.metrics.then(|| larder.metrics.clone());
        // `poll_ready` was answered by the inner service: call it, no clone.
        let (answer, pending) = if larder.config.log.access {
            let remote = peer(&req);
            let (req, pending) = super::access::begin(req, class, remote);
            let answer = pending.scope(self.inner.call(req));
            (Either::Left(answer), Some(pending))
        } else {
            (Either::Right(self.inner.call(req)), None)
        };
        Box::pin(async move {
            let resp = match answer {
                Either::Left(scoped) => scoped.await,
                Either::Right(plain) => plain.await,
            }?;
            if let Some(metrics) = metrics {
                let sent = if head {
                    0
                } else {
                    resp.body()
                        .size_hint()
                        .exact()
                        .or_else(|| content_length(resp.headers()))
                        .unwrap_or(0)
                };
                metrics.request(
                    class,
                    resp.status().as_u16(),
                    started.elapsed(),
                    received,
                    sent,
                );
            }
            Ok(match pending {
                Some(p) => p.finish(resp).map(axum::body::Body::new),
                None => resp,
            })
        })
    }
}

/// The peer of a request, from whichever listener accepted it.
fn peer(req: &Request) -> Option<std::net::SocketAddr> {
    let ext = req.extensions();
    ext.get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| {
            ext.get::<ConnectInfo<super::edge::ClientAddr>>()
                .map(|c| c.0 .0)
        })
}

/// The answer when the config says `metrics = false`.
fn metrics_off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "metrics are off on this server (metrics = false in its config)\n",
    )
        .into_response()
}

fn metrics_response(text: String) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        text,
    )
        .into_response()
}

/// `GET /metrics` on the main listener: a token with the `metrics` permission.
pub(crate) async fn get(
    State(larder): State<Arc<Larder>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&larder, &headers)?;
    larder.authorize_metrics(&who).map_err(ApiError)?;
    if !larder.config.metrics {
        return Ok(metrics_off());
    }
    let text = blocking(&larder, |l| l.render_metrics()).await?;
    Ok(metrics_response(text))
}

/// `GET /metrics` on `metrics_listen`: no token (the address is the guard).
async fn get_open(State(larder): State<Arc<Larder>>) -> Result<Response, ApiError> {
    let text = blocking(&larder, |l| l.render_metrics()).await?;
    Ok(metrics_response(text))
}

/// Serve `/metrics` (and nothing else) on `listener` until `shutdown`.
pub async fn serve_open(
    listener: tokio::net::TcpListener,
    larder: Arc<Larder>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(get_open))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "this listener serves only /metrics\n",
            )
        })
        .with_state(larder);
    super::conn::serve(listener, app, shutdown).await
}

/// A listener whose connections count in `larder_http_open_connections`.
pub struct Counted<L> {
    inner: L,
    metrics: Arc<Metrics>,
}

impl<L> Counted<L> {
    pub fn new(inner: L, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

/// A connection that counts as open until dropped.
pub struct CountedIo<T> {
    inner: T,
    _guard: ConnectionGuard,
}

impl<T> CountedIo<T> {
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Counted<L> {
    type Io = CountedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        let guard = self.metrics.connection();
        (
            CountedIo {
                inner: io,
                _guard: guard,
            },
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
