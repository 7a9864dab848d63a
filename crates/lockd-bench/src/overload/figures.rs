//! The per-second figures of an overload run: the timeline and the ack
//! floor check over it.

use std::time::Duration;

use serde::Serialize;

use super::drive::{COLS, COL_ACCEPTED, COL_ACKS, COL_ATTEMPTED, COL_ERRORS, COL_THROTTLED};
use super::monitor::{inflight_in, Phase, Probe};
use super::Run;
use crate::stats::ms;

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
