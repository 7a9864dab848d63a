//! The transport-agnostic engine: leases, fencing tokens and staged JSON
//! state. It never sees HTTP types; handlers call it with validated,
//! normalised inputs and map its [`CoreError`] to responses.

mod error;
mod lease;
pub mod queue;
pub mod record;
mod slot;
mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

pub use error::{CoreError, CoreResult};
pub use lease::{AcquireInput, Acquired, KeepAliveInput, ReleaseInput};
pub use state::{Document, LeaseRef, MetadataInput, RemoveInput, Removed, UpdateInput, Updated};

use crate::storage::Store;
use record::MetaRecord;
use slot::Slot;

/// Tunables of the engine (a subset of the server flags).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// TTL used when a request asks for ≤ 0 seconds.
    pub default_ttl: Duration,
    /// Requested TTLs above this are clamped.
    pub max_ttl: Duration,
    /// Wait bound for `block_seconds < -1`.
    pub acquire_block: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(30 * 60),
            acquire_block: Duration::from_secs(60),
        }
    }
}

/// The lease and state engine.
pub struct Engine {
    store: Arc<dyn Store>,
    slots: DashMap<String, Arc<Slot>>,
    cfg: EngineConfig,
    next_waiter: AtomicU64,
}

/// Current Unix time in whole seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds from now until the Unix second `at` begins (0 if past).
fn millis_until(at_unix: i64) -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (at_unix.saturating_mul(1000) - now_ms).max(0) as u64
}

impl Engine {
    /// An engine over `store`.
    pub fn new(store: Arc<dyn Store>, cfg: EngineConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            slots: DashMap::new(),
            cfg,
            next_waiter: AtomicU64::new(1),
        })
    }

    /// The backing store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Resolves a requested TTL (§1.9): ≤ 0 → default, > max → max.
    pub fn resolve_ttl(&self, requested: i64) -> i64 {
        let default = self.cfg.default_ttl.as_secs() as i64;
        let max = self.cfg.max_ttl.as_secs() as i64;
        if requested <= 0 {
            default
        } else if requested > max {
            max
        } else {
            requested
        }
    }

    fn slot(&self, id: &str) -> Arc<Slot> {
        if let Some(s) = self.slots.get(id) {
            return s.clone();
        }
        self.slots.entry(id.to_string()).or_default().clone()
    }

    /// Reads a record without creating a slot for keys never seen.
    async fn peek(&self, id: &str) -> CoreResult<Option<MetaRecord>> {
        let slot = match self.slots.get(id) {
            Some(s) => s.clone(),
            None => {
                return match self.store.get(&record::meta_key(id)).await? {
                    Some((raw, _)) => Ok(serde_json::from_slice(&raw).ok()),
                    None => Ok(None),
                }
            }
        };
        let st = slot.lock(self.store.as_ref(), id).await?;
        Ok(st.rec.clone())
    }

    fn waiter_id(&self) -> u64 {
        self.next_waiter.fetch_add(1, Ordering::Relaxed)
    }

    /// Clears every expired lease among the keys held in memory, rolling
    /// back their staged changes and waking their waiters, then drops idle
    /// keys from memory. Expiry is also handled lazily on every request;
    /// this reclaims storage and memory of keys nobody touches again.
    pub async fn sweep_expired(&self) -> usize {
        let ids: Vec<(String, Arc<Slot>)> = self
            .slots
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut cleared = 0;
        for (id, slot) in ids {
            let Ok(mut st) = slot.lock(self.store.as_ref(), &id).await else {
                continue;
            };
            if let Ok(true) = self.clear_if_expired(&id, &mut st, now_unix()).await {
                cleared += 1;
                drop(st);
                slot.wake_head();
            }
        }
        self.evict_idle();
        cleared
    }

    /// Drops idle slots from memory so it holds only keys in use. A slot is
    /// removed only while the map is its sole owner (checked under the map
    /// shard's write lock, so nobody can pick it up meanwhile).
    fn evict_idle(&self) {
        self.slots
            .retain(|_, slot| !(Arc::strong_count(slot) == 1 && slot.idle()));
    }

    /// Keys with a live lease among those in memory (a locked key counts:
    /// it is being worked on).
    pub fn live_leases(&self) -> usize {
        let now = now_unix();
        self.slots
            .iter()
            .filter(|e| e.value().holds_lease(now))
            .count()
    }

    /// Number of keys held in memory (for tests and metrics).
    pub fn cached_keys(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStore;

    fn input(key: &str) -> AcquireInput {
        AcquireInput {
            namespace: "default".into(),
            key: key.into(),
            owner: "t".into(),
            ttl_seconds: 30,
            block_seconds: -1,
            if_not_exists: false,
            txn_id: None,
        }
    }

    #[tokio::test]
    async fn idle_keys_leave_memory_but_keep_their_counters() {
        let engine = Engine::new(Arc::new(MemStore::new()), EngineConfig::default());
        let a = engine.acquire(input("idle")).await.unwrap();
        engine
            .release(ReleaseInput {
                namespace: "default".into(),
                key: "idle".into(),
                lease_id: a.lease_id,
                fencing_token: a.fencing_token,
                txn_id: a.txn_id,
                rollback: false,
            })
            .await
            .unwrap();
        let held = engine.acquire(input("held")).await.unwrap();
        assert_eq!(engine.cached_keys(), 2);
        engine.sweep_expired().await;
        assert_eq!(engine.cached_keys(), 1, "only the held key stays in memory");
        // The evicted key reloads from the store with its counter intact.
        let again = engine.acquire(input("idle")).await.unwrap();
        assert_eq!(again.fencing_token, 2);
        // The held key is still held.
        let err = engine.acquire(input("held")).await.unwrap_err();
        assert_eq!(err.code, lockd_api::ErrorCode::Waiting);
        assert_eq!(held.fencing_token, 1);
    }
}
