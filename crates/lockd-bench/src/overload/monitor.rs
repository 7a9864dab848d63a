//! The monitor thread (`/healthz` probes, RSS, QRF posture) and what it
//! saw per phase.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Uri;
use serde::Serialize;

use crate::procfs;
use crate::report::PRINTED_ERRORS;
use crate::server::QrfProbe;
use crate::stats::Latency;
use crate::wire;

/// `/healthz` probe period.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(100);
/// `/healthz` probe timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// RSS sampling period.
pub(super) const RSS_EVERY: Duration = Duration::from_millis(500);
/// QRF state polling period (in-process).
pub(super) const QRF_EVERY: Duration = Duration::from_millis(20);

/// One `/healthz` probe.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    pub(super) at: Instant,
    pub(super) ns: u64,
    pub(super) ok: bool,
}

/// What the monitor saw.
#[derive(Debug, Default)]
pub(super) struct MonitorData {
    pub(super) probes: Vec<Probe>,
    /// `(when, VmRSS bytes)`.
    pub(super) rss: Vec<(Instant, u64)>,
    /// `(when, QRF state)`.
    pub(super) states: Vec<(Instant, &'static str)>,
    /// `(when, in-flight enqueues + dequeues + acks)`: what QRF's
    /// `queue_inflight` metric sees (in-process).
    pub(super) inflight: Vec<(Instant, i64)>,
    /// First few probe failures.
    pub(super) probe_errors: Vec<String>,
}

pub(super) struct Monitor {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) handle: std::thread::JoinHandle<MonitorData>,
}

/// `VmRSS` of this process, bytes.
pub(super) fn read_rss() -> Option<u64> {
    procfs::read(procfs::Proc::Current, procfs::Field::Rss)
}

/// The `VmRSS:  N kB` line of `/proc/<pid>/status`, in bytes.
#[cfg(test)]
pub(super) fn parse_vm_rss(status: &str) -> Option<u64> {
    procfs::status_bytes(status, procfs::Field::Rss)
}

impl Monitor {
    pub(super) fn start(
        base: &str,
        qrf: Option<QrfProbe>,
        sample_rss: bool,
    ) -> Result<Monitor, String> {
        let uri = wire::endpoint(base, "/healthz")?;
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
                rt.block_on(monitor_loop(uri, qrf, sample_rss, flag))
            })
            .map_err(|e| format!("cannot start the monitor thread: {e}"))?;
        Ok(Monitor { stop, handle })
    }

    pub(super) async fn stop(self) -> MonitorData {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle;
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default()
    }
}

pub(super) async fn monitor_loop(
    uri: Uri,
    qrf: Option<QrfProbe>,
    sample_rss: bool,
    stop: Arc<AtomicBool>,
) -> MonitorData {
    let probes = async {
        let http = wire::http_client();
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
            let res = wire::healthz(&http, &uri, PROBE_TIMEOUT).await;
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
        let Some(qrf) = qrf else {
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
            out.push((now, qrf.state()));
            inflight.push((now, qrf.queue_inflight()));
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Phase {
    pub(super) from: Instant,
    pub(super) to: Instant,
}

impl Phase {
    pub(super) fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.to
    }
}

/// `/healthz` probes of a phase: `{"probes","failed","latency_ms"}`.
#[derive(Debug, Default, Clone, Serialize)]
pub(super) struct ProbeSummary {
    #[serde(rename = "probes")]
    pub(super) n: usize,
    pub(super) failed: usize,
    #[serde(rename = "latency_ms")]
    pub(super) latency: Option<Latency>,
}

pub(super) fn probes_in(data: &MonitorData, ph: Phase) -> ProbeSummary {
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

/// RSS samples of a phase, bytes.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(super) struct RssSummary {
    pub(super) min: u64,
    pub(super) max: u64,
    pub(super) first: u64,
    pub(super) last: u64,
}

pub(super) fn rss_in(data: &MonitorData, ph: Phase) -> Option<RssSummary> {
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

/// Max and mean of the polled queue in-flight count in a phase.
pub(super) fn inflight_in(data: &MonitorData, ph: Phase) -> Option<(i64, f64)> {
    let v: Vec<i64> = data
        .inflight
        .iter()
        .filter(|(t, _)| ph.contains(*t))
        .map(|(_, n)| *n)
        .collect();
    let max = *v.iter().max()?;
    Some((max, v.iter().sum::<i64>() as f64 / v.len() as f64))
}

/// Share of QRF polls per state in a phase (in a fixed order).
pub(super) fn state_shares(data: &MonitorData, ph: Phase) -> Vec<(&'static str, f64)> {
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

/// State changes seen by the poller: `(when, new state)`, the first entry
/// being the state at the start.
pub(super) fn transitions(data: &MonitorData) -> Vec<(Instant, &'static str)> {
    let mut out: Vec<(Instant, &'static str)> = Vec::new();
    for &(t, s) in &data.states {
        if out.last().is_none_or(|l| l.1 != s) {
            out.push((t, s));
        }
    }
    out
}

pub(super) fn secs_rel(t: Instant, epoch: Instant) -> f64 {
    if t >= epoch {
        (t - epoch).as_secs_f64()
    } else {
        -(epoch - t).as_secs_f64()
    }
}
