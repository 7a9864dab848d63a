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
//! # Object storage and several nodes
//!
//! `--store s3 --s3 http://host:port/bucket[/prefix] --nodes 1,2` (lease
//! and queue) measures `disk://` as the reference, then `s3://` once per
//! node count: that many in-process servers share one fresh prefix in
//! `--ha concurrent` mode and the clients (producers and consumers) are
//! spread round-robin over them. Each run gets its own random prefix and
//! deletes its objects afterwards (the `s3` module). Besides the usual
//! lines, the report then has a comparison table: throughput and p50/p99
//! as ratios to `disk://` and to `s3://` with one node, all measured in
//! the same invocation; errors are tallied by request, status and error
//! code (and node).
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
//! # The queue workload
//!
//! `queue` runs P producers (default 4) and C consumers (default 4) on one
//! queue (`bench`) and measures **messages per second end to end**: a
//! message counts when its ack completes inside the window.
//!
//! * A producer loops over `POST /v1/queue/enqueue` with
//!   `Content-Type: multipart/related; boundary=B` and a `meta` part
//!   `{"queue":"bench"}` followed by a 1 KiB `payload` part (PROTOCOL.md
//!   §6.2). The payload's first 8 bytes are the enqueue time (monotonic
//!   nanoseconds since the run started, little-endian), the next 8 a random
//!   run tag.
//! * `--consume dequeue`: each consumer loops over `POST /v1/queue/dequeue`
//!   `{"queue","owner","wait_seconds":5,"page_size":N}` (`--page-size`,
//!   default 1), parses the `multipart/related` answer (§6.3) and acks every
//!   message (concurrently when a page holds several) before the next
//!   dequeue.
//! * `--consume subscribe`: each consumer holds one
//!   `POST /v1/queue/subscribe` stream (`--subscribe-page-size`, default 8:
//!   the server keeps at most N unacknowledged deliveries per stream),
//!   parses deliveries from the streaming body as they arrive and hands
//!   them to its own ack task, which acks them concurrently.
//! * ack is `POST /v1/queue/ack`
//!   `{"queue","message_id","lease_id","fencing_token","meta_etag"}` (§6.7).
//! * Default `--consume both`: dequeue, then subscribe, each on a fresh
//!   in-process server (`--store mem|disk|both`, default both) or, with
//!   `--url`, on the running server with a queue of its own
//!   (`bench-<run>-<mode>`).
//!
//! Producers cannot run ahead without bound: each enqueue takes one of
//! `--backlog` (default 2 000) permits and each ack of one of this run's
//! messages returns one, so enqueued − acked never exceeds the cap. When
//! consumers are the bottleneck the queue sits at the cap and enqueue→ack
//! latency is mostly time spent queued (≈ cap ÷ rate); the report shows the
//! sampled backlog so it is clear which side limited the run. A dequeue
//! consumer needs two round trips per message and a producer one, so with
//! P = C the dequeue runs usually hit the cap; subscribe consumers usually
//! keep up and their latency is the real delivery latency.
//!
//! Each run reports msgs/s, its ratio to the baseline ceiling (baseline
//! req/s ÷ 3, since a message costs three requests: enqueue, dequeue or a
//! share of a subscribe stream, ack; subscribe amortises its request, so it
//! can exceed 1.0), enqueue→ack p50/p99/max, per-request p50/p99 (enqueue,
//! dequeue, ack), the backlog, empty polls (`409 waiting`), `queue_busy`
//! rejections and errors. After the window producers stop and consumers
//! drain the queue (`--drain-timeout`, default 10 s); messages still not
//! acked are reported as a warning. The baseline runs with P + C clients
//! (`--baseline-clients`). For context the report also quotes the original
//! Go lockd's published figures from the issue (about 2 000 dequeues/s in
//! memory, about 850/s on disk); they are not measured here.
//!
//! # The overload run
//!
//! `overload` checks the server's back-pressure (QRF) under a multiple of
//! its sustainable load; the details are in the `overload` module.
//!
//! 1. **Calibrate** (`--calibrate`, default 5 s, after a 1 s warm-up): the
//!    queue workload above (4 producers, 4 dequeue consumers, 1 KiB
//!    payloads, backlog cap 2 000) measures the sustainable end-to-end
//!    rate R.
//! 2. **Overload** (`--duration`, default 20 s): open-loop producer tasks
//!    (default `factor × R × 20 ms`, 32-1024) try to enqueue at `--factor`
//!    × R (default 10) on a fixed schedule, with no backlog cap; a `429` is
//!    counted and only the task that got it sleeps its `Retry-After`. The
//!    same consumers keep dequeuing and acking. A monitor thread (its own
//!    runtime and connection) GETs `/healthz` every 100 ms and, for an
//!    in-process server, reads this process's `VmRSS` every 500 ms (the
//!    load generator shares the process) and polls the QRF state and
//!    in-flight counters every 20 ms; with `--url` memory is n/a.
//! 3. **Drain**: producers stop, consumers ack what is left; every
//!    enqueue answered `200` must then have been acked exactly once under
//!    the `message_id` it got (payloads carry a sequence number).
//!
//! The in-process server (`--store mem|disk`, default mem) gets
//! `qrf.queue_soft_limit` 64, `qrf.queue_hard_limit` 128 and
//! `lsf_sample_interval` 100 ms so QRF can engage on a small box
//! (`--qrf-queue-soft`, `--qrf-queue-hard`, `--lsf-interval`);
//! `--default-qrf` keeps the server's defaults. The report gives offered
//! vs accepted enqueue rate, `429` count and share, QRF states seen, ack
//! rate vs calibration, `/healthz` p50/p99/max per phase, RSS per phase,
//! the backlog, the drain, the delivery check, a PASS/FAIL verdict per
//! claim and a per-second timeline.
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
//!
//! # queue: baseline, then mem and disk, dequeue and subscribe each
//! cargo run --release -p lockd-bench -- queue --duration 5s --warmup 1s
//!
//! # dequeue with pages of 8 on disk only, 8 producers, 16 consumers
//! cargo run --release -p lockd-bench -- queue --store disk --consume dequeue \
//!     --page-size 8 -p 8 -c 16
//!
//! # subscribe against a running server, latency with a small backlog, JSON
//! cargo run --release -p lockd-bench -- queue --url http://127.0.0.1:9341 \
//!     --consume subscribe --backlog 64 --json > queue.json
//!
//! # overload: calibrate 5 s, then 10 × R for 20 s, in-process mem server
//! cargo run --release -p lockd-bench -- overload --store mem --duration 20s --calibrate 5s
//!
//! # the same on disk with the server's default QRF settings, JSON on stdout
//! cargo run --release -p lockd-bench -- overload --store disk --duration 10s --default-qrf \
//!     --json > overload.json
//! ```
//!
//! With `--json` the human-readable report goes to stderr and a single JSON
//! summary to stdout; without it the report goes to stdout. Progress and
//! error lines always go to stderr.

mod baseline;
mod chart;
mod load;
mod overload;
mod queue;
mod s3;
mod sdk;
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
use crate::s3::{Backend, S3Args};
use crate::stats::{Latency, Summary};

/// Requests per lease cycle (acquire, update, release).
const REQUESTS_PER_CYCLE: f64 = 3.0;

#[derive(Parser, Debug)]
#[command(
    name = "lockd-bench",
    version,
    about = "Load generator for lockd: lease cycles (acquire → update → release) and queue \
             messages (enqueue → dequeue/subscribe → ack) against in-process mem/disk/s3 servers (s3 with one or more nodes) \
             or a running one, compared to a bare axum baseline; and an overload run that \
             checks the server's back-pressure"
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
    /// Queue: P producers enqueue 1 KiB messages, C consumers dequeue or subscribe and ack.
    Queue(QueueArgs),
    /// Overload: calibrate the sustainable queue rate R, offer factor × R (10×) for a while,
    /// check /healthz latency, memory, ack flow and that nothing acknowledged is lost.
    Overload(overload::OverloadArgs),
    /// SDK: acquire → save a JSON document → release (`--keys distinct|shared|N`; `--vs-etcd`).
    LeaseCycle(sdk::SdkArgs),
    /// SDK: public reads of committed documents.
    PublicRead(sdk::SdkArgs),
    /// SDK: keepalives of one held lease per client.
    Keepalive(sdk::SdkArgs),
    /// SDK: YCSB-like mix of public reads and lease-cycle updates (`--read-ratio`).
    Mixed(sdk::SdkArgs),
    /// SDK: producers enqueue, consumers dequeue or subscribe and ack.
    SdkQueue(sdk::SdkArgs),
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
    #[command(flatten)]
    s3: S3Args,
}

#[derive(Args, Debug, Clone)]
struct QueueArgs {
    /// Concurrent producers (enqueue loops).
    #[arg(short = 'p', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    producers: u32,
    /// Concurrent consumers (dequeue loops or subscribe streams).
    #[arg(short = 'c', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    consumers: u32,
    /// How consumers take messages; `both` runs dequeue, then subscribe.
    #[arg(long, value_enum, default_value_t = ConsumeChoice::Both)]
    consume: ConsumeChoice,
    /// `page_size` of dequeue requests (messages per response, 1-64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    page_size: u32,
    /// `page_size` of subscribe requests: most unacknowledged deliveries per stream (1-64).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    subscribe_page_size: u32,
    /// Payload size in bytes (the first 16 carry the enqueue time and a run tag).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=64 * 1024 * 1024))]
    payload_bytes: u32,
    /// Producers pause while enqueued − acked messages exceed this.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    backlog: u32,
    /// `wait_seconds` of dequeue and subscribe requests.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=300))]
    wait_seconds: i64,
    /// Queue name (with --url: `<queue>-<run>-<mode>`, so runs never share a queue).
    #[arg(long, default_value = "bench")]
    queue: String,
    /// Measurement window per run (10s, 1500ms, 1m, or plain seconds).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before each measurement window (not measured).
    #[arg(short = 'w', long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Per-request timeout (dequeue/subscribe get wait_seconds on top).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// After the window, how long consumers may take to ack what is left.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Which in-process store(s) to benchmark.
    #[arg(long, value_enum, default_value_t = StoreChoice::Both, conflicts_with = "url")]
    store: StoreChoice,
    /// Target a running lockd server (plain HTTP) instead of in-process ones.
    #[arg(long, value_name = "http://host:port")]
    url: Option<String>,
    /// Skip the baseline measurement.
    #[arg(long)]
    no_baseline: bool,
    /// Concurrent clients of the baseline (default: producers + consumers).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    baseline_clients: Option<u32>,
    #[command(flatten)]
    s3: S3Args,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ConsumeChoice {
    Dequeue,
    Subscribe,
    Both,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum StoreChoice {
    /// mem://
    Mem,
    /// disk:// in a temporary directory
    Disk,
    /// mem://, then disk://
    Both,
    /// disk:// (reference), then s3:// (--s3) once per --nodes count
    S3,
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

/// Measures lease cycles against one lockd server (in-process or remote),
/// or several nodes sharing a store (clients spread round-robin).
async fn run_lease_target(
    args: &LeaseArgs,
    label: &str,
    bases: &[String],
    doc: &bytes::Bytes,
    run_id: &str,
) -> Result<Summary, String> {
    eprintln!(
        "running lease cycles against {label} ({}): {} warm-up + {}",
        bases.join(", "),
        fmt_dur(args.common.warmup),
        fmt_dur(args.common.duration)
    );
    let spec = spec_for(&args.common, label, doc);
    let target = Target::Lease {
        bases: bases
            .iter()
            .map(|b| b.trim_end_matches('/').to_string())
            .collect(),
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

/// Running in-process lockd servers (one, or several nodes sharing an
/// object store) and what they own.
struct InProcess {
    label: String,
    store_url: String,
    /// The first (or only) node.
    server: lockd_server::RunningServer,
    /// Further nodes on the same store.
    others: Vec<lockd_server::RunningServer>,
    dir: Option<tempfile::TempDir>,
    /// Object store whose objects are deleted once the nodes have stopped.
    purge: Option<String>,
}

impl InProcess {
    /// Starts the server(s) for `backend` (`disk://` in a fresh temporary
    /// directory, `s3://` under a fresh prefix).
    async fn start(backend: Backend, s3: &S3Args) -> Result<InProcess, String> {
        Self::launch(backend, s3, |_| {}).await
    }

    /// A mem or disk server with `tweak` applied to its configuration.
    async fn start_with(
        store: StoreChoice,
        tweak: impl Fn(&mut lockd_server::ServerConfig),
    ) -> Result<InProcess, String> {
        let backend = match store {
            StoreChoice::Disk => Backend::Disk,
            StoreChoice::Mem | StoreChoice::Both => Backend::Mem,
            StoreChoice::S3 => return Err("an s3 server needs --s3".into()),
        };
        Self::launch(backend, &S3Args::default(), tweak).await
    }

    async fn launch(
        backend: Backend,
        s3: &S3Args,
        tweak: impl Fn(&mut lockd_server::ServerConfig),
    ) -> Result<InProcess, String> {
        let label = backend.label();
        let mut dir = None;
        let mut purge = None;
        let store_url = match backend {
            Backend::Mem => "mem://".to_string(),
            Backend::Disk => {
                let d = tempfile::Builder::new()
                    .prefix("lockd-bench-")
                    .tempdir()
                    .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
                let url = format!("disk://{}", d.path().display());
                dir = Some(d);
                url
            }
            Backend::S3 { .. } => {
                let root = s3.s3.as_ref().ok_or("--store s3 needs --s3")?;
                let url = root.store_url(&s3::fresh_prefix(&label));
                purge = Some(url.clone());
                url
            }
        };
        let mut cfg = lockd_server::ServerConfig {
            listen: "127.0.0.1:0".into(),
            store: store_url.clone(),
            ..Default::default()
        };
        if let Backend::S3 { .. } = backend {
            cfg.ha = lockd_server::ha::HaMode::Concurrent;
            if let Some(every) = s3.queue_poll_interval {
                cfg.queue_poll_interval = every;
            }
        }
        tweak(&mut cfg);
        let mut servers = Vec::new();
        for n in 0..backend.nodes() {
            match lockd_server::start(cfg.clone()).await {
                Ok(srv) => servers.push(srv),
                Err(e) => {
                    for srv in servers {
                        let _ = srv.shutdown().await;
                    }
                    if let Some(url) = &purge {
                        purge_quietly(url).await;
                    }
                    return Err(format!("starting the {label} server (node {n}): {e}"));
                }
            }
        }
        let server = servers.remove(0);
        Ok(InProcess {
            label,
            store_url,
            server,
            others: servers,
            dir,
            purge,
        })
    }

    /// Base URLs of all nodes.
    fn bases(&self) -> Vec<String> {
        std::iter::once(&self.server)
            .chain(&self.others)
            .map(|s| s.base_url())
            .collect()
    }

    /// Stops the servers, then removes their directory or objects.
    async fn stop(self) {
        let label = self.label;
        for server in std::iter::once(self.server).chain(self.others) {
            shutdown_quietly(&label, async {
                server.shutdown().await.map_err(|e| e.to_string())
            })
            .await;
        }
        drop(self.dir);
        if let Some(url) = &self.purge {
            purge_quietly(url).await;
        }
    }
}

/// Deletes a run's objects; a failure is a warning.
async fn purge_quietly(url: &str) {
    match tokio::time::timeout(Duration::from_secs(120), s3::purge(url)).await {
        Ok(Ok(p)) if p.failed == 0 => {
            eprintln!("cleaned up {url}: {} objects deleted", p.deleted)
        }
        Ok(Ok(p)) => eprintln!(
            "warning: cleaning up {url}: {} objects deleted, {} deletions failed",
            p.deleted, p.failed
        ),
        Ok(Err(e)) => eprintln!("warning: cleaning up {url}: {e}"),
        Err(_) => eprintln!("warning: cleaning up {url}: not done within 120s"),
    }
}

/// One measured lease run.
struct LeaseRun {
    label: String,
    target: String,
    nodes: u32,
    summary: Summary,
}

/// Starts in-process lockd server(s) for `backend` and measures them.
async fn run_lease_inprocess(
    args: &LeaseArgs,
    backend: Backend,
    doc: &bytes::Bytes,
    run_id: &str,
) -> Result<LeaseRun, String> {
    let srv = InProcess::start(backend, &args.s3).await?;
    let (label, store_url) = (srv.label.clone(), srv.store_url.clone());
    let result = run_lease_target(args, &label, &srv.bases(), doc, run_id).await;
    srv.stop().await;
    Ok(LeaseRun {
        label,
        target: store_url,
        nodes: backend.nodes(),
        summary: result?,
    })
}

/// `(2 nodes, --ha concurrent)` for object-store runs, else nothing.
fn nodes_text(label: &str, nodes: u32) -> String {
    if !label.starts_with("s3x") {
        return String::new();
    }
    let plural = if nodes == 1 { "" } else { "s" };
    format!(" ({nodes} node{plural}, --ha concurrent)")
}

/// `errors by kind (whole run): acquire 409 cas_mismatch × 3, …`.
fn error_kinds_line(report: &Report, kinds: &std::collections::BTreeMap<String, u64>) {
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
struct CompareRow {
    label: String,
    rate: f64,
    latency: Option<Latency>,
}

/// Ratios of `row` to `reference`: throughput, p50, p99 (NaN where a side
/// has no value, e.g. no latency samples when nothing completed).
fn ratios(row: &CompareRow, reference: Option<&CompareRow>) -> Option<(f64, f64, f64)> {
    let r = reference?;
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let lat = |f: fn(&Latency) -> u64| match (row.latency, r.latency) {
        (Some(a), Some(b)) => div(f(&a) as f64, f(&b) as f64),
        _ => f64::NAN,
    };
    Some((div(row.rate, r.rate), lat(|l| l.p50), lat(|l| l.p99)))
}

fn ratios_json(row: &CompareRow, reference: Option<&CompareRow>) -> Value {
    let finite = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    ratios(row, reference).map_or(
        Value::Null,
        |(t, p50, p99)| json!({ "throughput": finite(t), "p50": finite(p50), "p99": finite(p99) }),
    )
}

/// `0.043`, `0.52`, `1.9`, `12`.
fn fmt_ratio(v: f64) -> String {
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

/// The `vs disk` / `vs s3x1` table (only when object-store runs exist).
fn comparison_lines(report: &Report, title: &str, unit: &str, latency: &str, rows: &[CompareRow]) {
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
    let run_id = new_run_id();

    // Fail fast on a wrong --url or store flags instead of after the baseline run.
    let backends = match &args.url {
        Some(url) => {
            let target = Target::Lease {
                bases: vec![url.trim_end_matches('/').to_string()],
                key_prefix: String::new(),
                keys_per_client: 1,
            };
            load::preflight(&load::http_client(), &target, &doc).await?;
            Vec::new()
        }
        None => s3::plan(args.store, &args.s3)?,
    };

    let baseline = if args.no_baseline {
        None
    } else {
        Some(run_baseline(common, &doc).await?)
    };

    let mut runs: Vec<LeaseRun> = Vec::new();
    if let Some(url) = &args.url {
        let s = run_lease_target(&args, "remote", std::slice::from_ref(url), &doc, &run_id).await?;
        runs.push(LeaseRun {
            label: "remote".into(),
            target: url.clone(),
            nodes: 1,
            summary: s,
        });
    } else {
        for &backend in &backends {
            runs.push(run_lease_inprocess(&args, backend, &doc, &run_id).await?);
        }
    }

    header_lines(&report, "lease", common, threads);
    if let Some(root) = &args.s3.s3 {
        report.line(&format!(
            "s3: {} (each node its own client of the store; clients spread round-robin over the nodes)",
            root.describe()
        ));
    }
    let ceiling = baseline.as_ref().map(|b| b.rate / REQUESTS_PER_CYCLE);
    if let Some(b) = &baseline {
        baseline_lines(&report, b);
    }
    let mut runs_json = Vec::new();
    let rows: Vec<CompareRow> = runs
        .iter()
        .map(|r| CompareRow {
            label: r.label.clone(),
            rate: r.summary.rate,
            latency: (r.summary.units > 0).then_some(r.summary.latency),
        })
        .collect();
    let find_row = |l: &str| rows.iter().find(|r| r.label == l);
    for (run, row) in runs.iter().zip(&rows) {
        let (label, target, s) = (&run.label, &run.target, &run.summary);
        let ratio = ceiling.filter(|c| *c > 0.0).map(|c| s.rate / c);
        let ratio_text = ratio
            .map(|r| format!(" ({r:.2} of baseline ceiling)"))
            .unwrap_or_default();
        report.line(&format!(
            "{label}{}: {} cycles/s{ratio_text}, {}, errors {}",
            nodes_text(label, run.nodes),
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
        error_kinds_line(&report, &s.error_kinds);
        let mut v = summary_json(s);
        if let Some(o) = v.as_object_mut() {
            o.insert("store".into(), json!(label));
            o.insert("target".into(), json!(target));
            o.insert("key_prefix".into(), json!(key_prefix(&run_id, label)));
            o.insert("cycles_per_s".into(), json!(s.rate));
            o.insert("requests_per_s".into(), json!(s.rate * REQUESTS_PER_CYCLE));
            o.insert("ratio_of_baseline_ceiling".into(), json!(ratio));
            o.insert("nodes".into(), json!(run.nodes));
            o.insert("error_kinds".into(), json!(s.error_kinds));
            o.insert(
                "ratios".into(),
                json!({
                    "vs_disk": ratios_json(row, find_row("disk")),
                    "vs_s3_1node": ratios_json(row, find_row("s3x1")),
                }),
            );
        }
        runs_json.push(v);
    }
    comparison_lines(
        &report,
        "lease comparison",
        "cycles/s",
        "cycle latency",
        &rows,
    );
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

/// The original Go lockd's published queue figures, quoted from the issue
/// for context (other hardware; not measured by this tool).
const GO_DEQUEUES_PER_S_MEM: f64 = 2000.0;
/// See [`GO_DEQUEUES_PER_S_MEM`].
const GO_DEQUEUES_PER_S_DISK: f64 = 850.0;

/// Requests per queued message: enqueue, dequeue (or its share of a
/// subscribe stream), ack.
const REQUESTS_PER_MESSAGE: f64 = 3.0;

/// A short run id: the low 24 bits of the wall clock in milliseconds.
fn new_run_id() -> String {
    format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
            & 0xff_ffff
    )
}

/// One measured queue run.
struct QueueRun {
    store: String,
    nodes: u32,
    mode: queue::Mode,
    target: String,
    queue: String,
    page_size: u32,
    result: queue::QueueResult,
}

impl QueueArgs {
    fn modes(&self) -> &'static [queue::Mode] {
        match self.consume {
            ConsumeChoice::Dequeue => &[queue::Mode::Dequeue],
            ConsumeChoice::Subscribe => &[queue::Mode::Subscribe],
            ConsumeChoice::Both => &[queue::Mode::Dequeue, queue::Mode::Subscribe],
        }
    }

    fn page_size(&self, mode: queue::Mode) -> u32 {
        match mode {
            queue::Mode::Dequeue => self.page_size,
            queue::Mode::Subscribe => self.subscribe_page_size,
        }
    }

    fn baseline_clients(&self) -> u32 {
        self.baseline_clients
            .unwrap_or(self.producers + self.consumers)
    }

    /// The baseline's parameters: same window, the queue's concurrency.
    fn baseline_common(&self) -> CommonArgs {
        CommonArgs {
            clients: self.baseline_clients(),
            duration: self.duration,
            warmup: self.warmup,
            timeout: self.timeout,
            doc_bytes: self.payload_bytes.clamp(64, 64 * 1024 * 1024),
            threads: self.threads,
            json: self.json,
        }
    }
}

async fn run_queue_target(
    args: &QueueArgs,
    store: &str,
    mode: queue::Mode,
    bases: &[String],
    queue_name: &str,
    run_id: &str,
) -> Result<queue::QueueResult, String> {
    let label = format!("{store} {}", mode.name());
    eprintln!(
        "running queue {} against {store} ({}, queue {queue_name:?}): {} warm-up + {} + drain",
        mode.name(),
        bases.join(", "),
        fmt_dur(args.warmup),
        fmt_dur(args.duration)
    );
    let spec = queue::QueueSpec {
        label,
        bases: bases.to_vec(),
        queue: queue_name.to_string(),
        owner_prefix: format!("bench-{run_id}-{store}-{}", mode.name()),
        mode,
        producers: args.producers as usize,
        consumers: args.consumers as usize,
        payload_bytes: args.payload_bytes as usize,
        page_size: args.page_size(mode),
        wait_seconds: args.wait_seconds,
        backlog: args.backlog as usize,
        warmup: args.warmup,
        duration: args.duration,
        timeout: args.timeout,
        drain_timeout: args.drain_timeout,
    };
    queue::run(&spec).await
}

fn opt_latency_text(l: Option<stats::Latency>) -> String {
    match l {
        Some(l) => format!("p50 {} p99 {}", fmt_ms(l.p50), fmt_ms(l.p99)),
        None => "n/a".to_string(),
    }
}

fn opt_latency_json(l: Option<stats::Latency>) -> Value {
    l.map_or(Value::Null, stats::Latency::to_json_ms)
}

fn queue_run_lines(report: &Report, run: &QueueRun, ceiling: Option<f64>, backlog_cap: u32) {
    let r = &run.result;
    let ratio_text = ceiling
        .filter(|c| *c > 0.0)
        .map(|c| format!(" ({:.2} of baseline ceiling)", r.rate / c))
        .unwrap_or_default();
    let e2e = match r.e2e {
        Some(l) => format!(
            "enqueue→ack p50 {}, p99 {}, max {}",
            fmt_ms(l.p50),
            fmt_ms(l.p99),
            fmt_ms(l.max)
        ),
        None => "no message acked in the window".to_string(),
    };
    report.line(&format!(
        "{}{} {} (page_size {}): {} msgs/s{ratio_text}, {e2e}, errors {}",
        run.store,
        nodes_text(&run.store, run.nodes),
        run.mode.name(),
        run.page_size,
        group(r.rate),
        r.errors(),
    ));
    let mut ops = vec![format!("enqueue {}", opt_latency_text(r.enqueue))];
    if run.mode == queue::Mode::Dequeue {
        let per = r
            .per_response()
            .map(|p| format!(" ({p:.2} msgs/response)"))
            .unwrap_or_default();
        ops.push(format!("dequeue {}{per}", opt_latency_text(r.dequeue)));
    }
    ops.push(format!("ack {}", opt_latency_text(r.ack)));
    report.line(&format!("    per request: {}", ops.join(" | ")));
    let mut misc = vec![
        format!("enqueued {}/s", group(r.enqueue_rate)),
        format!(
            "backlog mean {}, max {} (cap {})",
            group(r.backlog_mean),
            group(r.backlog_max as f64),
            group(f64::from(backlog_cap))
        ),
        format!("{} empty polls", r.empty_polls),
    ];
    if r.busy > 0 {
        misc.push(format!(
            "{} queue_busy rejections (more consumers than the server admits)",
            r.busy
        ));
    }
    if run.mode == queue::Mode::Subscribe {
        misc.push(format!(
            "{} streams opened, {} ended by the server",
            r.streams, r.stream_ends
        ));
    }
    misc.push(format!("drained in {:.2}s", r.drain.as_secs_f64()));
    report.line(&format!("    {}", misc.join(", ")));
    if r.errors() > 0 {
        report.line(&format!(
            "    errors: enqueue {}, {} {}, ack {}",
            r.enqueue_errors,
            run.mode.name(),
            r.consume_errors,
            r.ack_errors
        ));
    }
    if r.outside_errors > 0 {
        report.line(&format!(
            "    ({} errors during warm-up or drain)",
            r.outside_errors
        ));
    }
    if r.undrained > 0 {
        report.line(&format!(
            "    WARNING: {} of {} enqueued messages were not acked when the drain ended",
            r.undrained, r.total_enqueued
        ));
    }
    if r.redeliveries > 0 {
        report.line(&format!(
            "    note: {} redeliveries (attempts > 1)",
            r.redeliveries
        ));
    }
    if r.foreign > 0 {
        report.line(&format!(
            "    note: {} messages from another run were acked and ignored",
            r.foreign
        ));
    }
    if r.slow_dequeues > 0 {
        let when = r
            .slow_started
            .map(|(a, b)| {
                format!(
                    ", sent {:.1}-{:.1}s after the run began",
                    a as f64 / 1e9,
                    b as f64 / 1e9
                )
            })
            .unwrap_or_default();
        report.line(&format!(
            "    WARNING: {} dequeues (whole run) answered with a message only after more than {} \
             (longest {}{when}); the window's dequeue latency leaves out those straddling its edges",
            r.slow_dequeues,
            fmt_dur(queue::SLOW_DEQUEUE),
            fmt_ms(r.dequeue_max_all)
        ));
    }
    if r.acked_by_node.len() > 1 {
        let per: Vec<String> = r
            .acked_by_node
            .iter()
            .zip(&r.enqueued_by_node)
            .enumerate()
            .map(|(i, (a, e))| {
                format!(
                    "node{i} acked {}/s, enqueued {}/s",
                    group(*a as f64 / r.window_s),
                    group(*e as f64 / r.window_s)
                )
            })
            .collect();
        report.line(&format!("    per node: {}", per.join(" | ")));
    }
    error_kinds_line(report, &r.error_kinds);
}

fn queue_compare_row(run: &QueueRun) -> CompareRow {
    CompareRow {
        label: run.store.clone(),
        rate: run.result.rate,
        latency: run.result.e2e,
    }
}

fn queue_run_json(
    run: &QueueRun,
    runs: &[QueueRun],
    ceiling: Option<f64>,
    backlog_cap: u32,
) -> Value {
    let r = &run.result;
    let row = queue_compare_row(run);
    let reference = |label: &str| {
        runs.iter()
            .find(|o| o.mode == run.mode && o.store == label)
            .map(queue_compare_row)
    };
    json!({
        "store": run.store,
        "nodes": run.nodes,
        "ratios": {
            "vs_disk": ratios_json(&row, reference("disk").as_ref()),
            "vs_s3_1node": ratios_json(&row, reference("s3x1").as_ref()),
        },
        "error_kinds": r.error_kinds,
        "acked_by_node": r.acked_by_node,
        "slow_dequeues": r.slow_dequeues,
        "dequeue_max_all_ms": stats::ms(r.dequeue_max_all),
        "slow_dequeues_sent_s": r.slow_started.map(|(a, b)| json!([a as f64 / 1e9, b as f64 / 1e9])),
        "enqueued_by_node": r.enqueued_by_node,
        "mode": run.mode.name(),
        "target": run.target,
        "queue": run.queue,
        "page_size": run.page_size,
        "messages_per_s": r.rate,
        "requests_per_s": r.rate * REQUESTS_PER_MESSAGE,
        "ratio_of_baseline_ceiling": ceiling.filter(|c| *c > 0.0).map(|c| r.rate / c),
        "acked": r.acked,
        "end_to_end_ms": opt_latency_json(r.e2e),
        "ops_latency_ms": {
            "enqueue": opt_latency_json(r.enqueue),
            "dequeue": opt_latency_json(r.dequeue),
            "ack": opt_latency_json(r.ack),
        },
        "enqueued": r.enqueued,
        "enqueues_per_s": r.enqueue_rate,
        "errors": {
            "enqueue": r.enqueue_errors,
            "consume": r.consume_errors,
            "ack": r.ack_errors,
            "total": r.errors(),
            "outside_window": r.outside_errors,
        },
        "empty_polls": r.empty_polls,
        "queue_busy": r.busy,
        "messages_per_response": r.per_response(),
        "streams_opened": r.streams,
        "streams_ended_by_server": r.stream_ends,
        "redeliveries": r.redeliveries,
        "foreign": r.foreign,
        "backlog": { "mean": r.backlog_mean, "max": r.backlog_max, "cap": backlog_cap },
        "warmup_acked": r.warmup_acked,
        "total_enqueued": r.total_enqueued,
        "total_acked": r.total_acked,
        "undrained": r.undrained,
        "drain_s": r.drain.as_secs_f64(),
    })
}

fn go_reference_line() -> String {
    format!(
        "original Go lockd, published figures (quoted from the issue, other hardware, not \
         measured here): about {} dequeues/s in memory, about {}/s on disk",
        group(GO_DEQUEUES_PER_S_MEM),
        group(GO_DEQUEUES_PER_S_DISK)
    )
}

async fn cmd_queue(args: QueueArgs, threads: usize) -> Result<(), String> {
    let report = Report {
        to_stderr: args.json,
    };
    let run_id = new_run_id();
    let queue_for = |mode: queue::Mode| -> Result<String, String> {
        let name = if args.url.is_some() {
            format!("{}-{run_id}-{}", args.queue, mode.name())
        } else {
            args.queue.clone()
        };
        match lockd_api::names::normalize_queue(&name) {
            Ok(Some(q)) => Ok(q),
            Ok(None) => Err("--queue must not be empty".to_string()),
            Err(e) => Err(format!("--queue: {}", e.0)),
        }
    };
    for &mode in args.modes() {
        queue_for(mode)?;
    }

    // Fail fast on a wrong --url or store flags instead of after the baseline run.
    let backends = match &args.url {
        Some(url) => {
            let q = queue_for(args.modes()[0])?;
            queue::preflight_queue(&load::http_client(), url, &q).await?;
            Vec::new()
        }
        None => s3::plan(args.store, &args.s3)?,
    };

    let baseline_common = args.baseline_common();
    let baseline = if args.no_baseline {
        None
    } else {
        let doc = load::make_document(baseline_common.doc_bytes as usize);
        Some(run_baseline(&baseline_common, &doc).await?)
    };

    let mut runs: Vec<QueueRun> = Vec::new();
    if let Some(url) = &args.url {
        let base = url.trim_end_matches('/');
        for &mode in args.modes() {
            let q = queue_for(mode)?;
            let result =
                run_queue_target(&args, "remote", mode, &[base.to_string()], &q, &run_id).await?;
            runs.push(QueueRun {
                store: "remote".into(),
                nodes: 1,
                mode,
                target: url.clone(),
                queue: q,
                page_size: args.page_size(mode),
                result,
            });
        }
    } else {
        for &backend in &backends {
            for &mode in args.modes() {
                // A fresh server (and directory or prefix) per run: no leftovers.
                let srv = InProcess::start(backend, &args.s3).await?;
                let q = queue_for(mode)?;
                let result =
                    run_queue_target(&args, &srv.label, mode, &srv.bases(), &q, &run_id).await;
                let (label, store_url) = (srv.label.clone(), srv.store_url.clone());
                srv.stop().await;
                runs.push(QueueRun {
                    store: label,
                    nodes: backend.nodes(),
                    mode,
                    target: store_url,
                    queue: q,
                    page_size: args.page_size(mode),
                    result: result?,
                });
            }
        }
    }

    report.line(&format!(
        "lockd-bench queue: {} producers, {} consumers, {} B payload, backlog cap {}, \
         wait_seconds {}, warm-up {}, window {}, {threads} tokio worker threads, {} CPUs",
        args.producers,
        args.consumers,
        args.payload_bytes,
        group(f64::from(args.backlog)),
        args.wait_seconds,
        fmt_dur(args.warmup),
        fmt_dur(args.duration),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    ));
    let ceiling = baseline.as_ref().map(|b| b.rate / REQUESTS_PER_MESSAGE);
    if let Some(b) = &baseline {
        report.line(&format!(
            "baseline (axum + serde_json, POST /json, {} clients): {} req/s, {}, errors {} \
             → ceiling {} msgs/s (3 requests per message)",
            baseline_common.clients,
            group(b.rate),
            latency_text(b),
            b.errors,
            group(b.rate / REQUESTS_PER_MESSAGE),
        ));
    }
    if let Some(root) = &args.s3.s3 {
        report.line(&format!(
            "s3: {} (each node its own client of the store; producers and consumers spread \
             round-robin over the nodes, a consumer acks on its node)",
            root.describe()
        ));
    }
    for run in &runs {
        queue_run_lines(&report, run, ceiling, args.backlog);
    }
    for &mode in args.modes() {
        let rows: Vec<CompareRow> = runs
            .iter()
            .filter(|r| r.mode == mode)
            .map(queue_compare_row)
            .collect();
        comparison_lines(
            &report,
            &format!("queue {} comparison", mode.name()),
            "msgs/s",
            "enqueue→ack latency",
            &rows,
        );
    }
    report.line(&go_reference_line());

    if args.json {
        let mut m = serde_json::Map::new();
        m.insert("tool".into(), json!("lockd-bench"));
        m.insert("workload".into(), json!("queue"));
        m.insert("producers".into(), json!(args.producers));
        m.insert("consumers".into(), json!(args.consumers));
        m.insert("payload_bytes".into(), json!(args.payload_bytes));
        m.insert("backlog_cap".into(), json!(args.backlog));
        m.insert("page_size".into(), json!(args.page_size));
        m.insert(
            "subscribe_page_size".into(),
            json!(args.subscribe_page_size),
        );
        m.insert("wait_seconds".into(), json!(args.wait_seconds));
        m.insert("warmup_s".into(), json!(args.warmup.as_secs_f64()));
        m.insert("duration_s".into(), json!(args.duration.as_secs_f64()));
        m.insert(
            "drain_timeout_s".into(),
            json!(args.drain_timeout.as_secs_f64()),
        );
        m.insert("worker_threads".into(), json!(threads));
        m.insert(
            "cpus".into(),
            json!(std::thread::available_parallelism().map_or(0, |n| n.get())),
        );
        m.insert("run_id".into(), json!(run_id));
        let b = baseline.as_ref().map_or(Value::Null, |b| {
            let mut v = summary_json(b);
            if let Some(o) = v.as_object_mut() {
                o.insert("clients".into(), json!(baseline_common.clients));
                o.insert("requests_per_s".into(), json!(b.rate));
                o.insert(
                    "ceiling_messages_per_s".into(),
                    json!(b.rate / REQUESTS_PER_MESSAGE),
                );
            }
            v
        });
        m.insert("baseline".into(), b);
        m.insert(
            "go_reference".into(),
            json!({
                "mem_dequeues_per_s": GO_DEQUEUES_PER_S_MEM,
                "disk_dequeues_per_s": GO_DEQUEUES_PER_S_DISK,
                "note": "published figures of the original Go lockd quoted in the issue; \
                         not measured here, other hardware",
            }),
        );
        m.insert(
            "runs".into(),
            Value::Array(
                runs.iter()
                    .map(|r| queue_run_json(r, &runs, ceiling, args.backlog))
                    .collect(),
            ),
        );
        println!("{}", Value::Object(m));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.cmd {
        Cmd::Lease(a) => a.common.threads,
        Cmd::Baseline(c) => c.threads,
        Cmd::Queue(q) => q.threads,
        Cmd::Overload(o) => o.threads,
        Cmd::LeaseCycle(a)
        | Cmd::PublicRead(a)
        | Cmd::Keepalive(a)
        | Cmd::Mixed(a)
        | Cmd::SdkQueue(a) => a.threads,
    };
    let threads = threads
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
            Cmd::Queue(q) => cmd_queue(q, threads).await,
            Cmd::Overload(o) => overload::cmd(o, threads).await,
            Cmd::LeaseCycle(a) => sdk::cmd(sdk::Workload::LeaseCycle, a, threads).await,
            Cmd::PublicRead(a) => sdk::cmd(sdk::Workload::PublicRead, a, threads).await,
            Cmd::Keepalive(a) => sdk::cmd(sdk::Workload::Keepalive, a, threads).await,
            Cmd::Mixed(a) => sdk::cmd(sdk::Workload::Mixed, a, threads).await,
            Cmd::SdkQueue(a) => sdk::cmd(sdk::Workload::Queue, a, threads).await,
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

    #[test]
    fn queue_cli_parses() {
        let cli = Cli::try_parse_from(["lockd-bench", "queue", "--duration", "5s", "-w", "1s"]);
        let Ok(Cli { cmd: Cmd::Queue(q) }) = cli else {
            panic!("queue did not parse");
        };
        assert_eq!((q.producers, q.consumers), (4, 4));
        assert_eq!((q.page_size, q.subscribe_page_size), (1, 8));
        assert_eq!(
            (q.payload_bytes, q.backlog, q.wait_seconds),
            (1024, 2000, 5)
        );
        assert_eq!(q.modes(), [queue::Mode::Dequeue, queue::Mode::Subscribe]);
        assert_eq!(q.baseline_clients(), 8);
        assert!(Cli::try_parse_from([
            "lockd-bench",
            "queue",
            "--consume",
            "subscribe",
            "--store",
            "disk",
            "-p",
            "2",
            "-c",
            "16",
            "--subscribe-page-size",
            "64"
        ])
        .is_ok());
        assert!(Cli::try_parse_from(["lockd-bench", "queue", "--page-size", "65"]).is_err());
        assert!(Cli::try_parse_from(["lockd-bench", "queue", "--payload-bytes", "8"]).is_err());
        assert!(
            Cli::try_parse_from(["lockd-bench", "queue", "--store", "mem", "--url", "x"]).is_err()
        );
    }

    #[test]
    fn s3_cli_parses() {
        let cli = Cli::try_parse_from([
            "lockd-bench",
            "lease",
            "--store",
            "s3",
            "--s3",
            "http://127.0.0.1:8333/lockd-test",
            "--nodes",
            "1,2",
            "-c",
            "32",
        ]);
        let Ok(Cli { cmd: Cmd::Lease(a) }) = cli else {
            panic!("lease --store s3 did not parse");
        };
        assert_eq!(a.store, StoreChoice::S3);
        assert_eq!(a.s3.nodes, [1, 2]);
        let root = a.s3.s3.clone().expect("--s3");
        assert_eq!(
            root.store_url("x"),
            "s3://127.0.0.1:8333/lockd-test/x?insecure=1"
        );
        assert_eq!(
            s3::plan(a.store, &a.s3),
            Ok(vec![
                Backend::Disk,
                Backend::S3 { nodes: 1 },
                Backend::S3 { nodes: 2 }
            ])
        );

        let cli = Cli::try_parse_from([
            "lockd-bench",
            "queue",
            "--store",
            "s3",
            "--s3",
            "s3://127.0.0.1:8333/lockd-test/bench?insecure=1",
            "--nodes",
            "2",
            "--nodes",
            "1",
            "--queue-poll-interval",
            "250ms",
            "--consume",
            "dequeue",
        ]);
        let Ok(Cli { cmd: Cmd::Queue(q) }) = cli else {
            panic!("queue --store s3 did not parse");
        };
        assert_eq!(q.s3.nodes, [2, 1]);
        assert_eq!(q.s3.queue_poll_interval, Some(Duration::from_millis(250)));
        assert_eq!(
            s3::plan(q.store, &q.s3),
            Ok(vec![
                Backend::Disk,
                Backend::S3 { nodes: 2 },
                Backend::S3 { nodes: 1 }
            ])
        );

        // Defaults: one node, no --s3; --store both keeps its meaning.
        let Ok(Cli { cmd: Cmd::Lease(a) }) = Cli::try_parse_from(["lockd-bench", "lease"]) else {
            panic!("lease did not parse");
        };
        assert_eq!(a.s3.nodes, [1]);
        assert!(a.s3.s3.is_none());
        assert_eq!(
            s3::plan(a.store, &a.s3),
            Ok(vec![Backend::Mem, Backend::Disk])
        );

        // --store s3 without --s3, or --nodes/--s3 with another store: rejected at planning.
        let Ok(Cli { cmd: Cmd::Lease(a) }) =
            Cli::try_parse_from(["lockd-bench", "lease", "--store", "s3"])
        else {
            panic!("lease --store s3 did not parse");
        };
        assert!(s3::plan(a.store, &a.s3).is_err());
        let Ok(Cli { cmd: Cmd::Queue(q) }) =
            Cli::try_parse_from(["lockd-bench", "queue", "--store", "disk", "--nodes", "2"])
        else {
            panic!("queue --nodes did not parse");
        };
        assert!(s3::plan(q.store, &q.s3).is_err());

        // Parse errors.
        for bad in [
            &["lockd-bench", "lease", "--nodes", "0"][..],
            &["lockd-bench", "lease", "--nodes", "17"],
            &["lockd-bench", "lease", "--nodes", "1,x"],
            &["lockd-bench", "lease", "--s3", "127.0.0.1:8333/b"],
            &["lockd-bench", "lease", "--s3", "http://127.0.0.1:8333"],
            &[
                "lockd-bench",
                "queue",
                "--url",
                "http://x",
                "--s3",
                "http://h/b",
            ],
            &["lockd-bench", "queue", "--url", "http://x", "--nodes", "2"],
            &["lockd-bench", "lease", "--queue-poll-interval", "soon"],
            &["lockd-bench", "overload", "--store", "s3"],
            &["lockd-bench", "overload", "--nodes", "2"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn comparison_ratios() {
        let lat = |p50, p99| {
            Some(Latency {
                p50,
                p99,
                max: p99,
                mean: p50,
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
            ratios_json(&empty, Some(&disk)),
            json!({ "throughput": 0.0, "p50": null, "p99": null })
        );
        assert_eq!(ratios_json(&s3x2, None), Value::Null);
        assert_eq!(fmt_ratio(0.0432), "0.043");
        assert_eq!(fmt_ratio(1.234), "1.23");
        assert_eq!(fmt_ratio(12.4), "12");
        assert_eq!(fmt_ratio(f64::NAN), "n/a");
    }

    #[test]
    fn overload_cli_parses() {
        let cli = Cli::try_parse_from(["lockd-bench", "overload"]);
        let Ok(Cli {
            cmd: Cmd::Overload(o),
        }) = cli
        else {
            panic!("overload did not parse");
        };
        assert_eq!(o.duration, Duration::from_secs(20));
        assert_eq!(o.calibrate, Duration::from_secs(5));
        assert!((o.factor - 10.0).abs() < 1e-9);
        assert_eq!((o.producers, o.consumers), (4, 4));
        assert_eq!((o.qrf_queue_soft, o.qrf_queue_hard), (64, 128));
        assert_eq!(o.lsf_interval, Duration::from_millis(100));
        assert_eq!(o.store, overload::OneStore::Mem);
        assert!(Cli::try_parse_from([
            "lockd-bench",
            "overload",
            "--store",
            "disk",
            "--duration",
            "10s",
            "--default-qrf"
        ])
        .is_ok());
        assert!(Cli::try_parse_from([
            "lockd-bench",
            "overload",
            "--default-qrf",
            "--qrf-queue-soft",
            "8"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["lockd-bench", "overload", "--store", "both"]).is_err());
        assert!(
            Cli::try_parse_from(["lockd-bench", "overload", "--url", "x", "--store", "mem"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["lockd-bench", "overload", "--factor", "0"]).is_err());
        assert!(Cli::try_parse_from(["lockd-bench", "overload", "--payload-bytes", "16"]).is_err());
    }
}
