//! Workloads driven through the Rust SDK (`lockd-client`): `lease-cycle`,
//! `public-read`, `keepalive`, `mixed` and `sdk-queue`, with a live
//! progress bar, a summary table (ops/s, p50/p95/p99/max, errors by code),
//! `--json`, `--sweep` (SVG chart) and, for `lease-cycle`, `--vs-etcd`
//! (the equivalent workload against etcd in alternating windows).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lockd_client::{AcquireRequest, Block, Client, DequeueOptions, EnqueueOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::chart;

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
    #[arg(short = 'd', long, default_value = "10s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Measure this many operations instead of a time window.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,
    /// Warm-up before each measurement window (not measured).
    #[arg(short = 'w', long, default_value = "1s", value_parser = crate::parse_duration)]
    pub warmup: Duration,
    /// Per-operation timeout; slower operations count as errors.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
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
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
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

// ---------------------------------------------------------------- control

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Shared state of one measurement window.
struct Ctl {
    phase: AtomicU8,
    /// Operations left to claim in `--ops` mode (i64::MAX otherwise).
    remaining: AtomicI64,
    ops_mode: bool,
    done: AtomicU64,
    errors: AtomicU64,
}

impl Ctl {
    /// Claims the next operation: `None` = stop, `Some(measured)`.
    fn begin(&self) -> Option<bool> {
        match self.phase.load(Ordering::Acquire) {
            WARMUP => Some(false),
            MEASURE => {
                if self.remaining.fetch_sub(1, Ordering::AcqRel) <= 0 {
                    self.phase.store(STOP, Ordering::Release);
                    None
                } else {
                    Some(true)
                }
            }
            _ => None,
        }
    }

    fn stopped(&self) -> bool {
        self.phase.load(Ordering::Acquire) == STOP
    }
}

/// What the workers of one window recorded.
#[derive(Default)]
struct Rec {
    classes: Vec<Vec<u64>>,
    errors: BTreeMap<String, u64>,
}

type SharedRec = Arc<Mutex<Rec>>;

/// Records the outcome of an operation started at `t`.
fn finish(
    ctl: &Ctl,
    rec: &SharedRec,
    measured: bool,
    t: Instant,
    out: Result<Option<usize>, String>,
) {
    // In duration mode only operations that end inside the window count.
    let measured = measured && (ctl.ops_mode || !ctl.stopped());
    if !measured {
        return;
    }
    let ns = t.elapsed().as_nanos() as u64;
    let mut r = rec.lock().unwrap_or_else(|e| e.into_inner());
    match out {
        Ok(Some(class)) => {
            if r.classes.len() <= class {
                r.classes.resize_with(class + 1, Vec::new);
            }
            r.classes[class].push(ns);
            ctl.done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(None) => {}
        Err(code) => {
            *r.errors.entry(code).or_insert(0) += 1;
            ctl.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Error code of an SDK error: the protocol code, else its kind.
fn code(e: &lockd_client::Error) -> String {
    use lockd_client::Error as E;
    match e {
        E::Api(a) if !a.code.is_empty() => a.code.to_string(),
        E::Api(a) => format!("http_{}", a.status),
        E::Transport(_) => "transport".into(),
        E::Tls(_) => "tls".into(),
        E::Timeout => "timeout".into(),
        E::Decode(_) => "decode".into(),
        E::InvalidArgument(_) => "invalid_argument".into(),
        E::Unsupported(_) => "unsupported".into(),
        E::Cancelled(_) => "cancelled".into(),
        E::Handler(_) => "handler".into(),
    }
}

async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = lockd_client::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(code(&e)),
        Err(_) => Err("timeout".into()),
    }
}

/// xorshift64*: cheap per-worker randomness.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------- plan

/// Everything a worker needs.
struct Ctx {
    workload: Workload,
    client: Client,
    prefix: String,
    keys: Keys,
    doc: Arc<Value>,
    payload: Bytes,
    ttl: Duration,
    timeout: Duration,
    read_ratio: f64,
    producers: u32,
    consume: Consume,
    queue: String,
    #[cfg(feature = "etcd")]
    etcd: Option<etcd::Etcd>,
}

impl Ctx {
    fn key(&self, worker: usize, rng: &mut Rng) -> String {
        match self.keys {
            Keys::Distinct => format!("{}-w{worker}", self.prefix),
            Keys::Shared => format!("{}-shared", self.prefix),
            Keys::Count(n) => format!("{}-k{}", self.prefix, rng.next() % n as u64),
        }
    }

    /// Every key a read workload may touch, for `concurrency` clients.
    fn all_keys(&self, concurrency: u32) -> Vec<String> {
        match self.keys {
            Keys::Distinct => (0..concurrency)
                .map(|w| format!("{}-w{w}", self.prefix))
                .collect(),
            Keys::Shared => vec![format!("{}-shared", self.prefix)],
            Keys::Count(n) => (0..n).map(|k| format!("{}-k{k}", self.prefix)).collect(),
        }
    }

    async fn lease_cycle(&self, key: String, owner: &str) -> Result<(), String> {
        let deadline = self.timeout;
        let req = AcquireRequest::new(key, owner)
            .ttl(self.ttl)
            .block(Block::For(deadline));
        let lease = timed(deadline, self.client.acquire(req)).await?;
        if let Err(e) = timed(deadline, lease.save(&*self.doc)).await {
            let _ = timed(deadline, lease.rollback()).await;
            return Err(e);
        }
        timed(deadline, lease.release()).await
    }

    async fn read(&self, key: &str) -> Result<(), String> {
        match timed(self.timeout, self.client.get_public("", key)).await? {
            Some(_) => Ok(()),
            None => Err("not_found".into()),
        }
    }
}

/// Which system a window measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Lockd,
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Lockd => "lockd",
            System::Etcd => "etcd",
        }
    }
}

async fn worker(
    sys: System,
    w: usize,
    ctx: Arc<Ctx>,
    ctl: Arc<Ctl>,
    rec: SharedRec,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = Rng::new(w as u64 + 1 + std::process::id() as u64);
    let owner = format!("bench-{w}");
    match (sys, ctx.workload) {
        (System::Etcd, _) =>
        {
            #[cfg(feature = "etcd")]
            if let Some(etcd) = &ctx.etcd {
                let mut client = etcd.client.clone();
                while let Some(m) = ctl.begin() {
                    let key = ctx.key(w, &mut rng);
                    let t = Instant::now();
                    let out = etcd
                        .cycle(
                            &mut client,
                            &key,
                            &owner,
                            &ctx.payload,
                            ctx.ttl,
                            ctx.timeout,
                        )
                        .await
                        .map(|_| Some(0));
                    finish(&ctl, &rec, m, t, out);
                }
            }
        }
        (System::Lockd, Workload::LeaseCycle) => {
            while let Some(m) = ctl.begin() {
                let key = ctx.key(w, &mut rng);
                let t = Instant::now();
                let out = ctx.lease_cycle(key, &owner).await.map(|_| Some(0));
                finish(&ctl, &rec, m, t, out);
            }
        }
        (System::Lockd, Workload::PublicRead) => {
            while let Some(m) = ctl.begin() {
                let key = ctx.key(w, &mut rng);
                let t = Instant::now();
                let out = ctx.read(&key).await.map(|_| Some(0));
                finish(&ctl, &rec, m, t, out);
            }
        }
        (System::Lockd, Workload::Mixed) => {
            while let Some(m) = ctl.begin() {
                let key = ctx.key(w, &mut rng);
                let t = Instant::now();
                let out = if rng.unit() < ctx.read_ratio {
                    ctx.read(&key).await.map(|_| Some(0))
                } else {
                    ctx.lease_cycle(key, &owner).await.map(|_| Some(1))
                };
                finish(&ctl, &rec, m, t, out);
            }
        }
        (System::Lockd, Workload::Keepalive) => {
            // One lease per client, held for the whole window.
            let key = format!("{}-ka-w{w}", ctx.prefix);
            let mut lease = None;
            while !ctl.stopped() && lease.is_none() {
                let req = AcquireRequest::new(key.clone(), owner.clone())
                    .ttl(ctx.ttl)
                    .block(Block::For(ctx.timeout));
                let t = Instant::now();
                match timed(ctx.timeout, ctx.client.acquire(req)).await {
                    Ok(l) => lease = Some(l),
                    Err(e) => {
                        finish(&ctl, &rec, true, t, Err(format!("acquire:{e}")));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            if let Some(lease) = lease {
                while let Some(m) = ctl.begin() {
                    let t = Instant::now();
                    let out = timed(ctx.timeout, lease.keepalive(ctx.ttl))
                        .await
                        .map(|_| Some(0));
                    finish(&ctl, &rec, m, t, out);
                }
                let _ = timed(ctx.timeout, lease.release()).await;
            }
        }
        (System::Lockd, Workload::Queue) if (w as u32) < ctx.producers => {
            while let Some(m) = ctl.begin() {
                let t = Instant::now();
                let out = timed(
                    ctx.timeout,
                    ctx.client
                        .enqueue(&ctx.queue, ctx.payload.clone(), EnqueueOptions::default()),
                )
                .await
                .map(|_| Some(0));
                finish(&ctl, &rec, m, t, out);
            }
        }
        (System::Lockd, Workload::Queue) => match ctx.consume {
            Consume::Dequeue => {
                let mut opts = DequeueOptions::new(owner.clone());
                opts.block = Some(Duration::from_secs(1));
                while let Some(m) = ctl.begin() {
                    let t = Instant::now();
                    let limit = ctx.timeout + Duration::from_secs(1);
                    let out = match timed(limit, ctx.client.dequeue(&ctx.queue, opts.clone())).await
                    {
                        Ok(Some(msg)) => timed(ctx.timeout, msg.ack()).await.map(|_| Some(1)),
                        Ok(None) => Ok(None),
                        Err(e) if e == "waiting" => Ok(None),
                        Err(e) => Err(e),
                    };
                    finish(&ctl, &rec, m, t, out);
                }
            }
            Consume::Subscribe => {
                let mut opts = DequeueOptions::new(owner.clone());
                opts.page_size = 8;
                while !ctl.stopped() {
                    let (c, r) = (ctl.clone(), rec.clone());
                    let timeout = ctx.timeout;
                    let sub = ctx.client.subscribe(&ctx.queue, opts.clone(), move |msg| {
                        let (c, r) = (c.clone(), r.clone());
                        async move {
                            let Some(m) = c.begin() else {
                                return Err(lockd_client::Error::Cancelled("stop".into()));
                            };
                            let t = Instant::now();
                            let out = timed(timeout, msg.ack()).await.map(|_| Some(1));
                            finish(&c, &r, m, t, out);
                            Ok(())
                        }
                    });
                    tokio::select! {
                        res = sub => {
                            if let Err(e) = res {
                                if !ctl.stopped() {
                                    finish(&ctl, &rec, true, Instant::now(), Err(format!("subscribe:{}", code(&e))));
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            }
                        }
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                    }
                }
            }
        },
    }
}

// ---------------------------------------------------------------- windows

/// The outcome of one or more windows of one system.
#[derive(Default)]
struct Measured {
    elapsed: Duration,
    classes: Vec<Vec<u64>>,
    errors: BTreeMap<String, u64>,
}

impl Measured {
    fn absorb(&mut self, rec: Rec) {
        if self.classes.len() < rec.classes.len() {
            self.classes.resize_with(rec.classes.len(), Vec::new);
        }
        for (dst, src) in self.classes.iter_mut().zip(rec.classes) {
            dst.extend(src);
        }
        for (k, v) in rec.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
    }
}

struct WindowSpec {
    concurrency: u32,
    warmup: Duration,
    duration: Duration,
    ops: Option<u64>,
    progress: bool,
    label: String,
}

async fn run_window(sys: System, ctx: &Arc<Ctx>, spec: &WindowSpec, into: &mut Measured) {
    let ctl = Arc::new(Ctl {
        phase: AtomicU8::new(WARMUP),
        remaining: AtomicI64::new(spec.ops.map_or(i64::MAX, |n| n.min(i64::MAX as u64) as i64)),
        ops_mode: spec.ops.is_some(),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let recs: Vec<SharedRec> = (0..spec.concurrency)
        .map(|_| SharedRec::default())
        .collect();
    let tasks: Vec<_> = recs
        .iter()
        .enumerate()
        .map(|(w, rec)| {
            tokio::spawn(worker(
                sys,
                w,
                ctx.clone(),
                ctl.clone(),
                rec.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();

    let bar = if spec.progress {
        let len = spec
            .ops
            .unwrap_or_else(|| spec.duration.as_millis().max(1) as u64);
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let style =
            ProgressStyle::with_template("{prefix:>24} [{elapsed:>4}] {bar:30.cyan/blue} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(spec.label.clone());
        bar.set_message("warm-up");
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };

    if !spec.warmup.is_zero() {
        tokio::time::sleep(spec.warmup).await;
    }
    let t0 = Instant::now();
    ctl.phase.store(MEASURE, Ordering::Release);
    let tick = Duration::from_millis(100);
    loop {
        let elapsed = t0.elapsed();
        let done = ctl.done.load(Ordering::Relaxed);
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
        bar.set_message(format!(
            "{done} ops, {} ops/s, {} errors",
            crate::group(rate),
            ctl.errors.load(Ordering::Relaxed)
        ));
        if spec.ops.is_some() {
            bar.set_position(done + ctl.errors.load(Ordering::Relaxed));
            if ctl.stopped() {
                break;
            }
        } else {
            bar.set_position(elapsed.as_millis() as u64);
            if elapsed >= spec.duration {
                ctl.phase.store(STOP, Ordering::Release);
                break;
            }
        }
        let left = spec.duration.saturating_sub(elapsed);
        tokio::time::sleep(if spec.ops.is_some() {
            tick
        } else {
            tick.min(left)
        })
        .await;
    }
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(2);
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout(grace, task).await.is_err() {
            abort.abort();
        }
    }
    // In --ops mode the window ends when the last claimed operation has ended.
    let elapsed = if spec.ops.is_some() {
        t0.elapsed()
    } else {
        spec.duration
    };
    bar.finish_and_clear();
    into.elapsed += elapsed;
    for rec in recs {
        into.absorb(std::mem::take(
            &mut *rec.lock().unwrap_or_else(|e| e.into_inner()),
        ));
    }
}

// ---------------------------------------------------------------- summaries

/// Percentiles of one class of operations.
#[derive(Debug, Clone)]
struct ClassSummary {
    name: String,
    ops: u64,
    ops_per_s: f64,
    p50: u64,
    p95: u64,
    p99: u64,
    max: u64,
    mean: u64,
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn class_summary(name: &str, samples: &mut [u64], elapsed: Duration) -> ClassSummary {
    samples.sort_unstable();
    let n = samples.len() as u64;
    ClassSummary {
        name: name.into(),
        ops: n,
        ops_per_s: n as f64 / elapsed.as_secs_f64().max(1e-9),
        p50: pct(samples, 50.0),
        p95: pct(samples, 95.0),
        p99: pct(samples, 99.0),
        max: samples.last().copied().unwrap_or(0),
        mean: samples.iter().sum::<u64>().checked_div(n).unwrap_or(0),
    }
}

/// One system at one concurrency.
#[derive(Debug, Clone)]
struct Summary {
    system: String,
    target: String,
    concurrency: u32,
    elapsed: Duration,
    total: ClassSummary,
    classes: Vec<ClassSummary>,
    errors: BTreeMap<String, u64>,
}

fn summarize(system: &str, target: &str, concurrency: u32, wl: Workload, m: Measured) -> Summary {
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
        total,
        classes,
        errors: m.errors,
    }
}

fn ms(ns: u64) -> String {
    crate::fmt_ms(ns)
}

fn table(s: &Summary) -> String {
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
        out += &format!(
            "    {:<12} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10}\n",
            c.name,
            c.ops,
            crate::group(c.ops_per_s),
            ms(c.p50),
            ms(c.p95),
            ms(c.p99),
            ms(c.max)
        );
    }
    let n: u64 = s.errors.values().sum();
    if n == 0 {
        out += "    errors: 0\n";
    } else {
        let list: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k} × {v}")).collect();
        out += &format!("    errors: {n} ({})\n", list.join(", "));
    }
    out
}

fn class_json(c: &ClassSummary) -> Value {
    let f = |ns: u64| (ns as f64 / 1e6 * 1000.0).round() / 1000.0;
    json!({
        "op": c.name, "count": c.ops, "ops_per_s": (c.ops_per_s * 10.0).round() / 10.0,
        "latency_ms": {"p50": f(c.p50), "p95": f(c.p95), "p99": f(c.p99), "max": f(c.max), "mean": f(c.mean)},
    })
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "system": s.system, "target": s.target, "concurrency": s.concurrency,
        "elapsed_s": s.elapsed.as_secs_f64(), "ops": s.total.ops,
        "ops_per_s": (s.total.ops_per_s * 10.0).round() / 10.0,
        "total": class_json(&s.total),
        "classes": s.classes.iter().map(class_json).collect::<Vec<_>>(),
        "errors": s.errors, "errors_total": s.errors.values().sum::<u64>(),
    })
}

/// lockd ÷ etcd: throughput and p99 ratios.
fn ratio(l: &Summary, e: &Summary) -> (f64, f64) {
    let thr = l.total.ops_per_s / e.total.ops_per_s.max(1e-9);
    let p99 = l.total.p99 as f64 / (e.total.p99.max(1)) as f64;
    (thr, p99)
}

// ---------------------------------------------------------------- setup

struct Server {
    running: lockd_server::RunningServer,
    _dir: Option<tempfile::TempDir>,
    store_url: String,
}

async fn start_server(args: &SdkArgs) -> Result<Server, String> {
    let (store_url, dir) = match args.store {
        Store::Mem => ("mem://".to_string(), None),
        Store::Disk => {
            let d = tempfile::Builder::new()
                .prefix("lockd-bench-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            (format!("disk://{}", d.path().display()), Some(d))
        }
    };
    let mut cfg = lockd_server::ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: store_url.clone(),
        ..Default::default()
    };
    if let Some(path) = &args.server_bundle {
        let bundle = lockd_tls::ServerBundle::load(path, None)
            .map_err(|e| format!("server bundle {}: {e}", path.display()))?;
        cfg.tls = Some(bundle);
    }
    let running = lockd_server::start(cfg)
        .await
        .map_err(|e| format!("starting the in-process {store_url} server: {e}"))?;
    Ok(Server {
        running,
        _dir: dir,
        store_url,
    })
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
struct Point {
    concurrency: u32,
    lockd: Summary,
    etcd: Option<Summary>,
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
    let json_out = args.json;
    let say = |s: &str| {
        if json_out {
            eprint!("{s}");
        } else {
            print!("{s}");
        }
    };

    let server = if args.endpoints.is_empty() {
        Some(start_server(&args).await?)
    } else {
        None
    };
    let endpoints = match &server {
        Some(s) => vec![s.running.base_url()],
        None => args.endpoints.clone(),
    };
    let target = match &server {
        Some(s) => format!("in-process {}", s.store_url),
        None => endpoints.join(","),
    };
    let client = build_client(&endpoints, &args)?;
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
        crate::fmt_dur(args.warmup),
        match args.ops {
            Some(n) => format!("{n} ops per system and concurrency"),
            None => format!("window {}", crate::fmt_dur(args.duration)),
        },
        threads,
        cpus
    );
    if wl == Workload::Mixed {
        head += &format!("    read ratio {}\n", args.read_ratio);
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
        let ctx = Arc::new(Ctx {
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
        });
        if matches!(wl, Workload::PublicRead | Workload::Mixed) {
            populate(&ctx, ctx.all_keys(c)).await?;
        }
        let with_etcd = args.vs_etcd.is_some();
        let rounds = if with_etcd { args.rounds } else { 1 };
        let mut lockd = Measured::default();
        let mut etcd_m = Measured::default();
        for r in 0..rounds {
            let spec = |sys: System| WindowSpec {
                concurrency: c,
                warmup: args.warmup,
                duration: args.duration / rounds,
                ops: args.ops.map(|n| (n / rounds as u64).max(1)),
                progress,
                label: if rounds > 1 {
                    format!("{} c={c} {}/{rounds}", sys.name(), r + 1)
                } else {
                    format!("{} c={c}", sys.name())
                },
            };
            run_window(System::Lockd, &ctx, &spec(System::Lockd), &mut lockd).await;
            if with_etcd {
                run_window(System::Etcd, &ctx, &spec(System::Etcd), &mut etcd_m).await;
            }
        }
        let l = summarize("lockd", &target, c, wl, lockd);
        say(&table(&l));
        let e = if let Some(url) = &args.vs_etcd {
            let e = summarize("etcd", url, c, wl, etcd_m);
            say(&table(&e));
            let (thr, p99) = ratio(&l, &e);
            say(&format!(
                "    lockd ÷ etcd at {c} clients: throughput {thr:.2}×, p99 {} vs {} ({p99:.2}×)\n",
                ms(l.total.p99),
                ms(e.total.p99)
            ));
            Some(e)
        } else {
            None
        };
        points.push(Point {
            concurrency: c,
            lockd: l,
            etcd: e,
        });
    }

    if sweep.len() > 1 || !args.sweep.is_empty() {
        say("sweep:\n");
        say(&format!(
            "    {:>8} {:>14} {:>10} {:>14} {:>10} {:>10}\n",
            "clients", "lockd ops/s", "lockd p99", "etcd ops/s", "etcd p99", "ratio"
        ));
        for p in &points {
            let (eo, ep, r) = match &p.etcd {
                Some(e) => (
                    crate::group(e.total.ops_per_s),
                    ms(e.total.p99),
                    format!("{:.2}×", ratio(&p.lockd, e).0),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            say(&format!(
                "    {:>8} {:>14} {:>10} {:>14} {:>10} {:>10}\n",
                p.concurrency,
                crate::group(p.lockd.total.ops_per_s),
                ms(p.lockd.total.p99),
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
                        p99_ms: s.total.p99 as f64 / 1e6,
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
        if let Err(e) = s.running.shutdown().await {
            eprintln!("warning: stopping the in-process server: {e}");
        }
    }

    if json_out {
        let runs: Vec<Value> = points
            .iter()
            .map(|p| {
                json!({
                    "concurrency": p.concurrency,
                    "lockd": summary_json(&p.lockd),
                    "etcd": p.etcd.as_ref().map(summary_json),
                    "ratio": p.etcd.as_ref().map(|e| {
                        let (thr, p99) = ratio(&p.lockd, e);
                        json!({"throughput": thr, "p99": p99})
                    }),
                })
            })
            .collect();
        let out = json!({
            "workload": wl.name(), "target": target, "doc_bytes": args.doc_bytes,
            "keys": keys_text(args.keys), "read_ratio": args.read_ratio,
            "warmup_s": args.warmup.as_secs_f64(), "duration_s": args.duration.as_secs_f64(),
            "ops": args.ops, "rounds": if args.vs_etcd.is_some() { args.rounds } else { 1 },
            "vs_etcd": args.vs_etcd, "worker_threads": threads, "cpus": cpus, "run_id": id,
            "runs": runs,
        });
        println!("{out}");
    }
    Ok(())
}

// ---------------------------------------------------------------- etcd

#[cfg(feature = "etcd")]
mod etcd {
    use std::time::{Duration, Instant};

    use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

    /// A connection to etcd, shared by all tasks (clones share the channel).
    #[derive(Clone)]
    pub struct Etcd {
        pub client: Client,
        prefix: String,
    }

    fn code(e: etcd_client::Error) -> String {
        match e {
            etcd_client::Error::GRpcStatus(s) => format!("etcd_{:?}", s.code()).to_lowercase(),
            etcd_client::Error::TransportError(_) => "etcd_transport".into(),
            _ => "etcd_error".into(),
        }
    }

    impl Etcd {
        pub async fn connect(url: &str, run: &str) -> Result<Etcd, String> {
            let client = Client::connect([url], None)
                .await
                .map_err(|e| format!("connecting to etcd at {url}: {e}"))?;
            let mut probe = client.clone();
            probe
                .status()
                .await
                .map_err(|e| format!("etcd at {url} does not answer: {e}"))?;
            Ok(Etcd {
                client,
                prefix: format!("/lockd-bench/{run}"),
            })
        }

        /// One lock cycle: grant → txn create-if-absent with the lease →
        /// put state → delete lock key → revoke.
        pub async fn cycle(
            &self,
            c: &mut Client,
            key: &str,
            owner: &str,
            doc: &[u8],
            ttl: Duration,
            timeout: Duration,
        ) -> Result<(), String> {
            match tokio::time::timeout(timeout, self.cycle_inner(c, key, owner, doc, ttl, timeout))
                .await
            {
                Ok(r) => r,
                Err(_) => Err("timeout".into()),
            }
        }

        async fn cycle_inner(
            &self,
            c: &mut Client,
            key: &str,
            owner: &str,
            doc: &[u8],
            ttl: Duration,
            timeout: Duration,
        ) -> Result<(), String> {
            let lock = format!("{}/lock/{key}", self.prefix);
            let state = format!("{}/state/{key}", self.prefix);
            let lease = c
                .lease_grant(ttl.as_secs().max(1) as i64, None)
                .await
                .map_err(code)?
                .id();
            let deadline = Instant::now() + timeout;
            // Create the lock key if absent; wait (poll) while somebody holds it.
            loop {
                let txn = Txn::new()
                    .when([Compare::create_revision(lock.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        lock.clone(),
                        owner,
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                let resp = c.txn(txn).await.map_err(code)?;
                if resp.succeeded() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = c.lease_revoke(lease).await;
                    return Err("etcd_lock_busy".into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            c.put(state, doc, None).await.map_err(code)?;
            c.delete(lock, None).await.map_err(code)?;
            c.lease_revoke(lease).await.map_err(code)?;
            Ok(())
        }
    }
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
    fn percentiles() {
        let mut v: Vec<u64> = (1..=100).collect();
        let s = class_summary("x", &mut v, Duration::from_secs(2));
        assert_eq!((s.p50, s.p95, s.p99, s.max), (50, 95, 99, 100));
        assert_eq!(s.ops, 100);
        assert!((s.ops_per_s - 50.0).abs() < 1e-9);
    }

    #[test]
    fn doc_has_requested_size() {
        let v = json_doc(1024);
        assert_eq!(serde_json::to_vec(&v).unwrap().len(), 1024);
    }
}
