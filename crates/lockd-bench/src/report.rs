//! Reports: where the text goes, number formats, the comparison table
//! shared by `lease` and `queue`, and the JSON output.
//!
//! Each workload has one `Serialize` report type for a run: the JSON
//! summary is that type through serde, the text report is one function
//! that reads the same value.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::stats::Latency;

/// Where the human-readable report goes.
pub struct Report {
    /// Report on stderr (the JSON summary has stdout).
    pub to_stderr: bool,
}

impl Report {
    /// Prints one line of the report.
    pub fn line(&self, s: &str) {
        if self.to_stderr {
            eprintln!("{s}");
        } else {
            println!("{s}");
            let _ = std::io::stdout().flush();
        }
    }
}

/// How many error messages a run prints before staying quiet.
pub const PRINTED_ERRORS: usize = 5;

/// The first few error messages of a run, printed to stderr as they
/// happen; later ones are only counted (by the workload).
#[derive(Debug)]
pub struct ErrorLog {
    label: String,
    printed: AtomicUsize,
}

impl ErrorLog {
    /// A log whose lines start with `[label]`.
    pub fn new(label: &str) -> ErrorLog {
        ErrorLog {
            label: label.to_string(),
            printed: AtomicUsize::new(0),
        }
    }

    /// Prints `msg` (with `phase`, e.g. ` (warm-up)`) unless enough were.
    pub fn print(&self, phase: &str, msg: &str) {
        let n = self.printed.fetch_add(1, Ordering::Relaxed);
        if n < PRINTED_ERRORS {
            eprintln!("  [{}] error{phase}: {msg}", self.label);
        } else if n == PRINTED_ERRORS {
            eprintln!("  [{}] further errors are counted, not printed", self.label);
        }
    }
}

/// Prints `report` as one line of JSON on stdout. It goes through a
/// `serde_json::Value`, so object keys come out sorted.
pub fn print_json<T: Serialize>(report: &T) -> Result<(), String> {
    let v = serde_json::to_value(report).map_err(|e| format!("encoding the JSON summary: {e}"))?;
    println!("{v}");
    Ok(())
}

/// Serialises a duration as seconds (for `serialize_with`).
pub fn ser_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// CPUs of this machine (0 if unknown).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// `14210.4` → `14 210`.
pub fn group(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

/// Milliseconds with a precision that suits the magnitude.
pub fn fmt_ms(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// `1s`, `1.5s`, `250ms`.
pub fn fmt_dur(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// `0.043`, `0.52`, `1.9`, `12`.
pub fn fmt_ratio(v: f64) -> String {
    if !v.is_finite() {
        "n/a".to_string()
    } else if v < 0.1 {
        format!("{v:.3}")
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

/// `p50 1.2 ms, p99 3.4 ms, max 9.9 ms`.
pub fn p50_p99_max(l: &Latency) -> String {
    format!(
        "p50 {}, p99 {}, max {}",
        fmt_ms(l.p50),
        fmt_ms(l.p99),
        fmt_ms(l.max)
    )
}

/// `p50 1.2 ms p99 3.4 ms`, or `n/a`.
pub fn p50_p99(l: Option<Latency>) -> String {
    match l {
        Some(l) => format!("p50 {} p99 {}", fmt_ms(l.p50), fmt_ms(l.p99)),
        None => "n/a".to_string(),
    }
}

/// `p50 1.2 ms p99 3.4 ms max 9.9 ms`, or `n/a`.
pub fn p50_p99_max_or_na(l: Option<Latency>) -> String {
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

/// `(2 nodes, --ha concurrent)` for object-store runs, else nothing.
pub fn nodes_text(label: &str, nodes: u32) -> String {
    if !label.starts_with("s3x") {
        return String::new();
    }
    let plural = if nodes == 1 { "" } else { "s" };
    let ha = if label.ends_with("-failover") {
        "failover"
    } else {
        "concurrent"
    };
    format!(" ({nodes} node{plural}, --ha {ha})")
}

/// `errors by kind (whole run): acquire 409 cas_mismatch × 3, …`.
pub fn error_kinds_line(report: &Report, kinds: &BTreeMap<String, u64>) {
    if kinds.is_empty() {
        return;
    }
    let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} × {n}")).collect();
    report.line(&format!(
        "    errors by kind (whole run, warm-up and drain included): {}",
        list.join(", ")
    ));
}

/// One row of the comparison table.
#[derive(Debug, Clone)]
pub struct CompareRow {
    /// `mem`, `disk`, `s3x1`, …
    pub label: String,
    /// Units per second.
    pub rate: f64,
    /// Unit latency, if any unit completed.
    pub latency: Option<Latency>,
}

/// Ratios of `row` to `reference`: throughput, p50, p99 (NaN where a side
/// has no value, e.g. no latency samples when nothing completed).
pub fn ratios(row: &CompareRow, reference: Option<&CompareRow>) -> Option<(f64, f64, f64)> {
    let r = reference?;
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let lat = |f: fn(&Latency) -> u64| match (row.latency, r.latency) {
        (Some(a), Some(b)) => div(f(&a) as f64, f(&b) as f64),
        _ => f64::NAN,
    };
    Some((div(row.rate, r.rate), lat(|l| l.p50), lat(|l| l.p99)))
}

/// [`ratios`] for the JSON summary (`null` where not finite).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratios {
    /// Throughput ratio.
    pub throughput: Option<f64>,
    /// p50 ratio.
    pub p50: Option<f64>,
    /// p99 ratio.
    pub p99: Option<f64>,
}

impl Ratios {
    /// `row` ÷ `reference`, `None` without a reference.
    pub fn of(row: &CompareRow, reference: Option<&CompareRow>) -> Option<Ratios> {
        let finite = |v: f64| v.is_finite().then_some(v);
        ratios(row, reference).map(|(t, p50, p99)| Ratios {
            throughput: finite(t),
            p50: finite(p50),
            p99: finite(p99),
        })
    }
}

/// A run's ratios to `disk` and to `s3x1` measured in the same invocation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RatiosVs {
    /// ÷ disk.
    pub vs_disk: Option<Ratios>,
    /// ÷ s3 with one node.
    pub vs_s3_1node: Option<Ratios>,
}

impl RatiosVs {
    /// `row` against the `disk` and `s3x1` rows of `rows`.
    pub fn of(row: &CompareRow, rows: &[CompareRow]) -> RatiosVs {
        let find = |l: &str| rows.iter().find(|r| r.label == l);
        RatiosVs {
            vs_disk: Ratios::of(row, find("disk")),
            vs_s3_1node: Ratios::of(row, find("s3x1")),
        }
    }
}

/// The `vs disk` / `vs s3x1` table (only when object-store runs exist).
pub fn comparison_lines(
    report: &Report,
    title: &str,
    unit: &str,
    latency: &str,
    rows: &[CompareRow],
) {
    if !rows.iter().any(|r| r.label.starts_with("s3x")) {
        return;
    }
    let find = |l: &str| rows.iter().find(|r| r.label == l);
    let (disk, s3x1) = (find("disk"), find("s3x1"));
    report.line(&format!(
        "{title} (same invocation; {latency}; ratios = run ÷ reference, for latency lower is better):"
    ));
    let head = |reference: &str| {
        format!(
            "{:>12} {:>6} {:>6}",
            format!("{reference} rate"),
            "p50",
            "p99"
        )
    };
    report.line(&format!(
        "    {:<6} {:>10} {:>9} {:>9}   {}   {}",
        "run",
        unit,
        "p50",
        "p99",
        head("÷disk"),
        head("÷s3x1")
    ));
    for row in rows {
        let (p50, p99) = row.latency.map_or(("n/a".into(), "n/a".into()), |l| {
            (fmt_ms(l.p50), fmt_ms(l.p99))
        });
        let cols = |reference: Option<&CompareRow>| match ratios(row, reference) {
            Some((t, a, b)) => format!(
                "{:>12} {:>6} {:>6}",
                fmt_ratio(t),
                fmt_ratio(a),
                fmt_ratio(b)
            ),
            None => format!("{:>26}", "n/a"),
        };
        report.line(&format!(
            "    {:<6} {:>10} {:>9} {:>9}   {}   {}",
            row.label,
            group(row.rate),
            p50,
            p99,
            cols(disk),
            cols(s3x1)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(14210.4), "14 210");
        assert_eq!(group(1234567.0), "1 234 567");
    }

    #[test]
    fn formats_durations() {
        assert_eq!(fmt_dur(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_dur(Duration::ZERO), "0s");
        assert_eq!(fmt_dur(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_dur(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn comparison_ratios() {
        let lat = |p50, p99| {
            Some(Latency {
                p50,
                p99,
                max: p99,
                mean: p50,
                ..Latency::default()
            })
        };
        let disk = CompareRow {
            label: "disk".into(),
            rate: 1000.0,
            latency: lat(4, 8),
        };
        let s3x2 = CompareRow {
            label: "s3x2".into(),
            rate: 250.0,
            latency: lat(16, 80),
        };
        let (t, p50, p99) = ratios(&s3x2, Some(&disk)).expect("ratios");
        assert!((t - 0.25).abs() < 1e-9 && (p50 - 4.0).abs() < 1e-9 && (p99 - 10.0).abs() < 1e-9);
        assert!(ratios(&s3x2, None).is_none());
        let empty = CompareRow {
            label: "s3x1".into(),
            rate: 0.0,
            latency: None,
        };
        let (t, p50, p99) = ratios(&empty, Some(&disk)).expect("ratios");
        assert!(t == 0.0 && p50.is_nan() && p99.is_nan());
        assert!(ratios(&disk, Some(&empty)).is_some_and(|(t, _, _)| t.is_nan()));
        assert_eq!(
            serde_json::to_value(Ratios::of(&empty, Some(&disk))).expect("json"),
            serde_json::json!({ "throughput": 0.0, "p50": null, "p99": null })
        );
        assert_eq!(Ratios::of(&s3x2, None), None);
        let vs = RatiosVs::of(&s3x2, &[disk.clone(), s3x2.clone()]);
        assert!(vs.vs_disk.is_some() && vs.vs_s3_1node.is_none());
        assert_eq!(fmt_ratio(0.0432), "0.043");
        assert_eq!(fmt_ratio(1.234), "1.23");
        assert_eq!(fmt_ratio(12.4), "12");
        assert_eq!(fmt_ratio(f64::NAN), "n/a");
    }
}
