//! The queue workload: P producers enqueue 1 KiB messages, C consumers take
//! them (by repeated `dequeue` or one long-lived `subscribe` stream each)
//! and ack them; every message carries its enqueue time so the consumer
//! can measure enqueue-to-ack latency.
//!
//! * **Producers** `POST /v1/queue/enqueue` with a `multipart/related` body
//!   (a `meta` part `{"queue":…}` then a `payload` part). Payload bytes
//!   0..8 are the enqueue time (nanoseconds since the run started,
//!   little-endian, taken just before the request is sent), bytes 8..16 a
//!   random tag of the run (messages without it are acked but not
//!   counted), the rest filler.
//! * **Backlog cap:** a producer takes a permit from a semaphore of
//!   `backlog` permits before each enqueue and a successful ack returns
//!   one, so `enqueued − acked` (in flight included) never exceeds the cap.
//!   When producers outrun consumers the queue sits at the cap and
//!   enqueue-to-ack latency is mostly queueing time (≈ cap ÷ rate, Little's
//!   law); the report shows the sampled backlog so this is visible.
//! * **dequeue consumers** loop over `POST /v1/queue/dequeue`
//!   `{"queue","owner","wait_seconds","page_size"}`, parse the
//!   `multipart/related` answer and ack every message (concurrently when a
//!   page holds several). `409 waiting` counts as an empty poll.
//! * **subscribe consumers** open one `POST /v1/queue/subscribe` each and
//!   parse deliveries from the streaming body as bytes arrive; each
//!   delivery goes to the consumer's ack task, which acks them concurrently
//!   so the stream keeps flowing (the server keeps at most `page_size`
//!   unacknowledged deliveries per stream). A stream that ends is reopened.
//! * **ack** is `POST /v1/queue/ack`
//!   `{"queue","message_id","lease_id","fencing_token","meta_etag"}`.
//!
//! An ack counts when it completes inside the measurement window (after the
//! warm-up). After the window producers stop and consumers drain the queue
//! (up to a drain timeout), so the run also checks that every enqueued
//! message was delivered and acked.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::load::{error_chain, error_kind_at, http_client, preflight, HttpClient, Target};
use crate::stats::Latency;
use lockd_api::delivery::{boundary_of, Delivery, DeliveryReader};

/// Boundary of the enqueue bodies (never occurs in the payload: the
/// filler is lowercase letters and digits, the stamp 16 bytes).
macro_rules! boundary {
    () => {
        "lockd-bench-0b5e9c3a7f1d42e8"
    };
}
const BOUNDARY: &str = boundary!();

/// Bytes at the start of each payload: enqueue time and run tag.
pub const STAMP_BYTES: usize = 16;

/// How many error messages are printed per run before staying quiet.
const PRINTED_ERRORS: usize = 5;

/// Pause after a failed request so a broken server is not hammered.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);

/// A dequeue answered with messages only after this long is counted as
/// slow (see [`QueueResult::slow_dequeues`]): with producers running, a
/// consumer should not wait that long for a message.
pub const SLOW_DEQUEUE: Duration = Duration::from_secs(1);

/// Pause after `503 queue_busy` (more consumers than the server admits):
/// retrying at once would turn the surplus consumers into a request storm.
const BUSY_BACKOFF: Duration = Duration::from_millis(50);

/// How consumers take messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Repeated `POST /v1/queue/dequeue`.
    Dequeue,
    /// One long-lived `POST /v1/queue/subscribe` per consumer.
    Subscribe,
}

impl Mode {
    /// `dequeue` / `subscribe`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Dequeue => "dequeue",
            Mode::Subscribe => "subscribe",
        }
    }
}

/// Parameters of one queue run.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Label used in error messages (`mem dequeue`, …).
    pub label: String,
    /// `http://host:port` of each lockd node (one, or several sharing a
    /// store); producer `i` and consumer `c` talk to nodes `i % n` and
    /// `c % n`, a consumer acks on its own node.
    pub bases: Vec<String>,
    /// Queue name.
    pub queue: String,
    /// Owners are `<owner_prefix>-<consumer>`.
    pub owner_prefix: String,
    /// Consumer mode.
    pub mode: Mode,
    /// Producer tasks.
    pub producers: usize,
    /// Consumer tasks.
    pub consumers: usize,
    /// Payload size (≥ [`STAMP_BYTES`]).
    pub payload_bytes: usize,
    /// `page_size` of dequeue or subscribe requests.
    pub page_size: u32,
    /// `wait_seconds` of dequeue and subscribe requests.
    pub wait_seconds: i64,
    /// Most messages enqueued but not yet acked.
    pub backlog: usize,
    /// Warm-up before the window.
    pub warmup: Duration,
    /// Measurement window.
    pub duration: Duration,
    /// Per-request timeout (dequeue/subscribe get `wait_seconds` on top).
    pub timeout: Duration,
    /// How long consumers may take to drain the queue after the window.
    pub drain_timeout: Duration,
}

/// What one queue run measured.
#[derive(Debug, Clone, Default)]
pub struct QueueResult {
    /// Messages acked inside the window.
    pub acked: u64,
    /// `acked` per second of window.
    pub rate: f64,
    /// Enqueue-to-ack latency of those messages.
    pub e2e: Option<Latency>,
    /// Enqueue request latency (started and finished inside the window).
    pub enqueue: Option<Latency>,
    /// Dequeue request latency (dequeue mode; until the whole body is read).
    pub dequeue: Option<Latency>,
    /// Ack request latency.
    pub ack: Option<Latency>,
    /// Successful enqueues inside the window.
    pub enqueued: u64,
    /// `enqueued` per second of window.
    pub enqueue_rate: f64,
    /// Failed enqueues inside the window.
    pub enqueue_errors: u64,
    /// Failed dequeue/subscribe requests or broken streams inside the window.
    pub consume_errors: u64,
    /// Failed acks inside the window.
    pub ack_errors: u64,
    /// Errors during warm-up or drain (not in `errors()`).
    pub outside_errors: u64,
    /// `409 waiting` answers (no message within `wait_seconds`).
    pub empty_polls: u64,
    /// `503 queue_busy` answers (whole run; not counted as errors).
    pub busy: u64,
    /// Subscribe streams opened (whole run).
    pub streams: u64,
    /// Subscribe streams the server ended (whole run).
    pub stream_ends: u64,
    /// Deliveries with `attempts > 1` (whole run).
    pub redeliveries: u64,
    /// Deliveries without this run's tag (acked, not counted).
    pub foreign: u64,
    /// Dequeue responses with messages inside the window.
    pub responses: u64,
    /// Messages in those responses.
    pub delivered_in_responses: u64,
    /// Mean of `enqueued − acked` sampled every 10 ms in the window.
    pub backlog_mean: f64,
    /// Largest sample.
    pub backlog_max: u64,
    /// Acks completed during warm-up.
    pub warmup_acked: u64,
    /// Successful enqueues over the whole run.
    pub total_enqueued: u64,
    /// Acks of this run's messages over the whole run.
    pub total_acked: u64,
    /// Messages enqueued but not acked when the drain ended.
    pub undrained: u64,
    /// How long the drain took.
    pub drain: Duration,
    /// Length of the measurement window, seconds.
    pub window_s: f64,
    /// Errors of the whole run (warm-up and drain included) by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// `acked` by the node the ack went to.
    pub acked_by_node: Vec<u64>,
    /// `enqueued` by the node the enqueue went to.
    pub enqueued_by_node: Vec<u64>,
    /// Dequeues of the whole run answered with messages after more than
    /// [`SLOW_DEQUEUE`] (the window's `dequeue` latency leaves out those
    /// that straddle its edges, so long waits hide there).
    pub slow_dequeues: u64,
    /// Longest dequeue answered with messages over the whole run, ns.
    pub dequeue_max_all: u64,
    /// When the first and the last slow dequeue was sent, ns after the run
    /// (warm-up) began.
    pub slow_started: Option<(u64, u64)>,
}

impl QueueResult {
    /// Errors inside the window.
    pub fn errors(&self) -> u64 {
        self.enqueue_errors + self.consume_errors + self.ack_errors
    }

    /// Mean messages per non-empty dequeue response.
    pub fn per_response(&self) -> Option<f64> {
        (self.responses > 0).then(|| self.delivered_in_responses as f64 / self.responses as f64)
    }
}

/// A random-enough 64-bit tag (no `rand` dependency needed).
pub(crate) fn run_tag() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    RandomState::new().hash_one(nanos) | 1
}

/// `payload_bytes` of filler (the stamp overwrites the first 16).
fn filler(payload_bytes: usize) -> Vec<u8> {
    b"abcdefghijklmnopqrstuvwxyz0123456789"
        .iter()
        .copied()
        .cycle()
        .take(payload_bytes.max(STAMP_BYTES))
        .collect()
}

/// The enqueue time stamped into a payload, if it carries `tag`.
pub fn read_stamp(payload: &[u8], tag: u64) -> Option<u64> {
    if payload.len() < STAMP_BYTES {
        return None;
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[r]);
        u64::from_le_bytes(b)
    };
    (word(8..16) == tag).then(|| word(0..8))
}

/// The enqueue body for one message (PROTOCOL.md §6.2).
pub struct EnqueueBody {
    head: Vec<u8>,
    filler: Vec<u8>,
    tail: &'static [u8],
}

impl EnqueueBody {
    /// A template for `queue` with `payload_bytes` payloads.
    pub fn new(queue: &str, payload_bytes: usize) -> Self {
        let meta = serde_json::json!({ "queue": queue }).to_string();
        let head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"meta\"\r\n\
             Content-Type: application/json\r\n\r\n{meta}\n\r\n--{BOUNDARY}\r\n\
             Content-Disposition: form-data; name=\"payload\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        Self {
            head: head.into_bytes(),
            filler: filler(payload_bytes),
            tail: concat!("\r\n--", boundary!(), "--\r\n").as_bytes(),
        }
    }

    /// `multipart/related; boundary=…`.
    pub fn content_type() -> HeaderValue {
        HeaderValue::from_static(concat!("multipart/related; boundary=", boundary!()))
    }

    /// The body with `stamp` and `tag` in the payload's first 16 bytes.
    pub fn build(&self, stamp: u64, tag: u64) -> Bytes {
        let mut b = Vec::with_capacity(self.head.len() + self.filler.len() + self.tail.len());
        b.extend_from_slice(&self.head);
        b.extend_from_slice(&stamp.to_le_bytes());
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&self.filler[STAMP_BYTES..]);
        b.extend_from_slice(self.tail);
        Bytes::from(b)
    }

    /// Like [`EnqueueBody::build`], with `seq` in payload bytes 16..24
    /// (the template's payload must be at least [`SEQ_STAMP_BYTES`] long).
    pub fn build_with_seq(&self, stamp: u64, tag: u64, seq: u64) -> Bytes {
        let mut b = Vec::with_capacity(self.head.len() + self.filler.len() + self.tail.len());
        b.extend_from_slice(&self.head);
        b.extend_from_slice(&stamp.to_le_bytes());
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(&self.filler[SEQ_STAMP_BYTES.min(self.filler.len())..]);
        b.extend_from_slice(self.tail);
        Bytes::from(b)
    }
}

/// Bytes at the start of an overload payload: enqueue time, run tag and a
/// sequence number.
pub const SEQ_STAMP_BYTES: usize = STAMP_BYTES + 8;

/// The sequence number of a payload built by
/// [`EnqueueBody::build_with_seq`], if it carries `tag`.
pub fn read_seq(payload: &[u8], tag: u64) -> Option<u64> {
    if payload.len() < SEQ_STAMP_BYTES {
        return None;
    }
    read_stamp(payload, tag)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[STAMP_BYTES..SEQ_STAMP_BYTES]);
    Some(u64::from_le_bytes(b))
}

/// Everything the tasks of a run share.
struct Shared {
    label: String,
    http: HttpClient,
    timeout: Duration,
    /// Request timeout of dequeue/subscribe (`wait_seconds` longer).
    consume_timeout: Duration,
    epoch: Instant,
    measure_start: Instant,
    measure_end: Instant,
    tag: u64,
    queue: String,
    /// The endpoints of each node.
    nodes: Vec<NodeUris>,
    enqueue_body: EnqueueBody,
    json: HeaderValue,
    multipart: HeaderValue,
    /// Permits for enqueues: `backlog − (enqueued − acked)`.
    backlog: Semaphore,
    /// Successful enqueues.
    enqueued: AtomicU64,
    /// Successful acks of this run's messages.
    acked: AtomicU64,
    printed: AtomicUsize,
}

/// The queue endpoints of one node.
struct NodeUris {
    enqueue: Uri,
    dequeue: Uri,
    subscribe: Uri,
    ack: Uri,
}

impl NodeUris {
    fn of(base: &str) -> Result<Self, String> {
        Ok(Self {
            enqueue: parse_uri(&format!("{base}/v1/queue/enqueue"))?,
            dequeue: parse_uri(&format!("{base}/v1/queue/dequeue"))?,
            subscribe: parse_uri(&format!("{base}/v1/queue/subscribe"))?,
            ack: parse_uri(&format!("{base}/v1/queue/ack"))?,
        })
    }
}

/// What a failed request was.
#[derive(Debug, Clone, Copy)]
enum Failed {
    Enqueue,
    Consume,
    Ack,
}

/// The outcome of one ack.
struct AckOutcome {
    started: Instant,
    finished: Instant,
    /// Node the ack went to.
    node: usize,
    result: Result<(), String>,
    /// `None` for messages of another run.
    stamp: Option<u64>,
    attempts: i64,
}

/// Answer of a dequeue.
enum Polled {
    Empty,
    Busy,
    Deliveries(Vec<Delivery>),
}

/// Answer of a subscribe.
enum Opened {
    Empty,
    Busy,
    Stream(String, Incoming),
}

/// Per-task counters and samples.
#[derive(Debug, Default)]
struct TaskStats {
    e2e: Vec<u64>,
    enqueue: Vec<u64>,
    dequeue: Vec<u64>,
    ack: Vec<u64>,
    acked: u64,
    enqueued: u64,
    warmup_acked: u64,
    enqueue_errors: u64,
    consume_errors: u64,
    ack_errors: u64,
    outside_errors: u64,
    empty_polls: u64,
    busy: u64,
    streams: u64,
    stream_ends: u64,
    redeliveries: u64,
    foreign: u64,
    responses: u64,
    delivered_in_responses: u64,
    error_kinds: BTreeMap<String, u64>,
    acked_by_node: Vec<u64>,
    enqueued_by_node: Vec<u64>,
    slow_dequeues: u64,
    dequeue_max_all: u64,
    slow_started: Option<(u64, u64)>,
}

/// Adds `n` to `v[i]`, growing `v` as needed.
fn bump(v: &mut Vec<u64>, i: usize, n: u64) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] += n;
}

impl TaskStats {
    fn merge(&mut self, o: TaskStats) {
        self.e2e.extend_from_slice(&o.e2e);
        self.enqueue.extend_from_slice(&o.enqueue);
        self.dequeue.extend_from_slice(&o.dequeue);
        self.ack.extend_from_slice(&o.ack);
        self.acked += o.acked;
        self.enqueued += o.enqueued;
        self.warmup_acked += o.warmup_acked;
        self.enqueue_errors += o.enqueue_errors;
        self.consume_errors += o.consume_errors;
        self.ack_errors += o.ack_errors;
        self.outside_errors += o.outside_errors;
        self.empty_polls += o.empty_polls;
        self.busy += o.busy;
        self.streams += o.streams;
        self.stream_ends += o.stream_ends;
        self.redeliveries += o.redeliveries;
        self.foreign += o.foreign;
        self.responses += o.responses;
        self.delivered_in_responses += o.delivered_in_responses;
        for (kind, n) in o.error_kinds {
            *self.error_kinds.entry(kind).or_default() += n;
        }
        for (i, n) in o.acked_by_node.into_iter().enumerate() {
            bump(&mut self.acked_by_node, i, n);
        }
        for (i, n) in o.enqueued_by_node.into_iter().enumerate() {
            bump(&mut self.enqueued_by_node, i, n);
        }
        self.slow_dequeues += o.slow_dequeues;
        self.dequeue_max_all = self.dequeue_max_all.max(o.dequeue_max_all);
        self.slow_started = match (self.slow_started, o.slow_started) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (x, y) => x.or(y),
        };
    }

    fn failed(&mut self, sh: &Shared, node: usize, what: Failed, at: Instant, msg: &str) {
        *self
            .error_kinds
            .entry(error_kind_at(msg, node, sh.nodes.len()))
            .or_default() += 1;
        let measured = at >= sh.measure_start && at <= sh.measure_end;
        if !measured {
            self.outside_errors += 1;
        } else {
            match what {
                Failed::Enqueue => self.enqueue_errors += 1,
                Failed::Consume => self.consume_errors += 1,
                Failed::Ack => self.ack_errors += 1,
            }
        }
        sh.report_error(at, msg);
    }

    fn absorb(&mut self, sh: &Shared, o: AckOutcome) {
        if o.attempts > 1 {
            self.redeliveries += 1;
        }
        match o.result {
            Err(msg) => self.failed(sh, o.node, Failed::Ack, o.finished, &msg),
            Ok(()) => {
                let Some(stamp) = o.stamp else {
                    self.foreign += 1;
                    return;
                };
                if o.finished < sh.measure_start {
                    self.warmup_acked += 1;
                } else if o.finished <= sh.measure_end {
                    self.acked += 1;
                    bump(&mut self.acked_by_node, o.node, 1);
                    let now = (o.finished - sh.epoch).as_nanos() as u64;
                    self.e2e.push(now.saturating_sub(stamp));
                    if o.started >= sh.measure_start {
                        self.ack.push((o.finished - o.started).as_nanos() as u64);
                    }
                }
            }
        }
    }
}

impl Shared {
    fn report_error(&self, at: Instant, msg: &str) {
        let n = self.printed.fetch_add(1, Ordering::Relaxed);
        if n < PRINTED_ERRORS {
            let phase = if at < self.measure_start {
                " (warm-up)"
            } else if at > self.measure_end {
                " (drain)"
            } else {
                ""
            };
            eprintln!("  [{}] error{phase}: {msg}", self.label);
        } else if n == PRINTED_ERRORS {
            eprintln!("  [{}] further errors are counted, not printed", self.label);
        }
    }

    fn request(
        &self,
        uri: &Uri,
        ct: &HeaderValue,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, String> {
        crate::queue::post_request(uri, ct, body)
    }

    /// POSTs and reads the whole answer within `timeout`.
    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(StatusCode, String, Bytes), String> {
        let (status, headers, body) = exchange(&self.http, req, timeout).await?;
        Ok((status, content_type(&headers), body))
    }

    /// POSTs and fails on a non-2xx answer.
    async fn post_ok(
        &self,
        what: &str,
        uri: &Uri,
        ct: &HeaderValue,
        body: Bytes,
    ) -> Result<Bytes, String> {
        let req = self.request(uri, ct, body)?;
        let (status, _, body) = self
            .exchange(req, self.timeout)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{what}: HTTP {status}: {}", snippet(&body)))
        }
    }

    /// One dequeue request.
    async fn dequeue(&self, node: usize, body: &Bytes) -> Result<Polled, String> {
        let req = self.request(&self.nodes[node].dequeue, &self.json, body.clone())?;
        let (status, ct, body) = self
            .exchange(req, self.consume_timeout)
            .await
            .map_err(|e| format!("dequeue: {e}"))?;
        match error_code(status, &body).as_deref() {
            Some("waiting") => return Ok(Polled::Empty),
            Some("queue_busy") => return Ok(Polled::Busy),
            _ => {}
        }
        if !status.is_success() {
            return Err(format!("dequeue: HTTP {status}: {}", snippet(&body)));
        }
        let boundary = boundary_of(&ct).ok_or_else(|| format!("dequeue: not multipart: {ct:?}"))?;
        let mut reader = DeliveryReader::new(&boundary);
        reader.feed(&body);
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

    /// Opens a subscribe stream (the server answers once the first message
    /// is leased).
    async fn subscribe(&self, node: usize, body: &Bytes) -> Result<Opened, String> {
        let req = self.request(&self.nodes[node].subscribe, &self.json, body.clone())?;
        let resp = match tokio::time::timeout(self.consume_timeout, self.http.request(req)).await {
            Ok(r) => r.map_err(|e| format!("subscribe: {}", error_chain(&e)))?,
            Err(_) => {
                return Err(format!(
                    "subscribe: no answer within {:?}",
                    self.consume_timeout
                ))
            }
        };
        let status = resp.status();
        if status.is_success() {
            let ct = content_type(resp.headers());
            let boundary =
                boundary_of(&ct).ok_or_else(|| format!("subscribe: not multipart: {ct:?}"))?;
            return Ok(Opened::Stream(boundary, resp.into_body()));
        }
        let body = match tokio::time::timeout(self.timeout, resp.into_body().collect()).await {
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
}

pub(crate) fn content_type(h: &hyper::HeaderMap) -> String {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

pub(crate) fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)])
        .trim_end()
        .to_string()
}

/// The `error` code of a `409 waiting` or `503 queue_busy` answer.
pub(crate) fn error_code(status: StatusCode, body: &[u8]) -> Option<String> {
    if status != StatusCode::CONFLICT && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v.get("error")?.as_str()?;
    matches!(
        (status, code),
        (StatusCode::CONFLICT, "waiting") | (StatusCode::SERVICE_UNAVAILABLE, "queue_busy")
    )
    .then(|| code.to_string())
}

/// Acks one delivery; a successful ack of this run's message returns a
/// backlog permit.
async fn ack(sh: Arc<Shared>, node: usize, d: Delivery) -> AckOutcome {
    let m = &d.message;
    let stamp = read_stamp(&d.payload, sh.tag);
    let body = serde_json::json!({
        "queue": sh.queue,
        "message_id": m.message_id,
        "lease_id": m.lease_id,
        "fencing_token": m.fencing_token,
        "meta_etag": m.meta_etag,
    })
    .to_string();
    let started = Instant::now();
    let result = sh
        .post_ok("ack", &sh.nodes[node].ack, &sh.json, Bytes::from(body))
        .await
        .map(|_| ())
        .map_err(|e| format!("{e} (message {})", m.message_id));
    let finished = Instant::now();
    if result.is_ok() && stamp.is_some() {
        sh.acked.fetch_add(1, Ordering::Relaxed);
        sh.backlog.add_permits(1);
    }
    AckOutcome {
        started,
        finished,
        node,
        result,
        stamp,
        attempts: m.attempts,
    }
}

async fn producer(sh: Arc<Shared>, node: usize) -> TaskStats {
    let mut st = TaskStats::default();
    let end = tokio::time::Instant::from_std(sh.measure_end);
    loop {
        let permit = tokio::select! {
            p = sh.backlog.acquire() => p,
            _ = tokio::time::sleep_until(end) => break,
        };
        match permit {
            Ok(p) => p.forget(),
            Err(_) => break,
        }
        let t0 = Instant::now();
        if t0 >= sh.measure_end {
            sh.backlog.add_permits(1);
            break;
        }
        let stamp = (t0 - sh.epoch).as_nanos() as u64;
        let body = sh.enqueue_body.build(stamp, sh.tag);
        let res = sh
            .post_ok("enqueue", &sh.nodes[node].enqueue, &sh.multipart, body)
            .await;
        let t1 = Instant::now();
        match res {
            Ok(_) => {
                sh.enqueued.fetch_add(1, Ordering::Relaxed);
                if t0 >= sh.measure_start && t1 <= sh.measure_end {
                    st.enqueued += 1;
                    bump(&mut st.enqueued_by_node, node, 1);
                    st.enqueue.push((t1 - t0).as_nanos() as u64);
                }
            }
            Err(msg) => {
                sh.backlog.add_permits(1);
                st.failed(&sh, node, Failed::Enqueue, t1, &msg);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    st
}

async fn dequeue_consumer(
    sh: Arc<Shared>,
    node: usize,
    body: Bytes,
    mut stop: watch::Receiver<bool>,
) -> TaskStats {
    let mut st = TaskStats::default();
    loop {
        if *stop.borrow() {
            break;
        }
        let t0 = Instant::now();
        let res = tokio::select! {
            r = sh.dequeue(node, &body) => r,
            _ = stop.changed() => break,
        };
        let t1 = Instant::now();
        match res {
            Ok(Polled::Empty) => st.empty_polls += 1,
            Ok(Polled::Busy) => {
                st.busy += 1;
                tokio::time::sleep(BUSY_BACKOFF).await;
            }
            Ok(Polled::Deliveries(ds)) => {
                let took = t1 - t0;
                st.dequeue_max_all = st.dequeue_max_all.max(took.as_nanos() as u64);
                if took > SLOW_DEQUEUE {
                    st.slow_dequeues += 1;
                    let at = (t0 - sh.epoch).as_nanos() as u64;
                    st.slow_started = Some(match st.slow_started {
                        Some((a, b)) => (a.min(at), b.max(at)),
                        None => (at, at),
                    });
                }
                if t0 >= sh.measure_start && t1 <= sh.measure_end {
                    st.dequeue.push((t1 - t0).as_nanos() as u64);
                    st.responses += 1;
                    st.delivered_in_responses += ds.len() as u64;
                }
                if ds.len() == 1 {
                    for d in ds {
                        let o = ack(sh.clone(), node, d).await;
                        st.absorb(&sh, o);
                    }
                } else {
                    let mut set = JoinSet::new();
                    for d in ds {
                        set.spawn(ack(sh.clone(), node, d));
                    }
                    while let Some(r) = set.join_next().await {
                        match r {
                            Ok(o) => st.absorb(&sh, o),
                            Err(e) => {
                                st.failed(&sh, node, Failed::Ack, Instant::now(), &e.to_string())
                            }
                        }
                    }
                }
            }
            Err(msg) => {
                st.failed(&sh, node, Failed::Consume, t1, &msg);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    st
}

/// Acks what a subscribe stream delivers, concurrently.
async fn ack_loop(
    sh: Arc<Shared>,
    node: usize,
    mut rx: mpsc::UnboundedReceiver<Delivery>,
) -> TaskStats {
    let mut st = TaskStats::default();
    let mut set = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            d = rx.recv(), if open => match d {
                Some(d) => {
                    set.spawn(ack(sh.clone(), node, d));
                }
                None => open = false,
            },
            Some(r) = set.join_next(), if !set.is_empty() => match r {
                Ok(o) => st.absorb(&sh, o),
                Err(e) => st.failed(&sh, node, Failed::Ack, Instant::now(), &e.to_string()),
            },
            else => break,
        }
    }
    st
}

/// What ended a subscribe stream.
enum StreamEnd {
    /// The run is over.
    Stop,
    /// The server completed the response.
    Ended,
    /// Transport or format error.
    Broken(String),
}

async fn read_stream(
    mut body: Incoming,
    boundary: &str,
    tx: &mpsc::UnboundedSender<Delivery>,
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
                Ok(Some(d)) => {
                    let _ = tx.send(d);
                }
                Ok(None) => break,
                Err(e) => return StreamEnd::Broken(e),
            }
        }
    }
}

async fn subscribe_consumer(
    sh: Arc<Shared>,
    node: usize,
    body: Bytes,
    mut stop: watch::Receiver<bool>,
) -> TaskStats {
    let (tx, rx) = mpsc::unbounded_channel::<Delivery>();
    let acker = tokio::spawn(ack_loop(sh.clone(), node, rx));
    let mut st = TaskStats::default();
    loop {
        if *stop.borrow() {
            break;
        }
        let opened = tokio::select! {
            r = sh.subscribe(node, &body) => r,
            _ = stop.changed() => break,
        };
        let (boundary, stream) = match opened {
            Ok(Opened::Empty) => {
                st.empty_polls += 1;
                continue;
            }
            Ok(Opened::Busy) => {
                st.busy += 1;
                tokio::time::sleep(BUSY_BACKOFF).await;
                continue;
            }
            Ok(Opened::Stream(b, s)) => (b, s),
            Err(msg) => {
                st.failed(&sh, node, Failed::Consume, Instant::now(), &msg);
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        st.streams += 1;
        match read_stream(stream, &boundary, &tx, &mut stop).await {
            StreamEnd::Stop => break,
            StreamEnd::Ended => st.stream_ends += 1,
            StreamEnd::Broken(msg) => {
                st.failed(
                    &sh,
                    node,
                    Failed::Consume,
                    Instant::now(),
                    &format!("subscribe: {msg}"),
                );
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    drop(tx);
    match acker.await {
        Ok(acks) => st.merge(acks),
        Err(e) => st.failed(
            &sh,
            node,
            Failed::Ack,
            Instant::now(),
            &format!("ack task: {e}"),
        ),
    }
    st
}

/// Samples `enqueued − acked` every 10 ms during the window.
async fn sample_backlog(sh: Arc<Shared>) -> (f64, u64) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(sh.measure_start)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut sum, mut n, mut max) = (0u128, 0u64, 0u64);
    loop {
        tick.tick().await;
        if Instant::now() > sh.measure_end {
            break;
        }
        let b = sh
            .enqueued
            .load(Ordering::Relaxed)
            .saturating_sub(sh.acked.load(Ordering::Relaxed));
        sum += b as u128;
        n += 1;
        max = max.max(b);
    }
    let mean = if n == 0 { 0.0 } else { sum as f64 / n as f64 };
    (mean, max)
}

pub(crate) fn parse_uri(s: &str) -> Result<Uri, String> {
    s.parse::<Uri>().map_err(|e| format!("bad URL {s:?}: {e}"))
}

/// Checks that the server answers `/healthz` and has the queue endpoints
/// (`POST /v1/queue/stats` on `queue`), before any clock starts.
pub async fn preflight_queue(http: &HttpClient, base: &str, queue: &str) -> Result<(), String> {
    let base = base.trim_end_matches('/');
    preflight(
        http,
        &Target::Lease {
            bases: vec![base.to_string()],
            key_prefix: String::new(),
            keys_per_client: 1,
        },
        &Bytes::new(),
    )
    .await?;
    let url = format!("{base}/v1/queue/stats");
    let req = Request::builder()
        .method(Method::POST)
        .uri(parse_uri(&url)?)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({ "queue": queue }).to_string(),
        )))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
        .await
        .map_err(|_| format!("{url}: no answer within 10s"))?
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !status.is_success() {
        return Err(format!(
            "{url}: HTTP {status}: {} (does this server have the queue endpoints?)",
            snippet(&body)
        ));
    }
    Ok(())
}

/// Runs warm-up, window and drain of one queue workload.
pub async fn run(spec: &QueueSpec) -> Result<QueueResult, String> {
    let http = http_client();
    if spec.bases.is_empty() {
        return Err("no server to benchmark".into());
    }
    let bases: Vec<&str> = spec.bases.iter().map(|b| b.trim_end_matches('/')).collect();
    for base in &bases {
        preflight_queue(&http, base, &spec.queue).await?;
    }
    let epoch = Instant::now();
    let measure_start = epoch + spec.warmup;
    let measure_end = measure_start + spec.duration;
    let sh = Arc::new(Shared {
        label: spec.label.clone(),
        http,
        timeout: spec.timeout,
        consume_timeout: spec.timeout + Duration::from_secs(spec.wait_seconds.max(0) as u64),
        epoch,
        measure_start,
        measure_end,
        tag: run_tag(),
        queue: spec.queue.clone(),
        nodes: bases
            .iter()
            .map(|b| NodeUris::of(b))
            .collect::<Result<_, _>>()?,
        enqueue_body: EnqueueBody::new(&spec.queue, spec.payload_bytes),
        json: HeaderValue::from_static("application/json"),
        multipart: EnqueueBody::content_type(),
        backlog: Semaphore::new(spec.backlog.max(1)),
        enqueued: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        printed: AtomicUsize::new(0),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut consumers = Vec::with_capacity(spec.consumers);
    for c in 0..spec.consumers {
        let body = Bytes::from(
            serde_json::json!({
                "queue": spec.queue,
                "owner": format!("{}-{c}", spec.owner_prefix),
                "wait_seconds": spec.wait_seconds,
                "page_size": spec.page_size,
            })
            .to_string(),
        );
        let node = c % bases.len();
        let task = match spec.mode {
            Mode::Dequeue => {
                tokio::spawn(dequeue_consumer(sh.clone(), node, body, stop_rx.clone()))
            }
            Mode::Subscribe => {
                tokio::spawn(subscribe_consumer(sh.clone(), node, body, stop_rx.clone()))
            }
        };
        consumers.push(task);
    }
    let sampler = tokio::spawn(sample_backlog(sh.clone()));
    let producers: Vec<_> = (0..spec.producers)
        .map(|i| tokio::spawn(producer(sh.clone(), i % bases.len())))
        .collect();

    let mut all = TaskStats::default();
    for p in producers {
        all.merge(p.await.map_err(|e| format!("producer task failed: {e}"))?);
    }
    // Drain: producers have stopped; let consumers finish the backlog.
    let drain_start = Instant::now();
    let drain_end = drain_start + spec.drain_timeout;
    while sh.acked.load(Ordering::Relaxed) < sh.enqueued.load(Ordering::Relaxed)
        && Instant::now() < drain_end
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = drain_start.elapsed();
    let _ = stop_tx.send(true);
    for c in consumers {
        all.merge(c.await.map_err(|e| format!("consumer task failed: {e}"))?);
    }
    let (backlog_mean, backlog_max) = sampler.await.unwrap_or((0.0, 0));

    let window = spec.duration.as_secs_f64().max(1e-9);
    let total_enqueued = sh.enqueued.load(Ordering::Relaxed);
    let total_acked = sh.acked.load(Ordering::Relaxed);
    Ok(QueueResult {
        acked: all.acked,
        rate: all.acked as f64 / window,
        e2e: Latency::of(&mut all.e2e),
        enqueue: Latency::of(&mut all.enqueue),
        dequeue: Latency::of(&mut all.dequeue),
        ack: Latency::of(&mut all.ack),
        enqueued: all.enqueued,
        enqueue_rate: all.enqueued as f64 / window,
        enqueue_errors: all.enqueue_errors,
        consume_errors: all.consume_errors,
        ack_errors: all.ack_errors,
        outside_errors: all.outside_errors,
        empty_polls: all.empty_polls,
        busy: all.busy,
        streams: all.streams,
        stream_ends: all.stream_ends,
        redeliveries: all.redeliveries,
        foreign: all.foreign,
        responses: all.responses,
        delivered_in_responses: all.delivered_in_responses,
        backlog_mean,
        backlog_max,
        warmup_acked: all.warmup_acked,
        total_enqueued,
        total_acked,
        undrained: total_enqueued.saturating_sub(total_acked),
        drain,
        window_s: window,
        slow_dequeues: all.slow_dequeues,
        dequeue_max_all: all.dequeue_max_all,
        slow_started: all.slow_started,
        error_kinds: all.error_kinds,
        acked_by_node: {
            let mut v = all.acked_by_node;
            v.resize(bases.len(), 0);
            v
        },
        enqueued_by_node: {
            let mut v = all.enqueued_by_node;
            v.resize(bases.len(), 0);
            v
        },
    })
}

/// Sends a request and reads the whole answer within `timeout` (shared by
/// the queue and overload workloads).
pub(crate) async fn exchange(
    http: &HttpClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, hyper::HeaderMap, Bytes), String> {
    let exchange = async {
        let resp = http.request(req).await.map_err(|e| error_chain(&e))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading body: {}", error_chain(&e)))?
            .to_bytes();
        Ok::<_, String>((parts.status, parts.headers, body))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// A POST of `body` with content type `ct` (shared by the queue and
/// overload workloads).
pub(crate) fn post_request(
    uri: &Uri,
    ct: &HeaderValue,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(CONTENT_TYPE, ct.clone())
        .body(Full::new(body))
        .map_err(|e| format!("building request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockd_api::delivery::Parser;

    #[test]
    fn enqueue_body_is_the_documented_multipart() {
        let t = EnqueueBody::new("bench", 1024);
        let body = t.build(0x0102_0304_0506_0708, 42);
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
        assert_eq!(read_stamp(&payload.body, 42), Some(0x0102_0304_0506_0708));
        assert_eq!(read_stamp(&payload.body, 43), None);
        assert!(p.next_part().expect("parse").is_none());
        assert!(p.is_done());
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
