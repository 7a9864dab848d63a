//! The `txn` report: one `Serialize` value, rendered as text from the
//! same fields.

use serde::Serialize;

use super::cycle::Window;
use crate::report::{error_kinds_line, fmt_ms, fmt_ratio, group, Report};
use crate::stats::Latency;

/// One round for one N: A and B once each.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// 0-based.
    pub round: u32,
    /// `a` or `b`: which side ran first.
    pub first: &'static str,
    /// N keys in one transaction.
    pub a: Window,
    /// N independent cycles.
    pub b: Window,
}

/// Medians over the rounds of one side.
#[derive(Debug, Clone, Serialize)]
pub struct SideMedians {
    /// Median cycles/s.
    pub cycles_per_s: f64,
    /// Median keys/s (cycles/s × N).
    pub keys_per_s: f64,
    /// Median of the rounds' p50 cycle latency, ms.
    pub p50_ms: f64,
    /// Median of the rounds' p99 cycle latency, ms.
    pub p99_ms: f64,
    /// Median of the rounds' p50 time per cycle in its N acquires, ms.
    pub acquires_p50_ms: f64,
    /// Median of the rounds' p50 time per cycle in its N updates, ms.
    pub updates_p50_ms: f64,
    /// Median of the rounds' p50 time per cycle in its N releases, ms.
    pub releases_p50_ms: f64,
    /// Failed cycles in all measured windows.
    pub errors: u64,
}

/// One key's committed counter against what the bench expects.
#[derive(Debug, Clone, Serialize)]
pub struct KeyState {
    /// The key.
    pub key: String,
    /// `counter` of the committed document (`null` if unreadable).
    pub counter: Option<i64>,
    /// Counter of the key's last acknowledged commit (0: the seed).
    pub committed: i64,
    /// Counter of a later cycle whose outcome is unknown (its deciding
    /// release got no answer), if any.
    pub maybe: Option<i64>,
}

/// One client's keys that did not pass the check.
#[derive(Debug, Clone, Serialize)]
pub struct SetCheck {
    /// Client index.
    pub client: usize,
    /// Its keys.
    pub keys: Vec<KeyState>,
}

/// The check of one side: per client, its N keys.
#[derive(Debug, Clone, Serialize)]
pub struct SideCheck {
    /// Clients checked.
    pub clients: usize,
    /// Clients whose keys passed.
    pub passed: usize,
    /// Whether every client passed.
    pub ok: bool,
    /// Clients that failed (at most 10).
    pub failures: Vec<SetCheck>,
}

impl SideCheck {
    /// An empty check (nothing looked at yet).
    pub fn empty() -> SideCheck {
        SideCheck {
            clients: 0,
            passed: 0,
            ok: true,
            failures: Vec::new(),
        }
    }

    /// Adds one client's keys; `atomic` also requires every key to hold
    /// the same counter.
    pub fn add(&mut self, client: usize, keys: Vec<KeyState>, atomic: bool) {
        self.clients += 1;
        if set_passes(&keys, atomic) {
            self.passed += 1;
            return;
        }
        self.ok = false;
        if self.failures.len() < 10 {
            self.failures.push(SetCheck { client, keys });
        }
    }
}

/// Whether a set of keys passes: each holds its committed counter (or the
/// counter of a cycle whose outcome is unknown) and, when `atomic`, all
/// hold the same one.
pub fn set_passes(keys: &[KeyState], atomic: bool) -> bool {
    let each = keys.iter().all(|k| {
        k.counter
            .is_some_and(|c| c == k.committed || Some(c) == k.maybe)
    });
    let same = !atomic || keys.windows(2).all(|w| w[0].counter == w[1].counter);
    each && same
}

/// Everything measured for one N.
#[derive(Debug, Clone, Serialize)]
pub struct PerN {
    /// Keys per cycle.
    pub keys: u32,
    /// Every round.
    pub rounds: Vec<Round>,
    /// Side A over the rounds.
    pub a: SideMedians,
    /// Side B over the rounds.
    pub b: SideMedians,
    /// Median cycles/s A ÷ B, the cost of atomicity (`null` when B
    /// completed none).
    pub a_over_b: Option<f64>,
    /// Side A: each client's keys hold one and the same last committed
    /// counter.
    pub check_a: SideCheck,
    /// Side B: each key holds its own last committed counter.
    pub check_b: SideCheck,
}

/// `lockd-bench txn` as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct TxnReport {
    /// `lockd-bench`.
    pub tool: &'static str,
    /// `txn`.
    pub workload: &'static str,
    /// `mem`, `disk` or `remote`.
    pub store: String,
    /// Store URL or server URL.
    pub target: String,
    /// Run id (part of the keys).
    pub run_id: String,
    /// Namespace of the keys.
    pub namespace: String,
    /// Concurrent clients (own keys each).
    pub clients: u32,
    /// Size of each written document, bytes.
    pub doc_bytes: u32,
    /// Warm-up before each window, seconds.
    pub warmup_s: f64,
    /// Each window, seconds.
    pub duration_s: f64,
    /// Tokio worker threads.
    pub worker_threads: usize,
    /// CPUs of the machine.
    pub cpus: usize,
    /// One entry per `--keys` value.
    pub results: Vec<PerN>,
}

/// Median (mean of the middle two for an even count; non-finite values
/// left out); 0 when empty.
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

/// `a ÷ b`, `None` when `b` is not a positive number.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && b.is_finite() && a.is_finite()).then(|| a / b)
}

fn ns_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl SideMedians {
    /// Medians of one side's windows.
    pub fn of<'a>(w: impl Iterator<Item = &'a Window> + Clone) -> SideMedians {
        let m = |f: &dyn Fn(&Window) -> f64| median(&w.clone().map(f).collect::<Vec<_>>());
        let op = |name: &'static str| {
            move |w: &Window| {
                w.summary
                    .ops
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(f64::NAN, |(_, l)| ns_ms(l.p50))
            }
        };
        // A window without a completed cycle has no latency: leave it out.
        let lat = |f: fn(&Latency) -> u64| {
            move |w: &Window| {
                if w.summary.units == 0 {
                    f64::NAN
                } else {
                    ns_ms(f(&w.summary.latency))
                }
            }
        };
        SideMedians {
            cycles_per_s: m(&|w| w.cycles_per_s),
            keys_per_s: m(&|w| w.keys_per_s),
            p50_ms: m(&lat(|l| l.p50)),
            p99_ms: m(&lat(|l| l.p99)),
            acquires_p50_ms: m(&op("acquire")),
            updates_p50_ms: m(&op("update")),
            releases_p50_ms: m(&op("release")),
            errors: w.clone().map(|w| w.summary.errors).sum(),
        }
    }
}

fn latency(l: &Latency, units: u64) -> String {
    if units == 0 {
        "n/a".into()
    } else {
        format!("p50 {} p99 {}", fmt_ms(l.p50), fmt_ms(l.p99))
    }
}

fn render_check(out: &Report, side: &str, what: &str, c: &SideCheck) {
    out.line(&format!(
        "  check {side}: {} of {} clients' keys {what}: {}",
        c.passed,
        c.clients,
        if c.ok { "OK" } else { "FAILED" }
    ));
    for f in &c.failures {
        let keys: Vec<String> = f
            .keys
            .iter()
            .map(|k| {
                format!(
                    "{}={} (committed {}{})",
                    k.key,
                    k.counter.map_or("unreadable".into(), |n| n.to_string()),
                    k.committed,
                    k.maybe
                        .map_or(String::new(), |m| format!(" or unknown {m}"))
                )
            })
            .collect();
        out.line(&format!("    client {}: {}", f.client, keys.join(", ")));
    }
}

impl TxnReport {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.results.iter().all(|r| r.check_a.ok && r.check_b.ok)
    }

    /// The human-readable report.
    pub fn render(&self, out: &Report) {
        out.line(&format!(
            "txn on {} ({}): {} clients on keys of their own, {} B documents, \
             {} rounds of {}s (+{}s warm-up) per side and N",
            self.store,
            self.target,
            self.clients,
            group(f64::from(self.doc_bytes)),
            self.results.first().map_or(0, |r| r.rounds.len()),
            self.duration_s,
            self.warmup_s
        ));
        out.line(
            "  A: N × acquire (one fresh txn_id) → N × update → release #1 (commit decides all) \
             → N−1 × release (idempotent)",
        );
        out.line("  B: N × (acquire → update → release), implicit transactions; 3N requests each");
        for r in &self.results {
            out.line(&format!("  N = {}", r.keys));
            for rd in &r.rounds {
                for (side, w) in [("A", &rd.a), ("B", &rd.b)] {
                    out.line(&format!(
                        "    round {} ({} first) {side}: {:>7} cycles/s {:>8} keys/s  {}  errors {}",
                        rd.round + 1,
                        rd.first.to_uppercase(),
                        group(w.cycles_per_s),
                        group(w.keys_per_s),
                        latency(&w.summary.latency, w.summary.units),
                        w.summary.errors
                    ));
                    error_kinds_line(out, &w.summary.error_kinds);
                }
            }
            for (side, m) in [("A txn", &r.a), ("B independent", &r.b)] {
                out.line(&format!(
                    "    {side:<13} median {:>7} cycles/s {:>8} keys/s  p50 {:.2} ms  p99 {:.2} ms  \
                     (acquires {:.2} + updates {:.2} + releases {:.2} ms at p50)  errors {}",
                    group(m.cycles_per_s),
                    group(m.keys_per_s),
                    m.p50_ms,
                    m.p99_ms,
                    m.acquires_p50_ms,
                    m.updates_p50_ms,
                    m.releases_p50_ms,
                    m.errors
                ));
            }
            out.line(&format!(
                "    A/B cycles/s (the cost of atomicity): {}",
                r.a_over_b.map_or("n/a".into(), fmt_ratio)
            ));
            render_check(
                out,
                "A",
                "hold one and the same last committed counter",
                &r.check_a,
            );
            render_check(
                out,
                "B",
                "each hold their last committed counter",
                &r.check_b,
            );
        }
        if self.results.len() > 1 {
            let line: Vec<String> = self
                .results
                .iter()
                .map(|r| {
                    format!(
                        "N={}: {}",
                        r.keys,
                        r.a_over_b.map_or("n/a".into(), fmt_ratio)
                    )
                })
                .collect();
            out.line(&format!("  A/B by N: {}", line.join(", ")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(counter: Option<i64>, committed: i64, maybe: Option<i64>) -> KeyState {
        KeyState {
            key: "k".into(),
            counter,
            committed,
            maybe,
        }
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert_eq!(ratio(300.0, 600.0), Some(0.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn sets_pass_only_when_every_key_holds_an_expected_counter() {
        assert!(set_passes(
            &[k(Some(3), 3, None), k(Some(3), 3, None)],
            true
        ));
        // An unknown outcome may have committed, on every key alike…
        assert!(set_passes(
            &[k(Some(4), 3, Some(4)), k(Some(4), 3, Some(4))],
            true
        ));
        // …but a transaction seen on one key and not the other is torn.
        assert!(!set_passes(
            &[k(Some(4), 3, Some(4)), k(Some(3), 3, Some(4))],
            true
        ));
        assert!(set_passes(
            &[k(Some(4), 3, Some(4)), k(Some(3), 3, Some(4))],
            false
        ));
        assert!(!set_passes(&[k(Some(2), 3, None)], false));
        assert!(!set_passes(&[k(None, 0, None)], false));
        let mut c = SideCheck::empty();
        c.add(0, vec![k(Some(1), 1, None)], true);
        c.add(1, vec![k(Some(1), 1, None), k(Some(2), 2, None)], true);
        assert_eq!(
            (c.clients, c.passed, c.ok, c.failures.len()),
            (2, 1, false, 1)
        );
        assert_eq!(c.failures[0].client, 1);
    }
}
