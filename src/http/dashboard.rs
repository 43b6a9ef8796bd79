//! The web dashboard (`docs/design/dashboard.md`): three static assets compiled
//! into the binary, served at `/` and `/_dashboard/…` with a strict CSP, and the
//! one JSON route only it needs, `GET /_api/v1/cache/{cache}/summary`. The
//! assets hold no data: everything the page shows comes from the management API,
//! with the signed-in token.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::{blocking, caller};
use crate::service::{CacheSummary, Larder};

/// Same-origin scripts, styles and fetches only; no inline code, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// One compiled-in file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: OnceLock<HeaderValue>,
}

impl Asset {
    const fn new(body: &'static [u8], content_type: &'static str) -> Self {
        Self {
            body,
            content_type,
            etag: OnceLock::new(),
        }
    }

    fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            let hash = blake3::hash(self.body).to_hex();
            HeaderValue::from_str(&format!("\"{}\"", &hash[..32]))
                .unwrap_or(HeaderValue::from_static("\"0\""))
        })
    }

    fn respond(&self, req: &HeaderMap) -> Response {
        let etag = self.etag();
        let fresh = req
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        let mut resp = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut r = Response::new(axum::body::Body::from(self.body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
            r
        };
        let h = resp.headers_mut();
        h.insert(header::ETAG, etag.clone());
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        resp
    }
}

static INDEX: Asset = Asset::new(
    include_bytes!("dashboard/index.html"),
    "text/html; charset=utf-8",
);
static SCRIPT: Asset = Asset::new(
    include_bytes!("dashboard/app.js"),
    "text/javascript; charset=utf-8",
);
static STYLE: Asset = Asset::new(
    include_bytes!("dashboard/app.css"),
    "text/css; charset=utf-8",
);

/// `GET /`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    INDEX.respond(&headers)
}

/// `GET /_dashboard/app.js`.
pub async fn script(headers: HeaderMap) -> Response {
    SCRIPT.respond(&headers)
}

/// `GET /_dashboard/app.css`.
pub async fn style(headers: HeaderMap) -> Response {
    STYLE.respond(&headers)
}

/// `GET /_api/v1/cache/{cache}/summary` (needs `pull` on the cache).
pub async fn summary(
    State(l): State<Arc<Larder>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
) -> Result<Json<CacheSummary>, ApiError> {
    let who = caller(&l, &headers)?;
    Ok(Json(
        blocking(&l, move |l| l.cache_summary(&who, &cache)).await?,
    ))
}
