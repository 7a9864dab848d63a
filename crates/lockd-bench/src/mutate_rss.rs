//! `lockd-bench mutate-rss`: the server's peak memory for one
//! `POST /v1/mutate` of a document near `--json-max` against one
//! `POST /v1/update` of the same document, measured on a `lockd` binary
//! run as a child process on `disk://` (`--lockd`, default the `lockd`
//! next to this executable), so the old and a new server can be compared.
//!
//! 1. Build a compact JSON document of exactly `--doc-bytes` bytes
//!    (default 90 000 000; the server's default `--json-max` is 100MB):
//!    `{"counter":0,"rows":[{"id":0,"name":"row-0","price":1.5,"tags":["a","b"]},…]}`,
//!    many small values, the worst case for a parsed tree ([`document`]).
//! 2. Seed: start a server, acquire the key, update it with the document,
//!    release (commit), stop the server. Servers are stopped with SIGTERM
//!    and awaited, so the next one opens a cleanly closed store: after a
//!    SIGKILL it would replay its log at start-up and begin the phase with
//!    a few times the document already resident.
//! 3. **update**: start a *fresh* server on the same directory, wait for
//!    `/healthz` and `--settle` (300 ms), read its `VmRSS` and `VmHWM`;
//!    acquire, update the whole document again, release; read `VmHWM`
//!    (also once between the update and the release). Stop it.
//! 4. **mutate**: the same on another fresh server with
//!    `POST /v1/mutate` `{"namespace","mutations":["/counter++"]}` and the
//!    lease headers instead of the update; then a public `/v1/get` must
//!    return a document that parses, with `counter` 1 and every row (the
//!    run fails otherwise).
//! 5. `--repeat N` runs 3–4 N times; every figure is then the median.
//!
//! Growth is `VmHWM` after the release − `VmRSS` before the request: the
//! largest extra resident memory the request and its commit needed. A
//! fresh process per phase is what makes this work: `VmHWM` never goes
//! down and the allocator keeps what it freed, so a second phase in the
//! same process would hide below the first. The report gives, per phase,
//! growth in MiB and as a multiple of the document size, the request's
//! wall time, the ratio mutate ÷ update growth, and the mutate answer's
//! `X-Lockd-Mutate-Bytes-Captured` (`n/a` when the server does not send
//! it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use lockd_api::headers;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::attachments::parse_payload_size;
use crate::child::{check_binary, lockd_or_default, start_lockd, LockdChild};
use crate::cli::parse_duration;
use crate::procfs::Field;
use crate::report::{fmt_ratio, group, print_json, Report};
use crate::stats::Latency;
use crate::wire::lease::{self as wl, LeaseHeaders, LeaseUris};
use crate::wire::mutate as wm;
use crate::wire::{self, Answer, HttpClient, JSON};

/// The one mutation.
const MUTATION: &str = "/counter++";

/// Smallest `--doc-bytes`: room for a few rows.
pub const MIN_DOC_BYTES: u64 = 1024;

/// One MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// Flags of `lockd-bench mutate-rss`.
#[derive(Args, Debug, Clone)]
pub struct MutateRssArgs {
    /// Size of the JSON document, bytes (90000000, 90MB, 64MiB, …).
    #[arg(long, default_value = "90000000", value_parser = parse_doc_bytes)]
    pub doc_bytes: u64,
    /// The lockd binary to start (default: `lockd` next to this executable).
    #[arg(long, value_name = "PATH")]
    pub lockd: Option<PathBuf>,
    /// The server's disk:// directory (default: a fresh temporary one, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// `--json-max` for the server (default: not passed, the server's own default).
    #[arg(long, value_name = "SIZE", value_parser = parse_payload_size)]
    pub json_max: Option<u64>,
    /// Update and mutate phases, each on a fresh server; figures are medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Pause between the server answering /healthz and the "before" reading.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    pub settle: Duration,
    /// Per-request timeout.
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    pub json: bool,
}

/// `--doc-bytes`: a size of at least [`MIN_DOC_BYTES`].
fn parse_doc_bytes(s: &str) -> Result<u64, String> {
    let n = parse_payload_size(s)?;
    if n < MIN_DOC_BYTES {
        return Err(format!(
            "document size {s:?} is below {MIN_DOC_BYTES} bytes"
        ));
    }
    usize::try_from(n).map_err(|_| format!("document size {s:?} does not fit in memory"))?;
    Ok(n)
}

/// The measured document.
#[derive(Debug, Clone)]
pub struct Document {
    /// Its compact JSON text.
    pub bytes: Bytes,
    /// Entries of its `rows` array.
    pub rows: u64,
}

/// A compact JSON object of exactly `size` bytes (at least
/// [`MIN_DOC_BYTES`]): `{"counter":0,"rows":[{"id":0,"name":"row-0",
/// "price":1.5,"tags":["a","b"]},…]}`, as many rows as fit, the last
/// row's name padded with `x` to the size. Members are in sorted order so
/// a server that parses and re-serialises it writes the same text.
pub fn document(size: usize) -> Document {
    let size = size.max(MIN_DOC_BYTES as usize);
    let mut s = String::with_capacity(size);
    s.push_str("{\"counter\":0,\"rows\":[");
    let mut row = String::new();
    let mut rows = 0u64;
    // Where the last row's name ends (before its closing quote).
    let mut name_end = 0;
    loop {
        row.clear();
        let sep = if rows == 0 { "" } else { "," };
        let _ = write!(row, "{sep}{{\"id\":{rows},\"name\":\"row-{rows}");
        let name_at = row.len();
        row.push_str("\",\"price\":1.5,\"tags\":[\"a\",\"b\"]}");
        // Room for this row and the closing `]}`.
        if s.len() + row.len() + 2 > size {
            break;
        }
        name_end = s.len() + name_at;
        s.push_str(&row);
        rows += 1;
    }
    let pad = size - s.len() - 2;
    s.insert_str(name_end, &"x".repeat(pad));
    s.push_str("]}");
    Document {
        bytes: Bytes::from(s),
        rows,
    }
}

/// What the public read of the key must show after a mutate.
#[derive(Deserialize)]
struct Shape {
    counter: i64,
    rows: Vec<IgnoredAny>,
}

/// Checks a public read after one `/counter++` on [`document`]: valid
/// JSON, `counter` 1, `rows` rows.
fn check_mutated(body: &[u8], rows: u64) -> Result<(), String> {
    let got: Shape = serde_json::from_slice(body)
        .map_err(|e| format!("the mutated document does not parse as expected: {e}"))?;
    if got.counter != 1 {
        return Err(format!(
            "the mutated document has counter {}, want 1",
            got.counter
        ));
    }
    if got.rows.len() as u64 != rows {
        return Err(format!(
            "the mutated document has {} rows, want {rows}",
            got.rows.len()
        ));
    }
    Ok(())
}

/// The one key on one server.
struct Session {
    http: HttpClient,
    base: String,
    uris: LeaseUris,
    ns: String,
    key: String,
    timeout: Duration,
}

/// A held lease.
struct Held {
    lease: lockd_api::AcquireResponse,
    headers: LeaseHeaders,
}

impl Session {
    fn new(
        http: &HttpClient,
        srv: &LockdChild,
        ns: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        Ok(Session {
            http: http.clone(),
            base: srv.base.clone(),
            uris: LeaseUris::of(&srv.base)?,
            ns: ns.to_string(),
            key: key.to_string(),
            timeout,
        })
    }

    /// A 2xx answer to `POST uri`, else `{what} {key}: …`.
    async fn post(
        &self,
        what: &str,
        uri: &Uri,
        extra: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Answer, String> {
        let req = wire::post_with(uri, &JSON, extra, body)?;
        let a = wire::exchange(&self.http, req, self.timeout)
            .await
            .map_err(|e| format!("{what} {}: {e}", self.key))?;
        if a.status.is_success() {
            Ok(a)
        } else {
            Err(a.failure(&format!("{what} {}", self.key)))
        }
    }

    async fn acquire(&self) -> Result<Held, String> {
        let owner = format!("{}-owner", self.key);
        let body = wl::acquire_body_in(&self.ns, &self.key, &owner)?;
        let a = self.post("acquire", &self.uris.acquire, &[], body).await?;
        let lease = wl::parse_acquire(&self.key, &a.body)?;
        let headers = wl::lease_headers(&self.key, &lease)?;
        Ok(Held { lease, headers })
    }

    /// Commits (or, with `rollback`, discards) what `held` staged.
    async fn release(&self, held: Held, rollback: bool) -> Result<(), String> {
        let body = wl::release_body_in(&self.ns, &self.key, held.lease, rollback)?;
        self.post("release", &self.uris.release, &held.headers.release, body)
            .await
            .map(|_| ())
    }

    /// `POST /v1/update` of `doc`: its wall time.
    async fn update(&self, held: &Held, doc: &Bytes) -> Result<Staged, String> {
        let uri = wl::update_uri_in(&self.base, &self.ns, &self.key)?;
        let t0 = Instant::now();
        let a = self
            .post("update", &uri, &held.headers.update, doc.clone())
            .await?;
        let took = t0.elapsed();
        wm::parse_staged("update", &self.key, &a.body)?;
        Ok(Staged {
            took,
            captured: None,
        })
    }

    /// `POST /v1/mutate` of [`MUTATION`]: its wall time and
    /// `X-Lockd-Mutate-Bytes-Captured`.
    async fn mutate(&self, held: &Held) -> Result<Staged, String> {
        let uri = wm::mutate_uri(&self.base, &self.ns, &self.key)?;
        let body = wm::mutate_body(&self.ns, &[MUTATION])?;
        let t0 = Instant::now();
        let a = self
            .post("mutate", &uri, &held.headers.update, body)
            .await?;
        let took = t0.elapsed();
        wm::parse_staged("mutate", &self.key, &a.body)?;
        let captured = a
            .headers
            .get(headers::MUTATE_BYTES_CAPTURED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Ok(Staged { took, captured })
    }

    /// The committed document (public `/v1/get`).
    async fn public_get(&self) -> Result<Bytes, String> {
        let uri = wm::public_get_uri(&self.base, &self.ns, &self.key)?;
        Ok(self.post("get", &uri, &[], Bytes::new()).await?.body)
    }
}

/// One staged request.
struct Staged {
    took: Duration,
    captured: Option<u64>,
}

/// Which request a phase measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Update,
    Mutate,
}

/// One phase on one fresh server, raw.
#[derive(Debug, Clone, Copy, Default)]
struct PhaseRun {
    rss_before: u64,
    hwm_before: u64,
    hwm_after_request: u64,
    hwm_after: u64,
    request: Duration,
    captured: Option<u64>,
}

/// What every phase needs.
struct Ctx<'a> {
    bin: &'a Path,
    dir: &'a Path,
    extra: &'a [String],
    http: HttpClient,
    ns: String,
    key: String,
    doc: &'a Document,
    settle: Duration,
    timeout: Duration,
}

impl Ctx<'_> {
    async fn start(&self) -> Result<(LockdChild, Session), String> {
        let srv = start_lockd(self.bin, self.dir, self.extra, &self.http).await?;
        let s = Session::new(&self.http, &srv, &self.ns, &self.key, self.timeout)?;
        Ok((srv, s))
    }

    /// acquire → update with the document → release, unmeasured.
    async fn seed(&self) -> Result<(), String> {
        let (srv, s) = self.start().await?;
        let held = s.acquire().await?;
        let staged = s.update(&held, &self.doc.bytes).await;
        s.release(held, staged.is_err()).await?;
        staged?;
        stop(srv).await;
        Ok(())
    }

    /// One measured phase on a fresh server.
    async fn phase(&self, kind: Kind) -> Result<PhaseRun, String> {
        let (srv, s) = self.start().await?;
        tokio::time::sleep(self.settle).await;
        let rss_before = srv.mem(Field::Rss)?;
        let hwm_before = srv.mem(Field::Hwm)?;
        let held = s.acquire().await?;
        let staged = match kind {
            Kind::Update => s.update(&held, &self.doc.bytes).await,
            Kind::Mutate => s.mutate(&held).await,
        };
        let hwm_after_request = srv.mem(Field::Hwm)?;
        let released = s.release(held, staged.is_err()).await;
        let staged = staged?;
        released?;
        let hwm_after = srv.mem(Field::Hwm)?;
        if kind == Kind::Mutate {
            check_mutated(&s.public_get().await?, self.doc.rows)?;
        }
        stop(srv).await;
        Ok(PhaseRun {
            rss_before,
            hwm_before,
            hwm_after_request,
            hwm_after,
            request: staged.took,
            captured: staged.captured,
        })
    }
}

/// Stops a server gracefully (see [`LockdChild::stop`]); a failure only
/// warns, since the server is gone either way and the next one still
/// starts, if from a store that replays its log.
async fn stop(srv: LockdChild) {
    if let Err(e) = srv.stop().await {
        eprintln!("mutate-rss: warning: {e}");
    }
}

/// Nearest-rank median (the lower middle of an even count).
fn median(mut v: Vec<u64>) -> u64 {
    Latency::of(&mut v).map_or(0, |l| l.p50)
}

/// One phase's figures (medians over the repeats).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PhaseFigures {
    /// `VmRSS` before the request (after start-up and `--settle`).
    pub rss_before_bytes: u64,
    /// `VmHWM` then (the start-up peak).
    pub hwm_before_bytes: u64,
    /// `VmHWM` after the update/mutate answered, before the release.
    pub hwm_after_request_bytes: u64,
    /// `VmHWM` after the release (commit).
    pub hwm_after_bytes: u64,
    /// `hwm_after − rss_before`.
    pub growth_bytes: u64,
    /// `growth ÷ document bytes`.
    pub growth_over_doc: f64,
    /// Wall time of the update/mutate request, ms.
    pub request_ms: f64,
}

impl PhaseFigures {
    /// The medians of `runs` (one or more).
    fn of(runs: &[PhaseRun], doc_bytes: u64) -> PhaseFigures {
        let m = |f: fn(&PhaseRun) -> u64| median(runs.iter().map(f).collect());
        let growth_bytes = m(|r| r.hwm_after.saturating_sub(r.rss_before));
        PhaseFigures {
            rss_before_bytes: m(|r| r.rss_before),
            hwm_before_bytes: m(|r| r.hwm_before),
            hwm_after_request_bytes: m(|r| r.hwm_after_request),
            hwm_after_bytes: m(|r| r.hwm_after),
            growth_bytes,
            growth_over_doc: growth_bytes as f64 / doc_bytes.max(1) as f64,
            request_ms: m(|r| r.request.as_nanos() as u64) as f64 / 1e6,
        }
    }
}

/// One repeat.
#[derive(Debug, Clone, Serialize)]
pub struct RepeatFigures {
    /// The update phase.
    pub update: PhaseFigures,
    /// The mutate phase.
    pub mutate: PhaseFigures,
    /// `X-Lockd-Mutate-Bytes-Captured` (absent: the server did not send it).
    pub mutate_bytes_captured: Option<u64>,
}

/// The report of `lockd-bench mutate-rss`.
#[derive(Debug, Clone, Serialize)]
pub struct MutateRssReport {
    /// `lockd-bench`.
    pub tool: &'static str,
    /// `mutate-rss`.
    pub workload: &'static str,
    /// The `lockd` binary.
    pub lockd: String,
    /// Its store.
    pub store: String,
    /// `--json-max` passed to it (absent: the server's default).
    pub json_max_bytes: Option<u64>,
    /// Document bytes.
    pub doc_bytes: u64,
    /// Entries of the document's `rows`.
    pub doc_rows: u64,
    /// Repeats; the figures below are medians over them.
    pub repeat: u32,
    /// The update phase.
    pub update: PhaseFigures,
    /// The mutate phase.
    pub mutate: PhaseFigures,
    /// mutate growth ÷ update growth.
    pub mutate_over_update_growth: Option<f64>,
    /// `X-Lockd-Mutate-Bytes-Captured` (median; absent when the server
    /// did not send it).
    pub mutate_bytes_captured: Option<u64>,
    /// Every repeat.
    pub runs: Vec<RepeatFigures>,
}

impl MutateRssReport {
    fn new(head: Head, updates: &[PhaseRun], mutates: &[PhaseRun]) -> MutateRssReport {
        let doc = head.doc_bytes;
        let update = PhaseFigures::of(updates, doc);
        let mutate = PhaseFigures::of(mutates, doc);
        let captured: Option<Vec<u64>> = mutates.iter().map(|r| r.captured).collect();
        MutateRssReport {
            tool: "lockd-bench",
            workload: "mutate-rss",
            lockd: head.lockd,
            store: head.store,
            json_max_bytes: head.json_max,
            doc_bytes: doc,
            doc_rows: head.rows,
            repeat: updates.len() as u32,
            update,
            mutate,
            mutate_over_update_growth: (update.growth_bytes > 0)
                .then(|| mutate.growth_bytes as f64 / update.growth_bytes as f64),
            mutate_bytes_captured: captured.filter(|c| !c.is_empty()).map(median),
            runs: updates
                .iter()
                .zip(mutates)
                .map(|(u, m)| RepeatFigures {
                    update: PhaseFigures::of(std::slice::from_ref(u), doc),
                    mutate: PhaseFigures::of(std::slice::from_ref(m), doc),
                    mutate_bytes_captured: m.captured,
                })
                .collect(),
        }
    }

    fn render(&self, report: &Report) {
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / MIB);
        report.line(&format!(
            "lockd-bench mutate-rss: {} document ({} bytes, {} rows), {} on {}, json-max {}",
            mib(self.doc_bytes),
            group(self.doc_bytes as f64),
            group(self.doc_rows as f64),
            self.lockd,
            self.store,
            self.json_max_bytes
                .map_or("server default".into(), |n| group(n as f64)),
        ));
        if self.repeat > 1 {
            report.line(&format!(
                "    medians of {} repeats, each phase on a fresh server",
                self.repeat
            ));
        }
        report.line(&format!(
            "    {:<8} {:>12} {:>16} {:>13} {:>9} {:>10}",
            "server", "VmRSS before", "VmHWM after", "growth", "÷ doc", "request"
        ));
        for (name, p) in [("update", &self.update), ("mutate", &self.mutate)] {
            report.line(&format!(
                "    {:<8} {:>12} {:>16} {:>13} {:>9} {:>10}",
                name,
                mib(p.rss_before_bytes),
                mib(p.hwm_after_bytes),
                format!("+{}", mib(p.growth_bytes)),
                format!("{}×", fmt_ratio(p.growth_over_doc)),
                format!("{:.0} ms", p.request_ms),
            ));
        }
        report.line(&format!(
            "    VmHWM before release: update {}, mutate {} (start-up peak {} / {})",
            mib(self.update.hwm_after_request_bytes),
            mib(self.mutate.hwm_after_request_bytes),
            mib(self.update.hwm_before_bytes),
            mib(self.mutate.hwm_before_bytes),
        ));
        report.line(&format!(
            "    mutate growth ÷ update growth: {}; X-Lockd-Mutate-Bytes-Captured: {}",
            self.mutate_over_update_growth
                .map_or("n/a".into(), |r| format!("{}×", fmt_ratio(r))),
            self.mutate_bytes_captured
                .map_or("n/a".into(), |n| group(n as f64)),
        ));
        report.line(&format!(
            "    checked: after each mutate a public get parses, counter 1, {} rows",
            group(self.doc_rows as f64)
        ));
    }
}

/// The fixed part of the report.
struct Head {
    lockd: String,
    store: String,
    json_max: Option<u64>,
    doc_bytes: u64,
    rows: u64,
}

/// `lockd-bench mutate-rss`.
pub async fn cmd(args: MutateRssArgs) -> Result<(), String> {
    let report = Report {
        to_stderr: args.json,
    };
    let bin = lockd_or_default(args.lockd.as_deref())?;
    check_binary(&bin)?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("lockd-bench-mutate-rss-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            tmp.path().to_path_buf()
        }
    };
    let size = usize::try_from(args.doc_bytes)
        .map_err(|_| format!("--doc-bytes {} does not fit in memory", args.doc_bytes))?;
    let doc = document(size);
    let extra: Vec<String> = args
        .json_max
        .map(|n| vec!["--json-max".into(), n.to_string()])
        .unwrap_or_default();
    let run_id = crate::new_run_id();
    let ctx = Ctx {
        bin: &bin,
        dir: &dir,
        extra: &extra,
        http: wire::http_client(),
        ns: format!("mrss-{run_id}"),
        key: "doc".into(),
        doc: &doc,
        settle: args.settle,
        timeout: args.timeout,
    };
    eprintln!(
        "mutate-rss: {} on disk://{}, {} byte document ({} rows), {} repeat(s)",
        bin.display(),
        dir.display(),
        group(doc.bytes.len() as f64),
        group(doc.rows as f64),
        args.repeat
    );
    ctx.seed().await.map_err(|e| format!("seeding: {e}"))?;
    let (mut updates, mut mutates) = (Vec::new(), Vec::new());
    for n in 1..=args.repeat {
        let u = ctx
            .phase(Kind::Update)
            .await
            .map_err(|e| format!("update phase {n}: {e}"))?;
        let m = ctx
            .phase(Kind::Mutate)
            .await
            .map_err(|e| format!("mutate phase {n}: {e}"))?;
        eprintln!(
            "mutate-rss: repeat {n}: update growth {:.1} MiB in {:.0} ms, mutate growth {:.1} MiB in {:.0} ms",
            u.hwm_after.saturating_sub(u.rss_before) as f64 / MIB,
            u.request.as_secs_f64() * 1e3,
            m.hwm_after.saturating_sub(m.rss_before) as f64 / MIB,
            m.request.as_secs_f64() * 1e3,
        );
        updates.push(u);
        mutates.push(m);
    }
    let head = Head {
        lockd: bin.display().to_string(),
        store: format!("disk://{}", dir.display()),
        json_max: args.json_max,
        doc_bytes: doc.bytes.len() as u64,
        rows: doc.rows,
    };
    let r = MutateRssReport::new(head, &updates, &mutates);
    r.render(&report);
    if args.json {
        print_json(&r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Cmd};
    use clap::Parser;

    #[test]
    fn documents_have_the_size_rows_and_a_zero_counter() {
        for size in [1024, 1025, 1100, 4096, 65_537, 1_000_000, 20_000_000] {
            let d = document(size);
            assert_eq!(d.bytes.len(), size, "size {size}");
            let v: serde_json::Value = serde_json::from_slice(&d.bytes).expect("json");
            assert_eq!(v["counter"], 0, "size {size}");
            let rows = v["rows"].as_array().expect("rows");
            assert_eq!(rows.len() as u64, d.rows, "size {size}");
            assert_eq!(rows[0]["name"], "row-0");
            assert_eq!(rows[0]["tags"], serde_json::json!(["a", "b"]));
            assert_eq!(rows[rows.len() - 1]["id"], d.rows - 1);
            // Compact and in sorted member order: re-serialising the
            // parsed tree gives the same text.
            assert_eq!(serde_json::to_vec(&v).expect("encode"), &d.bytes[..]);
        }
        // Below the minimum it is the minimum.
        assert_eq!(document(10).bytes.len(), MIN_DOC_BYTES as usize);
        // Many small rows, as the workload needs.
        assert!(document(1_000_000).rows > 15_000);
    }

    #[test]
    fn a_mutated_document_is_checked() {
        let d = document(4096);
        let mut once = d.bytes.to_vec();
        once[11] = b'1';
        assert!(once.starts_with(b"{\"counter\":1,"));
        assert_eq!(check_mutated(&once, d.rows), Ok(()));
        let e = check_mutated(&d.bytes, d.rows).expect_err("counter 0");
        assert!(e.contains("counter 0"), "{e}");
        let e = check_mutated(&once, d.rows + 1).expect_err("a row short");
        assert!(e.contains("rows"), "{e}");
        assert!(check_mutated(&once[..once.len() - 1], d.rows).is_err());
    }

    #[tokio::test]
    async fn a_missing_binary_is_reported_before_the_document_is_built() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("no-lockd-here");
        let Ok(Cli {
            cmd: Cmd::MutateRss(args),
        }) = Cli::try_parse_from([
            "lockd-bench".as_ref(),
            "mutate-rss".as_ref(),
            "--lockd".as_ref(),
            bin.as_os_str(),
            "--dir".as_ref(),
            dir.path().as_os_str(),
        ])
        else {
            panic!("mutate-rss did not parse");
        };
        let t0 = Instant::now();
        let e = cmd(args).await.expect_err("ran without a binary");
        assert!(e.contains("no lockd binary"), "{e}");
        // The 90 MB default document was never built.
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }

    #[test]
    fn cli_defaults_and_limits() {
        let Ok(Cli {
            cmd: Cmd::MutateRss(a),
        }) = Cli::try_parse_from(["lockd-bench", "mutate-rss"])
        else {
            panic!("mutate-rss did not parse");
        };
        assert_eq!(a.doc_bytes, 90_000_000);
        assert_eq!((a.json_max, a.repeat), (None, 1));
        assert_eq!(a.settle, Duration::from_millis(300));
        let Ok(Cli {
            cmd: Cmd::MutateRss(a),
        }) = Cli::try_parse_from([
            "lockd-bench",
            "mutate-rss",
            "--doc-bytes",
            "20MB",
            "--json-max",
            "64MiB",
            "--repeat",
            "3",
        ])
        else {
            panic!("mutate-rss flags did not parse");
        };
        assert_eq!(a.doc_bytes, 20_000_000);
        assert_eq!((a.json_max, a.repeat), (Some(64 << 20), 3));
        for bad in [
            &["lockd-bench", "mutate-rss", "--doc-bytes", "1000"][..],
            &["lockd-bench", "mutate-rss", "--repeat", "0"],
            &["lockd-bench", "mutate-rss", "--json-max", "lots"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn figures_are_medians_and_ratios() {
        let run = |rss: u64, hwm: u64, ms: u64, captured| PhaseRun {
            rss_before: rss,
            hwm_before: rss,
            hwm_after_request: hwm,
            hwm_after: hwm,
            request: Duration::from_millis(ms),
            captured,
        };
        let updates = [
            run(10, 410, 900, None),
            run(10, 310, 700, None),
            run(12, 512, 800, None),
        ];
        let mutates = [
            run(10, 110, 90, Some(8)),
            run(10, 60, 70, Some(8)),
            run(10, 90, 80, Some(8)),
        ];
        let head = Head {
            lockd: "lockd".into(),
            store: "disk:///x".into(),
            json_max: None,
            doc_bytes: 100,
            rows: 1,
        };
        let r = MutateRssReport::new(head, &updates, &mutates);
        assert_eq!(r.update.growth_bytes, 400);
        assert_eq!(r.mutate.growth_bytes, 80);
        assert!((r.update.growth_over_doc - 4.0).abs() < 1e-9);
        assert!((r.update.request_ms - 800.0).abs() < 1e-9);
        assert!((r.mutate_over_update_growth.expect("ratio") - 0.2).abs() < 1e-9);
        assert_eq!(r.mutate_bytes_captured, Some(8));
        assert_eq!((r.repeat, r.runs.len()), (3, 3));
        // One old server without the header: n/a.
        let mut old = mutates;
        old[1].captured = None;
        let head = Head {
            lockd: "lockd".into(),
            store: "disk:///x".into(),
            json_max: None,
            doc_bytes: 100,
            rows: 1,
        };
        assert_eq!(
            MutateRssReport::new(head, &updates, &old).mutate_bytes_captured,
            None
        );
    }
}
