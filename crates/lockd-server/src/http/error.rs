//! The single place where core errors become HTTP responses.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use lockd_api::{headers, ErrorBody, ErrorCode};

use crate::core::CoreError;

/// A core error on its way out as a protocol error envelope.
#[derive(Debug)]
pub struct ApiError(pub CoreError);

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    /// Shorthand for an error with a code and detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError(CoreError::new(code, detail))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0.into_refusal();
        let status =
            StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: e.code.as_str().to_string(),
            detail: e.detail,
            leader_endpoint: String::new(),
            current_version: e.current_version,
            current_etag: e.current_etag,
            retry_after_seconds: e.retry_after_seconds,
        };
        let mut resp = super::respond::json(status, &body);
        if body.retry_after_seconds > 0 {
            if let Ok(v) = HeaderValue::from_str(&body.retry_after_seconds.to_string()) {
                resp.headers_mut().insert(headers::RETRY_AFTER, v);
            }
        }
        resp
    }
}
