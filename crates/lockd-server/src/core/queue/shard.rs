//! One queue ([`QueueShard`]): its index, the notifications consumers,
//! watchers and subscribers wait on, and its counters; and the lookup of a
//! queue by name ([`Queues::shard`]).

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use tokio::sync::{Mutex, Notify, OnceCell};
use tokio::time::Instant;

use super::index::Index;
use super::Queues;
use crate::core::clock::Clock;
use crate::core::CoreResult;

/// One queue: its index, its waiters.
pub struct QueueShard {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) clock: Clock,
    pub(super) loaded: OnceCell<()>,
    pub(super) index: SyncMutex<Index>,
    /// A message became ready: wakes one consumer (which passes the wake
    /// on if more are ready), so a queue change does not stampede.
    pub(super) ready: Notify,
    /// Anything changed (ack, nack, enqueue…): wakes watchers and
    /// subscribers waiting for flow-control room.
    pub(super) changed: Notify,
    pub(super) waiting: AtomicUsize,
    /// When the index was last compared with the store (shared stores:
    /// other nodes enqueue too).
    pub(super) synced: SyncMutex<Option<Instant>>,
    /// Held while a comparison runs, so only one runs per queue.
    pub(super) syncing: Mutex<()>,
    /// Messages this process moved to the dead-letter area (metrics).
    pub(super) dead_lettered: AtomicU64,
}

impl QueueShard {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Earliest time (Unix ms) a message becomes visible or a delivery
    /// lease expires, if any.
    pub(super) fn next_visible(&self) -> Option<i64> {
        self.lock().order.first().map(|(t, _)| *t)
    }

    /// Whether a message is visible now.
    pub fn has_ready(&self) -> bool {
        self.next_visible()
            .is_some_and(|t| t <= self.clock.now_ms())
    }

    /// Resolves when, by the clock, the next message becomes visible or the
    /// next delivery lease lapses (or after a second of real time at
    /// most): the wake-up of loops that look at the queue again as time
    /// passes. Messages visible already do not count.
    pub async fn time_passed(&self) {
        let next = {
            let now = self.clock.now_ms();
            let idx = self.lock();
            idx.order
                .range((now.saturating_add(1), String::new())..)
                .next()
                .map(|(t, _)| *t)
        };
        tokio::select! {
            _ = self.clock.sleep_until_opt(next) => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }

    /// A message became ready: one consumer and every watcher wake.
    pub fn wake(&self) {
        self.ready.notify_one();
        self.changed.notify_waiters();
    }

    /// Something changed that no consumer is waiting for (an ack): only
    /// watchers and flow-controlled subscribers wake.
    pub fn touch(&self) {
        self.changed.notify_waiters();
    }

    /// Whether delivery `lease_id` of `id` is still outstanding (not acked,
    /// nacked or expired).
    pub fn outstanding(&self, id: &str, lease_id: &str) -> bool {
        let idx = self.lock();
        idx.entries.get(id).is_some_and(|e| {
            e.lease_id.as_deref() == Some(lease_id) && e.visible_at > self.clock.now_ms()
        })
    }

    /// A future that resolves on the next change of the queue; enabled at
    /// once so that a change between now and the await is not lost.
    pub fn notified(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut n = Box::pin(self.changed.notified());
        n.as_mut().enable();
        n
    }

    /// Like [`QueueShard::notified`], for a consumer waiting for a message.
    pub(super) fn ready_notified(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut n = Box::pin(self.ready.notified());
        n.as_mut().enable();
        n
    }
}

impl Queues {
    /// The shard of a queue, loaded from storage on first use.
    pub async fn shard(&self, ns: &str, queue: &str) -> CoreResult<Arc<QueueShard>> {
        let id = format!("{ns}/{queue}");
        if let Some(term) = self.engine.cache_term() {
            // A new HA term: another node may have changed every queue
            // since these shards were loaded.
            // A plain load first: the swap, a write to a shared cache
            // line, is needed only once per term.
            if self.term.load(std::sync::atomic::Ordering::Acquire) != term
                && self.term.swap(term, std::sync::atomic::Ordering::AcqRel) != term
            {
                self.shards.clear();
            }
        }
        let shard = match self.shards.get(&id) {
            Some(s) => s.clone(),
            None => self
                .shards
                .entry(id)
                .or_insert_with(|| {
                    Arc::new(QueueShard {
                        namespace: ns.to_string(),
                        name: queue.to_string(),
                        clock: self.engine.clock().clone(),
                        loaded: OnceCell::new(),
                        index: SyncMutex::new(Index::default()),
                        ready: Notify::new(),
                        changed: Notify::new(),
                        waiting: AtomicUsize::new(0),
                        synced: SyncMutex::new(None),
                        syncing: Mutex::new(()),
                        dead_lettered: AtomicU64::new(0),
                    })
                })
                .clone(),
        };
        shard.loaded.get_or_try_init(|| self.load(&shard)).await?;
        Ok(shard)
    }
}
