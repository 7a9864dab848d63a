//! The overload run: drive a multiple (default 10×) of the sustainable
//! producer rate at the server and check that it protects itself: `/healthz`
//! stays fast, memory stays bounded, acks keep flowing and nothing that was
//! acknowledged is lost.
//!
//! # Phases
//!
//! 1. **Idle** (1 s): the monitor alone, for a `/healthz` reference.
//! 2. **Calibration** (`--calibrate`, default 5 s, after `--warmup`, default
//!    1 s): the ordinary queue workload ([`crate::queue::run`]): P producers
//!    (`-p`, 4), C consumers (`-c`, 4) using `dequeue` (`--page-size`, 1),
//!    1 KiB payloads, backlog cap 2 000, then a drain. Its end-to-end rate
//!    (acks per second in the window) is the **sustainable rate R**.
//! 3. **Overload** (`--duration`, default 20 s): open-loop producers try to
//!    enqueue at `--factor` × R (default 10×). There are N producer tasks
//!    (`--overload-producers`, default `factor × R × 20 ms` clamped to
//!    32..=1024), each with its own fixed schedule of one enqueue every
//!    N ÷ (factor × R) seconds, staggered; there is **no backlog cap**. A task
//!    whose request is still outstanding when its next slot comes skips
//!    the slots it missed (counted as "skipped: task busy"), so the offered
//!    load is what the load generator really sent. A `429` is counted, its
//!    `X-Lockd-QRF-State` and `Retry-After` recorded, and that task alone
//!    sleeps for `Retry-After` (slots in that time are counted as "withheld
//!    by Retry-After"); every other task keeps its schedule. Meanwhile C
//!    consumers (as many as in the calibration) keep dequeuing and acking.
//! 4. **Drain**: producers stop; consumers go on until every confirmed
//!    message has been acked and `POST /v1/queue/stats` shows nothing ready
//!    (or `--drain-timeout`, default 60 s, passes).
//!
//! # The monitor
//!
//! A thread of its own (its own single-threaded tokio runtime and HTTP
//! connection, so its timers are not delayed by the load generator's
//! tasks) runs through all phases:
//!
//! * `GET /healthz` every 100 ms, one at a time (5 s timeout), latency
//!   until the whole answer is read;
//! * for an in-process server, this process's `VmRSS` from
//!   `/proc/self/status` every 500 ms. **The load generator runs in the same
//!   process**, so this RSS includes the client's connections, buffers and
//!   id tracking (about 32 bytes per message); with `--url` memory is
//!   reported as n/a;
//! * for an in-process server, the QRF posture
//!   (`server.control().qrf.state()`) every 20 ms. With `--url` the states
//!   come only from the `X-Lockd-QRF-State` headers of `429` answers.
//!
//! # The in-process server's QRF settings
//!
//! The server's defaults only react to host memory (80/90 %) and load
//! (4×/8× its baseline), which a short run on an idle host rarely reaches.
//! So by default the in-process server also gets in-flight limits on queue
//! operations: `qrf.queue_soft_limit` 64 and `qrf.queue_hard_limit` 128
//! (`--qrf-queue-soft`, `--qrf-queue-hard`; in-flight enqueues, dequeues
//! and acks, counted after admission) and `lsf_sample_interval` 100 ms
//! (`--lsf-interval`); every other QRF setting keeps its default.
//! `--default-qrf` runs the server with its defaults unchanged.
//!
//! # Tracking every message
//!
//! Each payload carries the enqueue time (bytes 0..8), a random run tag
//! (8..16) and a sequence number (16..24). A producer records the sequence
//! number and a hash of the `message_id` of every enqueue answered `200`
//! (**confirmed**), the sequence number of every `429` and of every
//! enqueue whose outcome is unknown (timeout, transport error). A consumer
//! records sequence number and `message_id` hash of every successful ack,
//! and of acks whose outcome is unknown. After the drain every confirmed
//! message must have been acked **exactly once** under the `message_id`
//! its enqueue returned; a message whose enqueue got `429` must never be
//! delivered.
//!
//! # Verdict
//!
//! * **/healthz stays low**: during the overload p99 ≤ 100 ms, max ≤ 1 s,
//!   no failed probe.
//! * **memory stays bounded** (in-process only): RSS grew by at most
//!   max(16 MiB, 5 % of the peak) over the last quarter of the overload
//!   (it has levelled off rather than growing with the offered load).
//! * **acks keep flowing**: every whole second of the overload acked at
//!   least min(10 % of R, the backlog at its start + what it accepted): a
//!   trickle while messages pile up does not count, an empty queue is not
//!   a stall.
//! * **nothing acknowledged is lost**: the check above; `INCONCLUSIVE` when
//!   the only gaps are acks whose outcome is unknown.
//!
//! The report also gives offered and accepted enqueue rates, the `429`
//! count and share, the QRF states seen (share of time, transitions), ack
//! rate during overload vs calibration, `/healthz` p50/p99/max per phase,
//! RSS per phase, the backlog (confirmed − acked) and a per-second
//! timeline. With `--json` a JSON summary goes to stdout and the report
//! to stderr.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use lockd_api::delivery::{boundary_of, Delivery, DeliveryReader};
use lockd_api::headers;
use lockd_server::control::Control;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::load::{error_chain, http_client, HttpClient};
use crate::queue::{self, content_type, parse_uri, snippet, EnqueueBody, SEQ_STAMP_BYTES};
use crate::stats::{ms, Latency};
use crate::{fmt_dur, fmt_ms, group, parse_duration, InProcess, Report, StoreChoice};

/// Idle monitoring before the calibration.
const IDLE: Duration = Duration::from_secs(1);
/// `/healthz` probe period.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// `/healthz` probe timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// RSS sampling period.
const RSS_EVERY: Duration = Duration::from_millis(500);
/// QRF state polling period (in-process).
const QRF_EVERY: Duration = Duration::from_millis(20);
/// `wait_seconds` of dequeues.
const WAIT_SECONDS: i64 = 5;
/// Backlog cap of the calibration run.
const CALIBRATION_BACKLOG: usize = 2000;
/// Drain timeout of the calibration run.
const CALIBRATION_DRAIN: Duration = Duration::from_secs(10);
/// Target time for which one producer task is busy per request, used to
/// size the default number of producer tasks (`factor × R × this`).
const PRODUCER_SIZING: Duration = Duration::from_millis(20);
/// Default producer tasks are clamped to this range.
const PRODUCERS_MIN: u64 = 32;
/// See [`PRODUCERS_MIN`].
const PRODUCERS_MAX: u64 = 1024;
/// Verdict: `/healthz` p99 during the overload at most this.
const HEALTHZ_P99_LIMIT: Duration = Duration::from_millis(100);
/// Verdict: `/healthz` max during the overload at most this.
const HEALTHZ_MAX_LIMIT: Duration = Duration::from_secs(1);
/// Verdict: every whole second of the overload acks at least this share of R.
const ACK_FLOOR_SHARE: f64 = 0.10;
/// Verdict: RSS growth over the last quarter at most max(this, 5 % of peak).
const RSS_GROWTH_FLOOR: u64 = 16 * 1024 * 1024;
/// Pause after a failed request.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);
/// Pause after `503 queue_busy`.
const BUSY_BACKOFF: Duration = Duration::from_millis(50);
/// Printed error messages per phase.
const PRINTED_ERRORS: usize = 5;
/// Timeline rows printed at most.
const TIMELINE_ROWS: usize = 120;

/// The one store of an in-process overload run.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneStore {
    /// `mem://`.
    Mem,
    /// `disk://` in a temporary directory.
    Disk,
}

fn parse_factor(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v <= 1000.0 {
        Ok(v)
    } else {
        Err("must be > 0 and ≤ 1000".to_string())
    }
}

/// Flags of `lockd-bench overload`.
#[derive(Args, Debug, Clone)]
pub struct OverloadArgs {
    /// In-process store to overload (one server for calibration and overload).
    #[arg(long, value_enum, default_value_t = OneStore::Mem, conflicts_with = "url")]
    pub store: OneStore,
    /// Target a running lockd server (plain HTTP) instead; its QRF settings are its own and
    /// memory is not sampled.
    #[arg(long, value_name = "http://host:port")]
    pub url: Option<String>,
    /// Length of the overload phase.
    #[arg(short = 'd', long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Measurement window of the calibration run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub calibrate: Duration,
    /// Warm-up before the calibration window.
    #[arg(short = 'w', long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Target enqueue rate during the overload, as a multiple of the calibrated rate R.
    #[arg(long, default_value_t = 10.0, value_parser = parse_factor)]
    pub factor: f64,
    /// Producers of the calibration run.
    #[arg(short = 'p', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub producers: u32,
    /// Consumers (dequeue loops), in the calibration and during the overload.
    #[arg(short = 'c', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub consumers: u32,
    /// Open-loop producer tasks during the overload (default: factor × R × 20 ms, 32-1024).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub overload_producers: Option<u32>,
    /// `page_size` of dequeue requests (1-64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub page_size: u32,
    /// Payload size in bytes (the first 24 carry enqueue time, run tag and sequence number).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(24..=64 * 1024 * 1024))]
    pub payload_bytes: u32,
    /// Queue name prefix (`<queue>-<run>-calibrate`, `<queue>-<run>-overload`).
    #[arg(long, default_value = "overload")]
    pub queue: String,
    /// Run the in-process server with the server's default QRF and LSF settings.
    #[arg(long, conflicts_with_all = ["url", "qrf_queue_soft", "qrf_queue_hard", "lsf_interval"])]
    pub default_qrf: bool,
    /// `qrf.queue_soft_limit` of the in-process server (in-flight queue operations; 0 = off).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(i64).range(0..))]
    pub qrf_queue_soft: i64,
    /// `qrf.queue_hard_limit` of the in-process server (0 = off).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(i64).range(0..))]
    pub qrf_queue_hard: i64,
    /// `lsf_sample_interval` of the in-process server.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub lsf_interval: Duration,
    /// Per-request timeout (dequeues get wait_seconds on top).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// After the overload, how long consumers may take to ack what is left.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    pub json: bool,
}

impl OverloadArgs {
    fn in_process_qrf(&self) -> Option<(i64, i64, Duration)> {
        (self.url.is_none() && !self.default_qrf).then_some((
            self.qrf_queue_soft,
            self.qrf_queue_hard,
            self.lsf_interval,
        ))
    }
}

// ---------------------------------------------------------------------------
// The monitor thread.

/// One `/healthz` probe.
#[derive(Debug, Clone, Copy)]
struct Probe {
    at: Instant,
    ns: u64,
    ok: bool,
}

/// What the monitor saw.
#[derive(Debug, Default)]
struct MonitorData {
    probes: Vec<Probe>,
    /// `(when, VmRSS bytes)`.
    rss: Vec<(Instant, u64)>,
    /// `(when, QRF state)`.
    states: Vec<(Instant, &'static str)>,
    /// `(when, in-flight enqueues + dequeues + acks)`: what QRF's
    /// `queue_inflight` metric sees (in-process).
    inflight: Vec<(Instant, i64)>,
    /// First few probe failures.
    probe_errors: Vec<String>,
}

struct Monitor {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<MonitorData>,
}

/// `VmRSS` of this process, bytes.
fn read_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&text)
}

/// The `VmRSS:  N kB` line of `/proc/<pid>/status`, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let unit = it.next().unwrap_or("kB");
    let mult = match unit {
        "kB" | "KB" | "kb" => 1024,
        "mB" | "MB" => 1024 * 1024,
        _ => 1,
    };
    Some(n.saturating_mul(mult))
}

async fn probe_once(http: &HttpClient, uri: &Uri) -> Result<StatusCode, String> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri.clone())
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = http.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("reading body: {}", error_chain(&e)))?;
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

impl Monitor {
    fn start(
        base: &str,
        control: Option<Arc<Control>>,
        sample_rss: bool,
    ) -> Result<Monitor, String> {
        let uri = parse_uri(&format!("{base}/healthz"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("lockd-bench-monitor".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        return MonitorData {
                            probe_errors: vec![format!("monitor runtime: {e}")],
                            ..MonitorData::default()
                        }
                    }
                };
                rt.block_on(monitor_loop(uri, control, sample_rss, flag))
            })
            .map_err(|e| format!("cannot start the monitor thread: {e}"))?;
        Ok(Monitor { stop, handle })
    }

    async fn stop(self) -> MonitorData {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle;
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default()
    }
}

async fn monitor_loop(
    uri: Uri,
    control: Option<Arc<Control>>,
    sample_rss: bool,
    stop: Arc<AtomicBool>,
) -> MonitorData {
    let probes = async {
        let http = http_client();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let t0 = Instant::now();
            let res = probe_once(&http, &uri).await;
            let ns = t0.elapsed().as_nanos() as u64;
            let ok = match res {
                Ok(s) if s.is_success() => true,
                Ok(s) => {
                    if errors.len() < PRINTED_ERRORS {
                        errors.push(format!("/healthz: HTTP {s}"));
                    }
                    false
                }
                Err(e) => {
                    if errors.len() < PRINTED_ERRORS {
                        errors.push(format!("/healthz: {e}"));
                    }
                    false
                }
            };
            out.push(Probe { at: t0, ns, ok });
        }
        (out, errors)
    };
    let rss = async {
        let mut out = Vec::new();
        if !sample_rss {
            return out;
        }
        let mut tick = tokio::time::interval(RSS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(b) = read_rss() {
                out.push((Instant::now(), b));
            }
        }
        out
    };
    let states = async {
        let mut out = Vec::new();
        let mut inflight = Vec::new();
        let Some(ctl) = control else {
            return (out, inflight);
        };
        let mut tick = tokio::time::interval(QRF_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            out.push((now, ctl.qrf.state().as_str()));
            let f = &ctl.inflight;
            inflight.push((
                now,
                f.producers.load(Ordering::Relaxed)
                    + f.consumers.load(Ordering::Relaxed)
                    + f.acks.load(Ordering::Relaxed),
            ));
        }
        (out, inflight)
    };
    let ((probes, probe_errors), rss, (states, inflight)) = tokio::join!(probes, rss, states);
    MonitorData {
        probes,
        rss,
        states,
        inflight,
        probe_errors,
    }
}

// ---------------------------------------------------------------------------
// The overload phase.

/// Columns of the per-second counters.
const COL_ATTEMPTED: usize = 0;
const COL_ACCEPTED: usize = 1;
const COL_THROTTLED: usize = 2;
const COL_ERRORS: usize = 3;
const COL_ACKS: usize = 4;
const COLS: usize = 5;

/// Per-second counters from the start of the overload.
struct Buckets {
    epoch: Instant,
    rows: Vec<[AtomicU64; COLS]>,
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
struct Shared {
    http: HttpClient,
    timeout: Duration,
    consume_timeout: Duration,
    /// Start of the overload window.
    epoch: Instant,
    /// End of the overload window.
    end: Instant,
    tag: u64,
    hasher: RandomState,
    queue: String,
    enqueue_uri: Uri,
    dequeue_uri: Uri,
    ack_uri: Uri,
    body: EnqueueBody,
    json: HeaderValue,
    multipart: HeaderValue,
    seq: AtomicU64,
    /// Enqueues answered 200.
    confirmed: AtomicU64,
    /// Successful acks of this run's messages.
    acked: AtomicU64,
    buckets: Buckets,
    printed: AtomicUsize,
}

impl Shared {
    fn id_hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    fn report_error(&self, at: Instant, msg: &str) {
        let n = self.printed.fetch_add(1, Ordering::Relaxed);
        let phase = if at > self.end { " (drain)" } else { "" };
        if n < PRINTED_ERRORS {
            eprintln!("  [overload] error{phase}: {msg}");
        } else if n == PRINTED_ERRORS {
            eprintln!("  [overload] further errors are counted, not printed");
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
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        crate::queue::exchange(&self.http, req, timeout).await
    }
}

/// `Retry-After` seconds (1 when absent or unreadable).
fn retry_after(h: &HeaderMap) -> u64 {
    h.get(headers::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1)
}

fn qrf_state_header(h: &HeaderMap) -> String {
    h.get(headers::QRF_STATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_string()
}

/// The outcome of one enqueue.
enum Enqueued {
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

async fn enqueue(sh: &Shared, body: Bytes) -> Enqueued {
    let req = match sh.request(&sh.enqueue_uri, &sh.multipart, body) {
        Ok(r) => r,
        Err(msg) => {
            return Enqueued::Failed {
                msg,
                definite: true,
            }
        }
    };
    let (status, hdrs, body) = match sh.exchange(req, sh.timeout).await {
        Ok(x) => x,
        Err(e) => {
            return Enqueued::Failed {
                msg: format!("enqueue: {e}"),
                definite: false,
            }
        }
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Enqueued::Throttled {
            retry_after: retry_after(&hdrs),
            state: qrf_state_header(&hdrs),
        };
    }
    if !status.is_success() {
        return Enqueued::Failed {
            msg: format!("enqueue: HTTP {status}: {}", snippet(&body)),
            definite: true,
        };
    }
    match serde_json::from_slice::<lockd_api::queue::EnqueueResponse>(&body) {
        Ok(r) if !r.message_id.is_empty() => Enqueued::Accepted(r.message_id),
        _ => Enqueued::Failed {
            msg: format!("enqueue: 200 with an unreadable answer: {}", snippet(&body)),
            definite: false,
        },
    }
}

/// What one producer task did.
#[derive(Debug, Default)]
struct ProducerStats {
    attempted: u64,
    accepted: u64,
    throttled: u64,
    errors: u64,
    skipped_busy: u64,
    withheld: u64,
    accepted_ns: Vec<u64>,
    throttled_ns: Vec<u64>,
    /// `(seq, message_id hash)` of enqueues answered 200.
    confirmed: Vec<(u64, u64)>,
    /// Sequence numbers answered 429.
    rejected: Vec<u64>,
    /// Sequence numbers rejected with another non-2xx answer.
    refused: Vec<u64>,
    /// Sequence numbers whose outcome is unknown.
    unknown: Vec<u64>,
    /// `X-Lockd-QRF-State` of 429s.
    states: BTreeMap<String, u64>,
    /// `Retry-After` values of 429s.
    retry_after: BTreeMap<u64, u64>,
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
fn slots_between(from: Instant, to: Instant, interval_ns: u64) -> u64 {
    (to.saturating_duration_since(from).as_nanos() as u64) / interval_ns.max(1)
}

/// One open-loop producer: one enqueue per `interval`, starting at `first`.
async fn producer(sh: Arc<Shared>, first: Instant, interval: Duration) -> ProducerStats {
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
        let body = sh.body.build_with_seq(stamp, sh.tag, seq);
        st.attempted += 1;
        sh.buckets.add(t0, COL_ATTEMPTED);
        let res = enqueue(&sh, body).await;
        let t1 = Instant::now();
        let ns = (t1 - t0).as_nanos() as u64;
        match res {
            Enqueued::Accepted(id) => {
                st.accepted += 1;
                st.accepted_ns.push(ns);
                st.confirmed.push((seq, sh.id_hash(&id)));
                sh.confirmed.fetch_add(1, Ordering::Relaxed);
                sh.buckets.add(t1, COL_ACCEPTED);
            }
            Enqueued::Throttled { retry_after, state } => {
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
            Enqueued::Failed { msg, definite } => {
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
struct ConsumerStats {
    /// Acks of this run's messages completed inside the overload window.
    acked_window: u64,
    /// … after it (drain).
    acked_drain: u64,
    foreign: u64,
    redeliveries: u64,
    empty_polls: u64,
    busy: u64,
    /// 429s on dequeue (only with consumer limits).
    dequeue_throttled: u64,
    dequeue_errors: u64,
    /// Acks refused by the server (the message comes back after its visibility timeout).
    ack_errors: u64,
    /// 429s on ack (acks are always admitted, so this should stay 0).
    ack_throttled: u64,
    /// `(seq, id hash)` of successful acks.
    acked: Vec<(u64, u64)>,
    /// `(seq, id hash)` of acks whose outcome is unknown.
    ack_unknown: Vec<(u64, u64)>,
    dequeue_ns: Vec<u64>,
    ack_ns: Vec<u64>,
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

/// Answer of a dequeue.
enum Polled {
    Empty,
    Busy,
    Throttled(u64),
    Deliveries(Vec<Delivery>),
}

async fn dequeue(sh: &Shared, body: &Bytes) -> Result<Polled, String> {
    let req = sh.request(&sh.dequeue_uri, &sh.json, body.clone())?;
    let (status, hdrs, body) = sh
        .exchange(req, sh.consume_timeout)
        .await
        .map_err(|e| format!("dequeue: {e}"))?;
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Ok(Polled::Throttled(retry_after(&hdrs)));
    }
    match queue::error_code(status, &body).as_deref() {
        Some("waiting") => return Ok(Polled::Empty),
        Some("queue_busy") => return Ok(Polled::Busy),
        _ => {}
    }
    if !status.is_success() {
        return Err(format!("dequeue: HTTP {status}: {}", snippet(&body)));
    }
    let ct = content_type(&hdrs);
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
        return Err("dequeue: body ends without the close delimiter".into());
    }
    if out.is_empty() {
        return Err("dequeue: 200 without a message".into());
    }
    Ok(Polled::Deliveries(out))
}

/// The outcome of one ack.
enum AckResult {
    Ok,
    Throttled,
    /// The server answered non-2xx: not acked.
    Refused(String),
    /// No answer: may or may not have been applied.
    Unknown(String),
}

struct AckOutcome {
    started: Instant,
    finished: Instant,
    /// `(seq, id hash)`, `None` for messages of another run.
    ident: Option<(u64, u64)>,
    attempts: i64,
    result: AckResult,
}

async fn ack(sh: Arc<Shared>, d: Delivery) -> AckOutcome {
    let m = &d.message;
    let ident = queue::read_seq(&d.payload, sh.tag).map(|seq| (seq, sh.id_hash(&m.message_id)));
    let body = json!({
        "queue": sh.queue,
        "message_id": m.message_id,
        "lease_id": m.lease_id,
        "fencing_token": m.fencing_token,
        "meta_etag": m.meta_etag,
    })
    .to_string();
    let started = Instant::now();
    let result = match sh.request(&sh.ack_uri, &sh.json, Bytes::from(body)) {
        Err(e) => AckResult::Refused(e),
        Ok(req) => match sh.exchange(req, sh.timeout).await {
            Err(e) => AckResult::Unknown(format!("ack {}: {e}", m.message_id)),
            Ok((s, _, _)) if s == StatusCode::TOO_MANY_REQUESTS => AckResult::Throttled,
            Ok((s, _, _)) if s.is_success() => AckResult::Ok,
            Ok((s, _, b)) => {
                AckResult::Refused(format!("ack {}: HTTP {s}: {}", m.message_id, snippet(&b)))
            }
        },
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

async fn consumer(sh: Arc<Shared>, body: Bytes, mut stop: watch::Receiver<bool>) -> ConsumerStats {
    let mut st = ConsumerStats::default();
    loop {
        if *stop.borrow() {
            break;
        }
        let t0 = Instant::now();
        let res = tokio::select! {
            r = dequeue(&sh, &body) => r,
            _ = stop.changed() => break,
        };
        let t1 = Instant::now();
        match res {
            Ok(Polled::Empty) => st.empty_polls += 1,
            Ok(Polled::Busy) => {
                st.busy += 1;
                tokio::time::sleep(BUSY_BACKOFF).await;
            }
            Ok(Polled::Throttled(secs)) => {
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
async fn queue_ready(http: &HttpClient, base: &str, queue: &str) -> Result<i64, String> {
    let url = format!("{base}/v1/queue/stats");
    let req = Request::builder()
        .method(Method::POST)
        .uri(parse_uri(&url)?)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            json!({ "queue": queue }).to_string(),
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
        return Err(format!("{url}: HTTP {status}: {}", snippet(&body)));
    }
    let s: lockd_api::queue::QueueStatsResponse =
        serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
    Ok(s.pending_candidates)
}

/// Parameters of the overload phase.
struct OverloadSpec {
    base: String,
    queue: String,
    owner_prefix: String,
    target_rate: f64,
    producers: usize,
    consumers: usize,
    page_size: u32,
    payload_bytes: usize,
    duration: Duration,
    timeout: Duration,
    drain_timeout: Duration,
}

/// What the overload phase measured.
#[derive(Debug, Default)]
struct OverloadOutcome {
    epoch: Option<Instant>,
    end: Option<Instant>,
    drain_end: Option<Instant>,
    producers: ProducerStats,
    consumers: ConsumerStats,
    buckets: Vec<[u64; COLS]>,
    /// Drain time (from the end of the window).
    drain: Duration,
    /// The drain reached its goal (all confirmed acked, nothing ready).
    drained: bool,
    /// `pending_candidates` after the drain.
    ready_after: Option<i64>,
    ready_error: Option<String>,
    confirmed_at_end: u64,
    acked_at_end: u64,
}

async fn run_overload(spec: &OverloadSpec) -> Result<OverloadOutcome, String> {
    let http = http_client();
    let base = spec.base.trim_end_matches('/');
    queue::preflight_queue(&http, base, &spec.queue).await?;
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
        enqueue_uri: parse_uri(&format!("{base}/v1/queue/enqueue"))?,
        dequeue_uri: parse_uri(&format!("{base}/v1/queue/dequeue"))?,
        ack_uri: parse_uri(&format!("{base}/v1/queue/ack"))?,
        body: EnqueueBody::new(&spec.queue, spec.payload_bytes.max(SEQ_STAMP_BYTES)),
        json: HeaderValue::from_static("application/json"),
        multipart: EnqueueBody::content_type(),
        seq: AtomicU64::new(0),
        confirmed: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        buckets: Buckets::new(epoch, secs),
        printed: AtomicUsize::new(0),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let consumers: Vec<_> = (0..spec.consumers)
        .map(|c| {
            let body = Bytes::from(
                json!({
                    "queue": spec.queue,
                    "owner": format!("{}-{c}", spec.owner_prefix),
                    "wait_seconds": WAIT_SECONDS,
                    "page_size": spec.page_size,
                })
                .to_string(),
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

// ---------------------------------------------------------------------------
// The delivery check.

/// Result of matching confirmed enqueues against acks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct DeliveryCheck {
    confirmed: u64,
    acked_once: u64,
    /// Confirmed, never acked, no ack of unknown outcome.
    lost: u64,
    /// Confirmed, not acked, but an ack of unknown outcome was sent.
    ack_unknown: u64,
    /// Confirmed and acked more than once.
    duplicated: u64,
    /// Acked under a different message id than the enqueue returned.
    id_mismatch: u64,
    /// Acked although the enqueue got 429 (or another refusal).
    delivered_after_refusal: u64,
    /// Acked whose enqueue outcome was unknown (timeout, transport error).
    acked_unconfirmed: u64,
    /// Acked with a sequence number never sent.
    unknown_seq: u64,
    /// First few lost sequence numbers.
    lost_examples: Vec<u64>,
}

impl DeliveryCheck {
    fn verdict(&self) -> &'static str {
        if self.lost > 0
            || self.duplicated > 0
            || self.id_mismatch > 0
            || self.delivered_after_refusal > 0
            || self.unknown_seq > 0
        {
            "FAIL"
        } else if self.ack_unknown > 0 {
            "INCONCLUSIVE"
        } else {
            "PASS"
        }
    }
}

fn check_deliveries(p: &ProducerStats, c: &ConsumerStats) -> DeliveryCheck {
    let mut acked = c.acked.clone();
    acked.sort_unstable();
    let mut unknown_acks: Vec<u64> = c.ack_unknown.iter().map(|x| x.0).collect();
    unknown_acks.sort_unstable();
    let mut confirmed = p.confirmed.clone();
    confirmed.sort_unstable();
    let mut refused: Vec<u64> = p.rejected.iter().chain(&p.refused).copied().collect();
    refused.sort_unstable();
    let mut unknown_enq = p.unknown.clone();
    unknown_enq.sort_unstable();

    let mut out = DeliveryCheck {
        confirmed: confirmed.len() as u64,
        ..DeliveryCheck::default()
    };
    let acks_of = |seq: u64| -> &[(u64, u64)] {
        let lo = acked.partition_point(|a| a.0 < seq);
        let hi = acked.partition_point(|a| a.0 <= seq);
        &acked[lo..hi]
    };
    for &(seq, idh) in &confirmed {
        let acks = acks_of(seq);
        match acks.len() {
            0 => {
                if unknown_acks.binary_search(&seq).is_ok() {
                    out.ack_unknown += 1;
                } else {
                    out.lost += 1;
                    if out.lost_examples.len() < 10 {
                        out.lost_examples.push(seq);
                    }
                }
            }
            1 => {
                if acks[0].1 == idh {
                    out.acked_once += 1;
                } else {
                    out.id_mismatch += 1;
                }
            }
            _ => {
                out.duplicated += 1;
                if acks.iter().any(|a| a.1 != idh) {
                    out.id_mismatch += 1;
                }
            }
        }
    }
    // Acks of sequence numbers that were not confirmed.
    let mut i = 0;
    while i < acked.len() {
        let seq = acked[i].0;
        let mut j = i;
        while j < acked.len() && acked[j].0 == seq {
            j += 1;
        }
        if confirmed.binary_search_by_key(&seq, |c| c.0).is_err() {
            if refused.binary_search(&seq).is_ok() {
                out.delivered_after_refusal += 1;
            } else if unknown_enq.binary_search(&seq).is_ok() {
                out.acked_unconfirmed += 1;
            } else {
                out.unknown_seq += 1;
            }
        }
        i = j;
    }
    out
}

// ---------------------------------------------------------------------------
// Summaries per phase.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Phase {
    from: Instant,
    to: Instant,
}

impl Phase {
    fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.to
    }
}

#[derive(Debug, Default, Clone)]
struct ProbeSummary {
    n: usize,
    failed: usize,
    latency: Option<Latency>,
}

fn probes_in(data: &MonitorData, ph: Phase) -> ProbeSummary {
    let mut ns: Vec<u64> = Vec::new();
    let mut failed = 0;
    let mut n = 0;
    for p in data.probes.iter().filter(|p| ph.contains(p.at)) {
        n += 1;
        if p.ok {
            ns.push(p.ns);
        } else {
            failed += 1;
        }
    }
    ProbeSummary {
        n,
        failed,
        latency: Latency::of(&mut ns),
    }
}

fn probe_text(s: &ProbeSummary) -> String {
    match s.latency {
        Some(l) => {
            let failed = if s.failed > 0 {
                format!(", {} FAILED", s.failed)
            } else {
                String::new()
            };
            format!(
                "p50 {} p99 {} max {} ({} probes{failed})",
                fmt_ms(l.p50),
                fmt_ms(l.p99),
                fmt_ms(l.max),
                s.n
            )
        }
        None if s.n > 0 => format!("all {} probes FAILED", s.n),
        None => "no probes".to_string(),
    }
}

fn probe_json(s: &ProbeSummary) -> Value {
    json!({
        "probes": s.n,
        "failed": s.failed,
        "latency_ms": s.latency.map_or(Value::Null, Latency::to_json_ms),
    })
}

#[derive(Debug, Default, Clone, Copy)]
struct RssSummary {
    min: u64,
    max: u64,
    first: u64,
    last: u64,
}

fn rss_in(data: &MonitorData, ph: Phase) -> Option<RssSummary> {
    let v: Vec<u64> = data
        .rss
        .iter()
        .filter(|(t, _)| ph.contains(*t))
        .map(|(_, b)| *b)
        .collect();
    Some(RssSummary {
        min: *v.iter().min()?,
        max: *v.iter().max()?,
        first: *v.first()?,
        last: *v.last()?,
    })
}

fn rss_json(s: Option<RssSummary>) -> Value {
    s.map_or(
        Value::Null,
        |s| json!({ "min": s.min, "max": s.max, "first": s.first, "last": s.last }),
    )
}

/// Max and mean of the polled queue in-flight count in a phase.
fn inflight_in(data: &MonitorData, ph: Phase) -> Option<(i64, f64)> {
    let v: Vec<i64> = data
        .inflight
        .iter()
        .filter(|(t, _)| ph.contains(*t))
        .map(|(_, n)| *n)
        .collect();
    let max = *v.iter().max()?;
    Some((max, v.iter().sum::<i64>() as f64 / v.len() as f64))
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Share of QRF polls per state in a phase (in a fixed order).
fn state_shares(data: &MonitorData, ph: Phase) -> Vec<(&'static str, f64)> {
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut n = 0u64;
    for (_, s) in data.states.iter().filter(|(t, _)| ph.contains(*t)) {
        *counts.entry(s).or_default() += 1;
        n += 1;
    }
    if n == 0 {
        return Vec::new();
    }
    ["disengaged", "soft_arm", "engaged", "recovery"]
        .iter()
        .filter_map(|s| counts.get(s).map(|c| (*s, *c as f64 / n as f64)))
        .collect()
}

fn shares_text(v: &[(&'static str, f64)]) -> String {
    v.iter()
        .map(|(s, f)| format!("{s} {:.0} %", f * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn shares_json(v: &[(&'static str, f64)]) -> Value {
    Value::Object(v.iter().map(|(s, f)| (s.to_string(), json!(f))).collect())
}

/// State changes seen by the poller: `(when, new state)`, the first entry
/// being the state at the start.
fn transitions(data: &MonitorData) -> Vec<(Instant, &'static str)> {
    let mut out: Vec<(Instant, &'static str)> = Vec::new();
    for &(t, s) in &data.states {
        if out.last().is_none_or(|l| l.1 != s) {
            out.push((t, s));
        }
    }
    out
}

fn secs_rel(t: Instant, epoch: Instant) -> f64 {
    if t >= epoch {
        (t - epoch).as_secs_f64()
    } else {
        -(epoch - t).as_secs_f64()
    }
}

// ---------------------------------------------------------------------------
// The command.

/// Everything the report needs.
struct Run {
    target: String,
    store: String,
    qrf_text: String,
    qrf_json: Value,
    in_process: bool,
    calibration: queue::QueueResult,
    producers: usize,
    target_rate: f64,
    outcome: OverloadOutcome,
    monitor: MonitorData,
    idle: Phase,
    cal: Phase,
    over: Phase,
    drain: Phase,
}

fn normalize(name: &str) -> Result<String, String> {
    match lockd_api::names::normalize_queue(name) {
        Ok(Some(q)) => Ok(q),
        Ok(None) => Err("--queue must not be empty".to_string()),
        Err(e) => Err(format!("--queue: {}", e.0)),
    }
}

/// `lockd-bench overload`.
pub async fn cmd(args: OverloadArgs, threads: usize) -> Result<(), String> {
    let report = Report {
        to_stderr: args.json,
    };
    let run_id = crate::new_run_id();
    let q_cal = normalize(&format!("{}-{run_id}-calibrate", args.queue))?;
    let q_over = normalize(&format!("{}-{run_id}-overload", args.queue))?;

    let (srv, base, target, store) = match &args.url {
        Some(url) => {
            let base = url.trim_end_matches('/').to_string();
            queue::preflight_queue(&http_client(), &base, &q_cal).await?;
            (None, base, url.clone(), "remote".to_string())
        }
        None => {
            let store = match args.store {
                OneStore::Mem => StoreChoice::Mem,
                OneStore::Disk => StoreChoice::Disk,
            };
            let qrf = args.in_process_qrf();
            let srv = InProcess::start_with(store, |cfg| {
                if let Some((soft, hard, every)) = qrf {
                    cfg.qrf.queue_soft_limit = soft;
                    cfg.qrf.queue_hard_limit = hard;
                    cfg.lsf_sample_interval = every;
                }
            })
            .await?;
            let base = srv.server.base_url();
            let (target, label) = (srv.store_url.clone(), srv.label.to_string());
            (Some(srv), base, target, label)
        }
    };
    let (qrf_text, qrf_json) = qrf_description(&args, srv.as_ref());
    let control = srv.as_ref().map(|s| s.server.control().clone());
    let monitor = match Monitor::start(&base, control, srv.is_some()) {
        Ok(m) => m,
        Err(e) => {
            if let Some(s) = srv {
                s.stop().await;
            }
            return Err(e);
        }
    };

    let result = phases(&args, &base, &q_cal, &q_over, &run_id).await;
    let monitor_data = monitor.stop().await;
    if let Some(s) = srv {
        s.stop().await;
    }
    let (calibration, producers, target_rate, outcome, idle, cal, over, drain) = result?;
    let run = Run {
        target,
        store,
        qrf_text,
        qrf_json,
        in_process: args.url.is_none(),
        calibration,
        producers,
        target_rate,
        outcome,
        monitor: monitor_data,
        idle,
        cal,
        over,
        drain,
    };
    print_report(&report, &args, &run, threads);
    if args.json {
        println!("{}", summary_json(&args, &run, threads, &run_id));
    }
    Ok(())
}

fn qrf_description(args: &OverloadArgs, srv: Option<&InProcess>) -> (String, Value) {
    let Some(srv) = srv else {
        return (
            "QRF: the remote server's own settings (states seen only in 429 answers)".into(),
            json!({ "mode": "remote" }),
        );
    };
    let ctl = srv.server.control();
    let c = ctl.qrf.config();
    let mode = if args.default_qrf { "default" } else { "bench" };
    let limits = |soft: i64, hard: i64| {
        if soft == 0 && hard == 0 {
            "off".to_string()
        } else {
            format!("soft {soft} / hard {hard}")
        }
    };
    let text = format!(
        "QRF ({}): queue in-flight {}, memory {}/{} %, load {}×/{}× baseline, max_wait {}, \
         max_paced {}; LSF every {}",
        if args.default_qrf {
            "server defaults"
        } else {
            "bench settings: in-flight caps so QRF can engage"
        },
        limits(c.queue_soft_limit, c.queue_hard_limit),
        c.memory_soft_limit_percent,
        c.memory_hard_limit_percent,
        c.load_soft_limit_multiplier,
        c.load_hard_limit_multiplier,
        fmt_dur(c.max_wait),
        c.max_paced,
        if args.default_qrf {
            fmt_dur(lockd_server::ServerConfig::default().lsf_sample_interval)
        } else {
            fmt_dur(args.lsf_interval)
        },
    );
    let lsf = if args.default_qrf {
        lockd_server::ServerConfig::default().lsf_sample_interval
    } else {
        args.lsf_interval
    };
    let v = json!({
        "mode": mode,
        "disabled": c.disabled,
        "queue_soft_limit": c.queue_soft_limit,
        "queue_hard_limit": c.queue_hard_limit,
        "memory_soft_limit_percent": c.memory_soft_limit_percent,
        "memory_hard_limit_percent": c.memory_hard_limit_percent,
        "load_soft_limit_multiplier": c.load_soft_limit_multiplier,
        "load_hard_limit_multiplier": c.load_hard_limit_multiplier,
        "max_wait_s": c.max_wait.as_secs_f64(),
        "max_paced": c.max_paced,
        "lsf_sample_interval_ms": lsf.as_secs_f64() * 1e3,
    });
    (text, v)
}

type Phases = (
    queue::QueueResult,
    usize,
    f64,
    OverloadOutcome,
    Phase,
    Phase,
    Phase,
    Phase,
);

async fn phases(
    args: &OverloadArgs,
    base: &str,
    q_cal: &str,
    q_over: &str,
    run_id: &str,
) -> Result<Phases, String> {
    let idle_from = Instant::now();
    tokio::time::sleep(IDLE).await;
    let idle = Phase {
        from: idle_from,
        to: Instant::now(),
    };

    eprintln!(
        "calibrating against {base} (queue {q_cal:?}): {} producers, {} consumers, {} warm-up + {}",
        args.producers,
        args.consumers,
        fmt_dur(args.warmup),
        fmt_dur(args.calibrate)
    );
    let cal_from = Instant::now();
    let calibration = queue::run(&queue::QueueSpec {
        label: "calibration".into(),
        bases: vec![base.to_string()],
        queue: q_cal.to_string(),
        owner_prefix: format!("bench-{run_id}-calibrate"),
        mode: queue::Mode::Dequeue,
        producers: args.producers as usize,
        consumers: args.consumers as usize,
        payload_bytes: args.payload_bytes as usize,
        page_size: args.page_size,
        wait_seconds: WAIT_SECONDS,
        backlog: CALIBRATION_BACKLOG,
        warmup: args.warmup,
        duration: args.calibrate,
        timeout: args.timeout,
        drain_timeout: CALIBRATION_DRAIN,
    })
    .await?;
    let cal = Phase {
        from: cal_from,
        to: Instant::now(),
    };
    let r = calibration.rate;
    if r.is_nan() || r <= 0.0 {
        return Err("calibration acked no message; cannot derive a sustainable rate".into());
    }
    let target_rate = r * args.factor;
    let producers = match args.overload_producers {
        Some(n) => n as usize,
        None => ((target_rate * PRODUCER_SIZING.as_secs_f64()).ceil() as u64)
            .clamp(PRODUCERS_MIN, PRODUCERS_MAX) as usize,
    };
    eprintln!(
        "sustainable rate R = {} msgs/s; overloading (queue {q_over:?}) at {} × R = {} enqueues/s \
         from {producers} open-loop producer tasks, {} consumers, for {} + drain",
        group(r),
        args.factor,
        group(target_rate),
        args.consumers,
        fmt_dur(args.duration)
    );
    let outcome = run_overload(&OverloadSpec {
        base: base.to_string(),
        queue: q_over.to_string(),
        owner_prefix: format!("bench-{run_id}-overload"),
        target_rate,
        producers,
        consumers: args.consumers as usize,
        page_size: args.page_size,
        payload_bytes: args.payload_bytes as usize,
        duration: args.duration,
        timeout: args.timeout,
        drain_timeout: args.drain_timeout,
    })
    .await?;
    let (Some(epoch), Some(end), Some(drain_end)) = (outcome.epoch, outcome.end, outcome.drain_end)
    else {
        return Err("overload phase ended without timestamps".into());
    };
    let over = Phase {
        from: epoch,
        to: end,
    };
    let drain = Phase {
        from: end,
        to: drain_end.max(end),
    };
    Ok((
        calibration,
        producers,
        target_rate,
        outcome,
        idle,
        cal,
        over,
        drain,
    ))
}

// ---------------------------------------------------------------------------
// Derived figures and the verdict.

/// Figures derived from a run, shared by the text and JSON reports.
struct Derived {
    window_s: f64,
    attempted_rate: f64,
    accepted_rate: f64,
    throttled_share: f64,
    intended: f64,
    ack_rate: f64,
    ack_ratio: f64,
    /// Acks per whole second of the window.
    acks_per_second: Vec<u64>,
    min_ack_second: Option<u64>,
    seconds_without_acks: usize,
    /// Whole seconds that acked fewer than min([`ACK_FLOOR_SHARE`] × R,
    /// what there was to ack).
    seconds_below_floor: usize,
    ack_floor: u64,
    backlog_end: u64,
    backlog_max: u64,
    healthz_idle: ProbeSummary,
    healthz_cal: ProbeSummary,
    healthz_over: ProbeSummary,
    healthz_drain: ProbeSummary,
    rss_before: Option<RssSummary>,
    rss_cal: Option<RssSummary>,
    rss_over: Option<RssSummary>,
    rss_drain: Option<RssSummary>,
    /// RSS growth over the last quarter of the window and the allowed growth.
    rss_growth: Option<(i64, u64)>,
    states_cal: Vec<(&'static str, f64)>,
    states_over: Vec<(&'static str, f64)>,
    inflight_cal: Option<(i64, f64)>,
    inflight_over: Option<(i64, f64)>,
    states_drain: Vec<(&'static str, f64)>,
    check: DeliveryCheck,
    v_healthz: &'static str,
    v_memory: &'static str,
    v_acks: &'static str,
    v_lost: &'static str,
}

fn derive(run: &Run) -> Derived {
    let o = &run.outcome;
    let window_s = run
        .over
        .to
        .duration_since(run.over.from)
        .as_secs_f64()
        .max(1e-9);
    let p = &o.producers;
    let whole = (window_s.floor() as usize).max(1).min(o.buckets.len());
    let acks_per_second: Vec<u64> = o.buckets[..whole].iter().map(|r| r[COL_ACKS]).collect();
    let mut cum = 0i64;
    let mut backlog_max = 0u64;
    for r in &o.buckets[..whole] {
        cum += r[COL_ACCEPTED] as i64 - r[COL_ACKS] as i64;
        backlog_max = backlog_max.max(cum.max(0) as u64);
    }
    let backlog_end = o.confirmed_at_end.saturating_sub(o.acked_at_end);
    let backlog_max = backlog_max.max(backlog_end);

    let before = Phase {
        from: run.idle.from,
        to: run.cal.from,
    };
    let rss_over = rss_in(&run.monitor, run.over);
    let rss_growth = rss_over.and_then(|peak| {
        let q3 = run.over.from + run.over.to.duration_since(run.over.from).mul_f64(0.75);
        let last_q = rss_in(
            &run.monitor,
            Phase {
                from: q3,
                to: run.over.to,
            },
        )?;
        let growth = last_q.last as i64 - last_q.first as i64;
        let allowed = RSS_GROWTH_FLOOR.max(peak.max / 20);
        Some((growth, allowed))
    });
    let healthz_over = probes_in(&run.monitor, run.over);
    let v_healthz = match healthz_over.latency {
        Some(l)
            if healthz_over.failed == 0
                && l.p99 <= HEALTHZ_P99_LIMIT.as_nanos() as u64
                && l.max <= HEALTHZ_MAX_LIMIT.as_nanos() as u64 =>
        {
            "PASS"
        }
        _ => "FAIL",
    };
    let v_memory = match rss_growth {
        None => "n/a",
        Some((g, allowed)) if g <= allowed as i64 => "PASS",
        Some(_) => "FAIL",
    };
    let seconds_without_acks = acks_per_second.iter().filter(|&&a| a == 0).count();
    let ack_floor = (run.calibration.rate * ACK_FLOOR_SHARE).ceil() as u64;
    let seconds_below_floor = starved_seconds(&o.buckets[..whole], ack_floor);
    let v_acks = if seconds_below_floor == 0 && !acks_per_second.is_empty() {
        "PASS"
    } else {
        "FAIL"
    };
    let check = check_deliveries(p, &o.consumers);
    let v_lost = check.verdict();
    let ack_rate = o.consumers.acked_window as f64 / window_s;
    Derived {
        window_s,
        attempted_rate: p.attempted as f64 / window_s,
        accepted_rate: p.accepted as f64 / window_s,
        throttled_share: if p.attempted > 0 {
            p.throttled as f64 / p.attempted as f64
        } else {
            0.0
        },
        intended: run.target_rate * window_s,
        ack_rate,
        ack_ratio: if run.calibration.rate > 0.0 {
            ack_rate / run.calibration.rate
        } else {
            0.0
        },
        min_ack_second: acks_per_second.iter().min().copied(),
        acks_per_second,
        seconds_without_acks,
        seconds_below_floor,
        ack_floor,
        backlog_end,
        backlog_max,
        healthz_idle: probes_in(&run.monitor, run.idle),
        healthz_cal: probes_in(&run.monitor, run.cal),
        healthz_drain: probes_in(&run.monitor, run.drain),
        healthz_over,
        rss_before: rss_in(&run.monitor, before),
        rss_cal: rss_in(&run.monitor, run.cal),
        rss_over,
        rss_drain: rss_in(&run.monitor, run.drain),
        rss_growth,
        states_cal: state_shares(&run.monitor, run.cal),
        states_over: state_shares(&run.monitor, run.over),
        inflight_cal: inflight_in(&run.monitor, run.cal),
        inflight_over: inflight_in(&run.monitor, run.over),
        states_drain: state_shares(&run.monitor, run.drain),
        check,
        v_healthz,
        v_memory,
        v_acks,
        v_lost,
    }
}

/// Whole seconds (rows of per-second counters) that acked fewer than
/// `min(floor, backlog at the start of the second + accepted in it)`: an
/// empty queue is not a stalled consumer.
fn starved_seconds(rows: &[[u64; COLS]], floor: u64) -> usize {
    let mut backlog = 0i64;
    let mut starved = 0;
    for r in rows {
        let avail = (backlog + r[COL_ACCEPTED] as i64).max(0) as u64;
        if r[COL_ACKS] < floor.min(avail) {
            starved += 1;
        }
        backlog += r[COL_ACCEPTED] as i64 - r[COL_ACKS] as i64;
    }
    starved
}

/// One row of the per-second timeline.
struct Row {
    t: usize,
    cols: [u64; COLS],
    backlog: i64,
    states: Vec<&'static str>,
    rss: Option<u64>,
    healthz_max: Option<u64>,
    healthz_failed: usize,
    inflight_max: Option<i64>,
}

fn timeline(run: &Run) -> Vec<Row> {
    let o = &run.outcome;
    let epoch = run.over.from;
    // Whole and partial seconds of the window, then of the drain (a drain
    // of a few milliseconds gets no row of its own).
    let window = run.over.to.saturating_duration_since(epoch).as_secs_f64();
    let drain = run
        .drain
        .to
        .saturating_duration_since(run.drain.from)
        .as_secs_f64();
    let secs = (window.ceil() as usize + (drain - 0.05).max(0.0).ceil() as usize)
        .clamp(1, o.buckets.len());
    let mut cum = 0i64;
    (0..secs)
        .map(|t| {
            let from = epoch + Duration::from_secs(t as u64);
            let ph = Phase {
                from,
                to: from + Duration::from_secs(1),
            };
            let cols = o.buckets[t];
            cum += cols[COL_ACCEPTED] as i64 - cols[COL_ACKS] as i64;
            let mut states: Vec<&'static str> = Vec::new();
            for (_, s) in run.monitor.states.iter().filter(|(at, _)| ph.contains(*at)) {
                if states.last() != Some(s) {
                    states.push(s);
                }
            }
            let probes: Vec<&Probe> = run
                .monitor
                .probes
                .iter()
                .filter(|p| ph.contains(p.at))
                .collect();
            Row {
                t,
                cols,
                backlog: cum,
                states,
                rss: run
                    .monitor
                    .rss
                    .iter()
                    .filter(|(at, _)| ph.contains(*at))
                    .map(|(_, b)| *b)
                    .max(),
                healthz_max: probes.iter().filter(|p| p.ok).map(|p| p.ns).max(),
                healthz_failed: probes.iter().filter(|p| !p.ok).count(),
                inflight_max: inflight_in(&run.monitor, ph).map(|x| x.0),
            }
        })
        .collect()
}

fn short_state(s: &str) -> &'static str {
    match s {
        "disengaged" => "off",
        "soft_arm" => "soft",
        "engaged" => "ENG",
        "recovery" => "rec",
        _ => "?",
    }
}

fn lat_text(l: Option<Latency>) -> String {
    match l {
        Some(l) => format!(
            "p50 {} p99 {} max {}",
            fmt_ms(l.p50),
            fmt_ms(l.p99),
            fmt_ms(l.max)
        ),
        None => "n/a".into(),
    }
}

fn print_report(report: &Report, args: &OverloadArgs, run: &Run, threads: usize) {
    let d = derive(run);
    let o = &run.outcome;
    let p = &o.producers;
    let c = &o.consumers;
    let cal = &run.calibration;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    report.line(&format!(
        "lockd-bench overload: {} ({}), {} B payloads, {threads} tokio worker threads, {cpus} CPUs",
        run.store, run.target, args.payload_bytes
    ));
    report.line(&format!("    {}", run.qrf_text));
    if run.in_process {
        report.line(
            "    note: server, load generator and monitor share this process (and its CPUs); \
             RSS is the whole process's, client included",
        );
    }
    report.line(&format!(
        "calibration ({} producers, {} consumers, dequeue page_size {}, backlog cap {}, warm-up {}, \
         window {}): R = {} msgs/s end to end, enqueue→ack {}, enqueued {}/s, errors {}",
        args.producers,
        args.consumers,
        args.page_size,
        group(CALIBRATION_BACKLOG as f64),
        fmt_dur(args.warmup),
        fmt_dur(args.calibrate),
        group(cal.rate),
        lat_text(cal.e2e),
        group(cal.enqueue_rate),
        cal.errors(),
    ));
    if !d.states_cal.is_empty() {
        report.line(&format!(
            "    QRF during calibration: {}",
            shares_text(&d.states_cal)
        ));
    }
    report.line(&format!(
        "overload ({}, factor {} → target {} enqueues/s from {} open-loop producer tasks, \
         {} consumers, no backlog cap):",
        fmt_dur(args.duration),
        args.factor,
        group(run.target_rate),
        run.producers,
        args.consumers
    ));
    report.line(&format!(
        "    offered {}/s ({:.1}× R; {:.2} of the target): {} sent of {} slots; {} slots skipped \
         (task still waiting for an answer), {} withheld by Retry-After",
        group(d.attempted_rate),
        d.attempted_rate / cal.rate.max(1e-9),
        d.attempted_rate / run.target_rate.max(1e-9),
        group(p.attempted as f64),
        group(d.intended),
        group(p.skipped_busy as f64),
        group(p.withheld as f64),
    ));
    report.line(&format!(
        "    accepted (200) {}/s ({:.2}× R), throttled (429) {} = {:.1} % of attempts, other errors {}",
        group(d.accepted_rate),
        d.accepted_rate / cal.rate.max(1e-9),
        group(p.throttled as f64),
        d.throttled_share * 100.0,
        p.errors
    ));
    let mut acc = p.accepted_ns.clone();
    let mut thr = p.throttled_ns.clone();
    report.line(&format!(
        "    enqueue latency: accepted {} | 429 answered {}",
        lat_text(Latency::of(&mut acc)),
        lat_text(Latency::of(&mut thr))
    ));
    if !p.states.is_empty() {
        let st: Vec<String> = p
            .states
            .iter()
            .map(|(k, v)| format!("{k} {}", group(*v as f64)))
            .collect();
        let ra: Vec<String> = p
            .retry_after
            .iter()
            .map(|(k, v)| format!("{k}s ×{}", group(*v as f64)))
            .collect();
        report.line(&format!(
            "    429s by X-Lockd-QRF-State: {}; Retry-After: {}",
            st.join(", "),
            ra.join(", ")
        ));
    }
    if run.in_process {
        report.line(&format!(
            "    QRF states (polled every {}ms): overload {}; drain {}",
            QRF_EVERY.as_millis(),
            if d.states_over.is_empty() {
                "n/a".into()
            } else {
                shares_text(&d.states_over)
            },
            if d.states_drain.is_empty() {
                "n/a".into()
            } else {
                shares_text(&d.states_drain)
            },
        ));
        let tr = transitions(&run.monitor);
        let shown: Vec<String> = tr
            .iter()
            .take(16)
            .map(|(t, s)| format!("{:+.1}s {s}", secs_rel(*t, run.over.from)))
            .collect();
        let more = if tr.len() > 16 {
            format!(" … ({} changes in all)", tr.len() - 1)
        } else {
            String::new()
        };
        report.line(&format!(
            "    QRF transitions (s from overload start): {}{more}",
            shown.join(", ")
        ));
    }
    let mut ackl = c.ack_ns.clone();
    let mut deql = c.dequeue_ns.clone();
    report.line(&format!(
        "    acks: {}/s during overload vs {}/s in calibration ({:.3}×); slowest whole second {}, \
         seconds without acks {} of {}",
        group(d.ack_rate),
        group(cal.rate),
        d.ack_ratio,
        d.min_ack_second.map_or("n/a".into(), |v| group(v as f64)),
        d.seconds_without_acks,
        d.acks_per_second.len()
    ));
    if run.in_process {
        let f = |x: Option<(i64, f64)>| {
            x.map_or("n/a".into(), |(max, mean)| {
                format!("mean {mean:.1}, max {max}")
            })
        };
        report.line(&format!(
            "    queue in-flight as QRF counts it (enqueues + dequeues + acks inside handlers, \
             polled every {}ms): calibration {} | overload {}",
            QRF_EVERY.as_millis(),
            f(d.inflight_cal),
            f(d.inflight_over)
        ));
    }
    report.line(&format!(
        "    consumer requests: dequeue {} | ack {}; {} empty polls, {} dequeue errors, \
         {} ack errors, {} acks answered 429, {} dequeues answered 429",
        lat_text(Latency::of(&mut deql)),
        lat_text(Latency::of(&mut ackl)),
        c.empty_polls,
        c.dequeue_errors,
        c.ack_errors,
        c.ack_throttled,
        c.dequeue_throttled,
    ));
    report.line(&format!(
        "    /healthz (every {}ms, own thread and connection): idle {} | calibration {} | \
         overload {} | drain {}",
        PROBE_EVERY.as_millis(),
        probe_text(&d.healthz_idle),
        probe_text(&d.healthz_cal),
        probe_text(&d.healthz_over),
        probe_text(&d.healthz_drain),
    ));
    if run.in_process {
        let f = |s: Option<RssSummary>| {
            s.map_or("n/a".into(), |s| format!("{}–{}", mib(s.min), mib(s.max)))
        };
        report.line(&format!(
            "    RSS (VmRSS every {}ms): before {} | calibration {} | overload {} | drain {}{}",
            RSS_EVERY.as_millis(),
            f(d.rss_before),
            f(d.rss_cal),
            f(d.rss_over),
            f(d.rss_drain),
            d.rss_growth.map_or(String::new(), |(g, _)| format!(
                "; last quarter of the overload {:+.1} MiB",
                g as f64 / (1024.0 * 1024.0)
            ))
        ));
    } else {
        report.line("    RSS: n/a (remote server)");
    }
    report.line(&format!(
        "    backlog (confirmed − acked): {} at the end of the overload, max {}",
        group(d.backlog_end as f64),
        group(d.backlog_max as f64)
    ));
    let ready = match (o.ready_after, &o.ready_error) {
        (Some(n), _) => format!("{n} ready in the queue afterwards"),
        (None, Some(e)) => format!("queue stats failed: {e}"),
        _ => String::new(),
    };
    report.line(&format!(
        "drain: producers stopped; {} acked after the window; {} in {:.2}s; {ready}",
        group(c.acked_drain as f64),
        if o.drained {
            "everything confirmed was acked"
        } else {
            "DRAIN TIMED OUT"
        },
        o.drain.as_secs_f64(),
    ));
    let k = &d.check;
    report.line(&format!(
        "delivery check: {} enqueues confirmed (200), {} acked exactly once under their id; \
         lost {}, acked twice {}, id mismatches {}, ack outcome unknown {}; delivered although \
         refused (429) {}; acked with unconfirmed enqueue (timeout) {}; unknown sequence {}; \
         redeliveries {}",
        group(k.confirmed as f64),
        group(k.acked_once as f64),
        k.lost,
        k.duplicated,
        k.id_mismatch,
        k.ack_unknown,
        k.delivered_after_refusal,
        k.acked_unconfirmed,
        k.unknown_seq,
        c.redeliveries,
    ));
    if !k.lost_examples.is_empty() {
        report.line(&format!(
            "    lost sequence numbers (first): {:?}",
            k.lost_examples
        ));
    }
    report.line("verdict:");
    report.line(&format!(
        "    /healthz stays low: {} (overload {}; limits p99 ≤ {}, max ≤ {}, no failures)",
        d.v_healthz,
        probe_text(&d.healthz_over),
        fmt_ms(HEALTHZ_P99_LIMIT.as_nanos() as u64),
        fmt_ms(HEALTHZ_MAX_LIMIT.as_nanos() as u64),
    ));
    report.line(&format!(
        "    memory stays bounded: {}{}",
        d.v_memory,
        match (d.rss_growth, d.rss_over) {
            (Some((g, allowed)), Some(r)) => format!(
                " (peak {}; {:+.1} MiB over the last quarter, allowed {})",
                mib(r.max),
                g as f64 / (1024.0 * 1024.0),
                mib(allowed)
            ),
            _ => " (remote server: not sampled)".into(),
        }
    ));
    report.line(&format!(
        "    acks keep flowing: {} ({} of {} whole seconds acked fewer than min({} = 10 % of R, \
         the backlog), {} none; {}/s vs {}/s in calibration)",
        d.v_acks,
        d.seconds_below_floor,
        d.acks_per_second.len(),
        group(d.ack_floor as f64),
        d.seconds_without_acks,
        group(d.ack_rate),
        group(cal.rate)
    ));
    report.line(&format!(
        "    nothing acknowledged is lost: {} ({} of {} confirmed acked exactly once)",
        d.v_lost,
        group(k.acked_once as f64),
        group(k.confirmed as f64)
    ));
    report.line(
        "timeline (s from overload start; sent, 200, 429, err, acks per second; backlog; QRF; RSS; \
         /healthz max):",
    );
    let window_secs = d.window_s.ceil() as usize;
    for row in timeline(run).iter().take(TIMELINE_ROWS) {
        let phase = if row.t < window_secs { ' ' } else { 'd' };
        let st: Vec<&str> = row.states.iter().map(|s| short_state(s)).collect();
        report.line(&format!(
            "  {phase}{:>3}  sent {:>7}  200 {:>7}  429 {:>7}  err {:>4}  acks {:>7}  backlog {:>8}  \
             qrf {:<14} inflight {:>5}  rss {:>8}  healthz {}{}",
            row.t,
            group(row.cols[COL_ATTEMPTED] as f64),
            group(row.cols[COL_ACCEPTED] as f64),
            group(row.cols[COL_THROTTLED] as f64),
            row.cols[COL_ERRORS],
            group(row.cols[COL_ACKS] as f64),
            group(row.backlog.max(0) as f64),
            if st.is_empty() { "-".into() } else { st.join("/") },
            row.inflight_max.map_or("-".into(), |n| n.to_string()),
            row.rss.map_or("-".into(), mib),
            row.healthz_max.map_or("-".into(), fmt_ms),
            if row.healthz_failed > 0 {
                format!(" ({} failed)", row.healthz_failed)
            } else {
                String::new()
            }
        ));
    }
    for e in &run.monitor.probe_errors {
        report.line(&format!("    probe error: {e}"));
    }
}

fn summary_json(args: &OverloadArgs, run: &Run, threads: usize, run_id: &str) -> Value {
    let d = derive(run);
    let o = &run.outcome;
    let p = &o.producers;
    let c = &o.consumers;
    let cal = &run.calibration;
    let mut acc = p.accepted_ns.clone();
    let mut thr = p.throttled_ns.clone();
    let mut ackl = c.ack_ns.clone();
    let mut deql = c.dequeue_ns.clone();
    let lj = |l: Option<Latency>| l.map_or(Value::Null, Latency::to_json_ms);
    let transitions: Vec<Value> = transitions(&run.monitor)
        .iter()
        .take(1000)
        .map(|(t, s)| json!({ "t_s": secs_rel(*t, run.over.from), "state": s }))
        .collect();
    let window_secs = d.window_s.ceil() as usize;
    let rows: Vec<Value> = timeline(run)
        .iter()
        .map(|r| {
            json!({
                "t_s": r.t,
                "phase": if r.t < window_secs { "overload" } else { "drain" },
                "sent": r.cols[COL_ATTEMPTED],
                "accepted": r.cols[COL_ACCEPTED],
                "throttled": r.cols[COL_THROTTLED],
                "errors": r.cols[COL_ERRORS],
                "acks": r.cols[COL_ACKS],
                "backlog": r.backlog,
                "qrf_states": r.states,
                "rss_bytes": r.rss,
                "queue_inflight_max": r.inflight_max,
                "healthz_max_ms": r.healthz_max.map(ms),
                "healthz_failed": r.healthz_failed,
            })
        })
        .collect();
    let overload = json!({
        "target_enqueues_per_s": run.target_rate,
        "intended": d.intended,
        "attempted": p.attempted,
        "attempted_per_s": d.attempted_rate,
        "skipped_busy": p.skipped_busy,
        "withheld_retry_after": p.withheld,
        "accepted": p.accepted,
        "accepted_per_s": d.accepted_rate,
        "throttled": p.throttled,
        "throttled_share": d.throttled_share,
        "errors": p.errors,
        "enqueue_latency_ms": { "accepted": lj(Latency::of(&mut acc)), "throttled": lj(Latency::of(&mut thr)) },
        "throttled_by_qrf_state": p.states,
        "retry_after_s": p.retry_after.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "qrf_states": shares_json(&d.states_over),
        "acks": c.acked_window,
        "acks_per_s": d.ack_rate,
        "ack_ratio_to_calibration": d.ack_ratio,
        "acks_per_second": d.acks_per_second,
        "seconds_without_acks": d.seconds_without_acks,
        "seconds_below_ack_floor": d.seconds_below_floor,
        "ack_floor_per_s": d.ack_floor,
        "queue_inflight": d.inflight_over.map(|(max, mean)| json!({ "max": max, "mean": mean })),
        "ops_latency_ms": { "dequeue": lj(Latency::of(&mut deql)), "ack": lj(Latency::of(&mut ackl)) },
        "empty_polls": c.empty_polls,
        "dequeue_errors": c.dequeue_errors,
        "ack_errors": c.ack_errors,
        "ack_throttled": c.ack_throttled,
        "dequeue_throttled": c.dequeue_throttled,
        "healthz": probe_json(&d.healthz_over),
        "rss_bytes": rss_json(d.rss_over),
        "rss_growth_last_quarter_bytes": d.rss_growth.map(|g| g.0),
        "backlog_end": d.backlog_end,
        "backlog_max": d.backlog_max,
    });
    let k = &d.check;
    json!({
        "tool": "lockd-bench",
        "workload": "overload",
        "store": run.store,
        "target": run.target,
        "run_id": run_id,
        "qrf": run.qrf_json,
        "factor": args.factor,
        "duration_s": args.duration.as_secs_f64(),
        "calibrate_s": args.calibrate.as_secs_f64(),
        "warmup_s": args.warmup.as_secs_f64(),
        "producers": args.producers,
        "consumers": args.consumers,
        "overload_producers": run.producers,
        "page_size": args.page_size,
        "payload_bytes": args.payload_bytes,
        "drain_timeout_s": args.drain_timeout.as_secs_f64(),
        "worker_threads": threads,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "shares_process_with_server": run.in_process,
        "idle": { "healthz": probe_json(&d.healthz_idle), "rss_bytes": rss_json(d.rss_before) },
        "calibration": {
            "messages_per_s": cal.rate,
            "acked": cal.acked,
            "end_to_end_ms": lj(cal.e2e),
            "enqueues_per_s": cal.enqueue_rate,
            "backlog": { "mean": cal.backlog_mean, "max": cal.backlog_max, "cap": CALIBRATION_BACKLOG },
            "errors": cal.errors(),
            "undrained": cal.undrained,
            "healthz": probe_json(&d.healthz_cal),
            "rss_bytes": rss_json(d.rss_cal),
            "qrf_states": shares_json(&d.states_cal),
            "queue_inflight": d.inflight_cal.map(|(max, mean)| json!({ "max": max, "mean": mean })),
        },
        "overload": overload,
        "drain": {
            "s": o.drain.as_secs_f64(),
            "completed": o.drained,
            "acked": c.acked_drain,
            "ready_after": o.ready_after,
            "healthz": probe_json(&d.healthz_drain),
            "rss_bytes": rss_json(d.rss_drain),
            "qrf_states": shares_json(&d.states_drain),
        },
        "qrf_transitions": transitions,
        "delivery_check": {
            "confirmed": k.confirmed,
            "acked_exactly_once": k.acked_once,
            "lost": k.lost,
            "duplicated": k.duplicated,
            "id_mismatch": k.id_mismatch,
            "ack_outcome_unknown": k.ack_unknown,
            "delivered_after_refusal": k.delivered_after_refusal,
            "acked_unconfirmed": k.acked_unconfirmed,
            "unknown_sequence": k.unknown_seq,
            "redeliveries": c.redeliveries,
            "foreign": c.foreign,
        },
        "verdict": {
            "healthz_low": d.v_healthz,
            "memory_bounded": d.v_memory,
            "acks_flow": d.v_acks,
            "nothing_lost": d.v_lost,
            "criteria": {
                "healthz_p99_ms": ms(HEALTHZ_P99_LIMIT.as_nanos() as u64),
                "healthz_max_ms": ms(HEALTHZ_MAX_LIMIT.as_nanos() as u64),
                "rss_growth_last_quarter_max_bytes": d.rss_growth.map(|g| g.1),
                "ack_floor_share_of_calibration": ACK_FLOOR_SHARE,
                "ack_floor_per_s": d.ack_floor,
            },
        },
        "timeline": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tlockd-bench\nVmPeak:\t  100 kB\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn seq_round_trips_through_the_payload() {
        let t = EnqueueBody::new("q", 1024);
        let body = t.build_with_seq(7, 99, 123_456);
        let boundary =
            boundary_of(EnqueueBody::content_type().to_str().expect("ascii")).expect("boundary");
        let mut p = lockd_api::delivery::Parser::new(&boundary);
        p.feed(&body);
        let _meta = p.next_part().expect("parse").expect("meta");
        let payload = p.next_part().expect("parse").expect("payload");
        assert_eq!(payload.body.len(), 1024);
        assert_eq!(queue::read_seq(&payload.body, 99), Some(123_456));
        assert_eq!(queue::read_seq(&payload.body, 98), None);
        assert_eq!(queue::read_stamp(&payload.body, 99), Some(7));
    }

    #[test]
    fn delivery_check_classifies() {
        let p = ProducerStats {
            confirmed: vec![(1, 11), (2, 12), (3, 13), (4, 14), (5, 15)],
            rejected: vec![6],
            unknown: vec![7],
            ..ProducerStats::default()
        };
        let c = ConsumerStats {
            // 1 once, 2 twice, 3 under another id, 4 unknown ack, 5 lost,
            // 6 delivered after 429, 7 acked unconfirmed, 8 unknown.
            acked: vec![
                (1, 11),
                (2, 12),
                (2, 12),
                (3, 99),
                (6, 16),
                (7, 17),
                (8, 18),
            ],
            ack_unknown: vec![(4, 14)],
            ..ConsumerStats::default()
        };
        let k = check_deliveries(&p, &c);
        assert_eq!(k.confirmed, 5);
        assert_eq!(k.acked_once, 1);
        assert_eq!(k.duplicated, 1);
        assert_eq!(k.id_mismatch, 1);
        assert_eq!(k.ack_unknown, 1);
        assert_eq!(k.lost, 1);
        assert_eq!(k.lost_examples, vec![5]);
        assert_eq!(k.delivered_after_refusal, 1);
        assert_eq!(k.acked_unconfirmed, 1);
        assert_eq!(k.unknown_seq, 1);
        assert_eq!(k.verdict(), "FAIL");
        let clean = ConsumerStats {
            acked: vec![(1, 11), (2, 12), (3, 13), (4, 14), (5, 15)],
            ..ConsumerStats::default()
        };
        assert_eq!(check_deliveries(&p, &clean).verdict(), "PASS");
    }

    #[test]
    fn an_empty_queue_does_not_starve() {
        let row = |accepted: u64, acks: u64| {
            let mut r = [0u64; COLS];
            r[COL_ACCEPTED] = accepted;
            r[COL_ACKS] = acks;
            r
        };
        // Nothing to ack, then a small backlog acked in full, then a trickle.
        let rows = [row(0, 0), row(5, 5), row(10_000, 10), row(0, 2_000)];
        assert_eq!(starved_seconds(&rows, 100), 1);
        assert_eq!(starved_seconds(&rows[..2], 100), 0);
    }

    #[test]
    fn slots_are_counted_without_overflow() {
        let t = Instant::now();
        assert_eq!(
            slots_between(t, t + Duration::from_millis(35), 10_000_000),
            3
        );
        assert_eq!(slots_between(t + Duration::from_secs(1), t, 10), 0);
        assert_eq!(slots_between(t, t + Duration::from_millis(1), 0), 1_000_000);
    }
}
