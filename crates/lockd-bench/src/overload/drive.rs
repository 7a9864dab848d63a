//! The overload phase: open-loop producers at a multiple of the
//! calibrated rate, consumers that keep dequeuing and acking, then the
//! drain; per-second counters and every message's fate for the check.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockd_api::delivery::Delivery;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{BUSY_BACKOFF, ERROR_BACKOFF, WAIT_SECONDS};
use crate::queue::{self, SEQ_STAMP_BYTES};
use crate::report::ErrorLog;
use crate::wire::queue::{self as wq, Acked, EnqueueBody, Enqueued, Polled, QueueUris};
use crate::wire::{self, HttpClient};

/// Columns of the per-second counters.
pub(super) const COL_ATTEMPTED: usize = 0;
pub(super) const COL_ACCEPTED: usize = 1;
pub(super) const COL_THROTTLED: usize = 2;
pub(super) const COL_ERRORS: usize = 3;
pub(super) const COL_ACKS: usize = 4;
pub(super) const COLS: usize = 5;

/// Per-second counters from the start of the overload.
pub(super) struct Buckets {
    pub(super) epoch: Instant,
    pub(super) rows: Vec<[AtomicU64; COLS]>,
}

impl Buckets {
    fn new(epoch: Instant, secs: usize) -> Buckets {
        Buckets {
            epoch,
            rows: (0..secs.max(1))
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
        }
    }

    fn add(&self, at: Instant, col: usize) {
        let i =
            (at.saturating_duration_since(self.epoch).as_secs() as usize).min(self.rows.len() - 1);
        self.rows[i][col].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<[u64; COLS]> {
        self.rows
            .iter()
            .map(|r| std::array::from_fn(|c| r[c].load(Ordering::Relaxed)))
            .collect()
    }
}

/// Everything the overload tasks share.
pub(super) struct Shared {
    pub(super) http: HttpClient,
    pub(super) timeout: Duration,
    pub(super) consume_timeout: Duration,
    /// Start of the overload window.
    pub(super) epoch: Instant,
    /// End of the overload window.
    pub(super) end: Instant,
    pub(super) tag: u64,
    pub(super) hasher: RandomState,
    pub(super) queue: String,
    pub(super) uris: QueueUris,
    pub(super) body: EnqueueBody,
    pub(super) seq: AtomicU64,
    /// Enqueues answered 200.
    pub(super) confirmed: AtomicU64,
    /// Successful acks of this run's messages.
    pub(super) acked: AtomicU64,
    pub(super) buckets: Buckets,
    pub(super) errors: ErrorLog,
}

impl Shared {
    fn id_hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    fn report_error(&self, at: Instant, msg: &str) {
        self.errors
            .print(if at > self.end { " (drain)" } else { "" }, msg);
    }
}

/// The outcome of one enqueue.
pub(super) enum Outcome {
    Accepted(String),
    Throttled {
        retry_after: u64,
        state: String,
    },
    /// `definite`: the server answered (non-2xx), so nothing was stored.
    Failed {
        msg: String,
        definite: bool,
    },
}

pub(super) async fn enqueue(sh: &Shared, body: Bytes) -> Outcome {
    match wq::enqueue(&sh.http, &sh.uris.enqueue, body, sh.timeout).await {
        Ok(Enqueued::Accepted(body)) => match wq::message_id(&body) {
            Ok(id) => Outcome::Accepted(id),
            Err(msg) => Outcome::Failed {
                msg,
                definite: false,
            },
        },
        Ok(Enqueued::Throttled {
            retry_after, state, ..
        }) => Outcome::Throttled { retry_after, state },
        Ok(Enqueued::Refused(msg)) => Outcome::Failed {
            msg,
            definite: true,
        },
        Err(msg) => Outcome::Failed {
            msg,
            definite: false,
        },
    }
}

/// What one producer task did.
#[derive(Debug, Default)]
pub(super) struct ProducerStats {
    pub(super) attempted: u64,
    pub(super) accepted: u64,
    pub(super) throttled: u64,
    pub(super) errors: u64,
    pub(super) skipped_busy: u64,
    pub(super) withheld: u64,
    pub(super) accepted_ns: Vec<u64>,
    pub(super) throttled_ns: Vec<u64>,
    /// `(seq, message_id hash)` of enqueues answered 200.
    pub(super) confirmed: Vec<(u64, u64)>,
    /// Sequence numbers answered 429.
    pub(super) rejected: Vec<u64>,
    /// Sequence numbers rejected with another non-2xx answer.
    pub(super) refused: Vec<u64>,
    /// Sequence numbers whose outcome is unknown.
    pub(super) unknown: Vec<u64>,
    /// `X-Lockd-QRF-State` of 429s.
    pub(super) states: BTreeMap<String, u64>,
    /// `Retry-After` values of 429s.
    pub(super) retry_after: BTreeMap<u64, u64>,
}

impl ProducerStats {
    fn merge(&mut self, o: ProducerStats) {
        self.attempted += o.attempted;
        self.accepted += o.accepted;
        self.throttled += o.throttled;
        self.errors += o.errors;
        self.skipped_busy += o.skipped_busy;
        self.withheld += o.withheld;
        self.accepted_ns.extend_from_slice(&o.accepted_ns);
        self.throttled_ns.extend_from_slice(&o.throttled_ns);
        self.confirmed.extend_from_slice(&o.confirmed);
        self.rejected.extend_from_slice(&o.rejected);
        self.refused.extend_from_slice(&o.refused);
        self.unknown.extend_from_slice(&o.unknown);
        for (k, v) in o.states {
            *self.states.entry(k).or_default() += v;
        }
        for (k, v) in o.retry_after {
            *self.retry_after.entry(k).or_default() += v;
        }
    }
}

/// Slots of `interval` between `from` and `to` (0 if `to ≤ from`).
pub(super) fn slots_between(from: Instant, to: Instant, interval_ns: u64) -> u64 {
    (to.saturating_duration_since(from).as_nanos() as u64) / interval_ns.max(1)
}

/// One open-loop producer: one enqueue per `interval`, starting at `first`.
pub(super) async fn producer(sh: Arc<Shared>, first: Instant, interval: Duration) -> ProducerStats {
    let mut st = ProducerStats::default();
    let iv = interval.as_nanos().max(1) as u64;
    let mut next = first;
    loop {
        if next >= sh.end {
            break;
        }
        let now = Instant::now();
        if now < next {
            tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        } else {
            // Busy past one or more slots: skip them (no catch-up burst).
            let missed = slots_between(next, now.min(sh.end), iv);
            st.skipped_busy += missed;
            next += Duration::from_nanos(missed * iv);
        }
        next += interval;
        let t0 = Instant::now();
        if t0 >= sh.end {
            break;
        }
        let seq = sh.seq.fetch_add(1, Ordering::Relaxed);
        let stamp = (t0 - sh.epoch).as_nanos() as u64;
        let body = sh.body.build(&queue::seq_stamp(stamp, sh.tag, seq));
        st.attempted += 1;
        sh.buckets.add(t0, COL_ATTEMPTED);
        let res = enqueue(&sh, body).await;
        let t1 = Instant::now();
        let ns = (t1 - t0).as_nanos() as u64;
        match res {
            Outcome::Accepted(id) => {
                st.accepted += 1;
                st.accepted_ns.push(ns);
                st.confirmed.push((seq, sh.id_hash(&id)));
                sh.confirmed.fetch_add(1, Ordering::Relaxed);
                sh.buckets.add(t1, COL_ACCEPTED);
            }
            Outcome::Throttled { retry_after, state } => {
                st.throttled += 1;
                st.throttled_ns.push(ns);
                st.rejected.push(seq);
                *st.states.entry(state).or_default() += 1;
                *st.retry_after.entry(retry_after).or_default() += 1;
                sh.buckets.add(t1, COL_THROTTLED);
                // Honour Retry-After in this task only.
                let wake = (t1 + Duration::from_secs(retry_after)).min(sh.end);
                tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
                let now = Instant::now();
                let w = slots_between(next, now.min(sh.end), iv);
                st.withheld += w;
                next += Duration::from_nanos(w * iv);
            }
            Outcome::Failed { msg, definite } => {
                st.errors += 1;
                if definite {
                    st.refused.push(seq);
                } else {
                    st.unknown.push(seq);
                }
                sh.buckets.add(t1, COL_ERRORS);
                sh.report_error(t1, &msg);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    st
}

/// What one consumer did.
#[derive(Debug, Default)]
pub(super) struct ConsumerStats {
    /// Acks of this run's messages completed inside the overload window.
    pub(super) acked_window: u64,
    /// … after it (drain).
    pub(super) acked_drain: u64,
    pub(super) foreign: u64,
    pub(super) redeliveries: u64,
    pub(super) empty_polls: u64,
    pub(super) busy: u64,
    /// 429s on dequeue (only with consumer limits).
    pub(super) dequeue_throttled: u64,
    pub(super) dequeue_errors: u64,
    /// Acks refused by the server (the message comes back after its visibility timeout).
    pub(super) ack_errors: u64,
    /// 429s on ack (acks are always admitted, so this should stay 0).
    pub(super) ack_throttled: u64,
    /// `(seq, id hash)` of successful acks.
    pub(super) acked: Vec<(u64, u64)>,
    /// `(seq, id hash)` of acks whose outcome is unknown.
    pub(super) ack_unknown: Vec<(u64, u64)>,
    pub(super) dequeue_ns: Vec<u64>,
    pub(super) ack_ns: Vec<u64>,
}

impl ConsumerStats {
    fn merge(&mut self, o: ConsumerStats) {
        self.acked_window += o.acked_window;
        self.acked_drain += o.acked_drain;
        self.foreign += o.foreign;
        self.redeliveries += o.redeliveries;
        self.empty_polls += o.empty_polls;
        self.busy += o.busy;
        self.dequeue_throttled += o.dequeue_throttled;
        self.dequeue_errors += o.dequeue_errors;
        self.ack_errors += o.ack_errors;
        self.ack_throttled += o.ack_throttled;
        self.acked.extend_from_slice(&o.acked);
        self.ack_unknown.extend_from_slice(&o.ack_unknown);
        self.dequeue_ns.extend_from_slice(&o.dequeue_ns);
        self.ack_ns.extend_from_slice(&o.ack_ns);
    }
}

/// The outcome of one ack.
pub(super) enum AckResult {
    Ok,
    Throttled,
    /// The server answered non-2xx: not acked.
    Refused(String),
    /// No answer: may or may not have been applied.
    Unknown(String),
}

pub(super) struct AckOutcome {
    pub(super) started: Instant,
    pub(super) finished: Instant,
    /// `(seq, id hash)`, `None` for messages of another run.
    pub(super) ident: Option<(u64, u64)>,
    pub(super) attempts: i64,
    pub(super) result: AckResult,
}

pub(super) async fn ack(sh: Arc<Shared>, d: Delivery) -> AckOutcome {
    let m = &d.message;
    let ident = queue::read_seq(&d.payload, sh.tag).map(|seq| (seq, sh.id_hash(&m.message_id)));
    let started = Instant::now();
    let result = match wq::ack(&sh.http, &sh.uris.ack, &sh.queue, m, sh.timeout).await {
        Ok(Acked::Ok) => AckResult::Ok,
        Ok(Acked::Throttled) => AckResult::Throttled,
        Ok(Acked::Refused(msg)) => AckResult::Refused(msg),
        Err(msg) => AckResult::Unknown(msg),
    };
    let finished = Instant::now();
    if matches!(result, AckResult::Ok) && ident.is_some() {
        sh.acked.fetch_add(1, Ordering::Relaxed);
        sh.buckets.add(finished, COL_ACKS);
    }
    AckOutcome {
        started,
        finished,
        ident,
        attempts: m.attempts,
        result,
    }
}

impl ConsumerStats {
    fn absorb(&mut self, sh: &Shared, o: AckOutcome) {
        if o.attempts > 1 {
            self.redeliveries += 1;
        }
        match o.result {
            AckResult::Ok => {
                let Some(ident) = o.ident else {
                    self.foreign += 1;
                    return;
                };
                self.acked.push(ident);
                if o.finished <= sh.end {
                    self.acked_window += 1;
                    if o.started >= sh.epoch {
                        self.ack_ns.push((o.finished - o.started).as_nanos() as u64);
                    }
                } else {
                    self.acked_drain += 1;
                }
            }
            AckResult::Throttled => {
                self.ack_throttled += 1;
                sh.report_error(
                    o.finished,
                    "ack answered 429 (acks should always be admitted)",
                );
            }
            AckResult::Refused(msg) => {
                self.ack_errors += 1;
                sh.report_error(o.finished, &msg);
            }
            AckResult::Unknown(msg) => {
                self.ack_errors += 1;
                if let Some(ident) = o.ident {
                    self.ack_unknown.push(ident);
                }
                sh.report_error(o.finished, &msg);
            }
        }
    }
}

pub(super) async fn consumer(
    sh: Arc<Shared>,
    body: Bytes,
    mut stop: watch::Receiver<bool>,
) -> ConsumerStats {
    let mut st = ConsumerStats::default();
    loop {
        if *stop.borrow() {
            break;
        }
        let t0 = Instant::now();
        let res = tokio::select! {
            r = wq::dequeue(&sh.http, &sh.uris.dequeue, body.clone(), sh.consume_timeout) => r,
            _ = stop.changed() => break,
        };
        let t1 = Instant::now();
        match res {
            Ok(Polled::Empty) => st.empty_polls += 1,
            Ok(Polled::Busy) => {
                st.busy += 1;
                tokio::time::sleep(BUSY_BACKOFF).await;
            }
            Ok(Polled::Throttled {
                retry_after: secs, ..
            }) => {
                st.dequeue_throttled += 1;
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            Ok(Polled::Deliveries(ds)) => {
                if t0 >= sh.epoch && t1 <= sh.end {
                    st.dequeue_ns.push((t1 - t0).as_nanos() as u64);
                }
                if ds.len() == 1 {
                    for d in ds {
                        let o = ack(sh.clone(), d).await;
                        st.absorb(&sh, o);
                    }
                } else {
                    let mut set = JoinSet::new();
                    for d in ds {
                        set.spawn(ack(sh.clone(), d));
                    }
                    while let Some(r) = set.join_next().await {
                        match r {
                            Ok(o) => st.absorb(&sh, o),
                            Err(e) => {
                                st.ack_errors += 1;
                                sh.report_error(Instant::now(), &format!("ack task: {e}"));
                            }
                        }
                    }
                }
            }
            Err(msg) => {
                st.dequeue_errors += 1;
                sh.report_error(t1, &msg);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    st
}

/// `pending_candidates` (messages ready now) of `POST /v1/queue/stats`.
pub(super) async fn queue_ready(http: &HttpClient, base: &str, queue: &str) -> Result<i64, String> {
    Ok(wq::stats(http, base, queue).await?.pending_candidates)
}

/// Parameters of the overload phase.
pub(super) struct OverloadSpec {
    pub(super) base: String,
    pub(super) queue: String,
    pub(super) owner_prefix: String,
    pub(super) target_rate: f64,
    pub(super) producers: usize,
    pub(super) consumers: usize,
    pub(super) page_size: u32,
    pub(super) payload_bytes: usize,
    pub(super) duration: Duration,
    pub(super) timeout: Duration,
    pub(super) drain_timeout: Duration,
}

/// What the overload phase measured.
#[derive(Debug, Default)]
pub(super) struct OverloadOutcome {
    pub(super) epoch: Option<Instant>,
    pub(super) end: Option<Instant>,
    pub(super) drain_end: Option<Instant>,
    pub(super) producers: ProducerStats,
    pub(super) consumers: ConsumerStats,
    pub(super) buckets: Vec<[u64; COLS]>,
    /// Drain time (from the end of the window).
    pub(super) drain: Duration,
    /// The drain reached its goal (all confirmed acked, nothing ready).
    pub(super) drained: bool,
    /// `pending_candidates` after the drain.
    pub(super) ready_after: Option<i64>,
    pub(super) ready_error: Option<String>,
    pub(super) confirmed_at_end: u64,
    pub(super) acked_at_end: u64,
}

pub(super) async fn run_overload(spec: &OverloadSpec) -> Result<OverloadOutcome, String> {
    let http = wire::http_client();
    let base = spec.base.trim_end_matches('/');
    wq::preflight(&http, base, &spec.queue).await?;
    let epoch = Instant::now() + Duration::from_millis(200);
    let end = epoch + spec.duration;
    let secs = spec.duration.as_secs() as usize + spec.drain_timeout.as_secs() as usize + 3;
    let sh = Arc::new(Shared {
        http,
        timeout: spec.timeout,
        consume_timeout: spec.timeout + Duration::from_secs(WAIT_SECONDS as u64),
        epoch,
        end,
        tag: queue::run_tag(),
        hasher: RandomState::new(),
        queue: spec.queue.clone(),
        uris: QueueUris::of(base)?,
        body: EnqueueBody::new(&spec.queue, spec.payload_bytes.max(SEQ_STAMP_BYTES)),
        seq: AtomicU64::new(0),
        confirmed: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        buckets: Buckets::new(epoch, secs),
        errors: ErrorLog::new("overload"),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let consumers: Vec<_> = (0..spec.consumers)
        .map(|c| {
            let body = wq::dequeue_body(
                &spec.queue,
                &format!("{}-{c}", spec.owner_prefix),
                WAIT_SECONDS,
                spec.page_size,
            );
            tokio::spawn(consumer(sh.clone(), body, stop_rx.clone()))
        })
        .collect();

    let n = spec.producers.max(1);
    let rate = spec.target_rate.max(1e-3);
    let interval = Duration::from_secs_f64(n as f64 / rate);
    let stagger = Duration::from_secs_f64(1.0 / rate);
    let producers: Vec<_> = (0..n)
        .map(|i| {
            let first = epoch + stagger.mul_f64(i as f64).min(interval);
            tokio::spawn(producer(sh.clone(), first, interval))
        })
        .collect();

    // Counters at the end of the window.
    let at_end = {
        let sh = sh.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(sh.end)).await;
            (
                sh.confirmed.load(Ordering::Relaxed),
                sh.acked.load(Ordering::Relaxed),
            )
        })
    };

    let mut out = OverloadOutcome::default();
    for p in producers {
        out.producers
            .merge(p.await.map_err(|e| format!("producer task failed: {e}"))?);
    }
    let (confirmed_at_end, acked_at_end) = at_end.await.unwrap_or_default();

    // Drain: producers have stopped; consumers finish the backlog.
    let drain_start = Instant::now().max(end);
    let deadline = drain_start + spec.drain_timeout;
    let mut drained = false;
    loop {
        if sh.acked.load(Ordering::Relaxed) >= sh.confirmed.load(Ordering::Relaxed)
            && matches!(queue_ready(&sh.http, base, &spec.queue).await, Ok(0))
        {
            drained = true;
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_end = Instant::now();
    let _ = stop_tx.send(true);
    for c in consumers {
        out.consumers
            .merge(c.await.map_err(|e| format!("consumer task failed: {e}"))?);
    }
    match queue_ready(&sh.http, base, &spec.queue).await {
        Ok(n) => out.ready_after = Some(n),
        Err(e) => out.ready_error = Some(e),
    }
    out.epoch = Some(epoch);
    out.end = Some(end);
    out.drain_end = Some(drain_end);
    out.buckets = sh.buckets.snapshot();
    out.drain = drain_end.saturating_duration_since(end);
    out.drained = drained;
    out.confirmed_at_end = confirmed_at_end;
    out.acked_at_end = acked_at_end;
    Ok(out)
}
