//! The report of `lockd-bench query`: one `Serialize` value, rendered as
//! text by [`QueryReport::render`] and printed as JSON with `--json`.

use serde::Serialize;

use super::commit::LoadFigures;
use super::measure::{DocumentsFigures, EngineFigures, KeyCheck};
use crate::report::{fmt_ms, fmt_ratio, group, Report};
use crate::stats::Summary;

/// The target for the commit-cost ratio A/B: the index may cost
/// at most 20 % of the lease-cycle throughput.
pub const COMMIT_RATIO_TARGET: f64 = 0.8;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct QueryReport {
    pub tool: &'static str,
    pub workload: &'static str,
    /// `mem`, `disk` or `remote`.
    pub store: String,
    /// The store URL, or the server's URL.
    pub target: String,
    pub run_id: String,
    pub docs: u64,
    pub doc_bytes: usize,
    /// Buckets (N / 100): each `eq /bucket` matches about N / buckets keys.
    pub buckets: u64,
    pub seed: u64,
    pub clients: u32,
    pub worker_threads: usize,
    pub cpus: usize,
    /// The loaded namespace.
    pub namespace: String,
    pub load: LoadFigures,
    pub index_build: IndexBuild,
    pub memory: Memory,
    pub selective: SelectiveReport,
    pub commit_cost: CommitCost,
}

/// `POST /v1/index/flush` (`mode=wait`) after the load.
#[derive(Debug, Clone, Serialize)]
pub struct IndexBuild {
    /// `flushed`, or `no_route_tolerated` (a server without the route,
    /// accepted only with `--tolerate-missing-flush`).
    pub status: &'static str,
    /// How long the flush took, seconds.
    pub seconds: f64,
    /// The index sequence after it (0: absent).
    pub index_seq: u64,
    /// Whether the server still reported pending changes.
    pub pending: bool,
}

/// Resident memory of the server around the flush.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// Whose `VmRSS`: `this process (…)`, `pid N`, or `none`.
    pub source: String,
    pub rss_before_load_bytes: Option<u64>,
    pub rss_before_flush_bytes: Option<u64>,
    pub rss_after_flush_bytes: Option<u64>,
    pub rss_after_queries_bytes: Option<u64>,
    /// After the flush − before it: the index memory at N documents.
    pub index_bytes: Option<i64>,
}

impl Memory {
    /// `after − before` when both were read.
    pub fn diff(before: Option<u64>, after: Option<u64>) -> Option<i64> {
        Some(after? as i64 - before? as i64)
    }
}

/// Part 1: the selective query, index vs scan.
#[derive(Debug, Clone, Serialize)]
pub struct SelectiveReport {
    /// An example of the selector (the bucket varies per repetition).
    pub selector_example: String,
    pub limit: i64,
    pub index: EngineFigures,
    pub scan: EngineFigures,
    /// scan median ÷ index median.
    pub scan_over_index_median: Option<f64>,
    pub keys: KeyCheck,
    /// One documents-mode query per engine.
    pub documents: Vec<DocumentsFigures>,
}

/// One round of the commit-cost comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: u32,
    /// `a` or `b`: which namespace ran first this round.
    pub first: &'static str,
    pub a: Summary,
    pub a_cycles_per_s: f64,
    pub b: Summary,
    pub b_cycles_per_s: f64,
}

/// Part 3: lease cycles with and without an index.
#[derive(Debug, Clone, Serialize)]
pub struct CommitCost {
    /// Namespace with a built index (flushed and queried before the rounds).
    pub namespace_a: String,
    /// Namespace never queried.
    pub namespace_b: String,
    /// How A's index was built before the rounds.
    pub a_index: &'static str,
    pub clients: u32,
    pub keys_per_client: u32,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub rounds: Vec<Round>,
    pub a_median_cycles_per_s: f64,
    pub b_median_cycles_per_s: f64,
    /// A median ÷ B median.
    pub a_over_b: Option<f64>,
    pub target_ratio: f64,
    pub meets_target: Option<bool>,
}

/// The median of some rates (0 when there are none).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `a ÷ b` when both are positive and finite.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && a >= 0.0 && b > 0.0).then(|| a / b)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn opt_mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), mib)
}

fn ratio_text(r: Option<f64>) -> String {
    r.map_or("n/a".into(), fmt_ratio)
}

impl QueryReport {
    /// The text report.
    pub fn render(&self, report: &Report) {
        report.line(&format!(
            "lockd-bench query: {} documents of {} B on {} ({}), {} buckets (~{} keys each), \
             {} clients, seed {}, {} tokio worker threads, {} CPUs",
            group(self.docs as f64),
            self.doc_bytes,
            self.store,
            self.target,
            group(self.buckets as f64),
            self.docs / self.buckets.max(1),
            self.clients,
            self.seed,
            self.worker_threads,
            self.cpus
        ));
        let l = &self.load;
        report.line(&format!(
            "load: {} documents into namespace {} in {:.1}s = {} docs/s ({} clients, acquire → \
             update → release; {} attempts retried)",
            group(l.docs as f64),
            self.namespace,
            l.seconds,
            group(l.docs_per_s),
            l.clients,
            l.retried
        ));
        let b = &self.index_build;
        let status = match b.status {
            "flushed" => String::new(),
            _ => " — NO FLUSH ROUTE (404), tolerated by --tolerate-missing-flush: \
                  this is not an index build time"
                .to_string(),
        };
        report.line(&format!(
            "index build (POST /v1/index/flush mode=wait): {:.2}s, index_seq {}, pending {}{status}",
            b.seconds, b.index_seq, b.pending
        ));
        self.render_memory(report);
        self.render_selective(report);
        self.render_commit(report);
    }

    fn render_memory(&self, report: &Report) {
        let m = &self.memory;
        let index = m.index_bytes.map_or("n/a".into(), |d| {
            let sign = if d < 0 { "-" } else { "" };
            format!("{sign}{}", mib(d.unsigned_abs()))
        });
        let per_doc = m
            .index_bytes
            .map(|d| {
                format!(
                    " ({:.0} B per document)",
                    d as f64 / self.docs.max(1) as f64
                )
            })
            .unwrap_or_default();
        report.line(&format!(
            "index memory at {} docs: {index}{per_doc} = VmRSS after the flush {} − before it {} \
             [{}; before the load {}, after the queries {}]",
            group(self.docs as f64),
            opt_mib(m.rss_after_flush_bytes),
            opt_mib(m.rss_before_flush_bytes),
            m.source,
            opt_mib(m.rss_before_load_bytes),
            opt_mib(m.rss_after_queries_bytes),
        ));
    }

    fn render_selective(&self, report: &Report) {
        let s = &self.selective;
        let line = |e: &EngineFigures| {
            format!(
                "{}: {} queries, median {}, p95 {}, max {}, {:.1} keys per answer",
                e.engine.as_str(),
                e.reps,
                fmt_ms(e.latency.0.p50),
                fmt_ms(e.latency.0.p95),
                fmt_ms(e.latency.0.max),
                e.keys_mean
            )
        };
        report.line(&format!(
            "selective query {} (keys mode, limit {}, a different bucket per repetition):",
            s.selector_example, s.limit
        ));
        report.line(&format!("    {}", line(&s.index)));
        report.line(&format!("    {}", line(&s.scan)));
        report.line(&format!(
            "    RATIO scan median / index median = {} (above 1: the index is that many times faster)",
            ratio_text(s.scan_over_index_median),
        ));
        let k = &s.keys;
        let verdict = if k.ok() { "OK" } else { "FAILED" };
        report.line(&format!(
            "    keys check {verdict}: {} answers compared with the expected keys, {} wrong, {} \
             not in byte order; {} scan answers equal to the index's for the same bucket: {}{}",
            k.answers_checked,
            k.wrong_answers,
            k.unordered_answers,
            k.index_scan_pairs,
            if k.index_equals_scan { "yes" } else { "NO" },
            k.first_problem
                .as_ref()
                .map(|p| format!(" (first problem: {p})"))
                .unwrap_or_default()
        ));
        for d in &s.documents {
            report.line(&format!(
                "    documents mode, {} {}: {:.1} ms, {} rows, {} bytes, keys {}",
                d.engine.as_str(),
                d.bucket,
                d.ms,
                d.rows,
                group(d.bytes as f64),
                if d.keys_ok { "as expected" } else { "WRONG" }
            ));
        }
    }

    fn render_commit(&self, report: &Report) {
        let c = &self.commit_cost;
        report.line(&format!(
            "commit cost of the index: lease cycles (1 KiB documents of the same shape), {} \
             clients × {} keys, {} rounds of {}s each per namespace after {}s warm-up; A = {} \
             (index {}), B = {} (never queried)",
            c.clients,
            c.keys_per_client,
            c.rounds.len(),
            c.duration_s,
            c.warmup_s,
            c.namespace_a,
            c.a_index,
            c.namespace_b
        ));
        for r in &c.rounds {
            let lat = |s: &Summary| {
                format!(
                    "p50 {} p99 {} errors {}",
                    fmt_ms(s.latency.p50),
                    fmt_ms(s.latency.p99),
                    s.errors
                )
            };
            report.line(&format!(
                "    round {} ({} first): A {} cycles/s ({}) | B {} cycles/s ({})",
                r.round + 1,
                r.first.to_uppercase(),
                group(r.a_cycles_per_s),
                lat(&r.a),
                group(r.b_cycles_per_s),
                lat(&r.b)
            ));
        }
        let verdict = match c.meets_target {
            Some(true) => "meets",
            Some(false) => "MISSES",
            None => "cannot be compared with",
        };
        report.line(&format!(
            "    RATIO A/B (median cycles/s, with index ÷ without) = {} ({} / {}); {verdict} the \
             target ≥ {} (the index costs at most {:.0} % of throughput)",
            ratio_text(c.a_over_b),
            group(c.a_median_cycles_per_s),
            group(c.b_median_cycles_per_s),
            c.target_ratio,
            (1.0 - c.target_ratio) * 100.0
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(Memory::diff(Some(10), Some(4)), Some(-6));
        assert_eq!(Memory::diff(None, Some(4)), None);
    }
}
