//! Figures of the queues: gauges for metrics, counts for QRF and drain, and
//! the snapshot behind stats and watch.

use std::sync::atomic::Ordering;

use super::{QueueGauge, QueueShard, QueueSnapshot, Queues};
use crate::core::clock::unix_secs;
use crate::core::CoreResult;

impl Queues {
    /// Messages held by every queue in memory (ready, delayed, in flight).
    pub fn live_messages(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.value().lock().entries.len())
            .sum()
    }

    /// Deliveries whose lease is live, over every queue in memory.
    pub fn live_deliveries(&self) -> usize {
        let now = self.clock().now_ms();
        self.shards
            .iter()
            .map(|s| {
                let idx = s.value().lock();
                idx.entries
                    .values()
                    .filter(|e| e.lease_id.is_some() && e.visible_at > now)
                    .count()
            })
            .sum()
    }

    /// Per-queue figures of every queue in memory, for metrics: one
    /// short lock of each queue's index (call it at scrape time only).
    pub fn gauges(&self) -> Vec<QueueGauge> {
        let now = self.clock().now_ms();
        self.shards
            .iter()
            .map(|s| gauge_of(s.value(), now))
            .collect()
    }

    /// The figures of one queue this node holds in memory (`None` for one
    /// it does not: nothing is loaded).
    pub fn loaded_gauge(&self, ns: &str, queue: &str) -> Option<QueueGauge> {
        let shard = self.shards.get(&format!("{ns}/{queue}"))?;
        Some(gauge_of(shard.value(), self.clock().now_ms()))
    }

    /// Consumers waiting for messages, over every queue.
    pub fn waiting_consumers(&self) -> usize {
        self.consumers.load(Ordering::Relaxed)
    }

    /// Diagnostics of a queue (stats, watch).
    pub async fn snapshot(&self, ns: &str, queue: &str) -> CoreResult<QueueSnapshot> {
        let shard = self.shard(ns, queue).await?;
        Ok(self.snapshot_of(&shard))
    }

    /// Diagnostics of a queue this node holds in memory; `None` for one it
    /// does not (nothing is loaded: a look must not add queues).
    pub fn loaded_snapshot(&self, ns: &str, queue: &str) -> Option<QueueSnapshot> {
        let shard = self.shards.get(&format!("{ns}/{queue}"))?;
        Some(self.snapshot_of(shard.value()))
    }

    /// Diagnostics of a queue already at hand.
    pub fn snapshot_of(&self, shard: &QueueShard) -> QueueSnapshot {
        let now = self.clock().now_ms();
        let idx = shard.lock();
        let ready = idx.order.range(..(now + 1, String::new())).count();
        let head = idx.order.first().filter(|(t, _)| *t <= now).map(|(t, id)| {
            let enq = idx.entries.get(id).map(|e| e.enqueued_at).unwrap_or(0);
            (id.clone(), enq, unix_secs(*t))
        });
        QueueSnapshot {
            waiting_consumers: shard.waiting.load(Ordering::Relaxed),
            ready,
            total_consumers: self.consumers.load(Ordering::Relaxed),
            head,
        }
    }
}

/// One queue's figures at `now`: one short lock of its index.
fn gauge_of(shard: &QueueShard, now: i64) -> QueueGauge {
    let idx = shard.lock();
    let ready = idx.order.range(..(now + 1, String::new())).count();
    let in_flight = idx
        .entries
        .values()
        .filter(|e| e.lease_id.is_some() && e.visible_at > now)
        .count();
    QueueGauge {
        namespace: shard.namespace.clone(),
        queue: shard.name.clone(),
        messages: idx.entries.len(),
        ready,
        in_flight,
        waiting_consumers: shard.waiting.load(Ordering::Relaxed),
        dead_lettered: shard.dead_lettered.load(Ordering::Relaxed),
    }
}
