//! Queue helpers (PROTOCOL.md §6): the enqueue request built byte for byte
//! like the Go SDK's, the one parser of the delivery format, which checks
//! its byte layout (§6.3) and works on complete bodies, on subscribe
//! streams ([`Subscription`]) and incrementally with payloads streamed
//! unbuffered ([`DeliveryReader`]), and ack/nack/extend bodies and calls
//! against a [`TestServer`].

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::server::{assert_error, expect_json, header_str, TestServer};

// ---------------------------------------------------------------------------
// Enqueue (§6.2)

/// A random boundary like Go's `mime/multipart` (60 lowercase hex chars).
pub fn go_boundary() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{}", &b[..28])
}

/// The enqueue body exactly as the Go SDK writes it: a `meta` part (the JSON
/// followed by `\n`, as a JSON encoder emits it) and, when given, a
/// `payload` part with its content type. Returns (Content-Type, body).
pub fn enqueue_multipart(meta: Option<&[u8]>, payload: Option<(&[u8], &str)>) -> (String, Vec<u8>) {
    let b = go_boundary();
    let mut body = Vec::new();
    let mut first = true;
    let mut delim = |body: &mut Vec<u8>| {
        if !first {
            body.extend_from_slice(b"\r\n");
        }
        first = false;
        body.extend_from_slice(format!("--{b}\r\n").as_bytes());
    };
    if let Some(meta) = meta {
        delim(&mut body);
        body.extend_from_slice(
            b"Content-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n",
        );
        body.extend_from_slice(meta);
    }
    if let Some((payload, ct)) = payload {
        delim(&mut body);
        body.extend_from_slice(
            format!(
                "Content-Disposition: form-data; name=\"payload\"\r\nContent-Type: {ct}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(payload);
    }
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/related; boundary={b}"), body)
}

/// `meta` JSON as the Go SDK's encoder writes it (with the trailing `\n`).
pub fn meta_bytes(meta: &Value) -> Vec<u8> {
    let mut v = serde_json::to_vec(meta).unwrap();
    v.push(b'\n');
    v
}

/// Sends a raw enqueue request (`path` may carry a query).
pub async fn enqueue_send(
    s: &TestServer,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    correlation_id: Option<&str>,
) -> Response {
    let mut rb = s
        .http
        .post(s.url(path))
        .header("Content-Type", content_type)
        .body(body);
    if let Some(cid) = correlation_id {
        rb = rb.header("X-Correlation-Id", cid);
    }
    rb.send().await.expect("enqueue request")
}

/// The enqueue body of `payload` (`application/octet-stream`) on `queue`
/// in the default namespace; returns (Content-Type, body).
pub fn enqueue_body(queue: &str, payload: &[u8]) -> (String, Vec<u8>) {
    let meta = meta_bytes(&json!({"queue": queue, "namespace": "default"}));
    enqueue_multipart(Some(&meta), Some((payload, "application/octet-stream")))
}

/// Enqueues `payload` (content type from `meta.payload_content_type`, else
/// `application/octet-stream`) and returns the raw response.
pub async fn enqueue_raw(s: &TestServer, meta: &Value, payload: &[u8]) -> Response {
    let ct = meta["payload_content_type"]
        .as_str()
        .unwrap_or("application/octet-stream")
        .to_string();
    let (ctype, body) = enqueue_multipart(Some(&meta_bytes(meta)), Some((payload, &ct)));
    enqueue_send(s, "/v1/queue/enqueue", &ctype, body, None).await
}

/// Enqueues and expects 200; returns the response body.
pub async fn enqueue(s: &TestServer, meta: &Value, payload: &[u8]) -> Value {
    let resp = enqueue_raw(s, meta, payload).await;
    expect_json(resp, StatusCode::OK).await.1
}

/// Enqueues `payload` on `queue` in the default namespace; returns the id.
pub async fn enqueue_simple(s: &TestServer, queue: &str, payload: &[u8]) -> String {
    let v = enqueue(s, &json!({"queue": queue}), payload).await;
    v["message_id"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------
// Delivery format (§6.3)

/// One delivered message: the `message` object of its meta part and its
/// payload, with the part headers that came with them.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `message` object of the meta part.
    pub msg: Value,
    /// The payload part's bytes.
    pub payload: Vec<u8>,
    /// `Content-Disposition` of the meta part.
    pub meta_disposition: String,
    /// `Content-Disposition` of the payload part.
    pub payload_disposition: String,
    /// `Content-Type` of the payload part.
    pub payload_content_type: String,
}

impl Delivery {
    /// `message_id`.
    pub fn id(&self) -> &str {
        self.msg["message_id"].as_str().unwrap()
    }
    /// `attempts` (-1 when missing).
    pub fn attempts(&self) -> i64 {
        self.msg["attempts"].as_i64().unwrap_or(-1)
    }
    /// A string field of the message.
    pub fn str(&self, field: &str) -> &str {
        self.msg[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing or not a string in {}", self.msg))
    }
    /// An integer field of the message.
    pub fn int(&self, field: &str) -> i64 {
        self.msg[field]
            .as_i64()
            .unwrap_or_else(|| panic!("{field} missing or not an integer in {}", self.msg))
    }
    /// An integer field that is omitted when 0.
    pub fn int0(&self, field: &str) -> i64 {
        match self.msg.get(field) {
            None => 0,
            Some(v) => {
                let n = v.as_i64().expect("integer");
                assert_ne!(n, 0, "{field} must be omitted when 0: {}", self.msg);
                n
            }
        }
    }
    /// The (message, payload) pair.
    pub fn pair(&self) -> (Value, Vec<u8>) {
        (self.msg.clone(), self.payload.clone())
    }
}

/// The boundary of a delivery `Content-Type`, checking its form.
pub fn delivery_boundary(content_type: &str) -> String {
    let b = content_type
        .strip_prefix("multipart/related; boundary=")
        .unwrap_or_else(|| panic!("delivery Content-Type {content_type:?}"));
    assert!(
        !b.is_empty()
            && b.len() <= 70
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"'()+_,-./:=?".contains(&c)),
        "bad boundary {b:?}"
    );
    b.to_string()
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if hay.len() < from + needle.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Whether `buf` starts with `want` (`Some(true)`), could still become it
/// with more bytes (`None`) or cannot (`Some(false)`).
fn starts(buf: &[u8], want: &[u8]) -> Option<bool> {
    let n = buf.len().min(want.len());
    if buf[..n] != want[..n] {
        Some(false)
    } else if n < want.len() {
        None
    } else {
        Some(true)
    }
}

fn part_headers(raw: &[u8]) -> HashMap<String, String> {
    let text = std::str::from_utf8(raw).expect("part headers are UTF-8");
    let mut out = HashMap::new();
    for line in text.split("\r\n") {
        let (k, v) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("bad part header line {line:?}"));
        let prev = out.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        assert!(prev.is_none(), "duplicate part header {k}");
    }
    out
}

fn check_header_names(h: &HashMap<String, String>, want: &[&str]) {
    let mut got: Vec<&str> = h.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = want.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "part headers");
}

/// One message of a delivery body up to its payload: the meta part and the
/// payload part's headers.
#[derive(Debug, Clone)]
pub struct Head {
    /// The `message` object of the meta part.
    pub msg: Value,
    /// `Content-Disposition` of the meta part.
    pub meta_disposition: String,
    /// `Content-Disposition` of the payload part.
    pub payload_disposition: String,
    /// `Content-Type` of the payload part.
    pub payload_content_type: String,
    /// The payload part's `Content-Length` (equal to `payload_bytes`).
    pub payload_len: usize,
}

impl Head {
    /// The delivery of this head with its payload.
    pub fn with_payload(self, payload: Vec<u8>) -> Delivery {
        Delivery {
            msg: self.msg,
            payload,
            meta_disposition: self.meta_disposition,
            payload_disposition: self.payload_disposition,
            payload_content_type: self.payload_content_type,
        }
    }
}

/// What the next bytes of a delivery body hold, up to a payload.
pub enum HeadItem {
    /// A message; its payload follows.
    Head(Head),
    /// The close delimiter.
    Close,
}

/// What the next bytes of a delivery body hold.
pub enum Item {
    /// A whole message.
    Delivery(Delivery),
    /// The close delimiter.
    Close,
}

/// Parses the next item of a delivery body from `buf` up to the start of
/// its payload. `first` says whether this is the first part of the body
/// (no CRLF before the delimiter). Returns `None` when more bytes are
/// needed, else the item and the number of bytes it took. Panics when the
/// layout is wrong.
pub fn parse_head(buf: &[u8], boundary: &str, first: bool) -> Option<(HeadItem, usize)> {
    let open = if first {
        format!("--{boundary}\r\n")
    } else {
        format!("\r\n--{boundary}\r\n")
    };
    if !first {
        let close = format!("\r\n--{boundary}--\r\n");
        match starts(buf, close.as_bytes()) {
            Some(true) => return Some((HeadItem::Close, close.len())),
            // Still a prefix of the close delimiter: need more bytes.
            None => return None,
            Some(false) => {}
        }
    }
    match starts(buf, open.as_bytes()) {
        None => return None,
        Some(false) => panic!(
            "expected a part delimiter, got {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(120)])
        ),
        Some(true) => {}
    }
    // meta part
    let hstart = open.len();
    let hend = find(buf, b"\r\n\r\n", hstart)?;
    let mh = part_headers(&buf[hstart..hend]);
    check_header_names(&mh, &["content-disposition", "content-type"]);
    assert_eq!(mh["content-type"], "application/json", "meta Content-Type");
    let mid = format!("\r\n--{boundary}\r\n");
    let jstart = hend + 4;
    let jend = find(buf, mid.as_bytes(), jstart)?;
    let json_raw = &buf[jstart..jend];
    assert!(
        json_raw.ends_with(b"\n"),
        "meta JSON must end with a newline: {:?}",
        String::from_utf8_lossy(json_raw)
    );
    let meta: Value = serde_json::from_slice(json_raw).expect("meta part is JSON");
    let obj = meta.as_object().expect("meta is an object");
    for k in obj.keys() {
        assert!(k == "message" || k == "next_cursor", "meta key {k}");
    }
    if let Some(c) = obj.get("next_cursor") {
        assert!(
            !c.as_str().unwrap().is_empty(),
            "empty next_cursor is omitted"
        );
    }
    let msg = meta["message"].clone();
    assert!(msg.is_object(), "meta.message is an object: {meta}");
    // payload part headers
    let phstart = jend + mid.len();
    let phend = find(buf, b"\r\n\r\n", phstart)?;
    let ph = part_headers(&buf[phstart..phend]);
    check_header_names(
        &ph,
        &["content-disposition", "content-length", "content-type"],
    );
    let len: usize = ph["content-length"]
        .parse()
        .expect("payload Content-Length is a number");
    assert_eq!(
        msg["payload_bytes"].as_i64(),
        Some(len as i64),
        "payload_bytes equals the payload part's Content-Length"
    );
    let want_ct = msg["payload_content_type"]
        .as_str()
        .unwrap_or("application/octet-stream");
    assert_eq!(ph["content-type"], want_ct, "payload part Content-Type");
    let head = Head {
        msg,
        meta_disposition: mh["content-disposition"].clone(),
        payload_disposition: ph["content-disposition"].clone(),
        payload_content_type: ph["content-type"].clone(),
        payload_len: len,
    };
    Some((HeadItem::Head(head), phend + 4))
}

/// Parses the next item of a delivery body from `buf`, payload included
/// (see [`parse_head`]). Returns `None` when more bytes are needed.
pub fn parse_item(buf: &[u8], boundary: &str, first: bool) -> Option<(Item, usize)> {
    match parse_head(buf, boundary, first)? {
        (HeadItem::Close, used) => Some((Item::Close, used)),
        (HeadItem::Head(head), pstart) => {
            let end = pstart + head.payload_len;
            if buf.len() < end {
                return None;
            }
            let payload = buf[pstart..end].to_vec();
            Some((Item::Delivery(head.with_payload(payload)), end))
        }
    }
}

/// Parses a complete delivery body (dequeue, dlq/get): every message, then
/// the close delimiter and nothing after it. Checks the filename rule: with
/// several messages the dispositions carry `meta-N.json` / `payload-N`,
/// with one they carry none.
pub fn parse_deliveries(content_type: &str, body: &[u8]) -> Vec<Delivery> {
    let boundary = delivery_boundary(content_type);
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let (item, used) = parse_item(&body[pos..], &boundary, out.is_empty())
            .unwrap_or_else(|| panic!("truncated delivery body after {} messages", out.len()));
        pos += used;
        match item {
            Item::Delivery(d) => out.push(d),
            Item::Close => break,
        }
    }
    assert_eq!(pos, body.len(), "bytes after the close delimiter");
    assert!(!out.is_empty(), "a delivery carries at least one message");
    let many = out.len() > 1;
    for (i, d) in out.iter().enumerate() {
        let (m, p) = if many {
            (
                format!("form-data; name=\"meta\"; filename=\"meta-{i}.json\""),
                format!("form-data; name=\"payload\"; filename=\"payload-{i}\""),
            )
        } else {
            (
                "form-data; name=\"meta\"".to_string(),
                "form-data; name=\"payload\"".to_string(),
            )
        };
        assert_eq!(d.meta_disposition, m);
        assert_eq!(d.payload_disposition, p);
    }
    out
}

/// Reads a 200 delivery response: headers and messages. Checks the
/// correlation header is the first message's correlation id.
pub async fn read_deliveries(resp: Response) -> (HeaderMap, Vec<Delivery>) {
    let status = resp.status();
    let h = resp.headers().clone();
    let body = resp.bytes().await.expect("delivery body");
    assert_eq!(
        status,
        StatusCode::OK,
        "delivery failed: {}",
        String::from_utf8_lossy(&body)
    );
    let ct = header_str(&h, "content-type").expect("delivery Content-Type");
    let ds = parse_deliveries(&ct, &body);
    assert_eq!(
        header_str(&h, "x-correlation-id").as_deref(),
        ds[0].msg["correlation_id"].as_str(),
        "X-Correlation-Id is the first message's correlation id"
    );
    (h, ds)
}

// ---------------------------------------------------------------------------
// Dequeue, ack, nack, extend, stats (§6.4–§6.10)

/// POST a JSON body to a queue endpoint.
pub async fn post_json(s: &TestServer, path: &str, body: &Value) -> Response {
    s.http
        .post(s.url(path))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path} request: {e}"))
}

/// POST a raw body to a queue endpoint.
pub async fn post_raw(s: &TestServer, path: &str, body: &str) -> Response {
    s.http
        .post(s.url(path))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path} request: {e}"))
}

/// A dequeue body: queue, owner, wait, visibility.
pub fn dq(queue: &str, wait: i64, visibility: i64) -> Value {
    json!({
        "queue": queue,
        "owner": "worker-1",
        "wait_seconds": wait,
        "visibility_timeout_seconds": visibility,
    })
}

/// `body` with the fields of `extra` set (null removes a field).
pub fn with(body: &Value, extra: Value) -> Value {
    let mut b = body.as_object().cloned().unwrap_or_default();
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        if v.is_null() {
            b.remove(&k);
        } else {
            b.insert(k, v);
        }
    }
    Value::Object(b)
}

/// POST `/v1/queue/dequeue`.
pub async fn dequeue_raw(s: &TestServer, body: &Value) -> Response {
    post_json(s, "/v1/queue/dequeue", body).await
}

/// Dequeues and expects 200.
pub async fn dequeue(s: &TestServer, body: &Value) -> Vec<Delivery> {
    read_deliveries(dequeue_raw(s, body).await).await.1
}

/// Dequeues exactly one message.
pub async fn dequeue_one(s: &TestServer, body: &Value) -> Delivery {
    let mut v = dequeue(s, body).await;
    assert_eq!(v.len(), 1, "expected one message");
    v.pop().unwrap()
}

/// Expects `409 waiting` from a dequeue with `wait_seconds: -1`.
pub async fn expect_empty(s: &TestServer, ns: &str, queue: &str) {
    let body = json!({"namespace": ns, "queue": queue, "owner": "probe", "wait_seconds": -1});
    let v = assert_error(dequeue_raw(s, &body).await, 409, "waiting").await;
    assert!(v.get("retry_after_seconds").is_none());
}

fn lease_fields(m: &Value) -> Map<String, Value> {
    let mut b = Map::new();
    for k in [
        "namespace",
        "queue",
        "message_id",
        "lease_id",
        "fencing_token",
        "txn_id",
        "meta_etag",
    ] {
        if let Some(v) = m.get(k) {
            b.insert(k.into(), v.clone());
        }
    }
    if m.get("state_lease_id").is_some() {
        for k in ["state_lease_id", "state_fencing_token"] {
            b.insert(k.into(), m[k].clone());
        }
    }
    b
}

/// The ack body for a delivered message (stateful fields included when the
/// delivery carried them).
pub fn ack_body(m: &Value) -> Value {
    let mut b = lease_fields(m);
    if let Some(se) = m.get("state_etag") {
        if m.get("state_lease_id").is_some() {
            b.insert("state_etag".into(), se.clone());
        }
    }
    Value::Object(b)
}

/// The nack body for a delivered message.
pub fn nack_body(m: &Value) -> Value {
    Value::Object(lease_fields(m))
}

/// The extend body for a delivered message.
pub fn extend_body(m: &Value, by: i64) -> Value {
    let mut b = lease_fields(m);
    b.insert("extend_by_seconds".into(), json!(by));
    Value::Object(b)
}

/// POST `/v1/queue/ack`.
pub async fn ack_raw(s: &TestServer, body: &Value) -> Response {
    post_json(s, "/v1/queue/ack", body).await
}
/// POST `/v1/queue/nack`.
pub async fn nack_raw(s: &TestServer, body: &Value) -> Response {
    post_json(s, "/v1/queue/nack", body).await
}
/// POST `/v1/queue/extend`.
pub async fn extend_raw(s: &TestServer, body: &Value) -> Response {
    post_json(s, "/v1/queue/extend", body).await
}

/// Checks the correlation header of ack/nack/extend 200 against the body.
fn check_cid(h: &HeaderMap, v: &Value, m: &Value) {
    assert_eq!(v["correlation_id"], m["correlation_id"], "message cid: {v}");
    assert_eq!(
        header_str(h, "x-correlation-id").as_deref(),
        m["correlation_id"].as_str()
    );
}

/// Acks a delivery and expects success.
pub async fn ack(s: &TestServer, d: &Delivery) {
    let (h, v) = expect_json(ack_raw(s, &ack_body(&d.msg)).await, StatusCode::OK).await;
    assert_eq!(
        v,
        json!({"acked": true, "correlation_id": d.msg["correlation_id"]})
    );
    check_cid(&h, &v, &d.msg);
}

/// Nacks a delivery with extra fields; expects success and returns the body.
pub async fn nack(s: &TestServer, d: &Delivery, extra: Value) -> Value {
    let body = with(&nack_body(&d.msg), extra);
    let (h, v) = expect_json(nack_raw(s, &body).await, StatusCode::OK).await;
    assert_eq!(v["requeued"], json!(true));
    let etag = v["meta_etag"].as_str().expect("meta_etag");
    assert!(!etag.is_empty());
    assert_ne!(etag, d.str("meta_etag"), "nack changes meta_etag");
    check_cid(&h, &v, &d.msg);
    v
}

/// Extends a delivery; expects success and returns the body.
pub async fn extend(s: &TestServer, d: &Delivery, by: i64) -> Value {
    let (h, v) = expect_json(
        extend_raw(s, &extend_body(&d.msg, by)).await,
        StatusCode::OK,
    )
    .await;
    check_cid(&h, &v, &d.msg);
    v
}

/// POST `/v1/queue/stats`, expecting 200.
pub async fn stats(s: &TestServer, body: &Value) -> Value {
    expect_json(post_json(s, "/v1/queue/stats", body).await, StatusCode::OK)
        .await
        .1
}

/// POST `/v1/queue/dlq/list`, expecting 200.
pub async fn dlq_list(s: &TestServer, body: &Value) -> Value {
    expect_json(
        post_json(s, "/v1/queue/dlq/list", body).await,
        StatusCode::OK,
    )
    .await
    .1
}

/// Ids of the messages in a DLQ listing.
pub fn ids_of(list: &Value) -> Vec<String> {
    list["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Streaming subscribe (§6.6)

/// An open subscribe stream, read chunk by chunk; deliveries are parsed as
/// soon as their bytes are complete.
pub struct Subscription {
    resp: Response,
    /// The response headers.
    pub headers: HeaderMap,
    boundary: String,
    buf: Vec<u8>,
    delivered: usize,
    closed: bool,
    eof: bool,
}

impl Subscription {
    /// Opens `path` (`/v1/queue/subscribe` or `…WithState`). A non-200
    /// answer is returned as `Err` for error assertions.
    pub async fn open(s: &TestServer, path: &str, body: &Value) -> Result<Subscription, Response> {
        Self::open_at(&s.http, &s.url(path), body).await
    }

    /// Like `open`, with a client and a full URL (for spawned tasks).
    pub async fn open_at(
        http: &reqwest::Client,
        url: &str,
        body: &Value,
    ) -> Result<Subscription, Response> {
        let resp = http
            .post(url)
            .header("Accept", "multipart/related")
            .json(body)
            .send()
            .await
            .expect("subscribe request");
        if resp.status() != StatusCode::OK {
            return Err(resp);
        }
        let headers = resp.headers().clone();
        let ct = header_str(&headers, "content-type").expect("Content-Type");
        let boundary = delivery_boundary(&ct);
        Ok(Subscription {
            resp,
            headers,
            boundary,
            buf: Vec::new(),
            delivered: 0,
            closed: false,
            eof: false,
        })
    }

    /// Opens and expects 200.
    pub async fn start(s: &TestServer, path: &str, body: &Value) -> Subscription {
        Self::start_at(&s.http, &s.url(path), body).await
    }

    /// Like `start`, with a client and a full URL (for spawned tasks).
    pub async fn start_at(http: &reqwest::Client, url: &str, body: &Value) -> Subscription {
        match Self::open_at(http, url, body).await {
            Ok(sub) => sub,
            Err(resp) => {
                let st = resp.status();
                panic!("subscribe failed: {st} {}", resp.text().await.unwrap())
            }
        }
    }

    /// The next delivery, or `None` when the stream ended with the close
    /// delimiter (then the body must end right after it). Cancel-safe: the
    /// buffered bytes live in `self`.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            if self.closed {
                return None;
            }
            if let Some((item, used)) = parse_item(&self.buf, &self.boundary, self.delivered == 0) {
                self.buf.drain(..used);
                match item {
                    Item::Delivery(d) => {
                        assert_eq!(
                            d.meta_disposition, "form-data; name=\"meta\"",
                            "subscribe streams carry no filenames"
                        );
                        assert_eq!(d.payload_disposition, "form-data; name=\"payload\"");
                        if self.delivered == 0 {
                            assert_eq!(
                                header_str(&self.headers, "x-correlation-id").as_deref(),
                                d.msg["correlation_id"].as_str(),
                                "X-Correlation-Id is the first message's"
                            );
                        }
                        self.delivered += 1;
                        return Some(d);
                    }
                    Item::Close => {
                        self.closed = true;
                        // Nothing may follow the close delimiter.
                        while !self.eof {
                            self.read_more().await;
                        }
                        assert!(
                            self.buf.is_empty(),
                            "bytes after the close delimiter: {:?}",
                            String::from_utf8_lossy(&self.buf)
                        );
                        return None;
                    }
                }
            }
            assert!(
                !self.eof,
                "stream ended without the close delimiter ({} bytes left)",
                self.buf.len()
            );
            self.read_more().await;
        }
    }

    async fn read_more(&mut self) {
        match self.resp.chunk().await.expect("subscribe body chunk") {
            Some(c) => self.buf.extend_from_slice(&c),
            None => self.eof = true,
        }
    }

    /// The next delivery if one arrives within `d` (`None` on timeout).
    pub async fn next_within(&mut self, d: Duration) -> Option<Delivery> {
        match tokio::time::timeout(d, self.next()).await {
            Ok(Some(x)) => Some(x),
            Ok(None) => panic!("subscribe stream closed unexpectedly"),
            Err(_) => None,
        }
    }

    /// Like `next`, but panics when nothing arrives within `d`.
    pub async fn expect_next(&mut self, d: Duration) -> Delivery {
        self.next_within(d)
            .await
            .unwrap_or_else(|| panic!("no delivery within {d:?}"))
    }

    /// Deliveries read so far.
    pub fn delivered(&self) -> usize {
        self.delivered
    }
}

// ---------------------------------------------------------------------------
// Incremental reading (dequeue or subscribe over the network)

/// Incremental reader of a delivery response (dequeue or subscribe, §6.3)
/// for tests that must not buffer whole payloads or must stop in the middle
/// of a message: [`DeliveryReader::next_head`] parses the next message up
/// to its payload with [`parse_head`] (which checks the layout and panics
/// on a wrong one), [`DeliveryReader::read_payload`] streams the payload.
/// A body that ends early is an `Err`: the server may have died.
pub struct DeliveryReader {
    resp: Response,
    boundary: String,
    buf: Vec<u8>,
    pos: usize,
    first: bool,
    done: bool,
    /// The message whose payload is being read.
    head: Option<Head>,
}

impl DeliveryReader {
    /// Wraps a 200 delivery response; `Err` when it is not `multipart/related`.
    pub fn new(resp: Response) -> Result<Self, String> {
        let ct = header_str(resp.headers(), "content-type").unwrap_or_default();
        if !ct.to_ascii_lowercase().starts_with("multipart/related") {
            return Err(format!("delivery content type {ct:?}"));
        }
        Ok(Self {
            resp,
            boundary: delivery_boundary(&ct),
            buf: Vec::new(),
            pos: 0,
            first: true,
            done: false,
            head: None,
        })
    }

    /// Reads one more chunk into the buffer; false at the end of the body.
    async fn more(&mut self) -> Result<bool, String> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        match self.resp.chunk().await {
            Ok(Some(c)) => {
                self.buf.extend_from_slice(&c);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(format!("reading the delivery body: {e:?}")),
        }
    }

    /// The next message's meta (`message` object) and payload length, the
    /// payload still unread; `None` at the close delimiter.
    pub async fn next_head(&mut self) -> Result<Option<(Value, u64)>, String> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some((item, used)) =
                parse_head(&self.buf[self.pos..], &self.boundary, self.first)
            {
                self.pos += used;
                self.first = false;
                return Ok(match item {
                    HeadItem::Close => {
                        self.done = true;
                        None
                    }
                    HeadItem::Head(head) => {
                        let out = (head.msg.clone(), head.payload_len as u64);
                        self.head = Some(head);
                        Some(out)
                    }
                });
            }
            if !self.more().await? {
                return Err("delivery body ended in the middle of a part".into());
            }
        }
    }

    /// Streams the `len` payload bytes of the current message to `sink`
    /// without collecting them.
    pub async fn read_payload(
        &mut self,
        len: u64,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), String> {
        let mut left = len as usize;
        let have = (self.buf.len() - self.pos).min(left);
        sink(&self.buf[self.pos..self.pos + have]);
        self.pos += have;
        left -= have;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        while left > 0 {
            let c = match self.resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => return Err(format!("body ended with {left} payload bytes missing")),
                Err(e) => return Err(format!("reading the payload: {e:?}")),
            };
            let take = c.len().min(left);
            sink(&c[..take]);
            left -= take;
            self.buf.extend_from_slice(&c[take..]);
        }
        Ok(())
    }

    /// The delivery of the message [`next_head`](Self::next_head) returned
    /// last, once its payload has been read.
    pub fn delivery(&mut self, payload: Vec<u8>) -> Delivery {
        self.head
            .take()
            .expect("next_head returned a message first")
            .with_payload(payload)
    }

    /// The next message with its payload.
    pub async fn next(&mut self) -> Result<Option<Delivery>, String> {
        let Some((_, len)) = self.next_head().await? else {
            return Ok(None);
        };
        let mut payload = Vec::with_capacity(len as usize);
        self.read_payload(len, |b| payload.extend_from_slice(b))
            .await?;
        Ok(Some(self.delivery(payload)))
    }
}
