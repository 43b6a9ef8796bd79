//! How service errors become HTTP answers: Attic's `{"code","error","message"}`
//! body, a 4xx for every client fault, and server detail kept in the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::service::ServiceError;

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError(pub ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError(ServiceError::BadRequest(msg.into()))
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match &self.0 {
            ServiceError::BadRequest(_) => (StatusCode::BAD_REQUEST, "RequestError"),
            ServiceError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, "AccessError"),
            ServiceError::NoSuchCache(_) => (StatusCode::NOT_FOUND, "NoSuchCache"),
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            ServiceError::CacheAlreadyExists(_) => (StatusCode::BAD_REQUEST, "CacheAlreadyExists"),
            ServiceError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            ServiceError::InsufficientStorage(_) => {
                (StatusCode::INSUFFICIENT_STORAGE, "InsufficientStorage")
            }
            ServiceError::RangeNotSatisfiable(_) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "RangeNotSatisfiable")
            }
            ServiceError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            ServiceError::Damaged(_) => (StatusCode::INTERNAL_SERVER_ERROR, "StorageError"),
            ServiceError::Upstream(_) => (StatusCode::BAD_GATEWAY, "UpstreamError"),
            ServiceError::Meta(_) | ServiceError::Store(_) | ServiceError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, name) = self.parts();
        let message = if self.0.is_client_fault()
            || matches!(
                self.0,
                ServiceError::Damaged(_)
                    | ServiceError::InsufficientStorage(_)
                    | ServiceError::Upstream(_)
            ) {
            self.0.to_string()
        } else {
            "internal server error; see the server log".to_owned()
        };
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                tracing::warn!(
                    request_id = %super::access::request_id(),
                    status = status.as_u16(),
                    reason = %self.0,
                    "refused"
                )
            }
            s if s.is_server_error() => tracing::error!(
                request_id = %super::access::request_id(),
                error = %self.0,
                "request failed"
            ),
            _ => tracing::info!(
                request_id = %super::access::request_id(),
                status = status.as_u16(),
                reason = %self.0,
                "client error"
            ),
        }
        let body = serde_json::json!({
            "code": status.as_u16(),
            "error": name,
            "message": message,
        })
        .to_string();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let ServiceError::RangeNotSatisfiable(len) = self.0 {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"larder\""),
            );
        }
        resp
    }
}
