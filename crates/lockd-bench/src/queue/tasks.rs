//! The tasks of a queue run: producers, dequeue and subscribe consumers,
//! their ack tasks and the backlog sampler.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockd_api::delivery::Delivery;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use super::{read_stamp, SLOW_DEQUEUE};
use crate::report::ErrorLog;
use crate::wire::error_kind_at;
use crate::wire::queue::{
    self as wq, read_stream, Acked, EnqueueBody, Enqueued, Opened, Polled, QueueUris, StreamEnd,
};
use crate::wire::HttpClient;

/// Pause after a failed request so a broken server is not hammered.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);

/// Pause after `503 queue_busy` (more consumers than the server admits):
/// retrying at once would turn the surplus consumers into a request storm.
const BUSY_BACKOFF: Duration = Duration::from_millis(50);

/// Everything the tasks of a run share.
pub(super) struct Shared {
    pub(super) http: HttpClient,
    pub(super) timeout: Duration,
    /// Request timeout of dequeue/subscribe (`wait_seconds` longer).
    pub(super) consume_timeout: Duration,
    pub(super) epoch: Instant,
    pub(super) measure_start: Instant,
    pub(super) measure_end: Instant,
    pub(super) tag: u64,
    pub(super) queue: String,
    /// The endpoints of each node.
    pub(super) nodes: Vec<QueueUris>,
    pub(super) enqueue_body: EnqueueBody,
    /// Permits for enqueues: `backlog − (enqueued − acked)`.
    pub(super) backlog: Semaphore,
    /// Successful enqueues.
    pub(super) enqueued: AtomicU64,
    /// Successful acks of this run's messages.
    pub(super) acked: AtomicU64,
    pub(super) errors: ErrorLog,
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

/// Per-task counters and samples.
#[derive(Debug, Default)]
pub(super) struct TaskStats {
    pub(super) e2e: Vec<u64>,
    pub(super) enqueue: Vec<u64>,
    pub(super) dequeue: Vec<u64>,
    pub(super) ack: Vec<u64>,
    pub(super) acked: u64,
    pub(super) enqueued: u64,
    pub(super) warmup_acked: u64,
    pub(super) enqueue_errors: u64,
    pub(super) consume_errors: u64,
    pub(super) ack_errors: u64,
    pub(super) outside_errors: u64,
    pub(super) empty_polls: u64,
    pub(super) busy: u64,
    pub(super) streams: u64,
    pub(super) stream_ends: u64,
    pub(super) redeliveries: u64,
    pub(super) foreign: u64,
    pub(super) responses: u64,
    pub(super) delivered_in_responses: u64,
    pub(super) error_kinds: BTreeMap<String, u64>,
    pub(super) acked_by_node: Vec<u64>,
    pub(super) enqueued_by_node: Vec<u64>,
    pub(super) slow_dequeues: u64,
    pub(super) dequeue_max_all: u64,
    pub(super) slow_started: Option<(u64, u64)>,
}

/// Adds `n` to `v[i]`, growing `v` as needed.
fn bump(v: &mut Vec<u64>, i: usize, n: u64) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] += n;
}

impl TaskStats {
    pub(super) fn merge(&mut self, o: TaskStats) {
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
        let phase = if at < self.measure_start {
            " (warm-up)"
        } else if at > self.measure_end {
            " (drain)"
        } else {
            ""
        };
        self.errors.print(phase, msg);
    }

    /// One dequeue on `node`.
    async fn dequeue(&self, node: usize, body: &Bytes) -> Result<Polled, String> {
        wq::dequeue(
            &self.http,
            &self.nodes[node].dequeue,
            body.clone(),
            self.consume_timeout,
        )
        .await
    }

    /// Opens a subscribe stream on `node`.
    async fn subscribe(&self, node: usize, body: &Bytes) -> Result<Opened, String> {
        wq::subscribe(
            &self.http,
            &self.nodes[node].subscribe,
            body.clone(),
            self.consume_timeout,
            self.timeout,
        )
        .await
    }
}

/// Acks one delivery; a successful ack of this run's message returns a
/// backlog permit.
async fn ack(sh: Arc<Shared>, node: usize, d: Delivery) -> AckOutcome {
    let m = &d.message;
    let stamp = read_stamp(&d.payload, sh.tag);
    let started = Instant::now();
    let result = match wq::ack(&sh.http, &sh.nodes[node].ack, &sh.queue, m, sh.timeout).await {
        Ok(Acked::Ok) => Ok(()),
        Ok(Acked::Throttled) => Err(format!("ack {}: HTTP 429 Too Many Requests", m.message_id)),
        Ok(Acked::Refused(msg)) | Err(msg) => Err(msg),
    };
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

pub(super) async fn producer(sh: Arc<Shared>, node: usize) -> TaskStats {
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
        let body = sh.enqueue_body.build(&super::stamp(stamp, sh.tag));
        let res = match wq::enqueue(&sh.http, &sh.nodes[node].enqueue, body, sh.timeout).await {
            Ok(Enqueued::Accepted(_)) => Ok(()),
            Ok(Enqueued::Throttled { failure, .. }) | Ok(Enqueued::Refused(failure)) => {
                Err(failure)
            }
            Err(e) => Err(e),
        };
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

pub(super) async fn dequeue_consumer(
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
            // A 429 is an error here (the overload run handles it).
            Ok(Polled::Throttled { failure: msg, .. }) | Err(msg) => {
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

pub(super) async fn subscribe_consumer(
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
        let deliver = |d| {
            let _ = tx.send(d);
        };
        match read_stream(stream, &boundary, deliver, &mut stop).await {
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
pub(super) async fn sample_backlog(sh: Arc<Shared>) -> (f64, u64) {
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
