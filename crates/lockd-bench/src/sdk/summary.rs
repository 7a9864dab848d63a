//! Summaries of the SDK workloads: per class of operation and in total,
//! as a text table and (serde) as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::worker::Measured;
use super::Workload;
use crate::report::{fmt_ms, group, ser_secs};
use crate::stats::{Latency, WithP95};

/// Rounds a rate to one decimal for the JSON summary.
fn ser_tenth<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((v * 10.0).round() / 10.0)
}

/// A latency with its p95, in milliseconds.
fn ser_p95<S: Serializer>(l: &Latency, s: S) -> Result<S::Ok, S::Error> {
    WithP95(*l).serialize(s)
}

/// Throughput and latency of one class of operations.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ClassSummary {
    /// `cycle`, `read`, …, or `total`.
    #[serde(rename = "op")]
    pub(super) name: String,
    /// Operations measured.
    #[serde(rename = "count")]
    pub(super) ops: u64,
    /// Operations per second.
    #[serde(serialize_with = "ser_tenth")]
    pub(super) ops_per_s: f64,
    /// Their latency (zero when there were none).
    #[serde(rename = "latency_ms", serialize_with = "ser_p95")]
    pub(super) latency: Latency,
}

/// The summary of `samples` measured over `elapsed`.
pub(super) fn class_summary(name: &str, samples: &mut [u64], elapsed: Duration) -> ClassSummary {
    let n = samples.len() as u64;
    ClassSummary {
        name: name.into(),
        ops: n,
        ops_per_s: n as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: Latency::of(samples).unwrap_or_default(),
    }
}

/// One system at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Summary {
    /// `lockd` or `etcd`.
    pub(super) system: String,
    /// What it ran against.
    pub(super) target: String,
    /// Concurrent clients.
    pub(super) concurrency: u32,
    /// Time measured.
    #[serde(rename = "elapsed_s", serialize_with = "ser_secs")]
    pub(super) elapsed: Duration,
    /// Operations in total.
    pub(super) ops: u64,
    /// Operations per second in total.
    #[serde(serialize_with = "ser_tenth")]
    pub(super) ops_per_s: f64,
    /// All classes together.
    pub(super) total: ClassSummary,
    /// Per class of the workload.
    pub(super) classes: Vec<ClassSummary>,
    /// Failed operations by code.
    pub(super) errors: BTreeMap<String, u64>,
    /// Failed operations in total.
    pub(super) errors_total: u64,
}

/// Summarises what the windows of one system measured.
pub(super) fn summarize(
    system: &str,
    target: &str,
    concurrency: u32,
    wl: Workload,
    m: Measured,
) -> Summary {
    let mut all: Vec<u64> = m.classes.iter().flatten().copied().collect();
    let total = class_summary("total", &mut all, m.elapsed);
    let mut classes = Vec::new();
    let mut raw = m.classes;
    raw.resize_with(wl.classes().len(), Vec::new);
    for (name, samples) in wl.classes().iter().zip(raw.iter_mut()) {
        classes.push(class_summary(name, samples, m.elapsed));
    }
    Summary {
        system: system.into(),
        target: target.into(),
        concurrency,
        elapsed: m.elapsed,
        ops: total.ops,
        ops_per_s: total.ops_per_s,
        total,
        classes,
        errors_total: m.errors.values().sum(),
        errors: m.errors,
    }
}

/// The text table of a summary.
pub(super) fn table(s: &Summary) -> String {
    let mut out = format!(
        "{} ({}), {} clients, {:.1}s measured\n",
        s.system,
        s.target,
        s.concurrency,
        s.elapsed.as_secs_f64()
    );
    out += &format!(
        "    {:<12} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10}\n",
        "op", "count", "ops/s", "p50", "p95", "p99", "max"
    );
    let rows: Vec<&ClassSummary> = if s.classes.len() > 1 {
        s.classes.iter().chain(std::iter::once(&s.total)).collect()
    } else {
        s.classes.iter().collect()
    };
    for c in rows {
        let l = &c.latency;
        out += &format!(
            "    {:<12} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10}\n",
            c.name,
            c.ops,
            group(c.ops_per_s),
            fmt_ms(l.p50),
            fmt_ms(l.p95),
            fmt_ms(l.p99),
            fmt_ms(l.max)
        );
    }
    if s.errors_total == 0 {
        out += "    errors: 0\n";
    } else {
        let list: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k} × {v}")).collect();
        out += &format!("    errors: {} ({})\n", s.errors_total, list.join(", "));
    }
    out
}

/// lockd ÷ etcd: throughput and p99 ratios.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct EtcdRatio {
    /// Throughput ratio.
    pub(super) throughput: f64,
    /// p99 ratio (lower is better for lockd).
    pub(super) p99: f64,
}

impl EtcdRatio {
    /// `l` ÷ `e`.
    pub(super) fn of(l: &Summary, e: &Summary) -> EtcdRatio {
        EtcdRatio {
            throughput: l.total.ops_per_s / e.total.ops_per_s.max(1e-9),
            p99: l.total.latency.p99 as f64 / (e.total.latency.p99.max(1)) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=100).collect();
        let s = class_summary("x", &mut v, Duration::from_secs(2));
        let l = s.latency;
        assert_eq!((l.p50, l.p95, l.p99, l.max), (50, 95, 99, 100));
        assert_eq!(s.ops, 100);
        assert!((s.ops_per_s - 50.0).abs() < 1e-9);
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["op"], "x");
        assert_eq!(v["count"], 100);
        assert_eq!(v["latency_ms"]["p95"], 0.0);
    }
}
