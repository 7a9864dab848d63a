//! The workers of the SDK workloads and the measurement window that
//! runs them: warm-up, then a timed (or `--ops`) window with a progress
//! bar; every operation's latency by class, errors by code.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lockd_client::{AcquireRequest, Block, Client, DequeueOptions, EnqueueOptions};
use serde_json::Value;
use tokio::sync::watch;

use super::{Consume, Keys, Workload};
use crate::report::group;

pub(super) const WARMUP: u8 = 0;
pub(super) const MEASURE: u8 = 1;
pub(super) const STOP: u8 = 2;

/// Shared state of one measurement window.
pub(super) struct Ctl {
    pub(super) phase: AtomicU8,
    /// Operations left to claim in `--ops` mode (i64::MAX otherwise).
    pub(super) remaining: AtomicI64,
    pub(super) ops_mode: bool,
    pub(super) done: AtomicU64,
    pub(super) errors: AtomicU64,
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
pub(super) struct Rec {
    pub(super) classes: Vec<Vec<u64>>,
    pub(super) errors: BTreeMap<String, u64>,
}

pub(super) type SharedRec = Arc<Mutex<Rec>>;

/// Records the outcome of an operation started at `t`.
pub(super) fn finish(
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
pub(super) fn code(e: &lockd_client::Error) -> String {
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
        E::Selector(_) => "selector".into(),
        E::Mutation(_) => "mutation".into(),
        E::TxnDecided { .. } => "txn_conflict".into(),
    }
}

pub(super) async fn timed<T>(
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
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------- plan

/// Everything a worker needs.
pub(super) struct Ctx {
    pub(super) workload: Workload,
    pub(super) client: Client,
    pub(super) prefix: String,
    pub(super) keys: Keys,
    pub(super) doc: Arc<Value>,
    pub(super) payload: Bytes,
    pub(super) ttl: Duration,
    pub(super) timeout: Duration,
    pub(super) read_ratio: f64,
    pub(super) producers: u32,
    pub(super) consume: Consume,
    pub(super) queue: String,
    #[cfg(feature = "etcd")]
    pub(super) etcd: Option<super::etcd::Etcd>,
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
    pub(super) fn all_keys(&self, concurrency: u32) -> Vec<String> {
        match self.keys {
            Keys::Distinct => (0..concurrency)
                .map(|w| format!("{}-w{w}", self.prefix))
                .collect(),
            Keys::Shared => vec![format!("{}-shared", self.prefix)],
            Keys::Count(n) => (0..n).map(|k| format!("{}-k{k}", self.prefix)).collect(),
        }
    }

    pub(super) async fn lease_cycle(&self, key: String, owner: &str) -> Result<(), String> {
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
pub(super) enum System {
    Lockd,
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Etcd,
}

impl System {
    pub(super) fn name(self) -> &'static str {
        match self {
            System::Lockd => "lockd",
            System::Etcd => "etcd",
        }
    }
}

pub(super) async fn worker(
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
pub(super) struct Measured {
    pub(super) elapsed: Duration,
    pub(super) classes: Vec<Vec<u64>>,
    pub(super) errors: BTreeMap<String, u64>,
}

impl Measured {
    /// Adds the windows of `other`.
    pub(super) fn merge(&mut self, other: Measured) {
        self.elapsed += other.elapsed;
        self.absorb(Rec {
            classes: other.classes,
            errors: other.errors,
        });
    }

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

pub(super) struct WindowSpec {
    pub(super) concurrency: u32,
    pub(super) warmup: Duration,
    pub(super) duration: Duration,
    pub(super) ops: Option<u64>,
    pub(super) progress: bool,
    pub(super) label: String,
}

pub(super) async fn run_window(
    sys: System,
    ctx: &Arc<Ctx>,
    spec: &WindowSpec,
    into: &mut Measured,
) {
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
            group(rate),
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
