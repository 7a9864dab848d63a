//! Latency samples and their summaries: the one place percentiles are
//! computed (nearest rank), for every workload.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde::Serialize as DeriveSerialize;

/// Index of the acquire request in per-op samples.
pub const OP_ACQUIRE: usize = 0;
/// Index of the update request in per-op samples.
pub const OP_UPDATE: usize = 1;
/// Index of the release request in per-op samples.
pub const OP_RELEASE: usize = 2;
/// Names of the per-op samples, by index.
pub const OP_NAMES: [&str; 3] = ["acquire", "update", "release"];

/// What one client task measured.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Latency of every successful unit inside the window, in ns.
    pub units: Vec<u64>,
    /// Per-request latencies of lease cycles inside the window, in ns.
    pub ops: [Vec<u64>; 3],
    /// Failed units inside the window.
    pub errors: u64,
    /// Successful units during warm-up.
    pub warmup_units: u64,
    /// Failed units during warm-up.
    pub warmup_errors: u64,
    /// Failed units of the whole run by [`crate::wire::error_kind`].
    pub error_kinds: BTreeMap<String, u64>,
}

impl ClientStats {
    /// Records one successful unit.
    pub fn record(&mut self, unit_ns: u64, op_ns: &[u64; 3]) {
        self.units.push(unit_ns);
        for (samples, &ns) in self.ops.iter_mut().zip(op_ns) {
            if ns > 0 {
                samples.push(ns);
            }
        }
    }
}

/// Percentiles of a sample set, in ns.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 95th percentile (reported by the SDK workloads only).
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest sample.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: u64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples` (sorted in place).
    pub fn of(samples: &mut [u64]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let idx = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[idx.clamp(1, samples.len()) - 1]
        };
        let sum: u128 = samples.iter().map(|&v| v as u128).sum();
        Some(Latency {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: samples[samples.len() - 1],
            mean: (sum / samples.len() as u128) as u64,
        })
    }
}

/// `{"max":…, "mean":…, "p50":…, "p99":…}` in milliseconds.
impl Serialize for Latency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("max", &ms(self.max))?;
        m.serialize_entry("mean", &ms(self.mean))?;
        m.serialize_entry("p50", &ms(self.p50))?;
        m.serialize_entry("p99", &ms(self.p99))?;
        m.end()
    }
}

/// A [`Latency`] serialised with its p95 as well:
/// `{"max","mean","p50","p95","p99"}` in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct WithP95(pub Latency);

impl Serialize for WithP95 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let l = &self.0;
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("max", &ms(l.max))?;
        m.serialize_entry("mean", &ms(l.mean))?;
        m.serialize_entry("p50", &ms(l.p50))?;
        m.serialize_entry("p95", &ms(l.p95))?;
        m.serialize_entry("p99", &ms(l.p99))?;
        m.end()
    }
}

/// Serialises nanoseconds as milliseconds (for `serialize_with`).
pub fn ser_ms<S: Serializer>(ns: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(ms(*ns))
}

/// Nanoseconds to milliseconds, rounded to microseconds.
pub fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

/// Summary of one measured run. As JSON:
/// `{units, latency_ms, ops_latency_ms: {acquire: …}, errors, warmup_units, warmup_errors}`.
#[derive(Debug, Clone, Default, DeriveSerialize)]
pub struct Summary {
    /// Successful units inside the window.
    pub units: u64,
    /// Units per second over the window.
    #[serde(skip)]
    pub rate: f64,
    /// Unit latency.
    #[serde(rename = "latency_ms")]
    pub latency: Latency,
    /// Per-request latency of lease cycles (empty for the baseline).
    #[serde(rename = "ops_latency_ms", serialize_with = "ser_ops")]
    pub ops: Vec<(&'static str, Latency)>,
    /// Failed units inside the window.
    pub errors: u64,
    /// Successful units during warm-up.
    pub warmup_units: u64,
    /// Failed units during warm-up.
    pub warmup_errors: u64,
    /// Failed units of the whole run (warm-up included) by kind.
    #[serde(skip)]
    pub error_kinds: BTreeMap<String, u64>,
}

fn ser_ops<S: Serializer>(ops: &[(&'static str, Latency)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(ops.iter().map(|(name, l)| (*name, l)))
}

impl Summary {
    /// Merges the per-client results of a run over a `window`.
    pub fn from_clients(clients: Vec<ClientStats>, window: Duration) -> Summary {
        let mut units = Vec::new();
        let mut ops: [Vec<u64>; 3] = Default::default();
        let mut s = Summary::default();
        for c in clients {
            units.extend_from_slice(&c.units);
            for (all, mine) in ops.iter_mut().zip(c.ops.iter()) {
                all.extend_from_slice(mine);
            }
            s.errors += c.errors;
            s.warmup_units += c.warmup_units;
            s.warmup_errors += c.warmup_errors;
            for (kind, n) in c.error_kinds {
                *s.error_kinds.entry(kind).or_default() += n;
            }
        }
        s.units = units.len() as u64;
        s.rate = s.units as f64 / window.as_secs_f64().max(1e-9);
        s.latency = Latency::of(&mut units).unwrap_or_default();
        for (name, samples) in OP_NAMES.iter().zip(ops.iter_mut()) {
            if let Some(l) = Latency::of(samples) {
                s.ops.push((name, l));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let l = Latency::of(&mut v).unwrap_or_default();
        assert_eq!((l.p50, l.p95, l.p99, l.max, l.mean), (50, 95, 99, 100, 50));
        assert_eq!(
            serde_json::to_string(&l).expect("json"),
            r#"{"max":0.0,"mean":0.0,"p50":0.0,"p99":0.0}"#
        );
        assert!(Latency::of(&mut []).is_none());
        let mut one = vec![7];
        let l = Latency::of(&mut one).unwrap_or_default();
        assert_eq!((l.p50, l.p99, l.max), (7, 7, 7));
    }

    #[test]
    fn summary_merges_clients() {
        let mut a = ClientStats::default();
        a.record(10, &[1, 2, 3]);
        a.errors = 1;
        a.error_kinds.insert("acquire 409 x".into(), 1);
        let mut b = ClientStats::default();
        b.record(20, &[0, 0, 0]);
        b.error_kinds.insert("acquire 409 x".into(), 2);
        let s = Summary::from_clients(vec![a, b], Duration::from_secs(2));
        assert_eq!(s.units, 2);
        assert_eq!(s.errors, 1);
        assert!((s.rate - 1.0).abs() < 1e-9);
        assert_eq!(s.ops.len(), 3);
        assert_eq!(s.ops[0].1.max, 1);
        assert_eq!(s.error_kinds.get("acquire 409 x"), Some(&3));
    }
}
