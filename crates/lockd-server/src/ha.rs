//! High availability over a shared store (`--ha`).
//!
//! - `concurrent`: every node serves every request; all mutations are
//!   compare-and-swap on the shared objects (object stores only).
//! - `failover` (default) and `auto`: one node is active, elected through a
//!   lease object (`.ha/activelease`) that it renews every third of
//!   `--ha-lease-ttl`; the others answer `503 node_passive` (except
//!   `/healthz` and `/readyz`) so clients move on to the next endpoint, and
//!   take over once the active node's lease lapses.
//! - `single`: no coordination; the node assumes it owns the store.
//!
//! In failover mode the active node is the store's only writer, so its
//! cached records are authoritative while it holds the lease: a mutation
//! costs one conditional write and no read. Each time the node takes the
//! lease after someone else may have written (first election, or a lease
//! object that is no longer the version it wrote last), [`Ha::term`] moves
//! on and everything cached before is reloaded on first use. Every write
//! stays conditional on the cached etag, so a node that still believes it
//! is active while another one took over cannot overwrite that node's
//! changes: its write fails and the record is read again.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::core::Clock;
use crate::storage::{Cond, ETag, Op, Store, StoreError};

/// The store key of the failover lease.
pub const HA_LEASE_KEY: &str = ".ha/activelease";

/// How nodes sharing a store coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HaMode {
    /// All nodes active; compare-and-swap on every mutation.
    Concurrent,
    /// One active node elected by a lease in the store.
    #[default]
    Failover,
    /// No coordination.
    Single,
    /// Like failover in this implementation.
    Auto,
}

impl std::str::FromStr for HaMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "concurrent" => Ok(Self::Concurrent),
            "failover" | "" => Ok(Self::Failover),
            "single" => Ok(Self::Single),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "--ha {other:?}: must be concurrent, failover, single or auto"
            )),
        }
    }
}

impl std::fmt::Display for HaMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Concurrent => "concurrent",
            Self::Failover => "failover",
            Self::Single => "single",
            Self::Auto => "auto",
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    node_id: String,
    expires_at_unix_ms: i64,
}

/// This node's HA role, read by the request guard.
pub struct Ha {
    node_id: String,
    active: AtomicBool,
    /// Until when (Unix ms) the current holder's lease runs, for the
    /// `retry_after_seconds` hint of passive answers.
    holder_until_ms: AtomicI64,
    clock: Clock,
    /// The active term: bumped each time this node takes the lease after
    /// another node may have written the store. Caches loaded in an
    /// earlier term are stale.
    term: Arc<AtomicU64>,
}

impl Ha {
    /// A node that is always active (`concurrent`, `single`, and tests).
    pub fn always_active() -> Arc<Self> {
        Arc::new(Self {
            node_id: uuid::Uuid::now_v7().to_string(),
            active: AtomicBool::new(true),
            holder_until_ms: AtomicI64::new(0),
            clock: Clock::system(),
            term: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The active term (see the module docs), shared with the engine,
    /// which reloads records cached in an earlier term.
    pub fn term(&self) -> Arc<AtomicU64> {
        self.term.clone()
    }

    /// Whether this node serves requests now.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// This node's id in the HA lease.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Seconds until the active node's lease lapses (at least 1).
    pub fn retry_after_seconds(&self) -> i64 {
        let left = self
            .holder_until_ms
            .load(Ordering::Relaxed)
            .saturating_sub(self.clock.now_ms());
        (left / 1000 + 1).max(1)
    }

    fn set_active(&self, on: bool) {
        let was = self.active.swap(on, Ordering::AcqRel);
        if was != on {
            if on {
                tracing::info!(node = %self.node_id, "ha: this node is now active");
            } else {
                tracing::warn!(node = %self.node_id, "ha: this node is now passive");
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The failover election: one node holds the lease object and renews it.
pub struct Election {
    ha: Arc<Ha>,
    store: Arc<dyn Store>,
    ttl: Duration,
    /// Etag of our lease object while we hold it.
    etag: Option<ETag>,
    /// Until when our own lease is certainly ours (Unix ms).
    ours_until_ms: i64,
}

impl Election {
    /// A passive node about to take part in elections on `store`; lease
    /// times are read from `clock`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration, clock: Clock) -> (Self, Arc<Ha>) {
        let ha = Arc::new(Ha {
            node_id: uuid::Uuid::now_v7().to_string(),
            active: AtomicBool::new(false),
            holder_until_ms: AtomicI64::new(0),
            clock,
            term: Arc::new(AtomicU64::new(0)),
        });
        (
            Self {
                ha: ha.clone(),
                store,
                ttl,
                etag: None,
                ours_until_ms: 0,
            },
            ha,
        )
    }

    /// One round: take the lease if it is free, ours or lapsed; otherwise
    /// stay passive.
    pub async fn round(&mut self) {
        let now = self.ha.clock.now_ms();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let current = match self.store.get(HA_LEASE_KEY).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "ha: cannot read the lease");
                // Keep serving only while our own lease surely lasts.
                if now >= self.ours_until_ms {
                    self.ha.set_active(false);
                }
                return;
            }
        };
        // Nobody else held the lease since our last write only if the
        // object is still the version we wrote.
        let continuing = matches!((&current, &self.etag), (Some((_, now_etag)), Some(ours)) if now_etag == ours)
            && self.ha.is_active();
        let cond = match &current {
            None => Cond::IfAbsent,
            Some((raw, etag)) => {
                let holder: Option<LeaseRecord> = serde_json::from_slice(raw).ok();
                match holder {
                    Some(h) if h.node_id != self.ha.node_id && h.expires_at_unix_ms > now => {
                        self.ha
                            .holder_until_ms
                            .store(h.expires_at_unix_ms, Ordering::Relaxed);
                        self.etag = None;
                        self.ha.set_active(false);
                        return;
                    }
                    _ => Cond::IfMatch(etag.clone()),
                }
            }
        };
        let rec = LeaseRecord {
            node_id: self.ha.node_id.clone(),
            expires_at_unix_ms: now.saturating_add(ttl_ms),
        };
        let raw = match serde_json::to_vec(&rec) {
            Ok(r) => Bytes::from(r),
            Err(_) => return,
        };
        match self
            .store
            .apply(vec![Op::Put {
                key: HA_LEASE_KEY.into(),
                value: raw,
                cond,
            }])
            .await
        {
            Ok(etags) => {
                if !continuing {
                    // A new term: what this node cached before may have
                    // been changed by the previous holder. Bumped before
                    // the node serves again.
                    self.ha.term.fetch_add(1, Ordering::AcqRel);
                }
                self.etag = etags.into_iter().next();
                self.ours_until_ms = now.saturating_add(ttl_ms);
                self.ha
                    .holder_until_ms
                    .store(self.ours_until_ms, Ordering::Relaxed);
                self.ha.set_active(true);
            }
            Err(StoreError::CondFailed(_)) => {
                // Another node won this round.
                self.etag = None;
                self.ha.set_active(false);
            }
            Err(e) => {
                tracing::warn!(error = %e, "ha: cannot write the lease");
                if now >= self.ours_until_ms {
                    self.ha.set_active(false);
                }
            }
        }
    }

    /// Renews or contends every third of the TTL until `stop`, then hands
    /// the lease back so another node takes over at once.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let every = (self.ttl / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => self.round().await,
                _ = stopped(&mut stop) => break,
            }
        }
        self.ha.set_active(false);
        if let Some(etag) = self.etag.take() {
            let _ = self
                .store
                .apply(vec![Op::Delete {
                    key: HA_LEASE_KEY.into(),
                    cond: Cond::IfMatch(etag),
                }])
                .await;
        }
    }
}
