//! The at-least-once queue (PROTOCOL.md §6): enqueue, leased deliveries,
//! ack/nack/extend, dead letters and stateful (workflow) deliveries.
//!
//! Each queue keeps an in-memory index of its live messages ordered by the
//! time they become visible. Consumers wait on the queue's notification and
//! a timer for the next message to become visible, so a waiting consumer is
//! woken by enqueue, nack, delay or lease expiry without polling storage.
//! Every message has its own lock; writes of different messages proceed in
//! parallel (and share fsyncs on `disk://`).

pub mod message;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use lockd_api::ErrorCode;
use serde_json::{json, Value};
use tokio::sync::{Mutex, Notify, OnceCell};
use tokio::time::Instant;

use self::message::{
    dlq_key, inline_payload_key, msg_key, payload_key, queue_prefix, state_key, Delivery,
    MessageRecord, StateLease,
};
use super::clock::{add_secs, unix_secs, Clock, MAX_REQUEST_SECONDS};
use super::{
    AcquireInput, CoreError, CoreResult, Engine, KeepAliveInput, LeaseRef, ReleaseInput,
    RemoveInput,
};
use crate::storage::{ByteStream, Cond, ETag, Op, Store};

/// Largest payload written as an ordinary object together with its
/// record; larger payloads stream into blobs.
pub const INLINE_PAYLOAD_MAX: usize = 64 * 1024;

/// Tunables of the queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Most consumers waiting at once (server-wide); beyond → `queue_busy`.
    pub max_consumers: usize,
    /// Count a delivery that ends by lease expiry as a failed attempt (our
    /// default); `false` restores the original rule (only failure nacks).
    pub expiry_counts_as_failure: bool,
    /// Largest payload accepted by enqueue (0 = unlimited).
    pub max_payload: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self {
            max_consumers: (64 * cpus).clamp(128, 4096),
            expiry_counts_as_failure: true,
            max_payload: 100_000_000,
        }
    }
}

/// What enqueue stores (from the `meta` part).
#[derive(Debug, Clone, Default)]
pub struct EnqueueInput {
    pub namespace: String,
    pub queue: String,
    pub delay_seconds: i64,
    pub visibility_timeout_seconds: i64,
    pub ttl_seconds: i64,
    pub max_attempts: i64,
    pub attributes: Option<Value>,
    pub payload_content_type: String,
    pub correlation_id: String,
}

/// How long a dequeue waits for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Fail at once when nothing is ready (`wait_seconds: -1`).
    NoWait,
    /// Wait until a message arrives (`wait_seconds: 0`).
    Forever,
    /// Wait up to this many seconds.
    Seconds(i64),
}

/// Validated input of a dequeue.
#[derive(Debug, Clone)]
pub struct DequeueInput {
    pub namespace: String,
    pub queue: String,
    pub owner: String,
    /// Resolved visibility timeout (seconds, > 0).
    pub visibility: i64,
    pub wait: Wait,
    /// 1..=64.
    pub page_size: usize,
    pub stateful: bool,
    pub txn_id: Option<String>,
}

/// One leased message handed to a consumer, with its payload.
pub struct Leased {
    pub record: MessageRecord,
    pub payload_len: u64,
    pub payload: ByteStream,
}

/// The lease fields a client presents on ack/nack/extend.
#[derive(Debug, Clone, Default)]
pub struct MessageRef {
    pub namespace: String,
    pub queue: String,
    pub message_id: String,
    pub lease_id: String,
    pub fencing_token: i64,
    pub txn_id: String,
    pub meta_etag: String,
    pub state_lease_id: String,
    pub state_fencing_token: i64,
    pub state_etag: String,
}

/// How a nack ends a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackIntent {
    /// Counts toward `max_attempts`.
    Failure,
    /// Does not.
    Defer,
}

/// Result of an extend.
#[derive(Debug, Clone)]
pub struct Extended {
    pub lease_expires_at_unix: i64,
    pub visibility_timeout_seconds: i64,
    pub meta_etag: String,
    pub state_lease_expires_at_unix: i64,
    pub correlation_id: String,
}

/// One queue's figures for metrics ([`Queues::gauges`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueGauge {
    /// Namespace.
    pub namespace: String,
    /// Queue name.
    pub queue: String,
    /// Messages held (ready, delayed or in flight).
    pub messages: usize,
    /// Messages visible now.
    pub ready: usize,
    /// Messages delivered and not yet acked, nacked or expired.
    pub in_flight: usize,
    /// Consumers waiting on this queue.
    pub waiting_consumers: usize,
    /// Messages this process moved to the dead-letter area.
    pub dead_lettered: u64,
}

/// A snapshot of a queue for stats and watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub waiting_consumers: usize,
    pub ready: usize,
    pub total_consumers: usize,
    /// The visible head: id, enqueue time and visibility time, in whole
    /// Unix seconds.
    pub head: Option<(String, i64, i64)>,
}

struct Entry {
    /// Unix ms.
    visible_at: i64,
    enqueued_at: i64,
    lease_id: Option<String>,
    claimed: bool,
    slot: Arc<Mutex<Slot>>,
}

struct Slot {
    /// `None` once the message is gone (acked, dead-lettered, expired).
    rec: Option<MessageRecord>,
    etag: ETag,
    /// A write was started and not seen to finish (its future was dropped):
    /// reload from the store before use.
    stale: bool,
}

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

#[derive(Default)]
struct Index {
    entries: HashMap<String, Entry>,
    /// `(visible_at, id)` of every unclaimed entry (Unix ms).
    order: BTreeSet<(i64, String)>,
}

impl Index {
    fn insert(&mut self, id: &str, rec: &MessageRecord, etag: ETag) {
        let slot = Arc::new(Mutex::new(Slot {
            rec: Some(rec.clone()),
            etag,
            stale: false,
        }));
        self.entries.insert(
            id.to_string(),
            Entry {
                visible_at: rec.visible_at_ms(),
                enqueued_at: rec.enqueued_at_unix,
                lease_id: rec.delivery.as_ref().map(|d| d.lease_id.clone()),
                claimed: false,
                slot,
            },
        );
        self.order.insert((rec.visible_at_ms(), id.to_string()));
    }

    /// Records the new state of an entry after a write (or its removal).
    fn settle(&mut self, id: &str, rec: Option<&MessageRecord>) {
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

/// One queue: its index, its waiters.
pub struct QueueShard {
    namespace: String,
    name: String,
    clock: Clock,
    loaded: OnceCell<()>,
    index: SyncMutex<Index>,
    /// A message became ready: wakes one consumer (which passes the wake
    /// on if more are ready), so a queue change does not stampede.
    ready: Notify,
    /// Anything changed (ack, nack, enqueue…): wakes watchers and
    /// subscribers waiting for flow-control room.
    changed: Notify,
    waiting: AtomicUsize,
    /// When the index was last compared with the store (shared stores:
    /// other nodes enqueue too).
    synced: SyncMutex<Option<Instant>>,
    /// Held while a comparison runs, so only one runs per queue.
    syncing: Mutex<()>,
    /// Messages this process moved to the dead-letter area (metrics).
    dead_lettered: AtomicU64,
}

impl QueueShard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Earliest time (Unix ms) a message becomes visible or a delivery
    /// lease expires, if any.
    fn next_visible(&self) -> Option<i64> {
        self.lock().order.first().map(|(t, _)| *t)
    }

    /// Whether a message is visible now.
    pub fn has_ready(&self) -> bool {
        self.next_visible()
            .is_some_and(|t| t <= self.clock.now_ms())
    }

    /// Resolves when, by the clock, the next message becomes visible or the
    /// next delivery lease lapses (or after a second of real time at
    /// most): the wake-up of loops that look at the queue again as time
    /// passes. Messages visible already do not count.
    pub async fn time_passed(&self) {
        let next = {
            let now = self.clock.now_ms();
            let idx = self.lock();
            idx.order
                .range((now.saturating_add(1), String::new())..)
                .next()
                .map(|(t, _)| *t)
        };
        tokio::select! {
            _ = self.clock.sleep_until_opt(next) => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }

    /// A message became ready: one consumer and every watcher wake.
    pub fn wake(&self) {
        self.ready.notify_one();
        self.changed.notify_waiters();
    }

    /// Something changed that no consumer is waiting for (an ack): only
    /// watchers and flow-controlled subscribers wake.
    pub fn touch(&self) {
        self.changed.notify_waiters();
    }

    /// Whether delivery `lease_id` of `id` is still outstanding (not acked,
    /// nacked or expired).
    pub fn outstanding(&self, id: &str, lease_id: &str) -> bool {
        let idx = self.lock();
        idx.entries.get(id).is_some_and(|e| {
            e.lease_id.as_deref() == Some(lease_id) && e.visible_at > self.clock.now_ms()
        })
    }

    /// A future that resolves on the next change of the queue; enabled at
    /// once so that a change between now and the await is not lost.
    pub fn notified(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut n = Box::pin(self.changed.notified());
        n.as_mut().enable();
        n
    }

    /// Like [`QueueShard::notified`], for a consumer waiting for a message.
    fn ready_notified(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut n = Box::pin(self.ready.notified());
        n.as_mut().enable();
        n
    }
}

/// The queue subsystem.
pub struct Queues {
    engine: Arc<Engine>,
    /// The server's drain switch: waiting consumers stop when it flips.
    drain: std::sync::OnceLock<Arc<crate::control::drain::Drain>>,
    store: Arc<dyn Store>,
    shards: DashMap<String, Arc<QueueShard>>,
    cfg: QueueConfig,
    consumers: AtomicUsize,
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

fn not_found(detail: &str) -> CoreError {
    CoreError::new(ErrorCode::NotFound, detail)
}

fn mismatch() -> CoreError {
    CoreError::new(
        ErrorCode::QueueMessageLeaseMismatch,
        "message lease does not match (the message was redelivered or released)",
    )
}

/// A Unix time as RFC 3339 in UTC (`2035-01-02T03:04:05Z`).
fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Queues {
    /// The queue subsystem over the engine's store.
    pub fn new(engine: Arc<Engine>, cfg: QueueConfig) -> Arc<Self> {
        Arc::new(Self {
            store: engine.store().clone(),
            engine,
            drain: std::sync::OnceLock::new(),
            shards: DashMap::new(),
            cfg,
            consumers: AtomicUsize::new(0),
        })
    }

    /// Connects the server's drain switch: once it flips, waiting
    /// consumers are answered `shutdown_draining` instead of getting new
    /// deliveries.
    pub fn attach_drain(&self, drain: Arc<crate::control::drain::Drain>) {
        let _ = self.drain.set(drain);
    }

    fn draining_error(&self) -> Option<CoreError> {
        let d = self.drain.get()?;
        d.is_draining().then(|| {
            CoreError::new(
                ErrorCode::ShutdownDraining,
                "server is draining existing leases",
            )
            .with_retry_after(d.remaining().as_secs_f64().ceil() as i64)
        })
    }

    /// The configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// The clock every deadline is read from (the engine's).
    pub fn clock(&self) -> &Clock {
        self.engine.clock()
    }

    /// The shard of a queue, loaded from storage on first use.
    pub async fn shard(&self, ns: &str, queue: &str) -> CoreResult<Arc<QueueShard>> {
        let id = format!("{ns}/{queue}");
        let shard = match self.shards.get(&id) {
            Some(s) => s.clone(),
            None => self
                .shards
                .entry(id)
                .or_insert_with(|| {
                    Arc::new(QueueShard {
                        namespace: ns.to_string(),
                        name: queue.to_string(),
                        clock: self.engine.clock().clone(),
                        loaded: OnceCell::new(),
                        index: SyncMutex::new(Index::default()),
                        ready: Notify::new(),
                        changed: Notify::new(),
                        waiting: AtomicUsize::new(0),
                        synced: SyncMutex::new(None),
                        syncing: Mutex::new(()),
                        dead_lettered: AtomicU64::new(0),
                    })
                })
                .clone(),
        };
        shard.loaded.get_or_try_init(|| self.load(&shard)).await?;
        Ok(shard)
    }

    async fn load(&self, shard: &Arc<QueueShard>) -> CoreResult<()> {
        sync_shard(self.store.clone(), shard.clone()).await
    }

    /// On shared stores, starts a look for other nodes' messages in the
    /// background when the last one is older than the poll interval; a
    /// consumer is woken when it finds something. At most one look per
    /// queue runs at a time, and none runs on the request's own time.
    fn sync_if_due(&self, shard: &Arc<QueueShard>) {
        if !self.engine.shared() {
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

    /// Stores a message and its payload; wakes waiting consumers.
    pub async fn enqueue(
        &self,
        input: EnqueueInput,
        payload: ByteStream,
    ) -> CoreResult<MessageRecord> {
        let shard = self.shard(&input.namespace, &input.queue).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let pkey = payload_key(&input.namespace, &input.queue, &id);
        // Refuse an oversize payload as soon as it crosses the limit, not
        // after storing it whole.
        let max = self.cfg.max_payload;
        let too_large = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = too_large.clone();
        let mut seen = 0u64;
        let payload: ByteStream = Box::pin(payload.map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if max > 0 && seen > max {
                flag.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("payload too large"));
            }
            Ok(chunk)
        }));
        let oversize = || {
            CoreError::new(
                ErrorCode::InvalidBody,
                format!("payload exceeds the server's limit of {max} bytes"),
            )
        };
        // A small payload is written with the record in one batch; a large
        // one streams into a blob first.
        let mut payload = payload;
        let mut head = bytes::BytesMut::new();
        let mut spill = None;
        while let Some(chunk) = payload.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(_) if too_large.load(Ordering::Relaxed) => return Err(oversize()),
                Err(e) => return Err(CoreError::new(ErrorCode::MultipartError, e.to_string())),
            };
            if head.len() + chunk.len() > INLINE_PAYLOAD_MAX {
                spill = Some(chunk);
                break;
            }
            head.extend_from_slice(&chunk);
        }
        let (payload_bytes, inline) = match spill {
            None => (head.len() as u64, Some(head.freeze())),
            Some(next) => {
                let rest: ByteStream = Box::pin(
                    futures_util::stream::iter([Ok(head.freeze()), Ok(next)]).chain(payload),
                );
                match self.store.put_blob(&pkey, rest).await {
                    Ok(n) => (n, None),
                    Err(_) if too_large.load(Ordering::Relaxed) => return Err(oversize()),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let now = self.clock().now_ms();
        let mut rec = MessageRecord {
            id: id.clone(),
            namespace: input.namespace.clone(),
            queue: input.queue.clone(),
            enqueued_at_unix: unix_secs(now),
            payload_bytes: payload_bytes as i64,
            payload_content_type: if input.payload_content_type.is_empty() {
                "application/octet-stream".into()
            } else {
                input.payload_content_type
            },
            attributes: input.attributes,
            attempts: 0,
            failure_attempts: 0,
            max_attempts: if input.max_attempts <= 0 {
                5
            } else {
                input.max_attempts
            },
            visibility_timeout_seconds: if input.visibility_timeout_seconds > 0 {
                input.visibility_timeout_seconds
            } else {
                30
            },
            last_error: None,
            correlation_id: input.correlation_id,
            fencing_counter: 0,
            delivery: None,
            meta_etag: uuid::Uuid::now_v7().to_string(),
            state_etag: String::new(),
            dead_lettered_at_unix: 0,
            payload_inline: inline.is_some(),
            // Set below, both fields at once.
            not_visible_until_unix: 0,
            not_visible_until_ms: None,
            expires_at_unix: 0,
            expires_at_ms: None,
        };
        rec.set_visible_at_ms(add_secs(now, clamp_delay(input.delay_seconds)));
        rec.set_expires_ms(message_expiry(now, input.ttl_seconds));
        let raw = encode(&rec)?;
        let mut ops = Vec::with_capacity(2);
        if let Some(body) = inline {
            ops.push(Op::Put {
                key: inline_payload_key(&rec.namespace, &rec.queue, &id),
                value: body,
                cond: Cond::Any,
            });
        }
        let record_at = ops.len();
        ops.push(Op::Put {
            key: msg_key(&rec.namespace, &rec.queue, &id),
            value: raw,
            cond: Cond::IfAbsent,
        });
        let etags = match self.store.apply(ops).await {
            Ok(e) => e,
            Err(e) => {
                if !rec.payload_inline {
                    let _ = self.store.delete_blob(&pkey).await;
                }
                return Err(e.into());
            }
        };
        let etag = etags.into_iter().nth(record_at).unwrap_or_default();
        shard.lock().insert(&id, &rec, etag);
        shard.wake();
        Ok(rec)
    }

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
        let mut drain = self.drain.get().map(|d| d.watch());
        loop {
            if let Some(e) = self.draining_error() {
                return Err(e);
            }
            let notified = shard.ready_notified();
            self.sync_if_due(shard);
            let mut out = Vec::new();
            while out.len() < input.page_size {
                match self.claim_one(shard, input).await? {
                    Some(l) => out.push(l),
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
            if wait == Wait::NoWait || deadline.is_some_and(|d| Instant::now() >= d) {
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
                    Some(rx) => {
                        let _ = rx.changed().await;
                    }
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

    /// Takes the first ready message, if any, and leases it. Expired and
    /// exhausted messages met on the way are deleted or dead-lettered.
    async fn claim_one(
        &self,
        shard: &QueueShard,
        input: &DequeueInput,
    ) -> CoreResult<Option<Leased>> {
        loop {
            let now = self.clock().now_ms();
            let (id, slot) = {
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
                (id, e.slot.clone())
            };
            let _claim = ClaimGuard {
                shard,
                id: id.clone(),
            };
            let mut slot = slot.lock().await;
            self.refresh(&mut slot, &shard.namespace, &shard.name, &id)
                .await?;
            let Some(mut rec) = slot.rec.clone() else {
                shard.lock().settle(&id, None);
                continue;
            };
            if rec.visible_at_ms() > now {
                // Extended or nacked with a delay while we were queued.
                shard.lock().settle(&id, Some(&rec));
                continue;
            }
            if rec.expires_ms().is_some_and(|t| now >= t) {
                match self.remove_message(&rec, &mut slot).await {
                    Err(e) if e.store_conflict => {
                        // Another node changed it first; look again.
                        shard.lock().settle(&id, Some(&rec));
                        continue;
                    }
                    r => r?,
                }
                shard.lock().settle(&id, None);
                continue;
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
                match self.dead_letter(&mut rec, &mut slot).await {
                    Err(e) if e.store_conflict => {
                        shard.lock().settle(&id, slot.rec.clone().as_ref());
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
                match self.lease_state(&rec, &input.owner, v, &txn).await {
                    Ok((s, state_until)) => {
                        until = until.max(state_until);
                        Some(s)
                    }
                    Err(e) if e.code == ErrorCode::Waiting => {
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
                        let r = slot.rec.clone();
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
            rec.delivery = Some(Delivery::new(
                xid::new().to_string(),
                input.owner.clone(),
                until,
                rec.fencing_counter,
                txn,
                state,
            ));
            if let Err(e) = self.write(&rec, &mut slot).await {
                let r = slot.rec.clone();
                shard.lock().settle(&id, r.as_ref());
                if e.store_conflict {
                    // Another node delivered it first (the slot is marked
                    // stale and is read again): try the next message.
                    continue;
                }
                return Err(e);
            }
            shard.lock().settle(&id, Some(&rec));
            drop(slot);
            let (payload_len, payload) = self.open_payload(&rec).await?;
            return Ok(Some(Leased {
                record: rec,
                payload_len,
                payload,
            }));
        }
    }

    async fn open_payload(&self, rec: &MessageRecord) -> CoreResult<(u64, ByteStream)> {
        if rec.payload_inline {
            let key = inline_payload_key(&rec.namespace, &rec.queue, &rec.id);
            return match self.store.get(&key).await? {
                Some((body, _)) => Ok((body.len() as u64, crate::storage::once_stream(body))),
                None => {
                    tracing::error!(message_id = %rec.id, "payload missing; delivering it empty");
                    Ok((0, crate::storage::once_stream(Bytes::new())))
                }
            };
        }
        match self
            .store
            .get_blob(&payload_key(&rec.namespace, &rec.queue, &rec.id))
            .await?
        {
            Some(p) => Ok(p),
            None => {
                tracing::error!(message_id = %rec.id, "payload missing; delivering it empty");
                Ok((0, crate::storage::once_stream(Bytes::new())))
            }
        }
    }

    async fn lease_state(
        &self,
        rec: &MessageRecord,
        owner: &str,
        ttl: i64,
        txn: &str,
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

    /// Reloads a slot whose last write was abandoned mid-way.
    /// On shared stores every use reads the record afresh.
    async fn refresh(&self, slot: &mut Slot, ns: &str, queue: &str, id: &str) -> CoreResult<()> {
        if !slot.stale && !self.engine.shared() {
            return Ok(());
        }
        self.store.barrier().await?;
        match self.store.get(&msg_key(ns, queue, id)).await? {
            Some((raw, etag)) => {
                let rec = serde_json::from_slice(&raw).map_err(|_| {
                    CoreError::new(ErrorCode::InternalError, "corrupt message record")
                })?;
                slot.rec = Some(rec);
                slot.etag = etag;
            }
            None => slot.rec = None,
        }
        slot.stale = false;
        Ok(())
    }

    /// Writes a changed record over the one in `slot`.
    async fn write(&self, rec: &MessageRecord, slot: &mut Slot) -> CoreResult<()> {
        slot.stale = true;
        let etags = self
            .store
            .apply(vec![Op::Put {
                key: msg_key(&rec.namespace, &rec.queue, &rec.id),
                value: encode(rec)?,
                cond: Cond::IfMatch(slot.etag.clone()),
            }])
            .await?;
        slot.etag = etags.into_iter().next().unwrap_or_default();
        slot.rec = Some(rec.clone());
        slot.stale = false;
        Ok(())
    }

    /// Deletes a live record and its payload.
    async fn remove_message(&self, rec: &MessageRecord, slot: &mut Slot) -> CoreResult<()> {
        slot.stale = true;
        let mut ops = vec![Op::Delete {
            key: msg_key(&rec.namespace, &rec.queue, &rec.id),
            cond: Cond::IfMatch(slot.etag.clone()),
        }];
        if rec.payload_inline {
            ops.push(Op::Delete {
                key: inline_payload_key(&rec.namespace, &rec.queue, &rec.id),
                cond: Cond::Any,
            });
        }
        self.store.apply(ops).await?;
        slot.rec = None;
        slot.stale = false;
        if !rec.payload_inline {
            // Garbage once the record is gone: delete it in the background
            // rather than making the caller wait for another write.
            let store = self.store.clone();
            let key = payload_key(&rec.namespace, &rec.queue, &rec.id);
            tokio::spawn(async move {
                if let Err(e) = store.delete_blob(&key).await {
                    tracing::warn!(key, error = %e, "could not delete payload");
                }
            });
        }
        Ok(())
    }

    /// Moves a message to the dead-letter area (record moved, payload kept).
    async fn dead_letter(&self, rec: &mut MessageRecord, slot: &mut Slot) -> CoreResult<()> {
        let previous = rec.last_error.take();
        let now = self.clock().now_unix();
        rec.last_error = Some(json!({
            "reason": "max_attempts_exceeded",
            "time_rfc3339": rfc3339(now),
            "previous": previous,
        }));
        rec.delivery = None;
        rec.dead_lettered_at_unix = now;
        slot.stale = true;
        self.store
            .apply(vec![
                Op::Put {
                    key: dlq_key(&rec.namespace, &rec.queue, &rec.id),
                    value: encode(rec)?,
                    cond: Cond::Any,
                },
                Op::Delete {
                    key: msg_key(&rec.namespace, &rec.queue, &rec.id),
                    cond: Cond::IfMatch(slot.etag.clone()),
                },
            ])
            .await?;
        slot.rec = None;
        slot.stale = false;
        if let Some(shard) = self.shards.get(&format!("{}/{}", rec.namespace, rec.queue)) {
            shard.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(queue = %rec.queue, message_id = %rec.id, "message dead-lettered");
        Ok(())
    }

    /// Locks a message for ack/nack/extend and checks the caller's lease.
    async fn locked_delivery(
        &self,
        r: &MessageRef,
    ) -> CoreResult<(
        Arc<QueueShard>,
        tokio::sync::OwnedMutexGuard<Slot>,
        MessageRecord,
    )> {
        let shard = self.shard(&r.namespace, &r.queue).await?;
        let known = {
            let idx = shard.lock();
            idx.entries.get(&r.message_id).map(|e| e.slot.clone())
        };
        let slot = match known {
            Some(s) => s,
            // Delivered by another node sharing the store: load it.
            None if self.engine.shared() => {
                let key = msg_key(&r.namespace, &r.queue, &r.message_id);
                let (raw, etag) = self
                    .store
                    .get(&key)
                    .await?
                    .ok_or_else(|| not_found("message not found"))?;
                let rec: MessageRecord = serde_json::from_slice(&raw).map_err(|_| {
                    CoreError::new(ErrorCode::InternalError, "corrupt message record")
                })?;
                let mut idx = shard.lock();
                if !idx.entries.contains_key(&rec.id) {
                    idx.insert(&rec.id.clone(), &rec, etag);
                }
                idx.entries
                    .get(&r.message_id)
                    .map(|e| e.slot.clone())
                    .ok_or_else(|| not_found("message not found"))?
            }
            None => return Err(not_found("message not found")),
        };
        let mut slot = slot.lock_owned().await;
        self.refresh(&mut slot, &r.namespace, &r.queue, &r.message_id)
            .await?;
        let Some(rec) = slot.rec.clone() else {
            shard.lock().settle(&r.message_id, None);
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
        Ok((shard, slot, rec))
    }

    /// Completes a delivery: deletes the message and, for stateful
    /// deliveries, its workflow state. Returns the message's correlation id.
    pub async fn ack(&self, r: &MessageRef) -> CoreResult<String> {
        self.engine.cas_retry(|| self.ack_once(r)).await
    }

    async fn ack_once(&self, r: &MessageRef) -> CoreResult<String> {
        let (shard, mut slot, rec) = self.locked_delivery(r).await?;
        if !r.state_etag.is_empty() && !rec.state_etag.is_empty() && r.state_etag != rec.state_etag
        {
            return Err(CoreError::new(
                ErrorCode::CasMismatch,
                "state_etag does not match",
            ));
        }
        self.remove_message(&rec, &mut slot).await?;
        shard.lock().settle(&rec.id, None);
        drop(slot);
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

    async fn nack_once(
        &self,
        r: &MessageRef,
        delay_seconds: i64,
        intent: NackIntent,
        last_error: Option<Value>,
    ) -> CoreResult<(String, String)> {
        let (shard, mut slot, mut rec) = self.locked_delivery(r).await?;
        if r.meta_etag != rec.meta_etag {
            return Err(CoreError::new(
                ErrorCode::CasMismatch,
                "meta_etag does not match",
            ));
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
            self.dead_letter(&mut rec, &mut slot).await?;
            shard.lock().settle(&rec.id, None);
        } else {
            self.write(&rec, &mut slot).await?;
            shard.lock().settle(&rec.id, Some(&rec));
        }
        drop(slot);
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

    async fn extend_once(&self, r: &MessageRef, extend_by: i64) -> CoreResult<Extended> {
        let (shard, mut slot, mut rec) = self.locked_delivery(r).await?;
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
        self.write(&rec, &mut slot).await?;
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
    async fn drop_state(&self, rec: &MessageRecord, st: &StateLease) {
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
        let slot = {
            let idx = shard.lock();
            match idx.entries.get(id) {
                Some(e) => e.slot.clone(),
                None => return,
            }
        };
        let mut slot = slot.lock().await;
        if self
            .refresh(&mut slot, &shard.namespace, &shard.name, id)
            .await
            .is_err()
        {
            return;
        }
        let Some(mut rec) = slot.rec.clone() else {
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
        if self.write(&rec, &mut slot).await.is_ok() {
            shard.lock().settle(id, Some(&rec));
            drop(slot);
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
            .map(|s| {
                let shard = s.value();
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
            })
            .collect()
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

    /// Dead-lettered messages of a queue, oldest id first.
    pub async fn dlq_list(
        &self,
        ns: &str,
        queue: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> CoreResult<Vec<MessageRecord>> {
        let prefix = format!("{}dlq/", queue_prefix(ns, queue));
        let after = start_after.map(|id| format!("{prefix}{id}"));
        let keys = self.store.list(&prefix, after.as_deref(), limit).await?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some((raw, _)) = self.store.get(&k).await? {
                if let Ok(rec) = serde_json::from_slice(&raw) {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// One dead-lettered message with its payload.
    pub async fn dlq_get(&self, ns: &str, queue: &str, id: &str) -> CoreResult<Leased> {
        let (raw, _) = self
            .store
            .get(&dlq_key(ns, queue, id))
            .await?
            .ok_or_else(|| not_found("dead-lettered message not found"))?;
        let record: MessageRecord = serde_json::from_slice(&raw)
            .map_err(|_| CoreError::new(ErrorCode::InternalError, "corrupt dead-letter record"))?;
        let (payload_len, payload) = self.open_payload(&record).await?;
        Ok(Leased {
            record,
            payload_len,
            payload,
        })
    }

    /// Moves dead-lettered messages back to the live queue with a fresh
    /// failure budget. Returns the ids moved.
    pub async fn dlq_redrive(
        &self,
        ns: &str,
        queue: &str,
        ids: &[String],
    ) -> CoreResult<Vec<String>> {
        let shard = self.shard(ns, queue).await?;
        let mut moved = Vec::new();
        for id in ids {
            let Some((raw, etag)) = self.store.get(&dlq_key(ns, queue, id)).await? else {
                continue;
            };
            let Ok(mut rec) = serde_json::from_slice::<MessageRecord>(&raw) else {
                continue;
            };
            rec.failure_attempts = 0;
            rec.dead_lettered_at_unix = 0;
            rec.delivery = None;
            rec.set_visible_at_ms(self.clock().now_ms());
            rec.meta_etag = uuid::Uuid::now_v7().to_string();
            let etags = self
                .store
                .apply(vec![
                    Op::Put {
                        key: msg_key(ns, queue, id),
                        value: encode(&rec)?,
                        cond: Cond::IfAbsent,
                    },
                    Op::Delete {
                        key: dlq_key(ns, queue, id),
                        cond: Cond::IfMatch(etag),
                    },
                ])
                .await?;
            shard
                .lock()
                .insert(id, &rec, etags.into_iter().next().unwrap_or_default());
            moved.push(id.clone());
        }
        if !moved.is_empty() {
            shard.wake();
        }
        Ok(moved)
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

/// An enqueue or nack delay as the server applies it: negative → 0, longer
/// than [`MAX_REQUEST_SECONDS`] → that.
fn clamp_delay(delay_seconds: i64) -> i64 {
    delay_seconds.clamp(0, MAX_REQUEST_SECONDS)
}

/// A message's expiry from its `ttl_seconds`: none for ≤ 0, and none for a
/// TTL beyond [`MAX_REQUEST_SECONDS`] (never earlier than asked).
fn message_expiry(now_ms: i64, ttl_seconds: i64) -> Option<i64> {
    (ttl_seconds > 0 && ttl_seconds <= MAX_REQUEST_SECONDS).then(|| add_secs(now_ms, ttl_seconds))
}

fn encode(rec: &MessageRecord) -> CoreResult<Bytes> {
    serde_json::to_vec(rec)
        .map(Bytes::from)
        .map_err(|e| CoreError::new(ErrorCode::InternalError, format!("encode message: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
