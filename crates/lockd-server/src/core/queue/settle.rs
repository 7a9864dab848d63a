//! Ending or changing a delivery: ack, nack, extend (each checked against
//! the caller's delivery lease), and putting back a delivery that never
//! reached its subscriber.

use std::sync::Arc;

use lockd_api::ErrorCode;
use serde_json::Value;

use super::index::CachedMessage;
use super::message::{msg_key, state_key, MessageRecord, StateLease};
use super::{
    clamp_delay, mismatch, not_found, Extended, MessageRef, NackIntent, QueueShard, Queues,
};
use crate::core::clock::{add_secs, unix_secs, MAX_REQUEST_SECONDS};
use crate::core::txn::{DecideInput, Participant, QueueParticipants};
use crate::core::{CoreError, CoreResult, KeepAliveInput, LeaseRef, ReleaseInput, RemoveInput};
use lockd_api::txn::TxnState;

impl Queues {
    /// Locks a message for ack/nack/extend and checks the caller's lease.
    /// A refusal based on a cached record that other nodes may have
    /// changed since (concurrent mode) is checked again on a fresh read.
    pub(super) async fn locked_delivery(
        &self,
        r: &MessageRef,
    ) -> CoreResult<(
        Arc<QueueShard>,
        tokio::sync::OwnedMutexGuard<CachedMessage>,
        MessageRecord,
    )> {
        let (shard, mut cached, read) = self
            .locked_message(&r.namespace, &r.queue, &r.message_id)
            .await?;
        let checked = match self.check_delivery(&cached, r) {
            Err(_) if self.may_be_stale(read) => {
                self.reread(&mut cached, &r.namespace, &r.queue, &r.message_id)
                    .await?;
                self.check_delivery(&cached, r)
            }
            checked => checked,
        };
        match checked {
            Ok(rec) => Ok((shard, cached, rec)),
            Err(e) => {
                if cached.rec.is_none() {
                    shard.lock().settle(&r.message_id, None);
                }
                Err(e)
            }
        }
    }

    /// Whether a record [`Queues::locked_message`] served from the cache
    /// (`read` false) may be behind the store: other nodes write it
    /// concurrently.
    fn may_be_stale(&self, read: bool) -> bool {
        !read && self.engine.fresh_reads()
    }

    /// Reads a cached record afresh from the store.
    async fn reread(
        &self,
        cached: &mut CachedMessage,
        ns: &str,
        queue: &str,
        id: &str,
    ) -> CoreResult<()> {
        cached.stale = true;
        self.refresh(cached, ns, queue, id).await.map(|_| ())
    }

    /// The cached record if `r` names its live delivery.
    fn check_delivery(&self, cached: &CachedMessage, r: &MessageRef) -> CoreResult<MessageRecord> {
        let Some(rec) = cached.rec.clone() else {
            return Err(not_found("message already removed"));
        };
        let Some(d) = rec.delivery.as_ref() else {
            return Err(mismatch());
        };
        if d.lease_id != r.lease_id
            || (r.fencing_token != 0 && d.fencing_token != r.fencing_token)
            || (!r.txn_id.is_empty() && d.txn_id != r.txn_id)
        {
            return Err(mismatch());
        }
        if self.clock().now_ms() >= d.expires_ms() {
            return Err(CoreError::new(
                ErrorCode::LeaseExpired,
                "message lease expired",
            ));
        }
        Ok(rec)
    }

    /// Locks a message (loading it when another node sharing the store
    /// delivered it) and brings its record up to date (see
    /// [`Queues::refresh`]); tells whether the record was read from the
    /// store by this call.
    pub(super) async fn locked_message(
        &self,
        namespace: &str,
        queue: &str,
        id: &str,
    ) -> CoreResult<(
        Arc<QueueShard>,
        tokio::sync::OwnedMutexGuard<CachedMessage>,
        bool,
    )> {
        let shard = self.shard(namespace, queue).await?;
        let known = {
            let idx = shard.lock();
            idx.entries.get(id).map(|e| e.cached.clone())
        };
        let (cached, loaded) = match known {
            Some(s) => (s, false),
            // Delivered by another node sharing the store: load it.
            None if self.engine.shared() => {
                let key = msg_key(namespace, queue, id);
                let (raw, etag) = self
                    .store
                    .get(&key)
                    .await?
                    .ok_or_else(|| not_found("message not found"))?;
                let rec: MessageRecord = serde_json::from_slice(&raw).map_err(|_| {
                    CoreError::new(ErrorCode::InternalError, "corrupt message record")
                })?;
                let mut idx = shard.lock();
                let inserted = !idx.entries.contains_key(&rec.id);
                if inserted {
                    idx.insert(&rec.id.clone(), &rec, etag);
                }
                let cached = idx
                    .entries
                    .get(id)
                    .map(|e| e.cached.clone())
                    .ok_or_else(|| not_found("message not found"))?;
                (cached, inserted)
            }
            None => return Err(not_found("message not found")),
        };
        let mut cached = cached.lock_owned().await;
        let read = self.refresh(&mut cached, namespace, queue, id).await? || loaded;
        Ok((shard, cached, read))
    }

    /// Completes a delivery: deletes the message and, for stateful
    /// deliveries, its workflow state. Returns the message's correlation id.
    /// A delivery made under a client's transaction decides that whole
    /// transaction instead (commit), which acks the message.
    pub async fn ack(&self, r: &MessageRef) -> CoreResult<String> {
        self.engine.cas_retry(|| self.ack_once(r)).await
    }

    /// Decides the transaction a delivery belongs to, for the ack (commit)
    /// or nack (rollback) of its consumer; the decision settles the message
    /// with every other participant. A transaction already decided the
    /// other way is `409 txn_conflict` (the message went with it).
    async fn decide_delivery(&self, txn: &str, want: TxnState) -> CoreResult<()> {
        let state = self
            .engine
            .decide_txn(DecideInput {
                txn_id: txn.to_string(),
                state: want,
                participants: Vec::new(),
                expires_at_unix: 0,
            })
            .await?;
        if state != want {
            return Err(CoreError::new(
                ErrorCode::TxnConflict,
                format!("transaction {txn} was already decided: {state} (asked for {want})"),
            ));
        }
        Ok(())
    }

    pub(super) async fn ack_once(&self, r: &MessageRef) -> CoreResult<String> {
        let (shard, mut cached, rec) = self.locked_delivery(r).await?;
        if let Some(d) = rec.delivery.as_ref().filter(|d| d.txn_explicit) {
            let txn = d.txn_id.clone();
            drop(cached);
            self.decide_delivery(&txn, TxnState::Commit).await?;
            return Ok(rec.correlation_id);
        }
        if !r.state_etag.is_empty() && !rec.state_etag.is_empty() && r.state_etag != rec.state_etag
        {
            return Err(CoreError::new(
                ErrorCode::CasMismatch,
                "state_etag does not match",
            ));
        }
        self.remove_message(&rec, &mut cached).await?;
        shard.lock().settle(&rec.id, None);
        drop(cached);
        shard.touch();
        if let Some(state) = rec.delivery.as_ref().and_then(|d| d.state.clone()) {
            self.drop_state(&rec, &state).await;
        }
        Ok(rec.correlation_id)
    }

    /// Ends a delivery and makes the message visible again after `delay`.
    /// Returns the new meta etag and the correlation id.
    pub async fn nack(
        &self,
        r: &MessageRef,
        delay_seconds: i64,
        intent: NackIntent,
        last_error: Option<Value>,
    ) -> CoreResult<(String, String)> {
        self.engine
            .cas_retry(|| self.nack_once(r, delay_seconds, intent, last_error.clone()))
            .await
    }

    pub(super) async fn nack_once(
        &self,
        r: &MessageRef,
        delay_seconds: i64,
        intent: NackIntent,
        last_error: Option<Value>,
    ) -> CoreResult<(String, String)> {
        let (shard, mut cached, mut rec) = self.locked_delivery(r).await?;
        if r.meta_etag != rec.meta_etag {
            return Err(CoreError::new(
                ErrorCode::CasMismatch,
                "meta_etag does not match",
            ));
        }
        if let Some(d) = rec.delivery.as_ref().filter(|d| d.txn_explicit) {
            let txn = d.txn_id.clone();
            drop(cached);
            self.decide_delivery(&txn, TxnState::Rollback).await?;
            return Ok((rec.meta_etag, rec.correlation_id));
        }
        let state = rec.delivery.take().and_then(|d| d.state);
        match intent {
            NackIntent::Failure => {
                rec.failure_attempts += 1;
                rec.last_error = last_error;
            }
            NackIntent::Defer => rec.last_error = None,
        }
        let visible = add_secs(self.clock().now_ms(), clamp_delay(delay_seconds));
        rec.set_visible_at_ms(visible);
        rec.meta_etag = uuid::Uuid::now_v7().to_string();
        if rec.failure_attempts >= rec.max_attempts {
            self.dead_letter(&mut rec, &mut cached).await?;
            shard.lock().settle(&rec.id, None);
        } else {
            self.write(&rec, &mut cached).await?;
            shard.lock().settle(&rec.id, Some(&rec));
        }
        drop(cached);
        shard.wake();
        if let Some(state) = state {
            // Progress made under the state lease survives the retry.
            let _ = self
                .engine
                .release(ReleaseInput {
                    namespace: rec.namespace.clone(),
                    key: state_key(&rec.queue, &rec.id),
                    lease_id: state.lease_id,
                    fencing_token: state.fencing_token,
                    txn_id: state.txn_id,
                    rollback: false,
                })
                .await;
        }
        Ok((rec.meta_etag, rec.correlation_id))
    }

    /// Extends a delivery (and its state lease) to `now + extend_by`.
    pub async fn extend(&self, r: &MessageRef, extend_by: i64) -> CoreResult<Extended> {
        self.engine
            .cas_retry(|| self.extend_once(r, extend_by))
            .await
    }

    pub(super) async fn extend_once(&self, r: &MessageRef, extend_by: i64) -> CoreResult<Extended> {
        let (shard, mut cached, mut rec) = self.locked_delivery(r).await?;
        if r.meta_etag != rec.meta_etag {
            return Err(CoreError::new(
                ErrorCode::CasMismatch,
                "meta_etag does not match",
            ));
        }
        // A non-positive extension keeps the delivery's visibility (the
        // original expires the lease at once, which no client wants).
        let e = if extend_by > 0 {
            extend_by
        } else {
            rec.visibility_timeout_seconds
        }
        .clamp(1, MAX_REQUEST_SECONDS);
        let now = self.clock().now_ms();
        // As at delivery, the delivery lease ends with the state lease
        // (extended a moment later), never earlier than `now + e`.
        let mut until = add_secs(now, e);
        let mut state_expires = 0;
        if let Some(d) = rec.delivery.as_mut() {
            if let Some(st) = d.state.as_mut() {
                if !r.state_lease_id.is_empty() {
                    if r.state_lease_id != st.lease_id
                        || (r.state_fencing_token != 0 && r.state_fencing_token != st.fencing_token)
                    {
                        return Err(CoreError::new(
                            ErrorCode::FencingMismatch,
                            "state lease does not match the delivery",
                        ));
                    }
                    let key = state_key(&rec.queue, &rec.id);
                    if self.engine.describe(&rec.namespace, &key).await?.is_none() {
                        return Err(CoreError::new(ErrorCode::StateNotFound, "state not found"));
                    }
                    let state_expires_ms = self
                        .engine
                        .keepalive(KeepAliveInput {
                            namespace: rec.namespace.clone(),
                            key,
                            lease_id: st.lease_id.clone(),
                            fencing_token: st.fencing_token,
                            txn_id: st.txn_id.clone(),
                            ttl_seconds: e,
                        })
                        .await?;
                    state_expires = unix_secs(state_expires_ms);
                    st.expires_at_unix = state_expires;
                    until = until.max(state_expires_ms);
                }
            }
            d.set_expires_ms(until);
        }
        rec.set_visible_at_ms(until);
        rec.visibility_timeout_seconds = e;
        rec.meta_etag = uuid::Uuid::now_v7().to_string();
        self.write(&rec, &mut cached).await?;
        shard.lock().settle(&rec.id, Some(&rec));
        Ok(Extended {
            lease_expires_at_unix: unix_secs(until),
            visibility_timeout_seconds: e,
            meta_etag: rec.meta_etag,
            state_lease_expires_at_unix: state_expires,
            correlation_id: rec.correlation_id,
        })
    }

    /// Drops the workflow state of an acked stateful delivery: staged
    /// changes are discarded and the committed document removed.
    pub(super) async fn drop_state(&self, rec: &MessageRecord, st: &StateLease) {
        let key = state_key(&rec.queue, &rec.id);
        let lease = LeaseRef {
            lease_id: st.lease_id.clone(),
            fencing_token: st.fencing_token,
            txn_id: st.txn_id.clone(),
        };
        let _ = self
            .engine
            .remove(RemoveInput {
                namespace: rec.namespace.clone(),
                key: key.clone(),
                lease,
                if_etag: None,
            })
            .await;
        let _ = self
            .engine
            .release(ReleaseInput {
                namespace: rec.namespace.clone(),
                key,
                lease_id: st.lease_id.clone(),
                fencing_token: st.fencing_token,
                txn_id: st.txn_id.clone(),
                rollback: false,
            })
            .await;
    }

    /// Puts a delivery that never reached its consumer back, as if it had
    /// not happened (subscriber gone before the message was written).
    pub async fn return_undelivered(&self, shard: &QueueShard, id: &str, lease_id: &str) {
        let cached = {
            let idx = shard.lock();
            match idx.entries.get(id) {
                Some(e) => e.cached.clone(),
                None => return,
            }
        };
        let mut cached = cached.lock().await;
        if self
            .refresh(&mut cached, &shard.namespace, &shard.name, id)
            .await
            .is_err()
        {
            return;
        }
        let Some(mut rec) = cached.rec.clone() else {
            return;
        };
        let Some(d) = rec.delivery.take() else {
            return;
        };
        if d.lease_id != lease_id {
            return;
        }
        rec.attempts = (rec.attempts - 1).max(0);
        rec.set_visible_at_ms(self.clock().now_ms());
        rec.meta_etag = uuid::Uuid::now_v7().to_string();
        if self.write(&rec, &mut cached).await.is_ok() {
            shard.lock().settle(id, Some(&rec));
            drop(cached);
            shard.wake();
            if let Some(st) = d.state {
                let _ = self
                    .engine
                    .release(ReleaseInput {
                        namespace: rec.namespace.clone(),
                        key: state_key(&rec.queue, &rec.id),
                        lease_id: st.lease_id,
                        fencing_token: st.fencing_token,
                        txn_id: st.txn_id,
                        rollback: true,
                    })
                    .await;
            }
        }
    }
}

#[async_trait::async_trait]
impl QueueParticipants for Queues {
    async fn settle_for_txn(
        &self,
        namespace: &str,
        queue: &str,
        id: &str,
        txn: &str,
        state: TxnState,
    ) -> CoreResult<()> {
        self.engine
            .cas_retry(|| self.settle_for_txn_once(namespace, queue, id, txn, state))
            .await
    }

    async fn delivery_expiry(
        &self,
        namespace: &str,
        queue: &str,
        id: &str,
        txn: &str,
    ) -> Option<i64> {
        let (_, mut cached, read) = self.locked_message(namespace, queue, id).await.ok()?;
        if self.may_be_stale(read) {
            self.reread(&mut cached, namespace, queue, id).await.ok()?;
        }
        let d = cached.rec.as_ref()?.delivery.as_ref()?;
        (d.txn_id == txn).then(|| d.expires_ms())
    }
}

impl Queues {
    /// Commit: the message is deleted and its workflow state dropped.
    /// Rollback: the delivery ends as a failed attempt (`txn_rollback`),
    /// the message is visible again, and staged state changes of the
    /// transaction are discarded (committed state is kept).
    async fn settle_for_txn_once(
        &self,
        namespace: &str,
        queue: &str,
        id: &str,
        txn: &str,
        state: TxnState,
    ) -> CoreResult<()> {
        let (shard, mut cached, read) = match self.locked_message(namespace, queue, id).await {
            Ok(x) => x,
            Err(e) if e.code() == ErrorCode::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if self.may_be_stale(read) {
            // Decided from the record as it is now: another node may have
            // delivered it under this transaction since it was cached.
            self.reread(&mut cached, namespace, queue, id).await?;
        }
        let Some(mut rec) = cached.rec.clone() else {
            return Ok(());
        };
        if rec.delivery.as_ref().is_none_or(|d| d.txn_id != txn) {
            // Redelivered (its lease lapsed) or already settled.
            return Ok(());
        }
        let lease = rec.delivery.take();
        let state_lease = lease.and_then(|d| d.state);
        if state == TxnState::Commit {
            self.remove_message(&rec, &mut cached).await?;
            shard.lock().settle(&rec.id, None);
            drop(cached);
            shard.touch();
        } else {
            rec.failure_attempts += 1;
            rec.last_error = Some(serde_json::json!({"reason": "txn_rollback"}));
            rec.set_visible_at_ms(self.clock().now_ms());
            rec.meta_etag = uuid::Uuid::now_v7().to_string();
            if rec.failure_attempts >= rec.max_attempts {
                self.dead_letter(&mut rec, &mut cached).await?;
                shard.lock().settle(&rec.id, None);
            } else {
                self.write(&rec, &mut cached).await?;
                shard.lock().settle(&rec.id, Some(&rec));
            }
            drop(cached);
            shard.wake();
        }
        if let Some(st) = state_lease {
            let p = Participant::key(namespace, state_key(queue, id));
            self.engine
                .apply_to_key(&st.txn_id, state, &p, state == TxnState::Commit)
                .await?;
        }
        Ok(())
    }
}
