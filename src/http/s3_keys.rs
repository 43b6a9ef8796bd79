//! `/_api/v1/s3/keys…`: S3 access keys over the management API (admin token
//! only), for `larder s3 key … --server URL`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::error::ApiError;
use super::{blocking, caller};
use crate::service::{
    Larder, S3GrantRequest, S3GrantView, S3KeyImport, S3KeySecret, S3KeyView, ServiceError,
};

/// The routes, merged into the main router.
pub fn routes() -> Router<Arc<Larder>> {
    Router::new()
        .route("/_api/v1/s3/keys", get(list))
        .route("/_api/v1/s3/keys/{name}", post(create).delete(delete))
        .route("/_api/v1/s3/keys/{name}/import", post(import))
        .route("/_api/v1/s3/keys/{name}/allow", post(allow))
        .route("/_api/v1/s3/keys/{name}/deny", post(deny))
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(ServiceError::BadRequest(format!(
            "malformed JSON body: {e}"
        )))
    })
}

async fn list(
    State(l): State<Arc<Larder>>,
    headers: HeaderMap,
) -> Result<Json<Vec<S3KeyView>>, ApiError> {
    let who = caller(&l, &headers)?;
    Ok(Json(blocking(&l, move |l| l.s3_key_list(&who)).await?))
}

async fn create(
    State(l): State<Arc<Larder>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<S3KeySecret>, ApiError> {
    let who = caller(&l, &headers)?;
    Ok(Json(
        blocking(&l, move |l| l.s3_key_create(&who, &name)).await?,
    ))
}

async fn import(
    State(l): State<Arc<Larder>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<S3KeySecret>, ApiError> {
    let who = caller(&l, &headers)?;
    let req: S3KeyImport = json_body(&body)?;
    Ok(Json(
        blocking(&l, move |l| l.s3_key_import(&who, &name, &req)).await?,
    ))
}

async fn delete(
    State(l): State<Arc<Larder>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = caller(&l, &headers)?;
    blocking(&l, move |l| l.s3_key_delete(&who, &name)).await?;
    Ok(Json(serde_json::json!({ "deleted": true })))
}

async fn allow(
    State(l): State<Arc<Larder>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<S3GrantView>, ApiError> {
    let who = caller(&l, &headers)?;
    let req: S3GrantRequest = json_body(&body)?;
    Ok(Json(
        blocking(&l, move |l| l.s3_key_allow(&who, &name, &req)).await?,
    ))
}

async fn deny(
    State(l): State<Arc<Larder>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Option<S3GrantView>>, ApiError> {
    let who = caller(&l, &headers)?;
    let req: S3GrantRequest = json_body(&body)?;
    Ok(Json(
        blocking(&l, move |l| l.s3_key_deny(&who, &name, &req)).await?,
    ))
}
