//! Loading a queue's index from storage and, on shared stores, finding
//! messages other nodes enqueued.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::message::{queue_prefix, MessageRecord};
use super::{QueueShard, Queues};
use crate::core::CoreResult;
use crate::storage::Store;

impl Queues {
    pub(super) async fn load(&self, shard: &Arc<QueueShard>) -> CoreResult<()> {
        sync_shard(self.store.clone(), shard.clone()).await
    }

    /// On stores shared with concurrently writing nodes, starts a look for
    /// other nodes' messages in the background when the last one is older
    /// than the poll interval; a consumer is woken when it finds something.
    /// At most one look per queue runs at a time, and none runs on the
    /// request's own time. In failover mode the active node is the only
    /// one enqueuing, and its shards are reloaded whole when its term
    /// changes: no look is needed.
    pub(super) fn sync_if_due(&self, shard: &Arc<QueueShard>) {
        if !self.engine.fresh_reads() {
            return;
        }
        let due = {
            let mut last = shard.synced.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= self.engine.config().poll_interval);
            if due {
                // Claimed now, so concurrent consumers do not all start one.
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let (store, shard) = (self.store.clone(), shard.clone());
            tokio::spawn(async move {
                if let Err(e) = sync_shard(store, shard).await {
                    tracing::warn!(error = %e, "queue: looking for other nodes' messages failed");
                }
            });
        }
    }
}

/// How many unknown message records a sync reads at once.
const SYNC_READS: usize = 16;

/// Adds to a queue's index every stored message it does not know yet (all
/// of them on first use; on shared stores, those other nodes enqueued).
/// Messages other nodes removed are dropped when a claim finds them gone.
async fn sync_shard(store: Arc<dyn Store>, shard: Arc<QueueShard>) -> CoreResult<()> {
    let Ok(_one) = shard.syncing.try_lock() else {
        // Another look at this queue is running; it will find the same.
        return Ok(());
    };
    let prefix = format!("{}msg/", queue_prefix(&shard.namespace, &shard.name));
    let mut after: Option<String> = None;
    let mut added = 0usize;
    loop {
        let keys = store.list(&prefix, after.as_deref(), 1000).await?;
        let Some(last) = keys.last().cloned() else {
            break;
        };
        let unknown: Vec<String> = {
            let idx = shard.lock();
            keys.into_iter()
                .filter(|k| {
                    !idx.entries
                        .contains_key(k.rsplit('/').next().unwrap_or_default())
                })
                .collect()
        };
        let mut reads = futures_util::stream::iter(unknown)
            .map(|key| {
                let store = store.clone();
                async move { (store.get(&key).await, key) }
            })
            .buffer_unordered(SYNC_READS);
        while let Some((got, key)) = reads.next().await {
            let Some((raw, etag)) = got? else {
                continue;
            };
            match serde_json::from_slice::<MessageRecord>(&raw) {
                Ok(rec) => {
                    let mut idx = shard.lock();
                    if !idx.entries.contains_key(&rec.id) {
                        idx.insert(&rec.id.clone(), &rec, etag);
                        added += 1;
                    }
                }
                Err(e) => tracing::error!(key, error = %e, "skipping corrupt message record"),
            }
            if added > 0 && added % 64 == 0 && shard.has_ready() {
                // Let consumers start on what is known so far.
                shard.wake();
            }
        }
        after = Some(last);
    }
    *shard.synced.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    if added > 0 && shard.has_ready() {
        shard.wake();
    }
    Ok(())
}
