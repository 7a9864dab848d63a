//! Lock-free counters and histograms, and the Prometheus text exposition
//! format (version 0.0.4) they are written in.
//!
//! Written by hand rather than with a metrics framework: the format is a
//! few lines of text per series, every label set here is fixed in advance
//! (endpoints, status codes, storage operations), so plain atomics in
//! fixed arrays are all the request path needs: two relaxed additions per
//! observation, no lock, no allocation, no hashing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{endpoint_label, ENDPOINT_SLOTS};

/// Most buckets a [`Histogram`] can have (the `+Inf` one excluded).
pub const MAX_BUCKETS: usize = 16;

/// Upper bounds (inclusive, nanoseconds) of HTTP request latency buckets:
/// 0.5 ms to 10 s.
pub const HTTP_BUCKETS_NS: &[u64] = &[
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds (nanoseconds) of storage operation latency buckets: 10 µs
/// (memory) to 2.5 s (object stores).
pub const STORAGE_BUCKETS_NS: &[u64] = &[
    10_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// Upper bounds of group-commit sizes (batches per disk commit).
pub const BATCH_BUCKETS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// A histogram over bounds kept by its owner: one counter per bucket (not
/// cumulative; cumulated when written) plus the sum. The count is the sum
/// of the buckets, so `_count` always equals the `+Inf` bucket.
pub struct Histogram {
    buckets: [AtomicU64; MAX_BUCKETS + 1],
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS + 1],
            sum: AtomicU64::new(0),
        }
    }

    /// Records `v` against `bounds` (at most [`MAX_BUCKETS`] of them,
    /// ascending).
    #[inline]
    pub fn observe(&self, bounds: &[u64], v: u64) {
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.buckets[i.min(MAX_BUCKETS)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration in nanoseconds.
    #[inline]
    pub fn observe_duration(&self, bounds: &[u64], d: Duration) {
        self.observe(bounds, d.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Cumulative bucket counts (one per bound, then `+Inf`) and the sum.
    fn snapshot(&self, bounds: &[u64]) -> (Vec<u64>, u64) {
        let mut acc = 0;
        let mut out = Vec::with_capacity(bounds.len() + 1);
        for b in self.buckets.iter().take(bounds.len() + 1) {
            acc += b.load(Ordering::Relaxed);
            out.push(acc);
        }
        (out, self.sum.load(Ordering::Relaxed))
    }
}

/// Builds a Prometheus text exposition: `# HELP`/`# TYPE` once per family,
/// then its samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// Escapes a label value (`\`, `"` and newlines).
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out.push('}');
}

/// A float as Prometheus writes it.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of a counter or gauge.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", num(value));
    }

    /// The samples of one histogram; recorded values are divided by `unit`
    /// (1e9: nanoseconds to seconds; 1: counts).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        h: &Histogram,
        bounds: &[u64],
        unit: f64,
    ) {
        let (cum, sum) = h.snapshot(bounds);
        for (i, c) in cum.iter().enumerate() {
            let le = match bounds.get(i) {
                Some(b) => num(*b as f64 / unit),
                None => "+Inf".into(),
            };
            let _ = write!(self.out, "{name}_bucket");
            write_labels(&mut self.out, labels, Some(("le", &le)));
            let _ = writeln!(self.out, " {c}");
        }
        let total = cum.last().copied().unwrap_or(0);
        let _ = write!(self.out, "{name}_sum");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", num(sum as f64 / unit));
        let _ = write!(self.out, "{name}_count");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {total}");
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Status codes with a series of their own; any other lands in `other`.
pub const STATUSES: &[u16] = &[
    200, 201, 204, 304, 400, 401, 403, 404, 405, 408, 409, 410, 412, 413, 415, 429, 500, 501, 502,
    503, 504,
];

const STATUS_SLOTS: usize = STATUSES.len() + 1;

fn status_index(code: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == code)
        .unwrap_or(STATUSES.len())
}

/// Requests per endpoint and status: a latency histogram per pair (the
/// count of requests is its `_count`).
pub struct HttpMetrics {
    cells: Box<[Histogram]>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMetrics {
    /// All zero.
    pub fn new() -> Self {
        Self {
            cells: (0..ENDPOINT_SLOTS * STATUS_SLOTS)
                .map(|_| Histogram::new())
                .collect(),
        }
    }

    /// Records one request answered `status` after `took` (the time to the
    /// response head: a streaming body is not included).
    #[inline]
    pub fn observe(&self, endpoint: usize, status: u16, took: Duration) {
        let i = endpoint.min(ENDPOINT_SLOTS - 1) * STATUS_SLOTS + status_index(status);
        if let Some(h) = self.cells.get(i) {
            h.observe_duration(HTTP_BUCKETS_NS, took);
        }
    }

    /// Requests answered by an endpoint slot so far, every status.
    pub fn total(&self, endpoint: usize) -> u64 {
        let start = endpoint.saturating_mul(STATUS_SLOTS);
        self.cells
            .get(start..start.saturating_add(STATUS_SLOTS))
            .map_or(0, |cells| cells.iter().map(Histogram::count).sum())
    }

    /// Requests recorded for an endpoint slot and status (tests).
    #[cfg(test)]
    pub fn count(&self, endpoint: usize, status: u16) -> u64 {
        self.cells
            .get(endpoint * STATUS_SLOTS + status_index(status))
            .map(Histogram::count)
            .unwrap_or(0)
    }

    /// Writes `lockd_http_requests_total` and
    /// `lockd_http_request_duration_seconds` (pairs seen so far only).
    pub fn write(&self, e: &mut Exposition) {
        let seen: Vec<(usize, usize, u64)> = (0..ENDPOINT_SLOTS)
            .flat_map(|ep| (0..STATUS_SLOTS).map(move |st| (ep, st)))
            .filter_map(|(ep, st)| {
                let n = self.cells[ep * STATUS_SLOTS + st].count();
                (n > 0).then_some((ep, st, n))
            })
            .collect();
        let status_label = |st: usize| {
            STATUSES
                .get(st)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "other".into())
        };
        e.family(
            "lockd_http_requests_total",
            "counter",
            "HTTP requests by endpoint (route) and status code.",
        );
        for (ep, st, n) in &seen {
            let code = status_label(*st);
            e.sample(
                "lockd_http_requests_total",
                &[("endpoint", endpoint_label(*ep)), ("code", &code)],
                *n as f64,
            );
        }
        e.family(
            "lockd_http_request_duration_seconds",
            "histogram",
            "Time from request to response head, by endpoint and status code.",
        );
        for (ep, st, _) in &seen {
            let code = status_label(*st);
            e.histogram(
                "lockd_http_request_duration_seconds",
                &[("endpoint", endpoint_label(*ep)), ("code", &code)],
                &self.cells[ep * STATUS_SLOTS + st],
                HTTP_BUCKETS_NS,
                1e9,
            );
        }
    }
}

/// The storage operations timed by [`super::store::MeteredStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// `get`.
    Get,
    /// `apply` (a batch of puts and deletes).
    Apply,
    /// `list`.
    List,
    /// `put_blob`.
    PutBlob,
    /// `get_blob` (opening the stream).
    GetBlob,
    /// `delete_blob`.
    DeleteBlob,
    /// `barrier`.
    Barrier,
}

const STORE_OPS: [(StoreOp, &str); 7] = [
    (StoreOp::Get, "get"),
    (StoreOp::Apply, "apply"),
    (StoreOp::List, "list"),
    (StoreOp::PutBlob, "blob_put"),
    (StoreOp::GetBlob, "blob_get"),
    (StoreOp::DeleteBlob, "blob_delete"),
    (StoreOp::Barrier, "barrier"),
];

/// How a storage operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// A precondition did not hold (normal under contention).
    CondFailed,
    /// The backend failed.
    Backend,
    /// The caller's stream failed.
    Source,
}

const FAILURES: [&str; 3] = ["cond_failed", "backend", "source"];

/// Latency per storage operation and failures per operation and kind.
pub struct StoreMetrics {
    latency: [Histogram; STORE_OPS.len()],
    errors: [[AtomicU64; FAILURES.len()]; STORE_OPS.len()],
    /// Group commits of the store (`disk://`), reported by the store
    /// through the metrics wrapper.
    commits: DiskCommits,
    /// Requests of an object store, set once when the store is one.
    s3: std::sync::OnceLock<std::sync::Arc<S3Requests>>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreMetrics {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            latency: [const { Histogram::new() }; STORE_OPS.len()],
            errors: [const { [const { AtomicU64::new(0) }; FAILURES.len()] }; STORE_OPS.len()],
            commits: DiskCommits::new(),
            s3: std::sync::OnceLock::new(),
        }
    }

    /// Exports `requests` (an object store's request counts) with the
    /// storage metrics; the first call wins.
    pub fn set_s3_requests(&self, requests: std::sync::Arc<S3Requests>) {
        let _ = self.s3.set(requests);
    }

    /// The store's group commits (`disk://` only).
    pub fn disk_commits(&self) -> &DiskCommits {
        &self.commits
    }

    /// Records one operation.
    #[inline]
    pub fn observe(&self, op: StoreOp, took: Duration, failure: Option<StoreFailure>) {
        let i = op as usize;
        self.latency[i].observe_duration(STORAGE_BUCKETS_NS, took);
        if let Some(f) = failure {
            self.errors[i][f as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes `lockd_storage_operation_duration_seconds`,
    /// `lockd_storage_errors_total` and, on object stores,
    /// `lockd_s3_requests_total`.
    pub fn write(&self, e: &mut Exposition) {
        if let Some(s3) = self.s3.get() {
            s3.write(e);
        }
        e.family(
            "lockd_storage_operation_duration_seconds",
            "histogram",
            "Storage backend operation latency by operation.",
        );
        for (op, name) in STORE_OPS {
            e.histogram(
                "lockd_storage_operation_duration_seconds",
                &[("op", name)],
                &self.latency[op as usize],
                STORAGE_BUCKETS_NS,
                1e9,
            );
        }
        e.family(
            "lockd_storage_errors_total",
            "counter",
            "Failed storage operations by operation and kind (cond_failed: a precondition did not hold).",
        );
        for (op, name) in STORE_OPS {
            for (k, kind) in FAILURES.iter().enumerate() {
                let n = self.errors[op as usize][k].load(Ordering::Relaxed);
                if n > 0 {
                    e.sample(
                        "lockd_storage_errors_total",
                        &[("op", name), ("kind", kind)],
                        n as f64,
                    );
                }
            }
        }
    }
}

/// Kinds of HTTP request an object store (`s3://`, `aws://`) is sent,
/// the `kind` label of `lockd_s3_requests_total`.
pub const S3_REQUEST_KINDS: [&str; 8] = [
    "get",
    "head",
    "list",
    "put",
    "put_conditional",
    "delete",
    "delete_conditional",
    "post",
];

/// HTTP requests sent to an object store by kind, retries included (each
/// attempt is one request). Counted by the `s3://` backend itself, always
/// (a relaxed addition per request); exported with `--metrics-listen`.
#[derive(Debug)]
pub struct S3Requests {
    counts: [AtomicU64; S3_REQUEST_KINDS.len()],
}

impl Default for S3Requests {
    fn default() -> Self {
        Self::new()
    }
}

impl S3Requests {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; S3_REQUEST_KINDS.len()],
        }
    }

    /// Counts one request of kind `kind` (an index into
    /// [`S3_REQUEST_KINDS`]; others are ignored).
    #[inline]
    pub fn record(&self, kind: usize) {
        if let Some(c) = self.counts.get(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts so far, in the order of [`S3_REQUEST_KINDS`].
    pub fn snapshot(&self) -> [u64; S3_REQUEST_KINDS.len()] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Writes `lockd_s3_requests_total`.
    pub fn write(&self, e: &mut Exposition) {
        e.family(
            "lockd_s3_requests_total",
            "counter",
            "HTTP requests sent to the object store by kind (retries count; put_conditional and delete_conditional carry If-Match or If-None-Match; delete includes DeleteObjects; post is multipart uploads).",
        );
        for (i, kind) in S3_REQUEST_KINDS.iter().enumerate() {
            e.sample(
                "lockd_s3_requests_total",
                &[("kind", kind)],
                self.counts[i].load(Ordering::Relaxed) as f64,
            );
        }
    }
}

impl crate::storage::CommitObserver for StoreMetrics {
    fn commit(&self, batches: usize, took: Duration, ok: bool) {
        self.commits.record(batches, took, ok);
    }
}

/// Group commits of a `disk://` store (its log thread reports each one
/// through [`crate::storage::Store::observe_commits`]).
pub struct DiskCommits {
    batches: Histogram,
    duration: Histogram,
    failures: AtomicU64,
}

impl Default for DiskCommits {
    fn default() -> Self {
        Self::new()
    }
}

impl DiskCommits {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            batches: Histogram::new(),
            duration: Histogram::new(),
            failures: AtomicU64::new(0),
        }
    }

    /// Records one group commit of `batches` caller batches that took
    /// `took` (log write and fdatasync).
    pub fn record(&self, batches: usize, took: Duration, ok: bool) {
        self.batches.observe(BATCH_BUCKETS, batches as u64);
        self.duration.observe_duration(STORAGE_BUCKETS_NS, took);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes `lockd_disk_commit_batches`, `lockd_disk_commit_duration_seconds`
    /// and `lockd_disk_commit_failures_total`.
    pub fn write(&self, e: &mut Exposition) {
        e.family(
            "lockd_disk_commit_batches",
            "histogram",
            "Caller batches folded into one disk:// group commit (one log write and fdatasync).",
        );
        e.histogram(
            "lockd_disk_commit_batches",
            &[],
            &self.batches,
            BATCH_BUCKETS,
            1.0,
        );
        e.family(
            "lockd_disk_commit_duration_seconds",
            "histogram",
            "Duration of one disk:// group commit (log write and fdatasync).",
        );
        e.histogram(
            "lockd_disk_commit_duration_seconds",
            &[],
            &self.duration,
            STORAGE_BUCKETS_NS,
            1e9,
        );
        e.family(
            "lockd_disk_commit_failures_total",
            "counter",
            "disk:// group commits that failed.",
        );
        e.sample(
            "lockd_disk_commit_failures_total",
            &[],
            self.failures.load(Ordering::Relaxed) as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative() {
        let h = Histogram::new();
        let bounds = &[10, 20, 30];
        for v in [0, 10, 11, 20, 31, 1000] {
            h.observe(bounds, v);
        }
        let (cum, sum) = h.snapshot(bounds);
        assert_eq!(cum, vec![2, 4, 4, 6]);
        assert_eq!(sum, 1072);
        assert_eq!(h.count(), 6);
    }

    #[test]
    fn exposition_writes_histograms_and_escapes_labels() {
        let h = Histogram::new();
        h.observe(&[500_000_000, 1_000_000_000], 700_000_000);
        let mut e = Exposition::new();
        e.family("x_seconds", "histogram", "help");
        e.histogram(
            "x_seconds",
            &[("a", "q\"\\\n")],
            &h,
            &[500_000_000, 1_000_000_000],
            1e9,
        );
        let text = e.finish();
        assert!(text.contains("# TYPE x_seconds histogram\n"), "{text}");
        assert!(
            text.contains("x_seconds_bucket{a=\"q\\\"\\\\\\n\",le=\"0.5\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 1\n"), "{text}");
        assert!(
            text.contains("x_seconds_sum{a=\"q\\\"\\\\\\n\"} 0.7"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_count{a=\"q\\\"\\\\\\n\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn http_metrics_fold_unknown_statuses_and_endpoints() {
        let m = HttpMetrics::new();
        m.observe(2, 200, Duration::from_millis(1));
        m.observe(2, 418, Duration::from_millis(1));
        m.observe(usize::MAX, 404, Duration::from_millis(1));
        assert_eq!(m.count(2, 200), 1);
        assert_eq!(m.count(2, 418), 1);
        let mut e = Exposition::new();
        m.write(&mut e);
        let text = e.finish();
        assert!(
            text.contains("lockd_http_requests_total{endpoint=\"/v1/acquire\",code=\"other\"} 1\n")
        );
        assert!(text.contains("lockd_http_requests_total{endpoint=\"other\",code=\"404\"} 1\n"));
    }
}
