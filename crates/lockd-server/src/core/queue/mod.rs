//! The at-least-once queue (PROTOCOL.md §6): enqueue, leased deliveries,
//! ack/nack/extend, dead letters and stateful (workflow) deliveries.
//!
//! Each queue keeps an in-memory index of its live messages ordered by the
//! time they become visible. Consumers wait on the queue's notification and
//! a timer for the next message to become visible, so a waiting consumer is
//! woken by enqueue, nack, delay or lease expiry without polling storage.
//! Every message has its own lock; writes of different messages proceed in
//! parallel (and share fsyncs on `disk://`).
//!
//! This file holds the public surface ([`Queues`] and the types its calls
//! take and give); the work is split by concept:
//!
//! | file | owns |
//! | --- | --- |
//! | `config.rs` | [`QueueConfig`]: tunables and defaults |
//! | `message.rs` | the stored record and its object keys |
//! | `index.rs` | a queue's in-memory index and per-message entries |
//! | `shard.rs` | one queue ([`QueueShard`]): index, wake-ups, waiters |
//! | `sync.rs` | loading a queue and finding other nodes' messages |
//! | `persist.rs` | reading and writing one message's record and payload |
//! | `enqueue.rs` | enqueue |
//! | `claim.rs` | dequeue: waiting, claiming, leasing |
//! | `settle.rs` | ack, nack, extend, undelivered returns |
//! | `dlq.rs` | dead letters: moving there, listing, redrive |
//! | `stats.rs` | gauges and snapshots for metrics, stats and watch |
//! | `subscription.rs` | a subscribe stream: fetches, flow control, drain |

mod claim;
mod config;
mod dlq;
mod enqueue;
mod index;
pub mod message;
mod persist;
mod settle;
mod shard;
mod stats;
mod subscription;
mod sync;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use lockd_api::ErrorCode;
use serde_json::Value;

pub use self::config::QueueConfig;
use self::message::MessageRecord;
pub use self::shard::QueueShard;
pub use self::subscription::{Subscription, SubscriptionEnd, SubscriptionEvent};
use super::clock::{add_secs, Clock, MAX_REQUEST_SECONDS};
use super::{CoreError, CoreResult, Engine};
use crate::control::drain::DrainWatch;
use crate::storage::{ByteStream, Store};

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
    Never,
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

/// One queue's figures for metrics and the console ([`Queues::gauges`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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

/// The queue subsystem.
pub struct Queues {
    engine: Arc<Engine>,
    /// The server's drain switch: waiting consumers stop when it flips.
    drain: std::sync::OnceLock<DrainWatch>,
    store: Arc<dyn Store>,
    shards: DashMap<String, Arc<QueueShard>>,
    /// The HA term the shards were loaded in (failover mode): when the
    /// node's term moves on they are dropped and reloaded from the store.
    term: std::sync::atomic::AtomicU64,
    cfg: QueueConfig,
    consumers: AtomicUsize,
    /// Bytes of inline payloads held in the shards' caches.
    payload_cache: Arc<AtomicUsize>,
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

impl Queues {
    /// The queue subsystem over the engine's store.
    pub fn new(engine: Arc<Engine>, cfg: QueueConfig) -> Arc<Self> {
        let queues = Arc::new(Self {
            store: engine.store().clone(),
            engine,
            drain: std::sync::OnceLock::new(),
            shards: DashMap::new(),
            term: std::sync::atomic::AtomicU64::new(0),
            cfg,
            consumers: AtomicUsize::new(0),
            payload_cache: Arc::new(AtomicUsize::new(0)),
        });
        // Transactions settle the messages delivered under them.
        let weak: std::sync::Weak<dyn crate::core::txn::QueueParticipants> =
            Arc::downgrade(&queues) as _;
        queues.engine.set_queue_participants(weak);
        queues
    }

    /// Connects the server's drain switch: once it flips, waiting
    /// consumers are answered `shutdown_draining` instead of getting new
    /// deliveries.
    pub fn attach_drain(&self, drain: impl Into<DrainWatch>) {
        let _ = self.drain.set(drain.into());
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

    /// The clock every deadline is read from (the engine's).
    pub fn clock(&self) -> &Clock {
        self.engine.clock()
    }
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
