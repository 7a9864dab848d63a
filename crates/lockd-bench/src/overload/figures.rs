//! Figures derived from an overload run (rates, the ack floor, RSS
//! growth, the verdicts) and its per-second timeline.

use std::time::Duration;

use serde::Serialize;

use super::check::{check_deliveries, DeliveryCheck};
use super::drive::{COLS, COL_ACCEPTED, COL_ACKS, COL_ATTEMPTED, COL_ERRORS, COL_THROTTLED};
use super::monitor::{
    inflight_in, probes_in, rss_in, state_shares, Phase, Probe, ProbeSummary, RssSummary,
};
use super::Run;
use crate::stats::ms;

/// Verdict: `/healthz` p99 during the overload at most this.
pub(super) const HEALTHZ_P99_LIMIT: Duration = Duration::from_millis(100);
/// Verdict: `/healthz` max during the overload at most this.
pub(super) const HEALTHZ_MAX_LIMIT: Duration = Duration::from_secs(1);
/// Verdict: every whole second of the overload acks at least this share of R.
pub(super) const ACK_FLOOR_SHARE: f64 = 0.10;
/// Verdict: RSS growth over the last quarter at most max(this, 5 % of peak).
const RSS_GROWTH_FLOOR: u64 = 16 * 1024 * 1024;

/// Figures derived from a run, shared by the text and JSON reports.
pub(super) struct Derived {
    pub(super) window_s: f64,
    pub(super) attempted_rate: f64,
    pub(super) accepted_rate: f64,
    pub(super) throttled_share: f64,
    pub(super) intended: f64,
    pub(super) ack_rate: f64,
    pub(super) ack_ratio: f64,
    /// Acks per whole second of the window.
    pub(super) acks_per_second: Vec<u64>,
    pub(super) seconds_without_acks: usize,
    /// Whole seconds that acked fewer than min([`ACK_FLOOR_SHARE`] × R,
    /// what there was to ack).
    pub(super) seconds_below_floor: usize,
    pub(super) ack_floor: u64,
    pub(super) backlog_end: u64,
    pub(super) backlog_max: u64,
    pub(super) healthz_idle: ProbeSummary,
    pub(super) healthz_cal: ProbeSummary,
    pub(super) healthz_over: ProbeSummary,
    pub(super) healthz_drain: ProbeSummary,
    pub(super) rss_before: Option<RssSummary>,
    pub(super) rss_cal: Option<RssSummary>,
    pub(super) rss_over: Option<RssSummary>,
    pub(super) rss_drain: Option<RssSummary>,
    /// RSS growth over the last quarter of the window and the allowed growth.
    pub(super) rss_growth: Option<(i64, u64)>,
    pub(super) states_cal: Vec<(&'static str, f64)>,
    pub(super) states_over: Vec<(&'static str, f64)>,
    pub(super) inflight_cal: Option<(i64, f64)>,
    pub(super) inflight_over: Option<(i64, f64)>,
    pub(super) states_drain: Vec<(&'static str, f64)>,
    pub(super) check: DeliveryCheck,
    pub(super) v_healthz: &'static str,
    pub(super) v_memory: &'static str,
    pub(super) v_acks: &'static str,
    pub(super) v_lost: &'static str,
}

pub(super) fn derive(run: &Run) -> Derived {
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
pub(super) fn starved_seconds(rows: &[[u64; COLS]], floor: u64) -> usize {
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
#[derive(Debug, Clone, Serialize)]
pub(super) struct Row {
    /// Seconds from the start of the overload.
    #[serde(rename = "t_s")]
    pub(super) t: usize,
    /// `overload` or `drain`.
    pub(super) phase: &'static str,
    pub(super) sent: u64,
    pub(super) accepted: u64,
    pub(super) throttled: u64,
    pub(super) errors: u64,
    pub(super) acks: u64,
    pub(super) backlog: i64,
    #[serde(rename = "qrf_states")]
    pub(super) states: Vec<&'static str>,
    #[serde(rename = "rss_bytes")]
    pub(super) rss: Option<u64>,
    #[serde(rename = "queue_inflight_max")]
    pub(super) inflight_max: Option<i64>,
    #[serde(rename = "healthz_max_ms", serialize_with = "ser_opt_ms")]
    pub(super) healthz_max: Option<u64>,
    pub(super) healthz_failed: usize,
}

pub(super) fn ser_opt_ms<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(ns) => s.serialize_some(&ms(*ns)),
        None => s.serialize_none(),
    }
}

/// The per-second rows of the window (`window_secs` whole or partial
/// seconds) and of the drain.
pub(super) fn timeline(run: &Run, window_secs: usize) -> Vec<Row> {
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
                phase: if t < window_secs { "overload" } else { "drain" },
                sent: cols[COL_ATTEMPTED],
                accepted: cols[COL_ACCEPTED],
                throttled: cols[COL_THROTTLED],
                errors: cols[COL_ERRORS],
                acks: cols[COL_ACKS],
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
