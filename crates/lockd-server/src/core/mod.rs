//! The transport-agnostic engine: leases, fencing tokens and staged JSON
//! state. It never sees HTTP types; handlers call it with validated,
//! normalised inputs and map its [`CoreError`] to responses.

pub mod attachments;
pub mod clock;
mod error;
pub mod index;
mod key_entry;
mod key_lock;
mod lease;
pub mod namespace;
pub mod query;
pub mod queue;
pub mod record;
mod state;
pub mod txn;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;
use dashmap::DashMap;

pub use clock::{Clock, ManualClock};
pub use error::{CoreError, CoreResult};
pub use lease::{AcquireInput, KeepAliveInput, ReleaseInput};
pub use namespace::{NamespaceConfig, NamespaceUpdate};
pub use state::{
    Document, LeaseRef, MetadataInput, MutateInput, RemoveInput, UpdateInput, Updated,
};

use crate::storage::Store;
use key_entry::KeyEntry;
use record::MetaRecord;

/// Tunables of the engine (a subset of the server flags).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// TTL used when a request asks for ≤ 0 seconds.
    pub default_ttl: Duration,
    /// Requested TTLs above this are clamped.
    pub max_ttl: Duration,
    /// Wait bound for `block_seconds < -1`.
    pub acquire_block: Duration,
    /// Other nodes write the same store at the same time (`--ha
    /// concurrent` on object storage): cached records are only hints,
    /// every operation reads the record afresh, and a lost compare-and-swap
    /// is retried from a fresh read.
    pub shared: bool,
    /// With `shared`, in `--ha failover` mode: this node's active term
    /// ([`crate::ha::Ha::term`]). Records cached in the current term are
    /// authoritative (this node is the only writer while it holds the HA
    /// lease), so they are not read again on each use; a record cached in
    /// an earlier term is reloaded. `None`: trust the cache only when not
    /// `shared`.
    pub cache_term: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// How often a waiting acquire or dequeue looks at the store for
    /// changes made by other nodes (shared stores only).
    pub poll_interval: Duration,
    /// Random extra delay added to each poll, so nodes do not poll in step.
    pub poll_jitter: Duration,
    /// Where every deadline is read from (the system clock; tests give a
    /// [`ManualClock`]'s).
    pub clock: Clock,
    /// How old an attachment upload's intent must be before the orphan
    /// sweeper settles it when this process is not uploading it: zero for
    /// a store only this process writes, long enough on a shared one for
    /// other nodes' uploads to finish (see `attachments.rs`).
    pub orphan_grace: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(30 * 60),
            acquire_block: Duration::from_secs(60),
            shared: false,
            cache_term: None,
            poll_interval: Duration::from_secs(3),
            poll_jitter: Duration::from_millis(500),
            clock: Clock::system(),
            orphan_grace: Duration::from_secs(60 * 60),
        }
    }
}

/// How often an operation that lost a compare-and-swap to another node is
/// retried before the conflict is reported.
const CAS_RETRIES: u32 = 16;

/// The lease and state engine.
pub struct Engine {
    store: Arc<dyn Store>,
    /// Keys in memory by `<namespace>/<key>`, inline when the id fits 24
    /// bytes (most do), so a held lease's map entry needs no allocation.
    keys: DashMap<CompactString, Arc<KeyEntry>>,
    cfg: EngineConfig,
    next_waiter: AtomicU64,
    /// Every fencing token handed out is above this ([`Store::fencing_floor`],
    /// raised after a store lost acknowledged writes).
    fencing_floor: i64,
    /// Attachment uploads streaming right now (the orphan sweeper skips
    /// them).
    in_flight: attachments::InFlight,
    /// Namespace configurations read or saved (see `namespace.rs`).
    ns_configs: namespace::ConfigCache,
    /// The query indexes (see `index.rs`).
    indexes: index::Indexes,
    /// Multi-key transactions in memory (see `txn.rs`).
    txns: txn::Txns,
}

/// The highest fencing token a stored object records, if it is one of the
/// engine's: a key's metadata record (`m/…`: its counter) or a queue
/// message (`q/<ns>/<queue>/msg|dlq/<id>`: its delivery counter). What a
/// store calls to raise its fencing floor after losing writes
/// ([`crate::storage::OpenOptions::fencing_token_of`]).
pub fn fencing_token_of(key: &str, value: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Tokens {
        #[serde(default)]
        fencing_token: i64,
        #[serde(default)]
        fencing_counter: i64,
    }
    let message = key.strip_prefix("q/").is_some_and(|rest| {
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        matches!(parts.as_slice(), [_, _, "msg" | "dlq", _])
    });
    if !key.starts_with("m/") && !message {
        return None;
    }
    let t: Tokens = serde_json::from_slice(value).ok()?;
    Some(t.fencing_token.max(t.fencing_counter))
}

impl Engine {
    /// An engine over `store`.
    pub fn new(store: Arc<dyn Store>, cfg: EngineConfig) -> Arc<Self> {
        let fencing_floor = store.fencing_floor().max(0);
        let cfg_shared = cfg.shared;
        Arc::new(Self {
            store,
            keys: DashMap::new(),
            cfg,
            next_waiter: AtomicU64::new(1),
            fencing_floor,
            in_flight: attachments::InFlight::default(),
            ns_configs: namespace::ConfigCache::default(),
            indexes: index::Indexes::new(!cfg_shared),
            txns: txn::Txns::default(),
        })
    }

    /// The token to hand out after `counter` (a key's or a message's last
    /// one): the next one, and above the store's fencing floor.
    pub(crate) fn next_fencing_token(&self, counter: i64) -> i64 {
        counter.max(self.fencing_floor).saturating_add(1)
    }

    /// The backing store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Resolves a requested TTL (§1.9): ≤ 0 → default, > max → max.
    pub fn resolve_ttl(&self, requested: i64) -> i64 {
        let default = i64::try_from(self.cfg.default_ttl.as_secs()).unwrap_or(i64::MAX);
        let max = i64::try_from(self.cfg.max_ttl.as_secs()).unwrap_or(i64::MAX);
        if requested <= 0 {
            default
        } else if requested > max {
            max
        } else {
            requested
        }
    }

    fn key_entry(&self, id: &str) -> Arc<KeyEntry> {
        if let Some(s) = self.keys.get(id) {
            return s.clone();
        }
        self.keys
            .entry(CompactString::from(id))
            .or_default()
            .clone()
    }

    /// Reads a record without creating an entry for keys never seen.
    async fn peek(&self, id: &str) -> CoreResult<Option<MetaRecord>> {
        let entry = match self.keys.get(id) {
            Some(s) => s.clone(),
            None => {
                return match self.store.get(&record::meta_key(id)).await? {
                    Some((raw, _)) => Ok(serde_json::from_slice(&raw).ok()),
                    None => Ok(None),
                }
            }
        };
        let st = self.lock_key(&entry, id).await?;
        Ok(st.rec.clone())
    }

    /// Locks a key's entry, reading its record afresh when other nodes
    /// may have changed it.
    async fn lock_key<'s>(
        &self,
        entry: &'s KeyEntry,
        id: &str,
    ) -> CoreResult<key_entry::KeyGuard<'s>> {
        let (fresh, term) = match self.cache_term() {
            // Authoritative while the term lasts (the term is kept as u32 in
            // the entry: only equality matters).
            Some(t) => (false, t as u32),
            None => (self.cfg.shared, 0),
        };
        entry.lock(self.store.as_ref(), id, fresh, term).await
    }

    /// Locks a key's entry for a mutation that may start from the cached
    /// record even when other nodes write the store concurrently: every
    /// write is conditional on the cached etag, so a decision to write
    /// that rests on a stale record loses its compare-and-swap and is
    /// retried from a fresh read. Returns whether the record came from a
    /// cache that may be stale (`--ha concurrent` only): a caller about to
    /// answer without writing (a refusal) must lock again with
    /// [`Engine::lock_key`] and decide on a fresh record.
    async fn lock_key_optimistic<'s>(
        &self,
        entry: &'s KeyEntry,
        id: &str,
    ) -> CoreResult<(key_entry::KeyGuard<'s>, bool)> {
        if !self.fresh_reads() {
            return Ok((self.lock_key(entry, id).await?, false));
        }
        entry.lock_cached(self.store.as_ref(), id, false, 0).await
    }

    /// This node's active term when its cache is authoritative within a
    /// term (`--ha failover` on a shared store), else `None`.
    pub(crate) fn cache_term(&self) -> Option<u64> {
        self.cfg
            .cache_term
            .as_ref()
            .map(|t| t.load(Ordering::Acquire))
    }

    /// Whether records must be read afresh on every use (a store shared
    /// with nodes writing at the same time: `--ha concurrent`).
    pub(crate) fn fresh_reads(&self) -> bool {
        self.cfg.shared && self.cfg.cache_term.is_none()
    }

    /// The clock every deadline is read from.
    pub fn clock(&self) -> &Clock {
        &self.cfg.clock
    }

    /// Whether other nodes share the store.
    pub fn shared(&self) -> bool {
        self.cfg.shared
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// When a waiter should next look at the store for other nodes'
    /// changes: the poll interval plus jitter from now (shared stores
    /// only).
    pub fn next_poll(&self) -> Option<tokio::time::Instant> {
        if !self.cfg.shared {
            return None;
        }
        let jitter_ms = self.cfg.poll_jitter.as_millis() as u64;
        let extra = if jitter_ms == 0 {
            0
        } else {
            fastrand::u64(0..=jitter_ms)
        };
        tokio::time::Instant::now()
            .checked_add(self.cfg.poll_interval + Duration::from_millis(extra))
    }

    /// Runs `op` again (after a fresh read) when it lost a compare-and-swap
    /// to another node; on single-writer stores it runs once.
    pub(crate) async fn cas_retry<T, F, Fut>(&self, mut op: F) -> CoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = CoreResult<T>>,
    {
        let mut attempt: u32 = 0;
        loop {
            match op().await {
                Err(e) if e.is_store_conflict() && self.cfg.shared && attempt < CAS_RETRIES => {
                    attempt += 1;
                    // A little randomised backoff so racing nodes part ways.
                    let ms = fastrand::u64(1..=5 * u64::from(attempt));
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                r => return r,
            }
        }
    }

    fn waiter_id(&self) -> u64 {
        self.next_waiter.fetch_add(1, Ordering::Relaxed)
    }

    /// Clears every expired lease among the keys held in memory, rolling
    /// back their staged changes and waking their waiters, then drops idle
    /// keys from memory. Expiry is also handled lazily on every request;
    /// this reclaims storage and memory of keys nobody touches again.
    pub async fn sweep_expired(&self) -> usize {
        // Only the keys whose lease has run out: copying every key's id
        // here cost a transient allocation of the size of the whole key
        // set on each sweep (tens of MiB with a million held leases).
        let now = self.cfg.clock.now_ms();
        let ids: Vec<(CompactString, Arc<KeyEntry>)> = self
            .keys
            .iter()
            .filter(|e| e.value().needs_sweep(now))
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut cleared = 0;
        for (id, entry) in ids {
            let Ok(mut st) = self.lock_key(&entry, &id).await else {
                continue;
            };
            let now = self.cfg.clock.now_ms();
            if let Ok(true) = self.clear_if_expired(&id, &mut st, now).await {
                cleared += 1;
                drop(st);
                entry.wake_head();
            }
        }
        self.evict_idle();
        cleared
    }

    /// Deletes attachment payloads left behind by a crash (see
    /// `attachments.rs`), with the configured grace. Returns how many.
    pub async fn sweep_orphans(&self) -> CoreResult<usize> {
        let grace = i64::try_from(self.cfg.orphan_grace.as_millis()).unwrap_or(i64::MAX);
        let n = self.sweep_attachment_orphans(grace).await?;
        if n > 0 {
            tracing::info!(deleted = n, "orphaned attachment payloads deleted");
        }
        Ok(n)
    }

    /// Drops idle keys from memory so it holds only keys in use. An entry is
    /// removed only while the map is its sole owner (checked under the map
    /// shard's write lock, so nobody can pick it up meanwhile).
    fn evict_idle(&self) {
        self.keys
            .retain(|_, entry| !(Arc::strong_count(entry) == 1 && entry.idle()));
    }

    /// Keys with a live lease among those in memory (a locked key counts:
    /// it is being worked on).
    pub fn live_leases(&self) -> usize {
        let now = self.cfg.clock.now_ms();
        self.keys
            .iter()
            .filter(|e| e.value().holds_lease(now))
            .count()
    }

    /// Number of keys held in memory (for tests and metrics).
    pub fn cached_keys(&self) -> usize {
        self.keys.len()
    }

    /// Blocked acquirers waiting for a key, over every key in memory
    /// (metrics; walks the keys, so call it at scrape time only).
    pub fn waiting_acquirers(&self) -> usize {
        self.keys.iter().map(|e| e.value().waiters()).sum()
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
            generated_txn: false,
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
        assert_eq!(err.code(), lockd_api::ErrorCode::Waiting);
        assert_eq!(held.fencing_token, 1);
    }
}
