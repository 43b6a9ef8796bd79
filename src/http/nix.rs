//! The Nix binary cache protocol under `/<cache>/`: one fallback handler that
//! parses the path into an [`Endpoint`] and dispatches on (method, endpoint).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::path::{parse, Endpoint};
use super::{blocking, caller, content_encoding, pump, read_small_body, DRAIN_TIMEOUT};
use crate::service::{ByteRange, Larder, ServiceError, SideKind};

const NARINFO_TYPES: &[&str] = &["text/x-nix-narinfo", "text/plain"];
const NAR_TYPES: &[&str] = &["application/x-nix-nar", "application/octet-stream"];

fn require_type(headers: &HeaderMap, allowed: &[&str]) -> Result<(), ApiError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let v = v.to_str().unwrap_or("");
    let essence = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if allowed.contains(&essence.as_str()) {
        Ok(())
    } else {
        Err(ApiError(ServiceError::UnsupportedMediaType(format!(
            "content type {v:?} is not accepted here; use {}",
            allowed.join(" or ")
        ))))
    }
}

fn text(content_type: &'static str, body: impl Into<bytes::Bytes>, head: bool) -> Response {
    let body: bytes::Bytes = body.into();
    let len = body.len();
    let mut resp = Response::new(if head {
        Body::empty()
    } else {
        Body::from(body)
    });
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        resp.headers_mut().insert(header::CONTENT_LENGTH, v);
    }
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn ok_empty() -> Response {
    StatusCode::OK.into_response()
}

/// Entry point for every path that is not `/_…`.
pub async fn handle(State(larder): State<Arc<Larder>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // A client that waits for `100 Continue` has sent nothing yet, and one that
    // announces more than the drain bound would not be drained anyway: answer
    // those at once, without inviting the body.
    let waits_for_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let too_long_to_drain = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > super::DRAIN_AFTER_REFUSAL_BYTES);
    let mut body = Some(body);
    match dispatch(larder, parts, &mut body).await {
        Ok(r) => r,
        Err(e) => {
            // Refused before the body was read: drain it (bounded) so a client that
            // sends without waiting for `100 Continue` reads this answer rather
            // than a reset.
            if let (Some(b), false, false) = (body, waits_for_continue, too_long_to_drain) {
                let (_, pumping) = pump(b);
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, pumping).await;
            }
            e.into_response()
        }
    }
}

fn take(body: &mut Option<Body>) -> Result<Body, ApiError> {
    body.take()
        .ok_or_else(|| ApiError(ServiceError::Internal("request body read twice".into())))
}

async fn dispatch(
    larder: Arc<Larder>,
    parts: axum::http::request::Parts,
    body: &mut Option<Body>,
) -> Result<Response, ApiError> {
    let (cache, endpoint) = parse(parts.uri.path())?;
    let who = caller(&larder, &parts.headers)?;
    let method = parts.method.clone();
    let head = method == Method::HEAD;
    let is_read = method == Method::GET || head;
    let headers = parts.headers;
    let limit = larder.config.max_small_body;

    match (&endpoint, is_read, method == Method::PUT) {
        (Endpoint::CacheInfo, true, _) => {
            let text_body = blocking(&larder, move |l| l.nix_cache_info(&who, &cache)).await?;
            Ok(text("text/x-nix-cache-info", text_body, head))
        }
        (Endpoint::CacheInfo, _, true) => {
            // Nix PUTs nix-cache-info when it finds none; larder writes its own.
            authorize_push(&larder, &who, &cache).await?;
            Ok(ok_empty())
        }
        (Endpoint::AtticCacheInfo, true, _) => {
            let cfg = blocking(&larder, move |l| l.cache_config(&who, &cache)).await?;
            Ok(axum::Json(cfg).into_response())
        }
        (Endpoint::NarInfo(hash), true, _) => {
            // Most lookups are answered from memory, right here on the worker; a
            // cache with upstreams asks them for what it does not hold.
            let t = larder
                .get_narinfo_or_upstream(who, cache, hash.clone())
                .await?;
            Ok(text("text/x-nix-narinfo", t, head))
        }
        (Endpoint::NarInfo(hash), _, true) => {
            require_type(&headers, NARINFO_TYPES)?;
            authorize_push(&larder, &who, &cache).await?;
            let body = read_small_body(&headers, take(body)?, limit).await?;
            let enc = content_encoding(&headers)?;
            let hash = hash.clone();
            blocking(&larder, move |l| {
                l.put_narinfo(&who, &cache, &hash, body, enc.as_deref())
            })
            .await?;
            Ok(ok_empty())
        }
        (Endpoint::Nar(file), true, _) if head && !crate::service::is_served_nar_name(file) => {
            // An uploaded (not yet or differently named) NAR: Nix asks before
            // uploading, to skip NARs the cache already has.
            let file = file.clone();
            let known = blocking(&larder, move |l| l.nar_exists(&who, &cache, &file)).await?;
            if known {
                Ok(ok_empty())
            } else {
                Err(ApiError(ServiceError::NotFound("no such NAR".into())))
            }
        }
        (Endpoint::Nar(file), true, _)
            if crate::service::parse_proxied_nar_name(file).is_some() =>
        {
            // `<NarHash>.nar`: a path of an upstream (stored or being fetched).
            let nar = larder.get_plain_nar(who, cache, file.clone(), head).await?;
            Ok(nar_response(nar))
        }
        (Endpoint::Nar(file), true, _) => {
            get_nar(larder, who, cache, file.clone(), &headers, head).await
        }
        (Endpoint::Nar(file), _, true) => {
            require_type(&headers, NAR_TYPES)?;
            let declared_len = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(len) = declared_len {
                if len > larder.config.max_nar_bytes {
                    return Err(ApiError(ServiceError::TooLarge(format!(
                        "upload of {len} bytes is over the {}-byte limit",
                        larder.config.max_nar_bytes
                    ))));
                }
            }
            if let Some(len) = declared_len {
                // Refused here, before the body is invited (`100 Continue`) or read,
                // a NAR the disk has no room for costs the client no upload, and a
                // client's retry is answered at once.
                let (w, c) = (who.clone(), cache.clone());
                blocking(&larder, move |l| l.precheck_nar_upload(&w, &c, len)).await?;
            }
            let (rx, pumping) = pump(take(body)?);
            let file = file.clone();
            let result = blocking(&larder, move |l| l.put_nar(&who, &cache, &file, rx)).await;
            if result.is_err() {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, pumping).await;
            }
            result?;
            Ok(ok_empty())
        }
        (
            Endpoint::Log(key)
            | Endpoint::Listing(key)
            | Endpoint::Realisation(key)
            | Endpoint::BuildTrace(key),
            _,
            _,
        ) if is_read || method == Method::PUT => {
            let kind = match endpoint {
                Endpoint::Log(_) => SideKind::Log,
                Endpoint::Listing(_) => SideKind::Listing,
                _ => SideKind::Realisation,
            };
            let key = match &endpoint {
                Endpoint::Realisation(k) => format!("v1/{k}"),
                Endpoint::BuildTrace(k) => format!("v2/{k}"),
                _ => key.clone(),
            };
            if is_read {
                let bytes =
                    blocking(&larder, move |l| l.get_side(&who, &cache, kind, &key)).await?;
                Ok(text(kind.content_type(), bytes, head))
            } else {
                authorize_push(&larder, &who, &cache).await?;
                let body = read_small_body(&headers, take(body)?, limit).await?;
                let enc = content_encoding(&headers)?;
                blocking(&larder, move |l| {
                    l.put_side(&who, &cache, kind, &key, body, enc.as_deref())
                })
                .await?;
                Ok(ok_empty())
            }
        }
        _ => Ok((
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({
                "code": 405,
                "error": "MethodNotAllowed",
                "message": format!("{method} is not allowed here"),
            })
            .to_string(),
        )
            .into_response()),
    }
}

async fn get_nar(
    larder: Arc<Larder>,
    who: crate::auth::Caller,
    cache: String,
    file: String,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse);
    let nar = {
        let larder2 = larder.clone();
        tokio::task::spawn_blocking(move || larder2.get_nar(&who, &cache, &file, range, head))
            .await
            .map_err(|e| ApiError(ServiceError::Internal(e.to_string())))??
    };
    let mut resp = nar_response(nar);
    resp.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    Ok(resp)
}

fn nar_response(nar: crate::service::NarResponse) -> Response {
    let len = nar.end - nar.start;
    let body = match nar.body {
        Some(stream) => Body::from_stream(stream),
        None => Body::empty(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = if nar.partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-nix-nar"),
    );
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if nar.partial {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{}",
            nar.start,
            nar.end.saturating_sub(1),
            nar.total_len
        )) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

/// Refuses a write by a caller without `push` on `cache` before its body is read,
/// so a caller with no rights cannot make the server receive and buffer a body
/// of up to `max_small_body` (the service checks again when it writes).
async fn authorize_push(
    larder: &Arc<Larder>,
    who: &crate::auth::Caller,
    cache: &str,
) -> Result<(), ApiError> {
    let (who, cache) = (who.clone(), cache.to_string());
    blocking(larder, move |l| {
        l.authorize(&who, &cache, crate::auth::Permission::Push)
            .map(|_| ())
    })
    .await
}
