//! The access log: one line per request, written when its answer has been sent
//! (or abandoned), with a request id, the cache, the endpoint class, the status,
//! the bytes each way, the duration and the subject of the token — never the token.
//!
//! The request id is also the `x-request-id` response header and the
//! `request_id` of the error and refusal lines written while serving the
//! request, so an operator can go from a client's error to the server's account
//! of it. (Not a `tracing` span: creating and entering one per request costs
//! more than a narinfo lookup.)
//!
//! Who called is only known once a handler has checked the token, so the handler
//! side records it in a task-local [`Note`] ([`note_caller`], [`note_s3_key`]) that
//! this layer reads back when the line is written. The hot path allocates little:
//! the id is a number, the subject an `Arc` of the token's claims, and a request
//! without a body is not wrapped.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderValue, Method};
use http_body::{Frame, SizeHint};

use crate::auth::{Caller, TokenClaims};
use crate::metrics::Class;

/// The response header that carries the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static NOTE: Arc<Note>;
}

/// What the handlers of one request learn for its log line.
#[derive(Debug)]
pub struct Note {
    id: RequestId,
    subject: OnceLock<Subject>,
}

/// Who called, as the access log names them (a token by its `sub`, never itself).
#[derive(Debug)]
enum Subject {
    Admin,
    Token(Arc<TokenClaims>),
    /// `s3:<key name>`.
    S3Key(String),
}

impl Subject {
    fn as_str(&self) -> &str {
        match self {
            Subject::Admin => "admin",
            Subject::Token(c) => &c.sub,
            Subject::S3Key(named) => named,
        }
    }
}

/// A request id: a random prefix fixed at start, then a counter; written as 16
/// hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

impl RequestId {
    /// The 16 lowercase hex digits.
    fn hex(self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, d) in out.iter_mut().enumerate() {
            *d = DIGITS[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // invariant: hex digits are ASCII.
        f.write_str(std::str::from_utf8(&self.hex()).unwrap_or("-"))
    }
}

/// A process-unique request id.
fn next_request_id() -> RequestId {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| u64::from(rand::random::<u32>()) << 32);
    RequestId(prefix | (COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff))
}

/// The id of the request being served, for a log line about it (`-` outside one).
pub(crate) fn request_id() -> String {
    NOTE.try_with(|n| n.id.to_string())
        .unwrap_or_else(|_| "-".to_owned())
}

/// Record who called, for the access log of the request being served (a no-op
/// outside one). Anonymous callers stay unrecorded (`-` in the log).
pub(crate) fn note_caller(who: &Caller) {
    let subject = match who {
        Caller::Anonymous => return,
        Caller::Admin => Subject::Admin,
        Caller::Token(claims) => Subject::Token(claims.clone()),
    };
    let _ = NOTE.try_with(|n| n.subject.set(subject));
}

/// Record the S3 access key (by name) that signed the request being served.
pub(crate) fn note_s3_key(name: &str) {
    let _ = NOTE.try_with(|n| n.subject.set(Subject::S3Key(format!("s3:{name}"))));
}

/// The cache a Nix or API request names, read from its path.
fn cache_of(class: Class, path: &str) -> Option<&str> {
    fn first(s: &str) -> Option<&str> {
        s.split('/').next().filter(|c| !c.is_empty())
    }
    fn api(path: &str) -> Option<&str> {
        path.strip_prefix("/_api/v1/")
            .and_then(|api| {
                api.strip_prefix("cache/")
                    .or_else(|| api.strip_prefix("cache-config/"))
            })
            .and_then(first)
    }
    match class {
        Class::s3 => None,
        Class::api => api(path),
        Class::narinfo | Class::nar | Class::upload | Class::other => {
            let rest = path.strip_prefix('/')?;
            if rest.starts_with("_api/") {
                return api(path);
            }
            if rest.starts_with('_') || !rest.contains('/') {
                return None;
            }
            first(rest)
        }
    }
}

/// One request's account, written when its response body ends or is dropped.
struct Entry {
    id: RequestId,
    started: Instant,
    method: Method,
    path: String,
    class: Class,
    remote: Option<SocketAddr>,
    status: u16,
    /// The response body's length, when known up front.
    length: Option<u64>,
    received: Option<Arc<AtomicU64>>,
    sent: u64,
    head: bool,
    finished: bool,
    failed: bool,
    note: Arc<Note>,
}

impl Entry {
    fn write(&self, complete: bool) {
        let outcome = if self.failed {
            "error"
        } else if complete || self.head {
            "complete"
        } else {
            "aborted"
        };
        let id = self.id.hex();
        // Fields as `&str` and numbers where they can be: a `Display` value costs
        // a trip through `core::fmt` on every request.
        tracing::info!(
            target: "larder::access",
            request_id = std::str::from_utf8(&id).unwrap_or("-"),
            remote = ?OrDash(self.remote.map(|a| a.ip())),
            method = self.method.as_str(),
            path = self.path.as_str(),
            cache = cache_of(self.class, &self.path).unwrap_or("-"),
            class = self.class.as_str(),
            status = self.status,
            bytes_in = self.received.as_ref().map_or(0, |r| r.load(Ordering::Relaxed)),
            bytes_out = self.sent,
            duration_ms = (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            subject = self.note.subject.get().map_or("-", Subject::as_str),
            outcome = outcome,
            "request"
        );
    }
}

/// The peer's address, or `-` when the listener does not know it.
struct OrDash(Option<std::net::IpAddr>);

impl std::fmt::Debug for OrDash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(ip) => std::fmt::Display::fmt(ip, f),
            None => f.write_str("-"),
        }
    }
}

/// A body that counts the bytes it yields and writes the access-log line when it
/// is done with (sent to its end, or dropped half way when the client left).
pub struct Logged<B: HttpBody> {
    inner: B,
    entry: Option<Entry>,
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(e) = self.entry.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        e.sent += data.len() as u64;
                    }
                }
                Poll::Ready(Some(Err(_))) => e.failed = true,
                Poll::Ready(None) => e.finished = true,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: HttpBody> Drop for Logged<B> {
    fn drop(&mut self) {
        if let Some(e) = self.entry.take() {
            // hyper stops polling once a body with a known length has been sent.
            let complete =
                e.finished || self.inner.is_end_stream() || e.length.is_some_and(|n| e.sent >= n);
            e.write(complete);
        }
    }
}

/// A request body that counts what the handler reads of it.
struct CountedBody {
    inner: Body,
    read: Arc<AtomicU64>,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.read.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What [`begin`] hands back with the request: what [`Pending::finish`] needs.
pub struct Pending {
    entry: Entry,
}

/// Start the account of `req`: give it a request id and a [`Note`], and count
/// its body if it has one. `remote` is the peer, when the listener knows it.
pub fn begin(
    req: hyper::Request<Body>,
    class: Class,
    remote: Option<SocketAddr>,
) -> (hyper::Request<Body>, Pending) {
    let id = next_request_id();
    let (parts, body) = req.into_parts();
    let (body, received) = if body.is_end_stream() {
        (body, None)
    } else {
        let read = Arc::new(AtomicU64::new(0));
        let counted = Body::new(CountedBody {
            inner: body,
            read: read.clone(),
        });
        (counted, Some(read))
    };
    let entry = Entry {
        id,
        started: Instant::now(),
        head: parts.method == Method::HEAD,
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        class,
        remote,
        status: 0,
        length: None,
        received,
        sent: 0,
        finished: false,
        failed: false,
        note: Arc::new(Note {
            id,
            subject: OnceLock::new(),
        }),
    };
    (hyper::Request::from_parts(parts, body), Pending { entry })
}

impl Pending {
    /// The handler's future, with the request's [`Note`] in scope.
    pub fn scope<F: std::future::Future>(
        &self,
        fut: F,
    ) -> tokio::task::futures::TaskLocalFuture<Arc<Note>, F> {
        NOTE.scope(self.entry.note.clone(), fut)
    }

    /// Attach the account to the response: the `x-request-id` header, and a body
    /// that writes the log line when it is done.
    pub fn finish<B: HttpBody>(mut self, resp: hyper::Response<B>) -> hyper::Response<Logged<B>> {
        let (mut parts, body) = resp.into_parts();
        if let Ok(v) = HeaderValue::from_bytes(&self.entry.id.hex()) {
            parts.headers.insert(REQUEST_ID_HEADER, v);
        }
        self.entry.status = parts.status.as_u16();
        self.entry.length = body.size_hint().exact().or_else(|| {
            parts
                .headers
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        });
        hyper::Response::from_parts(
            parts,
            Logged {
                inner: body,
                entry: Some(self.entry),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_and_header_safe() {
        let a = next_request_id().to_string();
        let b = next_request_id().to_string();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        let id = RequestId(0x0123_4567_89ab_cdef);
        assert_eq!(id.to_string(), format!("{:016x}", id.0));
        assert!(HeaderValue::from_str(&a).is_ok());
    }

    #[test]
    fn the_cache_is_read_from_nix_and_api_paths() {
        assert_eq!(
            cache_of(Class::narinfo, "/team-a/abc.narinfo"),
            Some("team-a")
        );
        assert_eq!(
            cache_of(Class::nar, "/team-a/nar/x.nar.zst"),
            Some("team-a")
        );
        assert_eq!(
            cache_of(Class::api, "/_api/v1/cache-config/team-b"),
            Some("team-b")
        );
        assert_eq!(
            cache_of(Class::api, "/_api/v1/cache/team-c/pins"),
            Some("team-c")
        );
        assert_eq!(
            cache_of(Class::upload, "/_api/v1/cache/team-d/x"),
            Some("team-d")
        );
        assert_eq!(cache_of(Class::api, "/_api/v1/stats"), None);
        assert_eq!(cache_of(Class::other, "/metrics"), None);
        assert_eq!(cache_of(Class::other, "/_dashboard/app.js"), None);
        assert_eq!(cache_of(Class::other, "/"), None);
        assert_eq!(cache_of(Class::s3, "/bucket/key"), None);
    }
}
