//! Raw wire calls: every HTTP request the bench makes without the SDK.
//!
//! The `lease`, `queue`, `overload` and `baseline` workloads talk to the
//! server through hyper directly, to keep load-generator overhead low and
//! to see every status and header. This module is the one place that
//! builds their request bodies (small functions, so they can switch to the
//! `lockd-api` request types in one place) and parses their answers (with
//! the `lockd-api` response types where they exist). The workloads only
//! decide *when* to call and what to count.
//!
//! * [`lease`]: acquire (also with an explicit `txn_id`), update, release;
//! * [`attachments`]: streamed upload and public download;
//! * [`queue`]: enqueue (multipart), dequeue, subscribe, ack, stats;
//! * [`query`]: query (keys, documents), index flush, namespace engines;
//! * [`mutate`]: `/v1/mutate`, leased and public `/v1/get`;
//! * here: the client, one exchange with a timeout, `/healthz`, the
//!   baseline's `POST /json`, error texts and the `waiting`/`queue_busy`
//!   codes.
//!
//! Error messages start with the request's name (`acquire k: HTTP 409
//! Conflict: {…}`), which [`error_kind`] turns into a tally key.

pub mod attachments;
pub mod lease;
pub mod mutate;
pub mod query;
pub mod queue;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lockd_api::{headers, ErrorBody};

/// The HTTP client type: HTTP/1.1 keep-alive over one pool, TCP_NODELAY.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// `application/json`.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Timeout of the checks made before a run starts.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a client: one pool, TCP_NODELAY on the connector.
pub fn http_client() -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(conn)
}

/// Formats an error with its `source()` chain (hyper's top-level messages
/// such as "client error (Connect)" are otherwise uninformative).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

/// Parses a URL.
pub fn parse_uri(s: &str) -> Result<Uri, String> {
    s.parse::<Uri>().map_err(|e| format!("bad URL {s:?}: {e}"))
}

/// `{base}{path}` as a URI.
pub fn endpoint(base: &str, path: &str) -> Result<Uri, String> {
    parse_uri(&format!("{base}{path}"))
}

/// The first 300 bytes of an answer, for error messages.
pub fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)])
        .trim_end()
        .to_string()
}

/// The `Content-Type` of an answer (empty when absent).
pub fn content_type(h: &HeaderMap) -> String {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// `Retry-After` seconds (1 when absent or unreadable).
pub fn retry_after(h: &HeaderMap) -> u64 {
    h.get(headers::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1)
}

/// `X-Lockd-QRF-State` of an answer (`(none)` when absent).
pub fn qrf_state(h: &HeaderMap) -> String {
    h.get(headers::QRF_STATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_string()
}

/// The `error` code of a `409 waiting` or `503 queue_busy` answer (the
/// two answers a consumer expects and does not count as errors).
pub fn error_code(status: StatusCode, body: &[u8]) -> Option<String> {
    if status != StatusCode::CONFLICT && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let e: ErrorBody = serde_json::from_slice(body).ok()?;
    matches!(
        (status, e.error.as_str()),
        (StatusCode::CONFLICT, "waiting") | (StatusCode::SERVICE_UNAVAILABLE, "queue_busy")
    )
    .then_some(e.error)
}

/// A POST of `body` with content type `ct`.
pub fn post(uri: &Uri, ct: &HeaderValue, body: Bytes) -> Result<Request<Full<Bytes>>, String> {
    post_with(uri, ct, &[], body)
}

/// A POST of `body` with content type `ct` and further headers.
pub fn post_with(
    uri: &Uri,
    ct: &HeaderValue,
    extra: &[(hyper::header::HeaderName, HeaderValue)],
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(CONTENT_TYPE, ct.clone());
    for (name, value) in extra {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(body))
        .map_err(|e| format!("building request: {e}"))
}

/// A GET without a body.
pub fn get(uri: &Uri) -> Result<Request<Full<Bytes>>, String> {
    Request::builder()
        .method(Method::GET)
        .uri(uri.clone())
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("building request: {e}"))
}

/// A whole answer: status, headers and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body (read so the connection goes back to the pool).
    pub body: Bytes,
}

impl Answer {
    /// The body of a 2xx answer, else `{what}: HTTP {status}: {snippet}`
    /// (`what` is only formatted for a failure, off the hot path).
    pub fn ok_body(self, what: impl FnOnce() -> String) -> Result<Bytes, String> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(self.failure(&what()))
        }
    }

    /// `{what}: HTTP {status}: {snippet}`.
    pub fn failure(&self, what: &str) -> String {
        format!("{what}: HTTP {}: {}", self.status, snippet(&self.body))
    }
}

/// Sends a request and reads the whole answer within `timeout`. An error
/// means no (complete) answer: transport failure or timeout.
pub async fn exchange(
    http: &HttpClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Answer, String> {
    let exchange = async {
        let resp = http.request(req).await.map_err(|e| error_chain(&e))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading body: {}", error_chain(&e)))?
            .to_bytes();
        Ok::<_, String>(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// `GET /healthz` within `timeout`: its status.
pub async fn healthz(
    http: &HttpClient,
    uri: &Uri,
    timeout: Duration,
) -> Result<StatusCode, String> {
    Ok(exchange(http, get(uri)?, timeout).await?.status)
}

/// Checks that every server answers `GET /healthz` with 2xx before the
/// clock starts.
pub async fn preflight_healthz(http: &HttpClient, bases: &[String]) -> Result<(), String> {
    if bases.is_empty() {
        return Err("no server to benchmark".into());
    }
    for base in bases {
        let url = format!("{base}/healthz");
        let status = healthz(http, &parse_uri(&url)?, PREFLIGHT_TIMEOUT)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{url}: HTTP {status}"));
        }
    }
    Ok(())
}

/// The baseline server's one route: `POST {base}/json`.
pub fn baseline_uri(base: &str) -> Result<Uri, String> {
    endpoint(base, "/json")
}

/// Checks that the baseline server answers `POST /json` with 2xx.
pub async fn preflight_baseline(http: &HttpClient, base: &str, doc: &Bytes) -> Result<(), String> {
    let url = format!("{base}/json");
    let answer = exchange(
        http,
        post(&parse_uri(&url)?, &JSON, doc.clone())?,
        PREFLIGHT_TIMEOUT,
    )
    .await
    .map_err(|e| format!("{url}: {e}"))?;
    if !answer.status.is_success() {
        return Err(format!("{url}: HTTP {}", answer.status));
    }
    Ok(())
}

/// A short class of an error message, for the per-run tally of what went
/// wrong: the request (`acquire`, `enqueue`, …), then the HTTP status and
/// the `error` code of the answer (`acquire 409 cas_mismatch`), or
/// `timeout` / `transport`.
pub fn error_kind(msg: &str) -> String {
    let what = msg.split([' ', ':']).next().unwrap_or_default();
    if let Some(i) = msg.find("HTTP ") {
        let status: String = msg[i + 5..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let code = msg
            .find("\"error\":\"")
            .map(|j| {
                let rest = &msg[j + 9..];
                rest[..rest.find('"').unwrap_or(rest.len())].to_string()
            })
            .unwrap_or_default();
        return format!("{what} {status} {code}").trim_end().to_string();
    }
    if msg.contains("no answer within") {
        format!("{what} timeout")
    } else {
        format!("{what} transport")
    }
}

/// [`error_kind`] with the node the client talked to when there are several.
pub fn error_kind_at(msg: &str, node: usize, nodes: usize) -> String {
    if nodes > 1 {
        format!("{} @node{node}", error_kind(msg))
    } else {
        error_kind(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_name_request_status_and_code() {
        assert_eq!(
            error_kind(
                "acquire bench-1-s3x2-0-1: HTTP 409 Conflict: {\"error\":\"cas_mismatch\",\"detail\":\"x\"}"
            ),
            "acquire 409 cas_mismatch"
        );
        assert_eq!(
            error_kind("enqueue: HTTP 502 Bad Gateway: upstream"),
            "enqueue 502"
        );
        assert_eq!(
            error_kind("release k: no answer within 10s"),
            "release timeout"
        );
        assert_eq!(
            error_kind("ack: client error (Connect): refused"),
            "ack transport"
        );
        assert_eq!(
            error_kind_at("ack: HTTP 404 Not Found: {\"error\":\"not_found\"}", 1, 2),
            "ack 404 not_found @node1"
        );
        assert_eq!(error_kind_at("ack: x", 0, 1), "ack transport");
    }

    #[test]
    fn waiting_and_busy_are_recognised() {
        let waiting = br#"{"error":"waiting","detail":"no messages available"}"#;
        let busy = br#"{"error":"queue_busy","detail":"too many consumers"}"#;
        assert_eq!(
            error_code(StatusCode::CONFLICT, waiting).as_deref(),
            Some("waiting")
        );
        assert_eq!(
            error_code(StatusCode::SERVICE_UNAVAILABLE, busy).as_deref(),
            Some("queue_busy")
        );
        assert_eq!(error_code(StatusCode::CONFLICT, busy), None);
        assert_eq!(error_code(StatusCode::OK, waiting), None);
        assert_eq!(error_code(StatusCode::CONFLICT, b"not json"), None);
    }
}
