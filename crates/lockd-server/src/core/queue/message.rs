//! The stored message record (PROTOCOL.md §6.1) and where its objects live.
//!
//! * `q/<namespace>/<queue>/msg/<id>`: the live record (JSON);
//! * `q/<namespace>/<queue>/dlq/<id>`: a dead-lettered record;
//! * `q/<namespace>/<queue>/payload/<id>`: the payload, as a blob.
//!
//! The delivery lease is part of the record, so a delivery, an ack or a
//! nack is one conditional write of one object.
//!
//! Deadlines (visibility, delivery lease, message TTL) are kept in Unix
//! milliseconds (`*_ms`) next to the whole seconds (`*_unix`, rounded down)
//! the wire carries. Records written before milliseconds were kept have
//! only the seconds; their deadlines fall at the start of that second, as
//! they did. Read deadlines through the accessors, which know this.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::clock::unix_secs;

/// The lease of the current delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub lease_id: String,
    pub owner: String,
    /// `floor(expires_at_ms / 1000)`.
    pub expires_at_unix: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<i64>,
    pub fencing_token: i64,
    pub txn_id: String,
    /// The workflow-state lease of a stateful delivery.
    #[serde(default)]
    pub state: Option<StateLease>,
    /// `txn_id` came from the consumer: the delivery is a participant of
    /// that multi-key transaction, and its ack or nack decides it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub txn_explicit: bool,
}

impl Delivery {
    /// A delivery lease expiring at `expires_ms` (Unix milliseconds).
    pub fn new(
        lease_id: String,
        owner: String,
        expires_ms: i64,
        fencing_token: i64,
        txn_id: String,
        state: Option<StateLease>,
    ) -> Self {
        Self {
            lease_id,
            owner,
            expires_at_unix: unix_secs(expires_ms),
            expires_at_ms: Some(expires_ms),
            fencing_token,
            txn_id,
            state,
            txn_explicit: false,
        }
    }

    /// The delivery as a participant of its (client-chosen) transaction.
    pub fn in_transaction(mut self, explicit: bool) -> Self {
        self.txn_explicit = explicit;
        self
    }

    /// When the delivery lease expires, in Unix milliseconds.
    pub fn expires_ms(&self) -> i64 {
        self.expires_at_ms
            .unwrap_or_else(|| self.expires_at_unix.saturating_mul(1000))
    }

    /// Moves the expiry (both fields).
    pub fn set_expires_ms(&mut self, ms: i64) {
        self.expires_at_ms = Some(ms);
        self.expires_at_unix = unix_secs(ms);
    }
}

/// A lease on `q/<queue>/state/<id>` taken by a stateful delivery. Its
/// expiry here is for the wire only; the lease itself (with milliseconds)
/// is the engine's.
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
    /// `floor(not_visible_until_ms / 1000)`; set with
    /// [`MessageRecord::set_visible_at_ms`].
    pub not_visible_until_unix: i64,
    /// `None` in records written before milliseconds were kept: read it
    /// with [`MessageRecord::visible_at_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_visible_until_ms: Option<i64>,
    pub visibility_timeout_seconds: i64,
    /// Absolute expiry, whole seconds (0 = none); set with
    /// [`MessageRecord::set_expires_ms`].
    #[serde(default)]
    pub expires_at_unix: i64,
    /// `None` in records written before milliseconds were kept (and when
    /// there is no expiry): read it with [`MessageRecord::expires_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
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

impl MessageRecord {
    /// When the message becomes deliverable (for a delivered message: when
    /// its delivery lease expires), in Unix milliseconds.
    pub fn visible_at_ms(&self) -> i64 {
        self.not_visible_until_ms
            .unwrap_or_else(|| self.not_visible_until_unix.saturating_mul(1000))
    }

    /// Sets when the message becomes deliverable (both fields).
    pub fn set_visible_at_ms(&mut self, ms: i64) {
        self.not_visible_until_ms = Some(ms);
        self.not_visible_until_unix = unix_secs(ms);
    }

    /// When the message expires (its TTL), in Unix milliseconds; `None`
    /// when it never does.
    pub fn expires_ms(&self) -> Option<i64> {
        match self.expires_at_ms {
            Some(ms) if ms > 0 => Some(ms),
            Some(_) => None,
            None if self.expires_at_unix > 0 => Some(self.expires_at_unix.saturating_mul(1000)),
            None => None,
        }
    }

    /// Sets the expiry (`None`: never), both fields.
    pub fn set_expires_ms(&mut self, ms: Option<i64>) {
        match ms {
            Some(ms) => {
                self.expires_at_ms = Some(ms);
                self.expires_at_unix = unix_secs(ms).max(1);
            }
            None => {
                self.expires_at_ms = None;
                self.expires_at_unix = 0;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the previous version wrote it: seconds only.
    const OLD: &str = r#"{"id":"m","namespace":"default","queue":"q","enqueued_at_unix":1700000000,
        "payload_bytes":0,"attempts":1,"failure_attempts":0,"max_attempts":5,
        "not_visible_until_unix":1700000030,"visibility_timeout_seconds":30,
        "expires_at_unix":1700000100,"fencing_counter":1,
        "delivery":{"lease_id":"l","owner":"o","expires_at_unix":1700000030,"fencing_token":1,
        "txn_id":"t"},"meta_etag":"e"}"#;

    #[test]
    fn a_record_written_with_seconds_only_still_loads() {
        let rec: MessageRecord = serde_json::from_str(OLD).unwrap();
        assert_eq!(rec.visible_at_ms(), 1_700_000_030_000);
        assert_eq!(rec.expires_ms(), Some(1_700_000_100_000));
        let d = rec.delivery.as_ref().unwrap();
        assert_eq!(d.expires_ms(), 1_700_000_030_000);
        let no_ttl: MessageRecord = serde_json::from_str(&OLD.replace("1700000100", "0")).unwrap();
        assert_eq!(no_ttl.expires_ms(), None);
    }

    #[test]
    fn milliseconds_and_seconds_are_both_written() {
        let mut rec: MessageRecord = serde_json::from_str(OLD).unwrap();
        rec.set_visible_at_ms(1_700_000_031_990);
        rec.set_expires_ms(Some(1_700_000_101_500));
        if let Some(d) = rec.delivery.as_mut() {
            d.set_expires_ms(1_700_000_031_990);
        }
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["not_visible_until_unix"], 1_700_000_031);
        assert_eq!(v["not_visible_until_ms"], 1_700_000_031_990_i64);
        assert_eq!(v["expires_at_unix"], 1_700_000_101);
        assert_eq!(v["expires_at_ms"], 1_700_000_101_500_i64);
        assert_eq!(v["delivery"]["expires_at_unix"], 1_700_000_031);
        assert_eq!(v["delivery"]["expires_at_ms"], 1_700_000_031_990_i64);
        let back: MessageRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, rec);
        rec.set_expires_ms(None);
        assert_eq!(rec.expires_ms(), None);
        assert_eq!(rec.expires_at_unix, 0);
    }
}
