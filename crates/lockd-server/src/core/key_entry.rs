//! One entry per `(namespace, key)`: the cached record, the lock that
//! serialises mutations of the key, and the FIFO queue of blocked acquirers.
//!
//! On single-writer backends (mem, disk) the cached record is authoritative
//! once loaded; every mutation is written through with a conditional put on
//! the record's store etag before the cache changes, so a failed write leaves
//! the cache as it was.

use std::sync::{Arc, Mutex as SyncMutex};

use compact_str::CompactString;
use thin_vec::ThinVec;
use tokio::sync::Notify;

use super::key_lock::{KeyLock, KeyLockGuard};
use super::record::{doc_key, meta_key, MetaRecord};
use super::CoreResult;
use crate::storage::{Cond, ETag, Op, Store};

/// Cached state of a key.
#[derive(Default)]
pub struct KeyState {
    loaded: bool,
    /// A write was started; a reload must wait for it to land first.
    written: bool,
    /// The HA term the record was loaded in (failover mode; 0 otherwise):
    /// a record of another term is reloaded.
    term: u32,
    /// The record, `None` if the key was never acquired.
    pub rec: Option<MetaRecord>,
    /// Store etag of the record, for conditional writes (inline when it
    /// fits 24 bytes, as the disk store's counters do).
    store_etag: Option<CompactString>,
}

/// A locked [`KeyState`].
pub type KeyGuard<'a> = KeyLockGuard<'a, KeyState>;

struct Waiter {
    id: u64,
    notify: Arc<Notify>,
}

/// A key's lock, cache and waiter queue.
///
/// Every held lease keeps one of these in memory, so its size counts:
/// the lock is a one-byte [`KeyLock`] (tokio's mutex takes 40) and the
/// waiter queue is a `ThinVec`.
#[derive(Default)]
pub struct KeyEntry {
    state: KeyLock<KeyState>,
    /// The FIFO of blocked acquirers, oldest first: one pointer and no
    /// allocation while nobody waits, as nearly always.
    waiters: SyncMutex<ThinVec<Waiter>>,
}

impl KeyEntry {
    /// Locks the entry, loading the record from the store on first use, on
    /// every use when `fresh` (other nodes write the same store), or when
    /// it was loaded in another HA `term` than this one.
    pub async fn lock(
        &self,
        store: &dyn Store,
        id: &str,
        fresh: bool,
        term: u32,
    ) -> CoreResult<KeyGuard<'_>> {
        Ok(self.lock_cached(store, id, fresh, term).await?.0)
    }

    /// [`KeyEntry::lock`], also telling whether the record was served
    /// from the cache (`true`) rather than read from the store by this
    /// call.
    pub async fn lock_cached(
        &self,
        store: &dyn Store,
        id: &str,
        fresh: bool,
        term: u32,
    ) -> CoreResult<(KeyGuard<'_>, bool)> {
        let mut st = self.state.lock().await;
        let cached = st.loaded && !fresh && st.term == term;
        if !cached {
            if st.written {
                store.barrier().await?;
                st.written = false;
            }
            match store.get(&meta_key(id)).await? {
                Some((raw, etag)) => {
                    let rec: MetaRecord = serde_json::from_slice(&raw).map_err(|e| {
                        tracing::error!(key = id, error = %e, "corrupt metadata record");
                        super::CoreError::new(
                            lockd_api::ErrorCode::InternalError,
                            "corrupt metadata record",
                        )
                    })?;
                    st.rec = Some(rec);
                    st.store_etag = Some(CompactString::from(etag));
                }
                None => {
                    st.rec = None;
                    st.store_etag = None;
                }
            }
            st.loaded = true;
            st.term = term;
        }
        Ok((st, cached))
    }

    /// Whether the waiter `me` may take the key now: the queue is empty or
    /// `me` is at its head.
    pub fn may_take(&self, me: Option<u64>) -> bool {
        let q = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        match (q.first(), me) {
            (None, _) => true,
            (Some(w), Some(me)) => w.id == me,
            (Some(_), None) => false,
        }
    }

    /// Whether `me` is at the head of the queue.
    pub fn is_head(&self, me: u64) -> bool {
        let q = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        q.first().map(|w| w.id == me).unwrap_or(false)
    }

    /// Appends a waiter to the queue.
    pub fn enqueue(&self, id: u64, notify: Arc<Notify>) {
        let mut q = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        q.push(Waiter { id, notify });
    }

    /// Removes a waiter; if it was the head, the new head is woken so it can
    /// look at the key (and arm its expiry timer).
    pub fn dequeue(&self, id: u64) {
        let mut q = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let was_head = q.first().map(|w| w.id == id).unwrap_or(false);
        q.retain(|w| w.id != id);
        if was_head {
            if let Some(w) = q.first() {
                w.notify.notify_one();
            }
        }
    }

    /// Whether the entry can be dropped from memory: no lease, nothing
    /// staged, nobody waiting, nobody holding its lock. Its record stays in
    /// the store and is reloaded on next use.
    pub fn idle(&self) -> bool {
        let no_waiters = self.waiters.lock().map(|q| q.is_empty()).unwrap_or(false);
        no_waiters
            && self.state.try_lock().is_some_and(|st| {
                st.rec
                    .as_ref()
                    .is_none_or(|r| r.lease.is_none() && r.staged.is_none())
            })
    }

    /// Whether the key has a live lease at `now` (Unix ms), or is being
    /// changed right now.
    pub fn holds_lease(&self, now: i64) -> bool {
        match self.state.try_lock() {
            Some(st) => st
                .rec
                .as_ref()
                .and_then(|r| r.lease.as_ref())
                .is_some_and(|l| !l.expired(now)),
            None => true,
        }
    }

    /// Whether the expiry sweeper should look at the key: its cached lease
    /// has expired at `now` (Unix ms), or its cache is not loaded. A key
    /// whose lock is taken is skipped: whoever holds it looks at the
    /// expiry anyway.
    pub fn needs_sweep(&self, now: i64) -> bool {
        match self.state.try_lock() {
            Some(st) => {
                !st.loaded
                    || st
                        .rec
                        .as_ref()
                        .and_then(|r| r.lease.as_ref())
                        .is_some_and(|l| l.expired(now))
            }
            None => false,
        }
    }

    /// Number of blocked acquirers queued on the key (metrics).
    pub fn waiters(&self) -> usize {
        self.waiters.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Wakes the waiter at the head of the queue (the key may be free).
    pub fn wake_head(&self) {
        let q = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = q.first() {
            w.notify.notify_one();
        }
    }
}

/// Writes `rec` through to the store, then updates the cache.
///
/// `before` (new documents) is applied before the record and `after`
/// (deletions of documents the record no longer references) after it, in
/// one batch, so a crash can leave only unreferenced garbage.
pub async fn persist(
    store: &dyn Store,
    id: &str,
    st: &mut KeyState,
    rec: MetaRecord,
    before: Vec<Op>,
    after: Vec<Op>,
) -> CoreResult<()> {
    let raw = serde_json::to_vec(&rec).map_err(|e| {
        super::CoreError::new(
            lockd_api::ErrorCode::InternalError,
            format!("encode record: {e}"),
        )
    })?;
    let cond = match &st.store_etag {
        Some(e) => Cond::IfMatch(ETag::from(e.as_str())),
        None => Cond::IfAbsent,
    };
    let idx = before.len();
    // If this future is dropped while the write is in flight (the client
    // went away), the write may still land: the cache must then be
    // reloaded before anyone trusts it again.
    st.loaded = false;
    st.written = true;
    let mut ops = before;
    ops.push(Op::Put {
        key: meta_key(id),
        value: raw.into(),
        cond,
    });
    ops.extend(after);
    match store.apply(ops).await {
        Ok(etags) => {
            st.store_etag = etags.get(idx).map(|e| CompactString::from(e.as_str()));
            st.rec = Some(rec);
            st.loaded = true;
            Ok(())
        }
        // Someone else changed the record (shared backends) or the write
        // failed: the cache stays unloaded and is read again on next use.
        Err(e) => Err(e.into()),
    }
}

/// A deletion of the document with `etag`, if any.
pub fn delete_doc(id: &str, etag: &str) -> Option<Op> {
    (!etag.is_empty()).then(|| Op::Delete {
        key: doc_key(id, etag),
        cond: Cond::Any,
    })
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every held lease keeps one `Arc<KeyEntry>` in memory; with the
    /// allocator's size classes (…, 224, 256, 320, …) the entry and its
    /// 16-byte reference counts fit 256 bytes today. Growing the record
    /// or the entry past that costs 64 bytes per held lease: box what is
    /// rarely present (as `MetaRecord::staged` is) instead.
    #[test]
    fn a_key_entry_fits_its_allocation_class() {
        let arc_inner = std::mem::size_of::<KeyEntry>() + 16;
        assert!(
            arc_inner <= 256,
            "Arc<KeyEntry> is {arc_inner} bytes (KeyState {}, MetaRecord {}, Lease {})",
            std::mem::size_of::<KeyState>(),
            std::mem::size_of::<MetaRecord>(),
            std::mem::size_of::<super::super::record::Lease>(),
        );
    }
}
