//! Dequeue: waiting for a ready message (notification, timer, poll, drain),
//! claiming it from the index, and leasing it (with its workflow-state
//! lease for stateful deliveries). Expired and exhausted messages met on
//! the way are removed or dead-lettered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockd_api::txn::TxnState;
use lockd_api::ErrorCode;
use serde_json::json;
use tokio::time::Instant;

use super::message::{state_key, Delivery, MessageRecord, StateLease};
use super::{DequeueInput, Leased, QueueShard, Queues, Wait};
use crate::core::clock::add_secs;
use crate::core::txn::Participant;
use crate::core::{AcquireInput, CoreError, CoreResult};

/// Puts a claimed entry back in the visibility order if the claim is
/// abandoned (error, or the request's future dropped mid-way). After a
/// `settle` the entry is no longer claimed and this does nothing.
struct ClaimGuard<'a> {
    shard: &'a QueueShard,
    id: String,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        let mut idx = self.shard.lock();
        let visible_at = match idx.entries.get_mut(&self.id) {
            Some(e) if e.claimed => {
                e.claimed = false;
                e.visible_at
            }
            _ => return,
        };
        idx.order.insert((visible_at, self.id.clone()));
        drop(idx);
        self.shard.wake();
    }
}

/// Counts a consumer as waiting while it lives.
struct ConsumerGuard<'a> {
    all: &'a AtomicUsize,
    queue: &'a AtomicUsize,
}

impl Drop for ConsumerGuard<'_> {
    fn drop(&mut self) {
        self.all.fetch_sub(1, Ordering::Relaxed);
        self.queue.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Queues {
    /// Leases up to `page_size` ready messages, waiting as `wait` says.
    pub async fn dequeue(&self, input: &DequeueInput) -> CoreResult<Vec<Leased>> {
        let shard = self.shard(&input.namespace, &input.queue).await?;
        self.dequeue_on(&shard, input, input.wait, false).await
    }

    /// Like [`Queues::dequeue`] on a shard already at hand. An `admitted`
    /// consumer (an open subscribe stream asking for its next message) is
    /// not refused by the consumer limit again.
    pub async fn dequeue_on(
        &self,
        shard: &Arc<QueueShard>,
        input: &DequeueInput,
        wait: Wait,
        admitted: bool,
    ) -> CoreResult<Vec<Leased>> {
        if self.consumers.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_consumers && !admitted {
            self.consumers.fetch_sub(1, Ordering::Relaxed);
            return Err(CoreError::new(ErrorCode::QueueBusy, "too many consumers"));
        }
        shard.waiting.fetch_add(1, Ordering::Relaxed);
        let _guard = ConsumerGuard {
            all: &self.consumers,
            queue: &shard.waiting,
        };
        let deadline = match wait {
            Wait::Seconds(n) if n > 0 => Instant::now().checked_add(Duration::from_secs(n as u64)),
            _ => None,
        };
        let mut drain = self.drain.get().cloned();
        loop {
            if let Some(e) = self.draining_error() {
                return Err(e);
            }
            let notified = shard.ready_notified();
            self.sync_if_due(shard);
            let mut out = Vec::new();
            while out.len() < input.page_size {
                match self.claim_one(shard, input).await? {
                    Some(l) => {
                        let enlist = enlistment(input, &l.record);
                        if let Err(e) = self.enlist_delivery(enlist).await {
                            // Nothing of this page reaches the consumer.
                            out.push(l);
                            let given: Vec<(String, String)> = out
                                .drain(..)
                                .filter_map(|l| {
                                    let d = l.record.delivery?;
                                    Some((l.record.id, d.lease_id))
                                })
                                .collect();
                            for (id, lease_id) in given {
                                self.return_undelivered(shard, &id, &lease_id).await;
                            }
                            return Err(e);
                        }
                        out.push(l)
                    }
                    None => break,
                }
            }
            if !out.is_empty() {
                if shard.has_ready() {
                    // Pass the wake on to the next consumer.
                    shard.ready.notify_one();
                }
                return Ok(out);
            }
            let waiting = || {
                let e = CoreError::new(ErrorCode::Waiting, "no messages available");
                match wait {
                    Wait::Seconds(n) if n > 0 => e.with_retry_after(n),
                    _ => e,
                }
            };
            if wait == Wait::Never || deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(waiting());
            }
            // The next message to become visible (or delivery lease to
            // lapse), by the engine's clock.
            let next = shard.next_visible();
            // On a shared store other nodes enqueue too: look again after
            // a poll interval.
            let wake = [deadline, self.engine.next_poll()]
                .into_iter()
                .flatten()
                .min();
            let drained = async {
                match drain.as_mut() {
                    Some(rx) => rx.started().await,
                    None => std::future::pending::<()>().await,
                }
            };
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = sleep => {}
                _ = self.clock().sleep_until_opt(next) => {}
                _ = drained => {}
            }
        }
    }

    /// Lists a message delivered under a consumer's transaction in that
    /// transaction's record (refused when it is already decided).
    async fn enlist_delivery(&self, enlist: Option<(String, Participant, i64)>) -> CoreResult<()> {
        match enlist {
            Some((txn, p, expires)) => self.engine.enlist(&txn, p, expires).await,
            None => Ok(()),
        }
    }

    /// Takes the first ready message, if any, and leases it. Expired and
    /// exhausted messages met on the way are deleted or dead-lettered.
    pub(super) async fn claim_one(
        &self,
        shard: &QueueShard,
        input: &DequeueInput,
    ) -> CoreResult<Option<Leased>> {
        loop {
            let now = self.clock().now_ms();
            let (id, cached) = {
                let mut idx = shard.lock();
                let Some((t, id)) = idx.order.first().cloned() else {
                    return Ok(None);
                };
                if t > now {
                    return Ok(None);
                }
                idx.order.remove(&(t, id.clone()));
                let Some(e) = idx.entries.get_mut(&id) else {
                    continue;
                };
                e.claimed = true;
                (id, e.cached.clone())
            };
            let _claim = ClaimGuard {
                shard,
                id: id.clone(),
            };
            let mut cached = cached.lock().await;
            self.refresh(&mut cached, &shard.namespace, &shard.name, &id)
                .await?;
            let Some(mut rec) = cached.rec.clone() else {
                shard.lock().settle(&id, None);
                continue;
            };
            if rec.visible_at_ms() > now {
                // Extended or nacked with a delay while we were queued.
                shard.lock().settle(&id, Some(&rec));
                continue;
            }
            if rec.expires_ms().is_some_and(|t| now >= t) {
                match self.remove_message(&rec, &mut cached).await {
                    Err(e) if e.is_store_conflict() => {
                        // Another node changed it first; look again.
                        shard.lock().settle(&id, Some(&rec));
                        continue;
                    }
                    r => r?,
                }
                shard.lock().settle(&id, None);
                continue;
            }
            if let Some(txn) = rec
                .delivery
                .as_ref()
                .filter(|d| d.txn_explicit)
                .map(|d| d.txn_id.clone())
            {
                // A delivery of a client's transaction that lapsed decides
                // the transaction: rollback (the message is delivered
                // again), unless it is already committed (the message is
                // done).
                if self.engine.decide_on_expiry(&txn).await? == TxnState::Commit {
                    match self.remove_message(&rec, &mut cached).await {
                        Err(e) if e.is_store_conflict() => {
                            shard.lock().settle(&id, Some(&rec));
                            continue;
                        }
                        r => r?,
                    }
                    shard.lock().settle(&id, None);
                    continue;
                }
            }
            if let Some(prev) = rec.delivery.take() {
                // The previous delivery ended by lease expiry.
                if self.cfg.expiry_counts_as_failure {
                    rec.failure_attempts += 1;
                    rec.last_error = Some(json!({
                        "reason": "lease_expired",
                        "detail": "the consumer neither acked nor nacked before its lease expired",
                        "owner": prev.owner,
                    }));
                }
            }
            if rec.failure_attempts >= rec.max_attempts {
                match self.dead_letter(&mut rec, &mut cached).await {
                    Err(e) if e.is_store_conflict() => {
                        shard.lock().settle(&id, cached.rec.clone().as_ref());
                        continue;
                    }
                    r => r?,
                }
                shard.lock().settle(&id, None);
                continue;
            }
            let v = input.visibility;
            let txn = input
                .txn_id
                .clone()
                .unwrap_or_else(|| xid::new().to_string());
            // A stateful delivery's lease ends with its state lease, taken
            // a moment later, so the state is free again when the message
            // is: never earlier than `now + v`.
            let mut until = add_secs(now, v);
            let state = if input.stateful {
                match self
                    .lease_state(&rec, &input.owner, v, &txn, input.txn_id.is_some())
                    .await
                {
                    Ok((s, state_until)) => {
                        until = until.max(state_until);
                        Some(s)
                    }
                    Err(e) if e.code() == ErrorCode::Waiting => {
                        // The state lease is still live (a delivery made by
                        // an older version, or a holder through the lease
                        // API); look again when it expires. The stored
                        // record is unchanged.
                        let again = self
                            .engine
                            .lease_expiry_ms(&rec.namespace, &state_key(&rec.queue, &rec.id))
                            .await
                            .unwrap_or(now + 1000)
                            .max(now + 1);
                        let mut idx = shard.lock();
                        if let Some(e) = idx.entries.get_mut(&id) {
                            e.visible_at = again;
                            e.claimed = false;
                        }
                        idx.order.insert((again, id.clone()));
                        return Ok(None);
                    }
                    Err(e) => {
                        let r = cached.rec.clone();
                        shard.lock().settle(&id, r.as_ref());
                        return Err(e);
                    }
                }
            } else {
                None
            };
            rec.attempts += 1;
            rec.fencing_counter = self.engine.next_fencing_token(rec.fencing_counter);
            rec.set_visible_at_ms(until);
            rec.visibility_timeout_seconds = v;
            rec.meta_etag = uuid::Uuid::now_v7().to_string();
            if input.stateful && rec.state_etag.is_empty() {
                rec.state_etag = uuid::Uuid::now_v7().to_string();
            }
            rec.delivery = Some(
                Delivery::new(
                    xid::new().to_string(),
                    input.owner.clone(),
                    until,
                    rec.fencing_counter,
                    txn,
                    state,
                )
                .in_transaction(input.txn_id.is_some()),
            );
            if let Err(e) = self.write(&rec, &mut cached).await {
                let r = cached.rec.clone();
                shard.lock().settle(&id, r.as_ref());
                if e.is_store_conflict() {
                    // Another node delivered it first (the cached record is marked
                    // stale and is read again): try the next message.
                    continue;
                }
                return Err(e);
            }
            shard.lock().settle(&id, Some(&rec));
            // The payload held since the enqueue, if any: a redelivery
            // reads it back from the store.
            let held = cached.payload.take().filter(|_| rec.payload_inline);
            drop(cached);
            let (payload_len, payload) = match held {
                Some(p) => (
                    p.body.len() as u64,
                    crate::storage::once_stream(p.body.clone()),
                ),
                None => self.open_payload(&rec).await?,
            };
            return Ok(Some(Leased {
                record: rec,
                payload_len,
                payload,
            }));
        }
    }

    pub(super) async fn lease_state(
        &self,
        rec: &MessageRecord,
        owner: &str,
        ttl: i64,
        txn: &str,
        explicit: bool,
    ) -> CoreResult<(StateLease, i64)> {
        let got = self
            .engine
            .acquire(AcquireInput {
                namespace: rec.namespace.clone(),
                key: state_key(&rec.queue, &rec.id),
                owner: owner.to_string(),
                ttl_seconds: ttl,
                block_seconds: -1,
                if_not_exists: false,
                txn_id: Some(txn.to_string()),
                generated_txn: !explicit,
            })
            .await?;
        Ok((
            StateLease {
                lease_id: got.lease_id,
                fencing_token: got.fencing_token,
                txn_id: got.txn_id,
                expires_at_unix: got.expires_at_unix,
            },
            got.expires_at_ms,
        ))
    }
}

/// The transaction a delivery joins, the message as a participant and its
/// lease expiry: only for a consumer that named a transaction.
fn enlistment(input: &DequeueInput, rec: &MessageRecord) -> Option<(String, Participant, i64)> {
    let txn = input.txn_id.clone()?;
    let expires = rec.delivery.as_ref().map(|d| d.expires_ms()).unwrap_or(0);
    let p = Participant::message(&rec.namespace, &rec.queue, &rec.id);
    Some((txn, p, expires))
}
