//! The report of an overload run: one `Serialize` value, printed as JSON
//! by serde and as text by [`OverloadReport::render`] (in `text`).

mod text;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::check::DeliveryCheck;
use super::figures::{
    derive, timeline, Row, ACK_FLOOR_SHARE, HEALTHZ_MAX_LIMIT, HEALTHZ_P99_LIMIT,
};
use super::monitor::{secs_rel, transitions, ProbeSummary, RssSummary};
use super::{OverloadArgs, QrfSettings, Run, CALIBRATION_BACKLOG};
use crate::report::{cpus, ser_secs};
use crate::stats::{ser_ms, Latency};

/// QRF transitions in the JSON at most.
const TRANSITIONS_JSON: usize = 1000;

/// Shares of QRF polls per state: `{"engaged": 0.4, …}`.
#[derive(Debug, Clone, Default)]
pub(super) struct Shares(pub(super) Vec<(&'static str, f64)>);

impl Serialize for Shares {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (*k, v)))
    }
}

/// Max and mean of the polled queue in-flight count.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Inflight {
    max: i64,
    mean: f64,
}

/// The sampled backlog of the calibration and its cap.
#[derive(Debug, Clone, Serialize)]
struct Backlog {
    mean: f64,
    max: u64,
    cap: usize,
}

#[derive(Debug, Clone, Serialize)]
struct Idle {
    healthz: ProbeSummary,
    rss_bytes: Option<RssSummary>,
}

#[derive(Debug, Clone, Serialize)]
struct Calibration {
    messages_per_s: f64,
    acked: u64,
    end_to_end_ms: Option<Latency>,
    enqueues_per_s: f64,
    backlog: Backlog,
    errors: u64,
    undrained: u64,
    healthz: ProbeSummary,
    rss_bytes: Option<RssSummary>,
    qrf_states: Shares,
    queue_inflight: Option<Inflight>,
}

#[derive(Debug, Clone, Serialize)]
struct EnqueueLatency {
    accepted: Option<Latency>,
    throttled: Option<Latency>,
}

#[derive(Debug, Clone, Serialize)]
struct ConsumerLatency {
    dequeue: Option<Latency>,
    ack: Option<Latency>,
}

#[derive(Debug, Clone, Serialize)]
struct Overload {
    target_enqueues_per_s: f64,
    intended: f64,
    attempted: u64,
    attempted_per_s: f64,
    skipped_busy: u64,
    withheld_retry_after: u64,
    accepted: u64,
    accepted_per_s: f64,
    throttled: u64,
    throttled_share: f64,
    errors: u64,
    enqueue_latency_ms: EnqueueLatency,
    throttled_by_qrf_state: BTreeMap<String, u64>,
    retry_after_s: BTreeMap<u64, u64>,
    qrf_states: Shares,
    acks: u64,
    acks_per_s: f64,
    ack_ratio_to_calibration: f64,
    acks_per_second: Vec<u64>,
    seconds_without_acks: usize,
    seconds_below_ack_floor: usize,
    ack_floor_per_s: u64,
    queue_inflight: Option<Inflight>,
    ops_latency_ms: ConsumerLatency,
    empty_polls: u64,
    dequeue_errors: u64,
    ack_errors: u64,
    ack_throttled: u64,
    dequeue_throttled: u64,
    healthz: ProbeSummary,
    rss_bytes: Option<RssSummary>,
    rss_growth_last_quarter_bytes: Option<i64>,
    backlog_end: u64,
    backlog_max: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Drain {
    #[serde(rename = "s", serialize_with = "ser_secs")]
    took: Duration,
    completed: bool,
    acked: u64,
    ready_after: Option<i64>,
    healthz: ProbeSummary,
    rss_bytes: Option<RssSummary>,
    qrf_states: Shares,
    /// Why `ready_after` is missing.
    #[serde(skip)]
    ready_error: Option<String>,
}

/// The delivery check and the consumers' counts that go with it.
#[derive(Debug, Clone, Serialize)]
struct Checked {
    #[serde(flatten)]
    check: DeliveryCheck,
    redeliveries: u64,
    foreign: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Transition {
    t_s: f64,
    state: &'static str,
}

#[derive(Debug, Clone, Serialize)]
struct Criteria {
    #[serde(serialize_with = "ser_ms")]
    healthz_p99_ms: u64,
    #[serde(serialize_with = "ser_ms")]
    healthz_max_ms: u64,
    rss_growth_last_quarter_max_bytes: Option<u64>,
    ack_floor_share_of_calibration: f64,
    ack_floor_per_s: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Verdict {
    healthz_low: &'static str,
    memory_bounded: &'static str,
    acks_flow: &'static str,
    nothing_lost: &'static str,
    criteria: Criteria,
}

/// Everything an overload run reports.
#[derive(Debug, Clone, Serialize)]
pub(super) struct OverloadReport {
    tool: &'static str,
    workload: &'static str,
    store: String,
    target: String,
    run_id: String,
    qrf: QrfSettings,
    factor: f64,
    #[serde(rename = "duration_s", serialize_with = "ser_secs")]
    duration: Duration,
    #[serde(rename = "calibrate_s", serialize_with = "ser_secs")]
    calibrate: Duration,
    #[serde(rename = "warmup_s", serialize_with = "ser_secs")]
    warmup: Duration,
    producers: u32,
    consumers: u32,
    overload_producers: usize,
    page_size: u32,
    payload_bytes: u32,
    #[serde(rename = "drain_timeout_s", serialize_with = "ser_secs")]
    drain_timeout: Duration,
    worker_threads: usize,
    cpus: usize,
    shares_process_with_server: bool,
    idle: Idle,
    calibration: Calibration,
    overload: Overload,
    drain: Drain,
    qrf_transitions: Vec<Transition>,
    delivery_check: Checked,
    verdict: Verdict,
    timeline: Vec<Row>,
    /// The QRF settings as one line of text.
    #[serde(skip)]
    qrf_text: String,
    /// QRF state changes in all (the JSON keeps the first 1 000).
    #[serde(skip)]
    transitions_total: usize,
    /// The monitor's first few probe failures.
    #[serde(skip)]
    probe_errors: Vec<String>,
}

impl OverloadReport {
    /// The report of `run`.
    pub(super) fn new(args: &OverloadArgs, run: Run, threads: usize, run_id: &str) -> Self {
        let d = derive(&run);
        let window_secs = d.window_s.ceil() as usize;
        let rows = timeline(&run, window_secs);
        let all_transitions = transitions(&run.monitor);
        let o = run.outcome;
        let p = o.producers;
        let c = o.consumers;
        let cal = run.calibration;
        let mut acc = p.accepted_ns;
        let mut thr = p.throttled_ns;
        let mut ackl = c.ack_ns;
        let mut deql = c.dequeue_ns;
        OverloadReport {
            tool: "lockd-bench",
            workload: "overload",
            store: run.store,
            target: run.target,
            run_id: run_id.to_string(),
            qrf: run.qrf,
            factor: args.factor,
            duration: args.duration,
            calibrate: args.calibrate,
            warmup: args.warmup,
            producers: args.producers,
            consumers: args.consumers,
            overload_producers: run.producers,
            page_size: args.page_size,
            payload_bytes: args.payload_bytes,
            drain_timeout: args.drain_timeout,
            worker_threads: threads,
            cpus: cpus(),
            shares_process_with_server: run.in_process,
            idle: Idle {
                healthz: d.healthz_idle,
                rss_bytes: d.rss_before,
            },
            calibration: Calibration {
                messages_per_s: cal.rate,
                acked: cal.acked,
                end_to_end_ms: cal.e2e,
                enqueues_per_s: cal.enqueue_rate,
                backlog: Backlog {
                    mean: cal.backlog_mean,
                    max: cal.backlog_max,
                    cap: CALIBRATION_BACKLOG,
                },
                errors: cal.errors(),
                undrained: cal.undrained,
                healthz: d.healthz_cal,
                rss_bytes: d.rss_cal,
                qrf_states: Shares(d.states_cal),
                queue_inflight: Inflight::of(d.inflight_cal),
            },
            overload: Overload {
                target_enqueues_per_s: run.target_rate,
                intended: d.intended,
                attempted: p.attempted,
                attempted_per_s: d.attempted_rate,
                skipped_busy: p.skipped_busy,
                withheld_retry_after: p.withheld,
                accepted: p.accepted,
                accepted_per_s: d.accepted_rate,
                throttled: p.throttled,
                throttled_share: d.throttled_share,
                errors: p.errors,
                enqueue_latency_ms: EnqueueLatency {
                    accepted: Latency::of(&mut acc),
                    throttled: Latency::of(&mut thr),
                },
                throttled_by_qrf_state: p.states,
                retry_after_s: p.retry_after,
                qrf_states: Shares(d.states_over),
                acks: c.acked_window,
                acks_per_s: d.ack_rate,
                ack_ratio_to_calibration: d.ack_ratio,
                acks_per_second: d.acks_per_second,
                seconds_without_acks: d.seconds_without_acks,
                seconds_below_ack_floor: d.seconds_below_floor,
                ack_floor_per_s: d.ack_floor,
                queue_inflight: Inflight::of(d.inflight_over),
                ops_latency_ms: ConsumerLatency {
                    dequeue: Latency::of(&mut deql),
                    ack: Latency::of(&mut ackl),
                },
                empty_polls: c.empty_polls,
                dequeue_errors: c.dequeue_errors,
                ack_errors: c.ack_errors,
                ack_throttled: c.ack_throttled,
                dequeue_throttled: c.dequeue_throttled,
                healthz: d.healthz_over,
                rss_bytes: d.rss_over,
                rss_growth_last_quarter_bytes: d.rss_growth.map(|g| g.0),
                backlog_end: d.backlog_end,
                backlog_max: d.backlog_max,
            },
            drain: Drain {
                took: o.drain,
                completed: o.drained,
                acked: c.acked_drain,
                ready_after: o.ready_after,
                healthz: d.healthz_drain,
                rss_bytes: d.rss_drain,
                qrf_states: Shares(d.states_drain),
                ready_error: o.ready_error,
            },
            qrf_transitions: all_transitions
                .iter()
                .take(TRANSITIONS_JSON)
                .map(|(t, s)| Transition {
                    t_s: secs_rel(*t, run.over.from),
                    state: s,
                })
                .collect(),
            transitions_total: all_transitions.len(),
            delivery_check: Checked {
                check: d.check,
                redeliveries: c.redeliveries,
                foreign: c.foreign,
            },
            verdict: Verdict {
                healthz_low: d.v_healthz,
                memory_bounded: d.v_memory,
                acks_flow: d.v_acks,
                nothing_lost: d.v_lost,
                criteria: Criteria {
                    healthz_p99_ms: HEALTHZ_P99_LIMIT.as_nanos() as u64,
                    healthz_max_ms: HEALTHZ_MAX_LIMIT.as_nanos() as u64,
                    rss_growth_last_quarter_max_bytes: d.rss_growth.map(|g| g.1),
                    ack_floor_share_of_calibration: ACK_FLOOR_SHARE,
                    ack_floor_per_s: d.ack_floor,
                },
            },
            timeline: rows,
            qrf_text: run.qrf_text,
            probe_errors: run.monitor.probe_errors,
        }
    }
}

impl Inflight {
    fn of(x: Option<(i64, f64)>) -> Option<Inflight> {
        x.map(|(max, mean)| Inflight { max, mean })
    }
}
