//! A queue's in-memory index: one entry per live message (its visibility
//! time, current delivery and cached record) and the visibility order
//! consumers claim from.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use tokio::sync::Mutex;

use super::message::MessageRecord;
use crate::storage::ETag;

/// One live message in the index.
pub(super) struct Entry {
    /// Unix ms.
    pub(super) visible_at: i64,
    pub(super) enqueued_at: i64,
    pub(super) lease_id: Option<String>,
    pub(super) claimed: bool,
    pub(super) cached: Arc<Mutex<CachedMessage>>,
}

/// A message's last known record and store etag, behind the lock that
/// serialises every write of that message.
pub(super) struct CachedMessage {
    /// `None` once the message is gone (acked, dead-lettered, expired).
    pub(super) rec: Option<MessageRecord>,
    pub(super) etag: ETag,
    /// A write was started and not seen to finish (its future was dropped):
    /// reload from the store before use.
    pub(super) stale: bool,
    /// The inline payload, kept from the enqueue on this node to the first
    /// delivery. Payloads never change once stored, so this is right in
    /// every mode.
    pub(super) payload: Option<CachedPayload>,
}

/// An inline payload held in memory, counted against the server's budget
/// ([`super::QueueConfig::PAYLOAD_CACHE_BYTES`]) until dropped.
pub(super) struct CachedPayload {
    pub(super) body: Bytes,
    budget: Arc<AtomicUsize>,
}

impl CachedPayload {
    /// Holds `body` if the budget has room for it.
    pub(super) fn new(body: &Bytes, budget: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let len = body.len();
        budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(len).filter(|n| *n <= max)
            })
            .ok()?;
        // A copy, so that the budget counts what is held (the request's
        // buffer the body may be a slice of can be larger).
        Some(Self {
            body: Bytes::copy_from_slice(body),
            budget: budget.clone(),
        })
    }
}

impl Drop for CachedPayload {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.body.len(), Ordering::AcqRel);
    }
}

/// Every live message of one queue and the order they become visible in.
#[derive(Default)]
pub(super) struct Index {
    pub(super) entries: HashMap<String, Entry>,
    /// `(visible_at, id)` of every unclaimed entry (Unix ms).
    pub(super) order: BTreeSet<(i64, String)>,
}

impl Index {
    pub(super) fn insert(&mut self, id: &str, rec: &MessageRecord, etag: ETag) {
        self.insert_with_payload(id, rec, etag, None);
    }

    /// [`Index::insert`] with the message's inline payload held in memory.
    pub(super) fn insert_with_payload(
        &mut self,
        id: &str,
        rec: &MessageRecord,
        etag: ETag,
        payload: Option<CachedPayload>,
    ) {
        let cached = Arc::new(Mutex::new(CachedMessage {
            rec: Some(rec.clone()),
            etag,
            stale: false,
            payload,
        }));
        self.entries.insert(
            id.to_string(),
            Entry {
                visible_at: rec.visible_at_ms(),
                enqueued_at: rec.enqueued_at_unix,
                lease_id: rec.delivery.as_ref().map(|d| d.lease_id.clone()),
                claimed: false,
                cached,
            },
        );
        self.order.insert((rec.visible_at_ms(), id.to_string()));
    }

    /// Records the new state of an entry after a write (or its removal).
    pub(super) fn settle(&mut self, id: &str, rec: Option<&MessageRecord>) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        self.order.remove(&(e.visible_at, id.to_string()));
        match rec {
            Some(rec) => {
                e.visible_at = rec.visible_at_ms();
                e.lease_id = rec.delivery.as_ref().map(|d| d.lease_id.clone());
                e.claimed = false;
                self.order.insert((e.visible_at, id.to_string()));
            }
            None => {
                self.entries.remove(id);
            }
        }
    }
}
