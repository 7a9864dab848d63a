//! The `mutate` report: one `Serialize` value, rendered as text from the
//! same fields.

use serde::Serialize;

use super::cycle::Window;
use crate::report::{error_kinds_line, fmt_ms, fmt_ratio, group, Report};
use crate::stats::Latency;

/// One round: A and B once each.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// 0-based.
    pub round: u32,
    /// `a` or `b`: which side ran first.
    pub first: &'static str,
    /// acquire → mutate → release.
    pub a: Window,
    /// acquire → get → update → release.
    pub b: Window,
}

/// Medians over the rounds of one side.
#[derive(Debug, Clone, Serialize)]
pub struct SideMedians {
    /// Median cycles/s.
    pub cycles_per_s: f64,
    /// Median of the rounds' p50 cycle latency, ms.
    pub p50_ms: f64,
    /// Median of the rounds' p99 cycle latency, ms.
    pub p99_ms: f64,
    /// Median request body bytes per cycle.
    pub bytes_sent_per_cycle: f64,
    /// Median answer body bytes per cycle.
    pub bytes_received_per_cycle: f64,
    /// Failed cycles in all windows.
    pub errors: u64,
}

/// One key's counter against the cycles committed on it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyCheck {
    /// The key.
    pub key: String,
    /// Cycles that completed (release answered 2xx), warm-up included.
    pub committed: u64,
    /// The committed document's `counter` (`null` if unreadable).
    pub counter: Option<i64>,
}

/// The correctness check over every key of both sides.
#[derive(Debug, Clone, Serialize)]
pub struct CounterCheck {
    /// Keys checked.
    pub keys: usize,
    /// Keys whose counter equals their committed cycles.
    pub matching: usize,
    /// Whether every key matched.
    pub ok: bool,
    /// Keys that did not match (at most 20).
    pub mismatches: Vec<KeyCheck>,
}

/// `lockd-bench mutate` as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct MutateReport {
    /// `lockd-bench`.
    pub tool: &'static str,
    /// `mutate`.
    pub workload: &'static str,
    /// `mem`, `disk` or `remote`.
    pub store: String,
    /// Store URL or server URL.
    pub target: String,
    /// Run id (part of the keys).
    pub run_id: String,
    /// Namespace of the keys.
    pub namespace: String,
    /// Concurrent clients (one key each per side).
    pub clients: u32,
    /// Size of the seeded document, bytes.
    pub doc_bytes: u32,
    /// The mutation of side A.
    pub mutation: &'static str,
    /// Warm-up before each window, seconds.
    pub warmup_s: f64,
    /// Each window, seconds.
    pub duration_s: f64,
    /// Tokio worker threads.
    pub worker_threads: usize,
    /// CPUs of the machine.
    pub cpus: usize,
    /// Every round.
    pub rounds: Vec<Round>,
    /// Side A over the rounds.
    pub a: SideMedians,
    /// Side B over the rounds.
    pub b: SideMedians,
    /// Median cycles/s A ÷ B (`null` when B completed none).
    pub a_over_b: Option<f64>,
    /// Counters vs committed cycles.
    pub check: CounterCheck,
}

/// Median (mean of the middle two for an even count); 0 when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

impl SideMedians {
    /// Medians of one side's windows.
    pub fn of<'a>(w: impl Iterator<Item = &'a Window> + Clone) -> SideMedians {
        let m = |f: fn(&Window) -> f64| median(&w.clone().map(f).collect::<Vec<_>>());
        SideMedians {
            cycles_per_s: m(|w| w.cycles_per_s),
            p50_ms: m(|w| ns_ms(w.summary.latency.p50)),
            p99_ms: m(|w| ns_ms(w.summary.latency.p99)),
            bytes_sent_per_cycle: m(|w| w.bytes_sent_per_cycle),
            bytes_received_per_cycle: m(|w| w.bytes_received_per_cycle),
            errors: w.clone().map(|w| w.summary.errors).sum(),
        }
    }
}

fn ns_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn latency(l: &Latency, units: u64) -> String {
    if units == 0 {
        "n/a".into()
    } else {
        format!("p50 {} p99 {}", fmt_ms(l.p50), fmt_ms(l.p99))
    }
}

impl MutateReport {
    /// The human-readable report.
    pub fn render(&self, out: &Report) {
        out.line(&format!(
            "mutate on {} ({}): {} clients, one {} B document per client and side, \
             {} rounds of {}s (+{}s warm-up) per side",
            self.store,
            self.target,
            self.clients,
            group(f64::from(self.doc_bytes)),
            self.rounds.len(),
            self.duration_s,
            self.warmup_s
        ));
        out.line(&format!(
            "  A: acquire → mutate {:?} → release;  B: acquire → get → +1 locally → update → release",
            self.mutation
        ));
        for r in &self.rounds {
            for (side, w) in [("A", &r.a), ("B", &r.b)] {
                out.line(&format!(
                    "  round {} ({} first) {side}: {:>8} cycles/s  {}  sent {} B/cycle  errors {}",
                    r.round + 1,
                    r.first.to_uppercase(),
                    group(w.cycles_per_s),
                    latency(&w.summary.latency, w.summary.units),
                    group(w.bytes_sent_per_cycle),
                    w.summary.errors
                ));
                error_kinds_line(out, &w.summary.error_kinds);
            }
        }
        for (side, m) in [("A mutate", &self.a), ("B get+update", &self.b)] {
            out.line(&format!(
                "  {side:<13} median {:>8} cycles/s  p50 {:.2} ms  p99 {:.2} ms  \
                 sent {} B/cycle  received {} B/cycle  errors {}",
                group(m.cycles_per_s),
                m.p50_ms,
                m.p99_ms,
                group(m.bytes_sent_per_cycle),
                group(m.bytes_received_per_cycle),
                m.errors
            ));
        }
        out.line(&format!(
            "  A/B cycles/s: {}",
            self.a_over_b.map_or("n/a".into(), fmt_ratio)
        ));
        let c = &self.check;
        out.line(&format!(
            "  counter check: {} of {} keys hold exactly their committed cycles: {}",
            c.matching,
            c.keys,
            if c.ok { "OK" } else { "FAILED" }
        ));
        for k in &c.mismatches {
            out.line(&format!(
                "    {}: counter {} but {} committed cycles",
                k.key,
                k.counter.map_or("unreadable".into(), |n| n.to_string()),
                k.committed
            ));
        }
    }
}
