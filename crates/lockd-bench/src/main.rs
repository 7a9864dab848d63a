//! `lockd-bench`: a load generator for the lockd server.
//!
//! # What it measures
//!
//! The `lease` workload runs C concurrent clients (default 32). Each client
//! owns a small set of distinct keys (`bench-<run>-<client>-<n>`, default
//! 4 per client, used round-robin, so clients never contend) and loops over
//! one **lease cycle**:
//!
//! 1. `POST /v1/acquire` `{"key","owner","ttl_seconds":30,"block_seconds":-1}`
//! 2. `POST /v1/update?key=K` with a 1 KiB JSON document and the
//!    `X-Lease-ID`, `X-Txn-ID`, `X-Fencing-Token` headers (stages it)
//! 3. `POST /v1/release` with `X-Fencing-Token` and `{key,lease_id,txn_id}`
//!    (commits the staged document)
//!
//! After a warm-up (default 2 s) it measures for D seconds (default 10 s)
//! and reports cycles/s, p50/p99/max cycle latency, per-request p50/p99 and
//! the number of failed cycles. A cycle counts if it starts after the
//! warm-up and finishes inside the window; non-2xx answers, transport
//! errors and timeouts are counted (the first few are printed to stderr),
//! never fatal. If an update fails the release is sent with `rollback`.
//!
//! With `--store mem|disk|both` (default `both`) it starts an in-process
//! lockd server per store (`mem://`, or `disk://` in a temporary
//! directory); with `--url http://host:port` it targets that server
//! instead. Server and load generator share one multi-threaded tokio
//! runtime in one process, so on a small machine they compete for the same
//! cores; that is intended and is why the baseline exists.
//!
//! # Baseline
//!
//! Unless `--no-baseline` is given, every run first measures a bare axum
//! server (one route, `POST /json`, which parses the 1 KiB document into a
//! `serde_json::Value` and answers a small JSON object) with the same client
//! loop, concurrency and durations. Its requests/s divided by 3 (a lease
//! cycle is three requests) is the **baseline ceiling** in cycles/s: what a
//! server that did no lease work at all could reach on this machine with
//! this HTTP stack. Each store's cycles/s is reported as a fraction of it.
//!
//! The client is hyper 1 with the hyper-util legacy pooled client (HTTP/1.1
//! keep-alive, one connection pool, `TCP_NODELAY`), to keep load-generator
//! overhead low.
//!
//! # Examples
//!
//! ```text
//! # baseline + mem + disk, 32 clients, 2 s warm-up, 10 s each
//! cargo run --release -p lockd-bench -- lease
//!
//! # shorter run, memory store only, 64 clients
//! cargo run --release -p lockd-bench -- lease --store mem --clients 64 --duration 5s --warmup 1s
//!
//! # an already running server (e.g. `lockd --disable-mtls`), JSON on stdout
//! cargo run --release -p lockd-bench -- lease --url http://127.0.0.1:9341 --json > bench.json
//!
//! # only the bare axum baseline
//! cargo run --release -p lockd-bench -- baseline --duration 5s
//! ```
//!
//! With `--json` the human-readable report goes to stderr and a single JSON
//! summary to stdout; without it the report goes to stdout. Progress and
//! error lines always go to stderr.

mod baseline;
mod load;
mod stats;

/// The same allocator as the `lockd` binary, so in-process figures match
/// a real server's; the baseline runs under it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::load::{RunSpec, Target};
use crate::stats::Summary;

/// Requests per lease cycle (acquire, update, release).
const REQUESTS_PER_CYCLE: f64 = 3.0;

#[derive(Parser, Debug)]
#[command(
    name = "lockd-bench",
    version,
    about = "Load generator for lockd: lease cycles (acquire → update → release) against \
             in-process mem/disk servers or a running one, compared to a bare axum baseline"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Lease cycles: acquire → update (1 KiB JSON) → release, per client on its own keys.
    Lease(LeaseArgs),
    /// Only the bare axum + serde_json baseline (POST /json).
    Baseline(CommonArgs),
}

#[derive(Args, Debug, Clone)]
struct CommonArgs {
    /// Concurrent clients.
    #[arg(short = 'c', long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    clients: u32,
    /// Measurement window per run (10s, 1500ms, 1m, or plain seconds).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before each measurement window (not measured).
    #[arg(short = 'w', long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Per-request timeout; a request that takes longer counts as an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Size of the JSON document sent by update and to the baseline, bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(64..=64 * 1024 * 1024))]
    doc_bytes: u32,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
struct LeaseArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Which in-process store(s) to benchmark.
    #[arg(long, value_enum, default_value_t = StoreChoice::Both, conflicts_with = "url")]
    store: StoreChoice,
    /// Target a running lockd server (plain HTTP) instead of in-process ones.
    #[arg(long, value_name = "http://host:port")]
    url: Option<String>,
    /// Skip the baseline measurement.
    #[arg(long)]
    no_baseline: bool,
    /// Distinct keys per client, used round-robin.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    keys_per_client: u32,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum StoreChoice {
    Mem,
    Disk,
    Both,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    lockd_server::config::parse_duration(s)
}

/// Where the human-readable report goes.
struct Report {
    to_stderr: bool,
}

impl Report {
    fn line(&self, s: &str) {
        if self.to_stderr {
            eprintln!("{s}");
        } else {
            println!("{s}");
            let _ = std::io::stdout().flush();
        }
    }
}

/// `14210.4` → `14 210`.
fn group(v: f64) -> String {
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
fn fmt_ms(ns: u64) -> String {
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
fn fmt_dur(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

fn latency_text(s: &Summary) -> String {
    if s.units == 0 {
        return "no successful units".to_string();
    }
    let l = &s.latency;
    format!(
        "p50 {}, p99 {}, max {}",
        fmt_ms(l.p50),
        fmt_ms(l.p99),
        fmt_ms(l.max)
    )
}

fn summary_json(s: &Summary) -> Value {
    let ops: serde_json::Map<String, Value> = s
        .ops
        .iter()
        .map(|(name, l)| (name.to_string(), l.to_json_ms()))
        .collect();
    json!({
        "units": s.units,
        "latency_ms": s.latency.to_json_ms(),
        "ops_latency_ms": ops,
        "errors": s.errors,
        "warmup_units": s.warmup_units,
        "warmup_errors": s.warmup_errors,
    })
}

fn spec_for(common: &CommonArgs, label: &str, doc: &bytes::Bytes) -> RunSpec {
    RunSpec {
        label: label.to_string(),
        clients: common.clients as usize,
        warmup: common.warmup,
        duration: common.duration,
        timeout: common.timeout,
        doc: doc.clone(),
    }
}

/// Measures the bare axum server.
async fn run_baseline(common: &CommonArgs, doc: &bytes::Bytes) -> Result<Summary, String> {
    let server = baseline::start().await?;
    eprintln!(
        "running baseline (axum POST /json at {}): {} warm-up + {}",
        server.base_url(),
        fmt_dur(common.warmup),
        fmt_dur(common.duration)
    );
    let spec = spec_for(common, "baseline", doc);
    let result = load::run(&spec, &Target::Baseline(server.base_url().to_string())).await;
    shutdown_quietly("baseline", server.shutdown()).await;
    Ok(Summary::from_clients(result?, common.duration))
}

async fn shutdown_quietly<F>(label: &str, fut: F)
where
    F: std::future::Future<Output = Result<(), String>>,
{
    match tokio::time::timeout(Duration::from_secs(15), fut).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: stopping the {label} server: {e}"),
        Err(_) => eprintln!("warning: the {label} server did not stop within 15s"),
    }
}

/// Measures lease cycles against one lockd server (in-process or remote).
async fn run_lease_target(
    args: &LeaseArgs,
    label: &str,
    base: &str,
    doc: &bytes::Bytes,
    run_id: &str,
) -> Result<Summary, String> {
    eprintln!(
        "running lease cycles against {label} ({base}): {} warm-up + {}",
        fmt_dur(args.common.warmup),
        fmt_dur(args.common.duration)
    );
    let spec = spec_for(&args.common, label, doc);
    let target = Target::Lease {
        base: base.trim_end_matches('/').to_string(),
        key_prefix: key_prefix(run_id, label),
        keys_per_client: args.keys_per_client as usize,
    };
    let clients = load::run(&spec, &target).await?;
    Ok(Summary::from_clients(clients, args.common.duration))
}

/// Keys are `<prefix>-<client>-<n>`, owners `<prefix>-owner-<client>`.
fn key_prefix(run_id: &str, label: &str) -> String {
    format!("bench-{run_id}-{label}")
}

/// Starts an in-process lockd server for `store` and measures it.
async fn run_lease_inprocess(
    args: &LeaseArgs,
    store: StoreChoice,
    doc: &bytes::Bytes,
    run_id: &str,
) -> Result<(String, String, Summary), String> {
    let (label, dir) = match store {
        StoreChoice::Disk => {
            let dir = tempfile::Builder::new()
                .prefix("lockd-bench-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            ("disk", Some(dir))
        }
        _ => ("mem", None),
    };
    let store_url = match &dir {
        Some(d) => format!("disk://{}", d.path().display()),
        None => "mem://".to_string(),
    };
    let server = lockd_server::start(lockd_server::ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: store_url.clone(),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("starting the {label} server: {e}"))?;
    let base = server.base_url();
    let result = run_lease_target(args, label, &base, doc, run_id).await;
    shutdown_quietly(label, async {
        server.shutdown().await.map_err(|e| e.to_string())
    })
    .await;
    drop(dir);
    Ok((label.to_string(), store_url, result?))
}

fn header_lines(report: &Report, workload: &str, common: &CommonArgs, threads: usize) {
    report.line(&format!(
        "lockd-bench {workload}: {} clients, warm-up {}, window {}, {} B document, \
         {threads} tokio worker threads, {} CPUs",
        common.clients,
        fmt_dur(common.warmup),
        fmt_dur(common.duration),
        common.doc_bytes,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    ));
}

fn baseline_lines(report: &Report, b: &Summary) {
    report.line(&format!(
        "baseline (axum + serde_json, POST /json): {} req/s, {}, errors {} → ceiling {} cycles/s",
        group(b.rate),
        latency_text(b),
        b.errors,
        group(b.rate / REQUESTS_PER_CYCLE),
    ));
}

fn common_json(
    workload: &str,
    common: &CommonArgs,
    threads: usize,
) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("tool".into(), json!("lockd-bench"));
    m.insert("workload".into(), json!(workload));
    m.insert("clients".into(), json!(common.clients));
    m.insert("warmup_s".into(), json!(common.warmup.as_secs_f64()));
    m.insert("duration_s".into(), json!(common.duration.as_secs_f64()));
    m.insert("doc_bytes".into(), json!(common.doc_bytes));
    m.insert("worker_threads".into(), json!(threads));
    m.insert(
        "cpus".into(),
        json!(std::thread::available_parallelism().map_or(0, |n| n.get())),
    );
    m
}

fn baseline_json(b: &Summary) -> Value {
    let mut v = summary_json(b);
    if let Some(o) = v.as_object_mut() {
        o.insert("requests_per_s".into(), json!(b.rate));
        o.insert(
            "ceiling_cycles_per_s".into(),
            json!(b.rate / REQUESTS_PER_CYCLE),
        );
    }
    v
}

async fn cmd_baseline(common: CommonArgs, threads: usize) -> Result<(), String> {
    let report = Report {
        to_stderr: common.json,
    };
    let doc = load::make_document(common.doc_bytes as usize);
    let b = run_baseline(&common, &doc).await?;
    header_lines(&report, "baseline", &common, threads);
    baseline_lines(&report, &b);
    if common.json {
        let mut m = common_json("baseline", &common, threads);
        m.insert("baseline".into(), baseline_json(&b));
        println!("{}", Value::Object(m));
    }
    Ok(())
}

async fn cmd_lease(args: LeaseArgs, threads: usize) -> Result<(), String> {
    let common = &args.common;
    let report = Report {
        to_stderr: common.json,
    };
    let doc = load::make_document(common.doc_bytes as usize);
    let run_id = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
            & 0xff_ffff
    );

    // Fail fast on a wrong --url instead of after the baseline run.
    if let Some(url) = &args.url {
        let target = Target::Lease {
            base: url.trim_end_matches('/').to_string(),
            key_prefix: String::new(),
            keys_per_client: 1,
        };
        load::preflight(&load::http_client(), &target, &doc).await?;
    }

    let baseline = if args.no_baseline {
        None
    } else {
        Some(run_baseline(common, &doc).await?)
    };

    // (label, target description, summary)
    let mut runs: Vec<(String, String, Summary)> = Vec::new();
    if let Some(url) = &args.url {
        let s = run_lease_target(&args, "remote", url, &doc, &run_id).await?;
        runs.push(("remote".into(), url.clone(), s));
    } else {
        let stores: &[StoreChoice] = match args.store {
            StoreChoice::Mem => &[StoreChoice::Mem],
            StoreChoice::Disk => &[StoreChoice::Disk],
            StoreChoice::Both => &[StoreChoice::Mem, StoreChoice::Disk],
        };
        for &store in stores {
            runs.push(run_lease_inprocess(&args, store, &doc, &run_id).await?);
        }
    }

    header_lines(&report, "lease", common, threads);
    let ceiling = baseline.as_ref().map(|b| b.rate / REQUESTS_PER_CYCLE);
    if let Some(b) = &baseline {
        baseline_lines(&report, b);
    }
    let mut runs_json = Vec::new();
    for (label, target, s) in &runs {
        let ratio = ceiling.filter(|c| *c > 0.0).map(|c| s.rate / c);
        let ratio_text = ratio
            .map(|r| format!(" ({r:.2} of baseline ceiling)"))
            .unwrap_or_default();
        report.line(&format!(
            "{label}: {} cycles/s{ratio_text}, {}, errors {}",
            group(s.rate),
            latency_text(s),
            s.errors,
        ));
        let ops: Vec<String> = s
            .ops
            .iter()
            .map(|(name, l)| format!("{name} p50 {} p99 {}", fmt_ms(l.p50), fmt_ms(l.p99)))
            .collect();
        if !ops.is_empty() {
            report.line(&format!("    per request: {}", ops.join(" | ")));
        }
        if s.warmup_errors > 0 {
            report.line(&format!("    ({} errors during warm-up)", s.warmup_errors));
        }
        let mut v = summary_json(s);
        if let Some(o) = v.as_object_mut() {
            o.insert("store".into(), json!(label));
            o.insert("target".into(), json!(target));
            o.insert("key_prefix".into(), json!(key_prefix(&run_id, label)));
            o.insert("cycles_per_s".into(), json!(s.rate));
            o.insert("requests_per_s".into(), json!(s.rate * REQUESTS_PER_CYCLE));
            o.insert("ratio_of_baseline_ceiling".into(), json!(ratio));
        }
        runs_json.push(v);
    }
    if common.json {
        let mut m = common_json("lease", common, threads);
        m.insert("keys_per_client".into(), json!(args.keys_per_client));
        m.insert(
            "baseline".into(),
            baseline.as_ref().map_or(Value::Null, baseline_json),
        );
        m.insert("runs".into(), Value::Array(runs_json));
        println!("{}", Value::Object(m));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.cmd {
        Cmd::Lease(a) => &a.common,
        Cmd::Baseline(c) => c,
    };
    let threads = common
        .threads
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockd-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Lease(a) => cmd_lease(a, threads).await,
            Cmd::Baseline(c) => cmd_baseline(c, threads).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd-bench: {e}");
            ExitCode::FAILURE
        }
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
    fn document_has_the_requested_size_and_is_json() {
        for size in [64usize, 1024, 4096] {
            let doc = load::make_document(size);
            assert_eq!(doc.len(), size);
            assert!(serde_json::from_slice::<Value>(&doc).is_ok());
        }
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "lockd-bench",
            "lease",
            "--duration",
            "5s",
            "--warmup",
            "1",
            "--store",
            "mem",
        ]);
        assert!(cli.is_ok());
        assert!(
            Cli::try_parse_from(["lockd-bench", "lease", "--store", "mem", "--url", "x"]).is_err()
        );
        assert!(Cli::try_parse_from(["lockd-bench", "lease", "--duration", "soon"]).is_err());
    }
}
