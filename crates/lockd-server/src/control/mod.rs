//! Operating the server under pressure and at shutdown:
//!
//! * [`lsf`]: the Local Security Force samples the host and the server's
//!   in-flight work every 200 ms;
//! * [`qrf`]: the Quick Reaction Force turns samples into a posture
//!   (`disengaged`, `soft_arm`, `engaged`, `recovery`) and decides, per
//!   request, to admit, pace or refuse it (429);
//! * [`drain`]: drain-aware shutdown (`Shutdown-Imminent`, refusing new
//!   work, waiting for held leases);
//! * [`layer`]: the middleware that applies both to every request.

pub mod drain;
pub mod layer;
pub mod lsf;
pub mod qrf;

use std::sync::atomic::{AtomicI64, Ordering};

/// What a request does, for back-pressure and drain decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `enqueue`: adds work.
    Producer,
    /// `dequeue*`, `subscribe*`: takes work.
    Consumer,
    /// `ack`, `nack`, `extend`: finishes work.
    Ack,
    /// `acquire`: starts lock work.
    Acquire,
    /// `keepalive`, `release`, `get`, `update`, `remove`, `metadata`: work
    /// on a lease already held.
    Lock,
    /// Everything else (health, describe, stats, watch, dead letters):
    /// never throttled.
    Other,
}

impl Kind {
    /// The kind of a request path.
    pub fn of_path(path: &str) -> Kind {
        match path {
            "/v1/queue/enqueue" => Kind::Producer,
            "/v1/queue/dequeue"
            | "/v1/queue/dequeueWithState"
            | "/v1/queue/subscribe"
            | "/v1/queue/subscribeWithState" => Kind::Consumer,
            "/v1/queue/ack" | "/v1/queue/nack" | "/v1/queue/extend" => Kind::Ack,
            "/v1/acquire" => Kind::Acquire,
            "/v1/keepalive" | "/v1/release" | "/v1/get" | "/v1/update" | "/v1/remove"
            | "/v1/metadata" => Kind::Lock,
            _ => Kind::Other,
        }
    }
}

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

/// One LSF sample: the host and the server's in-flight work.
#[derive(Debug, Clone, Default, PartialEq)]
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
