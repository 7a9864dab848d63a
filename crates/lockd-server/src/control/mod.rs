//! Operating the server under pressure and at shutdown:
//!
//! * [`lsf`]: the Local Security Force samples the host and the server's
//!   in-flight work every 200 ms;
//! * [`qrf`]: the Quick Reaction Force turns samples into a posture
//!   (`disengaged`, `soft_arm`, `engaged`, `recovery`) and decides, per
//!   request, to admit, pace or refuse it (429);
//! * [`drain`]: drain-aware shutdown (`Shutdown-Imminent`, refusing new
//!   work, waiting for held leases);
//! * [`Control`]: what the request guard (`crate::http::guard`) and the
//!   sampler share.
//!
//! This module is policy only: the HTTP middleware that applies it lives
//! at the edge, in `crate::http`.

pub mod drain;
pub mod lsf;
pub mod qrf;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use drain::Drain;
use lsf::Sampler;
use qrf::{Controller, QrfConfig};

/// What a request does, for back-pressure and drain decisions: the
/// `kind` of its entry in the endpoint table.
pub use lockd_api::endpoints::Kind;

/// Requests in flight, per kind (the LSF samples these).
#[derive(Debug, Default)]
pub struct Inflight {
    /// Enqueues.
    pub producers: AtomicI64,
    /// Dequeues and subscribes (while their handler runs).
    pub consumers: AtomicI64,
    /// Acks, nacks, extends.
    pub acks: AtomicI64,
    /// Acquires and work on held leases.
    pub locks: AtomicI64,
}

impl Inflight {
    fn counter(&self, kind: Kind) -> Option<&AtomicI64> {
        match kind {
            Kind::Producer => Some(&self.producers),
            Kind::Consumer => Some(&self.consumers),
            Kind::Ack => Some(&self.acks),
            Kind::Acquire | Kind::Lock => Some(&self.locks),
            Kind::Other => None,
        }
    }

    /// Counts a request of `kind` until the guard drops.
    pub fn enter(&self, kind: Kind) -> InflightGuard<'_> {
        let counter = self.counter(kind);
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        InflightGuard { counter }
    }
}

/// Decrements an in-flight counter on drop.
pub struct InflightGuard<'a> {
    counter: Option<&'a AtomicI64>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.counter {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One LSF sample: the host and the server's in-flight work (the console
/// shows it as JSON).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Host memory in use, percent (see [`lsf`] for the rule).
    pub memory_percent: f64,
    /// Whether `memory_percent` counts reclaimable memory as available
    /// (`MemAvailable` was present); if not, QRF subtracts its strict
    /// headroom.
    pub memory_includes_reclaimable: bool,
    /// Swap in use, percent (0 without swap).
    pub swap_percent: f64,
    /// Swap in use, bytes.
    pub swap_bytes: u64,
    /// Load averages.
    pub load1: f64,
    /// 5-minute load average.
    pub load5: f64,
    /// 15-minute load average.
    pub load15: f64,
    /// EWMA baseline of `load1`.
    pub load1_baseline: f64,
    /// `load1 / load1_baseline`.
    pub load1_multiplier: f64,
    /// Host CPU utilisation since the previous sample, percent.
    pub cpu_percent: f64,
    /// Resident set size of this process, bytes.
    pub rss_bytes: u64,
    /// In-flight enqueues.
    pub producers: i64,
    /// In-flight dequeues/subscribes.
    pub consumers: i64,
    /// In-flight acks/nacks/extends.
    pub acks: i64,
    /// In-flight lock operations.
    pub locks: i64,
    /// Messages held by the queues of this server (ready, delayed or in
    /// flight): what grows when producers outrun consumers.
    pub queue_backlog: i64,
}

/// Everything the middleware and the sampler share.
pub struct Control {
    /// The QRF controller.
    pub qrf: Controller,
    /// In-flight requests per kind.
    pub inflight: Inflight,
    /// The drain switch (shared with the queue, whose waiting consumers
    /// must stop when it flips).
    pub drain: Arc<Drain>,
    /// The latest LSF sample and how many were taken (metrics).
    last_sample: std::sync::Mutex<Option<Sample>>,
    samples: std::sync::atomic::AtomicU64,
}

impl Control {
    /// Controls with this QRF configuration, not draining.
    pub fn new(qrf: QrfConfig) -> Arc<Control> {
        Arc::new(Control {
            qrf: Controller::new(qrf),
            inflight: Inflight::default(),
            drain: Arc::new(Drain::new()),
            last_sample: std::sync::Mutex::new(None),
            samples: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The latest LSF sample (`None` before the first, or with QRF off)
    /// and the number of samples taken.
    pub fn last_sample(&self) -> (Option<Sample>, u64) {
        let s = self
            .last_sample
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (s, self.samples.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Runs the LSF sampler feeding the controller until `stop` fires;
    /// logs a sample every `log_every` (zero: never).
    pub async fn run_sampler(
        self: Arc<Self>,
        every: std::time::Duration,
        log_every: std::time::Duration,
        backlog: Arc<dyn Fn() -> i64 + Send + Sync>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.qrf.config().disabled || every.is_zero() {
            return;
        }
        let mut sampler = Sampler::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_log = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let mut s = sampler.sample(&self.inflight);
            s.queue_backlog = backlog();
            self.qrf.observe(&s);
            *self.last_sample.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
            self.samples
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !log_every.is_zero() && last_log.elapsed() >= log_every {
                last_log = tokio::time::Instant::now();
                tracing::info!(
                    sys = "control.lsf.observer",
                    qrf = self.qrf.state().as_str(),
                    memory_percent = format!("{:.1}", s.memory_percent),
                    load1 = s.load1,
                    load1_multiplier = format!("{:.2}", s.load1_multiplier),
                    cpu_percent = format!("{:.1}", s.cpu_percent),
                    rss_mb = s.rss_bytes / (1024 * 1024),
                    producers = s.producers,
                    consumers = s.consumers,
                    acks = s.acks,
                    locks = s.locks,
                    queue_backlog = s.queue_backlog,
                    "lsf sample"
                );
            }
        }
    }
}
