//! The S3 edge: an S3-compatible API over larder's chunk store, so objects put
//! by any S3 tool are chunked and deduplicated with the NARs.
//!
//! Built on `s3s`, which parses requests into typed operations, verifies SigV4
//! (header, presigned, aws-chunked with or without trailers) and SigV2, refuses
//! requests outside the clock-skew window, and writes the XML. Inside:
//!
//! - `router.rs`: one [`Endpoint`] per operation larder serves, and the right each
//!   needs;
//! - `auth.rs`: access keys and the per-request access check, Host-based
//!   (virtual-hosted-style) addressing;
//! - `dispatch.rs`: the one dispatch from operations to handlers;
//! - `bucket.rs`, `put.rs`, `get.rs`, `list.rs`, `copy.rs`, `delete.rs`,
//!   `multipart.rs`: one file per operation family;
//! - `object.rs` (headers, checksums, ETags, conditions) and `body.rs` (bodies
//!   streamed into and out of the chunk store);
//! - `error.rs`: the one place errors become S3 codes;
//! - `keys.rs`: access keys and their grants, shared with `larder s3 key`.
//!
//! Object metadata lives in SQLite (`meta/s3.rs`); object bytes only in the chunk
//! store. This module does not touch the Nix protocol and the Nix side does not
//! know it exists; they meet only in the chunk store. See `docs/design/s3.md`.

pub(crate) mod auth;
mod body;
mod bucket;
mod copy;
mod delete;
mod dispatch;
mod error;
mod get;
pub mod keys;
pub(crate) mod list;
pub(crate) mod multipart;
pub(crate) mod object;
pub(crate) mod put;
mod router;

pub use auth::{HostStyle, S3Caller};
pub use error::S3ApiError;
pub use router::Endpoint;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use s3s::config::{S3Config as WireConfig, StaticConfigProvider};
use s3s::service::{S3Service, S3ServiceBuilder};

use crate::service::Larder;

/// Largest XML request body (DeleteObjects of 1000 keys, CompleteMultipartUpload
/// of 10000 parts).
const MAX_XML_BODY: usize = 8 << 20;
/// How far a signed request's time may be from ours (AWS's window).
const CLOCK_SKEW_SECS: u32 = 15 * 60;
/// Pause after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The S3 service over `larder` (its region and S3 host from the config).
pub fn service(larder: Arc<Larder>) -> S3Service {
    let region = larder.config.s3.region.clone();
    let host = larder.config.s3.host.clone();
    let mut b = S3ServiceBuilder::new(dispatch::LarderS3 {
        larder: larder.clone(),
        region: region.clone(),
    });
    b.set_auth(auth::KeyAuth {
        larder: larder.clone(),
    });
    b.set_access(auth::Access { larder, region });
    b.set_host(HostStyle::new(host));
    let mut wire = WireConfig::default();
    wire.xml_max_body_size = MAX_XML_BODY;
    wire.presigned_url_max_skew_time_secs = CLOCK_SKEW_SECS;
    b.set_config(Arc::new(StaticConfigProvider::new(Arc::new(wire))));
    b.build()
}

/// Serve the S3 API on its own listener until `shutdown` resolves (connections
/// in flight then end with the process). Every accepted socket gets TCP_NODELAY.
pub async fn serve(
    listener: tokio::net::TcpListener,
    larder: Arc<Larder>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = service(larder.clone());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "S3 listener: accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "could not set TCP_NODELAY");
                }
                let service = service.clone();
                let larder = larder.clone();
                tokio::spawn(async move {
                    let conn = larder.metrics.connection();
                    let Some(tcp) = crate::http::conn::sniff(tcp).await else {
                        return;
                    };
                    let builder = crate::http::conn::builder();
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let service = service.clone();
                        let larder = larder.clone();
                        async move {
                            let started = std::time::Instant::now();
                            let head = req.method() == hyper::Method::HEAD;
                            let received = content_length(req.headers());
                            let req = req.map(|b| axum::body::Body::new(crate::http::conn::IdleTimeout::new(b)));
                            let (req, pending) = if larder.config.log.access {
                                let (r, p) = crate::http::access::begin(
                                    req,
                                    crate::metrics::Class::s3,
                                    Some(peer),
                                );
                                (r, Some(p))
                            } else {
                                (req, None)
                            };
                            let mut req = req.map(s3s::Body::http_body_unsync);
                            ignore_unusable_range(req.headers_mut());
                            let resp = match &pending {
                                Some(p) => p.scope(service.call(req)).await,
                                None => service.call(req).await,
                            }?;
                            if larder.config.metrics {
                                let sent = if head { 0 } else { content_length(resp.headers()) };
                                larder.metrics.request(
                                    crate::metrics::Class::s3,
                                    resp.status().as_u16(),
                                    started.elapsed(),
                                    received,
                                    sent,
                                );
                            }
                            let resp = resp.map(axum::body::Body::new);
                            Ok::<_, s3s::HttpError>(match pending {
                                Some(p) => p.finish(resp).map(axum::body::Body::new),
                                None => resp,
                            })
                        }
                    });
                    if let Err(e) = builder.serve_connection(TokioIo::new(tcp), svc).await {
                        tracing::debug!(error = %e, "S3 connection ended with an error");
                    }
                    drop(conn);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    Ok(())
}

/// A message's `Content-Length`, 0 when absent (a streamed body is not counted).
fn content_length(headers: &hyper::HeaderMap) -> u64 {
    headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Drop a Range header larder cannot honour (malformed, another unit, several
/// ranges), so the request answers with the whole object, as RFC 9110 and S3 do;
/// s3s would refuse the request instead. A Range the request's signature covers
/// must stay (removing it would break the signature): s3s then answers 400.
pub(crate) fn ignore_unusable_range(headers: &mut hyper::HeaderMap) {
    let signed = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("SignedHeaders=").nth(1))
        .is_some_and(|rest| {
            rest.split([',', ' '])
                .next()
                .unwrap_or("")
                .split(';')
                .any(|h| h.eq_ignore_ascii_case("range"))
        });
    if signed {
        return;
    }
    let usable = headers.get(hyper::header::RANGE).map(|v| {
        v.to_str()
            .ok()
            .is_some_and(|r| s3s::dto::Range::parse(r.trim()).is_ok())
    });
    if usable == Some(false) {
        headers.remove(hyper::header::RANGE);
    }
}

/// Is `host` (a Host header, maybe with a port) the S3 host or one of its
/// virtual-hosted bucket names?
pub fn is_s3_host(host: &str, s3_host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_end_matches('.').as_bytes();
    let base = s3_host.as_bytes();
    // Compared as bytes: a Host that is not ASCII must not be cut inside a character.
    name.eq_ignore_ascii_case(base)
        || (name.len() > base.len() + 1
            && name[name.len() - base.len()..].eq_ignore_ascii_case(base)
            && name[name.len() - base.len() - 1] == b'.')
}

/// Answer one request of the main listener whose Host is the S3 host.
pub async fn handle(
    service: &S3Service,
    req: hyper::Request<axum::body::Body>,
) -> hyper::Response<axum::body::Body> {
    let mut req = req.map(s3s::Body::http_body_unsync);
    ignore_unusable_range(req.headers_mut());
    match service.call(req).await {
        Ok(resp) => resp.map(axum::body::Body::new),
        Err(e) => {
            tracing::error!(error = ?e, "S3 request failed outside the protocol");
            let mut r = hyper::Response::new(axum::body::Body::empty());
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

/// The future a Host-routing middleware answers with.
pub type HookFuture = std::pin::Pin<Box<dyn Future<Output = axum::response::Response> + Send>>;

/// Whether `req`'s Host (or, without one, its URI's authority) is `s3_host` or a
/// bucket under it. Reads the header in place: this runs on every request.
fn addressed_to(req: &axum::extract::Request, s3_host: &str) -> bool {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    host.is_some_and(|h| is_s3_host(h, s3_host))
}

/// Whether the S3 host hook ([`host_layer`]) answers `req` on the main listener.
pub fn is_s3_request(larder: &Larder, req: &axum::extract::Request) -> bool {
    larder
        .config
        .s3
        .host
        .as_deref()
        .is_some_and(|s3_host| addressed_to(req, s3_host))
}

/// A middleware for the main router: requests whose Host is the S3 host (or a
/// bucket under it) go to the S3 API, everything else on to the Nix routes.
/// `None` when no `s3_host` is configured.
pub fn host_layer(
    larder: Arc<Larder>,
) -> Option<
    impl Fn(axum::extract::Request, axum::middleware::Next) -> HookFuture
        + Clone
        + Send
        + Sync
        + 'static,
> {
    let s3_host = larder.config.s3.host.clone()?;
    let service = service(larder);
    Some(
        move |req: axum::extract::Request, next: axum::middleware::Next| -> HookFuture {
            let service = service.clone();
            let s3_host = s3_host.clone();
            Box::pin(async move {
                if addressed_to(&req, &s3_host) {
                    handle(&service, req).await
                } else {
                    next.run(req).await
                }
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_ranges_are_dropped() {
        for (range, kept) in [
            ("bytes=0-9", true),
            ("bytes=-5", true),
            ("bytes=5-", true),
            ("bytes=4-2", false),
            ("bytes=abc", false),
            ("items=0-1", false),
            ("bytes=0-1,3-4", false),
        ] {
            let mut h = hyper::HeaderMap::new();
            h.insert(hyper::header::RANGE, range.parse().unwrap());
            ignore_unusable_range(&mut h);
            assert_eq!(h.contains_key(hyper::header::RANGE), kept, "{range}");
        }
        // A signed Range stays, whatever it says.
        let mut h = hyper::HeaderMap::new();
        h.insert(hyper::header::RANGE, "bytes=4-2".parse().unwrap());
        h.insert(
            hyper::header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=A/20240101/larder/s3/aws4_request, SignedHeaders=host;range;x-amz-date, Signature=00"
                .parse()
                .unwrap(),
        );
        ignore_unusable_range(&mut h);
        assert!(h.contains_key(hyper::header::RANGE));
    }

    #[test]
    fn s3_hosts() {
        assert!(is_s3_host("s3.example.com", "s3.example.com"));
        assert!(is_s3_host("S3.Example.com:8080", "s3.example.com"));
        assert!(is_s3_host("photos.s3.example.com", "s3.example.com"));
        assert!(!is_s3_host("xs3.example.com", "s3.example.com"));
        assert!(!is_s3_host("cache.example.com", "s3.example.com"));
        assert!(!is_s3_host("127.0.0.1:8080", "s3.example.com"));
    }
}
