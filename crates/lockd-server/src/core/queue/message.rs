//! The stored message record (PROTOCOL.md §6.1) and where its objects live.
//!
//! * `q/<namespace>/<queue>/msg/<id>`: the live record (JSON);
//! * `q/<namespace>/<queue>/dlq/<id>`: a dead-lettered record;
//! * `q/<namespace>/<queue>/payload/<id>`: the payload, as a blob.
//!
//! The delivery lease is part of the record, so a delivery, an ack or a
//! nack is one conditional write of one object.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The lease of the current delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub lease_id: String,
    pub owner: String,
    pub expires_at_unix: i64,
    pub fencing_token: i64,
    pub txn_id: String,
    /// The workflow-state lease of a stateful delivery.
    #[serde(default)]
    pub state: Option<StateLease>,
}

/// A lease on `q/<queue>/state/<id>` taken by a stateful delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateLease {
    pub lease_id: String,
    pub fencing_token: i64,
    pub txn_id: String,
    pub expires_at_unix: i64,
}

/// A queue message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: String,
    pub namespace: String,
    pub queue: String,
    pub enqueued_at_unix: i64,
    pub payload_bytes: i64,
    #[serde(default)]
    pub payload_content_type: String,
    #[serde(default)]
    pub attributes: Option<Value>,
    pub attempts: i64,
    pub failure_attempts: i64,
    pub max_attempts: i64,
    pub not_visible_until_unix: i64,
    pub visibility_timeout_seconds: i64,
    /// Absolute expiry (0 = none).
    #[serde(default)]
    pub expires_at_unix: i64,
    #[serde(default)]
    pub last_error: Option<Value>,
    #[serde(default)]
    pub correlation_id: String,
    /// Token of the last delivery; the next one gets +1.
    pub fencing_counter: i64,
    #[serde(default)]
    pub delivery: Option<Delivery>,
    /// CAS token of the record as clients see it.
    pub meta_etag: String,
    /// Etag of the workflow-state descriptor (stateful deliveries).
    #[serde(default)]
    pub state_etag: String,
    /// When the message was dead-lettered (DLQ records only).
    #[serde(default)]
    pub dead_lettered_at_unix: i64,
    /// The payload is a small object at [`inline_payload_key`], written in
    /// the same batch as the record, rather than a streamed blob.
    #[serde(default)]
    pub payload_inline: bool,
}

/// Store key prefix of a queue's objects.
pub fn queue_prefix(ns: &str, queue: &str) -> String {
    format!("q/{ns}/{queue}/")
}

/// Store key of a live record.
pub fn msg_key(ns: &str, queue: &str, id: &str) -> String {
    format!("q/{ns}/{queue}/msg/{id}")
}

/// Store key of a dead-lettered record.
pub fn dlq_key(ns: &str, queue: &str, id: &str) -> String {
    format!("q/{ns}/{queue}/dlq/{id}")
}

/// Blob key of a payload.
pub fn payload_key(ns: &str, queue: &str, id: &str) -> String {
    format!("q/{ns}/{queue}/payload/{id}")
}

/// Store key of a small payload kept as an ordinary object.
pub fn inline_payload_key(ns: &str, queue: &str, id: &str) -> String {
    format!("q/{ns}/{queue}/pl/{id}")
}

/// Engine key of a message's workflow state (PROTOCOL.md §6.12).
pub fn state_key(queue: &str, id: &str) -> String {
    format!("q/{queue}/state/{id}")
}
