//! Multi-key transactions (PROTOCOL-EXTENSIONS.md §6): several leases
//! sharing one client-chosen `txn_id`, committed or rolled back together.
//!
//! # The record and the commit point
//!
//! A transaction has one record, `t/<txn_id>`: its state (`pending`,
//! `commit`, `rollback`), its participants (the keys that staged something
//! under it), an expiry, and whether the decision has been applied to every
//! participant. The record is written with a compare-and-swap on its store
//! etag, so on a store shared by several nodes it is the single point of
//! truth.
//!
//! * **Enlisting.** A staging call (update, mutate, remove, metadata,
//!   attachments) under an explicit transaction adds its key to the record
//!   *before* the staged change is written, so every key that holds staged
//!   data of the transaction is listed. Staging under a decided
//!   transaction is refused (`409 txn_conflict`): an xid is used once.
//! * **Deciding.** The first decision is written into the record and is
//!   sticky: a later request for the other outcome gets the recorded one.
//!   Writing the decision is the commit point. Release of any participant
//!   lease decides (`rollback:false` → commit, `rollback:true` →
//!   rollback), as does `/v1/txn/decide|commit|rollback`. A participant
//!   lease that expires before the decision rolls the whole transaction
//!   back, so no key's work is lost while others commit.
//! * **Applying.** The decision is then applied key by key: the per-key
//!   commit or rollback of a release, and the lease cleared. Applying is
//!   idempotent (a key without staged data of the transaction is left
//!   alone), and when every participant is done the record is marked
//!   applied. A crash anywhere leaves a record that start-up recovery and
//!   the background worker finish: decided records are applied again,
//!   pending ones whose participants' leases all ended are rolled back.
//!
//! # What readers see
//!
//! Until the decision, public readers see the committed state of every
//! key. From the moment the decision is recorded, a public read of a key
//! whose staged data belongs to a committed transaction returns that
//! staged data, whether or not the apply has reached the key yet, so no
//! reader sees some keys of a transaction committed and others not. The
//! query index is filed as keys are applied, so an index-driven query may
//! briefly miss a key the apply has not reached (a scan does not).
//!
//! Lock order: a key's lock may be held while the transaction's is taken
//! (enlisting, deciding at release or expiry), never the other way round,
//! and no code holds two keys' locks at once.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use lockd_api::txn::TxnState;
use lockd_api::ErrorCode;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, MutexGuard};

use super::clock::unix_secs;
use super::lease::{commit, rollback};
use super::record::{key_id, MetaRecord};
use super::{CoreError, CoreResult, Engine};
use crate::storage::{Cond, ETag, Op};

/// Every how many worker rounds the whole store is swept for records.
pub const FULL_SWEEP_EVERY: u64 = 60;

/// Where transaction records live in the store.
pub const TXN_PREFIX: &str = "t/";

fn txn_key(txn: &str) -> String {
    format!("{TXN_PREFIX}{txn}")
}

/// A key (or a queue message) taking part in a transaction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Participant {
    pub namespace: String,
    /// The key; for a message, its id.
    pub key: String,
    /// For a message delivered under the transaction: its queue.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue: String,
}

impl Participant {
    /// A key.
    pub fn key(namespace: impl Into<String>, key: impl Into<String>) -> Self {
        Participant {
            namespace: namespace.into(),
            key: key.into(),
            queue: String::new(),
        }
    }

    /// A message delivered under the transaction.
    pub fn message(
        namespace: impl Into<String>,
        queue: impl Into<String>,
        id: impl Into<String>,
    ) -> Self {
        Participant {
            namespace: namespace.into(),
            key: id.into(),
            queue: queue.into(),
        }
    }
}

/// The queue's side of transactions: what a decision does to a message
/// delivered under it (commit acks it and drops its workflow state;
/// rollback makes it visible again and keeps the state). Implemented by
/// the queue subsystem, which registers itself with the engine.
#[async_trait::async_trait]
pub trait QueueParticipants: Send + Sync {
    /// Applies `state` of `txn` to message `id` of `queue`, if it is still
    /// delivered under `txn`; otherwise does nothing.
    async fn settle_for_txn(
        &self,
        namespace: &str,
        queue: &str,
        id: &str,
        txn: &str,
        state: TxnState,
    ) -> CoreResult<()>;

    /// When the delivery of message `id` under `txn` expires (Unix ms), if
    /// it is still delivered under `txn`.
    async fn delivery_expiry(
        &self,
        namespace: &str,
        queue: &str,
        id: &str,
        txn: &str,
    ) -> Option<i64>;
}

/// The stored record of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub txn_id: String,
    pub state: TxnState,
    #[serde(default)]
    pub participants: BTreeSet<Participant>,
    /// After this (Unix ms) a pending transaction whose participants hold
    /// no live lease is rolled back.
    pub expires_at_ms: i64,
    pub created_at_unix: i64,
    pub updated_at_unix: i64,
    /// When the decision was recorded (Unix ms; 0 while pending).
    #[serde(default)]
    pub decided_at_ms: i64,
    /// The decision has reached every participant.
    #[serde(default)]
    pub applied: bool,
}

/// The cached record of a transaction and the lock serialising its
/// changes in this process.
#[derive(Default)]
pub struct TxnSlot {
    loaded: bool,
    rec: Option<TxnRecord>,
    etag: Option<ETag>,
}

/// The transactions this process has in memory.
#[derive(Default)]
pub struct Txns {
    slots: dashmap::DashMap<String, Arc<Mutex<TxnSlot>>>,
    /// Transactions decided by an expiry, to be applied by the worker
    /// (applying under a key's lock could deadlock).
    todo: std::sync::Mutex<BTreeSet<String>>,
    wake: tokio::sync::Notify,
    /// The queue subsystem, for message participants.
    queues: std::sync::OnceLock<std::sync::Weak<dyn QueueParticipants>>,
}

/// How a caller wants a transaction decided.
#[derive(Debug, Clone)]
pub struct DecideInput {
    pub txn_id: String,
    pub state: TxnState,
    pub participants: Vec<Participant>,
    /// Raises the record's expiry (Unix seconds; 0 = no change).
    pub expires_at_unix: i64,
}

impl Engine {
    /// Connects the queue subsystem (once, when it is built).
    pub fn set_queue_participants(&self, queues: std::sync::Weak<dyn QueueParticipants>) {
        let _ = self.txns.queues.set(queues);
    }

    fn txn_slot(&self, txn: &str) -> Arc<Mutex<TxnSlot>> {
        if let Some(s) = self.txns.slots.get(txn) {
            return s.clone();
        }
        self.txns.slots.entry(txn.to_string()).or_default().clone()
    }

    /// Locks a transaction's slot, reading its record on first use (on
    /// every use when other nodes share the store).
    async fn lock_txn<'s>(
        &self,
        txn: &str,
        slot: &'s Mutex<TxnSlot>,
    ) -> CoreResult<MutexGuard<'s, TxnSlot>> {
        let mut s = slot.lock().await;
        if !s.loaded || self.cfg.shared {
            match self.store.get(&txn_key(txn)).await? {
                Some((raw, etag)) => {
                    let rec: TxnRecord = serde_json::from_slice(&raw).map_err(|e| {
                        tracing::error!(txn, error = %e, "corrupt transaction record");
                        CoreError::new(ErrorCode::InternalError, "corrupt transaction record")
                    })?;
                    s.rec = Some(rec);
                    s.etag = Some(etag);
                }
                None => {
                    s.rec = None;
                    s.etag = None;
                }
            }
            s.loaded = true;
        }
        Ok(s)
    }

    /// Writes `rec` with a compare-and-swap on the slot's etag.
    async fn write_txn(&self, s: &mut TxnSlot, rec: TxnRecord) -> CoreResult<()> {
        let raw = serde_json::to_vec(&rec).map_err(|e| {
            CoreError::new(ErrorCode::InternalError, format!("encode txn record: {e}"))
        })?;
        let cond = match &s.etag {
            Some(e) => Cond::IfMatch(e.clone()),
            None => Cond::IfAbsent,
        };
        // If the write is abandoned mid-way, read the record again.
        s.loaded = false;
        let etags = self
            .store
            .apply(vec![Op::Put {
                key: txn_key(&rec.txn_id),
                value: Bytes::from(raw),
                cond,
            }])
            .await?;
        s.etag = etags.into_iter().next();
        s.rec = Some(rec);
        s.loaded = true;
        Ok(())
    }

    /// The recorded state of a transaction, if it has a record.
    pub async fn txn_state(&self, txn: &str) -> CoreResult<Option<TxnState>> {
        let slot = self.txn_slot(txn);
        let s = self.lock_txn(txn, &slot).await?;
        Ok(s.rec.as_ref().map(|r| r.state))
    }

    /// Adds a key to a pending transaction before the key stages anything
    /// under it; called under the key's lock. `lease_expires_ms` raises
    /// the record's expiry.
    pub(crate) async fn enlist(
        &self,
        txn: &str,
        p: Participant,
        lease_expires_ms: i64,
    ) -> CoreResult<()> {
        self.cas_retry(|| self.enlist_once(txn, &p, lease_expires_ms))
            .await
    }

    async fn enlist_once(
        &self,
        txn: &str,
        p: &Participant,
        lease_expires_ms: i64,
    ) -> CoreResult<()> {
        let slot = self.txn_slot(txn);
        let mut s = self.lock_txn(txn, &slot).await?;
        let now = self.cfg.clock.now_ms();
        let mut rec = match &s.rec {
            Some(r) if r.state.is_decided() => return Err(decided(txn, r.state)),
            Some(r) if r.participants.contains(p) && r.expires_at_ms >= lease_expires_ms => {
                return Ok(())
            }
            Some(r) => r.clone(),
            None => {
                // A transaction lives as long as its leases.
                let mut r = self.new_record(txn, now);
                r.expires_at_ms = lease_expires_ms;
                r
            }
        };
        rec.participants.insert(p.clone());
        too_many(txn, &rec)?;
        rec.expires_at_ms = rec.expires_at_ms.max(lease_expires_ms);
        rec.updated_at_unix = unix_secs(now);
        self.write_txn(&mut s, rec).await
    }

    fn new_record(&self, txn: &str, now: i64) -> TxnRecord {
        let ttl = i64::try_from(self.cfg.default_ttl.as_millis()).unwrap_or(i64::MAX);
        TxnRecord {
            txn_id: txn.to_string(),
            state: TxnState::Pending,
            participants: BTreeSet::new(),
            expires_at_ms: now.saturating_add(ttl),
            created_at_unix: unix_secs(now),
            updated_at_unix: unix_secs(now),
            decided_at_ms: 0,
            applied: false,
        }
    }

    /// Records a decision (or, for `pending`, the participants and expiry)
    /// and returns the recorded state: a decided transaction keeps its
    /// decision whatever is asked later. Does not apply it.
    pub(super) async fn record_decision(&self, input: &DecideInput) -> CoreResult<TxnState> {
        self.cas_retry(|| self.record_decision_once(input)).await
    }

    async fn record_decision_once(&self, input: &DecideInput) -> CoreResult<TxnState> {
        let txn = input.txn_id.as_str();
        let slot = self.txn_slot(txn);
        let mut s = self.lock_txn(txn, &slot).await?;
        let now = self.cfg.clock.now_ms();
        let mut rec = match &s.rec {
            Some(r) => r.clone(),
            None => self.new_record(txn, now),
        };
        let before = rec.clone();
        if rec.state.is_decided() {
            // Sticky; participants named now are not part of the decision.
            return Ok(rec.state);
        }
        rec.participants.extend(input.participants.iter().cloned());
        too_many(txn, &rec)?;
        if input.expires_at_unix > 0 {
            // A requested expiry is clamped like a lease TTL: a record
            // nobody decides cannot be kept pending forever.
            let max_ttl = i64::try_from(self.cfg.max_ttl.as_millis()).unwrap_or(i64::MAX);
            let asked = input
                .expires_at_unix
                .saturating_mul(1000)
                .min(now.saturating_add(max_ttl));
            rec.expires_at_ms = rec.expires_at_ms.max(asked);
        }
        if input.state.is_decided() {
            rec.state = input.state;
            if rec.state == TxnState::Commit {
                if let Some(p) = self.lapsed_participant(txn, &rec.participants, now).await? {
                    // Its staged work is being (or was) rolled back: the
                    // transaction cannot commit without it.
                    tracing::info!(
                        txn_id = txn,
                        namespace = %p.namespace,
                        key = %p.key,
                        "commit refused: a participant's lease lapsed; rolling back"
                    );
                    rec.state = TxnState::Rollback;
                }
            }
            rec.decided_at_ms = now;
            // Nothing to apply: the record is final as written.
            rec.applied = rec.participants.is_empty();
        }
        if s.rec.is_some() && rec == before {
            return Ok(rec.state);
        }
        rec.updated_at_unix = unix_secs(now);
        let state = rec.state;
        if state.is_decided() {
            failpoint("txn.before-decision");
        }
        self.write_txn(&mut s, rec).await?;
        if state.is_decided() {
            failpoint("txn.decided");
            tracing::info!(txn_id = txn, state = %state, "transaction decided");
        }
        Ok(state)
    }

    /// Applies a transaction's recorded decision to every participant and
    /// marks the record applied. Returns the state; `None` when there is
    /// no record. A pending transaction is left as it is; an applied one is
    /// applied again only when `again` (each key is left alone unless it
    /// still holds something of the transaction).
    pub async fn apply_txn(&self, txn: &str, again: bool) -> CoreResult<Option<TxnState>> {
        let (state, participants) = {
            let slot = self.txn_slot(txn);
            let s = self.lock_txn(txn, &slot).await?;
            match &s.rec {
                None => return Ok(None),
                Some(r) if !r.state.is_decided() || (r.applied && !again) => {
                    return Ok(Some(r.state))
                }
                Some(r) => (r.state, r.participants.clone()),
            }
        };
        for (_k, p) in participants.iter().enumerate() {
            #[cfg(debug_assertions)]
            failpoint(&format!("txn.apply.{_k}"));
            if p.queue.is_empty() {
                self.apply_to_key(txn, state, p, false).await?;
            } else if let Some(q) = self.txns.queues.get().and_then(|w| w.upgrade()) {
                q.settle_for_txn(&p.namespace, &p.queue, &p.key, txn, state)
                    .await?;
            }
        }
        failpoint("txn.applied");
        self.cas_retry(|| self.mark_applied(txn)).await?;
        Ok(Some(state))
    }

    async fn mark_applied(&self, txn: &str) -> CoreResult<()> {
        let slot = self.txn_slot(txn);
        let mut s = self.lock_txn(txn, &slot).await?;
        let Some(rec) = s.rec.clone() else {
            return Ok(());
        };
        if rec.applied {
            return Ok(());
        }
        let mut rec = rec;
        rec.applied = true;
        rec.updated_at_unix = unix_secs(self.cfg.clock.now_ms());
        self.write_txn(&mut s, rec).await
    }

    /// Applies `state` of `txn` to one key: commits or rolls back what it
    /// staged under `txn` and clears a lease of `txn`; with `drop_doc`, a
    /// commit also deletes the key's document (an acked message's
    /// workflow state). Idempotent.
    pub async fn apply_to_key(
        &self,
        txn: &str,
        state: TxnState,
        p: &Participant,
        drop_doc: bool,
    ) -> CoreResult<()> {
        self.cas_retry(|| self.apply_to_key_once(txn, state, p, drop_doc))
            .await
    }

    async fn apply_to_key_once(
        &self,
        txn: &str,
        state: TxnState,
        p: &Participant,
        drop_doc: bool,
    ) -> CoreResult<()> {
        let id = key_id(&p.namespace, &p.key);
        let entry = self.key_entry(&id);
        let mut st = self.lock_key(&entry, &id).await?;
        let Some(rec) = st.rec.as_ref() else {
            return Ok(());
        };
        let staged_here = rec.staged.as_ref().is_some_and(|s| s.txn_id == txn);
        let leased_here = rec.lease.as_ref().is_some_and(|l| l.txn_id == txn);
        if !staged_here && !leased_here {
            return Ok(());
        }
        let mut rec = rec.clone();
        let mut released = if !staged_here {
            Default::default()
        } else if state == TxnState::Commit && !drop_doc {
            commit(&mut rec, &id)
        } else {
            rollback(&mut rec, &id)
        };
        if drop_doc && state == TxnState::Commit && !rec.state_etag.is_empty() {
            released
                .after
                .extend(super::key_entry::delete_doc(&id, &rec.state_etag));
            rec.state_etag.clear();
            rec.version = rec.version.saturating_add(1);
            rec.published_version = rec.version;
        }
        if leased_here {
            rec.lease = None;
        }
        rec.updated_at_unix = unix_secs(self.cfg.clock.now_ms());
        self.persist_releasing(&id, &mut st, rec, Vec::new(), released)
            .await?;
        drop(st);
        entry.wake_head();
        Ok(())
    }

    /// Decides a transaction as asked (sticky) and applies the recorded
    /// decision: `/v1/txn/decide` and the apply calls. `pending` only
    /// records.
    pub async fn decide_txn(&self, input: DecideInput) -> CoreResult<TxnState> {
        let state = self.record_decision(&input).await?;
        if state.is_decided() {
            self.apply_txn(&input.txn_id, true).await?;
        }
        Ok(state)
    }

    /// Re-applies a recorded decision (`/v1/txn/replay`, the apply calls
    /// without participants). An expired pending transaction whose
    /// participants hold no live lease is rolled back first. `None`: no
    /// record.
    pub async fn replay_txn(&self, txn: &str) -> CoreResult<Option<TxnState>> {
        let Some(state) = self.txn_state(txn).await? else {
            return Ok(None);
        };
        if state == TxnState::Pending {
            return Ok(Some(self.expire_if_due(txn).await?));
        }
        self.apply_txn(txn, true).await
    }

    /// Rolls back a pending transaction past its expiry whose participants
    /// hold no live lease of it; a live lease moves the expiry instead (a
    /// transaction lives as long as its leases are kept alive). Returns
    /// the state afterwards.
    async fn expire_if_due(&self, txn: &str) -> CoreResult<TxnState> {
        let now = self.cfg.clock.now_ms();
        let (expires, participants) = {
            let slot = self.txn_slot(txn);
            let s = self.lock_txn(txn, &slot).await?;
            match &s.rec {
                Some(r) if r.state == TxnState::Pending => {
                    (r.expires_at_ms, r.participants.clone())
                }
                Some(r) => return Ok(r.state),
                None => return Ok(TxnState::Rollback),
            }
        };
        if now < expires {
            return Ok(TxnState::Pending);
        }
        let mut live = 0i64;
        for p in &participants {
            let expires = if p.queue.is_empty() {
                let id = key_id(&p.namespace, &p.key);
                self.peek(&id)
                    .await?
                    .and_then(|rec| rec.lease)
                    .filter(|l| l.txn_id == txn)
                    .map(|l| l.expires_ms())
            } else {
                match self.txns.queues.get().and_then(|w| w.upgrade()) {
                    Some(q) => q.delivery_expiry(&p.namespace, &p.queue, &p.key, txn).await,
                    None => None,
                }
            };
            if let Some(e) = expires.filter(|&e| e > now) {
                live = live.max(e);
            }
        }
        if live > 0 {
            let input = DecideInput {
                txn_id: txn.to_string(),
                state: TxnState::Pending,
                participants: Vec::new(),
                expires_at_unix: unix_secs(live).saturating_add(1),
            };
            return self.record_decision(&input).await;
        }
        let input = DecideInput {
            txn_id: txn.to_string(),
            state: TxnState::Rollback,
            participants: Vec::new(),
            expires_at_unix: 0,
        };
        let state = self.record_decision(&input).await?;
        tracing::info!(txn_id = txn, state = %state, "expired transaction decided");
        self.apply_txn(txn, false).await?;
        Ok(state)
    }

    /// The first participant whose lease (or delivery) of `txn` lapsed
    /// before `now`. Read from the store, not through the key locks: a
    /// decision may be taken under another participant's lock.
    async fn lapsed_participant(
        &self,
        txn: &str,
        participants: &BTreeSet<Participant>,
        now: i64,
    ) -> CoreResult<Option<Participant>> {
        for p in participants {
            let expires = if p.queue.is_empty() {
                let key = super::record::meta_key(&key_id(&p.namespace, &p.key));
                let Some((raw, _)) = self.store.get(&key).await? else {
                    continue;
                };
                let Ok(rec) = serde_json::from_slice::<MetaRecord>(&raw) else {
                    continue;
                };
                if rec.staged.as_ref().is_none_or(|s| s.txn_id != txn) {
                    // Nothing of the transaction there (any more).
                    continue;
                }
                rec.lease
                    .filter(|l| l.txn_id == txn)
                    .map(|l| l.expires_ms())
            } else {
                let key = super::queue::message::msg_key(&p.namespace, &p.queue, &p.key);
                let Some((raw, _)) = self.store.get(&key).await? else {
                    continue;
                };
                let Ok(rec) = serde_json::from_slice::<super::queue::message::MessageRecord>(&raw)
                else {
                    continue;
                };
                // A message no longer delivered under the transaction
                // (its lease lapsed; maybe someone else has it) is lost
                // to it.
                rec.delivery
                    .filter(|d| d.txn_id == txn)
                    .map(|d| d.expires_ms())
            };
            if expires.is_none_or(|e| e <= now) {
                return Ok(Some(p.clone()));
            }
        }
        Ok(None)
    }

    /// The decision a participant whose lease expired gets: rollback,
    /// unless the transaction is already committed. Called under the key's
    /// lock; the other participants are left to the worker.
    pub(crate) async fn decide_on_expiry(&self, txn: &str) -> CoreResult<TxnState> {
        let input = DecideInput {
            txn_id: txn.to_string(),
            state: TxnState::Rollback,
            participants: Vec::new(),
            expires_at_unix: 0,
        };
        let state = self.record_decision(&input).await?;
        self.schedule_apply(txn);
        Ok(state)
    }

    /// Asks the worker to apply a decided transaction.
    fn schedule_apply(&self, txn: &str) {
        if let Ok(mut t) = self.txns.todo.lock() {
            t.insert(txn.to_string());
        }
        self.txns.wake.notify_one();
    }

    /// Whether a public reader of `rec` should see its staged data as
    /// committed: it belongs to an explicit transaction recorded as
    /// committed whose apply has not reached the key yet.
    pub(super) async fn committed_view(&self, id: &str, rec: MetaRecord) -> MetaRecord {
        let Some(staged) = rec.staged.as_ref() else {
            return rec;
        };
        let explicit = rec
            .lease
            .as_ref()
            .is_some_and(|l| l.txn_explicit && l.txn_id == staged.txn_id);
        if !explicit {
            return rec;
        }
        match self.txn_state(&staged.txn_id).await {
            Ok(Some(TxnState::Commit)) => {
                let mut view = rec;
                commit(&mut view, id);
                view
            }
            _ => rec,
        }
    }

    /// Finishes every transaction a crash or an expiry left open: applies
    /// decided records not yet applied, and rolls back expired pending
    /// ones whose leases ended. With `full`, every record in the store is
    /// looked at (start-up recovery, records of other nodes, and deleting
    /// applied records older than `retention`); otherwise only those this
    /// process has in memory. Returns how many transactions were acted on.
    pub async fn sweep_txns(
        &self,
        full: bool,
        retention: std::time::Duration,
    ) -> CoreResult<usize> {
        let todo: Vec<String> = self
            .txns
            .todo
            .lock()
            .map(|mut t| std::mem::take(&mut *t).into_iter().collect())
            .unwrap_or_default();
        let mut acted = 0;
        for txn in todo {
            self.apply_txn(&txn, false).await?;
            acted += 1;
        }
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        if full {
            let mut after: Option<String> = None;
            loop {
                let keys = self.store.list(TXN_PREFIX, after.as_deref(), 1000).await?;
                let Some(last) = keys.last().cloned() else {
                    break;
                };
                for k in &keys {
                    if let Some(txn) = k.strip_prefix(TXN_PREFIX) {
                        acted += self.settle_txn(txn, Some(retention_ms)).await?;
                    }
                }
                after = Some(last);
            }
        } else {
            let txns: Vec<String> = self.txns.slots.iter().map(|e| e.key().clone()).collect();
            for txn in txns {
                acted += self.settle_txn(&txn, None).await?;
            }
        }
        // Slots nobody uses whose transaction is finished (or unknown)
        // leave memory; pending ones stay, so the quick sweep sees them.
        self.txns.slots.retain(|_, slot| {
            let finished = Arc::strong_count(slot) == 1
                && slot
                    .try_lock()
                    .is_ok_and(|s| s.rec.as_ref().is_none_or(|r| r.applied));
            !finished
        });
        Ok(acted)
    }

    /// What the sweep does with one transaction: apply a decided one,
    /// expire a pending one past its expiry, forget an applied one past
    /// `retention_ms` (when given). Returns 1 when it acted.
    async fn settle_txn(&self, txn: &str, retention_ms: Option<i64>) -> CoreResult<usize> {
        let rec = {
            let slot = self.txn_slot(txn);
            let s = self.lock_txn(txn, &slot).await?;
            s.rec.clone()
        };
        let Some(rec) = rec else {
            return Ok(0);
        };
        let now = self.cfg.clock.now_ms();
        if rec.state.is_decided() && !rec.applied {
            self.apply_txn(txn, false).await?;
            return Ok(1);
        }
        if rec.state == TxnState::Pending && now >= rec.expires_at_ms {
            let state = self.expire_if_due(txn).await?;
            return Ok(usize::from(state != TxnState::Pending));
        }
        if let Some(keep) = retention_ms {
            if rec.applied && now.saturating_sub(rec.decided_at_ms) > keep {
                self.forget_txn(txn).await?;
            }
        }
        Ok(0)
    }

    /// Deletes an applied record past its retention.
    async fn forget_txn(&self, txn: &str) -> CoreResult<()> {
        let slot = self.txn_slot(txn);
        let mut s = self.lock_txn(txn, &slot).await?;
        let Some(etag) = s.etag.clone() else {
            return Ok(());
        };
        if !s.rec.as_ref().is_some_and(|r| r.applied) {
            return Ok(());
        }
        s.loaded = false;
        self.store
            .apply(vec![Op::Delete {
                key: txn_key(txn),
                cond: Cond::IfMatch(etag),
            }])
            .await?;
        s.rec = None;
        s.etag = None;
        s.loaded = true;
        Ok(())
    }

    /// Runs [`Engine::sweep_txns`] at once (a full sweep: recovery after
    /// a crash), whenever an expiry decides a transaction, and every
    /// `every` (a full sweep every [`FULL_SWEEP_EVERY`] rounds) while
    /// `active` says this node may write, until `stopped` turns true.
    pub async fn run_txn_worker(
        self: Arc<Self>,
        every: std::time::Duration,
        retention: std::time::Duration,
        active: Box<dyn Fn() -> bool + Send + Sync>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut round: u64 = 0;
        loop {
            // A passive node writes nothing; its first active round is a
            // full one.
            if !active() {
                round = 0;
            } else {
                let full = round % FULL_SWEEP_EVERY == 0;
                round = round.wrapping_add(1);
                if let Err(e) = self.sweep_txns(full, retention).await {
                    tracing::warn!(error = %e.into_refusal().detail, "transaction sweep failed; retried");
                }
            }
            tokio::select! {
                _ = self.txns.wake.notified() => {}
                _ = self.cfg.clock.sleep(every) => {}
                _ = stopped.changed() => break,
            }
        }
    }
}

/// A crash point of the transaction code for tests: in debug builds the
/// process aborts here, as a `kill -9` would, when the environment
/// variable `LOCKD_FAILPOINT` names the point. Release builds have none.
#[cfg(debug_assertions)]
pub(crate) fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var("LOCKD_FAILPOINT").ok());
    if point.as_deref() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub(crate) fn failpoint(_name: &str) {}

/// Most keys and messages one transaction may hold: its record is
/// rewritten whole on every enlistment, and a decision applies to each.
pub const MAX_PARTICIPANTS: usize = 10_000;

/// Refuses a record grown past [`MAX_PARTICIPANTS`].
fn too_many(txn: &str, rec: &TxnRecord) -> CoreResult<()> {
    if rec.participants.len() > MAX_PARTICIPANTS {
        return Err(CoreError::new(
            ErrorCode::TxnConflict,
            format!("transaction {txn} would have more than {MAX_PARTICIPANTS} participants"),
        ));
    }
    Ok(())
}

/// The refusal of staging under a decided transaction.
fn decided(txn: &str, state: TxnState) -> CoreError {
    CoreError::new(
        ErrorCode::TxnConflict,
        format!("transaction {txn} is already decided ({state}); use a new txn_id"),
    )
}

impl Engine {
    /// This server's storage backend as a transaction participant's
    /// `backend_hash`: the first 16 hex digits of the SHA-256 of the
    /// store's description. Participants naming another backend are
    /// refused (a single cluster has one).
    pub fn backend_hash(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.store.describe().as_bytes());
        hex::encode(&digest[..8])
    }
}
