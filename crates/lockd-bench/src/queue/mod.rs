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
//!
//! The requests are [`crate::wire::queue`]'s; the command and its report
//! are in `cmd`, the producer and consumer tasks in `tasks`.

pub(crate) mod cmd;
mod tasks;

pub use cmd::cmd;

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::report::ErrorLog;
use crate::stats::Latency;
use crate::wire;
use crate::wire::queue::{self as wq, EnqueueBody, QueueUris};
use tasks::{dequeue_consumer, producer, sample_backlog, subscribe_consumer, Shared, TaskStats};

/// Bytes at the start of each payload: enqueue time and run tag.
pub const STAMP_BYTES: usize = 16;

/// A dequeue answered with messages only after this long is counted as
/// slow (see [`QueueResult::slow_dequeues`]): with producers running, a
/// consumer should not wait that long for a message.
pub const SLOW_DEQUEUE: Duration = Duration::from_secs(1);

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
/// As JSON (the part of a `queue` run's report it carries): the counts
/// under their report names; the groups (`errors`, `ops_latency_ms`,
/// `backlog`) are assembled by the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueResult {
    /// Messages acked inside the window.
    pub acked: u64,
    /// `acked` per second of window.
    #[serde(rename = "messages_per_s")]
    pub rate: f64,
    /// Enqueue-to-ack latency of those messages.
    #[serde(rename = "end_to_end_ms")]
    pub e2e: Option<Latency>,
    /// Enqueue request latency (started and finished inside the window).
    #[serde(skip)]
    pub enqueue: Option<Latency>,
    /// Dequeue request latency (dequeue mode; until the whole body is read).
    #[serde(skip)]
    pub dequeue: Option<Latency>,
    /// Ack request latency.
    #[serde(skip)]
    pub ack: Option<Latency>,
    /// Successful enqueues inside the window.
    pub enqueued: u64,
    /// `enqueued` per second of window.
    #[serde(rename = "enqueues_per_s")]
    pub enqueue_rate: f64,
    /// Failed enqueues inside the window.
    #[serde(skip)]
    pub enqueue_errors: u64,
    /// Failed dequeue/subscribe requests or broken streams inside the window.
    #[serde(skip)]
    pub consume_errors: u64,
    /// Failed acks inside the window.
    #[serde(skip)]
    pub ack_errors: u64,
    /// Errors during warm-up or drain (not in `errors()`).
    #[serde(skip)]
    pub outside_errors: u64,
    /// `409 waiting` answers (no message within `wait_seconds`).
    pub empty_polls: u64,
    /// `503 queue_busy` answers (whole run; not counted as errors).
    #[serde(rename = "queue_busy")]
    pub busy: u64,
    /// Subscribe streams opened (whole run).
    #[serde(rename = "streams_opened")]
    pub streams: u64,
    /// Subscribe streams the server ended (whole run).
    #[serde(rename = "streams_ended_by_server")]
    pub stream_ends: u64,
    /// Deliveries with `attempts > 1` (whole run).
    pub redeliveries: u64,
    /// Deliveries without this run's tag (acked, not counted).
    pub foreign: u64,
    /// Dequeue responses with messages inside the window.
    #[serde(skip)]
    pub responses: u64,
    /// Messages in those responses.
    #[serde(skip)]
    pub delivered_in_responses: u64,
    /// Mean of `enqueued − acked` sampled every 10 ms in the window.
    #[serde(skip)]
    pub backlog_mean: f64,
    /// Largest sample.
    #[serde(skip)]
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
    #[serde(rename = "drain_s", serialize_with = "crate::report::ser_secs")]
    pub drain: Duration,
    /// Length of the measurement window, seconds.
    #[serde(skip)]
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
    #[serde(rename = "dequeue_max_all_ms", serialize_with = "crate::stats::ser_ms")]
    pub dequeue_max_all: u64,
    /// When the first and the last slow dequeue was sent, ns after the run
    /// (warm-up) began.
    #[serde(rename = "slow_dequeues_sent_s", serialize_with = "ser_secs_pair")]
    pub slow_started: Option<(u64, u64)>,
}

/// `(first, last)` nanoseconds as `[first, last]` seconds.
fn ser_secs_pair<S: serde::Serializer>(v: &Option<(u64, u64)>, s: S) -> Result<S::Ok, S::Error> {
    v.map(|(a, b)| [a as f64 / 1e9, b as f64 / 1e9])
        .serialize(s)
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

/// The first [`STAMP_BYTES`] of a payload: enqueue time and run tag.
pub fn stamp(at_ns: u64, tag: u64) -> [u8; STAMP_BYTES] {
    let mut b = [0u8; STAMP_BYTES];
    b[..8].copy_from_slice(&at_ns.to_le_bytes());
    b[8..].copy_from_slice(&tag.to_le_bytes());
    b
}

/// The first [`SEQ_STAMP_BYTES`] of an overload payload: enqueue time,
/// run tag and sequence number.
pub fn seq_stamp(at_ns: u64, tag: u64, seq: u64) -> [u8; SEQ_STAMP_BYTES] {
    let mut b = [0u8; SEQ_STAMP_BYTES];
    b[..STAMP_BYTES].copy_from_slice(&stamp(at_ns, tag));
    b[STAMP_BYTES..].copy_from_slice(&seq.to_le_bytes());
    b
}

/// Bytes at the start of an overload payload: enqueue time, run tag and a
/// sequence number.
pub const SEQ_STAMP_BYTES: usize = STAMP_BYTES + 8;

/// The sequence number of a payload stamped by [`seq_stamp`], if it
/// carries `tag`.
pub fn read_seq(payload: &[u8], tag: u64) -> Option<u64> {
    if payload.len() < SEQ_STAMP_BYTES {
        return None;
    }
    read_stamp(payload, tag)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[STAMP_BYTES..SEQ_STAMP_BYTES]);
    Some(u64::from_le_bytes(b))
}

/// Runs warm-up, window and drain of one queue workload.
pub async fn run(spec: &QueueSpec) -> Result<QueueResult, String> {
    let http = wire::http_client();
    if spec.bases.is_empty() {
        return Err("no server to benchmark".into());
    }
    let bases: Vec<&str> = spec.bases.iter().map(|b| b.trim_end_matches('/')).collect();
    for base in &bases {
        wq::preflight(&http, base, &spec.queue).await?;
    }
    let epoch = Instant::now();
    let measure_start = epoch + spec.warmup;
    let measure_end = measure_start + spec.duration;
    let sh = Arc::new(Shared {
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
            .map(|b| QueueUris::of(b))
            .collect::<Result<_, _>>()?,
        enqueue_body: EnqueueBody::new(&spec.queue, spec.payload_bytes.max(STAMP_BYTES)),
        backlog: Semaphore::new(spec.backlog.max(1)),
        enqueued: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: ErrorLog::new(&spec.label),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut consumers = Vec::with_capacity(spec.consumers);
    for c in 0..spec.consumers {
        let body = wq::dequeue_body(
            &spec.queue,
            &format!("{}-{c}", spec.owner_prefix),
            spec.wait_seconds,
            spec.page_size,
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

#[cfg(test)]
mod tests {
    use super::*;
    use lockd_api::delivery::{boundary_of, Parser};

    #[test]
    fn stamps_round_trip_through_the_payload() {
        let t = EnqueueBody::new("q", 1024);
        let body = t.build(&seq_stamp(7, 99, 123_456));
        let boundary =
            boundary_of(EnqueueBody::content_type().to_str().expect("ascii")).expect("boundary");
        let mut p = Parser::new(&boundary);
        p.feed(&body);
        let _meta = p.next_part().expect("parse").expect("meta");
        let payload = p.next_part().expect("parse").expect("payload");
        assert_eq!(payload.body.len(), 1024);
        assert_eq!(read_seq(&payload.body, 99), Some(123_456));
        assert_eq!(read_seq(&payload.body, 98), None);
        assert_eq!(read_stamp(&payload.body, 99), Some(7));
        let body = t.build(&stamp(0x0102_0304_0506_0708, 42));
        let mut p = Parser::new(&boundary);
        p.feed(&body);
        let _meta = p.next_part().expect("parse").expect("meta");
        let payload = p.next_part().expect("parse").expect("payload");
        assert_eq!(read_stamp(&payload.body, 42), Some(0x0102_0304_0506_0708));
        assert_eq!(read_stamp(&payload.body, 43), None);
    }
}
