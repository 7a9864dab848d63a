//! Wire types of the queue endpoints (PROTOCOL.md §6).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::is_zero;

/// The JSON `meta` part of `POST /v1/queue/enqueue` (decoded leniently:
/// unknown fields are ignored there).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnqueueRequest {
    /// Namespace (server default when empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Queue name.
    #[serde(default)]
    pub queue: String,
    /// Hide the message for this long.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_seconds: i64,
    /// Stored visibility timeout (deliveries use the consumer's).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub visibility_timeout_seconds: i64,
    /// Delete the message this long after enqueue (0 = never).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ttl_seconds: i64,
    /// Failed attempts before dead-lettering (≤ 0 → 5).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_attempts: i64,
    /// Arbitrary JSON object returned with every delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Value>,
    /// Content type of the payload.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload_content_type: String,
}

/// `POST /v1/queue/enqueue` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueResponse {
    /// Namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Normalised queue name.
    pub queue: String,
    /// New message id (UUIDv7).
    pub message_id: String,
    /// Deliveries so far (0).
    #[serde(default)]
    pub attempts: i64,
    /// Effective failure budget.
    pub max_attempts: i64,
    /// Failed attempts (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failure_attempts: i64,
    /// When the message becomes visible.
    pub not_visible_until_unix: i64,
    /// Stored visibility timeout.
    pub visibility_timeout_seconds: i64,
    /// Payload size.
    pub payload_bytes: i64,
    /// Correlation id of the message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation_id: String,
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// `POST /v1/queue/dequeue`, `dequeueWithState`, `subscribe` and
/// `subscribeWithState` body. Namespace, queue and owner fall back to the
/// query parameters of the same name when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DequeueRequest {
    /// Namespace (server default when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Queue name.
    pub queue: String,
    /// Consumer identity (required).
    pub owner: String,
    /// Transaction to join (an xid); with-state variants only.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub txn_id: String,
    /// How long a delivery stays invisible to others; ≤ 0 means the
    /// server's default TTL.
    #[serde(skip_serializing_if = "is_zero")]
    pub visibility_timeout_seconds: i64,
    /// -1 returns at once, 0 waits forever, N > 0 waits up to N seconds.
    pub wait_seconds: i64,
    /// Deliveries per dequeue (1..=64; with-state variants always 1); the
    /// prefetch of a subscribe stream.
    #[serde(skip_serializing_if = "is_zero")]
    pub page_size: i64,
    /// Accepted and ignored (the original's cursor).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub start_after: String,
}

/// `POST /v1/queue/ack` body: the delivery being settled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AckRequest {
    /// Namespace (query parameter when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Queue name (required).
    pub queue: String,
    /// Message id (required).
    pub message_id: String,
    /// Delivery lease id (required).
    pub lease_id: String,
    /// Transaction id of the delivery.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub txn_id: String,
    /// Fencing token of the delivery.
    pub fencing_token: i64,
    /// Message metadata etag of the delivery.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub meta_etag: String,
    /// Workflow-state etag (with-state deliveries).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state_etag: String,
    /// Workflow-state lease id (with-state deliveries).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state_lease_id: String,
    /// Workflow-state fencing token (with-state deliveries).
    #[serde(skip_serializing_if = "is_zero")]
    pub state_fencing_token: i64,
}

/// `POST /v1/queue/nack` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NackRequest {
    /// Namespace (query parameter when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Queue name (required).
    pub queue: String,
    /// Message id (required).
    pub message_id: String,
    /// Delivery lease id (required).
    pub lease_id: String,
    /// Transaction id of the delivery.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub txn_id: String,
    /// Fencing token of the delivery.
    pub fencing_token: i64,
    /// Message metadata etag of the delivery (required).
    pub meta_etag: String,
    /// Accepted and ignored.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state_etag: String,
    /// Workflow-state lease id (with-state deliveries).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state_lease_id: String,
    /// Workflow-state fencing token (with-state deliveries).
    #[serde(skip_serializing_if = "is_zero")]
    pub state_fencing_token: i64,
    /// Hide the message for this long before it is delivered again.
    pub delay_seconds: i64,
    /// `failure` (the default: counts against `max_attempts`) or `defer`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub intent: String,
    /// Why the delivery failed (any JSON; failure intent only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Value>,
}

/// `POST /v1/queue/extend` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtendRequest {
    /// Namespace (query parameter when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Queue name (required).
    pub queue: String,
    /// Message id (required).
    pub message_id: String,
    /// Delivery lease id (required).
    pub lease_id: String,
    /// Transaction id of the delivery.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub txn_id: String,
    /// Fencing token of the delivery.
    pub fencing_token: i64,
    /// Message metadata etag of the delivery (required).
    pub meta_etag: String,
    /// Workflow-state lease id (with-state deliveries).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state_lease_id: String,
    /// Workflow-state fencing token (with-state deliveries).
    #[serde(skip_serializing_if = "is_zero")]
    pub state_fencing_token: i64,
    /// Seconds added to the delivery's visibility deadline.
    pub extend_by_seconds: i64,
}

/// `POST /v1/queue/stats` and `POST /v1/queue/watch` body (both fields
/// fall back to the query parameters of the same name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueRequest {
    /// Namespace (server default when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Queue name (required).
    pub queue: String,
}

/// `POST /v1/queue/dlq/list` body (ours).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeadLetterListRequest {
    /// Namespace (server default when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Queue name (required).
    pub queue: String,
    /// Continue after this message id (a previous page's `next_cursor`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub start_after: String,
    /// Page size: ≤ 0 means 100, at most 1000.
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: i64,
}

/// `POST /v1/queue/dlq/get` body (ours).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeadLetterGetRequest {
    /// Namespace (server default when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Queue name (required).
    pub queue: String,
    /// The dead-lettered message (required).
    pub message_id: String,
}

/// `POST /v1/queue/dlq/redrive` body (ours): some ids, or all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedriveRequest {
    /// Namespace (server default when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Queue name (required).
    pub queue: String,
    /// Move every dead-lettered message back.
    #[serde(skip_serializing_if = "is_false")]
    pub all: bool,
    /// The messages to move back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub message_ids: Vec<String>,
}

/// A delivered message: the `message` object of a delivery's meta part.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueMessage {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub queue: String,
    pub message_id: String,
    pub attempts: i64,
    pub max_attempts: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failure_attempts: i64,
    pub not_visible_until_unix: i64,
    pub visibility_timeout_seconds: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload_content_type: String,
    pub payload_bytes: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation_id: String,
    #[serde(default)]
    pub lease_id: String,
    #[serde(default)]
    pub lease_expires_at_unix: i64,
    #[serde(default)]
    pub fencing_token: i64,
    #[serde(default)]
    pub txn_id: String,
    #[serde(default)]
    pub meta_etag: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state_etag: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state_lease_id: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub state_lease_expires_at_unix: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub state_fencing_token: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state_txn_id: String,
    /// Dead-letter records only (our extension): why and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Value>,
    /// Dead-letter records only (our extension).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dead_lettered_at_unix: i64,
}

/// The JSON of a delivery's meta part: `{"message":{…}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryMeta {
    /// The message.
    pub message: QueueMessage,
    /// Always empty in practice.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub next_cursor: String,
}

/// `POST /v1/queue/ack` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckResponse {
    pub acked: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation_id: String,
}

/// `POST /v1/queue/nack` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NackResponse {
    pub requeued: bool,
    pub meta_etag: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation_id: String,
}

/// `POST /v1/queue/extend` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendResponse {
    pub lease_expires_at_unix: i64,
    pub visibility_timeout_seconds: i64,
    pub meta_etag: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub state_lease_expires_at_unix: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation_id: String,
}

/// `POST /v1/queue/stats` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatsResponse {
    pub namespace: String,
    pub queue: String,
    pub waiting_consumers: i64,
    pub pending_candidates: i64,
    pub total_consumers: i64,
    pub has_active_watcher: bool,
    pub available: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub head_message_id: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub head_enqueued_at_unix: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub head_not_visible_until_unix: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub head_age_seconds: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation_id: String,
}

/// The `data` of a `queue_watch` server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueWatchEvent {
    pub namespace: String,
    pub queue: String,
    pub available: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub head_message_id: String,
    pub changed_at_unix: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation_id: String,
}

/// `POST /v1/queue/dlq/list` 200 body (our extension).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterList {
    pub namespace: String,
    pub queue: String,
    /// Dead-lettered messages, oldest first.
    pub messages: Vec<QueueMessage>,
    /// Pass as `start_after` for the next page; empty when done.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub next_cursor: String,
}

/// `POST /v1/queue/dlq/redrive` 200 body (our extension).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedriveResponse {
    pub namespace: String,
    pub queue: String,
    /// Ids moved back to the live queue.
    pub redriven: Vec<String>,
}
