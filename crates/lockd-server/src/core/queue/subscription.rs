//! A subscribe stream as the core sees it ([`Subscription`]): the
//! deliveries of one long-lived consumer, one at a time, with the rules of
//! the stream (PROTOCOL.md §6) and none of its encoding.
//!
//! * The first fetch is made by [`Queues::subscribe`] like a dequeue
//!   (`wait_seconds` bounds it, errors come back before the stream opens).
//! * Later fetches wait for ever, or not at all with `wait_seconds: -1`
//!   (the stream then ends once nothing is ready), leasing up to
//!   `page_size` messages each. They count as an admitted consumer, so the
//!   consumer limit never cuts an open stream.
//! * With flow control (`--queue-subscribe-flow-control`) the stream holds
//!   at most `page_size` unacknowledged deliveries and leases only as many
//!   as there is room for; without it (the original's rule) it does not
//!   wait for acks.
//! * A drain ends the stream before the next fetch, or while one waits.
//!
//! The caller writes each delivery out, reports it with
//! [`Subscription::delivered`] (or [`Subscription::undelivered`] if the
//! client was gone), and on any end of its own calls
//! [`Subscription::give_back`] so leased messages never written are put
//! back. Every wait inside [`Subscription::next`] may be dropped.

use std::collections::VecDeque;
use std::sync::Arc;

use lockd_api::ErrorCode;

use super::{DequeueInput, Leased, QueueShard, Queues, Wait};
use crate::control::drain::DrainWatch;
use crate::core::{CoreError, CoreResult};

/// What [`Subscription::next`] yields.
// One move per delivery; boxing the delivery would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub enum SubscriptionEvent {
    /// A leased message to write out.
    Delivery(Leased),
    /// The stream is over: end the response cleanly.
    End(SubscriptionEnd),
}

/// Why a subscribe stream ended.
#[derive(Debug)]
pub enum SubscriptionEnd {
    /// The server is draining.
    Drained,
    /// Nothing is ready and the subscriber asked not to wait
    /// (`wait_seconds: -1`).
    Exhausted,
    /// A fetch failed.
    Failed(CoreError),
}

/// One subscribe stream after its first fetch.
pub struct Subscription {
    queues: Arc<Queues>,
    shard: Arc<QueueShard>,
    input: DequeueInput,
    /// How later fetches wait.
    next_wait: Wait,
    /// Most unacknowledged deliveries (flow control on), else no cap.
    flow_cap: Option<usize>,
    drain: Option<DrainWatch>,
    /// Leased and not yet handed out.
    pending: VecDeque<Leased>,
    /// `(message id, delivery lease id)` of deliveries written and maybe
    /// not yet acknowledged (flow control only).
    outstanding: Vec<(String, String)>,
}

impl Queues {
    /// Opens a subscribe stream: the first fetch waits as `input.wait`
    /// says and fails like a dequeue; `flow_control` caps unacknowledged
    /// deliveries at `input.page_size`.
    pub async fn subscribe(
        self: &Arc<Self>,
        input: DequeueInput,
        flow_control: bool,
    ) -> CoreResult<Subscription> {
        let shard = self.shard(&input.namespace, &input.queue).await?;
        let first = self.dequeue_on(&shard, &input, input.wait, false).await?;
        // After the first delivery the stream stays open (wait > 0 only
        // bounds the first), unless the client asked not to wait at all.
        let next_wait = if input.wait == Wait::Never {
            Wait::Never
        } else {
            Wait::Forever
        };
        Ok(Subscription {
            queues: self.clone(),
            shard,
            flow_cap: flow_control.then_some(input.page_size),
            input,
            next_wait,
            drain: self.drain.get().cloned(),
            pending: first.into(),
            outstanding: Vec::new(),
        })
    }
}

impl Subscription {
    /// The correlation id of the first delivery.
    pub fn first_correlation_id(&self) -> Option<&str> {
        self.pending
            .front()
            .map(|l| l.record.correlation_id.as_str())
    }

    /// The next delivery, or the end of the stream. Leased messages of the
    /// last fetch come first; then it waits for room (flow control), stops
    /// on a drain, and fetches again. Not to be called after an end.
    pub async fn next(&mut self) -> SubscriptionEvent {
        loop {
            if let Some(l) = self.pending.pop_front() {
                return SubscriptionEvent::Delivery(l);
            }
            let mut fetch = std::borrow::Cow::Borrowed(&self.input);
            if let Some(cap) = self.flow_cap {
                match wait_for_room(&self.shard, &self.input, &mut self.outstanding, cap).await {
                    // Never lease past the window.
                    Some(room) => fetch.to_mut().page_size = room,
                    None => return SubscriptionEvent::End(SubscriptionEnd::Exhausted),
                }
            }
            if self.drain.as_ref().is_some_and(|d| d.is_draining()) {
                // Tell the subscriber to stop: a clean end of the stream.
                return SubscriptionEvent::End(SubscriptionEnd::Drained);
            }
            let drained = async {
                match self.drain.as_mut() {
                    Some(d) => d.started().await,
                    None => std::future::pending::<()>().await,
                }
            };
            let next = tokio::select! {
                _ = drained => return SubscriptionEvent::End(SubscriptionEnd::Drained),
                r = self.queues.dequeue_on(&self.shard, &fetch, self.next_wait, true) => r,
            };
            match next {
                Ok(l) => self.pending = l.into(),
                Err(e) if e.code() == ErrorCode::Waiting => {
                    // Nothing more (wait -1).
                    return SubscriptionEvent::End(SubscriptionEnd::Exhausted);
                }
                // The fetch saw the drain before the select did.
                Err(e) if e.code() == ErrorCode::ShutdownDraining => {
                    return SubscriptionEvent::End(SubscriptionEnd::Drained);
                }
                Err(e) => return SubscriptionEvent::End(SubscriptionEnd::Failed(e)),
            }
        }
    }

    /// A delivery from [`Subscription::next`] reached the connection
    /// (`ids` from [`Leased::delivery_ids`]).
    pub fn delivered(&mut self, ids: (String, String)) {
        if self.flow_cap.is_some() {
            self.outstanding.push(ids);
        }
    }

    /// A delivery from [`Subscription::next`] did not reach the client:
    /// puts it back as if it had not been made.
    pub async fn undelivered(&mut self, ids: &(String, String)) {
        self.queues
            .return_undelivered(&self.shard, &ids.0, &ids.1)
            .await;
    }

    /// The client is gone: puts back every delivery leased for it and not
    /// yet handed out.
    pub async fn give_back(mut self) {
        while let Some(l) = self.pending.pop_front() {
            let ids = l.delivery_ids();
            self.undelivered(&ids).await;
        }
    }
}

impl Leased {
    /// Message id and delivery lease id.
    pub fn delivery_ids(&self) -> (String, String) {
        let lease = self
            .record
            .delivery
            .as_ref()
            .map(|d| d.lease_id.clone())
            .unwrap_or_default();
        (self.record.id.clone(), lease)
    }
}

/// Flow control: waits until fewer than `cap` deliveries of the stream are
/// unacknowledged and says how many more may be leased; `None` when the
/// stream should end instead (nothing ready, and the subscriber does not
/// wait).
async fn wait_for_room(
    shard: &QueueShard,
    input: &DequeueInput,
    outstanding: &mut Vec<(String, String)>,
    cap: usize,
) -> Option<usize> {
    loop {
        outstanding.retain(|(id, lease)| shard.outstanding(id, lease));
        if outstanding.len() < cap {
            return Some(cap - outstanding.len());
        }
        // wait_seconds -1 ends the stream once nothing is ready, even
        // while deliveries are still unacknowledged.
        if input.wait == Wait::Never && !shard.has_ready() {
            return None;
        }
        let notified = shard.notified();
        tokio::select! {
            _ = notified => {}
            _ = shard.time_passed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::drain::Drain;
    use crate::core::queue::{EnqueueInput, MessageRef, QueueConfig};
    use crate::core::{Engine, EngineConfig};
    use crate::storage::{once_stream, MemStore};

    async fn queues_with(messages: usize) -> Arc<Queues> {
        let engine = Engine::new(Arc::new(MemStore::new()), EngineConfig::default());
        let queues = Queues::new(engine, QueueConfig::default());
        for i in 0..messages {
            let input = EnqueueInput {
                namespace: "default".into(),
                queue: "q".into(),
                ..Default::default()
            };
            let body = bytes::Bytes::from(format!("m{i}"));
            queues.enqueue(input, once_stream(body)).await.unwrap();
        }
        queues
    }

    fn input(wait: Wait, page_size: usize) -> DequeueInput {
        DequeueInput {
            namespace: "default".into(),
            queue: "q".into(),
            owner: "sub".into(),
            visibility: 30,
            wait,
            page_size,
            stateful: false,
            txn_id: None,
        }
    }

    async fn delivery(sub: &mut Subscription) -> Leased {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(SubscriptionEvent::Delivery(l)) => l,
            Ok(SubscriptionEvent::End(e)) => panic!("ended: {e:?}"),
            Err(_) => panic!("no delivery"),
        }
    }

    async fn end(sub: &mut Subscription) -> SubscriptionEnd {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(SubscriptionEvent::End(e)) => e,
            Ok(SubscriptionEvent::Delivery(l)) => panic!("delivered {}", l.record.id),
            Err(_) => panic!("did not end"),
        }
    }

    fn message_ref(l: &Leased) -> MessageRef {
        let d = l.record.delivery.as_ref().unwrap();
        MessageRef {
            namespace: "default".into(),
            queue: "q".into(),
            message_id: l.record.id.clone(),
            lease_id: d.lease_id.clone(),
            fencing_token: d.fencing_token,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn without_waiting_the_stream_ends_once_nothing_is_ready() {
        let queues = queues_with(3).await;
        let mut sub = queues
            .subscribe(input(Wait::Never, 2), false)
            .await
            .unwrap();
        for _ in 0..3 {
            let l = delivery(&mut sub).await;
            sub.delivered(l.delivery_ids());
        }
        assert!(matches!(end(&mut sub).await, SubscriptionEnd::Exhausted));
    }

    #[tokio::test]
    async fn flow_control_waits_for_an_ack_before_leasing_more() {
        let queues = queues_with(3).await;
        let mut sub = queues
            .subscribe(input(Wait::Forever, 2), true)
            .await
            .unwrap();
        let first = delivery(&mut sub).await;
        sub.delivered(first.delivery_ids());
        let second = delivery(&mut sub).await;
        sub.delivered(second.delivery_ids());
        // Two unacknowledged deliveries fill the window.
        let waiting = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
        assert!(waiting.is_err(), "leased past the window");
        queues.ack(&message_ref(&first)).await.unwrap();
        let third = delivery(&mut sub).await;
        assert_ne!(third.record.id, second.record.id);
    }

    #[tokio::test]
    async fn a_drain_ends_the_stream() {
        let queues = queues_with(1).await;
        let drain = Drain::new();
        queues.attach_drain(&drain);
        let mut sub = queues
            .subscribe(input(Wait::Forever, 1), false)
            .await
            .unwrap();
        let l = delivery(&mut sub).await;
        sub.delivered(l.delivery_ids());
        // Waiting for the next message, the stream sees the drain start.
        let next = tokio::spawn(async move { end(&mut sub).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drain.start(Duration::from_secs(10));
        assert!(matches!(next.await.unwrap(), SubscriptionEnd::Drained));
    }

    #[tokio::test]
    async fn deliveries_never_written_are_put_back() {
        let queues = queues_with(3).await;
        let mut sub = queues
            .subscribe(input(Wait::Never, 3), false)
            .await
            .unwrap();
        let l = delivery(&mut sub).await;
        let ids = l.delivery_ids();
        drop(l);
        sub.undelivered(&ids).await;
        sub.give_back().await;
        // All three are ready again.
        let again = queues.dequeue(&input(Wait::Never, 3)).await.unwrap();
        assert_eq!(again.len(), 3);
    }
}
