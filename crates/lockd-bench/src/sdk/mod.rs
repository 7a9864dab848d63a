//! Workloads driven through the Rust SDK (`lockd-client`): `lease-cycle`,
//! `public-read`, `keepalive`, `mixed` and `sdk-queue`, with a live
//! progress bar, a summary table (ops/s, p50/p95/p99/max, errors by code),
//! `--json`, `--sweep` (SVG chart) and, for `lease-cycle`, `--vs-etcd`
//! (the equivalent workload against etcd in alternating windows);
//! `--fsync-delay` runs the in-process `disk://` server with a simulated
//! fsync latency, and `--vs-no-delay` measures it against the same server
//! without one in alternating rounds (see `slowdisk.rs`).

#[cfg(feature = "etcd")]
mod etcd;
mod slowdisk;
mod summary;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use lockd_client::Client;
use serde::Serialize;
use serde_json::{json, Value};

use crate::chart;
use crate::report::{fmt_dur, fmt_ms, group, print_json, ser_secs};
use crate::s3::Backend;
use crate::server::InProcess;
use slowdisk::{CommitCounters, Commits, DelayRatio};
use summary::{summarize, table, EtcdRatio, Summary};
use worker::{run_window, Ctx, Measured, System, WindowSpec};

/// Which SDK workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// acquire → save JSON → release.
    LeaseCycle,
    /// Public reads of committed documents.
    PublicRead,
    /// Keepalives of one held lease per client.
    Keepalive,
    /// YCSB-like mix of public reads and lease-cycle updates.
    Mixed,
    /// Producers enqueue, consumers dequeue or subscribe and ack.
    Queue,
}

impl Workload {
    /// The subcommand's name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::LeaseCycle => "lease-cycle",
            Workload::PublicRead => "public-read",
            Workload::Keepalive => "keepalive",
            Workload::Mixed => "mixed",
            Workload::Queue => "sdk-queue",
        }
    }

    fn classes(self) -> &'static [&'static str] {
        match self {
            Workload::LeaseCycle => &["cycle"],
            Workload::PublicRead => &["read"],
            Workload::Keepalive => &["keepalive"],
            Workload::Mixed => &["read", "update"],
            Workload::Queue => &["enqueue", "consume+ack"],
        }
    }
}

/// Storage of the in-process server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Store {
    /// `mem://`
    Mem,
    /// `disk://` in a fresh temporary directory.
    Disk,
}

/// How queue consumers receive messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consume {
    /// `dequeue` (wait up to 1 s) then `ack`, one message at a time.
    Dequeue,
    /// One `subscribe` stream per consumer; every delivery is acked.
    Subscribe,
}

/// Which keys the clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// One key per client: no contention.
    Distinct,
    /// One key for everybody: every lease cycle contends.
    Shared,
    /// N keys, each operation picks one at random.
    Count(u32),
}

fn parse_keys(s: &str) -> Result<Keys, String> {
    match s {
        "distinct" => Ok(Keys::Distinct),
        "shared" => Ok(Keys::Shared),
        n => match n.parse::<u32>() {
            Ok(0) | Err(_) => Err(format!(
                "expected distinct, shared or a key count ≥ 1, got {n:?}"
            )),
            Ok(n) => Ok(Keys::Count(n)),
        },
    }
}

fn keys_text(k: Keys) -> String {
    match k {
        Keys::Distinct => "distinct".into(),
        Keys::Shared => "shared".into(),
        Keys::Count(n) => n.to_string(),
    }
}

/// Flags shared by the SDK workloads.
#[derive(Args, Debug, Clone)]
pub struct SdkArgs {
    /// Concurrent clients (tasks; they share one SDK client, as a service would).
    #[arg(short = 'c', long = "concurrency", visible_alias = "clients", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Measurement window (10s, 1500ms, 1m, or plain seconds).
    #[arg(short = 'd', long, default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub duration: Duration,
    /// Measure this many operations instead of a time window.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,
    /// Warm-up before each measurement window (not measured).
    #[arg(short = 'w', long, default_value = "1s", value_parser = crate::cli::parse_duration)]
    pub warmup: Duration,
    /// Per-operation timeout; slower operations count as errors.
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub timeout: Duration,
    /// Size of the JSON document (lease-cycle, public-read, mixed) or queue payload, bytes.
    #[arg(long, visible_alias = "payload-bytes", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(16..=64 * 1024 * 1024))]
    pub doc_bytes: u32,
    /// Keys: `distinct` (one per client), `shared` (one for all) or a key count.
    #[arg(long, default_value = "distinct", value_parser = parse_keys)]
    pub keys: Keys,
    /// lockd endpoints (comma list); default: an in-process server.
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Store of the in-process server.
    #[arg(long, value_enum, default_value_t = Store::Mem)]
    pub store: Store,
    /// Client TLS bundle (PEM) for https endpoints.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Server TLS bundle: the in-process server speaks mTLS (needs --bundle).
    #[arg(long, requires = "bundle", conflicts_with = "endpoints")]
    pub server_bundle: Option<PathBuf>,
    /// mixed: share of reads (the rest are lease-cycle updates).
    #[arg(long, default_value_t = 0.95)]
    pub read_ratio: f64,
    /// Lease TTL (and keepalive extension).
    #[arg(long, default_value = "30s", value_parser = crate::cli::parse_duration)]
    pub ttl: Duration,
    /// sdk-queue: producers among the clients (default: half).
    #[arg(short = 'p', long)]
    pub producers: Option<u32>,
    /// sdk-queue: how consumers receive.
    #[arg(long, value_enum, default_value_t = Consume::Dequeue)]
    pub consume: Consume,
    /// Run at each of these concurrencies and write an SVG chart (--chart).
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<u32>,
    /// Where --sweep writes its chart.
    #[arg(long, default_value = "lockd-bench-sweep.svg")]
    pub chart: PathBuf,
    /// lease-cycle: also run the equivalent workload against this etcd (feature `etcd`).
    #[arg(long)]
    pub vs_etcd: Option<String>,
    /// With --vs-etcd: alternating windows per system (the duration is split among them).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// In-process `--store disk` only: a simulated fsync latency (2ms,
    /// 10ms, …) added after every durable write of the store, as on a slow
    /// disk (lockd-server's `fault-hooks` test hook). Reports the store's
    /// group commits (batches per commit) too.
    #[arg(long, value_parser = crate::cli::parse_duration)]
    pub fsync_delay: Option<Duration>,
    /// With --fsync-delay: run the workload on a second `disk://` server
    /// without the delay as well, in --rounds alternating windows, and
    /// report delayed ÷ undelayed.
    #[arg(long, requires = "fsync_delay", conflicts_with = "vs_etcd")]
    pub vs_no_delay: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a JSON summary on stdout (the report moves to stderr).
    #[arg(long)]
    pub json: bool,
}

// ---------------------------------------------------------------- setup

/// Starts the in-process server (mTLS with `--server-bundle`); `delay` is
/// the simulated fsync latency of a `disk://` server, whose `/metrics`
/// (on a free local port) then tell its group commits.
async fn start_server(args: &SdkArgs, delay: Option<Duration>) -> Result<InProcess, String> {
    let backend = match args.store {
        Store::Mem => Backend::Mem,
        Store::Disk => Backend::Disk,
    };
    let tls = match &args.server_bundle {
        Some(path) => Some(
            lockd_tls::ServerBundle::load(path, None)
                .map_err(|e| format!("server bundle {}: {e}", path.display()))?,
        ),
        None => None,
    };
    InProcess::start_with(backend, |cfg| {
        cfg.tls = tls.clone();
        if args.fsync_delay.is_some() {
            cfg.disk_sync_delay = delay;
            cfg.metrics_listen = Some("127.0.0.1:0".into());
        }
    })
    .await
}

/// One side of an SDK workload's windows: a server's context and where
/// its group-commit counters are read.
#[derive(Clone)]
struct Side {
    name: &'static str,
    ctx: Arc<Ctx>,
    metrics: Option<std::net::SocketAddr>,
}

/// One window on `side`, with the group commits it made.
async fn measure(
    side: &Side,
    spec: &WindowSpec,
) -> Result<(Measured, Option<CommitCounters>), String> {
    let t0 = std::time::Instant::now();
    let before = match side.metrics {
        Some(addr) => Some(CommitCounters::scrape(addr).await?),
        None => None,
    };
    let mut m = Measured::default();
    run_window(System::Lockd, &side.ctx, spec, &mut m).await;
    let commits = match (side.metrics, before) {
        (Some(addr), Some(before)) => Some(
            CommitCounters::scrape(addr)
                .await?
                .since(before, t0.elapsed()),
        ),
        _ => None,
    };
    Ok((m, commits))
}

fn build_client(endpoints: &[String], args: &SdkArgs) -> Result<Client, String> {
    let mut b = Client::builder().http_timeout(args.timeout);
    for e in endpoints {
        b = b.endpoint(e);
    }
    b = match &args.bundle {
        Some(p) => b.bundle_path(p.clone()),
        None => b.disable_mtls(true),
    };
    b.build().map_err(|e| format!("building the client: {e}"))
}

fn json_doc(bytes: usize) -> Value {
    // {"pad":"xxx…"} of exactly `bytes` bytes (at least the envelope).
    let pad = bytes.saturating_sub(r#"{"pad":""}"#.len());
    json!({ "pad": "x".repeat(pad) })
}

/// Writes the document to every key a read workload touches.
async fn populate(ctx: &Arc<Ctx>, keys: Vec<String>) -> Result<(), String> {
    use futures_util::stream::{self, StreamExt};
    let n = keys.len();
    let results: Vec<Result<(), String>> = stream::iter(keys)
        .map(|k| {
            let ctx = ctx.clone();
            async move { ctx.lease_cycle(k, "bench-populate").await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        return Err(format!("populating {n} keys: {e}"));
    }
    Ok(())
}

fn run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:x}",
        (t.as_micros() as u64) ^ ((std::process::id() as u64) << 40)
    )
}

// ---------------------------------------------------------------- command

/// Results at one concurrency.
#[derive(Debug, Clone, Serialize)]
struct Point {
    concurrency: u32,
    lockd: Summary,
    etcd: Option<Summary>,
    /// lockd ÷ etcd.
    ratio: Option<EtcdRatio>,
    /// `--fsync-delay`: the group commits of the server measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    commits: Option<Commits>,
    /// `--vs-no-delay`: the same workload without the delay.
    #[serde(skip_serializing_if = "Option::is_none")]
    no_delay: Option<Summary>,
    /// `--vs-no-delay`: with the delay ÷ without.
    #[serde(skip_serializing_if = "Option::is_none")]
    vs_no_delay: Option<DelayRatio>,
}

/// The JSON summary of an SDK workload.
#[derive(Debug, Clone, Serialize)]
struct SdkReport {
    workload: &'static str,
    target: String,
    doc_bytes: u32,
    keys: String,
    read_ratio: f64,
    #[serde(rename = "warmup_s", serialize_with = "ser_secs")]
    warmup: Duration,
    #[serde(rename = "duration_s", serialize_with = "ser_secs")]
    duration: Duration,
    ops: Option<u64>,
    rounds: u32,
    vs_etcd: Option<String>,
    /// `--fsync-delay`, ms.
    fsync_delay_ms: Option<f64>,
    vs_no_delay: bool,
    worker_threads: usize,
    cpus: usize,
    run_id: String,
    runs: Vec<Point>,
}

/// Runs an SDK workload.
pub async fn cmd(wl: Workload, args: SdkArgs, threads: usize) -> Result<(), String> {
    if args.vs_etcd.is_some() && wl != Workload::LeaseCycle {
        return Err("--vs-etcd is only available for lease-cycle".into());
    }
    #[cfg(not(feature = "etcd"))]
    if args.vs_etcd.is_some() {
        return Err("--vs-etcd needs lockd-bench built with `--features etcd` (and protoc)".into());
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return Err("--read-ratio must be within 0..=1".into());
    }
    if wl == Workload::Queue && args.concurrency < 2 {
        return Err("sdk-queue needs at least 2 clients (producers + consumers)".into());
    }
    if args.fsync_delay.is_some() && (args.store != Store::Disk || !args.endpoints.is_empty()) {
        return Err(
            "--fsync-delay applies to the in-process disk server only (--store disk, no --endpoints)"
                .into(),
        );
    }
    let json_out = args.json;
    let say = |s: &str| {
        if json_out {
            eprint!("{s}");
        } else {
            print!("{s}");
        }
    };

    let server = if args.endpoints.is_empty() {
        Some(start_server(&args, args.fsync_delay).await?)
    } else {
        None
    };
    // --vs-no-delay: the same store without the delay.
    let base = if args.vs_no_delay {
        Some(start_server(&args, None).await?)
    } else {
        None
    };
    let endpoints = match &server {
        Some(s) => vec![s.base_url()],
        None => args.endpoints.clone(),
    };
    let target = match &server {
        Some(s) => match args.fsync_delay {
            Some(d) => format!("in-process {} with fsync +{}", s.store_url, fmt_dur(d)),
            None => format!("in-process {}", s.store_url),
        },
        None => endpoints.join(","),
    };
    let base_target = base.as_ref().map(|b| format!("in-process {}", b.store_url));
    let client = build_client(&endpoints, &args)?;
    let base_client = match &base {
        Some(b) => Some(build_client(&[b.base_url()], &args)?),
        None => None,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let id = run_id();
    let sweep: Vec<u32> = if args.sweep.is_empty() {
        vec![args.concurrency]
    } else {
        args.sweep.clone()
    };
    if sweep.contains(&0) {
        return Err("--sweep values must be ≥ 1".into());
    }

    #[cfg(feature = "etcd")]
    let etcd = match &args.vs_etcd {
        Some(url) => Some(etcd::Etcd::connect(url, &id).await?),
        None => None,
    };

    let mut head = format!(
        "lockd-bench {}: {} → {}, {} B document, keys {}, warm-up {}, {}, {} tokio worker threads, {} CPUs\n",
        wl.name(),
        target,
        if args.vs_etcd.is_some() { "with etcd" } else { "lockd only" },
        args.doc_bytes,
        keys_text(args.keys),
        fmt_dur(args.warmup),
        match args.ops {
            Some(n) => format!("{n} ops per system and concurrency"),
            None => format!("window {}", fmt_dur(args.duration)),
        },
        threads,
        cpus
    );
    if wl == Workload::Mixed {
        head += &format!("    read ratio {}\n", args.read_ratio);
    }
    if let Some(t) = &base_target {
        head += &format!(
            "    against {t} without the delay: {} alternating windows per server\n",
            args.rounds
        );
    }
    if let Some(url) = &args.vs_etcd {
        head += &format!(
            "    etcd {url}: grant lease → txn(create_revision == 0: put lock key with lease) → put state → delete lock key → revoke lease; {} alternating windows per system\n",
            args.rounds
        );
    }
    say(&head);

    let progress = !args.no_progress;
    let mut points = Vec::new();
    for (i, &c) in sweep.iter().enumerate() {
        let producers = args
            .producers
            .unwrap_or(c / 2)
            .clamp(1, c.saturating_sub(1).max(1));
        let make_ctx = |client: &Client| Ctx {
            workload: wl,
            client: client.clone(),
            prefix: format!("bench-{id}-{i}"),
            keys: args.keys,
            doc: Arc::new(json_doc(args.doc_bytes as usize)),
            payload: Bytes::from(
                serde_json::to_vec(&json_doc(args.doc_bytes as usize)).unwrap_or_default(),
            ),
            ttl: args.ttl,
            timeout: args.timeout,
            read_ratio: args.read_ratio,
            producers,
            consume: args.consume,
            queue: format!("bench-{id}-{i}"),
            #[cfg(feature = "etcd")]
            etcd: etcd.clone(),
        };
        let ctx = Arc::new(make_ctx(&client));
        let lockd_side = Side {
            name: if args.fsync_delay.is_some() {
                "delayed"
            } else {
                "lockd"
            },
            ctx: ctx.clone(),
            metrics: server.as_ref().and_then(|s| s.metrics_addr()),
        };
        let base_side = match (&base, &base_client) {
            (Some(b), Some(client)) => Some(Side {
                name: "no-delay",
                ctx: Arc::new(make_ctx(client)),
                metrics: b.metrics_addr(),
            }),
            _ => None,
        };
        if matches!(wl, Workload::PublicRead | Workload::Mixed) {
            populate(&ctx, ctx.all_keys(c)).await?;
            if let Some(b) = &base_side {
                populate(&b.ctx, b.ctx.all_keys(c)).await?;
            }
        }
        let with_etcd = args.vs_etcd.is_some();
        let rounds = if with_etcd || base_side.is_some() {
            args.rounds
        } else {
            1
        };
        let spec = |name: &str, r: u32| WindowSpec {
            concurrency: c,
            warmup: args.warmup,
            duration: args.duration / rounds,
            ops: args.ops.map(|n| (n / rounds as u64).max(1)),
            progress,
            label: if rounds > 1 {
                format!("{name} c={c} {}/{rounds}", r + 1)
            } else {
                format!("{name} c={c}")
            },
        };
        let mut lockd = Measured::default();
        let mut etcd_m = Measured::default();
        let mut base_m = Measured::default();
        let mut commits: Option<CommitCounters> = None;
        let mut base_commits: Option<CommitCounters> = None;
        let add = |into: &mut Option<CommitCounters>, c: Option<CommitCounters>| {
            if let Some(c) = c {
                into.get_or_insert_with(CommitCounters::default).add(c);
            }
        };
        if let Some(b) = &base_side {
            let out = crate::ab::alternate(rounds, [&lockd_side, b], |side, r, _| {
                let side = side.clone();
                let spec = spec(side.name, r);
                async move { measure(&side, &spec).await }
            })
            .await?;
            for round in out {
                lockd.merge(round.a.0);
                add(&mut commits, round.a.1);
                base_m.merge(round.b.0);
                add(&mut base_commits, round.b.1);
            }
        } else {
            for r in 0..rounds {
                let (m, cc) = measure(&lockd_side, &spec(lockd_side.name, r)).await?;
                lockd.merge(m);
                add(&mut commits, cc);
                if with_etcd {
                    run_window(
                        System::Etcd,
                        &ctx,
                        &spec(System::Etcd.name(), r),
                        &mut etcd_m,
                    )
                    .await;
                }
            }
        }
        let commits = commits.map(CommitCounters::figures);
        let base_commits = base_commits.map(CommitCounters::figures);
        let l = summarize("lockd", &target, c, wl, lockd);
        say(&table(&l));
        let (no_delay, vs_no_delay) = match (&base_target, args.fsync_delay) {
            (Some(t), Some(delay)) => {
                let b = summarize("lockd (no delay)", t, c, wl, base_m);
                say(&table(&b));
                let r = DelayRatio::of(delay, &l, &b, [commits, base_commits]);
                say(&r.text(c, &l, &b));
                (Some(b), Some(r))
            }
            _ => {
                if let Some(cc) = &commits {
                    say(&cc.line("group commits"));
                }
                (None, None)
            }
        };
        let e = if let Some(url) = &args.vs_etcd {
            let e = summarize("etcd", url, c, wl, etcd_m);
            say(&table(&e));
            let r = EtcdRatio::of(&l, &e);
            say(&format!(
                "    lockd ÷ etcd at {c} clients: throughput {:.2}×, p99 {} vs {} ({:.2}×)\n",
                r.throughput,
                fmt_ms(l.total.latency.p99),
                fmt_ms(e.total.latency.p99),
                r.p99
            ));
            Some(e)
        } else {
            None
        };
        points.push(Point {
            concurrency: c,
            ratio: e.as_ref().map(|e| EtcdRatio::of(&l, e)),
            lockd: l,
            etcd: e,
            commits,
            no_delay,
            vs_no_delay,
        });
    }

    if (sweep.len() > 1 || !args.sweep.is_empty()) && args.vs_no_delay {
        say("sweep (fsync delay ÷ no delay):\n");
        say(&format!(
            "    {:>8} {:>14} {:>10} {:>14} {:>10} {:>8} {:>8} {:>8}\n",
            "clients", "delayed ops/s", "p99", "no-delay ops/s", "p99", "ratio", "group", "group0"
        ));
        for p in &points {
            let (Some(b), Some(r)) = (&p.no_delay, &p.vs_no_delay) else {
                continue;
            };
            let g = |c: &Option<Commits>| c.map_or("-".into(), |c| format!("{:.1}", c.mean_group));
            say(&format!(
                "    {:>8} {:>14} {:>10} {:>14} {:>10} {:>8} {:>8} {:>8}\n",
                p.concurrency,
                group(p.lockd.total.ops_per_s),
                fmt_ms(p.lockd.total.latency.p99),
                group(b.total.ops_per_s),
                fmt_ms(b.total.latency.p99),
                format!("{:.2}×", r.throughput),
                g(&r.delayed),
                g(&r.no_delay)
            ));
        }
    } else if sweep.len() > 1 || !args.sweep.is_empty() {
        say("sweep:\n");
        say(&format!(
            "    {:>8} {:>14} {:>10} {:>14} {:>10} {:>10}\n",
            "clients", "lockd ops/s", "lockd p99", "etcd ops/s", "etcd p99", "ratio"
        ));
        for p in &points {
            let (eo, ep, r) = match &p.etcd {
                Some(e) => (
                    group(e.total.ops_per_s),
                    fmt_ms(e.total.latency.p99),
                    format!("{:.2}×", EtcdRatio::of(&p.lockd, e).throughput),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            say(&format!(
                "    {:>8} {:>14} {:>10} {:>14} {:>10} {:>10}\n",
                p.concurrency,
                group(p.lockd.total.ops_per_s),
                fmt_ms(p.lockd.total.latency.p99),
                eo,
                ep,
                r
            ));
        }
        let series = |f: &dyn Fn(&Point) -> Option<&Summary>| -> Vec<chart::Sample> {
            points
                .iter()
                .filter_map(|p| {
                    f(p).map(|s| chart::Sample {
                        concurrency: p.concurrency,
                        ops_per_s: s.total.ops_per_s,
                        p99_ms: s.total.latency.p99 as f64 / 1e6,
                    })
                })
                .collect()
        };
        let mut lines = vec![chart::Series {
            name: match &server {
                Some(s) => format!(
                    "lockd ({})",
                    &s.store_url[..s.store_url.find("://").map_or(0, |i| i + 3)]
                ),
                None => "lockd".into(),
            },
            samples: series(&|p| Some(&p.lockd)),
        }];
        if args.vs_etcd.is_some() {
            lines.push(chart::Series {
                name: "etcd".into(),
                samples: series(&|p| p.etcd.as_ref()),
            });
        }
        if args.vs_no_delay {
            lines[0].name = format!(
                "lockd (disk://, fsync +{})",
                fmt_dur(args.fsync_delay.unwrap_or_default())
            );
            lines.push(chart::Series {
                name: "lockd (disk://, no delay)".into(),
                samples: series(&|p| p.no_delay.as_ref()),
            });
        }
        let title = format!(
            "lockd-bench {} ({} B, keys {}, {} CPUs)",
            wl.name(),
            args.doc_bytes,
            keys_text(args.keys),
            cpus
        );
        chart::write_svg(&args.chart, &title, &lines)?;
        say(&format!("chart written to {}\n", args.chart.display()));
    }

    if let Some(s) = server {
        s.stop().await;
    }
    if let Some(b) = base {
        b.stop().await;
    }

    if json_out {
        print_json(&SdkReport {
            workload: wl.name(),
            target,
            doc_bytes: args.doc_bytes,
            keys: keys_text(args.keys),
            read_ratio: args.read_ratio,
            warmup: args.warmup,
            duration: args.duration,
            ops: args.ops,
            rounds: if args.vs_etcd.is_some() || args.vs_no_delay {
                args.rounds
            } else {
                1
            },
            vs_etcd: args.vs_etcd.clone(),
            fsync_delay_ms: args.fsync_delay.map(|d| d.as_secs_f64() * 1e3),
            vs_no_delay: args.vs_no_delay,
            worker_threads: threads,
            cpus,
            run_id: id,
            runs: points,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys() {
        assert_eq!(parse_keys("distinct"), Ok(Keys::Distinct));
        assert_eq!(parse_keys("shared"), Ok(Keys::Shared));
        assert_eq!(parse_keys("16"), Ok(Keys::Count(16)));
        assert!(parse_keys("0").is_err());
        assert!(parse_keys("some").is_err());
    }

    #[test]
    fn doc_has_requested_size() {
        let v = json_doc(1024);
        assert_eq!(serde_json::to_vec(&v).unwrap().len(), 1024);
    }
}
