//! The report of an overload run: one `Serialize` value, printed as JSON
//! by serde and as text by [`OverloadReport::render`] (in `text`).

mod text;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::check::check_deliveries;
use super::check::DeliveryCheck;
use super::drive::{COL_ACCEPTED, COL_ACKS};
use super::figures::{starved_seconds, timeline, Row};
use super::monitor::{
    inflight_in, probes_in, rss_in, secs_rel, state_shares, transitions, Phase, ProbeSummary,
    RssSummary,
};
use super::{OverloadArgs, QrfSettings, Run, CALIBRATION_BACKLOG};
use crate::report::{cpus, ser_secs};
use crate::stats::{ser_ms, Latency};

/// Verdict: `/healthz` p99 during the overload at most this.
const HEALTHZ_P99_LIMIT: Duration = Duration::from_millis(100);
/// Verdict: `/healthz` max during the overload at most this.
const HEALTHZ_MAX_LIMIT: Duration = Duration::from_secs(1);
/// Verdict: every whole second of the overload acks at least this share of R.
const ACK_FLOOR_SHARE: f64 = 0.10;
/// Verdict: RSS growth over the last quarter at most max(this, 5 % of peak).
const RSS_GROWTH_FLOOR: u64 = 16 * 1024 * 1024;
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
        let attempted_rate = p.attempted as f64 / window_s;
        let accepted_rate = p.accepted as f64 / window_s;
        let throttled_share = if p.attempted > 0 {
            p.throttled as f64 / p.attempted as f64
        } else {
            0.0
        };
        let intended = run.target_rate * window_s;
        let ack_ratio = if run.calibration.rate > 0.0 {
            ack_rate / run.calibration.rate
        } else {
            0.0
        };
        let healthz_idle = probes_in(&run.monitor, run.idle);
        let healthz_cal = probes_in(&run.monitor, run.cal);
        let healthz_drain = probes_in(&run.monitor, run.drain);
        let rss_before = rss_in(&run.monitor, before);
        let rss_cal = rss_in(&run.monitor, run.cal);
        let rss_drain = rss_in(&run.monitor, run.drain);
        let states_cal = state_shares(&run.monitor, run.cal);
        let states_over = state_shares(&run.monitor, run.over);
        let inflight_cal = inflight_in(&run.monitor, run.cal);
        let inflight_over = inflight_in(&run.monitor, run.over);
        let states_drain = state_shares(&run.monitor, run.drain);
        let window_secs = window_s.ceil() as usize;
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
                healthz: healthz_idle,
                rss_bytes: rss_before,
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
                healthz: healthz_cal,
                rss_bytes: rss_cal,
                qrf_states: Shares(states_cal),
                queue_inflight: Inflight::of(inflight_cal),
            },
            overload: Overload {
                target_enqueues_per_s: run.target_rate,
                intended,
                attempted: p.attempted,
                attempted_per_s: attempted_rate,
                skipped_busy: p.skipped_busy,
                withheld_retry_after: p.withheld,
                accepted: p.accepted,
                accepted_per_s: accepted_rate,
                throttled: p.throttled,
                throttled_share,
                errors: p.errors,
                enqueue_latency_ms: EnqueueLatency {
                    accepted: Latency::of(&mut acc),
                    throttled: Latency::of(&mut thr),
                },
                throttled_by_qrf_state: p.states,
                retry_after_s: p.retry_after,
                qrf_states: Shares(states_over),
                acks: c.acked_window,
                acks_per_s: ack_rate,
                ack_ratio_to_calibration: ack_ratio,
                acks_per_second,
                seconds_without_acks,
                seconds_below_ack_floor: seconds_below_floor,
                ack_floor_per_s: ack_floor,
                queue_inflight: Inflight::of(inflight_over),
                ops_latency_ms: ConsumerLatency {
                    dequeue: Latency::of(&mut deql),
                    ack: Latency::of(&mut ackl),
                },
                empty_polls: c.empty_polls,
                dequeue_errors: c.dequeue_errors,
                ack_errors: c.ack_errors,
                ack_throttled: c.ack_throttled,
                dequeue_throttled: c.dequeue_throttled,
                healthz: healthz_over,
                rss_bytes: rss_over,
                rss_growth_last_quarter_bytes: rss_growth.map(|g| g.0),
                backlog_end,
                backlog_max,
            },
            drain: Drain {
                took: o.drain,
                completed: o.drained,
                acked: c.acked_drain,
                ready_after: o.ready_after,
                healthz: healthz_drain,
                rss_bytes: rss_drain,
                qrf_states: Shares(states_drain),
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
                check,
                redeliveries: c.redeliveries,
                foreign: c.foreign,
            },
            verdict: Verdict {
                healthz_low: v_healthz,
                memory_bounded: v_memory,
                acks_flow: v_acks,
                nothing_lost: v_lost,
                criteria: Criteria {
                    healthz_p99_ms: HEALTHZ_P99_LIMIT.as_nanos() as u64,
                    healthz_max_ms: HEALTHZ_MAX_LIMIT.as_nanos() as u64,
                    rss_growth_last_quarter_max_bytes: rss_growth.map(|g| g.1),
                    ack_floor_share_of_calibration: ACK_FLOOR_SHARE,
                    ack_floor_per_s: ack_floor,
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
