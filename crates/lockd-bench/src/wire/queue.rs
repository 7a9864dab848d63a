//! The queue on the wire (PROTOCOL.md §6): `enqueue` with a
//! `multipart/related` body, `dequeue` and `subscribe` answered with
//! `multipart/related` deliveries, `ack` and `stats`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{StatusCode, Uri};
use lockd_api::delivery::{boundary_of, Delivery, DeliveryReader};
use lockd_api::endpoints as ep;
use lockd_api::{
    AckRequest, DequeueRequest, EnqueueRequest, EnqueueResponse, QueueMessage, QueueRequest,
    QueueStatsResponse,
};
use tokio::sync::watch;

use super::{
    content_type, endpoint, error_chain, error_code, exchange, parse_uri, post, qrf_state,
    retry_after, snippet, HttpClient, JSON,
};

/// Boundary of the enqueue bodies (never occurs in the payload: the
/// filler is lowercase letters and digits, the stamp at most 24 bytes).
macro_rules! boundary {
    () => {
        "lockd-bench-0b5e9c3a7f1d42e8"
    };
}
#[cfg(test)]
const BOUNDARY: &str = boundary!();

/// Timeout of the stats call made before a run starts.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// The queue endpoints of one node.
#[derive(Debug, Clone)]
pub struct QueueUris {
    /// `POST /v1/queue/enqueue`.
    pub enqueue: Uri,
    /// `POST /v1/queue/dequeue`.
    pub dequeue: Uri,
    /// `POST /v1/queue/subscribe`.
    pub subscribe: Uri,
    /// `POST /v1/queue/ack`.
    pub ack: Uri,
}

impl QueueUris {
    /// The endpoints below `base` (`http://host:port`).
    pub fn of(base: &str) -> Result<Self, String> {
        Ok(Self {
            enqueue: endpoint(base, ep::QUEUE_ENQUEUE.path)?,
            dequeue: endpoint(base, ep::QUEUE_DEQUEUE.path)?,
            subscribe: endpoint(base, ep::QUEUE_SUBSCRIBE.path)?,
            ack: endpoint(base, ep::QUEUE_ACK.path)?,
        })
    }
}

/// The enqueue body for one message (PROTOCOL.md §6.2): a `meta` part
/// `{"queue":…}` and a `payload` part of filler whose first bytes each
/// message sets.
pub struct EnqueueBody {
    head: Vec<u8>,
    filler: Vec<u8>,
    tail: &'static [u8],
}

impl EnqueueBody {
    /// A template for `queue` with `payload_bytes` payloads.
    pub fn new(queue: &str, payload_bytes: usize) -> Self {
        let meta = enqueue_meta(queue);
        let head = format!(
            concat!(
                "--",
                boundary!(),
                "\r\nContent-Disposition: form-data; name=\"meta\"\r\n",
                "Content-Type: application/json\r\n\r\n{meta}\n\r\n--",
                boundary!(),
                "\r\nContent-Disposition: form-data; name=\"payload\"\r\n",
                "Content-Type: application/octet-stream\r\n\r\n"
            ),
            meta = meta
        );
        Self {
            head: head.into_bytes(),
            filler: b"abcdefghijklmnopqrstuvwxyz0123456789"
                .iter()
                .copied()
                .cycle()
                .take(payload_bytes)
                .collect(),
            tail: concat!("\r\n--", boundary!(), "--\r\n").as_bytes(),
        }
    }

    /// `multipart/related; boundary=…`.
    pub fn content_type() -> HeaderValue {
        HeaderValue::from_static(concat!("multipart/related; boundary=", boundary!()))
    }

    /// The body with `stamp` over the payload's first bytes (the payload
    /// keeps its length unless `stamp` is longer).
    pub fn build(&self, stamp: &[u8]) -> Bytes {
        let rest = &self.filler[stamp.len().min(self.filler.len())..];
        let mut b =
            Vec::with_capacity(self.head.len() + stamp.len() + rest.len() + self.tail.len());
        b.extend_from_slice(&self.head);
        b.extend_from_slice(stamp);
        b.extend_from_slice(rest);
        b.extend_from_slice(self.tail);
        Bytes::from(b)
    }
}

/// The `meta` part of an enqueue: `{"queue":…}` (an [`EnqueueRequest`]
/// with every option at its default).
fn enqueue_meta(queue: &str) -> String {
    let req = EnqueueRequest {
        queue: queue.to_string(),
        ..Default::default()
    };
    to_json(&req)
}

/// A request body as JSON. The request types are plain structs of strings
/// and integers, which always serialise; an empty object stands in for
/// the impossible failure.
fn to_json<T: serde::Serialize>(req: &T) -> String {
    serde_json::to_string(req).unwrap_or_else(|_| "{}".into())
}

/// The dequeue and subscribe body
/// `{"queue","owner","wait_seconds","page_size"}`.
pub fn dequeue_body(queue: &str, owner: &str, wait_seconds: i64, page_size: u32) -> Bytes {
    Bytes::from(to_json(&DequeueRequest {
        queue: queue.into(),
        owner: owner.into(),
        wait_seconds,
        page_size: i64::from(page_size),
        ..Default::default()
    }))
}

/// The ack body `{"queue","message_id","lease_id","fencing_token","meta_etag"}`.
pub fn ack_body(queue: &str, m: &QueueMessage) -> Bytes {
    Bytes::from(to_json(&AckRequest {
        queue: queue.into(),
        message_id: m.message_id.clone(),
        lease_id: m.lease_id.clone(),
        fencing_token: m.fencing_token,
        meta_etag: m.meta_etag.clone(),
        ..Default::default()
    }))
}

/// The stats body `{"queue"}`.
pub fn stats_body(queue: &str) -> Bytes {
    Bytes::from(to_json(&QueueRequest {
        queue: queue.into(),
        ..Default::default()
    }))
}

/// The answer to an enqueue.
pub enum Enqueued {
    /// 2xx; the body is an [`EnqueueResponse`] (see [`message_id`]).
    Accepted(Bytes),
    /// `429`: nothing stored.
    Throttled {
        /// `Retry-After` seconds.
        retry_after: u64,
        /// `X-Lockd-QRF-State`.
        state: String,
        /// `enqueue: HTTP 429 …` for error counts.
        failure: String,
    },
    /// Another non-2xx answer: nothing stored.
    Refused(String),
}

/// Sends one enqueue. `Err` means no answer (the outcome is unknown).
pub async fn enqueue(
    http: &HttpClient,
    uri: &Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<Enqueued, String> {
    let req = post(uri, &EnqueueBody::content_type(), body)?;
    let a = exchange(http, req, timeout)
        .await
        .map_err(|e| format!("enqueue: {e}"))?;
    Ok(if a.status.is_success() {
        Enqueued::Accepted(a.body)
    } else if a.status == StatusCode::TOO_MANY_REQUESTS {
        Enqueued::Throttled {
            retry_after: retry_after(&a.headers),
            state: qrf_state(&a.headers),
            failure: a.failure("enqueue"),
        }
    } else {
        Enqueued::Refused(a.failure("enqueue"))
    })
}

/// The `message_id` of an accepted enqueue's answer.
pub fn message_id(body: &[u8]) -> Result<String, String> {
    match serde_json::from_slice::<EnqueueResponse>(body) {
        Ok(r) if !r.message_id.is_empty() => Ok(r.message_id),
        _ => Err(format!(
            "enqueue: 200 with an unreadable answer: {}",
            snippet(body)
        )),
    }
}

/// The answer to a dequeue.
pub enum Polled {
    /// `409 waiting`: nothing within `wait_seconds`.
    Empty,
    /// `503 queue_busy`: more consumers than the server admits.
    Busy,
    /// `429`.
    Throttled {
        /// `Retry-After` seconds.
        retry_after: u64,
        /// `dequeue: HTTP 429 …` for error counts.
        failure: String,
    },
    /// One or more deliveries.
    Deliveries(Vec<Delivery>),
}

/// One dequeue (the whole `multipart/related` answer is read and parsed).
pub async fn dequeue(
    http: &HttpClient,
    uri: &Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<Polled, String> {
    let a = exchange(http, post(uri, &JSON, body)?, timeout)
        .await
        .map_err(|e| format!("dequeue: {e}"))?;
    if a.status == StatusCode::TOO_MANY_REQUESTS {
        return Ok(Polled::Throttled {
            retry_after: retry_after(&a.headers),
            failure: a.failure("dequeue"),
        });
    }
    match error_code(a.status, &a.body).as_deref() {
        Some("waiting") => return Ok(Polled::Empty),
        Some("queue_busy") => return Ok(Polled::Busy),
        _ => {}
    }
    if !a.status.is_success() {
        return Err(a.failure("dequeue"));
    }
    let ct = content_type(&a.headers);
    let boundary = boundary_of(&ct).ok_or_else(|| format!("dequeue: not multipart: {ct:?}"))?;
    let mut reader = DeliveryReader::new(&boundary);
    reader.feed(&a.body);
    let mut out = Vec::new();
    while let Some(d) = reader
        .next_delivery()
        .map_err(|e| format!("dequeue: {e}"))?
    {
        out.push(d);
    }
    if !reader.is_done() {
        return Err(format!(
            "dequeue: body ends without the close delimiter ({} deliveries read)",
            out.len()
        ));
    }
    if out.is_empty() {
        return Err("dequeue: 200 without a message".into());
    }
    Ok(Polled::Deliveries(out))
}

/// The answer to a subscribe.
pub enum Opened {
    /// `409 waiting`.
    Empty,
    /// `503 queue_busy`.
    Busy,
    /// A delivery stream with this multipart boundary.
    Stream(String, Incoming),
}

/// Opens a subscribe stream (the server answers once the first message is
/// leased); an error answer's body is read within `body_timeout`.
pub async fn subscribe(
    http: &HttpClient,
    uri: &Uri,
    body: Bytes,
    timeout: Duration,
    body_timeout: Duration,
) -> Result<Opened, String> {
    let req = post(uri, &JSON, body)?;
    let resp = match tokio::time::timeout(timeout, http.request(req)).await {
        Ok(r) => r.map_err(|e| format!("subscribe: {}", error_chain(&e)))?,
        Err(_) => return Err(format!("subscribe: no answer within {timeout:?}")),
    };
    let status = resp.status();
    if status.is_success() {
        let ct = content_type(resp.headers());
        let boundary =
            boundary_of(&ct).ok_or_else(|| format!("subscribe: not multipart: {ct:?}"))?;
        return Ok(Opened::Stream(boundary, resp.into_body()));
    }
    let body = match tokio::time::timeout(body_timeout, resp.into_body().collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => Bytes::new(),
    };
    match error_code(status, &body).as_deref() {
        Some("waiting") => return Ok(Opened::Empty),
        Some("queue_busy") => return Ok(Opened::Busy),
        _ => {}
    }
    Err(format!("subscribe: HTTP {status}: {}", snippet(&body)))
}

/// What ended a subscribe stream.
pub enum StreamEnd {
    /// `stop` was signalled.
    Stop,
    /// The server completed the response.
    Ended,
    /// Transport or format error.
    Broken(String),
}

/// Reads deliveries from a subscribe stream as bytes arrive and hands each
/// to `deliver`, until the stream ends or `stop` changes.
pub async fn read_stream(
    mut body: Incoming,
    boundary: &str,
    mut deliver: impl FnMut(Delivery),
    stop: &mut watch::Receiver<bool>,
) -> StreamEnd {
    let mut reader = DeliveryReader::new(boundary);
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.changed() => return StreamEnd::Stop,
        };
        let data = match frame {
            None => {
                return if reader.is_done() {
                    StreamEnd::Ended
                } else {
                    StreamEnd::Broken("stream ended without the close delimiter".into())
                }
            }
            Some(Err(e)) => return StreamEnd::Broken(error_chain(&e)),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        reader.feed(&data);
        loop {
            match reader.next_delivery() {
                Ok(Some(d)) => deliver(d),
                Ok(None) => break,
                Err(e) => return StreamEnd::Broken(e),
            }
        }
    }
}

/// The answer to an ack.
pub enum Acked {
    /// 2xx.
    Ok,
    /// `429` (acks should always be admitted).
    Throttled,
    /// Another non-2xx answer: not acked.
    Refused(String),
}

/// Acks delivery `m` of `queue`. `Err` means no answer (the outcome is
/// unknown).
pub async fn ack(
    http: &HttpClient,
    uri: &Uri,
    queue: &str,
    m: &QueueMessage,
    timeout: Duration,
) -> Result<Acked, String> {
    let req = post(uri, &JSON, ack_body(queue, m))?;
    let a = exchange(http, req, timeout)
        .await
        .map_err(|e| format!("ack {}: {e}", m.message_id))?;
    Ok(if a.status.is_success() {
        Acked::Ok
    } else if a.status == StatusCode::TOO_MANY_REQUESTS {
        Acked::Throttled
    } else {
        Acked::Refused(a.failure(&format!("ack {}", m.message_id)))
    })
}

/// `POST {base}/v1/queue/stats` for `queue`: the raw 2xx body, else
/// `{url}: HTTP {status}: {snippet}`.
async fn stats_raw(http: &HttpClient, base: &str, queue: &str) -> Result<Bytes, String> {
    let url = format!("{base}{}", ep::QUEUE_STATS.path);
    let req = post(&parse_uri(&url)?, &JSON, stats_body(queue))?;
    let a = exchange(http, req, PREFLIGHT_TIMEOUT)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    a.ok_body(|| url)
}

/// `POST {base}/v1/queue/stats` for `queue`, decoded.
pub async fn stats(
    http: &HttpClient,
    base: &str,
    queue: &str,
) -> Result<QueueStatsResponse, String> {
    let body = stats_raw(http, base, queue).await?;
    serde_json::from_slice(&body).map_err(|e| format!("{base}/v1/queue/stats: {e}"))
}

/// Checks that the server answers `/healthz` and has the queue endpoints
/// (`POST /v1/queue/stats` on `queue`), before any clock starts.
pub async fn preflight(http: &HttpClient, base: &str, queue: &str) -> Result<(), String> {
    let base = base.trim_end_matches('/');
    super::preflight_healthz(http, &[base.to_string()]).await?;
    stats_raw(http, base, queue)
        .await
        .map(|_| ())
        .map_err(|e| format!("{e} (does this server have the queue endpoints?)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockd_api::delivery::Parser;

    #[test]
    fn enqueue_body_is_the_documented_multipart() {
        let t = EnqueueBody::new("bench", 1024);
        let body = t.build(&[7u8; 16]);
        let ct = EnqueueBody::content_type();
        let boundary = boundary_of(ct.to_str().expect("ascii")).expect("boundary");
        assert_eq!(boundary, BOUNDARY);
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"meta\"\r\n\
             Content-Type: application/json\r\n\r\n{{\"queue\":\"bench\"}}\n\r\n--{BOUNDARY}\r\n"
        )));
        assert!(text.ends_with(&format!("\r\n--{BOUNDARY}--\r\n")));
        let mut p = Parser::new(&boundary);
        p.feed(&body);
        let meta = p.next_part().expect("parse").expect("meta");
        assert_eq!(meta.name, "meta");
        assert_eq!(&meta.body[..], b"{\"queue\":\"bench\"}\n");
        let payload = p.next_part().expect("parse").expect("payload");
        assert_eq!(payload.name, "payload");
        assert_eq!(payload.body.len(), 1024);
        assert_eq!(&payload.body[..16], &[7u8; 16]);
        assert_eq!(&payload.body[16..20], b"qrst");
        assert!(p.next_part().expect("parse").is_none());
        assert!(p.is_done());
    }

    #[test]
    fn request_bodies() {
        assert_eq!(
            &dequeue_body("q", "o", 5, 1)[..],
            br#"{"queue":"q","owner":"o","wait_seconds":5,"page_size":1}"#
        );
        assert_eq!(&stats_body("q")[..], br#"{"queue":"q"}"#);
        let m = QueueMessage {
            message_id: "m".into(),
            lease_id: "l".into(),
            fencing_token: 3,
            meta_etag: "e".into(),
            ..Default::default()
        };
        assert_eq!(
            &ack_body("q", &m)[..],
            br#"{"queue":"q","message_id":"m","lease_id":"l","fencing_token":3,"meta_etag":"e"}"#
        );
        assert_eq!(
            message_id(br#"{"queue":"q","message_id":"m1","max_attempts":5,"not_visible_until_unix":0,"visibility_timeout_seconds":30,"payload_bytes":1}"#),
            Ok("m1".to_string())
        );
        assert!(message_id(b"{}").is_err());
    }
}
