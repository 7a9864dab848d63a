//! Response helpers: JSON the way Go's encoder writes it (one object and a
//! newline) and numeric headers.

use axum::body::Body;
use axum::response::Response;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

/// A JSON response: `Content-Type: application/json`, body + `\n`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Sets a header to a decimal integer.
pub fn set_int(resp: &mut Response, name: &'static str, value: i64) {
    resp.headers_mut().insert(name, HeaderValue::from(value));
}

/// Sets a header to a string, if it is a valid header value.
pub fn set_str(resp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// An empty response with a status.
pub fn empty(status: StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}
