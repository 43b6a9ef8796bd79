//! `/_api/v1/…`: cache management in Attic's shapes, plus larder's own admin
//! routes (`caches`, `stats`, `verify`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{blocking, caller};
use crate::auth::Permission;
use crate::meta::TokenRow;
use crate::nix::store_path::StorePathHash;
use crate::service::{
    CacheConfig, CacheConfigPatch, CacheCreate, Inspected, Larder, MintRequest, Minted,
    NarInfoSource, RevokeRequest, UploadPathResult,
};

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

pub async fn get_config(
    State(l): State<Arc<Larder>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
) -> Result<Json<CacheConfig>, ApiError> {
    let who = caller(&l, &headers)?;
    Ok(Json(
        blocking(&l, move |l| l.cache_config(&who, &cache)).await?,
    ))
}

pub async fn create(
    State(l): State<Arc<Larder>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<CacheConfig>, ApiError> {
    let who = caller(&l, &headers)?;
    let req: CacheCreate = json_body(&body)?;
    Ok(Json(
        blocking(&l, move |l| l.create_cache(&who, &cache, &req)).await?,
    ))
}

pub async fn configure(
    State(l): State<Arc<Larder>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<CacheConfig>, ApiError> {
    let who = caller(&l, &headers)?;
    let patch: CacheConfigPatch = json_body(&body)?;
    Ok(Json(
        blocking(&l, move |l| l.configure_cache(&who, &cache, &patch)).await?,
    ))
}

pub async fn destroy(
    State(l): State<Arc<Larder>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&l, &headers)?;
    blocking(&l, move |l| l.destroy_cache(&who, &cache)).await?;
    Ok(StatusCode::OK.into_response())
}

/// One row of `GET /_api/v1/caches`.
#[derive(Serialize, Deserialize)]
pub struct CacheListEntry {
    pub name: String,
    #[serde(flatten)]
    pub config: CacheConfig,
}

pub async fn list(
    State(l): State<Arc<Larder>>,
    headers: HeaderMap,
) -> Result<Json<Vec<CacheListEntry>>, ApiError> {
    let who = caller(&l, &headers)?;
    let rows = blocking(&l, move |l| l.list_caches(&who)).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(name, config)| CacheListEntry { name, config })
            .collect(),
    ))
}

pub async fn stats(State(l): State<Arc<Larder>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = caller(&l, &headers)?;
    Ok(Json(blocking(&l, move |l| l.stats(&who)).await?).into_response())
}

pub async fn verify(
    State(l): State<Arc<Larder>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&l, &headers)?;
    Ok(Json(blocking(&l, move |l| l.verify(&who)).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingPathsRequest {
    cache: String,
    store_path_hashes: Vec<String>,
}

#[derive(Serialize)]
pub struct MissingPathsResponse {
    missing_paths: Vec<String>,
}

/// Attic's `get-missing-paths`.
pub async fn missing_paths(
    State(l): State<Arc<Larder>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<MissingPathsResponse>, ApiError> {
    let who = caller(&l, &headers)?;
    let req: MissingPathsRequest = json_body(&body)?;
    for h in &req.store_path_hashes {
        StorePathHash::parse(h)
            .map_err(|_| ApiError::bad_request(format!("invalid store path hash {h:?}")))?;
    }
    let missing = blocking(&l, move |l| {
        let row = l.authorize(&who, &req.cache, Permission::Push)?;
        Ok(l.meta.missing_paths(row.id, &req.store_path_hashes)?)
    })
    .await?;
    Ok(Json(MissingPathsResponse {
        missing_paths: missing,
    }))
}

/// Attic's `upload-path`.
pub async fn upload_path(
    State(l): State<Arc<Larder>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<UploadPathResult>, ApiError> {
    let (rx, pumping) = super::pump(body);
    let result = async {
        let who = caller(&l, &headers)?;
        let header = |name: &str| -> Result<Option<String>, ApiError> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .map(str::to_owned)
                        .map_err(|_| ApiError::bad_request(format!("{name} is not ASCII")))
                })
                .transpose()
        };
        let source = match (
            header("x-attic-nar-info")?,
            header("x-attic-nar-info-preamble-size")?,
        ) {
            (Some(json), None) => NarInfoSource::Header(json),
            (None, Some(n)) => NarInfoSource::Preamble(n.trim().parse().map_err(|_| {
                ApiError::bad_request("X-Attic-Nar-Info-Preamble-Size is not a number")
            })?),
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "send either X-Attic-Nar-Info or X-Attic-Nar-Info-Preamble-Size, not both",
                ))
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "upload metadata missing: send X-Attic-Nar-Info or a preamble",
                ))
            }
        };
        let enc = super::content_encoding(&headers)?;
        blocking(&l, move |l| l.upload_path(&who, source, enc.as_deref(), rx)).await
    }
    .await;
    // Whatever the answer, let the client finish sending before it reads it.
    let _ = tokio::time::timeout(super::DRAIN_TIMEOUT, pumping).await;
    Ok(Json(result?))
}

pub async fn mint_token(
    State(l): State<Arc<Larder>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Minted>, ApiError> {
    let who = caller(&l, &headers)?;
    let req: MintRequest = json_body(&body)?;
    Ok(Json(blocking(&l, move |l| l.mint_token(&who, &req)).await?))
}

pub async fn list_tokens(
    State(l): State<Arc<Larder>>,
    headers: HeaderMap,
) -> Result<Json<Vec<TokenRow>>, ApiError> {
    let who = caller(&l, &headers)?;
    Ok(Json(blocking(&l, move |l| l.list_tokens(&who)).await?))
}

pub async fn revoke_tokens(
    State(l): State<Arc<Larder>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = caller(&l, &headers)?;
    let req: RevokeRequest = json_body(&body)?;
    let n = blocking(&l, move |l| l.revoke_tokens(&who, &req)).await?;
    Ok(Json(serde_json::json!({ "revoked": n })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectRequest {
    token: String,
}

pub async fn inspect_token(
    State(l): State<Arc<Larder>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Inspected>, ApiError> {
    let who = caller(&l, &headers)?;
    let req: InspectRequest = json_body(&body)?;
    Ok(Json(
        blocking(&l, move |l| l.inspect_token(&who, &req.token)).await?,
    ))
}
