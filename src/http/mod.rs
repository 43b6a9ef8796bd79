//! The HTTP edge: routing, credentials, bodies and status codes. The only module
//! that imports axum. Handlers parse the request, call one service method (on the
//! blocking pool when it touches disk), and turn the result into a response.

pub mod access;
mod api;
pub mod conn;
mod dashboard;
mod edge;
mod error;
pub mod lifecycle;
pub mod metrics;
mod nix;
pub(crate) mod path;
mod s3_keys;

pub use edge::{serve_tls, ClientAddr};
pub use error::ApiError;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use futures::StreamExt;
use http_body_util::BodyExt;

use crate::auth::{token_from_header, Authenticator, Caller};
use crate::service::{Larder, ServiceError};

/// The full router.
pub fn router(larder: Arc<Larder>) -> Router {
    let limit = larder.config.max_small_body;
    let router = Router::new()
        .route("/_health", get(|| async { "ok\n" }))
        .route("/", get(dashboard::index))
        .route("/_dashboard/app.js", get(dashboard::script))
        .route("/_dashboard/app.css", get(dashboard::style))
        .route("/metrics", get(metrics::get))
        .route(
            "/_api/v1/cache-config/{cache}",
            get(api::get_config)
                .post(api::create)
                .patch(api::configure)
                .delete(api::destroy),
        )
        .route("/_api/v1/caches", get(api::list))
        .route("/_api/v1/stats", get(api::stats))
        .route("/_api/v1/verify", post(api::verify))
        .route("/_api/v1/get-missing-paths", post(api::missing_paths))
        .route(
            "/_api/v1/upload-path",
            axum::routing::put(api::upload_path).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/_api/v1/tokens",
            get(api::list_tokens).post(api::mint_token),
        )
        .route("/_api/v1/tokens/revoke", post(api::revoke_tokens))
        .route("/_api/v1/tokens/inspect", post(api::inspect_token))
        .route("/_api/v1/gc", post(lifecycle::gc))
        .route(
            "/_api/v1/cache/{cache}/pins",
            get(lifecycle::list_pins).post(lifecycle::add_pins),
        )
        .route(
            "/_api/v1/cache/{cache}/pins/remove",
            post(lifecycle::remove_pins),
        )
        .route(
            "/_api/v1/cache/{cache}/delete-paths",
            post(lifecycle::delete_paths),
        )
        .route("/_api/v1/cache/{cache}/usage", get(lifecycle::usage))
        .route("/_api/v1/cache/{cache}/summary", get(dashboard::summary))
        .route(
            "/_api/v1/cache/{cache}/quota",
            axum::routing::put(lifecycle::set_quota),
        )
        .merge(s3_keys::routes())
        .fallback(nix::handle)
        .layer(axum::middleware::from_fn(close_after_refused_body))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            larder.clone(),
            edge::check_host,
        ))
        .with_state(larder.clone());
    // Requests for the S3 host name (`s3_host`) go to the S3 API instead.
    let router = match crate::s3::host_layer(larder.clone()) {
        Some(s3) => router.layer(axum::middleware::from_fn(s3)),
        None => router,
    };
    // Outermost, so every answer is counted and logged, the S3 host's included.
    if larder.config.metrics || larder.config.log.access {
        router.layer(metrics::ObserveLayer::new(larder))
    } else {
        router
    }
}

/// A request with a body that was refused may not have been read to its end, so
/// the connection cannot be reused: say so, so that clients which pool connections
/// open a fresh one instead of writing into a closed socket.
async fn close_after_refused_body(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut resp = next.run(req).await;
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// Serve until `shutdown` resolves. Every accepted socket gets TCP_NODELAY; a
/// request head must arrive within [`conn::HEADER_READ_TIMEOUT`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    larder: Arc<Larder>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = metrics::Counted::new(listener, larder.metrics.clone()).tap_io(
        |io: &mut metrics::CountedIo<tokio::net::TcpStream>| {
            if let Err(e) = io.get_mut().set_nodelay(true) {
                tracing::warn!(error = %e, "could not set TCP_NODELAY");
            }
        },
    );
    conn::serve(listener, router(larder), shutdown).await
}

/// Who is calling: a presented token must be valid, never silently anonymous.
pub(crate) fn caller(larder: &Larder, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let raw = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let token =
        token_from_header(raw).map_err(|e| ApiError(ServiceError::Unauthorized(e.to_string())))?;
    let who = larder
        .tokens
        .authenticate(token.as_deref())
        .map_err(|e| ApiError(ServiceError::Unauthorized(e.to_string())))?;
    access::note_caller(&who);
    Ok(who)
}

/// Run a service call on the blocking pool.
pub(crate) async fn blocking<T, F>(larder: &Arc<Larder>, f: F) -> Result<T, ApiError>
where
    F: FnOnce(&Larder) -> Result<T, ServiceError> + Send + 'static,
    T: Send + 'static,
{
    let l = larder.clone();
    tokio::task::spawn_blocking(move || f(&l))
        .await
        .map_err(|e| ApiError(ServiceError::Internal(format!("task failed: {e}"))))?
        .map_err(ApiError)
}

/// The `Content-Encoding` of a request, if any.
pub(crate) fn content_encoding(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get(header::CONTENT_ENCODING)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::bad_request("Content-Encoding is not ASCII"))
        })
        .transpose()
}

/// Read a whole small body, refusing one over `limit`.
pub(crate) async fn read_small_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError(ServiceError::TooLarge(format!(
            "body is over the {limit}-byte limit"
        )))
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("reading body: {e}"))),
    }
}

/// The address a listener is bound to, for printing.
pub fn local_addr(l: &tokio::net::TcpListener) -> std::io::Result<SocketAddr> {
    l.local_addr()
}

/// After refusing an upload, read (and discard) up to this much more of its body so
/// a client that does not wait for `100 Continue` still reads the refusal instead
/// of a reset connection.
pub(crate) const DRAIN_AFTER_REFUSAL_BYTES: u64 = 256 << 20;
/// How long to spend draining before answering anyway.
pub(crate) const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Forward a request body to a blocking consumer, piece by piece. When the
/// consumer stops early, the rest of the body is drained (bounded) so the task
/// ends once the client has finished sending.
pub(crate) fn pump(body: Body) -> (crate::service::BodyRx, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let task = tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut drained = 0u64;
        let mut forwarding = true;
        while let Some(item) = stream.next().await {
            if forwarding {
                let item = item.map_err(std::io::Error::other);
                let stop = item.is_err();
                if stop {
                    let _ = tx.send(item).await;
                    return;
                }
                if tx.send(item).await.is_err() {
                    forwarding = false;
                }
            } else {
                match item {
                    Ok(b) => drained += b.len() as u64,
                    Err(_) => return,
                }
                if drained > DRAIN_AFTER_REFUSAL_BYTES {
                    return;
                }
            }
        }
    });
    (rx, task)
}
