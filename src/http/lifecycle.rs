//! `/_api/v1/…` routes of the storage lifecycle (`docs/design/gc.md`): GC
//! passes, pins, deleting paths, quotas and a cache's usage.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{blocking, caller};
use crate::auth::Caller;
use crate::meta::PinRow;
use crate::service::gc::{CacheUsage, GcOptions, GcReport};
use crate::service::{Larder, ServiceError};

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}")
            .map_err(|e| ApiError::bad_request(format!("a JSON body is needed: {e}")));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// `POST /_api/v1/gc` `{"dry_run": bool}` (admin).
pub async fn gc(
    State(l): State<Arc<Larder>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<GcReport>, ApiError> {
    let who = caller(&l, &headers)?;
    let opts: GcOptions = json_body(&body)?;
    Ok(Json(l.gc_in_background(who, opts).await?))
}

/// The body of the pin, unpin and delete routes.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PathsRequest {
    /// Store paths (`/nix/store/<hash>-<name>`) or their basenames.
    pub paths: Vec<String>,
    /// Pins only: every path of their closures in the cache too.
    #[serde(default)]
    pub closure: bool,
}

/// What the pin, unpin and delete routes answer.
#[derive(Serialize, Deserialize, Default)]
pub struct PathsResponse {
    /// The store paths acted on.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Unpin: how many of the paths were pinned.
    #[serde(default)]
    pub count: u64,
}

/// `GET /_api/v1/cache/{cache}/pins`.
pub async fn list_pins(
    State(l): State<Arc<Larder>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<PinRow>>, ApiError> {
    let who = caller(&l, &headers)?;
    Ok(Json(blocking(&l, move |l| l.pins(&who, &cache)).await?))
}

/// A route whose body is a [`PathsRequest`]: parse it, run `f` on the blocking
/// pool as the caller, answer its [`PathsResponse`].
async fn paths_route<F>(
    l: Arc<Larder>,
    cache: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
    f: F,
) -> Result<Json<PathsResponse>, ApiError>
where
    F: FnOnce(&Larder, &Caller, &str, PathsRequest) -> Result<PathsResponse, ServiceError>
        + Send
        + 'static,
{
    let who = caller(&l, &headers)?;
    let req: PathsRequest = json_body(&body)?;
    Ok(Json(blocking(&l, move |l| f(l, &who, &cache, req)).await?))
}

/// The paths acted on, and how many.
fn acted_on(paths: Vec<String>) -> PathsResponse {
    PathsResponse {
        count: paths.len() as u64,
        paths,
    }
}

/// `POST /_api/v1/cache/{cache}/pins`.
pub async fn add_pins(
    State(l): State<Arc<Larder>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<PathsResponse>, ApiError> {
    paths_route(l, cache, headers, body, |l, who, cache, req| {
        l.pin(who, cache, &req.paths, req.closure).map(acted_on)
    })
    .await
}

/// `POST /_api/v1/cache/{cache}/pins/remove`.
pub async fn remove_pins(
    State(l): State<Arc<Larder>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<PathsResponse>, ApiError> {
    paths_route(l, cache, headers, body, |l, who, cache, req| {
        let count = l.unpin(who, cache, &req.paths)?;
        Ok(PathsResponse {
            paths: Vec::new(),
            count,
        })
    })
    .await
}

/// `POST /_api/v1/cache/{cache}/delete-paths` (the `delete` permission).
pub async fn delete_paths(
    State(l): State<Arc<Larder>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<PathsResponse>, ApiError> {
    paths_route(l, cache, headers, body, |l, who, cache, req| {
        l.delete_paths(who, cache, &req.paths).map(acted_on)
    })
    .await
}

/// `GET /_api/v1/cache/{cache}/usage`.
pub async fn usage(
    State(l): State<Arc<Larder>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
) -> Result<Json<CacheUsage>, ApiError> {
    let who = caller(&l, &headers)?;
    Ok(Json(
        blocking(&l, move |l| l.cache_usage(&who, &cache)).await?,
    ))
}

/// The body of `PUT /_api/v1/cache/{cache}/quota`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRequest {
    /// `null` clears the quota.
    pub quota_bytes: Option<u64>,
}

/// `PUT /_api/v1/cache/{cache}/quota` (`configure-cache`).
pub async fn set_quota(
    State(l): State<Arc<Larder>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<CacheUsage>, ApiError> {
    let who = caller(&l, &headers)?;
    let req: QuotaRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    Ok(Json(
        blocking(&l, move |l| {
            l.set_quota(&who, &cache, req.quota_bytes)?;
            l.cache_usage(&who, &cache)
        })
        .await?,
    ))
}
